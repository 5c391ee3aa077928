//! Daemons started from a miniray executable: those of a local cluster
//! ([`super::local_cluster`]: a driver's private one, `init()` with no address), and those
//! `miniray start` launches.
//!
//! Any miniray executable can act as a GCS or a raylet: started with `MINIRAY_ROLE=gcs` or
//! `raylet` and a JSON [`DaemonSpec`] in `MINIRAY_DAEMON_ARGS`, `init()` runs the daemon
//! instead of returning. The daemon prints `MINIRAY_READY <address>` on stdout once it
//! serves, and nothing else on stdout after that.
//!
//! Invariant: a daemon started with `MINIRAY_EXIT_WITH_PARENT=1` stops (gracefully: workers
//! killed, plasma segment removed) as soon as its parent process is gone, so a driver that
//! dies does not leave its private cluster behind.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use miniray_common::config::env;
use miniray_common::tls::TlsFiles;
use miniray_common::{NodeId, Resources};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::error::{Error, Result};

pub use miniray_gcs::{
    DEFAULT_MAX_DESTROYED_ACTORS, DEFAULT_MAX_TASK_EVENTS, DEFAULT_UNUSED_EXECUTABLE_TTL,
};
pub use miniray_raylet::executable_cache::DEFAULT_UNUSED_BUDGET as DEFAULT_EXECUTABLE_CACHE_BYTES;

const READY_PREFIX: &str = "MINIRAY_READY ";
const EXIT_WITH_PARENT: &str = "MINIRAY_EXIT_WITH_PARENT";
/// How long a daemon may take to start serving.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a daemon may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What a daemon process runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum DaemonSpec {
    Gcs(GcsSpec),
    Raylet(RayletSpec),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GcsSpec {
    pub bind: SocketAddr,
    pub token: String,
    pub session_name: String,
    pub redis_address: Option<String>,
    pub node_timeout_ms: u64,
    /// Dead actors the GCS keeps (default [`miniray_gcs::DEFAULT_MAX_DESTROYED_ACTORS`]).
    #[serde(default)]
    pub max_destroyed_actors: Option<usize>,
    /// Task-event entries (about two per task) the GCS keeps
    /// (default [`miniray_gcs::DEFAULT_MAX_TASK_EVENTS`]).
    #[serde(default)]
    pub max_task_events: Option<usize>,
    /// Milliseconds the executable of the last finished job stays stored when no running
    /// job uses it (default [`miniray_gcs::DEFAULT_UNUSED_EXECUTABLE_TTL`]; 0: not kept).
    #[serde(default)]
    pub unused_executable_ttl_ms: Option<u64>,
    /// Mutual TLS for the daemon's server and its calls (`None`: plaintext).
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Port of the Prometheus endpoint (0: any free one); `None`: no endpoint.
    #[serde(default)]
    pub metrics_port: Option<u16>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RayletSpec {
    pub gcs_address: String,
    pub token: String,
    /// The node IP: the raylet listens on it, and it and its workers advertise it. An
    /// unspecified address (`0.0.0.0`, `::`) listens on every interface and advertises the
    /// address of the interface that routes to the GCS.
    pub bind_host: String,
    pub port: u16,
    pub node_id: NodeId,
    pub resources: Resources,
    pub object_store_memory: u64,
    pub prefault_object_store: bool,
    pub is_head: bool,
    pub session_dir: PathBuf,
    /// Folder of the plasma segment and reply journals; `None` for `MINIRAY_PLASMA_DIR` or
    /// `/dev/shm`.
    #[serde(default)]
    pub plasma_dir: Option<PathBuf>,
    /// Mutual TLS for the raylet, its calls and its workers (`None`: plaintext).
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// The provider's name for the machine (`MINIRAY_CLOUD_INSTANCE_ID`) and the autoscaler
    /// node type it was launched as (`MINIRAY_NODE_TYPE`); `None` for a node started by hand.
    #[serde(default)]
    pub cloud_instance_id: Option<String>,
    #[serde(default)]
    pub node_type: Option<String>,
    /// CPUs given explicitly, 0 included (a head that runs no tasks, an autoscaler node
    /// type without CPUs); `None`: the `CPU` of `resources`, else the core count.
    #[serde(default)]
    pub num_cpus: Option<f64>,
    /// Port of the Prometheus endpoint on the node IP (0: any free one); `None`: none.
    #[serde(default)]
    pub metrics_port: Option<u16>,
    /// Bytes of unused job executables the node keeps cached; `None`: the default.
    #[serde(default)]
    pub executable_cache_bytes: Option<u64>,
}

impl RayletSpec {
    /// The node's plasma segment; its reply journals are the files named after it plus
    /// `-journal-…`. A raylet removes them when it stops; one that was killed leaves them.
    pub fn segment_path(&self) -> PathBuf {
        self.plasma_dir
            .clone()
            .unwrap_or_else(miniray_common::shm::plasma_dir)
            .join(miniray_raylet::segment_name(
                &self.session_dir,
                self.node_id,
            ))
    }
}

impl DaemonSpec {
    fn role(&self) -> &'static str {
        match self {
            DaemonSpec::Gcs(_) => "gcs",
            DaemonSpec::Raylet(_) => "raylet",
        }
    }

    fn tls(&self) -> Option<&TlsFiles> {
        match self {
            DaemonSpec::Gcs(s) => s.tls.as_ref(),
            DaemonSpec::Raylet(s) => s.tls.as_ref(),
        }
    }
}

