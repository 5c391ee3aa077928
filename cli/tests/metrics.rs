//! Prometheus metrics end to end: a head and a second node started by `miniray start`, the
//! head's service discovery (`/api/prometheus/sd`) listing every endpoint, each endpoint's
//! values following a driver's work, `promtool check metrics` on every endpoint, and a real
//! Prometheus server scraping every target through the head's service discovery.
//!
//! The driver is this very executable (`harness = false`): `driver …` runs a scenario, and
//! with `MINIRAY_ROLE` set it is the driver's worker.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::free_port;
use support::harness::{next_value, stdout_lines};
use support::head::Head;
use support::http::http_get;
use support::k8s::poll;

/// How long a value may take to show on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(60);
/// What the driver puts into the object store, and what its task on the second node returns.
const PUT_BYTES: usize = 20 << 20;
const PULL_BYTES: usize = 8 << 20;

// ---------------------------------------------------------------------------------------
// The driver side.

#[miniray::remote]
fn square(x: u64) -> u64 {
    x * x
}

#[miniray::remote]
fn blob(len: usize) -> Vec<u8> {
    vec![7u8; len]
}

#[miniray::actor]
pub struct Tally {
    n: u64,
}

#[miniray::actor]
impl Tally {
    pub fn new(start: u64) -> Self {
        Tally { n: start }
    }
    pub fn add(&mut self, by: u64) -> u64 {
        self.n += by;
        self.n
    }
}

fn out(line: impl std::fmt::Display) {
    println!("{line}");
    let _ = std::io::stdout().flush();
}

