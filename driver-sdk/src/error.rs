//! The one error type of the driver API: a variant per failure a user can act on.

use std::time::Duration;

use miniray_proto::{ErrorKind, TaskError};

/// Every failure the miniray API reports.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The task's function panicked; `message` is the panic message.
    #[error("task {function} failed: {message}")]
    TaskFailed { function: String, message: String },
    /// The worker running the task died on every attempt.
    #[error("the worker running {function} died ({attempts} attempt(s), no retries left)")]
    WorkerDied { function: String, attempts: u32 },
    /// The actor cannot run the call: it is dead (killed, out of restarts, its constructor
    /// failed, its job ended), or its worker died with the call in flight and the call has
    /// no retries left. `reason` says which.
    #[error("actor {actor} died: {reason}")]
    ActorDied { actor: String, reason: String },
    /// No live actor has this name.
    #[error("no actor named {name:?} is alive in the cluster")]
    ActorNotFound { name: String },
    /// The object's value is gone (its node died or it was freed).
    #[error("object {object_id} is lost: {reason}")]
    ObjectLost { object_id: String, reason: String },
    /// The process that owns the object is gone, so its state is unknown.
    #[error("the owner of object {object_id} is unreachable: {reason}")]
    OwnerDied { object_id: String, reason: String },
    /// The node's object store cannot make room for the object.
    #[error("object store full: {0}")]
    ObjectStoreFull(String),
    /// A blocking call ran out of time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// A GCS or raylet did not answer.
    #[error("cluster unreachable at {address}: {reason}")]
    ClusterUnreachable { address: String, reason: String },
    /// The worker's executable does not define the function.
    #[error("unknown remote function {name:?}: the worker's executable does not define it")]
    UnknownFunction { name: String },
    /// A value does not decode as the type asked for.
    #[error("cannot decode {what}: {reason}")]
    Deserialize { what: String, reason: String },
    /// A value cannot be encoded.
    #[error("cannot encode {what}: {reason}")]
    Serialize { what: String, reason: String },
    /// No node of the cluster, nor any node type its autoscaler may launch, can ever
    /// provide the resources asked for.
    #[error(
        "infeasible resource request {resources}: no node of the cluster nor node type of its autoscaling config can provide it"
    )]
    Infeasible { resources: String },
    /// The call's arguments are not acceptable (bad option, bad resource amount, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// `miniray::init()` has not run (or `shutdown()` has).
    #[error("miniray is not initialized: call miniray::init() first")]
    NotInitialized,
    /// Starting the local cluster or joining one failed.
    #[error("cannot start miniray: {0}")]
    Startup(String),
    /// A bug in miniray; the message says where.
    #[error("internal error: {0}")]
    Internal(String),
}

/// `Result<T, miniray::Error>`.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The wire form sent from a worker to the task's owner.
    pub(crate) fn to_task_error(&self) -> TaskError {
        let (kind, function_name, message) = match self {
            Error::TaskFailed { function, message } => {
                (ErrorKind::TaskPanicked, function.clone(), message.clone())
            }
            Error::WorkerDied { function, .. } => {
                (ErrorKind::WorkerDied, function.clone(), self.to_string())
            }
            Error::UnknownFunction { name } => {
                (ErrorKind::UnknownFunction, name.clone(), self.to_string())
            }
            Error::Deserialize { .. } | Error::Serialize { .. } => {
                (ErrorKind::Deserialize, String::new(), self.to_string())
            }
            Error::ActorDied { actor, reason } => {
                (ErrorKind::ActorDied, actor.clone(), reason.clone())
            }
            Error::ObjectLost { .. } => (ErrorKind::ObjectLost, String::new(), self.to_string()),
            Error::OwnerDied { .. } => (ErrorKind::OwnerDied, String::new(), self.to_string()),
            Error::ObjectStoreFull(m) => (ErrorKind::ObjectStoreFull, String::new(), m.clone()),
            Error::Infeasible { resources } => {
                (ErrorKind::Infeasible, String::new(), resources.clone())
            }
            _ => (ErrorKind::Internal, String::new(), self.to_string()),
        };
        TaskError {
            kind: kind as i32,
            function_name,
            message,
        }
    }

    /// Rebuilds the error a worker reported.
    pub(crate) fn from_task_error(e: &TaskError) -> Error {
        let function = e.function_name.clone();
        let message = e.message.clone();
        match ErrorKind::try_from(e.kind).unwrap_or(ErrorKind::Internal) {
            ErrorKind::TaskPanicked => Error::TaskFailed { function, message },
            ErrorKind::WorkerDied => Error::WorkerDied {
                function,
                attempts: 0,
            },
            ErrorKind::UnknownFunction => Error::UnknownFunction { name: function },
            ErrorKind::Deserialize => Error::Deserialize {
                what: if function.is_empty() {
                    "a task argument".into()
                } else {
                    format!("an argument of {function}")
                },
                reason: message,
            },
            ErrorKind::ActorDied => Error::ActorDied {
                actor: function,
                reason: message,
            },
            ErrorKind::ObjectLost => Error::ObjectLost {
                object_id: String::new(),
                reason: message,
            },
            ErrorKind::OwnerDied => Error::OwnerDied {
                object_id: String::new(),
                reason: message,
            },
            ErrorKind::ObjectStoreFull => Error::ObjectStoreFull(message),
            ErrorKind::Infeasible => Error::Infeasible { resources: message },
            ErrorKind::Internal | ErrorKind::Unspecified => Error::Internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_errors_round_trip() {
        let cases = [
            Error::TaskFailed {
                function: "m::f".into(),
                message: "boom".into(),
            },
            Error::UnknownFunction {
                name: "m::g".into(),
            },
            Error::ObjectStoreFull("no room".into()),
            Error::ActorDied {
                actor: "Counter(ab12)".into(),
                reason: "it was killed".into(),
            },
        ];
        for e in cases {
            assert_eq!(Error::from_task_error(&e.to_task_error()), e);
        }
    }
}
