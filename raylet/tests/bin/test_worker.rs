//! A protocol peer that stands in for a job executable in the raylet's tests.
//!
//! Started by a raylet with `MINIRAY_ROLE=worker`, it serves the CoreWorker service on a
//! free loopback port (only `Exit` does anything), registers with the raylet, prints
//! `pid=<pid>` on stdout, and runs until `Exit`, SIGTERM, or its parent raylet goes away.
//! `MINIRAY_TEST_WORKER_MODE=hang` makes it never register (start-timeout tests).

use std::time::Duration;

use miniray_common::auth::{TokenCheck, connect};
use miniray_common::config::env;
use miniray_common::{JobId, WorkerId};
use miniray_proto::core_worker_server::{CoreWorker, CoreWorkerServer};
use miniray_proto::raylet_client::RayletClient;
use miniray_proto::*;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

struct Peer {
    exit: watch::Sender<bool>,
}

#[tonic::async_trait]
impl CoreWorker for Peer {
    type PushTasksStream = futures::stream::Empty<Result<PushTaskReply, Status>>;

    async fn push_tasks(
        &self,
        _: Request<tonic::Streaming<PushTasksRequest>>,
    ) -> Result<Response<Self::PushTasksStream>, Status> {
        Err(Status::unimplemented("test worker runs no tasks"))
    }
    async fn get_object_status(
        &self,
        _: Request<GetObjectStatusRequest>,
    ) -> Result<Response<GetObjectStatusReply>, Status> {
        Err(Status::unimplemented("test worker owns no objects"))
    }
    async fn exit(&self, _: Request<ExitRequest>) -> Result<Response<ExitReply>, Status> {
        self.exit.send_replace(true);
        Ok(Response::new(ExitReply {}))
    }
    async fn update_borrowers(
        &self,
        _: Request<UpdateBorrowersRequest>,
    ) -> Result<Response<UpdateBorrowersReply>, Status> {
        Err(Status::unimplemented("test worker owns no objects"))
    }
}

fn var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    if var(env::ROLE)? != "worker" {
        return Err("not started as a worker".into());
    }
    let raylet = var(env::RAYLET_ADDRESS)?;
    let token = var(env::TOKEN)?;
    let worker_id = WorkerId::from_hex(&var(env::WORKER_ID)?).map_err(|e| e.to_string())?;
    let job_id = JobId::from_hex(&var(env::JOB_ID)?).map_err(|e| e.to_string())?;
    var(env::GCS_ADDRESS)?;
    var(env::NODE_ID)?;
    println!("pid={}", std::process::id());
    let parent = std::os::unix::process::parent_id();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let (exit, mut exit_rx) = watch::channel(false);
    let svc = tonic::service::interceptor::InterceptedService::new(
        CoreWorkerServer::new(Peer { exit }),
        TokenCheck::new(&token),
    );
    let mut stop = exit_rx.clone();
    let server = tokio::spawn(
        miniray_common::transport::server_builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            ),
    );

    if std::env::var("MINIRAY_TEST_WORKER_MODE").as_deref() != Ok("hang") {
        let mut client =
            RayletClient::new(connect(&raylet, &token).await.map_err(|e| e.to_string())?);
        client
            .register_worker(RegisterWorkerRequest {
                worker_id: worker_id.to_vec(),
                port: u32::from(port),
                pid: std::process::id(),
                job_id: job_id.to_vec(),
            })
            .await
            .map_err(|e| e.to_string())?;
        println!("registered port={port}");
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let mut orphan_check = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = exit_rx.wait_for(|s| *s) => { println!("exit rpc"); break; }
            _ = term.recv() => { println!("sigterm"); break; }
            _ = orphan_check.tick() => {
                if std::os::unix::process::parent_id() != parent {
                    println!("raylet gone");
                    break;
                }
            }
        }
    }
    server.abort();
    Ok(())
}
