//! gRPC glue: the `Raylet` service, translating wire messages to [`Node`] calls.
//!
//! Invariants:
//! - Every id and resource set from the wire is validated before anything changes; bad
//!   input answers `InvalidArgument` and leaves all state untouched (multi-id requests
//!   are validated whole before the first id is acted on).
//! - Plasma failures keep their [`ErrorCode`] (`ObjectStoreFull` stays distinguishable).
//! - Long-polling calls (`RequestWorkerLease`, `PlasmaGet`, `PullObject`) end with
//!   `Unavailable` as soon as the raylet starts shutting down, so graceful shutdown never
//!   waits on them.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use miniray_common::{ErrorCode, JobId, ObjectId, WorkerId};
use miniray_proto::raylet_server::Raylet;
use miniray_proto::*;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::node::{Node, invalid};
use crate::object_manager::{PullError, fill_and_seal};
use crate::worker_pool::RegisterError;

/// Longest `PlasmaGet` wait honoured; longer requests are clamped.
const MAX_GET_WAIT: Duration = Duration::from_secs(24 * 3600);

pub(crate) struct RayletService {
    pub node: Arc<Node>,
}

fn ids(raw: &[Vec<u8>]) -> Result<Vec<ObjectId>, Status> {
    raw.iter()
        .map(|b| ObjectId::from_bytes(b).map_err(invalid))
        .collect()
}

/// An id that may be left empty (older or anonymous clients); anything else must parse.
fn optional_id<T>(
    raw: &[u8],
    parse: impl FnOnce(&[u8]) -> Result<T, miniray_common::ids::InvalidId>,
) -> Result<Option<T>, Status> {
    if raw.is_empty() {
        Ok(None)
    } else {
        parse(raw).map(Some).map_err(invalid)
    }
}

fn plasma_status(e: miniray_plasma::PlasmaError) -> Status {
    e.code().status(e.to_string())
}

/// A primary copy just created for a client: where it is and who owns it.
struct Created {
    id: ObjectId,
    offset: u64,
    owner: Option<(WorkerId, WorkerAddress, Option<JobId>)>,
}

impl RayletService {
    /// Validates a create request (every id before anything changes) and allocates the
    /// unsealed primary copy; recording its owner is left to the caller.
    fn create_primary(&self, req: PlasmaCreateRequest) -> Result<Created, Status> {
        let id = ObjectId::from_bytes(&req.object_id).map_err(invalid)?;
        let client = optional_id(&req.client_id, WorkerId::from_bytes)?;
        let job = optional_id(&req.job_id, JobId::from_bytes)?;
        let owner = match req.owner {
            Some(address) => Some((
                WorkerId::from_bytes(&address.worker_id).map_err(invalid)?,
                address,
                job,
            )),
            None => None,
        };
        let loc = self
            .node
            .store
            .create_by(client, id, req.data_size, true)
            .map_err(plasma_status)?;
        Ok(Created {
            id,
            offset: loc.offset,
            owner,
        })
    }

    /// Runs `fut` unless the raylet starts shutting down first.
    async fn unless_shutdown<T>(
        &self,
        fut: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let mut signal = self.node.shutdown_signal();
        tokio::select! {
            r = fut => r,
            _ = signal.wait_for(|s| *s) => {
                Err(ErrorCode::Unavailable.status("the raylet is shutting down"))
            }
        }
    }
}

#[tonic::async_trait]
impl Raylet for RayletService {
    async fn request_worker_lease(
        &self,
        request: Request<RequestWorkerLeaseRequest>,
    ) -> Result<Response<RequestWorkerLeaseReply>, Status> {
        let node = Arc::clone(&self.node);
        self.unless_shutdown(node.request_lease(request.into_inner()))
            .await
            .map(Response::new)
    }

    async fn return_worker(
        &self,
        request: Request<ReturnWorkerRequest>,
    ) -> Result<Response<ReturnWorkerReply>, Status> {
        let req = request.into_inner();
        self.node.return_worker(&req.lease_id, req.disconnect)?;
        Ok(Response::new(ReturnWorkerReply {}))
    }

