//! The loop: once a second, reconcile the instance records with the provider and the GCS,
//! ask the planner what to do, do it, and report the state to the GCS.
//!
//! Invariants (the loop's safety):
//! - Nothing happens until the head's raylet is alive in the GCS and the records are loaded.
//! - A provider list that fails means "unknown": that round launches and terminates nothing
//!   (it still reports).
//! - A launch is recorded `requested` before the provider is called; a node is terminated
//!   only after its raylet accepted a drain (or if it never joined, or its raylet is gone).
//! - An instance of this cluster that no record owns is terminated; records are loaded
//!   before any list is acted on, so nothing this autoscaler launched is taken for one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use miniray_common::time::now_ms;
use miniray_common::{NodeId, Resources};
use miniray_proto::{
    AutoscalerFailure, AutoscalerInstance, AutoscalingState, ClusterResourceState, NodeInfo,
    NodeState, NodeTypeInfo, ResourceDemandCount,
};
use tracing::{debug, info, warn};

use crate::clients::Gcs;
use crate::config::AutoscalingConfig;
use crate::instances::{InstanceRecord, InstanceStore, Status};
use crate::planner::{self, ClusterView, Decision, LaunchingInstance, NodeView};
use crate::provider::{CloudInstance, NodeProvider};

/// One round per this.
pub const ROUND_INTERVAL: Duration = Duration::from_secs(1);
/// A node that accepted a drain but is still in the GCS after this is terminated anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A running node missing from the GCS this long is taken for dead (a GCS restarted on the
/// in-memory store has no nodes until they register again).
const MISSING_GRACE: Duration = Duration::from_secs(5);
/// Test hook: when the autoscaler's environment names a file here, each drain, after its
/// record is `draining` and before `DrainNode` is sent, creates that file (holding the
/// instance id) and waits (up to [`DRAIN_PAUSE_LIMIT`]) until it is removed, so a test can
/// bring work to the node between the decision and the drain.
pub const DRAIN_PAUSE_HOOK_ENV: &str = "MINIRAY_TEST_DRAIN_PAUSE_FILE";
const DRAIN_PAUSE_LIMIT: Duration = Duration::from_secs(60);
/// A node that joined less than this ago still counts as launching for the planner: the
/// queued demand the GCS reports comes from raylet heartbeats (every 500 ms), so work the
/// new node already took may still show as queued, and would be launched for again.
const JOIN_SETTLE: Duration = Duration::from_millis(1500);
const MAX_FAILURES: usize = 20;
const MAX_DECISIONS: usize = 50;

pub struct Autoscaler {
    config: AutoscalingConfig,
    gcs: Gcs,
    provider: Arc<dyn NodeProvider>,
    failures: VecDeque<AutoscalerFailure>,
    decisions: VecDeque<String>,
    infeasible: Vec<Resources>,
    /// When each running record's raylet was first seen missing from the GCS.
    missing_since: HashMap<String, u64>,
    /// See [`DRAIN_PAUSE_HOOK_ENV`].
    drain_pause: Option<std::path::PathBuf>,
}

impl Autoscaler {
    pub fn new(config: AutoscalingConfig, gcs: Gcs, provider: Arc<dyn NodeProvider>) -> Self {
        Self {
            config,
            gcs,
            provider,
            failures: VecDeque::new(),
            decisions: VecDeque::new(),
            infeasible: Vec::new(),
            missing_since: HashMap::new(),
            drain_pause: None,
        }
    }

    /// Sets the test hook of [`DRAIN_PAUSE_HOOK_ENV`].
    pub fn with_drain_pause(mut self, file: Option<std::path::PathBuf>) -> Self {
        self.drain_pause = file;
        self
    }

