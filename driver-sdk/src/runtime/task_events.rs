//! Task events of this process: the state transitions of the tasks it runs (one entry per
//! attempt: SUBMITTED, SCHEDULED, RUNNING, then FINISHED or FAILED) and of the tasks it
//! submits that have not reached a worker (SUBMITTED while queued, FAILED when a task
//! fails without a worker's answer), reported to its node's raylet in batches, which
//! forwards them to the GCS (`raylet/src/task_events.rs`).
//!
//! Invariants:
//! - Recording is off the task's hot path in cost: a push onto the recording thread's own
//!   buffer (a shard: no other thread's pushes contend for it), no id parsing beyond a
//!   16-byte copy, no allocation for the function name (the registered `&'static str`),
//!   and a raw clock read ([`EventClock`](super::event_clock::EventClock)), turned into Unix time only when
//!   reported. The reporter builds the columnar batch (`TaskEventBatch`) once per
//!   interval, or as soon as a thread has `REPORT_AT` events waiting. It swaps a shard's
//!   buffer for an emptied one (the shard's lock is held for the swap, not for a copy of
//!   its events), and sizes each batch's columns before filling them, so that a report
//!   allocates no per-event memory.
//! - A task that reaches a worker is one entry, from that worker: its spec carries its
//!   SUBMITTED time (`TaskSpec.submitted_us`, set by [`TaskEvents::specs_for_push`]), the
//!   worker stamps SCHEDULED when the batch arrives, and RUNNING and the end follow. Its
//!   submitter records nothing for it. While a task waits in its submitter's queue, its
//!   queue entry carries the time ([`Submission`]); a report first scans the queues for
//!   tasks still waiting ([`scan_queue`]), so a queued task is seen SUBMITTED within an
//!   interval, and each attempt's SUBMITTED goes out once (by the scan, with the push, or
//!   with a FAILED the submitter records). A task waiting for its arguments is in no
//!   queue and is recorded SUBMITTED at once.
//! - A task run here is one push, when it ends: its RUNNING event waits in the thread's
//!   running slot ([`TaskEvents::start`]), which the first report after the start copies
//!   without taking it, so a task still running then is seen running; [`TaskEvents::end`]
//!   turns it into one event that carries every time, or only its end when a report sent
//!   the states before it already (each state of an attempt reaches the raylet once).
//! - At most `max_buffered` events wait per recording thread; past that the oldest go and
//!   are counted, and the count travels with the next report. A report the raylet did not
//!   take is counted as dropped too (events are best-effort; a task's result never waits
//!   for them).
//! - With `MINIRAY_TASK_EVENTS_REPORT_INTERVAL_MS=0` nothing is recorded and no reporter
//!   runs.
//! - `shutdown` reports what is left, bounded by `FINAL_REPORT_DEADLINE`, so a short
//!   driver's events are not lost.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::ThreadId;
use std::time::Duration;

use miniray_common::config::env;
use miniray_common::task_events::{BatchBuilder, NewEntry, time_count};
use miniray_common::{JobId, NodeId, WorkerId};
use miniray_proto::{ReportTaskEventsRequest, TaskSpec, TaskState};
use parking_lot::Mutex;
use tracing::{debug, warn};

use super::CoreWorker;
use super::event_clock::EventClock;

/// Default report interval (Ray's `task_events_report_interval_ms`).
const DEFAULT_INTERVAL: Duration = Duration::from_millis(1000);
/// Events kept between reports (Ray's `task_events_max_num_task_events_in_buffer`).
pub(crate) const DEFAULT_MAX_BUFFERED: usize = 100_000;
/// Bound on one report, and on the last one at shutdown.
const REPORT_DEADLINE: Duration = Duration::from_secs(2);
pub(crate) const FINAL_REPORT_DEADLINE: Duration = Duration::from_secs(2);
/// Entries per `ReportTaskEvents` call, well below the message size limit.
const MAX_ENTRIES_PER_REPORT: usize = 20_000;
/// Events that start a report before the interval is up: a process running 10⁵ tasks a
/// second records more in an interval than the buffer keeps, and a report of this size
/// costs about what the same events would cost in any other report (2,000 measured no
/// different).
const REPORT_AT: usize = 10_000;

