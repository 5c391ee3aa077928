//! The autoscaler's `NodeProvider` on Kubernetes: one worker Pod per worker node.
//!
//! Invariants:
//! - Only Pods labelled with this cluster and `component: worker` are listed or deleted.
//! - `launch` is idempotent per request id: it lists the Pods labelled with the request id
//!   first and creates only the missing ones; a create whose outcome is unknown (5xx,
//!   timeout, transport error) is followed by that list again before any new create, so a
//!   retry never makes a Pod twice.
//! - `non_terminated` is one list call (label selector on the cluster and component, field
//!   selector excluding `Failed`, `Succeeded` and `Unknown`); Pods being deleted do not
//!   count, and an instance is `pending` until its `miniray` container runs. Only when a
//!   Pod it knew alive has left that list (or an earlier sweep failed) does it also list the
//!   terminal worker Pods, to say why they failed and remove them (the sweep).
//! - A worker Pod that fails without having been deleted by this provider is reported once
//!   through `poll_errors` with its reason, then deleted (as KubeRay does): `restartPolicy:
//!   Never` Pods are never removed otherwise, and the loop launches a replacement.
//!
//! Every API call is bounded by [`CALL_TIMEOUT`], and a launch's retries by
//! [`LAUNCH_DEADLINE`]; a call that times out counts as unknown.

mod observe;
pub mod pod;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use miniray_autoscaler::config::{AutoscalingConfig, NodeTypeConfig};
use miniray_autoscaler::provider::{CloudInstance, NodeProvider, ProviderCallError, ProviderError};
use tracing::{info, warn};

use crate::config::{KubernetesConfig, KubernetesConfigError};
use crate::names;
use pod::WorkerPodParams;

/// The longest one API call may take before its outcome counts as unknown.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A launch starts no new attempt after this long (the loop waits for it).
pub const LAUNCH_DEADLINE: Duration = Duration::from_secs(20);
/// Attempts of one launch (list + creates) before it gives up with `Unavailable`.
const LAUNCH_ATTEMPTS: u32 = 4;
/// The first backoff between attempts; doubled each time (100, 200, 400 ms).
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The field selector of live Pods: not terminal, not lost.
pub const LIVE_PHASES: &str = "status.phase!=Failed,status.phase!=Succeeded,status.phase!=Unknown";
/// The field selector of terminal Pods (those the sweep reads and removes).
pub const TERMINAL_PHASES: &str =
    "status.phase!=Pending,status.phase!=Running,status.phase!=Unknown";
/// The phase (and report reason) of a Pod whose container failed.
const FAILED: &str = "Failed";
/// Failures kept for `poll_errors` if the loop stops reading them.
const MAX_ERRORS: usize = 100;

/// Settings of the Kubernetes provider.
#[derive(Debug, Clone)]
pub struct KubernetesProviderConfig {
    pub cluster_name: String,
    pub k8s: KubernetesConfig,
    pub node_types: BTreeMap<String, NodeTypeConfig>,
    /// TLS between miniray processes is on: worker Pods mount the TLS material of the
    /// token Secret and point `MINIRAY_TLS_*` at it.
    pub tls: bool,
}

impl KubernetesProviderConfig {
    /// The provider settings of an autoscaling config whose provider is kubernetes, checked
    /// (the provider section, then every node type's Pod).
    pub fn from_autoscaling(
        config: &AutoscalingConfig,
        tls: bool,
    ) -> Result<Self, KubernetesConfigError> {
        let cfg = Self {
            cluster_name: config.cluster_name.clone(),
            k8s: KubernetesConfig::from_autoscaling(config)?,
            node_types: config.node_types.clone(),
            tls,
        };
        cfg.check()?;
        Ok(cfg)
    }

    /// Builds every node type's Pod once, so a bad `node_config` (not a Pod template, an
    /// unreadable CPU limit) is refused when the provider starts, naming the field.
    pub fn check(&self) -> Result<(), KubernetesConfigError> {
        for (name, t) in &self.node_types {
            pod::worker_pod(&self.params(), name, t, "check").map_err(|e| {
                KubernetesConfigError::Invalid {
                    field: e.field,
                    message: e.message,
                }
            })?;
        }
        Ok(())
    }

