//! Task events on their way to the GCS: every core worker of this node (drivers and
//! workers) reports its batches here (`ReportTaskEvents`), and the raylet forwards them
//! on its own timer, or sooner when many wait (`AddTaskEvents`), so the GCS sees one
//! connection per node rather than one per process. On the way it counts the tasks this
//! node ran by function and state ([`TaskCounts`]).
//!
//! Invariants:
//! - Batches travel as their core workers built them: the raylet checks and counts a
//!   batch, and never decodes it into per-event messages or re-groups it (that cost more
//!   than the tasks it describes; the GCS pieces attempts together when asked).
//! - At most `max_buffered` entries wait here (the newest batch always stays whole); past
//!   that the oldest batches go and their events are counted. The count, plus what the
//!   core workers reported dropping, travels with the next call.
//! - A call the GCS did not take is counted as dropped (keeping a copy of every batch for
//!   that case cost more than the rest of forwarding): events are best-effort.
//! - A malformed batch is refused whole (`InvalidArgument`), so a bad worker cannot make
//!   the GCS refuse the node's other events.
//! - Only entries placed on this node count in [`TaskCounts`]: a driver here may report
//!   the FAILED of a task placed elsewhere (its worker died).
//! - The buffer and the counts are plain mutexes held for memory work only.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use miniray_common::NodeId;
use miniray_common::task_events::{CheckedBatch, MalformedBatch, check};
use miniray_proto::{AddTaskEventsRequest, TaskEventBatch, TaskState};
use parking_lot::Mutex;

use crate::node::Node;

/// Entries (task attempts) kept while waiting for the next forward (Ray's
/// `task_events_max_num_task_events_in_buffer` on the worker side).
pub const DEFAULT_MAX_BUFFERED_EVENTS: usize = 100_000;
/// How often buffered events go to the GCS.
pub const DEFAULT_TASK_EVENTS_FORWARD_INTERVAL: Duration = Duration::from_secs(1);
/// Bound on one `AddTaskEvents` call.
const GCS_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Entries per `AddTaskEvents` call (past the first batch): a full buffer goes in several
/// messages well below the message size limit.
const MAX_ENTRIES_PER_CALL: usize = 40_000;
/// Entries that start a forward before the interval is up: a node running 10⁵ tasks a
/// second reports more in an interval than the buffer keeps.
const FORWARD_AT: usize = 20_000;

/// Tasks this node ran, by function and state, since the raylet started.
#[derive(Default)]
pub struct TaskCounts {
    /// Function name → [started running, finished, failed].
    by_function: Mutex<HashMap<String, [u64; 3]>>,
}

/// The states [`TaskCounts`] keeps, in its array order.
const COUNTED: [(TaskState, &str); 3] = [
    (TaskState::Running, "RUNNING"),
    (TaskState::Finished, "FINISHED"),
    (TaskState::Failed, "FAILED"),
];

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
                    .map(|((_, state), n)| (f.clone(), *state, *n))
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Counts the entries of `batch` placed on `node`: first by the batch's function
    /// index, then into the table once per function.
    fn count(&self, batch: &CheckedBatch<'_>, node: &[u8; 16]) {
        let here: Vec<bool> = batch.placement_nodes().map(|n| n == node).collect();
        if !here.contains(&true) {
            return;
        }
        let names = &batch.batch().function_names;
        // Per function index, and one slot past them for entries without a name.
        let mut tally = vec![[0u64; 3]; names.len() + 1];
        for i in 0..batch.len() {
            if !batch.placement_of(i).is_some_and(|p| here[p]) {
                continue;
            }
            let slot = batch.function_of(i).unwrap_or(names.len());
            for (k, (state, _)) in COUNTED.iter().enumerate() {
                if batch.reached(i, *state) {
                    tally[slot][k] += 1;
                }
            }
        }
        let mut by_function = self.by_function.lock();
        for (slot, counts) in tally.iter().enumerate() {
            if counts == &[0; 3] {
                continue;
            }
            let name = names.get(slot).map_or("", String::as_str);
            let total = match by_function.get_mut(name) {
                Some(total) => total,
                None => by_function.entry(name.to_string()).or_default(),
            };
            for (t, n) in total.iter_mut().zip(counts) {
                *t += n;
            }
        }
    }
}

/// A batch waiting here, with the sizes its forwarding and dropping need.
struct Waiting {
    batch: TaskEventBatch,
    entries: usize,
    states: u64,
}

struct Buffer {
    batches: VecDeque<Waiting>,
    /// Entries over `batches`.
    entries: usize,
    /// Dropped here or at the sources since the last call the GCS took.
    dropped: u64,
}

