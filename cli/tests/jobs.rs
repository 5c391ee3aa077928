//! Jobs end to end: `miniray start --head` (with its dashboard), `miniray job submit`
//! uploading a driver and streaming its output, `list`/`status`/`logs`/`stop`/`delete`, bad
//! input, and job records and logs surviving a head restart on Redis.
//!
//! The driver is this very executable (`harness = false`): `driver …` runs a scenario, and
//! with `MINIRAY_ROLE` set it is the driver's worker.

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::free_port;
use support::k8s::poll;
use support::run::Run;

const MINIRAY: &str = env!("CARGO_BIN_EXE_miniray");
/// How long a job may take to reach a state on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------
// The driver side.

#[miniray::remote]
fn square(x: u64) -> u64 {
    x * x
}

#[miniray::remote]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn out(line: impl std::fmt::Display) {
    println!("{line}");
    let _ = std::io::stdout().flush();
}

/// `tasks N`: N tasks, prints their sum. `fail CODE`: exits with CODE. `hold`: prints its
/// pid, then waits on a task of 10 minutes.
fn driver(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("fail") => {
            let code = args.get(1).and_then(|c| c.parse().ok()).unwrap_or(1);
            out(format_args!("failing with {code}"));
            eprintln!("an error line");
            std::process::exit(code);
        }
        Some("tasks") => {
            let n: u64 = args.get(1).and_then(|c| c.parse().ok()).unwrap_or(1);
            miniray::init().map_err(|e| format!("init: {e}"))?;
            let refs: Vec<_> = (0..n)
                .map(square::remote)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("submit: {e}"))?;
            let sum: u64 = miniray::get_all(&refs)
                .map_err(|e| format!("get: {e}"))?
                .iter()
                .sum();
            out(format_args!("sum={sum}"));
            out(format_args!(
                "submission={}",
                std::env::var("MINIRAY_SUBMISSION_ID").unwrap_or_default()
            ));
            miniray::shutdown();
            Ok(())
        }
        Some("hold") => {
            miniray::init().map_err(|e| format!("init: {e}"))?;
            out(format_args!("pid={}", std::process::id()));
            let r = sleep_ms::remote(600_000).map_err(|e| format!("submit: {e}"))?;
            out("holding");
            let _ = miniray::get(&r);
            miniray::shutdown();
            Ok(())
        }
        other => Err(format!("unknown scenario {other:?}")),
    }
}

// ---------------------------------------------------------------------------------------
// The tests.

/// A head under a private `MINIRAY_TMPDIR`; `miniray stop` on drop.
struct Head {
    root: PathBuf,
    port: u16,
    dashboard: String,
}