    fn params(&self) -> WorkerPodParams<'_> {
        WorkerPodParams {
            cluster_name: &self.cluster_name,
            k8s: &self.k8s,
            tls: self.tls,
        }
    }

    /// `miniray.io/cluster=<c>,miniray.io/component=worker`.
    fn workers_selector(&self) -> String {
        format!(
            "{}={},{}={}",
            names::LABEL_CLUSTER,
            self.cluster_name,
            names::LABEL_COMPONENT,
            names::COMPONENT_WORKER
        )
    }
}

/// A worker Pod this provider knows is alive (it created or listed it) and has not deleted.
#[derive(Debug, Clone)]
struct Known {
    node_type: String,
    /// Its `miniray` container was seen running.
    ran: bool,
}

#[derive(Default)]
struct State {
    errors: Vec<ProviderError>,
    known: BTreeMap<String, Known>,
    /// `(pod, reason)` already reported, so each is reported once.
    reported: BTreeSet<(String, String)>,
    /// Terminal Pods may be waiting for their removal: read them at the next list.
    sweep: bool,
}

pub struct KubernetesProvider {
    cfg: KubernetesProviderConfig,
    pods: Api<Pod>,
    state: Mutex<State>,
}

/// How a failed call is treated.
#[derive(Debug)]
enum Failure {
    /// 404.
    NotFound,
    /// 409 on a create with generateName: nothing was created; create again.
    Conflict(String),
    /// 5xx, 429, a timeout or a transport error: the outcome is unknown; retry later.
    Unknown(String),
    /// Any other refusal (400, 403, 422...): retrying will not help.
    Refused { code: u16, message: String },
}

/// `what`: the call (`list pods`), which prefixes the message.
fn classify(what: &str, e: kube::Error) -> Failure {
    match e {
        kube::Error::Api(status) => {
            let text = format!(
                "{what}: {} {}: {}",
                status.code,
                if status.reason.is_empty() {
                    "Error"
                } else {
                    &status.reason
                },
                status.message
            );
            match status.code {
                404 => Failure::NotFound,
                409 => Failure::Conflict(text),
                429 | 500..=599 => Failure::Unknown(text),
                code => Failure::Refused {
                    code,
                    message: text,
                },
            }
        }
        other => Failure::Unknown(format!("{what}: {other}")),
    }
}

impl Failure {
    fn message(&self) -> String {
        match self {
            Failure::NotFound => "404 NotFound".into(),
            Failure::Conflict(m) | Failure::Unknown(m) => m.clone(),
            Failure::Refused { message, .. } => message.clone(),
        }
    }
}

/// Runs one API call within [`CALL_TIMEOUT`].
async fn call<T>(
    what: &str,
    f: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| classify(what, e)),
        Err(_) => Err(Failure::Unknown(format!(
            "{what}: no answer within {CALL_TIMEOUT:?}"
        ))),
    }
}

impl KubernetesProvider {
    /// A provider talking through `client`, in `cfg.k8s.namespace`. Fails if a node type's
    /// Pod cannot be built.
    pub fn new(
        client: kube::Client,
        cfg: KubernetesProviderConfig,
    ) -> Result<Self, ProviderCallError> {
        cfg.check()
            .map_err(|e| ProviderCallError::Invalid(e.to_string()))?;
        Ok(Self {
            pods: Api::namespaced(client, &cfg.k8s.namespace),
            cfg,
            state: Mutex::default(),
        })
    }

