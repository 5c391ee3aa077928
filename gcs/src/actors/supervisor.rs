//! One task per actor that is not dead: it places the actor, leases a worker from the
//! chosen raylet, runs the constructor there, and while the actor is ALIVE waits for its
//! node to die. Kills, job ends and reported worker deaths are applied by the RPC handlers
//! directly (see [`super::ActorManager`]); the supervisor notices them through the
//! actor's version and starts over from the new state.
//!
//! Every wait of the supervisor also watches the actor's version, so a change made by
//! someone else interrupts it at once (a queued lease request is cancelled by dropping it).
//! Known gap: a lease granted in the instant between the raylet answering and the request
//! being dropped stays with the raylet until the job ends.

use std::sync::Arc;
use std::time::Duration;

use miniray_common::auth::{self, AuthError};
use miniray_common::config::MAX_MESSAGE_SIZE;
use miniray_common::ids::LeaseId;
use miniray_common::{ActorId, ErrorCode, JobId, NodeId, Resources};
use miniray_proto::core_worker_client::CoreWorkerClient;
use miniray_proto::push_task_reply::Outcome as PushOutcomeWire;
use miniray_proto::raylet_client::RayletClient;
use miniray_proto::request_worker_lease_reply::Outcome as LeaseOutcome;
use miniray_proto::{
    ActorState, ErrorKind, NodeAddress, PushTasksRequest, RequestWorkerLeaseRequest,
    ReturnWorkerRequest, TaskError, TaskSpec, WorkerAddress,
};
use tonic::Code;

use super::placement::{Candidate, choose_node};
use super::{Lease, Snapshot, Transition, UpdateError};
use crate::driver_monitor::worker_answers;
use crate::service::{GcsState, stopped};

/// How often a placement that found no node re-checks, besides on node changes (available
/// resources change with heartbeats, which do not wake anyone).
const PLACEMENT_RECHECK: Duration = Duration::from_millis(500);
/// First pause after a failed lease request or state write; doubled up to the maximum.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Probes of an ALIVE actor's worker after a GCS restart before it counts as dead.
const RELOAD_PROBES: u32 = 3;
/// Bound on reading the end of the creation reply stream once the reply is in.
const STREAM_END_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts and per-attempt bound for returning a lease.
const RETURN_ATTEMPTS: u32 = 3;
const RETURN_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts a supervisor for a newly registered actor.
pub(crate) fn spawn(state: Arc<GcsState>, id: ActorId) {
    start(state, id, false);
}

/// Starts a supervisor for every reloaded actor that is not dead. Actors recorded ALIVE
/// first have their worker probed: it may have died while no GCS was listening.
pub(crate) async fn resume(state: &Arc<GcsState>) {
    for (id, alive) in state.actors.not_dead().await {
        start(Arc::clone(state), id, alive);
    }
}

fn start(state: Arc<GcsState>, id: ActorId, probe_first: bool) {
    tokio::spawn(async move {
        let mut shutdown = state.shutdown_signal();
        let supervisor = Supervisor {
            state,
            id,
            probe_first,
            failures: 0,
        };
        tokio::select! {
            _ = stopped(&mut shutdown) => tracing::debug!(actor_id = %id, "gcs stopping; supervisor ends"),
            _ = supervisor.run() => tracing::debug!(actor_id = %id, "actor dead; supervisor ends"),
        }
    });
}

struct Supervisor {
    state: Arc<GcsState>,
    id: ActorId,
    /// Set for an actor reloaded as ALIVE until its worker has been probed once.
    probe_first: bool,
    /// Consecutive failed lease requests or writes, for the backoff.
    failures: u32,
}

/// How the push of the creation task ended.
enum Created {
    Constructed,
    /// The constructor ran and failed (panicked, or could not decode its arguments).
    Failed(String),
    /// The worker went away before answering.
    WorkerLost(String),
}