    /// The drain test hook: announce, then wait until the file is gone.
    async fn drain_pause(&self, instance_id: &str) {
        let Some(file) = &self.drain_pause else {
            return;
        };
        if let Err(e) = std::fs::write(file, instance_id) {
            warn!(file = %file.display(), error = %e, "drain pause hook: cannot create its file");
            return;
        }
        info!(file = %file.display(), instance_id, "drain pause hook: waiting for its file to go");
        let deadline = tokio::time::Instant::now() + DRAIN_PAUSE_LIMIT;
        while file.exists() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let started = tokio::select! {
            store = self.start() => store,
            _ = &mut shutdown => return,
        };
        let mut store = started;
        let mut tick = tokio::time::interval(ROUND_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut shutdown => return,
            }
            // A round is not cut short by shutdown: a record and its provider call stay
            // consistent.
            self.round(&mut store).await;
        }
    }

    /// Waits for the head's raylet, then loads the instance records.
    async fn start(&mut self) -> InstanceStore {
        let mut logged = false;
        loop {
            match self.gcs.resource_state().await {
                Ok(s)
                    if s.nodes
                        .iter()
                        .any(|n| n.is_head && n.state == NodeState::Alive as i32) =>
                {
                    break;
                }
                Ok(_) if !logged => {
                    info!("waiting for the head's raylet");
                    logged = true;
                }
                Ok(_) => {}
                Err(e) => debug!(error = %e, "the gcs is not answering yet"),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        loop {
            match InstanceStore::load(self.gcs.clone()).await {
                Ok(store) => {
                    let n = store.records().count();
                    info!(records = n, cluster = %self.config.cluster_name, "autoscaler started");
                    return store;
                }
                Err(e) => warn!(error = %e, "cannot load instance records; retrying"),
            }
            tokio::time::sleep(ROUND_INTERVAL).await;
        }
    }

    async fn round(&mut self, store: &mut InstanceStore) {
        for e in self.provider.poll_errors() {
            self.fail(&e.node_type, &e.instance_id, e.message);
        }
        let listed = self.provider.non_terminated().await;
        let state = match self.gcs.resource_state().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot read the cluster's resource state; skipping this round");
                return;
            }
        };
        match listed {
            Ok(listed) => {
                self.reconcile(store, &state, &listed).await;
                let decision = planner::plan(&self.view(store, &state), &self.config);
                self.infeasible = decision.infeasible.clone();
                self.execute(store, &state, decision).await;
                self.retry_launches(store).await;
            }
            Err(e) => {
                warn!(error = %e, "the provider's list failed: this round launches and terminates nothing");
            }
        }
        if let Err(e) = self.gcs.report_state(self.report(store)).await {
            warn!(error = %e, "cannot report the autoscaling state");
        }
    }

    fn fail(&mut self, node_type: &str, instance_id: &str, message: String) {
        warn!(node_type, instance_id, message = %message, "node failure");
        if self.failures.len() == MAX_FAILURES {
            self.failures.pop_front();
        }
        self.failures.push_back(AutoscalerFailure {
            node_type: node_type.to_string(),
            instance_id: instance_id.to_string(),
            message,
            time_ms: now_ms(),
        });
    }

    fn decided(&mut self, reason: String) {
        if self.decisions.len() == MAX_DECISIONS {
            self.decisions.pop_front();
        }
        self.decisions.push_back(reason);
    }

    /// Brings the records in line with what the provider lists and who joined the GCS.
    async fn reconcile(
        &mut self,
        store: &mut InstanceStore,
        state: &ClusterResourceState,
        listed: &BTreeMap<String, CloudInstance>,
    ) {
        let now = now_ms();
        let joined: HashMap<&str, &NodeInfo> = state
            .nodes
            .iter()
            .filter(|n| is_up(n) && !n.cloud_instance_id.is_empty())
            .map(|n| (n.cloud_instance_id.as_str(), n))
            .collect();
        let records: Vec<InstanceRecord> = store.records().cloned().collect();
        // Taken before this round's changes: an instance terminated below is still listed.
        let owned: Vec<(Option<String>, String)> = records
            .iter()
            .map(|r| (r.instance_id.clone(), r.request_id.clone()))
            .collect();
        for mut rec in records {
            let id = rec.instance_id.clone().unwrap_or_default();
            let is_listed = listed.contains_key(&id);
            let result = match rec.status {
                Status::Requested => {
                    // Launched before a restart (or before the call returned): adopt it.
                    match listed.values().find(|i| i.request_id == rec.request_id) {
                        Some(i) => {
                            info!(instance_id = %i.instance_id, request_id = %rec.request_id, "adopted a launched instance");
                            let r = rec.allocated(i.instance_id.clone(), now);
                            self.save(store, rec, r).await
                        }
                        None => Ok(()),
                    }
                }
                Status::Allocated => {
                    if let Some(node) = joined.get(id.as_str()) {
                        let node_id = node_id_hex(node);
                        info!(
                            instance_id = %id,
                            node_id = %node_id,
                            node_type = %rec.node_type,
                            since_request_ms = now.saturating_sub(rec.created_ms),
                            "node joined"
                        );
                        let r = rec.joined(node_id, now);
                        self.save(store, rec, r).await
                    } else if !is_listed {
                        self.fail(
                            &rec.node_type,
                            &id,
                            "the node exited before it joined".into(),
                        );
                        let r = rec.transition(Status::Terminated, now);
                        self.save(store, rec, r).await
                    } else if now.saturating_sub(rec.status_since_ms)
                        > self.config.node_launch_timeout.as_millis() as u64
                    {
                        self.fail(
                            &rec.node_type,
                            &id,
                            format!(
                                "the node did not join within {:?}; terminating it",
                                self.config.node_launch_timeout
                            ),
                        );
                        self.terminate(store, rec).await
                    } else {
                        Ok(())
                    }
                }
                Status::Running => {
                    if !is_listed {
                        // Not drained, not terminated by us: it died.
                        self.fail(&rec.node_type, &id, "the node's process exited".into());
                        self.missing_since.remove(&rec.id);
                        let r = rec.transition(Status::Terminated, now);
                        self.save(store, rec, r).await
                    } else if joined.contains_key(id.as_str()) {
                        self.missing_since.remove(&rec.id);
                        Ok(())
                    } else {
                        let since = *self.missing_since.entry(rec.id.clone()).or_insert(now);
                        if now.saturating_sub(since) > MISSING_GRACE.as_millis() as u64 {
                            self.fail(
                                &rec.node_type,
                                &id,
                                "the node's raylet died; terminating the instance".into(),
                            );
                            self.missing_since.remove(&rec.id);
                            self.terminate(store, rec).await
                        } else {
                            Ok(())
                        }
                    }
                }
                Status::Draining => {
                    let timed_out =
                        now.saturating_sub(rec.status_since_ms) > DRAIN_TIMEOUT.as_millis() as u64;
                    if !joined.contains_key(id.as_str()) || !is_listed || timed_out {
                        if timed_out {
                            warn!(instance_id = %id, "the drained node did not leave in time; terminating it");
                        }
                        self.terminate(store, rec).await
                    } else {
                        Ok(())
                    }
                }
                Status::Terminating => self.terminate(store, rec).await,
                Status::Terminated => Ok(()),
            };
            if let Err(e) = result {
                warn!(error = %e, "instance bookkeeping failed; retrying next round");
            }
        }
        // Instances of this cluster no record owns (a record lost with a non-persistent
        // GCS, a launch whose record write failed): nothing will ever remove them otherwise.
        for (id, inst) in listed {
            let ours = owned
                .iter()
                .any(|(i, req)| i.as_deref() == Some(id.as_str()) || *req == inst.request_id);
            if !ours {
                warn!(instance_id = %id, node_type = %inst.node_type, "terminating an instance no record owns");
                if let Err(e) = self
                    .provider
                    .terminate(std::slice::from_ref(id), &inst.request_id)
                    .await
                {
                    warn!(instance_id = %id, error = %e, "cannot terminate an unowned instance");
                }
            }
        }
    }

    /// Persists `rec` if its transition (`r`) was allowed.
    async fn save(
        &mut self,
        store: &mut InstanceStore,
        rec: InstanceRecord,
        r: Result<(), crate::instances::InstanceError>,
    ) -> Result<(), crate::instances::InstanceError> {
        r?;
        store.save(rec).await
    }

    /// terminating (persisted) → provider terminate → terminated (deleted).
    async fn terminate(
        &mut self,
        store: &mut InstanceStore,
        mut rec: InstanceRecord,
    ) -> Result<(), crate::instances::InstanceError> {
        let now = now_ms();
        if rec.status != Status::Terminating {
            rec.transition(Status::Terminating, now)?;
            store.save(rec.clone()).await?;
        }
        if let Some(id) = rec.instance_id.clone() {
            if let Err(e) = self
                .provider
                .terminate(std::slice::from_ref(&id), &rec.request_id)
                .await
            {
                warn!(instance_id = %id, error = %e, "terminate failed; retrying next round");
                return Ok(());
            }
            info!(instance_id = %id, node_type = %rec.node_type, "node terminated");
        }
        rec.transition(Status::Terminated, now_ms())?;
        store.save(rec).await
    }

    /// The cluster as the planner sees it.
    fn view(&self, store: &InstanceStore, state: &ClusterResourceState) -> ClusterView {
        let draining: Vec<&str> = store
            .records()
            .filter(|r| r.status == Status::Draining)
            .filter_map(|r| r.instance_id.as_deref())
            .collect();
        let now = now_ms();
        // Each instance counts once, as launching or as a node: a record still requested or
        // allocated counts as launching even when its raylet has already registered (it is
        // marked running next round), and so does one that joined moments ago.
        let launching_records: Vec<&InstanceRecord> = store
            .records()
            .filter(|r| {
                r.status.is_launching()
                    || (r.status == Status::Running
                        && now.saturating_sub(r.status_since_ms) < JOIN_SETTLE.as_millis() as u64)
            })
            .collect();
        let nodes = state
            .nodes
            .iter()
            .filter(|n| is_up(n))
            .filter(|n| {
                !launching_records
                    .iter()
                    .any(|r| r.instance_id.as_deref() == Some(n.cloud_instance_id.as_str()))
            })
            .filter_map(|n| {
                let address = n.address.as_ref()?;
                let node_id = NodeId::from_bytes(&address.node_id).ok()?;
                let node_type = if n.node_type.is_empty() && n.is_head {
                    self.config.head_node_type.clone()
                } else {
                    n.node_type.clone()
                };
                Some(NodeView {
                    node_id,
                    instance_id: n.cloud_instance_id.clone(),
                    node_type,
                    is_head: n.is_head,
                    total: resources(n.total.as_ref()),
                    available: resources(n.available.as_ref()),
                    idle_ms: n.idle_duration_ms,
                    draining: n.state == NodeState::Draining as i32
                        || draining.contains(&n.cloud_instance_id.as_str()),
                })
            })
            .collect();
        let launching = launching_records
            .iter()
            .map(|r| LaunchingInstance {
                instance_id: r.display_id().to_string(),
                node_type: r.node_type.clone(),
                requested_ms: r.created_ms,
            })
            .collect();
        let mut demand = Vec::new();
        for d in state.pending_leases.iter().chain(&state.pending_actors) {
            let shape = resources(d.shape.as_ref());
            for _ in 0..d.count {
                demand.push(shape.clone());
            }
        }
        ClusterView {
            now_ms: state.now_ms,
            nodes,
            launching,
            demand,
            constraint: state
                .constraint
                .iter()
                .map(|s| resources(Some(s)))
                .collect(),
        }
    }

    async fn execute(
        &mut self,
        store: &mut InstanceStore,
        state: &ClusterResourceState,
        decision: Decision,
    ) {
        for launch in decision.launch {
            info!(node_type = %launch.node_type, count = launch.count, reason = %launch.reason, "launching");
            self.decided(launch.reason.clone());
            for _ in 0..launch.count {
                let rec = InstanceRecord::requested(&launch.node_type, now_ms());
                if let Err(e) = store.save(rec.clone()).await {
                    // Nothing was launched: the planner asks again next round.
                    warn!(error = %e, "cannot record a launch; not launching");
                    break;
                }
                self.launch(store, rec).await;
            }
        }
        for t in decision.terminate {
            info!(instance_id = %t.instance_id, node_type = %t.node_type, reason = %t.reason, "removing a node");
            self.decided(t.reason.clone());
            let node_hex = t.node_id.map(|n| n.hex());
            let rec = store
                .records()
                .find(|r| {
                    r.display_id() == t.instance_id || (node_hex.is_some() && r.node_id == node_hex)
                })
                .cloned();
            let Some(mut rec) = rec else {
                warn!(instance_id = %t.instance_id, "no instance record owns this node; leaving it");
                continue;
            };
            let result = match rec.status {
                Status::Requested => {
                    let r = rec.transition(Status::Terminated, now_ms());
                    self.save(store, rec, r).await
                }
                Status::Allocated => self.terminate(store, rec).await,
                Status::Running => self.drain(store, state, rec, &t.reason).await,
                _ => Ok(()),
            };
            if let Err(e) = result {
                warn!(error = %e, "removing a node failed; retrying next round");
            }
        }
    }

    /// Asks the node's raylet to drain: refused → running again; accepted → draining, and
    /// terminated once its raylet has left the GCS.
    async fn drain(
        &mut self,
        store: &mut InstanceStore,
        state: &ClusterResourceState,
        mut rec: InstanceRecord,
        reason: &str,
    ) -> Result<(), crate::instances::InstanceError> {
        let id = rec.display_id().to_string();
        let address = state
            .nodes
            .iter()
            .find(|n| n.cloud_instance_id == id)
            .and_then(|n| n.address.as_ref())
            .map(|a| miniray_common::net::host_port(&a.host, a.port));
        let Some(address) = address else {
            return Ok(());
        };
        rec.transition(Status::Draining, now_ms())?;
        store.save(rec.clone()).await?;
        self.drain_pause(&id).await;
        let refusal = match self.gcs.drain_node(&address, reason).await {
            Ok(reply) if reply.accepted => None,
            Ok(reply) => Some(reply.rejection_reason),
            Err(e) => Some(e.to_string()),
        };
        match refusal {
            None => {
                info!(instance_id = %id, "the node accepted the drain");
                Ok(())
            }
            Some(why) => {
                info!(instance_id = %id, reason = %why, "the node refused the drain; it stays");
                self.decided(format!("drain of {id} refused: {why}"));
                rec.transition(Status::Running, now_ms())?;
                store.save(rec).await
            }
        }
    }

    async fn launch(&mut self, store: &mut InstanceStore, mut rec: InstanceRecord) {
        rec.launch_attempts += 1;
        let result = self
            .provider
            .launch(&rec.node_type, 1, &rec.request_id)
            .await;
        let now = now_ms();
        let r = match result {
            Ok(ids) => match ids.into_iter().next() {
                Some(id) => {
                    info!(instance_id = %id, node_type = %rec.node_type, request_id = %rec.request_id, "launched");
                    rec.allocated(id, now)
                }
                None => rec.launch_failed("the provider created nothing".into(), now),
            },
            Err(e) => {
                let message = format!("launch failed (attempt {}): {e}", rec.launch_attempts);
                self.fail(&rec.node_type, "", message.clone());
                rec.launch_failed(message, now)
            }
        };
        if let Err(e) = self.save(store, rec, r).await {
            warn!(error = %e, "cannot record a launch's outcome; reconciled next round");
        }
    }

    /// Re-issues failed launches whose backoff has passed, with their own request ids.
    async fn retry_launches(&mut self, store: &mut InstanceStore) {
        let now = now_ms();
        let due: Vec<InstanceRecord> = store
            .records()
            .filter(|r| r.status == Status::Requested && r.next_attempt_ms <= now)
            .filter(|r| {
                r.launch_attempts > 0 || r.created_ms + ROUND_INTERVAL.as_millis() as u64 <= now
            })
            .cloned()
            .collect();
        for rec in due {
            info!(request_id = %rec.request_id, node_type = %rec.node_type, attempt = rec.launch_attempts + 1, "re-issuing a launch");
            self.launch(store, rec).await;
        }
    }

    fn report(&self, store: &InstanceStore) -> AutoscalingState {
        let node_types = self
            .config
            .node_types
            .iter()
            .map(|(name, t)| NodeTypeInfo {
                name: name.clone(),
                resources: Some(t.resources.to_proto()),
                min_workers: t.min_workers,
                max_workers: t.max_workers,
                is_head: *name == self.config.head_node_type,
            })
            .collect();
        let instances = store
            .records()
            .map(|r| AutoscalerInstance {
                instance_id: r.display_id().to_string(),
                node_type: r.node_type.clone(),
                status: r.status.as_str().to_string(),
                status_since_ms: r.status_since_ms,
                node_id: r
                    .node_id
                    .as_deref()
                    .and_then(|h| NodeId::from_hex(h).ok())
                    .map(|n| n.to_vec())
                    .unwrap_or_default(),
            })
            .collect();
        let mut infeasible: BTreeMap<String, (Resources, u64)> = BTreeMap::new();
        for shape in &self.infeasible {
            infeasible
                .entry(shape.shape_key())
                .or_insert_with(|| (shape.clone(), 0))
                .1 += 1;
        }
        AutoscalingState {
            node_types,
            max_workers: self.config.max_workers,
            instances,
            recent_failures: self.failures.iter().cloned().collect(),
            infeasible: infeasible
                .into_values()
                .map(|(shape, count)| ResourceDemandCount {
                    shape: Some(shape.to_proto()),
                    count,
                })
                .collect(),
            recent_decisions: self.decisions.iter().cloned().collect(),
            time_ms: now_ms(),
        }
    }
}

