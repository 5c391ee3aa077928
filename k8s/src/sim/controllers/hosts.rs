//! The files that make Service names resolve: the cluster hosts file (bind-mounted on every
//! Pod's `/etc/hosts`) and, optionally, a marked block in this machine's `/etc/hosts`.
//!
//! Both are written **in place** (same inode: write over the start, then cut the length), never
//! replaced by a rename: a bind mount of a file pins its inode, so a renamed-in replacement
//! would go unseen by Pods (and `/etc/hosts` itself may be a bind mount, as in containers).
//!
//! Invariant for `/etc/hosts`: only lines between `# BEGIN miniray-k8s-sim <pid>` and the
//! matching `# END miniray-k8s-sim <pid>` are ever removed or changed; everything else keeps
//! its bytes and order. A block is removed only by the process of its pid, or by anyone once
//! that pid no longer runs.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::ControllersError;

/// One resolvable Service: its current endpoint IP and the names that resolve to it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostEntry {
    pub namespace: String,
    pub service: String,
    pub ip: String,
}

impl HostEntry {
    /// `IP <svc>.<ns>.svc.cluster.local <svc>.<ns>.svc <svc>.<ns>`.
    pub fn line(&self) -> String {
        let (svc, ns) = (&self.service, &self.namespace);
        format!(
            "{} {} {svc}.{ns}.svc {svc}.{ns}",
            self.ip,
            crate::names::service_dns(svc, ns)
        )
    }
}

/// The marker that opens this process's block (and, with another pid, other processes').
const BEGIN: &str = "# BEGIN miniray-k8s-sim ";
const END: &str = "# END miniray-k8s-sim ";

/// The whole cluster hosts file: the localhost lines a container gets, then one line per
/// entry, in the order given (callers sort, so equal inputs give equal bytes).
pub fn render_cluster_hosts(entries: &[HostEntry]) -> String {
    let mut out = String::from(
        "# Cluster names of the miniray Kubernetes simulator (rewritten by its controllers).\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    for entry in entries {
        out.push_str(&entry.line());
        out.push('\n');
    }
    out
}

/// `existing` with every well-formed block of a pid for which `alive` is false removed, the
/// block of `pid` removed, and — if `entries` is `Some` — a fresh block of `pid` holding them
/// appended. A BEGIN without its END is left alone (it is not provably ours to cut).
pub fn edit_block(
    existing: &str,
    pid: u32,
    entries: Option<&[HostEntry]>,
    alive: impl Fn(u32) -> bool,
) -> String {
    let lines: Vec<&str> = existing.split_inclusive('\n').collect();
    let mut out = String::with_capacity(existing.len());
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some(owner) = marker_pid(line, BEGIN) {
            let end = lines[i + 1..]
                .iter()
                .position(|l| marker_pid(l, END) == Some(owner))
                .map(|offset| i + 1 + offset);
            if let Some(end) = end
                && (owner == pid || !alive(owner))
            {
                i = end + 1;
                continue;
            }
        }
        out.push_str(line);
        i += 1;
    }
    if let Some(entries) = entries {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("{BEGIN}{pid}\n"));
        for entry in entries {
            out.push_str(&entry.line());
            out.push('\n');
        }
        out.push_str(&format!("{END}{pid}\n"));
    }
    out
}

/// The pid a marker line names, if `line` is exactly `marker` followed by a pid.
fn marker_pid(line: &str, marker: &str) -> Option<u32> {
    line.trim_end_matches(['\n', '\r'])
        .strip_prefix(marker)?
        .trim()
        .parse()
        .ok()
}

/// Whether a process with `pid` exists (EPERM means it exists but is not ours).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission; nothing is delivered.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Rewrites `path` in place with `content` if it differs (creating the file if missing).
/// Returns whether it wrote. The new bytes go over the old ones and then the length is cut,
/// so a reader never sees an empty file while a longer one is written.
pub fn write_in_place(path: &Path, content: &str) -> Result<bool, ControllersError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| io_error(path, source))?;
    let mut current = String::new();
    file.read_to_string(&mut current)
        .map_err(|source| io_error(path, source))?;
    if current == content {
        return Ok(false);
    }
    overwrite(&mut file, content).map_err(|source| io_error(path, source))?;
    Ok(true)
}

fn overwrite(file: &mut File, content: &str) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    file.write_all(content.as_bytes())?;
    file.set_len(content.len() as u64)?;
    file.flush()
}

