//! The dashboard's web pages in a real browser: headless Chromium (Debian's `chromium`,
//! installed by `./scripts/test.sh`) loads each page of a head that runs a driver, an actor
//! and a job, the test checks what the pages show through the DOM Chromium serialises, and
//! saves screenshots under the target folder.
//!
//! The driver is this very executable (`harness = false`): `driver …` runs a scenario, and
//! with `MINIRAY_ROLE` set it is the driver's worker.

mod support;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::harness::{next_value, stdout_lines};
use support::head::Head;
use support::k8s::poll;

/// How long a page may take to show a state on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// The driver side.

#[miniray::remote]
fn square(x: u64) -> u64 {
    x * x
}

#[miniray::remote]
fn refuse(x: u64) -> u64 {
    panic!("refused {x} on purpose")
}

#[miniray::actor]
pub struct Greeter {
    greeting: String,
}

#[miniray::actor]
impl Greeter {
    pub fn new(greeting: String) -> Self {
        Greeter { greeting }
    }
    pub fn greet(&self, name: String) -> String {
        format!("{} {name}", self.greeting)
    }
}

/// `work`: tasks (one fails), an actor that greets; then waits for a line on stdin.
fn driver(args: &[String]) -> Result<(), String> {
    if args.first().map(String::as_str) != Some("work") {
        return Err(format!("unknown scenario {args:?}"));
    }
    miniray::init().map_err(|e| format!("init: {e}"))?;
    let refs: Vec<_> = (0..10u64)
        .map(square::remote)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("submit: {e}"))?;
    miniray::get_all(&refs).map_err(|e| format!("get: {e}"))?;
    let failed = refuse::remote(7).map_err(|e| format!("submit: {e}"))?;
    if miniray::get(&failed).is_ok() {
        return Err("refuse succeeded".into());
    }
    let greeter = Greeter::remote("hello".to_string()).map_err(|e| format!("actor: {e}"))?;
    let said = miniray::get(
        &greeter
            .greet("ui".to_string())
            .map_err(|e| format!("call: {e}"))?,
    )
    .map_err(|e| format!("actor get: {e}"))?;
    println!("said={said}");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    miniray::shutdown();
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The test side.

/// Headless Chromium with a profile of its own (removed on drop).
struct Browser {
    profile: tempfile::TempDir,
}

impl Browser {
    fn new() -> Browser {
        Browser {
            profile: tempfile::tempdir().expect("a browser profile folder"),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless",
            // The tests run as root, where Chromium's sandbox cannot start.
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,800",
        ])
        .arg(format!("--user-data-dir={}", self.profile.path().display()))
        .stdin(Stdio::null())
        .stderr(Stdio::null());
        cmd
    }

    /// The DOM of `url` once loaded, as Chromium serialises it.
    fn dom(&self, url: &str) -> String {
        let output = self
            .command()
            .arg("--dump-dom")
            .arg(url)
            .output()
            .expect("chromium (Debian's chromium package; ./scripts/test.sh installs it)");
        assert!(
            output.status.success(),
            "chromium --dump-dom {url}: {}",
            output.status
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Loads `url` until its DOM satisfies `ok`; returns that DOM.
    fn wait_for(&self, what: &str, url: &str, ok: impl Fn(&str) -> bool) -> String {
        poll(what, DEADLINE, || {
            let dom = self.dom(url);
            if ok(&dom) { Ok(dom) } else { Err(dom) }
        })
    }

    /// Saves a screenshot of `url` at `path`.
    fn screenshot(&self, url: &str, path: &Path) {
        let status = self
            .command()
            .arg(format!("--screenshot={}", path.display()))
            .arg(url)
            .stdout(Stdio::null())
            .status()
            .expect("chromium");
        assert!(status.success(), "chromium --screenshot {url}: {status}");
        let png = std::fs::read(path).unwrap_or_default();
        assert!(
            png.len() > 1000 && png.starts_with(b"\x89PNG"),
            "{} is not a screenshot",
            path.display()
        );
    }
}

/// Where the screenshots go: the target folder, kept after the test.
fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    dir
}

