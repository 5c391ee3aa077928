//! Whole clusters of real processes on loopback: tasks, spillback, objects across nodes,
//! failures, ownership, and a raylet killed mid-run.

mod support;

use std::time::Duration;

use support::{Cluster, Options, wait_until};

#[test]
fn tasks_chain_and_borrowed_refs_resolve() {
    let mut cluster = Cluster::start(Options::default());
    cluster.add_node(1.0, &[], false, 1 << 30);
    let run = cluster.run_driver(&["basic"]);
    run.assert_success();
    assert_eq!(run.get("chained"), "2401");
    assert_eq!(run.get("add"), "50");
    assert_eq!(
        run.get("sum100"),
        (0..100u64).map(|x| x * x).sum::<u64>().to_string()
    );
    assert_eq!(run.get("wait_ready"), "10");
    assert_eq!(run.get("wait_pending"), "90");
    assert_eq!(run.get("borrowed"), (49 + 2401).to_string());
    assert!(cluster.stop().is_empty(), "segments left behind");
}

#[test]
fn async_twins_work_inside_a_tokio_runtime() {
    let cluster = Cluster::start(Options::default());
    let run = cluster.run_driver(&["async"]);
    run.assert_success();
    assert_eq!(run.get("get_async"), "42");
    assert_eq!(
        run.get("get_all_async"),
        (0..10u64).map(|x| x * x).sum::<u64>().to_string()
    );
    assert_eq!(run.get("wait_async"), "10/0");
    assert_eq!(run.get("actor_async"), "42");
    assert_eq!(run.get("blocking_in_async_kind"), "invalid_argument");
}

#[test]
fn a_busy_node_spills_tasks_to_a_free_one() {
    let mut cluster = Cluster::start(Options {
        head_cpus: 1.0,
        ..Options::default()
    });
    let second = cluster.add_node(1.0, &[], false, 1 << 30);
    let run = cluster.run_driver(&["spill"]);
    run.assert_success();
    assert_eq!(run.get("distinct_nodes"), "2", "{}", run.stdout);
    let task_nodes = run.all("task_node");
    assert!(task_nodes.contains(&cluster.nodes[second].node_id.to_string()));
    assert!(task_nodes.contains(&cluster.nodes[0].node_id.to_string()));
}

#[test]
fn a_200_mib_object_crosses_nodes_intact_and_reads_in_place() {
    let mut cluster = Cluster::start(Options::default());
    let remote = cluster.add_node(1.0, &[("remote", 1.0)], false, 1 << 30);
    let run = cluster.run_driver(&["cross_node_object"]);
    run.assert_success();
    assert_eq!(
        run.get("remote_node"),
        cluster.nodes[remote].node_id.to_string()
    );
    assert_ne!(run.get("remote_node"), run.get("driver_node"));
    assert_eq!(run.get("to_remote_ok"), "true");
    assert_eq!(run.get("from_remote_ok"), "true");
    assert_eq!(run.get("from_remote_view"), "true:true");
    assert_eq!(run.get("local_view"), "true:true");
    assert_eq!(run.get("inline_view"), "false:[1, 2, 3]");
}

#[test]
fn ten_thousand_tasks_fan_out_and_reduce() {
    let mut cluster = Cluster::start(Options::default());
    cluster.add_node(1.0, &[], false, 1 << 30);
    let run = cluster.run_driver(&["fanout"]);
    run.assert_success();
    assert_eq!(run.get("total"), run.get("expected"));
}

#[test]
fn nested_tasks_do_not_deadlock_a_one_cpu_node() {
    let cluster = Cluster::start(Options {
        head_cpus: 1.0,
        ..Options::default()
    });
    let run = cluster.run_driver(&["nested"]);
    run.assert_success();
    assert_eq!(run.get("leaves"), "16");
}

#[test]
fn failures_come_back_as_typed_errors() {
    let cluster = Cluster::start(Options::default());
    let marker = cluster.session_dir.join("die-once-marker");
    let run = cluster.run_driver(&["failures", &marker.to_string_lossy()]);
    run.assert_success();
    assert_eq!(run.get("panic_kind"), "task_failed");
    assert!(run.get("panic_message").contains("boom at 42"));
    assert!(run.get("panic_message").contains("explode"));
    assert_eq!(run.get("abort_kind"), "worker_died");
    assert!(run.get("abort_message").contains("die"));
    assert_eq!(run.get("abort_once"), "ok:42");
    assert_eq!(run.get("unknown_kind"), "unknown_function");
    assert!(run.get("unknown_message").contains("no::such::function"));
    assert_eq!(run.get("bad_arg_kind"), "deserialize");
    assert_eq!(run.get("infeasible_kind"), "infeasible");
    assert_eq!(run.get("bad_option_kind"), "invalid_argument");
    assert_eq!(run.get("after"), "ok:81");
    assert_eq!(run.get("batch_before_ok"), "10");
    assert_eq!(run.get("batch_survivors"), "10");
    assert_eq!(run.get("batch_crasher"), "ok:42");
}

