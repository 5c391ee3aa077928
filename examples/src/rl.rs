//! Evolution strategies on CartPole-v1.
//!
//! Flow of one generation: [`es::Es::ask`] returns seed-only [`es::Candidate`]s around the
//! current [`policy::Policy`]; each is evaluated with [`es::Candidate::evaluate`] (which calls
//! [`rollout::run_episodes`]) wherever the caller likes; [`es::Es::tell`] applies the update.
//! [`train::train`] wraps that into a loop with the CartPole-v1 stop rule, and
//! [`report`] writes the learning curve.

pub mod cartpole;
pub mod es;
pub mod policy;
pub mod report;
pub mod rollout;
pub mod train;

pub use cartpole::{CartPole, Step};
pub use es::{Candidate, Es, EsConfig, EsError, Sign};
pub use policy::{Architecture, Policy, act, num_params};
pub use report::{ReportError, write_csv, write_plot};
pub use rollout::{RolloutResult, run_episodes};
pub use train::{
    Evaluator, GenerationRecord, GenerationResults, GenerationWork, LocalEvaluator, StopReason,
    TrainConfig, TrainError, TrainingReport, train, train_local, train_with,
};
