//! Unique ids for cluster entities: 16 random bytes, shown as hex.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Length in bytes of every id.
pub const ID_LEN: usize = 16;

/// An id arrived with the wrong length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} id: expected {ID_LEN} bytes, got {got}")]
pub struct InvalidId {
    pub kind: &'static str,
    pub got: usize,
}

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name([u8; ID_LEN]);

        impl $name {
            /// A fresh random id.
            pub fn random() -> Self {
                Self(rand::random())
            }

            pub fn from_array(bytes: [u8; ID_LEN]) -> Self {
                Self(bytes)
            }

            /// Parses the wire form; rejects any other length.
            pub fn from_bytes(bytes: &[u8]) -> Result<Self, InvalidId> {
                let arr: [u8; ID_LEN] = bytes
                    .try_into()
                    .map_err(|_| InvalidId { kind: $kind, got: bytes.len() })?;
                Ok(Self(arr))
            }

            /// Parses the hex form shown by `Display`.
            pub fn from_hex(s: &str) -> Result<Self, InvalidId> {
                let bytes = hex::decode(s).map_err(|_| InvalidId { kind: $kind, got: s.len() / 2 })?;
                Self::from_bytes(&bytes)
            }

            pub fn as_bytes(&self) -> &[u8; ID_LEN] {
                &self.0
            }

            pub fn to_vec(&self) -> Vec<u8> {
                self.0.to_vec()
            }

            pub fn hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), &hex::encode(self.0)[..8])
            }
        }
    };
}

define_id!(
    /// A node of the cluster (one raylet).
    NodeId,
    "node"
);
define_id!(
    /// A driver or worker process.
    WorkerId,
    "worker"
);
define_id!(
    /// A job: one driver run and the workers it uses.
    JobId,
    "job"
);
define_id!(
    /// An object in the object store or an owner's in-process store.
    ObjectId,
    "object"
);
define_id!(
    /// One submission of a task.
    TaskId,
    "task"
);
define_id!(
    /// A worker lease granted by a raylet.
    LeaseId,
    "lease"
);
define_id!(
    /// An actor: stays the same across restarts of the worker hosting it.
    ActorId,
    "actor"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_bad_lengths() {
        let id = ObjectId::random();
        assert_eq!(ObjectId::from_bytes(&id.to_vec()), Ok(id));
        assert_eq!(ObjectId::from_hex(&id.hex()), Ok(id));
        assert!(ObjectId::from_bytes(&[1, 2, 3]).is_err());
        assert!(NodeId::from_hex("zz").is_err());
    }
}
