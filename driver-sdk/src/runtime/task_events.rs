//! Task events of this process: the state transitions of the tasks it submits (SUBMITTED,
//! SCHEDULED, and FAILED when a task fails without a worker's answer) and of those it runs
//! (RUNNING, FINISHED or FAILED), reported to its node's raylet in batches, which forwards
//! them to the GCS (`raylet/src/task_events.rs`).
//!
//! Invariants:
//! - Recording is off the task's hot path in cost: a push onto a bounded buffer under a
//!   mutex held for that push only, no id parsing beyond a 16-byte copy, and no allocation
//!   for the function name (a `&'static str` or a shared `Arc<str>`). Proto messages are
//!   built by the reporter, on the runtime, once per interval.
//! - At most `max_buffered` events wait; past that the oldest go and are counted, and the
//!   count travels with the next report. A report the raylet did not take is counted as
//!   dropped too (events are best-effort; a task's result never waits for them).
//! - With `MINIRAY_TASK_EVENTS_REPORT_INTERVAL_MS=0` nothing is recorded and no reporter
//!   runs.
//! - `shutdown` reports what is left, bounded by `FINAL_REPORT_DEADLINE`, so a short
//!   driver's events are not lost.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use miniray_common::config::env;
use miniray_common::time::now_us;
use miniray_common::{JobId, NodeId, WorkerId};
use miniray_proto::{ReportTaskEventsRequest, TaskEvent, TaskSpec, TaskState, TaskStateTime};
use parking_lot::Mutex;
use tracing::{debug, warn};

use super::CoreWorker;

/// Default report interval (Ray's `task_events_report_interval_ms`).
const DEFAULT_INTERVAL: Duration = Duration::from_millis(1000);
/// Events kept between reports (Ray's `task_events_max_num_task_events_in_buffer`).
pub(crate) const DEFAULT_MAX_BUFFERED: usize = 100_000;
/// Bound on one report, and on the last one at shutdown.
const REPORT_DEADLINE: Duration = Duration::from_secs(2);
pub(crate) const FINAL_REPORT_DEADLINE: Duration = Duration::from_secs(2);
/// Events per `ReportTaskEvents` call, well below the message size limit.
const MAX_EVENTS_PER_REPORT: usize = 20_000;

/// A function name without a copy: static on the submitter side, shared on the executor.
#[derive(Clone, Debug)]
pub(crate) enum FnName {
    None,
    Static(&'static str),
    Shared(Arc<str>),
}

impl FnName {
    fn into_string(self) -> String {
        match self {
            FnName::None => String::new(),
            FnName::Static(s) => s.to_string(),
            FnName::Shared(s) => s.to_string(),
        }
    }
}

/// Shared copies of the function names a worker runs, so that its events carry a name
/// without allocating one per event.
#[derive(Default)]
pub(crate) struct FnNames(HashMap<String, Arc<str>>);

/// Names kept by [`FnNames`] before it starts over (a process runs few distinct ones).
const MAX_FN_NAMES: usize = 1024;

impl FnNames {
    pub(crate) fn get(&mut self, name: &str) -> FnName {
        if let Some(shared) = self.0.get(name) {
            return FnName::Shared(Arc::clone(shared));
        }
        if self.0.len() >= MAX_FN_NAMES {
            self.0.clear();
        }
        let shared: Arc<str> = Arc::from(name);
        self.0.insert(name.to_string(), Arc::clone(&shared));
        FnName::Shared(shared)
    }
}

/// A 16-byte id as it came on the wire; anything of another length is recorded as empty.
type RawId = Option<[u8; 16]>;

fn raw_id(bytes: &[u8]) -> RawId {
    bytes.try_into().ok()
}

fn id_bytes(id: RawId) -> Vec<u8> {
    id.map(|b| b.to_vec()).unwrap_or_default()
}

/// One transition as recorded, turned into a [`TaskEvent`] only when reported.
#[derive(Debug)]
pub(crate) struct Recorded {
    task_id: RawId,
    attempt: u32,
    actor_id: RawId,
    state: TaskState,
    time_us: u64,
    function: FnName,
    /// Where the attempt was scheduled or ran.
    node_id: RawId,
    worker_id: RawId,
    error: Option<String>,
}

impl Recorded {
    /// `spec` reached `state` now.
    pub(crate) fn new(spec: &TaskSpec, state: TaskState, function: FnName) -> Self {
        Self {
            task_id: raw_id(&spec.task_id),
            attempt: spec.attempt,
            actor_id: raw_id(&spec.actor_id),
            state,
            time_us: now_us(),
            function,
            node_id: None,
            worker_id: None,
            error: None,
        }
    }

