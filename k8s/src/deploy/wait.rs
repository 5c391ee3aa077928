//! Waiting for the head: its Deployment has a ready replica of its current template.
//!
//! Polls (the API's watch would do too, but a poll has no stream to lose and the wait is
//! minutes at most) until a deadline, and reports the head Pod's state each time it changes,
//! so a Pod stuck Pending (unschedulable, image not pulled) is visible while `up` waits.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::time::Instant;

use super::{ClusterSpec, DeployError};
use crate::names;

/// Time between two looks at the API.
pub const POLL: Duration = Duration::from_millis(500);

/// Whether a Deployment has rolled out: the controller has seen its latest spec, and a
/// replica of that spec is ready.
pub fn rolled_out(d: &Deployment) -> bool {
    let Some(status) = &d.status else {
        return false;
    };
    let seen = match (d.metadata.generation, status.observed_generation) {
        (Some(generation), Some(observed)) => observed >= generation,
        (Some(_), None) => false,
        (None, _) => true,
    };
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(ready);
    seen && ready >= 1 && updated >= 1
}

/// One line about a Pod: its phase and why it is not ready yet.
pub fn pod_summary(pod: &Pod) -> String {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    if pod.metadata.deletion_timestamp.is_some() {
        return format!("{name}: terminating");
    }
    let Some(status) = &pod.status else {
        return format!("{name}: Pending");
    };
    let phase = status.phase.as_deref().unwrap_or("Pending");
    let mut why: Vec<String> = Vec::new();
    for c in status.conditions.iter().flatten() {
        if c.status == "False"
            && c.type_ == "PodScheduled"
            && let Some(reason) = &c.reason
        {
            why.push(reason.clone());
        }
    }
    for cs in status.container_statuses.iter().flatten() {
        if let Some(state) = &cs.state {
            if let Some(w) = &state.waiting
                && let Some(reason) = &w.reason
            {
                why.push(format!("{}: {reason}", cs.name));
            }
            if let Some(t) = &state.terminated {
                why.push(format!("{}: exited {}", cs.name, t.exit_code));
            }
        }
        if phase == "Running" && !cs.ready {
            why.push(format!("{}: not ready", cs.name));
        }
    }
    if let Some(reason) = &status.reason {
        why.push(reason.clone());
    }
    if why.is_empty() {
        format!("{name}: {phase}")
    } else {
        format!("{name}: {phase} ({})", why.join(", "))
    }
}

/// Waits until the head Deployment has rolled out ([`rolled_out`]) or `deadline` passes.
/// `progress` gets a line whenever the head Pods' state changes.
pub async fn head_ready(
    client: &kube::Client,
    spec: &ClusterSpec,
    deadline: Instant,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<(), DeployError> {
    let ns = spec.namespace();
    let name = names::head_deployment(spec.cluster_name());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!(
        "{}={},{}={}",
        names::LABEL_CLUSTER,
        spec.cluster_name(),
        names::LABEL_COMPONENT,
        names::COMPONENT_HEAD
    );
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let api_error = |action, kind, source| DeployError::Api {
            action,
            kind,
            namespace: ns.to_string(),
            name: name.clone(),
            cause: Box::new(source),
        };
        let deployment = deployments
            .get_opt(&name)
            .await
            .map_err(|e| api_error("reading", "Deployment", e))?;
        if deployment.as_ref().is_some_and(rolled_out) {
            return Ok(());
        }
        let listed = super::list_labelled(&pods, "Pod", ns, &selector).await?;
        let mut state: Vec<String> = listed.iter().map(pod_summary).collect();
        state.sort();
        let state = match (&deployment, state.is_empty()) {
            (None, _) => "the head Deployment is gone".to_string(),
            (Some(_), true) => "no head Pod yet".to_string(),
            (Some(_), false) => state.join("; "),
        };
        if state != last {
            progress(format!("waiting for the head: {state}"));
            last = state;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(DeployError::Timeout {
                what: format!("waiting for Deployment {ns}/{name} to be ready (last: {last})"),
                waited: now - started,
            });
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
    }
}
