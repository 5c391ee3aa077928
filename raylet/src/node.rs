//! The state one raylet shares between its gRPC handlers and background tasks, and the
//! lease orchestration on top of the pure [`Scheduler`].
//!
//! Invariants:
//! - The scheduler and the waiters of queued lease requests live under one lock
//!   (`sched`); a queued request's waiter is inserted in the same critical section as its
//!   ticket, and outcomes are delivered under that lock, so no outcome is ever lost.
//! - Every granted lease either ends up bound to a worker and answered to its requester, or
//!   is released again: a requester that goes away mid-way (cancelled call, failed worker
//!   start) drops a guard that gives the resources back and re-runs the queue.
//! - Lock order: `sched` may be held while taking nothing else; the worker pool is only
//!   called after `sched` is released.
//! - Idle time is exact, not sampled: `SchedState::idle_since` is set on every event that
//!   can end the last lease or queued request (each such path runs `reschedule` or
//!   `note_idle` under `sched`) and cleared on every submit that leaves one; the time the
//!   last primary copy went is kept by [`Ownership`]. The node is idle since the later of
//!   the two.
//! - A drain is decided under `sched` against the scheduler's state, so a lease granted
//!   concurrently either came first (the drain is refused) or comes after (it is spilled
//!   or refused, never granted). Primary copies are counted just before taking `sched`;
//!   a copy is only created by a process holding a lease here or by a remote driver's
//!   `PlasmaWrite`, whose owner would then find the node gone as on any node death.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use miniray_common::auth::AuthedChannel;
use miniray_common::ids::LeaseId;
use miniray_common::{ErrorCode, JobId, NodeId, Resources, WorkerId};
use miniray_plasma::PlasmaStore;
use miniray_proto::gcs_client::GcsClient;
use miniray_proto::request_worker_lease_reply::Outcome as WireOutcome;
use miniray_proto::{
    HeartbeatRequest, LeaseGrant, LeaseRejected, NodeAddress, NodeInfo, NodeState,
    ReportWorkerFailureRequest, RequestWorkerLeaseReply, RequestWorkerLeaseRequest, WorkerAddress,
};
use tokio::sync::{oneshot, watch};
use tonic::Status;

use crate::config::RayletConfig;
use crate::error::RayletError;
use crate::object_manager::ObjectManager;
use crate::ownership::Ownership;
use crate::scheduler::{
    ClusterNode, LeaseRequest, Outcome, Placement, Scheduler, Submitted, Ticket,
};
use crate::task_events::{DEFAULT_MAX_BUFFERED_EVENTS, TaskEventBuffer};
use crate::worker_pool::WorkerPool;

pub(crate) struct SchedState {
    pub scheduler: Scheduler,
    waiters: HashMap<Ticket, oneshot::Sender<Outcome>>,
    /// Since when the scheduler has had no lease, no queued request and every resource
    /// back; `None` while it has any (see the module invariants).
    idle_since: Option<Instant>,
}

impl SchedState {
    /// Records a possible change of the scheduler's idleness; cheap, called on every event.
    fn note_idle(&mut self) {
        if self.scheduler.is_idle() {
            if self.idle_since.is_none() {
                self.idle_since = Some(Instant::now());
            }
        } else {
            self.idle_since = None;
        }
    }
}

/// Whether the node is idle, and why not: what heartbeats report and drains decide on.
pub(crate) struct Idleness {
    /// How long the node has been idle; zero while it is busy.
    pub idle_for: Duration,
    /// Empty when idle.
    pub busy_reasons: Vec<String>,
}