/// A function name without a copy: the registered (static) name, or, for a task whose
/// function this process does not know (it fails), the name it asked for.
#[derive(Clone, Debug)]
pub(crate) enum FnName {
    Static(&'static str),
    Owned(Box<str>),
}

impl FnName {
    fn as_str(&self) -> &str {
        match self {
            FnName::Static(s) => s,
            FnName::Owned(s) => s,
        }
    }
}

/// A 16-byte id as it came on the wire; anything of another length is recorded as empty.
type RawId = Option<[u8; 16]>;

fn raw_id(bytes: &[u8]) -> RawId {
    bytes.try_into().ok()
}

/// One transition as recorded, turned into a batch entry only when reported.
#[derive(Clone, Debug)]
pub(crate) struct Recorded {
    task_id: RawId,
    attempt: u32,
    actor_id: RawId,
    state: TaskState,
    /// Raw [`EventClock`] time, stamped when pushed.
    time: u64,
    /// Raw time the task was submitted, on the event that first follows it ([`Submission`]);
    /// 0: none.
    submitted: u64,
    /// Raw time the task started running, on the event that ended it ([`TaskEvents::end`]);
    /// 0: none.
    started: u64,
    /// Unix µs of SUBMITTED as the task's spec carried it to the worker that runs it
    /// (`TaskSpec.submitted_us`); 0: none.
    submitted_us: u64,
    /// Raw time the batch holding the task reached the worker that runs it (SCHEDULED);
    /// 0: none.
    scheduled: u64,
    function: FnName,
    /// Where the attempt was scheduled or ran.
    node_id: RawId,
    worker_id: RawId,
    /// Boxed: most events have none, and every event is copied a few times.
    error: Option<Box<str>>,
}

impl Recorded {
    /// `spec` reached `state` now.
    pub(crate) fn new(spec: &TaskSpec, state: TaskState, function: FnName) -> Self {
        Self {
            task_id: raw_id(&spec.task_id),
            attempt: spec.attempt,
            actor_id: raw_id(&spec.actor_id),
            state,
            time: 0,
            submitted: 0,
            started: 0,
            submitted_us: 0,
            scheduled: 0,
            function,
            node_id: None,
            worker_id: None,
            error: None,
        }
    }

    /// Ran on this node and worker.
    pub(crate) fn at(mut self, node_id: NodeId, worker_id: WorkerId) -> Self {
        self.node_id = Some(*node_id.as_bytes());
        self.worker_id = Some(*worker_id.as_bytes());
        self
    }

    /// Reached this worker in a batch at raw time `scheduled`, submitted at Unix µs
    /// `submitted_us` (none when 0) as the spec says.
    pub(crate) fn scheduled_at(mut self, scheduled: u64, submitted_us: u64) -> Self {
        self.scheduled = scheduled;
        self.submitted_us = submitted_us;
        self
    }

    /// The entry also reports SUBMITTED at raw time `submitted` (none when 0).
    pub(crate) fn submitted_at(mut self, submitted: u64) -> Self {
        self.submitted = submitted;
        self
    }

    pub(crate) fn with_error(mut self, error: String) -> Self {
        self.error = Some(error.into_boxed_str());
        self
    }
}

/// Whether a queued task's SUBMITTED is still to be reported, and when it happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Submission {
    /// Submitted at this raw time; not reported yet.
    Waiting(u64),
    /// Reported by a report's scan of its queue. A scan stops at the newest of these:
    /// everything queued in front of it was scanned already.
    Scanned,
    /// Reported another way (or events are off): a scan passes over it.
    Reported,
}

impl Submission {
    /// The raw time to report on the task's next entry (0: none), leaving it reported.
    pub(crate) fn take(&mut self) -> u64 {
        match std::mem::replace(self, Submission::Reported) {
            Submission::Waiting(at) => at,
            _ => 0,
        }
    }
}

/// A queued task or actor call whose SUBMITTED may still wait.
pub(crate) trait Queued {
    fn spec(&self) -> &TaskSpec;
    fn function(&self) -> &'static str;
    fn submission(&mut self) -> &mut Submission;
}

/// SUBMITTED events for the tasks of `queue` still waiting, newest first, until one a
/// scan reported already.
///
/// Invariant (kept by the queues): a task is queued `Waiting` only at the back, and what
/// goes back to the front was reported already, so every waiting task is behind the
/// newest `Scanned` one.
pub(crate) fn scan_queue<'a, T: Queued + 'a>(
    queue: impl DoubleEndedIterator<Item = &'a mut T>,
    out: &mut Vec<Recorded>,
) {
    for task in queue.rev() {
        match *task.submission() {
            Submission::Scanned => break,
            Submission::Reported => {}
            Submission::Waiting(at) => {
                *task.submission() = Submission::Scanned;
                let mut event = Recorded::new(
                    task.spec(),
                    TaskState::Submitted,
                    FnName::Static(task.function()),
                );
                event.time = at;
                out.push(event);
            }
        }
    }
}

