//! The ES training loop with a pluggable evaluator.
//!
//! One generation is: `Es::ask` for candidates around the current policy, one call to
//! [`Evaluator::evaluate`] that runs every candidate *and* the unperturbed policy's evaluation
//! episodes (both only need the current policy, so a distributed evaluator can run them all in
//! one parallel round), bookkeeping of the stop rule, then `Es::tell`. [`train_local`] plugs in
//! the sequential in-process [`LocalEvaluator`]; the distributed example implements
//! [`Evaluator`] with rollout actors and calls [`train`] with the same config.
//!
//! Stop rule (CartPole-v1's "solved"): the mean return over the last `solved_window` (100)
//! evaluation episodes of the unperturbed policy reaches `solved_threshold` (475); or the
//! env-step budget, which counts every environment step (candidates and evaluation), runs out.

use std::collections::VecDeque;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::es::{Candidate, Es, EsConfig, EsError};
use super::policy::Policy;
use super::rollout::{RolloutResult, run_episodes};

/// Everything [`train`] needs besides the evaluator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Learner hyperparameters.
    pub es: EsConfig,
    /// Seed of the learner (initial parameters, noise, episode seeds).
    pub seed: u64,
    /// Evaluation episodes of the unperturbed policy per generation; they feed the stop rule
    /// and the reported mean return.
    pub eval_episodes_per_generation: usize,
    /// Episodes the stop rule averages over (CartPole-v1: 100).
    pub solved_window: usize,
    /// Mean return over the window that counts as solved (CartPole-v1: 475).
    pub solved_threshold: f64,
    /// Stop once this many environment steps have been taken. Checked after each generation,
    /// so the last generation may overshoot it by at most one generation's steps.
    pub max_env_steps: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            es: EsConfig::default(),
            seed: 0,
            eval_episodes_per_generation: 10,
            solved_window: 100,
            solved_threshold: 475.0,
            max_env_steps: 2_000_000,
        }
    }
}

/// The work of one generation, handed to an [`Evaluator`].
#[derive(Debug, Clone, Copy)]
pub struct GenerationWork<'a> {
    /// Generation index, from 0.
    pub generation: u64,
    /// The current unperturbed policy: the base of every candidate and the policy to evaluate.
    pub policy: &'a Policy,
    /// `sigma`, needed to rebuild candidates from their seeds.
    pub noise_std: f32,
    /// Candidates to evaluate; results must come back in this order.
    pub candidates: &'a [Candidate],
    /// Seeds of the unperturbed policy's evaluation episodes.
    pub eval_seeds: &'a [u64],
}

/// Results of one generation's work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationResults {
    /// One result per candidate, in the order of [`GenerationWork::candidates`].
    pub candidates: Vec<RolloutResult>,
    /// The unperturbed policy on [`GenerationWork::eval_seeds`].
    pub evaluation: RolloutResult,
}

/// Runs a generation's episodes somewhere: in-process, on threads or on remote actors.
pub trait Evaluator {
    /// Why evaluation failed (e.g. an actor died).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Runs every candidate and the evaluation episodes of `work`.
    fn evaluate(&mut self, work: &GenerationWork<'_>) -> Result<GenerationResults, Self::Error>;
}

/// Sequential, single-threaded evaluation in the calling thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalEvaluator;

impl Evaluator for LocalEvaluator {
    type Error = std::convert::Infallible;

    fn evaluate(&mut self, work: &GenerationWork<'_>) -> Result<GenerationResults, Self::Error> {
        Ok(GenerationResults {
            candidates: work
                .candidates
                .iter()
                .map(|candidate| candidate.evaluate(work.policy, work.noise_std))
                .collect(),
            evaluation: run_episodes(work.policy, work.eval_seeds),
        })
    }
}

/// One row of the learning curve: the state after a generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationRecord {
    /// Generation index, from 1 (the first generation evaluated is 1).
    pub iteration: u64,
    /// Environment steps so far, candidates and evaluation together.
    pub env_steps: u64,
    /// Seconds since training started.
    pub wall_seconds: f64,
    /// Mean return of this generation's evaluation episodes (unperturbed policy).
    pub mean_return: f64,
    /// Mean return over the last `solved_window` evaluation episodes (fewer early on).
    pub mean_return_last100: f64,
    /// Environment steps per second during this generation (throughput, not an average since
    /// the start, so slow-downs show).
    pub steps_per_second: f64,
}

/// Why training ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// The stop rule's mean return reached the threshold over a full window.
    Solved,
    /// The env-step budget ran out first.
    BudgetExhausted,
}

/// The outcome of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingReport {
    /// Why training ended.
    pub stop_reason: StopReason,
    /// The learning curve, one record per generation.
    pub records: Vec<GenerationRecord>,
    /// The last evaluated policy: when solved, the very policy whose evaluation episodes
    /// completed the winning window.
    pub policy: Policy,
    /// Total environment steps.
    pub env_steps: u64,
    /// Total wall time in seconds.
    pub wall_seconds: f64,
}

