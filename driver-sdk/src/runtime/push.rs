//! One push of a batch to a worker, shared by tasks and actor calls: send the specs, hand
//! each streamed reply on in order, and say how far it got if the worker failed.

use miniray_proto::{PushTaskReply, PushTasksRequest, TaskSpec, push_task_reply};

use super::CoreWorker;
use super::store::Value;
use crate::error::{Error, Result};

/// How a push ended.
pub(crate) struct PushOutcome {
    /// Replies received (the first `done` specs are finished).
    pub done: usize,
    /// Why the push stopped short, if it did.
    pub failure: Option<String>,
    /// False when the connection was refused: the batch never reached a worker, so none of
    /// it ran.
    pub delivered: bool,
}

impl CoreWorker {
    /// Pushes `specs` to the worker at `endpoint`; `on_reply(i, reply)` gets the reply of
    /// spec `i` as soon as it arrives.
    pub(crate) async fn push_batch(
        &self,
        endpoint: &str,
        specs: Vec<TaskSpec>,
        mut on_reply: impl FnMut(usize, PushTaskReply),
    ) -> PushOutcome {
        let count = specs.len();
        let mut outcome = PushOutcome {
            done: 0,
            failure: None,
            delivered: true,
        };
        let mut client = match self.clients.core_worker(endpoint) {
            Ok(client) => client,
            Err(e) => {
                outcome.failure = Some(e.to_string());
                return outcome;
            }
        };
        let mut stream = match client.push_tasks(PushTasksRequest { specs }).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                outcome.delivered = !connection_refused(&status);
                outcome.failure = Some(status.message().to_string());
                return outcome;
            }
        };
        while outcome.done < count {
            match stream.message().await {
                Ok(Some(reply)) => {
                    on_reply(outcome.done, reply);
                    outcome.done += 1;
                }
                Ok(None) => {
                    outcome.failure = Some("the worker ended the reply stream early".into());
                    return outcome;
                }
                Err(status) => {
                    outcome.failure = Some(status.message().to_string());
                    return outcome;
                }
            }
        }
        // Read the stream's end too: a stream dropped before its trailers is reset, and a
        // peer that sees many resets closes the connection.
        let _ = stream.message().await;
        outcome
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