/// What the reporter reuses from one report to the next, so that building a report
/// neither allocates nor faults in fresh pages.
struct Scratch {
    /// The shards' buffers being reported, swapped out of the shards whole (a shard's lock
    /// is held for the swap, not for a copy of its events).
    taken: Vec<VecDeque<Recorded>>,
    /// Emptied buffers, swapped into the shards at the next report: their capacity is
    /// kept, so a thread's pushes do not grow a fresh buffer every interval.
    spare: Vec<VecDeque<Recorded>>,
    /// Events of no shard: the running tasks seen by this report.
    running: VecDeque<Recorded>,
    states: Vec<(TaskState, u64)>,
}

/// The events one thread recorded since the last report. Only that thread pushes, so
/// its lock is contended by nothing but the reporter's take, once per report: threads
/// that submit and run tasks side by side never wait for each other here.
struct Shard {
    owner: ThreadId,
    buffer: Mutex<Buffer>,
}

struct Buffer {
    events: VecDeque<Recorded>,
    /// The task this thread is running, from [`TaskEvents::start`] to [`TaskEvents::end`].
    running: Option<Recorded>,
    /// `running` went out with a report already: the event that ends it does not carry
    /// its RUNNING time again (the raylet counts each state of an attempt once).
    running_reported: bool,
    /// Dropped since the last report the raylet took.
    dropped: u64,
}

impl Shard {
    fn new() -> Self {
        Self {
            owner: std::thread::current().id(),
            buffer: Mutex::new(Buffer {
                events: VecDeque::new(),
                running: None,
                running_reported: false,
                dropped: 0,
            }),
        }
    }
}

thread_local! {
    /// This thread's shard, and the [`TaskEvents`] it belongs to.
    static SHARD: RefCell<Option<(u64, Arc<Shard>)>> = const { RefCell::new(None) };
}

/// Tells [`TaskEvents`] instances apart in a thread's slot.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// This process's task events waiting for the next report.
pub(crate) struct TaskEvents {
    /// `None`: task events are off.
    interval: Option<Duration>,
    job_id: Vec<u8>,
    id: u64,
    /// Events kept per recording thread.
    max_buffered: usize,
    /// A thread's buffered events that wake the reporter early (`REPORT_AT`, below
    /// `max_buffered`).
    report_at: usize,
    shards: Mutex<Vec<Arc<Shard>>>,
    /// `None` when events are off: calibrating it costs a process up to a fraction of a
    /// second at start.
    clock: Option<EventClock>,
    /// The reporter's; never locked by a task's path.
    scratch: Mutex<Scratch>,
    /// Woken when a thread has `report_at` events waiting.
    full: tokio::sync::Notify,
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
        let max_buffered = max_buffered.max(1);
        Self {
            interval,
            job_id: job_id.to_vec(),
            max_buffered,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            report_at: REPORT_AT.min(max_buffered.div_ceil(2)),
            shards: Mutex::new(Vec::new()),
            clock: interval.map(|_| EventClock::new()),
            scratch: Mutex::new(Scratch {
                taken: Vec::new(),
                spare: Vec::new(),
                running: VecDeque::new(),
                states: Vec::with_capacity(4),
            }),
            full: tokio::sync::Notify::new(),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.interval.is_some()
    }

    /// Records one transition (nothing when events are off).
    pub(crate) fn record(&self, event: impl FnOnce() -> Recorded) {
        if let Some(clock) = &self.clock {
            let mut event = event();
            event.time = clock.raw();
            self.with_shard(|b| self.push(b, event));
        }
    }

    /// The raw time now, for events stamped later ([`Recorded::scheduled_at`]); 0 when
    /// events are off.
    pub(crate) fn raw_now(&self) -> u64 {
        self.clock.as_ref().map_or(0, EventClock::raw)
    }

    /// The specs of a batch about to be pushed to a worker. Each carries its SUBMITTED
    /// time while that is still to be reported (`TaskSpec.submitted_us`), and the worker
    /// reports it with the attempt's one entry: a task that runs costs its submitter no
    /// event.
    pub(crate) fn specs_for_push<'a, T: Queued + 'a>(
        &self,
        batch: impl Iterator<Item = &'a mut T>,
    ) -> Vec<TaskSpec> {
        let unix = self.clock.as_ref().map(EventClock::to_unix);
        batch
            .map(|task| {
                let submitted = task.submission().take();
                let mut spec = task.spec().clone();
                if let Some(unix) = unix.as_ref().filter(|_| submitted > 0) {
                    spec.submitted_us = unix(submitted).max(1);
                }
                spec
            })
            .collect()
    }

    /// The submission of a task submitted now: waiting to be reported with the task's
    /// next entry.
    pub(crate) fn submission(&self) -> Submission {
        match &self.clock {
            Some(clock) => Submission::Waiting(clock.raw().max(1)),
            None => Submission::Reported,
        }
    }