#[test]
fn tasks_survive_a_raylet_killed_mid_run() {
    let mut cluster = Cluster::start(Options {
        head_cpus: 1.0,
        node_timeout: Duration::from_secs(2),
        ..Options::default()
    });
    let victim = cluster.add_node(1.0, &[], false, 1 << 30);
    let victim_id = cluster.nodes[victim].node_id.to_string();
    let marks = cluster.session_dir.join("marks");
    std::fs::create_dir_all(&marks).expect("marks dir");
    let driver = std::process::Command::new(support::DRIVER)
        .args(["raylet_killed", &marks.to_string_lossy()])
        .env("MINIRAY_ADDRESS", &cluster.gcs_address)
        .env("MINIRAY_TOKEN", &cluster.token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("driver starts");
    // Kill the second node once a task has started there.
    wait_until(
        "a task to start on the second node",
        Duration::from_secs(60),
        || {
            std::fs::read_dir(&marks)
                .map(|d| {
                    d.flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with(&victim_id))
                })
                .unwrap_or(false)
        },
    );
    let raylet_pid = cluster.node_pid(victim).expect("the second raylet runs");
    let workers = support::children_of(raylet_pid);
    assert!(!workers.is_empty(), "the second raylet has started workers");
    cluster.kill_node(victim);
    // Workers watch their raylet and exit with it: none is left running unowned.
    wait_until(
        "the killed raylet's workers to exit",
        Duration::from_secs(20),
        || !workers.iter().any(|pid| support::process_running(*pid)),
    );
    let run = support::DriverRun::wait(driver, support::DRIVER_DEADLINE);
    run.assert_success();
    assert_eq!(run.get("values"), "[0, 1, 2, 3, 4, 5]");
    wait_until(
        "the killed node to be marked dead",
        Duration::from_secs(30),
        || {
            cluster.node_state(cluster.nodes[victim].node_id)
                == Some(miniray_proto::NodeState::Dead)
        },
    );
}

#[test]
fn dropping_the_last_reference_frees_plasma() {
    let cluster = Cluster::start(Options::default());
    let raylet = cluster.nodes[0].address.clone();
    let run = cluster.run_driver(&["refcount", &raylet]);
    run.assert_success();
    assert_eq!(run.get("before"), "0");
    let during: u64 = run.get("during").parse().expect("number");
    assert!(
        during >= 5 * (20 << 20),
        "plasma holds the objects while referenced: {during}"
    );
    assert_eq!(run.get("after"), "0");
}

#[test]
fn a_crashed_driver_does_not_keep_the_cluster_busy() {
    let cluster = Cluster::start(Options::default());
    let marks = cluster.session_dir.join("crash-marks");
    std::fs::create_dir_all(&marks).expect("marks dir");
    let crashed = cluster.run_driver(&["crash", &marks.to_string_lossy()]);
    assert!(!crashed.success, "the crash scenario aborts");
    // The GCS notices the dead driver, ends its job, and the raylet reclaims its workers.
    wait_until(
        "the crashed driver's leases to be reclaimed",
        Duration::from_secs(60),
        || {
            cluster.nodes_info().iter().any(|n| {
                n.num_leased_workers == 0
                    && n.available.as_ref().and_then(|a| a.amounts.get("CPU")) == Some(&2.0)
            })
        },
    );
    let run = cluster.run_driver(&["basic"]);
    run.assert_success();
    assert_eq!(run.get("chained"), "2401");
}

#[test]
fn a_full_object_store_says_so_and_recovers() {
    let cluster = Cluster::start(Options {
        object_store_memory: 256 << 20,
        ..Options::default()
    });
    let run = cluster.run_driver(&["store_full"]);
    run.assert_success();
    assert_eq!(run.get("third_kind"), "object_store_full");
    assert_eq!(run.get("after_free"), "ok:()");
    assert_eq!(run.get("kept_intact"), "true");
}

#[test]
fn an_unreachable_cluster_fails_fast_with_a_clear_error() {
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let run = support::DriverRun::wait(
        std::process::Command::new(support::DRIVER)
            .args(["unreachable", &port.to_string()])
            .env_remove("MINIRAY_ADDRESS")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("driver starts"),
        Duration::from_secs(60),
    );
    run.assert_success();
    assert_eq!(run.get("init_kind"), "cluster_unreachable");
    let elapsed: u64 = run.get("elapsed_ms").parse().expect("number");
    assert!(elapsed < 20_000, "took {elapsed} ms");
}

