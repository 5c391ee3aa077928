//! The autoscaler end to end, with real processes: `miniray start --head
//! --autoscaling-config` (GCS, head raylet, autoscaler daemon), worker nodes launched by the
//! local provider (`miniray start --block` processes), and a driver that is this very
//! executable (`harness = false`: `main` is ours, so the same binary is the test, the
//! driver, and the driver's workers).
//!
//! Every test lives under its own `MINIRAY_TMPDIR` (daemon records, token files, the
//! provider's instance records), and its `Cluster` guard runs `miniray stop` on drop and
//! kills any node process still recorded, also when an assertion fails.

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::free_port;

use miniray_proto::gcs_client::GcsClient;
use miniray_proto::{
    AutoscalingState, ClusterResourceState, GetAutoscalingStateRequest,
    GetClusterResourceStateRequest, NodeState,
};

const MINIRAY: &str = env!("CARGO_BIN_EXE_miniray");
/// Bound on one `miniray` command (start waits up to 60 s for a daemon).
const COMMAND_DEADLINE: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------
// The driver side: functions and actors the driver runs on the cluster.

#[miniray::remote]
fn sleep_then_node(ms: u64) -> String {
    std::thread::sleep(Duration::from_millis(ms));
    miniray::node_id().map(|n| n.hex()).unwrap_or_default()
}

#[miniray::remote]
fn needs_a_gpu() -> u64 {
    1
}

#[miniray::actor]
pub struct Holder {
    n: u64,
}

#[miniray::actor]
impl Holder {
    pub fn new(start: u64) -> Self {
        Holder { n: start }
    }

    pub fn node(&mut self) -> String {
        self.n += 1;
        miniray::node_id().map(|n| n.hex()).unwrap_or_default()
    }
}

/// `driver SCENARIO ARGS…`: runs against `MINIRAY_ADDRESS`, prints `key=value` lines.
fn driver(args: &[String]) -> Result<(), String> {
    miniray::init().map_err(|e| format!("init: {e}"))?;
    let result = scenario(args);
    miniray::shutdown();
    result
}

fn out(key: &str, value: impl std::fmt::Display) {
    println!("{key}={value}");
    let _ = std::io::stdout().flush();
}

fn scenario(args: &[String]) -> Result<(), String> {
    let arg = |i: usize| args.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    match args.first().map(String::as_str) {
        Some("tasks") => {
            let (n, ms) = (arg(1), arg(2));
            let refs: Vec<_> = (0..n)
                .map(|_| sleep_then_node::remote(ms))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("submit: {e}"))?;
            let nodes = miniray::get_all(&refs).map_err(|e| format!("get: {e}"))?;
            out("done", nodes.len());
            out("nodes", nodes.iter().collect::<BTreeSet<_>>().len());
            Ok(())
        }
        Some("gpu") => {
            let start = Instant::now();
            let r = needs_a_gpu::options()
                .resource("GPU", 1.0)
                .remote()
                .and_then(|r| miniray::get(&r));
            match r {
                Ok(v) => out("result", format!("ok:{v}")),
                Err(e) => out("error", e.to_string().replace('\n', " ")),
            }
            out("elapsed_ms", start.elapsed().as_millis());
            Ok(())
        }
        Some("actor") => {
            // Creates an actor holding one CPU, reports its node, and kills it when stdin
            // says so (or closes).
            let h = Holder::options()
                .num_cpus(1.0)
                .remote(0)
                .map_err(|e| format!("create: {e}"))?;
            let node = h
                .node()
                .and_then(|r| miniray::get(&r))
                .map_err(|e| format!("call: {e}"))?;
            out("actor_node", node);
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            miniray::kill(&h).map_err(|e| format!("kill: {e}"))?;
            out("killed", 1);
            // Stay connected until told to go, so the kill is not confused with job end.
            line.clear();
            let _ = std::io::stdin().read_line(&mut line);
            Ok(())
        }
        Some("request") => {
            // A floor of N one-CPU bundles (0: clear it); it outlives this driver.
            let bundles = vec![std::collections::BTreeMap::from([("CPU", 1.0)]); arg(1) as usize];
            miniray::autoscaler::request_resources(&bundles)
                .map_err(|e| format!("request_resources: {e}"))?;
            out("requested", bundles.len());
            Ok(())
        }
        other => Err(format!("unknown scenario {other:?}")),
    }
}

// ---------------------------------------------------------------------------------------
// The test side.

/// A cluster started with `miniray start --head --autoscaling-config`, in a private temp
/// root. Stopped on drop.
struct Cluster {
    root: PathBuf,
    name: String,
    gcs_address: String,
    port: u16,
    token: String,
    head_args: Vec<String>,
    /// Whether the autoscaler pauses each drain on [`Cluster::drain_pause_hook`].
    pause_drains: bool,
    /// Daemons the test started itself: stopped by `miniray stop` (they are recorded),
    /// reaped on drop.
    children: std::cell::RefCell<Vec<Child>>,
    runtime: tokio::runtime::Runtime,
}

impl Cluster {
    /// `types` is the `available_node_types` body after the head type (YAML, indented by 2).
    fn start(test: &str, settings: &str, types: &str) -> Cluster {
        Cluster::start_with(test, settings, types, &[])
    }

    /// Like [`Cluster::start`], with more `miniray start --head` arguments (`--redis-address`).
    fn start_with(test: &str, settings: &str, types: &str, head_args: &[&str]) -> Cluster {
        Cluster::start_full(test, settings, types, head_args, false)
    }

