//! The record of daemons `miniray start` launched on this machine (for `miniray stop`).
//!
//! One JSON file per daemon under `<tmp root>/daemons/`. Invariant: a record is only acted on
//! if its pid still runs the executable it was started from, so a recycled pid is never
//! signalled.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonRecord {
    pub pid: u32,
    pub role: String,
    pub address: String,
    pub exe: PathBuf,
    pub session_dir: PathBuf,
    /// A raylet's plasma segment, removed (with its reply journals) once the raylet is
    /// gone: a raylet that was killed cannot remove them itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<PathBuf>,
}

fn dir() -> PathBuf {
    miniray_common::config::tmp_root().join("daemons")
}

pub fn record(rec: &DaemonRecord) -> anyhow::Result<()> {
    let dir = dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{}.json", rec.pid));
    std::fs::write(&path, serde_json::to_vec_pretty(rec)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Live daemons, with the path of their record; stale records are removed.
pub fn list() -> Vec<(DaemonRecord, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let rec = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<DaemonRecord>(&b).ok());
        match rec {
            Some(rec) if is_running(&rec) => out.push((rec, path)),
            Some(rec) => {
                remove_segment(&rec);
                let _ = std::fs::remove_file(&path);
            }
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    out
}

fn is_running(rec: &DaemonRecord) -> bool {
    let exe = std::fs::read_link(format!("/proc/{}/exe", rec.pid));
    match exe {
        Ok(exe) => same_file(&exe, &rec.exe),
        Err(_) => false,
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    let strip = |p: &Path| {
        p.to_string_lossy()
            .trim_end_matches(" (deleted)")
            .to_string()
    };
    strip(a) == strip(b)
}

/// `miniray <subcommand>` as a daemon of a head (the autoscaler, the dashboard): the
/// cluster token in its environment and nothing of a driver's, no stdin or stdout, stderr
/// to `log`, the TLS files, and either tied to its parent (`attached`: `--exit-with-parent`)
/// or in a process group of its own, so it outlives `start`.
pub fn head_daemon_command(
    exe: &Path,
    subcommand: &str,
    token: &str,
    log: std::fs::File,
    tls: Option<&miniray_common::tls::TlsFiles>,
    attached: bool,
) -> std::process::Command {
    use miniray_common::config::env;
    use std::process::Stdio;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(subcommand)
        .env(env::TOKEN, token)
        .env_remove(env::ROLE)
        .env_remove(env::ADDRESS)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    for (k, v) in miniray_common::tls::TlsFiles::env(tls) {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    if attached {
        cmd.arg("--exit-with-parent");
    } else {
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    }
    cmd
}

/// Removes what shared memory a raylet that is no longer running left behind: its segment
/// and its workers' reply journals. Nothing else has their names (they hold the session
/// folder's name and the node id), so nothing of a live node is touched.
pub fn remove_segment(rec: &DaemonRecord) {
    let Some(segment) = &rec.segment else {
        return;
    };
    let _ = std::fs::remove_file(segment);
    let (Some(dir), Some(name)) = (segment.parent(), segment.file_name()) else {
        return;
    };
    let journals = format!("{}-journal-", name.to_string_lossy());
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&journals) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Removes the record of a daemon that was stopped, and the shared memory it left if it
/// was a raylet that could not remove it itself.
pub fn remove(pid: u32) {
    let path = dir().join(format!("{pid}.json"));
    if let Some(rec) = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<DaemonRecord>(&b).ok())
    {
        remove_segment(&rec);
    }
    let _ = std::fs::remove_file(path);
}
