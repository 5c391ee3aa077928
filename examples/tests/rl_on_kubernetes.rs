//! The main example on Kubernetes (the project's API simulator): `miniray up` a cluster
//! whose head has one CPU, run `rl_rollouts` with more rollout actors than that from this
//! machine, outside every Pod; the autoscaler adds worker Pods for the actors, training
//! solves CartPole, and the Pods go once the job has ended.

#[path = "../../cli/tests/support/k8s.rs"]
mod k8s;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s::{SimCluster, poll};

/// `target/<profile>/` of this test: the `miniray` binary and the examples live there (a
/// plain `cargo test --workspace` builds both).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

fn built(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run `cargo test --workspace` (it builds the miniray binary and the examples)",
        path.display()
    );
    path
}

const CONFIG: &str = "cluster_name: rl
max_workers: 2
idle_timeout_s: 5
provider: { type: kubernetes, namespace: default, image: miniray:dev }
head_node_type: head
available_node_types:
  head: { resources: { CPU: 1 } }
  cpu:
    resources: { CPU: 2 }
    min_workers: 0
    max_workers: 2
";

#[test]
fn rl_rollouts_autoscale_worker_pods_and_solve_cartpole() {
    let miniray = built(profile_dir().join("miniray"));
    let example = built(profile_dir().join("examples").join("rl_rollouts"));
    let cluster = SimCluster::start(&miniray, "rl", CONFIG);
    let address = cluster.up();
    assert!(
        cluster.live_workers().is_empty(),
        "no worker Pod before the job"
    );

    let out_dir = cluster.dir.join("rl_out");
    let mut cmd = Command::new(example);
    cluster.env(&mut cmd);
    cmd.args(["--actors", "4", "--seed", "3", "--max-env-steps", "400000"])
        .arg("--out-dir")
        .arg(&out_dir)
        .env("MINIRAY_ADDRESS", &address)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut job = cmd.spawn().expect("start rl_rollouts");
    let mut most_workers = 0;
    let status = loop {
        if let Ok(Some(status)) = job.try_wait() {
            break status;
        }
        let workers = cluster.live_workers();
        assert!(
            workers.len() <= 2,
            "more Pods than max_workers: {workers:?}"
        );
        most_workers = most_workers.max(workers.len());
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "rl_rollouts did not end within 600 s\n{}",
            cluster.pod_logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let output = job.wait_with_output().expect("rl_rollouts output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        status.success()
            && stdout.contains("4 rollout actor(s) up")
            && stdout.contains("solved after"),
        "rl_rollouts on the cluster\n--- stdout\n{stdout}\n--- stderr\n{}\n--- pods\n{}",
        String::from_utf8_lossy(&output.stderr),
        cluster.pod_logs()
    );
    // One actor fits the head; the other three needed worker Pods (two CPUs each).
    assert_eq!(most_workers, 2, "worker Pods at most: {most_workers}");
    eprintln!(
        "{}",
        stdout
            .lines()
            .filter(|l| l.starts_with("solved"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The job has ended: its actors are gone, and the idle worker Pods with them.
    let ended = Instant::now();
    poll("the worker Pods to go", Duration::from_secs(90), || {
        let workers: Vec<_> = cluster
            .pods()
            .into_iter()
            .filter(|p| p.component == "worker")
            .collect();
        if workers.is_empty() {
            Ok(())
        } else {
            Err(format!("{workers:?}"))
        }
    });
    eprintln!("job end to worker Pods deleted: {:?}", ended.elapsed());
    cluster.down();
}
