//! Task events on their way to the GCS: every core worker of this node (drivers and
//! workers) reports its batches here (`ReportTaskEvents`), and the raylet forwards them
//! on its own timer (`AddTaskEvents`), so the GCS sees one connection per node rather
//! than one per process. On the way it counts the tasks this node ran by function and
//! state ([`TaskCounts`]).
//!
//! Invariants:
//! - At most `max_buffered` events wait here; past that the oldest go and are counted.
//!   The count, plus what the core workers reported dropping, travels with the next batch.
//! - A batch the GCS did not take is counted as dropped (keeping a copy of every batch
//!   for that case cost more than the rest of forwarding): events are best-effort.
//! - A report with a malformed id or state is refused whole (`InvalidArgument`), so a
//!   bad worker cannot make the GCS refuse the node's other events.
//! - Only events naming this node count in [`TaskCounts`]: a driver here reports the
//!   SUBMITTED and SCHEDULED events of tasks that run elsewhere.
//! - The buffer and the counts are plain mutexes held for memory work only.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use miniray_common::ids::InvalidId;
use miniray_common::{ActorId, JobId, NodeId, TaskId, WorkerId};
use miniray_proto::{AddTaskEventsRequest, TaskEvent, TaskState, TaskStateTime};
use parking_lot::Mutex;

use crate::node::Node;

/// Events kept while waiting for the next forward (Ray's
/// `task_events_max_num_task_events_in_buffer` on the worker side).
pub const DEFAULT_MAX_BUFFERED_EVENTS: usize = 100_000;
/// How often buffered events go to the GCS.
pub const DEFAULT_TASK_EVENTS_FORWARD_INTERVAL: Duration = Duration::from_secs(1);
/// Bound on one `AddTaskEvents` call.
const GCS_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Events per `AddTaskEvents` call: a full buffer goes in several messages well below the
/// message size limit.
const MAX_EVENTS_PER_CALL: usize = 20_000;

/// Tasks this node ran, by function and state, since the raylet started.
#[derive(Default)]
pub struct TaskCounts {
    /// Function name → [started running, finished, failed].
    by_function: Mutex<HashMap<String, [u64; 3]>>,
}

/// The states [`TaskCounts`] keeps, in its array order.
const COUNTED: [&str; 3] = ["RUNNING", "FINISHED", "FAILED"];