    /// Records events that carry their own times (from [`scan_queue`]).
    pub(crate) fn record_timed(&self, events: Vec<Recorded>) {
        if self.clock.is_some() && !events.is_empty() {
            self.with_shard(|b| {
                for event in events {
                    self.push(b, event);
                }
            });
        }
    }

    /// This thread starts running a task: `event` is its RUNNING transition, kept in the
    /// thread's running slot until [`TaskEvents::end`].
    pub(crate) fn start(&self, event: impl FnOnce() -> Recorded) {
        if let Some(clock) = &self.clock {
            let mut event = event();
            event.time = clock.raw();
            self.with_shard(|b| {
                b.running = Some(event);
                b.running_reported = false;
            });
        }
    }

    /// The task this thread started ends in `state` (FINISHED, or FAILED with `error`):
    /// one event with both times.
    pub(crate) fn end(&self, state: TaskState, error: impl FnOnce() -> Option<String>) {
        if let Some(clock) = &self.clock {
            let error = error();
            let time = clock.raw();
            self.with_shard(|b| {
                if let Some(mut event) = b.running.take() {
                    if b.running_reported {
                        // Went out with the RUNNING part already.
                        event.submitted_us = 0;
                        event.scheduled = 0;
                    } else {
                        event.started = event.time;
                    }
                    event.time = time;
                    event.state = state;
                    event.error = error.map(String::into_boxed_str);
                    self.push(b, event);
                }
            });
        }
    }

    /// Runs `f` on this thread's shard, locked.
    fn with_shard(&self, f: impl FnOnce(&mut Buffer)) {
        SHARD.with(|slot| {
            // `f` only pushes: nothing in it records again, so the borrow is never nested.
            let mut slot = slot.borrow_mut();
            if !matches!(&*slot, Some((id, _)) if *id == self.id) {
                *slot = Some((self.id, self.shard_of_this_thread()));
            }
            if let Some((_, shard)) = &*slot {
                f(&mut shard.buffer.lock());
            }
        });
    }

    /// This thread's shard of this instance, found again (the thread recorded for another
    /// instance in between) or new.
    fn shard_of_this_thread(&self) -> Arc<Shard> {
        let me = std::thread::current().id();
        let mut shards = self.shards.lock();
        if let Some(shard) = shards.iter().find(|s| s.owner == me) {
            return Arc::clone(shard);
        }
        let shard = Arc::new(Shard::new());
        shards.push(Arc::clone(&shard));
        shard
    }

    fn push(&self, b: &mut Buffer, event: Recorded) {
        if b.events.len() >= self.max_buffered {
            b.events.pop_front();
            b.dropped += 1;
        }
        b.events.push_back(event);
        // Once per crossing: the reporter takes everything when it wakes.
        if b.events.len() == self.report_at {
            self.full.notify_one();
        }
    }

    /// The next report, or `None` when there is nothing to say.
    #[cfg(test)]
    fn take(&self) -> Option<ReportTaskEventsRequest> {
        self.take_reports().into_iter().next()
    }

