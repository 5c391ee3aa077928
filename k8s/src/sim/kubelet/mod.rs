//! The simulated kubelet: runs each Pod's containers as real processes on this host.
//!
//! [`Kubelet::start`] watches every Pod through the API (kube-runtime's watcher) and gives
//! each new one a task of its own ([`pod`]) that schedules it according to the ConfigMap
//! `kube-system/miniray-simulator` key `new-pods` (read when the Pod is first seen: `run`,
//! the default, also when the ConfigMap is missing; `unschedulable`; `fail`), binds it to
//! this node, gives it an address on the [`PodNetwork`], starts its containers and keeps
//! its status up to date until it is deleted.
//!
//! Modules, one job each: [`network`] (bridge and per-Pod namespaces), [`sources`]
//! (Secrets and ConfigMaps a Pod references), [`env`] (environment and `$(VAR)`),
//! [`volumes`] (volume directories and mounts), [`process`] (a container as a process),
//! [`probes`] (readiness), [`status`] (the Pod status), [`pod`] (one Pod's lifecycle).
//!
//! On this host, per Pod: `state_dir/pods/<namespace>_<name>/` holding `<container>.log`
//! (kept after the Pod is deleted), `tmp/` (its `/tmp`), `volumes/<volume>/` and
//! `serviceaccount/` (removed with the Pod). Mount points a volumeMount needs are created on
//! this host if missing and removed (when empty) at shutdown. `state_dir/bin/miniray` is a
//! copy of `miniray_exe` when that lies under `/tmp` (a container's `/tmp` is its own).
//!
//! Simplifications, documented: `restartPolicy` is treated as `Never` (a Deployment
//! replaces Pods instead); init containers are not run; ConfigMap and Secret volumes are
//! written once at start; only `tcpSocket` readiness probes run; there are no liveness
//! probes, no resource limits and no PID namespace.

pub mod env;
pub mod network;
mod pod;
pub mod probes;
pub mod process;
pub mod sources;
pub mod status;
pub mod volumes;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use network::{PodNet, PodNetwork};

use super::ApiAccess;

/// The node every Pod of the simulator is bound to.
pub const NODE_NAME: &str = "miniray-sim";
/// The ConfigMap (in `kube-system`) whose key `new-pods` says what becomes of new Pods.
pub const SIMULATOR_CONFIG_MAP: &str = "miniray-simulator";
pub const NEW_PODS_KEY: &str = "new-pods";

/// Why the kubelet could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "state_dir {0} lies under /tmp, which each Pod has of its own: choose one elsewhere \
         (e.g. /var/tmp/miniray-k8s-sim-<pid>)"
    )]
    StateDirUnderTmp(PathBuf),
}

/// How the kubelet runs Pods.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    /// The node Pods are bound to ([`NODE_NAME`]).
    pub node_name: String,
    /// Pod directories and logs go under here; must not be under `/tmp` when the network
    /// is isolated.
    pub state_dir: PathBuf,
    pub network: Arc<PodNetwork>,
    /// What a container whose `command[0]` is `miniray` runs.
    pub miniray_exe: PathBuf,
    /// For `KUBERNETES_SERVICE_HOST`/`PORT` and the ServiceAccount directory.
    pub api: ApiAccess,
    /// Bind-mounted read-only on each Pod's `/etc/hosts`; created (with the localhost
    /// lines) if missing. Must be rewritten in place, never replaced.
    pub hosts_file: PathBuf,
}

impl KubeletConfig {
    /// The directory of Pod `namespace/name`.
    pub fn pod_dir(&self, namespace: &str, name: &str) -> PathBuf {
        super::pod_dir(&self.state_dir, namespace, name)
    }

    /// The log of container `container` of Pod `namespace/name`.
    pub fn log_path(&self, namespace: &str, name: &str, container: &str) -> PathBuf {
        super::container_log(&self.state_dir, namespace, name, container)
    }
}

/// What every Pod task shares.
struct Shared {
    client: kube::Client,
    cfg: KubeletConfig,
    /// `miniray_exe`, or its copy out of `/tmp`.
    exe: PathBuf,
    mount_points: volumes::MountPoints,
    /// Set once the "no isolation" notice has been logged.
    said_no_isolation: std::sync::Once,
}

/// A running kubelet. [`Kubelet::shutdown`] stops every Pod process and removes their
/// namespaces; dropping it without shutdown aborts its tasks (processes then die with the
/// runtime's threads, by their parent-death signal).
pub struct Kubelet {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    cfg: KubeletConfig,
}