    fn start_full(
        test: &str,
        settings: &str,
        types: &str,
        head_args: &[&str],
        pause_drains: bool,
    ) -> Cluster {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("{test}-{}-{nanos}", std::process::id());
        let root = std::env::temp_dir().join(format!("miniray-as-{name}"));
        std::fs::create_dir_all(&root).expect("create the temp root");
        let config = format!(
            "cluster_name: {name}\n{settings}\nprovider: {{type: local}}\nhead_node_type: head\n\
             available_node_types:\n  head: {{resources: {{CPU: 0}}}}\n{types}\n"
        );
        std::fs::write(root.join("cluster.yaml"), config).expect("write the config");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let port = free_port();
        let cluster = Cluster {
            gcs_address: format!("127.0.0.1:{port}"),
            port,
            root,
            name,
            token: miniray_common::auth::generate_token(),
            head_args: head_args.iter().map(|a| a.to_string()).collect(),
            pause_drains,
            children: std::cell::RefCell::new(Vec::new()),
            runtime,
        };
        cluster.start_head();
        cluster
    }

    /// A cluster whose head is `miniray start --head --block`, a child of this test; the
    /// head is up (its autoscaler reported) when this returns.
    fn start_blocking(test: &str, settings: &str, types: &str) -> (Cluster, Child) {
        let cluster = Cluster::start_full(test, settings, types, &[], false);
        // Stopped at once: only the folder, config and port are reused for the blocking head.
        let (ok, out) = cluster.miniray(&["stop"]);
        assert!(ok, "{out}");
        let port = cluster.port.to_string();
        let config = cluster.root.join("cluster.yaml");
        let mut cmd = cluster.command(Path::new(MINIRAY));
        cmd.args([
            "start",
            "--head",
            "--port",
            &port,
            "--object-store-memory",
            "100000000",
        ])
        .arg("--autoscaling-config")
        .arg(&config)
        .arg("--block")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = cmd.spawn().expect("start a blocking head");
        poll(
            "the autoscaler's first report",
            Duration::from_secs(60),
            || cluster.autoscaling_state().map(|_| ()),
        );
        (cluster, child)
    }

    /// `miniray start --head` with the autoscaler; returns once the autoscaler has reported
    /// (so drivers see its node types).
    fn start_head(&self) {
        let port = self.port.to_string();
        let config = self.root.join("cluster.yaml").to_string_lossy().to_string();
        let mut args = vec![
            "start",
            "--head",
            "--port",
            &port,
            "--object-store-memory",
            "100000000",
            "--autoscaling-config",
            &config,
        ];
        args.extend(self.head_args.iter().map(String::as_str));
        let run = self.miniray(&args);
        assert!(run.0, "miniray start failed:\n{}", run.1);
        poll(
            "the autoscaler's first report",
            Duration::from_secs(60),
            || self.autoscaling_state().map(|_| ()),
        );
    }

    /// While this file exists, the local provider's list fails (the autoscaler's test hook).
    fn list_fails_hook(&self) -> PathBuf {
        self.root.join("provider-list-fails")
    }

