//! Running a policy for whole episodes: the unit of work a rollout actor performs.
//!
//! Everything here is pure and deterministic (no miniray, no clocks, no shared state), so the
//! same call gives the same answer in the driver, in a local test and in a remote actor.

use serde::{Deserialize, Serialize};

use super::cartpole::CartPole;
use super::policy::Policy;

/// Outcome of running one policy on a list of episode seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutResult {
    /// Undiscounted return of each episode, in the order of the seeds.
    pub returns: Vec<f64>,
    /// Environment steps taken over all episodes (what the training budget counts).
    pub steps: u64,
}

impl RolloutResult {
    /// Mean of `returns`; 0.0 for no episodes so an empty rollout cannot inject a NaN into
    /// fitness shaping.
    pub fn mean_return(&self) -> f64 {
        if self.returns.is_empty() {
            0.0
        } else {
            self.returns.iter().sum::<f64>() / self.returns.len() as f64
        }
    }
}

/// Runs `policy` for one episode per seed; each episode uses a fresh `CartPole::new(seed)`, so
/// the result depends only on the policy and the seeds.
pub fn run_episodes(policy: &Policy, seeds: &[u64]) -> RolloutResult {
    let mut returns = Vec::with_capacity(seeds.len());
    let mut steps = 0u64;
    for &seed in seeds {
        let mut env = CartPole::new(seed);
        let mut obs = env.reset();
        let mut episode_return = 0.0;
        loop {
            let step = env.step(policy.act(&obs));
            episode_return += step.reward;
            steps += 1;
            if step.done() {
                break;
            }
            obs = step.obs;
        }
        returns.push(episode_return);
    }
    RolloutResult { returns, steps }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rl::policy::Architecture;

    #[test]
    fn untrained_policy_falls_quickly_and_counts_steps() {
        // Zero parameters always push left: the pole falls within a few dozen steps.
        let policy = Policy::new(Architecture::Linear, vec![0.0; 10]).unwrap();
        let result = run_episodes(&policy, &[1, 2, 3]);
        assert_eq!(result.returns.len(), 3);
        assert!(
            result.returns.iter().all(|r| (5.0..60.0).contains(r)),
            "{result:?}"
        );
        assert_eq!(result.steps as f64, result.returns.iter().sum::<f64>());
    }

    #[test]
    fn balancing_policy_reaches_the_time_limit() {
        // Push toward the side the pole leans and is rotating to: a known linear solution.
        let mut params = vec![0.0; 10];
        params[4..8].copy_from_slice(&[0.1, 0.5, 5.0, 1.0]);
        let policy = Policy::new(Architecture::Linear, params).unwrap();
        let result = run_episodes(&policy, &[10, 11, 12, 13]);
        assert_eq!(result.returns, vec![500.0; 4]);
        assert_eq!(result.steps, 2000);
        assert_eq!(result.mean_return(), 500.0);
    }

    #[test]
    fn same_seeds_give_same_result() {
        let policy = Policy::new(
            Architecture::Linear,
            vec![0.1, -0.2, 0.3, 0.0, 0.2, 0.1, 0.0, 0.4, 0.0, 0.0],
        )
        .unwrap();
        let seeds = [5, 6, 7, 8];
        assert_eq!(run_episodes(&policy, &seeds), run_episodes(&policy, &seeds));
        assert_eq!(run_episodes(&policy, &[]).mean_return(), 0.0);
    }
}
