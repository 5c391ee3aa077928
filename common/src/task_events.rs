//! The columnar task-event batch (`TaskEventBatch`, see `common.proto`): the builder core
//! workers fill, the check every receiver runs, and the entry view the raylet and the GCS
//! read.
//!
//! Invariants:
//! - [`check`] is the one gate: a batch that passed it can be read with
//!   [`CheckedBatch::entries`] without a bounds check failing or a value being invented.
//!   Receivers refuse a batch that fails it whole.
//! - Per-entry columns are fixed-width little-endian bytes, read in place: decoding a
//!   batch is a slice per column (`Bytes` into the received message), never a loop over
//!   its values, so a raylet forwards events for little more than the copy.
//! - Per-entry columns are empty when every entry has the default, so the batch of a plain
//!   worker carries no attempt or actor columns at all.
//! - Nothing here allocates per entry on the read side; the builder allocates per distinct
//!   function, placement and actor, not per entry.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

use bytes::Bytes;
use miniray_proto::{TaskEventBatch, TaskEventError, TaskState};

use crate::ids::ID_LEN;

/// Task attempt (task id, attempt) → a position, for piecing an attempt's transitions
/// together. foldhash rather than SipHash: this map is built once per report and per
/// read over every entry, and its keys are random ids of this cluster.
pub type AttemptIndex = HashMap<([u8; ID_LEN], u32), usize, foldhash::fast::RandomState>;

/// An empty [`AttemptIndex`] with room for `n` attempts.
pub fn attempt_index(n: usize) -> AttemptIndex {
    HashMap::with_capacity_and_hasher(n, foldhash::fast::RandomState::default())
}

/// Bytes of one placement: node id then worker id.
const PLACEMENT_LEN: usize = 2 * ID_LEN;
/// Bytes of one value of a `u32` column (attempts and references).
const U32_LEN: usize = 4;
/// Bytes of one time.
const TIME_LEN: usize = 8;

/// The states a mask may hold: bits 1 (SUBMITTED) to 5 (FAILED).
const VALID_STATES: u8 = 0b11_1110;

/// The states an entry may hold, in the order their times travel.
pub const STATES: [TaskState; 5] = [
    TaskState::Submitted,
    TaskState::Scheduled,
    TaskState::Running,
    TaskState::Finished,
    TaskState::Failed,
];

/// The bit of `state` in a state mask.
pub fn state_bit(state: TaskState) -> u8 {
    1 << (state as u32)
}

/// Whether `mask` holds `state`.
fn holds(mask: u8, state: TaskState) -> bool {
    mask & state_bit(state) != 0
}

/// The times a batch carries: one per state of every entry (what dropping it loses).
/// Meaningful for a batch that passed [`check`] or came from a [`BatchBuilder`].
pub fn time_count(batch: &TaskEventBatch) -> usize {
    batch.times_us.len() / TIME_LEN
}

/// A batch that does not hold together; it is refused whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed task event batch: {0}")]
pub struct MalformedBatch(String);

fn malformed(what: impl Into<String>) -> MalformedBatch {
    MalformedBatch(what.into())
}

/// A per-entry `u32` column must be empty or hold one value per entry.
fn check_column(name: &str, column: &[u8], entries: usize) -> Result<(), MalformedBatch> {
    if column.is_empty() || column.len() == entries * U32_LEN {
        Ok(())
    } else {
        Err(malformed(format!(
            "{name} has {} bytes for {entries} entries",
            column.len()
        )))
    }
}

/// The `u32` values of a checked column.
fn u32s(column: &[u8]) -> impl Iterator<Item = u32> + '_ {
    column
        .chunks_exact(U32_LEN)
        .map(|v| u32::from_le_bytes([v[0], v[1], v[2], v[3]]))
}

/// Every reference of `refs` must name an entry of a dictionary of `len`.
fn check_refs(name: &str, refs: &[u8], len: usize) -> Result<(), MalformedBatch> {
    match u32s(refs).find(|r| *r as usize > len) {
        Some(r) => Err(malformed(format!(
            "{name} refers to {r} of a dictionary of {len}"
        ))),
        None => Ok(()),
    }
}