    /// Every waiting event, as reports of at most `MAX_ENTRIES_PER_REPORT` entries (the
    /// first carries the drop count); empty when there is nothing to say.
    fn take_reports(&self) -> Vec<ReportTaskEventsRequest> {
        let mut scratch = self.scratch.lock();
        let Scratch {
            taken,
            spare,
            running,
            states,
        } = &mut *scratch;
        let Some(clock) = &self.clock else {
            return Vec::new();
        };
        let mut dropped = 0u64;
        {
            let mut shards = self.shards.lock();
            for shard in shards.iter() {
                let mut b = shard.buffer.lock();
                if !b.events.is_empty() {
                    let empty = spare.pop().unwrap_or_default();
                    taken.push(std::mem::replace(&mut b.events, empty));
                }
                // Seen running (once), and left in place for the event that ends it.
                if let Some(event) = b.running.as_ref().filter(|_| !b.running_reported) {
                    running.push_back(event.clone());
                    b.running_reported = true;
                }
                dropped += std::mem::take(&mut b.dropped);
            }
            // A shard whose thread ended goes once it is empty (only this list holds it).
            shards.retain(|s| Arc::strong_count(s) > 1);
            // As many spares as threads that record, not more.
            spare.truncate(shards.len());
        }
        // Built outside every shard's lock: the task path never waits for this.
        let total: usize = taken.iter().map(VecDeque::len).sum::<usize>() + running.len();
        if total == 0 && dropped == 0 {
            return Vec::new();
        }
        let unix = clock.to_unix();
        // Each event is an entry of its own: the transitions of one attempt come from
        // several threads and processes anyway, and the GCS pieces them together when
        // asked, so folding them here would cost a hash lookup per event (a cache miss at
        // this volume) to save a few bytes.
        let mut reports = Vec::new();
        let mut left = total;
        let new_builder = |left: usize| {
            let entries = left.min(MAX_ENTRIES_PER_REPORT);
            // A worker's entries carry about four states each.
            BatchBuilder::with_capacity(&self.job_id, entries, 4 * entries)
        };
        let mut builder = new_builder(left);
        for e in taken.iter().flatten().chain(running.iter()) {
            left -= 1;
            // A task id of the wrong length (a malformed spec) is dropped, not sent.
            if let Some(task_id) = &e.task_id {
                states.clear();
                if e.submitted > 0 {
                    states.push((TaskState::Submitted, unix(e.submitted).max(1)));
                } else if e.submitted_us > 0 {
                    states.push((TaskState::Submitted, e.submitted_us));
                }
                if e.scheduled > 0 {
                    states.push((TaskState::Scheduled, unix(e.scheduled).max(1)));
                }
                if e.started > 0 {
                    states.push((TaskState::Running, unix(e.started).max(1)));
                }
                // A clock that reads 0 is not a machine this runs on; keep the time
                // meaningful.
                states.push((e.state, unix(e.time).max(1)));
                builder.push(NewEntry {
                    task_id,
                    attempt: e.attempt,
                    states,
                    function: Some(e.function.as_str()),
                    placement: e.node_id.as_ref().zip(e.worker_id.as_ref()),
                    actor_id: e.actor_id.as_ref(),
                    error: e.error.as_deref(),
                });
            } else {
                dropped += 1;
            }
            if builder.len() == MAX_ENTRIES_PER_REPORT {
                let full = std::mem::replace(&mut builder, new_builder(left));
                reports.push(ReportTaskEventsRequest {
                    batch: Some(full.finish()),
                    dropped: 0,
                });
            }
        }
        if !builder.is_empty() {
            reports.push(ReportTaskEventsRequest {
                batch: Some(builder.finish()),
                dropped: 0,
            });
        }
        match reports.first_mut() {
            Some(first) => first.dropped = dropped,
            None => reports.push(ReportTaskEventsRequest {
                batch: None,
                dropped,
            }),
        }
        running.clear();
        for mut buffer in taken.drain(..) {
            buffer.clear();
            // A burst leaves its capacity behind; more than a few reports' worth is given
            // back.
            if buffer.capacity() > 4 * self.report_at {
                buffer.shrink_to(self.report_at);
            }
            spare.push(buffer);
        }
        reports
    }

    /// Counts reports that did not get through: their events and the drops they carried.
    fn lost(&self, events: u64) {
        self.with_shard(|b| b.dropped = b.dropped.saturating_add(events));
    }
}

impl CoreWorker {
    /// Records that an attempt failed here, without a worker's answer (its worker died,
    /// an argument failed, the actor is dead, no lease could be had) of `function`;
    /// `submitted`: its SUBMITTED, if still to be reported ([`Submission::take`]).
    pub(crate) fn record_failed(
        &self,
        spec: &TaskSpec,
        function: &'static str,
        submitted: u64,
        error: impl FnOnce() -> String,
    ) {
        self.task_events.record(|| {
            Recorded::new(spec, TaskState::Failed, FnName::Static(function))
                .submitted_at(submitted)
                .with_error(error())
        });
    }

    /// Sends every buffered event to this process's raylet.
    pub(crate) async fn report_task_events(&self) {
        if self.task_events.enabled() {
            let mut waiting = Vec::new();
            self.scan_task_queue(&mut waiting);
            self.scan_actor_call_queues(&mut waiting);
            self.task_events.record_timed(waiting);
        }
        // Built on a blocking thread: a report of thousands of entries would otherwise hold
        // a runtime thread, and every call it serves, for a millisecond or more.
        let events = Arc::clone(&self.task_events);
        let Ok(reports) = tokio::task::spawn_blocking(move || events.take_reports()).await else {
            return;
        };
        let mut reports = reports.into_iter();
        while let Some(report) = reports.next() {
            let home = self.home.get();
            let mut raylet = home.raylet.clone();
            // Transitions, as drops are counted: one per state of every entry.
            let lost = |r: &ReportTaskEventsRequest| {
                let states = r.batch.as_ref().map_or(0, time_count);
                (states as u64).saturating_add(r.dropped)
            };
            let lost_here = lost(&report);
            let sent =
                tokio::time::timeout(REPORT_DEADLINE, raylet.report_task_events(report)).await;
            let failure = match sent {
                Ok(Ok(_)) => None,
                Ok(Err(status)) => Some(status.to_string()),
                Err(_) => Some("timed out".to_string()),
            };
            if let Some(error) = failure {
                let lost = reports
                    .map(|r| lost(&r))
                    .fold(lost_here, u64::saturating_add);
                debug!(raylet = %home.endpoint, %error, lost, "reporting task events failed");
                self.task_events.lost(lost);
                return;
            }
        }
    }

