//! Task events on their way to the GCS: every core worker of this node (drivers and
//! workers) reports its batches here (`ReportTaskEvents`), and the raylet forwards them
//! on its own timer (`AddTaskEvents`), so the GCS sees one connection per node rather
//! than one per process. On the way it counts the tasks this node ran by function and
//! state ([`TaskCounts`]).
//!
//! Invariants:
//! - At most `max_buffered` events wait here; past that the oldest go and are counted.
//!   The count, plus what the core workers reported dropping, travels with the next batch.
//! - A batch the GCS did not take is put back in front of newer events (still bounded),
//!   so a GCS restart loses nothing that fits.
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
use miniray_proto::{AddTaskEventsRequest, TaskEvent, TaskState};
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
            let slot = match e.state() {
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
    match TaskState::try_from(e.state) {
        Ok(TaskState::Unspecified) | Err(_) => Err(format!("invalid state {}", e.state)),
        Ok(_) => Ok(()),
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
            b.events.drain(..over);
            b.dropped = b.dropped.saturating_add(over as u64);
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
        Some(AddTaskEventsRequest { events, dropped })
    }

    /// Puts back a batch the GCS did not take, in front of what came since.
    fn put_back(&self, batch: AddTaskEventsRequest) {
        let mut b = self.buffer.lock();
        b.dropped = b.dropped.saturating_add(batch.dropped);
        for e in batch.events.into_iter().rev() {
            b.events.push_front(e);
        }
        self.trim(&mut b);
    }

    /// Sends what is buffered; false when the GCS did not take a batch (it is kept).
    pub(crate) async fn forward(&self, node: &Node) -> bool {
        while let Some(batch) = self.take() {
            let sent = batch.events.len();
            let mut gcs = node.gcs.clone();
            let outcome =
                tokio::time::timeout(GCS_CALL_TIMEOUT, gcs.add_task_events(batch.clone())).await;
            match outcome {
                Ok(Ok(_)) => {
                    if sent < MAX_EVENTS_PER_CALL {
                        return true;
                    }
                }
                Ok(Err(status)) => {
                    tracing::debug!(error = %status, events = sent, "forwarding task events failed");
                    self.put_back(batch);
                    return false;
                }
                Err(_) => {
                    tracing::debug!(events = sent, "forwarding task events timed out");
                    self.put_back(batch);
                    return false;
                }
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
        // A batch the GCS refused goes back in front of newer events, still bounded.
        let newer = event(TaskState::Submitted, &[], "f");
        let newer_id = newer.task_id.clone();
        buffer.report(vec![newer], 0).unwrap();
        buffer.put_back(batch);
        let again = buffer.take().unwrap();
        let order: Vec<Vec<u8>> = again.events.iter().map(|e| e.task_id.clone()).collect();
        assert_eq!(order, vec![ids[3].clone(), ids[4].clone(), newer_id]);
        assert_eq!(again.dropped, 6 + 1);
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
            ]
        );
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
