//! `miniray scale-bench` at small sizes: every workload runs and prints its figures, in order.

#[path = "support/bench_run.rs"]
mod bench_run;

use std::time::Duration;

use bench_run::run_bench;

/// Every line the command prints, in order.
const METRICS: &[&str] = &[
    "many_tasks_s",
    "many_tasks_peak_mib_driver",
    "many_tasks_peak_mib_gcs",
    "many_tasks_peak_mib_raylet_max",
    "many_tasks_peak_mib_raylets",
    "many_actors_count",
    "many_actors_s",
    "many_actors_rss_mib_per_worker",
    "many_actors_pss_mib_per_worker",
    "many_actors_peak_mib_driver",
    "many_actors_peak_mib_gcs",
    "many_actors_peak_mib_raylet_max",
    "many_actors_peak_mib_raylets",
    "many_nodes_register_s",
    "many_nodes_gcs_cpu_percent",
    "many_nodes_status_ms",
    "many_nodes_peak_mib_driver",
    "many_nodes_peak_mib_gcs",
    "many_nodes_peak_mib_raylet_max",
    "many_nodes_peak_mib_raylets",
];

#[test]
fn every_workload_runs_at_small_sizes_and_prints_its_figures() {
    let (printed, stdout) = run_bench(
        &[
            "scale-bench",
            "--tasks",
            "3000",
            "--actors",
            "12",
            "--nodes",
            "6",
        ],
        Duration::from_secs(300),
    );
    let names: Vec<&str> = printed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, METRICS, "--- stdout\n{stdout}");
    for (name, value) in &printed {
        // The GCS may use no measurable CPU in 10 s with six nodes.
        if name != "many_nodes_gcs_cpu_percent" {
            assert!(*value > 0.0, "{name} = {value}\n{stdout}");
        }
    }
    let get = |n: &str| printed.iter().find(|(m, _)| m == n).map(|(_, v)| *v);
    assert_eq!(get("many_actors_count"), Some(12.0));
}
