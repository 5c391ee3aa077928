//! Borrowers of objects, as in Ray's ownership protocol: an `ObjectRef` that travels inside
//! a value keeps its object alive only while some process holds it.
//!
//! - Encoding a value for a task argument, a `put` or a task's return runs under
//!   `capture_refs`, which collects the references serialized inside it. The sender holds
//!   them while the value is in flight: a task's submitter until the task's reply, a `put`
//!   object as long as the object, a task's return value as long as the caller holds the
//!   returned object.
//! - A process that first references a borrowed object (by decoding it) registers itself
//!   with the owner (`UpdateBorrowers`, +1) before that reference can be relied on: before a
//!   worker replies to the task that received it, before `get` returns it.
//! - A worker returning references registers the caller as their borrower before it drops
//!   its own, and names them in the reply; the caller counts those registrations.
//! - A borrowed entry gives back all its registrations when it goes (-n); an owner forgets
//!   a borrower whose process stopped answering (`run_borrower_probe`).
//!
//! **Invariant:** every registration is made while the process that makes it holds a
//! counted reference to the object, and completes before that reference can go. So the
//! owner cannot free an object a registration is on its way for.
//!
//! A reference serialized outside any capture (user code writing it to a file, say) cannot
//! be followed: its object stays until the owner exits, as before.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use miniray_common::{ActorId, ObjectId, WorkerId, probe};
use miniray_proto::{BorrowerUpdate, ContainedRef, UpdateBorrowersRequest, WorkerAddress};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tracing::debug;

use super::CoreWorker;
use crate::error::{Error, Result};
use crate::object_ref::{OwnerAddr, RefHandle};

/// What is borrowed: an object, or an actor (whose creator ends it once no handle is left).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Subject {
    Object(ObjectId),
    Actor(ActorId),
}

impl Subject {
    fn update(self, borrower: &WorkerAddress, delta: i32) -> BorrowerUpdate {
        let (object_id, actor_id) = match self {
            Subject::Object(id) => (id.to_vec(), Vec::new()),
            Subject::Actor(id) => (Vec::new(), id.to_vec()),
        };
        BorrowerUpdate {
            object_id,
            borrower: Some(borrower.clone()),
            delta,
            actor_id,
        }
    }

    fn contained(self, owner: &OwnerAddr) -> ContainedRef {
        let (object_id, actor_id) = match self {
            Subject::Object(id) => (id.to_vec(), Vec::new()),
            Subject::Actor(id) => (Vec::new(), id.to_vec()),
        };
        ContainedRef {
            object_id,
            owner: Some(owner.to_proto()),
            actor_id,
        }
    }

    /// The subject named by a message: exactly one of the two ids.
    pub(crate) fn from_wire(object_id: &[u8], actor_id: &[u8]) -> Result<Self> {
        match (object_id.is_empty(), actor_id.is_empty()) {
            (false, true) => ObjectId::from_bytes(object_id)
                .map(Subject::Object)
                .map_err(|e| Error::InvalidArgument(e.to_string())),
            (true, false) => ActorId::from_bytes(actor_id)
                .map(Subject::Actor)
                .map_err(|e| Error::InvalidArgument(e.to_string())),
            _ => Err(Error::InvalidArgument(
                "a borrowed reference names exactly one object or actor".into(),
            )),
        }
    }
}

/// A process registered as a borrower of something this process owns.
pub(crate) struct Borrower {
    pub worker_id: WorkerId,
    pub endpoint: String,
    /// Registrations not given back yet.
    pub count: u32,
}

/// Adds (`delta > 0`) or gives back registrations of `worker` in an owner's list.
pub(crate) fn apply_borrower_delta(
    borrowers: &mut Vec<Borrower>,
    worker: WorkerId,
    endpoint: &str,
    delta: i64,
) {
    let existing = borrowers.iter().position(|b| b.worker_id == worker);
    if delta > 0 {
        match existing {
            Some(i) => borrowers[i].count = borrowers[i].count.saturating_add(delta as u32),
            None => borrowers.push(Borrower {
                worker_id: worker,
                endpoint: endpoint.to_string(),
                count: delta as u32,
            }),
        }
    } else if let Some(i) = existing {
        let b = &mut borrowers[i];
        b.count = b.count.saturating_sub(delta.unsigned_abs() as u32);
        if b.count == 0 {
            borrowers.swap_remove(i);
        }
    }
}

