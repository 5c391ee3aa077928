//! A worker's task thread: runs pushed tasks one at a time, catching panics.
//!
//! Invariant: tasks run on this one thread (the process's main thread), never on the tokio
//! runtime, so a task may block in `get`/`wait` and may submit tasks of its own.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use miniray_common::ObjectId;
use miniray_plasma::ObjectLocation;
use miniray_proto::{PushTaskReply, TaskSpec, object_value, push_task_reply};
use std::time::Instant;

use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{CoreWorker, set_in_task};
use crate::codec::Encoded;
use crate::error::{Error, Result};
use crate::registry;

pub(crate) enum ExecMsg {
    /// Tasks to run in order; one reply per task goes to the sender as each finishes.
    Tasks(
        Vec<TaskSpec>,
        mpsc::UnboundedSender<std::result::Result<PushTaskReply, tonic::Status>>,
    ),
    Exit,
}

/// Runs tasks until told to exit or until every sender is gone.
pub(crate) fn run(cw: &Arc<CoreWorker>, rx: std::sync::mpsc::Receiver<ExecMsg>) {
    while let Ok(msg) = rx.recv() {
        match msg {
            ExecMsg::Exit => break,
            ExecMsg::Tasks(specs, replies) => {
                for spec in specs {
                    let started = Instant::now();
                    let outcome = match execute(cw, &spec) {
                        Ok(v) => push_task_reply::Outcome::Value(v),
                        Err(e) => push_task_reply::Outcome::Error(e.to_task_error()),
                    };
                    // The submitter may have given up on the batch; the remaining tasks
                    // still run, as their side effects may be relied on.
                    let _ = replies.send(Ok(PushTaskReply {
                        outcome: Some(outcome),
                        task_id: spec.task_id,
                        run_micros: started.elapsed().as_micros() as u64,
                    }));
                }
            }
        }
    }
}

/// An argument's bytes while the task runs: inline, or pinned in plasma.
enum ArgBytes<'a> {
    Inline(&'a [u8]),
    Plasma(ObjectLocation),
}

fn execute(cw: &Arc<CoreWorker>, spec: &TaskSpec) -> Result<miniray_proto::ObjectValue> {
    let name = spec.function_name.as_str();
    let function = registry::lookup(name).ok_or_else(|| Error::UnknownFunction {
        name: name.to_string(),
    })?;

    let mut pinned: Vec<ObjectId> = Vec::new();
    let fetched = cw.block_on(fetch_args(cw, spec, &mut pinned))?;
    let result = fetched.and_then(|args| {
        let slices = args
            .iter()
            .map(|a| match a {
                ArgBytes::Inline(b) => Ok(*b),
                ArgBytes::Plasma(loc) => cw.plasma.slice(*loc),
            })
            .collect::<Result<Vec<&[u8]>>>()?;
        set_in_task(true);
        let out = catch_unwind(AssertUnwindSafe(|| (function.invoke)(&slices)));
        set_in_task(false);
        match out {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(e)) => Err(Error::Deserialize {
                what: format!("a value of {name}"),
                reason: e.to_string(),
            }),
            Err(payload) => Err(Error::TaskFailed {
                function: name.to_string(),
                message: panic_message(payload.as_ref()),
            }),
        }
    });
    if let Ok(Err(e)) = cw.block_on(cw.plasma.release(&pinned)) {
        warn!(error = %e, "releasing task arguments failed");
    }
    let bytes = result?;

    let return_id =
        ObjectId::from_bytes(&spec.return_id).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let owner = spec
        .caller
        .clone()
        .ok_or_else(|| Error::InvalidArgument("task without a caller".into()))?;
    let value = cw.block_on(cw.store_encoded(return_id, owner, &Encoded::Owned(bytes)))??;
    Ok(value.to_proto())
}

async fn fetch_args<'a>(
    cw: &Arc<CoreWorker>,
    spec: &'a TaskSpec,
    pinned: &mut Vec<ObjectId>,
) -> Result<Vec<ArgBytes<'a>>> {
    let mut out = Vec::with_capacity(spec.args.len());
    for (i, arg) in spec.args.iter().enumerate() {
        let location = arg
            .value
            .as_ref()
            .and_then(|v| v.location.as_ref())
            .ok_or_else(|| Error::InvalidArgument(format!("argument {i} has no value")))?;
        match location {
            object_value::Location::Inline(bytes) => out.push(ArgBytes::Inline(bytes)),
            object_value::Location::InPlasma(node) => {
                let id = ObjectId::from_bytes(&arg.object_id)
                    .map_err(|e| Error::InvalidArgument(e.to_string()))?;
                cw.make_local(id, node).await?;
                let loc = cw.plasma.pin(id).await?.ok_or_else(|| Error::ObjectLost {
                    object_id: id.to_string(),
                    reason: "argument vanished from the object store".into(),
                })?;
                pinned.push(id);
                debug!(%id, size = loc.size, "argument read from plasma");
                out.push(ArgBytes::Plasma(loc));
            }
        }
    }
    Ok(out)
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}