    /// A provider with the client kube-rs infers: the kubeconfig (`KUBECONFIG`,
    /// `~/.kube/config`) or, in a Pod, the in-cluster config of its ServiceAccount.
    pub async fn connect(cfg: KubernetesProviderConfig) -> Result<Self, ProviderCallError> {
        // rustls panics when it has to choose a crypto provider; ring is the one compiled
        // in (as `miniray_common::tls` installs it). Installing again is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = kube::Client::try_default().await.map_err(|e| {
            ProviderCallError::Unavailable(format!(
                "cannot find the Kubernetes API (kubeconfig or in-cluster config): {e}"
            ))
        })?;
        Self::new(client, cfg)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding it leaves plain data behind: keep using it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn report(&self, error: ProviderError) {
        warn!(
            node_type = %error.node_type,
            instance_id = %error.instance_id,
            request_id = %error.request_id,
            message = %error.message,
            "worker Pod failure"
        );
        let mut state = self.state();
        if state.errors.len() >= MAX_ERRORS {
            state.errors.remove(0);
        }
        state.errors.push(error);
    }

    /// Live (not terminal, not being deleted) Pods of this cluster's launch `request_id`.
    async fn request_pods(&self, request_id: &str) -> Result<Vec<String>, Failure> {
        let lp = ListParams::default()
            .labels(&format!(
                "{},{}={request_id}",
                self.cfg.workers_selector(),
                names::LABEL_LAUNCH_REQUEST
            ))
            .fields(LIVE_PHASES);
        let list = call("list pods", self.pods.list(&lp)).await?;
        Ok(list
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.metadata.name)
            .collect())
    }

    /// One attempt: lists the request's Pods and creates the missing ones. `Err` with a
    /// [`Failure::Unknown`] means: back off, then list again.
    async fn launch_attempt(
        &self,
        node_type: &str,
        t: &NodeTypeConfig,
        count: usize,
        request_id: &str,
    ) -> Result<Vec<String>, Failure> {
        let mut names = self.request_pods(request_id).await?;
        let template =
            pod::worker_pod(&self.cfg.params(), node_type, t, request_id).map_err(|e| {
                Failure::Refused {
                    code: 0,
                    message: e.to_string(),
                }
            })?;
        let mut conflicts = 0;
        while names.len() < count {
            match call(
                "create pod",
                self.pods.create(&PostParams::default(), &template),
            )
            .await
            {
                Ok(created) => {
                    let Some(name) = created.metadata.name else {
                        return Err(Failure::Unknown(
                            "the API server returned a Pod without a name".into(),
                        ));
                    };
                    info!(pod = %name, node_type, request_id, "created a worker Pod");
                    self.state().known.insert(
                        name.clone(),
                        Known {
                            node_type: node_type.into(),
                            ran: false,
                        },
                    );
                    names.push(name);
                }
                // A generated name that was taken: nothing was created.
                Err(Failure::Conflict(m)) if conflicts + 1 < LAUNCH_ATTEMPTS => {
                    conflicts += 1;
                    warn!(node_type, request_id, error = %m, "generated Pod name taken; creating again");
                    tokio::time::sleep(FIRST_BACKOFF * conflicts).await;
                }
                Err(Failure::Conflict(m)) => return Err(Failure::Unknown(m)),
                Err(e) => return Err(e),
            }
        }
        Ok(names)
    }
}

