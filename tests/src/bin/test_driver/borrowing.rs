//! Borrowed references: an RL-style loop that passes object references inside values to
//! tasks and actors, and gets references back inside returned values, every iteration. The
//! plasma store must come back to where it started while the driver is still running.

use std::time::{Duration, Instant};

use miniray::{ActorHandle, ObjectRef};
use miniray_proto::{ActorState, GetActorRequest};

use crate::actors::Counter;
use crate::{out, plasma_used};

/// Policies and trajectories are just above the inline limit, so each lives in plasma.
const OBJECT_BYTES: usize = 120 << 10;

fn filled(byte: u8) -> Vec<u8> {
    vec![byte; OBJECT_BYTES]
}

/// A rollout: reads the policy it was handed inside a value, returns its trajectory as a
/// reference (owned by this worker) inside a value.
#[miniray::remote]
fn rollout(policy: Vec<ObjectRef<Vec<u8>>>, step: u64) -> Vec<ObjectRef<Vec<u8>>> {
    let weights = miniray::get(&policy[0]).unwrap_or_else(|e| panic!("policy: {e}"));
    assert_eq!(weights.len(), OBJECT_BYTES);
    assert_eq!(weights[0], step as u8, "the policy of this step");
    let trajectory = miniray::put(filled(step.wrapping_mul(7) as u8))
        .unwrap_or_else(|e| panic!("put trajectory: {e}"));
    vec![trajectory]
}

/// A learner that keeps the latest policy reference it was given (a borrowed reference held
/// across calls) and hands it back out inside a value.
#[miniray::actor]
pub struct Learner {
    latest: Option<ObjectRef<Vec<u8>>>,
}

#[miniray::actor]
impl Learner {
    pub fn new() -> Self {
        Learner { latest: None }
    }

    pub fn set_policy(&mut self, policy: Vec<ObjectRef<Vec<u8>>>) -> u64 {
        self.latest = policy.into_iter().next();
        1
    }

    pub fn policy(&mut self) -> Vec<ObjectRef<Vec<u8>>> {
        self.latest.iter().cloned().collect()
    }

    pub fn clear(&mut self) -> u64 {
        self.latest = None;
        1
    }
}

/// Runs `iterations` of the loop, then checks that plasma usage returns to its start.
pub(crate) fn borrow_loop(raylet: &str, iterations: u64) -> anyhow::Result<()> {
    let start_used = plasma_used(raylet)?;
    out("used_start", start_used);
    let learner = Learner::remote()?;
    let mut peak = start_used;
    let started = Instant::now();
    for step in 0..iterations {
        let policy = miniray::put(filled(step as u8))?;
        miniray::get(&learner.set_policy(vec![policy.clone()])?)?;
        let trajectories = miniray::get(&rollout::remote(vec![policy], step)?)?;
        let trajectory = miniray::get(&trajectories[0])?;
        anyhow::ensure!(
            trajectory.len() == OBJECT_BYTES && trajectory[0] == step.wrapping_mul(7) as u8,
            "trajectory of step {step} is wrong"
        );
        // Every tenth step, the learner's copy of this step's policy: a reference that
        // went driver -> actor -> driver inside values.
        if step % 10 == 0 {
            let back = miniray::get(&learner.policy()?)?;
            anyhow::ensure!(
                back.len() == 1,
                "the learner lost its policy at step {step}"
            );
            anyhow::ensure!(
                miniray::get(&back[0])?[0] == step as u8,
                "the learner's policy of step {step} is wrong"
            );
        }
        if step % 500 == 0 {
            peak = peak.max(plasma_used(raylet)?);
        }
    }
    out("loop_secs", started.elapsed().as_secs_f64());
    out("used_peak_sampled", peak);
    miniray::get(&learner.clear()?)?;
    // Frees are asynchronous: wait for usage to fall back, with a deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut end_used = plasma_used(raylet)?;
    while end_used > start_used && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        end_used = plasma_used(raylet)?;
    }
    out("used_end", end_used);
    Ok(())
}

/// Creates a counter actor and returns its handle inside a value: this worker created the
/// actor, so it ends it once the caller (the borrower) drops the handle.
#[miniray::remote]
fn make_counter(start: u64) -> Vec<ActorHandle<Counter>> {
    vec![Counter::remote(start).unwrap_or_else(|e| panic!("create counter: {e}"))]
}

/// Keeps actor handles it was given inside values and calls them later.
#[miniray::actor]
pub struct Keeper {
    kept: Vec<ActorHandle<Counter>>,
}

#[miniray::actor]
impl Keeper {
    pub fn new() -> Self {
        Keeper { kept: Vec::new() }
    }

    pub fn keep(&mut self, handles: Vec<ActorHandle<Counter>>) -> u64 {
        self.kept.extend(handles);
        self.kept.len() as u64
    }

    /// Increments every kept counter; returns the sum of their new values.
    pub fn bump(&mut self) -> u64 {
        self.kept
            .iter()
            .map(|c| {
                let r = c
                    .incr(1)
                    .unwrap_or_else(|e| panic!("call kept counter: {e}"));
                miniray::get(&r).unwrap_or_else(|e| panic!("kept counter: {e}"))
            })
            .sum()
    }

    pub fn forget(&mut self) -> u64 {
        self.kept.clear();
        0
    }
}

/// The state of an actor as the GCS has it.
fn actor_state(id: miniray_common::ActorId) -> anyhow::Result<ActorState> {
    let address = std::env::var("MINIRAY_ADDRESS")?;
    let token = std::env::var("MINIRAY_TOKEN")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let channel = miniray_common::auth::connect(&address, &token).await?;
        let mut gcs = miniray_proto::gcs_client::GcsClient::new(channel);
        let actor = gcs
            .get_actor(GetActorRequest {
                actor_id: id.to_vec(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .actor
            .ok_or_else(|| anyhow::anyhow!("no actor in the reply"))?;
        anyhow::Ok(ActorState::try_from(actor.state).unwrap_or(ActorState::Unspecified))
    })
}

/// Waits (with a deadline) until the GCS says the actor is dead.
fn wait_dead(id: miniray_common::ActorId) -> anyhow::Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if actor_state(id)? == ActorState::Dead {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Actor handles that travel inside values keep their actor alive exactly as long as some
/// process holds them.
pub(crate) fn borrowed_actor_handles() -> anyhow::Result<()> {
    // A handle lent to an actor: the creator's own handle goes, the borrower's keeps the
    // actor alive, and the actor ends once the borrower drops it too.
    let counter = Counter::remote(0)?;
    let counter_id = counter.id();
    let keeper = Keeper::remote()?;
    miniray::get(&keeper.keep(vec![counter.clone()])?)?;
    drop(counter);
    out("lent_bump", miniray::get(&keeper.bump()?)?);
    out(
        "lent_state_while_borrowed",
        format!("{:?}", actor_state(counter_id)?),
    );
    miniray::get(&keeper.forget()?)?;
    out("lent_dead_after_forget", wait_dead(counter_id)?);

    // A handle returned inside a task's value: the worker created the actor and ends it
    // once this driver, its borrower, drops the handle.
    let returned = miniray::get(&make_counter::remote(10)?)?;
    let returned_id = returned[0].id();
    out("returned_incr", miniray::get(&returned[0].incr(1)?)?);
    out(
        "returned_state_while_held",
        format!("{:?}", actor_state(returned_id)?),
    );
    drop(returned);
    out("returned_dead_after_drop", wait_dead(returned_id)?);
    Ok(())
}
