//! The GCS service through a real tonic client over loopback.

mod common;

use std::time::{Duration, Instant};

use common::{
    Client, DEADLINE, add_job, client_for, code, next_message, node_info, register_node, resources,
    start_with, subscribe, unregister_node,
};
use futures::StreamExt;
use miniray_common::auth::connect;
use miniray_common::config::TRANSFER_CHUNK_SIZE;
use miniray_common::{ErrorCode, JobId, NodeId, WorkerId};
use miniray_gcs::{GcsConfig, GcsServer, StorageConfig};
use miniray_proto::gcs_client::GcsClient;
use miniray_proto::*;
use tonic::Code;

/// Where the test nodes claim their raylet listens; nothing dials it here.
const NODE_PORT: u32 = 4000;

fn config() -> GcsConfig {
    let mut cfg = GcsConfig::new(common::TOKEN);
    cfg.session_name = "test-session".into();
    cfg
}

async fn heartbeat(client: &mut Client, id: NodeId, cpus: f64) -> bool {
    client
        .heartbeat(HeartbeatRequest {
            node_id: id.to_vec(),
            available: Some(resources(&[("CPU", cpus)])),
            demand: vec![ResourceDemand {
                shape: Some(resources(&[("CPU", 1.0)])),
                count: 3,
                infeasible: false,
            }],
            object_store_used: 42,
            num_workers: 2,
            num_leased_workers: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .accepted
}

async fn all_nodes(client: &mut Client) -> Vec<NodeInfo> {
    client
        .get_all_nodes(GetAllNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes
}

fn node_id_of(info: &NodeInfo) -> Vec<u8> {
    info.address.as_ref().unwrap().node_id.clone()
}

async fn get_job(client: &mut Client, id: &[u8]) -> Result<JobInfo, tonic::Status> {
    let reply = client
        .get_job(GetJobRequest {
            job_id: id.to_vec(),
        })
        .await?;
    Ok(reply.into_inner().job.unwrap())
}

async fn mark_job_finished(client: &mut Client, id: &[u8]) -> Result<(), tonic::Status> {
    client
        .mark_job_finished(MarkJobFinishedRequest {
            job_id: id.to_vec(),
        })
        .await
        .map(|_| ())
}

async fn all_jobs(client: &mut Client) -> Vec<JobInfo> {
    client
        .get_all_jobs(GetAllJobsRequest {})
        .await
        .unwrap()
        .into_inner()
        .jobs
}

async fn kv_get(client: &mut Client, ns: &str, key: &[u8]) -> Option<Vec<u8>> {
    let reply = client
        .kv_get(KvGetRequest {
            ns: ns.into(),
            key: key.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    reply.found.then_some(reply.value)
}

#[tokio::test]
async fn register_heartbeat_and_list_nodes() {
    let (gcs, mut client) = start_with(config()).await;
    let id = NodeId::random();
    register_node(&mut client, id, NODE_PORT).await;

    let nodes = all_nodes(&mut client).await;
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].state, NodeState::Alive as i32);
    assert_eq!(node_id_of(&nodes[0]), id.to_vec());
    assert!(nodes[0].last_heartbeat_ms > 0);
    let registered_at = nodes[0].last_heartbeat_ms;

    assert!(heartbeat(&mut client, id, 1.5).await);
    let node = all_nodes(&mut client).await.remove(0);
    assert_eq!(node.available.unwrap().amounts["CPU"], 1.5);
    assert_eq!(node.total.unwrap().amounts["CPU"], 4.0);
    assert_eq!(node.demand.len(), 1);
    assert_eq!(node.demand[0].count, 3);
    assert_eq!(node.object_store_used, 42);
    assert_eq!(node.num_workers, 2);
    assert_eq!(node.num_leased_workers, 1);
    assert!(node.last_heartbeat_ms >= registered_at);

    // Unknown nodes are told to exit.
    assert!(!heartbeat(&mut client, NodeId::random(), 1.0).await);

    // Unregister marks the node dead with the reason; it is listed but refused from then on.
    unregister_node(&mut client, id, "drained").await.unwrap();
    let node = all_nodes(&mut client).await.remove(0);
    assert_eq!(node.state, NodeState::Dead as i32);
    assert_eq!(node.death_reason, "drained");
    assert!(!heartbeat(&mut client, id, 1.0).await);

    // A dead id cannot come back.
    let err = client
        .register_node(RegisterNodeRequest {
            node: Some(node_info(id, NODE_PORT)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::AlreadyExists);

    let err = unregister_node(&mut client, NodeId::random(), "")
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::NotFound);

    let status = client
        .get_cluster_status(GetClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.session_name, "test-session");
    assert_eq!(status.nodes.len(), 1);
    gcs.shutdown().await;
}

#[tokio::test]
async fn silent_node_is_marked_dead_and_death_is_published() {
    let mut cfg = config();
    cfg.node_timeout = Duration::from_millis(500);
    let (gcs, mut client) = start_with(cfg).await;

    let mut events = subscribe(&mut client, Channel::NodeChanges).await;

    let silent = NodeId::random();
    let alive = NodeId::random();
    register_node(&mut client, silent, NODE_PORT).await;
    register_node(&mut client, alive, NODE_PORT).await;
    let first = next_message(&mut events).await;
    assert_eq!(first.channel, Channel::NodeChanges as i32);
    let Some(pub_message::Payload::Node(info)) = first.payload else {
        panic!("expected a node payload");
    };
    assert_eq!(node_id_of(&info), silent.to_vec());
    assert_eq!(info.state, NodeState::Alive as i32);
    let _second = next_message(&mut events).await;

    // Keep one node heartbeating while the other goes silent.
    let mut beat_client = client.clone();
    let beater = tokio::spawn(async move {
        loop {
            if !heartbeat(&mut beat_client, alive, 4.0).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    let start = Instant::now();
    let dead = loop {
        assert!(start.elapsed() < DEADLINE, "no death published");
        let msg = next_message(&mut events).await;
        if let Some(pub_message::Payload::Node(info)) = msg.payload
            && info.state == NodeState::Dead as i32
        {
            break info;
        }
    };
    assert_eq!(node_id_of(&dead), silent.to_vec());
    assert_eq!(dead.death_reason, "no heartbeat for 0.5s");
    // Not before the timeout.
    assert!(start.elapsed() >= Duration::from_millis(100));

    let nodes = all_nodes(&mut client).await;
    let state_of = |id: NodeId| {
        nodes
            .iter()
            .find(|n| node_id_of(n) == id.to_vec())
            .unwrap()
            .state
    };
    assert_eq!(state_of(silent), NodeState::Dead as i32);
    assert_eq!(state_of(alive), NodeState::Alive as i32);
    assert!(!heartbeat(&mut client, silent, 1.0).await);

    beater.abort();
    gcs.shutdown().await;
}

#[tokio::test]
async fn kv_semantics() {
    let (gcs, mut client) = start_with(config()).await;
    let put = |ns: &str, key: &[u8], value: &[u8], overwrite: bool| KvPutRequest {
        ns: ns.into(),
        key: key.to_vec(),
        value: value.to_vec(),
        overwrite,
    };
    let added = |r: tonic::Response<KvPutReply>| r.into_inner().added;
    assert!(added(
        client.kv_put(put("ns", b"k", b"v1", false)).await.unwrap()
    ));
    // overwrite=false keeps the existing value.
    assert!(!added(
        client.kv_put(put("ns", b"k", b"v2", false)).await.unwrap()
    ));
    assert_eq!(kv_get(&mut client, "ns", b"k").await, Some(b"v1".to_vec()));
    // overwrite=true replaces it; the key is not new.
    assert!(!added(
        client.kv_put(put("ns", b"k", b"v3", true)).await.unwrap()
    ));
    assert_eq!(kv_get(&mut client, "ns", b"k").await, Some(b"v3".to_vec()));
    // Namespaces are separate.
    assert_eq!(kv_get(&mut client, "other", b"k").await, None);
    assert!(added(
        client
            .kv_put(put("other", b"k", b"o", false))
            .await
            .unwrap()
    ));

    for key in [&b"actor:a"[..], b"actor:b", b"job:1"] {
        client.kv_put(put("ns", key, b"x", true)).await.unwrap();
    }
    let keys = client
        .kv_keys(KvKeysRequest {
            ns: "ns".into(),
            prefix: b"actor:".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(keys, vec![b"actor:a".to_vec(), b"actor:b".to_vec()]);

    let del = |key: &[u8]| KvDelRequest {
        ns: "ns".into(),
        key: key.to_vec(),
    };
    assert!(client.kv_del(del(b"k")).await.unwrap().into_inner().deleted);
    assert!(!client.kv_del(del(b"k")).await.unwrap().into_inner().deleted);
    assert_eq!(kv_get(&mut client, "ns", b"k").await, None);
    assert_eq!(
        kv_get(&mut client, "other", b"k").await,
        Some(b"o".to_vec())
    );

    let err = client.kv_put(put("ns", b"", b"v", true)).await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidArgument);
    gcs.shutdown().await;
}

#[tokio::test]
async fn job_table_and_job_events() {
    let (gcs, mut client) = start_with(config()).await;
    let mut events = subscribe(&mut client, Channel::JobChanges).await;

    let id = JobId::random();
    let exe_hash = blake3::hash(b"exe").to_hex().to_string();
    upload(&mut client, &exe_hash, 3, b"exe").await.unwrap();
    let job = JobInfo {
        job_id: id.to_vec(),
        executable_hash: exe_hash,
        driver: Some(WorkerAddress {
            worker_id: WorkerId::random().to_vec(),
            node_id: NodeId::random().to_vec(),
            host: "127.0.0.1".into(),
            port: 5000,
        }),
        env: [("A".to_string(), "1".to_string())].into(),
        ..Default::default()
    };
    client
        .add_job(AddJobRequest {
            job: Some(job.clone()),
        })
        .await
        .unwrap();
    let err = client
        .add_job(AddJobRequest {
            job: Some(job.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::AlreadyExists);

    let got = get_job(&mut client, &id.to_vec()).await.unwrap();
    assert!(!got.finished);
    assert!(got.start_time_ms > 0);
    assert_eq!(got.env["A"], "1");
    assert_eq!(got.executable_hash, job.executable_hash);

    let msg = next_message(&mut events).await;
    assert_eq!(msg.channel, Channel::JobChanges as i32);
    assert!(matches!(msg.payload, Some(pub_message::Payload::Job(j)) if !j.finished));

    mark_job_finished(&mut client, &id.to_vec()).await.unwrap();
    let got = get_job(&mut client, &id.to_vec()).await.unwrap();
    assert!(got.finished);
    assert!(got.end_time_ms >= got.start_time_ms);
    let msg = next_message(&mut events).await;
    assert!(matches!(msg.payload, Some(pub_message::Payload::Job(j)) if j.finished));

    assert_eq!(all_jobs(&mut client).await.len(), 1);

    let err = get_job(&mut client, &JobId::random().to_vec())
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::NotFound);
    let err = mark_job_finished(&mut client, &JobId::random().to_vec())
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::NotFound);
    gcs.shutdown().await;
}

/// Uploads `data` under `hash` announcing `total`, in transfer-sized chunks.
async fn upload(
    client: &mut Client,
    hash: &str,
    total: u64,
    data: &[u8],
) -> Result<(), tonic::Status> {
    let mut chunks: Vec<ExecutableChunk> = data
        .chunks(TRANSFER_CHUNK_SIZE)
        .map(|c| ExecutableChunk {
            data: c.to_vec().into(),
            ..Default::default()
        })
        .collect();
    if chunks.is_empty() {
        chunks.push(ExecutableChunk::default());
    }
    chunks[0].hash = hash.to_string();
    chunks[0].total_size = total;
    client
        .put_executable(futures::stream::iter(chunks))
        .await
        .map(|_| ())
}

async fn has(client: &mut Client, hash: &str) -> bool {
    client
        .has_executable(HasExecutableRequest { hash: hash.into() })
        .await
        .unwrap()
        .into_inner()
        .present
}

fn job_of(hash: &str) -> JobInfo {
    JobInfo {
        job_id: JobId::random().to_vec(),
        executable_hash: hash.to_string(),
        ..Default::default()
    }
}

async fn add(client: &mut Client, job: &JobInfo) -> Result<(), tonic::Status> {
    client
        .add_job(AddJobRequest {
            job: Some(job.clone()),
        })
        .await
        .map(|_| ())
}

/// With nothing kept for re-runs, an executable stays while a running job uses it and goes
/// with the last one; a job of
/// an executable that is not stored is refused with NOT_FOUND (the driver then uploads
/// again). Checked on both backends, and across a restart on Redis.
#[tokio::test]
async fn executables_of_finished_jobs_are_removed() {
    let redis = miniray_gcs::testing::RedisServer::start().unwrap();
    // Nothing kept for re-runs (see the next test for that).
    let mut memory_cfg = config();
    memory_cfg.unused_executable_ttl = Duration::ZERO;
    let mut redis_cfg = memory_cfg.clone();
    redis_cfg.storage = StorageConfig::Redis { url: redis.url() };
    for cfg in [memory_cfg, redis_cfg.clone()] {
        let (gcs, mut client) = start_with(cfg).await;
        let data = b"a build of some program".to_vec();
        let hash = blake3::hash(&data).to_hex().to_string();
        let err = add(&mut client, &job_of(&hash)).await.unwrap_err();
        assert_eq!(code(&err), ErrorCode::NotFound, "{err}");

        upload(&mut client, &hash, data.len() as u64, &data)
            .await
            .unwrap();
        let (a, b) = (job_of(&hash), job_of(&hash));
        add(&mut client, &a).await.unwrap();
        add(&mut client, &b).await.unwrap();
        mark_job_finished(&mut client, &a.job_id).await.unwrap();
        assert!(has(&mut client, &hash).await, "job b still runs it");
        mark_job_finished(&mut client, &b.job_id).await.unwrap();
        assert!(!has(&mut client, &hash).await, "no running job uses it");
        let late = job_of(&hash);
        let err = add(&mut client, &late).await.unwrap_err();
        assert_eq!(code(&err), ErrorCode::NotFound);
        assert_eq!(
            code(&get_job(&mut client, &late.job_id).await.unwrap_err()),
            ErrorCode::NotFound,
            "a refused job is not recorded"
        );
        // What the driver does then: upload again, add again.
        upload(&mut client, &hash, data.len() as u64, &data)
            .await
            .unwrap();
        add(&mut client, &late).await.unwrap();
        mark_job_finished(&mut client, &late.job_id).await.unwrap();
        assert!(!has(&mut client, &hash).await);
        gcs.shutdown().await;
    }

    // On Redis, an executable left by a job that finished while no GCS could remove it
    // (here: uploaded, never used) is removed when the next GCS starts, and one a running
    // job uses is kept.
    let (gcs, mut client) = start_with(redis_cfg.clone()).await;
    let (orphan, used) = (b"orphan".to_vec(), b"used".to_vec());
    let orphan_hash = blake3::hash(&orphan).to_hex().to_string();
    let used_hash = blake3::hash(&used).to_hex().to_string();
    upload(&mut client, &orphan_hash, orphan.len() as u64, &orphan)
        .await
        .unwrap();
    upload(&mut client, &used_hash, used.len() as u64, &used)
        .await
        .unwrap();
    add(&mut client, &job_of(&used_hash)).await.unwrap();
    gcs.shutdown().await;
    let (gcs, mut client) = start_with(redis_cfg).await;
    assert!(!has(&mut client, &orphan_hash).await);
    assert!(has(&mut client, &used_hash).await);
    gcs.shutdown().await;
}

/// The executable of the last finished job stays for `unused_executable_ttl`, so that its
/// driver run again need not upload it; only one executable no job uses is kept; its time
/// up, it goes.
#[tokio::test]
async fn the_last_finished_jobs_executable_is_kept_a_while_for_a_rerun() {
    let mut cfg = config();
    cfg.unused_executable_ttl = Duration::from_millis(300);
    let (gcs, mut client) = start_with(cfg).await;
    let (one, two) = (b"build one".to_vec(), b"build two".to_vec());
    let h1 = blake3::hash(&one).to_hex().to_string();
    let h2 = blake3::hash(&two).to_hex().to_string();
    upload(&mut client, &h1, one.len() as u64, &one)
        .await
        .unwrap();
    let first = job_of(&h1);
    add(&mut client, &first).await.unwrap();
    mark_job_finished(&mut client, &first.job_id).await.unwrap();
    assert!(has(&mut client, &h1).await, "kept for a rerun");

    // The rerun: added without an upload; its executable is in use again.
    let rerun = job_of(&h1);
    add(&mut client, &rerun).await.unwrap();
    // A rebuilt program runs and ends meanwhile: the rebuilt one is the one kept now.
    upload(&mut client, &h2, two.len() as u64, &two)
        .await
        .unwrap();
    let rebuilt = job_of(&h2);
    add(&mut client, &rebuilt).await.unwrap();
    mark_job_finished(&mut client, &rebuilt.job_id)
        .await
        .unwrap();
    assert!(has(&mut client, &h2).await);
    assert!(has(&mut client, &h1).await, "the rerun uses it");
    // The rerun ends: its executable is kept instead, and the rebuilt one goes.
    mark_job_finished(&mut client, &rerun.job_id).await.unwrap();
    assert!(has(&mut client, &h1).await);
    assert!(
        !has(&mut client, &h2).await,
        "one unused executable is kept, not two"
    );

    // Its time up, it goes, and a job of it waits for an upload again.
    let deadline = Instant::now() + DEADLINE;
    while has(&mut client, &h1).await {
        assert!(Instant::now() < deadline, "the kept executable never went");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let late = job_of(&h1);
    assert_eq!(
        code(&add(&mut client, &late).await.unwrap_err()),
        ErrorCode::NotFound
    );
    gcs.shutdown().await;
}

#[tokio::test]
async fn executable_round_trip_and_corrupt_uploads() {
    let (gcs, mut client) = start_with(config()).await;
    // Two and a bit chunks.
    let data: Vec<u8> = (0..2 * TRANSFER_CHUNK_SIZE + 12345)
        .map(|i| (i % 253) as u8)
        .collect();
    let hash = blake3::hash(&data).to_hex().to_string();
    assert!(!has(&mut client, &hash).await);

    // Corrupted content: one flipped byte.
    let mut corrupted = data.clone();
    corrupted[TRANSFER_CHUNK_SIZE + 7] ^= 0xff;
    let err = upload(&mut client, &hash, data.len() as u64, &corrupted)
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidArgument);
    // Truncated content.
    let err = upload(&mut client, &hash, data.len() as u64, &data[..100])
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidArgument);
    // Announced size below what arrives.
    let err = upload(&mut client, &hash, 10, &data).await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidArgument);
    assert!(
        !has(&mut client, &hash).await,
        "a rejected upload stored something"
    );

    upload(&mut client, &hash, data.len() as u64, &data)
        .await
        .unwrap();
    assert!(has(&mut client, &hash).await);

    let mut stream = client
        .get_executable(GetExecutableRequest { hash: hash.clone() })
        .await
        .unwrap()
        .into_inner();
    let mut received = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if chunks == 0 {
            assert_eq!(chunk.hash, hash);
            assert_eq!(chunk.total_size, data.len() as u64);
        }
        assert!(chunk.data.len() <= TRANSFER_CHUNK_SIZE);
        received.extend_from_slice(&chunk.data);
        chunks += 1;
    }
    assert_eq!(chunks, 3);
    assert!(received == data, "downloaded bytes differ");

    // An empty executable is valid and comes back as one empty chunk.
    let empty_hash = blake3::hash(b"").to_hex().to_string();
    upload(&mut client, &empty_hash, 0, b"").await.unwrap();
    let chunks: Vec<_> = client
        .get_executable(GetExecutableRequest {
            hash: empty_hash.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    assert_eq!(chunks.len(), 1);
    assert!(chunks[0].as_ref().unwrap().data.is_empty());

    let missing = blake3::hash(b"missing").to_hex().to_string();
    let err = client
        .get_executable(GetExecutableRequest { hash: missing })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::NotFound);
    let err = client
        .has_executable(HasExecutableRequest {
            hash: "not-a-hash".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidArgument);
    gcs.shutdown().await;
}

#[tokio::test]
async fn rpcs_without_the_token_are_refused() {
    let (gcs, _client) = start_with(config()).await;
    let url = format!("http://{}", gcs.address());
    let plain = tonic::transport::Channel::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let err = GcsClient::new(plain)
        .get_all_nodes(GetAllNodesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let wrong = connect(&gcs.address().to_string(), "wrong-token")
        .await
        .unwrap();
    let err = GcsClient::new(wrong)
        .kv_get(KvGetRequest {
            ns: String::new(),
            key: b"k".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    gcs.shutdown().await;

    // A GCS with an empty token would admit anyone: it does not start.
    let r = GcsServer::start(GcsConfig::new("")).await;
    assert!(
        matches!(
            r,
            Err(miniray_gcs::GcsError::Auth(
                miniray_common::auth::AuthError::EmptyToken
            ))
        ),
        "{:?}",
        r.err()
    );
}

#[tokio::test]
async fn bad_input_is_invalid_argument_and_changes_nothing() {
    let (gcs, mut client) = start_with(config()).await;
    let short_id = vec![1, 2, 3];

    let mut bad_node = node_info(NodeId::random(), NODE_PORT);
    bad_node.address.as_mut().unwrap().node_id = short_id.clone();
    let mut negative = node_info(NodeId::random(), NODE_PORT);
    negative.total = Some(resources(&[("CPU", -1.0)]));
    let mut no_address = node_info(NodeId::random(), NODE_PORT);
    no_address.address = None;
    for node in [bad_node, negative, no_address] {
        let err = client
            .register_node(RegisterNodeRequest {
                node: Some(node),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(code(&err), ErrorCode::InvalidArgument, "{err:?}");
    }
    assert!(all_nodes(&mut client).await.is_empty());

    let err = client
        .heartbeat(HeartbeatRequest {
            node_id: short_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidArgument);

    // A bad heartbeat of a known node leaves the node as it was.
    let id = NodeId::random();
    register_node(&mut client, id, NODE_PORT).await;
    let err = client
        .heartbeat(HeartbeatRequest {
            node_id: id.to_vec(),
            available: Some(resources(&[("CPU", f64::NAN)])),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidArgument);
    let node = all_nodes(&mut client).await.remove(0);
    assert_eq!(node.available.unwrap().amounts["CPU"], 4.0);

    let err = get_job(&mut client, &short_id).await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidArgument);
    let err = client
        .add_job(AddJobRequest {
            job: Some(JobInfo {
                job_id: JobId::random().to_vec(),
                driver: Some(WorkerAddress {
                    worker_id: short_id.clone(),
                    node_id: NodeId::random().to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidArgument);
    assert!(all_jobs(&mut client).await.is_empty());

    let err = client
        .subscribe(SubscribeRequest { channels: vec![77] })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidArgument);
    gcs.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_subscriptions_and_stops_serving() {
    let (gcs, mut client) = start_with(config()).await;
    let address = gcs.address();
    let mut events = client
        .subscribe(SubscribeRequest { channels: vec![] })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(DEADLINE, gcs.shutdown())
        .await
        .expect("shutdown hung");
    let end = tokio::time::timeout(DEADLINE, events.next())
        .await
        .expect("subscription not ended");
    assert!(!matches!(end, Some(Ok(_))), "unexpected message {end:?}");
    assert!(
        tokio::net::TcpStream::connect(address).await.is_err(),
        "still accepting connections"
    );
}

#[tokio::test]
async fn restart_on_redis_keeps_the_cluster_state() {
    let redis = miniray_gcs::testing::RedisServer::start().unwrap();
    let mut cfg = config();
    cfg.storage = StorageConfig::Redis { url: redis.url() };
    let (gcs, mut client) = start_with(cfg.clone()).await;

    let live = NodeId::random();
    let gone = NodeId::random();
    register_node(&mut client, live, NODE_PORT).await;
    register_node(&mut client, gone, NODE_PORT).await;
    assert!(heartbeat(&mut client, live, 2.5).await);
    unregister_node(&mut client, gone, "stopped").await.unwrap();
    let job = add_job(&mut client).await;
    client
        .kv_put(KvPutRequest {
            ns: "named_actors".into(),
            key: b"counter".to_vec(),
            value: b"actor-1".to_vec(),
            overwrite: false,
        })
        .await
        .unwrap();
    let exe = b"#!/bin/true\n".repeat(1000);
    let hash = blake3::hash(&exe).to_hex().to_string();
    upload(&mut client, &hash, exe.len() as u64, &exe)
        .await
        .unwrap();
    // A running job uses it, so the restarted GCS keeps it.
    add(&mut client, &job_of(&hash)).await.unwrap();
    gcs.shutdown().await;
    drop(client);

    let before_restart = miniray_common::time::now_ms();
    let (gcs, mut client) = start_with(cfg).await;
    let nodes = all_nodes(&mut client).await;
    assert_eq!(nodes.len(), 2);
    let find = |id: NodeId| {
        nodes
            .iter()
            .find(|n| node_id_of(n) == id.to_vec())
            .unwrap()
            .clone()
    };
    let live_info = find(live);
    assert_eq!(live_info.state, NodeState::Alive as i32);
    // Reloaded live nodes get a fresh grace period.
    assert!(live_info.last_heartbeat_ms >= before_restart);
    // Heartbeats are not persisted: the reloaded record is the registered one until the
    // raylet's next heartbeat.
    assert_eq!(live_info.available.unwrap().amounts["CPU"], 4.0);
    let gone_info = find(gone);
    assert_eq!(gone_info.state, NodeState::Dead as i32);
    assert_eq!(gone_info.death_reason, "stopped");
    // The surviving raylet keeps heartbeating into the new GCS; the dead one stays dead.
    assert!(heartbeat(&mut client, live, 3.0).await);
    assert!(!heartbeat(&mut client, gone, 3.0).await);
    let live_info = all_nodes(&mut client)
        .await
        .into_iter()
        .find(|n| node_id_of(n) == live.to_vec())
        .unwrap();
    assert_eq!(live_info.available.unwrap().amounts["CPU"], 3.0);

    let got = get_job(&mut client, &job.to_vec()).await.unwrap();
    assert!(!got.finished);
    assert_eq!(
        kv_get(&mut client, "named_actors", b"counter").await,
        Some(b"actor-1".to_vec())
    );
    assert!(has(&mut client, &hash).await);
    let downloaded: Vec<u8> = client
        .get_executable(GetExecutableRequest { hash })
        .await
        .unwrap()
        .into_inner()
        .map(|c| c.unwrap().data.to_vec())
        .concat()
        .await;
    assert!(downloaded == exe);
    gcs.shutdown().await;
}

#[tokio::test]
async fn wait_returns_after_a_shutdown_trigger() {
    let gcs = GcsServer::start(config()).await.unwrap();
    let trigger = gcs.shutdown_trigger();
    let mut client = client_for(&gcs).await;
    let waiter = tokio::spawn(gcs.wait());
    // Still serving while someone waits on it.
    assert!(all_nodes(&mut client).await.is_empty());
    trigger.shutdown();
    tokio::time::timeout(DEADLINE, waiter)
        .await
        .expect("wait did not return")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_reregistering_raylet_brings_back_its_jobs() {
    let (gcs, mut client) = start_with(config()).await;
    let known = add_job(&mut client).await;
    mark_job_finished(&mut client, &known.to_vec())
        .await
        .unwrap();
    let lost = JobId::random();
    let driver = WorkerAddress {
        worker_id: WorkerId::random().to_vec(),
        node_id: NodeId::random().to_vec(),
        host: "127.0.0.1".into(),
        port: 4100,
    };
    let hash = blake3::hash(b"exe").to_hex().to_string();
    let report = |job: JobId, finished: bool| JobInfo {
        job_id: job.to_vec(),
        executable_hash: hash.to_uppercase(),
        driver: Some(driver.clone()),
        start_time_ms: 7,
        finished,
        ..Default::default()
    };
    let node = NodeId::random();

    // A bad job record refuses the whole registration and changes nothing.
    let mut bad = report(JobId::random(), false);
    bad.job_id = vec![1, 2, 3];
    let err = client
        .register_node(RegisterNodeRequest {
            node: Some(node_info(node, NODE_PORT)),
            jobs: vec![report(lost, false), bad],
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidArgument);
    assert!(all_nodes(&mut client).await.is_empty());
    assert_eq!(
        code(&get_job(&mut client, &lost.to_vec()).await.unwrap_err()),
        ErrorCode::NotFound
    );

    let mut jobs_sub = subscribe(&mut client, Channel::JobChanges).await;
    client
        .register_node(RegisterNodeRequest {
            node: Some(node_info(node, NODE_PORT)),
            // A reported job counts as running; a job the table knows keeps its record.
            jobs: vec![report(lost, true), report(known, false)],
        })
        .await
        .unwrap();
    let restored = get_job(&mut client, &lost.to_vec()).await.unwrap();
    assert!(!restored.finished);
    assert_eq!(restored.executable_hash, hash);
    assert_eq!(restored.driver.as_ref(), Some(&driver));
    assert_eq!(restored.start_time_ms, 7);
    assert!(
        get_job(&mut client, &known.to_vec())
            .await
            .unwrap()
            .finished
    );
    match next_message(&mut jobs_sub).await.payload {
        Some(pub_message::Payload::Job(j)) => assert_eq!(j.job_id, lost.to_vec()),
        other => panic!("expected the restored job, got {other:?}"),
    }
    assert!(heartbeat(&mut client, node, 2.0).await);

    // The same id registering again (a GCS that lost it) is accepted; a dead id is not.
    register_node(&mut client, node, NODE_PORT).await;
    unregister_node(&mut client, node, "stopped").await.unwrap();
    let err = client
        .register_node(RegisterNodeRequest {
            node: Some(node_info(node, NODE_PORT)),
            jobs: vec![report(JobId::random(), false)],
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::AlreadyExists);
    assert_eq!(
        all_jobs(&mut client).await.len(),
        2,
        "a dead node restored a job"
    );
    gcs.shutdown().await;
}

async fn resource_state(client: &mut Client) -> ClusterResourceState {
    client
        .get_cluster_resource_state(GetClusterResourceStateRequest {})
        .await
        .unwrap()
        .into_inner()
        .state
        .unwrap()
}

#[tokio::test]
async fn resource_state_sums_demand_and_a_draining_node_is_published_and_kept() {
    let (gcs, mut client) = start_with(config()).await;
    let (a, b) = (NodeId::random(), NodeId::random());
    register_node(&mut client, a, NODE_PORT).await;
    register_node(&mut client, b, NODE_PORT + 1).await;
    // Each heartbeat reports 3 queued {CPU: 1} requests.
    assert!(heartbeat(&mut client, a, 1.0).await);
    assert!(heartbeat(&mut client, b, 1.0).await);
    let state = resource_state(&mut client).await;
    assert_eq!(state.nodes.len(), 2);
    assert_eq!(
        state.pending_leases,
        vec![ResourceDemandCount {
            shape: Some(resources(&[("CPU", 1.0)])),
            count: 6,
        }]
    );
    assert!(state.pending_actors.is_empty());
    assert!(state.constraint.is_empty());
    assert!(state.now_ms > 0);

    // Idle time and busy reasons are kept as reported; a draining heartbeat marks the node
    // DRAINING and publishes it.
    let mut changes = subscribe(&mut client, Channel::NodeChanges).await;
    let draining = HeartbeatRequest {
        node_id: a.to_vec(),
        available: Some(resources(&[("CPU", 4.0)])),
        idle_duration_ms: 1234,
        draining: true,
        ..Default::default()
    };
    assert!(
        client
            .heartbeat(draining.clone())
            .await
            .unwrap()
            .into_inner()
            .accepted
    );
    let Some(pub_message::Payload::Node(published)) = next_message(&mut changes).await.payload
    else {
        panic!("expected a node change")
    };
    assert_eq!(node_id_of(&published), a.to_vec());
    assert_eq!(published.state, NodeState::Draining as i32);
    assert!(
        client
            .heartbeat(HeartbeatRequest {
                node_id: b.to_vec(),
                busy_reasons: vec!["1 leased worker".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .accepted
    );
    let state = resource_state(&mut client).await;
    let by_id = |id: NodeId| {
        state
            .nodes
            .iter()
            .find(|n| node_id_of(n) == id.to_vec())
            .cloned()
            .unwrap()
    };
    assert_eq!(by_id(a).state, NodeState::Draining as i32);
    assert_eq!(by_id(a).idle_duration_ms, 1234);
    assert_eq!(by_id(b).busy_reasons, vec!["1 leased worker"]);
    assert_eq!(by_id(b).idle_duration_ms, 0);
    // A draining node keeps heartbeating; it is announced once.
    assert!(
        client
            .heartbeat(draining)
            .await
            .unwrap()
            .into_inner()
            .accepted
    );

    // Once it unregisters it is dead and out of the resource state.
    unregister_node(&mut client, a, "drained: idle")
        .await
        .unwrap();
    let Some(pub_message::Payload::Node(dead)) = next_message(&mut changes).await.payload else {
        panic!("expected a node change")
    };
    assert_eq!(dead.state, NodeState::Dead as i32);
    assert_eq!(dead.death_reason, "drained: idle");
    let state = resource_state(&mut client).await;
    assert_eq!(state.nodes.len(), 1);
    gcs.shutdown().await;
}

#[tokio::test]
async fn the_autoscaling_report_is_validated_and_served() {
    let (gcs, mut client) = start_with(config()).await;
    let get = async |client: &mut Client| {
        client
            .get_autoscaling_state(GetAutoscalingStateRequest {})
            .await
            .unwrap()
            .into_inner()
            .state
    };
    assert!(get(&mut client).await.is_none(), "no autoscaler reported");
    let missing = client
        .report_autoscaling_state(ReportAutoscalingStateRequest { state: None })
        .await
        .unwrap_err();
    assert_eq!(code(&missing), ErrorCode::InvalidArgument);
    let node_type = |cpus: f64| NodeTypeInfo {
        name: "cpu".into(),
        resources: Some(resources(&[("CPU", cpus)])),
        max_workers: 2,
        ..Default::default()
    };
    let bad = client
        .report_autoscaling_state(ReportAutoscalingStateRequest {
            state: Some(AutoscalingState {
                node_types: vec![node_type(-2.0)],
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(code(&bad), ErrorCode::InvalidArgument);
    assert!(bad.message().contains("cpu"), "{}", bad.message());
    assert!(
        get(&mut client).await.is_none(),
        "a bad report changes nothing"
    );

    client
        .report_autoscaling_state(ReportAutoscalingStateRequest {
            state: Some(AutoscalingState {
                node_types: vec![node_type(2.0)],
                recent_decisions: vec!["launching 1 x cpu".into()],
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let state = get(&mut client).await.unwrap();
    assert_eq!(state.node_types, vec![node_type(2.0)]);
    assert!(state.time_ms > 0, "stamped when the reporter left it out");
    let status = client
        .get_cluster_status(GetClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.autoscaler, Some(state));
    assert!(status.resource_state.is_some());
    gcs.shutdown().await;
}
