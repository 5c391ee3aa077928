//! miniray on Kubernetes end to end, against the project's API simulator: `miniray k8s
//! simulate` (an API server, a kubelet running each Pod's command as a real process in a
//! network namespace of its own, a Deployment controller, Service names), `miniray up`
//! (the head Deployment: GCS, raylet and autoscaler in one Pod), the autoscaler's
//! Kubernetes provider creating and deleting worker Pods, `kubectl`, and `miniray down`.
//! Everything above the HTTP wire is the production code path.
//!
//! The driver is this very executable (`harness = false`): it runs on the host, outside
//! every Pod, and reaches the head by its Service name as a user's driver would.

#[allow(dead_code)] // The shared support also serves the other CLI tests.
mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use support::k8s::{PodRow, SimCluster, poll};

const MINIRAY: &str = env!("CARGO_BIN_EXE_miniray");

// ---------------------------------------------------------------------------------------
// The driver side.

#[miniray::remote]
fn sleep_then_node(ms: u64) -> String {
    std::thread::sleep(Duration::from_millis(ms));
    miniray::node_id().map(|n| n.hex()).unwrap_or_default()
}

fn out(key: &str, value: impl std::fmt::Display) {
    println!("{key}={value}");
    let _ = std::io::stdout().flush();
}

/// `driver tasks N MS`: N one-CPU tasks of MS milliseconds; prints how many ran and on how
/// many distinct nodes.
fn driver(args: &[String]) -> Result<(), String> {
    miniray::init().map_err(|e| format!("init: {e}"))?;
    let arg = |i: usize| args.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    let result = (|| {
        let (n, ms) = (arg(1), arg(2));
        let refs: Vec<_> = (0..n)
            .map(|_| sleep_then_node::remote(ms))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("submit: {e}"))?;
        out("submitted", n);
        let nodes = miniray::get_all(&refs).map_err(|e| format!("get: {e}"))?;
        out("done", nodes.len());
        out("nodes", nodes.iter().collect::<BTreeSet<_>>().len());
        Ok(())
    })();
    miniray::shutdown();
    result
}

struct Driver {
    child: Child,
    lines: Receiver<String>,
}

