//! Configuration of one raylet.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use miniray_common::config::{DEFAULT_HEARTBEAT_INTERVAL, default_object_store_memory, num_cpus};
use miniray_common::net::{self, AddrError};
use miniray_common::{NodeId, Resources};

/// Default time a freshly spawned worker has to call `RegisterWorker`.
pub const DEFAULT_WORKER_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Default time an idle worker above the per-job soft limit survives.
pub const DEFAULT_IDLE_WORKER_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a raylet needs to run. Build with [`RayletConfig::new`] (or `Default`) and
/// override fields.
#[derive(Debug, Clone)]
pub struct RayletConfig {
    /// `HOST:PORT` of the GCS.
    pub gcs_address: String,
    /// The cluster token; required on every RPC this raylet serves and sent on every RPC it makes.
    pub token: String,
    /// The node IP: the interface the gRPC server binds, and the host this node and its
    /// workers advertise. An unspecified address (`0.0.0.0`, `::`) listens on every
    /// interface and advertises the address of the one that routes to the GCS.
    pub bind_host: String,
    /// 0 picks any free port.
    pub port: u16,
    pub node_id: NodeId,
    /// Total resources of the node. `CPU` defaults to the core count when left out.
    pub resources: Resources,
    /// Capacity of the plasma segment in bytes. Must fit in the free space of `plasma_dir`.
    pub object_store_memory: u64,
    /// Touch every page of the segment at start (slower start, no page faults later).
    pub prefault_object_store: bool,
    pub is_head: bool,
    /// `logs/` (worker output) goes under here; its basename names the plasma segment.
    pub session_dir: PathBuf,
    pub heartbeat_interval: Duration,
    pub worker_start_timeout: Duration,
    /// Idle workers above the per-job soft limit exit after this long.
    pub idle_worker_timeout: Duration,
    pub labels: HashMap<String, String>,
    /// Folder of the plasma segment and the workers' reply journals: a tmpfs
    /// (`MINIRAY_PLASMA_DIR`, default `/dev/shm`).
    pub plasma_dir: PathBuf,
    /// The provider's name for this machine and the autoscaler node type it was launched
    /// as; reported in `NodeInfo` so the autoscaler matches its instances to raylets.
    pub cloud_instance_id: Option<String>,
    pub node_type: Option<String>,
    /// CPUs given explicitly, 0 included; `None`: `resources`' CPU, else the core count.
    pub num_cpus: Option<f64>,
    /// Serve Prometheus metrics (`/metrics`) on this port of `bind_host` (0: any free
    /// port); `None`: no metrics endpoint.
    pub metrics_port: Option<u16>,
    /// How often the task events of this node's core workers go to the GCS.
    pub task_events_forward_interval: Duration,
    /// Bytes of cached job executables no running job uses that stay on disk for a job
    /// that runs them again (see `executable_cache.rs`).
    pub executable_cache_bytes: u64,
}

impl RayletConfig {
    /// A configuration with defaults for everything but the cluster coordinates.
    pub fn new(
        gcs_address: impl Into<String>,
        token: impl Into<String>,
        session_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            gcs_address: gcs_address.into(),
            token: token.into(),
            session_dir: session_dir.into(),
            ..Self::default()
        }
    }

    /// The resources this node reports: `resources` with `CPU` = `num_cpus` when given
    /// (0 included), else `CPU` = core count when absent (a [`Resources`] never stores zero
    /// amounts, so absent and zero are the same there).
    pub fn effective_resources(&self) -> Resources {
        let mut r = self.resources.clone();
        if let Some(n) = self.num_cpus {
            // An invalid amount (negative, NaN) leaves what `resources` says.
            let _ = r.set("CPU", n);
        } else if r.get("CPU") <= 0.0 {
            // Setting a positive finite amount with a non-empty name cannot fail.
            let _ = r.set("CPU", num_cpus() as f64);
        }
        r
    }

    /// The host other processes use to reach this raylet and its workers: `bind_host`,
    /// unless it is unspecified; then the address of the interface that routes to the GCS
    /// (never a hard-coded loopback, which other machines would take for themselves).
    pub async fn advertised_host(&self) -> Result<String, AddrError> {
        if net::is_unspecified(&self.bind_host) {
            Ok(net::route_ip_to(&self.gcs_address).await?.to_string())
        } else {
            Ok(self.bind_host.clone())
        }
    }
}

impl Default for RayletConfig {
    fn default() -> Self {
        Self {
            gcs_address: String::new(),
            token: String::new(),
            bind_host: "127.0.0.1".to_string(),
            port: 0,
            node_id: NodeId::random(),
            resources: Resources::new(),
            object_store_memory: default_object_store_memory(),
            prefault_object_store: false,
            is_head: false,
            session_dir: miniray_common::config::tmp_root().join("session_latest"),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            worker_start_timeout: DEFAULT_WORKER_START_TIMEOUT,
            idle_worker_timeout: DEFAULT_IDLE_WORKER_TIMEOUT,
            labels: HashMap::new(),
            plasma_dir: miniray_common::shm::plasma_dir(),
            cloud_instance_id: None,
            node_type: None,
            num_cpus: None,
            metrics_port: None,
            task_events_forward_interval: crate::task_events::DEFAULT_TASK_EVENTS_FORWARD_INTERVAL,
            executable_cache_bytes: crate::executable_cache::DEFAULT_UNUSED_BUDGET,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_defaults_to_core_count_only_when_absent() {
        let cfg = RayletConfig::default();
        assert_eq!(cfg.effective_resources().get("CPU"), num_cpus() as f64);
        let cfg = RayletConfig {
            resources: Resources::from_pairs([("CPU", 3.0)]).unwrap(),
            ..RayletConfig::default()
        };
        assert_eq!(cfg.effective_resources().get("CPU"), 3.0);
        // Given explicitly, 0 is 0: a head that runs no tasks.
        let cfg = RayletConfig {
            num_cpus: Some(0.0),
            ..RayletConfig::default()
        };
        assert_eq!(cfg.effective_resources().get("CPU"), 0.0);
    }

    #[tokio::test]
    async fn an_unspecified_bind_host_advertises_the_route_to_the_gcs() {
        let mut cfg = RayletConfig::new("127.0.0.3:6379", "t", "/tmp/x");
        cfg.bind_host = "127.0.0.2".into();
        assert_eq!(cfg.advertised_host().await.unwrap(), "127.0.0.2");
        for any in ["0.0.0.0", "::"] {
            cfg.bind_host = any.into();
            assert_eq!(cfg.advertised_host().await.unwrap(), "127.0.0.3");
        }
        cfg.gcs_address = "no-such-host.invalid:1".into();
        assert!(cfg.advertised_host().await.is_err());
    }
}