    /// Scheduled to, or ran on, this node and worker.
    pub(crate) fn on(mut self, node_id: &[u8], worker_id: &[u8]) -> Self {
        self.node_id = raw_id(node_id);
        self.worker_id = raw_id(worker_id);
        self
    }

    pub(crate) fn at(mut self, node_id: NodeId, worker_id: WorkerId) -> Self {
        self.node_id = Some(*node_id.as_bytes());
        self.worker_id = Some(*worker_id.as_bytes());
        self
    }

    pub(crate) fn with_error(mut self, error: String) -> Self {
        self.error = Some(error);
        self
    }

    fn into_proto(self, job_id: &[u8]) -> TaskEvent {
        TaskEvent {
            task_id: id_bytes(self.task_id),
            attempt: self.attempt,
            job_id: job_id.to_vec(),
            function_name: self.function.into_string(),
            actor_id: id_bytes(self.actor_id),
            state: self.state as i32,
            time_us: self.time_us,
            node_id: id_bytes(self.node_id),
            worker_id: id_bytes(self.worker_id),
            error_message: self.error.unwrap_or_default(),
            earlier_states: Vec::new(),
        }
    }

    /// Folds a later transition of the same attempt into `event`.
    fn fold_into(self, event: &mut TaskEvent) {
        event.earlier_states.push(TaskStateTime {
            state: event.state,
            time_us: event.time_us,
        });
        event.state = self.state as i32;
        event.time_us = self.time_us;
        if event.function_name.is_empty() {
            event.function_name = self.function.into_string();
        }
        if self.node_id.is_some() {
            event.node_id = id_bytes(self.node_id);
            event.worker_id = id_bytes(self.worker_id);
        }
        if let Some(error) = self.error {
            event.error_message = error;
        }
    }
}

struct Buffer {
    events: VecDeque<Recorded>,
    /// Dropped since the last report the raylet took.
    dropped: u64,
}

/// This process's task events waiting for the next report.
pub(crate) struct TaskEvents {
    /// `None`: task events are off.
    interval: Option<Duration>,
    job_id: Vec<u8>,
    max_buffered: usize,
    buffer: Mutex<Buffer>,
}

/// The report interval `MINIRAY_TASK_EVENTS_REPORT_INTERVAL_MS` asks for; `None`: off.
fn interval_from_env() -> Option<Duration> {
    let Ok(raw) = std::env::var(env::TASK_EVENTS_REPORT_INTERVAL_MS) else {
        return Some(DEFAULT_INTERVAL);
    };
    match raw.trim().parse::<u64>() {
        Ok(0) => None,
        Ok(ms) => Some(Duration::from_millis(ms)),
        Err(e) => {
            warn!(variable = env::TASK_EVENTS_REPORT_INTERVAL_MS, value = %raw, error = %e, "not a number of milliseconds; task events use the default interval");
            Some(DEFAULT_INTERVAL)
        }
    }
}

impl TaskEvents {
    /// Configured from the environment.
    pub(crate) fn from_env(job_id: JobId) -> Self {
        Self::new(job_id, interval_from_env(), DEFAULT_MAX_BUFFERED)
    }

