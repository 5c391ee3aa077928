//! Shared vocabulary of miniray: ids, error codes, cluster configuration, token auth, and
//! the transport (keepalive, TLS) of every server and channel.
//!
//! This crate sits at the bottom of the workspace next to `miniray-proto`; it must not
//! depend on any other miniray crate.

pub mod auth;
pub mod config;
pub mod error;
pub mod executable;
pub mod https;
pub mod ids;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod netns;
pub mod parent;
pub mod probe;
pub mod reply_journal;
pub mod resources;
pub mod shm;
pub mod task_events;
pub mod time;
pub mod tls;
pub mod transport;

pub use error::ErrorCode;
pub use ids::{ActorId, JobId, NodeId, ObjectId, TaskId, WorkerId};
pub use resources::Resources;
