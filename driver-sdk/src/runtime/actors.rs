//! Actors as seen from a calling process: creation, lookup and kill through the GCS, and
//! one ordered call queue per actor, pushed straight to the worker that hosts it.
//!
//! Invariants:
//! - calls of this process to one actor reach it in the order they were made: they leave
//!   in submission order, a call still waiting for its arguments holds back the calls behind
//!   it, and at most one batch is in flight to the actor at a time (so batches cannot
//!   overtake each other on the wire);
//! - when a push fails, nothing more is sent until the GCS names a newer incarnation of the
//!   actor (or says it is dead). The worker's raylet says from the worker's reply journal
//!   what each unfinished call came to: a finished call gets its recorded reply, the call
//!   that was running spends one of its retries (`max_task_retries`) or fails with
//!   `ActorDied`, and calls that never started are sent again as they are. When the raylet
//!   cannot tell (node gone, or the worker still alive behind a broken connection), every
//!   unfinished call may have run and spends a retry or fails, as in Ray. A push to a node
//!   the GCS declared dead fails the moment that is known, and its raylet is not asked;
//! - the creating process of an unnamed actor kills it once its last handle is dropped, its
//!   queue is empty and no other process is registered as a borrower of a handle (handles
//!   that travel inside values are tracked like object references, see `borrowing.rs`); a
//!   handle that left the process untracked keeps the actor until its job ends.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use miniray_common::{ActorId, ErrorCode, ObjectId, TaskId, WorkerId, probe};
use miniray_proto::{
    ActorInfo, ActorState, CreateActorRequest, GetActorRequest, GetAllNodesRequest,
    KillActorRequest, TaskSpec, push_task_reply,
};
use parking_lot::Mutex;
use tracing::{debug, warn};

use super::CoreWorker;
use super::borrowing::{Borrower, Held, Subject, apply_borrower_delta, collect_borrower_workers};
use super::clients::node_endpoint;
use super::plasma::status_error;
use super::push::{PushOutcome, Recovered};
use super::submitter::PreparedArgs;
use super::task_events::{Queued, Recorded, Submission, scan_queue};
use crate::error::{Error, Result};
use crate::object_ref::{OwnerAddr, RefHandle};
use crate::options::{Arg, ResourceRequest};

/// Most calls sent to an actor in one push.
const MAX_BATCH: usize = 1024;
/// How long one lookup at the GCS waits for the actor to come (back) up before this
/// process checks for itself whether the worker it last used still answers.
const LOOKUP_WAIT: Duration = Duration::from_secs(2);
/// How long a caller whose push failed waits for the actor's worker to exit before it
/// takes the worker to be alive (a broken connection) and its calls' outcomes as unknown.
const ACTOR_RECOVER_WAIT: Duration = Duration::from_secs(3);
/// Failed lookups (GCS unreachable), with backoff, before the actor's calls fail.
const MAX_LOOKUP_FAILURES: u32 = 20;

/// Options of one actor creation; built by the `options()` of an `#[actor]` class.
#[derive(Clone, Debug)]
pub struct ActorOptions {
    pub(crate) name: Option<String>,
    pub(crate) request: ResourceRequest,
    pub(crate) max_restarts: i64,
    pub(crate) max_task_retries: u32,
}

impl Default for ActorOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl ActorOptions {
    /// No name, no resources held (an actor that needs CPUs asks with `num_cpus`), no
    /// restarts and no call retries, as in Ray.
    pub fn new() -> Self {
        Self {
            name: None,
            request: ResourceRequest::default(),
            max_restarts: 0,
            max_task_retries: 0,
        }
    }

    /// A cluster-wide name: `get_actor(name)` finds it from any driver. A named actor is not
    /// ended when its handles are dropped, only by `kill` or the end of its job.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        if name.is_empty() {
            self.request
                .reject("an actor name must not be empty".into());
        }
        self.name = Some(name);
        self
    }

    /// CPUs the actor holds for its whole life (default 0).
    pub fn num_cpus(self, n: f64) -> Self {
        self.resource("CPU", n)
    }

    /// Any other resource the actor holds for its life, such as `("GPU", 1.0)`.
    pub fn resource(mut self, name: impl Into<String>, amount: f64) -> Self {
        self.request.set(name, amount);
        self
    }

    /// How often the actor is re-created (constructor re-run) when its worker dies;
    /// -1 without limit (default 0).
    pub fn max_restarts(mut self, n: i64) -> Self {
        if n < -1 {
            self.request
                .reject(format!("max_restarts must be -1 or more, not {n}"));
        }
        self.max_restarts = n;
        self
    }

    /// How often a call is re-sent when the actor's worker dies while it runs (default 0).
    pub fn max_task_retries(mut self, n: u32) -> Self {
        self.max_task_retries = n;
        self
    }
}

