//! The plasma store's error type and its mapping onto the cluster-wide [`ErrorCode`].

use std::path::PathBuf;

use miniray_common::{ErrorCode, ObjectId};

/// Everything a plasma operation can fail with.
///
/// Object-state errors carry the [`ObjectId`] so the raylet can report them per object;
/// capacity errors carry the numbers a user needs to understand why the store is full.
#[derive(Debug, thiserror::Error)]
pub enum PlasmaError {
    /// `create` of an id that is already in the store (in any state, including an object
    /// whose deletion waits for its last reader).
    #[error("object {0} already exists in the object store")]
    AlreadyExists(ObjectId),
    /// The object is not in the store, or is being deleted.
    #[error("object {0} not found in the object store")]
    NotFound(ObjectId),
    /// The operation needs a sealed object and this one is still being written.
    #[error("object {0} is not sealed")]
    NotSealed(ObjectId),
    /// The operation needs an unsealed object and this one is already immutable.
    #[error("object {0} is already sealed")]
    AlreadySealed(ObjectId),
    /// Nothing more can be evicted: every remaining byte is pinned (primary copies, objects
    /// being read, objects being written) or too fragmented to hold `requested` bytes.
    /// All numbers count allocated bytes: each object rounded up to 64.
    #[error(
        "object store full: requested {requested} bytes, capacity {capacity}, used {used}, pinned {pinned}"
    )]
    ObjectStoreFull {
        requested: u64,
        capacity: u64,
        used: u64,
        pinned: u64,
    },
    /// The object can never fit, whatever gets evicted.
    #[error(
        "object {id} of {requested} bytes exceeds the object store capacity of {capacity} bytes"
    )]
    TooLarge {
        id: ObjectId,
        requested: u64,
        capacity: u64,
    },
    /// A byte range reaches past the end of an object or of the segment.
    #[error("range at offset {offset} of {len} bytes is out of bounds of {size} bytes")]
    OutOfBounds { offset: u64, len: u64, size: u64 },
    /// The segment file already exists: another store (or a crashed one) owns that name.
    #[error("plasma segment {path} already exists")]
    SegmentExists { path: PathBuf },
    /// The store configuration cannot work (for example a capacity below one block).
    #[error("invalid plasma configuration: {0}")]
    InvalidConfig(String),
    /// Creating, sizing, mapping or removing the segment file failed.
    #[error("plasma segment {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The segment's folder (a tmpfs such as `/dev/shm`) has no memory left for the pages
    /// of a new object, although the store itself had room: other files took it. Travels as
    /// [`ErrorCode::ObjectStoreFull`], like a store full of pinned objects.
    #[error(
        "object store full: no room in {dir} for the {requested} bytes requested ({source}); \
         other files use that folder's memory"
    )]
    SegmentDirFull {
        requested: u64,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl PlasmaError {
    /// The cluster-wide code this error travels as over gRPC.
    pub fn code(&self) -> ErrorCode {
        match self {
            PlasmaError::AlreadyExists(_) | PlasmaError::SegmentExists { .. } => {
                ErrorCode::AlreadyExists
            }
            PlasmaError::NotFound(_) => ErrorCode::NotFound,
            PlasmaError::NotSealed(_)
            | PlasmaError::AlreadySealed(_)
            | PlasmaError::OutOfBounds { .. }
            | PlasmaError::InvalidConfig(_) => ErrorCode::InvalidArgument,
            PlasmaError::ObjectStoreFull { .. } | PlasmaError::SegmentDirFull { .. } => {
                ErrorCode::ObjectStoreFull
            }
            PlasmaError::TooLarge { .. } => ErrorCode::ResourceExhausted,
            PlasmaError::Io { .. } => ErrorCode::Internal,
        }
    }
}
