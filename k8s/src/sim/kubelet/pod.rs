//! One Pod's lifecycle, in a task of its own: schedule (or not), bind, address, prepare
//! (env, volumes), start the containers, follow their exits and readiness, and on deletion
//! stop them (SIGTERM, SIGKILL after the grace period), release the Pod's namespace and
//! directory (logs stay) and finish the deletion in the API (grace 0).
//!
//! Status writes are merge patches of the whole `status` (lists replace as a whole), sent
//! only when it changed.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::env::{self, EnvError, PodFields};
use super::network::PodNet;
use super::probes::{self, Readiness};
use super::process::{self, Group, Isolation, ProcessError, Spec};
use super::sources::{Refs, Sources};
use super::status::{self, ContainerRecord, Forced, PodRecord, State};
use super::volumes::{self, ServiceAccountFiles, VolumeError};
use super::{NEW_PODS_KEY, SIMULATOR_CONFIG_MAP, Shared};

/// How long the kubelet gives Pods to stop when it shuts down (at most their own grace).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often a Pod waiting for a missing Secret or ConfigMap looks again.
const CONFIG_RETRY: Duration = Duration::from_secs(1);
/// The default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// What `new-pods` says about a new Pod.
#[derive(Debug, PartialEq, Eq)]
enum Mode {
    Run,
    Unschedulable,
    Fail,
}

/// Why a Pod task stops following its Pod.
#[derive(Debug)]
enum End {
    /// `deletionTimestamp` is set: stop within this grace period, then delete it.
    Deleting(Duration),
    /// The Pod is gone from the API (deleted with grace 0 by someone else).
    Gone,
    /// The kubelet shuts down.
    Shutdown,
}

/// Why a Pod's containers cannot start.
enum Blocked {
    /// Something it references is missing: retried until it appears (`CreateContainerConfigError`).
    Waiting(String),
    /// Cannot ever run: the Pod fails with this reason and message.
    Fatal(&'static str, String),
}

/// A container ready to start.
struct Prepared {
    name: String,
    spec: Spec,
    readiness: Readiness,
}

/// Events of a running Pod's containers.
enum ContainerEvent {
    Exited(usize, i32),
    Ready(usize, bool),
}

struct PodTask {
    shared: Arc<Shared>,
    api: Api<Pod>,
    namespace: String,
    name: String,
    record: PodRecord,
    /// The last status written, to skip writes that change nothing.
    written: Option<serde_json::Value>,
    net: Option<PodNet>,
    /// The process groups of running containers, by container index.
    groups: Vec<Option<Group>>,
    probes: Vec<JoinHandle<()>>,
}

/// Runs the Pod whose updates come on `updates` until it is deleted or the kubelet stops,
/// then reports `uid` on `done`.
pub(super) async fn run(
    shared: Arc<Shared>,
    mut updates: watch::Receiver<Option<Pod>>,
    mut stop: watch::Receiver<bool>,
    done: mpsc::UnboundedSender<String>,
    uid: String,
) {
    let Some(pod) = updates.borrow().clone() else {
        return;
    };
    let namespace = pod.namespace().unwrap_or_else(|| "default".into());
    let name = pod.name_any();
    let mut task = PodTask {
        api: Api::namespaced(shared.client.clone(), &namespace),
        shared,
        namespace,
        name,
        record: PodRecord::default(),
        written: None,
        net: None,
        groups: Vec::new(),
        probes: Vec::new(),
    };
    let end = task.lifecycle(pod, &mut updates, &mut stop).await;
    task.release();
    if let End::Deleting(_) = end {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        match task.api.delete(&task.name, &dp).await {
            Ok(_) => tracing::info!(pod = %task.key(), "Pod deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(pod = %task.key(), error = %e, "finishing a Pod's deletion failed")
            }
        }
    }
    let _ = done.send(uid);
}

/// The current reason to stop, if any.
fn check(updates: &watch::Receiver<Option<Pod>>, stop: &watch::Receiver<bool>) -> Option<End> {
    if *stop.borrow() {
        return Some(End::Shutdown);
    }
    let pod = updates.borrow();
    let pod = pod.as_ref()?;
    pod.metadata.deletion_timestamp.as_ref()?;
    let secs = pod.metadata.deletion_grace_period_seconds.or_else(|| {
        pod.spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
    });
    let grace = secs
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_GRACE);
    Some(End::Deleting(grace))
}

