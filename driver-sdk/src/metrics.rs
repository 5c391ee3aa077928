//! The program's own Prometheus metrics, as Ray's `ray.util.metrics` are: registered here,
//! they are served with the core worker's on the driver's `/metrics` endpoint
//! (`MINIRAY_METRICS_PORT`, or [`InitOptions::metrics_port`](crate::InitOptions::metrics_port)),
//! which the cluster's service discovery lists while the job runs.
//!
//! ```no_run
//! use miniray::metrics::{Counter, Family};
//!
//! fn main() -> miniray::Result<()> {
//!     miniray::init_with(miniray::InitOptions::new().metrics_port(9100))?;
//!     let episodes: Counter = Counter::default();
//!     miniray::metrics::register("rollout_episodes", "Episodes played", episodes.clone())?;
//!     let rewards: Family<Vec<(String, String)>, Counter> = Family::default();
//!     miniray::metrics::register("rollout_reward_events", "Rewards by policy", rewards.clone())?;
//!     episodes.inc();
//!     rewards.get_or_create(&vec![("policy".into(), "ppo".into())]).inc();
//!     miniray::shutdown();
//!     Ok(())
//! }
//! ```
//!
//! Metrics registered in a worker process (inside a task or an actor) are kept but not
//! served: only a driver serves an endpoint.

use std::collections::HashSet;
use std::sync::LazyLock;

use parking_lot::Mutex;

pub use miniray_common::metrics::prometheus_client;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::{Histogram, exponential_buckets, linear_buckets};
pub use prometheus_client::registry::{Metric, Unit};

use crate::error::{Error, Result};

/// Names the core worker and the daemons use; a program's metrics take their own.
const RESERVED_PREFIX: &str = "miniray_";

/// Exposed names registered so far (with their unit suffix), so that a second metric of
/// one name is refused rather than served twice (a scrape Prometheus rejects whole).
static NAMES: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Default::default);

/// Registers `metric` as `name` with `help`. Counters are exposed as `name_total`.
///
/// Errors with [`Error::InvalidArgument`], registering nothing, when `name` is not a
/// Prometheus metric name, starts with the reserved `miniray_`, or is taken.
pub fn register(name: &str, help: &str, metric: impl Metric) -> Result<()> {
    register_inner(name, help, None, metric)
}

/// [`register`] with a base unit, which Prometheus convention appends to the name
/// (`Unit::Seconds`: `name_seconds`).
pub fn register_with_unit(name: &str, help: &str, unit: Unit, metric: impl Metric) -> Result<()> {
    register_inner(name, help, Some(unit), metric)
}

fn register_inner(name: &str, help: &str, unit: Option<Unit>, metric: impl Metric) -> Result<()> {
    check_name(name)?;
    let exposed = match &unit {
        Some(unit) => format!("{name}_{}", unit.as_str()),
        None => name.to_string(),
    };
    let mut names = NAMES.lock();
    if !names.insert(exposed.clone()) {
        return Err(Error::InvalidArgument(format!(
            "a metric named {exposed:?} is registered already"
        )));
    }
    let mut registry = crate::runtime::metrics::registry().write();
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, metric),
        None => registry.register(name, help, metric),
    }
    Ok(())
}

/// A Prometheus metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`) that is not reserved.
fn check_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if !valid {
        return Err(Error::InvalidArgument(format!(
            "{name:?} is not a Prometheus metric name (letters, digits, '_' and ':', not starting with a digit)"
        )));
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(Error::InvalidArgument(format!(
            "{name:?}: names starting with {RESERVED_PREFIX:?} are miniray's own"
        )));
    }
    Ok(())
}

/// `HOST:PORT` of this driver's `/metrics` endpoint, or `None` when it serves none.
pub fn endpoint() -> Result<Option<String>> {
    crate::runtime::current()?;
    Ok(crate::runtime::metrics::endpoint())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_and_register_nothing() {
        for bad in ["", "1abc", "a-b", "with space", "miniray_tasks", "é"] {
            assert!(
                matches!(
                    register(bad, "h", Counter::<u64>::default()),
                    Err(Error::InvalidArgument(_))
                ),
                "{bad:?}"
            );
        }
        assert!(!NAMES.lock().contains("miniray_tasks"));
    }

    #[test]
    fn a_name_is_taken_once_and_the_metric_is_served() {
        let c: Counter = Counter::default();
        register("unit_test_events", "Events of a test", c.clone()).expect("registered");
        c.inc_by(3);
        let again = register("unit_test_events", "Again", Counter::<u64>::default());
        assert!(matches!(again, Err(Error::InvalidArgument(_))));
        // The same name with a unit is another exposed name.
        register_with_unit(
            "unit_test_events",
            "With a unit",
            Unit::Seconds,
            Gauge::<i64>::default(),
        )
        .expect("another exposed name");
        let (_, text) =
            miniray_common::metrics::render(&crate::runtime::metrics::registry().read(), None)
                .expect("rendered");
        assert!(text.contains("unit_test_events_total 3"), "{text}");
        assert_eq!(text.matches("# TYPE unit_test_events_total").count(), 1);
    }
}