pub(crate) struct Node {
    pub cfg: RayletConfig,
    pub node_id: NodeId,
    pub address: NodeAddress,
    pub sched: parking_lot::Mutex<SchedState>,
    pub pool: Arc<WorkerPool>,
    pub store: Arc<PlasmaStore>,
    pub objects: Arc<ObjectManager>,
    /// Owner and job of each primary copy created through `PlasmaCreate`, and the job of
    /// each store client. Never held while calling into the store or the scheduler.
    pub ownership: parking_lot::Mutex<Ownership>,
    pub gcs: GcsClient<AuthedChannel>,
    shutdown_tx: watch::Sender<bool>,
    /// Why the raylet stops, when it is not a plain request.
    stop_reason: parking_lot::Mutex<Option<RayletError>>,
    /// Set when a drain was accepted: the reason the node unregisters with.
    drained: parking_lot::Mutex<Option<String>>,
    /// When the raylet started: a node that never held a primary copy is idle since then
    /// as far as copies go.
    started: Instant,
    /// Where this raylet serves `/metrics` (0: nowhere); reported in its `NodeInfo`.
    pub metrics_port: u16,
    /// Lease requests answered with a grant, and with a spill to another node.
    pub leases_granted: AtomicU64,
    pub leases_spilled: AtomicU64,
    /// Task events of this node's core workers on their way to the GCS, and the counts
    /// of the tasks that ran here.
    pub task_events: TaskEventBuffer,
}