/// One call waiting to go, or in flight.
struct Call {
    spec: TaskSpec,
    /// The method, for its events.
    method: &'static str,
    /// Its SUBMITTED, reported with its next event or by a report's queue scan.
    submission: Submission,
    /// False while its referenced arguments are not resolved yet.
    ready: bool,
    retries_left: u32,
    /// Objects the call reads: held until it is done.
    _deps: Vec<Held>,
}

impl Queued for Call {
    fn spec(&self) -> &TaskSpec {
        &self.spec
    }
    fn function(&self) -> &'static str {
        self.method
    }
    fn submission(&mut self) -> &mut Submission {
        &mut self.submission
    }
}

/// The worker hosting one incarnation of the actor.
#[derive(Clone)]
struct Target {
    endpoint: String,
    incarnation: u32,
    worker_id: Vec<u8>,
    node_id: Vec<u8>,
}

impl Target {
    fn of(a: &miniray_proto::WorkerAddress, incarnation: u32) -> Target {
        Target {
            endpoint: miniray_common::net::host_port(&a.host, a.port),
            incarnation,
            worker_id: a.worker_id.clone(),
            node_id: a.node_id.clone(),
        }
    }
}

struct ActorQueue {
    /// `Class(id)`, for errors.
    label: String,
    max_task_retries: u32,
    target: Option<Target>,
    /// The incarnation the next lookup must reach: one past the last that failed a push.
    min_incarnation: u32,
    looking_up: bool,
    calls: VecDeque<Call>,
    in_flight: bool,
    /// Set once the actor is known dead: every call fails with it.
    dead: Option<Error>,
    /// Live `ActorHandle`s in this process.
    handles: u32,
    /// This process created the actor (and may end it when its handles are gone).
    owned: bool,
    named: bool,
    escaped: bool,
    /// Owner: the processes registered as borrowers of a handle.
    borrowers: Vec<Borrower>,
    /// Borrower: the creating process, and how many registrations it holds for this one.
    creator: Option<OwnerAddr>,
    registrations: u32,
    /// Objects the constructor reads: kept for restarts, which re-run it.
    _creation_deps: Vec<Held>,
}

impl ActorQueue {
    fn new(label: String, max_task_retries: u32) -> Self {
        Self {
            label,
            max_task_retries,
            target: None,
            min_incarnation: 0,
            looking_up: false,
            calls: VecDeque::new(),
            in_flight: false,
            dead: None,
            handles: 0,
            owned: false,
            named: false,
            escaped: false,
            borrowers: Vec::new(),
            creator: None,
            registrations: 0,
            _creation_deps: Vec::new(),
        }
    }

    /// Nothing in this process needs the entry any more.
    fn unused(&self) -> bool {
        self.handles == 0 && self.calls.is_empty() && !self.in_flight
    }

    /// The owner may end the actor: nobody else can hold a handle.
    fn should_kill(&self) -> bool {
        self.owned
            && !self.named
            && !self.escaped
            && self.borrowers.is_empty()
            && self.dead.is_none()
            && self.unused()
    }
}

#[derive(Default)]
pub(crate) struct ActorSubmitter {
    actors: Mutex<HashMap<ActorId, ActorQueue>>,
    /// Set once this process follows the GCS's actor changes (from its first handle on).
    watching: std::sync::atomic::AtomicBool,
}

/// What `pump` decided to do outside the lock.
enum Step {
    Nothing,
    Fail(Vec<Call>, Error),
    Lookup(u32),
    Push(Target, Vec<Call>),
    Kill,
}

/// `Class(1a2b3c4d)`: how errors name an actor.
pub(crate) fn actor_label(class: &str, id: ActorId) -> String {
    let short = super::executor::short_name(class);
    let hex = id.to_string();
    format!("{short}({})", &hex[..hex.len().min(8)])
}

