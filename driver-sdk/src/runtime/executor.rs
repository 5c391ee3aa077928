//! A worker's task thread: runs pushed tasks one at a time, catching panics; and, once an
//! actor creation task has run here, hosts that actor and runs its method calls.
//!
//! Invariants:
//! - tasks run on this one thread (the process's main thread), never on the tokio runtime,
//!   so a task may block in `get`/`wait` and may submit tasks of its own;
//! - a worker hosts at most one actor, for the rest of its life (the GCS holds its lease);
//!   method calls run one at a time, in the order their batches arrived;
//! - a panic inside a method fails that call only: the instance stays as the panic left it.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use miniray_common::ObjectId;
use miniray_plasma::ObjectLocation;
use miniray_proto::{
    ContainedRef, PushTaskReply, TaskSpec, TaskState, object_value, push_task_reply,
};
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::journal::SessionJournal;
use super::task_events::{FnName, Recorded};
use super::{CoreWorker, borrowing, set_in_task};
use crate::codec::Encoded;
use crate::error::{Error, Result};
use crate::registry::{self, ActorClass, ActorInstance, ActorMethod, InvokeError, RemoteFunction};

/// Where a batch's replies go: groups of replies, in task order.
pub(crate) type ReplySender = mpsc::UnboundedSender<Vec<PushTaskReply>>;

/// The journal of the push session a batch came on, if this worker journals.
pub(crate) type Journal = Option<Arc<Mutex<SessionJournal>>>;

pub(crate) enum ExecMsg {
    /// Tasks to run in order; one reply per task goes to the sender, in groups (see `run`),
    /// and each task's start and reply are recorded in the session's journal first.
    Tasks(Vec<TaskSpec>, ReplySender, Journal),
    /// Ends the task thread once the batches queued before it have run.
    Exit,
}

/// Replies of short tasks are sent in groups of this many (or at the end of the batch).
/// A group of small replies travels as one HTTP/2 DATA frame: h2 counts every small DATA
/// frame a reader has not consumed yet against a budget and ends the connection when a
/// slow reader (a busy driver) lets too many pile up.
const REPLY_GROUP: usize = 16;
/// A task that ran at least this long has its reply sent at once: long tasks cannot pile
/// up small frames, and their callers should not wait for the next task.
const SEND_AT_ONCE_MICROS: u64 = 200;

/// The actor this worker hosts.
struct Hosted {
    actor_id: Vec<u8>,
    class: &'static ActorClass,
    instance: ActorInstance,
}