/// Checks that `batch` holds together (see the module invariants).
pub fn check(batch: &TaskEventBatch) -> Result<CheckedBatch<'_>, MalformedBatch> {
    if !batch.job_id.is_empty() && batch.job_id.len() != ID_LEN {
        return Err(malformed(format!("job id of {} bytes", batch.job_id.len())));
    }
    if !batch.task_ids.len().is_multiple_of(ID_LEN) {
        return Err(malformed(format!(
            "task ids of {} bytes, not a multiple of {ID_LEN}",
            batch.task_ids.len()
        )));
    }
    let entries = batch.task_ids.len() / ID_LEN;
    if batch.state_masks.len() != entries {
        return Err(malformed(format!(
            "{} state masks for {entries} entries",
            batch.state_masks.len()
        )));
    }
    let mut times = 0usize;
    for mask in batch.state_masks.iter() {
        if *mask == 0 || mask & !VALID_STATES != 0 {
            return Err(malformed(format!("invalid state mask {mask:#b}")));
        }
        times += mask.count_ones() as usize;
    }
    if batch.times_us.len() != times * TIME_LEN {
        return Err(malformed(format!(
            "{} bytes of times for {times} states",
            batch.times_us.len()
        )));
    }
    check_column("attempts", &batch.attempts, entries)?;
    check_column("function refs", &batch.function_refs, entries)?;
    check_column("placement refs", &batch.placement_refs, entries)?;
    check_column("actor refs", &batch.actor_refs, entries)?;
    if !batch.placements.len().is_multiple_of(PLACEMENT_LEN) {
        return Err(malformed(format!(
            "placements of {} bytes, not a multiple of {PLACEMENT_LEN}",
            batch.placements.len()
        )));
    }
    if !batch.actor_ids.len().is_multiple_of(ID_LEN) {
        return Err(malformed(format!(
            "actor ids of {} bytes, not a multiple of {ID_LEN}",
            batch.actor_ids.len()
        )));
    }
    check_refs(
        "function refs",
        &batch.function_refs,
        batch.function_names.len(),
    )?;
    check_refs(
        "placement refs",
        &batch.placement_refs,
        batch.placements.len() / PLACEMENT_LEN,
    )?;
    check_refs(
        "actor refs",
        &batch.actor_refs,
        batch.actor_ids.len() / ID_LEN,
    )?;
    let mut previous: Option<u32> = None;
    for error in &batch.errors {
        if error.entry as usize >= entries || previous.is_some_and(|p| p >= error.entry) {
            return Err(malformed(format!(
                "error of entry {} out of place",
                error.entry
            )));
        }
        previous = Some(error.entry);
    }
    Ok(CheckedBatch {
        batch,
        entries,
        states: times as u64,
    })
}

/// A batch that passed [`check`].
#[derive(Clone, Copy)]
pub struct CheckedBatch<'a> {
    batch: &'a TaskEventBatch,
    entries: usize,
    states: u64,
}

/// One task attempt of a batch: the states it reached while its core worker watched.
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    pub task_id: &'a [u8; ID_LEN],
    pub attempt: u32,
    mask: u8,
    /// Its times, `TIME_LEN` bytes per state.
    times_us: &'a [u8],
    pub function: Option<&'a str>,
    pub node_id: Option<&'a [u8; ID_LEN]>,
    pub worker_id: Option<&'a [u8; ID_LEN]>,
    pub actor_id: Option<&'a [u8; ID_LEN]>,
    pub error: Option<&'a str>,
}

impl Entry<'_> {
    /// Whether the attempt reached `state`.
    pub fn reached(&self, state: TaskState) -> bool {
        holds(self.mask, state)
    }

    /// The states reached, in state order, with their Unix times in microseconds.
    pub fn states(&self) -> impl Iterator<Item = (TaskState, u64)> + '_ {
        STATES
            .iter()
            .filter(|s| self.reached(**s))
            .zip(self.times_us.chunks_exact(TIME_LEN))
            .map(|(s, t)| {
                let t: [u8; TIME_LEN] = [t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]];
                (*s, u64::from_le_bytes(t))
            })
    }

    /// How many states the entry holds (what dropping it loses).
    pub fn state_count(&self) -> u32 {
        self.mask.count_ones()
    }
}

/// The 16-byte id at `index` of a checked column of ids.
fn id_at(bytes: &[u8], index: usize) -> &[u8; ID_LEN] {
    bytes[index * ID_LEN..(index + 1) * ID_LEN]
        .try_into()
        .expect("checked: a whole id")
}

