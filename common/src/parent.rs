//! Waiting for this process's parent to exit, so that a worker never outlives the raylet
//! that started it (and a daemon started with `exit_with_parent`, its starter).
//!
//! Invariant: the wait costs nothing while the parent lives. It waits on a pidfd of the
//! parent (readable once the parent exits), registered with the runtime's reactor: no
//! thread and no timer per process, which matters when a node hosts thousands of idle
//! actor workers. Only where pidfds are unavailable (Linux before 5.3) does it poll.

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// How often the fallback polls the parent's pid.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Resolves once the process whose pid is `parent` is no longer this process's parent
/// (it exited, and this process was reparented). `parent` is what
/// `std::os::unix::process::parent_id()` returned at start. Must run on a Tokio runtime
/// with IO enabled.
pub async fn exited(parent: u32) {
    if let Some(fd) = pidfd(parent) {
        // Opened after reading `parent`: if it exited in between, the pid may name
        // another process now, so the parent is checked again after the fd exists.
        if std::os::unix::process::parent_id() != parent {
            return;
        }
        // SAFETY: the `OwnedFd` is a valid open fd that the `AsyncFd` owns and never
        // replaces, so it names the same file description for the `AsyncFd`'s lifetime.
        if let Ok(fd) = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) } {
            // Readable once the process exits; an error means the fd cannot say, so the
            // poll below decides.
            if fd.readable().await.is_ok() {
                return;
            }
        }
    }
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    loop {
        tick.tick().await;
        if std::os::unix::process::parent_id() != parent {
            return;
        }
    }
}

/// A pidfd of `pid`, or `None` where the kernel has none.
fn pidfd(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; it touches no
    // memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the fd was just opened by this call and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_when_the_watched_process_exits_and_not_before() {
        // A child stands in for the parent: the pidfd wait is the same for any pid.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep runs");
        let fd = pidfd(child.id()).expect("pidfds are available here");
        // SAFETY: as in `exited`: the `AsyncFd` owns the fd for its lifetime.
        let fd =
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.expect("registered");
        let early = tokio::time::timeout(Duration::from_millis(300), fd.readable()).await;
        assert!(early.is_err(), "readable while the process lives");
        child.kill().expect("sleep killed");
        let _ready = tokio::time::timeout(Duration::from_secs(10), fd.readable())
            .await
            .expect("readable once the process exited")
            .expect("readiness");
        let _ = child.wait();
    }

    #[tokio::test]
    async fn a_pid_that_is_not_our_parent_counts_as_exited() {
        // This process is certainly not its own parent.
        tokio::time::timeout(Duration::from_secs(5), exited(std::process::id()))
            .await
            .expect("resolves at once");
    }
}
