//! Evolution strategies (Salimans et al. 2017, "Evolution Strategies as a Scalable Alternative
//! to Reinforcement Learning"; the ES workload of the Ray paper) as an ask/tell learner.
//!
//! Each generation samples `P` Gaussian directions `eps_i` and evaluates the antithetic pair
//! `theta + sigma * eps_i` and `theta - sigma * eps_i`, both on the same episode seeds (common
//! random numbers: the pair's difference then measures the direction, not the luck of the
//! starting states). Returns are replaced by centered ranks, the gradient estimate is
//! `sum_i (rank_i+ - rank_i-) eps_i / (2P)`, and Adam applies it with optional L2 weight decay.
//!
//! Only seeds travel: a [`Candidate`] carries the `u64` that regenerates its noise vector, so a
//! worker rebuilds `theta ± sigma * eps` from the shared base policy and a few bytes, and the
//! learner regenerates the same noise in [`Es::tell`]. The learner never runs episodes itself;
//! the caller evaluates candidates wherever it likes (in-process or on remote actors).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::policy::{Architecture, DEFAULT_ARCHITECTURE, Policy};
use super::rollout::{RolloutResult, run_episodes};

/// Which side of an antithetic pair a candidate is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sign {
    /// `theta + sigma * eps`.
    Plus,
    /// `theta - sigma * eps`.
    Minus,
}

impl Sign {
    /// +1.0 or -1.0.
    pub fn factor(self) -> f32 {
        match self {
            Sign::Plus => 1.0,
            Sign::Minus => -1.0,
        }
    }
}

/// One perturbed policy to evaluate, described by seeds only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// Seed of the Gaussian noise vector (see [`gaussian_noise`]); shared by the pair.
    pub noise_seed: u64,
    /// Side of the antithetic pair.
    pub sign: Sign,
    /// Seeds of the episodes to run; shared by the pair.
    pub episode_seeds: Vec<u64>,
}

impl Candidate {
    /// The perturbed policy `base + sign * noise_std * gaussian_noise(noise_seed)`.
    pub fn policy(&self, base: &Policy, noise_std: f32) -> Policy {
        let scale = self.sign.factor() * noise_std;
        let mut params = base.params().to_vec();
        let noise = gaussian_noise(self.noise_seed, params.len());
        for (p, n) in params.iter_mut().zip(noise) {
            *p += scale * n;
        }
        // Invariant kept: same architecture, same length as `base`.
        match Policy::new(base.architecture(), params) {
            Ok(policy) => policy,
            Err(err) => unreachable!("perturbation preserves the parameter count: {err}"),
        }
    }

    /// Runs this candidate's episodes: what a rollout actor does with a candidate.
    pub fn evaluate(&self, base: &Policy, noise_std: f32) -> RolloutResult {
        run_episodes(&self.policy(base, noise_std), &self.episode_seeds)
    }
}

/// `dim` independent standard normal `f32`s, a pure function of `seed`.
///
/// Box–Muller over `StdRng` rather than a distribution crate keeps the exact numbers under this
/// crate's control: the learner and every worker run the same binary, so they regenerate the
/// same vector from the same seed.
pub fn gaussian_noise(seed: u64, dim: usize) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(dim + 1);
    while out.len() < dim {
        // u1 in (0, 1] so ln(u1) is finite.
        let u1 = 1.0 - rng.random::<f64>();
        let u2 = rng.random::<f64>();
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        out.push((radius * angle.cos()) as f32);
        out.push((radius * angle.sin()) as f32);
    }
    out.truncate(dim);
    out
}

/// Maps values to ranks scaled into `[-0.5, 0.5]`, averaging the ranks of ties.
///
/// Rank shaping makes the update invariant to the scale of returns and robust to outliers.
/// Averaging ties matters on CartPole: once many candidates score the maximum 500, an arbitrary
/// tie order would otherwise inject pure noise into the gradient.
pub fn centered_ranks(values: &[f64]) -> Vec<f32> {
    let n = values.len();
    if n < 2 {
        return vec![0.0; n];
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0f64; n];
    let mut start = 0;
    while start < n {
        let mut end = start + 1;
        while end < n && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let mean_rank = (start + end - 1) as f64 / 2.0;
        for &index in &order[start..end] {
            ranks[index] = mean_rank;
        }
        start = end;
    }
    ranks
        .into_iter()
        .map(|rank| (rank / (n - 1) as f64 - 0.5) as f32)
        .collect()
}