impl Head {
    fn start(name: &str, extra: &[&str]) -> Head {
        let root = std::env::temp_dir().join(format!(
            "miniray-jobs-{name}-{}-{}",
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

    /// `miniray start --head` on this head's port; remembers the dashboard's address.
    fn start_head(&mut self, extra: &[&str]) {
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

    fn miniray(&self, args: &[&str]) -> Run {
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
    fn job(&self, subcommand: &str, args: &[&str]) -> Run {
        let mut all = vec!["job", subcommand, "--address", &self.dashboard];
        all.extend_from_slice(args);
        self.miniray(&all)
    }

    fn status_of(&self, id: &str) -> String {
        let run = self.job("status", &[id]);
        assert_eq!(run.code, Some(0), "{}", run.describe());
        run.stdout
    }

    /// SIGKILLs the head's daemons, as a crash of its machine would.
    fn kill_daemons(&self) {
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
        support::run::keep_if_failed(&self.root, &stop);
    }
}

fn this_exe() -> String {
    std::env::current_exe()
        .expect("this test's executable")
        .to_string_lossy()
        .into_owned()
}

/// A job runs on the head: its output streams back and its exit status is the command's;
/// list, status and logs agree; a second submission uploads nothing; bad input is refused.
fn a_job_runs_on_the_head_and_reports_its_output_and_status() {
    let head = Head::start("run", &[]);
    let exe = this_exe();
    let started = Instant::now();
    let run = head.job(
        "submit",
        &[
            "--submission-id",
            "sum-1",
            "--",
            &exe,
            "driver",
            "tasks",
            "100",
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    eprintln!("submit (upload, run, stream) took {:?}", started.elapsed());
    let expected = (0..100u64).map(|x| x * x).sum::<u64>();
    assert!(
        run.stdout.contains(&format!("sum={expected}")),
        "{}",
        run.describe()
    );
    assert!(
        run.stdout.contains("submission=sum-1"),
        "{}",
        run.describe()
    );
    assert!(run.stderr.contains("Uploading"), "{}", run.describe());
    assert!(run.stderr.contains("SUCCEEDED"), "{}", run.describe());

    let list = head.job("list", &[]);
    assert_eq!(list.code, Some(0), "{}", list.describe());
    assert!(
        list.stdout
            .lines()
            .any(|l| l.starts_with("sum-1") && l.contains("SUCCEEDED")),
        "{}",
        list.describe()
    );
    assert!(head.status_of("sum-1").starts_with("SUCCEEDED"));
    let logs = head.job("logs", &["sum-1"]);
    assert!(
        logs.stdout.contains(&format!("sum={expected}")),
        "{}",
        logs.describe()
    );

    // The same executable again: not uploaded again. A failing driver: its status is ours.
    let run = head.job("submit", &["--", &exe, "driver", "fail", "3"]);
    assert_eq!(run.code, Some(3), "{}", run.describe());
    assert!(!run.stderr.contains("Uploading"), "{}", run.describe());
    assert!(run.stdout.contains("failing with 3"), "{}", run.describe());
    assert!(
        run.stdout.contains("an error line"),
        "stderr is kept too: {}",
        run.describe()
    );
    assert!(run.stderr.contains("FAILED"), "{}", run.describe());

    // Bad input: each a clear error, a non-zero exit, and nothing recorded.
    let dup = head.job(
        "submit",
        &[
            "--submission-id",
            "sum-1",
            "--",
            &exe,
            "driver",
            "tasks",
            "1",
        ],
    );
    assert_ne!(dup.code, Some(0));
    assert!(dup.stderr.contains("already exists"), "{}", dup.describe());
    let not_exe = head.root.join("not-a-program.txt");
    std::fs::write(&not_exe, "hello").expect("write a file");
    let bad = head.job("submit", &["--", &not_exe.to_string_lossy()]);
    assert_ne!(bad.code, Some(0));
    assert!(
        bad.stderr.contains("not an executable file"),
        "{}",
        bad.describe()
    );
    let bad_id = head.job(
        "submit",
        &["--submission-id", "a/b", "--", &exe, "driver", "fail", "0"],
    );
    assert_ne!(bad_id.code, Some(0));
    assert!(
        bad_id.stderr.contains("submission id"),
        "{}",
        bad_id.describe()
    );
    let unknown = head.job("status", &["no-such-job"]);
    assert_ne!(unknown.code, Some(0));
    assert!(unknown.stderr.contains("no job"), "{}", unknown.describe());
    let jobs = head.job("list", &[]).stdout;
    assert_eq!(jobs.lines().count(), 3, "header and two jobs:\n{jobs}");

    // A wrong token is refused.
    let mut wrong = Command::new(MINIRAY);
    wrong
        .args([
            "job",
            "list",
            "--address",
            &head.dashboard,
            "--token",
            "wrong",
        ])
        .env("MINIRAY_TMPDIR", &head.root)
        .env_remove("RUST_BACKTRACE");
    let wrong = wrong.output().expect("run miniray");
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("401"));

    // A finished job can be deleted.
    let deleted = head.job("delete", &["sum-1"]);
    assert_eq!(deleted.code, Some(0), "{}", deleted.describe());
    assert_ne!(head.job("status", &["sum-1"]).code, Some(0));
}

/// `job stop` ends a running job STOPPED, and its task's CPU is free again.
fn a_stopped_job_ends_stopped_and_frees_its_resources() {
    let head = Head::start("stop", &[]);
    let exe = this_exe();
    let run = head.job(
        "submit",
        &[
            "--submission-id",
            "long",
            "--no-wait",
            "--",
            &exe,
            "driver",
            "hold",
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_eq!(run.stdout.trim(), "long");
    poll("the job's task to run", DEADLINE, || {
        let logs = head.job("logs", &["long"]).stdout;
        if logs.contains("holding") {
            Ok(())
        } else {
            Err(logs)
        }
    });
    let delete = head.job("delete", &["long"]);
    assert_ne!(delete.code, Some(0), "a running job is not deleted");
    let stop = head.job("stop", &["long"]);
    assert_eq!(stop.code, Some(0), "{}", stop.describe());
    poll("the job to be STOPPED", DEADLINE, || {
        let status = head.status_of("long");
        if status.starts_with("STOPPED") {
            Ok(())
        } else {
            Err(status)
        }
    });
    // Its task's worker is gone with it: both CPUs are free again.
    poll("the task's CPU to be free", DEADLINE, || {
        let status = head.miniray(&["status", "--format", "json"]);
        let json: serde_json::Value = serde_json::from_str(&status.stdout)
            .map_err(|e| format!("{e}: {}", status.describe()))?;
        let available = json["available"]["CPU"].as_f64().unwrap_or(0.0);
        if available == 2.0 {
            Ok(())
        } else {
            Err(format!("{available} CPUs free"))
        }
    });
    let again = head.job("stop", &["long"]);
    assert!(
        again.stdout.contains("already ended"),
        "{}",
        again.describe()
    );
}

/// With Redis, a restarted head still lists past jobs with their logs, and the job that was
/// running when the head died is FAILED with that reason.
fn jobs_survive_a_head_restart_on_redis() {
    let redis = miniray_gcs::testing::RedisServer::start().expect("redis-server");
    let url = redis.url();
    let mut head = Head::start("redis", &["--redis-address", &url]);
    let exe = this_exe();
    let done = head.job(
        "submit",
        &[
            "--submission-id",
            "before",
            "--",
            &exe,
            "driver",
            "tasks",
            "10",
        ],
    );
    assert_eq!(done.code, Some(0), "{}", done.describe());
    let run = head.job(
        "submit",
        &[
            "--submission-id",
            "cut",
            "--no-wait",
            "--",
            &exe,
            "driver",
            "hold",
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let driver_pid: i32 = poll("the held job to run", DEADLINE, || {
        let logs = head.job("logs", &["cut"]).stdout;
        logs.lines()
            .find_map(|l| l.strip_prefix("pid="))
            .and_then(|p| p.trim().parse().ok())
            .filter(|_| logs.contains("holding"))
            .ok_or(logs)
    });
    head.kill_daemons();
    // The driver lost its head; it is not the restarted head's to run.
    // SAFETY: kill(2) on the driver this test's job started.
    unsafe { libc::kill(driver_pid, libc::SIGKILL) };
    head.start_head(&["--redis-address", &url]);
    let status = head.status_of("cut");
    assert!(
        status.starts_with("FAILED") && status.contains("restarted"),
        "{status}"
    );
    assert!(head.status_of("before").starts_with("SUCCEEDED"));
    let expected = (0..10u64).map(|x| x * x).sum::<u64>();
    let logs = head.job("logs", &["before"]).stdout;
    assert!(logs.contains(&format!("sum={expected}")), "{logs}");
}

const TESTS: &[support::harness::Test] = &[
    (
        "a_job_runs_on_the_head_and_reports_its_output_and_status",
        a_job_runs_on_the_head_and_reports_its_output_and_status,
    ),
    (
        "a_stopped_job_ends_stopped_and_frees_its_resources",
        a_stopped_job_ends_stopped_and_frees_its_resources,
    ),
    (
        "jobs_survive_a_head_restart_on_redis",
        jobs_survive_a_head_restart_on_redis,
    ),
];

fn main() {
    support::harness::run(TESTS, driver);
}