impl TaskCounts {
    /// `(function, state, count)` for every function that ran here, sorted by function
    /// then state. Every count is cumulative since the raylet started: `"RUNNING"` counts
    /// tasks that started running here, `"FINISHED"` and `"FAILED"` those that ended so
    /// (tasks running now: RUNNING − FINISHED − FAILED, when no event was dropped).
    pub fn snapshot(&self) -> Vec<(String, &'static str, u64)> {
        let by_function = self.by_function.lock();
        let mut out: Vec<(String, &'static str, u64)> = by_function
            .iter()
            .flat_map(|(f, counts)| {
                COUNTED
                    .iter()
                    .zip(counts)
                    .filter(|(_, n)| **n > 0)
                    .map(|(state, n)| (f.clone(), *state, *n))
            })
            .collect();
        out.sort_unstable();
        out
    }

    fn count(&self, events: &[TaskEvent], node: &[u8]) {
        let mut by_function = self.by_function.lock();
        for e in events.iter().filter(|e| e.node_id == node) {
            let states = e
                .earlier_states
                .iter()
                .map(|s| s.state())
                .chain([e.state()]);
            for state in states {
                let slot = match state {
                    TaskState::Running => 0,
                    TaskState::Finished => 1,
                    TaskState::Failed => 2,
                    _ => continue,
                };
                match by_function.get_mut(e.function_name.as_str()) {
                    Some(counts) => counts[slot] += 1,
                    None => {
                        let mut counts = [0; 3];
                        counts[slot] = 1;
                        by_function.insert(e.function_name.clone(), counts);
                    }
                }
            }
        }
    }
}

struct Buffer {
    events: VecDeque<TaskEvent>,
    /// Dropped here or at the sources since the last batch the GCS took.
    dropped: u64,
}

/// The node's task events waiting for the GCS, and its task counts.
pub(crate) struct TaskEventBuffer {
    node_id: Vec<u8>,
    max_buffered: usize,
    buffer: Mutex<Buffer>,
    pub(crate) counts: Arc<TaskCounts>,
}

/// Checks every id and the state of an event.
fn check(e: &TaskEvent) -> Result<(), String> {
    TaskId::from_bytes(&e.task_id).map_err(|err| format!("task id: {err}"))?;
    type Parse = fn(&[u8]) -> Result<(), InvalidId>;
    // The ids an event may leave empty.
    let optional: [(&[u8], &str, Parse); 4] = [
        (&e.job_id, "job id", |b| JobId::from_bytes(b).map(drop)),
        (&e.actor_id, "actor id", |b| {
            ActorId::from_bytes(b).map(drop)
        }),
        (&e.node_id, "node id", |b| NodeId::from_bytes(b).map(drop)),
        (&e.worker_id, "worker id", |b| {
            WorkerId::from_bytes(b).map(drop)
        }),
    ];
    for (raw, what, parse) in optional {
        if !raw.is_empty() {
            parse(raw).map_err(|err| format!("{what}: {err}"))?;
        }
    }
    let states = e.earlier_states.iter().map(|s| s.state).chain([e.state]);
    for state in states {
        if let Ok(TaskState::Unspecified) | Err(_) = TaskState::try_from(state) {
            return Err(format!("invalid state {state}"));
        }
    }
    Ok(())
}

/// The states in `batch` plus the drops it reports: what is dropped if it is lost.
fn dropped_with(batch: &AddTaskEventsRequest) -> u64 {
    let states: usize = batch
        .events
        .iter()
        .map(|e| 1 + e.earlier_states.len())
        .sum();
    batch.dropped.saturating_add(states as u64)
}

/// Folds the events of one attempt into one (the submitter's and the worker's, when both
/// are of this node and in one batch): the GCS merges half as many.
fn coalesce(events: Vec<TaskEvent>) -> Vec<TaskEvent> {
    let mut out: Vec<TaskEvent> = Vec::with_capacity(events.len());
    let mut index: HashMap<([u8; 16], u32), usize> = HashMap::with_capacity(events.len());
    for e in events {
        // Task ids were checked when reported.
        let Ok(task) = <[u8; 16]>::try_from(e.task_id.as_slice()) else {
            out.push(e);
            continue;
        };
        match index.get(&(task, e.attempt)) {
            Some(&i) => fold(&mut out[i], e),
            None => {
                index.insert((task, e.attempt), out.len());
                out.push(e);
            }
        }
    }
    out
}

/// Folds `e` into `into`, an event of the same attempt; the furthest state leads.
fn fold(into: &mut TaskEvent, mut e: TaskEvent) {
    let rank = |s: i32| match TaskState::try_from(s) {
        Ok(TaskState::Finished | TaskState::Failed) => 4,
        Ok(TaskState::Running) => 3,
        Ok(TaskState::Scheduled) => 2,
        Ok(TaskState::Submitted) => 1,
        _ => 0,
    };
    if rank(e.state) > rank(into.state) {
        std::mem::swap(&mut into.state, &mut e.state);
        std::mem::swap(&mut into.time_us, &mut e.time_us);
    }
    into.earlier_states.push(TaskStateTime {
        state: e.state,
        time_us: e.time_us,
    });
    into.earlier_states.append(&mut e.earlier_states);
    for (mine, theirs) in [
        (&mut into.job_id, e.job_id),
        (&mut into.actor_id, e.actor_id),
        (&mut into.node_id, e.node_id),
        (&mut into.worker_id, e.worker_id),
    ] {
        if mine.is_empty() {
            *mine = theirs;
        }
    }
    if into.function_name.is_empty() {
        into.function_name = e.function_name;
    }
    if into.error_message.is_empty() {
        into.error_message = e.error_message;
    }
}

impl TaskEventBuffer {
    pub(crate) fn new(node_id: NodeId, max_buffered: usize) -> Self {
        Self {
            node_id: node_id.to_vec(),
            max_buffered: max_buffered.max(1),
            buffer: Mutex::new(Buffer {
                events: VecDeque::new(),
                dropped: 0,
            }),
            counts: Arc::new(TaskCounts::default()),
        }
    }

