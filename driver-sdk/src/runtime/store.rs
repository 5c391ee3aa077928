//! The in-process object table: owned objects (their state, value or location, local
//! reference count and borrowers) and borrowed objects (a cache of what their owner said,
//! and how many borrower registrations the owner holds for this process).
//!
//! Invariants:
//! - an owned entry exists while a `RefHandle` for it is alive in this process, while
//!   another process is registered as its borrower, or once it has escaped untracked (was
//!   serialized outside `codec::capture_refs`, e.g. by user code into a file), in which case
//!   it stays until this process exits;
//! - a borrower registration is always made by a process that holds a counted reference at
//!   the time and completes before that reference can go (see `borrowing.rs`), so an owner
//!   never frees an object that a registration is still on its way for;
//! - a borrowed entry gives back every registration made for it when it goes;
//! - the references inside an object's value (`contained`) are held as long as its entry;
//! - when an owned entry is removed and its value sits in plasma, its primary copy is freed
//!   through `freed` (the owner is the only one who frees primary copies);
//! - a task result arriving for an entry that is gone is freed at once.

use std::sync::Arc;

use dashmap::DashMap;
use miniray_common::{ObjectId, WorkerId};
use miniray_proto::{NodeAddress, ObjectValue, object_value};
use tokio::sync::{Notify, mpsc};

use super::borrowing::{
    BorrowQueue, Borrower, Held, Subject, apply_borrower_delta, collect_borrower_workers,
};
use crate::error::{Error, Result};
use crate::object_ref::OwnerAddr;

/// Where a ready object's bytes are.
#[derive(Clone, Debug)]
pub(crate) enum Value {
    Inline(Arc<Vec<u8>>),
    Plasma { node: NodeAddress, size: u64 },
}

impl Value {
    pub(crate) fn to_proto(&self) -> ObjectValue {
        match self {
            Value::Inline(b) => ObjectValue {
                location: Some(object_value::Location::Inline(b.as_ref().clone())),
                size: b.len() as u64,
            },
            Value::Plasma { node, size } => ObjectValue {
                location: Some(object_value::Location::InPlasma(node.clone())),
                size: *size,
            },
        }
    }

    pub(crate) fn from_proto(v: ObjectValue) -> Result<Self> {
        match v.location {
            Some(object_value::Location::Inline(b)) => Ok(Value::Inline(Arc::new(b))),
            Some(object_value::Location::InPlasma(node)) => {
                Ok(Value::Plasma { node, size: v.size })
            }
            None => Err(Error::Internal("object value without a location".into())),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) enum State {
    Pending,
    Ready(Value),
    Failed(Error),
}

struct Entry {
    owned: bool,
    state: State,
    local_refs: u32,
    escaped: bool,
    /// Borrowing state; boxed and absent for most objects, which keeps the hot table small.
    extra: Option<Box<Extra>>,
    notify: Arc<Notify>,
}

#[derive(Default)]
struct Extra {
    /// Owned: the processes registered as borrowers.
    borrowers: Vec<Borrower>,
    /// Borrowed: the owner, and how many registrations it holds for this process.
    owner: Option<OwnerAddr>,
    registrations: u32,
    /// References inside this object's value, held while the entry lives.
    contained: Vec<Held>,
}

impl Entry {
    fn new(owned: bool, state: State) -> Self {
        Entry {
            owned,
            state,
            local_refs: 0,
            escaped: false,
            extra: None,
            notify: Arc::new(Notify::new()),
        }
    }

    fn unused(&self) -> bool {
        self.local_refs == 0 && !self.escaped && self.borrowers().is_empty()
    }

    fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }

    fn borrowers(&self) -> &[Borrower] {
        self.extra.as_ref().map_or(&[], |x| &x.borrowers)
    }
}

/// A primary plasma copy to free on `node`.
pub(crate) struct Freed {
    pub id: ObjectId,
    pub node: NodeAddress,
}

pub(crate) struct ObjectStore {
    entries: DashMap<ObjectId, Entry>,
    freed: mpsc::UnboundedSender<Freed>,
    borrows: Arc<BorrowQueue>,
}

/// What leaves an entry when it is removed; dropped (or sent) outside the table's locks,
/// since dropping contained references re-enters the table.
struct Removed {
    id: ObjectId,
    entry: Entry,
}

impl ObjectStore {
    /// Objects this process references, owned or borrowed.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn new(freed: mpsc::UnboundedSender<Freed>, borrows: Arc<BorrowQueue>) -> Self {
        Self {
            entries: DashMap::new(),
            freed,
            borrows,
        }
    }

