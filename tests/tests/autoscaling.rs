//! The runtime side of autoscaling, with real processes: a request that no node fits but a
//! node type of the autoscaling config does waits (its demand in the resource state) and
//! runs once such a node joins, while one no type fits fails at once; actors no node fits
//! are pending actors; the `request_resources` floor is set, cleared and survives a GCS
//! restart on Redis; a node is idle only with nothing running; a drain is refused while an
//! actor lives on the node and, once accepted, the raylet process exits and its node is
//! dead with the drain's reason.
//!
//! The tests stand in for the autoscaler: they report its state to the GCS themselves and
//! add nodes by hand.

mod support;

use std::path::Path;
use std::time::Duration;

use miniray_gcs::testing::RedisServer;
use miniray_proto::raylet_client::RayletClient;
use miniray_proto::{
    AutoscalingState, ClusterResourceState, DrainNodeReply, DrainNodeRequest,
    GetAutoscalingStateRequest, GetClusterResourceStateRequest, GetClusterStatusRequest, NodeInfo,
    NodeState, NodeTypeInfo, ReportAutoscalingStateRequest,
    RequestClusterResourceConstraintRequest, ResourceDemandCount, ResourceSet,
};
use support::{Cluster, DRIVER_DEADLINE, DriverRun, Options, wait_until};

/// How long a state the tests wait for may take on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(60);

fn set(pairs: &[(&str, f64)]) -> ResourceSet {
    ResourceSet {
        amounts: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
    }
}

/// Reports an autoscaling config with one worker node type, as the autoscaler would.
fn report_node_type(cluster: &Cluster, name: &str, resources: &[(&str, f64)]) {
    let state = AutoscalingState {
        node_types: vec![NodeTypeInfo {
            name: name.into(),
            resources: Some(set(resources)),
            min_workers: 0,
            max_workers: 2,
            is_head: false,
        }],
        max_workers: 2,
        ..Default::default()
    };
    cluster
        .gcs_call(async |gcs| {
            gcs.report_autoscaling_state(ReportAutoscalingStateRequest { state: Some(state) })
                .await
        })
        .expect("the autoscaling state is reported");
}

fn resource_state(cluster: &Cluster) -> ClusterResourceState {
    cluster
        .gcs_call(async |gcs| {
            gcs.get_cluster_resource_state(GetClusterResourceStateRequest {})
                .await
        })
        .expect("the resource state")
        .into_inner()
        .state
        .expect("a state")
}

fn count_of(demand: &[ResourceDemandCount], shape: &ResourceSet) -> u64 {
    demand
        .iter()
        .filter(|d| d.shape.as_ref() == Some(shape))
        .map(|d| d.count)
        .sum()
}

fn node_info(cluster: &Cluster, index: usize) -> Option<NodeInfo> {
    let id = cluster.nodes[index].node_id;
    cluster.nodes_info().into_iter().find(|n| {
        n.address
            .as_ref()
            .is_some_and(|a| a.node_id == id.as_bytes())
    })
}

fn wait_for_file(path: &Path, driver: &mut std::process::Child) {
    wait_until(&format!("{}", path.display()), DEADLINE, || {
        if let Ok(Some(status)) = driver.try_wait() {
            panic!("the driver exited early ({status})");
        }
        path.exists()
    });
}

fn drain(cluster: &Cluster, index: usize) -> DrainNodeReply {
    let address = cluster.nodes[index].address.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let channel = miniray_common::auth::connect(&address, &cluster.token)
            .await
            .expect("the raylet is reachable");
        RayletClient::new(channel)
            .drain_node(DrainNodeRequest {
                reason: "idle".into(),
            })
            .await
            .expect("drain answered")
            .into_inner()
    })
}

fn stop_clean(mut cluster: Cluster) {
    let leftovers = cluster.stop();
    assert!(leftovers.is_empty(), "segments left behind: {leftovers:?}");
}