    /// Takes a core worker's report (refused whole if an event is malformed).
    pub(crate) fn report(&self, events: Vec<TaskEvent>, dropped: u64) -> Result<(), String> {
        events.iter().try_for_each(check)?;
        self.counts.count(&events, &self.node_id);
        let mut b = self.buffer.lock();
        b.dropped = b.dropped.saturating_add(dropped);
        b.events.extend(events);
        self.trim(&mut b);
        Ok(())
    }

    /// Drops the oldest events past the bound, counting them.
    fn trim(&self, b: &mut Buffer) {
        let over = b.events.len().saturating_sub(self.max_buffered);
        if over > 0 {
            // An event may carry several states (coalesced by its core worker).
            let states: usize = b
                .events
                .drain(..over)
                .map(|e| 1 + e.earlier_states.len())
                .sum();
            b.dropped = b.dropped.saturating_add(states as u64);
        }
    }

    /// The next batch for the GCS (the oldest events first) and the drops to report with
    /// it; `None` when there is nothing to say.
    fn take(&self) -> Option<AddTaskEventsRequest> {
        let mut b = self.buffer.lock();
        if b.events.is_empty() && b.dropped == 0 {
            return None;
        }
        let n = b.events.len().min(MAX_EVENTS_PER_CALL);
        let events: Vec<TaskEvent> = b.events.drain(..n).collect();
        let dropped = std::mem::take(&mut b.dropped);
        drop(b);
        Some(AddTaskEventsRequest {
            events: coalesce(events),
            dropped,
        })
    }

    /// Counts a batch the GCS did not take: its states and the drops it carried.
    fn lost(&self, batch: &AddTaskEventsRequest) {
        let mut b = self.buffer.lock();
        b.dropped = b.dropped.saturating_add(dropped_with(batch));
    }

