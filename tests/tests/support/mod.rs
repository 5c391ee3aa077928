//! The integration-test sandbox: a whole cluster of real processes on loopback (a GCS and
//! raylets, each the test driver executable in a daemon role), drivers run as real
//! programs, failure injection (SIGKILL a node), and waiting on predicates with deadlines.
//!
//! With [`Options::hosts`] the cluster spreads over [`netns::Hosts`] instead: the GCS and
//! the head raylet on host 0, further nodes and drivers on the hosts a test names, each
//! process in its host's network namespace and bound to its host's IP.
//!
//! Every cluster cleans up after itself: daemons are stopped (or killed) and any plasma
//! segment of its session left in /dev/shm (shared by all hosts; a SIGKILLed raylet cannot
//! remove its own) is removed and reported.

#![allow(dead_code)]

pub mod netns;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use miniray::cluster::{DaemonSpec, GcsSpec, RayletSpec, spawn_daemon_via, stop_daemon};
use miniray_common::tls::TlsFiles;
use miniray_common::{NodeId, Resources};
use miniray_proto::gcs_client::GcsClient;
use miniray_proto::{GetAllJobsRequest, GetAllNodesRequest, JobInfo, NodeInfo, NodeState};

pub const DRIVER: &str = env!("CARGO_BIN_EXE_test-driver");

/// How long one driver run may take before the test fails.
pub const DRIVER_DEADLINE: Duration = Duration::from_secs(240);

/// Polls `pred` until it holds or `deadline` passes.
pub fn wait_until(what: &str, deadline: Duration, mut pred: impl FnMut() -> bool) {
    let start = Instant::now();
    while !pred() {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub struct Node {
    pub node_id: NodeId,
    pub address: String,
    /// The host it runs on (always 0 on loopback).
    pub host: usize,
    child: Option<Child>,
}

pub struct Cluster {
    pub gcs_address: String,
    pub token: String,
    pub session_dir: PathBuf,
    gcs: Option<Child>,
    pub nodes: Vec<Node>,
    redis: Option<String>,
    node_timeout: Duration,
    plasma_dir: PathBuf,
    max_destroyed_actors: Option<usize>,
    unused_executable_ttl: Option<Duration>,
    hosts: Option<Arc<netns::Hosts>>,
    tls: Option<TlsFiles>,
    daemon_env: Vec<(String, String)>,
    executable_cache_bytes: Option<u64>,
}

pub struct Options {
    pub head_cpus: f64,
    pub head_resources: Vec<(&'static str, f64)>,
    pub node_timeout: Duration,
    pub redis: Option<String>,
    pub object_store_memory: u64,
    /// Folder of the nodes' plasma segments (default `/dev/shm`).
    pub plasma_dir: Option<PathBuf>,
    /// Dead actors the GCS keeps (its default when `None`).
    pub max_destroyed_actors: Option<usize>,
    /// How long the GCS keeps the executable of the last finished job (its default when
    /// `None`).
    pub unused_executable_ttl: Option<Duration>,
    /// Hosts to spread the cluster over (the GCS and head on host 0); loopback when `None`.
    pub hosts: Option<Arc<netns::Hosts>>,
    /// The head's node IP (its raylet's `bind_host`; default `127.0.0.1`, or host 0's IP).
    pub head_bind_host: Option<String>,
    pub tls: Option<TlsFiles>,
    /// Extra environment of the GCS and raylet processes (and so of the workers).
    pub daemon_env: Vec<(String, String)>,
    /// Bytes of unused executables each raylet keeps cached (its default when `None`).
    pub executable_cache_bytes: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            head_cpus: 2.0,
            head_resources: Vec::new(),
            node_timeout: Duration::from_secs(10),
            redis: None,
            object_store_memory: 1 << 30,
            plasma_dir: None,
            max_destroyed_actors: None,
            unused_executable_ttl: None,
            hosts: None,
            head_bind_host: None,
            tls: None,
            daemon_env: Vec::new(),
            executable_cache_bytes: None,
        }
    }
}

fn exe() -> &'static Path {
    Path::new(DRIVER)
}

