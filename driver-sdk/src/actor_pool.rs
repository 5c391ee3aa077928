//! [`ActorPool`]: a fixed set of actors serving a stream of work, after Ray's `ActorPool`.
//!
//! Invariant: each actor runs at most one piece of the pool's work at a time, and work
//! starts in submission order: work submitted while every actor is busy waits in FIFO
//! order and starts as soon as a result is taken and its actor goes back to the pool.

use std::collections::{BTreeMap, VecDeque};

use serde::de::DeserializeOwned;

use crate::actor::{Actor, ActorHandle};
use crate::error::{Error, Result};
use crate::object_ref::ObjectRef;

/// Work for one actor: submit a call, return the reference to its result.
type Work<A, R> = Box<dyn FnOnce(&ActorHandle<A>) -> Result<ObjectRef<R>>>;

/// Hands work to whichever actor of the pool is free; results come back in submission order
/// (`get_next`) or as they complete (`get_next_unordered`).
///
/// ```no_run
/// # #[miniray::actor] struct Doubler;
/// # #[miniray::actor] impl Doubler {
/// #     fn new() -> Self { Doubler }
/// #     fn double(&self, x: u64) -> u64 { 2 * x }
/// # }
/// # fn main() -> miniray::Result<()> {
/// let actors = (0..2).map(|_| Doubler::remote()).collect::<miniray::Result<Vec<_>>>()?;
/// let mut pool = miniray::ActorPool::new(actors);
/// for x in 0..10u64 {
///     pool.submit(move |a| a.double(x))?;
/// }
/// while pool.has_next() {
///     println!("{}", pool.get_next()?);
/// }
/// # Ok(()) }
/// ```
pub struct ActorPool<A: Actor, R> {
    idle: Vec<ActorHandle<A>>,
    /// Started work by submission index: its result reference (or why it could not be
    /// submitted) and the actor it runs on.
    running: BTreeMap<u64, (Result<ObjectRef<R>>, ActorHandle<A>)>,
    /// Work waiting for a free actor, in submission order.
    waiting: VecDeque<(u64, Work<A, R>)>,
    next_index: u64,
}

impl<A: Actor, R: DeserializeOwned + 'static> ActorPool<A, R> {
    /// A pool over these actors.
    pub fn new(actors: impl IntoIterator<Item = ActorHandle<A>>) -> Self {
        Self {
            idle: actors.into_iter().collect(),
            running: BTreeMap::new(),
            waiting: VecDeque::new(),
            next_index: 0,
        }
    }

    /// Queues work: `work` is called with a free actor (now, or once one is free) and
    /// submits the call whose result the pool hands back.
    pub fn submit(
        &mut self,
        work: impl FnOnce(&ActorHandle<A>) -> Result<ObjectRef<R>> + 'static,
    ) -> Result<()> {
        if self.idle.is_empty() && self.running.is_empty() {
            return Err(Error::InvalidArgument(
                "the actor pool has no actors".into(),
            ));
        }
        let index = self.next_index;
        self.next_index += 1;
        self.waiting.push_back((index, Box::new(work)));
        self.start_waiting();
        Ok(())
    }

    /// Whether results remain to be taken.
    pub fn has_next(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    /// Waits for the oldest result not taken yet and returns it.
    pub fn get_next(&mut self) -> Result<R> {
        let Some((_, (result, actor))) = self.running.pop_first() else {
            return Err(Error::InvalidArgument(
                "the actor pool has no pending work".into(),
            ));
        };
        let value = result.and_then(|r| crate::get(&r));
        self.give_back(actor);
        value
    }

    /// Waits for any result not taken yet (the first to complete) and returns it.
    pub fn get_next_unordered(&mut self) -> Result<R> {
        // Work that could not even be submitted is "complete" at once.
        let failed = self
            .running
            .iter()
            .find(|(_, (r, _))| r.is_err())
            .map(|(i, _)| *i);
        let index = match failed {
            Some(i) => i,
            None => {
                let pending: Vec<(u64, ObjectRef<R>)> = self
                    .running
                    .iter()
                    .filter_map(|(i, (r, _))| r.as_ref().ok().map(|r| (*i, r.clone())))
                    .collect();
                if pending.is_empty() {
                    return Err(Error::InvalidArgument(
                        "the actor pool has no pending work".into(),
                    ));
                }
                let refs: Vec<ObjectRef<R>> = pending.iter().map(|(_, r)| r.clone()).collect();
                let (ready, _) = crate::wait(&refs, 1, None)?;
                let first = ready
                    .first()
                    .ok_or_else(|| Error::Internal("wait returned nothing ready".into()))?;
                pending
                    .iter()
                    .find(|(_, r)| r == first)
                    .map(|(i, _)| *i)
                    .ok_or_else(|| Error::Internal("wait returned an unknown reference".into()))?
            }
        };
        let Some((result, actor)) = self.running.remove(&index) else {
            return Err(Error::Internal("pool result vanished".into()));
        };
        let value = result.and_then(|r| crate::get(&r));
        self.give_back(actor);
        value
    }

    /// Submits `work` for every value and returns the results in the order of `values`.
    pub fn map<T: 'static>(
        &mut self,
        values: impl IntoIterator<Item = T>,
        work: impl Fn(&ActorHandle<A>, T) -> Result<ObjectRef<R>> + Clone + 'static,
    ) -> Result<Vec<R>> {
        let mut n = 0;
        for v in values {
            let work = work.clone();
            self.submit(move |a| work(a, v))?;
            n += 1;
        }
        (0..n).map(|_| self.get_next()).collect()
    }

    /// Adds an actor to the pool; waiting work may start on it at once.
    pub fn push(&mut self, actor: ActorHandle<A>) {
        self.give_back(actor);
    }

    /// Takes an idle actor out of the pool, if one is idle.
    pub fn pop_idle(&mut self) -> Option<ActorHandle<A>> {
        self.idle.pop()
    }

    /// Whether some actor is free for new work.
    pub fn has_free(&self) -> bool {
        !self.idle.is_empty()
    }

    fn give_back(&mut self, actor: ActorHandle<A>) {
        self.idle.push(actor);
        self.start_waiting();
    }

    fn start_waiting(&mut self) {
        while !self.idle.is_empty() {
            let Some((index, work)) = self.waiting.pop_front() else {
                return;
            };
            let Some(actor) = self.idle.pop() else { return };
            let result = work(&actor);
            self.running.insert(index, (result, actor));
        }
    }
}
