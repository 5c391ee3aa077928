//! miniray-plasma: the node's shared-memory object store.
//!
//! One file in `/dev/shm` per node holds every large object of that node. The raylet owns
//! it through a [`PlasmaStore`] (allocation, seal, pins, LRU eviction; thread-safe, used
//! in-process behind an `Arc`) and exposes its operations over gRPC. Drivers and workers map
//! the same file with a [`SegmentMapping`] and read or write object bytes in place, so a
//! local `get` never copies. This crate does no RPC.
//!
//! See [`store`] for the object lifecycle and the pinning/eviction rules.
//!
//! ```
//! use miniray_common::ObjectId;
//! use miniray_plasma::{PlasmaStore, SegmentMapping, StoreConfig};
//!
//! # fn main() -> Result<(), miniray_plasma::PlasmaError> {
//! # let name = format!("miniray-plasma-doctest-{}", std::process::id());
//! // Raylet: one store per node (the file goes away when the store drops).
//! let store = PlasmaStore::create_segment(StoreConfig::new(1 << 20, name))?;
//! // Worker: map the segment once, then put an object in place.
//! let mapping = SegmentMapping::open(store.segment_path())?;
//! let id = ObjectId::random();
//! let loc = store.create(id, 5, true)?;
//! // SAFETY: we created `id`, it is unsealed, and this is the only view of it.
//! unsafe { mapping.slice_mut(loc)? }.copy_from_slice(b"hello");
//! store.seal(id)?;
//! // Any local reader: pin, read zero-copy, release.
//! let loc = store.get(id).expect("sealed");
//! assert_eq!(mapping.slice(loc)?, b"hello");
//! store.release(id);
//! // Owner: free it.
//! assert!(store.delete(id));
//! # Ok(())
//! # }
//! ```

mod alloc;
mod client;
mod error;
pub mod store;
pub mod testing;

pub use alloc::BLOCK;
pub use client::SegmentMapping;
pub use error::PlasmaError;
pub use store::{
    Disconnected, ObjectLocation, ObjectView, ObjectViewMut, PlasmaStore, RESERVE_CHUNK,
    StoreConfig, StoreStats,
};
