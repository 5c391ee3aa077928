//! `miniray microbenchmark` runs every loop of `cli/src/microbenchmark.rs` once, briefly
//! (one warm-up call, one trial of a millisecond), and each prints a positive figure.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MINIRAY: &str = env!("CARGO_BIN_EXE_miniray");

/// Every loop, in the order the command runs them.
const METRICS: &[&str] = &[
    "single_client_get_calls",
    "single_client_put_calls",
    "single_client_get_calls_plasma",
    "single_client_put_calls_plasma",
    "single_client_put_gigabytes",
    "single_client_tasks_and_get_batch",
    "single_client_wait_1k_refs",
    "single_client_get_object_containing_10k_refs",
    "single_client_tasks_sync",
    "single_client_tasks_async",
    "multi_client_tasks_async",
    "1_1_actor_calls_sync",
    "1_1_actor_calls_async",
    "1_n_actor_calls_async",
    "n_n_actor_calls_async",
    "nested_tree_sum_8192",
    "worker_start_latency",
    "inter_node_get_gigabytes",
    "broadcast_1gib_3_nodes_s",
];

#[test]
fn every_loop_runs_once_and_prints_a_positive_figure() {
    let tmp = std::env::temp_dir().join(format!(
        "miniray-bench-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&tmp).expect("temp root");
    let mut child = Command::new(MINIRAY)
        .args([
            "microbenchmark",
            "--warmup-secs",
            "0",
            "--trial-secs",
            "0.001",
            "--trials",
            "1",
        ])
        .env("MINIRAY_TMPDIR", &tmp)
        .env_remove("MINIRAY_ADDRESS")
        .env_remove("MINIRAY_TOKEN")
        .env_remove("MINIRAY_ROLE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start miniray microbenchmark");
    let deadline = Instant::now() + Duration::from_secs(600);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(
        out.status.success(),
        "--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    let printed: Vec<(String, f64)> = stdout
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect();
    let names: Vec<&str> = printed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, METRICS, "--- stdout\n{stdout}");
    for (name, value) in &printed {
        assert!(
            value.is_finite() && *value > 0.0,
            "{name} printed {value}\n{stdout}"
        );
    }
}
