//! The local provider: each worker node is a `miniray start --address GCS --block` process
//! on this machine, with its node type's resources.
//!
//! Each instance is recorded as one JSON file in the state folder (`{instance_id,
//! cluster_name, node_type, request_id, pid, start_time}`), so a restarted autoscaler finds
//! the nodes it launched. Invariants:
//! - An instance is not terminated while its pid runs with the recorded start time
//!   (`/proc/PID/stat` field 22), so a recycled pid is never taken for a node, nor signalled.
//! - Only records carrying this cluster's name are listed or touched.
//! - `launch` is idempotent per request id: records already made for it are returned.
//! - A node process runs in a process group of its own (its raylet is attached to it), so it
//!   outlives the autoscaler and one signal to the group reaches the whole node.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::NodeTypeConfig;
use crate::provider::{CloudInstance, NodeProvider, ProviderCallError, ProviderError};

use miniray_common::config::env::{
    CLOUD_INSTANCE_ID as CLOUD_INSTANCE_ID_ENV, NODE_TYPE as NODE_TYPE_ENV,
};

/// Test hook: while the file this variable names exists, `non_terminated` fails, as a cloud
/// API that errors or times out would.
pub const FAIL_LIST_HOOK_ENV: &str = "MINIRAY_TEST_PROVIDER_LIST_FAILS_WHILE";

/// Settings of the local provider.
#[derive(Debug, Clone)]
pub struct LocalProviderConfig {
    /// The `miniray` executable nodes are started with.
    pub exe: PathBuf,
    pub gcs_address: String,
    pub token: String,
    pub cluster_name: String,
    /// Where instance records live (one JSON file each).
    pub state_dir: PathBuf,
    /// Where each node's `miniray start` output goes.
    pub log_dir: PathBuf,
    pub node_types: BTreeMap<String, NodeTypeConfig>,
    /// Extra environment of every node (the TLS files): a value to set, or `None` to remove.
    pub env: Vec<(String, Option<PathBuf>)>,
    /// How long a node has between SIGTERM and SIGKILL.
    pub terminate_grace: Duration,
    /// See [`FAIL_LIST_HOOK_ENV`].
    pub fail_list_while: Option<PathBuf>,
}

/// Per node type, in `node_config`: `{"args": ["--object-store-memory", "100000000"]}`
/// adds arguments to the node's `miniray start`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalNodeConfig {
    #[serde(default)]
    args: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodeRecord {
    instance_id: String,
    cluster_name: String,
    node_type: String,
    request_id: String,
    pid: u32,
    /// `/proc/PID/stat` field 22: with the pid, names the process uniquely.
    start_time: u64,
}

pub struct LocalProvider {
    cfg: LocalProviderConfig,
    errors: Arc<Mutex<Vec<ProviderError>>>,
    /// Instances being terminated on purpose: their exit is not an error.
    stopping: Arc<Mutex<BTreeSet<String>>>,
}

impl LocalProvider {
    pub fn new(cfg: LocalProviderConfig) -> Result<Self, ProviderCallError> {
        for (name, t) in &cfg.node_types {
            node_args(name, t)?;
        }
        std::fs::create_dir_all(&cfg.state_dir).map_err(|e| {
            ProviderCallError::Invalid(format!("cannot create {}: {e}", cfg.state_dir.display()))
        })?;
        Ok(Self {
            cfg,
            errors: Arc::default(),
            stopping: Arc::default(),
        })
    }

    fn record_path(&self, instance_id: &str) -> PathBuf {
        self.cfg.state_dir.join(format!("{instance_id}.json"))
    }