#[test]
fn unauthenticated_calls_are_refused() {
    let cluster = Cluster::start(Options::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let gcs =
            tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.gcs_address))
                .expect("uri")
                .connect()
                .await
                .expect("connect");
        let err = miniray_proto::gcs_client::GcsClient::new(gcs)
            .get_all_nodes(miniray_proto::GetAllNodesRequest {})
            .await
            .expect_err("refused");
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let raylet =
            tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.nodes[0].address))
                .expect("uri")
                .connect()
                .await
                .expect("connect");
        let err = miniray_proto::raylet_client::RayletClient::new(raylet)
            .get_node_stats(miniray_proto::GetNodeStatsRequest {})
            .await
            .expect_err("refused");
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    });

    // The CoreWorker servers of a worker (hosting an actor) and of a driver refuse too.
    let release = Release(cluster.session_dir.join("release-auth-probe"));
    let driver = cluster.spawn_driver(&["hold_actor", &release.0.to_string_lossy()]);
    rt.block_on(async {
        let (worker, driver) = core_worker_addresses(&cluster).await;
        for (who, addr) in [("worker", worker), ("driver", driver)] {
            let request = || miniray_proto::GetObjectStatusRequest {
                object_id: miniray_common::ObjectId::random().to_vec(),
                wait: false,
            };
            let call = |channel| async move {
                miniray_proto::core_worker_client::CoreWorkerClient::new(channel)
                    .get_object_status(request())
                    .await
                    .map(|_| ())
            };
            let bare = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("uri")
                .connect()
                .await
                .expect("connect");
            let err = miniray_proto::core_worker_client::CoreWorkerClient::new(bare)
                .get_object_status(request())
                .await
                .expect_err("refused without a token");
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{who}");
            let wrong = miniray_common::auth::connect(&addr, "wrong-token")
                .await
                .expect("connect");
            let err = call(wrong).await.expect_err("refused with a wrong token");
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{who}");
            let right = miniray_common::auth::connect(&addr, &cluster.token)
                .await
                .expect("connect");
            call(right).await.expect("answered with the token");
        }
    });
    drop(release);
    let run = support::DriverRun::wait(driver, support::DRIVER_DEADLINE);
    run.assert_success();
    assert_eq!(run.get("incr"), "2");
}

/// Creates its file when dropped: lets a `hold_actor` driver finish even if a test fails.
struct Release(std::path::PathBuf);

impl Drop for Release {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, b"go");
    }
}

/// `HOST:PORT` of the worker hosting the `auth-probe` actor and of the running driver.
async fn core_worker_addresses(cluster: &Cluster) -> (String, String) {
    let channel = miniray_common::auth::connect(&cluster.gcs_address, &cluster.token)
        .await
        .expect("connect to the gcs");
    let mut gcs = miniray_proto::gcs_client::GcsClient::new(channel);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let actors = gcs
            .get_all_actors(miniray_proto::GetAllActorsRequest {})
            .await
            .map(|r| r.into_inner().actors)
            .unwrap_or_default();
        let worker = actors
            .into_iter()
            .find(|a| a.name == "auth-probe" && a.state == miniray_proto::ActorState::Alive as i32)
            .and_then(|a| a.address);
        let jobs = gcs
            .get_all_jobs(miniray_proto::GetAllJobsRequest {})
            .await
            .map(|r| r.into_inner().jobs)
            .unwrap_or_default();
        let driver = jobs
            .into_iter()
            .find(|j| !j.finished)
            .and_then(|j| j.driver);
        if let (Some(w), Some(d)) = (worker, driver) {
            return (
                format!("{}:{}", w.host, w.port),
                format!("{}:{}", d.host, d.port),
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the actor and its driver never showed up in the gcs"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[test]
fn a_driver_without_an_address_starts_and_removes_its_own_cluster() {
    let child = std::process::Command::new(support::DRIVER)
        .arg("basic")
        .env_remove("MINIRAY_ADDRESS")
        .env_remove("MINIRAY_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("driver starts");
    let pid = child.id();
    let run = support::DriverRun::wait(child, support::DRIVER_DEADLINE);
    run.assert_success();
    assert_eq!(run.get("chained"), "2401");
    // Its private cluster's session is named after its pid.
    let env_tag = format!("_{pid}\"");
    wait_until(
        "the private cluster's processes to exit",
        Duration::from_secs(20),
        || processes_with_env_containing(&env_tag).is_empty(),
    );
    let tag = format!("_{pid}");
    let segments: Vec<String> = std::fs::read_dir("/dev/shm")
        .expect("/dev/shm")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("miniray-session_") && n.contains(&format!("{tag}-")))
        .collect();
    assert!(segments.is_empty(), "left behind: {segments:?}");
}

/// The environments of running processes that mention `needle`.
fn processes_with_env_containing(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(env) = std::fs::read(entry.path().join("environ")) {
            let env = String::from_utf8_lossy(&env).to_string();
            if env.contains(needle) {
                out.push(env);
            }
        }
    }
    out
}
