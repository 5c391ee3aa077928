//! Helpers shared by the raylet's integration tests: a real GCS and real raylets in this
//! process on loopback.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use miniray_common::auth::{AuthedChannel, connect};
use miniray_common::config::MAX_MESSAGE_SIZE;
use miniray_common::{NodeId, Resources};
use miniray_gcs::{GcsConfig, GcsHandle, GcsServer};
use miniray_proto::gcs_client::GcsClient;
use miniray_proto::raylet_client::RayletClient;
use miniray_proto::{GetAllNodesRequest, NodeInfo};
use miniray_raylet::{Raylet, RayletConfig, RayletHandle};

pub const TOKEN: &str = "raylet-test-token";

/// Generous: the machine running the tests may be loaded.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub async fn start_gcs() -> GcsHandle {
    GcsServer::start(GcsConfig::new(TOKEN))
        .await
        .expect("gcs starts")
}

pub fn raylet_config(
    gcs: &GcsHandle,
    session_dir: &Path,
    resources: &[(&str, f64)],
) -> RayletConfig {
    let mut cfg = RayletConfig::new(gcs.address().to_string(), TOKEN, session_dir);
    cfg.resources = Resources::from_pairs(resources.iter().map(|(k, v)| (k.to_string(), *v)))
        .expect("valid resources");
    cfg.object_store_memory = 64 << 20;
    cfg.heartbeat_interval = Duration::from_millis(100);
    cfg
}

pub async fn start_raylet(
    gcs: &GcsHandle,
    session_dir: &Path,
    resources: &[(&str, f64)],
) -> RayletHandle {
    Raylet::start(raylet_config(gcs, session_dir, resources))
        .await
        .expect("raylet starts")
}

pub async fn raylet_client(h: &RayletHandle) -> RayletClient<AuthedChannel> {
    RayletClient::new(
        connect(&h.address().to_string(), TOKEN)
            .await
            .expect("raylet reachable"),
    )
    .max_decoding_message_size(MAX_MESSAGE_SIZE)
    .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

pub async fn gcs_client(gcs: &GcsHandle) -> GcsClient<AuthedChannel> {
    GcsClient::new(
        connect(&gcs.address().to_string(), TOKEN)
            .await
            .expect("gcs reachable"),
    )
    .max_decoding_message_size(MAX_MESSAGE_SIZE)
    .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// Polls `check` until it yields `Some`, or panics with `what` after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The GCS's record of `node`.
pub async fn node_in_gcs(gcs: &mut GcsClient<AuthedChannel>, node: NodeId) -> Option<NodeInfo> {
    let nodes = gcs
        .get_all_nodes(GetAllNodesRequest {})
        .await
        .ok()?
        .into_inner()
        .nodes;
    nodes.into_iter().find(|n| {
        n.address
            .as_ref()
            .is_some_and(|a| a.node_id == node.to_vec())
    })
}

/// Path of the plasma segment of a raylet started with `session_dir`.
pub fn segment_path(session_dir: &Path, node: NodeId) -> PathBuf {
    PathBuf::from("/dev/shm").join(miniray_raylet::segment_name(session_dir, node))
}