impl CoreWorker {
    /// Registers an actor with the GCS, which places and constructs it. Returns once the
    /// GCS has accepted it (a taken name is an error here); construction is asynchronous.
    /// The returned id comes with one handle counted: the caller's
    /// ([`ActorCore`](crate::actor::ActorCore) built by `counted`), which releases it when dropped.
    pub(crate) async fn create_actor(
        self: &Arc<Self>,
        class: &'static str,
        opts: ActorOptions,
        args: Vec<Arg>,
    ) -> Result<ActorId> {
        opts.request.check()?;
        let resources = &opts.request.resources;
        if !resources.is_empty() && !self.cluster_can_ever_fit(resources).await? {
            return Err(Error::Infeasible {
                resources: resources.to_string(),
            });
        }
        let PreparedArgs {
            mut args,
            deps,
            unresolved,
        } = self.prepare_args(args);
        self.resolve_args(&mut args, unresolved).await?;
        let actor_id = ActorId::random();
        let creation = TaskSpec {
            task_id: TaskId::random().to_vec(),
            job_id: self.job_id.to_vec(),
            function_name: class.to_string(),
            args,
            caller: Some(self.address.to_proto()),
            resources: Some(resources.to_proto()),
            actor_id: actor_id.to_vec(),
            actor_creation: true,
            ..Default::default()
        };
        let info = ActorInfo {
            actor_id: actor_id.to_vec(),
            job_id: self.job_id.to_vec(),
            class_name: class.to_string(),
            name: opts.name.clone().unwrap_or_default(),
            max_restarts: opts.max_restarts,
            max_task_retries: opts.max_task_retries,
            creation: Some(creation),
            resources: Some(resources.to_proto()),
            owner: Some(self.address.to_proto()),
            ..Default::default()
        };
        let mut gcs = self.gcs.clone();
        if let Err(status) = gcs
            .create_actor(CreateActorRequest { actor: Some(info) })
            .await
        {
            return Err(match ErrorCode::of_status(&status) {
                ErrorCode::AlreadyExists => Error::InvalidArgument(status.message().to_string()),
                _ => status_error(&self.gcs_address, status),
            });
        }
        self.follow_actors();
        let mut actors = self.actors.actors.lock();
        let q = actors
            .entry(actor_id)
            .or_insert_with(|| ActorQueue::new(actor_label(class, actor_id), 0));
        // The handle the caller is about to get counts from here: an announcement of the
        // actor handled before the caller holds it must not find it unreferenced (and end
        // it).
        q.handles += 1;
        q.max_task_retries = opts.max_task_retries;
        q.owned = true;
        q.named = opts.name.is_some();
        q._creation_deps = deps;
        Ok(actor_id)
    }

    /// Looks a named actor up: (id, class name, max_task_retries).
    pub(crate) async fn find_named_actor(&self, name: &str) -> Result<(ActorId, String, u32)> {
        let mut gcs = self.gcs.clone();
        let reply = gcs
            .get_actor(GetActorRequest {
                name: name.to_string(),
                ..Default::default()
            })
            .await;
        let info = match reply {
            Ok(r) => r.into_inner().actor,
            Err(status) if ErrorCode::of_status(&status) == ErrorCode::NotFound => None,
            Err(status) => return Err(status_error(&self.gcs_address, status)),
        };
        let info = info
            .filter(|i| i.state != ActorState::Dead as i32)
            .ok_or_else(|| Error::ActorNotFound {
                name: name.to_string(),
            })?;
        let id = ActorId::from_bytes(&info.actor_id)
            .map_err(|e| Error::Internal(format!("the GCS sent a bad actor id: {e}")))?;
        Ok((id, info.class_name, info.max_task_retries))
    }

    /// Ends the actor for good; calls not yet run fail with `ActorDied`.
    pub(crate) async fn kill_actor(self: &Arc<Self>, id: ActorId) -> Result<()> {
        let mut gcs = self.gcs.clone();
        gcs.kill_actor(KillActorRequest {
            actor_id: id.to_vec(),
            reason: "it was killed by miniray::kill".into(),
        })
        .await
        .map_err(|s| status_error(&self.gcs_address, s))?;
        if let Some(q) = self.actors.actors.lock().get_mut(&id) {
            q.dead = Some(Error::ActorDied {
                actor: q.label.clone(),
                reason: "it was killed by miniray::kill".into(),
            });
        }
        self.pump_actor(id);
        Ok(())
    }

