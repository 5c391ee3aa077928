//! CartPole-v1, a faithful port of Gymnasium's classic-control environment.
//!
//! The constants, the force/acceleration formulas, the explicit ("euler") integrator, the
//! termination test and the reward rule are copied from Gymnasium's `CartPoleEnv`, and the
//! 500-step truncation from the `TimeLimit` wrapper that `gym.make("CartPole-v1")` adds, so
//! returns measured here are comparable with published CartPole-v1 results. The tests check one
//! step against values printed by Gymnasium 1.x itself.
//!
//! Two deliberate differences, neither of which changes the dynamics: observations are returned
//! as `f64` (Gymnasium casts its `f64` state to `f32` for the observation only), and the initial
//! state comes from a Rust RNG, so the same seed gives the same episode here but not the same
//! episode as NumPy's generator in Gymnasium.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Gravitational acceleration (m/s²).
pub const GRAVITY: f64 = 9.8;
/// Mass of the cart (kg).
pub const MASS_CART: f64 = 1.0;
/// Mass of the pole (kg).
pub const MASS_POLE: f64 = 0.1;
/// Half the pole's length (m): Gymnasium calls it `length` and uses it as the pole's centre
/// of mass distance.
pub const HALF_POLE_LENGTH: f64 = 0.5;
/// Magnitude of the horizontal force applied by either action (N).
pub const FORCE_MAG: f64 = 10.0;
/// Seconds between state updates.
pub const TAU: f64 = 0.02;
/// The episode terminates once `|x|` exceeds this (m).
pub const X_THRESHOLD: f64 = 2.4;
/// The episode terminates once `|theta|` exceeds this: 12 degrees in radians, written exactly as
/// Gymnasium computes it so the boundary is bit-identical.
pub const THETA_THRESHOLD_RADIANS: f64 = 12.0 * 2.0 * std::f64::consts::PI / 360.0;
/// The `TimeLimit` of CartPole-v1: an episode is truncated after this many steps.
pub const MAX_EPISODE_STEPS: u32 = 500;
/// Number of discrete actions: 0 pushes the cart left, 1 pushes it right.
pub const NUM_ACTIONS: usize = 2;
/// Length of an observation: `[x, x_dot, theta, theta_dot]`.
pub const OBS_DIM: usize = 4;

const TOTAL_MASS: f64 = MASS_POLE + MASS_CART;
const POLE_MASS_LENGTH: f64 = MASS_POLE * HALF_POLE_LENGTH;
/// Half-width of the uniform distribution of every initial state component.
const INIT_STATE_BOUND: f64 = 0.05;

/// An observation: `[cart position, cart velocity, pole angle, pole angular velocity]`.
pub type Observation = [f64; OBS_DIM];

/// What one call to [`CartPole::step`] returns, mirroring Gymnasium's
/// `(obs, reward, terminated, truncated, info)` without the empty `info`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// The state after the step.
    pub obs: Observation,
    /// 1.0 for every step up to and including the one that terminates; 0.0 for steps taken
    /// after termination (Gymnasium's behaviour, which it also warns about).
    pub reward: f64,
    /// The pole fell or the cart left the track: the episode is over and must be reset.
    pub terminated: bool,
    /// The time limit was reached (can be true together with `terminated`).
    pub truncated: bool,
}

impl Step {
    /// True when the caller should stop stepping and reset.
    pub fn done(&self) -> bool {
        self.terminated || self.truncated
    }
}

/// One CartPole-v1 environment with its own seeded RNG.
///
/// Invariant: the RNG is only consumed by [`CartPole::reset`], four draws per reset, so the
/// sequence of initial states depends only on the seed and the number of resets.
#[derive(Debug, Clone)]
pub struct CartPole {
    rng: StdRng,
    state: Observation,
    elapsed_steps: u32,
    terminated: bool,
}