    /// Reports task events every interval, and whenever `REPORT_AT` wait, for as long as
    /// the runtime runs.
    pub(crate) async fn run_task_event_reporter(self: Arc<Self>) {
        let Some(interval) = self.task_events.interval else {
            return;
        };
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.task_events.full.notified() => {}
            }
            self.report_task_events().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use miniray_common::task_events::{Entry, STATES, check};
    use miniray_common::time::now_us;
    use miniray_proto::TaskEventBatch;

    use super::*;

    fn spec(n: u8) -> TaskSpec {
        TaskSpec {
            task_id: vec![n; 16],
            ..Default::default()
        }
    }

    fn entries(batch: &TaskEventBatch) -> Vec<Entry<'_>> {
        check(batch)
            .expect("a well-formed batch")
            .entries()
            .collect()
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_counts_them() {
        let events = TaskEvents::new(JobId::random(), Some(DEFAULT_INTERVAL), 3);
        for n in 0..5u8 {
            events.record(|| Recorded::new(&spec(n), TaskState::Submitted, FnName::Static("f")));
        }
        let report = events.take().expect("a report");
        let batch = report.batch.expect("a batch");
        let ids: Vec<u8> = entries(&batch).iter().map(|e| e.task_id[0]).collect();
        assert_eq!(ids, vec![2, 3, 4]);
        assert_eq!(report.dropped, 2);
        assert_eq!(entries(&batch)[0].function, Some("f"));
        assert_eq!(batch.job_id, events.job_id);
        assert!(events.take().is_none(), "the counter went with the report");
        // A report that did not get through is counted, events and drops.
        events.lost(time_count(&batch) as u64 + report.dropped);
        assert_eq!(events.take().map(|r| r.dropped), Some(5));
    }

    #[test]
    fn each_transition_is_an_entry_with_its_own_parts() {
        let events = TaskEvents::new(JobId::random(), Some(DEFAULT_INTERVAL), 10);
        let (node, worker) = (NodeId::random(), WorkerId::random());
        let mut retried = spec(1);
        retried.attempt = 1;
        events.record(|| Recorded::new(&spec(1), TaskState::Submitted, FnName::Static("f")));
        events.record(|| {
            Recorded::new(&spec(1), TaskState::Failed, FnName::Static("g")).at(node, worker)
        });
        events.record(|| Recorded::new(&retried, TaskState::Submitted, FnName::Static("h")));
        let batch = events.take().and_then(|r| r.batch).expect("a batch");
        let entries = entries(&batch);
        let seen: Vec<(u32, Vec<TaskState>, Option<&str>, bool)> = entries
            .iter()
            .map(|e| {
                (
                    e.attempt,
                    e.states().map(|(s, _)| s).collect(),
                    e.function,
                    e.worker_id == Some(worker.as_bytes()),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (0, vec![TaskState::Submitted], Some("f"), false),
                (0, vec![TaskState::Failed], Some("g"), true),
                (1, vec![TaskState::Submitted], Some("h"), false),
            ]
        );
    }

    struct Task {
        spec: TaskSpec,
        submission: Submission,
    }

    impl Queued for Task {
        fn spec(&self) -> &TaskSpec {
            &self.spec
        }
        fn function(&self) -> &'static str {
            "f"
        }
        fn submission(&mut self) -> &mut Submission {
            &mut self.submission
        }
    }

    fn scanned(queue: &mut VecDeque<Task>) -> Vec<u8> {
        let mut out = Vec::new();
        scan_queue(queue.iter_mut(), &mut out);
        out.iter()
            .map(|e| e.task_id.map_or(0, |id| id[0]))
            .collect()
    }

