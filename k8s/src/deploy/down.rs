//! `miniray down`: deletes everything `up` created and every Pod of the cluster, then waits
//! until they are gone.
//!
//! Objects are found by name (what `up` builds from the config) and by the label
//! [`names::LABEL_CLUSTER`] (also what an older config created under other names). The
//! Deployments go first, so nothing recreates the head or Redis Pods; the Pods are then
//! deleted, and deleted again while waiting if a new one appears (the head's autoscaler may
//! launch one before its Pod stops). Not found counts as deleted: `down` is idempotent.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, DynamicObject};
use tokio::time::Instant;

use super::manifests::Kind;
use super::wait::POLL;
use super::{ClusterSpec, DeployError, Progress, api_code};
use crate::names;

/// Kinds in deletion order: what runs first, then what it used.
const DELETE_ORDER: [Kind; 7] = [
    Kind::Deployment,
    Kind::Service,
    Kind::ConfigMap,
    Kind::Secret,
    Kind::RoleBinding,
    Kind::Role,
    Kind::ServiceAccount,
];

/// One object `down` deleted (objects already gone are not listed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// `Deployment`, `Pod`, …
    pub kind: String,
    pub name: String,
}

impl std::fmt::Display for Deleted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} deleted", self.kind.to_lowercase(), self.name)
    }
}

/// The names `up` gives objects of `kind` for this config.
fn names_of(spec: &ClusterSpec, kind: Kind) -> Vec<String> {
    let c = spec.cluster_name();
    match kind {
        Kind::Deployment | Kind::Service => vec![names::head_deployment(c), names::redis(c)],
        Kind::ConfigMap => vec![names::config_map(c)],
        Kind::Secret => vec![names::token_secret(c)],
        Kind::ServiceAccount | Kind::Role | Kind::RoleBinding => vec![names::service_account(c)],
    }
}

fn cluster_selector(spec: &ClusterSpec) -> String {
    format!("{}={}", names::LABEL_CLUSTER, spec.cluster_name())
}

/// Deletes the cluster and waits (until `deadline`) until its Pods and Deployments are gone.
/// `progress` gets each deletion and, while waiting, a line whenever the set of remaining
/// Pods changes.
pub async fn down(
    client: &kube::Client,
    spec: &ClusterSpec,
    deadline: Instant,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Vec<Deleted>, DeployError> {
    let ns = spec.namespace();
    let selector = cluster_selector(spec);
    let mut deleted = Vec::new();
    let api_error = |action, kind, name: &str, source| DeployError::Api {
        action,
        kind,
        namespace: ns.to_string(),
        name: name.to_string(),
        cause: Box::new(source),
    };
    // Background: the Deployment goes at once and the garbage collector takes its Pods,
    // which the Pod loop below deletes anyway.
    let background = DeleteParams::background();
    for kind in DELETE_ORDER {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &kind.api_resource());
        let mut targets: BTreeSet<String> = names_of(spec, kind).into_iter().collect();
        let listed = super::list_labelled(&api, kind.as_str(), ns, &selector).await?;
        targets.extend(listed.into_iter().filter_map(|o| o.metadata.name));
        for name in targets {
            match api.delete(&name, &background).await {
                Ok(_) => {
                    let d = Deleted {
                        kind: kind.as_str().to_string(),
                        name,
                    };
                    progress(Progress::Deleted(d.clone()));
                    deleted.push(d);
                }
                Err(e) if api_code(&e) == Some(404) => {}
                Err(e) => return Err(api_error("deleting", kind.as_str(), &name, e)),
            }
        }
    }
    wait_pods_gone(client, spec, deadline, &mut deleted, progress).await?;
    Ok(deleted)
}

/// Deletes every Pod of the cluster not yet terminating, until none is left.
async fn wait_pods_gone(
    client: &kube::Client,
    spec: &ClusterSpec,
    deadline: Instant,
    deleted: &mut Vec<Deleted>,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<(), DeployError> {
    let ns = spec.namespace();
    let selector = cluster_selector(spec);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    let mut last: Vec<String> = Vec::new();
    loop {
        let listed = super::list_labelled(&pods, "Pod", ns, &selector).await?;
        if listed.is_empty() {
            return Ok(());
        }
        let mut remaining = Vec::new();
        for pod in &listed {
            let Some(name) = pod.metadata.name.clone() else {
                continue;
            };
            if pod.metadata.deletion_timestamp.is_none() {
                match pods.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {
                        let d = Deleted {
                            kind: "Pod".into(),
                            name: name.clone(),
                        };
                        progress(Progress::Deleted(d.clone()));
                        deleted.push(d);
                    }
                    Err(e) if api_code(&e) == Some(404) => {}
                    Err(source) => {
                        return Err(DeployError::Api {
                            action: "deleting",
                            kind: "Pod",
                            namespace: ns.to_string(),
                            name,
                            cause: Box::new(source),
                        });
                    }
                }
            }
            remaining.push(name);
        }
        remaining.sort();
        if remaining != last {
            progress(Progress::Waiting(format!(
                "waiting for {} Pod(s) to go: {}",
                remaining.len(),
                remaining.join(", ")
            )));
            last = remaining;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(DeployError::Timeout {
                what: format!(
                    "waiting for the Pods of cluster {} to go (left: {})",
                    spec.cluster_name(),
                    last.join(", ")
                ),
                waited: now - started,
            });
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
    }
}