pub(crate) fn invalid(e: impl std::fmt::Display) -> Status {
    ErrorCode::InvalidArgument.status(e.to_string())
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: RayletConfig,
        address: NodeAddress,
        total: Resources,
        pool: Arc<WorkerPool>,
        store: Arc<PlasmaStore>,
        objects: Arc<ObjectManager>,
        gcs: GcsClient<AuthedChannel>,
        shutdown_tx: watch::Sender<bool>,
        metrics_port: u16,
    ) -> Self {
        Self {
            node_id: cfg.node_id,
            task_events: TaskEventBuffer::new(cfg.node_id, DEFAULT_MAX_BUFFERED_EVENTS),
            sched: parking_lot::Mutex::new(SchedState {
                scheduler: Scheduler::new(cfg.node_id, total),
                waiters: HashMap::new(),
                idle_since: Some(Instant::now()),
            }),
            cfg,
            address,
            pool,
            store,
            objects,
            ownership: parking_lot::Mutex::new(Ownership::default()),
            gcs,
            shutdown_tx,
            stop_reason: parking_lot::Mutex::new(None),
            drained: parking_lot::Mutex::new(None),
            started: Instant::now(),
            metrics_port,
            leases_granted: AtomicU64::new(0),
            leases_spilled: AtomicU64::new(0),
        }
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown_tx.borrow()
    }

    /// Starts the graceful stop; `reason` (first one wins) is what `wait` reports.
    pub fn trigger_shutdown(&self, reason: Option<RayletError>) {
        if let Some(r) = reason {
            let mut slot = self.stop_reason.lock();
            if slot.is_none() {
                *slot = Some(r);
            }
        }
        self.shutdown_tx.send_replace(true);
        // Queued lease requests learn at once that nothing will come.
        let mut st = self.sched.lock();
        st.scheduler.drain();
        st.waiters.clear();
    }

    pub fn take_stop_reason(&self) -> Option<RayletError> {
        self.stop_reason.lock().take()
    }

    /// The reason to unregister with when the node stops after an accepted drain.
    pub fn drain_reason(&self) -> Option<String> {
        self.drained.lock().clone()
    }

    /// Runs the queue and delivers outcomes; grants nobody waits for any more are released
    /// and the queue runs again.
    fn reschedule(st: &mut SchedState) {
        Self::schedule_and_deliver(st);
        st.note_idle();
    }

    fn schedule_and_deliver(st: &mut SchedState) {
        loop {
            let outcomes = st.scheduler.schedule_queue();
            if outcomes.is_empty() {
                return;
            }
            let mut freed = false;
            for (ticket, outcome) in outcomes {
                let undelivered = match st.waiters.remove(&ticket) {
                    Some(tx) => tx.send(outcome).err(),
                    None => Some(outcome),
                };
                if let Some(Outcome::Granted(lease)) = undelivered {
                    st.scheduler.release(&lease);
                    freed = true;
                }
            }
            if !freed {
                return;
            }
        }
    }

    fn release_lease(&self, lease: &LeaseId) -> Option<WorkerId> {
        let mut st = self.sched.lock();
        let released = st.scheduler.release(lease);
        Self::reschedule(&mut st);
        released.and_then(|l| l.worker)
    }

    pub fn worker_address(&self, worker_id: WorkerId, port: u16) -> WorkerAddress {
        WorkerAddress {
            worker_id: worker_id.to_vec(),
            node_id: self.node_id.to_vec(),
            host: self.address.host.clone(),
            port: u32::from(port),
        }
    }

    /// `RequestWorkerLease`: grant here, spill, or wait in the queue (long poll).
    pub async fn request_lease(
        self: &Arc<Self>,
        req: RequestWorkerLeaseRequest,
    ) -> Result<RequestWorkerLeaseReply, Status> {
        let job_id = JobId::from_bytes(&req.job_id).map_err(invalid)?;
        let resources =
            Resources::from_proto(&req.resources.unwrap_or_default()).map_err(invalid)?;
        if self.is_shutting_down() {
            return Err(ErrorCode::Unavailable.status("the raylet is shutting down"));
        }
        let request = LeaseRequest {
            job_id,
            resources,
            placement: Placement::from_flags(req.no_spillback, req.grant_or_reject),
        };
        let outcome = {
            let mut st = self.sched.lock();
            let submitted = st.scheduler.submit(request);
            st.note_idle();
            match submitted {
                Submitted::Done(o) => Ok(o),
                Submitted::Refused => {
                    return Err(ErrorCode::Unavailable.status(
                        "this node is draining and no other node can take the lease; try another node",
                    ));
                }
                Submitted::Rejected => {
                    return Ok(RequestWorkerLeaseReply {
                        outcome: Some(WireOutcome::Rejected(LeaseRejected {})),
                    });
                }
                Submitted::Queued(ticket) => {
                    let (tx, rx) = oneshot::channel();
                    st.waiters.insert(ticket, tx);
                    Err(QueuedGuard {
                        node: Arc::clone(self),
                        ticket,
                        rx: Some(rx),
                    })
                }
            }
        };
        let outcome = match outcome {
            Ok(o) => o,
            Err(mut guard) => guard.wait().await?,
        };
        match outcome {
            Outcome::Spill(addr) => {
                self.leases_spilled.fetch_add(1, Ordering::Relaxed);
                Ok(RequestWorkerLeaseReply {
                    outcome: Some(WireOutcome::Spillback(addr)),
                })
            }
            Outcome::Granted(lease_id) => {
                let mut guard = LeaseGuard {
                    node: Arc::clone(self),
                    lease_id,
                    armed: true,
                };
                let worker = self.pool.acquire(job_id).await.map_err(|e| e.to_status())?;
                let bound = self
                    .sched
                    .lock()
                    .scheduler
                    .bind_worker(&lease_id, worker.worker_id);
                if !bound {
                    self.pool.release(worker.worker_id, false);
                    guard.armed = false;
                    return Err(ErrorCode::Unavailable.status("the lease was revoked"));
                }
                guard.armed = false;
                self.leases_granted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(lease_id = %lease_id, worker_id = %worker.worker_id, job_id = %job_id, "granted lease");
                Ok(RequestWorkerLeaseReply {
                    outcome: Some(WireOutcome::Granted(LeaseGrant {
                        lease_id: lease_id.to_vec(),
                        worker: Some(self.worker_address(worker.worker_id, worker.port)),
                    })),
                })
            }
        }
    }

    /// `ReturnWorker`: the lease ends; unknown (already ended) leases are accepted silently
    /// so that a submitter can return the lease of a worker that has just died.
    pub fn return_worker(
        self: &Arc<Self>,
        lease_id: &[u8],
        disconnect: bool,
    ) -> Result<(), Status> {
        let lease_id = LeaseId::from_bytes(lease_id).map_err(invalid)?;
        match self.release_lease(&lease_id) {
            Some(worker) => self.pool.release(worker, disconnect),
            None => tracing::debug!(lease_id = %lease_id, "return of an unknown or ended lease"),
        }
        Ok(())
    }

    /// `NotifyBlocked`: lend or take back the CPUs of the worker's lease. Callers that hold
    /// no lease here (drivers) change nothing.
    pub fn notify_blocked(&self, worker_id: &[u8], blocked: bool) -> Result<(), Status> {
        let worker_id = WorkerId::from_bytes(worker_id).map_err(invalid)?;
        let mut st = self.sched.lock();
        if let Some(lease) = st.scheduler.lease_of_worker(&worker_id)
            && st.scheduler.set_blocked(&lease, blocked)
        {
            tracing::debug!(worker_id = %worker_id, blocked, "worker blocked state changed");
            Self::reschedule(&mut st);
        }
        Ok(())
    }

    /// A worker process exited: the lease it held (if any) ends, and the GCS learns of it
    /// (the worker may have hosted an actor that must be restarted or declared dead).
    ///
    /// Only workers that still held a lease are reported: a worker whose lease was returned
    /// first (the GCS itself killing an actor, a submitter disconnecting it) hosts nothing
    /// the GCS needs to hear about. The report is spawned so the scheduler lock is never
    /// held across a network call.
    pub fn on_worker_exit(&self, worker_id: WorkerId, status: String) {
        self.release_owner(worker_id, "worker exited");
        let held_lease = {
            let mut st = self.sched.lock();
            let lease = st.scheduler.lease_of_worker(&worker_id);
            if let Some(lease) = &lease {
                tracing::info!(worker_id = %worker_id, lease_id = %lease, %status, "leased worker died; freeing its resources");
                st.scheduler.release(lease);
                Self::reschedule(&mut st);
            }
            lease.is_some()
        };
        if held_lease {
            tokio::spawn(report_worker_failure(
                self.gcs.clone(),
                self.node_id,
                worker_id,
                status,
            ));
        }
    }

    /// A job finished: its leases end and its workers stop, so a driver that exited while
    /// lease grants were still on their way to it cannot hold this node's resources.
    pub fn end_job(&self, job: JobId) {
        let ended = {
            let mut st = self.sched.lock();
            let leases = st.scheduler.leases_of_job(job);
            for lease in &leases {
                st.scheduler.release(lease);
            }
            Self::reschedule(&mut st);
            leases.len()
        };
        tracing::info!(job_id = %job, leases = ended, "job finished; reclaiming its leases and workers");
        self.pool.stop_job(job);
        self.release_job(job);
    }

    /// A driver or worker is gone: the primary copies it owned here are deleted, and its
    /// reader pins and unsealed objects released (the store frees what nobody else pins).
    pub fn release_owner(&self, worker: WorkerId, why: &'static str) {
        let owned = self.ownership.lock().take_owner(worker);
        let deleted = owned.iter().filter(|id| self.store.delete(**id)).count();
        let gone = self.store.disconnect(worker);
        self.forget_aborted(&gone.aborted);
        if deleted > 0 || gone.pins_released > 0 || !gone.aborted.is_empty() {
            tracing::info!(
                owner = %worker,
                reason = why,
                primary_copies = deleted,
                pins = gone.pins_released,
                unsealed = gone.aborted.len(),
                "released the plasma memory of a gone owner"
            );
        }
    }

    /// A job ended: every primary copy its owners had here, and every pin and unsealed
    /// object of its clients, is released.
    pub fn release_job(&self, job: JobId) {
        let (owned, clients) = self.ownership.lock().take_job(job);
        let deleted = owned.iter().filter(|id| self.store.delete(**id)).count();
        let (mut pins, mut unsealed) = (0, 0);
        for client in clients {
            let gone = self.store.disconnect(client);
            self.forget_aborted(&gone.aborted);
            pins += gone.pins_released;
            unsealed += gone.aborted.len();
        }
        if deleted > 0 || pins > 0 || unsealed > 0 {
            tracing::info!(
                job_id = %job,
                primary_copies = deleted,
                pins,
                unsealed,
                "released the plasma memory of a finished job"
            );
        }
    }

    /// Aborted objects owe nothing to their owners any more.
    fn forget_aborted(&self, aborted: &[miniray_common::ObjectId]) {
        if aborted.is_empty() {
            return;
        }
        let mut ownership = self.ownership.lock();
        for id in aborted {
            ownership.forget(*id);
        }
    }

    /// A new view of the other alive nodes (from the GCS).
    pub fn update_cluster(&self, nodes: &[NodeInfo]) {
        let view = nodes
            .iter()
            .filter(|n| n.state == NodeState::Alive as i32)
            .filter_map(|n| {
                let address = n.address.clone()?;
                let node_id = NodeId::from_bytes(&address.node_id).ok()?;
                Some(ClusterNode {
                    node_id,
                    address,
                    total: Resources::from_proto(&n.total.clone().unwrap_or_default()).ok()?,
                    available: Resources::from_proto(&n.available.clone().unwrap_or_default())
                        .ok()?,
                })
            })
            .collect();
        let mut st = self.sched.lock();
        st.scheduler.update_cluster(view);
        Self::reschedule(&mut st);
    }

    /// Whether the node is idle now: no lease, nothing queued, every resource back, no
    /// primary copy (see the module invariants).
    pub fn idleness(&self) -> Idleness {
        // Ownership first and on its own: `sched` is held while taking nothing else.
        let (copies, copies_gone) = {
            let o = self.ownership.lock();
            (o.primary_copies(), o.empty_since())
        };
        let (busy_reasons, sched_idle_since) = {
            let st = self.sched.lock();
            (busy_reasons(&st, copies), st.idle_since)
        };
        let since = match (sched_idle_since, copies_gone) {
            (Some(a), Some(b)) if busy_reasons.is_empty() => Some(a.max(b.unwrap_or(self.started))),
            _ => None,
        };
        Idleness {
            idle_for: since.map_or(Duration::ZERO, |s| s.elapsed()),
            busy_reasons,
        }
    }

    /// `DrainNode`: accepted only when the node is idle right now (decided under `sched`)
    /// and is not the head;
    /// then no lease is granted any more and the node stops: it tells the GCS it is
    /// draining, unregisters with `drained: <reason>` and exits. Accepting twice is fine.
    /// Returns why it was refused.
    pub fn drain(self: &Arc<Self>, reason: &str) -> Result<(), String> {
        if self.is_shutting_down() {
            return Err("the raylet is shutting down".into());
        }
        if self.cfg.is_head {
            // The GCS and the driver's home are here; an autoscaler never removes the head.
            return Err("the head node is never drained".into());
        }
        let copies = self.ownership.lock().primary_copies();
        {
            let mut st = self.sched.lock();
            if st.scheduler.is_draining() {
                return Ok(());
            }
            let reasons = busy_reasons(&st, copies);
            if !reasons.is_empty() {
                return Err(reasons.join(", "));
            }
            st.scheduler.start_draining();
        }
        let reason = if reason.is_empty() { "idle" } else { reason };
        *self.drained.lock() = Some(format!("drained: {reason}"));
        tracing::info!(node_id = %self.node_id, reason, "drain accepted; the node stops taking leases and exits");
        let node = Arc::clone(self);
        tokio::spawn(async move {
            // Best effort: DRAINING tells everyone at once not to send work here; the
            // unregistration that follows is what counts.
            let mut gcs = node.gcs.clone();
            let request = node.heartbeat_request();
            match tokio::time::timeout(DRAIN_HEARTBEAT_TIMEOUT, gcs.heartbeat(request)).await {
                Ok(Ok(_)) => {}
                Ok(Err(status)) => {
                    tracing::warn!(error = %status, "draining heartbeat failed")
                }
                Err(_) => tracing::warn!("draining heartbeat timed out"),
            }
            node.trigger_shutdown(None);
        });
        Ok(())
    }

    /// What this node reports about itself (registration, stats).
    pub fn node_info(&self) -> NodeInfo {
        let idle = self.idleness();
        let (total, available, demand, leased, draining) = {
            let st = self.sched.lock();
            (
                st.scheduler.total().to_proto(),
                st.scheduler.available().to_proto(),
                st.scheduler.demand(),
                st.scheduler.num_leases(),
                st.scheduler.is_draining(),
            )
        };
        let counts = self.pool.counts();
        NodeInfo {
            address: Some(self.address.clone()),
            state: if draining {
                NodeState::Draining as i32
            } else {
                NodeState::Alive as i32
            },
            total: Some(total),
            available: Some(available),
            demand,
            is_head: self.cfg.is_head,
            object_store_capacity: self.store.capacity(),
            object_store_used: self.store.used(),
            num_workers: counts.total,
            num_leased_workers: u32::try_from(leased).unwrap_or(u32::MAX),
            last_heartbeat_ms: miniray_common::time::now_ms(),
            death_reason: String::new(),
            labels: self.cfg.labels.clone(),
            cloud_instance_id: self.cfg.cloud_instance_id.clone().unwrap_or_default(),
            node_type: self.cfg.node_type.clone().unwrap_or_default(),
            idle_duration_ms: u64::try_from(idle.idle_for.as_millis()).unwrap_or(u64::MAX),
            busy_reasons: idle.busy_reasons,
            metrics_port: u32::from(self.metrics_port),
        }
    }

    pub fn heartbeat_request(&self) -> HeartbeatRequest {
        let info = self.node_info();
        HeartbeatRequest {
            node_id: self.node_id.to_vec(),
            available: info.available,
            demand: info.demand,
            object_store_used: info.object_store_used,
            num_workers: info.num_workers,
            num_leased_workers: info.num_leased_workers,
            idle_duration_ms: info.idle_duration_ms,
            busy_reasons: info.busy_reasons,
            draining: info.state == NodeState::Draining as i32,
        }
    }
}