    #[test]
    fn a_queued_task_is_reported_submitted_once_by_a_scan_or_with_its_next_event() {
        let events = TaskEvents::new(JobId::random(), Some(DEFAULT_INTERVAL), 10);
        let task = |n: u8| Task {
            spec: spec(n),
            submission: events.submission(),
        };
        let mut queue: VecDeque<Task> = (1..=3).map(task).collect();
        // Task 1 is pushed first: its spec carries SUBMITTED to the worker, once.
        let mut pushed = queue.pop_front().expect("queued");
        let sent = events.specs_for_push(std::iter::once(&mut pushed));
        assert!(sent[0].submitted_us > 0);
        let again = events.specs_for_push(std::iter::once(&mut pushed));
        assert_eq!(again[0].submitted_us, 0, "sent once");
        assert_eq!(scanned(&mut queue), vec![3, 2]);
        assert_eq!(scanned(&mut queue), Vec::<u8>::new(), "scanned once");
        // A new task behind them, and one put back in front (reported already).
        queue.push_back(task(4));
        queue.push_front(pushed);
        assert_eq!(scanned(&mut queue), vec![4]);
        // A scanned task's push carries no SUBMITTED again.
        let rescanned = events.specs_for_push(queue.iter_mut().skip(1).take(1));
        assert_eq!(rescanned[0].submitted_us, 0);
        assert!(events.take().is_none(), "a push records nothing");

        // The worker that runs task 1 reports its whole attempt as one entry.
        let (node, worker) = (NodeId::random(), WorkerId::random());
        let scheduled = events.raw_now();
        events.start(|| {
            Recorded::new(&sent[0], TaskState::Running, FnName::Static("f"))
                .at(node, worker)
                .scheduled_at(scheduled, sent[0].submitted_us)
        });
        events.end(TaskState::Finished, || None);
        let batch = events.take().and_then(|r| r.batch).expect("a batch");
        let entries = entries(&batch);
        assert_eq!(entries.len(), 1);
        let states: Vec<(TaskState, u64)> = entries[0].states().collect();
        assert_eq!(
            states.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![
                TaskState::Submitted,
                TaskState::Scheduled,
                TaskState::Running,
                TaskState::Finished
            ],
            "one entry for the attempt"
        );
        assert!(states.windows(2).all(|w| w[0].1 <= w[1].1), "{states:?}");
    }

    #[test]
    fn events_off_leave_nothing_waiting() {
        let events = TaskEvents::new(JobId::random(), None, 3);
        let mut queue = VecDeque::from([Task {
            spec: spec(1),
            submission: events.submission(),
        }]);
        assert_eq!(queue[0].submission, Submission::Reported);
        assert_eq!(scanned(&mut queue), Vec::<u8>::new());
    }

    #[test]
    fn a_task_run_here_is_one_entry_with_both_times_in_unix_time() {
        let events = TaskEvents::new(JobId::random(), Some(DEFAULT_INTERVAL), 10);
        let (node, worker) = (NodeId::random(), WorkerId::random());
        let before = now_us();
        events.start(|| {
            Recorded::new(&spec(1), TaskState::Running, FnName::Static("f")).at(node, worker)
        });
        events.end(TaskState::Failed, || Some("boom".into()));
        // An end with nothing started records nothing.
        events.end(TaskState::Finished, || None);
        let after = now_us();
        let batch = events.take().and_then(|r| r.batch).expect("a batch");
        let entries = entries(&batch);
        assert_eq!(entries.len(), 1);
        let times: Vec<(TaskState, u64)> = entries[0].states().collect();
        assert_eq!(times.len(), 2, "{times:?}");
        assert_eq!(
            (times[0].0, times[1].0),
            (TaskState::Running, TaskState::Failed)
        );
        // The raw clock and the wall clock agree to well within a millisecond here.
        let slack = 1_000;
        assert!(
            before - slack <= times[0].1 && times[0].1 <= times[1].1 && times[1].1 <= after + slack,
            "{before} {times:?} {after}"
        );
        assert_eq!(entries[0].error, Some("boom"));
        assert_eq!(entries[0].worker_id, Some(worker.as_bytes()));
    }

    #[test]
    fn a_task_still_running_at_a_report_is_reported_running_once() {
        let events = TaskEvents::new(JobId::random(), Some(DEFAULT_INTERVAL), 10);
        let scheduled = events.raw_now();
        events.start(|| {
            Recorded::new(&spec(1), TaskState::Running, FnName::Static("f"))
                .scheduled_at(scheduled, now_us())
        });
        let first = events.take().and_then(|r| r.batch).expect("a batch");
        let states: Vec<TaskState> = entries(&first)[0].states().map(|(s, _)| s).collect();
        assert_eq!(
            states,
            vec![
                TaskState::Submitted,
                TaskState::Scheduled,
                TaskState::Running
            ]
        );
        assert!(
            events.take().is_none(),
            "RUNNING went out once: a later report does not send it again"
        );
        events.end(TaskState::Finished, || None);
        let last = events.take().and_then(|r| r.batch).expect("a batch");
        let states: Vec<TaskState> = entries(&last)[0].states().map(|(s, _)| s).collect();
        assert_eq!(
            states,
            vec![TaskState::Finished],
            "the states before went out already: counted once downstream"
        );
        assert_eq!(entries(&last)[0].function, Some("f"));
        assert!(events.take().is_none());
    }

