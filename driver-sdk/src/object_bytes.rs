//! [`ObjectBytes`]: the bytes of a `Vec<u8>` object, read in place from this node's object
//! store when they are there ([`crate::get_bytes`]), as Ray's zero-copy numpy reads.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use miniray_common::ObjectId;

use crate::runtime::CoreWorker;

/// The bytes of a `Vec<u8>` object. Derefs to `[u8]`.
///
/// When the object lies in this node's object store, this borrows the store's shared
/// memory (no copy, whatever the size) and keeps the object pinned there until dropped;
/// small objects (which travel inline) and objects read over the network are an owned
/// buffer instead. [`is_zero_copy`](Self::is_zero_copy) tells which.
pub struct ObjectBytes {
    inner: Inner,
}

enum Inner {
    Owned(Vec<u8>),
    InStore {
        ptr: *const u8,
        len: usize,
        _pin: StorePin,
    },
}

// SAFETY: `InStore` points into the store's shared mapping, which its pin keeps alive (the
// `Arc<CoreWorker>` owns the mapping) and which a sealed object never changes; reading it
// from any thread is sound.
unsafe impl Send for ObjectBytes {}
unsafe impl Sync for ObjectBytes {}

impl ObjectBytes {
    pub(crate) fn owned(bytes: Vec<u8>) -> Self {
        Self {
            inner: Inner::Owned(bytes),
        }
    }

    /// The sealed bytes `bytes`, inside `cw`'s store mapping, pinned for `id` (released on
    /// drop).
    ///
    /// # Safety
    /// `bytes` must lie in the mapping of `cw.plasma`, in an object `id` that this process
    /// holds one reader pin on, handed over to the result.
    pub(crate) unsafe fn in_store(cw: Arc<CoreWorker>, id: ObjectId, bytes: &[u8]) -> Self {
        Self {
            inner: Inner::InStore {
                ptr: bytes.as_ptr(),
                len: bytes.len(),
                _pin: StorePin { cw, id },
            },
        }
    }

    /// Whether the bytes are read in place from this node's object store.
    pub fn is_zero_copy(&self) -> bool {
        matches!(self.inner, Inner::InStore { .. })
    }

    /// The bytes as an owned vector (a copy, unless they already are one).
    pub fn into_vec(self) -> Vec<u8> {
        match self.inner {
            Inner::Owned(v) => v,
            Inner::InStore { .. } => self.deref().to_vec(),
        }
    }
}

impl Deref for ObjectBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.inner {
            Inner::Owned(v) => v,
            // SAFETY: see the `Send`/`Sync` impls.
            Inner::InStore { ptr, len, .. } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }
}

impl AsRef<[u8]> for ObjectBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for ObjectBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectBytes")
            .field("len", &self.len())
            .field("zero_copy", &self.is_zero_copy())
            .finish()
    }
}

/// A reader pin on an object of this node's store, released when dropped.
struct StorePin {
    cw: Arc<CoreWorker>,
    id: ObjectId,
}

impl Drop for StorePin {
    fn drop(&mut self) {
        let cw = Arc::clone(&self.cw);
        let id = self.id;
        // Dropped from any thread, async or not: the release goes on the runtime. After
        // `shutdown` it is not sent, and the raylet drops the pins of the gone client.
        drop(self.cw.handle.spawn(async move {
            if let Err(e) = cw.plasma.release(&[id]).await {
                tracing::debug!(object_id = %id, error = %e, "releasing a store pin failed");
            }
        }));
    }
}
