//! The CoreWorker gRPC service every driver and worker serves: task pushes (workers only),
//! object status for borrowers, exit requests from the raylet.

use std::sync::{Arc, Weak};

use miniray_common::ErrorCode;
use miniray_common::auth::TokenCheck;
use miniray_common::config::MAX_MESSAGE_SIZE;
use miniray_common::{ObjectId, WorkerId};
use miniray_proto::core_worker_server::{CoreWorker as CoreWorkerRpc, CoreWorkerServer};
use miniray_proto::{
    ExitReply, ExitRequest, GetObjectStatusReply, GetObjectStatusRequest, PushTaskReply,
    PushTasksRequest, UpdateBorrowersReply, UpdateBorrowersRequest, get_object_status_reply,
};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use super::CoreWorker;
use super::borrowing::Subject;
use super::executor::ExecMsg;
use super::journal::Journals;
use super::store::State;

/// The replies of one push session, one message per task, read from the groups the task
/// thread sends. A whole group is ready at once, so tonic encodes it into one buffer (one
/// frame). After the last group, the session's failure (if any) ends the stream.
pub(crate) struct ReplyStream {
    groups: UnboundedReceiverStream<Vec<PushTaskReply>>,
    current: std::vec::IntoIter<PushTaskReply>,
    failure: Arc<Mutex<Option<Status>>>,
}