/// Waits for the test to send a line on stdin.
fn wait_for_go() {
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

/// `work`: serves its own metrics (`MINIRAY_METRICS_PORT`, set by the test) with one of
/// the program's; 20 tasks, each result counted in that metric; a put of PUT_BYTES held
/// until told, then dropped, and nothing more until told again; a task on the node with
/// resource `B` returning PULL_BYTES, fetched here; an actor call; then waits to be told
/// to end.
fn driver(args: &[String]) -> Result<(), String> {
    if args.first().map(String::as_str) != Some("work") {
        return Err(format!("unknown scenario {args:?}"));
    }
    miniray::init().map_err(|e| format!("init: {e}"))?;
    let squares: miniray::metrics::Counter = Default::default();
    miniray::metrics::register("work_squares", "Squares computed", squares.clone())
        .map_err(|e| format!("register: {e}"))?;
    let endpoint = miniray::metrics::endpoint()
        .map_err(|e| format!("endpoint: {e}"))?
        .ok_or("no metrics endpoint")?;
    out(format_args!("metrics={endpoint}"));
    let refs: Vec<_> = (0..20u64)
        .map(square::remote)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("submit: {e}"))?;
    let done = miniray::get_all(&refs).map_err(|e| format!("get: {e}"))?;
    squares.inc_by(done.len() as u64);
    out(format_args!("tasks={}", done.len()));

    let held = miniray::put(vec![1u8; PUT_BYTES]).map_err(|e| format!("put: {e}"))?;
    out(format_args!("put={PUT_BYTES}"));
    wait_for_go();
    drop(held);
    out("released=1");
    // Held until the test has seen the release in the store's bytes: the pull below
    // would otherwise refill them before a scrape could see the drop.
    wait_for_go();

    let remote = blob::options()
        .resource("B", 1.0)
        .remote(PULL_BYTES)
        .map_err(|e| format!("submit blob: {e}"))?;
    let bytes = miniray::get(&remote).map_err(|e| format!("get blob: {e}"))?;
    out(format_args!("pulled={}", bytes.len()));

    let tally = Tally::remote(0).map_err(|e| format!("actor: {e}"))?;
    let n = miniray::get(&tally.add(3).map_err(|e| format!("call: {e}"))?)
        .map_err(|e| format!("actor get: {e}"))?;
    out(format_args!("actor={n}"));
    wait_for_go();
    miniray::shutdown();
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The test side.

/// The value of the sample `name{labels}` (labels as written, sorted as the endpoint
/// writes them), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A cluster of a head (2 CPUs) and a second node (1 CPU and resource `B`), and its token.
struct Cluster {
    head: Head,
    token: String,
}

impl Cluster {
    fn start(name: &str) -> Cluster {
        let head = Head::start(name, &[]);
        let address = format!("127.0.0.1:{}", head.port);
        let node = head.miniray(&[
            "start",
            "--address",
            &address,
            "--num-cpus",
            "1",
            "--resources",
            r#"{"B": 1}"#,
            "--object-store-memory",
            "100000000",
        ]);
        assert_eq!(node.code, Some(0), "{}", node.describe());
        let token = head.token();
        Cluster { head, token }
    }

    fn dashboard(&self) -> String {
        self.head
            .dashboard
            .trim_start_matches("http://")
            .to_string()
    }

    /// The service discovery's target groups once it lists `want` endpoints.
    fn targets(&self, want: usize) -> Vec<(String, BTreeMap<String, String>)> {
        let dashboard = self.dashboard();
        poll(
            "the service discovery to list every endpoint",
            DEADLINE,
            || {
                let (status, body) = http_get(&dashboard, "/api/prometheus/sd", &self.token)?;
                if status != 200 {
                    return Err(format!("{status}: {body}"));
                }
                let groups: Vec<Value> = serde_json::from_str(&body).map_err(|e| e.to_string())?;
                let targets: Vec<_> = groups
                    .iter()
                    .flat_map(|g| {
                        let labels: BTreeMap<String, String> =
                            serde_json::from_value(g["labels"].clone()).unwrap_or_default();
                        g["targets"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|t| t.as_str())
                            .map(move |t| (t.to_string(), labels.clone()))
                    })
                    .collect();
                if targets.len() == want {
                    Ok(targets)
                } else {
                    Err(body)
                }
            },
        )
    }

    fn scrape(&self, address: &str) -> String {
        let (status, body) = http_get(address, "/metrics", &self.token)
            .unwrap_or_else(|e| panic!("scraping {address}: {e}"));
        assert_eq!(status, 200, "{address}: {body}");
        body
    }

    /// Waits until the endpoint's `series` satisfies `ok`; returns its value.
    fn wait_for(&self, address: &str, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
        poll(&format!("{series} at {address}"), DEADLINE, || {
            let text = self.scrape(address);
            match sample(&text, series) {
                Some(v) if ok(v) => Ok(v),
                other => Err(format!("{series} = {other:?}")),
            }
        })
    }

    /// The driver scenario `work`, run against this cluster, with its stdin to steer it.
    fn driver(&self) -> (Child, std::sync::mpsc::Receiver<String>) {
        let exe = std::env::current_exe().expect("this test's executable");
        let mut child = self
            .head
            .driver_command(&exe, &["driver", "work"])
            .env("MINIRAY_METRICS_PORT", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the driver");
        let lines = stdout_lines(&mut child);
        (child, lines)
    }
}

fn promtool_check(address: &str, text: &str) {
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; ./scripts/test.sh installs it)");
    check
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let output = check.wait_with_output().expect("promtool runs");
    assert!(
        output.status.success(),
        "promtool check metrics on {address}:\n{}{}\n--- input\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn address_of(targets: &[(String, BTreeMap<String, String>)], component: &str) -> Vec<String> {
    targets
        .iter()
        .filter(|(_, l)| l.get("component").map(String::as_str) == Some(component))
        .map(|(a, _)| a.clone())
        .collect()
}

/// Every endpoint passes promtool, and its values move with the work: tasks counted where
/// they ran, leases granted and RPCs timed on the raylet, object store bytes up with a put and down after it, an object
/// pulled from the other node, an actor alive in the GCS, a job counted by the dashboard.
fn every_endpoint_follows_the_work_and_passes_promtool() {
    let cluster = Cluster::start("metrics-follow");
    let targets = cluster.targets(4);
    let gcs = address_of(&targets, "gcs");
    let dashboard = address_of(&targets, "dashboard");
    let raylets = address_of(&targets, "raylet");
    assert_eq!(
        (gcs.len(), dashboard.len(), raylets.len()),
        (1, 1, 2),
        "{targets:?}"
    );
    assert_eq!(dashboard[0], cluster.dashboard());
    // The head's raylet is the one the driver's objects land in: the one with 2 CPUs.
    let head_raylet = raylets
        .iter()
        .find(|a| {
            sample(
                &cluster.scrape(a),
                "miniray_node_resources{resource=\"CPU\",state=\"total\"}",
            ) == Some(2.0)
        })
        .cloned()
        .expect("the head's raylet");
    let other_raylet = raylets
        .iter()
        .find(|a| **a != head_raylet)
        .cloned()
        .expect("the other raylet");
    for (address, _) in &targets {
        promtool_check(address, &cluster.scrape(address));
    }
    cluster.wait_for(&gcs[0], "miniray_nodes{state=\"ALIVE\"}", |v| v == 2.0);
    let used_before = sample(
        &cluster.scrape(&head_raylet),
        "miniray_object_store_used_bytes",
    )
    .expect("object store bytes");

    let (mut driver, lines) = cluster.driver();
    let driver_endpoint = next_value(&lines, "metrics", DEADLINE).expect("the driver's endpoint");
    assert_eq!(next_value(&lines, "tasks", DEADLINE).as_deref(), Some("20"));
    // The driver's endpoint: listed while its job runs, with the job's id; its own counts
    // and the program's metric follow the work.
    let with_driver = cluster.targets(5);
    assert_eq!(
        address_of(&with_driver, "driver"),
        vec![driver_endpoint.clone()],
        "{with_driver:?}"
    );
    let labels = &with_driver
        .iter()
        .find(|(_, l)| l.get("component").map(String::as_str) == Some("driver"))
        .expect("the driver's group")
        .1;
    assert_eq!(
        labels.get("job_id").map(String::len),
        Some(32),
        "{labels:?}"
    );
    cluster.wait_for(&driver_endpoint, "work_squares_total", |v| v == 20.0);
    cluster.wait_for(
        &driver_endpoint,
        "miniray_driver_tasks_submitted_total{kind=\"task\"}",
        |v| v == 20.0,
    );
    cluster.wait_for(
        &driver_endpoint,
        "miniray_driver_task_replies_total{outcome=\"value\"}",
        |v| v == 20.0,
    );
    promtool_check(&driver_endpoint, &cluster.scrape(&driver_endpoint));
    let (status, _) = http_get(&driver_endpoint, "/metrics", "wrong-token").expect("reachable");
    assert_eq!(status, 401, "the driver's endpoint without the token");
    cluster.wait_for(&head_raylet, "miniray_leases_granted_total", |v| v >= 1.0);
    assert!(
        cluster.scrape(&head_raylet).contains(
            "miniray_rpc_server_duration_seconds_count{method=\"Raylet/RequestWorkerLease\"}"
        ),
        "lease RPCs are timed"
    );
    assert_eq!(
        next_value(&lines, "put", DEADLINE),
        Some(PUT_BYTES.to_string())
    );
    let held = cluster.wait_for(&head_raylet, "miniray_object_store_used_bytes", |v| {
        v >= used_before + PUT_BYTES as f64
    });
    let stdin = driver.stdin.as_mut().expect("piped");
    stdin.write_all(b"go\n").expect("tell the driver");
    stdin.flush().expect("flush");
    assert_eq!(
        next_value(&lines, "released", DEADLINE).as_deref(),
        Some("1")
    );
    cluster.wait_for(&head_raylet, "miniray_object_store_used_bytes", |v| {
        v <= held - PUT_BYTES as f64
    });
    let stdin = driver.stdin.as_mut().expect("piped");
    stdin.write_all(b"go\n").expect("tell the driver");
    stdin.flush().expect("flush");
    assert_eq!(
        next_value(&lines, "pulled", DEADLINE),
        Some(PULL_BYTES.to_string())
    );
    cluster.wait_for(&head_raylet, "miniray_objects_pulled_total", |v| v >= 1.0);
    cluster.wait_for(
        &head_raylet,
        "miniray_object_transfer_bytes_total{direction=\"in\"}",
        |v| v >= PULL_BYTES as f64,
    );
    cluster.wait_for(
        &other_raylet,
        "miniray_object_transfer_bytes_total{direction=\"out\"}",
        |v| v >= PULL_BYTES as f64,
    );
    assert_eq!(next_value(&lines, "actor", DEADLINE).as_deref(), Some("3"));
    cluster.wait_for(&gcs[0], "miniray_actors{state=\"ALIVE\"}", |v| v == 1.0);
    cluster.wait_for(
        &driver_endpoint,
        "miniray_driver_tasks_submitted_total{kind=\"actor_call\"}",
        |v| v == 1.0,
    );
    let stdin = driver.stdin.as_mut().expect("piped");
    stdin.write_all(b"go\n").expect("tell the driver");
    let status = driver.wait().expect("the driver ends");
    assert!(status.success(), "driver: {status}");
    cluster.wait_for(&gcs[0], "miniray_actors{state=\"ALIVE\"}", |v| v == 0.0);
    // Its job ended: the driver's endpoint is no longer listed.
    cluster.targets(4);

    let job = cluster.head.job("submit", &["--", "/bin/true"]);
    assert_eq!(job.code, Some(0), "{}", job.describe());
    cluster.wait_for(&dashboard[0], "miniray_jobs{state=\"SUCCEEDED\"}", |v| {
        v == 1.0
    });

    // Every endpoint still passes, now that every family has series; and none answers
    // without the token.
    for (address, _) in &targets {
        promtool_check(address, &cluster.scrape(address));
        let (status, _) = http_get(address, "/metrics", "wrong-token").expect("reachable");
        assert_eq!(status, 401, "{address} without the token");
    }
}

/// A Prometheus kept running for a test; killed on drop.
struct Prometheus {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A real Prometheus, configured with nothing but the head's service discovery and the
/// token, scrapes every endpoint of the cluster as up.
fn prometheus_scrapes_every_target_through_the_heads_service_discovery() {
    let cluster = Cluster::start("metrics-prometheus");
    let targets = cluster.targets(4);
    let dir = cluster.head.root.join("prometheus");
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    // `type: Bearer` is spelled out: Prometheus 2.42 sends the service discovery's
    // credentials without a type unless told.
    let config = [
        "global:",
        "  scrape_interval: 1s",
        "  scrape_timeout: 1s",
        "scrape_configs:",
        "  - job_name: miniray",
        "    authorization: {type: Bearer, credentials: \"TOKEN\"}",
        "    http_sd_configs:",
        "      - url: http://DASHBOARD/api/prometheus/sd",
        "        refresh_interval: 1s",
        "        authorization: {type: Bearer, credentials: \"TOKEN\"}",
        "",
    ]
    .join("\n")
    .replace("TOKEN", &cluster.token)
    .replace("DASHBOARD", &cluster.dashboard());
    std::fs::write(dir.join("prometheus.yml"), &config).expect("write the config");
    let check = Command::new("promtool")
        .args(["check", "config"])
        .arg(dir.join("prometheus.yml"))
        .output()
        .expect("promtool");
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let web = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("prometheus (Debian's prometheus package; ./scripts/test.sh installs it)");
    let _prometheus = Prometheus {
        child,
        dir: dir.clone(),
    };
    let want: std::collections::BTreeSet<String> = targets.iter().map(|(a, _)| a.clone()).collect();
    poll(
        "Prometheus to scrape every target as up",
        Duration::from_secs(120),
        || {
            let (status, body) = http_get(&web, "/api/v1/targets?state=active", "")?;
            if status != 200 {
                return Err(format!("{status}: {body}"));
            }
            let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let active = v["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let up: std::collections::BTreeSet<String> = active
                .iter()
                .filter(|t| t["health"] == "up")
                .filter_map(|t| t["labels"]["instance"].as_str().map(String::from))
                .collect();
            if up == want {
                Ok(())
            } else {
                Err(format!(
                    "up {up:?}, want {want:?}; targets: {}\n--- prometheus log\n{}",
                    serde_json::to_string(&active).unwrap_or_default(),
                    std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
                ))
            }
        },
    );
    // A series of every component went through the whole pipeline.
    for series in ["miniray_nodes", "miniray_workers", "miniray_jobs"] {
        poll(&format!("Prometheus to hold {series}"), DEADLINE, || {
            let (_, body) = http_get(&web, &format!("/api/v1/query?query={series}"), "")?;
            let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            match v["data"]["result"].as_array() {
                Some(r) if !r.is_empty() => Ok(()),
                _ => Err(body),
            }
        });
    }
}

/// A driver asked to serve metrics on a port that is not one fails `init` with a clear
/// error, before it starts or joins any cluster.
fn a_bad_metrics_port_fails_init_clearly() {
    let exe = std::env::current_exe().expect("this test's executable");
    let output = Command::new(exe)
        .args(["driver", "work"])
        .env("MINIRAY_METRICS_PORT", "99999")
        .env_remove("MINIRAY_ADDRESS")
        .env(
            "MINIRAY_TMPDIR",
            std::env::temp_dir().join("miniray-bad-metrics-port"),
        )
        .output()
        .expect("run the driver");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("MINIRAY_METRICS_PORT=\"99999\" is not a port number"),
        "{stderr}"
    );
    assert!(
        !std::env::temp_dir()
            .join("miniray-bad-metrics-port")
            .exists(),
        "nothing was started"
    );
}

const TESTS: &[support::harness::Test] = &[
    (
        "a_bad_metrics_port_fails_init_clearly",
        a_bad_metrics_port_fails_init_clearly,
    ),
    (
        "every_endpoint_follows_the_work_and_passes_promtool",
        every_endpoint_follows_the_work_and_passes_promtool,
    ),
    (
        "prometheus_scrapes_every_target_through_the_heads_service_discovery",
        prometheus_scrapes_every_target_through_the_heads_service_discovery,
    ),
];

fn main() {
    support::harness::run(TESTS, driver);
}