/// The command prefix that runs a daemon on `host` (none on loopback) with `env` added
/// (`ip netns exec` and `env` both exec their target, so the pid stays the daemon's).
fn wrapper(
    hosts: &Option<Arc<netns::Hosts>>,
    env: &[(String, String)],
    host: usize,
) -> Vec<String> {
    let mut prefix = hosts.as_ref().map(|h| h.wrapper(host)).unwrap_or_default();
    if !env.is_empty() {
        prefix.push("env".into());
        prefix.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    }
    prefix
}

fn gcs_spec(
    bind: SocketAddr,
    token: &str,
    redis: Option<String>,
    node_timeout: Duration,
    max_destroyed_actors: Option<usize>,
    unused_executable_ttl: Option<Duration>,
    tls: Option<TlsFiles>,
) -> DaemonSpec {
    DaemonSpec::Gcs(GcsSpec {
        bind,
        token: token.to_string(),
        session_name: "test".into(),
        redis_address: redis,
        node_timeout_ms: node_timeout.as_millis() as u64,
        max_destroyed_actors,
        max_task_events: None,
        unused_executable_ttl_ms: unused_executable_ttl.map(|t| t.as_millis() as u64),
        tls,
        metrics_port: None,
    })
}

impl Cluster {
    pub fn start(opts: Options) -> Cluster {
        let session_dir = miniray_common::config::tmp_root().join(format!(
            "test_{}_{}_{}",
            miniray_common::time::now_ms(),
            std::process::id(),
            NodeId::random().hex().get(..6).unwrap_or("x")
        ));
        let token = miniray_common::auth::generate_token();
        let gcs_host = opts.hosts.as_ref().map_or("127.0.0.1", |h| h.ip(0));
        let gcs = spawn_daemon_via(
            &wrapper(&opts.hosts, &opts.daemon_env, 0),
            exe(),
            &gcs_spec(
                format!("{gcs_host}:0").parse().expect("a host IP"),
                &token,
                opts.redis.clone(),
                opts.node_timeout,
                opts.max_destroyed_actors,
                opts.unused_executable_ttl,
                opts.tls.clone(),
            ),
            &session_dir.join("logs/gcs.err"),
            true,
        )
        .expect("gcs starts");
        if let Some(hosts) = &opts.hosts {
            hosts.adopt(0, gcs.child.id());
        }
        let mut cluster = Cluster {
            gcs_address: gcs.address,
            token,
            session_dir,
            gcs: Some(gcs.child),
            nodes: Vec::new(),
            redis: opts.redis,
            node_timeout: opts.node_timeout,
            plasma_dir: opts
                .plasma_dir
                .unwrap_or_else(miniray_common::shm::plasma_dir),
            max_destroyed_actors: opts.max_destroyed_actors,
            unused_executable_ttl: opts.unused_executable_ttl,
            hosts: opts.hosts,
            tls: opts.tls,
            daemon_env: opts.daemon_env,
            executable_cache_bytes: opts.executable_cache_bytes,
        };
        cluster.start_node(
            0,
            opts.head_bind_host.as_deref(),
            opts.head_cpus,
            &opts.head_resources,
            true,
            opts.object_store_memory,
        );
        cluster
    }

    /// Starts a raylet (on host 0 when the cluster has hosts); returns its index in `nodes`.
    pub fn add_node(
        &mut self,
        cpus: f64,
        resources: &[(&str, f64)],
        is_head: bool,
        object_store_memory: u64,
    ) -> usize {
        self.start_node(0, None, cpus, resources, is_head, object_store_memory)
    }