    /// With `pause_drains`, the autoscaler creates this file before each `DrainNode` and
    /// sends it only once the file is gone (its test hook).
    fn drain_pause_hook(&self) -> PathBuf {
        self.root.join("drain-pause")
    }

    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        if self.pause_drains {
            cmd.env("MINIRAY_TEST_DRAIN_PAUSE_FILE", self.drain_pause_hook());
        }
        cmd.env("MINIRAY_TMPDIR", &self.root)
            .env("MINIRAY_DASHBOARD_PORT", "0")
            .env(
                "MINIRAY_TEST_PROVIDER_LIST_FAILS_WHILE",
                self.list_fails_hook(),
            )
            .env("MINIRAY_TOKEN", &self.token)
            .env_remove("MINIRAY_ADDRESS")
            .env_remove("MINIRAY_ROLE")
            .env_remove("MINIRAY_PLASMA_DIR")
            .env_remove("MINIRAY_TLS_CERT")
            .env_remove("MINIRAY_TLS_KEY")
            .env_remove("MINIRAY_TLS_CA");
        cmd
    }

    /// Runs `miniray args` to the end: (success, output).
    fn miniray(&self, args: &[&str]) -> (bool, String) {
        let mut cmd = self.command(Path::new(MINIRAY));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd.spawn().expect("run miniray");
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if start.elapsed() > COMMAND_DEADLINE {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("collect output");
        let text = format!(
            "miniray {}\n--- stdout\n{}\n--- stderr\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Starts this executable as a driver of the cluster.
    fn driver(&self, args: &[&str]) -> Driver {
        let exe = std::env::current_exe().expect("this test's executable");
        let mut cmd = self.command(&exe);
        cmd.arg("driver")
            .args(args)
            .env("MINIRAY_ADDRESS", &self.gcs_address)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(self.root.join(format!("driver-{}.err", args.join("-"))))
                    .expect("driver log"),
            ));
        let mut child = cmd.spawn().expect("start the driver");
        let lines = support::harness::stdout_lines(&mut child);
        Driver { child, lines }
    }

    async fn gcs(&self) -> Result<GcsClient<miniray_common::auth::AuthedChannel>, String> {
        let channel = miniray_common::auth::connect(&self.gcs_address, &self.token)
            .await
            .map_err(|e| e.to_string())?;
        Ok(GcsClient::new(channel))
    }

    fn resource_state(&self) -> Result<ClusterResourceState, String> {
        self.runtime.block_on(async {
            let mut gcs = self.gcs().await?;
            gcs.get_cluster_resource_state(GetClusterResourceStateRequest {})
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .state
                .ok_or_else(|| "no state".to_string())
        })
    }

    fn autoscaling_state(&self) -> Result<AutoscalingState, String> {
        self.runtime.block_on(async {
            let mut gcs = self.gcs().await?;
            gcs.get_autoscaling_state(GetAutoscalingStateRequest {})
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .state
                .ok_or_else(|| "no autoscaling state reported yet".to_string())
        })
    }

    /// Alive worker nodes (not the head) in the GCS.
    fn workers(&self) -> Result<Vec<miniray_proto::NodeInfo>, String> {
        Ok(self
            .resource_state()?
            .nodes
            .into_iter()
            .filter(|n| !n.is_head && n.state == NodeState::Alive as i32)
            .collect())
    }

    /// Node processes the local provider has recorded and that still run.
    fn node_processes(&self) -> Vec<u32> {
        let dir = self.root.join("autoscaler").join(&self.name);
        let mut pids = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let Ok(bytes) = std::fs::read(entry.path()) else {
                continue;
            };
            let Ok(rec) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                continue;
            };
            if let Some(pid) = rec["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
                && alive(pid)
            {
                pids.push(pid);
            }
        }
        pids
    }

    /// `miniray stop`; then nothing of this cluster's nodes is left in shared memory: no
    /// plasma segment or reply journal named after one of its sessions, also of nodes that
    /// were killed.
    fn stop_and_assert_no_shared_memory_left(&self) {
        let (ok, text) = self.miniray(&["stop", "--grace-period", "5"]);
        assert!(ok, "stop failed:\n{text}");
        let sessions: Vec<String> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("session_"))
            .collect();
        assert!(
            !sessions.is_empty(),
            "no session in {}",
            self.root.display()
        );
        let plasma_dir = miniray_common::shm::plasma_dir();
        let left: Vec<String> = std::fs::read_dir(&plasma_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| sessions.iter().any(|s| n.contains(s.as_str())))
            .collect();
        assert!(
            left.is_empty(),
            "left in {}: {left:?}",
            plasma_dir.display()
        );
    }

    /// Every instance the local provider ever started a process for in this test: one log
    /// each, which the node's `miniray start --block` writes to once its raylet is up. An
    /// empty log is a launch cut off before its spawn (the autoscaler killed mid-launch).
    fn launched_instances(&self) -> BTreeSet<String> {
        let mut ids = BTreeSet::new();
        for session in std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let nodes = session.path().join("logs").join("nodes");
            for log in std::fs::read_dir(nodes).into_iter().flatten().flatten() {
                let name = log.file_name().to_string_lossy().to_string();
                let written = log.metadata().is_ok_and(|m| m.len() > 0);
                if let Some(id) = name
                    .strip_prefix("node-")
                    .and_then(|n| n.strip_suffix(".log"))
                    && written
                {
                    ids.insert(id.to_string());
                }
            }
        }
        ids
    }

    /// The daemon records `miniray start` wrote.
    fn daemon_records(&self) -> Vec<serde_json::Value> {
        let mut records = Vec::new();
        for entry in std::fs::read_dir(self.root.join("daemons"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(bytes) = std::fs::read(entry.path()) else {
                continue;
            };
            if let Ok(rec) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                records.push(rec);
            }
        }
        records
    }

    /// SIGKILLs the head's daemons (the GCS, its raylet, the autoscaler, the dashboard), as a
    /// crash would.
    fn kill_head(&self) {
        let records = self.daemon_records();
        let head_session = records
            .iter()
            .find(|r| r["role"] == "gcs")
            .map(|r| r["session_dir"].clone())
            .expect("the gcs is recorded");
        let pids: Vec<u32> = records
            .iter()
            .filter(|r| r["session_dir"] == head_session)
            .filter_map(|r| r["pid"].as_u64().and_then(|p| u32::try_from(p).ok()))
            .collect();
        assert_eq!(
            pids.len(),
            4,
            "gcs, raylet, autoscaler and dashboard: {records:?}"
        );
        for pid in &pids {
            // SAFETY: kill(2) on a daemon this test's cluster started.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
        poll(
            "the head's daemons to die",
            Duration::from_secs(10),
            || match pids.iter().filter(|p| alive(**p)).count() {
                0 => Ok(()),
                n => Err(format!("{n} alive")),
            },
        );
    }

    fn autoscaler_log(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let log = entry.path().join("logs").join("autoscaler.err");
            if let Ok(t) = std::fs::read_to_string(&log) {
                text.push_str(&t);
            }
        }
        // Keep failure messages readable: the last lines matter.
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let (_, stop) = self.miniray(&["stop", "--grace-period", "5"]);
        for mut child in self.children.borrow_mut().drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Nodes the autoscaler launched are stopped through their raylets; anything left
        // (a node still starting) is killed with its process group.
        for pid in self.node_processes() {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill(2) on the process group of a node this test's cluster started.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "miniray files kept in {}\n{stop}\n--- autoscaler log (tail)\n{}",
                self.root.display(),
                self.autoscaler_log()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

struct Driver {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Driver {
    /// The value of the next `key=` line, waiting up to `deadline`.
    fn value(&mut self, key: &str, deadline: Duration) -> String {
        support::harness::next_value(&self.lines, key, deadline)
            .unwrap_or_else(|| panic!("the driver printed no {key}= within {deadline:?}"))
    }

    fn say(&mut self, line: &str) {
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = writeln!(stdin, "{line}");
            let _ = stdin.flush();
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Polls `pred` every 200 ms until it returns `Ok`; panics with `what` and the last state
/// after `deadline`.
fn poll<T>(what: &str, deadline: Duration, mut pred: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match pred() {
            Ok(v) => return v,
            Err(last) if start.elapsed() > deadline => {
                panic!("timed out after {deadline:?} waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The tests.

/// A head with no CPU and 12 one-CPU tasks of 2 s: worker nodes come (never more than
/// `max_workers`), every task finishes, and once idle the cluster is the head alone.
fn scale_up_for_tasks_then_down_when_idle() {
    let cluster = Cluster::start(
        "tasks",
        "max_workers: 3\nidle_timeout_s: 4\nnode_launch_timeout_s: 60",
        "  cpu: {resources: {CPU: 2}, min_workers: 0, max_workers: 3, \
         node_config: {args: [--object-store-memory, \"100000000\"]}}",
    );
    let demand_at = Instant::now();
    let mut driver = cluster.driver(&["tasks", "12", "2000"]);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let done = driver.value("done", Duration::from_secs(240));
        let nodes = driver.value("nodes", Duration::from_secs(5));
        let _ = done_tx.send((done, nodes));
        driver
    });
    // Throughout: never more than max_workers nodes, alive or as processes.
    let mut first_node = None;
    let mut most = 0;
    let (done, nodes) = loop {
        let workers = cluster.workers().unwrap_or_default();
        let processes = cluster.node_processes().len();
        assert!(
            workers.len() <= 3 && processes <= 3,
            "{} worker nodes and {processes} node processes: more than max_workers 3",
            workers.len()
        );
        most = most.max(workers.len());
        if first_node.is_none() && !workers.is_empty() {
            first_node = Some(demand_at.elapsed());
        }
        if let Ok(r) = done_rx.try_recv() {
            break r;
        }
        assert!(
            demand_at.elapsed() < Duration::from_secs(240),
            "the tasks did not finish in 240 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let finished_at = Instant::now();
    let _driver = waiter.join().expect("the driver thread");
    assert_eq!(done, "12");
    assert!(most >= 1, "no worker node was ever alive");
    eprintln!(
        "scale-up: first worker node alive {:?} after the tasks were submitted; {most} at most; \
         tasks ran on {nodes} node(s); all done after {:?}",
        first_node.unwrap_or_default(),
        finished_at - demand_at
    );
    let state = cluster.autoscaling_state().expect("the autoscaler reports");
    assert!(
        state.recent_decisions.iter().any(|d| d.contains("cpu")),
        "decisions: {:?}",
        state.recent_decisions
    );
    // Idle: removed after idle_timeout_s (4 s) plus drain and a few rounds.
    poll(
        "the cluster to be the head alone",
        Duration::from_secs(60),
        || {
            let workers = cluster.workers()?;
            let processes = cluster.node_processes();
            if workers.is_empty() && processes.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} worker nodes, node processes {processes:?}",
                    workers.len()
                ))
            }
        },
    );
    eprintln!(
        "scale-down: the cluster was the head alone {:?} after the last task finished (idle timeout 4 s)",
        finished_at.elapsed()
    );
    let nodes = cluster.resource_state().expect("state").nodes;
    assert_eq!(nodes.len(), 1, "only the head is left");
    assert!(nodes[0].is_head);
}

fn hex_id(n: &miniray_proto::NodeInfo) -> String {
    n.address
        .as_ref()
        .and_then(|a| miniray_common::NodeId::from_bytes(&a.node_id).ok())
        .map(|id| id.hex())
        .unwrap_or_default()
}

const ONE_CPU_TYPE: &str = "  cpu: {resources: {CPU: 1}, min_workers: 0, max_workers: 2, \
     node_config: {args: [--object-store-memory, \"100000000\"]}}";

/// A node hosting a live actor is busy however long it sits there; once the actor is
/// killed it goes after its idle timeout.
fn a_node_with_a_live_actor_stays_until_the_actor_is_killed() {
    let cluster = Cluster::start(
        "actor",
        "max_workers: 2\nidle_timeout_s: 3\nnode_launch_timeout_s: 60",
        ONE_CPU_TYPE,
    );
    let mut driver = cluster.driver(&["actor"]);
    let node = driver.value("actor_node", Duration::from_secs(120));
    let hosts = |cluster: &Cluster| -> Result<bool, String> {
        Ok(cluster.workers()?.iter().any(|n| hex_id(n) == node))
    };
    assert_eq!(
        hosts(&cluster),
        Ok(true),
        "the actor runs on a launched worker node"
    );
    // Three idle timeouts: the node stays all along.
    let until = Instant::now() + Duration::from_secs(9);
    while Instant::now() < until {
        assert_eq!(hosts(&cluster), Ok(true), "the actor's node was removed");
        std::thread::sleep(Duration::from_millis(300));
    }
    driver.say("kill");
    driver.value("killed", Duration::from_secs(30));
    let killed = Instant::now();
    poll(
        "the actor's node to be removed",
        Duration::from_secs(60),
        || match hosts(&cluster)? {
            false => Ok(()),
            true => Err("still there".into()),
        },
    );
    eprintln!(
        "actor: its node was removed {:?} after the actor was killed (idle timeout 3 s)",
        killed.elapsed()
    );
    driver.say("exit");
}

/// While the provider's list fails, idle nodes are not removed (the round knows nothing);
/// when it answers again, the loop carries on and removes them.
fn a_failing_provider_list_terminates_nothing_and_the_loop_recovers() {
    let cluster = Cluster::start(
        "listfails",
        "max_workers: 2\nidle_timeout_s: 3\nnode_launch_timeout_s: 60",
        ONE_CPU_TYPE,
    );
    let mut driver = cluster.driver(&["tasks", "2", "1000"]);
    assert_eq!(driver.value("done", Duration::from_secs(180)), "2");
    std::fs::write(cluster.list_fails_hook(), b"").expect("arm the hook");
    let before = cluster.workers().expect("state").len();
    assert!(before >= 1, "a worker node ran the tasks");
    // Well past the idle timeout: nothing is removed.
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let now = cluster.workers().expect("state").len();
        assert_eq!(
            now, before,
            "a node was removed while the provider's list failed"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        cluster.autoscaler_log().contains("list failed"),
        "the autoscaler says why it does nothing"
    );
    std::fs::remove_file(cluster.list_fails_hook()).expect("disarm the hook");
    let recovered = Instant::now();
    poll(
        "the idle nodes to be removed",
        Duration::from_secs(60),
        || match (cluster.workers()?.len(), cluster.node_processes().len()) {
            (0, 0) => Ok(()),
            (n, p) => Err(format!("{n} worker nodes, {p} node processes")),
        },
    );
    eprintln!(
        "list failure: idle nodes removed {:?} after the provider answered again",
        recovered.elapsed()
    );
}

/// A node whose processes hang before its raylet registers (frozen with SIGSTOP) is given
/// up on after `node_launch_timeout_s`, killed, and replaced; the task runs on the
/// replacement.
fn a_node_that_never_joins_is_replaced() {
    let cluster = Cluster::start(
        "neverjoins",
        "max_workers: 2\nidle_timeout_s: 3\nnode_launch_timeout_s: 4",
        ONE_CPU_TYPE,
    );
    let mut driver = cluster.driver(&["tasks", "1", "500"]);
    // Caught as soon as its record appears, well before its raylet can register.
    let deadline = Instant::now() + Duration::from_secs(60);
    let frozen = loop {
        if let Some(pid) = cluster.node_processes().first() {
            break *pid;
        }
        assert!(Instant::now() < deadline, "no node was launched");
        std::thread::sleep(Duration::from_millis(5));
    };
    let pid = i32::try_from(frozen).expect("pid");
    // SAFETY: kill(2) on the process group of a node this test's cluster just launched.
    unsafe { libc::kill(-pid, libc::SIGSTOP) };
    let frozen_at = Instant::now();
    assert_eq!(driver.value("done", Duration::from_secs(180)), "1");
    eprintln!(
        "never joins: the task finished on a replacement {:?} after the first node froze",
        frozen_at.elapsed()
    );
    poll(
        "the frozen node to be killed",
        Duration::from_secs(30),
        || {
            if alive(frozen) {
                Err("still there".into())
            } else {
                Ok(())
            }
        },
    );
    let state = cluster.autoscaling_state().expect("state");
    assert!(
        state
            .recent_failures
            .iter()
            .any(|f| f.message.contains("did not join")),
        "the failure is shown: {:?}",
        state.recent_failures
    );
}

/// A `GPU: 1` task on a cluster with no GPU type fails at once naming the shape, and
/// nothing is launched for it.
fn a_gpu_task_with_no_gpu_type_fails_at_once_and_launches_nothing() {
    let cluster = Cluster::start(
        "gpu",
        "max_workers: 2\nidle_timeout_s: 3\nnode_launch_timeout_s: 60",
        ONE_CPU_TYPE,
    );
    let mut driver = cluster.driver(&["gpu"]);
    let error = driver.value("error", Duration::from_secs(60));
    let elapsed: u64 = driver
        .value("elapsed_ms", Duration::from_secs(5))
        .parse()
        .expect("a number");
    assert!(
        error.contains("GPU: 1") && error.contains("infeasible"),
        "the error names the shape: {error}"
    );
    assert!(
        elapsed < 10_000,
        "it failed at once, not after {elapsed} ms"
    );
    // A few rounds later, still nothing launched.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert!(cluster.node_processes().is_empty(), "a node was launched");
        let state = cluster.autoscaling_state().expect("state");
        assert!(state.instances.is_empty(), "{:?}", state.instances);
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `request_resources` keeps capacity up with no task at all, past the idle timeout;
/// clearing it lets the nodes go.
fn request_resources_keeps_capacity_up_until_cleared() {
    let cluster = Cluster::start(
        "request",
        "max_workers: 2\nidle_timeout_s: 3\nnode_launch_timeout_s: 60",
        ONE_CPU_TYPE,
    );
    let asked = Instant::now();
    let mut driver = cluster.driver(&["request", "2"]);
    assert_eq!(driver.value("requested", Duration::from_secs(60)), "2");
    poll(
        "two worker nodes",
        Duration::from_secs(90),
        || match cluster.workers()?.len() {
            2 => Ok(()),
            n => Err(format!("{n} worker nodes")),
        },
    );
    eprintln!(
        "request_resources: two worker nodes alive {:?} after the request",
        asked.elapsed()
    );
    // Well past the idle timeout, idle as they are, both stay.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        assert_eq!(
            cluster.workers().expect("state").len(),
            2,
            "the floor was not kept"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut driver = cluster.driver(&["request", "0"]);
    assert_eq!(driver.value("requested", Duration::from_secs(60)), "0");
    let cleared = Instant::now();
    poll("the nodes to go", Duration::from_secs(60), || {
        match (cluster.workers()?.len(), cluster.node_processes().len()) {
            (0, 0) => Ok(()),
            (n, p) => Err(format!("{n} worker nodes, {p} node processes")),
        }
    });
    eprintln!(
        "request_resources: nodes removed {:?} after the floor was cleared (idle timeout 3 s)",
        cleared.elapsed()
    );
}

/// The head (GCS on Redis, its raylet, the autoscaler) killed and started again: the new
/// autoscaler adopts the nodes the old one launched, launching none twice and losing none.
fn a_restarted_head_adopts_the_nodes_it_launched() {
    let redis = miniray_gcs::testing::RedisServer::start().expect("redis-server");
    let url = redis.url();
    let cluster = Cluster::start_with(
        "restart",
        "max_workers: 3\nidle_timeout_s: 3\nnode_launch_timeout_s: 60",
        "  cpu: {resources: {CPU: 1}, min_workers: 0, max_workers: 3, \
         node_config: {args: [--object-store-memory, \"100000000\"]}}",
        &["--redis-address", &url],
    );
    let mut driver = cluster.driver(&["request", "3"]);
    assert_eq!(driver.value("requested", Duration::from_secs(60)), "3");
    let joined = |cluster: &Cluster| -> Result<BTreeSet<String>, String> {
        let ids: BTreeSet<String> = cluster
            .workers()?
            .iter()
            .map(|n| n.cloud_instance_id.clone())
            .collect();
        if ids.len() == 3 {
            Ok(ids)
        } else {
            Err(format!("{} joined: {ids:?}", ids.len()))
        }
    };
    let before = poll("three worker nodes", Duration::from_secs(90), || {
        joined(&cluster)
    });
    let processes = cluster.node_processes();
    cluster.kill_head();
    let killed = Instant::now();
    let killed_ms = miniray_common::time::now_ms();
    cluster.start_head();
    eprintln!(
        "restart: a new head was up {:?} after the old one was killed",
        killed.elapsed()
    );
    // The same three nodes, adopted: running records, nothing launched on top.
    let state = poll(
        "the new autoscaler to adopt three nodes",
        Duration::from_secs(60),
        || {
            let state = cluster.autoscaling_state()?;
            let running: BTreeSet<String> = state
                .instances
                .iter()
                .filter(|i| i.status == "running")
                .map(|i| i.instance_id.clone())
                .collect();
            // A report of the new autoscaler (reports are not persisted, but be sure).
            if running == before && state.time_ms >= killed_ms {
                Ok(state)
            } else {
                Err(format!("instances {:?}", state.instances))
            }
        },
    );
    eprintln!(
        "restart: the new head's autoscaler adopted the 3 nodes {:?} after the old head was killed",
        killed.elapsed()
    );
    assert_eq!(state.instances.len(), 3, "{:?}", state.instances);
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert_eq!(
            joined(&cluster),
            Ok(before.clone()),
            "a node was lost or replaced"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    for pid in processes {
        assert!(alive(pid), "node process {pid} was killed");
    }
    assert_eq!(
        cluster.launched_instances(),
        before,
        "each node was launched once"
    );
    // The killed head's raylet could not remove its segment; `stop` does.
    cluster.stop_and_assert_no_shared_memory_left();
}

/// A head restarted without Redis has lost its instance records: the nodes the old
/// autoscaler launched are instances of this cluster that no record owns, and the new one
/// terminates them (and launches nothing in their place, as nothing asks for capacity).
fn a_head_restarted_without_redis_terminates_the_nodes_no_record_owns() {
    let cluster = Cluster::start_with(
        "unowned",
        "max_workers: 2\nidle_timeout_s: 600\nnode_launch_timeout_s: 60",
        "  cpu: {resources: {CPU: 1}, min_workers: 0, max_workers: 2, \
         node_config: {args: [--object-store-memory, \"100000000\"]}}",
        &[],
    );
    let mut driver = cluster.driver(&["request", "2"]);
    assert_eq!(driver.value("requested", Duration::from_secs(60)), "2");
    poll(
        "two worker nodes",
        Duration::from_secs(90),
        || match cluster.workers()?.len() {
            2 => Ok(()),
            n => Err(format!("{n} joined")),
        },
    );
    let processes = cluster.node_processes();
    assert_eq!(processes.len(), 2, "two node processes: {processes:?}");
    let launched = cluster.launched_instances();
    cluster.kill_head();
    let killed = Instant::now();
    cluster.start_head();
    poll(
        "the nodes no record owns to be terminated",
        Duration::from_secs(60),
        || match processes.iter().filter(|p| alive(**p)).count() {
            0 => Ok(()),
            n => Err(format!("{n} node processes still run")),
        },
    );
    eprintln!(
        "unowned: the old nodes were terminated {:?} after the head was killed",
        killed.elapsed()
    );
    assert!(
        cluster
            .autoscaler_log()
            .contains("terminating an instance no record owns"),
        "the new autoscaler terminated them as unowned"
    );
    let state = cluster
        .autoscaling_state()
        .expect("the new autoscaler reports");
    assert!(
        state.instances.is_empty(),
        "nothing launched in their place: {:?}",
        state.instances
    );
    assert_eq!(
        cluster.launched_instances(),
        launched,
        "no node was launched again"
    );
    cluster.stop_and_assert_no_shared_memory_left();
}

/// Work that arrives between the decision to remove an idle node and its drain: the
/// raylet refuses the drain, the node stays, and the task finishes there. (The autoscaler's
/// drain-pause test hook holds the drain until the task is running.)
fn a_drain_refused_because_work_arrived_keeps_the_node() {
    // One worker node at most, so the new task can only go to the node being drained.
    let cluster = Cluster::start_full(
        "drainrefused",
        "max_workers: 1\nidle_timeout_s: 3\nnode_launch_timeout_s: 60",
        "  cpu: {resources: {CPU: 1}, min_workers: 0, max_workers: 1, \
         node_config: {args: [--object-store-memory, \"100000000\"]}}",
        &[],
        true,
    );
    let mut first = cluster.driver(&["tasks", "1", "200"]);
    assert_eq!(first.value("done", Duration::from_secs(120)), "1");
    // The node went idle; the autoscaler decided to remove it and holds the drain.
    let hook = cluster.drain_pause_hook();
    let instance = poll("the drain to be held", Duration::from_secs(30), || {
        std::fs::read_to_string(&hook).map_err(|e| e.to_string())
    });
    let node_of = |cluster: &Cluster| -> Result<miniray_proto::NodeInfo, String> {
        cluster
            .workers()?
            .into_iter()
            .find(|n| n.cloud_instance_id == instance)
            .ok_or_else(|| format!("{instance} is not alive"))
    };
    let node = hex_id(&node_of(&cluster).expect("the node to be drained"));
    let mut second = cluster.driver(&["tasks", "1", "3000"]);
    poll(
        "the new task to hold the node's CPU",
        Duration::from_secs(60),
        || {
            let n = node_of(&cluster)?;
            let free = n
                .available
                .as_ref()
                .and_then(|a| a.amounts.get("CPU").copied())
                .unwrap_or(0.0);
            if free < 0.5 {
                Ok(())
            } else {
                Err(format!("{free} CPU free"))
            }
        },
    );
    std::fs::remove_file(&hook).expect("release the drain");
    assert_eq!(second.value("done", Duration::from_secs(60)), "1");
    assert_eq!(
        node_of(&cluster).map(|n| hex_id(&n)),
        Ok(node.clone()),
        "the node stayed"
    );
    // Releasing each held drain from now on: the refusal is reported, and the node, idle
    // again, goes.
    poll(
        "the refusal to be reported",
        Duration::from_secs(30),
        || {
            let _ = std::fs::remove_file(&hook);
            let decisions = cluster.autoscaling_state()?.recent_decisions;
            if decisions.iter().any(|d| d.contains("refused")) {
                Ok(())
            } else {
                Err(format!("{decisions:?}"))
            }
        },
    );
    poll("the node to go once idle", Duration::from_secs(60), || {
        let _ = std::fs::remove_file(&hook);
        match cluster.workers()?.len() {
            0 => Ok(()),
            n => Err(format!("{n} worker nodes")),
        }
    });
}

/// `miniray stop` stops the autoscaler and every node it launched (`min_workers` here, so
/// with no demand at all), then the head.
fn stop_stops_the_autoscaler_and_the_nodes_it_launched() {
    let cluster = Cluster::start(
        "stop",
        "max_workers: 2\nidle_timeout_s: 3\nnode_launch_timeout_s: 60",
        "  cpu: {resources: {CPU: 1}, min_workers: 2, max_workers: 2, \
         node_config: {args: [--object-store-memory, \"100000000\"]}}",
    );
    poll(
        "min_workers nodes",
        Duration::from_secs(90),
        || match cluster.workers()?.len() {
            2 => Ok(()),
            n => Err(format!("{n} worker nodes")),
        },
    );
    let nodes = cluster.node_processes();
    assert_eq!(nodes.len(), 2);
    let (ok, out) = cluster.miniray(&["stop", "--grace-period", "10"]);
    assert!(ok, "{out}");
    assert!(out.contains("Stopped autoscaler"), "{out}");
    for pid in nodes {
        assert!(
            !alive(pid),
            "node process {pid} survived miniray stop:\n{out}"
        );
    }
    let (_, again) = cluster.miniray(&["stop"]);
    assert!(again.contains("No miniray daemons are running."), "{again}");
}

/// A config that does not make sense, or a Kubernetes provider section or node type Pod
/// template that does not, is refused by `start` with the field (and line), and nothing is
/// started.
fn a_bad_config_is_refused_before_anything_starts() {
    let root = std::env::temp_dir().join(format!(
        "miniray-as-badconfig-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&root).expect("temp root");
    let cases = [
        (
            "max_workers: 1\nprovider: {type: local}\nhead_node_type: head\n\
             available_node_types:\n  head: {resources: {CPU: 0}}\n  \
             cpu: {resources: {CPU: 1}, max_workers: 4}\n",
            "line 6",
        ),
        (
            "max_workers: 1\nprovider: {type: kubernetes, namespace: x}\nhead_node_type: head\n\
             available_node_types:\n  head: {resources: {CPU: 0}}\n",
            "`provider.image`: is required",
        ),
        (
            "max_workers: 1\nprovider: {type: kubernetes, image: m}\nhead_node_type: head\n\
             available_node_types:\n  head: {resources: {CPU: 0}}\n  \
             cpu: {resources: {CPU: 1}, max_workers: 1, node_config: {image: x}}\n",
            "`available_node_types.cpu.node_config.image`",
        ),
    ];
    for (i, (yaml, expected)) in cases.iter().enumerate() {
        let path = root.join(format!("bad-{i}.yaml"));
        std::fs::write(&path, yaml).expect("write the config");
        let out = Command::new(MINIRAY)
            .args(["start", "--head", "--port", &free_port().to_string()])
            .arg("--autoscaling-config")
            .arg(&path)
            .env("MINIRAY_TMPDIR", &root)
            .env_remove("MINIRAY_ROLE")
            .stdin(Stdio::null())
            .output()
            .expect("run miniray start");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} was accepted");
        assert!(stderr.contains(expected), "case {i}: {stderr}");
        let daemons = std::fs::read_dir(root.join("daemons"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(daemons, 0, "case {i}: a daemon was started");
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// The autoscaler killed (SIGKILL) the moment its first node process exists, then started
/// again with the same command line: it adopts what the first one launched or had only
/// recorded, so every node is launched once and none is lost.
fn an_autoscaler_killed_mid_launch_launches_nothing_twice() {
    let cluster = Cluster::start(
        "midlaunch",
        "max_workers: 2\nidle_timeout_s: 3\nnode_launch_timeout_s: 60",
        ONE_CPU_TYPE,
    );
    let record = cluster
        .daemon_records()
        .into_iter()
        .find(|r| r["role"] == "autoscaler")
        .expect("the autoscaler is recorded");
    let pid = record["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .expect("pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("its command line");
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .skip(1)
        .map(|a| String::from_utf8_lossy(a).to_string())
        .collect();
    let mut driver = cluster.driver(&["request", "2"]);
    assert_eq!(driver.value("requested", Duration::from_secs(60)), "2");
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.node_processes().is_empty() {
        assert!(Instant::now() < deadline, "no node was launched");
        std::thread::sleep(Duration::from_millis(2));
    }
    // SAFETY: kill(2) on the autoscaler this test's cluster started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    poll("the autoscaler to die", Duration::from_secs(10), || {
        if alive(pid) {
            Err("alive".into())
        } else {
            Ok(())
        }
    });
    let logs = cluster.root.join("restarted").join("logs");
    std::fs::create_dir_all(&logs).expect("log folder");
    let log = std::fs::File::create(logs.join("autoscaler.err")).expect("log");
    let mut cmd = cluster.command(Path::new(MINIRAY));
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let again = cmd.spawn().expect("start the autoscaler again");
    // Recorded like the first, so `miniray stop` (the guard) stops it.
    let mut record = record.clone();
    let again_pid = again.id();
    record["pid"] = again_pid.into();
    std::fs::write(
        cluster
            .root
            .join("daemons")
            .join(format!("{}.json", again.id())),
        serde_json::to_vec(&record).expect("json"),
    )
    .expect("record the new autoscaler");
    cluster.children.borrow_mut().push(again);
    let joined = poll("two worker nodes", Duration::from_secs(90), || {
        let ids: BTreeSet<String> = cluster
            .workers()?
            .iter()
            .map(|n| n.cloud_instance_id.clone())
            .collect();
        if ids.len() == 2 {
            Ok(ids)
        } else {
            Err(format!("{ids:?}"))
        }
    });
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert!(cluster.node_processes().len() <= 2, "a third node process");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        cluster.launched_instances(),
        joined,
        "each node was launched once"
    );
    let log = std::fs::read_to_string(logs.join("autoscaler.err")).unwrap_or_default();
    eprintln!(
        "mid-launch restart: the new autoscaler adopted {} requested launch(es), re-issued {}, \
         launched {} new",
        log.matches("adopted a launched instance").count(),
        log.matches("re-issuing a launch").count(),
        log.matches("started a local node").count()
    );
}

/// `miniray start --head --block --autoscaling-config`: on SIGTERM it stops the
/// autoscaler, the nodes it launched, the raylet and the GCS, and exits cleanly.
fn a_blocking_head_stops_its_autoscaler_and_nodes_on_sigterm() {
    let (cluster, mut head) = Cluster::start_blocking(
        "blockhead",
        "max_workers: 1\nidle_timeout_s: 3\nnode_launch_timeout_s: 60",
        "  cpu: {resources: {CPU: 1}, min_workers: 1, max_workers: 1, \
         node_config: {args: [--object-store-memory, \"100000000\"]}}",
    );
    poll(
        "the min_workers node",
        Duration::from_secs(90),
        || match cluster.workers()?.len() {
            1 => Ok(()),
            n => Err(format!("{n} worker nodes")),
        },
    );
    let nodes = cluster.node_processes();
    let daemons: Vec<u32> = cluster
        .daemon_records()
        .iter()
        .filter_map(|r| r["pid"].as_u64().and_then(|p| u32::try_from(p).ok()))
        .collect();
    // SAFETY: kill(2) on the blocking head this test started.
    unsafe { libc::kill(head.id() as i32, libc::SIGTERM) };
    let status = poll("the blocking head to exit", Duration::from_secs(60), || {
        head.try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "still running".to_string())
    });
    assert!(status.success(), "{status}");
    for pid in nodes.iter().chain(&daemons) {
        assert!(!alive(*pid), "process {pid} outlived the blocking head");
    }
}

const TESTS: &[support::harness::Test] = &[
    (
        "scale_up_for_tasks_then_down_when_idle",
        scale_up_for_tasks_then_down_when_idle,
    ),
    (
        "a_node_with_a_live_actor_stays_until_the_actor_is_killed",
        a_node_with_a_live_actor_stays_until_the_actor_is_killed,
    ),
    (
        "a_failing_provider_list_terminates_nothing_and_the_loop_recovers",
        a_failing_provider_list_terminates_nothing_and_the_loop_recovers,
    ),
    (
        "a_node_that_never_joins_is_replaced",
        a_node_that_never_joins_is_replaced,
    ),
    (
        "a_gpu_task_with_no_gpu_type_fails_at_once_and_launches_nothing",
        a_gpu_task_with_no_gpu_type_fails_at_once_and_launches_nothing,
    ),
    (
        "request_resources_keeps_capacity_up_until_cleared",
        request_resources_keeps_capacity_up_until_cleared,
    ),
    (
        "a_restarted_head_adopts_the_nodes_it_launched",
        a_restarted_head_adopts_the_nodes_it_launched,
    ),
    (
        "a_head_restarted_without_redis_terminates_the_nodes_no_record_owns",
        a_head_restarted_without_redis_terminates_the_nodes_no_record_owns,
    ),
    (
        "a_drain_refused_because_work_arrived_keeps_the_node",
        a_drain_refused_because_work_arrived_keeps_the_node,
    ),
    (
        "stop_stops_the_autoscaler_and_the_nodes_it_launched",
        stop_stops_the_autoscaler_and_the_nodes_it_launched,
    ),
    (
        "a_bad_config_is_refused_before_anything_starts",
        a_bad_config_is_refused_before_anything_starts,
    ),
    (
        "an_autoscaler_killed_mid_launch_launches_nothing_twice",
        an_autoscaler_killed_mid_launch_launches_nothing_twice,
    ),
    (
        "a_blocking_head_stops_its_autoscaler_and_nodes_on_sigterm",
        a_blocking_head_stops_its_autoscaler_and_nodes_on_sigterm,
    ),
];

fn main() {
    support::harness::run(TESTS, driver);
}
