//! Pushes of batches to workers, shared by tasks and actor calls: send the specs on a push
//! session, hand each reply on in order, and say how far it got if the worker failed.
//!
//! A session is one long-lived `PushTasks` stream to a worker (see core_worker.proto). The
//! caller keeps it between batches, so a synchronous call costs one frame each way instead
//! of a new HTTP/2 stream with headers and trailers.
//!
//! Invariant: a session carries one batch at a time. It goes back to the idle pool only when
//! every reply of its batch was read, so the next batch's replies are the next messages.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use miniray_common::ObjectId;
use miniray_proto::{
    PushTaskReply, PushTasksRequest, RecoverTaskOutcomesRequest, TaskSpec, push_task_reply,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;

use tracing::debug;

use super::CoreWorker;
use super::store::Value;
use crate::error::{Error, Result};

/// How a push ended.
pub(crate) struct PushOutcome {
    /// Replies received (the first `done` specs are finished).
    pub done: usize,
    /// Why the push stopped short, if it did.
    pub failure: Option<String>,
    /// False when the batch never reached a worker (the connection was refused), so none of
    /// it ran.
    pub delivered: bool,
    /// The GCS declared the worker's node dead before the push finished: nothing there can
    /// be asked what ran, and its lease is gone with it.
    pub node_died: bool,
}

/// An open push session to one worker.
pub(crate) struct PushSession {
    batches: mpsc::UnboundedSender<PushTasksRequest>,
    replies: Streaming<PushTaskReply>,
}

impl PushSession {
    /// Whether the session can carry another batch: neither side has ended it. A worker
    /// that died is usually noticed here (its connection closed), before a batch is lost
    /// in it.
    pub(crate) fn is_open(&mut self) -> bool {
        // Between batches nothing is due, so any message, end or error means the session
        // is unusable.
        !self.batches.is_closed() && self.replies.message().now_or_never().is_none()
    }

    /// Ends the session cleanly: the worker sees the end of the batches and closes its side,
    /// which is read here so the stream is not reset.
    pub(crate) fn close(self) {
        let PushSession {
            batches,
            mut replies,
        } = self;
        drop(batches);
        tokio::spawn(async move { while let Ok(Some(_)) = replies.message().await {} });
    }
}

impl CoreWorker {
    /// Pushes `specs` to the worker at `endpoint` on node `node_id`; `on_reply(i, reply)`
    /// gets the reply of spec `i` as soon as it arrives. After a failure the worker's channel
    /// and idle sessions are forgotten, so the next push reconnects on a fresh session. If
    /// the GCS declares the node dead meanwhile, the push stops at once (`node_died`)
    /// instead of waiting for the transport to give up on a silent peer.
    pub(crate) async fn push_batch(
        &self,
        endpoint: &str,
        node_id: &[u8],
        specs: Vec<TaskSpec>,
        on_reply: impl FnMut(usize, PushTaskReply),
    ) -> PushOutcome {
        let mut outcome = PushOutcome {
            done: 0,
            failure: None,
            delivered: true,
            node_died: false,
        };
        if self.dead_nodes.is_dead(node_id) {
            // Known dead before anything was sent: none of it ran.
            outcome.node_died = true;
            outcome.delivered = false;
        } else {
            outcome.node_died = tokio::select! {
                biased;
                () = self.push_on_session(endpoint, specs, on_reply, &mut outcome) => false,
                () = self.dead_nodes.wait_dead(node_id) => true,
            };
            // Whatever got through may have run: the batch counts as delivered.
            outcome.delivered |= outcome.node_died;
        }
        if outcome.node_died {
            outcome.failure = Some("the GCS declared the worker's node dead".into());
        }
        if outcome.failure.is_some() {
            self.clients.forget_core_worker(endpoint);
        }
        outcome
    }

    async fn push_on_session(
        &self,
        endpoint: &str,
        specs: Vec<TaskSpec>,
        mut on_reply: impl FnMut(usize, PushTaskReply),
        outcome: &mut PushOutcome,
    ) {
        let count = specs.len();
        let mut session = match self.clients.take_session(endpoint) {
            Some(session) => session,
            None => match self.open_session(endpoint).await {
                Ok(session) => session,
                Err((failure, delivered)) => {
                    outcome.failure = Some(failure);
                    outcome.delivered = delivered;
                    return;
                }
            },
        };
        if session.batches.send(PushTasksRequest { specs }).is_err() {
            // The request side ended before the batch was handed over: it never left.
            outcome.failure = Some("the push session to the worker ended".into());
            outcome.delivered = false;
            return;
        }
        while outcome.done < count {
            match session.replies.message().await {
                Ok(Some(reply)) => {
                    on_reply(outcome.done, reply);
                    outcome.done += 1;
                }
                Ok(None) => {
                    outcome.failure = Some("the worker ended the push session early".into());
                    return;
                }
                Err(status) => {
                    outcome.failure = Some(status.message().to_string());
                    return;
                }
            }
        }
        self.clients.return_session(endpoint, session);
    }

    /// Opens a push session; on failure, says why and whether anything could have reached
    /// the worker.
    async fn open_session(
        &self,
        endpoint: &str,
    ) -> std::result::Result<PushSession, (String, bool)> {
        let mut client = self
            .clients
            .core_worker(endpoint)
            .map_err(|e| (e.to_string(), false))?;
        let (batches, outgoing) = mpsc::unbounded_channel();
        match client
            .push_tasks(UnboundedReceiverStream::new(outgoing))
            .await
        {
            Ok(response) => Ok(PushSession {
                batches,
                replies: response.into_inner(),
            }),
            Err(status) => Err((status.message().to_string(), !connection_refused(&status))),
        }
    }
}

/// How long the raylet may wait for a failed worker to exit before answering what it ran.
/// The raylet stops a worker whose lease came back broken within a couple of seconds.
const RECOVER_WAIT: Duration = Duration::from_secs(10);

/// What happened to each unfinished task of a failed push, as the worker's raylet read it
/// from the worker's reply journal once the worker was gone.
pub(crate) enum Recovered {
    /// Per started task, its reply if it finished; a task not in the map never started.
    Known(HashMap<Vec<u8>, Option<PushTaskReply>>),
    /// The raylet could not tell (it is unreachable, the worker still runs, or it kept no
    /// complete journal): the first unfinished task is taken to have been running.
    Unknown,
}

impl Recovered {
    /// Whether the outcome of `task_id` is known: `Some(None)` it never started,
    /// `Some(Some(None))` it was running, `Some(Some(Some(reply)))` it finished.
    pub(crate) fn get(&self, task_id: &[u8]) -> Option<Option<Option<&PushTaskReply>>> {
        match self {
            Recovered::Known(started) => Some(started.get(task_id).map(|r| r.as_ref())),
            Recovered::Unknown => None,
        }
    }
}

impl CoreWorker {
    /// Asks the raylet at `raylet` (of node `node_id`) what worker `worker_id` did with
    /// `specs` before it died. A node the GCS declared dead is never asked (nor waited for,
    /// if it is declared dead while asked): its outcomes are unknown.
    pub(crate) async fn recover_outcomes(
        &self,
        raylet: &str,
        node_id: &[u8],
        worker_id: &[u8],
        specs: &[&TaskSpec],
        wait: Option<Duration>,
    ) -> Recovered {
        if self.dead_nodes.is_dead(node_id) {
            return Recovered::Unknown;
        }
        tokio::select! {
            biased;
            r = self.ask_outcomes(raylet, worker_id, specs, wait) => r,
            () = self.dead_nodes.wait_dead(node_id) => Recovered::Unknown,
        }
    }

    async fn ask_outcomes(
        &self,
        raylet: &str,
        worker_id: &[u8],
        specs: &[&TaskSpec],
        wait: Option<Duration>,
    ) -> Recovered {
        let wait = wait.unwrap_or(RECOVER_WAIT);
        let Ok(mut client) = self.clients.raylet(raylet) else {
            return Recovered::Unknown;
        };
        let request = RecoverTaskOutcomesRequest {
            worker_id: worker_id.to_vec(),
            task_ids: specs.iter().map(|s| s.task_id.clone()).collect(),
            wait_ms: wait.as_millis() as u64,
        };
        let reply = tokio::time::timeout(
            wait + Duration::from_secs(5),
            client.recover_task_outcomes(request),
        )
        .await;
        match reply {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                if !r.known {
                    debug!(raylet, "the raylet cannot tell what the failed worker ran");
                    return Recovered::Unknown;
                }
                debug!(raylet, exit = %r.exit_status, started = r.started.len(), "recovered task outcomes of a failed worker");
                Recovered::Known(
                    r.started
                        .into_iter()
                        .map(|t| (t.task_id, t.reply))
                        .collect(),
                )
            }
            Ok(Err(status)) => {
                debug!(raylet, error = %status, "recovering task outcomes failed");
                Recovered::Unknown
            }
            Err(_) => Recovered::Unknown,
        }
    }
}

impl CoreWorker {
    /// Completes a task's return object from its reply, holding the references inside the
    /// value that the worker lent to this process (see `borrowing.rs`).
    pub(crate) fn complete_from_reply(
        self: &Arc<Self>,
        return_id: ObjectId,
        outcome: Option<push_task_reply::Outcome>,
        contained: Vec<miniray_proto::ContainedRef>,
    ) {
        let held = self.take_lent(contained);
        self.counters
            .replied(matches!(outcome, Some(push_task_reply::Outcome::Value(_))));
        self.store
            .complete_holding(return_id, reply_result(outcome), held);
    }
}

/// The result a task reply carries.
pub(crate) fn reply_result(outcome: Option<push_task_reply::Outcome>) -> Result<Value> {
    match outcome {
        Some(push_task_reply::Outcome::Value(v)) => Value::from_proto(v),
        Some(push_task_reply::Outcome::Error(e)) => Err(Error::from_task_error(&e)),
        None => Err(Error::Internal("empty task reply".into())),
    }
}

/// Whether a failed call never reached its peer: the connection was refused.
fn connection_refused(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        source = e.source();
    }
    false
}