    /// [`Cluster::add_node`] with the raylet's node IP (`bind_host`).
    pub fn add_node_on(
        &mut self,
        bind_host: &str,
        cpus: f64,
        resources: &[(&str, f64)],
        is_head: bool,
        object_store_memory: u64,
    ) -> usize {
        let bind_host = Some(bind_host);
        self.start_node(0, bind_host, cpus, resources, is_head, object_store_memory)
    }

    /// Starts a raylet on `host`, bound to its IP; returns its index in `nodes`.
    pub fn add_node_on_host(
        &mut self,
        host: usize,
        cpus: f64,
        resources: &[(&str, f64)],
        is_head: bool,
        object_store_memory: u64,
    ) -> usize {
        self.start_node(host, None, cpus, resources, is_head, object_store_memory)
    }

    /// Starts a raylet on `host`, bound to `bind_host` (default: the host's IP).
    fn start_node(
        &mut self,
        host: usize,
        bind_host: Option<&str>,
        cpus: f64,
        resources: &[(&str, f64)],
        is_head: bool,
        object_store_memory: u64,
    ) -> usize {
        let mut r = Resources::from_pairs(resources.iter().map(|(k, v)| (*k, *v)))
            .expect("valid resources");
        r.set("CPU", cpus).expect("valid cpus");
        let node_id = NodeId::random();
        let index = self.nodes.len();
        let raylet = spawn_daemon_via(
            &wrapper(&self.hosts, &self.daemon_env, host),
            exe(),
            &DaemonSpec::Raylet(RayletSpec {
                gcs_address: self.gcs_address.clone(),
                token: self.token.clone(),
                bind_host: bind_host.unwrap_or(self.host_ip(host)).into(),
                port: 0,
                node_id,
                resources: r,
                object_store_memory,
                prefault_object_store: false,
                is_head,
                session_dir: self.session_dir.clone(),
                plasma_dir: Some(self.plasma_dir.clone()),
                tls: self.tls.clone(),
                cloud_instance_id: None,
                node_type: None,
                // A zero amount leaves `CPU` out of the resources, which would then mean
                // the core count: say it explicitly (a head that runs no tasks).
                num_cpus: (cpus == 0.0).then_some(0.0),
                metrics_port: None,
                executable_cache_bytes: self.executable_cache_bytes,
            }),
            &self.session_dir.join(format!("logs/raylet-{index}.err")),
            true,
        )
        .expect("raylet starts");
        if let Some(hosts) = &self.hosts {
            hosts.adopt(host, raylet.child.id());
        }
        self.nodes.push(Node {
            node_id,
            address: raylet.address,
            host,
            child: Some(raylet.child),
        });
        index
    }

    /// The hosts the cluster spreads over, if any.
    pub fn hosts(&self) -> Option<&netns::Hosts> {
        self.hosts.as_deref()
    }

    /// The IP address of `host` (loopback without hosts).
    pub fn host_ip(&self, host: usize) -> &str {
        self.hosts.as_ref().map_or("127.0.0.1", |h| h.ip(host))
    }