/// Every page shows the run: the node with its resources, the job with its output, the
/// actor alive on its node, the task counts with the failure's error, and the node's logs.
fn every_page_shows_the_cluster_as_it_runs() {
    let head = Head::start("ui", &[]);
    let token = head.token();
    let base = head.dashboard.clone();
    let page = |path: &str| format!("{base}{path}?token={token}");
    let browser = Browser::new();

    let exe = std::env::current_exe().expect("this test's executable");
    let mut driver = head
        .driver_command(&exe, &["driver", "work"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the driver");
    let lines = stdout_lines(&mut driver);
    assert_eq!(
        next_value(&lines, "said", DEADLINE).as_deref(),
        Some("hello ui")
    );
    let job = head.job(
        "submit",
        &[
            "--submission-id",
            "ui-job",
            "--",
            "/bin/echo",
            "hello from a job",
        ],
    );
    assert_eq!(job.code, Some(0), "{}", job.describe());

    // Without the token: the sign-in page, nothing of the cluster.
    let anonymous = browser.dom(&format!("{base}/"));
    assert!(
        anonymous.contains("Sign in") && !anonymous.contains("node-table"),
        "{anonymous}"
    );

    let cluster = browser.wait_for("the cluster page to show the head", &page("/"), |d| {
        d.contains("id=\"node-table\"") && d.contains("(head)") && d.contains("ALIVE")
    });
    assert!(cluster.contains("CPUs in use"), "{cluster}");
    assert!(
        cluster.contains("This cluster does not autoscale."),
        "{cluster}"
    );
    let node_id = cluster
        .split("data-node-id=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(String::from)
        .expect("a node row with its id");

    let jobs = browser.wait_for("the jobs page to list the job", &page("/jobs"), |d| {
        d.contains("data-job-id=\"ui-job\"") && d.contains("SUCCEEDED")
    });
    assert!(jobs.contains("echo hello from a job"), "{jobs}");
    browser.wait_for(
        "the job page to show its output",
        &page("/jobs/ui-job"),
        |d| d.contains("id=\"job-output\"") && d.contains("hello from a job\n"),
    );

    browser.wait_for("the actors page to show the actor", &page("/actors"), |d| {
        d.contains("Greeter") && d.contains(">ALIVE<") && d.contains(&node_id[..12])
    });

    browser.wait_for("the tasks page to count the tasks", &page("/tasks"), |d| {
        d.contains("id=\"task-table\"")
            && d.contains("square")
            && d.contains("refuse")
            && d.contains("refused 7 on purpose")
    });

    let files = browser.wait_for(
        "the node's log files",
        &page(&format!("/nodes/{node_id}/logs")),
        |d| d.contains("raylet.err") && d.contains("gcs.err"),
    );
    assert!(files.contains("id=\"log-files\""), "{files}");
    browser.wait_for(
        "the raylet's log",
        &page(&format!("/nodes/{node_id}/logs/raylet.err")),
        |d| d.contains("id=\"log-text\"") && d.contains("raylet started"),
    );
    let escape = browser.dom(&page(&format!("/nodes/{node_id}/logs/..%2Fgcs.err")));
    assert!(!escape.contains("id=\"log-text\""), "{escape}");

    let shots = screenshot_dir();
    for (name, path) in [
        ("cluster", "/"),
        ("jobs", "/jobs"),
        ("actors", "/actors"),
        ("tasks", "/tasks"),
    ] {
        browser.screenshot(&page(path), &shots.join(format!("{name}.png")));
    }
    eprintln!("screenshots in {}", shots.display());

    let stdin = driver.stdin.as_mut().expect("piped");
    stdin.write_all(b"done\n").expect("tell the driver");
    let status = driver.wait().expect("the driver ends");
    assert!(status.success(), "driver: {status}");
}

const TESTS: &[support::harness::Test] = &[(
    "every_page_shows_the_cluster_as_it_runs",
    every_page_shows_the_cluster_as_it_runs,
)];

fn main() {
    support::harness::run(TESTS, driver);
}