/// A daemon process that announced its address.
pub struct SpawnedDaemon {
    pub child: Child,
    pub address: String,
}

/// Starts `exe` as the daemon `spec` and waits until it serves.
///
/// With `attached`, the daemon exits when this process does; otherwise it runs in its own
/// process group and outlives its starter (`miniray start`).
pub fn spawn_daemon(
    exe: &Path,
    spec: &DaemonSpec,
    log_file: &Path,
    attached: bool,
) -> Result<SpawnedDaemon> {
    spawn_daemon_via(&[], exe, spec, log_file, attached)
}

/// Like [`spawn_daemon`], with `exe` run through `wrapper` (a command and its arguments that
/// end by exec'ing the rest of the command line, such as `ip netns exec NS`), so the child's
/// pid is still the daemon's. An empty `wrapper` runs `exe` directly.
pub fn spawn_daemon_via(
    wrapper: &[String],
    exe: &Path,
    spec: &DaemonSpec,
    log_file: &Path,
    attached: bool,
) -> Result<SpawnedDaemon> {
    use std::os::unix::process::CommandExt;

    let json = serde_json::to_string(spec)
        .map_err(|e| Error::Internal(format!("cannot encode daemon spec: {e}")))?;
    if let Some(dir) = log_file.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Startup(format!("cannot create {}: {e}", dir.display())))?;
    }
    let log = std::fs::File::create(log_file)
        .map_err(|e| Error::Startup(format!("cannot create {}: {e}", log_file.display())))?;
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(exe);
            cmd
        }
        None => Command::new(exe),
    };
    cmd.env(env::ROLE, spec.role())
        .env(env::DAEMON_ARGS, json)
        .env(EXIT_WITH_PARENT, if attached { "1" } else { "0" })
        .env_remove(env::ADDRESS)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    if !attached {
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().map_err(|e| {
        let mut line = wrapper.join(" ");
        line.push_str(if line.is_empty() { "" } else { " " });
        Error::Startup(format!("cannot start {line}{}: {e}", exe.display()))
    })?;
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        return Err(Error::Internal("daemon stdout was not captured".into()));
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix(READY_PREFIX) {
                let _ = tx.send(addr.trim().to_string());
                break;
            }
        }
    });
    match rx.recv_timeout(STARTUP_TIMEOUT) {
        Ok(address) => Ok(SpawnedDaemon { child, address }),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(Error::Startup(format!(
                "the {} did not start; see {}",
                spec.role(),
                log_file.display()
            )))
        }
    }
}

/// Stops a daemon: SIGTERM, then SIGKILL if it has not exited within `STOP_TIMEOUT`.
pub fn stop_daemon(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a pid we spawned and have not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    warn!(pid = child.id(), "daemon did not stop in time; killing it");
    let _ = child.kill();
    let _ = child.wait();
}

/// Entry point of a daemon role (called by `init()` when `MINIRAY_ROLE` names one).
pub fn run_daemon_from_env() -> ! {
    miniray_common::logging::init("info");
    let spec: DaemonSpec = match std::env::var(env::DAEMON_ARGS)
        .map_err(|e| e.to_string())
        .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
    {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("miniray daemon: bad {}: {e}", env::DAEMON_ARGS);
            std::process::exit(2);
        }
    };
    // Before any server or channel exists: they all take the process-wide setting.
    let tls = spec.tls().map(TlsFiles::load).transpose();
    if let Err(e) = tls.and_then(miniray_common::tls::install) {
        eprintln!("miniray {}: cannot start: {e}", spec.role());
        std::process::exit(1);
    }
    let exit_with_parent = std::env::var(EXIT_WITH_PARENT).is_ok_and(|v| v == "1");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("miniray daemon: cannot start a runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(run_daemon(spec, exit_with_parent));
    runtime.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}