/// Hyperparameters of the learner. [`Default`] is tuned for CartPole-v1 (see the crate README
/// for the measurements behind each value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EsConfig {
    /// Policy network shape.
    pub architecture: Architecture,
    /// Antithetic pairs per generation (`P`); a generation has `2P` candidates.
    pub pairs_per_generation: usize,
    /// Episodes each candidate is evaluated on (`E`); its fitness is the mean return.
    pub episodes_per_candidate: usize,
    /// Standard deviation of the parameter noise (`sigma`).
    pub noise_std: f32,
    /// Adam step size.
    pub learning_rate: f32,
    /// L2 coefficient added to the gradient; 0 disables weight decay.
    pub weight_decay: f32,
    /// Adam's first-moment decay.
    pub adam_beta1: f32,
    /// Adam's second-moment decay.
    pub adam_beta2: f32,
    /// Adam's denominator guard.
    pub adam_epsilon: f32,
}

/// Defaults tuned on CartPole-v1 with the linear policy and 10 evaluation episodes per
/// generation (60/60 seeds solved, mean 153k and at most 260k env steps, evaluation included).
///
/// For the linear policy from a zero start only two ratios matter, because argmax is
/// scale-invariant and Adam's step ignores gradient scale: `learning_rate / noise_std` (best
/// near 0.4) and `weight_decay * noise_std` (best near 0.02; decay keeps the parameter norm, and
/// so the relative exploration noise, from drifting, which removed the slow tail of seeds).
/// 8 pairs cost ~15% more steps than 4 but need fewer generations (mean 38 vs 47) and give 16
/// independent candidates per generation to spread over rollout actors. One episode per
/// candidate: shared episode seeds within a pair already cancel most start-state luck.
impl Default for EsConfig {
    fn default() -> Self {
        Self {
            architecture: DEFAULT_ARCHITECTURE,
            pairs_per_generation: 8,
            episodes_per_candidate: 1,
            noise_std: 0.1,
            learning_rate: 0.04,
            weight_decay: 0.2,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
        }
    }
}

/// Misuse of the learner or bad inputs from evaluators.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EsError {
    /// A hyperparameter is out of range.
    #[error("invalid es config: {0}")]
    InvalidConfig(String),
    /// [`Es::tell`] was called without a preceding [`Es::ask`].
    #[error("tell called without a pending generation (call ask first)")]
    NoPendingGeneration,
    /// The number of fitness values differs from the number of candidates asked for.
    #[error("expected {expected} fitness values (one per candidate), got {actual}")]
    WrongResultCount {
        /// Candidates in the pending generation.
        expected: usize,
        /// Values passed to tell.
        actual: usize,
    },
    /// A fitness value is NaN or infinite (it would poison the ranks).
    #[error("fitness of candidate {index} is not finite: {value}")]
    NonFiniteFitness {
        /// Position in the candidate list.
        index: usize,
        /// The offending value.
        value: f64,
    },
}

/// What one [`Es::tell`] did, for logging.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateStats {
    /// Mean fitness over all candidates of the generation.
    pub mean_fitness: f64,
    /// Best candidate fitness of the generation.
    pub max_fitness: f64,
    /// L2 norm of the parameter change.
    pub update_norm: f32,
    /// L2 norm of the parameters after the update.
    pub param_norm: f32,
}

/// The ES learner: holds the current parameters and optimizer state, hands out candidates and
/// turns their fitness into an update.
#[derive(Debug, Clone)]
pub struct Es {
    config: EsConfig,
    params: Vec<f32>,
    adam_m: Vec<f32>,
    adam_v: Vec<f32>,
    adam_steps: i32,
    /// Draws noise and training-episode seeds.
    train_rng: StdRng,
    /// Draws evaluation-episode seeds. Kept apart from `train_rng` so that changing how many
    /// evaluation episodes run does not change the training trajectory.
    eval_rng: StdRng,
    /// Candidates of the generation awaiting `tell`, in the order `ask` returned them.
    pending: Option<Vec<Candidate>>,
    generation: u64,
}