/// Why the node is busy: the scheduler's reasons, then its primary copies.
fn busy_reasons(st: &SchedState, primary_copies: usize) -> Vec<String> {
    let mut reasons = st.scheduler.busy_reasons();
    match primary_copies {
        0 => {}
        1 => reasons.push("1 primary copy".to_string()),
        n => reasons.push(format!("{n} primary copies")),
    }
    reasons
}

/// Bound on the heartbeat that announces an accepted drain.
const DRAIN_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);

/// Attempts at telling the GCS about one dead worker.
const REPORT_ATTEMPTS: u32 = 3;
/// Bound on each attempt, so a hung GCS cannot pile up report tasks.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before the second attempt; doubled before each further one.
const REPORT_FIRST_RETRY: Duration = Duration::from_millis(200);

/// `ReportWorkerFailure`, best effort: a GCS that stays unreachable learns of an actor's
/// death later anyway (its supervisor sees the node die, or probes the worker after a GCS
/// restart).
async fn report_worker_failure(
    mut gcs: GcsClient<AuthedChannel>,
    node_id: NodeId,
    worker_id: WorkerId,
    reason: String,
) {
    let request = ReportWorkerFailureRequest {
        node_id: node_id.to_vec(),
        worker_id: worker_id.to_vec(),
        reason,
    };
    let mut delay = REPORT_FIRST_RETRY;
    for attempt in 1..=REPORT_ATTEMPTS {
        match tokio::time::timeout(REPORT_TIMEOUT, gcs.report_worker_failure(request.clone())).await
        {
            Ok(Ok(_)) => return,
            Ok(Err(status)) => {
                tracing::debug!(worker_id = %worker_id, attempt, error = %status, "reporting a worker failure failed")
            }
            Err(_) => {
                tracing::debug!(worker_id = %worker_id, attempt, "reporting a worker failure timed out")
            }
        }
        if attempt < REPORT_ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    tracing::warn!(worker_id = %worker_id, "could not report a worker failure to the gcs");
}

/// Holds a queued request's place; dropping it (the caller went away) takes it out of the
/// queue, or gives back a grant that arrived too late.
struct QueuedGuard {
    node: Arc<Node>,
    ticket: Ticket,
    rx: Option<oneshot::Receiver<Outcome>>,
}

impl QueuedGuard {
    async fn wait(&mut self) -> Result<Outcome, Status> {
        let Some(rx) = self.rx.as_mut() else {
            return Err(ErrorCode::Internal.status("lease request waited twice"));
        };
        let outcome = rx
            .await
            .map_err(|_| ErrorCode::Unavailable.status("the raylet is shutting down"))?;
        self.rx = None;
        Ok(outcome)
    }
}

impl Drop for QueuedGuard {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let mut st = self.node.sched.lock();
        if st.scheduler.cancel(self.ticket) {
            st.waiters.remove(&self.ticket);
            st.note_idle();
            tracing::debug!(
                ticket = self.ticket,
                "queued lease request cancelled by its caller"
            );
        } else if let Ok(Outcome::Granted(lease)) = rx.try_recv() {
            st.scheduler.release(&lease);
            Node::reschedule(&mut st);
        }
    }
}

/// Gives a granted lease back unless disarmed once a worker is bound and the grant sent.
struct LeaseGuard {
    node: Arc<Node>,
    lease_id: LeaseId,
    armed: bool,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if self.armed
            && let Some(worker) = self.node.release_lease(&self.lease_id)
        {
            self.node.pool.release(worker, false);
        }
    }
}