    /// Failure injection: SIGKILL a node's raylet (its workers follow it).
    pub fn kill_node(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether a node's raylet process is still running (false once it exited or was killed).
    pub fn node_running(&mut self, index: usize) -> bool {
        self.nodes[index]
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Failure injection: SIGKILL the GCS.
    pub fn kill_gcs(&mut self) {
        if let Some(mut child) = self.gcs.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a new GCS on the address of the old one (kill it first), with the same token,
    /// session and storage: a GCS restart as raylets and drivers see it.
    pub fn restart_gcs(&mut self) {
        assert!(self.gcs.is_none(), "kill the gcs before restarting it");
        let bind = self
            .gcs_address
            .parse()
            .expect("the gcs address is HOST:PORT");
        let gcs = spawn_daemon_via(
            &wrapper(&self.hosts, &self.daemon_env, 0),
            exe(),
            &gcs_spec(
                bind,
                &self.token,
                self.redis.clone(),
                self.node_timeout,
                self.max_destroyed_actors,
                self.unused_executable_ttl,
                self.tls.clone(),
            ),
            // A new log, so the old GCS's last words are kept.
            &self
                .session_dir
                .join(format!("logs/gcs-{}.err", miniray_common::time::now_ms())),
            true,
        )
        .expect("gcs restarts");
        if let Some(hosts) = &self.hosts {
            hosts.adopt(0, gcs.child.id());
        }
        self.gcs = Some(gcs.child);
        assert_eq!(gcs.address, self.gcs_address, "the gcs moved");
    }

    pub fn nodes_info(&self) -> Vec<NodeInfo> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let Ok(channel) = miniray_common::auth::connect(&self.gcs_address, &self.token).await
            else {
                return Vec::new();
            };
            let mut gcs = GcsClient::new(channel);
            match gcs.get_all_nodes(GetAllNodesRequest {}).await {
                Ok(r) => r.into_inner().nodes,
                Err(_) => Vec::new(),
            }
        })
    }

    pub fn node_state(&self, node: NodeId) -> Option<NodeState> {
        self.nodes_info()
            .into_iter()
            .find(|n| {
                n.address
                    .as_ref()
                    .is_some_and(|a| a.node_id == node.as_bytes())
            })
            .and_then(|n| NodeState::try_from(n.state).ok())
    }

    /// Runs the test driver with `args` against this cluster and waits (with a deadline).
    pub fn run_driver(&self, args: &[&str]) -> DriverRun {
        DriverRun::wait(self.spawn_driver(args), DRIVER_DEADLINE)
    }

    /// Starts the test driver with `args` against this cluster; `DriverRun::wait` ends it.
    pub fn spawn_driver(&self, args: &[&str]) -> Child {
        self.spawn_driver_from(exe(), args)
    }

    /// Like [`Cluster::spawn_driver`], from another copy of the test driver executable.
    pub fn spawn_driver_from(&self, exe: &Path, args: &[&str]) -> Child {
        self.driver_command(exe, args)
            .spawn()
            .expect("driver starts")
    }

    /// The command that runs a driver against this cluster, to add to before spawning.
    pub fn driver_command(&self, exe: &Path, args: &[&str]) -> Command {
        self.with_driver_env(Command::new(exe), args)
    }

    /// Starts the test driver with `args` on `host` (its network namespace, with
    /// `MINIRAY_NODE_IP` its IP); `DriverRun::wait` ends it.
    pub fn spawn_driver_on(&self, host: usize, args: &[&str]) -> Child {
        let hosts = self.hosts.as_ref().expect("a cluster with hosts");
        let child = self
            .with_driver_env(hosts.command(host, exe()), args)
            .env("MINIRAY_NODE_IP", hosts.ip(host))
            .spawn()
            .expect("driver starts");
        hosts.adopt(host, child.id());
        child
    }