    /// An actor worker's run of many calls, as the executor records them, reported in
    /// full: every call one entry with its four states, its placement and its actor.
    /// (Also the probe for the recording cost: `valgrind --tool=callgrind` on this test
    /// counts the instructions an event costs, which timing on a shared machine cannot.)
    #[test]
    fn many_calls_run_here_are_reported_whole() {
        const CALLS: usize = 30_000;
        let events = TaskEvents::new(
            JobId::random(),
            Some(DEFAULT_INTERVAL),
            DEFAULT_MAX_BUFFERED,
        );
        let (node, worker) = (NodeId::random(), WorkerId::random());
        let mut call = TaskSpec {
            actor_id: vec![7; 16],
            submitted_us: now_us(),
            ..Default::default()
        };
        let mut reports = Vec::new();
        for n in 0..CALLS {
            call.task_id = (n as u128).to_le_bytes().to_vec();
            let scheduled = events.raw_now();
            events.start(|| {
                Recorded::new(&call, TaskState::Running, FnName::Static("step"))
                    .at(node, worker)
                    .scheduled_at(scheduled, call.submitted_us)
            });
            events.end(TaskState::Finished, || None);
            if (n + 1) % REPORT_AT == 0 {
                reports.extend(events.take_reports());
            }
        }
        reports.extend(events.take_reports());
        let mut seen = 0;
        for report in &reports {
            // What travels: the encoded report, decoded again.
            let sent = prost::Message::encode_to_vec(report);
            let received: ReportTaskEventsRequest =
                prost::Message::decode(sent.as_slice()).expect("a report decodes");
            assert_eq!(received.dropped, 0);
            let batch = received.batch.expect("a batch");
            for entry in entries(&batch) {
                assert_eq!(entry.task_id[..8], (seen as u64).to_le_bytes());
                let states: Vec<TaskState> = entry.states().map(|(s, _)| s).collect();
                assert_eq!(states, STATES[..4]);
                assert_eq!(entry.function, Some("step"));
                assert_eq!(entry.worker_id, Some(worker.as_bytes()));
                assert_eq!(entry.actor_id, Some(&[7u8; 16]));
                seen += 1;
            }
        }
        assert_eq!(seen, CALLS);
    }

    #[test]
    fn events_off_records_nothing() {
        let events = TaskEvents::new(JobId::random(), None, 3);
        events.record(|| Recorded::new(&spec(1), TaskState::Failed, FnName::Static("f")));
        events.start(|| Recorded::new(&spec(2), TaskState::Running, FnName::Static("f")));
        events.end(TaskState::Finished, || None);
        let mut queued = Task {
            spec: spec(3),
            submission: events.submission(),
        };
        let sent = events.specs_for_push(std::iter::once(&mut queued));
        assert_eq!(sent[0].submitted_us, 0);
        assert_eq!(events.raw_now(), 0);
        assert!(events.take().is_none());
    }

    #[test]
    fn placement_and_errors_reach_the_entry() {
        let events = TaskEvents::new(JobId::random(), Some(DEFAULT_INTERVAL), 10);
        let (node, worker) = (NodeId::random(), WorkerId::random());
        events.record(|| {
            Recorded::new(&spec(1), TaskState::Failed, FnName::Owned("g".into()))
                .at(node, worker)
                .with_error("boom".into())
        });
        events.record(|| Recorded::new(&spec(2), TaskState::Submitted, FnName::Static("f")));
        let batch = events.take().and_then(|r| r.batch).expect("a batch");
        let entries = entries(&batch);
        let failed = &entries[0];
        assert!(failed.reached(TaskState::Failed));
        assert_eq!(failed.node_id, Some(node.as_bytes()));
        assert_eq!(failed.worker_id, Some(worker.as_bytes()));
        assert_eq!(failed.error, Some("boom"));
        assert_eq!(entries[1].node_id, None);
    }

    #[test]
    fn a_task_id_of_the_wrong_length_is_counted_as_dropped() {
        let events = TaskEvents::new(JobId::random(), Some(DEFAULT_INTERVAL), 10);
        let bad = TaskSpec {
            task_id: vec![1, 2, 3],
            ..Default::default()
        };
        events.record(|| Recorded::new(&bad, TaskState::Submitted, FnName::Static("f")));
        let report = events.take().expect("a report");
        assert!(report.batch.is_none());
        assert_eq!(report.dropped, 1);
    }
}