impl Es {
    /// Creates a learner; `seed` fixes initial parameters, noise and episode seeds, so a run is
    /// reproducible given the same fitness values.
    pub fn new(config: EsConfig, seed: u64) -> Result<Self, EsError> {
        validate(&config)?;
        let params = config.architecture.initial_params(seed ^ 0x5eed_0001);
        let dim = params.len();
        Ok(Self {
            params,
            adam_m: vec![0.0; dim],
            adam_v: vec![0.0; dim],
            adam_steps: 0,
            train_rng: StdRng::seed_from_u64(seed),
            eval_rng: StdRng::seed_from_u64(seed ^ 0xe7a1_0000_0000_0000),
            pending: None,
            generation: 0,
            config,
        })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &EsConfig {
        &self.config
    }

    /// The current (unperturbed) parameters.
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// The current parameters as a policy: the base that candidates perturb and that
    /// evaluation episodes run.
    pub fn policy(&self) -> Policy {
        match Policy::new(self.config.architecture, self.params.clone()) {
            Ok(policy) => policy,
            Err(err) => unreachable!("params always match the configured architecture: {err}"),
        }
    }

    /// Number of updates applied so far.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Samples the next generation: `2P` candidates ordered `[pair 0 +, pair 0 -, pair 1 +,
    /// ...]`. Calling `ask` again before `tell` discards the previous candidates.
    pub fn ask(&mut self) -> Vec<Candidate> {
        let pairs = self.config.pairs_per_generation;
        let mut candidates = Vec::with_capacity(2 * pairs);
        for _ in 0..pairs {
            let noise_seed = self.train_rng.random::<u64>();
            let episode_seeds: Vec<u64> = (0..self.config.episodes_per_candidate)
                .map(|_| self.train_rng.random::<u64>())
                .collect();
            candidates.push(Candidate {
                noise_seed,
                sign: Sign::Plus,
                episode_seeds: episode_seeds.clone(),
            });
            candidates.push(Candidate {
                noise_seed,
                sign: Sign::Minus,
                episode_seeds,
            });
        }
        self.pending = Some(candidates.clone());
        candidates
    }

    /// Fresh seeds for `count` evaluation episodes of the unperturbed policy; never reused
    /// across calls, so successive evaluations are independent samples.
    pub fn evaluation_seeds(&mut self, count: usize) -> Vec<u64> {
        (0..count).map(|_| self.eval_rng.random::<u64>()).collect()
    }

    /// Applies one update from the fitness (mean return) of each candidate of the last `ask`,
    /// in the same order.
    pub fn tell(&mut self, fitness: &[f64]) -> Result<UpdateStats, EsError> {
        let candidates = self.pending.as_ref().ok_or(EsError::NoPendingGeneration)?;
        if fitness.len() != candidates.len() {
            return Err(EsError::WrongResultCount {
                expected: candidates.len(),
                actual: fitness.len(),
            });
        }
        if let Some((index, &value)) = fitness.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(EsError::NonFiniteFitness { index, value });
        }
        let candidates = self.pending.take().unwrap_or_default();

        let ranks = centered_ranks(fitness);
        let dim = self.params.len();
        let mut gradient = vec![0.0f32; dim];
        for (pair, shaped) in candidates.chunks_exact(2).zip(ranks.chunks_exact(2)) {
            // Invariant from `ask`: each chunk is (Plus, Minus) with one noise seed.
            let weight = shaped[0] - shaped[1];
            if weight == 0.0 {
                continue;
            }
            for (g, n) in gradient
                .iter_mut()
                .zip(gaussian_noise(pair[0].noise_seed, dim))
            {
                *g += weight * n;
            }
        }
        let scale = 1.0 / candidates.len() as f32;
        // Adam minimizes, so descend on -gradient (+ weight decay).
        for (g, p) in gradient.iter_mut().zip(&self.params) {
            *g = -*g * scale + self.config.weight_decay * p;
        }
        let update_norm = self.adam_step(&gradient);
        self.generation += 1;

        let mean_fitness = fitness.iter().sum::<f64>() / fitness.len().max(1) as f64;
        let max_fitness = fitness.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Ok(UpdateStats {
            mean_fitness,
            max_fitness,
            update_norm,
            param_norm: norm(&self.params),
        })
    }