/// The `u32` value of entry `entry` of a checked per-entry column; 0 when it is empty.
fn u32_at(column: &[u8], entry: usize) -> u32 {
    match column.get(entry * U32_LEN..(entry + 1) * U32_LEN) {
        Some(v) => u32::from_le_bytes([v[0], v[1], v[2], v[3]]),
        None => 0,
    }
}

/// The dictionary index of a checked per-entry reference column, if the entry has one.
fn reference(refs: &[u8], entry: usize) -> Option<usize> {
    (u32_at(refs, entry) as usize).checked_sub(1)
}

impl<'a> CheckedBatch<'a> {
    pub fn batch(&self) -> &'a TaskEventBatch {
        self.batch
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// States over every entry: what dropping the batch loses.
    pub fn state_count(&self) -> u64 {
        self.states
    }

    /// The node of each placement of the batch's dictionary, by placement index.
    pub fn placement_nodes(&self) -> impl Iterator<Item = &'a [u8; ID_LEN]> {
        self.batch
            .placements
            .chunks_exact(PLACEMENT_LEN)
            .map(|p| p[..ID_LEN].try_into().expect("checked: a whole placement"))
    }

    /// The placement index of entry `entry`, if it has one.
    pub fn placement_of(&self, entry: usize) -> Option<usize> {
        reference(&self.batch.placement_refs, entry)
    }

    /// The function index of entry `entry`, if it has one.
    pub fn function_of(&self, entry: usize) -> Option<usize> {
        reference(&self.batch.function_refs, entry)
    }

    /// Whether entry `entry` reached `state` (read in place, without building the entry).
    pub fn reached(&self, entry: usize, state: TaskState) -> bool {
        holds(self.batch.state_masks[entry], state)
    }

    /// The entries in batch order.
    pub fn entries(&self) -> impl Iterator<Item = Entry<'a>> + 'a {
        let b = self.batch;
        let mut time_cursor = 0usize;
        let mut errors = b.errors.iter().peekable();
        (0..self.entries).map(move |i| {
            let mask = b.state_masks[i];
            let times = mask.count_ones() as usize * TIME_LEN;
            let times_us = &b.times_us[time_cursor..time_cursor + times];
            time_cursor += times;
            // A placement is two ids in a row: node, then worker.
            let placement = reference(&b.placement_refs, i)
                .map(|p| (id_at(&b.placements, 2 * p), id_at(&b.placements, 2 * p + 1)));
            let error = match errors.peek() {
                Some(e) if e.entry as usize == i => errors.next().map(|e| e.message.as_str()),
                _ => None,
            };
            Entry {
                task_id: id_at(&b.task_ids, i),
                attempt: u32_at(&b.attempts, i),
                mask,
                times_us,
                function: reference(&b.function_refs, i).map(|f| b.function_names[f].as_str()),
                node_id: placement.map(|(node, _)| node),
                worker_id: placement.map(|(_, worker)| worker),
                actor_id: reference(&b.actor_refs, i).map(|a| id_at(&b.actor_ids, a)),
                error,
            }
        })
    }

    /// A batch of the last `keep` entries only (for a batch larger than a whole store).
    pub fn last(&self, keep: usize) -> TaskEventBatch {
        let skip = self.entries.saturating_sub(keep);
        let mut builder = BatchBuilder::new(&self.batch.job_id);
        for e in self.entries().skip(skip) {
            let states: Vec<(TaskState, u64)> = e.states().collect();
            builder.push(NewEntry {
                task_id: e.task_id,
                attempt: e.attempt,
                states: &states,
                function: e.function,
                placement: e.node_id.zip(e.worker_id),
                actor_id: e.actor_id,
                error: e.error,
            });
        }
        builder.finish()
    }
}

/// One entry for [`BatchBuilder::push`].
pub struct NewEntry<'a> {
    pub task_id: &'a [u8; ID_LEN],
    pub attempt: u32,
    /// Distinct states in state order, with their Unix times in microseconds.
    pub states: &'a [(TaskState, u64)],
    pub function: Option<&'a str>,
    /// Node id and worker id.
    pub placement: Option<(&'a [u8; ID_LEN], &'a [u8; ID_LEN])>,
    pub actor_id: Option<&'a [u8; ID_LEN]>,
    pub error: Option<&'a str>,
}

