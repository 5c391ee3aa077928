//! Notices drivers that died without saying so (killed, crashed, Ctrl-C on a shared
//! cluster) and marks their jobs finished, which makes every raylet reclaim the job's leases
//! and workers.
//!
//! Invariant: a job is only ended after `FAILURES_TO_END` consecutive probes found nothing
//! listening at its driver's address; a driver that is merely slow (its server answers
//! anything at all, even an error) counts as alive.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use miniray_common::JobId;
use miniray_common::{auth, probe};
use miniray_proto::core_worker_client::CoreWorkerClient;
use tokio::sync::watch;

use crate::service::{GcsState, stopped};

/// How often running jobs' drivers are probed.
const PROBE_PERIOD: Duration = Duration::from_secs(2);
/// Bound on one probe (connect and call).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Consecutive failed probes after which a job's driver counts as gone.
const FAILURES_TO_END: u32 = 3;

/// Probes drivers until the server stops.
pub(crate) async fn run(state: Arc<GcsState>, token: String, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(PROBE_PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures: HashMap<JobId, u32> = HashMap::new();
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => return,
            _ = ticker.tick() => {}
        }
        let running = state.running_jobs().await;
        failures.retain(|id, _| running.iter().any(|(r, _)| r == id));
        for (id, address) in running {
            if worker_answers(&address, &token).await {
                failures.remove(&id);
                continue;
            }
            let count = failures.entry(id).or_default();
            *count += 1;
            if *count < FAILURES_TO_END {
                continue;
            }
            tracing::warn!(job_id = %id, driver = %address, "driver unreachable; ending its job");
            match state.finish_job(id, "its driver is unreachable").await {
                Ok(_) => {
                    failures.remove(&id);
                }
                Err(status) => {
                    tracing::warn!(job_id = %id, error = %status.message(), "cannot end the job; will retry")
                }
            }
        }
    }
}

/// Whether anything answers at a core-worker address (a driver's, or an actor's worker's),
/// over a fresh connection.
pub(crate) async fn worker_answers(address: &str, token: &str) -> bool {
    let call = async {
        let channel = auth::connect(address, token).await.ok()?;
        Some(probe::core_worker_answers(CoreWorkerClient::new(channel), PROBE_TIMEOUT).await)
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, call).await,
        Ok(Some(true))
    )
}
