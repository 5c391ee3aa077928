//! Defaults and environment variables that tie miniray processes together.

use std::path::PathBuf;
use std::time::Duration;

/// Environment variables read by miniray processes.
pub mod env {
    /// `HOST:PORT` of the GCS of an existing cluster for drivers to join.
    pub const ADDRESS: &str = "MINIRAY_ADDRESS";
    /// The cluster token (otherwise read from the cluster file under the temp root).
    pub const TOKEN: &str = "MINIRAY_TOKEN";
    /// Set by the process that starts a miniray executable in a non-driver role:
    /// `worker`, `gcs` or `raylet` (see `miniray::init`).
    pub const ROLE: &str = "MINIRAY_ROLE";
    /// Address of the GCS, given to workers and embedded daemons.
    pub const GCS_ADDRESS: &str = "MINIRAY_GCS_ADDRESS";
    /// Address of the local raylet, given to workers.
    pub const RAYLET_ADDRESS: &str = "MINIRAY_RAYLET_ADDRESS";
    pub const NODE_ID: &str = "MINIRAY_NODE_ID";
    pub const WORKER_ID: &str = "MINIRAY_WORKER_ID";
    pub const JOB_ID: &str = "MINIRAY_JOB_ID";
    /// Path prefix of a worker's reply journals (see `reply_journal`), given by its raylet.
    pub const REPLY_JOURNAL: &str = "MINIRAY_REPLY_JOURNAL";
    /// Root folder for session files, logs and the executable cache (default `/tmp/miniray`).
    pub const TMPDIR: &str = "MINIRAY_TMPDIR";
    /// Serialized daemon arguments for embedded daemons started by a driver.
    pub const DAEMON_ARGS: &str = "MINIRAY_DAEMON_ARGS";
    /// Tracing filter (`info`, `miniray_raylet=debug`, ...).
    pub const LOG: &str = "MINIRAY_LOG";
    /// Folder of the plasma segment and the reply journals (default `/dev/shm`).
    pub const PLASMA_DIR: &str = "MINIRAY_PLASMA_DIR";
    /// The IP of this process's node: what it binds and advertises. Given by a raylet to
    /// its workers; a driver on a machine with several interfaces may set it (otherwise it
    /// takes the address of the interface that routes to the GCS).
    pub const NODE_IP: &str = "MINIRAY_NODE_IP";
    /// PEM certificate chain of this process (mutual TLS; all three `TLS_*` or none).
    pub const TLS_CERT: &str = "MINIRAY_TLS_CERT";
    /// PEM private key of [`TLS_CERT`].
    pub const TLS_KEY: &str = "MINIRAY_TLS_KEY";
    /// PEM certificate of the cluster's CA: peers must present a certificate it signed.
    pub const TLS_CA: &str = "MINIRAY_TLS_CA";
    /// The provider's name for this machine, set by the autoscaler's node provider for the
    /// raylet it launches (`miniray start` passes it on); reported on registration.
    pub const CLOUD_INSTANCE_ID: &str = "MINIRAY_CLOUD_INSTANCE_ID";
    /// The autoscaler node type the machine was launched as; reported like
    /// [`CLOUD_INSTANCE_ID`].
    pub const NODE_TYPE: &str = "MINIRAY_NODE_TYPE";
    /// How often a driver or worker reports its task events, in milliseconds (default
    /// 1000); `0` turns task events off in that process. Workers get it from their raylet's
    /// environment, or from their job's (a driver passes its own on).
    pub const TASK_EVENTS_REPORT_INTERVAL_MS: &str = "MINIRAY_TASK_EVENTS_REPORT_INTERVAL_MS";
    /// The port a driver serves its Prometheus `/metrics` on, on its node IP (`0`: any
    /// free one); unset: it serves none. Read by `init`, not passed on to workers.
    pub const METRICS_PORT: &str = "MINIRAY_METRICS_PORT";
}

/// Objects below this size travel inline and live in the owner's process.
pub const DEFAULT_INLINE_THRESHOLD: usize = 100 * 1024;

/// How often raylets heartbeat to the GCS.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);

/// A node silent for this long is marked dead.
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(10);

/// Chunk size for node-to-node object transfer and executable upload.
pub const TRANSFER_CHUNK_SIZE: usize = 4 << 20;

/// Largest gRPC message any miniray server accepts or sends.
pub const MAX_MESSAGE_SIZE: usize = 64 << 20;

/// Root folder for session files (`MINIRAY_TMPDIR`, default `/tmp/miniray`).
pub fn tmp_root() -> PathBuf {
    std::env::var_os(env::TMPDIR)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/miniray"))
}

/// Default plasma capacity for a segment in [`crate::shm::plasma_dir`]: 30% of physical
/// memory, at most 8 GiB (the segment is sparse, so an unused store costs nothing), capped
/// to what fits in that folder (see [`crate::shm::default_object_store_memory`]).
pub fn default_object_store_memory() -> u64 {
    crate::shm::default_object_store_memory(&crate::shm::plasma_dir())
        .unwrap_or_else(|_| memory_based_object_store_memory())
}

/// 30% of physical memory, at most 8 GiB, whatever the shared-memory folder holds.
pub fn memory_based_object_store_memory() -> u64 {
    let total = physical_memory_bytes().unwrap_or(4 << 30);
    (total / 10 * 3).min(8 << 30)
}

/// Logical CPUs of this machine.
pub fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn physical_memory_bytes() -> Option<u64> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if pages <= 0 || page_size <= 0 {
        return None;
    }
    Some(pages as u64 * page_size as u64)
}

/// Where `start --head` records the token of the cluster whose GCS listens at `gcs_address`,
/// so that drivers and `start --address` on this machine find it without `MINIRAY_TOKEN`.
pub fn token_file(gcs_address: &str) -> PathBuf {
    let name: String = gcs_address
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    tmp_root().join("clusters").join(format!("{name}.token"))
}

/// Where `start --head` records the cluster token for its dashboard at `address`, so that
/// `miniray job --address http://<address>` on this machine finds it. Not a [`token_file`]:
/// those name clusters (`miniray status` lists them).
pub fn dashboard_token_file(address: &str) -> PathBuf {
    token_file(address).with_extension("dashboard-token")
}

/// The cluster token for `gcs_address`: `MINIRAY_TOKEN`, else the token file.
pub fn find_token(gcs_address: &str) -> Option<String> {
    if let Ok(t) = std::env::var(env::TOKEN)
        && !t.is_empty()
    {
        return Some(t);
    }
    std::fs::read_to_string(token_file(gcs_address))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}
