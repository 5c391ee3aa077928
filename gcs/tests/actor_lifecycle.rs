//! The actor supervisor against a fake node: one tonic server that plays the raylet (grants
//! every lease with a fresh worker id, records returned leases) and the leased workers'
//! core worker (runs creation tasks: `Fails` fails, anything else succeeds). This covers
//! creation, restarts after reported deaths, constructor failures and lease returns without
//! spawning processes; real workers are exercised by the workspace tests.

mod common;

use std::pin::Pin;

use common::{
    Client, DEADLINE, TOKEN, actor_info, add_job, kill, next_message, register_node, start,
    subscribe, unregister_node, wait_for_actor,
};
use futures::Stream;
use miniray_common::auth::TokenCheck;
use miniray_common::ids::LeaseId;
use miniray_common::{JobId, NodeId, WorkerId};
use miniray_gcs::GcsHandle;
use miniray_proto::core_worker_server::{CoreWorker, CoreWorkerServer};
use miniray_proto::raylet_server::{Raylet, RayletServer};
use miniray_proto::*;
use tokio::sync::{mpsc, watch};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

/// The fake raylet and core worker behind one address.
#[derive(Clone)]
struct FakeNode {
    node_id: NodeId,
    port: u16,
    /// Every `ReturnWorker`: (lease id, disconnect).
    returned: mpsc::UnboundedSender<(Vec<u8>, bool)>,
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not part of the fake"))
}

