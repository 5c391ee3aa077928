//! Task submission: dependency resolution, worker leases (with spillback), direct push to
//! leased workers, retries when a worker dies.
//!
//! Tasks are grouped by scheduling key (their resource shape). Per key the submitter keeps a
//! queue, the workers it leases, and how many lease requests are out. Invariants:
//! - the raylet is asked for a lease only while tasks of that key wait (at most
//!   `MAX_PENDING_LEASES` requests at once), never per task;
//! - a leased worker holds one batch of our tasks at a time, of at most `in_flight_limit`
//!   tasks: one while tasks of the key are long or of unknown length, more when short;
//! - an idle lease is returned after `LEASE_LINGER` (a millisecond), so a loop of
//!   submit-then-get reuses it, yet a CPU sits idle in a lease only that long while other
//!   requests (a blocked task's children) may wait for it. The timer starts when the
//!   worker runs out of tasks: nothing polls while it is busy;
//! - a worker whose push fails is treated as dead: its lease is returned with `disconnect`
//!   (its raylet stops it) and the raylet says, from the worker's reply journal, what each
//!   unfinished task came to. Only the task that was running when the worker died spends a
//!   retry (or fails `WorkerDied` without one); a task that finished gets its recorded reply;
//!   a task that never started is queued again for free. So a task with `max_retries(0)`
//!   runs at most once, and no task pays for another's crash. When the raylet cannot tell
//!   (its node is gone too), every unfinished task spends a retry, as in Ray on node death;
//! - a worker on a node the GCS declared dead (`nodes.rs`) fails at once: its push stops
//!   waiting, its raylet is neither asked what ran nor given the lease back, and no lease
//!   request goes to that node;
//! - a lease request starts at the home raylet as it is when the request is made
//!   (`home.rs`); a remote driver's request that its home did not answer, or that was
//!   pending when the home's node died, goes again at the next home. Leases already granted
//!   by other nodes are unaffected by the home's death.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use miniray_common::{ObjectId, Resources, TaskId};
use miniray_proto::{
    AutoscalingState, GetAllNodesRequest, GetAutoscalingStateRequest, NodeState, PushTaskReply,
    RequestWorkerLeaseRequest, ReturnWorkerRequest, TaskArg, TaskSpec, TaskState,
    request_worker_lease_reply,
};
use parking_lot::Mutex;
use tracing::{debug, warn};

use super::CoreWorker;
use super::HOME_RETRY;
use super::borrowing::Held;
use super::clients::node_endpoint;
use super::home::{Home, REHOME_DEADLINE};
use super::plasma::status_error;
use super::push::{PushOutcome, Recovered};
use super::store::{State, Value};
use super::task_events::{FnName, Queued, Recorded, Submission, scan_queue};
use crate::error::{Error, Result};
use crate::object_ref::RefHandle;
use crate::options::{Arg, ArgKind, TaskOptions};

const MAX_PENDING_LEASES: usize = 10;
/// How long a lease stays with its idle worker, for a loop that submits again as soon as
/// it has the last result (a few tens of µs here). Short, because an idle lease holds its
/// CPUs from every other lease request of the node: a nested task's children wait for
/// them.
const LEASE_LINGER: Duration = Duration::from_millis(1);
/// Spillback hops one request may follow. A spilled request is granted or rejected where it
/// lands (never spilled again), so one hop is all a current raylet asks for.
const MAX_SPILLBACK_HOPS: usize = 4;
/// First pause before asking the home again after a node rejected a spilled request; it
/// doubles up to `MAX_REJECT_BACKOFF` (about a raylet's cluster-view refresh).
const MIN_REJECT_BACKOFF: Duration = Duration::from_millis(10);
const MAX_REJECT_BACKOFF: Duration = Duration::from_millis(500);
/// Consecutive failed lease attempts (with backoff) before the key's tasks fail.
const MAX_LEASE_FAILURES: u32 = 30;

struct QueuedTask {
    spec: TaskSpec,
    /// The registered function, for its events.
    function: &'static str,
    /// Its SUBMITTED, reported with its next event or by a report's queue scan.
    submission: Submission,
    retries_left: u32,
    /// Objects the task reads: held so that they stay alive until it is done.
    _deps: Vec<Held>,
}

impl Queued for QueuedTask {
    fn spec(&self) -> &TaskSpec {
        &self.spec
    }
    fn function(&self) -> &'static str {
        self.function
    }
    fn submission(&mut self) -> &mut Submission {
        &mut self.submission
    }
}

