//! Task events: what every task attempt went through, pieced together from the batches
//! core workers build and raylets forward (`AddTaskEvents`), served to `miniray timeline`,
//! the dashboard and tests (`GetTaskEvents`). As Ray's `GcsTaskManager`, memory only: a
//! restarted GCS starts with none.
//!
//! Invariants:
//! - Batches are kept as they arrived, and attempts are pieced together when asked. Adding
//!   is a check and a push, so the cost of events on a busy cluster stays with the rare
//!   reader, not with every task.
//! - At most `max_entries` entries (about two per task) are kept;
//!   past that the batches that arrived first go, and every event they held is counted in
//!   `dropped_at_gcs`. Events dropped before they got here (core worker and raylet
//!   buffers) are added up in `dropped_at_sources`.
//! - A call with a malformed batch is refused whole; nothing of it is applied.
//! - The table is a plain mutex held for memory work only, never across an await; a
//!   reader pieces records together outside it, from shared batches.

use std::collections::VecDeque;
use std::sync::Arc;

use miniray_common::JobId;
use miniray_common::ids::InvalidId;
use miniray_common::task_events::{Entry, MalformedBatch, attempt_index, check};
use miniray_proto::{GetTaskEventsReply, TaskEventBatch, TaskRecord, TaskState};
use parking_lot::Mutex;

/// Default of [`crate::GcsConfig::max_task_events`]: about Ray's
/// `task_events_max_num_task_in_gcs` of 100 000 tasks, each an entry from its submitter
/// (submitted and scheduled) and one from its worker when it ended.
pub const DEFAULT_MAX_TASK_EVENTS: usize = 200_000;

struct Stored {
    batch: Arc<TaskEventBatch>,
    entries: usize,
    states: u64,
}

struct Table {
    /// In arrival order: eviction order, and the order records are first seen in.
    batches: VecDeque<Stored>,
    /// Entries over `batches`.
    entries: usize,
    dropped_at_sources: u64,
    dropped_at_gcs: u64,
}

/// The task events of the cluster (see the module invariants).
pub(crate) struct TaskEvents {
    max_entries: usize,
    table: Mutex<Table>,
}

/// How far along a state is; a record's state only moves forward.
fn rank(state: TaskState) -> u8 {
    match state {
        TaskState::Unspecified => 0,
        TaskState::Submitted => 1,
        TaskState::Scheduled => 2,
        TaskState::Running => 3,
        TaskState::Finished | TaskState::Failed => 4,
    }
}

/// Records that the attempt reached `state` at `time_us`.
fn reach(record: &mut TaskRecord, state: TaskState, time_us: u64) {
    let slot = match state {
        TaskState::Unspecified => return,
        TaskState::Submitted => &mut record.submitted_time_us,
        TaskState::Scheduled => &mut record.scheduled_time_us,
        TaskState::Running => &mut record.running_time_us,
        TaskState::Finished => &mut record.finished_time_us,
        TaskState::Failed => &mut record.failed_time_us,
    };
    *slot = time_us;
    // Entries of one attempt come from two processes (submitter and worker) through
    // different raylets, so they arrive in any order: a final state stays final.
    if rank(state) > rank(record.state()) {
        record.set_state(state);
    }
}

fn merge(record: &mut TaskRecord, job_id: &[u8], e: &Entry<'_>) {
    if record.job_id.is_empty() {
        record.job_id = job_id.to_vec();
    }
    if record.function_name.is_empty()
        && let Some(f) = e.function
    {
        record.function_name = f.to_string();
    }
    if record.actor_id.is_empty()
        && let Some(a) = e.actor_id
    {
        record.actor_id = a.to_vec();
    }
    // The node and worker of the latest placement win (SUBMITTED carries none).
    if let (Some(node), Some(worker)) = (e.node_id, e.worker_id) {
        record.node_id = node.to_vec();
        record.worker_id = worker.to_vec();
    }
    for (state, time_us) in e.states() {
        reach(record, state, time_us);
    }
    if let Some(error) = e.error {
        record.error_message = error.to_string();
    }
}

impl TaskEvents {
    pub(crate) fn new(max_entries: usize) -> Self {
        Self {
            max_entries: max_entries.max(1),
            table: Mutex::new(Table {
                batches: VecDeque::new(),
                entries: 0,
                dropped_at_sources: 0,
                dropped_at_gcs: 0,
            }),
        }
    }