/// Edits the block of `pid` in the hosts file at `path` (see [`edit_block`]) under an
/// exclusive `flock` on the file, so concurrent simulators (each its own pid) do not lose
/// each other's edits. Returns whether the file changed.
pub fn update_host_block(
    path: &Path,
    pid: u32,
    entries: Option<&[HostEntry]>,
) -> Result<bool, ControllersError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| io_error(path, source))?;
    // SAFETY: flock on an fd we own; released when `file` is closed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io_error(path, std::io::Error::last_os_error()));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|source| io_error(path, source))?;
    // Not UTF-8: refuse rather than risk mangling a file that is not ours.
    let current = String::from_utf8(bytes).map_err(|_| ControllersError::HostsNotUtf8 {
        path: path.to_path_buf(),
    })?;
    let edited = edit_block(&current, pid, entries, pid_alive);
    if edited == current {
        return Ok(false);
    }
    overwrite(&mut file, &edited).map_err(|source| io_error(path, source))?;
    Ok(true)
}

fn io_error(path: &Path, source: std::io::Error) -> ControllersError {
    ControllersError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// This process's block in a machine hosts file (normally `/etc/hosts`).
///
/// Invariant: at most one exists per process (the markers name the pid only); the block is
/// removed when this value is dropped, so a panicking owner still cleans up.
#[derive(Debug)]
pub struct HostBlock {
    path: PathBuf,
    pid: u32,
}

/// Whether a [`HostBlock`] of this process exists.
static BLOCK_HELD: Mutex<bool> = Mutex::new(false);

impl HostBlock {
    /// Claims this process's block in `path`: sweeps blocks of dead pids and writes an
    /// empty block of ours.
    pub fn claim(path: &Path) -> Result<HostBlock, ControllersError> {
        {
            let mut held = BLOCK_HELD.lock().unwrap_or_else(|e| e.into_inner());
            if *held {
                return Err(ControllersError::HostBlockHeld);
            }
            *held = true;
        }
        // From here on, Drop releases the claim (and removes whatever got written).
        let block = HostBlock {
            path: path.to_path_buf(),
            pid: std::process::id(),
        };
        block.set(&[])?;
        Ok(block)
    }

    /// Makes the block hold exactly `entries`. Returns whether the file changed.
    pub fn set(&self, entries: &[HostEntry]) -> Result<bool, ControllersError> {
        update_host_block(&self.path, self.pid, Some(entries))
    }
}

impl Drop for HostBlock {
    fn drop(&mut self) {
        match update_host_block(&self.path, self.pid, None) {
            Ok(_) => tracing::debug!(path = %self.path.display(), "removed the host block"),
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "could not remove the host block")
            }
        }
        *BLOCK_HELD.lock().unwrap_or_else(|e| e.into_inner()) = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ns: &str, svc: &str, ip: &str) -> HostEntry {
        HostEntry {
            namespace: ns.into(),
            service: svc.into(),
            ip: ip.into(),
        }
    }

    #[test]
    fn entry_lines_name_the_service_three_ways() {
        assert_eq!(
            entry("default", "demo-head", "10.214.0.2").line(),
            "10.214.0.2 demo-head.default.svc.cluster.local demo-head.default.svc demo-head.default"
        );
    }

    #[test]
    fn cluster_hosts_keep_localhost() {
        let text = render_cluster_hosts(&[entry("rl", "demo-redis", "10.0.0.9")]);
        assert!(text.contains("127.0.0.1\tlocalhost\n"));
        assert!(text.contains("::1\tlocalhost"));
        assert!(text.ends_with(
            "10.0.0.9 demo-redis.rl.svc.cluster.local demo-redis.rl.svc demo-redis.rl\n"
        ));
        assert!(!render_cluster_hosts(&[]).contains("svc"));
    }

    const BASE: &str = "127.0.0.1 localhost\n10.1.1.1 db\n";

    #[test]
    fn a_block_is_appended_and_replaced_without_touching_other_lines() {
        let one = edit_block(BASE, 42, Some(&[entry("default", "a", "10.0.0.1")]), |_| {
            true
        });
        assert_eq!(
            one,
            "127.0.0.1 localhost\n10.1.1.1 db\n# BEGIN miniray-k8s-sim 42\n\
             10.0.0.1 a.default.svc.cluster.local a.default.svc a.default\n\
             # END miniray-k8s-sim 42\n"
        );
        let two = edit_block(&one, 42, Some(&[entry("default", "a", "10.0.0.2")]), |_| {
            true
        });
        assert!(two.contains("10.0.0.2 a.default"));
        assert!(!two.contains("10.0.0.1"));
        assert_eq!(two.matches("# BEGIN").count(), 1);
        assert_eq!(edit_block(&two, 42, None, |_| true), BASE);
    }

    #[test]
    fn a_file_without_final_newline_gets_one_before_the_block() {
        let out = edit_block("127.0.0.1 localhost", 7, Some(&[]), |_| true);
        assert_eq!(
            out,
            "127.0.0.1 localhost\n# BEGIN miniray-k8s-sim 7\n# END miniray-k8s-sim 7\n"
        );
    }

    #[test]
    fn blocks_of_dead_pids_are_swept_and_live_ones_kept() {
        let text = format!(
            "{BASE}# BEGIN miniray-k8s-sim 100\n1.1.1.1 x\n# END miniray-k8s-sim 100\n\
             # BEGIN miniray-k8s-sim 200\n2.2.2.2 y\n# END miniray-k8s-sim 200\n10.9.9.9 after\n"
        );
        let out = edit_block(&text, 42, None, |pid| pid == 200);
        assert_eq!(
            out,
            format!(
                "{BASE}# BEGIN miniray-k8s-sim 200\n2.2.2.2 y\n# END miniray-k8s-sim 200\n10.9.9.9 after\n"
            )
        );
    }

    #[test]
    fn an_unterminated_or_foreign_block_is_left_alone() {
        let text = format!("{BASE}# BEGIN miniray-k8s-sim 100\n1.1.1.1 x\n# END other 100\n");
        assert_eq!(edit_block(&text, 42, None, |_| false), text);
        let text = format!("{BASE}# BEGIN miniray-k8s-sim x\n# END miniray-k8s-sim x\n");
        assert_eq!(edit_block(&text, 42, None, |_| false), text);
    }

    #[test]
    fn this_process_is_alive_and_an_exited_child_is_not() {
        assert!(pid_alive(std::process::id()));
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        child.wait().expect("wait true");
        assert!(!pid_alive(pid));
        assert!(!pid_alive(0));
    }

    #[test]
    fn a_claimed_block_sweeps_the_dead_is_unique_and_goes_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hosts");
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let dead = child.id();
        child.wait().expect("wait true");
        let stale =
            format!("# BEGIN miniray-k8s-sim {dead}\n1.1.1.1 x\n# END miniray-k8s-sim {dead}\n");
        std::fs::write(&path, format!("{BASE}{stale}")).expect("seed");

        let block = HostBlock::claim(&path).expect("claim");
        let me = std::process::id();
        let empty = format!("# BEGIN miniray-k8s-sim {me}\n# END miniray-k8s-sim {me}\n");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            format!("{BASE}{empty}")
        );
        assert!(matches!(
            HostBlock::claim(&path),
            Err(ControllersError::HostBlockHeld)
        ));
        assert!(
            block
                .set(&[entry("default", "a", "10.0.0.1")])
                .expect("set")
        );
        assert!(
            !block
                .set(&[entry("default", "a", "10.0.0.1")])
                .expect("same")
        );
        drop(block);
        assert_eq!(std::fs::read_to_string(&path).expect("read"), BASE);
        drop(HostBlock::claim(&path).expect("claimable again after drop"));
    }

    #[test]
    fn writes_in_place_keep_the_inode() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hosts");
        assert!(write_in_place(&path, "a long first version\n").expect("create"));
        let inode = std::fs::metadata(&path).expect("stat").ino();
        assert!(write_in_place(&path, "short\n").expect("rewrite"));
        assert!(!write_in_place(&path, "short\n").expect("same"));
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "short\n");
        assert_eq!(std::fs::metadata(&path).expect("stat").ino(), inode);

        std::fs::write(&path, BASE).expect("seed");
        assert!(update_host_block(&path, 42, Some(&[entry("d", "s", "1.2.3.4")])).expect("add"));
        assert!(update_host_block(&path, 42, None).expect("remove"));
        assert_eq!(std::fs::read_to_string(&path).expect("read"), BASE);
        assert_eq!(std::fs::metadata(&path).expect("stat").ino(), inode);
    }
}