struct Leased {
    lease_id: Vec<u8>,
    worker_id: Vec<u8>,
    endpoint: String,
    /// The raylet that granted the lease, to return it to, and its node.
    raylet: String,
    node_id: Vec<u8>,
    in_flight: usize,
    /// Bumped whenever the worker is handed a task: a linger timer only returns the lease
    /// if nothing happened since it was set.
    generation: u64,
    /// Woken when the worker runs out of tasks: its lease's linger timer starts then.
    idle: Arc<tokio::sync::Notify>,
}

struct KeyState {
    resources: Resources,
    queue: VecDeque<QueuedTask>,
    workers: Vec<Leased>,
    pending_leases: usize,
    feasibility_checked: bool,
    /// Moving average of how long tasks of this key run on a worker.
    avg_run_micros: Option<f64>,
}

impl KeyState {
    fn new(resources: Resources) -> Self {
        Self {
            resources,
            queue: VecDeque::new(),
            workers: Vec::new(),
            pending_leases: 0,
            feasibility_checked: false,
            avg_run_micros: None,
        }
    }

    /// Nothing queued, leased or being leased: the state can go (a later task of the key
    /// starts a fresh one, at the cost of one feasibility check and a new run-time average).
    fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.workers.is_empty() && self.pending_leases == 0
    }
}

/// Drops the state of `key` if it is idle, so a process that submits tasks of many
/// shapes over its life keeps state only for the shapes in use.
fn forget_if_idle(keys: &mut HashMap<String, KeyState>, key: &str) {
    if keys.get(key).is_some_and(KeyState::is_idle) {
        keys.remove(key);
    }
}

/// How many tasks one worker may hold at once. Short tasks are pipelined in batches, since
/// the round trip then dominates; long or unknown ones go one at a time so that they spread
/// over all the workers leased.
fn in_flight_limit(avg_run_micros: Option<f64>) -> usize {
    match avg_run_micros {
        Some(us) if us < 200.0 => 64,
        Some(us) if us < 2_000.0 => 8,
        _ => 1,
    }
}

/// Where a batch goes: the leased worker and its node.
struct Target {
    endpoint: String,
    node_id: Vec<u8>,
}

/// A granted lease: the worker and the raylet that granted it.
struct Grant {
    lease_id: Vec<u8>,
    worker_id: Vec<u8>,
    endpoint: String,
    raylet: String,
    node_id: Vec<u8>,
}

/// Why a lease request failed: its first hop, the home raylet, did not answer (a remote
/// driver then waits for a re-home), the node it was spilled to had no room after all (ask
/// the home again), or anything else.
enum LeaseError {
    HomeUnreachable(Error),
    Rejected,
    Other(Error),
}

/// Arguments in wire form, and the objects they read.
pub(crate) struct PreparedArgs {
    pub args: Vec<TaskArg>,
    /// Held until the task is done, so that its arguments stay alive.
    pub deps: Vec<Held>,
    /// Positions still to fill in once these objects are ready.
    pub unresolved: Vec<(usize, Arc<RefHandle>)>,
}

#[derive(Default)]
pub(crate) struct Submitter {
    keys: Mutex<HashMap<String, KeyState>>,
}

/// What the submitter holds now, for the process's metrics.
pub(crate) struct SubmitterUsage {
    pub(crate) queued: usize,
    pub(crate) leases: usize,
}

impl Submitter {
    pub(crate) fn usage(&self) -> SubmitterUsage {
        let keys = self.keys.lock();
        SubmitterUsage {
            queued: keys.values().map(|st| st.queue.len()).sum(),
            leases: keys.values().map(|st| st.workers.len()).sum(),
        }
    }

    /// Resource shapes with state (queued, leased or being leased tasks).
    pub(crate) fn key_count(&self) -> usize {
        self.keys.lock().len()
    }

    /// Leases held now (returned at shutdown): lease id, raylet, node id.
    fn take_all_leases(&self) -> Vec<(Vec<u8>, String, Vec<u8>)> {
        let mut keys = self.keys.lock();
        keys.values_mut()
            .flat_map(|st| {
                st.workers
                    .drain(..)
                    .map(|w| (w.lease_id, w.raylet, w.node_id))
            })
            .collect()
    }
}

