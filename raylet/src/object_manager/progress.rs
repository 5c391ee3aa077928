//! How much of an object this node is pulling has arrived, so that it can serve those
//! bytes to other nodes before the whole object is here.
//!
//! Invariant: `written[k]` only grows, and every byte of range `k` below it is in the
//! store for good (written once, never again), so a reader that saw it may view them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// Why bytes that were awaited will not come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProgressError {
    #[error("the pull failed")]
    Failed,
    #[error("no bytes arrived for {0:?}")]
    Stalled(Duration),
}

/// Arrival of one object, in ranges of `range` bytes (the pull's own ranges, each filled
/// in order from its start).
pub(crate) struct Progress {
    total: u64,
    range: u64,
    /// Per range: the object offset its written prefix reaches.
    written: Vec<AtomicU64>,
    failed: AtomicBool,
    /// Bumped on every change, so waiters recheck.
    changed: watch::Sender<u64>,
}

impl Progress {
    pub(crate) fn new(total: u64, range: u64) -> Self {
        let range = range.max(1);
        let written = (0..total.div_ceil(range))
            .map(|k| AtomicU64::new(k * range))
            .collect();
        Self {
            total,
            range,
            written,
            failed: AtomicBool::new(false),
            changed: watch::channel(0).0,
        }
    }

    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Records that the bytes of the range holding `at - 1` are written up to `at`.
    pub(crate) fn advance(&self, at: u64) {
        let Some(k) = at.checked_sub(1).map(|last| last / self.range) else {
            return;
        };
        if let Some(w) = self.written.get(k as usize) {
            w.fetch_max(at, Ordering::Release);
            self.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Marks the pull as failed: waiters give up at once.
    pub(crate) fn fail(&self) {
        self.failed.store(true, Ordering::Release);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether the pull failed. It is marked failed before its copy is aborted, so a view
    /// taken before this answers `false` is of this pull's copy.
    pub(crate) fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn is_written(&self, start: u64, end: u64) -> bool {
        if end <= start {
            return true;
        }
        self.written
            .get((start / self.range) as usize)
            .is_some_and(|w| w.load(Ordering::Acquire) >= end)
    }

    /// Waits until the bytes `[start, end)` (within one range) are written. Gives up when
    /// the pull fails, or when nothing at all arrives for `patience`.
    pub(crate) async fn wait_written(
        &self,
        start: u64,
        end: u64,
        patience: Duration,
    ) -> Result<(), ProgressError> {
        let mut changes = self.changed.subscribe();
        loop {
            if self.is_written(start, end) {
                return Ok(());
            }
            if self.has_failed() {
                return Err(ProgressError::Failed);
            }
            match tokio::time::timeout(patience, changes.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives in `self`, which outlives this borrow.
                Ok(Err(_)) => return Err(ProgressError::Failed),
                Err(_) => return Err(ProgressError::Stalled(patience)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn waiters_wake_as_their_bytes_arrive_and_give_up_on_failure_or_stall() {
        let p = Arc::new(Progress::new(250, 100));
        assert!(p.is_written(0, 0));
        assert!(!p.is_written(100, 150));
        let waiter = {
            let p = Arc::clone(&p);
            tokio::spawn(async move { p.wait_written(100, 150, Duration::from_secs(30)).await })
        };
        p.advance(20);
        p.advance(140);
        assert!(!p.is_written(100, 150));
        p.advance(150);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        // The last, short range ends at the total.
        p.advance(250);
        assert!(p.is_written(200, 250));
        assert!(!p.is_written(0, 100), "range 0 is at 20");
        assert_eq!(
            p.wait_written(20, 100, Duration::from_millis(20)).await,
            Err(ProgressError::Stalled(Duration::from_millis(20)))
        );
        let waiter = {
            let p = Arc::clone(&p);
            tokio::spawn(async move { p.wait_written(20, 100, Duration::from_secs(30)).await })
        };
        p.fail();
        assert_eq!(waiter.await.unwrap(), Err(ProgressError::Failed));
    }
}