/// Adds the workers of `borrowers` not in `out` yet (for the borrower probe).
pub(crate) fn collect_borrower_workers(out: &mut Vec<(WorkerId, String)>, borrowers: &[Borrower]) {
    for b in borrowers {
        if !out.iter().any(|(w, _)| *w == b.worker_id) {
            out.push((b.worker_id, b.endpoint.clone()));
        }
    }
}

/// A borrowed subject first referenced in this process, to register with its owner.
pub(crate) struct NewBorrow {
    pub subject: Subject,
    pub owner: OwnerAddr,
}

/// Registrations a borrower gives back to the owner when its last reference goes.
pub(crate) struct GiveBack {
    pub subject: Subject,
    pub owner: OwnerAddr,
    pub count: u32,
}

/// New borrows waiting for registration, and registrations to give back; shared by the
/// object store and the actor table.
pub(crate) struct BorrowQueue {
    new: Mutex<Vec<NewBorrow>>,
    /// Queued or being registered: a cheap check on the task and `get` paths.
    in_flight: AtomicUsize,
    /// Serializes registrations, so that a flush waits for those another thread began.
    registration: tokio::sync::Mutex<()>,
    given_back: mpsc::UnboundedSender<GiveBack>,
}

impl BorrowQueue {
    pub(crate) fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<GiveBack>) {
        let (given_back, rx) = mpsc::unbounded_channel();
        (
            Arc::new(BorrowQueue {
                new: Mutex::new(Vec::new()),
                in_flight: AtomicUsize::new(0),
                registration: tokio::sync::Mutex::new(()),
                given_back,
            }),
            rx,
        )
    }

    pub(crate) fn queue(&self, subject: Subject, owner: OwnerAddr) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.new.lock().push(NewBorrow { subject, owner });
    }

    pub(crate) fn give_back(&self, subject: Subject, owner: OwnerAddr, count: u32) {
        // The receiver lives as long as the runtime.
        let _ = self.given_back.send(GiveBack {
            subject,
            owner,
            count,
        });
    }
}

/// A reference serialized inside a value, held while the value is in flight or stored.
pub(crate) enum Held {
    Object(Arc<RefHandle>),
    Actor(ActorHold),
}

impl Held {
    fn subject(&self) -> Subject {
        match self {
            Held::Object(h) => Subject::Object(h.id),
            Held::Actor(a) => Subject::Actor(a.id),
        }
    }
}

/// One counted reference to an actor that is not an `ActorHandle` (a handle inside a value).
pub(crate) struct ActorHold {
    pub id: ActorId,
    runtime: Weak<CoreWorker>,
}

impl ActorHold {
    /// Counts a new reference to an actor this process already references.
    pub(crate) fn new(cw: &Arc<CoreWorker>, id: ActorId) -> Self {
        cw.add_actor_hold(id);
        ActorHold {
            id,
            runtime: Arc::downgrade(cw),
        }
    }
}

impl Drop for ActorHold {
    fn drop(&mut self) {
        if let Some(cw) = self.runtime.upgrade() {
            cw.release_actor_handle(self.id);
        }
    }
}

thread_local! {
    static CAPTURE: RefCell<Option<Vec<Held>>> = const { RefCell::new(None) };
}

/// Restores the enclosing capture when a capture ends, even by a panic.
struct CaptureGuard(Option<Option<Vec<Held>>>);

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        if let Some(outer) = self.0.take() {
            CAPTURE.with(|c| *c.borrow_mut() = outer);
        }
    }
}

/// Runs `f` (which encodes a value) and returns the references serialized during it.
pub(crate) fn capture_refs<R>(f: impl FnOnce() -> R) -> (R, Vec<Held>) {
    let outer = CAPTURE.with(|c| c.borrow_mut().replace(Vec::new()));
    let mut guard = CaptureGuard(Some(outer));
    let out = f();
    let captured = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    if let Some(outer) = guard.0.take() {
        CAPTURE.with(|c| *c.borrow_mut() = outer);
    }
    (out, captured)
}

/// Records a reference being serialized (`make` is called only inside a capture). `false`
/// outside any capture: the reference escapes untracked.
pub(crate) fn note_serialized(make: impl FnOnce() -> Option<Held>) -> bool {
    CAPTURE.with(|c| match c.borrow_mut().as_mut() {
        Some(v) => match make() {
            Some(held) => {
                v.push(held);
                true
            }
            None => false,
        },
        None => false,
    })
}

