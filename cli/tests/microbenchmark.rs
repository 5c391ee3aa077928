//! `miniray microbenchmark` runs every loop of `cli/src/microbenchmark.rs` once, briefly
//! (one warm-up call, one trial of a millisecond), and each prints a positive figure.

#[path = "support/bench_run.rs"]
mod bench_run;

use std::time::Duration;

use bench_run::run_bench;

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
    let (printed, stdout) = run_bench(
        &[
            "microbenchmark",
            "--warmup-secs",
            "0",
            "--trial-secs",
            "0.001",
            "--trials",
            "1",
        ],
        Duration::from_secs(600),
    );
    let names: Vec<&str> = printed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, METRICS, "--- stdout\n{stdout}");
    for (name, value) in &printed {
        assert!(
            value.is_finite() && *value > 0.0,
            "{name} printed {value}\n{stdout}"
        );
    }
}