#[tonic::async_trait]
impl Raylet for FakeNode {
    async fn request_worker_lease(
        &self,
        _: Request<RequestWorkerLeaseRequest>,
    ) -> Result<Response<RequestWorkerLeaseReply>, Status> {
        Ok(Response::new(RequestWorkerLeaseReply {
            outcome: Some(request_worker_lease_reply::Outcome::Granted(LeaseGrant {
                lease_id: LeaseId::random().to_vec(),
                worker: Some(WorkerAddress {
                    worker_id: WorkerId::random().to_vec(),
                    node_id: self.node_id.to_vec(),
                    host: "127.0.0.1".into(),
                    port: u32::from(self.port),
                }),
            })),
        }))
    }
    async fn return_worker(
        &self,
        request: Request<ReturnWorkerRequest>,
    ) -> Result<Response<ReturnWorkerReply>, Status> {
        let req = request.into_inner();
        let _ = self.returned.send((req.lease_id, req.disconnect));
        Ok(Response::new(ReturnWorkerReply {}))
    }
    async fn register_worker(
        &self,
        _: Request<RegisterWorkerRequest>,
    ) -> Result<Response<RegisterWorkerReply>, Status> {
        unimplemented()
    }
    async fn drain_node(
        &self,
        _: Request<DrainNodeRequest>,
    ) -> Result<Response<DrainNodeReply>, Status> {
        unimplemented()
    }
    async fn report_task_events(
        &self,
        _: Request<ReportTaskEventsRequest>,
    ) -> Result<Response<ReportTaskEventsReply>, Status> {
        unimplemented()
    }
    async fn list_logs(
        &self,
        _: Request<miniray_proto::ListLogsRequest>,
    ) -> Result<Response<miniray_proto::ListLogsReply>, Status> {
        unimplemented()
    }
    async fn read_log(
        &self,
        _: Request<miniray_proto::ReadLogRequest>,
    ) -> Result<Response<miniray_proto::ReadLogReply>, Status> {
        unimplemented()
    }
    async fn notify_blocked(
        &self,
        _: Request<NotifyBlockedRequest>,
    ) -> Result<Response<NotifyBlockedReply>, Status> {
        unimplemented()
    }
    async fn plasma_info(
        &self,
        _: Request<PlasmaInfoRequest>,
    ) -> Result<Response<PlasmaInfoReply>, Status> {
        unimplemented()
    }
    async fn plasma_create(
        &self,
        _: Request<PlasmaCreateRequest>,
    ) -> Result<Response<PlasmaCreateReply>, Status> {
        unimplemented()
    }
    async fn plasma_seal(
        &self,
        _: Request<PlasmaSealRequest>,
    ) -> Result<Response<PlasmaSealReply>, Status> {
        unimplemented()
    }
    async fn plasma_write(
        &self,
        _: Request<tonic::Streaming<PlasmaWriteChunk>>,
    ) -> Result<Response<PlasmaWriteReply>, Status> {
        unimplemented()
    }
    async fn plasma_abort(
        &self,
        _: Request<PlasmaAbortRequest>,
    ) -> Result<Response<PlasmaAbortReply>, Status> {
        unimplemented()
    }
    async fn plasma_get(
        &self,
        _: Request<PlasmaGetRequest>,
    ) -> Result<Response<PlasmaGetReply>, Status> {
        unimplemented()
    }
    async fn plasma_release(
        &self,
        _: Request<PlasmaReleaseRequest>,
    ) -> Result<Response<PlasmaReleaseReply>, Status> {
        unimplemented()
    }
    async fn plasma_delete(
        &self,
        _: Request<PlasmaDeleteRequest>,
    ) -> Result<Response<PlasmaDeleteReply>, Status> {
        unimplemented()
    }
    async fn pull_object(
        &self,
        _: Request<PullObjectRequest>,
    ) -> Result<Response<PullObjectReply>, Status> {
        unimplemented()
    }
    type ReadObjectStream = futures::stream::Empty<Result<ObjectChunk, Status>>;
    async fn read_object(
        &self,
        _: Request<ReadObjectRequest>,
    ) -> Result<Response<Self::ReadObjectStream>, Status> {
        unimplemented()
    }
    async fn get_node_stats(
        &self,
        _: Request<GetNodeStatsRequest>,
    ) -> Result<Response<GetNodeStatsReply>, Status> {
        unimplemented()
    }
    async fn shutdown(
        &self,
        _: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownReply>, Status> {
        unimplemented()
    }
    async fn recover_task_outcomes(
        &self,
        _: Request<RecoverTaskOutcomesRequest>,
    ) -> Result<Response<RecoverTaskOutcomesReply>, Status> {
        unimplemented()
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<PushTaskReply, Status>> + Send>>;

#[tonic::async_trait]
impl CoreWorker for FakeNode {
    type PushTasksStream = ReplyStream;

    async fn push_tasks(
        &self,
        request: Request<tonic::Streaming<PushTasksRequest>>,
    ) -> Result<Response<Self::PushTasksStream>, Status> {
        // The GCS sends one batch per session (the constructor).
        let batch = request
            .into_inner()
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("session without a batch"))?;
        let replies: Vec<Result<PushTaskReply, Status>> = batch
            .specs
            .into_iter()
            .map(|spec| {
                let outcome = if spec.function_name == "Fails" {
                    push_task_reply::Outcome::Error(TaskError {
                        kind: ErrorKind::TaskPanicked as i32,
                        function_name: spec.function_name.clone(),
                        message: "boom".into(),
                    })
                } else {
                    push_task_reply::Outcome::Value(ObjectValue {
                        location: Some(object_value::Location::Inline(Vec::new())),
                        size: 0,
                    })
                };
                Ok(PushTaskReply {
                    outcome: Some(outcome),
                    task_id: spec.task_id,
                    run_micros: 1,
                    contained: Vec::new(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(replies))))
    }
    async fn get_object_status(
        &self,
        _: Request<GetObjectStatusRequest>,
    ) -> Result<Response<GetObjectStatusReply>, Status> {
        unimplemented()
    }
    async fn exit(&self, _: Request<ExitRequest>) -> Result<Response<ExitReply>, Status> {
        unimplemented()
    }
    async fn update_borrowers(
        &self,
        _: Request<UpdateBorrowersRequest>,
    ) -> Result<Response<UpdateBorrowersReply>, Status> {
        unimplemented()
    }
}

struct Harness {
    gcs: GcsHandle,
    client: Client,
    node: FakeNode,
    returned: mpsc::UnboundedReceiver<(Vec<u8>, bool)>,
    stop_fake: watch::Sender<bool>,
    job: JobId,
}

/// A GCS with one fake node registered and one job added.
async fn start_harness() -> Harness {
    let (gcs, mut client) = start().await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (returned_tx, returned) = mpsc::unbounded_channel();
    let node = FakeNode {
        node_id: NodeId::random(),
        port: listener.local_addr().unwrap().port(),
        returned: returned_tx,
    };
    let (stop_fake, mut stop) = watch::channel(false);
    tokio::spawn(
        miniray_common::transport::server_builder()
            .add_service(InterceptedService::new(
                RayletServer::new(node.clone()),
                TokenCheck::new(TOKEN),
            ))
            .add_service(InterceptedService::new(
                CoreWorkerServer::new(node.clone()),
                TokenCheck::new(TOKEN),
            ))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            ),
    );
    register_node(&mut client, node.node_id, u32::from(node.port)).await;
    let job = add_job(&mut client).await;
    Harness {
        gcs,
        client,
        node,
        returned,
        stop_fake,
        job,
    }
}

impl Harness {
    /// Creates an actor and waits for its first outcome: ALIVE, or DEAD if it cannot be.
    async fn create_settled(&mut self, class: &str, max_restarts: i64) -> (Vec<u8>, ActorInfo) {
        let info = actor_info(self.job, class, max_restarts);
        self.client
            .create_actor(CreateActorRequest {
                actor: Some(info.clone()),
            })
            .await
            .unwrap();
        let settled = self.settled(&info.actor_id, 0).await;
        (info.actor_id, settled)
    }

    /// Waits (server side) until the actor is ALIVE with `min_restarts`, or DEAD.
    async fn settled(&mut self, id: &[u8], min_restarts: u32) -> ActorInfo {
        wait_for_actor(
            &mut self.client,
            id,
            min_restarts,
            DEADLINE.as_millis() as u64,
        )
        .await
    }

    async fn report(&mut self, worker: &[u8]) {
        self.client
            .report_worker_failure(ReportWorkerFailureRequest {
                node_id: self.node.node_id.to_vec(),
                worker_id: worker.to_vec(),
                reason: "signal: 9 (SIGKILL)".into(),
            })
            .await
            .unwrap();
    }

    /// The next lease the GCS returned to the fake raylet.
    async fn next_return(&mut self) -> (Vec<u8>, bool) {
        tokio::time::timeout(DEADLINE, self.returned.recv())
            .await
            .expect("no lease returned before the deadline")
            .expect("fake raylet gone")
    }

    async fn stop(self) {
        self.gcs.shutdown().await;
        self.stop_fake.send_replace(true);
    }
}

fn worker_of(info: &ActorInfo) -> Vec<u8> {
    info.address
        .as_ref()
        .expect("alive actor has an address")
        .worker_id
        .clone()
}

#[tokio::test]
async fn actor_restarts_on_reported_deaths_until_out_of_restarts() {
    let mut h = start_harness().await;
    let (id, first) = h.create_settled("Counter", 1).await;
    assert_eq!(first.state(), ActorState::Alive, "{}", first.death_reason);
    assert_eq!(
        first.node.as_ref().unwrap().node_id,
        h.node.node_id.to_vec()
    );
    let first_worker = worker_of(&first);

    h.report(&first_worker).await;
    let second = h.settled(&id, 1).await;
    assert_eq!(second.state(), ActorState::Alive, "{}", second.death_reason);
    assert_eq!(second.num_restarts, 1);
    assert!(
        second.death_reason.contains("SIGKILL"),
        "{}",
        second.death_reason
    );
    let second_worker = worker_of(&second);
    assert_ne!(second_worker, first_worker);
    // The lease of the dead worker went back, disconnecting it.
    assert_eq!(h.next_return().await, (first.lease_id.clone(), true));

    // The old worker's death again: not the current worker, ignored.
    h.report(&first_worker).await;
    let same = h.settled(&id, 1).await;
    assert_eq!((same.state(), same.num_restarts), (ActorState::Alive, 1));

    h.report(&second_worker).await;
    let dead = h.settled(&id, 1).await;
    assert_eq!(dead.state(), ActorState::Dead);
    assert!(
        dead.death_reason
            .contains("no restarts left (max_restarts = 1)"),
        "{}",
        dead.death_reason
    );
    h.stop().await;
}

#[tokio::test]
async fn killing_an_alive_actor_returns_its_lease() {
    let mut h = start_harness().await;
    let (id, alive) = h.create_settled("Counter", -1).await;
    assert_eq!(alive.state(), ActorState::Alive);
    kill(&mut h.client, &id, "done").await.unwrap();
    assert_eq!(h.next_return().await, (alive.lease_id.clone(), true));
    let dead = h.settled(&id, 0).await;
    assert_eq!(
        (dead.state(), dead.death_reason.as_str()),
        (ActorState::Dead, "done")
    );
    assert!(dead.address.is_none());
    h.stop().await;
}

#[tokio::test]
async fn a_failing_constructor_kills_the_actor_without_restart() {
    let mut h = start_harness().await;
    let (_, dead) = h.create_settled("Fails", -1).await;
    assert_eq!(dead.state(), ActorState::Dead);
    assert_eq!(dead.death_reason, "its constructor failed: boom");
    assert_eq!(dead.num_restarts, 0);
    let (_, disconnect) = h.next_return().await;
    assert!(disconnect);
    h.stop().await;
}

#[tokio::test]
async fn an_actor_whose_node_dies_waits_to_restart() {
    let mut h = start_harness().await;
    let (id, alive) = h.create_settled("Counter", 3).await;
    assert_eq!(alive.state(), ActorState::Alive);
    let mut events = subscribe(&mut h.client, Channel::ActorChanges).await;
    unregister_node(&mut h.client, h.node.node_id, "drained")
        .await
        .unwrap();
    // No other node: it waits, RESTARTING, with the node's death as the reason.
    let restarting = loop {
        let msg = next_message(&mut events).await;
        if let Some(pub_message::Payload::Actor(info)) = msg.payload
            && info.actor_id == id
            && info.state() != ActorState::Alive
        {
            break info;
        }
    };
    assert_eq!(restarting.state(), ActorState::Restarting);
    assert_eq!(restarting.num_restarts, 1);
    assert!(
        restarting.death_reason.contains("drained"),
        "{}",
        restarting.death_reason
    );
    h.stop().await;
}