fn announce(address: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{READY_PREFIX}{address}");
    let _ = out.flush();
}

/// Resolves when the daemon should stop: SIGTERM, SIGINT, or (if asked) parent exit.
async fn stop_requested(exit_with_parent: bool) -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let parent = std::os::unix::process::parent_id();
    let parent_gone = async move {
        if !exit_with_parent {
            return std::future::pending::<()>().await;
        }
        miniray_common::parent::exited(parent).await;
    };
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            parent_gone.await;
            return "parent exited";
        }
    };
    tokio::select! {
        _ = term.recv() => "sigterm",
        _ = int.recv() => "sigint",
        _ = parent_gone => "parent exited",
    }
}

async fn run_daemon(spec: DaemonSpec, exit_with_parent: bool) -> i32 {
    match spec {
        DaemonSpec::Gcs(s) => {
            let storage = match s.redis_address {
                Some(url) => miniray_gcs::StorageConfig::Redis { url },
                None => miniray_gcs::StorageConfig::Memory,
            };
            let cfg = miniray_gcs::GcsConfig {
                bind: s.bind,
                token: s.token,
                storage,
                node_timeout: Duration::from_millis(s.node_timeout_ms),
                session_name: s.session_name,
                max_destroyed_actors: s
                    .max_destroyed_actors
                    .unwrap_or(miniray_gcs::DEFAULT_MAX_DESTROYED_ACTORS),
                metrics_port: s.metrics_port,
                max_task_events: s
                    .max_task_events
                    .unwrap_or(miniray_gcs::DEFAULT_MAX_TASK_EVENTS),
                unused_executable_ttl: s.unused_executable_ttl_ms.map_or(
                    miniray_gcs::DEFAULT_UNUSED_EXECUTABLE_TTL,
                    Duration::from_millis,
                ),
            };
            match miniray_gcs::GcsServer::start(cfg).await {
                Ok(h) => {
                    let trigger = h.shutdown_trigger();
                    let address = h.address();
                    serve(
                        "gcs",
                        address,
                        move || trigger.shutdown(),
                        h.wait(),
                        exit_with_parent,
                    )
                    .await
                }
                Err(e) => exit_code("gcs", Err(format!("cannot start: {e}"))),
            }
        }
        DaemonSpec::Raylet(s) => {
            let mut cfg = miniray_raylet::RayletConfig::new(s.gcs_address, s.token, s.session_dir);
            cfg.bind_host = s.bind_host;
            cfg.port = s.port;
            cfg.node_id = s.node_id;
            cfg.resources = s.resources;
            cfg.object_store_memory = s.object_store_memory;
            cfg.prefault_object_store = s.prefault_object_store;
            cfg.is_head = s.is_head;
            if let Some(dir) = s.plasma_dir {
                cfg.plasma_dir = dir;
            }
            cfg.cloud_instance_id = s.cloud_instance_id;
            cfg.node_type = s.node_type;
            cfg.num_cpus = s.num_cpus;
            cfg.metrics_port = s.metrics_port;
            if let Some(bytes) = s.executable_cache_bytes {
                cfg.executable_cache_bytes = bytes;
            }
            match miniray_raylet::Raylet::start(cfg).await {
                Ok(h) => {
                    let trigger = h.shutdown_trigger();
                    let address = h.address();
                    serve(
                        "raylet",
                        address,
                        move || trigger.shutdown(),
                        h.wait(),
                        exit_with_parent,
                    )
                    .await
                }
                Err(e) => exit_code("raylet", Err(format!("cannot start: {e}"))),
            }
        }
    }
}

/// Announces a started daemon, then runs it until it stops by itself or is asked to stop
/// (signal, parent gone), in which case it is stopped gracefully and waited for.
async fn serve<E: std::fmt::Display>(
    role: &str,
    address: SocketAddr,
    stop: impl FnOnce(),
    wait: impl std::future::Future<Output = std::result::Result<(), E>>,
    exit_with_parent: bool,
) -> i32 {
    announce(&address.to_string());
    let mut wait = Box::pin(wait);
    tokio::select! {
        r = &mut wait => return exit_code(role, r.map_err(|e| e.to_string())),
        why = stop_requested(exit_with_parent) => {
            info!(role, reason = why, "daemon stopping");
            stop();
        }
    }
    exit_code(role, wait.await.map_err(|e| e.to_string()))
}

fn exit_code(what: &str, r: std::result::Result<(), String>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("miniray {what}: {e}");
            1
        }
    }
}
