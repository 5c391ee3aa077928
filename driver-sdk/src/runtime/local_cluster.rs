//! A local cluster started from this program's executable: a GCS and raylets on loopback.
//! A driver's private cluster (`init()` with no address) is one with a single raylet; the
//! CLI's benchmarks start ones of several.
//!
//! Invariant: the daemons exit with this process (`spawn_daemon`'s `exit_with_parent`),
//! and a stopped cluster leaves no plasma segment of its session behind, even of a raylet
//! that had to be killed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};

use miniray_common::{NodeId, Resources};

use super::cluster::{DaemonSpec, GcsSpec, RayletSpec, spawn_daemon, stop_daemon};
use crate::error::{Error, Result};

/// One raylet of a [`LocalCluster`].
#[derive(Clone, Debug, Default)]
pub struct LocalNodeOptions {
    /// CPUs to offer (default: this machine's).
    pub num_cpus: Option<f64>,
    /// Custom resources.
    pub resources: Resources,
    /// Plasma bytes (default: the usual share of shared memory).
    pub object_store_memory: Option<u64>,
}

/// A GCS and its raylets, stopped (raylets first) by [`stop`](Self::stop) or when dropped.
pub struct LocalCluster {
    gcs: Child,
    raylets: Vec<Child>,
    node_ids: Vec<NodeId>,
    gcs_address: String,
    token: String,
    session_name: String,
    session_dir: PathBuf,
    keep_logs: bool,
}

impl LocalCluster {
    /// Starts a GCS and one raylet per entry of `nodes`, the first the head, with this
    /// process's TLS setting. The plasma sizes given must fit the plasma folder together.
    /// `keep_logs`: whether the session folder, with the daemons' logs, stays after stop.
    pub fn start(nodes: &[LocalNodeOptions], keep_logs: bool) -> Result<Self> {
        if nodes.is_empty() {
            return Err(Error::InvalidArgument(
                "a local cluster needs at least one node".into(),
            ));
        }
        let exe = std::env::current_exe()
            .map_err(|e| Error::Startup(format!("cannot find this program's executable: {e}")))?;
        // Refused here with both numbers rather than by a raylet that fails to start.
        let given: u64 = nodes
            .iter()
            .filter_map(|n| n.object_store_memory)
            .fold(0, u64::saturating_add);
        if given > 0 {
            miniray_common::shm::check_fits(&miniray_common::shm::plasma_dir(), given)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        }
        // Two clusters of one process started in the same millisecond get two sessions.
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let session_name = match STARTED.fetch_add(1, Ordering::Relaxed) {
            0 => format!(
                "session_{}_{}",
                miniray_common::time::now_ms(),
                std::process::id()
            ),
            n => format!(
                "session_{}_{}_{n}",
                miniray_common::time::now_ms(),
                std::process::id()
            ),
        };
        let session_dir = miniray_common::config::tmp_root().join(&session_name);
        let logs = session_dir.join("logs");
        let token = miniray_common::auth::generate_token();
        let tls = miniray_common::tls::current()
            .and_then(miniray_common::tls::Tls::files)
            .cloned();
        let gcs = spawn_daemon(
            &exe,
            &DaemonSpec::Gcs(GcsSpec {
                bind: SocketAddr::from(([127, 0, 0, 1], 0)),
                token: token.clone(),
                session_name: session_name.clone(),
                redis_address: None,
                node_timeout_ms: miniray_common::config::DEFAULT_NODE_TIMEOUT.as_millis() as u64,
                max_destroyed_actors: None,
                max_task_events: None,
                unused_executable_ttl_ms: None,
                tls: tls.clone(),
                metrics_port: None,
            }),
            &logs.join("gcs.err"),
            true,
        )?;
        // From here on, a failure stops what started (on drop).
        let mut cluster = LocalCluster {
            gcs: gcs.child,
            raylets: Vec::new(),
            node_ids: Vec::new(),
            gcs_address: gcs.address,
            token,
            session_name,
            session_dir,
            keep_logs,
        };
        for (k, node) in nodes.iter().enumerate() {
            let mut resources = node.resources.clone();
            if let Some(n) = node.num_cpus {
                resources
                    .set("CPU", n)
                    .map_err(|e| Error::InvalidArgument(e.to_string()))?;
            }
            let node_id = NodeId::random();
            let raylet = spawn_daemon(
                &exe,
                &DaemonSpec::Raylet(RayletSpec {
                    gcs_address: cluster.gcs_address.clone(),
                    token: cluster.token.clone(),
                    bind_host: "127.0.0.1".into(),
                    port: 0,
                    node_id,
                    resources,
                    object_store_memory: node
                        .object_store_memory
                        .unwrap_or_else(miniray_common::config::default_object_store_memory),
                    prefault_object_store: false,
                    is_head: k == 0,
                    session_dir: cluster.session_dir.clone(),
                    plasma_dir: None,
                    tls: tls.clone(),
                    cloud_instance_id: None,
                    node_type: None,
                    num_cpus: None,
                    metrics_port: None,
                    executable_cache_bytes: None,
                }),
                &match k {
                    0 => logs.join("raylet.err"),
                    k => logs.join(format!("raylet-{k}.err")),
                },
                true,
            )?;
            cluster.raylets.push(raylet.child);
            cluster.node_ids.push(node_id);
        }
        Ok(cluster)
    }

    /// The GCS's `HOST:PORT`.
    pub fn gcs_address(&self) -> &str {
        &self.gcs_address
    }

    /// The cluster token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The nodes, in the order they were given (the head first).
    pub fn node_ids(&self) -> &[NodeId] {
        &self.node_ids
    }

    /// The pid of the GCS.
    pub fn gcs_pid(&self) -> u32 {
        self.gcs.id()
    }

    /// The pids of the raylets, the head first.
    pub fn raylet_pids(&self) -> Vec<u32> {
        self.raylets.iter().map(Child::id).collect()
    }

    /// Stops the raylets (each stops its workers and removes its segment), then the GCS;
    /// then removes what a raylet killed for not stopping in time left in the plasma
    /// folder (every daemon of the session has exited, so nothing maps it), and the
    /// session folder unless its logs are kept. Stopping again does nothing more.
    pub fn stop(&mut self) {
        for raylet in &mut self.raylets {
            stop_daemon(raylet);
        }
        stop_daemon(&mut self.gcs);
        let prefix = format!("miniray-{}-", self.session_name);
        if let Ok(entries) = std::fs::read_dir(miniray_common::shm::plasma_dir()) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        if !self.keep_logs {
            let _ = std::fs::remove_dir_all(&self.session_dir);
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
