//! The in-process object table: owned objects (their state, value or location, and local
//! reference count) and borrowed objects (a cache of what their owner said).
//!
//! Invariants:
//! - an owned entry exists while a `RefHandle` for it is alive in this process or it has
//!   escaped (was serialized into a value that left the process); escaped objects stay until
//!   this process exits, since borrowers are not tracked yet;
//! - when an owned entry is removed and its value sits in plasma, its primary copy is freed
//!   through `freed` (the owner is the only one who frees primary copies);
//! - a task result arriving for an entry that is gone is freed at once.

use std::sync::Arc;

use dashmap::DashMap;
use miniray_common::ObjectId;
use miniray_proto::{NodeAddress, ObjectValue, object_value};
use tokio::sync::{Notify, mpsc};

use crate::error::{Error, Result};

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
    notify: Arc<Notify>,
}

/// A primary plasma copy to free on `node`.
pub(crate) struct Freed {
    pub id: ObjectId,
    pub node: NodeAddress,
}

pub(crate) struct ObjectStore {
    entries: DashMap<ObjectId, Entry>,
    freed: mpsc::UnboundedSender<Freed>,
}

impl ObjectStore {
    pub(crate) fn new(freed: mpsc::UnboundedSender<Freed>) -> Self {
        Self {
            entries: DashMap::new(),
            freed,
        }
    }

    /// Records a new owned object (before its first `RefHandle` is made).
    pub(crate) fn insert_owned(&self, id: ObjectId, state: State) {
        self.entries.insert(
            id,
            Entry {
                owned: true,
                state,
                local_refs: 0,
                escaped: false,
                notify: Arc::new(Notify::new()),
            },
        );
    }

    pub(crate) fn add_local_ref(&self, id: ObjectId, owned: bool) {
        self.entries
            .entry(id)
            .or_insert_with(|| Entry {
                owned,
                state: State::Pending,
                local_refs: 0,
                escaped: false,
                notify: Arc::new(Notify::new()),
            })
            .local_refs += 1;
    }

    /// Drops one local reference; frees the object when nothing holds it any more.
    pub(crate) fn remove_local_ref(&self, id: ObjectId) {
        let removed = self.entries.remove_if_mut(&id, |_, e| {
            e.local_refs = e.local_refs.saturating_sub(1);
            e.local_refs == 0 && !e.escaped
        });
        if let Some((id, entry)) = removed
            && entry.owned
        {
            self.free_value(id, &entry.state);
        }
    }

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
        let state = match outcome {
            Ok(v) => State::Ready(v),
            Err(e) => State::Failed(e),
        };
        match self.entries.get_mut(&id) {
            Some(mut e) => {
                e.state = state;
                e.notify.notify_waiters();
            }
            None => self.free_value(id, &state),
        }
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
        self.entries.retain(|id, e| {
            if let (true, State::Ready(Value::Plasma { node, .. })) = (e.owned, &e.state) {
                out.push(Freed {
                    id: *id,
                    node: node.clone(),
                });
                false
            } else {
                true
            }
        });
        out
    }
}
