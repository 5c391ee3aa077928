//! Job executables in storage: kept while a running job uses one; after its last job ends,
//! the most recently released one is kept a while (`GcsConfig::unused_executable_ttl`; Ray
//! pins an uploaded runtime-env package for 10 minutes likewise), so a driver run again
//! unchanged finds its executable here and does not upload it again. Any other goes at
//! once, so a developer who rebuilds and reruns does not fill the GCS with old binaries:
//! at most one executable no job uses is stored at any time.
//!
//! Invariants:
//! - `AddJob` and every removal run under `GcsState::executables`, and `AddJob` checks
//!   there that the executable exists. So either the new job is in the table before a
//!   removal looks (and the executable stays), or the removal went first and `AddJob`
//!   answers NOT_FOUND: the driver uploads again and retries (`driver-sdk` `job.rs`).
//! - The kept executable (under the same lock) is one no running job uses: `AddJob` takes
//!   it back out when a new job uses it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use miniray_common::ErrorCode;
use tokio::sync::watch;
use tonic::Status;

use crate::service::{GcsState, stopped};
use crate::storage::EXECUTABLES_TABLE;

/// The unused executable kept for re-runs, and since when.
#[derive(Debug, Default)]
pub(crate) struct Kept(Option<(String, Instant)>);

impl GcsState {
    /// For `AddJob`: the guard to hold until the job is in the table, or NOT_FOUND when
    /// the executable is not (or no longer) stored. A job without an executable passes.
    pub(crate) async fn executable_for_new_job(
        &self,
        hash: &str,
    ) -> Result<tokio::sync::MutexGuard<'_, Kept>, Status> {
        let mut kept = self.executables.lock().await;
        if hash.is_empty() {
            return Ok(kept);
        }
        if !self
            .storage
            .exists(EXECUTABLES_TABLE, hash.as_bytes())
            .await
            .map_err(|e| e.to_status())?
        {
            return Err(ErrorCode::NotFound.status(format!(
                "executable {hash} is not stored; upload it (again) before adding the job"
            )));
        }
        if kept.0.as_ref().is_some_and(|(h, _)| h == hash) {
            kept.0 = None;
        }
        Ok(kept)
    }

    /// After a job using `hash` finished: unless a running job uses it, keeps it for
    /// re-runs (removing the one kept before), or removes it when nothing is kept
    /// (`unused_executable_ttl` zero).
    pub(crate) async fn release_executable(&self, hash: &str) {
        if hash.is_empty() {
            return;
        }
        let mut kept = self.executables.lock().await;
        if self.executable_in_use(hash) {
            return;
        }
        if self.unused_executable_ttl.is_zero() {
            self.remove_executable(hash, "no running job uses it").await;
            return;
        }
        if let Some((previous, _)) = kept.0.take()
            && previous != hash
        {
            self.remove_executable(&previous, "a later one is kept instead")
                .await;
        }
        tracing::debug!(hash, "executable kept for a while: no running job uses it");
        kept.0 = Some((hash.to_owned(), Instant::now()));
    }

    /// Removes the kept executable once it has been unused for `unused_executable_ttl`.
    pub(crate) async fn expire_unused_executable(&self) {
        let mut kept = self.executables.lock().await;
        let Some((hash, since)) = kept.0.take() else {
            return;
        };
        if since.elapsed() < self.unused_executable_ttl {
            kept.0 = Some((hash, since));
        } else if !self.executable_in_use(&hash) {
            self.remove_executable(&hash, "unused for its keep time")
                .await;
        }
    }

    /// Removes every stored executable no running job uses (at start: those of jobs that
    /// finished while no GCS was there to remove them). Nothing is kept for re-runs here:
    /// no driver of them has run since.
    pub(crate) async fn remove_unused_executables(&self) {
        let stored = match self.storage.keys_with_prefix(EXECUTABLES_TABLE, b"").await {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list stored executables");
                return;
            }
        };
        let _kept = self.executables.lock().await;
        for key in stored {
            match String::from_utf8(key) {
                Ok(hash) if !self.executable_in_use(&hash) => {
                    self.remove_executable(&hash, "no running job uses it")
                        .await;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(key = %hex::encode(e.as_bytes()), "stored executable with a non-utf8 name left alone")
                }
            }
        }
    }

    fn executable_in_use(&self, hash: &str) -> bool {
        self.jobs
            .lock()
            .values()
            .any(|j| !j.finished && j.executable_hash == hash)
    }

    /// Removes `hash` from storage (under `executables`). A failed removal is logged; the
    /// next GCS start sweeps it.
    async fn remove_executable(&self, hash: &str, why: &str) {
        match self
            .storage
            .delete(EXECUTABLES_TABLE, hash.as_bytes())
            .await
        {
            Ok(true) => tracing::info!(hash, why, "executable removed"),
            Ok(false) => {}
            Err(e) => tracing::warn!(hash, error = %e, "cannot remove an unused executable"),
        }
    }
}

/// Removes the kept executable when its time is up, until the server shuts down.
pub(crate) async fn expiry_loop(state: Arc<GcsState>, mut shutdown: watch::Receiver<bool>) {
    if state.unused_executable_ttl.is_zero() {
        return;
    }
    let period =
        (state.unused_executable_ttl / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => return,
            _ = ticker.tick() => state.expire_unused_executable().await,
        }
    }
}