    /// This cluster's records, live or not.
    fn records(&self) -> Result<Vec<NodeRecord>, ProviderCallError> {
        let entries = match std::fs::read_dir(&self.cfg.state_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(ProviderCallError::Unavailable(format!(
                    "cannot list {}: {e}",
                    self.cfg.state_dir.display()
                )));
            }
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            match serde_json::from_slice::<NodeRecord>(&bytes) {
                Ok(r) if r.cluster_name == self.cfg.cluster_name && r.pid == 0 => {
                    out.push(self.resolve_unstarted(r, &path));
                }
                Ok(r) if r.cluster_name == self.cfg.cluster_name => out.push(r),
                Ok(_) => {}
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "skipping an unreadable instance record")
                }
            }
        }
        Ok(out)
    }

    /// A record written just before its spawn by an autoscaler that died before it could
    /// add the pid: the process, if it was started, is the process-group leader whose
    /// environment names this instance. Found, the record is completed; not found, it is
    /// returned as it is (pid 0: not alive, so it is removed as terminated).
    fn resolve_unstarted(&self, mut record: NodeRecord, path: &Path) -> NodeRecord {
        let needle = format!("{CLOUD_INSTANCE_ID_ENV}={}\0", record.instance_id);
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if !is_group_leader(pid) {
                continue;
            }
            let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            let found = environ
                .windows(needle.len())
                .any(|w| w == needle.as_bytes());
            if let (true, Some(start_time)) = (found, proc_start_time(pid)) {
                record.pid = pid;
                record.start_time = start_time;
                if let Err(e) = write_atomic(path, &record) {
                    warn!(error = %e, "cannot complete an instance record");
                }
                info!(instance_id = %record.instance_id, pid, "found the process of an unfinished instance record");
                break;
            }
        }
        record
    }

    fn spawn_node(
        &self,
        node_type: &str,
        request_id: &str,
    ) -> Result<NodeRecord, ProviderCallError> {
        let t = self.cfg.node_types.get(node_type).ok_or_else(|| {
            ProviderCallError::Invalid(format!("unknown node type {node_type:?}"))
        })?;
        let args = node_args(node_type, t)?;
        let instance_id = format!(
            "local-{}-{}",
            self.cfg.cluster_name,
            &miniray_common::NodeId::random().hex()[..12]
        );
        std::fs::create_dir_all(&self.cfg.log_dir).map_err(|e| {
            ProviderCallError::Unavailable(format!(
                "cannot create {}: {e}",
                self.cfg.log_dir.display()
            ))
        })?;
        // Recorded before anything of it exists (pid 0), so an autoscaler that dies between
        // the spawn and the record still finds it (`resolve_unstarted` looks it up by its
        // instance id), and no log is left by a node nothing recorded.
        let mut record = NodeRecord {
            instance_id: instance_id.clone(),
            cluster_name: self.cfg.cluster_name.clone(),
            node_type: node_type.to_string(),
            request_id: request_id.to_string(),
            pid: 0,
            start_time: 0,
        };
        let path = self.record_path(&instance_id);
        write_atomic(&path, &record)?;
        let log_path = self.cfg.log_dir.join(format!("node-{instance_id}.log"));
        let log = std::fs::File::create(&log_path)
            .and_then(|log| Ok((log.try_clone()?, log)))
            .map_err(|e| {
                let _ = std::fs::remove_file(&path);
                ProviderCallError::Unavailable(format!("cannot open {}: {e}", log_path.display()))
            });
        let (log, log_err) = log?;
        let mut cmd = Command::new(&self.cfg.exe);
        cmd.arg("start")
            .arg("--address")
            .arg(&self.cfg.gcs_address)
            .args(&args)
            .arg("--block");
        for (k, v) in &self.cfg.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.env(CLOUD_INSTANCE_ID_ENV, &instance_id)
            .env(NODE_TYPE_ENV, node_type)
            .env(miniray_common::config::env::TOKEN, &self.cfg.token)
            .env_remove(miniray_common::config::env::ROLE)
            .env_remove(miniray_common::config::env::ADDRESS)
            .env_remove(FAIL_LIST_HOOK_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        // Its own process group: the node outlives the autoscaler, and is stopped as a whole.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(ProviderCallError::Unavailable(format!(
                    "cannot start {}: {e}",
                    self.cfg.exe.display()
                )));
            }
        };
        let pid = child.id();
        let Some(start_time) = proc_start_time(pid) else {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&path);
            return Err(ProviderCallError::Unavailable(format!(
                "node process {pid} exited at once; see {}",
                log_path.display()
            )));
        };
        record.pid = pid;
        record.start_time = start_time;
        if let Err(e) = write_atomic(&path, &record) {
            // Without its record nothing could ever find or stop it.
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        // Reap it when it exits, and report an exit nobody asked for.
        let errors = self.errors.clone();
        let stopping = self.stopping.clone();
        let node_type = node_type.to_string();
        let request_id = request_id.to_string();
        std::thread::spawn(move || {
            let status = child.wait();
            let asked = stopping.lock().is_ok_and(|s| s.contains(&instance_id));
            let failed = status.as_ref().map_or(true, |s| !s.success());
            if failed && !asked {
                let message = format!(
                    "node process exited ({}){}",
                    status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                    last_error_line(&log_path)
                        .map(|l| format!(": {l}"))
                        .unwrap_or_default()
                );
                if let Ok(mut errors) = errors.lock() {
                    errors.push(ProviderError {
                        node_type,
                        instance_id,
                        request_id,
                        message,
                    });
                }
            }
        });
        Ok(record)
    }

    async fn stop_node(&self, record: &NodeRecord) {
        if let Ok(mut s) = self.stopping.lock() {
            s.insert(record.instance_id.clone());
        }
        if is_alive(record) {
            signal_group(record.pid, libc::SIGTERM);
            // A stopped (hung, SIGSTOPped) node would only see the SIGTERM when continued.
            signal_group(record.pid, libc::SIGCONT);
            let deadline = Instant::now() + self.cfg.terminate_grace;
            while is_alive(record) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if is_alive(record) {
                warn!(instance_id = %record.instance_id, pid = record.pid, "node did not stop in time; killing it");
                signal_group(record.pid, libc::SIGKILL);
            }
        }
    }
}

