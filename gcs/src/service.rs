//! The `Gcs` gRPC service: node, job, executable and KV tables, health checks and pub/sub.
//!
//! Nodes and jobs are cached in memory (every read is served from there) and written
//! through to the storage backend; KV entries and executables live only in the backend.
//!
//! Invariants:
//! - A node or job change reaches memory and subscribers only after the backend accepted
//!   it, so a failed write changes nothing and a restarted GCS sees everything that any
//!   client was told succeeded. Actors follow the same rule (see [`crate::actors`]).
//! - A heartbeat is not a storage write: available resources, demand and counters live in
//!   memory only (a restarted GCS gets them from the next heartbeat). The node table is
//!   written on register, state change and death only.
//! - No storage call is made while a table lock (`nodes`, `jobs`) is held: those are plain
//!   mutexes held for memory work only, so reads, heartbeats and the health check never
//!   wait for a slow backend, and a backend stall cannot make a healthy node miss its
//!   deadline. Persisted changes of one table are serialized by its async write lock
//!   (`node_writes`, `job_writes`), held around "write storage, then apply in memory", so
//!   writes land in the order of the in-memory updates.
//! - Lock order: `job_writes` before the actor manager's write lock, never the other way
//!   round; `node_writes` and `job_writes` are never held together.

use std::collections::{BTreeMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use miniray_common::ids::InvalidId;
use miniray_common::time::now_ms;
use miniray_common::{ErrorCode, JobId, NodeId, Resources, WorkerId};
use miniray_proto::gcs_server::Gcs;
use miniray_proto::{
    AddJobReply, AddJobRequest, AddTaskEventsReply, AddTaskEventsRequest, Channel,
    ClusterResourceState, CreateActorReply, CreateActorRequest, ExecutableChunk, GetActorReply,
    GetActorRequest, GetAllActorsReply, GetAllActorsRequest, GetAllJobsReply, GetAllJobsRequest,
    GetAllNodesReply, GetAllNodesRequest, GetAutoscalingStateReply, GetAutoscalingStateRequest,
    GetClusterResourceStateReply, GetClusterResourceStateRequest, GetClusterStatusReply,
    GetClusterStatusRequest, GetExecutableRequest, GetJobReply, GetJobRequest, GetTaskEventsReply,
    GetTaskEventsRequest, HasExecutableReply, HasExecutableRequest, HeartbeatReply,
    HeartbeatRequest, JobInfo, KillActorReply, KillActorRequest, KvDelReply, KvDelRequest,
    KvGetReply, KvGetRequest, KvKeysReply, KvKeysRequest, KvPutReply, KvPutRequest,
    MarkJobFinishedReply, MarkJobFinishedRequest, NodeInfo, NodeState, PubMessage,
    PutExecutableReply, RegisterNodeReply, RegisterNodeRequest, ReportAutoscalingStateReply,
    ReportAutoscalingStateRequest, ReportWorkerFailureReply, ReportWorkerFailureRequest,
    RequestClusterResourceConstraintReply, RequestClusterResourceConstraintRequest, ResourceDemand,
    ResourceSet, SubscribeRequest, UnregisterNodeReply, UnregisterNodeRequest, pub_message,
};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::{broadcast, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::actors::{self, ActorManager};
use crate::autoscaling::{self, Autoscaling};
use crate::executables::Kept;
use crate::storage::{EXECUTABLES_TABLE, JOBS_TABLE, NODES_TABLE, Storage, kv_table};
use crate::task_events::{self, TaskEvents};
use crate::{GcsConfig, GcsError};

/// Messages a subscriber may fall behind by before its stream is ended with an error.
const PUBSUB_CAPACITY: usize = 1024;

/// Largest executable accepted: Redis cannot hold a larger value in one field.
pub const MAX_EXECUTABLE_SIZE: u64 = 512 << 20;

/// Upper bound on the buffer reserved up front for an upload, so that a client announcing
/// a huge `total_size` and then sending nothing cannot make the GCS allocate it.
const MAX_PREALLOCATION: u64 = 64 << 20;

/// A node as the GCS tracks it.
struct NodeEntry {
    info: NodeInfo,
    /// Monotonic time of the last heartbeat (or registration, or reload); the health check
    /// uses this rather than `info.last_heartbeat_ms` so wall-clock jumps cannot kill nodes.
    last_seen: Instant,
}

/// Everything the service and the health checker share.
pub(crate) struct GcsState {
    pub(crate) storage: Arc<dyn Storage>,
    /// Memory only; never held across an await (see the module invariants).
    nodes: Mutex<BTreeMap<NodeId, NodeEntry>>,
    /// Held around each persisted node change: write storage, then apply in memory.
    node_writes: tokio::sync::Mutex<()>,
    /// Memory only, like `nodes`.
    pub(crate) jobs: Mutex<BTreeMap<JobId, JobInfo>>,
    /// Held around each persisted job change, like `node_writes`.
    job_writes: tokio::sync::Mutex<()>,
    events: broadcast::Sender<PubMessage>,
    pub(crate) actors: ActorManager,
    session_name: String,
    node_timeout: Duration,
    /// Flips to true (or closes) when the server stops; ends subscriber streams.
    shutdown: watch::Receiver<bool>,
    /// The unused executable kept for re-runs. Held while an executable is checked for use
    /// and removed, and by `AddJob` from its existence check until the job is in the table
    /// (lock order: this before `job_writes` and `jobs`); see `executables.rs`. Async:
    /// storage calls run under it.
    pub(crate) executables: tokio::sync::Mutex<Kept>,
    /// How long the last executable no running job uses is kept (zero: not at all).
    pub(crate) unused_executable_ttl: Duration,
    /// The `request_resources` floor and the autoscaler's latest report.
    autoscaling: Autoscaling,
    /// Task records from task events (memory only).
    task_events: TaskEvents,
}

impl GcsState {
    /// Builds the state, reloading nodes and jobs from the backend. Reloaded live nodes
    /// get a fresh grace period: raylets that survived the GCS restart keep heartbeating,
    /// the others time out normally. `cfg.storage` is ignored: `storage` is the backend.
    pub(crate) async fn load(
        storage: Arc<dyn Storage>,
        cfg: &GcsConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, GcsError> {
        let now = Instant::now();
        let mut nodes = BTreeMap::new();
        for (key, value) in storage.get_all(NODES_TABLE).await? {
            let mut info = decode::<NodeInfo>(NODES_TABLE, &key, &value)?;
            let id = NodeId::from_bytes(&key).map_err(|e| corrupt(NODES_TABLE, &key, e))?;
            if info.state != NodeState::Dead as i32 {
                info.last_heartbeat_ms = now_ms();
            }
            nodes.insert(
                id,
                NodeEntry {
                    info,
                    last_seen: now,
                },
            );
        }
        let mut jobs = BTreeMap::new();
        for (key, value) in storage.get_all(JOBS_TABLE).await? {
            let info = decode::<JobInfo>(JOBS_TABLE, &key, &value)?;
            let id = JobId::from_bytes(&key).map_err(|e| corrupt(JOBS_TABLE, &key, e))?;
            jobs.insert(id, info);
        }
        if !nodes.is_empty() || !jobs.is_empty() {
            tracing::info!(
                nodes = nodes.len(),
                jobs = jobs.len(),
                "reloaded cluster state from storage"
            );
        }
        let autoscaling = Autoscaling::load(storage.as_ref()).await?;
        let (events, _) = broadcast::channel(PUBSUB_CAPACITY);
        let actors = ActorManager::load(
            Arc::clone(&storage),
            events.clone(),
            cfg.token.clone(),
            cfg.max_destroyed_actors,
        )
        .await?;
        Ok(Self {
            storage,
            nodes: Mutex::new(nodes),
            node_writes: tokio::sync::Mutex::new(()),
            jobs: Mutex::new(jobs),
            job_writes: tokio::sync::Mutex::new(()),
            events,
            actors,
            session_name: cfg.session_name.clone(),
            node_timeout: cfg.node_timeout,
            shutdown,
            executables: tokio::sync::Mutex::new(Kept::default()),
            unused_executable_ttl: cfg.unused_executable_ttl,
            autoscaling,
            task_events: TaskEvents::new(cfg.max_task_events),
        })
    }

    fn publish(&self, msg: PubMessage) {
        // An error only means nobody is subscribed right now.
        let _ = self.events.send(msg);
    }

    fn publish_node(&self, info: &NodeInfo) {
        self.publish(PubMessage {
            channel: Channel::NodeChanges as i32,
            payload: Some(pub_message::Payload::Node(info.clone())),
        });
    }

    fn publish_job(&self, info: &JobInfo) {
        self.publish(PubMessage {
            channel: Channel::JobChanges as i32,
            payload: Some(pub_message::Payload::Job(info.clone())),
        });
    }

    async fn persist_node(&self, id: &NodeId, info: &NodeInfo) -> Result<(), Status> {
        self.storage
            .put(NODES_TABLE, id.as_bytes(), &info.encode_to_vec())
            .await
            .map(|_| ())
            .map_err(|e| e.to_status())
    }

    async fn persist_job(&self, id: &JobId, info: &JobInfo) -> Result<(), Status> {
        self.storage
            .put(JOBS_TABLE, id.as_bytes(), &info.encode_to_vec())
            .await
            .map(|_| ())
            .map_err(|e| e.to_status())
    }

    /// Marks a job finished (persisted, then published). Returns false for an unknown job;
    /// finishing a finished job changes nothing.
    pub(crate) async fn finish_job(&self, id: JobId, why: &str) -> Result<bool, Status> {
        let writes = self.job_writes.lock().await;
        let finished = {
            let jobs = self.jobs.lock();
            let Some(job) = jobs.get(&id) else {
                return Ok(false);
            };
            if job.finished {
                return Ok(true);
            }
            JobInfo {
                finished: true,
                end_time_ms: now_ms(),
                ..job.clone()
            }
        };
        self.persist_job(&id, &finished).await?;
        tracing::info!(job_id = %id, why, "job finished");
        self.jobs.lock().insert(id, finished.clone());
        self.publish_job(&finished);
        // Still under `job_writes` (job writes → actor writes), so no actor of the job can
        // be registered after this sweep.
        self.actors.end_job(id).await;
        // After `job_writes` goes: `executables` is taken before it (see `add_job`).
        drop(writes);
        self.release_executable(&finished.executable_hash).await;
        Ok(true)
    }

    /// Puts jobs a re-registering raylet reports (it has workers or cached state for them)
    /// back into the job table of a GCS that lost them (restarted on the in-memory store).
    /// A job the table knows keeps its record, finished or not. Jobs must be validated.
    async fn restore_jobs(&self, jobs: Vec<(JobId, JobInfo)>) -> Result<(), Status> {
        if jobs.is_empty() {
            return Ok(());
        }
        let _writes = self.job_writes.lock().await;
        for (id, mut job) in jobs {
            if self.jobs.lock().contains_key(&id) {
                continue;
            }
            // Its raylet still runs its workers, so it counts as running; if its driver is
            // gone, the driver monitor ends it.
            job.finished = false;
            job.end_time_ms = 0;
            self.persist_job(&id, &job).await?;
            tracing::info!(job_id = %id, executable = %job.executable_hash, "job restored from a raylet's report");
            self.jobs.lock().insert(id, job.clone());
            self.publish_job(&job);
        }
        Ok(())
    }

    /// The job's record, if the table has it.
    pub(crate) fn job(&self, id: &JobId) -> Option<JobInfo> {
        self.jobs.lock().get(id).cloned()
    }

    /// Fires (or closes) when the server stops.
    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// The jobs whose drivers run now and serve metrics: (driver, port, job id).
    pub(crate) fn driver_metrics_endpoints(
        &self,
    ) -> Vec<(miniray_proto::WorkerAddress, u16, Vec<u8>)> {
        self.jobs
            .lock()
            .values()
            .filter(|job| !job.finished)
            .filter_map(|job| {
                let port = u16::try_from(job.driver_metrics_port).ok()?;
                let driver = job.driver.clone()?;
                (port != 0).then(|| (driver, port, job.job_id.clone()))
            })
            .collect()
    }

    /// Every node the table holds, dead ones included.
    pub(crate) fn node_infos(&self) -> Vec<NodeInfo> {
        self.nodes.lock().values().map(|e| e.info.clone()).collect()
    }

    /// The autoscaler's latest report, if one came.
    pub(crate) fn autoscaling_report(&self) -> Option<miniray_proto::AutoscalingState> {
        self.autoscaling.report()
    }

    /// Nodes that take new work (ALIVE; not draining, not dead).
    pub(crate) async fn alive_nodes(&self) -> Vec<NodeInfo> {
        self.nodes
            .lock()
            .values()
            .filter(|e| e.info.state == NodeState::Alive as i32)
            .map(|e| e.info.clone())
            .collect()
    }

    /// Marks an ALIVE node DRAINING (persisted, then published): it accepted a drain and
    /// takes no new work. Any other state is left alone.
    async fn mark_draining(&self, id: NodeId) -> Result<(), Status> {
        let _writes = self.node_writes.lock().await;
        let draining = match self.nodes.lock().get(&id) {
            Some(e) if e.info.state == NodeState::Alive as i32 => NodeInfo {
                state: NodeState::Draining as i32,
                ..e.info.clone()
            },
            _ => return Ok(()),
        };
        self.persist_node(&id, &draining).await?;
        let info = {
            let mut nodes = self.nodes.lock();
            match nodes.get_mut(&id) {
                // Heartbeat fields may have moved on meanwhile; only the state changes.
                Some(e) if e.info.state == NodeState::Alive as i32 => {
                    e.info.state = NodeState::Draining as i32;
                    e.info.clone()
                }
                _ => return Ok(()),
            }
        };
        tracing::info!(node_id = %id, "node draining");
        self.publish_node(&info);
        self.actors.cluster_changed();
        Ok(())
    }

    /// What the autoscaler reads: ALIVE and DRAINING nodes, the demand queued at them and
    /// of actors no node could hold, the `request_resources` floor.
    pub(crate) fn resource_state(&self) -> ClusterResourceState {
        let nodes: Vec<NodeInfo> = self
            .nodes
            .lock()
            .values()
            .filter(|e| {
                e.info.state == NodeState::Alive as i32
                    || e.info.state == NodeState::Draining as i32
            })
            .map(|e| e.info.clone())
            .collect();
        ClusterResourceState {
            pending_leases: autoscaling::pending_leases(&nodes),
            pending_actors: autoscaling::pending_actors(self.actors.unplaceable()),
            constraint: self.autoscaling.constraint(),
            nodes,
            now_ms: now_ms(),
        }
    }

    /// Why the node is dead; `None` while it is not. An unknown node counts as dead.
    pub(crate) async fn node_death(&self, id: &NodeId) -> Option<String> {
        match self.nodes.lock().get(id) {
            None => Some(format!("node {id} is unknown to the gcs")),
            Some(e) if e.info.state == NodeState::Dead as i32 => {
                Some(if e.info.death_reason.is_empty() {
                    format!("node {id} is dead")
                } else {
                    format!("node {id} is dead: {}", e.info.death_reason)
                })
            }
            Some(_) => None,
        }
    }

    /// Whether the job is known and not finished.
    pub(crate) async fn job_running(&self, id: &JobId) -> bool {
        self.jobs.lock().get(id).is_some_and(|j| !j.finished)
    }

    /// Running jobs and the core-worker address of their driver.
    pub(crate) async fn running_jobs(&self) -> Vec<(JobId, String)> {
        self.jobs
            .lock()
            .iter()
            .filter(|(_, j)| !j.finished)
            .filter_map(|(id, j)| {
                let d = j.driver.as_ref()?;
                Some((*id, miniray_common::net::host_port(&d.host, d.port)))
            })
            .collect()
    }

    /// The record of a live node silent for longer than `node_timeout`, marked dead.
    fn expired(&self, id: &NodeId, now: Instant) -> Option<NodeInfo> {
        let nodes = self.nodes.lock();
        let e = nodes.get(id)?;
        if e.info.state == NodeState::Dead as i32
            || now.duration_since(e.last_seen) <= self.node_timeout
        {
            return None;
        }
        Some(NodeInfo {
            state: NodeState::Dead as i32,
            death_reason: format!("no heartbeat for {}s", self.node_timeout.as_secs_f64()),
            ..e.info.clone()
        })
    }

    /// Marks every live node silent for longer than `node_timeout` as dead. Silence is
    /// judged from heartbeats in memory only, so a slow backend cannot cause it. A node
    /// whose death cannot be persisted stays alive and is retried at the next check.
    pub(crate) async fn check_node_health(&self) {
        let now = Instant::now();
        let candidates: Vec<NodeId> = self
            .nodes
            .lock()
            .iter()
            .filter(|(_, e)| {
                e.info.state != NodeState::Dead as i32
                    && now.duration_since(e.last_seen) > self.node_timeout
            })
            .map(|(id, _)| *id)
            .collect();
        if candidates.is_empty() {
            return;
        }
        let _writes = self.node_writes.lock().await;
        let mut died = false;
        for id in candidates {
            // Judged again under the write lock: the node may have re-registered, been
            // unregistered or heartbeated while this check waited for it.
            let Some(info) = self.expired(&id, Instant::now()) else {
                continue;
            };
            if let Err(status) = self.persist_node(&id, &info).await {
                tracing::warn!(node_id = %id, error = %status.message(), "cannot persist node death; will retry");
                continue;
            }
            tracing::warn!(node_id = %id, reason = %info.death_reason, "node marked dead");
            if let Some(entry) = self.nodes.lock().get_mut(&id) {
                entry.info = info.clone();
            }
            self.publish_node(&info);
            died = true;
        }
        if died {
            // Supervisors of actors on (or being placed on) these nodes react.
            self.actors.cluster_changed();
        }
    }
}

/// Runs the health check until the server shuts down.
pub(crate) async fn health_loop(state: Arc<GcsState>, mut shutdown: watch::Receiver<bool>) {
    // Check several times per timeout so a dead node is noticed within ~1.25 timeouts.
    let period = (state.node_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => return,
            _ = ticker.tick() => state.check_node_health().await,
        }
    }
}

/// Resolves once the server is stopping (the flag is set or every sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn decode<M: Message + Default>(
    table: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<M, GcsError> {
    M::decode(value).map_err(|e| corrupt(table, key, e))
}

fn corrupt(table: &'static str, key: &[u8], reason: impl std::fmt::Display) -> GcsError {
    GcsError::CorruptRecord {
        table,
        key: hex::encode(key),
        reason: reason.to_string(),
    }
}

fn invalid(msg: impl Into<String>) -> Status {
    ErrorCode::InvalidArgument.status(msg)
}

fn bad_id(e: InvalidId) -> Status {
    invalid(e.to_string())
}

fn parse_node_id(bytes: &[u8]) -> Result<NodeId, Status> {
    NodeId::from_bytes(bytes).map_err(bad_id)
}

fn parse_job_id(bytes: &[u8]) -> Result<JobId, Status> {
    JobId::from_bytes(bytes).map_err(bad_id)
}

/// Checks a job record from the wire (`what` names it in errors) and normalizes it.
fn validate_job(mut job: JobInfo, what: &str) -> Result<(JobId, JobInfo), Status> {
    let id = JobId::from_bytes(&job.job_id).map_err(|e| invalid(format!("{what}: {e}")))?;
    if let Some(driver) = &job.driver {
        WorkerId::from_bytes(&driver.worker_id)
            .map_err(|e| invalid(format!("{what} {id}: driver: {e}")))?;
        NodeId::from_bytes(&driver.node_id)
            .map_err(|e| invalid(format!("{what} {id}: driver node: {e}")))?;
    }
    if !job.executable_hash.is_empty() {
        job.executable_hash = parse_executable_hash(&job.executable_hash)?;
    }
    if job.start_time_ms == 0 {
        job.start_time_ms = now_ms();
    }
    Ok((id, job))
}

/// Validates a resource set from the wire and returns it in canonical form (no zeros).
fn canonical_resources(set: Option<&ResourceSet>, what: &str) -> Result<ResourceSet, Status> {
    match set {
        None => Ok(ResourceSet::default()),
        Some(set) => Resources::from_proto(set)
            .map(|r| r.to_proto())
            .map_err(|e| invalid(format!("{what}: {e}"))),
    }
}

fn canonical_demand(demand: &[ResourceDemand]) -> Result<Vec<ResourceDemand>, Status> {
    demand
        .iter()
        .map(|d| {
            Ok(ResourceDemand {
                shape: Some(canonical_resources(d.shape.as_ref(), "demand shape")?),
                count: d.count,
                infeasible: d.infeasible,
            })
        })
        .collect()
}

/// Executables are named by the lowercase hex of their blake3 hash.
fn parse_executable_hash(hash: &str) -> Result<String, Status> {
    let lower = hash.to_ascii_lowercase();
    if lower.len() != 64 || !lower.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(format!(
            "invalid executable hash {hash:?}: expected 64 hex characters of a blake3 hash"
        )));
    }
    Ok(lower)
}