    /// Keeps a node's batches (refused whole when one is malformed).
    pub(crate) fn add(
        &self,
        batches: Vec<TaskEventBatch>,
        dropped: u64,
    ) -> Result<(), MalformedBatch> {
        let mut stored = Vec::with_capacity(batches.len());
        let mut trimmed = 0u64;
        for batch in &batches {
            let checked = check(batch)?;
            if checked.len() > self.max_entries {
                // Larger than the whole table: only its last entries can stay.
                let last = checked.last(self.max_entries);
                let kept = check(&last)?;
                trimmed += checked.state_count() - kept.state_count();
                stored.push((kept.len(), kept.state_count(), Some(last)));
            } else {
                stored.push((checked.len(), checked.state_count(), None));
            }
        }
        let mut t = self.table.lock();
        t.dropped_at_sources = t.dropped_at_sources.saturating_add(dropped);
        t.dropped_at_gcs = t.dropped_at_gcs.saturating_add(trimmed);
        for (batch, (entries, states, replaced)) in batches.into_iter().zip(stored) {
            if entries == 0 {
                continue;
            }
            t.entries += entries;
            t.batches.push_back(Stored {
                batch: Arc::new(replaced.unwrap_or(batch)),
                entries,
                states,
            });
        }
        while t.entries > self.max_entries {
            let Some(gone) = t.batches.pop_front() else {
                break;
            };
            t.entries -= gone.entries;
            t.dropped_at_gcs = t.dropped_at_gcs.saturating_add(gone.states);
        }
        Ok(())
    }

    /// The records of `job` (all jobs when `None`): the last `limit` first seen (all when
    /// 0), in the order first seen, and the drop counters.
    pub(crate) fn get(&self, job: Option<JobId>, limit: usize) -> GetTaskEventsReply {
        let (batches, dropped_at_sources, dropped_at_gcs) = {
            let t = self.table.lock();
            let job = job.map(|j| j.to_vec());
            let batches: Vec<Arc<TaskEventBatch>> = t
                .batches
                .iter()
                .filter(|s| job.as_ref().is_none_or(|j| *j == s.batch.job_id))
                .map(|s| Arc::clone(&s.batch))
                .collect();
            (batches, t.dropped_at_sources, t.dropped_at_gcs)
        };
        let mut tasks: Vec<TaskRecord> = Vec::new();
        let mut index = attempt_index(0);
        for batch in &batches {
            // Checked when added; a batch is never changed after.
            let Ok(checked) = check(batch) else {
                continue;
            };
            for e in checked.entries() {
                let i = *index.entry((*e.task_id, e.attempt)).or_insert_with(|| {
                    tasks.push(TaskRecord {
                        task_id: e.task_id.to_vec(),
                        attempt: e.attempt,
                        ..Default::default()
                    });
                    tasks.len() - 1
                });
                merge(&mut tasks[i], &batch.job_id, &e);
            }
        }
        if limit > 0 && tasks.len() > limit {
            tasks.drain(..tasks.len() - limit);
        }
        GetTaskEventsReply {
            tasks,
            dropped_at_sources,
            dropped_at_gcs,
        }
    }
}

