//! A simulated Kubernetes cluster for end-to-end tests: `miniray k8s simulate` as a child
//! process, `miniray up`/`down` and `kubectl` against it, and the checks that nothing is left
//! behind.
//!
//! Each [`SimCluster`] has a folder of its own under `/var/tmp` (not `/tmp`: each Pod has a
//! `/tmp` of its own): the kubeconfig, the cluster config, the simulator's state (Pod
//! directories and logs) and the `MINIRAY_TMPDIR` where `up` records the head's address and
//! token, as `miniray start --head` does. Dropping it stops the simulator (SIGTERM, which
//! stops every Pod process and removes the Pod network; SIGKILL after a deadline) and removes
//! the folder, also when the test panicked.
//!
//! Only `std` and `libc`: the examples crate's tests include this file as well.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Bound on one `miniray` or `kubectl` command (`up` waits for the head itself).
const COMMAND_DEADLINE: Duration = Duration::from_secs(240);

/// A worker or head Pod as `kubectl get pods -o jsonpath` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRow {
    pub name: String,
    pub phase: String,
    pub node_type: String,
    pub component: String,
    /// Set: the Pod is being deleted.
    pub deleting: bool,
    pub ip: String,
}

pub struct SimCluster {
    pub name: String,
    pub miniray: PathBuf,
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub tmpdir: PathBuf,
    sim: Option<Child>,
    /// The API server's port: every Pod process has `KUBERNETES_SERVICE_PORT=<port>` in its
    /// environment, which is how leftovers are found.
    port: u16,
}