    async fn register_worker(
        &self,
        request: Request<RegisterWorkerRequest>,
    ) -> Result<Response<RegisterWorkerReply>, Status> {
        let req = request.into_inner();
        let worker_id = WorkerId::from_bytes(&req.worker_id).map_err(invalid)?;
        let job_id = JobId::from_bytes(&req.job_id).map_err(invalid)?;
        let port = u16::try_from(req.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid(format!("invalid worker port {}", req.port)))?;
        self.node
            .pool
            .register(worker_id, job_id, port)
            .map_err(|e| match e {
                RegisterError::Unknown(_) => ErrorCode::NotFound.status(e.to_string()),
                RegisterError::WrongJob { .. } => invalid(e),
                RegisterError::AlreadyRegistered(_) => {
                    ErrorCode::AlreadyExists.status(e.to_string())
                }
            })?;
        Ok(Response::new(RegisterWorkerReply {
            node_id: self.node.node_id.to_vec(),
        }))
    }

    async fn notify_blocked(
        &self,
        request: Request<NotifyBlockedRequest>,
    ) -> Result<Response<NotifyBlockedReply>, Status> {
        let req = request.into_inner();
        self.node.notify_blocked(&req.worker_id, req.blocked)?;
        Ok(Response::new(NotifyBlockedReply {}))
    }

    async fn plasma_info(
        &self,
        request: Request<PlasmaInfoRequest>,
    ) -> Result<Response<PlasmaInfoReply>, Status> {
        let req = request.into_inner();
        let client = optional_id(&req.client_id, WorkerId::from_bytes)?;
        let job = optional_id(&req.job_id, JobId::from_bytes)?;
        if let (Some(client), Some(job)) = (client, job) {
            self.node.ownership.lock().add_client(client, job);
        }
        Ok(Response::new(PlasmaInfoReply {
            segment_path: self.node.store.segment_path().display().to_string(),
            capacity: self.node.store.capacity(),
            node_id: self.node.node_id.to_vec(),
        }))
    }

    async fn plasma_create(
        &self,
        request: Request<PlasmaCreateRequest>,
    ) -> Result<Response<PlasmaCreateReply>, Status> {
        let created = self.create_primary(request.into_inner())?;
        if let Some((owner, address, job)) = created.owner {
            self.node
                .ownership
                .lock()
                .record(created.id, owner, address, job);
        }
        Ok(Response::new(PlasmaCreateReply {
            offset: created.offset,
        }))
    }

    async fn plasma_write(
        &self,
        request: Request<Streaming<PlasmaWriteChunk>>,
    ) -> Result<Response<PlasmaWriteReply>, Status> {
        let mut stream = request.into_inner();
        let mut first = stream
            .message()
            .await?
            .ok_or_else(|| invalid("PlasmaWrite stream without a first chunk"))?;
        let create = first
            .create
            .take()
            .ok_or_else(|| invalid("the first PlasmaWrite chunk names no object"))?;
        let total = create.data_size;
        let created = self.create_primary(create)?;
        let id = created.id;
        let chunks = futures::stream::once(async { Ok(first) })
            .chain(stream)
            .map(move |chunk| {
                let chunk = chunk.map_err(|s| {
                    PullError::new(
                        ErrorCode::Unavailable,
                        format!("writing object {id}: stream failed: {}", s.message()),
                    )
                })?;
                Ok((chunk.offset, chunk.data))
            });
        // A dropped future (client gone, shutdown) aborts the object, as a failure does.
        let store = Arc::clone(&self.node.store);
        self.unless_shutdown(async {
            fill_and_seal(&store, id, total, "writing", chunks)
                .await
                .map_err(|e| e.to_status())
        })
        .await?;
        // Recorded once sealed, so an aborted write leaves no owner record behind.
        if let Some((owner, address, job)) = created.owner {
            self.node.ownership.lock().record(id, owner, address, job);
        }
        tracing::debug!(object_id = %id, bytes = total, "object written by a remote client");
        Ok(Response::new(PlasmaWriteReply { size: total }))
    }

    async fn plasma_seal(
        &self,
        request: Request<PlasmaSealRequest>,
    ) -> Result<Response<PlasmaSealReply>, Status> {
        let id = ObjectId::from_bytes(&request.into_inner().object_id).map_err(invalid)?;
        self.node.store.seal(id).map_err(plasma_status)?;
        Ok(Response::new(PlasmaSealReply {}))
    }

