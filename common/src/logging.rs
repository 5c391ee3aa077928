//! Tracing setup shared by every binary and daemon.

use tracing_subscriber::EnvFilter;

/// Installs a stderr subscriber filtered by `MINIRAY_LOG` (else `default_filter`).
/// Safe to call more than once: later calls do nothing.
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_env("MINIRAY_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        .try_init();
}