impl CoreWorker {
    /// Submits a task; the returned handle is the reference to its result.
    pub(crate) fn submit_task(
        self: &Arc<Self>,
        opts: TaskOptions,
        args: Vec<Arg>,
    ) -> Result<Arc<RefHandle>> {
        let (return_id, result) = self.pending_result();
        let PreparedArgs {
            args: task_args,
            deps,
            unresolved,
        } = self.prepare_args(args);
        let spec = TaskSpec {
            task_id: TaskId::random().to_vec(),
            job_id: self.job_id.to_vec(),
            function_name: opts.function.to_string(),
            args: task_args,
            return_id: return_id.to_vec(),
            caller: Some(self.address.to_proto()),
            resources: Some(opts.request.resources.to_proto()),
            attempt: 0,
            ..Default::default()
        };
        // A task that waits for its arguments is in no queue a report scans: it is
        // recorded SUBMITTED now. Any other goes SUBMITTED with its next event.
        let submission = if unresolved.is_empty() {
            self.task_events.submission()
        } else {
            self.task_events.record(|| {
                Recorded::new(&spec, TaskState::Submitted, FnName::Static(opts.function))
            });
            Submission::Reported
        };
        self.counters.task_submitted();
        let task = QueuedTask {
            spec,
            function: opts.function,
            submission,
            retries_left: opts.max_retries,
            _deps: deps,
        };
        let resources = opts.request.resources;
        if unresolved.is_empty() {
            self.enqueue(resources, task);
        } else {
            let cw = self.clone();
            self.handle.spawn(async move {
                let mut task = task;
                match cw.resolve_args(&mut task.spec.args, unresolved).await {
                    Ok(()) => cw.enqueue(resources, task),
                    // A failed dependency fails the task with the same error.
                    Err(e) => {
                        cw.record_failed(&task.spec, task.function, 0, || e.to_string());
                        cw.store.complete(return_id, Err(e));
                    }
                }
            });
        }
        Ok(result)
    }

    /// A new object owned here, pending until a task or call completes it.
    pub(crate) fn pending_result(self: &Arc<Self>) -> (ObjectId, Arc<RefHandle>) {
        let id = ObjectId::random();
        self.store.insert_owned(id, State::Pending);
        (id, RefHandle::new(self, id, self.address.clone()))
    }

    /// Turns arguments into their wire form: small values inline, large ones stored like a
    /// `put`, references left to resolve (`unresolved`, by position).
    pub(crate) fn prepare_args(self: &Arc<Self>, args: Vec<Arg>) -> PreparedArgs {
        let mut prepared = PreparedArgs {
            args: Vec::with_capacity(args.len()),
            deps: Vec::new(),
            unresolved: Vec::new(),
        };
        for (i, arg) in args.into_iter().enumerate() {
            let handle = match arg.0 {
                ArgKind::Value(bytes, contained) if bytes.len() < self.inline_threshold => {
                    prepared.args.push(TaskArg {
                        object_id: Vec::new(),
                        value: Some(Value::Inline(Arc::new(bytes)).to_proto()),
                    });
                    // Held until the task is done: the worker registers as their borrower
                    // before it replies (see `borrowing.rs`).
                    prepared.deps.extend(contained);
                    continue;
                }
                // Too big to travel inline: store it like a `put` and pass the reference.
                ArgKind::Value(bytes, contained) => self.put_in_background(bytes, contained),
                ArgKind::Ref(handle) => handle,
            };
            prepared.unresolved.push((i, handle.clone()));
            prepared.args.push(TaskArg::default());
            prepared.deps.push(Held::Object(handle));
        }
        prepared
    }

    /// Waits for the referenced arguments and fills in where their values are.
    pub(crate) async fn resolve_args(
        &self,
        args: &mut [TaskArg],
        unresolved: Vec<(usize, Arc<RefHandle>)>,
    ) -> Result<()> {
        for (i, handle) in unresolved {
            let v = self.resolve(&handle, None).await?;
            args[i] = TaskArg {
                object_id: handle.id.to_vec(),
                value: Some(v.to_proto()),
            };
        }
        Ok(())
    }

    fn enqueue(self: &Arc<Self>, resources: Resources, task: QueuedTask) {
        self.follow_node_deaths();
        let key = resources.shape_key();
        {
            let mut keys = self.submitter.keys.lock();
            keys.entry(key.clone())
                .or_insert_with(|| KeyState::new(resources))
                .queue
                .push_back(task);
        }
        self.pump(&key);
    }