impl CartPole {
    /// Creates an environment whose initial states are drawn from an RNG seeded with `seed`.
    /// Call [`CartPole::reset`] before the first step.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            state: [0.0; OBS_DIM],
            elapsed_steps: 0,
            terminated: false,
        }
    }

    /// Starts a new episode from a state drawn uniformly from `[-0.05, 0.05]^4`.
    pub fn reset(&mut self) -> Observation {
        for component in &mut self.state {
            *component = self.rng.random_range(-INIT_STATE_BOUND..INIT_STATE_BOUND);
        }
        self.elapsed_steps = 0;
        self.terminated = false;
        self.state
    }

    /// Starts a new episode from a given state; for tests and for replaying a known start.
    pub fn reset_to(&mut self, state: Observation) -> Observation {
        self.state = state;
        self.elapsed_steps = 0;
        self.terminated = false;
        self.state
    }

    /// The current state.
    pub fn state(&self) -> Observation {
        self.state
    }

    /// Steps taken since the last reset.
    pub fn elapsed_steps(&self) -> u32 {
        self.elapsed_steps
    }

    /// Applies `action` (0 = push left, 1 = push right) for one `TAU` interval.
    ///
    /// # Panics
    /// If `action >= 2`: like Gymnasium's assertion, an invalid action is a bug in the caller
    /// (policies in this crate only ever return 0 or 1), not a condition to recover from.
    pub fn step(&mut self, action: usize) -> Step {
        assert!(
            action < NUM_ACTIONS,
            "cartpole action must be 0 or 1, got {action}"
        );
        let [x, x_dot, theta, theta_dot] = self.state;
        let force = if action == 1 { FORCE_MAG } else { -FORCE_MAG };
        let (sin_theta, cos_theta) = theta.sin_cos();

        // Same expression order as Gymnasium so the floating-point results agree.
        let temp = (force + POLE_MASS_LENGTH * (theta_dot * theta_dot) * sin_theta) / TOTAL_MASS;
        let theta_acc = (GRAVITY * sin_theta - cos_theta * temp)
            / (HALF_POLE_LENGTH * (4.0 / 3.0 - MASS_POLE * (cos_theta * cos_theta) / TOTAL_MASS));
        let x_acc = temp - POLE_MASS_LENGTH * theta_acc * cos_theta / TOTAL_MASS;

        // Explicit Euler: positions advance with the *old* velocities.
        self.state = [
            x + TAU * x_dot,
            x_dot + TAU * x_acc,
            theta + TAU * theta_dot,
            theta_dot + TAU * theta_acc,
        ];
        self.elapsed_steps = self.elapsed_steps.saturating_add(1);

        let [x, _, theta, _] = self.state;
        let out_of_bounds = !(-X_THRESHOLD..=X_THRESHOLD).contains(&x)
            || !(-THETA_THRESHOLD_RADIANS..=THETA_THRESHOLD_RADIANS).contains(&theta);
        // The step that terminates still earns 1.0; only steps after it earn nothing.
        let reward = if self.terminated { 0.0 } else { 1.0 };
        self.terminated |= out_of_bounds;

        Step {
            obs: self.state,
            reward,
            terminated: self.terminated,
            truncated: self.elapsed_steps >= MAX_EPISODE_STEPS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_state_eq(actual: Observation, expected: Observation) {
        for (a, e) in actual.iter().zip(expected.iter()) {
            assert!(
                (a - e).abs() < 1e-12,
                "state {actual:?} != expected {expected:?}"
            );
        }
    }

    /// Expected values were printed by Gymnasium 1.4.0's `CartPoleEnv.step` after setting
    /// `env.unwrapped.state` to the start state.
    #[test]
    fn one_step_matches_gymnasium() {
        let cases: [(Observation, usize, Observation); 6] = [
            (
                [0.0; 4],
                0,
                [0.0, -0.1951219512195122, 0.0, 0.2926829268292683],
            ),
            (
                [0.0; 4],
                1,
                [0.0, 0.1951219512195122, 0.0, -0.2926829268292683],
            ),
            (
                [0.01, -0.02, 0.03, 0.04],
                0,
                [
                    0.009600000000000001,
                    -0.21553901710278936,
                    0.030799999999999998,
                    0.34199522377603914,
                ],
            ),
            (
                [0.01, -0.02, 0.03, 0.04],
                1,
                [
                    0.009600000000000001,
                    0.17467919574755525,
                    0.030799999999999998,
                    -0.2430687179600081,
                ],
            ),
            (
                [0.1, 0.5, -0.15, -0.7],
                0,
                [
                    0.11,
                    0.30724068086053025,
                    -0.16399999999999998,
                    -0.4580425512956115,
                ],
            ),
            (
                [0.1, 0.5, -0.15, -0.7],
                1,
                [
                    0.11,
                    0.6968479529836322,
                    -0.16399999999999998,
                    -1.0358911549389322,
                ],
            ),
        ];
        let mut env = CartPole::new(0);
        for (start, action, expected) in cases {
            env.reset_to(start);
            let step = env.step(action);
            assert_state_eq(step.obs, expected);
            assert_eq!(step.reward, 1.0);
            assert!(!step.terminated && !step.truncated);
        }
    }

    /// Hand derivation of the first case, independent of Gymnasium: at rest and upright,
    /// pushing right gives temp = F/M, thetaacc = -temp / (l (4/3 - m/M)), xacc = temp -
    /// m l thetaacc / M; Euler leaves positions unchanged and moves velocities by TAU * acc.
    #[test]
    fn one_step_matches_hand_derivation() {
        let temp = FORCE_MAG / 1.1;
        let theta_acc = -temp / (0.5 * (4.0 / 3.0 - 0.1 / 1.1));
        let x_acc = temp - 0.05 * theta_acc / 1.1;
        let mut env = CartPole::new(0);
        env.reset_to([0.0; 4]);
        let step = env.step(1);
        assert_state_eq(step.obs, [0.0, 0.02 * x_acc, 0.0, 0.02 * theta_acc]);
    }

    #[test]
    fn terminates_when_pole_passes_twelve_degrees() {
        let mut env = CartPole::new(0);
        // theta moves by TAU * theta_dot = 0.002 rad: from just inside to just outside.
        env.reset_to([0.0, 0.0, THETA_THRESHOLD_RADIANS - 0.001, 0.1]);
        let step = env.step(1);
        assert!(
            step.terminated,
            "theta {} should be out of bounds",
            step.obs[2]
        );
        assert_eq!(
            step.reward, 1.0,
            "the terminating step still earns its reward"
        );
        let after = env.step(1);
        assert_eq!(after.reward, 0.0, "steps after termination earn nothing");
        assert!(after.terminated);

        env.reset_to([0.0, 0.0, -(THETA_THRESHOLD_RADIANS - 0.003), -0.1]);
        assert!(
            !env.step(0).terminated,
            "0.001 rad inside the bound is not terminal"
        );
    }

    #[test]
    fn terminates_when_cart_leaves_track() {
        let mut env = CartPole::new(0);
        env.reset_to([2.39, 1.0, 0.0, 0.0]);
        assert!(env.step(1).terminated, "x = 2.41 is beyond 2.4");
        env.reset_to([-2.39, -1.0, 0.0, 0.0]);
        assert!(env.step(0).terminated, "x = -2.41 is beyond -2.4");
        env.reset_to([2.38, 0.5, 0.0, 0.0]);
        assert!(!env.step(1).terminated, "x = 2.39 is inside");
    }

    #[test]
    fn truncates_at_five_hundred_steps() {
        let mut env = CartPole::new(0);
        let mut obs = env.reset();
        let mut steps = 0u32;
        loop {
            // A simple balancing controller keeps the pole up far longer than 500 steps.
            let action = usize::from(obs[2] + 0.5 * obs[3] + 0.01 * obs[0] + 0.1 * obs[1] > 0.0);
            let step = env.step(action);
            steps += 1;
            obs = step.obs;
            assert!(!step.terminated, "controller failed at step {steps}");
            if step.truncated {
                break;
            }
            assert!(steps < MAX_EPISODE_STEPS, "no truncation by step {steps}");
        }
        assert_eq!(steps, MAX_EPISODE_STEPS);
        assert_eq!(env.elapsed_steps(), 500);
        env.reset();
        assert_eq!(env.elapsed_steps(), 0);
    }

    #[test]
    fn same_seed_gives_same_episode_and_initial_states_are_bounded() {
        let run = |seed: u64| {
            let mut env = CartPole::new(seed);
            let mut trace = vec![env.reset()];
            for i in 0..30 {
                let step = env.step(i % 2);
                trace.push(step.obs);
                if step.done() {
                    break;
                }
            }
            trace.push(env.reset());
            trace
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7)[0], run(8)[0]);
        for seed in 0..200 {
            let start = CartPole::new(seed).reset();
            assert!(start.iter().all(|v| v.abs() <= 0.05), "{start:?}");
        }
    }

    #[test]
    #[should_panic(expected = "action must be 0 or 1")]
    fn invalid_action_panics() {
        let mut env = CartPole::new(0);
        env.reset();
        env.step(2);
    }
}
