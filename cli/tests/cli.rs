//! The `miniray` command as a user runs it: `start` a head and a worker node, `status` in
//! both formats, `stop`, and the failures a user meets first (no token, nothing listening).
//!
//! Every run lives under its own `MINIRAY_TMPDIR`, so daemon records, token files and
//! sessions never mix with another cluster on this machine, and `miniray stop` only stops
//! what this test started.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::free_port;

use serde_json::Value;

const MINIRAY: &str = env!("CARGO_BIN_EXE_miniray");

/// Bound on one `miniray` invocation: `start` waits up to 60 s for a daemon to serve.
const COMMAND_DEADLINE: Duration = Duration::from_secs(120);
/// How long a freshly started cluster may take to show both nodes on a loaded machine.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(60);

/// A private miniray temp root; `miniray stop` runs on drop so that a failed assertion
/// never leaves daemons behind. The folder is kept after a failure, for its logs.
struct Sandbox {
    root: PathBuf,
}

impl Sandbox {
    fn new(name: &str) -> Sandbox {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let root = std::env::temp_dir().join(format!(
            "miniray-cli-test-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&root).expect("create the temp root");
        Sandbox { root }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(MINIRAY);
        cmd.args(args)
            .env("MINIRAY_TMPDIR", &self.root)
            .env("MINIRAY_DASHBOARD_PORT", "0")
            .env_remove("MINIRAY_ADDRESS")
            .env_remove("MINIRAY_TOKEN")
            .env_remove("MINIRAY_ROLE")
            .env_remove("MINIRAY_PLASMA_DIR")
            .env_remove("MINIRAY_TLS_CERT")
            .env_remove("MINIRAY_TLS_KEY")
            .env_remove("MINIRAY_TLS_CA")
            .env_remove("MINIRAY_CLOUD_INSTANCE_ID")
            .env_remove("MINIRAY_NODE_TYPE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs `miniray args` to completion, killing it after `COMMAND_DEADLINE`.
    fn run(&self, args: &[&str]) -> Run {
        run_to_end(self.command(args), args)
    }

    /// Daemon records `miniray start` wrote: (pid, session dir basename).
    fn recorded_daemons(&self) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.root.join("daemons")) else {
            return out;
        };
        for entry in entries.flatten() {
            let bytes = std::fs::read(entry.path()).expect("read a daemon record");
            let rec: Value = serde_json::from_slice(&bytes).expect("a daemon record is JSON");
            let pid = rec["pid"].as_u64().expect("record has a pid");
            let session = Path::new(rec["session_dir"].as_str().expect("record has a session"))
                .file_name()
                .expect("session dir has a name")
                .to_string_lossy()
                .to_string();
            out.push((u32::try_from(pid).expect("pid fits u32"), session));
        }
        out
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let stop = self.run(&["stop", "--grace-period", "5"]);
        if std::thread::panicking() {
            eprintln!(
                "miniray files kept in {}\n--- miniray stop\n{}",
                self.root.display(),
                stop.describe()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

struct Run {
    args: String,
    success: bool,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "miniray {} ({}, {:?})\n--- stdout\n{}\n--- stderr\n{}",
            self.args,
            if self.success { "ok" } else { "failed" },
            self.elapsed,
            self.stdout,
            self.stderr
        )
    }

    fn assert_success(&self) {
        assert!(self.success, "{}", self.describe());
    }
}

fn run_to_end(mut cmd: Command, args: &[&str]) -> Run {
    let start = Instant::now();
    let mut child = cmd.spawn().expect("start miniray");
    // Collect output on threads so a chatty child cannot block on a full pipe while we poll.
    let mut stdout = child.stdout.take().expect("stdout piped");
    let mut stderr = child.stderr.take().expect("stderr piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for miniray") {
            break status;
        }
        if start.elapsed() > COMMAND_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "miniray {} did not finish within {COMMAND_DEADLINE:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        args: args.join(" "),
        success: status.success(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

/// Whether `pid` still runs. A zombie counts as gone: the daemons are not our children and
/// whoever adopted them may reap them late.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn segments_of(sessions: &[String]) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| {
                    sessions
                        .iter()
                        .any(|s| n.starts_with(&format!("miniray-{s}-")))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `pred` until it returns `Some`, failing with `what` and the last state after
/// `deadline`.
fn poll<T>(what: &str, deadline: Duration, mut pred: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match pred() {
            Ok(v) => return v,
            Err(last) if start.elapsed() > deadline => {
                panic!("timed out after {deadline:?} waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn start_status_stop_a_two_node_cluster() {
    let sandbox = Sandbox::new("cluster");
    let port = free_port();
    let address = format!("127.0.0.1:{port}");

    sandbox
        .run(&[
            "start",
            "--head",
            "--port",
            &port.to_string(),
            "--num-cpus",
            "1",
            "--resources",
            r#"{"GPU": 1}"#,
            "--object-store-memory",
            "268435456",
        ])
        .assert_success();
    // The worker node finds the token the head wrote under the same temp root. Its node IP
    // is its own (all of 127/8 is this machine). It was "launched" by an autoscaler: the
    // provider's instance id and node type come through the environment.
    let join_args = [
        "start",
        "--address",
        &address,
        "--num-cpus",
        "2",
        "--node-ip-address",
        "127.0.0.2",
    ];
    let mut join = sandbox.command(&join_args);
    join.env("MINIRAY_CLOUD_INSTANCE_ID", "local-42")
        .env("MINIRAY_NODE_TYPE", "cpu");
    let joined = run_to_end(join, &join_args);
    joined.assert_success();
    assert!(
        joined.stdout.contains("node IP: 127.0.0.2")
            && joined.stdout.contains("raylet:  127.0.0.2:"),
        "{}",
        joined.describe()
    );

    let status = poll(
        "2 alive nodes with 3 CPU and 1 GPU",
        CLUSTER_DEADLINE,
        || {
            let run = sandbox.run(&["status", "--address", &address, "--format", "json"]);
            if !run.success {
                return Err(run.describe());
            }
            let v: Value = serde_json::from_str(&run.stdout)
                .map_err(|e| format!("not JSON ({e}): {}", run.describe()))?;
            let alive = v["nodes"]
                .as_array()
                .map(|n| n.iter().filter(|n| n["state"] == "ALIVE").count())
                .unwrap_or(0);
            if alive == 2 && v["total"]["CPU"] == 3.0 && v["total"]["GPU"] == 1.0 {
                Ok(v)
            } else {
                Err(run.stdout)
            }
        },
    );
    let nodes = status["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2, "{status:#}");
    assert_eq!(
        nodes.iter().filter(|n| n["is_head"] == true).count(),
        1,
        "{status:#}"
    );
    let head = nodes
        .iter()
        .find(|n| n["is_head"] == true)
        .expect("a head node");
    assert_eq!(head["total"]["GPU"], 1.0, "{status:#}");
    let worker = nodes
        .iter()
        .find(|n| n["is_head"] == false)
        .expect("a worker node");
    assert!(
        worker["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.2:")),
        "{status:#}"
    );
    assert_eq!(worker["cloud_instance_id"], "local-42", "{status:#}");
    assert_eq!(worker["node_type"], "cpu", "{status:#}");
    assert_eq!(head["cloud_instance_id"], "", "{status:#}");
    assert_eq!(head["node_type"], "", "{status:#}");
    assert_eq!(head["object_store_capacity"], 268435456, "{status:#}");
    assert_eq!(status["gcs_address"], address.as_str());

    // The table names both nodes. Without --address, status finds the one cluster whose
    // token file is under this temp root.
    let table = sandbox.run(&["status"]);
    table.assert_success();
    assert!(
        table.stdout.contains("Nodes: 2 alive, 0 dead"),
        "{}",
        table.describe()
    );
    for n in nodes {
        let id = n["node_id"].as_str().expect("node id");
        let addr = n["address"].as_str().expect("node address");
        assert!(
            table.stdout.contains(&id[..12]) && table.stdout.contains(addr),
            "node {id} at {addr} missing from the table\n{}",
            table.describe()
        );
    }
    assert!(table.stdout.contains("/3 CPU"), "{}", table.describe());
    assert!(table.stdout.contains("/1 GPU"), "{}", table.describe());

    let daemons = sandbox.recorded_daemons();
    // A GCS, a raylet and the dashboard for the head, a raylet for the worker node.
    assert_eq!(daemons.len(), 4, "{daemons:?}");
    let sessions: Vec<String> = daemons.iter().map(|(_, s)| s.clone()).collect();
    assert_eq!(
        segments_of(&sessions).len(),
        2,
        "one plasma segment per node while running"
    );

    let stop = sandbox.run(&["stop"]);
    stop.assert_success();
    assert_eq!(
        stop.stdout.matches("Stopped ").count(),
        4,
        "{}",
        stop.describe()
    );
    poll("every daemon to exit", Duration::from_secs(30), || {
        let running: Vec<u32> = daemons
            .iter()
            .map(|(pid, _)| *pid)
            .filter(|pid| alive(*pid))
            .collect();
        if running.is_empty() {
            Ok(())
        } else {
            Err(format!("still running: {running:?}"))
        }
    });
    assert!(
        segments_of(&sessions).is_empty(),
        "left in /dev/shm: {:?}",
        segments_of(&sessions)
    );
    assert!(
        !miniray_token_file_exists(&sandbox.root),
        "stop removes the token file"
    );

    let again = sandbox.run(&["stop"]);
    again.assert_success();
    assert!(
        again.stdout.contains("No miniray daemons are running."),
        "{}",
        again.describe()
    );
}

fn miniray_token_file_exists(root: &Path) -> bool {
    std::fs::read_dir(root.join("clusters"))
        .map(|d| d.flatten().next().is_some())
        .unwrap_or(false)
}

#[test]
fn joining_without_a_token_fails_clearly() {
    let sandbox = Sandbox::new("no-token");
    let address = format!("127.0.0.1:{}", free_port());
    let run = sandbox.run(&["start", "--address", &address, "--num-cpus", "1"]);
    assert!(!run.success, "{}", run.describe());
    assert!(
        run.stderr.contains("no token") && run.stderr.contains(&address),
        "{}",
        run.describe()
    );
    assert!(
        sandbox.recorded_daemons().is_empty(),
        "nothing may be started"
    );
}

#[test]
fn every_interface_without_a_token_and_a_bad_node_ip_are_refused_before_anything_starts() {
    let sandbox = Sandbox::new("addresses");
    let port = free_port().to_string();
    let refused = |args: &[&str], expected: &[&str]| {
        let run = sandbox.run(args);
        assert!(!run.success, "{}", run.describe());
        for part in expected {
            assert!(
                run.stderr.contains(part),
                "{part:?} missing\n{}",
                run.describe()
            );
        }
        assert!(
            sandbox.recorded_daemons().is_empty() && !miniray_token_file_exists(&sandbox.root),
            "nothing may be started\n{}",
            run.describe()
        );
    };
    for any in ["0.0.0.0", "::"] {
        refused(
            &["start", "--head", "--port", &port, "--host", any],
            &["every interface", "--token"],
        );
    }
    for bad in ["999.1.1.1", "0.0.0.0", "somewhere"] {
        refused(
            &["start", "--head", "--port", &port, "--node-ip-address", bad],
            &["--node-ip-address", bad],
        );
        refused(
            &[
                "start",
                "--address",
                &format!("127.0.0.1:{port}"),
                "--token",
                "t",
                "--node-ip-address",
                bad,
            ],
            &["--node-ip-address", bad],
        );
    }
}

#[test]
fn a_head_on_every_interface_with_a_token_advertises_its_node_ip() {
    let sandbox = Sandbox::new("every-interface");
    let port = free_port().to_string();
    let run = sandbox.run(&[
        "start",
        "--head",
        "--port",
        &port,
        "--host",
        "0.0.0.0",
        "--token",
        "every-interface-token",
        "--node-ip-address",
        "127.0.0.3",
        "--num-cpus",
        "1",
        "--object-store-memory",
        "67108864",
    ]);
    run.assert_success();
    for line in [
        "listening on every interface (0.0.0.0)".to_string(),
        format!("GCS address: 127.0.0.3:{port}"),
        "node IP:     127.0.0.3".to_string(),
        "raylet:      127.0.0.3:".to_string(),
    ] {
        assert!(run.stdout.contains(&line), "{line:?}\n{}", run.describe());
    }
    // Every interface: the GCS answers on another local address too.
    let status = sandbox
        .command(&["status", "--address", &format!("127.0.0.1:{port}")])
        .env("MINIRAY_TOKEN", "every-interface-token")
        .output()
        .expect("status runs");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
}

#[test]
fn joining_a_closed_port_fails_with_the_reason() {
    let sandbox = Sandbox::new("closed-join");
    let address = format!("127.0.0.1:{}", free_port());
    let args = ["start", "--address", &address, "--num-cpus", "1"];
    let mut cmd = sandbox.command(&args);
    cmd.env("MINIRAY_TOKEN", "some-token");
    let run = run_to_end(cmd, &args);
    assert!(!run.success, "{}", run.describe());
    // The raylet's own reason, not only the path of its log.
    assert!(
        run.stderr.contains("cannot connect") && run.stderr.contains(&address),
        "{}",
        run.describe()
    );
    assert!(
        sandbox.recorded_daemons().is_empty(),
        "a raylet that did not start is not recorded"
    );
}

#[test]
fn a_head_on_a_port_in_use_fails_with_the_reason() {
    let sandbox = Sandbox::new("port-in-use");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let port = taken.local_addr().expect("its address").port().to_string();
    let run = sandbox.run(&["start", "--head", "--port", &port, "--num-cpus", "1"]);
    assert!(!run.success, "{}", run.describe());
    assert!(
        run.stderr.contains("miniray gcs:") && run.stderr.contains(&port),
        "{}",
        run.describe()
    );
    assert!(
        sandbox.recorded_daemons().is_empty(),
        "a gcs that did not start is not recorded"
    );
}

#[test]
fn status_of_a_closed_port_fails_in_bounded_time() {
    let sandbox = Sandbox::new("closed");
    let address = format!("127.0.0.1:{}", free_port());
    // Without a token it cannot even try.
    let run = sandbox.run(&["status", "--address", &address]);
    assert!(!run.success, "{}", run.describe());
    assert!(run.stderr.contains("no token"), "{}", run.describe());
    // With one, it tries, and gives up with the address in the message.
    let mut cmd = sandbox.command(&["status", "--address", &address]);
    cmd.env("MINIRAY_TOKEN", "some-token");
    let run = run_to_end(cmd, &["status", "--address", &address]);
    assert!(!run.success, "{}", run.describe());
    assert!(run.stderr.contains(&address), "{}", run.describe());
    assert!(
        run.elapsed < Duration::from_secs(20),
        "took {:?}",
        run.elapsed
    );
}

#[test]
fn an_object_store_larger_than_the_plasma_directory_is_refused_and_the_default_fits() {
    // Docker's default /dev/shm: 64 MiB.
    let tmpfs = miniray_plasma::testing::Tmpfs::mount(64 << 20).expect("mount a tmpfs (root)");
    let dir = tmpfs.path().to_string_lossy().to_string();
    let sandbox = Sandbox::new("shm-limit");
    let port = free_port();
    let run = sandbox.run(&[
        "start",
        "--head",
        "--port",
        &port.to_string(),
        "--num-cpus",
        "1",
        "--plasma-directory",
        &dir,
        "--object-store-memory",
        "1073741824",
    ]);
    assert!(!run.success, "{}", run.describe());
    let expected = format!(
        "--object-store-memory 1073741824 bytes does not fit in {dir}: 67108864 bytes free"
    );
    assert!(run.stderr.contains(&expected), "{}", run.describe());
    assert!(
        sandbox.recorded_daemons().is_empty(),
        "nothing may be started"
    );

    // Without --object-store-memory the store is sized to what the folder holds.
    sandbox
        .run(&[
            "start",
            "--head",
            "--port",
            &port.to_string(),
            "--num-cpus",
            "1",
            "--plasma-directory",
            &dir,
        ])
        .assert_success();
    let address = format!("127.0.0.1:{port}");
    let capacity = poll("the head node in status", CLUSTER_DEADLINE, || {
        let run = sandbox.run(&["status", "--address", &address, "--format", "json"]);
        let v: Value = serde_json::from_str(&run.stdout).map_err(|_| run.describe())?;
        v["nodes"]
            .as_array()
            .and_then(|n| n.first())
            .and_then(|n| n["object_store_capacity"].as_u64())
            .ok_or_else(|| run.stdout.clone())
    });
    assert!(
        capacity > 0 && capacity <= 64 << 20,
        "default capacity {capacity} does not fit in 64 MiB"
    );
    // The segment lives in the plasma directory.
    let segments = std::fs::read_dir(tmpfs.path())
        .expect("read the tmpfs")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("miniray-"))
        .count();
    assert!(segments >= 1, "no segment in {dir}");
    sandbox
        .run(&["stop", "--grace-period", "5"])
        .assert_success();
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn tls_init_writes_private_keys_never_overwrites_and_its_files_start_a_tls_head() {
    let sandbox = Sandbox::new("tls-init");
    let dir = sandbox.root.join("certs");
    let d = dir.to_string_lossy().to_string();
    let run = sandbox.run(&[
        "tls",
        "init",
        &d,
        "--ip",
        "127.0.0.1",
        "--dns",
        "head.local",
    ]);
    run.assert_success();
    for (name, mode) in [
        ("ca.pem", 0o644),
        ("ca.key", 0o600),
        ("node.pem", 0o644),
        ("node.key", 0o600),
    ] {
        assert_eq!(mode_of(&dir.join(name)), mode, "{name}");
    }
    let (cert, key, ca) = (
        format!("{d}/node.pem"),
        format!("{d}/node.key"),
        format!("{d}/ca.pem"),
    );
    assert!(
        run.stdout
            .contains(&format!("--tls-cert {cert} --tls-key {key} --tls-ca {ca}"))
            && run.stdout.contains(&format!("MINIRAY_TLS_CA={ca}")),
        "{}",
        run.describe()
    );

    let key_before = std::fs::read(dir.join("node.key")).expect("read node.key");
    let again = sandbox.run(&["tls", "init", &d]);
    assert!(!again.success, "{}", again.describe());
    assert!(
        again.stderr.contains("already exists") && again.stderr.contains("--force"),
        "{}",
        again.describe()
    );
    assert_eq!(
        std::fs::read(dir.join("node.key")).expect("read"),
        key_before
    );
    sandbox
        .run(&["tls", "init", &d, "--force"])
        .assert_success();
    assert_ne!(
        std::fs::read(dir.join("node.key")).expect("read"),
        key_before
    );
    assert_eq!(mode_of(&dir.join("node.key")), 0o600);

    // A head with these files: `status` gets in with them (from the environment) only.
    let port = free_port().to_string();
    let address = format!("127.0.0.1:{port}");
    let (raylet_metrics, gcs_metrics) = (free_port().to_string(), free_port().to_string());
    let head = [
        "start",
        "--head",
        "--port",
        &port,
        "--num-cpus",
        "1",
        "--metrics-port",
        &raylet_metrics,
        "--gcs-metrics-port",
        &gcs_metrics,
    ];
    let tls_flags = ["--tls-cert", &cert, "--tls-key", &key, "--tls-ca", &ca];
    let started = sandbox.run(&[&head[..], &tls_flags[..]].concat());
    started.assert_success();
    let with_tls = |args: &[&str]| {
        let mut cmd = sandbox.command(args);
        cmd.env("MINIRAY_TLS_CERT", &cert)
            .env("MINIRAY_TLS_KEY", &key)
            .env("MINIRAY_TLS_CA", &ca);
        run_to_end(cmd, args)
    };
    let status_args = ["status", "--address", &address];
    poll("status over TLS", CLUSTER_DEADLINE, || {
        let mut cmd = sandbox.command(&status_args);
        cmd.env("MINIRAY_TLS_CERT", &cert)
            .env("MINIRAY_TLS_KEY", &key)
            .env("MINIRAY_TLS_CA", &ca);
        let run = run_to_end(cmd, &status_args);
        if run.success {
            Ok(())
        } else {
            Err(run.describe())
        }
    });
    let plain = sandbox.run(&status_args);
    assert!(!plain.success, "{}", plain.describe());

    // Every `/metrics` endpoint speaks TLS with the cluster's files and still wants the token.
    let token_file = sandbox
        .root
        .join("clusters")
        .join(format!("127_0_0_1_{port}.token"));
    let token = std::fs::read_to_string(&token_file)
        .map(|t| t.trim().to_string())
        .unwrap_or_else(|e| panic!("{}: {e}", token_file.display()));
    let files = [cert.as_str(), key.as_str(), ca.as_str()];
    for (metrics_port, series) in [
        (&raylet_metrics, "miniray_workers{"),
        (&gcs_metrics, "miniray_nodes{"),
    ] {
        let endpoint = format!("127.0.0.1:{metrics_port}");
        let (status, body) = https_get(&endpoint, "/metrics", &token, files)
            .unwrap_or_else(|e| panic!("https://{endpoint}/metrics: {e}"));
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(series), "{series} in {body}");
        let (status, _) = https_get(&endpoint, "/metrics", "wrong-token", files)
            .unwrap_or_else(|e| panic!("https://{endpoint}/metrics: {e}"));
        assert_eq!(status, 401, "a wrong token is refused");
        let plain = support::http::http_get(&endpoint, "/metrics", &token);
        assert!(
            !matches!(plain, Ok((200, _))),
            "plain HTTP gets no metrics from a TLS cluster: {plain:?}"
        );
    }

    // The dashboard port speaks TLS too: a job runs through it with the files, and nothing
    // gets in without them or over plain HTTP.
    let dashboard = started
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("dashboard:"))
        .map(|url| url.trim().to_string())
        .unwrap_or_else(|| panic!("start names no dashboard:\n{}", started.describe()));
    assert!(dashboard.starts_with("https://"), "{}", started.describe());
    let submit = ["job", "submit", "--address", &dashboard, "--", "/bin/true"];
    let job = with_tls(&submit);
    job.assert_success();
    assert!(job.stderr.contains("SUCCEEDED"), "{}", job.describe());
    let list = with_tls(&["job", "list", "--address", &dashboard]);
    list.assert_success();
    let no_files = sandbox.run(&["job", "list", "--address", &dashboard]);
    assert!(!no_files.success, "{}", no_files.describe());
    assert!(
        no_files.stderr.contains("MINIRAY_TLS_CERT"),
        "{}",
        no_files.describe()
    );
    let http = dashboard.replacen("https://", "http://", 1);
    let plain_http = with_tls(&["job", "list", "--address", &http]);
    assert!(!plain_http.success, "{}", plain_http.describe());
    assert!(
        plain_http.stderr.contains("serves https://"),
        "{}",
        plain_http.describe()
    );
}

/// `GET https://{address}{path}` with the cluster's TLS files (`[cert, key, ca]`) and
/// `token`: the status and the body.
fn https_get(
    address: &str,
    path: &str,
    token: &str,
    [cert, key, ca]: [&str; 3],
) -> Result<(u16, String), String> {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;
    use miniray_common::tls::{SERVER_NAME, TlsFiles};

    let files = TlsFiles::from_parts([
        ("cert", Some(cert.into())),
        ("key", Some(key.into())),
        ("ca", Some(ca.into())),
    ])
    .map_err(|e| e.to_string())?
    .ok_or("no TLS files")?;
    let config = files
        .load()
        .and_then(|tls| tls.https_client_config())
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from(SERVER_NAME).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = HttpsConnector::new(
            http,
            config,
            true,
            std::sync::Arc::new(FixedServerNameResolver::new(name)),
        );
        let client: Client<_, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        let request = hyper::Request::get(format!("https://{address}{path}"))
            .header("authorization", format!("Bearer {token}"))
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(Duration::from_secs(20), client.request(request))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| format!("{e:?}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
}

#[test]
fn start_with_incomplete_or_unreadable_tls_files_is_refused() {
    let sandbox = Sandbox::new("tls-refused");
    let port = free_port().to_string();
    let base = ["start", "--head", "--port", &port, "--num-cpus", "1"];
    let run = sandbox.run(&[&base[..], &["--tls-cert", "/nonexistent/node.pem"]].concat());
    assert!(!run.success, "{}", run.describe());
    assert!(
        run.stderr
            .contains("missing: --tls-key (MINIRAY_TLS_KEY), --tls-ca (MINIRAY_TLS_CA)"),
        "{}",
        run.describe()
    );
    let all = [
        "--tls-cert",
        "/nonexistent/node.pem",
        "--tls-key",
        "/nonexistent/node.key",
        "--tls-ca",
        "/nonexistent/ca.pem",
    ];
    let run = sandbox.run(&[&base[..], &all[..]].concat());
    assert!(!run.success, "{}", run.describe());
    assert!(
        run.stderr.contains("/nonexistent/node.pem"),
        "{}",
        run.describe()
    );
    assert!(
        sandbox.recorded_daemons().is_empty(),
        "nothing may be started"
    );
}