fn parse_channel(raw: i32) -> Result<Channel, Status> {
    match Channel::try_from(raw) {
        Ok(Channel::Unspecified) | Err(_) => Err(invalid(format!("invalid channel {raw}"))),
        Ok(c) => Ok(c),
    }
}

fn check_kv_key(key: &[u8]) -> Result<(), Status> {
    if key.is_empty() {
        return Err(invalid("kv key must not be empty"));
    }
    Ok(())
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<ExecutableChunk, Status>> + Send>>;
type PubStream = Pin<Box<dyn Stream<Item = Result<PubMessage, Status>> + Send>>;

/// The tonic service: a thin shell over [`GcsState`].
pub(crate) struct GcsService {
    pub(crate) state: Arc<GcsState>,
    /// This GCS's own `/metrics` endpoint, if it serves one.
    pub(crate) metrics_address: Option<std::net::SocketAddr>,
}

#[tonic::async_trait]
impl Gcs for GcsService {
    async fn register_node(
        &self,
        request: Request<RegisterNodeRequest>,
    ) -> Result<Response<RegisterNodeReply>, Status> {
        let request = request.into_inner();
        let mut info = request
            .node
            .ok_or_else(|| invalid("register node: missing node"))?;
        let address = info
            .address
            .as_ref()
            .ok_or_else(|| invalid("register node: missing address"))?;
        let id = parse_node_id(&address.node_id)?;
        if address.host.is_empty() {
            return Err(invalid("register node: empty host"));
        }
        if address.port == 0 || address.port > u32::from(u16::MAX) {
            return Err(invalid(format!(
                "register node: invalid port {}",
                address.port
            )));
        }
        info.total = Some(canonical_resources(info.total.as_ref(), "total resources")?);
        info.available = Some(canonical_resources(
            info.available.as_ref(),
            "available resources",
        )?);
        info.demand = canonical_demand(&info.demand)?;
        info.state = NodeState::Alive as i32;
        info.last_heartbeat_ms = now_ms();
        info.death_reason.clear();
        // Validated before anything changes, so a bad report registers nothing.
        let jobs = request
            .jobs
            .into_iter()
            .map(|job| validate_job(job, "register node: job"))
            .collect::<Result<Vec<_>, Status>>()?;

        let state = &self.state;
        // A dead id stays dead: its objects and workers are gone, and reviving it would
        // confuse everyone who already handled the death.
        let dead_id = || {
            ErrorCode::AlreadyExists.status(format!(
                "node {id} was marked dead; restart the raylet with a new node id"
            ))
        };
        let is_dead = |e: &NodeEntry| e.info.state == NodeState::Dead as i32;
        if state.nodes.lock().get(&id).is_some_and(is_dead) {
            return Err(dead_id());
        }
        let restored = jobs.len();
        // Jobs first, so whoever sees the node registered sees its jobs too.
        state.restore_jobs(jobs).await?;
        {
            let _writes = state.node_writes.lock().await;
            // Checked again under the write lock: the node may have died meanwhile.
            let (known, dead) = match state.nodes.lock().get(&id) {
                Some(e) => (true, is_dead(e)),
                None => (false, false),
            };
            if dead {
                return Err(dead_id());
            }
            state.persist_node(&id, &info).await?;
            tracing::info!(node_id = %id, host = %address_host(&info), is_head = info.is_head, was_known = known, jobs = restored, "node registered");
            state.nodes.lock().insert(
                id,
                NodeEntry {
                    info: info.clone(),
                    last_seen: Instant::now(),
                },
            );
            state.publish_node(&info);
        }
        // Actors waiting for a node that fits look again.
        state.actors.cluster_changed();
        Ok(Response::new(RegisterNodeReply {}))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let req = request.into_inner();
        let id = parse_node_id(&req.node_id)?;
        let available = canonical_resources(req.available.as_ref(), "available resources")?;
        let demand = canonical_demand(&req.demand)?;

        // Memory only (see the module invariants): what a heartbeat carries is stale by the
        // next one, and a restarted GCS gets it again from the next one.
        let starts_draining = {
            let mut nodes = self.state.nodes.lock();
            let Some(entry) = nodes.get_mut(&id) else {
                tracing::debug!(node_id = %id, "heartbeat from unknown node refused");
                return Ok(Response::new(HeartbeatReply { accepted: false }));
            };
            if entry.info.state == NodeState::Dead as i32 {
                tracing::debug!(node_id = %id, "heartbeat from dead node refused");
                return Ok(Response::new(HeartbeatReply { accepted: false }));
            }
            let info = &mut entry.info;
            info.available = Some(available);
            info.demand = demand;
            info.object_store_used = req.object_store_used;
            info.num_workers = req.num_workers;
            info.num_leased_workers = req.num_leased_workers;
            info.idle_duration_ms = req.idle_duration_ms;
            info.busy_reasons = req.busy_reasons;
            info.last_heartbeat_ms = now_ms();
            entry.last_seen = Instant::now();
            req.draining && info.state == NodeState::Alive as i32
        };
        // A state change, so a storage write: made outside the table lock.
        if starts_draining {
            self.state.mark_draining(id).await?;
        }
        Ok(Response::new(HeartbeatReply { accepted: true }))
    }

    async fn unregister_node(
        &self,
        request: Request<UnregisterNodeRequest>,
    ) -> Result<Response<UnregisterNodeReply>, Status> {
        let req = request.into_inner();
        let id = parse_node_id(&req.node_id)?;
        let state = &self.state;
        let _writes = state.node_writes.lock().await;
        let mut info = state
            .nodes
            .lock()
            .get(&id)
            .map(|e| e.info.clone())
            .ok_or_else(|| ErrorCode::NotFound.status(format!("unknown node {id}")))?;
        if info.state == NodeState::Dead as i32 {
            // Already dead: keep the first reason, nothing to announce.
            return Ok(Response::new(UnregisterNodeReply {}));
        }
        info.state = NodeState::Dead as i32;
        info.death_reason = if req.reason.is_empty() {
            "unregistered".to_string()
        } else {
            req.reason
        };
        state.persist_node(&id, &info).await?;
        tracing::info!(node_id = %id, reason = %info.death_reason, "node unregistered");
        if let Some(entry) = state.nodes.lock().get_mut(&id) {
            entry.info = info.clone();
        }
        state.publish_node(&info);
        state.actors.cluster_changed();
        Ok(Response::new(UnregisterNodeReply {}))
    }

    async fn get_all_nodes(
        &self,
        _request: Request<GetAllNodesRequest>,
    ) -> Result<Response<GetAllNodesReply>, Status> {
        let nodes = self.all_nodes().await;
        Ok(Response::new(GetAllNodesReply { nodes }))
    }

    async fn add_job(
        &self,
        request: Request<AddJobRequest>,
    ) -> Result<Response<AddJobReply>, Status> {
        let job = request
            .into_inner()
            .job
            .ok_or_else(|| invalid("add job: missing job"))?;
        let (id, mut job) = validate_job(job, "add job")?;
        job.finished = false;
        job.end_time_ms = 0;

        let state = &self.state;
        // Held until the job is in the table, so its executable cannot go meanwhile. Lock
        // order: `executables` before `job_writes`.
        let _executable = state.executable_for_new_job(&job.executable_hash).await?;
        let _writes = state.job_writes.lock().await;
        if state.jobs.lock().contains_key(&id) {
            return Err(ErrorCode::AlreadyExists.status(format!("job {id} exists already")));
        }
        state.persist_job(&id, &job).await?;
        tracing::info!(job_id = %id, executable = %job.executable_hash, "job added");
        state.jobs.lock().insert(id, job.clone());
        state.publish_job(&job);
        Ok(Response::new(AddJobReply {}))
    }

    async fn mark_job_finished(
        &self,
        request: Request<MarkJobFinishedRequest>,
    ) -> Result<Response<MarkJobFinishedReply>, Status> {
        let id = parse_job_id(&request.into_inner().job_id)?;
        if !self.state.finish_job(id, "its driver said so").await? {
            return Err(ErrorCode::NotFound.status(format!("unknown job {id}")));
        }
        Ok(Response::new(MarkJobFinishedReply {}))
    }

    async fn get_job(
        &self,
        request: Request<GetJobRequest>,
    ) -> Result<Response<GetJobReply>, Status> {
        let id = parse_job_id(&request.into_inner().job_id)?;
        let job = self
            .state
            .job(&id)
            .ok_or_else(|| ErrorCode::NotFound.status(format!("unknown job {id}")))?;
        Ok(Response::new(GetJobReply { job: Some(job) }))
    }

    async fn get_all_jobs(
        &self,
        _request: Request<GetAllJobsRequest>,
    ) -> Result<Response<GetAllJobsReply>, Status> {
        let jobs = self.all_jobs().await;
        Ok(Response::new(GetAllJobsReply { jobs }))
    }

    async fn has_executable(
        &self,
        request: Request<HasExecutableRequest>,
    ) -> Result<Response<HasExecutableReply>, Status> {
        let hash = parse_executable_hash(&request.into_inner().hash)?;
        let present = self
            .state
            .storage
            .exists(EXECUTABLES_TABLE, hash.as_bytes())
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(HasExecutableReply { present }))
    }

    async fn put_executable(
        &self,
        request: Request<Streaming<ExecutableChunk>>,
    ) -> Result<Response<PutExecutableReply>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| invalid("put executable: empty upload"))?;
        let hash = parse_executable_hash(&first.hash)?;
        let total = first.total_size;
        if total > MAX_EXECUTABLE_SIZE {
            return Err(ErrorCode::ResourceExhausted.status(format!(
                "executable of {total} bytes exceeds the limit of {MAX_EXECUTABLE_SIZE} bytes"
            )));
        }
        let mut data = Vec::with_capacity(total.min(MAX_PREALLOCATION) as usize);
        let mut next = Some(first);
        while let Some(chunk) = next {
            if !chunk.hash.is_empty() && !chunk.hash.eq_ignore_ascii_case(&hash) {
                return Err(invalid("put executable: chunks carry different hashes"));
            }
            if chunk.total_size != 0 && chunk.total_size != total {
                return Err(invalid(
                    "put executable: chunks carry different total sizes",
                ));
            }
            if data.len() as u64 + chunk.data.len() as u64 > total {
                return Err(invalid(format!(
                    "put executable: received more than the announced {total} bytes"
                )));
            }
            data.extend_from_slice(&chunk.data);
            next = stream.message().await?;
        }
        if data.len() as u64 != total {
            return Err(invalid(format!(
                "put executable: received {} bytes, announced {total}",
                data.len()
            )));
        }
        let actual = blake3::hash(&data).to_hex();
        if actual.as_str() != hash {
            tracing::warn!(expected = %hash, actual = %actual, "rejected corrupted executable upload");
            return Err(invalid(format!(
                "put executable: content hashes to {actual}, not {hash}"
            )));
        }
        self.state
            .storage
            .put_shared(EXECUTABLES_TABLE, hash.as_bytes(), data.into())
            .await
            .map_err(|e| e.to_status())?;
        tracing::info!(hash = %hash, size = total, "executable stored");
        Ok(Response::new(PutExecutableReply {}))
    }

    type GetExecutableStream = ChunkStream;

    async fn get_executable(
        &self,
        request: Request<GetExecutableRequest>,
    ) -> Result<Response<Self::GetExecutableStream>, Status> {
        let hash = parse_executable_hash(&request.into_inner().hash)?;
        let data = self
            .state
            .storage
            .get_shared(EXECUTABLES_TABLE, hash.as_bytes())
            .await
            .map_err(|e| e.to_status())?
            .ok_or_else(|| ErrorCode::NotFound.status(format!("unknown executable {hash}")))?;
        Ok(Response::new(chunk_stream(hash, data)))
    }

    async fn kv_put(&self, request: Request<KvPutRequest>) -> Result<Response<KvPutReply>, Status> {
        let req = request.into_inner();
        check_kv_key(&req.key)?;
        let table = kv_table(&req.ns);
        let storage = &self.state.storage;
        let added = if req.overwrite {
            storage.put(&table, &req.key, &req.value).await
        } else {
            storage.put_if_absent(&table, &req.key, &req.value).await
        }
        .map_err(|e| e.to_status())?;
        Ok(Response::new(KvPutReply { added }))
    }

    async fn kv_get(&self, request: Request<KvGetRequest>) -> Result<Response<KvGetReply>, Status> {
        let req = request.into_inner();
        check_kv_key(&req.key)?;
        let value = self
            .state
            .storage
            .get(&kv_table(&req.ns), &req.key)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(KvGetReply {
            found: value.is_some(),
            value: value.unwrap_or_default(),
        }))
    }

    async fn kv_del(&self, request: Request<KvDelRequest>) -> Result<Response<KvDelReply>, Status> {
        let req = request.into_inner();
        check_kv_key(&req.key)?;
        let deleted = self
            .state
            .storage
            .delete(&kv_table(&req.ns), &req.key)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(KvDelReply { deleted }))
    }

    async fn kv_keys(
        &self,
        request: Request<KvKeysRequest>,
    ) -> Result<Response<KvKeysReply>, Status> {
        let req = request.into_inner();
        let keys = self
            .state
            .storage
            .keys_with_prefix(&kv_table(&req.ns), &req.prefix)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(KvKeysReply { keys }))
    }

    type SubscribeStream = PubStream;

    /// An empty channel list subscribes to every channel.
    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let mut channels = request
            .into_inner()
            .channels
            .into_iter()
            .map(|c| parse_channel(c).map(|c| c as i32))
            .collect::<Result<HashSet<i32>, Status>>()?;
        if channels.is_empty() {
            channels = [
                Channel::NodeChanges as i32,
                Channel::JobChanges as i32,
                Channel::ActorChanges as i32,
            ]
            .into();
        }
        // Subscribed before the reply goes out: a client that saw the reply headers misses
        // no change made after that.
        let sub = Subscription {
            rx: self.state.events.subscribe(),
            shutdown: self.state.shutdown.clone(),
            channels,
            ended: false,
        };
        Ok(Response::new(Box::pin(futures::stream::unfold(
            sub,
            Subscription::next,
        ))))
    }

    async fn get_cluster_status(
        &self,
        _request: Request<GetClusterStatusRequest>,
    ) -> Result<Response<GetClusterStatusReply>, Status> {
        let nodes = self.all_nodes().await;
        let jobs = self.all_jobs().await;
        let actors = self.state.actors.all().await;
        Ok(Response::new(GetClusterStatusReply {
            nodes,
            jobs,
            session_name: self.state.session_name.clone(),
            actors,
            autoscaler: self.state.autoscaling.report(),
            resource_state: Some(self.state.resource_state()),
        }))
    }

    async fn get_cluster_resource_state(
        &self,
        _request: Request<GetClusterResourceStateRequest>,
    ) -> Result<Response<GetClusterResourceStateReply>, Status> {
        Ok(Response::new(GetClusterResourceStateReply {
            state: Some(self.state.resource_state()),
        }))
    }

    async fn request_cluster_resource_constraint(
        &self,
        request: Request<RequestClusterResourceConstraintRequest>,
    ) -> Result<Response<RequestClusterResourceConstraintReply>, Status> {
        let bundles = request.into_inner().bundles;
        self.state
            .autoscaling
            .set_constraint(self.state.storage.as_ref(), bundles)
            .await?;
        Ok(Response::new(RequestClusterResourceConstraintReply {}))
    }

    async fn report_autoscaling_state(
        &self,
        request: Request<ReportAutoscalingStateRequest>,
    ) -> Result<Response<ReportAutoscalingStateReply>, Status> {
        let mut state = request
            .into_inner()
            .state
            .ok_or_else(|| invalid("report autoscaling state: missing state"))?;
        for t in &mut state.node_types {
            t.resources = Some(canonical_resources(
                t.resources.as_ref(),
                &format!("node type {:?}", t.name),
            )?);
        }
        if state.time_ms == 0 {
            state.time_ms = now_ms();
        }
        self.state.autoscaling.set_report(state);
        Ok(Response::new(ReportAutoscalingStateReply {}))
    }

    async fn get_autoscaling_state(
        &self,
        _request: Request<GetAutoscalingStateRequest>,
    ) -> Result<Response<GetAutoscalingStateReply>, Status> {
        Ok(Response::new(GetAutoscalingStateReply {
            state: self.state.autoscaling.report(),
        }))
    }

    async fn get_metrics_targets(
        &self,
        _request: Request<miniray_proto::GetMetricsTargetsRequest>,
    ) -> Result<Response<miniray_proto::GetMetricsTargetsReply>, Status> {
        Ok(Response::new(crate::metrics::targets(
            &self.state,
            self.metrics_address,
        )))
    }

    async fn add_task_events(
        &self,
        request: Request<AddTaskEventsRequest>,
    ) -> Result<Response<AddTaskEventsReply>, Status> {
        let AddTaskEventsRequest { batches, dropped } = request.into_inner();
        self.state
            .task_events
            .add(batches, dropped)
            .map_err(|e| invalid(format!("add task events: {e}")))?;
        Ok(Response::new(AddTaskEventsReply {}))
    }

    async fn get_task_events(
        &self,
        request: Request<GetTaskEventsRequest>,
    ) -> Result<Response<GetTaskEventsReply>, Status> {
        let request = request.into_inner();
        let job = task_events::job_filter(&request.job_id)
            .map_err(|e| invalid(format!("get task events: job id: {e}")))?;
        let limit = usize::try_from(request.limit).unwrap_or(usize::MAX);
        Ok(Response::new(self.state.task_events.get(job, limit)))
    }

    /// Registers the actor (persisted before the reply) and starts its supervisor; the
    /// creation itself happens in the background.
    async fn create_actor(
        &self,
        request: Request<CreateActorRequest>,
    ) -> Result<Response<CreateActorReply>, Status> {
        let (id, job_id, info) =
            actors::validate_new(request.into_inner().actor, canonical_resources)?;
        let state = &self.state;
        let created = {
            // Held across the registration (job writes → actor writes), so the job cannot
            // finish between the check and the insert.
            let _writes = state.job_writes.lock().await;
            let job = state.job(&job_id);
            state
                .actors
                .register(job.as_ref(), id, job_id, info)
                .await?
        };
        if created {
            actors::supervisor::spawn(Arc::clone(state), id);
        }
        Ok(Response::new(CreateActorReply {}))
    }

    async fn get_actor(
        &self,
        request: Request<GetActorRequest>,
    ) -> Result<Response<GetActorReply>, Status> {
        let actor = self.state.actors.get(request.into_inner()).await?;
        Ok(Response::new(GetActorReply { actor: Some(actor) }))
    }

    async fn kill_actor(
        &self,
        request: Request<KillActorRequest>,
    ) -> Result<Response<KillActorReply>, Status> {
        self.state.actors.kill(request.into_inner()).await?;
        Ok(Response::new(KillActorReply {}))
    }

    async fn get_all_actors(
        &self,
        _request: Request<GetAllActorsRequest>,
    ) -> Result<Response<GetAllActorsReply>, Status> {
        let actors = self.state.actors.all().await;
        Ok(Response::new(GetAllActorsReply { actors }))
    }

    async fn report_worker_failure(
        &self,
        request: Request<ReportWorkerFailureRequest>,
    ) -> Result<Response<ReportWorkerFailureReply>, Status> {
        self.state
            .actors
            .worker_failed(request.into_inner())
            .await?;
        Ok(Response::new(ReportWorkerFailureReply {}))
    }
}