    /// SUBMITTED events of the queued tasks not reported yet (see `task_events::scan_queue`).
    pub(crate) fn scan_task_queue(&self, out: &mut Vec<Recorded>) {
        let mut keys = self.submitter.keys.lock();
        for st in keys.values_mut() {
            scan_queue(st.queue.iter_mut(), out);
        }
    }

    /// Hands queued tasks to leased workers and asks for more leases.
    fn pump(self: &Arc<Self>, key: &str) {
        let mut pushes = Vec::new();
        let mut new_leases = 0;
        {
            let mut keys = self.submitter.keys.lock();
            let Some(st) = keys.get_mut(key) else { return };
            let limit = in_flight_limit(st.avg_run_micros);
            let mut order: Vec<usize> = (0..st.workers.len()).collect();
            order.sort_by_key(|&i| st.workers[i].in_flight);
            for i in order {
                if st.queue.is_empty() {
                    break;
                }
                // One batch per worker at a time: tasks queue up while it runs and go as the
                // next batch, and when a worker dies the first unfinished task of its batch
                // is the only one that was running (the rest keep their retries).
                if st.workers[i].in_flight != 0 {
                    continue;
                }
                let take = limit.min(st.queue.len());
                let batch: Vec<QueuedTask> = st.queue.drain(..take).collect();
                let w = &mut st.workers[i];
                w.in_flight += batch.len();
                w.generation += 1;
                pushes.push((
                    w.lease_id.clone(),
                    Target {
                        endpoint: w.endpoint.clone(),
                        node_id: w.node_id.clone(),
                    },
                    batch,
                ));
            }
            let wanted = st.queue.len().min(MAX_PENDING_LEASES);
            while st.pending_leases < wanted {
                st.pending_leases += 1;
                new_leases += 1;
            }
            forget_if_idle(&mut keys, key);
        }
        for (lease_id, target, batch) in pushes {
            let cw = self.clone();
            let key = key.to_string();
            self.handle
                .spawn(async move { cw.push(key, lease_id, target, batch).await });
        }
        for _ in 0..new_leases {
            let cw = self.clone();
            let key = key.to_string();
            self.handle.spawn(async move { cw.lease_loop(key).await });
        }
    }

    /// Returns the lease once its worker has sat idle, with nothing queued, for a whole
    /// `LEASE_LINGER`. One of these runs per lease, for the lease's lifetime, and sleeps
    /// while the worker is busy.
    async fn linger(
        self: Arc<Self>,
        key: String,
        lease_id: Vec<u8>,
        idle: Arc<tokio::sync::Notify>,
    ) {
        loop {
            let seen = {
                let keys = self.submitter.keys.lock();
                let Some(w) = keys
                    .get(&key)
                    .and_then(|st| st.workers.iter().find(|w| w.lease_id == lease_id))
                else {
                    return;
                };
                w.generation
            };
            tokio::time::sleep(LEASE_LINGER).await;
            let returned = {
                let mut keys = self.submitter.keys.lock();
                let Some(st) = keys.get_mut(&key) else { return };
                let queue_empty = st.queue.is_empty();
                let Some(pos) = st.workers.iter().position(|w| w.lease_id == lease_id) else {
                    return;
                };
                let w = &st.workers[pos];
                if w.in_flight == 0 && queue_empty && w.generation == seen {
                    let w = st.workers.remove(pos);
                    forget_if_idle(&mut keys, &key);
                    Some((w.raylet, w.node_id))
                } else if w.in_flight == 0 && queue_empty {
                    // Busy in between and idle again: a whole window from now.
                    continue;
                } else {
                    None
                }
            };
            match returned {
                Some((raylet, node_id)) => {
                    self.return_lease(lease_id, &raylet, &node_id, false).await;
                    return;
                }
                // Busy: the timer starts again when the worker runs out of tasks (a
                // wake-up stored before this wait counts).
                None => idle.notified().await,
            }
        }
    }

    /// Gives a lease back to the raylet of node `node_id`. A lease from a node the GCS
    /// declared dead is just dropped: its raylet is gone or cut off, and the call would hang.
    async fn return_lease(
        &self,
        lease_id: Vec<u8>,
        raylet: &str,
        node_id: &[u8],
        disconnect: bool,
    ) {
        if self.dead_nodes.is_dead(node_id) {
            return;
        }
        let Ok(mut client) = self.clients.raylet(raylet) else {
            return;
        };
        let call = client.return_worker(ReturnWorkerRequest {
            lease_id,
            disconnect,
        });
        tokio::select! {
            biased;
            result = call => {
                if let Err(status) = result {
                    debug!(raylet, error = %status, "returning a lease failed");
                }
            }
            () = self.dead_nodes.wait_dead(node_id) => {}
        }
    }

