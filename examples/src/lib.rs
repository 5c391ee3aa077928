//! Example workloads for miniray.
//!
//! [`rl`] holds everything of the evolution-strategies CartPole example that does not need a
//! cluster: the environment, the policy, pure rollouts, the ES learner, a pluggable training
//! loop and report writers. The distributed example runs the same loop with an evaluator that
//! ships candidates to rollout actors.

pub mod rl;