#[derive(Debug, thiserror::Error)]
enum LeaseError {
    #[error("cannot reach the raylet at {address}: {source}")]
    Connect { address: String, source: AuthError },
    #[error("the raylet at {address} refused the lease: {message}")]
    Refused { address: String, message: String },
    #[error("the raylet at {address} spilled the lease to another node")]
    Spilled { address: String },
    #[error("the raylet at {address} sent a malformed grant: {reason}")]
    BadGrant { address: String, reason: String },
}

impl Supervisor {
    async fn run(mut self) {
        loop {
            let Some(mut snap) = self.state.actors.snapshot(self.id).await else {
                return;
            };
            let state = snap.info.state();
            if state == ActorState::Dead {
                return;
            }
            // Normally the job's end already killed the actor; this catches an end whose
            // write failed, and actors reloaded after their job ended.
            let job_running = match JobId::from_bytes(&snap.info.job_id) {
                Ok(job) => self.state.job_running(&job).await,
                Err(_) => false,
            };
            if !job_running {
                let why = super::JOB_FINISHED_REASON.to_string();
                self.transition(&mut snap, Transition::Dead(why)).await;
                continue;
            }
            match state {
                ActorState::Alive => self.while_alive(snap).await,
                _ => self.create(snap).await,
            }
        }
    }

    /// Waits until the actor's node dies (then counts a worker death) or the actor changes.
    async fn while_alive(&mut self, mut snap: Snapshot) {
        let Some(worker) = snap.info.address.clone() else {
            let why = "its record says alive but names no worker".to_string();
            self.transition(&mut snap, Transition::WorkerDied(why))
                .await;
            return;
        };
        if std::mem::take(&mut self.probe_first) && !self.probe(&worker).await {
            let why = "its worker did not answer after the gcs restarted".to_string();
            self.transition(&mut snap, Transition::WorkerDied(why))
                .await;
            return;
        }
        let Ok(node_id) = NodeId::from_bytes(&worker.node_id) else {
            let why = "its worker address names no valid node".to_string();
            self.transition(&mut snap, Transition::WorkerDied(why))
                .await;
            return;
        };
        let why = tokio::select! {
            _ = snap.changed.changed() => return,
            why = self.node_death(node_id) => why,
        };
        self.transition(
            &mut snap,
            Transition::WorkerDied(format!("its node died: {why}")),
        )
        .await;
    }

    /// Whether anything answers at the worker's address, over a few probes.
    async fn probe(&self, worker: &WorkerAddress) -> bool {
        let address = miniray_common::net::host_port(&worker.host, worker.port);
        for _ in 0..RELOAD_PROBES {
            if worker_answers(&address, self.state.actors.token()).await {
                return true;
            }
        }
        tracing::warn!(actor_id = %self.id, worker = %address, "actor's worker unreachable after a gcs restart");
        false
    }