    /// A new `ActorHandle` exists in this process.
    /// `creator` is the process that ends the actor (for a handle that arrived inside a
    /// value); this process registers with it as a borrower.
    pub(crate) fn add_actor_handle(
        self: &Arc<Self>,
        id: ActorId,
        label: String,
        max_task_retries: u32,
        creator: Option<OwnerAddr>,
    ) {
        self.follow_actors();
        let mut created = false;
        let mut actors = self.actors.actors.lock();
        let q = actors.entry(id).or_insert_with(|| {
            created = true;
            ActorQueue::new(label, max_task_retries)
        });
        q.handles += 1;
        // A handle of an actor another process created and ends: register as a borrower.
        if created
            && let Some(creator) = creator
            && creator.worker_id != self.worker_id
        {
            q.creator = Some(creator.clone());
            drop(actors);
            self.borrows.queue(Subject::Actor(id), creator);
        }
    }

    /// Follows the GCS's actor changes and node deaths from this process's first actor
    /// handle on.
    fn follow_actors(self: &Arc<Self>) {
        if !self
            .actors
            .watching
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            let cw = Arc::downgrade(self);
            self.handle.spawn(watch_actor_changes(cw));
        }
        self.follow_node_deaths();
    }

    /// One more reference to an actor this process references already (a handle being
    /// serialized into a value, held while the value is).
    pub(crate) fn add_actor_hold(&self, id: ActorId) {
        if let Some(q) = self.actors.actors.lock().get_mut(&id) {
            q.handles += 1;
        }
    }

    /// A reference to an actor whose creator already counts this process as a borrower (a
    /// handle inside a task's return value).
    pub(crate) fn add_registered_actor_hold(self: &Arc<Self>, id: ActorId, creator: OwnerAddr) {
        let own = creator.worker_id == self.worker_id;
        {
            let mut actors = self.actors.actors.lock();
            let q = actors
                .entry(id)
                .or_insert_with(|| ActorQueue::new(actor_label("actor", id), 0));
            q.handles += 1;
            if !own {
                q.creator.get_or_insert(creator.clone());
                q.registrations += 1;
            }
        }
        if own {
            // The registration was made with this very process: now a local reference.
            self.update_actor_borrower(id, self.worker_id, "", -1);
        }
    }

    /// The creator holds one more registration for this process.
    pub(crate) fn count_actor_registration(&self, id: ActorId) -> bool {
        match self.actors.actors.lock().get_mut(&id) {
            Some(q) if !q.owned => {
                q.registrations += 1;
                true
            }
            _ => false,
        }
    }

    /// Adds or gives back registrations of a borrower of an actor this process created;
    /// `false` for an add to an actor it no longer tracks.
    pub(crate) fn update_actor_borrower(
        self: &Arc<Self>,
        id: ActorId,
        worker: WorkerId,
        endpoint: &str,
        delta: i64,
    ) -> bool {
        {
            let mut actors = self.actors.actors.lock();
            let Some(q) = actors.get_mut(&id).filter(|q| q.owned) else {
                return delta < 0;
            };
            apply_borrower_delta(&mut q.borrowers, worker, endpoint, delta);
            if delta > 0 {
                return true;
            }
        }
        // The last borrower may be gone: the actor may be ended now.
        self.pump_actor(id);
        true
    }

    /// The process that created an unnamed actor (and ends it): `None` for a named actor.
    pub(crate) fn actor_owner(&self, id: ActorId) -> Option<OwnerAddr> {
        let actors = self.actors.actors.lock();
        let q = actors.get(&id)?;
        if q.named {
            None
        } else if q.owned {
            Some(self.address.clone())
        } else {
            q.creator.clone()
        }
    }

    /// Adds the borrowers of actors this process created to `out`, once per worker.
    pub(crate) fn actor_borrower_workers(&self, out: &mut Vec<(WorkerId, String)>) {
        for q in self.actors.actors.lock().values() {
            collect_borrower_workers(out, &q.borrowers);
        }
    }

    /// Forgets every registration of a borrower that is gone.
    pub(crate) fn drop_actor_borrower(self: &Arc<Self>, worker: WorkerId) {
        let ids: Vec<ActorId> = {
            let mut actors = self.actors.actors.lock();
            actors
                .iter_mut()
                .filter_map(|(id, q)| {
                    let before = q.borrowers.len();
                    q.borrowers.retain(|b| b.worker_id != worker);
                    (q.borrowers.len() != before).then_some(*id)
                })
                .collect()
        };
        for id in ids {
            self.pump_actor(id);
        }
    }

    /// An `ActorHandle` was dropped.
    pub(crate) fn release_actor_handle(self: &Arc<Self>, id: ActorId) {
        if let Some(q) = self.actors.actors.lock().get_mut(&id) {
            q.handles = q.handles.saturating_sub(1);
        }
        self.pump_actor(id);
    }

    /// A handle was serialized: it may now live in another process.
    pub(crate) fn mark_actor_escaped(&self, id: ActorId) {
        if let Some(q) = self.actors.actors.lock().get_mut(&id) {
            q.escaped = true;
        }
    }

    /// `max_task_retries` as this process knows it, for handles it serializes.
    pub(crate) fn actor_max_task_retries(&self, id: ActorId) -> u32 {
        self.actors
            .actors
            .lock()
            .get(&id)
            .map_or(0, |q| q.max_task_retries)
    }

    /// Queues a method call; the handle is the reference to its result.
    pub(crate) fn submit_actor_call(
        self: &Arc<Self>,
        id: ActorId,
        method: &'static str,
        args: Vec<Arg>,
    ) -> Result<Arc<RefHandle>> {
        let (return_id, result) = self.pending_result();
        let PreparedArgs {
            args,
            deps,
            unresolved,
        } = self.prepare_args(args);
        let task_id = TaskId::random().to_vec();
        let spec = TaskSpec {
            task_id: task_id.clone(),
            job_id: self.job_id.to_vec(),
            function_name: method.to_string(),
            args,
            return_id: return_id.to_vec(),
            caller: Some(self.address.to_proto()),
            actor_id: id.to_vec(),
            ..Default::default()
        };
        let ready = unresolved.is_empty();
        let mut submission = self.task_events.submission();
        self.counters.actor_call_submitted();
        {
            let mut actors = self.actors.actors.lock();
            let Some(q) = actors.get_mut(&id) else {
                return Err(Error::Internal("actor call without a live handle".into()));
            };
            if let Some(err) = &q.dead {
                self.record_failed(&spec, method, submission.take(), || err.to_string());
                self.store.complete(return_id, Err(err.clone()));
                return Ok(result);
            }
            q.calls.push_back(Call {
                spec,
                method,
                submission,
                ready,
                retries_left: q.max_task_retries,
                _deps: deps,
            });
        }
        if !ready {
            let cw = self.clone();
            self.handle.spawn(async move {
                let mut args = {
                    let actors = cw.actors.actors.lock();
                    let Some(call) = actors
                        .get(&id)
                        .and_then(|q| q.calls.iter().find(|c| c.spec.task_id == task_id))
                    else {
                        return;
                    };
                    call.spec.args.clone()
                };
                let resolved = cw.resolve_args(&mut args, unresolved).await;
                {
                    let mut actors = cw.actors.actors.lock();
                    let Some(q) = actors.get_mut(&id) else { return };
                    let Some(pos) = q.calls.iter().position(|c| c.spec.task_id == task_id) else {
                        return;
                    };
                    match resolved {
                        Ok(()) => {
                            q.calls[pos].spec.args = args;
                            q.calls[pos].ready = true;
                        }
                        Err(e) => {
                            // A failed argument fails the call with the same error.
                            if let Some(mut call) = q.calls.remove(pos) {
                                let submitted = call.submission.take();
                                cw.record_failed(&call.spec, call.method, submitted, || {
                                    e.to_string()
                                });
                            }
                            cw.store.complete(return_id, Err(e));
                        }
                    }
                }
                cw.pump_actor(id);
            });
        } else {
            self.pump_actor(id);
        }
        Ok(result)
    }

    /// SUBMITTED events of the queued calls not reported yet (see `task_events::scan_queue`).
    pub(crate) fn scan_actor_call_queues(&self, out: &mut Vec<Recorded>) {
        let mut actors = self.actors.actors.lock();
        for q in actors.values_mut() {
            scan_queue(q.calls.iter_mut(), out);
        }
    }

    /// Sends what can be sent, looks the actor up when its worker is unknown, fails calls
    /// of a dead actor, ends an actor its owner no longer references.
    fn pump_actor(self: &Arc<Self>, id: ActorId) {
        let (step, removed) = {
            let mut actors = self.actors.actors.lock();
            let Some(q) = actors.get_mut(&id) else { return };
            let step = if let Some(err) = q.dead.clone() {
                let calls: Vec<Call> = q.calls.drain(..).collect();
                if calls.is_empty() {
                    Step::Nothing
                } else {
                    Step::Fail(calls, err)
                }
            } else if q.should_kill() {
                Step::Kill
            } else if q.in_flight || q.calls.is_empty() {
                Step::Nothing
            } else {
                match q.target.clone() {
                    None if q.looking_up => Step::Nothing,
                    None => {
                        q.looking_up = true;
                        Step::Lookup(q.min_incarnation)
                    }
                    Some(target) => {
                        let n = q
                            .calls
                            .iter()
                            .take(MAX_BATCH)
                            .take_while(|c| c.ready)
                            .count();
                        if n == 0 {
                            Step::Nothing
                        } else {
                            q.in_flight = true;
                            Step::Push(target, q.calls.drain(..n).collect())
                        }
                    }
                }
            };
            // An entry nothing here needs any more goes, except the creator's entry of a
            // live actor: it holds the constructor's arguments for restarts.
            let remove = matches!(step, Step::Kill)
                || (q.unused() && !q.owned)
                || (q.unused() && q.dead.is_some());
            (step, if remove { actors.remove(&id) } else { None })
        };
        // Dropped outside the lock: the entry holds references (constructor arguments)
        // whose release may come back to this table.
        if let Some(q) = removed {
            if q.registrations > 0
                && let Some(creator) = q.creator.clone()
            {
                self.borrows
                    .give_back(Subject::Actor(id), creator, q.registrations);
            }
            drop(q);
        }
        match step {
            Step::Nothing => {}
            Step::Fail(calls, err) => {
                for mut call in calls {
                    self.record_failed(&call.spec, call.method, call.submission.take(), || {
                        err.to_string()
                    });
                    if let Ok(rid) = ObjectId::from_bytes(&call.spec.return_id) {
                        self.store.complete(rid, Err(err.clone()));
                    }
                }
            }
            Step::Lookup(min) => {
                let cw = self.clone();
                self.handle
                    .spawn(async move { cw.look_up_actor(id, min).await });
            }
            Step::Push(target, batch) => {
                let cw = self.clone();
                self.handle
                    .spawn(async move { cw.push_actor_calls(id, target, batch).await });
            }
            Step::Kill => {
                let cw = self.clone();
                self.handle.spawn(async move {
                    let mut gcs = cw.gcs.clone();
                    if let Err(status) = gcs
                        .kill_actor(KillActorRequest {
                            actor_id: id.to_vec(),
                            reason: "all its handles were dropped".into(),
                        })
                        .await
                    {
                        debug!(actor_id = %id, error = %status, "ending an unreferenced actor failed");
                    }
                });
            }
        }
    }

    /// Asks the GCS where the actor's incarnation `min` (or a later one) runs, waiting for
    /// it to come up; records the answer and pumps.
    async fn look_up_actor(self: Arc<Self>, id: ActorId, min: u32) {
        let mut failures = 0u32;
        let outcome: std::result::Result<Target, Error> = loop {
            let mut gcs = self.gcs.clone();
            let reply = gcs
                .get_actor(GetActorRequest {
                    actor_id: id.to_vec(),
                    wait: true,
                    min_num_restarts: min,
                    timeout_ms: LOOKUP_WAIT.as_millis() as u64,
                    ..Default::default()
                })
                .await;
            let label = match self.actors.actors.lock().get(&id) {
                Some(q) => q.label.clone(),
                None => return,
            };
            let info = match reply {
                Ok(r) => r.into_inner().actor,
                Err(status) if ErrorCode::of_status(&status) == ErrorCode::NotFound => None,
                Err(status) => {
                    failures += 1;
                    if failures >= MAX_LOOKUP_FAILURES {
                        break Err(Error::ActorDied {
                            actor: label,
                            reason: format!(
                                "the GCS cannot be reached to locate it: {}",
                                status.message()
                            ),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(10))))
                        .await;
                    continue;
                }
            };
            let Some(info) = info else {
                break Err(Error::ActorDied {
                    actor: label,
                    reason: "the cluster does not know it".into(),
                });
            };
            match ActorState::try_from(info.state).unwrap_or(ActorState::Unspecified) {
                ActorState::Dead => {
                    break Err(Error::ActorDied {
                        actor: label,
                        reason: info.death_reason,
                    });
                }
                ActorState::Alive => {
                    let Some(a) = info.address else {
                        break Err(Error::Internal("alive actor without an address".into()));
                    };
                    let target = Target::of(&a, info.num_restarts);
                    // An older incarnation than the one waited for: the GCS has not seen a
                    // death. If its worker answers, the failed push was a broken connection,
                    // not a death, and calls go there again.
                    if info.num_restarts >= min || self.worker_answers(&target.endpoint).await {
                        break Ok(target);
                    }
                }
                // Still starting, restarting, or the GCS has not yet heard of the death that
                // failed our push: wait again.
                state => debug!(actor_id = %id, ?state, min, "actor not up yet; waiting"),
            }
        };
        {
            let mut actors = self.actors.actors.lock();
            let Some(q) = actors.get_mut(&id) else { return };
            q.looking_up = false;
            match outcome {
                Ok(target) => {
                    q.min_incarnation = target.incarnation;
                    q.target = Some(target);
                }
                Err(e) => q.dead = Some(e),
            }
        }
        self.pump_actor(id);
    }

    /// Pushes one batch to the actor's worker and completes each call as its reply arrives.
    async fn push_actor_calls(self: Arc<Self>, id: ActorId, target: Target, mut calls: Vec<Call>) {
        let specs = self.task_events.specs_for_push(calls.iter_mut());
        // A push whose connection was refused never reached a worker: all of it goes again
        // without spending retries (the usual case after a death not yet noticed here).
        let PushOutcome {
            done,
            failure,
            delivered,
            node_died,
        } = self
            .push_batch(&target.endpoint, &target.node_id, specs, |i, reply| {
                self.complete_actor_call(&calls[i], reply.outcome, reply.contained)
            })
            .await;
        let unfinished: Vec<Call> = calls.into_iter().skip(done).collect();
        let recovered = match &failure {
            None => Recovered::Known(Default::default()),
            // Refused before anything was sent: none of it ran.
            Some(_) if !delivered => Recovered::Known(Default::default()),
            // The GCS declared its node dead: nobody there can tell.
            Some(_) if node_died => Recovered::Unknown,
            Some(_) => self.recover_actor_outcomes(&target, &unfinished).await,
        };
        let mut failed_calls = Vec::new();
        let mut finished = Vec::new();
        {
            let mut actors = self.actors.actors.lock();
            let Some(q) = actors.get_mut(&id) else { return };
            q.in_flight = false;
            if let Some(reason) = &failure {
                warn!(actor = %q.label, worker = %target.endpoint, error = %reason, unfinished = unfinished.len(), "actor worker failed while running calls");
                if q.target.as_ref().map(|t| t.incarnation) == Some(target.incarnation) {
                    q.target = None;
                    q.min_incarnation = target.incarnation + 1;
                }
                let mut requeue = Vec::new();
                for mut call in unfinished {
                    // Finished (its reply recovered), running when the worker died, or never
                    // started; unknown when the raylet could not tell: then it may have run.
                    let was_running = match recovered.get(&call.spec.task_id) {
                        Some(Some(Some(reply))) => {
                            finished.push((call, reply.outcome.clone(), reply.contained.clone()));
                            continue;
                        }
                        Some(Some(None)) => true,
                        Some(None) => false,
                        None => true,
                    };
                    if !was_running {
                        requeue.push(call);
                    } else if call.retries_left > 0 {
                        self.record_failed(&call.spec, call.method, 0, || {
                            format!("the actor's worker died while the call ran ({reason}); it is retried")
                        });
                        call.retries_left -= 1;
                        call.spec.attempt += 1;
                        requeue.push(call);
                    } else {
                        failed_calls.push((
                            call,
                            Error::ActorDied {
                                actor: q.label.clone(),
                                reason: format!(
                                    "its worker died while the call ran ({reason}) and the call has no retries left (max_task_retries = {})",
                                    q.max_task_retries
                                ),
                            },
                        ));
                    }
                }
                for call in requeue.into_iter().rev() {
                    q.calls.push_front(call);
                }
            }
        }
        for (call, outcome, contained) in finished {
            self.complete_actor_call(&call, outcome, contained);
        }
        for (call, err) in failed_calls {
            self.record_failed(&call.spec, call.method, 0, || err.to_string());
            if let Ok(rid) = ObjectId::from_bytes(&call.spec.return_id) {
                self.store.complete(rid, Err(err));
            }
        }
        self.pump_actor(id);
    }

    /// What the actor's worker did with `calls` before its push failed, from its raylet.
    async fn recover_actor_outcomes(&self, target: &Target, calls: &[Call]) -> Recovered {
        let mut gcs = self.gcs.clone();
        let nodes = match gcs.get_all_nodes(GetAllNodesRequest {}).await {
            Ok(r) => r.into_inner().nodes,
            Err(_) => return Recovered::Unknown,
        };
        self.dead_nodes.apply(&nodes);
        let raylet = nodes
            .iter()
            .filter_map(|n| n.address.as_ref())
            .find(|a| a.node_id == target.node_id)
            .map(node_endpoint);
        let Some(raylet) = raylet else {
            return Recovered::Unknown;
        };
        let specs: Vec<&TaskSpec> = calls.iter().map(|c| &c.spec).collect();
        self.recover_outcomes(
            &raylet,
            &target.node_id,
            &target.worker_id,
            &specs,
            Some(ACTOR_RECOVER_WAIT),
        )
        .await
    }

    fn complete_actor_call(
        self: &Arc<Self>,
        call: &Call,
        outcome: Option<push_task_reply::Outcome>,
        contained: Vec<miniray_proto::ContainedRef>,
    ) {
        let Ok(return_id) = ObjectId::from_bytes(&call.spec.return_id) else {
            return;
        };
        self.complete_from_reply(return_id, outcome, contained);
    }
}