    fn finish_removal(&self, removed: Removed) {
        let Removed { id, entry } = removed;
        if entry.owned {
            self.free_value(id, &entry.state);
        } else if let Some(extra) = entry.extra
            && extra.registrations > 0
            && let Some(owner) = extra.owner
        {
            self.borrows
                .give_back(Subject::Object(id), owner, extra.registrations);
        }
        // The contained references drop here, outside every lock of the table.
    }

    /// Records a new owned object (before its first `RefHandle` is made).
    pub(crate) fn insert_owned(&self, id: ObjectId, state: State) {
        self.entries.insert(id, Entry::new(true, state));
    }

    /// Records a new owned object holding the references inside its value.
    pub(crate) fn insert_owned_holding(&self, id: ObjectId, state: State, contained: Vec<Held>) {
        let mut entry = Entry::new(true, state);
        if !contained.is_empty() {
            entry.extra().contained = contained;
        }
        self.entries.insert(id, entry);
    }

    /// Counts a new `RefHandle`. A borrowed object first referenced here is queued for
    /// registration with its owner (`take_new_borrows`).
    pub(crate) fn add_local_ref(&self, id: ObjectId, owner: &OwnerAddr, owned: bool) {
        let mut created = false;
        self.entries
            .entry(id)
            .or_insert_with(|| {
                created = true;
                let mut e = if owned {
                    // Every owned object is inserted before its first handle; one that is
                    // gone was freed, and waiting for it would never end.
                    Entry::new(
                        true,
                        State::Failed(Error::ObjectLost {
                            object_id: id.to_string(),
                            reason: "it was freed".into(),
                        }),
                    )
                } else {
                    Entry::new(false, State::Pending)
                };
                if !owned {
                    e.extra().owner = Some(owner.clone());
                }
                e
            })
            .local_refs += 1;
        if created && !owned {
            self.borrows.queue(Subject::Object(id), owner.clone());
        }
    }

    /// Counts a new `RefHandle` for which the owner already holds a registration made on
    /// this process's behalf (a reference inside a task's return value).
    pub(crate) fn add_registered_ref(&self, id: ObjectId, owner: &OwnerAddr, owned: bool) {
        if owned {
            self.add_local_ref(id, owner, true);
            // The registration was made with this very process: it is now a local reference.
            self.update_borrower(id, owner.worker_id, "", -1);
            return;
        }
        let mut e = self.entries.entry(id).or_insert_with(|| {
            let mut e = Entry::new(false, State::Pending);
            e.extra().owner = Some(owner.clone());
            e
        });
        e.local_refs += 1;
        e.extra().registrations += 1;
    }

    /// Drops one local reference; frees the object when nothing holds it any more.
    pub(crate) fn remove_local_ref(&self, id: ObjectId) {
        let removed = self.entries.remove_if_mut(&id, |_, e| {
            e.local_refs = e.local_refs.saturating_sub(1);
            e.unused()
        });
        if let Some((id, entry)) = removed {
            self.finish_removal(Removed { id, entry });
        }
    }

    /// The owner holds one more registration for this process. `false` if the entry went
    /// meanwhile: the caller gives the registration back itself.
    pub(crate) fn count_registration(&self, id: ObjectId) -> bool {
        match self.entries.get_mut(&id) {
            Some(mut e) if !e.owned => {
                e.extra().registrations += 1;
                true
            }
            _ => false,
        }
    }

