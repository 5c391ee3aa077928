//! Plasma memory comes back: a cluster started with `miniray start`, drivers that fill its
//! object store (primary copies, read pins, a worker pinning an argument, a worker-owned
//! object that escaped), and `object_store_used` from `miniray status --format json`
//! returning to its starting value when the driver is SIGKILLed or its job ends.
//!
//! Needs the `miniray` binary next to the test driver (`cargo test --workspace` builds it;
//! for a targeted run, `cargo build -p miniray-cli` first).

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{DRIVER, DRIVER_DEADLINE, DriverRun};

const MIB: u64 = 1 << 20;
/// Bound on one `miniray` command (`start` waits for its daemons to serve).
const COMMAND_DEADLINE: Duration = Duration::from_secs(120);
/// How long the memory may take to come back: the owner is declared dead after about 4 s of
/// failed probes, the job ends about 6 s after its driver stops answering, and heartbeats
/// carry the figure to the GCS; generous for 2 loaded cores.
const RECLAIM_DEADLINE: Duration = Duration::from_secs(90);

/// A cluster of `miniray start --head` under a private `MINIRAY_TMPDIR`; `miniray stop` on
/// drop, and any plasma segment of its sessions left in /dev/shm is removed.
struct StartedCluster {
    miniray: PathBuf,
    root: PathBuf,
    address: String,
}

fn run_command(mut cmd: Command, what: &str) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let start = Instant::now();
    while child.try_wait().expect("wait for a command").is_none() {
        if start.elapsed() > COMMAND_DEADLINE {
            let _ = child.kill();
            panic!("{what} did not finish within {COMMAND_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("command output")
}

impl StartedCluster {
    fn start(name: &str) -> StartedCluster {
        let miniray = Path::new(DRIVER).with_file_name("miniray");
        assert!(
            miniray.exists(),
            "{} is missing: build it with `cargo build -p miniray-cli`",
            miniray.display()
        );
        let root = std::env::temp_dir().join(format!(
            "miniray-plasma-test-{name}-{}-{}",
            std::process::id(),
            miniray_common::time::now_ms()
        ));
        std::fs::create_dir_all(&root).expect("create the temp root");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let cluster = StartedCluster {
            miniray,
            root,
            address: format!("127.0.0.1:{port}"),
        };
        let out = cluster.run(&[
            "start",
            "--head",
            "--port",
            &port.to_string(),
            "--num-cpus",
            "2",
            "--object-store-memory",
            &(256 * MIB).to_string(),
        ]);
        assert!(
            out.status.success(),
            "miniray start failed\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster
    }

    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("MINIRAY_TMPDIR", &self.root)
            .env("MINIRAY_DASHBOARD_PORT", "0")
            .env("MINIRAY_ADDRESS", &self.address)
            .env_remove("MINIRAY_TOKEN")
            .env_remove("MINIRAY_ROLE");
        cmd
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        run_command(
            self.command(&self.miniray, args),
            &format!("miniray {}", args.join(" ")),
        )
    }

    /// `object_store_used` summed over alive nodes, from `miniray status --format json`,
    /// once at least one node is alive.
    fn used(&self) -> Result<u64, String> {
        let out = self.run(&["status", "--format", "json"]);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).to_string());
        }
        let v: Value = serde_json::from_str(&stdout).map_err(|e| format!("{e}: {stdout}"))?;
        let alive: Vec<&Value> = v["nodes"]
            .as_array()
            .map(|n| n.iter().filter(|n| n["state"] == "ALIVE").collect())
            .unwrap_or_default();
        if alive.is_empty() {
            return Err(format!("no alive node: {stdout}"));
        }
        alive
            .iter()
            .map(|n| {
                n["object_store_used"]
                    .as_u64()
                    .ok_or_else(|| stdout.clone())
            })
            .sum()
    }

    /// Polls `used()` until `pred` holds, failing after `deadline` with the last value.
    fn wait_used(&self, what: &str, deadline: Duration, pred: impl Fn(u64) -> bool) -> u64 {
        let start = Instant::now();
        loop {
            let last = self.used();
            if let Ok(u) = last
                && pred(u)
            {
                return u;
            }
            assert!(
                start.elapsed() < deadline,
                "timed out after {deadline:?} waiting for {what}; last: {last:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn spawn_driver(&self, args: &[&str]) -> Child {
        self.command(Path::new(DRIVER), args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("driver starts")
    }

    /// Plasma segments of this cluster's sessions still in /dev/shm.
    fn segments(&self) -> Vec<String> {
        let sessions: Vec<String> = std::fs::read_dir(&self.root)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.starts_with("session_"))
                    .collect()
            })
            .unwrap_or_default();
        std::fs::read_dir("/dev/shm")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| {
                        sessions
                            .iter()
                            .any(|s| n.starts_with(&format!("miniray-{s}-")))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for StartedCluster {
    fn drop(&mut self) {
        let _ = self.run(&["stop", "--grace-period", "5"]);
        for name in self.segments() {
            let _ = std::fs::remove_file(Path::new("/dev/shm").join(name));
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// Kills the child on drop unless it was reaped.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_killed_drivers_plasma_objects_are_freed() {
    let cluster = StartedCluster::start("killed");
    let before = cluster.wait_used("the node to be alive", Duration::from_secs(60), |_| true);
    let dir = cluster.root.join("markers");
    std::fs::create_dir_all(&dir).expect("marker dir");

    let mut child = cluster.spawn_driver(&["hold_plasma", &dir.to_string_lossy()]);
    let stdout = child.stdout.take().expect("stdout piped");
    let mut driver = KillOnDrop(Some(child));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let start = Instant::now();
    loop {
        let left = DRIVER_DEADLINE.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) if line == "ready=1" => break,
            Ok(_) => {}
            Err(e) => {
                let mut c = driver.0.take().expect("driver");
                let _ = c.kill();
                let out = c.wait_with_output().expect("driver output");
                panic!(
                    "the driver never got ready ({e})\n--- stderr\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    // Four driver objects of 10 MiB (one also pinned by a task) and one owned by a worker.
    let with = cluster.wait_used(
        "the driver's objects in the store",
        Duration::from_secs(30),
        |u| u >= before + 50 * MIB,
    );

    // A live driver keeps its objects: longer than an owner's probes may fail before it is
    // declared gone (3 probes over 3 s), nothing is freed.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(6) {
        let now = cluster.used();
        assert!(
            now.as_ref().is_ok_and(|u| *u >= with),
            "memory of a live driver was freed: {now:?}, had {with}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut c = driver.0.take().expect("driver");
    c.kill().expect("SIGKILL the driver");
    let _ = c.wait();
    let killed = Instant::now();
    let after = cluster.wait_used("the store to empty again", RECLAIM_DEADLINE, |u| {
        u == before
    });
    println!(
        "plasma used: before={before} with_driver={with} after={after} freed_in_ms={}",
        killed.elapsed().as_millis()
    );
}

#[test]
fn a_finished_jobs_plasma_objects_are_freed() {
    let cluster = StartedCluster::start("job-ends");
    let before = cluster.wait_used("the node to be alive", Duration::from_secs(60), |_| true);
    let run = DriverRun::wait(cluster.spawn_driver(&["plasma_job_ends"]), DRIVER_DEADLINE);
    run.assert_success();
    assert_eq!(run.get("pinned"), "3");
    let ended = Instant::now();
    let after = cluster.wait_used("the store to empty again", RECLAIM_DEADLINE, |u| {
        u == before
    });
    println!(
        "plasma used: before={before} after={after} freed_in_ms={}",
        ended.elapsed().as_millis()
    );
}
