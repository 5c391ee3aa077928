//! Task events: what every task attempt went through, pieced together from the state
//! transitions core workers record and raylets forward (`AddTaskEvents`), served to
//! `miniray timeline` and tests (`GetTaskEvents`). As Ray's `GcsTaskManager`, memory only:
//! a restarted GCS starts with none.
//!
//! Invariants:
//! - At most `max_tasks` records (one per task id and attempt) are kept; past that the
//!   record first seen longest ago goes, and every event it held is counted in
//!   `dropped_at_gcs`. Events dropped before they got here (core worker and raylet
//!   buffers) are added up in `dropped_at_sources`.
//! - A batch with a malformed id is refused whole; nothing of it is applied.
//! - The table is a plain mutex held for memory work only, never across an await.

use std::collections::{HashMap, VecDeque};

use miniray_common::ids::InvalidId;
use miniray_common::{JobId, TaskId};
use miniray_proto::{GetTaskEventsReply, TaskEvent, TaskRecord, TaskState};
use parking_lot::Mutex;

/// Default of [`crate::GcsConfig::max_task_events`] (Ray's
/// `task_events_max_num_task_in_gcs`).
pub const DEFAULT_MAX_TASK_EVENTS: usize = 100_000;

type Key = (TaskId, u32);

struct Entry {
    record: TaskRecord,
    /// Events merged into the record: what its eviction drops.
    events: u64,
}

struct Table {
    records: HashMap<Key, Entry>,
    /// Keys of `records` in the order first seen: eviction and reply order.
    order: VecDeque<Key>,
    dropped_at_sources: u64,
    dropped_at_gcs: u64,
}

/// The task records of the cluster (see the module invariants).
pub(crate) struct TaskEvents {
    max_tasks: usize,
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

/// A checked event: its key and state, ready to merge.
struct Checked {
    key: Key,
    state: TaskState,
    event: TaskEvent,
}

fn parse_state(task: TaskId, raw: i32) -> Result<TaskState, String> {
    TaskState::try_from(raw)
        .ok()
        .filter(|s| *s != TaskState::Unspecified)
        .ok_or_else(|| format!("task {task}: invalid state {raw}"))
}

fn check(event: TaskEvent) -> Result<Checked, String> {
    let task = TaskId::from_bytes(&event.task_id).map_err(|e| format!("task id: {e}"))?;
    let state = parse_state(task, event.state)?;
    for earlier in &event.earlier_states {
        parse_state(task, earlier.state)?;
    }
    if !event.job_id.is_empty() {
        JobId::from_bytes(&event.job_id).map_err(|e| format!("task {task}: job id: {e}"))?;
    }
    Ok(Checked {
        key: (task, event.attempt),
        state,
        event,
    })
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
    // Events of one attempt come from two processes (submitter and worker) through
    // different raylets, so they arrive in any order: a final state stays final.
    if rank(state) > rank(record.state()) {
        record.set_state(state);
    }
}

fn merge(record: &mut TaskRecord, state: TaskState, event: TaskEvent) {
    if record.job_id.is_empty() {
        record.job_id = event.job_id;
    }
    if record.function_name.is_empty() {
        record.function_name = event.function_name;
    }
    if record.actor_id.is_empty() {
        record.actor_id = event.actor_id;
    }
    // The node and worker of the latest placement win (SUBMITTED carries none).
    if !event.node_id.is_empty() {
        record.node_id = event.node_id;
    }
    if !event.worker_id.is_empty() {
        record.worker_id = event.worker_id;
    }
    for earlier in &event.earlier_states {
        reach(record, earlier.state(), earlier.time_us);
    }
    reach(record, state, event.time_us);
    if state == TaskState::Failed {
        record.error_message = event.error_message;
    }
}

impl TaskEvents {
    pub(crate) fn new(max_tasks: usize) -> Self {
        Self {
            max_tasks: max_tasks.max(1),
            table: Mutex::new(Table {
                records: HashMap::new(),
                order: VecDeque::new(),
                dropped_at_sources: 0,
                dropped_at_gcs: 0,
            }),
        }
    }