/// How long to wait before subscribing again after the GCS stream ended.
const RESUBSCRIBE_BACKOFF: Duration = Duration::from_millis(500);

/// Follows the GCS's actor changes for as long as this process runs, so that deaths and
/// restarts are known before the next call is sent (calls made after a restart was
/// announced wait for the new incarnation instead of failing on the dead one).
async fn watch_actor_changes(cw: std::sync::Weak<CoreWorker>) {
    use miniray_proto::{Channel, SubscribeRequest, pub_message};
    loop {
        let Some(strong) = cw.upgrade() else { return };
        let mut gcs = strong.gcs.clone();
        drop(strong);
        let stream = gcs
            .subscribe(SubscribeRequest {
                channels: vec![Channel::ActorChanges as i32],
            })
            .await;
        if let Ok(stream) = stream {
            let mut stream = stream.into_inner();
            while let Ok(Some(msg)) = stream.message().await {
                let Some(pub_message::Payload::Actor(info)) = msg.payload else {
                    continue;
                };
                let Some(strong) = cw.upgrade() else { return };
                strong.apply_actor_change(info);
            }
        }
        tokio::time::sleep(RESUBSCRIBE_BACKOFF).await;
    }
}

impl CoreWorker {
    /// Updates what this process knows of an actor from a GCS announcement.
    fn apply_actor_change(self: &Arc<Self>, info: ActorInfo) {
        let Ok(id) = ActorId::from_bytes(&info.actor_id) else {
            return;
        };
        {
            let mut actors = self.actors.actors.lock();
            let Some(q) = actors.get_mut(&id) else { return };
            let known = q
                .target
                .as_ref()
                .map_or(q.min_incarnation, |t| t.incarnation);
            match ActorState::try_from(info.state).unwrap_or(ActorState::Unspecified) {
                ActorState::Dead => {
                    q.dead.get_or_insert_with(|| Error::ActorDied {
                        actor: q.label.clone(),
                        reason: info.death_reason,
                    });
                }
                ActorState::Restarting if info.num_restarts > known => {
                    // The incarnation we send to is gone: wait for the next one.
                    q.target = None;
                    q.min_incarnation = q.min_incarnation.max(info.num_restarts);
                }
                ActorState::Alive if info.num_restarts >= q.min_incarnation => {
                    if let Some(a) = info.address {
                        q.min_incarnation = info.num_restarts;
                        q.target = Some(Target::of(&a, info.num_restarts));
                    }
                }
                _ => return,
            }
        }
        self.pump_actor(id);
    }

    /// Whether a core worker answers at `endpoint` (any answer, even an error, counts).
    async fn worker_answers(&self, endpoint: &str) -> bool {
        let Ok(client) = self.clients.core_worker(endpoint) else {
            return false;
        };
        probe::core_worker_answers(client, Duration::from_secs(2)).await
    }
}