    /// One creation attempt: place, lease, construct. Returns when the actor changed (by
    /// this attempt or by someone else) or the attempt must start over.
    async fn create(&mut self, mut snap: Snapshot) {
        let id = self.id;
        let actors = &self.state.actors;
        let resources =
            match Resources::from_proto(&snap.info.resources.clone().unwrap_or_default()) {
                Ok(r) => r,
                Err(e) => {
                    let why = format!("its resource request is unusable: {e}");
                    self.transition(&mut snap, Transition::Dead(why)).await;
                    return;
                }
            };
        let Some(creation) = snap.info.creation.clone() else {
            let why = "its record has no creation task".to_string();
            self.transition(&mut snap, Transition::Dead(why)).await;
            return;
        };

        // a. Choose a node.
        let Some((node_id, node)) = self.place(&mut snap, &resources).await else {
            return;
        };
        if !actors
            .set_attempt_node(id, snap.version, node.clone())
            .await
        {
            return;
        }

        // b. Lease a worker there.
        tracing::debug!(actor_id = %id, node_id = %node_id, "leasing a worker for the actor");
        let request = RequestWorkerLeaseRequest {
            job_id: snap.info.job_id.clone(),
            resources: snap.info.resources.clone(),
            // The raylet grants what fits there now. What does not fit (the GCS's view of
            // free resources lags, or the node was chosen by its total) queues there and
            // is spilled once another node has room, such as one the autoscaler added;
            // the actor is then placed again (Ray's GCS actor scheduler also follows a
            // spillback). Never spilling would leave it queued on a full node.
            no_spillback: false,
            requester: None,
            grant_or_reject: false,
        };
        let granted = tokio::select! {
            _ = snap.changed.changed() => return,
            why = self.node_death(node_id) => {
                tracing::info!(actor_id = %id, node_id = %node_id, reason = %why, "chosen node died; placing again");
                return;
            }
            granted = request_lease(actors.token(), &node, request) => granted,
        };
        let lease = match granted {
            Ok(lease) => lease,
            Err(LeaseError::Spilled { address }) => {
                tracing::info!(actor_id = %id, node_id = %node_id, raylet = %address, "the queued lease was spilled to a node with room; placing again");
                // Not a failure; the short pause keeps two views that disagree from spinning.
                tokio::select! {
                    _ = snap.changed.changed() => {}
                    _ = tokio::time::sleep(FIRST_BACKOFF) => {}
                }
                return;
            }
            Err(e) => {
                tracing::warn!(actor_id = %id, node_id = %node_id, error = %e, "lease request failed; retrying");
                self.backoff(&mut snap).await;
                return;
            }
        };
        self.failures = 0;
        if !actors
            .set_attempt_lease(id, snap.version, lease.clone())
            .await
        {
            // The actor changed while the grant was on its way: the lease is still ours.
            return_lease(actors.token().to_string(), id, lease);
            return;
        }

        // c. Run the constructor on the worker. No timeout: constructors may take long;
        // a kill, a job end, a reported worker death or the node's death interrupts it.
        let worker = worker_address(&lease.worker);
        tracing::debug!(actor_id = %id, node_id = %node_id, worker = %worker, "running the actor's constructor");
        let created = tokio::select! {
            // Whoever changed the actor took the lease out of the entry and returns it.
            _ = snap.changed.changed() => return,
            why = self.node_death(node_id) => Created::WorkerLost(format!("its node died: {why}")),
            created = push_creation(actors.token(), &lease.worker, creation) => created,
        };
        let transition = match created {
            Created::Constructed => Transition::Alive,
            Created::Failed(msg) => Transition::ConstructorFailed(msg),
            Created::WorkerLost(why) => Transition::WorkerDied(why),
        };
        self.transition(&mut snap, transition).await;
    }

    /// Picks a node for the actor, waiting while no alive node could ever hold it. `None`
    /// when the actor changed meanwhile.
    async fn place(
        &self,
        snap: &mut Snapshot,
        resources: &Resources,
    ) -> Option<(NodeId, NodeAddress)> {
        let mut cluster = self.state.actors.watch_cluster();
        let mut logged = false;
        // Whatever way this returns (placed, the actor changed, the task ended), the actor
        // no longer counts as waiting for a node.
        let _waiting = Unplaceable {
            state: &self.state,
            id: self.id,
        };
        loop {
            let nodes = self.state.alive_nodes().await;
            let placed = self.state.actors.placed_counts().await;
            let candidates: Vec<Candidate> = nodes
                .iter()
                .filter_map(|n| {
                    let node_id = NodeId::from_bytes(&n.address.as_ref()?.node_id).ok()?;
                    Some(Candidate {
                        node_id,
                        total: Resources::from_proto(n.total.as_ref()?).ok()?,
                        available: Resources::from_proto(n.available.as_ref()?).ok()?,
                        placed_actors: placed.get(&node_id).copied().unwrap_or(0),
                    })
                })
                .collect();
            if let Some(chosen) = choose_node(&candidates, resources) {
                let address = nodes
                    .iter()
                    .filter_map(|n| n.address.as_ref())
                    .find(|a| a.node_id == chosen.as_bytes())
                    .cloned()?;
                return Some((chosen, address));
            }
            if !logged {
                tracing::info!(actor_id = %self.id, resources = %resources, alive_nodes = nodes.len(), "no alive node can hold the actor; waiting for the cluster to change");
                self.state
                    .actors
                    .set_unplaceable(self.id, Some(resources.clone()));
                logged = true;
            }
            tokio::select! {
                _ = snap.changed.changed() => return None,
                Ok(()) = cluster.changed() => {}
                _ = tokio::time::sleep(PLACEMENT_RECHECK) => {}
            }
        }
    }

