//! A GCS that writes through to Redis, killed and restarted on the same address: the
//! raylet keeps heartbeating to the new one, the job table survives, drivers still run, and
//! a live named actor is still found and called.

mod support;

use std::time::{Duration, Instant};

use miniray_common::config::DEFAULT_HEARTBEAT_INTERVAL;
use miniray_gcs::testing::RedisServer;
use miniray_proto::gcs_client::GcsClient;
use miniray_proto::{ActorState, GetAllActorsRequest, NodeInfo, NodeState};
use support::{Cluster, DRIVER_DEADLINE, DriverRun, Options, wait_until};

/// Whether the GCS reports an ALIVE actor named `name`.
fn actor_alive(cluster: &Cluster, name: &str) -> bool {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return false;
    };
    rt.block_on(async {
        let Ok(channel) = miniray_common::auth::connect(&cluster.gcs_address, &cluster.token).await
        else {
            return false;
        };
        match GcsClient::new(channel)
            .get_all_actors(GetAllActorsRequest {})
            .await
        {
            Ok(r) => r
                .into_inner()
                .actors
                .iter()
                .any(|a| a.name == name && a.state == ActorState::Alive as i32),
            Err(_) => false,
        }
    })
}

fn head(cluster: &Cluster) -> Option<NodeInfo> {
    let id = cluster.nodes[0].node_id;
    cluster.nodes_info().into_iter().find(|n| {
        n.address
            .as_ref()
            .is_some_and(|a| a.node_id == id.as_bytes())
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn a_gcs_restarted_on_the_same_redis_keeps_nodes_and_jobs() {
    let redis = RedisServer::start().expect("redis-server starts (is it installed?)");
    // A node timeout short enough that a raylet which stopped heartbeating would be marked
    // dead within the observation window below, long enough for a loaded machine.
    let node_timeout = Duration::from_secs(4);
    let mut cluster = Cluster::start(Options {
        redis: Some(redis.url()),
        node_timeout,
        ..Options::default()
    });

    let first = cluster.run_driver(&["basic"]);
    first.assert_success();
    assert_eq!(first.get("chained"), "2401");
    let before = cluster.jobs().expect("the job table");
    assert_eq!(before.len(), 1, "one job after one driver run");
    let first_job = before[0].clone();
    assert!(
        first_job.finished,
        "the first driver marked its job finished"
    );

    cluster.kill_gcs();
    cluster.restart_gcs();
    // The new GCS reloaded the node before it served, so anything newer than this is a
    // heartbeat it received.
    let restarted_ms = miniray_common::time::now_ms();

    wait_until(
        "the raylet to heartbeat to the restarted gcs",
        Duration::from_secs(30),
        || head(&cluster).is_some_and(|n| n.last_heartbeat_ms > restarted_ms),
    );
    // Keep watching for longer than the node timeout: a raylet that stopped after one
    // heartbeat would be marked dead in this window, one that keeps going stays alive and
    // its last heartbeat keeps moving.
    let window = node_timeout + 4 * DEFAULT_HEARTBEAT_INTERVAL;
    let start = Instant::now();
    let mut last_seen_ms = 0;
    while start.elapsed() < window {
        let node = head(&cluster).expect("the restarted gcs knows the node");
        assert_eq!(
            node.state,
            NodeState::Alive as i32,
            "the node died after the gcs restart: {}",
            node.death_reason
        );
        last_seen_ms = node.last_heartbeat_ms;
        std::thread::sleep(DEFAULT_HEARTBEAT_INTERVAL / 2);
    }
    let fresh = miniray_common::time::now_ms().saturating_sub(last_seen_ms);
    assert!(
        fresh < node_timeout.as_millis() as u64,
        "no heartbeat for {fresh} ms at the end of the window"
    );
    assert!(
        last_seen_ms > restarted_ms + 2 * DEFAULT_HEARTBEAT_INTERVAL.as_millis() as u64,
        "heartbeats did not continue after the restart"
    );

    let after = cluster.jobs().expect("the job table after the restart");
    let reloaded = after
        .iter()
        .find(|j| j.job_id == first_job.job_id)
        .unwrap_or_else(|| panic!("job {} lost in the restart", hex(&first_job.job_id)));
    assert_eq!(reloaded, &first_job, "the job changed in the restart");

    // The first driver is gone, so it must hold nothing: a lease it left behind keeps its
    // CPUs, and the second run would wait for them until its deadline.
    let idle_deadline = Duration::from_secs(10);
    let start = Instant::now();
    loop {
        let node = head(&cluster).expect("the restarted gcs knows the node");
        if node.num_leased_workers == 0 {
            break;
        }
        assert!(
            start.elapsed() < idle_deadline,
            "the first driver exited over {}s ago, yet the raylet still has {} leased \
             worker(s) (available {:?} of {:?}): its leases were neither returned nor reclaimed",
            idle_deadline.as_secs(),
            node.num_leased_workers,
            node.available.map(|r| r.amounts),
            node.total.map(|r| r.amounts),
        );
        std::thread::sleep(DEFAULT_HEARTBEAT_INTERVAL / 2);
    }

    let second = cluster.run_driver(&["basic"]);
    second.assert_success();
    assert_eq!(second.get("chained"), "2401");
    assert_eq!(
        second.get("sum100"),
        (0..100u64).map(|x| x * x).sum::<u64>().to_string()
    );
    let jobs = cluster.jobs().expect("the job table after the second run");
    assert_eq!(jobs.len(), 2, "both runs' jobs are in the table");

    assert!(cluster.stop().is_empty(), "segments left behind");
}

#[test]
fn a_named_actor_outlives_a_gcs_restart_on_redis() {
    let redis = RedisServer::start().expect("redis-server starts (is it installed?)");
    let mut cluster = Cluster::start(Options {
        redis: Some(redis.url()),
        ..Options::default()
    });
    // The owner creates the actor, bumps it once, and waits until it reads 11.
    let owner = cluster.spawn_driver(&["actor_named_owner", "restart-counter"]);
    wait_until("the named actor is alive", Duration::from_secs(60), || {
        actor_alive(&cluster, "restart-counter")
    });
    cluster.kill_gcs();
    cluster.restart_gcs();
    // A new driver finds the actor through the restarted GCS and bumps it ten times.
    let user = cluster.run_driver(&["actor_named_user", "restart-counter"]);
    user.assert_success();
    let owner = DriverRun::wait(owner, DRIVER_DEADLINE);
    owner.assert_success();
    assert_eq!(owner.get("owner_sees"), "11");
}