impl TrainingReport {
    /// True when the run met the stop rule's threshold.
    pub fn solved(&self) -> bool {
        self.stop_reason == StopReason::Solved
    }
}

/// Why [`train`] failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError<E: std::error::Error + 'static> {
    /// The learner rejected its config or the evaluator's results.
    #[error(transparent)]
    Es(#[from] EsError),
    /// The config outside the learner is invalid.
    #[error("invalid training config: {0}")]
    InvalidConfig(String),
    /// The evaluator returned a different number of results than candidates.
    #[error("evaluator returned {actual} candidate results for {expected} candidates")]
    WrongResultCount {
        /// Candidates handed out.
        expected: usize,
        /// Results received.
        actual: usize,
    },
    /// The evaluator failed.
    #[error("evaluation failed: {0}")]
    Evaluator(#[source] E),
}

/// Tracks the stop rule's window of evaluation returns.
#[derive(Debug, Clone)]
struct SolvedWindow {
    returns: VecDeque<f64>,
    capacity: usize,
}

impl SolvedWindow {
    fn new(capacity: usize) -> Self {
        Self {
            returns: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    fn extend(&mut self, returns: &[f64]) {
        for &r in returns {
            // Invariant: at most `capacity` (the most recent) returns are kept.
            if self.returns.len() == self.capacity {
                self.returns.pop_front();
            }
            self.returns.push_back(r);
        }
    }

    fn mean(&self) -> f64 {
        if self.returns.is_empty() {
            0.0
        } else {
            self.returns.iter().sum::<f64>() / self.returns.len() as f64
        }
    }

    fn is_full(&self) -> bool {
        self.returns.len() == self.capacity
    }
}

/// Trains until solved or out of budget, evaluating each generation with `evaluator`.
pub fn train<V: Evaluator>(
    config: &TrainConfig,
    evaluator: &mut V,
) -> Result<TrainingReport, TrainError<V::Error>> {
    train_with(config, evaluator, |_| {})
}

/// [`train`] that hands each generation's record to `on_record` as soon as it exists (for
/// progress displays).
pub fn train_with<V: Evaluator>(
    config: &TrainConfig,
    evaluator: &mut V,
    mut on_record: impl FnMut(&GenerationRecord),
) -> Result<TrainingReport, TrainError<V::Error>> {
    if config.eval_episodes_per_generation == 0 || config.solved_window == 0 {
        return Err(TrainError::InvalidConfig(
            "eval_episodes_per_generation and solved_window must be >= 1".into(),
        ));
    }
    let mut es = Es::new(config.es.clone(), config.seed)?;
    let mut window = SolvedWindow::new(config.solved_window);
    let mut records = Vec::new();
    let mut env_steps = 0u64;
    let started = Instant::now();

    loop {
        let generation_started = Instant::now();
        let policy = es.policy();
        let candidates = es.ask();
        let eval_seeds = es.evaluation_seeds(config.eval_episodes_per_generation);
        let work = GenerationWork {
            generation: es.generation(),
            policy: &policy,
            noise_std: config.es.noise_std,
            candidates: &candidates,
            eval_seeds: &eval_seeds,
        };
        let results = evaluator.evaluate(&work).map_err(TrainError::Evaluator)?;
        if results.candidates.len() != candidates.len() {
            return Err(TrainError::WrongResultCount {
                expected: candidates.len(),
                actual: results.candidates.len(),
            });
        }

        let generation_steps =
            results.evaluation.steps + results.candidates.iter().map(|r| r.steps).sum::<u64>();
        env_steps += generation_steps;
        window.extend(&results.evaluation.returns);
        let generation_seconds = generation_started.elapsed().as_secs_f64();
        let record = GenerationRecord {
            iteration: es.generation() + 1,
            env_steps,
            wall_seconds: started.elapsed().as_secs_f64(),
            mean_return: results.evaluation.mean_return(),
            mean_return_last100: window.mean(),
            steps_per_second: generation_steps as f64 / generation_seconds.max(1e-9),
        };
        tracing::info!(
            iteration = record.iteration,
            env_steps = record.env_steps,
            mean_return = record.mean_return,
            mean_return_last100 = record.mean_return_last100,
            steps_per_second = record.steps_per_second,
            "es generation evaluated"
        );
        on_record(&record);
        records.push(record);

        // Decide before updating: when solved, the policy to report is the one just evaluated.
        let stop_reason = if window.is_full() && window.mean() >= config.solved_threshold {
            Some(StopReason::Solved)
        } else if env_steps >= config.max_env_steps {
            Some(StopReason::BudgetExhausted)
        } else {
            None
        };
        if let Some(stop_reason) = stop_reason {
            let wall_seconds = started.elapsed().as_secs_f64();
            tracing::info!(
                ?stop_reason,
                env_steps,
                wall_seconds,
                "es training finished"
            );
            return Ok(TrainingReport {
                stop_reason,
                records,
                policy,
                env_steps,
                wall_seconds,
            });
        }

        let fitness: Vec<f64> = results
            .candidates
            .iter()
            .map(RolloutResult::mean_return)
            .collect();
        let stats = es.tell(&fitness)?;
        tracing::debug!(
            mean_fitness = stats.mean_fitness,
            max_fitness = stats.max_fitness,
            update_norm = stats.update_norm,
            param_norm = stats.param_norm,
            "es update applied"
        );
    }
}

/// [`train`] with every episode run sequentially in this thread; for tuning, tests and as the
/// single-process baseline of the distributed example.
pub fn train_local(
    config: &TrainConfig,
) -> Result<TrainingReport, TrainError<std::convert::Infallible>> {
    train(config, &mut LocalEvaluator)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_keeps_most_recent_returns() {
        let mut window = SolvedWindow::new(3);
        assert_eq!(window.mean(), 0.0);
        window.extend(&[1.0, 2.0]);
        assert!(!window.is_full());
        window.extend(&[3.0, 4.0, 5.0]);
        assert!(window.is_full());
        assert_eq!(window.mean(), 4.0);
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let config = TrainConfig {
            eval_episodes_per_generation: 0,
            ..TrainConfig::default()
        };
        assert!(matches!(
            train_local(&config),
            Err(TrainError::InvalidConfig(_))
        ));
        let config = TrainConfig {
            es: EsConfig {
                pairs_per_generation: 0,
                ..EsConfig::default()
            },
            ..TrainConfig::default()
        };
        assert!(matches!(train_local(&config), Err(TrainError::Es(_))));
    }

    /// An evaluator that drops a result must be reported, not silently mis-paired.
    #[test]
    fn short_results_are_an_error() {
        struct Dropping;
        impl Evaluator for Dropping {
            type Error = std::convert::Infallible;
            fn evaluate(
                &mut self,
                work: &GenerationWork<'_>,
            ) -> Result<GenerationResults, Self::Error> {
                let mut results = LocalEvaluator.evaluate(work)?;
                results.candidates.pop();
                Ok(results)
            }
        }
        assert!(matches!(
            train(&TrainConfig::default(), &mut Dropping),
            Err(TrainError::WrongResultCount { .. })
        ));
    }

    /// A real learning check: from the always-push-left start (~9 steps per episode) the
    /// windowed mean return must clearly rise within 120k env steps. Over 60 seeds the lowest
    /// value measured at this budget was 199, so 150 leaves margin without being trivial.
    #[test]
    fn local_training_clearly_improves() {
        for seed in 0..6 {
            let config = TrainConfig {
                seed,
                max_env_steps: 120_000,
                ..TrainConfig::default()
            };
            let report = train_local(&config).unwrap();
            let first = report.records[0].mean_return;
            let last = report.records.last().unwrap().mean_return_last100;
            assert!(
                last >= 150.0 && last >= 3.0 * first,
                "seed {seed}: first generation {first}, windowed mean at the end {last}"
            );
        }
    }

    /// The default config solves CartPole-v1 (60/60 seeds measured, at most 260k env steps),
    /// and the solved policy holds up on 100 episodes it never saw.
    #[test]
    fn default_config_solves_cartpole() {
        for seed in 0..3 {
            let config = TrainConfig {
                seed,
                ..TrainConfig::default()
            };
            let report = train_local(&config).unwrap();
            assert!(report.solved(), "seed {seed}: {:?}", report.records.last());
            assert!(
                report.env_steps < 400_000,
                "seed {seed}: {} steps",
                report.env_steps
            );
            let last = report.records.last().unwrap();
            assert!(last.mean_return_last100 >= 475.0);
            let fresh: Vec<u64> = (1_000_000..1_000_100).collect();
            let held_out = run_episodes(&report.policy, &fresh).mean_return();
            assert!(
                held_out >= 475.0,
                "seed {seed}: held-out mean return {held_out}"
            );
        }
    }

    #[test]
    fn budget_stops_training_and_steps_are_counted() {
        let config = TrainConfig {
            max_env_steps: 3_000,
            ..TrainConfig::default()
        };
        let report = train_local(&config).unwrap();
        assert_eq!(report.stop_reason, StopReason::BudgetExhausted);
        assert!(report.env_steps >= 3_000);
        let last = report.records.last().unwrap();
        assert_eq!(last.env_steps, report.env_steps);
        // Steps are cumulative and iterations consecutive.
        for (i, pair) in report.records.windows(2).enumerate() {
            assert!(pair[1].env_steps > pair[0].env_steps);
            assert_eq!(pair[0].iteration, i as u64 + 1);
        }
        // Without the last generation the budget was not yet spent.
        if report.records.len() > 1 {
            assert!(report.records[report.records.len() - 2].env_steps < 3_000);
        }
    }
}