/// Waits for a reason to stop. Cancel-safe.
async fn next_end(
    updates: &mut watch::Receiver<Option<Pod>>,
    stop: &mut watch::Receiver<bool>,
) -> End {
    loop {
        if updates.borrow().is_none() {
            return End::Gone;
        }
        if let Some(end) = check(updates, stop) {
            return end;
        }
        tokio::select! {
            r = updates.changed() => if r.is_err() { return End::Gone },
            r = stop.changed() => if r.is_err() { return End::Shutdown },
        }
    }
}

impl PodTask {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    async fn lifecycle(
        &mut self,
        pod: Pod,
        updates: &mut watch::Receiver<Option<Pod>>,
        stop: &mut watch::Receiver<bool>,
    ) -> End {
        let mode = self.mode().await;
        if mode != Mode::Run {
            let text = if mode == Mode::Fail {
                "fail"
            } else {
                "unschedulable"
            };
            let message = format!(
                "the simulator's {NEW_PODS_KEY} is {text} (ConfigMap kube-system/{SIMULATOR_CONFIG_MAP})"
            );
            tracing::info!(pod = %self.key(), mode = text, "new Pod not run");
            self.record.forced = Some(if mode == Mode::Fail {
                Forced::Failed {
                    reason: "SimulatedFailure".into(),
                    message,
                }
            } else {
                Forced::Unschedulable {
                    message: format!("0/1 nodes are available: {message}"),
                }
            });
            self.write_status().await;
            return next_end(updates, stop).await;
        }
        let bound = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some();
        if !bound {
            loop {
                match self.bind().await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(pod = %self.key(), error = %e, "binding failed; retrying");
                        tokio::select! {
                            end = next_end(updates, stop) => return end,
                            _ = tokio::time::sleep(CONFIG_RETRY) => {}
                        }
                    }
                }
            }
        }
        let containers = pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default();
        self.record.scheduled_at = Some(status::now());
        self.record.host_ip = Some(self.shared.cfg.network.bridge_ip().to_string());
        self.record.containers = containers
            .iter()
            .map(|c| {
                ContainerRecord::waiting(
                    &c.name,
                    c.image.as_deref().unwrap_or(""),
                    "ContainerCreating",
                )
            })
            .collect();
        self.groups = vec![None; containers.len()];
        let net = match self.shared.cfg.network.add_pod() {
            Ok(net) => net,
            Err(e) => {
                return self
                    .fail_and_wait("NetworkNotReady", e.to_string(), updates, stop)
                    .await;
            }
        };
        self.record.pod_ip = Some(net.ip.to_string());
        self.net = Some(net);
        self.record.start_time = Some(status::now());
        self.write_status().await;

        let prepared = loop {
            let latest = updates.borrow().clone().unwrap_or_else(|| pod.clone());
            match self.prepare(&latest).await {
                Ok(p) => break p,
                Err(Blocked::Fatal(reason, message)) => {
                    return self.fail_and_wait(reason, message, updates, stop).await;
                }
                Err(Blocked::Waiting(message)) => {
                    for c in &mut self.record.containers {
                        c.state = State::Waiting {
                            reason: "CreateContainerConfigError".into(),
                            message: Some(message.clone()),
                        };
                    }
                    self.write_status().await;
                    tokio::select! {
                        end = next_end(updates, stop) => return end,
                        _ = tokio::time::sleep(CONFIG_RETRY) => {}
                    }
                }
            }
        };

        let (events_tx, mut events) = mpsc::unbounded_channel();
        for (i, c) in prepared.into_iter().enumerate() {
            self.start_container(i, c, &events_tx);
        }
        self.write_status().await;
        let end = loop {
            if self.record.terminal() && self.net.is_some() {
                // Nothing runs any more: the network namespace goes now, the Pod
                // object and its directory stay until it is deleted.
                self.kill_everything();
                self.release_network();
            }
            tokio::select! {
                end = next_end(updates, stop) => break end,
                Some(event) = events.recv() => {
                    self.on_event(event);
                    self.write_status().await;
                }
            }
        };
        self.stop_containers(&end, &mut events).await;
        end
    }

    /// The `new-pods` mode, read now.
    async fn mode(&self) -> Mode {
        let maps: Api<ConfigMap> = Api::namespaced(self.shared.client.clone(), "kube-system");
        let value = match maps.get_opt(SIMULATOR_CONFIG_MAP).await {
            Ok(map) => map.and_then(|m| m.data?.get(NEW_PODS_KEY).cloned()),
            Err(e) => {
                tracing::warn!(error = %e, "reading the simulator's ConfigMap failed; running the Pod");
                None
            }
        };
        match value.as_deref().map(str::trim) {
            None | Some("run") | Some("") => Mode::Run,
            Some("unschedulable") => Mode::Unschedulable,
            Some("fail") => Mode::Fail,
            Some(other) => {
                tracing::warn!(
                    value = other,
                    "unknown new-pods mode (run, unschedulable, fail); running the Pod"
                );
                Mode::Run
            }
        }
    }

    async fn bind(&self) -> Result<(), kube::Error> {
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.shared.cfg.node_name},
        });
        self.api
            .create_subresource::<_, serde_json::Value>(
                "binding",
                &self.name,
                &PostParams::default(),
                &binding,
            )
            .await?;
        tracing::info!(pod = %self.key(), node = %self.shared.cfg.node_name, "Pod bound");
        Ok(())
    }

    async fn fail_and_wait(
        &mut self,
        reason: &str,
        message: String,
        updates: &mut watch::Receiver<Option<Pod>>,
        stop: &mut watch::Receiver<bool>,
    ) -> End {
        tracing::warn!(pod = %self.key(), reason, message = %message, "Pod failed");
        self.record.forced = Some(Forced::Failed {
            reason: reason.into(),
            message,
        });
        self.write_status().await;
        next_end(updates, stop).await
    }

    /// Reads what the Pod references, writes its volumes and builds each container's
    /// command line, environment and mounts.
    async fn prepare(&self, pod: &Pod) -> Result<Vec<Prepared>, Blocked> {
        let cfg = &self.shared.cfg;
        let sources = Sources::fetch(&self.shared.client, &self.namespace, &Refs::of(pod))
            .await
            .map_err(|e| Blocked::Waiting(format!("reading Secrets and ConfigMaps: {e}")))?;
        let pod_dir = cfg.pod_dir(&self.namespace, &self.name);
        let tmp_dir = pod_dir.join("tmp");
        let made = std::fs::create_dir_all(&tmp_dir).and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp_dir, std::fs::Permissions::from_mode(0o1777))
        });
        if let Err(e) = made {
            return Err(Blocked::Fatal(
                "CreateContainerError",
                format!("{}: {e}", tmp_dir.display()),
            ));
        }
        let dirs = volumes::materialize(pod, &pod_dir, &sources).map_err(volume_blocked)?;
        let sa_files = ServiceAccountFiles {
            token: cfg.api.token.clone(),
            ca_pem: cfg.api.ca_pem.clone(),
        };
        let sa = volumes::service_account(pod, &pod_dir, &sa_files).map_err(volume_blocked)?;
        let fields = self.fields(pod);
        let base = self.base_env();
        let spec = pod.spec.clone().unwrap_or_default();
        let mut prepared = Vec::new();
        for c in &spec.containers {
            let env = env::resolve(c, &fields, &base, &sources).map_err(|e| match e {
                EnvError::Unsupported { .. } => {
                    Blocked::Fatal("CreateContainerConfigError", e.to_string())
                }
                e => Blocked::Waiting(e.to_string()),
            })?;
            let argv = env::command_line(c, &env);
            let Some((program, args)) = argv.split_first() else {
                return Err(Blocked::Fatal(
                    "NoCommand",
                    format!(
                        "container {} has no command: the simulator runs a container's \
                         command on this host and cannot read an image's entrypoint",
                        c.name
                    ),
                ));
            };
            let program = process::find_program(program, &self.shared.exe)
                .map_err(|e| Blocked::Fatal("StartError", format!("container {}: {e}", c.name)))?;
            let mounts = volumes::mounts(c, &dirs, sa.as_deref()).map_err(volume_blocked)?;
            let isolation = match self.net.as_ref().and_then(PodNet::netns_path) {
                Some(netns) => {
                    let redirect = [(std::path::Path::new("/tmp"), tmp_dir.as_path())];
                    for m in &mounts {
                        self.shared
                            .mount_points
                            .ensure(&m.target, &redirect)
                            .map_err(|e| Blocked::Fatal("CreateContainerError", e.to_string()))?;
                    }
                    Some(Isolation {
                        netns,
                        hostname: self.name.chars().take(63).collect(),
                        tmp_dir: tmp_dir.clone(),
                        hosts_file: Some(cfg.hosts_file.clone()),
                        mounts,
                    })
                }
                None => {
                    self.shared.said_no_isolation.call_once(|| {
                        eprintln!(
                            "miniray k8s simulator: no network namespaces, so Pods run without \
                             mounts: no volumes, no ServiceAccount directory, no own /tmp, \
                             /dev/shm or /etc/hosts"
                        );
                    });
                    None
                }
            };
            prepared.push(Prepared {
                name: c.name.clone(),
                spec: Spec {
                    program,
                    args: args.to_vec(),
                    env,
                    working_dir: c.working_dir.clone().map(Into::into),
                    log: cfg.log_path(&self.namespace, &self.name, &c.name),
                    isolation,
                },
                readiness: probes::readiness(c),
            });
        }
        Ok(prepared)
    }

    fn fields(&self, pod: &Pod) -> PodFields {
        let spec = pod.spec.as_ref();
        PodFields {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            uid: pod.uid().unwrap_or_default(),
            pod_ip: self.record.pod_ip.clone().unwrap_or_default(),
            host_ip: self.record.host_ip.clone().unwrap_or_default(),
            node_name: self.shared.cfg.node_name.clone(),
            service_account_name: spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
            labels: pod.labels().clone(),
            annotations: pod.annotations().clone(),
        }
    }

    /// What every container gets before its own env: the API's address as on a real
    /// cluster, and what a container image would set (nothing of this process's own
    /// environment but `PATH` and the Rust logging switches).
    fn base_env(&self) -> Vec<(String, String)> {
        let api = &self.shared.cfg.api;
        let mut base = vec![
            ("KUBERNETES_SERVICE_HOST".to_string(), api.pod_host.clone()),
            ("KUBERNETES_SERVICE_PORT".to_string(), api.port.to_string()),
            (
                "KUBERNETES_SERVICE_PORT_HTTPS".to_string(),
                api.port.to_string(),
            ),
            (
                "KUBERNETES_PORT".to_string(),
                format!("tcp://{}:{}", api.pod_host, api.port),
            ),
            ("HOSTNAME".to_string(), self.name.clone()),
            ("HOME".to_string(), "/root".to_string()),
        ];
        for var in ["PATH", "RUST_LOG", "RUST_BACKTRACE"] {
            if let Some(v) = std::env::var_os(var) {
                base.push((var.to_string(), v.to_string_lossy().into_owned()));
            }
        }
        base
    }

    fn start_container(
        &mut self,
        i: usize,
        c: Prepared,
        events: &mpsc::UnboundedSender<ContainerEvent>,
    ) {
        let key = self.key();
        let record = &mut self.record.containers[i];
        let mut running = match process::spawn(&c.spec) {
            Ok(r) => r,
            Err(e) => {
                let message = match &e {
                    ProcessError::Spawn(_) => format!("{e}: {}", c.spec.log.display()),
                    _ => e.to_string(),
                };
                tracing::warn!(pod = %key, container = %c.name, error = %message, "container did not start");
                record.state = State::Terminated {
                    exit_code: 128,
                    started_at: None,
                    finished_at: status::now(),
                    message: Some(message),
                };
                return;
            }
        };
        let group = running.group();
        tracing::info!(pod = %key, container = %c.name, pid = group.pid(), "container started");
        record.state = State::Running {
            started_at: status::now(),
        };
        record.container_id = Some(format!("miniray-sim://{}", group.pid()));
        self.groups[i] = Some(group);
        let tx = events.clone();
        tokio::spawn(async move {
            let code = running.wait().await;
            let _ = tx.send(ContainerEvent::Exited(i, code));
        });
        match c.readiness {
            Readiness::None => record.ready = true,
            Readiness::Unsupported(why) => {
                tracing::warn!(pod = %key, container = %c.name, "{why}");
            }
            Readiness::Tcp(probe) => {
                let ip = self
                    .net
                    .as_ref()
                    .map(|n| std::net::IpAddr::V4(n.ip))
                    .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
                let tx = events.clone();
                self.probes.push(tokio::spawn(async move {
                    let (ready_tx, mut ready_rx) = watch::channel(false);
                    let probe = probes::run(probe, ip, ready_tx);
                    tokio::pin!(probe);
                    loop {
                        tokio::select! {
                            () = &mut probe => return,
                            r = ready_rx.changed() => {
                                if r.is_err() {
                                    return;
                                }
                                let ready = *ready_rx.borrow_and_update();
                                if tx.send(ContainerEvent::Ready(i, ready)).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }));
            }
        }
    }

    fn on_event(&mut self, event: ContainerEvent) {
        match event {
            ContainerEvent::Ready(i, ready) => {
                if let Some(c) = self.record.containers.get_mut(i)
                    && matches!(c.state, State::Running { .. })
                {
                    c.ready = ready;
                }
            }
            ContainerEvent::Exited(i, exit_code) => {
                // What the container started and left behind in its group goes with it.
                if let Some(group) = self.groups.get_mut(i).and_then(Option::take) {
                    group.signal_group(libc::SIGKILL);
                }
                let key = self.key();
                let Some(c) = self.record.containers.get_mut(i) else {
                    return;
                };
                tracing::info!(pod = %key, container = %c.name, exit_code, "container exited");
                let started_at = match &c.state {
                    State::Running { started_at } => Some(started_at.clone()),
                    _ => None,
                };
                c.ready = false;
                c.state = State::Terminated {
                    exit_code,
                    started_at,
                    finished_at: status::now(),
                    message: None,
                };
            }
        }
    }

    /// SIGTERM to every running container, SIGKILL to all the Pod's processes once they
    /// have exited or the grace period is over.
    async fn stop_containers(
        &mut self,
        end: &End,
        events: &mut mpsc::UnboundedReceiver<ContainerEvent>,
    ) {
        let grace = match end {
            End::Deleting(grace) => *grace,
            End::Shutdown => SHUTDOWN_GRACE,
            End::Gone => Duration::from_secs(2),
        };
        let grace = if let End::Shutdown = end {
            grace.min(SHUTDOWN_GRACE)
        } else {
            grace
        };
        for group in self.groups.iter().flatten() {
            group.signal_group(libc::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + grace;
        while self.groups.iter().any(Option::is_some) {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(event)) => self.on_event(event),
                Ok(None) => break,
                Err(_) => {
                    tracing::info!(pod = %self.key(), grace_secs = grace.as_secs(), "grace period over; killing");
                    break;
                }
            }
        }
        self.kill_everything();
        // The waiters report the killed containers; bounded, in case one cannot die.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.groups.iter().any(Option::is_some) {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(event)) => self.on_event(event),
                _ => break,
            }
        }
        if !matches!(end, End::Shutdown) {
            self.write_status().await;
        }
    }

    /// SIGKILLs every process of the Pod (every container's group and all in its network
    /// namespace).
    fn kill_everything(&self) {
        for group in self.groups.iter().flatten() {
            group.kill_all();
        }
        if let Some(id) = self
            .net
            .as_ref()
            .and_then(PodNet::netns_path)
            .and_then(|p| process::netns_id(&p))
        {
            for pid in process::pids_in_netns(id) {
                // SAFETY: kill(2) on a process of this Pod; a gone pid only errs.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }

    fn release_network(&mut self) {
        if let Some(net) = self.net.take() {
            self.shared.cfg.network.remove_pod(&net);
        }
    }

    /// Frees what the Pod holds on this host: probes, processes, network namespace, and
    /// its directory except the logs.
    fn release(&mut self) {
        for p in self.probes.drain(..) {
            p.abort();
        }
        self.kill_everything();
        self.release_network();
        let dir = self.shared.cfg.pod_dir(&self.namespace, &self.name);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log") {
                    continue;
                }
                let removed = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                if let Err(e) = removed {
                    tracing::warn!(path = %path.display(), error = %e, "removing a Pod's file failed");
                }
            }
        }
    }

    async fn write_status(&mut self) {
        let status = match serde_json::to_value(self.record.status()) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "encoding a Pod status failed");
                return;
            }
        };
        if self.written.as_ref() == Some(&status) {
            return;
        }
        let patch = Patch::Merge(json!({ "status": status }));
        match self
            .api
            .patch_status(&self.name, &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => {
                tracing::debug!(pod = %self.key(), phase = self.record.phase(), ready = self.record.ready(), "status written");
                self.written = Some(status);
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => tracing::warn!(pod = %self.key(), error = %e, "writing a Pod status failed"),
        }
    }
}