#[async_trait::async_trait]
impl NodeProvider for LocalProvider {
    async fn launch(
        &self,
        node_type: &str,
        count: usize,
        request_id: &str,
    ) -> Result<Vec<String>, ProviderCallError> {
        let mut ids = Vec::new();
        for r in self
            .records()?
            .into_iter()
            .filter(|r| r.request_id == request_id)
        {
            if is_alive(&r) {
                ids.push(r.instance_id);
            } else {
                // Never started (an autoscaler died between recording and spawning it) or
                // already gone: this launch starts one afresh.
                let _ = std::fs::remove_file(self.record_path(&r.instance_id));
            }
        }
        while ids.len() < count {
            let record = self.spawn_node(node_type, request_id)?;
            info!(instance_id = %record.instance_id, node_type, request_id, pid = record.pid, "started a local node");
            ids.push(record.instance_id);
        }
        Ok(ids)
    }

    async fn terminate(
        &self,
        instance_ids: &[String],
        _request_id: &str,
    ) -> Result<(), ProviderCallError> {
        let wanted: BTreeSet<&String> = instance_ids.iter().collect();
        for record in self.records()? {
            if !wanted.contains(&record.instance_id) {
                continue;
            }
            self.stop_node(&record).await;
            let path = self.record_path(&record.instance_id);
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(ProviderCallError::Unavailable(format!(
                    "cannot remove {}: {e}",
                    path.display()
                )));
            }
            info!(instance_id = %record.instance_id, "terminated a local node");
        }
        Ok(())
    }

    async fn non_terminated(&self) -> Result<BTreeMap<String, CloudInstance>, ProviderCallError> {
        if let Some(hook) = &self.cfg.fail_list_while
            && hook.exists()
        {
            return Err(ProviderCallError::Unavailable(format!(
                "listing fails while {} exists (test hook)",
                hook.display()
            )));
        }
        let mut out = BTreeMap::new();
        for record in self.records()? {
            if is_alive(&record) {
                out.insert(
                    record.instance_id.clone(),
                    CloudInstance {
                        instance_id: record.instance_id,
                        node_type: record.node_type,
                        request_id: record.request_id,
                        pending: false,
                    },
                );
            } else {
                // Its process is gone: terminated, whoever ended it.
                let _ = std::fs::remove_file(self.record_path(&record.instance_id));
            }
        }
        Ok(out)
    }

    fn poll_errors(&self) -> Vec<ProviderError> {
        self.errors
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default()
    }
}