impl GcsService {
    async fn all_nodes(&self) -> Vec<NodeInfo> {
        self.state
            .nodes
            .lock()
            .values()
            .map(|e| e.info.clone())
            .collect()
    }

    async fn all_jobs(&self) -> Vec<JobInfo> {
        self.state.jobs.lock().values().cloned().collect()
    }
}

fn address_host(info: &NodeInfo) -> String {
    info.address
        .as_ref()
        .map(|a| miniray_common::net::host_port(&a.host, a.port))
        .unwrap_or_default()
}

/// The executable as a stream of its chunks (`miniray_common::executable::chunks`).
fn chunk_stream(hash: String, data: Bytes) -> ChunkStream {
    Box::pin(futures::stream::iter(
        miniray_common::executable::chunks(&hash, data).map(Ok),
    ))
}

/// One subscriber's view of the event bus.
struct Subscription {
    rx: broadcast::Receiver<PubMessage>,
    shutdown: watch::Receiver<bool>,
    channels: HashSet<i32>,
    /// Set after the lag error was yielded: the stream ends on the next poll.
    ended: bool,
}

impl Subscription {
    async fn next(mut self) -> Option<(Result<PubMessage, Status>, Self)> {
        if self.ended {
            return None;
        }
        loop {
            let received = tokio::select! {
                _ = stopped(&mut self.shutdown) => return None,
                received = self.rx.recv() => received,
            };
            match received {
                Ok(msg) if self.channels.contains(&msg.channel) => return Some((Ok(msg), self)),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    // Ending the stream beats silently skipping changes: the subscriber
                    // resubscribes and re-reads the tables.
                    tracing::warn!(missed, "subscriber lagged; ending its stream");
                    self.ended = true;
                    let status = ErrorCode::Unavailable.status(format!(
                        "subscriber fell behind by {missed} messages; resubscribe and re-read the tables"
                    ));
                    return Some((Err(status), self));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn lagging_subscriber_gets_an_error_then_the_end() {
        let (tx, rx) = broadcast::channel(2);
        let (_stop_tx, stop_rx) = watch::channel(false);
        let sub = Subscription {
            rx,
            shutdown: stop_rx,
            channels: [Channel::NodeChanges as i32].into(),
            ended: false,
        };
        for _ in 0..5 {
            tx.send(PubMessage {
                channel: Channel::NodeChanges as i32,
                payload: None,
            })
            .unwrap();
        }
        let items: Vec<_> = futures::stream::unfold(sub, Subscription::next)
            .collect()
            .await;
        assert_eq!(items.len(), 1, "stream must end right after the lag error");
        let err = items[0].as_ref().unwrap_err();
        assert_eq!(ErrorCode::of_status(err), ErrorCode::Unavailable);
    }

    #[tokio::test]
    async fn subscriber_filters_channels() {
        let (tx, rx) = broadcast::channel(8);
        let (_stop_tx, stop_rx) = watch::channel(false);
        let sub = Subscription {
            rx,
            shutdown: stop_rx,
            channels: [Channel::JobChanges as i32].into(),
            ended: false,
        };
        for channel in [Channel::NodeChanges, Channel::JobChanges] {
            tx.send(PubMessage {
                channel: channel as i32,
                payload: None,
            })
            .unwrap();
        }
        drop(tx);
        let items: Vec<_> = futures::stream::unfold(sub, Subscription::next)
            .collect()
            .await;
        assert_eq!(items.len(), 1);
        assert_eq!(
            items[0].as_ref().unwrap().channel,
            Channel::JobChanges as i32
        );
    }

    #[test]
    fn executable_hashes_are_validated_and_normalized() {
        let h = blake3::hash(b"x").to_hex().to_string();
        assert_eq!(parse_executable_hash(&h.to_uppercase()).unwrap(), h);
        assert!(parse_executable_hash("abc").is_err());
        assert!(parse_executable_hash(&"g".repeat(64)).is_err());
    }
}
