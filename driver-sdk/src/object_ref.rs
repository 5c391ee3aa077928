//! `ObjectRef<T>`: a typed, reference-counted handle to an object owned by some process.
//!
//! Invariant: every live `RefHandle` counts once in its process's object store; the store
//! frees an owned object when the count reaches zero, no other process is registered as its
//! borrower, and it never left the process untracked (see `runtime/borrowing.rs`).

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Weak};

use miniray_common::{NodeId, ObjectId, WorkerId};
use miniray_proto::WorkerAddress;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::runtime::{self, CoreWorker};

/// The process that owns an object: where borrowers ask for its value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct OwnerAddr {
    pub worker_id: WorkerId,
    pub node_id: NodeId,
    pub host: String,
    pub port: u16,
}

impl OwnerAddr {
    pub(crate) fn to_proto(&self) -> WorkerAddress {
        WorkerAddress {
            worker_id: self.worker_id.to_vec(),
            node_id: self.node_id.to_vec(),
            host: self.host.clone(),
            port: self.port as u32,
        }
    }

    /// `None` for an address with malformed ids (from another process: not trusted).
    pub(crate) fn from_proto(a: &WorkerAddress) -> Option<Self> {
        Some(OwnerAddr {
            worker_id: WorkerId::from_bytes(&a.worker_id).ok()?,
            node_id: NodeId::from_bytes(&a.node_id).ok()?,
            host: a.host.clone(),
            port: u16::try_from(a.port).ok()?,
        })
    }

    pub(crate) fn endpoint(&self) -> String {
        miniray_common::net::host_port(&self.host, self.port)
    }
}

/// One counted reference to an object in this process.
pub(crate) struct RefHandle {
    pub id: ObjectId,
    pub owner: OwnerAddr,
    runtime: Weak<CoreWorker>,
}

impl RefHandle {
    pub(crate) fn new(cw: &Arc<CoreWorker>, id: ObjectId, owner: OwnerAddr) -> Arc<Self> {
        cw.store
            .add_local_ref(id, &owner, owner.worker_id == cw.worker_id);
        Arc::new(Self {
            id,
            owner,
            runtime: Arc::downgrade(cw),
        })
    }

    /// A handle to an object whose owner already counts this process as a borrower.
    pub(crate) fn registered(cw: &Arc<CoreWorker>, id: ObjectId, owner: OwnerAddr) -> Arc<Self> {
        cw.store
            .add_registered_ref(id, &owner, owner.worker_id == cw.worker_id);
        Arc::new(Self {
            id,
            owner,
            runtime: Arc::downgrade(cw),
        })
    }
}

impl Drop for RefHandle {
    fn drop(&mut self) {
        if let Some(cw) = self.runtime.upgrade() {
            cw.release_ref(self.id);
        }
    }
}

/// A reference to a value of type `T` that a task will produce or `put` has stored.
///
/// Cheap to clone. Serializable: pass it inside values to tasks, which can `get` it too.
pub struct ObjectRef<T> {
    pub(crate) handle: Arc<RefHandle>,
    _marker: PhantomData<fn() -> T>,
}

impl<T> ObjectRef<T> {
    pub(crate) fn from_handle(handle: Arc<RefHandle>) -> Self {
        Self {
            handle,
            _marker: PhantomData,
        }
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.handle.id
    }

    /// The node of the process that owns the object.
    pub fn owner_node(&self) -> NodeId {
        self.handle.owner.node_id
    }
}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        Self::from_handle(self.handle.clone())
    }
}

impl<T> fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectRef({})", self.handle.id)
    }
}

impl<T> PartialEq for ObjectRef<T> {
    fn eq(&self, other: &Self) -> bool {
        self.handle.id == other.handle.id
    }
}

impl<T> Eq for ObjectRef<T> {}

#[derive(Serialize, Deserialize)]
struct WireRef {
    id: ObjectId,
    owner: OwnerAddr,
}

impl<T> Serialize for ObjectRef<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if !crate::runtime::borrowing::note_serialized(|| {
            Some(crate::runtime::borrowing::Held::Object(self.handle.clone()))
        }) && let Some(cw) = self.handle.runtime.upgrade()
        {
            cw.store.mark_escaped(self.handle.id);
        }
        WireRef {
            id: self.handle.id,
            owner: self.handle.owner.clone(),
        }
        .serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for ObjectRef<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let wire = WireRef::deserialize(d)?;
        let cw = runtime::current().map_err(serde::de::Error::custom)?;
        Ok(Self::from_handle(RefHandle::new(&cw, wire.id, wire.owner)))
    }
}