/// The node's task events waiting for the GCS, and its task counts.
pub(crate) struct TaskEventBuffer {
    node_id: [u8; 16],
    max_buffered: usize,
    /// Buffered entries that wake the forwarder early (`FORWARD_AT`, below `max_buffered`).
    forward_at: usize,
    buffer: Mutex<Buffer>,
    /// Woken when `forward_at` entries wait.
    full: tokio::sync::Notify,
    pub(crate) counts: Arc<TaskCounts>,
}

/// A call for the GCS and what it loses if it does not get through.
struct Call {
    request: AddTaskEventsRequest,
    states: u64,
    more: bool,
}

impl TaskEventBuffer {
    pub(crate) fn new(node_id: NodeId, max_buffered: usize) -> Self {
        let max_buffered = max_buffered.max(1);
        Self {
            node_id: *node_id.as_bytes(),
            max_buffered,
            forward_at: FORWARD_AT.min(max_buffered.div_ceil(2)),
            buffer: Mutex::new(Buffer {
                batches: VecDeque::new(),
                entries: 0,
                dropped: 0,
            }),
            full: tokio::sync::Notify::new(),
            counts: Arc::new(TaskCounts::default()),
        }
    }

    /// Takes a core worker's report (refused whole if its batch is malformed).
    pub(crate) fn report(
        &self,
        batch: Option<TaskEventBatch>,
        dropped: u64,
    ) -> Result<(), MalformedBatch> {
        let waiting = match &batch {
            Some(b) => {
                let checked = check(b)?;
                self.counts.count(&checked, &self.node_id);
                Some((checked.len(), checked.state_count()))
            }
            None => None,
        };
        let mut b = self.buffer.lock();
        b.dropped = b.dropped.saturating_add(dropped);
        if let (Some(batch), Some((entries, states))) = (batch, waiting)
            && entries > 0
        {
            // Once per crossing: the forwarder takes everything when it wakes.
            if b.entries < self.forward_at && b.entries + entries >= self.forward_at {
                self.full.notify_one();
            }
            b.entries += entries;
            b.batches.push_back(Waiting {
                batch,
                entries,
                states,
            });
        }
        // The oldest batches go past the bound; the newest one always stays.
        while b.entries > self.max_buffered && b.batches.len() > 1 {
            let Some(gone) = b.batches.pop_front() else {
                break;
            };
            b.entries -= gone.entries;
            b.dropped = b.dropped.saturating_add(gone.states);
        }
        Ok(())
    }

    /// The next call for the GCS (the oldest batches first) and the drops to report with
    /// it; `None` when there is nothing to say.
    fn take(&self) -> Option<Call> {
        let mut b = self.buffer.lock();
        if b.batches.is_empty() && b.dropped == 0 {
            return None;
        }
        let mut batches = Vec::new();
        let (mut entries, mut states) = (0usize, 0u64);
        while let Some(next) = b.batches.front() {
            if !batches.is_empty() && entries + next.entries > MAX_ENTRIES_PER_CALL {
                break;
            }
            let Some(w) = b.batches.pop_front() else {
                break;
            };
            entries += w.entries;
            states += w.states;
            batches.push(w.batch);
        }
        b.entries -= entries;
        let dropped = std::mem::take(&mut b.dropped);
        Some(Call {
            request: AddTaskEventsRequest { batches, dropped },
            states: states.saturating_add(dropped),
            more: !b.batches.is_empty(),
        })
    }

    /// Counts a call the GCS did not take: its events and the drops it carried.
    fn lost(&self, states: u64) {
        let mut b = self.buffer.lock();
        b.dropped = b.dropped.saturating_add(states);
    }

    /// Sends what is buffered; false when the GCS did not take a call (what it carried is
    /// counted as dropped).
    pub(crate) async fn forward(&self, node: &Node) -> bool {
        while let Some(call) = self.take() {
            let batches = call.request.batches.len();
            let mut gcs = node.gcs.clone();
            let outcome =
                tokio::time::timeout(GCS_CALL_TIMEOUT, gcs.add_task_events(call.request)).await;
            let failure = match outcome {
                Ok(Ok(_)) => None,
                Ok(Err(status)) => Some(status.to_string()),
                Err(_) => Some("timed out".to_string()),
            };
            if let Some(error) = failure {
                tracing::debug!(%error, batches, "forwarding task events failed");
                self.lost(call.states);
                return false;
            }
            if !call.more {
                return true;
            }
        }
        true
    }
}

