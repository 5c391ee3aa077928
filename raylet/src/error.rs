//! The raylet's error type.

use std::path::PathBuf;

use miniray_common::auth::AuthError;
use miniray_plasma::PlasmaError;

/// Why a raylet could not start, or why it stopped.
#[derive(Debug, thiserror::Error)]
pub enum RayletError {
    #[error("invalid raylet configuration: {0}")]
    Config(String),
    #[error("creating the object store: {0}")]
    Plasma(#[from] PlasmaError),
    #[error("binding {address}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("creating {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reaching the gcs: {0}")]
    GcsConnect(#[from] AuthError),
    #[error("gcs {rpc} failed: {status}")]
    Gcs {
        rpc: &'static str,
        status: tonic::Status,
    },
    #[error("the gcs considers this node dead (it refused its heartbeat and re-registration)")]
    HeartbeatRejected,
    #[error("grpc server failed: {0}")]
    Server(#[from] tonic::transport::Error),
    #[error("raylet task failed: {0}")]
    Internal(String),
    #[error(transparent)]
    SharedMemory(#[from] miniray_common::shm::ShmError),
    #[error("choosing the node address: {0}")]
    NodeAddress(#[from] miniray_common::net::AddrError),
}