fn is_up(n: &NodeInfo) -> bool {
    n.state == NodeState::Alive as i32 || n.state == NodeState::Draining as i32
}

fn node_id_hex(n: &NodeInfo) -> String {
    n.address
        .as_ref()
        .and_then(|a| NodeId::from_bytes(&a.node_id).ok())
        .map(|id| id.hex())
        .unwrap_or_default()
}

/// A resource set from the GCS; an invalid one (never sent by a real GCS) counts as empty.
fn resources(set: Option<&miniray_proto::ResourceSet>) -> Resources {
    set.and_then(|s| Resources::from_proto(s).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use miniray_proto::{NodeAddress, ResourceSet};

    use super::*;

    fn cpu(n: f64) -> ResourceSet {
        Resources::from_pairs([("CPU", n)]).unwrap().to_proto()
    }

    fn node(id: NodeId, instance: &str, is_head: bool) -> NodeInfo {
        NodeInfo {
            address: Some(NodeAddress {
                node_id: id.to_vec(),
                host: "127.0.0.1".into(),
                port: 1,
            }),
            state: NodeState::Alive as i32,
            total: Some(cpu(2.0)),
            available: Some(cpu(2.0)),
            is_head,
            cloud_instance_id: instance.into(),
            node_type: if is_head { String::new() } else { "cpu".into() },
            idle_duration_ms: 7,
            ..Default::default()
        }
    }

    fn running(instance: &str, node: NodeId, since_ms: u64) -> InstanceRecord {
        let mut r = InstanceRecord::requested("cpu", since_ms);
        r.allocated(instance.into(), since_ms).unwrap();
        r.joined(node.hex(), since_ms).unwrap();
        r
    }

    // The planner's input (`view`) is built only from the records and the GCS's state; no
    // call is made, so the GCS client never connects.
    #[tokio::test]
    async fn the_planner_sees_nodes_launching_and_settling_instances_and_expanded_demand() {
        let (config, _) = crate::config::parse(
            "max_workers: 4\nprovider: {type: local}\nhead_node_type: head\n\
             available_node_types:\n  head: {resources: {CPU: 0}}\n  \
             cpu: {resources: {CPU: 2}, max_workers: 4}\n",
        )
        .unwrap();
        let gcs = Gcs::connect_lazy("127.0.0.1:1", "token").unwrap();
        let dir = std::env::temp_dir().join(format!(
            "miniray-autoscaler-view-{}-{}",
            std::process::id(),
            NodeId::random().hex()
        ));
        let provider = crate::local::LocalProvider::new(crate::local::LocalProviderConfig {
            exe: "/nonexistent".into(),
            gcs_address: "127.0.0.1:1".into(),
            token: "token".into(),
            cluster_name: "view".into(),
            state_dir: dir.join("state"),
            log_dir: dir.join("logs"),
            node_types: config.node_types.clone(),
            env: Vec::new(),
            terminate_grace: Duration::from_secs(1),
            fail_list_while: None,
        })
        .unwrap();
        let autoscaler = Autoscaler::new(config, gcs.clone(), Arc::new(provider));
        let (head, old, fresh, leaving) = (
            NodeId::random(),
            NodeId::random(),
            NodeId::random(),
            NodeId::random(),
        );
        let now = now_ms();
        let mut draining = running("i-leaving", leaving, now - 60_000);
        draining.transition(Status::Draining, now).unwrap();
        let requested = InstanceRecord::requested("cpu", now);
        // Adopted or launched this round, and its raylet already registered: it is marked
        // running only next round, and must not count twice meanwhile.
        let early = NodeId::random();
        let mut allocated = InstanceRecord::requested("cpu", now);
        allocated.allocated("i-early".into(), now).unwrap();
        let store = InstanceStore::with_records(
            gcs,
            vec![
                running("i-old", old, now - 60_000),
                running("i-fresh", fresh, now),
                draining,
                requested.clone(),
                allocated,
            ],
        );
        let state = ClusterResourceState {
            nodes: vec![
                node(head, "", true),
                node(old, "i-old", false),
                node(fresh, "i-fresh", false),
                node(leaving, "i-leaving", false),
                node(early, "i-early", false),
            ],
            pending_leases: vec![ResourceDemandCount {
                shape: Some(cpu(1.0)),
                count: 3,
            }],
            pending_actors: vec![ResourceDemandCount {
                shape: Some(cpu(2.0)),
                count: 1,
            }],
            constraint: vec![cpu(4.0)],
            now_ms: 42,
        };
        let view = autoscaler.view(&store, &state);
        assert_eq!(view.now_ms, 42);
        // The node that just joined, and the one registered before its record says so, are
        // counted as launching, not as nodes.
        let ids: Vec<&str> = view.nodes.iter().map(|n| n.instance_id.as_str()).collect();
        assert_eq!(ids, ["", "i-old", "i-leaving"]);
        assert_eq!(
            view.nodes[0].node_type, "head",
            "the head gets its configured type"
        );
        assert!(view.nodes[2].draining && !view.nodes[1].draining);
        assert_eq!(view.nodes[1].idle_ms, 7);
        let mut launching: Vec<&str> = view
            .launching
            .iter()
            .map(|l| l.instance_id.as_str())
            .collect();
        launching.sort();
        let mut expected = vec!["i-early", "i-fresh", requested.id.as_str()];
        expected.sort();
        assert_eq!(launching, expected);
        assert_eq!(view.demand.len(), 4, "3 leases and 1 actor, one entry each");
        assert_eq!(
            view.demand.iter().filter(|d| d.get("CPU") == 1.0).count(),
            3
        );
        assert_eq!(view.constraint.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