    pub(crate) fn new(job_id: JobId, interval: Option<Duration>, max_buffered: usize) -> Self {
        Self {
            interval,
            job_id: job_id.to_vec(),
            max_buffered: max_buffered.max(1),
            buffer: Mutex::new(Buffer {
                events: VecDeque::new(),
                dropped: 0,
            }),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.interval.is_some()
    }

    /// Records one transition (nothing when events are off).
    pub(crate) fn record(&self, event: impl FnOnce() -> Recorded) {
        if self.enabled() {
            let event = event();
            let mut b = self.buffer.lock();
            self.push(&mut b, event);
        }
    }

    /// Records the transitions of a batch under one lock.
    pub(crate) fn record_all<I: IntoIterator<Item = Recorded>>(&self, events: impl FnOnce() -> I) {
        if self.enabled() {
            let mut b = self.buffer.lock();
            for event in events() {
                self.push(&mut b, event);
            }
        }
    }

    fn push(&self, b: &mut Buffer, event: Recorded) {
        if b.events.len() >= self.max_buffered {
            b.events.pop_front();
            b.dropped += 1;
        }
        b.events.push_back(event);
    }

    /// The next report (oldest events first), or `None` when there is nothing to say.
    #[cfg(test)]
    fn take(&self) -> Option<ReportTaskEventsRequest> {
        self.take_some().map(|(report, _)| report)
    }

    /// The next report and whether more events wait after it.
    fn take_some(&self) -> Option<(ReportTaskEventsRequest, bool)> {
        let (events, dropped, more) = {
            let mut b = self.buffer.lock();
            if b.events.is_empty() && b.dropped == 0 {
                return None;
            }
            let n = b.events.len().min(MAX_EVENTS_PER_REPORT);
            let events: Vec<Recorded> = b.events.drain(..n).collect();
            (events, std::mem::take(&mut b.dropped), !b.events.is_empty())
        };
        // Built outside the lock: the task path never waits for this. Transitions of one
        // attempt become one event (most tasks start and end between two reports), which
        // halves what the raylet and the GCS handle. A task id of the wrong length (a
        // malformed spec) would make the raylet refuse the whole report: it is dropped.
        let mut out: Vec<TaskEvent> = Vec::with_capacity(events.len());
        let mut index: HashMap<([u8; 16], u32), usize> = HashMap::with_capacity(events.len());
        let mut malformed = 0u64;
        for e in events {
            let Some(task) = e.task_id else {
                malformed += 1;
                continue;
            };
            match index.get(&(task, e.attempt)) {
                Some(&i) => e.fold_into(&mut out[i]),
                None => {
                    index.insert((task, e.attempt), out.len());
                    out.push(e.into_proto(&self.job_id));
                }
            }
        }
        let report = ReportTaskEventsRequest {
            events: out,
            dropped: dropped + malformed,
        };
        Some((report, more))
    }

    /// Counts a report that did not get through: its events and the drops it carried.
    fn lost(&self, events: usize, dropped: u64) {
        let mut b = self.buffer.lock();
        b.dropped = b
            .dropped
            .saturating_add(dropped)
            .saturating_add(events as u64);
    }
}

impl CoreWorker {
    /// Records that an attempt failed here, without a worker's answer (its worker died,
    /// an argument failed, the actor is dead, no lease could be had).
    pub(crate) fn record_failed(&self, spec: &TaskSpec, error: impl FnOnce() -> String) {
        self.task_events
            .record(|| Recorded::new(spec, TaskState::Failed, FnName::None).with_error(error()));
    }

    /// Sends every buffered event to this process's raylet.
    pub(crate) async fn report_task_events(&self) {
        while let Some((report, more)) = self.task_events.take_some() {
            let (events, dropped) = (report.events.len(), report.dropped);
            let home = self.home.get();
            let mut raylet = home.raylet.clone();
            let sent =
                tokio::time::timeout(REPORT_DEADLINE, raylet.report_task_events(report)).await;
            let failure = match sent {
                Ok(Ok(_)) => None,
                Ok(Err(status)) => Some(status.to_string()),
                Err(_) => Some("timed out".to_string()),
            };
            if let Some(error) = failure {
                debug!(raylet = %home.endpoint, %error, events, "reporting task events failed");
                self.task_events.lost(events, dropped);
                return;
            }
            if !more {
                return;
            }
        }
    }