/// Pids of the node processes recorded in the state folders under `root` (one per cluster)
/// that still run as recorded: what `miniray stop` stops besides the daemons.
pub fn live_node_pids(root: &Path) -> Vec<u32> {
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|cluster| cluster_node_pids(&cluster.path()))
        .collect()
}

/// [`live_node_pids`] of one cluster's state folder.
pub fn cluster_node_pids(state_dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir(state_dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let record = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<NodeRecord>(&b).ok());
        if let Some(record) = record
            && is_alive(&record)
        {
            pids.push(record.pid);
        }
    }
    pids
}

/// The `miniray start` arguments of a node of this type: its resources, then its own.
fn node_args(name: &str, t: &NodeTypeConfig) -> Result<Vec<String>, ProviderCallError> {
    let extra: LocalNodeConfig = if t.node_config.is_null() {
        LocalNodeConfig::default()
    } else {
        serde_json::from_value(t.node_config.clone()).map_err(|e| {
            ProviderCallError::Invalid(format!(
                "available_node_types.{name}.node_config: {e} (the local provider takes \
                 {{args: [...]}})"
            ))
        })?
    };
    let mut others = t.resources.clone();
    let cpus = others.get("CPU");
    let _ = others.set("CPU", 0.0);
    let json = serde_json::to_string(&others.iter().collect::<BTreeMap<_, _>>())
        .map_err(|e| ProviderCallError::Invalid(e.to_string()))?;
    let mut args = vec![
        "--num-cpus".to_string(),
        cpus.to_string(),
        "--resources".to_string(),
        json,
    ];
    args.extend(extra.args);
    Ok(args)
}

fn write_atomic(path: &Path, record: &NodeRecord) -> Result<(), ProviderCallError> {
    let fail = |e: std::io::Error| {
        ProviderCallError::Unavailable(format!("cannot write {}: {e}", path.display()))
    };
    let json =
        serde_json::to_vec_pretty(record).map_err(|e| ProviderCallError::Invalid(e.to_string()))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// `/proc/PID/stat` field 22 (start time in clock ticks since boot); `None` when the process
/// is gone or a zombie.
fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the
    // last ')', at field 3.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first().is_some_and(|s| *s == "Z" || *s == "X") {
        return None;
    }
    fields.get(22 - 3)?.parse().ok()
}

fn is_alive(record: &NodeRecord) -> bool {
    record.pid != 0 && proc_start_time(record.pid) == Some(record.start_time)
}

/// Whether `pid` leads its process group (`/proc/PID/stat` field 5 is its own pid), as a
/// node's `miniray start --block` does; its raylet and workers do not.
fn is_group_leader(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().nth(5 - 3)?.parse::<u32>().ok()
        })
        == Some(pid)
}

fn signal_group(pid: u32, signal: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) on the process group of a node whose pid and start time were just
        // checked; the group is the node's own (it was started as a group leader).
        unsafe { libc::kill(-pid, signal) };
    }
}

