//! A head started with `miniray start --head` under a private `MINIRAY_TMPDIR`, for the
//! tests that run the real binary against one (jobs, metrics).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::free_port;
use super::k8s::poll;
pub use super::run::Run;

const MINIRAY: &str = env!("CARGO_BIN_EXE_miniray");
/// How long the head's daemons may take to die once killed.
const DEADLINE: Duration = Duration::from_secs(90);

/// A head under a private `MINIRAY_TMPDIR`; `miniray stop` on drop.
pub struct Head {
    pub root: PathBuf,
    pub port: u16,
    pub dashboard: String,
}

impl Head {
    pub fn start(name: &str, extra: &[&str]) -> Head {
        let root = std::env::temp_dir().join(format!(
            "miniray-head-{name}-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("temp root");
        let mut head = Head {
            root,
            port: free_port(),
            dashboard: String::new(),
        };
        head.start_head(extra);
        head
    }

    /// The cluster token `start --head` recorded.
    pub fn token(&self) -> String {
        let file = self
            .root
            .join("clusters")
            .join(format!("127_0_0_1_{}.token", self.port));
        std::fs::read_to_string(&file)
            .map(|t| t.trim().to_string())
            .unwrap_or_else(|e| panic!("start --head records the token in {}: {e}", file.display()))
    }

    /// `HOST:PORT` of the head's GCS.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `program ARGS` as a driver of this cluster (this test's executable, `miniray
    /// timeline`, …): its address, token and folder, task events as by default.
    pub fn driver_command(&self, program: &std::path::Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("MINIRAY_TMPDIR", &self.root)
            .env("MINIRAY_ADDRESS", self.address())
            .env("MINIRAY_TOKEN", self.token())
            .env_remove("MINIRAY_ROLE")
            .env_remove("MINIRAY_TASK_EVENTS_REPORT_INTERVAL_MS");
        cmd
    }

    /// `miniray start --head` on this head's port; remembers the dashboard's address.
    pub fn start_head(&mut self, extra: &[&str]) {
        let port = self.port.to_string();
        let mut args = vec![
            "start",
            "--head",
            "--port",
            &port,
            "--num-cpus",
            "2",
            "--object-store-memory",
            "100000000",
        ];
        args.extend_from_slice(extra);
        let run = self.miniray(&args);
        assert_eq!(run.code, Some(0), "{}", run.describe());
        self.dashboard = run
            .stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("dashboard:"))
            .map(|a| a.trim().to_string())
            .unwrap_or_else(|| panic!("start names no dashboard:\n{}", run.describe()));
    }

    pub fn miniray(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(MINIRAY);
        cmd.args(args)
            .env("MINIRAY_TMPDIR", &self.root)
            .env("MINIRAY_DASHBOARD_PORT", "0")
            .env_remove("MINIRAY_ADDRESS")
            .env_remove("MINIRAY_TOKEN")
            .env_remove("MINIRAY_ROLE")
            .env_remove("MINIRAY_DASHBOARD_ADDRESS")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null());
        Run::from(cmd.output().expect("run miniray"))
    }

    /// `miniray job SUBCOMMAND --address <dashboard> ARGS`.
    pub fn job(&self, subcommand: &str, args: &[&str]) -> Run {
        let mut all = vec!["job", subcommand, "--address", &self.dashboard];
        all.extend_from_slice(args);
        self.miniray(&all)
    }

    pub fn status_of(&self, id: &str) -> String {
        let run = self.job("status", &[id]);
        assert_eq!(run.code, Some(0), "{}", run.describe());
        run.stdout
    }

    /// SIGKILLs the head's daemons, as a crash of its machine would.
    pub fn kill_daemons(&self) {
        let mut pids = Vec::new();
        for entry in std::fs::read_dir(self.root.join("daemons"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(bytes) = std::fs::read(entry.path()) else {
                continue;
            };
            let Ok(rec) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                continue;
            };
            if let Some(pid) = rec["pid"].as_u64().and_then(|p| i32::try_from(p).ok()) {
                pids.push(pid);
            }
        }
        assert_eq!(pids.len(), 3, "gcs, raylet and dashboard");
        for pid in &pids {
            // SAFETY: kill(2) on a daemon this test started.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        poll("the head's daemons to die", DEADLINE, || {
            let alive: Vec<_> = pids
                .iter()
                .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
                .collect();
            if alive.is_empty() {
                Ok(())
            } else {
                Err(format!("{alive:?}"))
            }
        });
    }
}

impl Drop for Head {
    fn drop(&mut self) {
        let stop = self.miniray(&["stop", "--grace-period", "5"]);
        super::run::keep_if_failed(&self.root, &stop);
    }
}
