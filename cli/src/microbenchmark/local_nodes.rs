//! A local cluster the microbenchmark starts for the metrics that need their own (several
//! nodes, or jobs coming and going on one cluster): a GCS and raylets on loopback, each
//! raylet after the head holding a resource that names it (`bench_node_<k>`), so a task
//! can be placed on a chosen node. Drivers join it through the head.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;

use anyhow::Context;
use miniray::cluster::{DaemonSpec, GcsSpec, RayletSpec, spawn_daemon, stop_daemon};
use miniray::{InitOptions, NodeId};
use miniray_common::Resources;
use miniray_common::config::{self, DEFAULT_NODE_TIMEOUT};

/// A GCS and its raylets, stopped (raylets first) when dropped.
pub(crate) struct LocalNodes {
    gcs: Child,
    raylets: Vec<Child>,
    gcs_address: String,
    token: String,
    session_name: String,
    session_dir: PathBuf,
}

impl LocalNodes {
    /// The resource only node `k` (1-based, after the head) has.
    pub(crate) fn resource(k: usize) -> String {
        format!("bench_node_{k}")
    }

    /// Starts a GCS and `count` raylets (the first is the head), each with `store_bytes`
    /// of plasma and `cpus` CPUs.
    pub(crate) fn start(count: usize, store_bytes: u64, cpus: f64) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding this program's executable")?;
        let all = store_bytes.saturating_mul(count as u64);
        miniray_common::shm::check_fits(&miniray_common::shm::plasma_dir(), all)
            .with_context(|| format!("{count} benchmark nodes need {} MiB of plasma", all >> 20))?;
        let session_name = format!(
            "session_{}_{}_bench",
            miniray_common::time::now_ms(),
            std::process::id()
        );
        let session_dir = config::tmp_root().join(&session_name);
        let logs = session_dir.join("logs");
        let token = miniray_common::auth::generate_token();
        let gcs = spawn_daemon(
            &exe,
            &DaemonSpec::Gcs(GcsSpec {
                bind: SocketAddr::from(([127, 0, 0, 1], 0)),
                token: token.clone(),
                session_name: session_name.clone(),
                redis_address: None,
                node_timeout_ms: DEFAULT_NODE_TIMEOUT.as_millis() as u64,
                max_destroyed_actors: None,
                max_task_events: None,
                tls: None,
                metrics_port: None,
            }),
            &logs.join("gcs.err"),
            true,
        )
        .context("starting the GCS")?;
        let mut nodes = LocalNodes {
            gcs: gcs.child,
            raylets: Vec::new(),
            gcs_address: gcs.address,
            token,
            session_name,
            session_dir,
        };
        for k in 0..count {
            let mut resources = Resources::new();
            if k > 0 {
                resources.set(Self::resource(k), 1.0)?;
            }
            let raylet = spawn_daemon(
                &exe,
                &DaemonSpec::Raylet(RayletSpec {
                    gcs_address: nodes.gcs_address.clone(),
                    token: nodes.token.clone(),
                    bind_host: "127.0.0.1".into(),
                    port: 0,
                    node_id: NodeId::random(),
                    resources,
                    object_store_memory: store_bytes,
                    prefault_object_store: false,
                    is_head: k == 0,
                    session_dir: nodes.session_dir.clone(),
                    plasma_dir: None,
                    tls: None,
                    cloud_instance_id: None,
                    node_type: None,
                    num_cpus: Some(cpus),
                    metrics_port: None,
                    executable_cache_bytes: None,
                }),
                &logs.join(format!("raylet-{k}.err")),
                true,
            )
            .with_context(|| format!("starting raylet {k}"))?;
            nodes.raylets.push(raylet.child);
        }
        Ok(nodes)
    }

    /// The GCS's `HOST:PORT`.
    pub(crate) fn gcs_address(&self) -> &str {
        &self.gcs_address
    }

    /// The cluster token.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// The pid of the GCS.
    pub(crate) fn gcs_pid(&self) -> u32 {
        self.gcs.id()
    }

    /// The pids of the raylets, the head first.
    pub(crate) fn raylet_pids(&self) -> Vec<u32> {
        self.raylets.iter().map(Child::id).collect()
    }

    /// Connects this process to the cluster as a driver: a new job.
    pub(crate) fn join(&self) -> miniray::Result<()> {
        miniray::init_with(
            InitOptions::new()
                .address(self.gcs_address.clone())
                .token(self.token.clone()),
        )
    }
}

impl Drop for LocalNodes {
    fn drop(&mut self) {
        for raylet in &mut self.raylets {
            stop_daemon(raylet);
        }
        stop_daemon(&mut self.gcs);
        let _ = std::fs::remove_dir_all(&self.session_dir);
        // A raylet killed because it did not stop in time (thousands of workers in a
        // stalled kernel) leaves its segment and its workers' journals: every daemon of
        // the session has exited now, so nothing maps them.
        let prefix = format!("miniray-{}-", self.session_name);
        if let Ok(entries) = std::fs::read_dir(miniray_common::shm::plasma_dir()) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}