impl Kubelet {
    /// Prepares `state_dir` and the hosts file, then starts watching Pods.
    pub async fn start(client: kube::Client, cfg: KubeletConfig) -> Result<Kubelet, KubeletError> {
        if cfg.network.isolated() && cfg.state_dir.starts_with("/tmp") {
            return Err(KubeletError::StateDirUnderTmp(cfg.state_dir.clone()));
        }
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| KubeletError::Io { what, path, source }
        };
        let pods_dir = cfg.state_dir.join("pods");
        std::fs::create_dir_all(&pods_dir).map_err(io("creating", &pods_dir))?;
        if !cfg.hosts_file.exists() {
            if let Some(parent) = cfg.hosts_file.parent() {
                std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
            }
            std::fs::write(&cfg.hosts_file, "127.0.0.1 localhost\n::1 localhost\n")
                .map_err(io("writing", &cfg.hosts_file))?;
        }
        let exe = if cfg.network.isolated() && cfg.miniray_exe.starts_with("/tmp") {
            let bin = cfg.state_dir.join("bin");
            std::fs::create_dir_all(&bin).map_err(io("creating", &bin))?;
            let copy = bin.join(crate::names::MINIRAY_COMMAND);
            std::fs::copy(&cfg.miniray_exe, &copy).map_err(io("copying", &cfg.miniray_exe))?;
            copy
        } else {
            cfg.miniray_exe.clone()
        };
        let shared = Arc::new(Shared {
            client,
            cfg: cfg.clone(),
            exe,
            mount_points: volumes::MountPoints::acquire(),
            said_no_isolation: std::sync::Once::new(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(watch_pods(shared, stop_rx));
        tracing::info!(node = %cfg.node_name, state_dir = %cfg.state_dir.display(), "kubelet started");
        Ok(Kubelet {
            stop,
            task: Some(task),
            cfg,
        })
    }

    /// The configuration it runs with (for paths of Pod directories and logs).
    pub fn config(&self) -> &KubeletConfig {
        &self.cfg
    }

    /// Stops every Pod's processes (SIGTERM, then SIGKILL after at most 5 s), removes their
    /// namespaces and directories (logs stay) and the mount points it created. Pods stay
    /// in the API as they were.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::warn!(error = %e, "kubelet task ended abnormally");
        }
        tracing::info!("kubelet stopped");
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// One Pod task: where its Pod's updates go.
struct PodTask {
    /// The latest version of the Pod; `None` once it is gone from the API.
    updates: watch::Sender<Option<Pod>>,
    task: JoinHandle<()>,
}

/// The main loop: Pod events to Pod tasks.
async fn watch_pods(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let api: Api<Pod> = Api::all(shared.client.clone());
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut tasks: HashMap<String, PodTask> = HashMap::new();
    // Pods whose task ended, or that are not this kubelet's to run: stale events of
    // these start nothing.
    let mut finished: HashSet<String> = HashSet::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    // Until the first complete listing, a Pod bound to this node is one a previous run
    // left behind.
    let mut first_listing = true;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(uid) = done_rx.recv() => {
                if let Some(t) = tasks.remove(&uid) {
                    let _ = t.task.await;
                }
                finished.insert(uid);
            }
            event = events.next() => {
                let event = match event {
                    Some(Ok(e)) => e,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "watching Pods failed; retrying");
                        continue;
                    }
                    None => break,
                };
                match event {
                    Event::Init => {}
                    Event::InitDone => first_listing = false,
                    Event::InitApply(pod) | Event::Apply(pod) => {
                        let ctx = Seen { first_listing, done: &done_tx, stop: &stop };
                        on_pod(&shared, &mut tasks, &mut finished, pod, ctx);
                    }
                    Event::Delete(pod) => {
                        if let Some(t) = tasks.get(&pod.uid().unwrap_or_default()) {
                            let _ = t.updates.send(None);
                        }
                    }
                }
            }
        }
    }
    // Shutdown: every Pod task stops its processes (it watches the same `stop`).
    for (_, t) in tasks.drain() {
        let _ = t.task.await;
    }
    shared.mount_points.remove_created();
}

/// Where a Pod event came from.
struct Seen<'a> {
    first_listing: bool,
    done: &'a mpsc::UnboundedSender<String>,
    stop: &'a watch::Receiver<bool>,
}

fn on_pod(
    shared: &Arc<Shared>,
    tasks: &mut HashMap<String, PodTask>,
    finished: &mut HashSet<String>,
    pod: Pod,
    seen: Seen<'_>,
) {
    let Some(uid) = pod.uid() else {
        return;
    };
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let ours = node.as_deref() == Some(shared.cfg.node_name.as_str());
    if node.is_some() && !ours {
        return;
    }
    if let Some(t) = tasks.get(&uid) {
        let _ = t.updates.send(Some(pod));
        return;
    }
    if pod.metadata.deletion_timestamp.is_some() {
        // A bound Pod nobody runs (left by a previous run) waits for its kubelet to
        // finish the deletion; an unbound one the server removes itself.
        if ours {
            finished.insert(uid);
            tokio::spawn(pod::finish_deletion(shared.client.clone(), pod));
        }
        return;
    }
    if finished.contains(&uid) {
        return;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        finished.insert(uid);
        return;
    }
    if ours && seen.first_listing {
        finished.insert(uid);
        tokio::spawn(pod::mark_node_restarted(shared.client.clone(), pod));
        return;
    }
    let (updates, rx) = watch::channel(Some(pod));
    let task = tokio::spawn(pod::run(
        shared.clone(),
        rx,
        seen.stop.clone(),
        seen.done.clone(),
        uid.clone(),
    ));
    tasks.insert(uid, PodTask { updates, task });
}