    /// Sends what is buffered; false when the GCS did not take a batch (it is counted as
    /// dropped).
    pub(crate) async fn forward(&self, node: &Node) -> bool {
        while let Some(batch) = self.take() {
            let sent = batch.events.len();
            let more = sent > 0 && !self.buffer.lock().events.is_empty();
            // What is lost if the call fails, counted before the batch moves into it.
            let lost = AddTaskEventsRequest {
                events: Vec::new(),
                dropped: dropped_with(&batch),
            };
            let mut gcs = node.gcs.clone();
            let outcome = tokio::time::timeout(GCS_CALL_TIMEOUT, gcs.add_task_events(batch)).await;
            let failure = match outcome {
                Ok(Ok(_)) => None,
                Ok(Err(status)) => Some(status.to_string()),
                Err(_) => Some("timed out".to_string()),
            };
            if let Some(error) = failure {
                tracing::debug!(%error, events = sent, "forwarding task events failed");
                self.lost(&lost);
                return false;
            }
            if !more {
                return true;
            }
        }
        true
    }
}

/// Forwards the node's task events every `interval` until the raylet stops (its shutdown
/// sends what is left, see `supervise`).
pub(crate) async fn run(node: Arc<Node>, interval: Duration) {
    let mut shutdown = node.shutdown_signal();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        node.task_events.forward(&node).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(state: TaskState, node: &[u8], function: &str) -> TaskEvent {
        TaskEvent {
            task_id: TaskId::random().to_vec(),
            state: state as i32,
            node_id: node.to_vec(),
            function_name: function.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_oldest_events_are_dropped_and_counted_with_what_sources_dropped() {
        let node = NodeId::random();
        let buffer = TaskEventBuffer::new(node, 3);
        let events: Vec<TaskEvent> = (0..5)
            .map(|_| event(TaskState::Submitted, &[], "f"))
            .collect();
        let ids: Vec<Vec<u8>> = events.iter().map(|e| e.task_id.clone()).collect();
        buffer.report(events, 4).unwrap();
        let batch = buffer.take().unwrap();
        let kept: Vec<Vec<u8>> = batch.events.iter().map(|e| e.task_id.clone()).collect();
        assert_eq!(kept, ids[2..].to_vec());
        assert_eq!(batch.dropped, 4 + 2);
        assert!(buffer.take().is_none(), "the counter went with the batch");
        // A batch the GCS refused is counted: its events and the drops it carried.
        buffer.lost(&batch);
        assert_eq!(buffer.take().map(|b| b.dropped), Some(6 + 3));
    }

    #[test]
    fn only_tasks_that_ran_on_this_node_are_counted() {
        let node = NodeId::random();
        let other = NodeId::random();
        let buffer = TaskEventBuffer::new(node, 100);
        let here = node.to_vec();
        buffer
            .report(
                vec![
                    event(TaskState::Submitted, &[], "f"),
                    event(TaskState::Scheduled, &here, "f"),
                    event(TaskState::Running, &here, "f"),
                    event(TaskState::Finished, &here, "f"),
                    event(TaskState::Running, &here, "f"),
                    event(TaskState::Failed, &here, "f"),
                    event(TaskState::Running, &here, "g"),
                    event(TaskState::Running, &other.to_vec(), "g"),
                    TaskEvent {
                        earlier_states: vec![miniray_proto::TaskStateTime {
                            state: TaskState::Running as i32,
                            time_us: 1,
                        }],
                        ..event(TaskState::Finished, &here, "h")
                    },
                ],
                0,
            )
            .unwrap();
        assert_eq!(
            buffer.counts.snapshot(),
            vec![
                ("f".to_string(), "FAILED", 1),
                ("f".to_string(), "FINISHED", 1),
                ("f".to_string(), "RUNNING", 2),
                ("g".to_string(), "RUNNING", 1),
                ("h".to_string(), "FINISHED", 1),
                ("h".to_string(), "RUNNING", 1),
            ]
        );
    }

    #[test]
    fn the_submitters_and_the_workers_events_of_an_attempt_go_as_one() {
        let node = NodeId::random();
        let buffer = TaskEventBuffer::new(node, 100);
        let here = node.to_vec();
        let time = |state: TaskState, time_us| TaskStateTime {
            state: state as i32,
            time_us,
        };
        let worker = TaskEvent {
            time_us: 4,
            earlier_states: vec![time(TaskState::Running, 3)],
            ..event(TaskState::Finished, &here, "f")
        };
        let submitter = TaskEvent {
            task_id: worker.task_id.clone(),
            time_us: 2,
            earlier_states: vec![time(TaskState::Submitted, 1)],
            job_id: JobId::random().to_vec(),
            ..event(TaskState::Scheduled, &here, "")
        };
        let other = event(TaskState::Submitted, &[], "g");
        buffer.report(vec![worker, other], 0).unwrap();
        buffer.report(vec![submitter.clone()], 0).unwrap();
        let batch = buffer.take().unwrap();
        assert_eq!(batch.events.len(), 2);
        let one = &batch.events[0];
        assert_eq!((one.state(), one.time_us), (TaskState::Finished, 4));
        let mut earlier: Vec<u64> = one.earlier_states.iter().map(|s| s.time_us).collect();
        earlier.sort_unstable();
        assert_eq!(earlier, vec![1, 2, 3]);
        assert_eq!(one.function_name, "f");
        assert_eq!(one.job_id, submitter.job_id);
    }

    #[test]
    fn a_report_with_a_bad_id_is_refused_whole() {
        let buffer = TaskEventBuffer::new(NodeId::random(), 100);
        let mut bad = event(TaskState::Running, &[], "f");
        bad.worker_id = vec![1];
        let good = event(TaskState::Running, &[], "f");
        assert!(buffer.report(vec![good, bad], 0).is_err());
        assert!(buffer.take().is_none());
    }
}