/// Runs tasks until told to exit or until every sender is gone.
pub(crate) fn run(cw: &Arc<CoreWorker>, rx: std::sync::mpsc::Receiver<ExecMsg>) {
    let mut hosted: Option<Hosted> = None;
    // A worker's node and id never change: its events name them.
    let (node_id, worker_id) = (cw.node_id(), cw.worker_id);
    while let Ok(msg) = rx.recv() {
        match msg {
            ExecMsg::Exit => break,
            ExecMsg::Tasks(specs, replies, journal) => {
                let count = specs.len();
                // SCHEDULED: when the batch reached this worker.
                let scheduled = cw.task_events.raw_now();
                let mut group = Vec::new();
                if let Some(j) = &journal {
                    j.lock().begin_batch();
                }
                for (i, spec) in specs.into_iter().enumerate() {
                    // Recorded before the task can crash the process, so that the raylet
                    // can tell which task was running (see `journal.rs`).
                    if let Some(j) = &journal {
                        j.lock().record_started(&spec.task_id);
                    }
                    let target = target(&spec, &hosted);
                    cw.task_events.start(|| {
                        // The registered name: static, so an event costs no copy of it.
                        let function = match &target {
                            Ok(t) => FnName::Static(t.name()),
                            Err(_) => FnName::Owned(spec.function_name.as_str().into()),
                        };
                        Recorded::new(&spec, TaskState::Running, function)
                            .at(node_id, worker_id)
                            .scheduled_at(scheduled, spec.submitted_us)
                    });
                    let started = Instant::now();
                    let executed = target.and_then(|t| execute(cw, &spec, t, &mut hosted));
                    let (outcome, contained) = match executed {
                        Ok((v, lent)) => {
                            cw.task_events.end(TaskState::Finished, || None);
                            (push_task_reply::Outcome::Value(v), lent)
                        }
                        Err(e) => {
                            cw.task_events
                                .end(TaskState::Failed, || Some(e.to_string()));
                            (
                                push_task_reply::Outcome::Error(e.to_task_error()),
                                Vec::new(),
                            )
                        }
                    };
                    let run_micros = started.elapsed().as_micros() as u64;
                    let reply = PushTaskReply {
                        outcome: Some(outcome),
                        task_id: spec.task_id,
                        run_micros,
                        contained,
                    };
                    // Recorded before the next task starts: a reply still held in `group`
                    // when this process dies is recovered from the journal.
                    if let Some(j) = &journal {
                        j.lock().record_reply(&reply);
                    }
                    group.push(reply);
                    if group.len() >= REPLY_GROUP
                        || i + 1 == count
                        || run_micros >= SEND_AT_ONCE_MICROS
                    {
                        // The submitter may have given up on the batch; the remaining tasks
                        // still run, as their side effects may be relied on.
                        let _ = replies.send(std::mem::take(&mut group));
                    }
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

/// What a task spec asks this worker to run.
enum Target {
    Function(&'static RemoteFunction),
    CreateActor(&'static ActorClass),
    Method(&'static ActorMethod),
}

fn target(spec: &TaskSpec, hosted: &Option<Hosted>) -> Result<Target> {
    let name = spec.function_name.as_str();
    if spec.actor_creation {
        if hosted.is_some() {
            return Err(Error::Internal(
                "this worker already hosts an actor".to_string(),
            ));
        }
        return registry::actor_class(name)
            .map(Target::CreateActor)
            .ok_or_else(|| Error::UnknownFunction {
                name: name.to_string(),
            });
    }
    if spec.actor_id.is_empty() {
        return registry::lookup(name).map(Target::Function).ok_or_else(|| {
            Error::UnknownFunction {
                name: name.to_string(),
            }
        });
    }
    let h = hosted
        .as_ref()
        .filter(|h| h.actor_id == spec.actor_id)
        .ok_or_else(|| Error::ActorDied {
            actor: hex::encode(&spec.actor_id),
            reason: "the worker the call reached does not host it (it was restarted elsewhere)"
                .to_string(),
        })?;
    registry::actor_method(h.class.name, name)
        .map(Target::Method)
        .ok_or_else(|| Error::UnknownFunction {
            name: format!("{}::{name}", h.class.name),
        })
}

impl Target {
    /// The name it is registered under (a method's own name, as its calls carry it).
    fn name(&self) -> &'static str {
        match self {
            Target::Function(f) => f.name,
            Target::CreateActor(c) => c.name,
            Target::Method(m) => m.method,
        }
    }
}

/// How errors of this task name what ran: the function, or `Class.method`.
fn display_name(spec: &TaskSpec, target: &Target) -> String {
    match target {
        Target::Function(f) => f.name.to_string(),
        Target::CreateActor(c) => format!("{}::new", short_name(c.name)),
        Target::Method(m) => format!("{}.{}", short_name(m.class), spec.function_name),
    }
}

/// The last path segment of a registered name.
pub(crate) fn short_name(path: &str) -> &str {
    path.rsplit("::").next().unwrap_or(path)
}

/// Runs one task: its result, and the references inside it lent to the caller.
fn execute(
    cw: &Arc<CoreWorker>,
    spec: &TaskSpec,
    target: Target,
    hosted: &mut Option<Hosted>,
) -> Result<(miniray_proto::ObjectValue, Vec<ContainedRef>)> {
    // Built only for an error: most tasks never need it.
    let name = || display_name(spec, &target);

    let mut pinned: Vec<ObjectId> = Vec::new();
    let fetched = cw.block_on(fetch_args(cw, spec, &mut pinned))?;
    // References serialized during the task (into its return value) are captured and held
    // until the caller is registered as their borrower (see `borrowing.rs`).
    let (result, contained) = borrowing::capture_refs(|| {
        fetched.and_then(|args| {
            let slices = args
                .iter()
                .map(|a| match a {
                    ArgBytes::Inline(b) => Ok(*b),
                    ArgBytes::Plasma(loc) => cw.plasma.slice(*loc),
                })
                .collect::<Result<Vec<&[u8]>>>()?;
            set_in_task(true);
            let out = catch_unwind(AssertUnwindSafe(|| match &target {
                Target::Function(f) => (f.invoke)(&slices).map(Some),
                Target::CreateActor(class) => (class.construct)(&slices).map(|instance| {
                    *hosted = Some(Hosted {
                        actor_id: spec.actor_id.clone(),
                        class,
                        instance,
                    });
                    None
                }),
                Target::Method(m) => match hosted.as_mut() {
                    Some(h) => (m.invoke)(h.instance.as_mut(), &slices).map(Some),
                    None => Err(InvokeError::WrongActor),
                },
            }));
            set_in_task(false);
            match out {
                Ok(Ok(bytes)) => Ok(bytes),
                Ok(Err(e)) => Err(Error::Deserialize {
                    what: format!("a value of {}", name()),
                    reason: e.to_string(),
                }),
                Err(payload) => Err(Error::TaskFailed {
                    function: name(),
                    message: panic_message(payload.as_ref()),
                }),
            }
        })
    });
    if let Ok(Err(e)) = cw.block_on(cw.plasma.release(&pinned)) {
        warn!(error = %e, "releasing task arguments failed");
    }
    // References decoded from the arguments are registered with their owners before the
    // reply lets the caller drop its own.
    cw.block_on(cw.register_new_borrows())?;
    // An actor's creation has no result object: the GCS only needs to hear it succeeded.
    let Some(bytes) = result? else {
        return Ok((
            miniray_proto::ObjectValue {
                location: Some(object_value::Location::Inline(Vec::new())),
                size: 0,
            },
            Vec::new(),
        ));
    };

    let return_id =
        ObjectId::from_bytes(&spec.return_id).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let owner = spec
        .caller
        .clone()
        .ok_or_else(|| Error::InvalidArgument("task without a caller".into()))?;
    let value =
        cw.block_on(cw.store_encoded(return_id, owner.clone(), &Encoded::Owned(bytes)))??;
    let lent = if contained.is_empty() {
        Vec::new()
    } else {
        cw.block_on(cw.lend_to(&owner, &contained))?
    };
    // Only now may this process's own references to them go.
    drop(contained);
    Ok((value.to_proto(), lent))
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
