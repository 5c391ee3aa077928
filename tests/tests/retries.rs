//! Retry accounting when a worker dies in the middle of a pipelined batch: only the task
//! (or actor call) that was running pays for the crash, a task without retries runs at
//! most once, and a task that finished before the crash keeps its result.

mod support;

use support::{Cluster, Options};

/// Rounds and batch shape of the `retry_accounting` scenario (see `test_driver/retries.rs`).
const TASK_ROUNDS: u64 = 12;
const ACTOR_ROUNDS: u64 = 6;
const PER_ROUND: u64 = 60;

fn executions(dir: &std::path::Path, name: &str) -> u64 {
    std::fs::metadata(dir.join(name)).map_or(0, |m| m.len())
}

#[test]
fn only_the_task_that_crashed_its_worker_pays_for_it() {
    let mut cluster = Cluster::start(Options::default());
    let dir = cluster.session_dir.join("executions");
    std::fs::create_dir_all(&dir).expect("count folder");
    let run = cluster.run_driver(&["retry_accounting", &dir.to_string_lossy()]);
    run.assert_success();

    let mut wrong = Vec::new();
    let mut check = |name: String, want_outcome: String, want_runs: u64| {
        let got = run.values.get(&name).and_then(|v| v.first()).cloned();
        let runs = executions(&dir, &name);
        if got.as_deref() != Some(want_outcome.as_str()) || runs != want_runs {
            wrong.push(format!(
                "{name}: outcome {got:?} (want {want_outcome}), ran {runs}x (want {want_runs})"
            ));
        }
    };
    for r in 0..TASK_ROUNDS {
        for i in 0..PER_ROUND {
            // No retries, never crashed: exactly one run and its own result, wherever it sat
            // in the batch relative to the crash.
            check(format!("r{r}-t{i}"), format!("ok:{i}"), 1);
        }
        // The crasher spends its own retries, every one of them, and no more.
        let retries = r % 3;
        check(
            format!("r{r}-crash"),
            format!("worker_died:{}", retries + 1),
            retries + 1,
        );
    }
    for r in 0..ACTOR_ROUNDS {
        for i in 0..PER_ROUND {
            check(format!("a{r}-t{i}"), format!("ok:{i}"), 1);
        }
        check(format!("a{r}-crash"), "actor_died".to_string(), 1);
    }
    assert!(
        wrong.is_empty(),
        "{} of {} outcomes wrong:\n{}",
        wrong.len(),
        (TASK_ROUNDS + ACTOR_ROUNDS) * (PER_ROUND + 1),
        wrong.join("\n")
    );
    assert!(
        cluster.stop().is_empty(),
        "segments or journals left behind"
    );
}
