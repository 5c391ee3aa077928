//! The GCS failing around a cluster of real processes:
//! - a GCS that cannot reach its Redis at start says so in one line and exits non-zero, for
//!   a closed port and for a port that accepts but never answers;
//! - a GCS on the in-memory store, killed and restarted on the same port: the raylet stays
//!   up and registers again under its old id, the GCS rebuilds the job table from what it
//!   reports, a running driver's tasks go on and a new driver runs tasks.

mod support;

use std::net::{Ipv4Addr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use miniray::cluster::{DaemonSpec, GcsSpec};
use miniray_common::config::env;
use miniray_proto::NodeState;
use support::{Cluster, DRIVER, DRIVER_DEADLINE, DriverRun, Options, wait_until};

/// How a GCS daemon (the real executable in its GCS role) pointed at `redis_url` ended:
/// exit success, stderr, and how long it took.
fn gcs_against(redis_url: &str) -> (bool, String, Duration) {
    let spec = DaemonSpec::Gcs(GcsSpec {
        bind: "127.0.0.1:0".parse().expect("literal address"),
        token: "gcs-faults-token".into(),
        session_name: "gcs_faults".into(),
        redis_address: Some(redis_url.to_string()),
        node_timeout_ms: 10_000,
        max_destroyed_actors: None,
        max_task_events: None,
        unused_executable_ttl_ms: None,
        tls: None,
        metrics_port: None,
    });
    let start = Instant::now();
    let mut child = Command::new(DRIVER)
        .env(env::ROLE, "gcs")
        .env(
            env::DAEMON_ARGS,
            serde_json::to_string(&spec).expect("spec"),
        )
        .env("MINIRAY_EXIT_WITH_PARENT", "1")
        .env_remove(env::ADDRESS)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the gcs daemon starts");
    // The start deadline is 10 s; a GCS still running well past it hangs.
    let limit = Duration::from_secs(40);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the gcs still runs {limit:?} after start against {redis_url}");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for the gcs: {e}"),
        }
    }
    let elapsed = start.elapsed();
    let output = child.wait_with_output().expect("gcs output");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        !stdout.contains("MINIRAY_READY"),
        "the gcs announced itself without its redis: {stdout}"
    );
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).to_string(),
        elapsed,
    )
}

/// The one line the daemon ends with, checked to name the Redis it could not reach.
fn assert_one_clear_line(stderr: &str, redis_url: &str) {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("miniray gcs:"))
        .collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{stderr}");
    let line = lines[0];
    assert!(
        line.contains(redis_url) && line.contains("cannot start"),
        "the error does not name the redis it could not reach: {line}"
    );
    assert!(
        !stderr.contains("panicked"),
        "the gcs panicked instead:\n{stderr}"
    );
    assert_eq!(
        stderr.lines().last(),
        Some(line),
        "the error is not the last word:\n{stderr}"
    );
}

#[test]
fn a_gcs_that_cannot_reach_redis_says_so_and_exits() {
    // A closed port: refused at once.
    let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("redis://127.0.0.1:{closed}");
    let (ok, stderr, elapsed) = gcs_against(&url);
    assert!(!ok, "the gcs exited successfully without redis:\n{stderr}");
    assert_one_clear_line(&stderr, &url);
    eprintln!(
        "closed port: exited after {elapsed:?}: {}",
        stderr.trim_end().lines().last().unwrap_or("")
    );

    // A port that accepts connections and never answers: bounded by the start deadline.
    let silent = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a listener");
    let port = silent.local_addr().expect("its address").port();
    let url = format!("redis://127.0.0.1:{port}");
    let (ok, stderr, elapsed) = gcs_against(&url);
    drop(silent);
    assert!(!ok, "the gcs exited successfully without redis:\n{stderr}");
    assert_one_clear_line(&stderr, &url);
    assert!(
        elapsed < Duration::from_secs(25),
        "giving up on a silent redis took {elapsed:?}"
    );
    eprintln!(
        "silent port: exited after {elapsed:?}: {}",
        stderr.trim_end().lines().last().unwrap_or("")
    );
}

#[test]
fn a_restarted_in_memory_gcs_takes_its_raylet_and_jobs_back() {
    let mut cluster = Cluster::start(Options::default());
    let head = cluster.nodes[0].node_id;
    let dir = cluster.session_dir.join("gcs_restart");
    std::fs::create_dir_all(&dir).expect("handshake folder");
    let driver = cluster.spawn_driver(&["gcs_restart", &dir.to_string_lossy()]);
    wait_until("the driver's first tasks", DRIVER_DEADLINE, || {
        dir.join("ready").exists()
    });
    let before = cluster.jobs().expect("the job table");
    assert_eq!(before.len(), 1, "one running driver, one job");
    let job = before[0].clone();
    assert!(!job.finished);

    cluster.kill_gcs();
    cluster.restart_gcs();
    // A fresh in-memory GCS knows nothing until the raylet's next heartbeat is refused and
    // it registers again, under the same id and with the job it has workers for.
    wait_until(
        "the raylet to register again under its old id",
        Duration::from_secs(30),
        || cluster.node_state(head) == Some(NodeState::Alive),
    );
    assert!(cluster.node_running(0), "the raylet exited");
    let restored = cluster.jobs().expect("the job table after the restart");
    let restored = restored
        .iter()
        .find(|j| j.job_id == job.job_id)
        .expect("the running driver's job was not restored");
    assert!(!restored.finished);
    assert_eq!(restored.executable_hash, job.executable_hash);
    assert_eq!(restored.driver, job.driver);

    // The running driver's tasks go on.
    std::fs::write(dir.join("go"), b"").expect("go");
    let run = DriverRun::wait(driver, DRIVER_DEADLINE);
    run.assert_success();
    let squares = (0..50u64).map(|x| x * x).sum::<u64>().to_string();
    assert_eq!(run.get("before"), squares);
    assert_eq!(run.get("after"), squares);

    // A new driver runs tasks on the rejoined raylet.
    let second = cluster.run_driver(&["basic"]);
    second.assert_success();
    assert_eq!(second.get("chained"), "2401");
    assert_eq!(cluster.node_state(head), Some(NodeState::Alive));
    assert!(cluster.node_running(0), "the raylet exited");
    assert!(cluster.stop().is_empty(), "segments left behind");
}