    fn with_driver_env(&self, mut command: Command, args: &[&str]) -> Command {
        for (name, path) in TlsFiles::env(self.tls.as_ref()) {
            match path {
                Some(path) => command.env(name, path),
                None => command.env_remove(name),
            };
        }
        command
            .args(args)
            .env_remove("MINIRAY_NODE_IP")
            .env("MINIRAY_ADDRESS", &self.gcs_address)
            .env("MINIRAY_TOKEN", &self.token)
            .env_remove("MINIRAY_ROLE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Process id of the GCS, while it runs.
    pub fn gcs_pid(&self) -> Option<u32> {
        self.gcs.as_ref().map(Child::id)
    }

    /// Process id of a node's raylet, while it runs.
    pub fn node_pid(&self, index: usize) -> Option<u32> {
        self.nodes.get(index)?.child.as_ref().map(Child::id)
    }

    /// A GCS client of this cluster on a runtime of its own, for tests without one.
    pub fn gcs_call<T>(
        &self,
        call: impl AsyncFnOnce(
            &mut GcsClient<miniray_common::auth::AuthedChannel>,
        ) -> Result<T, tonic::Status>,
    ) -> Result<T, tonic::Status> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let channel = miniray_common::auth::connect(&self.gcs_address, &self.token)
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            call(&mut GcsClient::new(channel)).await
        })
    }

    /// The job table, as a client holding the cluster token sees it.
    pub fn jobs(&self) -> Result<Vec<JobInfo>, String> {
        self.gcs_call(async |gcs| {
            let reply = gcs.get_all_jobs(GetAllJobsRequest {}).await?;
            Ok(reply.into_inner().jobs)
        })
        .map_err(|s| s.to_string())
    }

    /// Plasma segments of this cluster's session still in its plasma folder.
    pub fn leftover_segments(&self) -> Vec<String> {
        let prefix = format!(
            "miniray-{}",
            self.session_dir
                .file_name()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default()
        );
        std::fs::read_dir(&self.plasma_dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the GCS and every node not killed on purpose are still running.
    pub fn all_alive(&mut self) -> bool {
        let running = |c: &mut Child| matches!(c.try_wait(), Ok(None));
        self.gcs.as_mut().is_some_and(running)
            && self
                .nodes
                .iter_mut()
                .all(|n| n.child.as_mut().is_none_or(running))
    }

    /// Stops everything and returns what was left behind (segments of nodes that stopped
    /// gracefully must be gone; those of SIGKILLed nodes are removed here).
    pub fn stop(&mut self) -> Vec<String> {
        // A cut host's daemons must hear their SIGTERM and reach the GCS to stop in time.
        if let Some(hosts) = &self.hosts {
            (0..hosts.len()).for_each(|h| hosts.restore_link(h));
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                stop_daemon(&mut child);
            }
        }
        if let Some(mut gcs) = self.gcs.take() {
            stop_daemon(&mut gcs);
        }
        self.leftover_segments()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        for name in self.leftover_segments() {
            let _ = std::fs::remove_file(self.plasma_dir.join(name));
        }
    }
}

/// A finished driver run: exit status and its `key=value` output.
pub struct DriverRun {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    pub values: BTreeMap<String, Vec<String>>,
}

impl DriverRun {
    pub fn wait(mut child: Child, deadline: Duration) -> DriverRun {
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if start.elapsed() > deadline => {
                    let _ = child.kill();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("waiting for the driver: {e}"),
            }
        }
        let output = child.wait_with_output().expect("driver output");
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in stdout.lines() {
            if let Some((k, v)) = line.split_once('=') {
                values.entry(k.to_string()).or_default().push(v.to_string());
            }
        }
        DriverRun {
            success: output.status.success(),
            stdout,
            stderr: String::from_utf8_lossy(&output.stderr).to_string(),
            values,
        }
    }

    pub fn get(&self, key: &str) -> &str {
        self.values
            .get(key)
            .and_then(|v| v.first())
            .map(String::as_str)
            .unwrap_or_else(|| {
                panic!(
                    "driver printed no {key}\n--- stdout\n{}\n--- stderr\n{}",
                    self.stdout, self.stderr
                )
            })
    }

    pub fn all(&self, key: &str) -> Vec<String> {
        self.values.get(key).cloned().unwrap_or_default()
    }

    pub fn assert_success(&self) {
        assert!(
            self.success,
            "driver failed\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
    }
}

/// Processes whose parent is `parent` (from /proc; a process that exits meanwhile is skipped).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("PPid:"))
                    .is_some_and(|v| v.trim().parse() == Ok(parent))
            })
        })
        .collect()
}

/// Whether `pid` still runs (a zombie, which has exited but is not yet reaped, does not).
pub fn process_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("State:"))
            .is_some_and(|state| !state.trim_start().starts_with('Z'))
    })
}