    /// Resolves with the death reason once the node is dead (or unknown).
    async fn node_death(&self, node_id: NodeId) -> String {
        // Subscribed before the check, so a death right after it still wakes us.
        let mut cluster = self.state.actors.watch_cluster();
        loop {
            if let Some(why) = self.state.node_death(&node_id).await {
                return why;
            }
            if cluster.changed().await.is_err() {
                // The manager is gone with the GCS; nothing will ever change.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Applies a change to the version the snapshot saw, retrying failed writes with
    /// backoff until it lands or the actor changes otherwise.
    async fn transition(&mut self, snap: &mut Snapshot, transition: Transition) {
        loop {
            match self
                .state
                .actors
                .apply(self.id, snap.version, &transition)
                .await
            {
                Ok(()) => {
                    self.failures = 0;
                    return;
                }
                Err(UpdateError::Stale(_) | UpdateError::Unknown(_)) => return,
                Err(UpdateError::Storage(e)) => {
                    tracing::warn!(actor_id = %self.id, error = %e, ?transition, "cannot persist an actor change; retrying");
                    if !self.backoff(snap).await {
                        return;
                    }
                }
            }
        }
    }

    /// Sleeps for the current backoff. False when the actor changed meanwhile.
    async fn backoff(&mut self, snap: &mut Snapshot) -> bool {
        let delay = FIRST_BACKOFF
            .saturating_mul(1 << self.failures.min(16))
            .min(MAX_BACKOFF);
        self.failures = self.failures.saturating_add(1);
        tokio::select! {
            _ = snap.changed.changed() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

/// Clears an actor's "waiting for a node" record when its placement ends.
struct Unplaceable<'a> {
    state: &'a GcsState,
    id: ActorId,
}

impl Drop for Unplaceable<'_> {
    fn drop(&mut self) {
        self.state.actors.set_unplaceable(self.id, None);
    }
}

fn node_address(node: &NodeAddress) -> String {
    miniray_common::net::host_port(&node.host, node.port)
}

fn worker_address(worker: &WorkerAddress) -> String {
    miniray_common::net::host_port(&worker.host, worker.port)
}

/// `RequestWorkerLease` at the chosen raylet; waits while the lease is queued there.
async fn request_lease(
    token: &str,
    node: &NodeAddress,
    request: RequestWorkerLeaseRequest,
) -> Result<Lease, LeaseError> {
    let address = node_address(node);
    let channel = auth::connect(&address, token)
        .await
        .map_err(|source| LeaseError::Connect {
            address: address.clone(),
            source,
        })?;
    let reply = RayletClient::new(channel)
        .request_worker_lease(request)
        .await
        .map_err(|status| LeaseError::Refused {
            address: address.clone(),
            message: format!(
                "{}: {}",
                ErrorCode::of_status(&status).as_str(),
                status.message()
            ),
        })?
        .into_inner();
    let grant = match reply.outcome {
        Some(LeaseOutcome::Granted(grant)) => grant,
        // A rejection answers only `grant_or_reject`, which the GCS never sets; should one
        // come, placing the actor again is the right answer to it too.
        Some(LeaseOutcome::Spillback(_) | LeaseOutcome::Rejected(_)) => {
            return Err(LeaseError::Spilled { address });
        }
        None => {
            return Err(LeaseError::BadGrant {
                address,
                reason: "no outcome".into(),
            });
        }
    };
    let bad = |reason: String| LeaseError::BadGrant {
        address: address.clone(),
        reason,
    };
    let lease_id = LeaseId::from_bytes(&grant.lease_id).map_err(|e| bad(e.to_string()))?;
    let worker = grant.worker.ok_or_else(|| bad("no worker".into()))?;
    Ok(Lease {
        lease_id,
        node: node.clone(),
        worker,
    })
}

/// Pushes the creation task to the leased worker and reads its one reply.
async fn push_creation(token: &str, worker: &WorkerAddress, creation: TaskSpec) -> Created {
    let address = worker_address(worker);
    let channel = match auth::connect(&address, token).await {
        Ok(c) => c,
        Err(e) => return Created::WorkerLost(format!("cannot reach it: {e}")),
    };
    let mut client = CoreWorkerClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    // A session of one batch: the request side ends after it, so the worker ends the reply
    // stream after the one reply.
    let batch = PushTasksRequest {
        specs: vec![creation],
    };
    let reply = match client.push_tasks(tokio_stream::iter([batch])).await {
        Ok(stream) => {
            let mut stream = stream.into_inner();
            let reply = stream.message().await;
            if let Ok(Some(_)) = &reply {
                // The stream carries exactly one reply; its end confirms a clean finish.
                // An error here changes nothing: the constructor's answer is in.
                match tokio::time::timeout(STREAM_END_TIMEOUT, stream.message()).await {
                    Ok(Ok(None)) => {}
                    Ok(Ok(Some(_))) => {
                        tracing::warn!(worker = %address, "worker sent more than one reply to a creation task")
                    }
                    Ok(Err(status)) => {
                        tracing::debug!(worker = %address, error = %status, "creation reply stream ended with an error")
                    }
                    Err(_) => {
                        tracing::debug!(worker = %address, "creation reply stream did not end")
                    }
                }
            }
            reply
        }
        Err(status) => Err(status),
    };
    match reply {
        Ok(Some(reply)) => match reply.outcome {
            Some(PushOutcomeWire::Value(_)) => Created::Constructed,
            Some(PushOutcomeWire::Error(e)) => Created::Failed(describe(&e)),
            None => Created::Failed("the worker answered without an outcome".into()),
        },
        Ok(None) => Created::WorkerLost("it closed the reply stream without answering".into()),
        // Transport failures: the worker (or its connection) is gone.
        Err(status)
            if matches!(
                status.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
            ) =>
        {
            Created::WorkerLost(format!("the push failed: {}", status.message()))
        }
        // The worker answered and refused the task: re-running it would fail the same way.
        Err(status) => Created::Failed(format!(
            "the worker refused the creation task: {}",
            status.message()
        )),
    }
}

fn describe(e: &TaskError) -> String {
    if e.message.is_empty() {
        format!(
            "{:?}",
            ErrorKind::try_from(e.kind).unwrap_or(ErrorKind::Unspecified)
        )
    } else {
        e.message.clone()
    }
}

/// Returns a lease to the raylet that granted it, disconnecting the worker so the raylet
/// stops it (it hosts, or half-built, an actor nobody may use). Best effort, in the
/// background: a raylet that cannot be reached has lost the worker anyway, or frees it when
/// the job ends.
pub(crate) fn return_lease(token: String, actor: ActorId, lease: Lease) {
    tokio::spawn(async move {
        let address = node_address(&lease.node);
        let request = ReturnWorkerRequest {
            lease_id: lease.lease_id.to_vec(),
            disconnect: true,
        };
        let mut delay = FIRST_BACKOFF;
        for attempt in 1..=RETURN_ATTEMPTS {
            let call = async {
                let channel = auth::connect_lazy(&address, &token).map_err(|e| e.to_string())?;
                RayletClient::new(channel)
                    .return_worker(request.clone())
                    .await
                    .map_err(|s| s.message().to_string())
            };
            match tokio::time::timeout(RETURN_TIMEOUT, call).await {
                Ok(Ok(_)) => {
                    tracing::debug!(actor_id = %actor, lease_id = %lease.lease_id, node = %address, "returned the actor's lease");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(actor_id = %actor, lease_id = %lease.lease_id, attempt, error = %e, "returning a lease failed")
                }
                Err(_) => {
                    tracing::debug!(actor_id = %actor, lease_id = %lease.lease_id, attempt, "returning a lease timed out")
                }
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        tracing::warn!(actor_id = %actor, lease_id = %lease.lease_id, node = %address, "could not return the actor's lease");
    });
}
