//! The GCS on a Redis that stalls: a real redis-server, a real GCS and two real raylets
//! heartbeating in this process.
//!
//! - An idle cluster makes no Redis writes: heartbeats live in the GCS's memory only.
//! - Redis frozen with `SIGSTOP` for twice the node timeout while raylets heartbeat and
//!   clients read: no node is marked dead, reads stay fast, the writes made during the
//!   stall land once Redis goes on, and writes after it work as before.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{DEADLINE, TOKEN, eventually, gcs_client, node_in_gcs, raylet_config, segment_path};
use miniray_common::JobId;
use miniray_gcs::storage::{JOBS_TABLE, NODES_TABLE, RedisStorage, Storage, kv_table};
use miniray_gcs::testing::RedisServer;
use miniray_gcs::{GcsConfig, GcsServer, StorageConfig};
use miniray_proto::{
    AddJobRequest, GetAllJobsRequest, GetAllNodesRequest, GetClusterStatusRequest, JobInfo,
    KvPutRequest, MarkJobFinishedRequest, NodeInfo, NodeState,
};
use miniray_raylet::Raylet;
use prost::Message;

/// Short, so the stall below outlasts it twice; still 30 heartbeats of a raylet.
const NODE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long Redis stays frozen.
const STALL: Duration = Duration::from_secs(6);
/// How long the idle cluster is watched for Redis writes.
const IDLE_WINDOW: Duration = Duration::from_secs(3);
/// Slowest read accepted while Redis is frozen: far below the stall, so a read that waited
/// for Redis fails the test, far above a read served from memory on a loaded machine.
const MAX_READ_LATENCY: Duration = Duration::from_millis(1000);

/// Redis commands that change data, summed.
fn writes(calls: &BTreeMap<String, u64>) -> u64 {
    ["hset", "hsetnx", "hdel", "set", "del"]
        .iter()
        .map(|c| calls.get(*c).copied().unwrap_or(0))
        .sum()
}

fn job(id: JobId) -> AddJobRequest {
    AddJobRequest {
        job: Some(JobInfo {
            job_id: id.to_vec(),
            ..Default::default()
        }),
    }
}