/// The job filter of a `GetTaskEvents` request: empty means every job.
pub(crate) fn job_filter(raw: &[u8]) -> Result<Option<JobId>, InvalidId> {
    if raw.is_empty() {
        Ok(None)
    } else {
        JobId::from_bytes(raw).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use miniray_common::TaskId;
    use miniray_common::task_events::{BatchBuilder, NewEntry};

    use super::*;

    /// One entry per `(task, states)` with what else the test sets.
    struct At<'a> {
        task: TaskId,
        states: &'a [(TaskState, u64)],
        function: Option<&'a str>,
        placement: Option<([u8; 16], [u8; 16])>,
        error: Option<&'a str>,
    }

    fn at(task: TaskId, states: &[(TaskState, u64)]) -> At<'_> {
        At {
            task,
            states,
            function: None,
            placement: None,
            error: None,
        }
    }

    fn batch(job: JobId, entries: &[At<'_>]) -> TaskEventBatch {
        let mut b = BatchBuilder::new(job.as_bytes());
        for e in entries {
            b.push(NewEntry {
                task_id: e.task.as_bytes(),
                attempt: 0,
                states: e.states,
                function: e.function,
                placement: e.placement.as_ref().map(|(n, w)| (n, w)),
                actor_id: None,
                error: e.error,
            });
        }
        b.finish()
    }

    #[test]
    fn entries_of_one_attempt_make_one_record_whatever_their_order() {
        let store = TaskEvents::new(10);
        let task = TaskId::random();
        let job = JobId::random();
        let (node, worker) = ([7u8; 16], [8u8; 16]);
        use TaskState::*;
        // The worker's entry arrives before the submitter's.
        let worker_side = At {
            function: Some("f"),
            placement: Some((node, worker)),
            error: Some("boom"),
            ..at(task, &[(Running, 30), (Failed, 40)])
        };
        let submitter_side = At {
            placement: Some((node, worker)),
            ..at(task, &[(Submitted, 10), (Scheduled, 20)])
        };
        store.add(vec![batch(job, &[worker_side])], 0).unwrap();
        store.add(vec![batch(job, &[submitter_side])], 0).unwrap();
        let reply = store.get(Some(job), 0);
        assert_eq!(reply.tasks.len(), 1);
        let r = &reply.tasks[0];
        assert_eq!(r.state(), TaskState::Failed);
        assert_eq!(
            (
                r.submitted_time_us,
                r.scheduled_time_us,
                r.running_time_us,
                r.failed_time_us
            ),
            (10, 20, 30, 40)
        );
        assert_eq!(
            (r.function_name.as_str(), r.error_message.as_str()),
            ("f", "boom")
        );
        assert_eq!(
            (r.node_id.as_slice(), r.job_id.clone()),
            (&node[..], job.to_vec())
        );
        assert_eq!(store.get(Some(JobId::random()), 0).tasks.len(), 0);
    }

    #[test]
    fn the_oldest_batches_are_dropped_and_their_events_counted() {
        let store = TaskEvents::new(3);
        let job = JobId::random();
        let tasks: Vec<TaskId> = (0..5).map(|_| TaskId::random()).collect();
        use TaskState::*;
        for t in &tasks {
            let states = [(Submitted, 1), (Running, 2)];
            store.add(vec![batch(job, &[at(*t, &states)])], 1).unwrap();
        }
        let reply = store.get(None, 0);
        let kept: Vec<Vec<u8>> = reply.tasks.iter().map(|r| r.task_id.clone()).collect();
        let newest: Vec<Vec<u8>> = tasks[2..].iter().map(|t| t.to_vec()).collect();
        assert_eq!(kept, newest);
        assert_eq!(reply.dropped_at_gcs, 4, "two tasks of two events each");
        assert_eq!(reply.dropped_at_sources, 5);
        // The limit keeps the most recent ones, in order.
        let last = store.get(None, 2);
        assert_eq!(last.tasks.len(), 2);
        assert_eq!(last.tasks[1].task_id, tasks[4].to_vec());
    }

    #[test]
    fn a_batch_larger_than_the_table_keeps_its_last_entries() {
        let store = TaskEvents::new(2);
        let tasks: Vec<TaskId> = (0..5).map(|_| TaskId::random()).collect();
        let states = [(TaskState::Finished, 1)];
        let entries: Vec<At<'_>> = tasks.iter().map(|t| at(*t, &states)).collect();
        store
            .add(vec![batch(JobId::random(), &entries)], 0)
            .unwrap();
        let reply = store.get(None, 0);
        let kept: Vec<Vec<u8>> = reply.tasks.iter().map(|r| r.task_id.clone()).collect();
        assert_eq!(kept, vec![tasks[3].to_vec(), tasks[4].to_vec()]);
        assert_eq!(reply.dropped_at_gcs, 3);
    }

    #[test]
    fn a_call_with_a_malformed_batch_changes_nothing() {
        let store = TaskEvents::new(10);
        let job = JobId::random();
        let states = [(TaskState::Submitted, 1)];
        let good = batch(job, &[at(TaskId::random(), &states)]);
        let mut bad = good.clone();
        bad.task_ids.truncate(3);
        assert!(store.add(vec![good, bad], 5).is_err());
        let reply = store.get(None, 0);
        assert!(reply.tasks.is_empty());
        assert_eq!(reply.dropped_at_sources, 0);
    }
}