/// Probes of borrowers that stopped answering before they are forgotten.
const BORROWER_PROBE_INTERVAL: Duration = Duration::from_secs(2);
const BORROWER_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const BORROWER_FAILED_PROBES: u32 = 3;
const BORROWER_GONE_AFTER: Duration = Duration::from_secs(6);

fn endpoint_of(a: &WorkerAddress) -> String {
    miniray_common::net::host_port(&a.host, a.port)
}

impl CoreWorker {
    /// Registers this process as a borrower of what it started referencing, and waits
    /// until every registration in flight (also those begun by other threads) is done.
    pub(crate) async fn register_new_borrows(&self) {
        if self.borrows.in_flight.load(Ordering::Acquire) == 0 {
            return;
        }
        let _serial = self.borrows.registration.lock().await;
        let new = std::mem::take(&mut *self.borrows.new.lock());
        if new.is_empty() {
            return;
        }
        let taken = new.len();
        let mut by_owner: HashMap<String, Vec<Subject>> = HashMap::new();
        for b in new {
            by_owner
                .entry(b.owner.endpoint())
                .or_default()
                .push(b.subject);
        }
        let me = self.address.to_proto();
        let calls = by_owner.into_iter().map(|(owner, subjects)| {
            let me = me.clone();
            async move {
                for subject in self.add_borrower(&owner, &subjects, &me).await {
                    if !self.count_registration(subject) {
                        // The reference went while registering: give it back at once.
                        self.send_give_back(&owner, vec![subject.update(&me, -1)])
                            .await;
                    }
                }
            }
        });
        futures::future::join_all(calls).await;
        self.borrows.in_flight.fetch_sub(taken, Ordering::AcqRel);
    }

    /// The owner holds one more registration for this process.
    fn count_registration(&self, subject: Subject) -> bool {
        match subject {
            Subject::Object(id) => self.store.count_registration(id),
            Subject::Actor(id) => self.count_actor_registration(id),
        }
    }

    /// Adds (`delta > 0`) or gives back registrations of a borrower of something this
    /// process owns; `false` for an add to something it no longer has.
    pub(crate) fn update_borrower(
        self: &Arc<Self>,
        subject: Subject,
        worker: WorkerId,
        endpoint: &str,
        delta: i64,
    ) -> bool {
        match subject {
            Subject::Object(id) => self.store.update_borrower(id, worker, endpoint, delta),
            Subject::Actor(id) => self.update_actor_borrower(id, worker, endpoint, delta),
        }
    }

    /// Registers `caller` as a borrower of the references inside a task's return value
    /// (this process still holds them) and names the ones registered, for the reply.
    pub(crate) async fn lend_to(
        self: &Arc<Self>,
        caller: &WorkerAddress,
        contained: &[Held],
    ) -> Vec<ContainedRef> {
        let Ok(caller_id) = WorkerId::from_bytes(&caller.worker_id) else {
            return Vec::new();
        };
        let caller_endpoint = endpoint_of(caller);
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let mut remote: HashMap<String, (OwnerAddr, Vec<Subject>)> = HashMap::new();
        for held in contained {
            let subject = held.subject();
            if !seen.insert(subject) {
                continue;
            }
            let Some(owner) = self.owner_of(held) else {
                // A named actor's handle: named actors are not ended by their handles.
                continue;
            };
            if owner.worker_id == self.worker_id {
                if self.update_borrower(subject, caller_id, &caller_endpoint, 1) {
                    out.push(subject.contained(&owner));
                }
            } else {
                remote
                    .entry(owner.endpoint())
                    .or_insert_with(|| (owner, Vec::new()))
                    .1
                    .push(subject);
            }
        }
        let calls = remote
            .into_iter()
            .map(|(endpoint, (owner, subjects))| async move {
                self.add_borrower(&endpoint, &subjects, caller)
                    .await
                    .into_iter()
                    .map(|s| s.contained(&owner))
                    .collect::<Vec<_>>()
            });
        for refs in futures::future::join_all(calls).await {
            out.extend(refs);
        }
        out
    }

    fn owner_of(&self, held: &Held) -> Option<OwnerAddr> {
        match held {
            Held::Object(h) => Some(h.owner.clone()),
            Held::Actor(a) => self.actor_owner(a.id),
        }
    }