fn all_alive(nodes: &[NodeInfo], expected: usize) -> bool {
    nodes.len() == expected && nodes.iter().all(|n| n.state == NodeState::Alive as i32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_kills_no_node_and_loses_no_write() {
    let redis = RedisServer::start().expect("redis-server starts (is it installed?)");
    let mut cfg = GcsConfig::new(TOKEN);
    cfg.storage = StorageConfig::Redis { url: redis.url() };
    cfg.node_timeout = NODE_TIMEOUT;
    let gcs = GcsServer::start(cfg).await.expect("gcs starts");
    let session = tempfile::tempdir().expect("temp dir");
    let mut raylets = Vec::new();
    for _ in 0..2 {
        let cfg = raylet_config(&gcs, session.path(), &[("CPU", 1.0)]);
        raylets.push(Raylet::start(cfg).await.expect("raylet starts"));
    }
    let ids: Vec<_> = raylets.iter().map(|r| r.node_id()).collect();
    let mut client = gcs_client(&gcs).await;
    for id in &ids {
        eventually("the raylet to register", || {
            let mut c = client.clone();
            async move { node_in_gcs(&mut c, *id).await }
        })
        .await;
    }

    // An idle cluster: heartbeats flow, Redis sees no write.
    let before = redis.command_calls().expect("INFO commandstats");
    let first_beat = node_in_gcs(&mut client, ids[0]).await.unwrap();
    let window = Instant::now();
    tokio::time::sleep(IDLE_WINDOW).await;
    let after = redis.command_calls().expect("INFO commandstats");
    let last_beat = node_in_gcs(&mut client, ids[0]).await.unwrap();
    let idle_writes = writes(&after) - writes(&before);
    eprintln!(
        "idle 2-node cluster: {idle_writes} redis writes in {:.1}s ({:.2}/s)",
        window.elapsed().as_secs_f64(),
        idle_writes as f64 / window.elapsed().as_secs_f64()
    );
    assert!(
        last_beat.last_heartbeat_ms >= first_beat.last_heartbeat_ms + 1000,
        "the raylets did not heartbeat during the idle window"
    );
    assert_eq!(
        idle_writes, 0,
        "heartbeats were written to redis: {after:?}"
    );

    // Something written before the stall, to finish during it.
    let first_job = JobId::random();
    client.add_job(job(first_job)).await.expect("add job");

    // Readers under load for the whole stall, recording the slowest GetAllNodes and any
    // node that is not ALIVE.
    let stop = Arc::new(AtomicBool::new(false));
    let slowest_us = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (stop, slowest_us, reads) = (stop.clone(), slowest_us.clone(), reads.clone());
        let mut c = gcs_client(&gcs).await;
        readers.push(tokio::spawn(async move {
            let mut not_alive = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let start = Instant::now();
                let nodes = c
                    .get_all_nodes(GetAllNodesRequest {})
                    .await
                    .expect("GetAllNodes")
                    .into_inner()
                    .nodes;
                slowest_us.fetch_max(start.elapsed().as_micros() as u64, Ordering::SeqCst);
                if !all_alive(&nodes, 2) {
                    not_alive.push(nodes);
                }
                c.get_all_jobs(GetAllJobsRequest {})
                    .await
                    .expect("GetAllJobs");
                c.get_cluster_status(GetClusterStatusRequest {})
                    .await
                    .expect("GetClusterStatus");
                reads.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            not_alive
        }));
    }

    redis.pause().expect("SIGSTOP redis");
    let paused_at = Instant::now();
    // Writes made while Redis is frozen: they wait for it and must land afterwards.
    let stalled_job = JobId::random();
    let mut writers = Vec::new();
    {
        let mut c = client.clone();
        writers.push(tokio::spawn(async move {
            c.add_job(job(stalled_job)).await.map(|_| ())
        }));
        let mut c = client.clone();
        writers.push(tokio::spawn(async move {
            c.kv_put(KvPutRequest {
                ns: "stall".into(),
                key: b"written-during".to_vec(),
                value: b"the stall".to_vec(),
                overwrite: true,
            })
            .await
            .map(|_| ())
        }));
        let mut c = client.clone();
        writers.push(tokio::spawn(async move {
            c.mark_job_finished(MarkJobFinishedRequest {
                job_id: first_job.to_vec(),
            })
            .await
            .map(|_| ())
        }));
    }
    // Reads made early in the stall prove nothing: wait until it is long enough.
    while paused_at.elapsed() < STALL {
        assert!(
            writers.iter().all(|w| !w.is_finished()),
            "a write finished while redis was frozen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reads_during_stall = reads.load(Ordering::SeqCst);
    redis.resume().expect("SIGCONT redis");
    let resumed_at = Instant::now();
    let resumed_ms = miniray_common::time::now_ms();

    for w in writers {
        tokio::time::timeout(DEADLINE, w)
            .await
            .expect("a write made during the stall never finished")
            .expect("writer task")
            .expect("a write made during the stall failed");
    }
    let writes_landed_after = resumed_at.elapsed();
    // And writes after the stall work as before.
    let after_job = JobId::random();
    client.add_job(job(after_job)).await.expect("add job after");

    // Heartbeats keep the nodes alive after the stall, too.
    for id in &ids {
        eventually("a heartbeat after the stall", || {
            let mut c = client.clone();
            async move {
                node_in_gcs(&mut c, *id)
                    .await
                    .filter(|n| n.last_heartbeat_ms > resumed_ms)
            }
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut not_alive_seen = Vec::new();
    for r in readers {
        not_alive_seen.extend(r.await.expect("reader task"));
    }
    // Read after the readers ended, so a read that was held up by the stall and finished
    // after it counts too.
    let slowest_read = Duration::from_micros(slowest_us.load(Ordering::SeqCst));
    eprintln!(
        "redis frozen {:.1}s: {reads_during_stall} read rounds, slowest GetAllNodes {:.1} ms; \
         writes made during the stall landed {:.0} ms after SIGCONT",
        STALL.as_secs_f64(),
        slowest_read.as_secs_f64() * 1000.0,
        writes_landed_after.as_secs_f64() * 1000.0
    );
    assert!(
        slowest_read < MAX_READ_LATENCY,
        "a GetAllNodes took {slowest_read:?} with redis frozen for {STALL:?}"
    );
    assert!(
        reads_during_stall >= 20,
        "only {reads_during_stall} read rounds during the stall"
    );
    assert!(
        not_alive_seen.is_empty(),
        "nodes not ALIVE during the stall: {:?}",
        not_alive_seen[0]
    );

    // Everything is in Redis, as a restarted GCS would read it.
    let storage = RedisStorage::connect(&redis.url())
        .await
        .expect("connect to redis");
    let jobs: BTreeMap<Vec<u8>, JobInfo> = storage
        .get_all(JOBS_TABLE)
        .await
        .expect("jobs")
        .into_iter()
        .map(|(k, v)| (k, JobInfo::decode(v.as_slice()).expect("job record")))
        .collect();
    assert!(
        jobs.get(&first_job.to_vec()).expect("first job").finished,
        "the job finished during the stall is not finished in redis"
    );
    assert!(jobs.contains_key(&stalled_job.to_vec()), "stalled add lost");
    assert!(jobs.contains_key(&after_job.to_vec()), "add after lost");
    assert_eq!(
        storage
            .get(&kv_table("stall"), b"written-during")
            .await
            .expect("kv"),
        Some(b"the stall".to_vec())
    );
    let nodes = storage.get_all(NODES_TABLE).await.expect("nodes");
    assert_eq!(nodes.len(), 2);
    for (_, v) in nodes {
        let info = NodeInfo::decode(v.as_slice()).expect("node record");
        assert_eq!(info.state, NodeState::Alive as i32, "{}", info.death_reason);
    }

    for r in raylets {
        r.shutdown().await;
    }
    gcs.shutdown().await;
    for id in ids {
        assert!(
            !segment_path(session.path(), id).exists(),
            "segment left behind"
        );
    }
}