fn volume_blocked(e: VolumeError) -> Blocked {
    match e {
        VolumeError::ConfigMapMissing(_)
        | VolumeError::SecretMissing(_)
        | VolumeError::KeyMissing { .. } => Blocked::Waiting(e.to_string()),
        e => Blocked::Fatal("CreateContainerConfigError", e.to_string()),
    }
}

/// Marks a Pod that a previous run of the kubelet left behind as Failed: its processes
/// are gone.
pub(super) async fn mark_node_restarted(client: kube::Client, pod: Pod) {
    let namespace = pod.namespace().unwrap_or_else(|| "default".into());
    let api: Api<Pod> = Api::namespaced(client, &namespace);
    let record = PodRecord {
        forced: Some(Forced::Failed {
            reason: "NodeRestarted".into(),
            message: "the simulator's kubelet restarted; this Pod's processes are gone".into(),
        }),
        ..Default::default()
    };
    let patch = Patch::Merge(json!({ "status": record.status() }));
    if let Err(e) = api
        .patch_status(&pod.name_any(), &PatchParams::default(), &patch)
        .await
    {
        tracing::warn!(pod = %pod.name_any(), error = %e, "marking a left-over Pod Failed failed");
    }
}

/// Finishes the deletion of a bound Pod no task runs.
pub(super) async fn finish_deletion(client: kube::Client, pod: Pod) {
    let namespace = pod.namespace().unwrap_or_else(|| "default".into());
    let api: Api<Pod> = Api::namespaced(client, &namespace);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    match api.delete(&pod.name_any(), &dp).await {
        Ok(_) | Err(kube::Error::Api(_)) => {}
        Err(e) => {
            tracing::warn!(pod = %pod.name_any(), error = %e, "finishing a Pod's deletion failed")
        }
    }
}