impl Driver {
    fn start(cluster: &SimCluster, address: &str, args: &[&str]) -> Driver {
        let exe = std::env::current_exe().expect("this test's executable");
        let mut cmd = Command::new(exe);
        cluster.env(&mut cmd);
        cmd.arg("driver")
            .args(args)
            .env("MINIRAY_ADDRESS", address)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(cluster.dir.join(format!("driver-{}.err", args.join("-"))))
                    .expect("driver log"),
            ));
        let mut child = cmd.spawn().expect("start the driver");
        let lines = support::harness::stdout_lines(&mut child);
        Driver { child, lines }
    }

    /// The value of the next `key=` line, if one comes before `deadline`.
    fn try_value(&mut self, key: &str, deadline: Duration) -> Option<String> {
        support::harness::next_value(&self.lines, key, deadline)
    }

    fn finished(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// The tests.

fn config(name: &str, max_workers: u32, idle_s: u32, launch_timeout_s: u32) -> String {
    config_with(name, max_workers, idle_s, launch_timeout_s, "")
}

/// [`config`] with more keys in the provider section (`provider_extra` starts with ", ").
fn config_with(
    name: &str,
    max_workers: u32,
    idle_s: u32,
    launch_timeout_s: u32,
    provider_extra: &str,
) -> String {
    format!(
        "cluster_name: {name}
max_workers: {max_workers}
idle_timeout_s: {idle_s}
node_launch_timeout_s: {launch_timeout_s}
provider: {{ type: kubernetes, namespace: default, image: miniray:dev{provider_extra} }}
head_node_type: head
available_node_types:
  head: {{ resources: {{ CPU: 0 }} }}
  cpu:
    resources: {{ CPU: 2 }}
    min_workers: 0
    max_workers: {max_workers}
"
    )
}

fn fail(cluster: &SimCluster, what: &str) -> ! {
    panic!(
        "{what}\n--- pods\n{:?}\n--- pod logs\n{}\n--- simulator\n{}",
        cluster.pods(),
        cluster.pod_logs(),
        tail(&cluster.simulator_log(), 60)
    )
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn head_running(cluster: &SimCluster) -> Result<PodRow, String> {
    cluster
        .pods()
        .into_iter()
        .find(|p| p.component == "head" && p.phase == "Running" && !p.deleting)
        .ok_or_else(|| "no running head Pod".to_string())
}

/// After `down` and the simulator's stop: no Pod, process or network namespace is left.
fn assert_nothing_left(cluster: &mut SimCluster) {
    let left = cluster.pods();
    assert!(left.is_empty(), "Pods left after down: {left:?}");
    cluster.stop_simulator();
    let processes = poll("Pod processes to end", Duration::from_secs(20), || {
        let left = cluster.pod_processes();
        if left.is_empty() {
            Ok(left)
        } else {
            Err(format!("{left:?}"))
        }
    });
    assert!(processes.is_empty());
    let namespaces = cluster.namespaces();
    assert!(namespaces.is_empty(), "namespaces left: {namespaces:?}");
}

/// Issue test 1: demand makes worker Pods (never more than max_workers), tasks spread over
/// them, idle Pods are deleted, kubectl agrees at each step, down leaves nothing.
fn tasks_scale_worker_pods_up_and_down() {
    let mut cluster = SimCluster::start(MINIRAY, "demo", &config("demo", 3, 6, 120));
    let address = cluster.up();
    assert_eq!(address, "demo-head.default.svc.cluster.local:6379");
    let head = head_running(&cluster).unwrap_or_else(|e| fail(&cluster, &e));
    let table = cluster.kubectl_ok(&["get", "pods", "-l", "miniray.io/cluster=demo"]);
    assert!(
        table.contains("NAME") && table.contains(&head.name) && table.contains("Running"),
        "kubectl get pods:\n{table}"
    );
    assert!(cluster.live_workers().is_empty(), "no worker before demand");
    let head_log = cluster.kubectl_ok(&["logs", &head.name, "--tail", "20"]);
    assert!(
        head_log.contains("miniray start --address"),
        "kubectl logs of the head:\n{head_log}"
    );

    let submitted = Instant::now();
    let mut driver = Driver::start(&cluster, &address, &["tasks", "12", "2000"]);
    let mut max_seen = 0;
    let mut first_running = None;
    let mut workers_seen = BTreeSet::new();
    let done = loop {
        let workers = cluster.live_workers();
        max_seen = max_seen.max(workers.len());
        assert!(
            workers.len() <= 3,
            "more worker Pods than max_workers: {workers:?}"
        );
        for w in &workers {
            workers_seen.insert(w.name.clone());
            if w.phase == "Running" && first_running.is_none() {
                first_running = Some(submitted.elapsed());
            }
        }
        if let Some(done) = driver.try_value("done", Duration::from_millis(200)) {
            break done;
        }
        if driver.finished() || submitted.elapsed() > Duration::from_secs(180) {
            fail(&cluster, "the driver did not finish its 12 tasks");
        }
    };
    assert_eq!(done, "12");
    let nodes: usize = driver
        .try_value("nodes", Duration::from_secs(5))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(nodes >= 2, "12 tasks of 2 s ran on {nodes} node(s)");
    assert!(max_seen >= 2, "at most {max_seen} worker Pod(s) at once");
    eprintln!(
        "demand to a running worker Pod: {:?}; worker Pods: {max_seen} at most, {} in all",
        first_running.unwrap_or_default(),
        workers_seen.len()
    );
    drop(driver);

    // Idle: the worker Pods are deleted (idle timeout 6 s).
    let idle_since = Instant::now();
    poll(
        "idle worker Pods to be deleted",
        Duration::from_secs(90),
        || {
            let workers = cluster.pods();
            let left: Vec<_> = workers.iter().filter(|p| p.component == "worker").collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        },
    );
    eprintln!("idle to worker Pods deleted: {:?}", idle_since.elapsed());
    let table = cluster.kubectl_ok(&["get", "pods", "-l", "miniray.io/component=worker"]);
    assert!(
        !table.contains("demo-cpu-"),
        "kubectl still lists workers:\n{table}"
    );
    head_running(&cluster).unwrap_or_else(|e| fail(&cluster, &e));

    cluster.down();
    assert_nothing_left(&mut cluster);
}

/// Issue test 3: Pods left unschedulable are given up on and replaced; a worker Pod deleted
/// mid-run has its tasks retried elsewhere and is replaced while demand remains.
fn unschedulable_and_deleted_worker_pods_are_replaced() {
    let cluster = SimCluster::start(MINIRAY, "demo", &config("demo", 2, 30, 8));
    let address = cluster.up();
    // The simulator's kubelet reads how to treat new Pods from this ConfigMap. (From a
    // file: `kubectl create configmap` sends protobuf, which the simulator does not speak.)
    let mode = |mode: &str| {
        let manifest = cluster.dir.join("simulator-mode.yaml");
        std::fs::write(
            &manifest,
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: miniray-simulator, namespace: kube-system}}\ndata: {{new-pods: {mode}}}\n"
            ),
        )
        .expect("write the simulator mode");
        let manifest = manifest.to_string_lossy().into_owned();
        let _ = cluster.kubectl(&["delete", "--ignore-not-found", "-f", &manifest]);
        let (ok, text) = cluster.kubectl(&["create", "--validate=false", "-f", &manifest]);
        assert!(ok, "{text}");
    };
    mode("unschedulable");

    let mut driver = Driver::start(&cluster, &address, &["tasks", "8", "4000"]);
    // The first Pods stay Pending...
    let pending: BTreeSet<String> = poll("Pending worker Pods", Duration::from_secs(60), || {
        let pending: BTreeSet<_> = cluster
            .live_workers()
            .into_iter()
            .filter(|p| p.phase == "Pending")
            .map(|p| p.name)
            .collect();
        if pending.is_empty() {
            Err("none yet".to_string())
        } else {
            Ok(pending)
        }
    });
    // ... and are given up on after node_launch_timeout_s (8 s): deleted and replaced.
    poll(
        "the unschedulable Pods to be given up on",
        Duration::from_secs(60),
        || {
            let names: BTreeSet<_> = cluster.live_workers().into_iter().map(|p| p.name).collect();
            if pending.iter().all(|p| !names.contains(p)) {
                Ok(())
            } else {
                Err(format!("still {names:?}"))
            }
        },
    );
    mode("run");
    // Replacements run and take the tasks.
    let victim = poll("a running worker Pod", Duration::from_secs(60), || {
        cluster
            .live_workers()
            .into_iter()
            .find(|p| p.phase == "Running" && !pending.contains(&p.name))
            .ok_or_else(|| format!("{:?}", cluster.pods()))
    });
    // Let the tasks start on it, then delete it mid-run.
    std::thread::sleep(Duration::from_millis(1500));
    let (ok, text) = cluster.kubectl(&["delete", "pod", &victim.name, "--wait=false"]);
    assert!(ok, "{text}");
    let replacement = poll(
        "a replacement for the deleted Pod",
        Duration::from_secs(60),
        || {
            cluster
                .live_workers()
                .into_iter()
                .find(|p| p.name != victim.name && !pending.contains(&p.name))
                .ok_or_else(|| format!("{:?}", cluster.pods()))
        },
    );
    eprintln!(
        "deleted {}, replaced by {} (or a Pod running beside it)",
        victim.name, replacement.name
    );
    let done = driver.try_value("done", Duration::from_secs(120));
    if done.as_deref() != Some("8") {
        fail(&cluster, &format!("the driver got {done:?} of 8 tasks"));
    }
    cluster.down();
}

