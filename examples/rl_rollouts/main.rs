//! Trains a CartPole-v1 policy with evolution strategies (Salimans et al., as in the Ray
//! paper), with the rollouts running on miniray actors.
//!
//! ```sh
//! cargo run --release --example rl_rollouts            # private local cluster
//! MINIRAY_ADDRESS=HOST:PORT cargo run --release --example rl_rollouts
//! ```
//!
//! Each generation the learner on the driver `put`s the current policy into the object store
//! once and sends every rollout actor one call with that reference and its share of the
//! perturbations (seeds only: each actor rebuilds the noise itself). The actors run the
//! episodes and return their returns; the learner ranks them and updates the policy. It stops
//! when the mean return over the last 100 evaluation episodes reaches 475 (solved) or the
//! env-step budget runs out, and writes `learning_curve.csv` and `learning_curve.png`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use miniray::{ActorHandle, ActorPool};
use miniray_examples::rl::{
    Candidate, Evaluator, GenerationRecord, GenerationResults, GenerationWork, Policy,
    RolloutResult, TrainConfig, run_episodes, train_with, write_csv, write_plot,
};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(about = "Evolution strategies on CartPole-v1 with rollouts on miniray actors")]
struct Args {
    /// Rollout actors (default: one per CPU of the cluster).
    #[arg(long)]
    actors: Option<usize>,
    /// Stop after this many environment steps if not solved before.
    #[arg(long, default_value_t = 2_000_000)]
    max_env_steps: u64,
    /// Seed of the learner (initial policy, noise, episodes).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where the CSV and the PNG go.
    #[arg(long, default_value = "rl_rollouts_out")]
    out_dir: PathBuf,
}

/// What one rollout call sends back: the episodes' results and how long the environment and
/// policy took on the actor (to tell runtime overhead from rollout work).
#[derive(Serialize, Deserialize)]
pub struct ShareResult {
    candidates: Vec<RolloutResult>,
    evaluation: RolloutResult,
    rollout_seconds: f64,
}

/// A rollout worker. Every episode runs on an environment seeded by the episode's seed, so
/// results do not depend on which actor ran them (runs are reproducible on any cluster).
#[miniray::actor]
pub struct RolloutWorker {
    index: usize,
    episodes: u64,
}

#[miniray::actor]
impl RolloutWorker {
    pub fn new(index: usize) -> Self {
        RolloutWorker { index, episodes: 0 }
    }

    /// Evaluates perturbations of `policy` (given by their seeds) and the unperturbed
    /// `policy` on `eval_seeds`.
    pub fn evaluate(
        &mut self,
        policy: Policy,
        noise_std: f32,
        candidates: Vec<Candidate>,
        eval_seeds: Vec<u64>,
    ) -> ShareResult {
        let started = Instant::now();
        let candidates: Vec<RolloutResult> = candidates
            .iter()
            .map(|c| c.evaluate(&policy, noise_std))
            .collect();
        let evaluation = run_episodes(&policy, &eval_seeds);
        self.episodes += (candidates.iter().map(|r| r.returns.len()).sum::<usize>()
            + evaluation.returns.len()) as u64;
        ShareResult {
            candidates,
            evaluation,
            rollout_seconds: started.elapsed().as_secs_f64(),
        }
    }

    /// (actor index, episodes run so far).
    pub fn stats(&self) -> (usize, u64) {
        (self.index, self.episodes)
    }
}

/// Runs each generation on the rollout actors: one call per actor, through a pool.
struct ActorEvaluator {
    pool: ActorPool<RolloutWorker, ShareResult>,
    actors: usize,
    /// Time the driver waited for rollouts beyond the slowest actor's own rollout work:
    /// submission, transfer, scheduling and result collection.
    runtime_seconds: f64,
    /// The slowest actor's rollout time, summed over generations.
    rollout_seconds: f64,
}

impl Evaluator for ActorEvaluator {
    type Error = miniray::Error;