#[async_trait::async_trait]
impl NodeProvider for KubernetesProvider {
    async fn launch(
        &self,
        node_type: &str,
        count: usize,
        request_id: &str,
    ) -> Result<Vec<String>, ProviderCallError> {
        let t = self.cfg.node_types.get(node_type).ok_or_else(|| {
            ProviderCallError::Invalid(format!("unknown node type {node_type:?}"))
        })?;
        if let Some(why) = pod::label_value_error(request_id) {
            return Err(ProviderCallError::Invalid(format!("request id: {why}")));
        }
        let started = tokio::time::Instant::now();
        let mut backoff = FIRST_BACKOFF;
        let mut last = String::new();
        let mut attempts = 0;
        for attempt in 1..=LAUNCH_ATTEMPTS {
            match self.launch_attempt(node_type, t, count, request_id).await {
                Ok(names) => return Ok(names),
                Err(Failure::Unknown(m)) | Err(Failure::Conflict(m)) => {
                    warn!(node_type, request_id, attempt, error = %m, "launch attempt failed; listing again");
                    last = m;
                }
                Err(Failure::NotFound) => {
                    let message = format!(
                        "creating worker Pods: namespace {:?} not found",
                        self.cfg.k8s.namespace
                    );
                    self.report(ProviderError {
                        node_type: node_type.into(),
                        instance_id: String::new(),
                        request_id: request_id.into(),
                        message: message.clone(),
                    });
                    return Err(ProviderCallError::Invalid(message));
                }
                Err(Failure::Refused { code, message }) => {
                    let message = format!("launching a {node_type} Pod: {message}");
                    if matches!(code, 0 | 403 | 422) {
                        self.report(ProviderError {
                            node_type: node_type.into(),
                            instance_id: String::new(),
                            request_id: request_id.into(),
                            message: message.clone(),
                        });
                    }
                    return Err(ProviderCallError::Invalid(message));
                }
            }
            attempts = attempt;
            if attempt == LAUNCH_ATTEMPTS || started.elapsed() + backoff >= LAUNCH_DEADLINE {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        Err(ProviderCallError::Unavailable(format!(
            "launching {count} {node_type} Pod(s) failed {attempts} times; last: {last}"
        )))
    }

    async fn terminate(
        &self,
        instance_ids: &[String],
        request_id: &str,
    ) -> Result<(), ProviderCallError> {
        let mut failed = Vec::new();
        for name in instance_ids {
            // Forgotten first: its disappearance is asked for, not a failure.
            let known = self.state().known.remove(name);
            match call(
                "delete pod",
                self.pods.delete(name, &DeleteParams::default()),
            )
            .await
            {
                Ok(_) => info!(pod = %name, "deleting a worker Pod"),
                Err(Failure::NotFound) => info!(pod = %name, "worker Pod already gone"),
                Err(e) => {
                    if let Failure::Refused { .. } = e {
                        self.report(ProviderError {
                            node_type: known
                                .as_ref()
                                .map(|k| k.node_type.clone())
                                .unwrap_or_default(),
                            instance_id: name.clone(),
                            request_id: request_id.into(),
                            message: format!("deleting the worker Pod: {}", e.message()),
                        });
                    }
                    if let Some(known) = known {
                        self.state().known.insert(name.clone(), known);
                    }
                    failed.push(format!("{name}: {}", e.message()));
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(ProviderCallError::Unavailable(format!(
                "cannot delete worker Pod(s): {}",
                failed.join("; ")
            )))
        }
    }

    async fn non_terminated(&self) -> Result<BTreeMap<String, CloudInstance>, ProviderCallError> {
        let lp = ListParams::default()
            .labels(&self.cfg.workers_selector())
            .fields(LIVE_PHASES);
        let list = call("list pods", self.pods.list(&lp)).await.map_err(|e| {
            ProviderCallError::Unavailable(format!("listing worker Pods: {}", e.message()))
        })?;
        let mut out = BTreeMap::new();
        let mut present = BTreeSet::new();
        let mut stuck = Vec::new();
        for pod in &list.items {
            let Some(name) = pod.metadata.name.clone() else {
                continue;
            };
            present.insert(name.clone());
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let labels = pod.metadata.labels.as_ref();
            let label = |k: &str| labels.and_then(|l| l.get(k)).cloned();
            let Some(node_type) = label(names::LABEL_NODE_TYPE) else {
                warn!(pod = %name, label = names::LABEL_NODE_TYPE, "skipping a worker Pod without its node type label");
                continue;
            };
            let request_id = label(names::LABEL_LAUNCH_REQUEST).unwrap_or_default();
            let running = observe::miniray_running(pod);
            if !running && let Some((reason, message)) = observe::not_starting(pod) {
                stuck.push((
                    name.clone(),
                    node_type.clone(),
                    request_id.clone(),
                    reason,
                    message,
                ));
            }
            out.insert(
                name.clone(),
                CloudInstance {
                    instance_id: name,
                    node_type,
                    request_id,
                    pending: !running,
                },
            );
        }
        let sweep = {
            let mut state = self.state();
            for (name, i) in &out {
                let known = state.known.entry(name.clone()).or_insert_with(|| Known {
                    node_type: i.node_type.clone(),
                    ran: false,
                });
                known.ran |= !i.pending;
            }
            // A Pod this provider knew alive that is no longer listed went terminal or was
            // deleted by someone else: the sweep finds out which.
            let vanished: Vec<String> = state
                .known
                .keys()
                .filter(|n| !present.contains(*n))
                .cloned()
                .collect();
            let sweep = state.sweep || !vanished.is_empty();
            state.sweep = false;
            // Reports of Pods gone from view are dropped (a failed one's is kept until
            // the sweep has removed it, so it is reported once).
            let State {
                reported, known, ..
            } = &mut *state;
            reported.retain(|(n, r)| r == FAILED || present.contains(n) || known.contains_key(n));
            let mut new_reports = Vec::new();
            for (name, node_type, request_id, reason, message) in stuck {
                if state.reported.insert((name.clone(), reason)) {
                    new_reports.push(ProviderError {
                        node_type,
                        instance_id: name.clone(),
                        request_id,
                        message: format!("worker Pod {name} is not starting: {message}"),
                    });
                }
            }
            drop(state);
            for r in new_reports {
                self.report(r);
            }
            sweep.then_some(vanished)
        };
        if let Some(vanished) = sweep {
            self.sweep(&vanished).await;
        }
        Ok(out)
    }

    fn poll_errors(&self) -> Vec<ProviderError> {
        std::mem::take(&mut self.state().errors)
    }
}

impl KubernetesProvider {
    /// Reads this cluster's terminal worker Pods: each failed one this provider did not
    /// delete is reported once with its reason; every one is then deleted. `vanished`:
    /// known Pods no longer listed as live, forgotten here. A failing call leaves the sweep
    /// to the next list.
    async fn sweep(&self, vanished: &[String]) {
        let lp = ListParams::default()
            .labels(&self.cfg.workers_selector())
            .fields(TERMINAL_PHASES);
        let list = match call("list pods", self.pods.list(&lp)).await {
            Ok(list) => list,
            Err(e) => {
                warn!(error = %e.message(), "cannot list terminal worker Pods; trying again next round");
                self.state().sweep = true;
                return;
            }
        };
        let mut reports = Vec::new();
        let mut to_delete = Vec::new();
        {
            let mut state = self.state();
            let mut seen_running = BTreeSet::new();
            for name in vanished {
                if state.known.remove(name).is_some_and(|k| k.ran) {
                    seen_running.insert(name.clone());
                }
            }
            for pod in &list.items {
                let Some(name) = pod.metadata.name.clone() else {
                    continue;
                };
                if pod.metadata.deletion_timestamp.is_some() {
                    // Someone asked for it to go.
                    continue;
                }
                let failed = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(FAILED);
                if failed && state.reported.insert((name.clone(), FAILED.into())) {
                    let labels = pod.metadata.labels.as_ref();
                    let label =
                        |k: &str| labels.and_then(|l| l.get(k)).cloned().unwrap_or_default();
                    let ran = seen_running.contains(&name) || observe::miniray_ran(pod);
                    reports.push(ProviderError {
                        node_type: label(names::LABEL_NODE_TYPE),
                        instance_id: name.clone(),
                        request_id: label(names::LABEL_LAUNCH_REQUEST),
                        message: format!(
                            "worker Pod {name} failed{}: {}",
                            if ran { "" } else { " before it ran" },
                            observe::failure(pod)
                        ),
                    });
                }
                to_delete.push(name);
            }
            // A failed Pod's report is kept while the Pod is there, so it is made once.
            state
                .reported
                .retain(|(n, r)| r != FAILED || to_delete.contains(n));
        }
        for r in reports {
            self.report(r);
        }
        for name in to_delete {
            match call(
                "delete pod",
                self.pods.delete(&name, &DeleteParams::default()),
            )
            .await
            {
                Ok(_) => info!(pod = %name, "deleted a terminated worker Pod"),
                Err(Failure::NotFound) => {}
                Err(e) => {
                    warn!(pod = %name, error = %e.message(), "cannot delete a terminated worker Pod; trying again next round");
                    self.state().sweep = true;
                }
            }
        }
    }
}