    /// Takes over the registrations a worker made for this process (the references inside
    /// a task's return value), as references held by the returned object.
    pub(crate) fn take_lent(self: &Arc<Self>, contained: Vec<ContainedRef>) -> Vec<Held> {
        let mut out = Vec::with_capacity(contained.len());
        for c in contained {
            let Ok(subject) = Subject::from_wire(&c.object_id, &c.actor_id) else {
                continue;
            };
            let Some(owner) = c.owner.as_ref().and_then(OwnerAddr::from_proto) else {
                continue;
            };
            out.push(match subject {
                Subject::Object(id) => Held::Object(RefHandle::registered(self, id, owner)),
                Subject::Actor(id) => {
                    self.add_registered_actor_hold(id, owner);
                    Held::Actor(ActorHold {
                        id,
                        runtime: Arc::downgrade(self),
                    })
                }
            });
        }
        out
    }

    /// Sends `+1` for each subject on behalf of `borrower`; returns the subjects the owner
    /// accepted (it still had them).
    async fn add_borrower(
        &self,
        owner: &str,
        subjects: &[Subject],
        borrower: &WorkerAddress,
    ) -> Vec<Subject> {
        let updates = subjects.iter().map(|s| s.update(borrower, 1)).collect();
        let reply = match self.clients.core_worker(owner) {
            Ok(mut client) => {
                client
                    .update_borrowers(UpdateBorrowersRequest { updates })
                    .await
            }
            Err(e) => {
                debug!(owner, error = %e, "cannot reach an owner to register a borrower");
                return Vec::new();
            }
        };
        match reply {
            Ok(reply) => {
                let refused = reply.into_inner().refused;
                subjects
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !refused.contains(&(*i as u32)))
                    .map(|(_, s)| *s)
                    .collect()
            }
            Err(status) => {
                // The owner is gone: what it owned is lost anyway, nothing to register.
                debug!(owner, error = %status, "registering a borrower failed");
                Vec::new()
            }
        }
    }

    async fn send_give_back(&self, owner: &str, updates: Vec<BorrowerUpdate>) {
        let Ok(mut client) = self.clients.core_worker(owner) else {
            return;
        };
        if let Err(status) = client
            .update_borrowers(UpdateBorrowersRequest { updates })
            .await
        {
            debug!(owner, error = %status, "giving borrows back failed");
        }
    }

    /// Runs until the runtime stops: gives the registrations of borrowed references back
    /// to their owners as their last references here go, batched per owner.
    pub(crate) async fn run_give_back(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<GiveBack>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            let me = self.address.to_proto();
            let mut by_owner: HashMap<String, Vec<BorrowerUpdate>> = HashMap::new();
            for g in batch {
                let delta = -(g.count.min(i32::MAX as u32) as i32);
                by_owner
                    .entry(g.owner.endpoint())
                    .or_default()
                    .push(g.subject.update(&me, delta));
            }
            for (owner, updates) in by_owner {
                self.send_give_back(&owner, updates).await;
            }
        }
    }

    /// Runs until the runtime stops: forgets the registrations of borrowers that stopped
    /// answering, so their death does not pin this process's objects and actors.
    pub(crate) async fn run_borrower_probe(self: Arc<Self>) {
        let mut failing: HashMap<WorkerId, (u32, Instant)> = HashMap::new();
        let mut tick = tokio::time::interval(BORROWER_PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut borrowers = Vec::new();
            self.store.borrower_workers(&mut borrowers);
            self.actor_borrower_workers(&mut borrowers);
            borrowers.retain(|(w, _)| *w != self.worker_id);
            failing.retain(|w, _| borrowers.iter().any(|(b, _)| b == w));
            for (worker, endpoint) in borrowers {
                let answers = match self.clients.core_worker(&endpoint) {
                    Ok(client) => probe::core_worker_answers(client, BORROWER_PROBE_TIMEOUT).await,
                    Err(_) => false,
                };
                if answers {
                    failing.remove(&worker);
                    continue;
                }
                let (count, since) = failing.entry(worker).or_insert((0, Instant::now()));
                *count += 1;
                if *count >= BORROWER_FAILED_PROBES && since.elapsed() >= BORROWER_GONE_AFTER {
                    debug!(%worker, endpoint, "a borrower is gone; its borrows are released");
                    failing.remove(&worker);
                    self.clients.forget_core_worker(&endpoint);
                    self.store.drop_borrower(worker);
                    self.drop_actor_borrower(worker);
                }
            }
        }
    }
}