/// Appends `value` for entry `entry` to a `u32` column that stays empty while every value
/// is 0.
/// `room`: entries the batch has room for, reserved at the column's first value.
fn push_sparse(column: &mut Vec<u8>, entry: usize, value: u32, room: usize) {
    if value == 0 && column.is_empty() {
        return;
    }
    // Only the first value of a column pads the entries before it.
    if column.len() != entry * U32_LEN {
        column.reserve(room.max(entry + 1) * U32_LEN);
        column.resize(entry * U32_LEN, 0);
    }
    column.extend_from_slice(&value.to_le_bytes());
}

/// A dictionary of a batch: 1-based references, with the last one looked up checked first
/// (consecutive entries mostly share a function and a placement).
struct Dictionary<K> {
    /// foldhash: keys are ids and names of this cluster, looked up once per entry.
    index: HashMap<K, u32, foldhash::fast::RandomState>,
    keys: Vec<K>,
    last: Option<u32>,
}

impl<K: Hash + Eq + Clone> Dictionary<K> {
    fn new() -> Self {
        Self {
            index: HashMap::default(),
            keys: Vec::new(),
            last: None,
        }
    }

    /// The reference of `key`, and whether it is new (the caller appends it to the
    /// batch). Allocates only for a new key.
    fn reference<Q>(&mut self, key: &Q) -> (u32, bool)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(r) = self.last
            && self.keys[r as usize - 1].borrow() == key
        {
            return (r, false);
        }
        let (r, new) = match self.index.get(key) {
            Some(r) => (*r, false),
            None => {
                let owned = key.to_owned();
                self.keys.push(owned.clone());
                let r = self.keys.len() as u32;
                self.index.insert(owned, r);
                (r, true)
            }
        };
        self.last = Some(r);
        (r, new)
    }
}

/// The columns of a batch being built.
#[derive(Default)]
struct Columns {
    task_ids: Vec<u8>,
    attempts: Vec<u8>,
    state_masks: Vec<u8>,
    times_us: Vec<u8>,
    function_names: Vec<String>,
    function_refs: Vec<u8>,
    placements: Vec<u8>,
    placement_refs: Vec<u8>,
    actor_ids: Vec<u8>,
    actor_refs: Vec<u8>,
    errors: Vec<TaskEventError>,
}

/// Builds a [`TaskEventBatch`] entry by entry.
pub struct BatchBuilder {
    job_id: Bytes,
    columns: Columns,
    entries: usize,
    functions: Dictionary<String>,
    placements: Dictionary<[u8; PLACEMENT_LEN]>,
    actors: Dictionary<[u8; ID_LEN]>,
}

impl BatchBuilder {
    /// A batch of `job_id`'s tasks.
    pub fn new(job_id: &[u8]) -> Self {
        Self::with_capacity(job_id, 0, 0)
    }