    async fn plasma_abort(
        &self,
        request: Request<PlasmaAbortRequest>,
    ) -> Result<Response<PlasmaAbortReply>, Status> {
        let id = ObjectId::from_bytes(&request.into_inner().object_id).map_err(invalid)?;
        self.node.store.abort(id).map_err(plasma_status)?;
        self.node.ownership.lock().forget(id);
        Ok(Response::new(PlasmaAbortReply {}))
    }

    async fn plasma_get(
        &self,
        request: Request<PlasmaGetRequest>,
    ) -> Result<Response<PlasmaGetReply>, Status> {
        let req = request.into_inner();
        let object_ids = ids(&req.object_ids)?;
        let client = optional_id(&req.client_id, WorkerId::from_bytes)?;
        let wait = Duration::from_millis(req.timeout_ms).min(MAX_GET_WAIT);
        let store = Arc::clone(&self.node.store);
        let found = self
            .unless_shutdown(async {
                Ok::<_, Status>(store.wait_get_by(client, &object_ids, wait).await)
            })
            .await?;
        let objects = object_ids
            .iter()
            .zip(found)
            .map(|(id, loc)| PlasmaObjectLocation {
                object_id: id.to_vec(),
                found: loc.is_some(),
                offset: loc.map_or(0, |l| l.offset),
                size: loc.map_or(0, |l| l.size),
            })
            .collect();
        Ok(Response::new(PlasmaGetReply { objects }))
    }

    async fn plasma_release(
        &self,
        request: Request<PlasmaReleaseRequest>,
    ) -> Result<Response<PlasmaReleaseReply>, Status> {
        let req = request.into_inner();
        let client = optional_id(&req.client_id, WorkerId::from_bytes)?;
        for id in ids(&req.object_ids)? {
            self.node.store.release_by(client, id);
        }
        Ok(Response::new(PlasmaReleaseReply {}))
    }

    async fn plasma_delete(
        &self,
        request: Request<PlasmaDeleteRequest>,
    ) -> Result<Response<PlasmaDeleteReply>, Status> {
        for id in ids(&request.into_inner().object_ids)? {
            self.node.store.delete(id);
            self.node.ownership.lock().forget(id);
        }
        Ok(Response::new(PlasmaDeleteReply {}))
    }

    async fn pull_object(
        &self,
        request: Request<PullObjectRequest>,
    ) -> Result<Response<PullObjectReply>, Status> {
        let req = request.into_inner();
        let id = ObjectId::from_bytes(&req.object_id).map_err(invalid)?;
        let source = req
            .source
            .ok_or_else(|| invalid("pull request without a source node"))?;
        if source.port == 0 || source.port > u32::from(u16::MAX) || source.host.is_empty() {
            return Err(invalid(format!(
                "invalid source address {}:{}",
                source.host, source.port
            )));
        }
        if source.node_id == self.node.node_id.to_vec() {
            // Pulling from ourselves: only an object already here can be answered.
            return match self.node.store.location(id) {
                Some(loc) => Ok(Response::new(PullObjectReply { size: loc.size })),
                None => Err(ErrorCode::NotFound.status(format!(
                    "object {id} is not in the store of this node, the named source"
                ))),
            };
        }
        let objects = Arc::clone(&self.node.objects);
        let size = self
            .unless_shutdown(
                async move { objects.pull(id, source).await.map_err(|e| e.to_status()) },
            )
            .await?;
        Ok(Response::new(PullObjectReply { size }))
    }

    type ReadObjectStream = ReceiverStream<Result<ObjectChunk, Status>>;