    /// Merges a batch of events (refused whole when one is malformed).
    pub(crate) fn add(&self, events: Vec<TaskEvent>, dropped: u64) -> Result<(), String> {
        let checked = events
            .into_iter()
            .map(check)
            .collect::<Result<Vec<_>, _>>()?;
        let mut t = self.table.lock();
        t.dropped_at_sources = t.dropped_at_sources.saturating_add(dropped);
        for Checked { key, state, event } in checked {
            let entry = match t.records.get_mut(&key) {
                Some(entry) => entry,
                None => {
                    t.order.push_back(key);
                    t.records.entry(key).or_insert_with(|| Entry {
                        record: TaskRecord {
                            task_id: key.0.to_vec(),
                            attempt: key.1,
                            ..Default::default()
                        },
                        events: 0,
                    })
                }
            };
            entry.events += 1 + event.earlier_states.len() as u64;
            merge(&mut entry.record, state, event);
        }
        while t.records.len() > self.max_tasks {
            let Some(oldest) = t.order.pop_front() else {
                break;
            };
            if let Some(gone) = t.records.remove(&oldest) {
                t.dropped_at_gcs = t.dropped_at_gcs.saturating_add(gone.events);
            }
        }
        Ok(())
    }

    /// The records of `job` (all jobs when `None`): the last `limit` first seen (all when
    /// 0), in the order first seen, and the drop counters.
    pub(crate) fn get(&self, job: Option<JobId>, limit: usize) -> GetTaskEventsReply {
        let t = self.table.lock();
        let job = job.map(|j| j.to_vec());
        let wanted = |e: &&Entry| job.as_ref().is_none_or(|j| *j == e.record.job_id);
        let limit = if limit == 0 { usize::MAX } else { limit };
        let mut tasks: Vec<TaskRecord> = t
            .order
            .iter()
            .rev()
            .filter_map(|k| t.records.get(k))
            .filter(wanted)
            .take(limit)
            .map(|e| e.record.clone())
            .collect();
        tasks.reverse();
        GetTaskEventsReply {
            tasks,
            dropped_at_sources: t.dropped_at_sources,
            dropped_at_gcs: t.dropped_at_gcs,
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
    use super::*;

    fn event(task: TaskId, state: TaskState, time_us: u64) -> TaskEvent {
        TaskEvent {
            task_id: task.to_vec(),
            state: state as i32,
            time_us,
            ..Default::default()
        }
    }

    #[test]
    fn events_of_one_attempt_make_one_record_whatever_their_order() {
        let store = TaskEvents::new(10);
        let task = TaskId::random();
        let job = JobId::random();
        let node = vec![7u8; 16];
        let mut running = event(task, TaskState::Running, 30);
        running.node_id = node.clone();
        running.worker_id = vec![8u8; 16];
        running.function_name = "f".into();
        let mut submitted = event(task, TaskState::Submitted, 10);
        submitted.job_id = job.to_vec();
        let mut failed = event(task, TaskState::Failed, 40);
        failed.error_message = "boom".into();
        // The submitter's SCHEDULED folded into an event of a later state (as a process
        // coalesces them), arriving late.
        let mut scheduled = event(task, TaskState::Scheduled, 20);
        scheduled.earlier_states = vec![miniray_proto::TaskStateTime {
            state: TaskState::Submitted as i32,
            time_us: 11,
        }];
        // The worker's events arrive before the submitter's.
        store.add(vec![running, failed], 0).unwrap();
        store.add(vec![scheduled], 0).unwrap();
        store.add(vec![submitted], 0).unwrap();
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
        assert_eq!(r.node_id, node);
        assert_eq!(store.get(Some(JobId::random()), 0).tasks.len(), 0);
    }

    #[test]
    fn the_oldest_tasks_are_dropped_and_their_events_counted() {
        let store = TaskEvents::new(3);
        let tasks: Vec<TaskId> = (0..5).map(|_| TaskId::random()).collect();
        for (i, t) in tasks.iter().enumerate() {
            let events = vec![
                event(*t, TaskState::Submitted, i as u64),
                event(*t, TaskState::Running, i as u64),
            ];
            store.add(events, 1).unwrap();
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
    fn a_batch_with_a_bad_id_changes_nothing() {
        let store = TaskEvents::new(10);
        let good = event(TaskId::random(), TaskState::Submitted, 1);
        let mut bad = event(TaskId::random(), TaskState::Submitted, 1);
        bad.task_id = vec![1, 2, 3];
        assert!(store.add(vec![good, bad], 5).is_err());
        let reply = store.get(None, 0);
        assert!(reply.tasks.is_empty());
        assert_eq!(reply.dropped_at_sources, 0);
    }
}