/// `miniray status --format json` of the recorded cluster.
fn status_json(cluster: &SimCluster) -> Result<serde_json::Value, String> {
    let (ok, text) = cluster.miniray(&["status", "--format", "json"]);
    if !ok {
        return Err(text);
    }
    let stdout = text
        .split("--- stdout\n")
        .nth(1)
        .and_then(|s| s.split("\n--- stderr").next())
        .unwrap_or_default();
    serde_json::from_str(stdout).map_err(|e| format!("{e}: {text}"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Issue test 4: the head Pod deleted mid-run with Redis fault tolerance on: the
/// Deployment's new head Pod adopts the worker Pods, the running driver carries on, and no
/// worker Pod is launched twice.
fn a_deleted_head_pod_is_replaced_and_adopts_the_worker_pods() {
    let cluster = SimCluster::start(
        MINIRAY,
        "ft",
        &config_with("ft", 2, 120, 120, ", redis: { deploy: true }"),
    );
    let address = cluster.up();
    let head = head_running(&cluster).unwrap_or_else(|e| fail(&cluster, &e));
    // 8 one-CPU tasks of 12 s on at most 2 Pods of 2 CPUs: 4 run, 4 wait (demand the
    // max_workers cap leaves unmet, so an autoscaler that lost count would launch more).
    let mut driver = Driver::start(&cluster, &address, &["tasks", "8", "12000"]);
    let workers: BTreeSet<String> =
        poll("two running worker Pods", Duration::from_secs(120), || {
            let running: BTreeSet<String> = cluster
                .live_workers()
                .into_iter()
                .filter(|p| p.phase == "Running")
                .map(|p| p.name)
                .collect();
            if running.len() == 2 {
                Ok(running)
            } else {
                Err(format!("{:?}", cluster.pods()))
            }
        });
    poll(
        "four tasks running on the worker Pods",
        Duration::from_secs(120),
        || {
            let status = status_json(&cluster)?;
            let total = status["total"]["CPU"].as_f64().unwrap_or(0.0);
            // A resource with nothing left is left out of `available`.
            let available = status["available"]["CPU"].as_f64().unwrap_or(0.0);
            if total == 4.0 && available == 0.0 {
                Ok(())
            } else {
                Err(format!("CPU {available} free of {total}"))
            }
        },
    );

    let deleted_ms = now_ms();
    let deleted = Instant::now();
    let (ok, text) = cluster.kubectl(&["delete", "pod", &head.name, "--wait=false"]);
    assert!(ok, "{text}");
    let new_head = poll("a new head Pod", Duration::from_secs(120), || {
        head_running(&cluster).and_then(|p| {
            if p.name == head.name {
                Err("the old head still runs".to_string())
            } else {
                Ok(p)
            }
        })
    });
    eprintln!(
        "head Pod {} replaced by {} in {:?}",
        head.name,
        new_head.name,
        deleted.elapsed()
    );

    // The new head's autoscaler adopts both worker Pods from the records in Redis.
    poll(
        "the new autoscaler to report the two worker Pods",
        Duration::from_secs(120),
        || {
            let status = status_json(&cluster)?;
            let autoscaler = &status["autoscaler"];
            let reported = autoscaler["reported_ms"].as_u64().unwrap_or(0);
            let instances: BTreeSet<String> = autoscaler["instances"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["instance_id"].as_str().map(String::from))
                .collect();
            if reported > deleted_ms && instances == workers {
                Ok(())
            } else {
                Err(format!("reported at {reported}, instances {instances:?}"))
            }
        },
    );

    // The driver carries on to the end while no other worker Pod appears.
    let done = loop {
        let names: BTreeSet<String> = cluster
            .pods()
            .into_iter()
            .filter(|p| p.component == "worker")
            .map(|p| p.name)
            .collect();
        if names != workers {
            fail(
                &cluster,
                &format!("worker Pods changed from {workers:?} to {names:?}"),
            );
        }
        if let Some(done) = driver.try_value("done", Duration::from_millis(500)) {
            break done;
        }
        if driver.finished() || deleted.elapsed() > Duration::from_secs(240) {
            fail(
                &cluster,
                "the driver did not finish after the head was replaced",
            );
        }
    };
    assert_eq!(done, "8");
    eprintln!(
        "driver done {:?} after the head Pod's deletion",
        deleted.elapsed()
    );
    cluster.down();
}

/// Issue test 5: a second `up` changes nothing; `down` then `up` gives a working cluster.
fn up_is_idempotent_and_down_then_up_works() {
    let cluster = SimCluster::start(MINIRAY, "demo", &config("demo", 2, 30, 120));
    let address = cluster.up();
    let versions = || {
        cluster.kubectl_ok(&[
            "get",
            "deployments,services,configmaps,secrets,serviceaccounts,roles,rolebindings",
            "-l",
            "miniray.io/cluster=demo",
            "-o",
            "jsonpath={range .items[*]}{.kind}/{.metadata.name}={.metadata.resourceVersion} {end}",
        ])
    };
    let before = versions();
    let head_before = head_running(&cluster).unwrap_or_else(|e| fail(&cluster, &e));
    assert!(before.contains("Deployment/demo-head="), "{before}");
    let again = cluster.up();
    assert_eq!(again, address);
    assert_eq!(versions(), before, "a second up changed objects");
    let head_after = head_running(&cluster).unwrap_or_else(|e| fail(&cluster, &e));
    assert_eq!(
        head_after.name, head_before.name,
        "a second up replaced the head"
    );

    cluster.down();
    assert!(cluster.pods().is_empty());
    let address = cluster.up();
    let mut driver = Driver::start(&cluster, &address, &["tasks", "2", "100"]);
    let done = driver.try_value("done", Duration::from_secs(120));
    if done.as_deref() != Some("2") {
        fail(
            &cluster,
            &format!("after down and up the driver got {done:?}"),
        );
    }
    drop(driver);

    // The same driver as a job: submitted to the head Service's dashboard port, it runs in
    // the head Pod, and its output and exit status come back.
    let exe = std::env::current_exe().expect("this test's executable");
    let (ok, text) = cluster.miniray(&[
        "job",
        "submit",
        "--address",
        "http://demo-head.default.svc.cluster.local:8265",
        "--",
        &exe.to_string_lossy(),
        "driver",
        "tasks",
        "2",
        "100",
    ]);
    if !ok || !text.contains("done=2") {
        fail(&cluster, &format!("the job on the head Pod:\n{text}"));
    }
    cluster.down();
}

const TESTS: &[support::harness::Test] = &[
    (
        "tasks_scale_worker_pods_up_and_down",
        tasks_scale_worker_pods_up_and_down,
    ),
    (
        "unschedulable_and_deleted_worker_pods_are_replaced",
        unschedulable_and_deleted_worker_pods_are_replaced,
    ),
    (
        "a_deleted_head_pod_is_replaced_and_adopts_the_worker_pods",
        a_deleted_head_pod_is_replaced_and_adopts_the_worker_pods,
    ),
    (
        "up_is_idempotent_and_down_then_up_works",
        up_is_idempotent_and_down_then_up_works,
    ),
];

fn main() {
    support::harness::run(TESTS, driver);
}