    /// Returns every lease this process holds (at shutdown).
    pub(crate) async fn return_all_leases(&self) {
        for (lease_id, raylet, node_id) in self.submitter.take_all_leases() {
            self.return_lease(lease_id, &raylet, &node_id, false).await;
        }
    }

    /// Obtains one lease for `key` (retrying with backoff), then pumps.
    async fn lease_loop(self: Arc<Self>, key: String) {
        let mut failures = 0u32;
        loop {
            let (resources, check) = {
                let mut keys = self.submitter.keys.lock();
                let Some(st) = keys.get_mut(&key) else { return };
                if st.queue.is_empty() {
                    st.pending_leases -= 1;
                    forget_if_idle(&mut keys, &key);
                    return;
                }
                let check = !st.feasibility_checked;
                (st.resources.clone(), check)
            };
            if check {
                match self.cluster_can_ever_fit(&resources).await {
                    Ok(true) => {
                        if let Some(st) = self.submitter.keys.lock().get_mut(&key) {
                            st.feasibility_checked = true;
                        }
                    }
                    Ok(false) => {
                        warn!(resources = %resources, "no node of the cluster nor node type of its autoscaling config can provide the resources of this task");
                        self.fail_key(
                            &key,
                            Error::Infeasible {
                                resources: resources.to_string(),
                            },
                        );
                        return;
                    }
                    Err(e) => {
                        debug!(error = %e, "feasibility check failed; asking the raylet anyway")
                    }
                }
            }
            match self.acquire_lease(&resources).await {
                Ok(Grant {
                    lease_id,
                    worker_id,
                    endpoint,
                    raylet,
                    node_id,
                }) => {
                    let lease_id_copy = lease_id.clone();
                    let idle = Arc::new(tokio::sync::Notify::new());
                    let mut keys = self.submitter.keys.lock();
                    match keys.get_mut(&key) {
                        Some(st) => {
                            st.pending_leases -= 1;
                            st.workers.push(Leased {
                                lease_id,
                                worker_id,
                                endpoint,
                                raylet,
                                node_id,
                                in_flight: 0,
                                generation: 0,
                                idle: Arc::clone(&idle),
                            });
                        }
                        None => return,
                    }
                    drop(keys);
                    let cw = self.clone();
                    let linger_key = key.clone();
                    self.handle
                        .spawn(async move { cw.linger(linger_key, lease_id_copy, idle).await });
                    self.pump(&key);
                    return;
                }
                Err(e) => {
                    failures += 1;
                    if failures >= MAX_LEASE_FAILURES {
                        warn!(error = %e, "giving up on worker leases");
                        self.fail_key(&key, e);
                        return;
                    }
                    debug!(error = %e, failures, "lease request failed; retrying");
                    let backoff = Duration::from_millis(50 * u64::from(failures.min(10)));
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    /// Fails every queued task of `key` with `err`.
    fn fail_key(&self, key: &str, err: Error) {
        let tasks: Vec<QueuedTask> = {
            let mut keys = self.submitter.keys.lock();
            let Some(st) = keys.get_mut(key) else { return };
            st.pending_leases = st.pending_leases.saturating_sub(1);
            let tasks = st.queue.drain(..).collect();
            forget_if_idle(&mut keys, key);
            tasks
        };
        for mut t in tasks {
            self.record_failed(&t.spec, t.function, t.submission.take(), || err.to_string());
            if let Ok(id) = ObjectId::from_bytes(&t.spec.return_id) {
                self.store.complete(id, Err(err.clone()));
            }
        }
    }

    /// The total resources of each alive node.
    async fn alive_node_totals(&self) -> Result<Vec<Resources>> {
        let mut gcs = self.gcs.clone();
        let nodes = gcs
            .get_all_nodes(GetAllNodesRequest {})
            .await
            .map_err(|s| status_error(&self.gcs_address, s))?
            .into_inner()
            .nodes;
        Ok(nodes
            .iter()
            .filter(|n| n.state == NodeState::Alive as i32)
            .filter_map(|n| n.total.as_ref().and_then(|t| Resources::from_proto(t).ok()))
            .collect())
    }

    /// Total resources of the alive nodes, by name.
    pub(crate) async fn cluster_resources(
        &self,
    ) -> Result<std::collections::BTreeMap<String, f64>> {
        let mut total = Resources::new();
        for t in self.alive_node_totals().await? {
            total.add(&t, None);
        }
        Ok(total.iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    /// Whether the cluster could ever run something needing `resources`: some alive node's
    /// total fits it, or the cluster autoscales (an autoscaler reported its state to the
    /// GCS) and a node type it may launch (`max_workers > 0`, or the head type) fits it.
    /// In the second case the lease waits queued at a raylet, whose demand the autoscaler
    /// reads, until a node that fits joins.
    pub(crate) async fn cluster_can_ever_fit(&self, resources: &Resources) -> Result<bool> {
        if self
            .alive_node_totals()
            .await?
            .iter()
            .any(|t| t.contains(resources))
        {
            return Ok(true);
        }
        let mut gcs = self.gcs.clone();
        let state = gcs
            .get_autoscaling_state(GetAutoscalingStateRequest {})
            .await
            .map_err(|s| status_error(&self.gcs_address, s))?
            .into_inner()
            .state;
        Ok(state.is_some_and(|s| launchable_type_fits(&s, resources)))
    }

    /// Asks the local raylet for a lease, following spillback. A node the GCS declared
    /// dead is never asked (a spillback there fails this attempt, which is retried), and a
    /// request to a node declared dead while it waits fails at once.
    ///
    /// The first hop is the home raylet as it is now (see `home.rs`). A remote driver whose
    /// home does not answer asks again, at the next home once it re-homed, for up to
    /// `REHOME_DEADLINE`: such failures spend none of the key's lease attempts.
    ///
    /// A request spilled to a node that turns out to have no room is rejected there and
    /// asked again at the home, which queues it until some node has room (see the raylet's
    /// scheduler): rejections spend no attempt either.
    async fn acquire_lease(&self, resources: &Resources) -> Result<Grant> {
        let started = std::time::Instant::now();
        let mut reject_backoff = MIN_REJECT_BACKOFF;
        loop {
            let home = self.home.usable(&self.dead_nodes).await?;
            match self.lease_from(&home, resources).await {
                Err(LeaseError::HomeUnreachable(_))
                    if self.home.is_movable() && started.elapsed() < REHOME_DEADLINE =>
                {
                    self.home.report_unreachable(&home);
                    self.home.wait_change(&home, HOME_RETRY).await;
                }
                Err(LeaseError::Rejected) => {
                    debug!(shape = %resources, backoff_ms = reject_backoff.as_millis() as u64, "spilled lease request rejected; asking the home again");
                    tokio::time::sleep(reject_backoff).await;
                    reject_backoff = (reject_backoff * 2).min(MAX_REJECT_BACKOFF);
                }
                Err(LeaseError::HomeUnreachable(e) | LeaseError::Other(e)) => return Err(e),
                Ok(grant) => return Ok(grant),
            }
        }
    }

    /// One lease request, starting at `home` and following spillback; a node spilled to is
    /// asked to grant or reject.
    async fn lease_from(
        &self,
        home: &Home,
        resources: &Resources,
    ) -> std::result::Result<Grant, LeaseError> {
        let mut target = home.endpoint.clone();
        let mut target_node = home.id.to_vec();
        for hop in 0..=MAX_SPILLBACK_HOPS {
            // The home not answering, or its node dying under the request, is for the
            // caller to retry at the next home; any other failure spends an attempt.
            let failed = |e: Error| match e {
                Error::ClusterUnreachable { .. } if hop == 0 => LeaseError::HomeUnreachable(e),
                e => LeaseError::Other(e),
            };
            let dead = || {
                let e = Error::Internal(format!("the node of raylet {target} is dead"));
                if hop == 0 {
                    LeaseError::HomeUnreachable(e)
                } else {
                    LeaseError::Other(e)
                }
            };
            if self.dead_nodes.is_dead(&target_node) {
                return Err(dead());
            }
            let mut client = self.clients.raylet(&target).map_err(LeaseError::Other)?;
            let call = client.request_worker_lease(RequestWorkerLeaseRequest {
                job_id: self.job_id.to_vec(),
                resources: Some(resources.to_proto()),
                no_spillback: false,
                requester: Some(self.address.to_proto()),
                grant_or_reject: hop > 0,
            });
            let reply = tokio::select! {
                biased;
                reply = call => reply.map_err(|s| failed(status_error(&target, s)))?.into_inner(),
                () = self.dead_nodes.wait_dead(&target_node) => return Err(dead()),
            };
            match reply.outcome {
                Some(request_worker_lease_reply::Outcome::Granted(grant)) => {
                    let worker = grant.worker.ok_or_else(|| {
                        LeaseError::Other(Error::Internal("lease grant without a worker".into()))
                    })?;
                    return Ok(Grant {
                        lease_id: grant.lease_id,
                        endpoint: miniray_common::net::host_port(&worker.host, worker.port),
                        worker_id: worker.worker_id,
                        raylet: target,
                        node_id: worker.node_id,
                    });
                }
                Some(request_worker_lease_reply::Outcome::Spillback(node)) => {
                    target = node_endpoint(&node);
                    target_node = node.node_id;
                }
                Some(request_worker_lease_reply::Outcome::Rejected(_)) => {
                    return Err(LeaseError::Rejected);
                }
                None => {
                    return Err(LeaseError::Other(Error::Internal(
                        "empty lease reply".into(),
                    )));
                }
            }
        }
        Err(LeaseError::Other(Error::Internal(
            "lease spilled back too many times".into(),
        )))
    }

    /// Pushes a batch to a leased worker and completes each task as its reply streams in.
    async fn push(
        self: Arc<Self>,
        key: String,
        lease_id: Vec<u8>,
        Target { endpoint, node_id }: Target,
        mut tasks: Vec<QueuedTask>,
    ) {
        let specs = self.task_events.specs_for_push(tasks.iter_mut());
        let PushOutcome {
            done,
            failure,
            delivered,
            ..
        } = self
            .push_batch(&endpoint, &node_id, specs, |i, reply| {
                self.complete_task(&key, &lease_id, &tasks[i], reply)
            })
            .await;
        if let Some(reason) = failure {
            let unfinished: Vec<QueuedTask> = tasks.into_iter().skip(done).collect();
            warn!(worker = %endpoint, error = %reason, unfinished = unfinished.len(), "worker failed while running tasks");
            let dropped = self.drop_failed_worker(&key, &lease_id).await;
            let recovered = match dropped {
                // Refused before anything was sent: none of it ran.
                _ if !delivered => Recovered::Known(Default::default()),
                Some(Leased {
                    raylet,
                    node_id,
                    worker_id,
                    ..
                }) => {
                    let specs: Vec<&TaskSpec> = unfinished.iter().map(|t| &t.spec).collect();
                    self.recover_outcomes(&raylet, &node_id, &worker_id, &specs, None)
                        .await
                }
                None => Recovered::Unknown,
            };
            self.settle_unfinished(&key, unfinished, &recovered);
        }
        self.pump(&key);
    }

    /// Decides the fate of each unfinished task of a failed push, in batch order: a task
    /// that finished gets the reply the worker's journal kept; the task that was running
    /// when the worker died spends a retry or fails with `WorkerDied`; a task that never
    /// started is queued again as it is. When the raylet could not tell (its node is gone
    /// too), any of them may have run, so each spends a retry, as in Ray when a node dies:
    /// a task without retries must not run twice.
    fn settle_unfinished(
        self: &Arc<Self>,
        key: &str,
        unfinished: Vec<QueuedTask>,
        recovered: &Recovered,
    ) {
        let mut requeue = Vec::new();
        for mut task in unfinished {
            let Ok(return_id) = ObjectId::from_bytes(&task.spec.return_id) else {
                continue;
            };
            let was_running = match recovered.get(&task.spec.task_id) {
                Some(Some(Some(reply))) => {
                    self.complete_from_reply(
                        return_id,
                        reply.outcome.clone(),
                        reply.contained.clone(),
                    );
                    continue;
                }
                Some(Some(None)) => true,
                Some(None) => false,
                None => true,
            };
            if !was_running {
                requeue.push(task);
            } else if task.retries_left > 0 {
                self.record_failed(&task.spec, task.function, 0, || {
                    "its worker died while it ran; it is retried".to_string()
                });
                task.retries_left -= 1;
                task.spec.attempt += 1;
                requeue.push(task);
            } else {
                let err = Error::WorkerDied {
                    function: task.spec.function_name.clone(),
                    attempts: task.spec.attempt + 1,
                };
                self.record_failed(&task.spec, task.function, 0, || err.to_string());
                self.store.complete(return_id, Err(err));
            }
        }
        let Some(first) = requeue.first() else {
            return;
        };
        let mut keys = self.submitter.keys.lock();
        if !keys.contains_key(key) {
            // The key went idle (and was forgotten) while the push failed; its tasks'
            // specs carry the shape to start it over.
            let resources = first
                .spec
                .resources
                .as_ref()
                .and_then(|r| Resources::from_proto(r).ok())
                .unwrap_or_default();
            keys.insert(key.to_string(), KeyState::new(resources));
        }
        if let Some(st) = keys.get_mut(key) {
            for task in requeue.into_iter().rev() {
                st.queue.push_front(task);
            }
        }
    }

    /// Records one task's reply: its result, the worker's load, the key's run-time average.
    fn complete_task(
        self: &Arc<Self>,
        key: &str,
        lease_id: &[u8],
        task: &QueuedTask,
        reply: PushTaskReply,
    ) {
        if let Ok(return_id) = ObjectId::from_bytes(&task.spec.return_id) {
            self.complete_from_reply(return_id, reply.outcome, reply.contained);
        }
        let refill = {
            let mut keys = self.submitter.keys.lock();
            let Some(st) = keys.get_mut(key) else { return };
            let run = reply.run_micros as f64;
            st.avg_run_micros = Some(match st.avg_run_micros {
                Some(avg) => 0.8 * avg + 0.2 * run,
                None => run,
            });
            match st.workers.iter_mut().find(|w| w.lease_id == lease_id) {
                Some(w) => {
                    w.in_flight = w.in_flight.saturating_sub(1);
                    (w.in_flight == 0).then(|| Arc::clone(&w.idle))
                }
                None => None,
            }
        };
        if let Some(idle) = refill {
            self.pump(key);
            // Given more work by the pump or not, its linger timer looks again.
            idle.notify_one();
        }
    }

    /// Forgets a worker whose push failed and returns its lease as broken (so its raylet
    /// stops it; not to a dead node's raylet, see `return_lease`).
    async fn drop_failed_worker(&self, key: &str, lease_id: &[u8]) -> Option<Leased> {
        let leased = {
            let mut keys = self.submitter.keys.lock();
            let st = keys.get_mut(key)?;
            let pos = st.workers.iter().position(|w| w.lease_id == lease_id)?;
            st.workers.remove(pos)
        };
        self.return_lease(lease_id.to_vec(), &leased.raylet, &leased.node_id, true)
            .await;
        Some(leased)
    }
}

/// Whether a node type the autoscaler may launch has resources that contain `resources`.
fn launchable_type_fits(state: &AutoscalingState, resources: &Resources) -> bool {
    state.node_types.iter().any(|t| {
        (t.max_workers > 0 || t.is_head)
            && t.resources
                .as_ref()
                .and_then(|r| Resources::from_proto(r).ok())
                .is_some_and(|r| r.contains(resources))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use miniray_proto::NodeTypeInfo;

    fn res(pairs: &[(&str, f64)]) -> Resources {
        Resources::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), *v))).unwrap()
    }

    fn node_type(resources: &[(&str, f64)], max_workers: u32, is_head: bool) -> NodeTypeInfo {
        NodeTypeInfo {
            name: "t".into(),
            resources: Some(res(resources).to_proto()),
            min_workers: 0,
            max_workers,
            is_head,
        }
    }

    #[test]
    fn only_launchable_types_that_fit_make_a_request_wait() {
        let state = |types| AutoscalingState {
            node_types: types,
            ..Default::default()
        };
        let two_cpus = res(&[("CPU", 2.0)]);
        assert!(launchable_type_fits(
            &state(vec![node_type(&[("CPU", 2.0)], 1, false)]),
            &two_cpus
        ));
        // A type that may not be launched does not count; the head type does.
        assert!(!launchable_type_fits(
            &state(vec![node_type(&[("CPU", 4.0)], 0, false)]),
            &two_cpus
        ));
        assert!(launchable_type_fits(
            &state(vec![node_type(&[("CPU", 4.0)], 0, true)]),
            &two_cpus
        ));
        assert!(!launchable_type_fits(
            &state(vec![node_type(&[("CPU", 4.0)], 3, false)]),
            &res(&[("GPU", 1.0)])
        ));
        assert!(!launchable_type_fits(&state(Vec::new()), &two_cpus));
    }
}