impl SimCluster {
    /// Starts a simulator and writes `config_yaml` as the cluster config (`name` must be its
    /// `cluster_name`). Waits until the kubeconfig exists (the simulator serves).
    pub fn start(miniray: impl AsRef<Path>, name: &str, config_yaml: &str) -> SimCluster {
        let miniray = miniray.as_ref();
        let dir = PathBuf::from(format!(
            "/var/tmp/miniray-k8s-test-{}-{}",
            std::process::id(),
            unique()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test folder");
        let config = dir.join("cluster.yaml");
        std::fs::write(&config, config_yaml).expect("write the cluster config");
        let kubeconfig = dir.join("kubeconfig");
        let state_dir = dir.join("sim");
        let tmpdir = dir.join("miniray");
        std::fs::create_dir_all(&tmpdir).expect("MINIRAY_TMPDIR");
        let log = std::fs::File::create(dir.join("simulator.log")).expect("simulator log");
        let sim = Command::new(miniray)
            .args(["k8s", "simulate", "--kubeconfig"])
            .arg(&kubeconfig)
            .arg("--state-dir")
            .arg(&state_dir)
            .env("MINIRAY_LOG", "info,kube=warn,hyper=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start miniray k8s simulate");
        let mut cluster = SimCluster {
            name: name.to_string(),
            miniray: miniray.to_path_buf(),
            dir,
            kubeconfig,
            config,
            state_dir,
            tmpdir,
            sim: Some(sim),
            port: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cluster.kubeconfig.exists() {
            if let Some(Ok(Some(status))) = cluster.sim.as_mut().map(Child::try_wait) {
                panic!(
                    "the simulator exited ({status}) before serving:\n{}",
                    cluster.simulator_log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the simulator did not serve within 60 s:\n{}",
                cluster.simulator_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let kubeconfig = std::fs::read_to_string(&cluster.kubeconfig).expect("kubeconfig");
        cluster.port = kubeconfig
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: https://127.0.0.1:"))
            .and_then(|p| p.trim().parse().ok())
            .expect("the kubeconfig names https://127.0.0.1:PORT");
        cluster
    }

    pub fn simulator_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("simulator.log")).unwrap_or_default()
    }

    /// The pid of the simulator process.
    pub fn simulator_pid(&self) -> u32 {
        self.sim.as_ref().map(Child::id).unwrap_or(0)
    }

    /// The environment every command of this cluster runs with.
    pub fn env(&self, cmd: &mut Command) {
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("MINIRAY_TMPDIR", &self.tmpdir)
            .env_remove("MINIRAY_ADDRESS")
            .env_remove("MINIRAY_TOKEN")
            .env_remove("MINIRAY_ROLE");
    }

    /// Runs `miniray ARGS` (with a deadline); (success, transcript).
    pub fn miniray(&self, args: &[&str]) -> (bool, String) {
        let mut cmd = Command::new(&self.miniray);
        cmd.args(args);
        self.env(&mut cmd);
        run(cmd, &format!("miniray {}", args.join(" ")))
    }

    /// Runs `kubectl --kubeconfig K ARGS`; (success, transcript).
    pub fn kubectl(&self, args: &[&str]) -> (bool, String) {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        run(cmd, &format!("kubectl {}", args.join(" ")))
    }

    /// Runs `kubectl` and returns its stdout, panicking with the transcript on failure.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        let out = output(cmd, "kubectl");
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `miniray up`: returns the head's address (the last line it prints).
    pub fn up(&self) -> String {
        let config = self.config.to_string_lossy().into_owned();
        let (ok, text) = self.miniray(&["up", &config]);
        assert!(ok, "up failed:\n{text}\n{}", self.pod_logs());
        let stdout = text
            .split("--- stdout\n")
            .nth(1)
            .and_then(|s| s.split("\n--- stderr").next())
            .unwrap_or_default();
        let address = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .trim()
            .to_string();
        assert!(
            address.contains(':'),
            "up's last line is not HOST:PORT:\n{text}"
        );
        address
    }

    /// `miniray down`, which waits until everything is gone.
    pub fn down(&self) {
        let config = self.config.to_string_lossy().into_owned();
        let (ok, text) = self.miniray(&["down", &config]);
        assert!(ok, "down failed:\n{text}");
    }

    /// This cluster's Pods (`miniray.io/cluster=<name>`), through kubectl.
    pub fn pods(&self) -> Vec<PodRow> {
        let selector = format!("miniray.io/cluster={}", self.name);
        let template = concat!(
            "{range .items[*]}",
            "{.metadata.name}{\"\\t\"}{.status.phase}{\"\\t\"}",
            "{.metadata.labels.miniray\\.io/node-type}{\"\\t\"}",
            "{.metadata.labels.miniray\\.io/component}{\"\\t\"}",
            "{.metadata.deletionTimestamp}{\"\\t\"}{.status.podIP}{\"\\n\"}",
            "{end}"
        );
        let out = self.kubectl_ok(&[
            "get",
            "pods",
            "-l",
            &selector,
            "-o",
            &format!("jsonpath={template}"),
        ]);
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                let field = |i: usize| f.get(i).copied().unwrap_or_default().to_string();
                PodRow {
                    name: field(0),
                    phase: field(1),
                    node_type: field(2),
                    component: field(3),
                    deleting: !field(4).is_empty(),
                    ip: field(5),
                }
            })
            .collect()
    }

    /// Worker Pods that are not being deleted and have not ended.
    pub fn live_workers(&self) -> Vec<PodRow> {
        self.pods()
            .into_iter()
            .filter(|p| p.component == "worker" && !p.deleting)
            .filter(|p| p.phase != "Succeeded" && p.phase != "Failed")
            .collect()
    }

    /// Every container log of the simulator's Pods, for failure messages.
    pub fn pod_logs(&self) -> String {
        let mut text = String::new();
        let pods = self.state_dir.join("pods");
        for pod in std::fs::read_dir(pods).into_iter().flatten().flatten() {
            for log in std::fs::read_dir(pod.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if log.path().extension().is_some_and(|e| e == "log") {
                    let body = std::fs::read_to_string(log.path()).unwrap_or_default();
                    let tail: Vec<&str> = body.lines().rev().take(30).collect();
                    text.push_str(&format!("--- {}\n", log.path().display()));
                    for line in tail.iter().rev() {
                        text.push_str(line);
                        text.push('\n');
                    }
                }
            }
        }
        text
    }

    /// Processes started for this simulator's Pods (and their children) that still run.
    pub fn pod_processes(&self) -> Vec<u32> {
        let marker = format!("KUBERNETES_SERVICE_PORT={}", self.port);
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            if environ
                .split(|b| *b == 0)
                .any(|var| var == marker.as_bytes())
            {
                found.push(pid);
            }
        }
        found
    }

    /// Network namespaces of this simulator that still exist.
    pub fn namespaces(&self) -> Vec<String> {
        let prefix = format!("mrk-{}-", self.simulator_pid());
        let out = Command::new("ip").args(["netns", "list"]).output();
        let Ok(out) = out else { return Vec::new() };
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&prefix))
            .map(String::from)
            .collect()
    }

    /// Stops the simulator (SIGTERM; SIGKILL after 60 s) and waits for it.
    pub fn stop_simulator(&mut self) {
        let Some(mut sim) = self.sim.take() else {
            return;
        };
        signal(sim.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match sim.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = sim.kill();
                    let _ = sim.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        self.stop_simulator();
        // Whatever outlived the simulator (it was SIGKILLed): kill it.
        for pid in self.pod_processes() {
            signal(pid, libc::SIGKILL);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("test folder kept: {}", self.dir.display());
        }
    }
}

/// Polls `pred` until it returns `Ok`, or panics with its last error after `deadline`.
pub fn poll<T>(what: &str, deadline: Duration, mut pred: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match pred() {
            Ok(v) => return v,
            Err(e) if start.elapsed() > deadline => {
                panic!("{what}: not within {deadline:?}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn unique() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) on a process this test started; a stale pid only errs.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Runs `cmd` to its end, reading its output as it goes (a full pipe never stalls it);
/// killed after [`COMMAND_DEADLINE`].
fn output(mut cmd: Command, what: &str) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let result = match rx.recv_timeout(COMMAND_DEADLINE) {
        Ok(result) => result,
        Err(_) => {
            signal(pid, libc::SIGKILL);
            rx.recv()
                .unwrap_or_else(|e| panic!("{what}: lost its output: {e}"))
        }
    };
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn run(cmd: Command, what: &str) -> (bool, String) {
    let out = output(cmd, what);
    let text = format!(
        "{what}\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