/// Nodes that ran a task of the `as_spread` scenario, from its marker files.
fn marked_nodes(dir: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.rsplit_once('-').map(|(node, _)| node.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A head with no CPU (as on Kubernetes) and one busy node: lease requests that the busy
/// node cannot take wait at the head, and go to the nodes that join once they have room,
/// instead of queueing on the busy node while the new ones stay idle.
#[test]
fn waiting_tasks_go_to_nodes_that_join_not_to_the_busy_one() {
    let mut cluster = Cluster::start(Options {
        head_cpus: 0.0,
        object_store_memory: 64 << 20,
        ..Options::default()
    });
    let first = cluster.add_node(1.0, &[], false, 64 << 20);
    let marks = cluster.session_dir.join("marks");
    std::fs::create_dir_all(&marks).expect("marks dir");
    let mut driver = cluster.spawn_driver(&["as_spread", &marks.to_string_lossy()]);
    let first_id = cluster.nodes[first].node_id.to_string();
    wait_until("a task to start on the first node", DEADLINE, || {
        if let Ok(Some(status)) = driver.try_wait() {
            panic!("the driver exited early ({status})");
        }
        marked_nodes(&marks).contains(&first_id)
    });
    // Both waiting requests wait at the head (the driver's home), not on the busy node.
    let one_cpu = set(&[("CPU", 1.0)]);
    wait_until("two one-CPU leases queued at the head", DEADLINE, || {
        node_info(&cluster, 0).is_some_and(|n| {
            n.demand
                .iter()
                .any(|d| d.shape.as_ref() == Some(&one_cpu) && d.count == 2)
        })
    });
    assert_eq!(
        count_of(&resource_state(&cluster).pending_leases, &one_cpu),
        2
    );
    cluster.add_node(1.0, &[], false, 64 << 20);
    cluster.add_node(1.0, &[], false, 64 << 20);
    wait_until("tasks running on three nodes at once", DEADLINE, || {
        if let Ok(Some(status)) = driver.try_wait() {
            panic!("the driver exited early ({status})");
        }
        marked_nodes(&marks).len() == 3
    });
    std::fs::write(marks.join("release"), b"x").expect("release");
    let run = DriverRun::wait(driver, DRIVER_DEADLINE);
    run.assert_success();
    assert_eq!(run.get("distinct_nodes"), "3");
    stop_clean(cluster);
}

#[test]
fn a_task_only_a_node_type_fits_waits_for_that_node_and_one_no_type_fits_fails_at_once() {
    let mut cluster = Cluster::start(Options {
        head_cpus: 1.0,
        object_store_memory: 64 << 20,
        ..Options::default()
    });
    report_node_type(&cluster, "cpu2", &[("CPU", 2.0)]);
    let mut driver = cluster.spawn_driver(&["as_wait"]);

    // The 2-CPU task waits queued at the head: its demand is in the resource state.
    let two_cpus = set(&[("CPU", 2.0)]);
    wait_until("the 2-CPU lease among pending leases", DEADLINE, || {
        if let Ok(Some(status)) = driver.try_wait() {
            panic!("the driver exited early ({status})");
        }
        count_of(&resource_state(&cluster).pending_leases, &two_cpus) == 1
    });
    let node = cluster.add_node(2.0, &[], false, 64 << 20);
    let run = DriverRun::wait(driver, DRIVER_DEADLINE);
    run.assert_success();

    assert_eq!(run.get("gpu_kind"), "infeasible", "{}", run.stdout);
    let message = run.get("gpu_message");
    assert!(
        message.contains("GPU") && message.contains("node type"),
        "{message}"
    );
    let elapsed: u64 = run.get("gpu_elapsed_ms").parse().expect("a number");
    assert!(
        elapsed < 10_000,
        "the GPU task failed only after {elapsed} ms"
    );
    assert_eq!(
        run.get("two_cpu"),
        format!("ok:{:?}", cluster.nodes[node].node_id.to_string()),
        "the 2-CPU task ran on the new node"
    );
    wait_until("no pending lease", DEADLINE, || {
        resource_state(&cluster).pending_leases.is_empty()
    });
    stop_clean(cluster);
}

#[test]
fn an_actor_no_node_fits_is_pending_and_its_node_drains_only_once_the_actor_is_gone() {
    let mut cluster = Cluster::start(Options {
        head_cpus: 1.0,
        object_store_memory: 64 << 20,
        ..Options::default()
    });
    report_node_type(&cluster, "big", &[("CPU", 1.0), ("big", 1.0)]);
    let dir = tempfile::tempdir().expect("a temp dir");
    let folder = dir.path().display().to_string();
    let mut driver = cluster.spawn_driver(&["as_pending_actor", &folder]);

    let big = set(&[("big", 1.0)]);
    wait_until("the actor among pending actors", DEADLINE, || {
        if let Ok(Some(status)) = driver.try_wait() {
            panic!("the driver exited early ({status})");
        }
        count_of(&resource_state(&cluster).pending_actors, &big) == 1
    });
    // A node of that type joins: the actor is placed there and no longer pending.
    let node = cluster.add_node(1.0, &[("big", 1.0)], false, 64 << 20);
    wait_for_file(&dir.path().join("actor_alive"), &mut driver);
    assert!(resource_state(&cluster).pending_actors.is_empty());

    // The head is never drained.
    let head = drain(&cluster, 0);
    assert!(!head.accepted);
    assert_eq!(head.rejection_reason, "the head node is never drained");

    // The actor keeps its node busy: a drain is refused and changes nothing.
    let refused = drain(&cluster, node);
    assert!(!refused.accepted);
    assert_eq!(refused.rejection_reason, "1 leased worker");
    assert_eq!(
        node_info(&cluster, node).map(|n| n.state),
        Some(NodeState::Alive as i32)
    );

    std::fs::write(dir.path().join("actor_release"), b"x").expect("release");
    let run = DriverRun::wait(driver, DRIVER_DEADLINE);
    run.assert_success();
    assert_eq!(run.get("incr"), "1");

    // Once idle the drain is accepted: the raylet process exits, the node is dead with the
    // drain's reason.
    wait_until("the node idle", DEADLINE, || {
        node_info(&cluster, node).is_some_and(|n| n.busy_reasons.is_empty())
    });
    let accepted = drain(&cluster, node);
    assert!(accepted.accepted, "{}", accepted.rejection_reason);
    wait_until("the drained raylet to exit", DEADLINE, || {
        !cluster.node_running(node)
    });
    let dead = node_info(&cluster, node).expect("the node's record");
    assert_eq!(dead.state, NodeState::Dead as i32);
    assert_eq!(dead.death_reason, "drained: idle");
    assert!(
        resource_state(&cluster).nodes.iter().all(|n| n
            .address
            .as_ref()
            .map(|a| a.node_id.as_slice())
            != Some(cluster.nodes[node].node_id.as_bytes())),
        "a dead node is not in the resource state"
    );
    stop_clean(cluster);
}

#[test]
fn request_resources_sets_the_floor_and_an_empty_request_clears_it() {
    let cluster = Cluster::start(Options {
        head_cpus: 1.0,
        object_store_memory: 64 << 20,
        ..Options::default()
    });
    let dir = tempfile::tempdir().expect("a temp dir");
    let folder = dir.path().display().to_string();
    let mut driver = cluster.spawn_driver(&["as_floor", &folder]);
    wait_for_file(&dir.path().join("set"), &mut driver);

    let two_cpus = set(&[("CPU", 2.0)]);
    assert_eq!(
        resource_state(&cluster).constraint,
        vec![two_cpus.clone(), two_cpus.clone()]
    );
    let status = cluster
        .gcs_call(async |gcs| gcs.get_cluster_status(GetClusterStatusRequest {}).await)
        .expect("the cluster status")
        .into_inner();
    assert_eq!(
        status.resource_state.expect("a resource state").constraint,
        vec![two_cpus.clone(), two_cpus]
    );
    assert!(status.autoscaler.is_none(), "no autoscaler has reported");

    std::fs::write(dir.path().join("clear"), b"x").expect("clear");
    let run = DriverRun::wait(driver, DRIVER_DEADLINE);
    run.assert_success();
    assert_eq!(run.get("bad_kind"), "invalid_argument", "{}", run.stdout);
    assert!(run.get("bad_message").contains("CPU"), "{}", run.stdout);
    assert_eq!(run.get("cleared"), "1");
    assert!(resource_state(&cluster).constraint.is_empty());
    stop_clean(cluster);
}

#[test]
fn the_floor_survives_a_gcs_restart_on_redis_and_the_report_does_not() {
    let redis = RedisServer::start().expect("redis-server starts (is it installed?)");
    let mut cluster = Cluster::start(Options {
        head_cpus: 1.0,
        object_store_memory: 64 << 20,
        redis: Some(redis.url()),
        ..Options::default()
    });
    let floor = vec![set(&[("CPU", 4.0)]), set(&[("CPU", 1.0), ("GPU", 1.0)])];
    let request = floor.clone();
    cluster
        .gcs_call(async |gcs| {
            gcs.request_cluster_resource_constraint(RequestClusterResourceConstraintRequest {
                bundles: request,
            })
            .await
        })
        .expect("the floor is set");
    // A bad amount is refused with a typed error and changes nothing.
    let bad = cluster
        .gcs_call(async |gcs| {
            gcs.request_cluster_resource_constraint(RequestClusterResourceConstraintRequest {
                bundles: vec![set(&[("CPU", f64::NAN)])],
            })
            .await
        })
        .expect_err("a NaN amount is refused");
    assert_eq!(
        miniray_common::ErrorCode::of_status(&bad),
        miniray_common::ErrorCode::InvalidArgument
    );
    assert_eq!(resource_state(&cluster).constraint, floor);
    report_node_type(&cluster, "cpu", &[("CPU", 2.0)]);
    let reported = cluster
        .gcs_call(async |gcs| {
            gcs.get_autoscaling_state(GetAutoscalingStateRequest {})
                .await
        })
        .expect("the autoscaling state")
        .into_inner()
        .state
        .expect("the reported state");
    assert_eq!(reported.node_types[0].name, "cpu");

    cluster.kill_gcs();
    cluster.restart_gcs();
    assert_eq!(resource_state(&cluster).constraint, floor);
    let after = cluster
        .gcs_call(async |gcs| {
            gcs.get_autoscaling_state(GetAutoscalingStateRequest {})
                .await
        })
        .expect("the autoscaling state")
        .into_inner();
    assert!(
        after.state.is_none(),
        "the report lives in memory: the autoscaler reports again"
    );
    stop_clean(cluster);
}

#[test]
fn a_node_is_idle_only_while_nothing_runs_on_it() {
    let cluster = Cluster::start(Options {
        head_cpus: 1.0,
        object_store_memory: 64 << 20,
        ..Options::default()
    });
    let head = |c: &Cluster| node_info(c, 0).expect("the head's record");

    // Nothing running: idle, and the idle time grows.
    wait_until("the head idle for a while", DEADLINE, || {
        let n = head(&cluster);
        n.idle_duration_ms >= 500 && n.busy_reasons.is_empty()
    });
    let earlier = head(&cluster).idle_duration_ms;
    wait_until("the idle time to grow", DEADLINE, || {
        head(&cluster).idle_duration_ms > earlier
    });

    let dir = tempfile::tempdir().expect("a temp dir");
    let folder = dir.path().display().to_string();
    let mut driver = cluster.spawn_driver(&["as_hold", &folder]);

    // A task runs: busy, with its reason.
    wait_for_file(&dir.path().join("task_started"), &mut driver);
    wait_until("the head busy with the task", DEADLINE, || {
        let n = head(&cluster);
        n.idle_duration_ms == 0 && n.busy_reasons == ["1 leased worker"]
    });
    std::fs::write(dir.path().join("task_release"), b"x").expect("release the task");

    // An actor lives: still busy, also after the task's lease is long returned.
    wait_for_file(&dir.path().join("actor_alive"), &mut driver);
    let alive_at = head(&cluster).last_heartbeat_ms;
    wait_until("a heartbeat 1 s after the actor came up", DEADLINE, || {
        head(&cluster).last_heartbeat_ms > alive_at + 1000
    });
    let n = head(&cluster);
    assert_eq!(n.idle_duration_ms, 0);
    assert_eq!(n.busy_reasons, ["1 leased worker"]);

    // The actor is killed and the driver gone: idle again.
    std::fs::write(dir.path().join("actor_release"), b"x").expect("release the actor");
    let run = DriverRun::wait(driver, DRIVER_DEADLINE);
    run.assert_success();
    assert_eq!(run.get("task"), "1");
    wait_until("the head idle again", DEADLINE, || {
        let n = head(&cluster);
        n.idle_duration_ms > 0 && n.busy_reasons.is_empty()
    });
    stop_clean(cluster);
}