/// The last line of a node's log that looks like an error, for the failure message.
fn last_error_line(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find(|l| l.starts_with("Error") || l.starts_with("miniray ") || l.contains("error"))
        .map(|l| l.trim().chars().take(300).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_named_by_its_pid_and_start_time() {
        let me = std::process::id();
        let t = proc_start_time(me).expect("our own start time");
        let record = NodeRecord {
            instance_id: "i".into(),
            cluster_name: "c".into(),
            node_type: "cpu".into(),
            request_id: "r".into(),
            pid: me,
            start_time: t,
        };
        assert!(is_alive(&record));
        // The same pid with another start time is another process (a recycled pid).
        assert!(!is_alive(&NodeRecord {
            start_time: t + 1,
            ..record
        }));
    }

    /// A record left at pid 0 (the autoscaler died between writing it and adding the pid)
    /// is completed from the process whose environment names the instance; the instance is
    /// then listed and can be terminated, process group and all.
    #[tokio::test]
    async fn an_unfinished_record_finds_its_process_which_terminate_stops() {
        let dir = std::env::temp_dir().join(format!(
            "miniray-local-provider-{}-{}",
            std::process::id(),
            miniray_common::NodeId::random().hex()
        ));
        let provider = LocalProvider::new(LocalProviderConfig {
            exe: "/nonexistent".into(),
            gcs_address: "127.0.0.1:1".into(),
            token: "t".into(),
            cluster_name: "c".into(),
            state_dir: dir.join("state"),
            log_dir: dir.join("logs"),
            node_types: BTreeMap::new(),
            env: Vec::new(),
            terminate_grace: Duration::from_secs(5),
            fail_list_while: None,
        })
        .unwrap();
        let id = format!("local-c-{}", miniray_common::NodeId::random().hex());
        let mut cmd = Command::new("sleep");
        cmd.arg("60").env(CLOUD_INSTANCE_ID_ENV, &id);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().unwrap();
        // The record stands for a process started a while ago: wait until its environment
        // is readable (the kernel sets it up after `spawn` returns, when under load).
        let needle = format!("{CLOUD_INSTANCE_ID_ENV}={id}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !std::fs::read(format!("/proc/{}/environ", child.id()))
            .is_ok_and(|e| e.windows(needle.len()).any(|w| w == needle.as_bytes()))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the child's environment"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let record = NodeRecord {
            instance_id: id.clone(),
            cluster_name: "c".into(),
            node_type: "cpu".into(),
            request_id: "r".into(),
            pid: 0,
            start_time: 0,
        };
        write_atomic(&provider.record_path(&id), &record).unwrap();
        let listed = provider.non_terminated().await.unwrap();
        assert_eq!(listed.keys().collect::<Vec<_>>(), [&id]);
        // Launching again with the same request id creates nothing.
        assert_eq!(
            provider.launch("cpu", 1, "r").await.unwrap(),
            vec![id.clone()]
        );
        provider
            .terminate(std::slice::from_ref(&id), "t")
            .await
            .unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "stopped by a signal: {status}");
        assert!(provider.non_terminated().await.unwrap().is_empty());
        // A record whose process never started is dropped as terminated.
        let gone = NodeRecord {
            instance_id: "local-c-never".into(),
            ..record
        };
        write_atomic(&provider.record_path("local-c-never"), &gone).unwrap();
        assert!(provider.non_terminated().await.unwrap().is_empty());
        assert!(!provider.record_path("local-c-never").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn node_arguments_carry_the_types_resources_and_its_own_args() {
        let t = NodeTypeConfig {
            resources: miniray_common::Resources::from_pairs([("CPU", 2.0), ("GPU", 1.0)]).unwrap(),
            min_workers: 0,
            max_workers: 1,
            idle_timeout: None,
            node_config: serde_json::json!({"args": ["--object-store-memory", "1000"]}),
        };
        assert_eq!(
            node_args("gpu", &t).unwrap(),
            [
                "--num-cpus",
                "2",
                "--resources",
                r#"{"GPU":1.0}"#,
                "--object-store-memory",
                "1000"
            ]
        );
        let bad = NodeTypeConfig {
            node_config: serde_json::json!({"image": "x"}),
            ..t
        };
        let e = node_args("gpu", &bad).unwrap_err().to_string();
        assert!(e.contains("available_node_types.gpu.node_config"), "{e}");
    }
}