    /// A batch of `job_id`'s tasks with room for `entries` entries of `states` states in
    /// all, so that a builder filled in one go never grows a column on the way.
    pub fn with_capacity(job_id: &[u8], entries: usize, states: usize) -> Self {
        Self {
            job_id: Bytes::copy_from_slice(job_id),
            columns: Columns {
                task_ids: Vec::with_capacity(entries * ID_LEN),
                state_masks: Vec::with_capacity(entries),
                times_us: Vec::with_capacity(states * TIME_LEN),
                ..Columns::default()
            },
            entries: 0,
            functions: Dictionary::new(),
            placements: Dictionary::new(),
            actors: Dictionary::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Appends an entry. One without a state is skipped: it says nothing.
    pub fn push(&mut self, e: NewEntry<'_>) {
        let c = &mut self.columns;
        let mut mask = 0u8;
        for (state, time_us) in e.states {
            let bit = state_bit(*state);
            if *state == TaskState::Unspecified || mask & bit != 0 {
                continue;
            }
            mask |= bit;
            c.times_us.extend_from_slice(&time_us.to_le_bytes());
        }
        if mask == 0 {
            return;
        }
        let i = self.entries;
        self.entries += 1;
        c.task_ids.extend_from_slice(e.task_id);
        c.state_masks.push(mask);
        let room = c.state_masks.capacity();
        push_sparse(&mut c.attempts, i, e.attempt, room);
        let function = e.function.map_or(0, |name| {
            let (r, new) = self.functions.reference(name);
            if new {
                c.function_names.push(name.to_string());
            }
            r
        });
        push_sparse(&mut c.function_refs, i, function, room);
        let placement = e.placement.map_or(0, |(node, worker)| {
            let mut key = [0u8; PLACEMENT_LEN];
            key[..ID_LEN].copy_from_slice(node);
            key[ID_LEN..].copy_from_slice(worker);
            let (r, new) = self.placements.reference(&key);
            if new {
                c.placements.extend_from_slice(&key);
            }
            r
        });
        push_sparse(&mut c.placement_refs, i, placement, room);
        let actor = e.actor_id.map_or(0, |actor| {
            let (r, new) = self.actors.reference(actor);
            if new {
                c.actor_ids.extend_from_slice(actor);
            }
            r
        });
        push_sparse(&mut c.actor_refs, i, actor, room);
        if let Some(message) = e.error {
            c.errors.push(TaskEventError {
                entry: i as u32,
                message: message.to_string(),
            });
        }
    }

    pub fn finish(self) -> TaskEventBatch {
        let mut c = self.columns;
        let full = self.entries * U32_LEN;
        for column in [
            &mut c.attempts,
            &mut c.function_refs,
            &mut c.placement_refs,
            &mut c.actor_refs,
        ] {
            if !column.is_empty() {
                column.resize(full, 0);
            }
        }
        TaskEventBatch {
            job_id: self.job_id,
            task_ids: c.task_ids.into(),
            attempts: c.attempts.into(),
            state_masks: c.state_masks.into(),
            times_us: c.times_us.into(),
            function_names: c.function_names,
            function_refs: c.function_refs.into(),
            placements: c.placements.into(),
            placement_refs: c.placement_refs.into(),
            actor_ids: c.actor_ids.into(),
            actor_refs: c.actor_refs.into(),
            errors: c.errors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: [u8; 16] = [9; 16];

    fn ids(n: u8) -> [u8; 16] {
        [n; 16]
    }

    /// A `u32` column of `values`.
    fn u32_column(values: &[u32]) -> Bytes {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// `column` with `f` applied to a copy of its bytes.
    fn edited(column: &Bytes, f: impl FnOnce(&mut Vec<u8>)) -> Bytes {
        let mut bytes = column.to_vec();
        f(&mut bytes);
        bytes.into()
    }

    #[test]
    fn entries_read_back_as_they_were_built() {
        let mut b = BatchBuilder::new(&JOB);
        let (node, worker, actor) = (ids(7), ids(8), ids(5));
        b.push(NewEntry {
            task_id: &ids(1),
            attempt: 0,
            states: &[(TaskState::Submitted, 1_000), (TaskState::Scheduled, 1_010)],
            function: Some("f"),
            placement: Some((&node, &worker)),
            actor_id: None,
            error: None,
        });
        b.push(NewEntry {
            task_id: &ids(2),
            attempt: 2,
            states: &[(TaskState::Running, 1_020), (TaskState::Failed, 1_030)],
            function: Some("g"),
            placement: Some((&node, &worker)),
            actor_id: Some(&actor),
            error: Some("boom"),
        });
        b.push(NewEntry {
            task_id: &ids(3),
            attempt: 0,
            states: &[(TaskState::Finished, 1_040)],
            function: None,
            placement: None,
            actor_id: None,
            error: None,
        });
        let batch = b.finish();
        assert_eq!(batch.function_names, vec!["f", "g"]);
        assert_eq!(batch.placements.len(), 32, "one placement, shared");
        let checked = check(&batch).expect("a well-formed batch");
        assert_eq!((checked.len(), checked.state_count()), (3, 5));
        let entries: Vec<Entry<'_>> = checked.entries().collect();
        assert_eq!(entries[0].task_id, &ids(1));
        assert_eq!(
            entries[0].states().collect::<Vec<_>>(),
            vec![(TaskState::Submitted, 1_000), (TaskState::Scheduled, 1_010)]
        );
        assert_eq!(entries[0].node_id, Some(&node));
        assert_eq!(entries[0].actor_id, None);
        assert_eq!(entries[1].attempt, 2);
        assert_eq!(entries[1].function, Some("g"));
        assert_eq!(entries[1].actor_id, Some(&actor));
        assert_eq!(entries[1].error, Some("boom"));
        assert!(entries[1].reached(TaskState::Failed));
        assert_eq!(
            (entries[2].function, entries[2].worker_id),
            (None, None),
            "nothing invented"
        );
        assert_eq!(
            entries[2].states().next(),
            Some((TaskState::Finished, 1_040))
        );
    }

    #[test]
    fn a_plain_workers_batch_carries_no_default_columns() {
        let mut b = BatchBuilder::new(&JOB);
        for n in 0..3 {
            b.push(NewEntry {
                task_id: &ids(n),
                attempt: 0,
                states: &[(TaskState::Running, 5), (TaskState::Finished, 6)],
                function: Some("f"),
                placement: None,
                actor_id: None,
                error: None,
            });
        }
        let batch = b.finish();
        assert!(batch.attempts.is_empty() && batch.actor_refs.is_empty());
        assert!(batch.placement_refs.is_empty());
        assert_eq!(batch.function_refs, u32_column(&[1, 1, 1]));
        assert_eq!(check(&batch).map(|c| c.len()), Ok(3));
    }

    #[test]
    fn a_late_first_value_fills_the_column_before_it() {
        let mut b = BatchBuilder::new(&JOB);
        for attempt in [0, 0, 3] {
            b.push(NewEntry {
                task_id: &ids(1),
                attempt,
                states: &[(TaskState::Submitted, 1)],
                function: None,
                placement: None,
                actor_id: None,
                error: None,
            });
        }
        let batch = b.finish();
        assert_eq!(batch.attempts, u32_column(&[0, 0, 3]));
        let checked = check(&batch).unwrap();
        let attempts: Vec<u32> = checked.entries().map(|e| e.attempt).collect();
        assert_eq!(attempts, vec![0, 0, 3]);
    }

    #[test]
    fn the_last_entries_make_a_batch_of_their_own() {
        let mut b = BatchBuilder::new(&JOB);
        for n in 0..5u8 {
            b.push(NewEntry {
                task_id: &ids(n),
                attempt: 0,
                states: &[(TaskState::Failed, 100 + n as u64)],
                function: Some(if n % 2 == 0 { "even" } else { "odd" }),
                placement: None,
                actor_id: None,
                error: (n == 4).then_some("late"),
            });
        }
        let batch = b.finish();
        let last = check(&batch).unwrap().last(2);
        let checked = check(&last).unwrap();
        let kept: Vec<(u8, Option<&str>, Option<&str>)> = checked
            .entries()
            .map(|e| (e.task_id[0], e.function, e.error))
            .collect();
        assert_eq!(
            kept,
            vec![(3, Some("odd"), None), (4, Some("even"), Some("late"))]
        );
        assert_eq!(last.job_id, JOB.to_vec());
    }

    #[test]
    fn malformed_batches_are_refused() {
        let good = {
            let mut b = BatchBuilder::new(&JOB);
            b.push(NewEntry {
                task_id: &ids(1),
                attempt: 0,
                states: &[(TaskState::Running, 1), (TaskState::Finished, 2)],
                function: Some("f"),
                placement: Some((&ids(2), &ids(3))),
                actor_id: None,
                error: None,
            });
            b.finish()
        };
        assert!(check(&good).is_ok());
        type Breaks = fn(&mut TaskEventBatch);
        let broken: [(&str, Breaks); 11] = [
            ("short task id", |b| b.task_ids.truncate(15)),
            ("short job id", |b| b.job_id.truncate(3)),
            ("no state", |b| {
                b.state_masks = edited(&b.state_masks, |m| m[0] = 0)
            }),
            ("unknown state", |b| {
                b.state_masks = edited(&b.state_masks, |m| m[0] |= 1 << 7)
            }),
            ("missing time", |b| b.times_us.truncate(8)),
            ("torn time", |b| b.times_us.truncate(15)),
            ("function ref past the names", |b| {
                b.function_refs = u32_column(&[2])
            }),
            ("placement ref past the placements", |b| {
                b.placement_refs = u32_column(&[9])
            }),
            ("a column of the wrong length", |b| {
                b.attempts = u32_column(&[0, 0])
            }),
            ("a torn placement", |b| b.placements.truncate(20)),
            ("an error past the entries", |b| {
                b.errors.push(TaskEventError {
                    entry: 1,
                    message: "x".into(),
                })
            }),
        ];
        for (what, breaks) in broken {
            let mut batch = good.clone();
            breaks(&mut batch);
            assert!(check(&batch).is_err(), "{what} was accepted");
        }
    }
}