    /// Adds (`delta > 0`) or gives back registrations of a borrower of an owned object.
    /// Returns `false` for an add to an object this process no longer has.
    pub(crate) fn update_borrower(
        &self,
        id: ObjectId,
        worker_id: WorkerId,
        endpoint: &str,
        delta: i64,
    ) -> bool {
        if delta > 0 {
            let Some(mut e) = self.entries.get_mut(&id) else {
                return false;
            };
            if !e.owned {
                return false;
            }
            apply_borrower_delta(&mut e.extra().borrowers, worker_id, endpoint, delta);
            return true;
        }
        let removed = self.entries.remove_if_mut(&id, |_, e| {
            if let Some(x) = e.extra.as_mut() {
                apply_borrower_delta(&mut x.borrowers, worker_id, endpoint, delta);
            }
            e.owned && e.unused()
        });
        if let Some((id, entry)) = removed {
            self.finish_removal(Removed { id, entry });
        }
        true
    }

    /// Adds the borrowers of owned objects to `out`, once per worker.
    pub(crate) fn borrower_workers(&self, out: &mut Vec<(WorkerId, String)>) {
        for e in self.entries.iter() {
            collect_borrower_workers(out, e.borrowers());
        }
    }

    /// Forgets every registration of a borrower that is gone.
    pub(crate) fn drop_borrower(&self, worker_id: WorkerId) {
        let ids: Vec<ObjectId> = self
            .entries
            .iter()
            .filter(|e| e.borrowers().iter().any(|b| b.worker_id == worker_id))
            .map(|e| *e.key())
            .collect();
        for id in ids {
            let removed = self.entries.remove_if_mut(&id, |_, e| {
                if let Some(x) = e.extra.as_mut() {
                    x.borrowers.retain(|b| b.worker_id != worker_id);
                }
                e.owned && e.unused()
            });
            if let Some((id, entry)) = removed {
                self.finish_removal(Removed { id, entry });
            }
        }
    }

    /// The object left this process untracked: it stays until this process exits.
    pub(crate) fn mark_escaped(&self, id: ObjectId) {
        if let Some(mut e) = self.entries.get_mut(&id)
            && e.owned
        {
            e.escaped = true;
        }
    }

    fn free_value(&self, id: ObjectId, state: &State) {
        if let State::Ready(Value::Plasma { node, .. }) = state {
            // The receiver lives as long as the runtime; after shutdown nothing is left to free.
            let _ = self.freed.send(Freed {
                id,
                node: node.clone(),
            });
        }
    }

    /// Sets the outcome of an owned object and wakes its waiters.
    pub(crate) fn complete(&self, id: ObjectId, outcome: Result<Value>) {
        self.complete_holding(id, outcome, Vec::new());
    }

    /// `complete`, with the references inside the value, held as long as the object.
    pub(crate) fn complete_holding(
        &self,
        id: ObjectId,
        outcome: Result<Value>,
        contained: Vec<Held>,
    ) {
        let state = match outcome {
            Ok(v) => State::Ready(v),
            Err(e) => State::Failed(e),
        };
        let unheld = match self.entries.get_mut(&id) {
            Some(mut e) => {
                e.state = state;
                if !contained.is_empty() {
                    e.extra().contained.extend(contained);
                }
                e.notify.notify_waiters();
                Vec::new()
            }
            None => {
                self.free_value(id, &state);
                contained
            }
        };
        // Dropped outside the entry's lock: dropping a reference re-enters the table.
        drop(unheld);
    }

    /// Caches what a borrowed object's owner reported.
    pub(crate) fn cache_borrowed(&self, id: ObjectId, value: &Value) {
        if let Some(mut e) = self.entries.get_mut(&id)
            && !e.owned
        {
            e.state = State::Ready(value.clone());
        }
    }

    pub(crate) fn state(&self, id: ObjectId) -> Option<State> {
        self.entries.get(&id).map(|e| e.state.clone())
    }

    pub(crate) fn is_owned(&self, id: ObjectId) -> bool {
        self.entries.get(&id).is_some_and(|e| e.owned)
    }