    /// Reports task events every interval for as long as the runtime runs.
    pub(crate) async fn run_task_event_reporter(self: Arc<Self>) {
        let Some(interval) = self.task_events.interval else {
            return;
        };
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.report_task_events().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(n: u8) -> TaskSpec {
        TaskSpec {
            task_id: vec![n; 16],
            ..Default::default()
        }
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_counts_them() {
        let events = TaskEvents::new(JobId::random(), Some(DEFAULT_INTERVAL), 3);
        for n in 0..5u8 {
            events.record(|| Recorded::new(&spec(n), TaskState::Submitted, FnName::Static("f")));
        }
        let report = events.take().expect("a report");
        let ids: Vec<u8> = report.events.iter().map(|e| e.task_id[0]).collect();
        assert_eq!(ids, vec![2, 3, 4]);
        assert_eq!(report.dropped, 2);
        assert_eq!(report.events[0].function_name, "f");
        assert_eq!(report.events[0].job_id, events.job_id);
        assert!(events.take().is_none(), "the counter went with the report");
        // A report that did not get through is counted, events and drops.
        events.lost(report.events.len(), report.dropped);
        assert_eq!(events.take().map(|r| r.dropped), Some(5));
    }

    #[test]
    fn transitions_of_one_attempt_travel_as_one_event() {
        let events = TaskEvents::new(JobId::random(), Some(DEFAULT_INTERVAL), 10);
        let (node, worker) = (NodeId::random(), WorkerId::random());
        let mut retried = spec(1);
        retried.attempt = 1;
        events.record_all(|| {
            [
                Recorded::new(&spec(1), TaskState::Running, FnName::Static("f")).at(node, worker),
                Recorded::new(&retried, TaskState::Submitted, FnName::None),
                Recorded::new(&spec(1), TaskState::Failed, FnName::None).with_error("x".into()),
            ]
        });
        let report = events.take().expect("a report");
        assert_eq!(report.events.len(), 2, "one per attempt");
        let first = &report.events[0];
        assert_eq!(first.state(), TaskState::Failed);
        assert_eq!(first.earlier_states.len(), 1);
        assert_eq!(first.earlier_states[0].state(), TaskState::Running);
        assert_eq!(
            (first.function_name.as_str(), first.error_message.as_str()),
            ("f", "x")
        );
        assert_eq!(
            first.worker_id,
            worker.to_vec(),
            "kept from the running event"
        );
        assert_eq!(report.events[1].attempt, 1);
    }

    #[test]
    fn events_off_records_nothing() {
        let events = TaskEvents::new(JobId::random(), None, 3);
        events.record(|| Recorded::new(&spec(1), TaskState::Running, FnName::None));
        events.record_all(|| [Recorded::new(&spec(2), TaskState::Running, FnName::None)]);
        assert!(events.take().is_none());
    }

    #[test]
    fn placement_and_errors_reach_the_event() {
        let events = TaskEvents::new(JobId::random(), Some(DEFAULT_INTERVAL), 10);
        let (node, worker) = (NodeId::random(), WorkerId::random());
        events.record_all(|| {
            [
                Recorded::new(&spec(1), TaskState::Failed, FnName::Shared("g".into()))
                    .at(node, worker)
                    .with_error("boom".into()),
                // An id of the wrong length is left empty rather than sent malformed.
                Recorded::new(&spec(2), TaskState::Scheduled, FnName::None).on(&[1, 2], &[]),
            ]
        });
        let report = events.take().expect("a report");
        let failed = &report.events[0];
        assert_eq!(failed.state(), TaskState::Failed);
        assert_eq!(failed.node_id, node.to_vec());
        assert_eq!(failed.worker_id, worker.to_vec());
        assert_eq!(failed.error_message, "boom");
        assert!(report.events[1].node_id.is_empty());
    }
}