    async fn read_object(
        &self,
        request: Request<ReadObjectRequest>,
    ) -> Result<Response<Self::ReadObjectStream>, Status> {
        let req = request.into_inner();
        let id = ObjectId::from_bytes(&req.object_id).map_err(invalid)?;
        let rx = self
            .node
            .objects
            .read(id, req.chunk_size, req.offset, req.length, req.puller)
            .map_err(|e| e.to_status())?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_node_stats(
        &self,
        _request: Request<GetNodeStatsRequest>,
    ) -> Result<Response<GetNodeStatsReply>, Status> {
        let node = self.node.node_info();
        let counts = self.node.pool.counts();
        Ok(Response::new(GetNodeStatsReply {
            object_store_used: self.node.store.used(),
            object_store_capacity: self.node.store.capacity(),
            num_objects: self.node.store.num_objects() as u64,
            num_workers: counts.total,
            num_idle_workers: counts.idle,
            node: Some(node),
            task_counts: self
                .node
                .task_events
                .counts
                .snapshot()
                .into_iter()
                .map(|(function_name, state, count)| TaskCount {
                    function_name,
                    state: state.to_string(),
                    count,
                })
                .collect(),
        }))
    }

    async fn list_logs(
        &self,
        _request: Request<miniray_proto::ListLogsRequest>,
    ) -> Result<Response<miniray_proto::ListLogsReply>, Status> {
        let dir = self.node.cfg.session_dir.join("logs");
        let files = tokio::task::spawn_blocking(move || crate::logs::list(&dir))
            .await
            .map_err(|e| ErrorCode::Internal.status(e.to_string()))??;
        Ok(Response::new(miniray_proto::ListLogsReply { files }))
    }

    async fn read_log(
        &self,
        request: Request<miniray_proto::ReadLogRequest>,
    ) -> Result<Response<miniray_proto::ReadLogReply>, Status> {
        let req = request.into_inner();
        let dir = self.node.cfg.session_dir.join("logs");
        let reply =
            tokio::task::spawn_blocking(move || crate::logs::read(&dir, &req.name, req.tail_bytes))
                .await
                .map_err(|e| ErrorCode::Internal.status(e.to_string()))??;
        Ok(Response::new(reply))
    }

    async fn report_task_events(
        &self,
        request: Request<ReportTaskEventsRequest>,
    ) -> Result<Response<ReportTaskEventsReply>, Status> {
        let ReportTaskEventsRequest { batch, dropped } = request.into_inner();
        self.node
            .task_events
            .report(batch, dropped)
            .map_err(|e| invalid(format!("report task events: {e}")))?;
        Ok(Response::new(ReportTaskEventsReply {}))
    }

    async fn shutdown(
        &self,
        _request: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownReply>, Status> {
        tracing::info!("shutdown requested over rpc");
        self.node.trigger_shutdown(None);
        Ok(Response::new(ShutdownReply {}))
    }

    async fn drain_node(
        &self,
        request: Request<DrainNodeRequest>,
    ) -> Result<Response<DrainNodeReply>, Status> {
        let reason = request.into_inner().reason;
        if reason.len() > MAX_DRAIN_REASON {
            return Err(invalid(format!(
                "drain reason of {} bytes, at most {MAX_DRAIN_REASON}",
                reason.len()
            )));
        }
        Ok(Response::new(match self.node.drain(&reason) {
            Ok(()) => DrainNodeReply {
                accepted: true,
                rejection_reason: String::new(),
            },
            Err(why) => {
                tracing::info!(reason = %why, "drain refused: the node is busy");
                DrainNodeReply {
                    accepted: false,
                    rejection_reason: why,
                }
            }
        }))
    }

    async fn recover_task_outcomes(
        &self,
        request: Request<RecoverTaskOutcomesRequest>,
    ) -> Result<Response<RecoverTaskOutcomesReply>, Status> {
        let req = request.into_inner();
        let worker_id = WorkerId::from_bytes(&req.worker_id).map_err(invalid)?;
        if req.task_ids.len() > MAX_RECOVER_TASKS {
            return Err(invalid(format!(
                "{} task ids asked about, at most {MAX_RECOVER_TASKS}",
                req.task_ids.len()
            )));
        }
        let wait = Duration::from_millis(req.wait_ms).min(MAX_RECOVER_WAIT);
        let outcome = self
            .node
            .pool
            .task_outcomes(worker_id, &req.task_ids, wait)
            .await;
        Ok(Response::new(match outcome {
            Some(outcomes) => RecoverTaskOutcomesReply {
                known: true,
                started: outcomes
                    .started
                    .into_iter()
                    .map(|(task_id, reply)| RecoveredTask { task_id, reply })
                    .collect(),
                exit_status: outcomes.exit_status,
            },
            None => RecoverTaskOutcomesReply::default(),
        }))
    }
}

/// Longest drain reason accepted (it ends up in the GCS's node table).
const MAX_DRAIN_REASON: usize = 1024;
/// Most task ids one `RecoverTaskOutcomes` may ask about (a batch is at most 1024 calls).
const MAX_RECOVER_TASKS: usize = 4096;
/// Longest a `RecoverTaskOutcomes` waits for its worker to exit.
const MAX_RECOVER_WAIT: Duration = Duration::from_secs(30);
