//! What the autoscaler relies on from a raylet: its identity in the node table, idle time
//! and busy reasons in every heartbeat, and `DrainNode`, refused while the node holds a
//! lease or a primary copy and accepted when it is idle, after which the node is DRAINING,
//! then dead with the drain's reason, and the raylet has stopped.
//!
//! One test function on purpose: it points `MINIRAY_TMPDIR` (where raylets cache job
//! executables) at a temporary folder before any other thread exists (see `workers.rs`).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::*;
use miniray_common::auth::AuthedChannel;
use miniray_common::config::TRANSFER_CHUNK_SIZE;
use miniray_common::{JobId, NodeId, ObjectId, WorkerId};
use miniray_proto::gcs_client::GcsClient;
use miniray_proto::request_worker_lease_reply::Outcome;
use miniray_proto::*;
use miniray_raylet::Raylet;
use tokio_stream::StreamExt;

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_miniray-raylet-test-worker");

#[test]
fn idle_reporting_and_drain() {
    let tmp_root = tempfile::tempdir().unwrap();
    // SAFETY: no other thread exists yet in this test binary's single test (the runtime is
    // built below), so nothing reads the environment concurrently.
    unsafe { std::env::set_var(miniray_common::config::env::TMPDIR, tmp_root.path()) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(scenario());
}

async fn register_job(gcs: &mut GcsClient<AuthedChannel>) -> JobId {
    let bytes = std::fs::read(WORKER_BIN).unwrap();
    let hash = blake3::hash(&bytes).to_hex().to_string();
    let total = bytes.len() as u64;
    let chunks: Vec<ExecutableChunk> = bytes
        .chunks(TRANSFER_CHUNK_SIZE)
        .enumerate()
        .map(|(i, c)| ExecutableChunk {
            hash: if i == 0 { hash.clone() } else { String::new() },
            total_size: total,
            data: c.to_vec().into(),
        })
        .collect();
    gcs.put_executable(tokio_stream::iter(chunks))
        .await
        .unwrap();
    let job = JobId::random();
    gcs.add_job(AddJobRequest {
        job: Some(JobInfo {
            job_id: job.to_vec(),
            executable_hash: hash,
            env: HashMap::new(),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    job
}

/// The node's record in the GCS once it satisfies `ok`.
async fn node_when(
    g: &GcsClient<AuthedChannel>,
    node: NodeId,
    what: &str,
    ok: impl Fn(&NodeInfo) -> bool,
) -> NodeInfo {
    eventually(what, || {
        let mut g = g.clone();
        let ok = &ok;
        async move { node_in_gcs(&mut g, node).await.filter(ok) }
    })
    .await
}

async fn drain(
    c: &mut miniray_proto::raylet_client::RayletClient<AuthedChannel>,
) -> DrainNodeReply {
    c.drain_node(DrainNodeRequest {
        reason: "idle".into(),
    })
    .await
    .expect("drain answered")
    .into_inner()
}

async fn scenario() {
    let gcs = start_gcs().await;
    let mut g = gcs_client(&gcs).await;
    let session = tempfile::tempdir().unwrap();
    let mut cfg = raylet_config(&gcs, session.path(), &[("CPU", 1.0)]);
    cfg.object_store_memory = 8 << 20;
    cfg.cloud_instance_id = Some("local-7".into());
    cfg.node_type = Some("cpu".into());
    let raylet = Raylet::start(cfg).await.unwrap();
    let node = raylet.node_id();
    let mut c = raylet_client(&raylet).await;

    // Identity reaches the node table; an idle node's idle time grows.
    let first = node_when(&g, node, "the node idle for a while", |n| {
        n.idle_duration_ms >= 300 && n.busy_reasons.is_empty()
    })
    .await;
    assert_eq!(first.cloud_instance_id, "local-7");
    assert_eq!(first.node_type, "cpu");

    // Primary copies whose owner still holds them keep the node busy.
    let objects = [ObjectId::random(), ObjectId::random()];
    for object in objects {
        c.plasma_create(PlasmaCreateRequest {
            object_id: object.to_vec(),
            data_size: 16,
            owner: Some(WorkerAddress {
                worker_id: WorkerId::random().to_vec(),
                node_id: node.to_vec(),
                host: "127.0.0.1".into(),
                port: 1,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let refused = drain(&mut c).await;
    assert!(!refused.accepted);
    assert_eq!(refused.rejection_reason, "2 primary copies");
    c.plasma_delete(PlasmaDeleteRequest {
        object_ids: vec![objects[0].to_vec()],
    })
    .await
    .unwrap();
    assert_eq!(drain(&mut c).await.rejection_reason, "1 primary copy");
    c.plasma_delete(PlasmaDeleteRequest {
        object_ids: vec![objects[1].to_vec()],
    })
    .await
    .unwrap();

    // A held lease: busy in the heartbeat, and a drain is refused naming it.
    let job = register_job(&mut g).await;
    let reply = c
        .request_worker_lease(RequestWorkerLeaseRequest {
            job_id: job.to_vec(),
            resources: Some(ResourceSet {
                amounts: [("CPU".to_string(), 1.0)].into(),
            }),
            no_spillback: true,
            requester: None,
            grant_or_reject: false,
        })
        .await
        .unwrap()
        .into_inner();
    let Some(Outcome::Granted(grant)) = reply.outcome else {
        panic!("expected a grant, got {:?}", reply.outcome)
    };
    let busy = node_when(&g, node, "the node busy with its lease", |n| {
        n.idle_duration_ms == 0 && n.busy_reasons.iter().any(|r| r == "1 leased worker")
    })
    .await;
    assert_eq!(busy.busy_reasons, vec!["1 leased worker"]);
    let refused = drain(&mut c).await;
    assert!(!refused.accepted);
    assert_eq!(refused.rejection_reason, "1 leased worker");
    let still = node_in_gcs(&mut g, node).await.unwrap();
    assert_eq!(
        still.state,
        NodeState::Alive as i32,
        "a refused drain changes nothing"
    );

    // The lease ends: idle again, counted from then.
    let worker = grant.worker.unwrap();
    let pid = worker_pid(
        session.path(),
        WorkerId::from_bytes(&worker.worker_id).unwrap(),
    )
    .await;
    c.return_worker(ReturnWorkerRequest {
        lease_id: grant.lease_id,
        disconnect: false,
    })
    .await
    .unwrap();
    let idle = node_when(&g, node, "the node idle again", |n| {
        n.idle_duration_ms > 0 && n.busy_reasons.is_empty()
    })
    .await;
    assert!(idle.idle_duration_ms < first.idle_duration_ms + 60_000);

    // Accepted when idle: DRAINING is published, then the node dies with the drain's
    // reason and the raylet stops cleanly, its workers and segment gone.
    let mut changes = g
        .subscribe(SubscribeRequest {
            channels: vec![Channel::NodeChanges as i32],
        })
        .await
        .unwrap()
        .into_inner();
    let accepted = drain(&mut c).await;
    assert!(accepted.accepted, "{}", accepted.rejection_reason);
    let mut states = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while let Some(msg) = changes.next().await {
            let Some(pub_message::Payload::Node(info)) = msg.unwrap().payload else {
                continue;
            };
            if info.address.as_ref().map(|a| a.node_id.clone()) == Some(node.to_vec()) {
                states.push(info.state);
                if info.state == NodeState::Dead as i32 {
                    assert_eq!(info.death_reason, "drained: idle");
                    return;
                }
            }
        }
    })
    .await
    .expect("the node's death is published in time");
    assert_eq!(
        states,
        vec![NodeState::Draining as i32, NodeState::Dead as i32]
    );
    tokio::time::timeout(DEADLINE, raylet.wait())
        .await
        .expect("the drained raylet stops in time")
        .expect("a drained raylet stops without error");
    assert!(!segment_path(session.path(), node).exists());
    assert!(
        !PathBuf::from(format!("/proc/{pid}")).exists(),
        "the idle worker was stopped"
    );
    let dead = node_in_gcs(&mut g, node).await.unwrap();
    assert_eq!(dead.state, NodeState::Dead as i32);
    assert_eq!(dead.death_reason, "drained: idle");
    gcs.shutdown().await;
}

/// The pid a test worker printed into its stdout log.
async fn worker_pid(session: &std::path::Path, worker: WorkerId) -> i32 {
    let log = session.join("logs").join(format!("worker-{worker}.out"));
    eventually("the worker's pid in its log", || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).ok()?;
            text.lines()
                .find_map(|l| l.strip_prefix("pid="))
                .and_then(|p| p.trim().parse().ok())
        }
    })
    .await
}