/// Forwards the node's task events every `interval`, and whenever `FORWARD_AT` entries
/// wait, until the raylet stops (its shutdown sends what is left, see `supervise`).
pub(crate) async fn run(node: Arc<Node>, interval: Duration) {
    let mut shutdown = node.shutdown_signal();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = node.task_events.full.notified() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        node.task_events.forward(&node).await;
    }
}

#[cfg(test)]
mod tests {
    use miniray_common::task_events::{BatchBuilder, NewEntry};
    use miniray_common::{TaskId, WorkerId};

    use super::*;

    /// One entry per `(states, node, function)`.
    fn batch(entries: &[(&[TaskState], Option<NodeId>, &str)]) -> TaskEventBatch {
        let mut b = BatchBuilder::new(&[3; 16]);
        let worker = WorkerId::random();
        for (states, node, function) in entries {
            let times: Vec<(TaskState, u64)> = states.iter().map(|s| (*s, 1)).collect();
            let task = TaskId::random();
            b.push(NewEntry {
                task_id: task.as_bytes(),
                attempt: 0,
                states: &times,
                function: (!function.is_empty()).then_some(*function),
                placement: node.as_ref().map(|n| (n.as_bytes(), worker.as_bytes())),
                actor_id: None,
                error: None,
            });
        }
        b.finish()
    }

    fn submitted(n: usize) -> TaskEventBatch {
        batch(&vec![(&[TaskState::Submitted][..], None, "f"); n])
    }

    #[test]
    fn the_oldest_batches_are_dropped_and_counted_with_what_sources_dropped() {
        let buffer = TaskEventBuffer::new(NodeId::random(), 3);
        let (old, newer, newest) = (submitted(2), submitted(1), submitted(2));
        buffer.report(Some(old), 4).unwrap();
        buffer.report(Some(newer.clone()), 0).unwrap();
        buffer.report(Some(newest.clone()), 0).unwrap();
        let call = buffer.take().unwrap();
        assert_eq!(call.request.batches, vec![newer, newest]);
        assert_eq!(call.request.dropped, 4 + 2);
        assert!(!call.more);
        assert!(buffer.take().is_none(), "the counter went with the call");
        // A call the GCS refused is counted: its events and the drops it carried.
        buffer.lost(call.states);
        assert_eq!(buffer.take().map(|c| c.request.dropped), Some(6 + 3));
    }

    #[test]
    fn a_full_buffer_goes_in_several_calls() {
        let buffer = TaskEventBuffer::new(NodeId::random(), usize::MAX);
        for _ in 0..3 {
            buffer
                .report(Some(submitted(MAX_ENTRIES_PER_CALL / 2)), 0)
                .unwrap();
        }
        let first = buffer.take().unwrap();
        assert_eq!((first.request.batches.len(), first.more), (2, true));
        let second = buffer.take().unwrap();
        assert_eq!((second.request.batches.len(), second.more), (1, false));
    }

    #[test]
    fn only_tasks_that_ran_on_this_node_are_counted() {
        let node = NodeId::random();
        let other = NodeId::random();
        let buffer = TaskEventBuffer::new(node, 100);
        use TaskState::*;
        buffer
            .report(
                Some(batch(&[
                    (&[Submitted], None, "f"),
                    (&[Submitted, Scheduled], Some(node), "f"),
                    (&[Running, Finished], Some(node), "f"),
                    (&[Running, Failed], Some(node), "f"),
                    (&[Running], Some(node), "g"),
                    (&[Running], Some(other), "g"),
                    (&[Finished], Some(node), "h"),
                    (&[Running], Some(node), ""),
                ])),
                0,
            )
            .unwrap();
        // A second batch adds to the same counts.
        buffer
            .report(Some(batch(&[(&[Running, Finished], Some(node), "f")])), 0)
            .unwrap();
        assert_eq!(
            buffer.counts.snapshot(),
            vec![
                ("".to_string(), "RUNNING", 1),
                ("f".to_string(), "FAILED", 1),
                ("f".to_string(), "FINISHED", 2),
                ("f".to_string(), "RUNNING", 3),
                ("g".to_string(), "RUNNING", 1),
                ("h".to_string(), "FINISHED", 1),
            ]
        );
    }

    #[test]
    fn a_malformed_batch_is_refused_whole() {
        let buffer = TaskEventBuffer::new(NodeId::random(), 100);
        let mut bad = submitted(2);
        bad.task_ids.truncate(bad.task_ids.len() - 1);
        assert!(buffer.report(Some(bad), 7).is_err());
        assert!(buffer.take().is_none(), "its drops are not taken either");
    }
}