    /// One Adam step along `gradient` (a descent direction's negative); returns the step norm.
    fn adam_step(&mut self, gradient: &[f32]) -> f32 {
        let EsConfig {
            learning_rate,
            adam_beta1: beta1,
            adam_beta2: beta2,
            adam_epsilon: epsilon,
            ..
        } = self.config;
        self.adam_steps = self.adam_steps.saturating_add(1);
        let step_size = learning_rate * (1.0 - beta2.powi(self.adam_steps)).sqrt()
            / (1.0 - beta1.powi(self.adam_steps));
        let mut squared = 0.0f32;
        for (((p, m), v), g) in self
            .params
            .iter_mut()
            .zip(&mut self.adam_m)
            .zip(&mut self.adam_v)
            .zip(gradient)
        {
            *m = beta1 * *m + (1.0 - beta1) * g;
            *v = beta2 * *v + (1.0 - beta2) * g * g;
            let delta = -step_size * *m / (v.sqrt() + epsilon);
            *p += delta;
            squared += delta * delta;
        }
        squared.sqrt()
    }
}

fn norm(values: &[f32]) -> f32 {
    values.iter().map(|v| v * v).sum::<f32>().sqrt()
}

fn validate(config: &EsConfig) -> Result<(), EsError> {
    let positive = |name: &str, value: f32| {
        if value.is_finite() && value > 0.0 {
            Ok(())
        } else {
            Err(EsError::InvalidConfig(format!(
                "{name} must be finite and > 0, got {value}"
            )))
        }
    };
    if config.pairs_per_generation == 0 {
        return Err(EsError::InvalidConfig(
            "pairs_per_generation must be >= 1".into(),
        ));
    }
    if config.episodes_per_candidate == 0 {
        return Err(EsError::InvalidConfig(
            "episodes_per_candidate must be >= 1".into(),
        ));
    }
    if let Architecture::Mlp { hidden: 0 } = config.architecture {
        return Err(EsError::InvalidConfig(
            "an mlp needs at least one hidden unit".into(),
        ));
    }
    positive("noise_std", config.noise_std)?;
    positive("learning_rate", config.learning_rate)?;
    positive("adam_epsilon", config.adam_epsilon)?;
    if !(config.weight_decay.is_finite() && config.weight_decay >= 0.0) {
        return Err(EsError::InvalidConfig(format!(
            "weight_decay must be finite and >= 0, got {}",
            config.weight_decay
        )));
    }
    for (name, beta) in [
        ("adam_beta1", config.adam_beta1),
        ("adam_beta2", config.adam_beta2),
    ] {
        if !(0.0..1.0).contains(&beta) {
            return Err(EsError::InvalidConfig(format!(
                "{name} must be in [0, 1), got {beta}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_deterministic_and_standard_normal() {
        assert_eq!(gaussian_noise(42, 11), gaussian_noise(42, 11));
        assert_ne!(gaussian_noise(42, 11), gaussian_noise(43, 11));
        // A prefix of a longer vector is the shorter vector: length does not reshuffle.
        assert_eq!(gaussian_noise(42, 5), gaussian_noise(42, 6)[..5]);
        let sample = gaussian_noise(7, 100_000);
        let mean = sample.iter().map(|&v| f64::from(v)).sum::<f64>() / sample.len() as f64;
        let var = sample
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / sample.len() as f64;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
    }

    #[test]
    fn centered_ranks_are_in_range_and_average_ties() {
        assert_eq!(centered_ranks(&[3.0, 1.0, 2.0]), vec![0.5, -0.5, 0.0]);
        assert_eq!(centered_ranks(&[5.0, 5.0, 1.0]), vec![0.25, 0.25, -0.5]);
        assert_eq!(centered_ranks(&[9.0]), vec![0.0]);
        let ranks = centered_ranks(&[500.0, 500.0, 500.0, 500.0]);
        assert!(
            ranks.iter().all(|&r| r == 0.0),
            "all ties carry no signal: {ranks:?}"
        );
    }

    #[test]
    fn ask_returns_antithetic_pairs_with_shared_seeds() {
        let config = EsConfig {
            pairs_per_generation: 3,
            episodes_per_candidate: 2,
            ..EsConfig::default()
        };
        let mut es = Es::new(config, 1).unwrap();
        let candidates = es.ask();
        assert_eq!(candidates.len(), 6);
        for pair in candidates.chunks_exact(2) {
            assert_eq!(pair[0].sign, Sign::Plus);
            assert_eq!(pair[1].sign, Sign::Minus);
            assert_eq!(pair[0].noise_seed, pair[1].noise_seed);
            assert_eq!(pair[0].episode_seeds, pair[1].episode_seeds);
            assert_eq!(pair[0].episode_seeds.len(), 2);
        }
        assert_ne!(candidates[0].noise_seed, candidates[2].noise_seed);

        // The two sides are mirror images around the base.
        let base = es.policy();
        let plus = candidates[0].policy(&base, 0.1);
        let minus = candidates[1].policy(&base, 0.1);
        for ((p, m), b) in plus.params().iter().zip(minus.params()).zip(base.params()) {
            assert!(((p + m) / 2.0 - b).abs() < 1e-6);
        }
        assert_ne!(plus, base);
    }

    #[test]
    fn tell_moves_params_toward_better_candidates() {
        // Fitness = first parameter: the update must increase it.
        let config = EsConfig {
            pairs_per_generation: 16,
            ..EsConfig::default()
        };
        let mut es = Es::new(config, 3).unwrap();
        let sigma = es.config().noise_std;
        for _ in 0..20 {
            let base = es.policy();
            let fitness: Vec<f64> = es
                .ask()
                .iter()
                .map(|c| f64::from(c.policy(&base, sigma).params()[0]))
                .collect();
            es.tell(&fitness).unwrap();
        }
        assert_eq!(es.generation(), 20);
        assert!(es.params()[0] > 0.5, "params {:?}", es.params());
        assert!(es.params()[1..].iter().all(|p| p.abs() < es.params()[0]));
    }

    #[test]
    fn same_seed_and_fitness_give_same_trajectory() {
        let run = || {
            let mut es = Es::new(EsConfig::default(), 9).unwrap();
            for _ in 0..3 {
                let candidates = es.ask();
                let fitness: Vec<f64> = candidates
                    .iter()
                    .map(|c| {
                        c.evaluate(&es.policy(), es.config().noise_std)
                            .mean_return()
                    })
                    .collect();
                es.tell(&fitness).unwrap();
            }
            es.params().to_vec()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn tell_rejects_misuse() {
        let mut es = Es::new(EsConfig::default(), 0).unwrap();
        assert_eq!(es.tell(&[]), Err(EsError::NoPendingGeneration));
        let n = es.ask().len();
        assert_eq!(
            es.tell(&[1.0]),
            Err(EsError::WrongResultCount {
                expected: n,
                actual: 1
            })
        );
        let mut fitness = vec![1.0; n];
        fitness[3] = f64::NAN;
        assert!(matches!(
            es.tell(&fitness),
            Err(EsError::NonFiniteFitness { index: 3, .. })
        ));
        // A rejected tell keeps the generation pending.
        fitness[3] = 2.0;
        assert!(es.tell(&fitness).is_ok());
        assert_eq!(es.tell(&fitness), Err(EsError::NoPendingGeneration));
    }

    #[test]
    fn config_is_validated() {
        let bad = [
            EsConfig {
                pairs_per_generation: 0,
                ..EsConfig::default()
            },
            EsConfig {
                noise_std: 0.0,
                ..EsConfig::default()
            },
            EsConfig {
                learning_rate: f32::NAN,
                ..EsConfig::default()
            },
            EsConfig {
                adam_beta2: 1.0,
                ..EsConfig::default()
            },
            EsConfig {
                architecture: Architecture::Mlp { hidden: 0 },
                ..EsConfig::default()
            },
        ];
        for config in bad {
            assert!(matches!(Es::new(config, 0), Err(EsError::InvalidConfig(_))));
        }
    }

    #[test]
    fn candidates_round_trip_through_serde() {
        let mut es = Es::new(EsConfig::default(), 5).unwrap();
        let candidates = es.ask();
        let json = serde_json::to_string(&candidates).unwrap();
        let back: Vec<Candidate> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, candidates);
    }
}