impl futures::Stream for ReplyStream {
    type Item = Result<PushTaskReply, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        loop {
            if let Some(reply) = self.current.next() {
                return Poll::Ready(Some(Ok(reply)));
            }
            match std::pin::Pin::new(&mut self.groups).poll_next(cx) {
                Poll::Ready(Some(group)) => self.current = group.into_iter(),
                Poll::Ready(None) => return Poll::Ready(self.failure.lock().take().map(Err)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// A worker's task thread, as the service hands it work.
pub(crate) struct TaskThread {
    pub exec: std::sync::mpsc::Sender<ExecMsg>,
    /// Where sessions record their tasks' progress for the raylet (see `journal.rs`).
    pub journals: Option<Arc<Journals>>,
}

pub(crate) struct CoreWorkerService {
    cw: Weak<CoreWorker>,
    /// The task thread of a worker; `None` in a driver, which runs no tasks.
    tasks: Option<TaskThread>,
}

impl CoreWorkerService {
    fn cw(&self) -> Result<Arc<CoreWorker>, Status> {
        self.cw
            .upgrade()
            .ok_or_else(|| ErrorCode::Unavailable.status("this process is shutting down"))
    }
}

#[tonic::async_trait]
impl CoreWorkerRpc for CoreWorkerService {
    type PushTasksStream = ReplyStream;

    async fn push_tasks(
        &self,
        request: Request<Streaming<PushTasksRequest>>,
    ) -> Result<Response<Self::PushTasksStream>, Status> {
        let Some(tasks) = &self.tasks else {
            return Err(ErrorCode::InvalidArgument.status("a driver does not run tasks"));
        };
        let exec = tasks.exec.clone();
        let journal = tasks.journals.as_ref().and_then(|j| j.open_session());
        let mut batches = request.into_inner();
        let (replies, groups) = mpsc::unbounded_channel();
        let failure = Arc::new(Mutex::new(None));
        let session_failure = failure.clone();
        // Hands each batch to the task thread as it arrives. Every queued batch holds a clone
        // of `replies`, so the reply stream ends only after the last accepted batch is
        // answered, and a failure recorded here is reported after those replies.
        tokio::spawn(async move {
            let end = loop {
                match batches.message().await {
                    Ok(Some(batch)) if batch.specs.is_empty() => {
                        break Some(ErrorCode::InvalidArgument.status("push without tasks"));
                    }
                    Ok(Some(batch)) => {
                        if exec
                            .send(ExecMsg::Tasks(
                                batch.specs,
                                replies.clone(),
                                journal.clone(),
                            ))
                            .is_err()
                        {
                            break Some(ErrorCode::Unavailable.status("the worker is exiting"));
                        }
                    }
                    // The caller closed the session: batches already queued still run.
                    Ok(None) => {
                        // It closes only after reading every reply: nothing to recover.
                        if let Some(j) = &journal {
                            j.lock().ended_cleanly = true;
                        }
                        break None;
                    }
                    Err(status) => {
                        debug!(error = %status, "push session ended by its caller");
                        break None;
                    }
                }
            };
            // Recorded before this sender goes: the stream reads it once every sender is gone.
            *session_failure.lock() = end;
            drop(replies);
        });
        Ok(Response::new(ReplyStream {
            groups: UnboundedReceiverStream::new(groups),
            current: Vec::new().into_iter(),
            failure,
        }))
    }

    async fn get_object_status(
        &self,
        request: Request<GetObjectStatusRequest>,
    ) -> Result<Response<GetObjectStatusReply>, Status> {
        use get_object_status_reply::Status as S;
        let req = request.into_inner();
        let id = ObjectId::from_bytes(&req.object_id)
            .map_err(|e| ErrorCode::InvalidArgument.status(e.to_string()))?;
        let cw = self.cw()?;
        let unknown = GetObjectStatusReply {
            status: S::Unknown as i32,
            ..Default::default()
        };
        if !cw.store.is_owned(id) {
            return Ok(Response::new(unknown));
        }
        let outcome = if req.wait {
            cw.store.wait_owned(id).await
        } else {
            match cw.store.state(id) {
                Some(State::Ready(v)) => Some(Ok(v)),
                Some(State::Failed(e)) => Some(Err(e)),
                Some(State::Pending) => {
                    return Ok(Response::new(GetObjectStatusReply {
                        status: S::Pending as i32,
                        ..Default::default()
                    }));
                }
                None => None,
            }
        };
        Ok(Response::new(match outcome {
            None => unknown,
            Some(Ok(v)) => GetObjectStatusReply {
                status: S::Ready as i32,
                value: Some(v.to_proto()),
                error: None,
            },
            Some(Err(e)) => GetObjectStatusReply {
                status: S::Failed as i32,
                value: None,
                error: Some(e.to_task_error()),
            },
        }))
    }

    async fn update_borrowers(
        &self,
        request: Request<UpdateBorrowersRequest>,
    ) -> Result<Response<UpdateBorrowersReply>, Status> {
        let invalid = |what: String| ErrorCode::InvalidArgument.status(what);
        // Every update is checked before any is applied, so a bad request changes nothing.
        let mut updates = Vec::new();
        for u in request.into_inner().updates {
            let subject = Subject::from_wire(&u.object_id, &u.actor_id)
                .map_err(|e| invalid(e.to_string()))?;
            let borrower = u
                .borrower
                .ok_or_else(|| invalid("a borrower update without a borrower".into()))?;
            let worker =
                WorkerId::from_bytes(&borrower.worker_id).map_err(|e| invalid(e.to_string()))?;
            if u.delta == 0 {
                return Err(invalid(format!(
                    "a borrower update of {subject:?} changes nothing"
                )));
            }
            let endpoint = miniray_common::net::host_port(&borrower.host, borrower.port);
            updates.push((subject, worker, endpoint, i64::from(u.delta)));
        }
        let cw = self.cw()?;
        let mut refused = Vec::new();
        for (i, (subject, worker, endpoint, delta)) in updates.into_iter().enumerate() {
            if !cw.update_borrower(subject, worker, &endpoint, delta) {
                refused.push(i as u32);
            }
        }
        Ok(Response::new(UpdateBorrowersReply { refused }))
    }

    async fn exit(&self, _request: Request<ExitRequest>) -> Result<Response<ExitReply>, Status> {
        let Some(tasks) = &self.tasks else {
            return Err(ErrorCode::InvalidArgument.status("a driver exits on its own"));
        };
        // The task thread finishes the batches queued before, then ends the process.
        let _ = tasks.exec.send(ExecMsg::Exit);
        Ok(Response::new(ExitReply {}))
    }
}

/// Serves the CoreWorker service on `listener` until `stop` fires.
pub(crate) fn serve(
    cw: &Arc<CoreWorker>,
    listener: TcpListener,
    token: &str,
    tasks: Option<TaskThread>,
) -> oneshot::Sender<()> {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let service = CoreWorkerService {
        cw: Arc::downgrade(cw),
        tasks,
    };
    let server = InterceptedService::new(
        CoreWorkerServer::new(service)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE),
        TokenCheck::new(token),
    );
    cw.handle.spawn(async move {
        // Nodelay on the accepted sockets (the builder's option only covers listeners tonic
        // binds itself): replies and trailers must not wait for Nagle.
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let result = miniray_common::transport::server_builder()
            .add_service(server)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "core worker server failed");
        }
    });
    stop_tx
}
