//! Setup shared by the GCS integration tests: starting a GCS with the test token, an
//! authenticated client with the message size limits every real client uses, and the
//! requests most tests begin with (a job, a node, an actor).
//!
//! Each test file includes this with `mod common;`, so an item one file does not use carries
//! `#[allow(dead_code)]`.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use miniray_common::auth::{AuthedChannel, connect};
use miniray_common::config::MAX_MESSAGE_SIZE;
use miniray_common::{ActorId, ErrorCode, JobId, NodeId, TaskId};
use miniray_gcs::storage::{MemoryStorage, Storage};
use miniray_gcs::{GcsConfig, GcsHandle, GcsServer};
use miniray_proto::gcs_client::GcsClient;
use miniray_proto::*;

pub const TOKEN: &str = "test-token";
/// Generous deadline for anything asynchronous on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub type Client = GcsClient<AuthedChannel>;

/// A client of `gcs` authenticated with [`TOKEN`], with the same message size limits as the
/// servers so large replies (executables, tables) are not cut off by tonic's 4 MiB default.
pub async fn client_for(gcs: &GcsHandle) -> Client {
    let channel = connect(&gcs.address().to_string(), TOKEN).await.unwrap();
    GcsClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// A GCS started from `cfg` (its storage included), and a client of it.
#[allow(dead_code)]
pub async fn start_with(cfg: GcsConfig) -> (GcsHandle, Client) {
    let gcs = GcsServer::start(cfg).await.unwrap();
    let client = client_for(&gcs).await;
    (gcs, client)
}

/// A GCS on `storage`, and a client of it. Passing the same storage to a second start
/// simulates a GCS restart.
#[allow(dead_code)]
pub async fn start_on(storage: Arc<dyn Storage>) -> (GcsHandle, Client) {
    let gcs = GcsServer::start_with_storage(GcsConfig::new(TOKEN), storage)
        .await
        .unwrap();
    let client = client_for(&gcs).await;
    (gcs, client)
}

/// A GCS on fresh in-memory storage, and a client of it.
#[allow(dead_code)]
pub async fn start() -> (GcsHandle, Client) {
    start_on(Arc::new(MemoryStorage::new())).await
}

#[allow(dead_code)]
pub fn code(status: &tonic::Status) -> ErrorCode {
    ErrorCode::of_status(status)
}

pub fn resources(pairs: &[(&str, f64)]) -> ResourceSet {
    ResourceSet {
        amounts: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
    }
}

/// A node on 127.0.0.1:`port` with 4 CPUs, all available, and a 1 GiB object store.
pub fn node_info(id: NodeId, port: u32) -> NodeInfo {
    NodeInfo {
        address: Some(NodeAddress {
            node_id: id.to_vec(),
            host: "127.0.0.1".into(),
            port,
        }),
        total: Some(resources(&[("CPU", 4.0)])),
        available: Some(resources(&[("CPU", 4.0)])),
        object_store_capacity: 1 << 30,
        ..Default::default()
    }
}

/// Registers [`node_info`]`(id, port)`.
pub async fn register_node(client: &mut Client, id: NodeId, port: u32) {
    client
        .register_node(RegisterNodeRequest {
            node: Some(node_info(id, port)),
            ..Default::default()
        })
        .await
        .unwrap();
}

#[allow(dead_code)]
pub async fn unregister_node(
    client: &mut Client,
    id: NodeId,
    reason: &str,
) -> Result<(), tonic::Status> {
    client
        .unregister_node(UnregisterNodeRequest {
            node_id: id.to_vec(),
            reason: reason.into(),
        })
        .await
        .map(|_| ())
}

/// Adds a job with a fresh id and nothing else set.
pub async fn add_job(client: &mut Client) -> JobId {
    let job = JobId::random();
    client
        .add_job(AddJobRequest {
            job: Some(JobInfo {
                job_id: job.to_vec(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    job
}

/// A valid unnamed, ownerless actor of `class` needing 1 CPU, with a fresh id and its
/// creation task (which must name the same actor and class).
#[allow(dead_code)]
pub fn actor_info(job: JobId, class: &str, max_restarts: i64) -> ActorInfo {
    let id = ActorId::random();
    ActorInfo {
        actor_id: id.to_vec(),
        job_id: job.to_vec(),
        class_name: class.into(),
        max_restarts,
        resources: Some(resources(&[("CPU", 1.0)])),
        creation: Some(TaskSpec {
            task_id: TaskId::random().to_vec(),
            job_id: job.to_vec(),
            function_name: class.into(),
            actor_id: id.to_vec(),
            actor_creation: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[allow(dead_code)]
pub async fn kill(client: &mut Client, id: &[u8], reason: &str) -> Result<(), tonic::Status> {
    client
        .kill_actor(KillActorRequest {
            actor_id: id.to_vec(),
            reason: reason.into(),
        })
        .await
        .map(|_| ())
}

/// Waits (server side, up to `timeout_ms`) until the actor is ALIVE with at least
/// `min_restarts` restarts, or DEAD, and returns it as it then is.
#[allow(dead_code)]
pub async fn wait_for_actor(
    client: &mut Client,
    id: &[u8],
    min_restarts: u32,
    timeout_ms: u64,
) -> ActorInfo {
    client
        .get_actor(GetActorRequest {
            actor_id: id.to_vec(),
            wait: true,
            min_num_restarts: min_restarts,
            timeout_ms,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .actor
        .unwrap()
}

pub async fn subscribe(client: &mut Client, channel: Channel) -> tonic::Streaming<PubMessage> {
    client
        .subscribe(SubscribeRequest {
            channels: vec![channel as i32],
        })
        .await
        .unwrap()
        .into_inner()
}

/// Next message of a subscription, failing the test after [`DEADLINE`].
pub async fn next_message(stream: &mut tonic::Streaming<PubMessage>) -> PubMessage {
    tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("no message before the deadline")
        .expect("stream ended")
        .expect("stream failed")
}