    fn evaluate(&mut self, work: &GenerationWork<'_>) -> miniray::Result<GenerationResults> {
        let started = Instant::now();
        // The policy goes into the object store once; every call carries only the reference.
        let policy = miniray::put(work.policy.clone())?;
        let n = self.actors.max(1);
        let shares: Vec<(Vec<Candidate>, Vec<u64>)> = (0..n)
            .map(|i| {
                (
                    work.candidates.iter().skip(i).step_by(n).cloned().collect(),
                    work.eval_seeds.iter().skip(i).step_by(n).copied().collect(),
                )
            })
            .collect();
        let noise_std = work.noise_std;
        let results = self.pool.map(shares, move |actor, (candidates, seeds)| {
            actor.evaluate(&policy, noise_std, candidates, seeds)
        })?;
        let slowest = results
            .iter()
            .map(|r| r.rollout_seconds)
            .fold(0.0, f64::max);
        self.rollout_seconds += slowest;
        self.runtime_seconds += (started.elapsed().as_secs_f64() - slowest).max(0.0);

        // Undo the round-robin split: candidate j went to actor j % n.
        let mut candidates = vec![None; work.candidates.len()];
        let mut evaluation = RolloutResult {
            returns: Vec::new(),
            steps: 0,
        };
        for (i, share) in results.into_iter().enumerate() {
            for (k, r) in share.candidates.into_iter().enumerate() {
                if let Some(slot) = candidates.get_mut(i + k * n) {
                    *slot = Some(r);
                }
            }
            evaluation.returns.extend(share.evaluation.returns);
            evaluation.steps += share.evaluation.steps;
        }
        let candidates = candidates
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| miniray::Error::Internal("a rollout result is missing".into()))?;
        Ok(GenerationResults {
            candidates,
            evaluation,
        })
    }
}

/// Episodes the actors have run, in total.
fn episodes_run(actors: &[ActorHandle<RolloutWorker>]) -> miniray::Result<u64> {
    let stats = actors
        .iter()
        .map(|a| a.stats())
        .collect::<miniray::Result<Vec<_>>>()?;
    Ok(miniray::get_all(&stats)?.iter().map(|(_, e)| e).sum())
}

fn main() -> anyhow::Result<()> {
    // First thing: in a worker process this runs the worker loop and never returns.
    miniray::init().context("starting miniray")?;
    let result = run(Args::parse());
    miniray::shutdown();
    result
}

fn run(args: Args) -> anyhow::Result<()> {
    let cpus = miniray::cluster_resources()?
        .get("CPU")
        .copied()
        .unwrap_or(1.0);
    let n = args.actors.unwrap_or((cpus as usize).max(1));
    let started = Instant::now();
    let actors: Vec<ActorHandle<RolloutWorker>> = (0..n)
        .map(|i| RolloutWorker::options().num_cpus(1.0).remote(i))
        .collect::<miniray::Result<_>>()?;
    // Wait until every actor is up, so that start-up does not count as training time.
    episodes_run(&actors)?;
    println!(
        "{n} rollout actor(s) up in {:.2} s ({cpus} CPU(s) in the cluster); training ES on CartPole-v1",
        started.elapsed().as_secs_f64()
    );

    let config = TrainConfig {
        seed: args.seed,
        max_env_steps: args.max_env_steps,
        ..TrainConfig::default()
    };
    let mut evaluator = ActorEvaluator {
        pool: ActorPool::new(actors.clone()),
        actors: n,
        runtime_seconds: 0.0,
        rollout_seconds: 0.0,
    };
    let bar = ProgressBar::new(config.max_env_steps);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} env steps  {msg}")
            .context("progress template")?,
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let report = train_with(&config, &mut evaluator, |r: &GenerationRecord| {
        let line = format!(
            "iteration {:>3}  mean return {:>6.1}  last-100 mean {:>6.1}  {:>9.0} env steps/s",
            r.iteration, r.mean_return, r.mean_return_last100, r.steps_per_second
        );
        bar.set_position(r.env_steps.min(config.max_env_steps));
        if bar.is_hidden() {
            println!("{line}");
        } else {
            bar.set_message(line);
        }
    })?;
    bar.finish_and_clear();

    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    let csv = args.out_dir.join("learning_curve.csv");
    let png = args.out_dir.join("learning_curve.png");
    write_csv(&csv, &report.records)?;
    write_plot(&png, &report.records, config.solved_threshold)?;

    let last = report.records.last();
    let episodes = episodes_run(&actors)?;
    println!(
        "{} after {} iterations, {} env steps ({} episodes) in {:.2} s: last-100 mean return {:.1}",
        if report.solved() {
            "solved"
        } else {
            "stopped (budget)"
        },
        report.records.len(),
        report.env_steps,
        episodes,
        report.wall_seconds,
        last.map_or(0.0, |r| r.mean_return_last100),
    );
    println!(
        "throughput {:.0} env steps/s; waiting on rollouts {:.2} s, of which the runtime (not the environment) {:.2} s = {:.0}% of wall time",
        report.env_steps as f64 / report.wall_seconds.max(1e-9),
        evaluator.rollout_seconds + evaluator.runtime_seconds,
        evaluator.runtime_seconds,
        100.0 * evaluator.runtime_seconds / report.wall_seconds.max(1e-9),
    );
    println!("wrote {} and {}", csv.display(), png.display());
    Ok(())
}