    /// Waits until an owned object is ready or failed. `None` if this process does not
    /// know the object.
    pub(crate) async fn wait_owned(&self, id: ObjectId) -> Option<Result<Value>> {
        loop {
            let notify = {
                let e = self.entries.get(&id)?;
                match &e.state {
                    State::Ready(v) => return Some(Ok(v.clone())),
                    State::Failed(err) => return Some(Err(err.clone())),
                    State::Pending => e.notify.clone(),
                }
            };
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Re-check after registering, so a completion in between is not missed.
            match self.entries.get(&id).map(|e| e.state.clone()) {
                None => return None,
                Some(State::Ready(v)) => return Some(Ok(v)),
                Some(State::Failed(err)) => return Some(Err(err)),
                Some(State::Pending) => notified.await,
            }
        }
    }

    /// Every owned object whose primary copy sits in plasma (freed at shutdown).
    pub(crate) fn drain_owned_plasma(&self) -> Vec<Freed> {
        let mut out = Vec::new();
        let mut held = Vec::new();
        self.entries.retain(|id, e| {
            if let (true, State::Ready(Value::Plasma { node, .. })) = (e.owned, &e.state) {
                out.push(Freed {
                    id: *id,
                    node: node.clone(),
                });
                if let Some(x) = e.extra.as_mut() {
                    held.append(&mut x.contained);
                }
                false
            } else {
                true
            }
        });
        // Dropped outside the table's locks (see `finish_removal`).
        drop(held);
        out
    }
}

#[cfg(test)]
mod tests {
    use miniray_common::NodeId;

    use super::*;

    fn store() -> (
        ObjectStore,
        mpsc::UnboundedReceiver<Freed>,
        mpsc::UnboundedReceiver<super::super::borrowing::GiveBack>,
    ) {
        let (freed, freed_rx) = mpsc::unbounded_channel();
        let (borrows, given_back_rx) = BorrowQueue::new();
        (ObjectStore::new(freed, borrows), freed_rx, given_back_rx)
    }

    fn addr(worker_id: WorkerId) -> OwnerAddr {
        OwnerAddr {
            worker_id,
            node_id: NodeId::random(),
            host: "127.0.0.1".into(),
            port: 1,
        }
    }

    fn in_plasma() -> State {
        State::Ready(Value::Plasma {
            node: NodeAddress::default(),
            size: 1,
        })
    }

    #[test]
    fn an_owned_object_lives_while_a_borrower_is_registered() {
        let (store, mut freed, _) = store();
        let me = addr(WorkerId::random());
        let borrower = WorkerId::random();
        let id = ObjectId::random();
        store.insert_owned(id, in_plasma());
        store.add_local_ref(id, &me, true);
        assert!(store.update_borrower(id, borrower, "b:1", 2));
        store.remove_local_ref(id);
        assert!(store.is_owned(id), "two registrations still hold it");
        assert!(store.update_borrower(id, borrower, "b:1", -1));
        assert!(store.is_owned(id), "one registration still holds it");
        assert!(store.update_borrower(id, borrower, "b:1", -1));
        assert!(!store.is_owned(id), "freed with its last borrower");
        assert_eq!(freed.try_recv().map(|f| f.id).ok(), Some(id));
        assert!(
            !store.update_borrower(id, borrower, "b:1", 1),
            "an add for a freed object is refused"
        );
    }

    #[test]
    fn a_dead_borrower_is_forgotten() {
        let (store, mut freed, _) = store();
        let id = ObjectId::random();
        let borrower = WorkerId::random();
        store.insert_owned(id, in_plasma());
        assert!(store.update_borrower(id, borrower, "b:1", 1));
        store.drop_borrower(borrower);
        assert!(!store.is_owned(id));
        assert_eq!(freed.try_recv().map(|f| f.id).ok(), Some(id));
    }

    #[test]
    fn a_borrowed_entry_gives_back_every_registration_when_it_goes() {
        let (store, _, mut given_back) = store();
        let owner = addr(WorkerId::random());
        let id = ObjectId::random();
        // First reference by decoding: queued for registration, then registered.
        store.add_local_ref(id, &owner, false);
        assert!(store.count_registration(id));
        // A second registration made on this process's behalf (a returned value).
        store.add_registered_ref(id, &owner, false);
        store.remove_local_ref(id);
        store.remove_local_ref(id);
        let g = given_back.try_recv().expect("registrations given back");
        assert_eq!((g.subject, g.count), (Subject::Object(id), 2));
        assert!(!store.count_registration(id), "the entry is gone");
    }
}
