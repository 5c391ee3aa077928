//! Reading a worker Pod as the autoscaler sees an instance: running or still pending, and
//! why it is not starting or why it failed, in words an operator can act on.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use crate::names;

/// Whether the `miniray` container runs. The phase alone is not enough: a Pod is `Running`
/// once one container started, and its containers may be restarting or waiting.
pub fn miniray_running(pod: &Pod) -> bool {
    miniray_status(pod)
        .and_then(|s| s.state.as_ref())
        .is_some_and(|state| state.running.is_some())
}

fn miniray_status(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|s| s.name == names::CONTAINER_NAME)
}

/// Waiting reasons that do not go away without someone fixing the Pod or its image.
const STUCK_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Why a pending Pod is not starting, if it says so: `(key, message)`, the key naming the
/// problem (reported once per Pod). A container
/// waiting for a stuck reason, or the scheduler refusing the Pod.
pub fn not_starting(pod: &Pod) -> Option<(String, String)> {
    let status = pod.status.as_ref()?;
    for c in status.container_statuses.iter().flatten() {
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref())
            && let Some(reason) = &w.reason
            && STUCK_REASONS.contains(&reason.as_str())
        {
            let message = w.message.clone().unwrap_or_default();
            // A pull that fails alternates between these two: one problem, one report.
            let key = match reason.as_str() {
                "ErrImagePull" | "ImagePullBackOff" => "ImagePull",
                other => other,
            };
            return Some((
                key.to_string(),
                format!("container {}: {reason}: {message}", c.name),
            ));
        }
    }
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    })?;
    Some((
        "Unschedulable".into(),
        format!(
            "not scheduled yet: {}",
            unschedulable.message.as_deref().unwrap_or("Unschedulable")
        ),
    ))
}

/// Why a Pod failed: its container's termination (reason, exit code, message), else the
/// Pod's own reason and message, else the container's last waiting reason.
pub fn failure(pod: &Pod) -> String {
    let status = pod.status.as_ref();
    let mut parts = Vec::new();
    if let Some(s) = miniray_status(pod)
        && let Some(state) = &s.state
    {
        if let Some(t) = &state.terminated {
            parts.push(format!(
                "container {} terminated ({}, exit code {}){}",
                s.name,
                t.reason.as_deref().unwrap_or("no reason"),
                t.exit_code,
                t.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ));
        } else if let Some(w) = &state.waiting {
            parts.push(format!(
                "container {} waiting ({}){}",
                s.name,
                w.reason.as_deref().unwrap_or("no reason"),
                w.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ));
        }
    }
    if let Some(status) = status
        && (status.reason.is_some() || status.message.is_some())
    {
        parts.push(format!(
            "{}{}",
            status.reason.as_deref().unwrap_or("Failed"),
            status
                .message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ));
    }
    if parts.is_empty() {
        "no reason given".into()
    } else {
        parts.join("; ")
    }
}

/// Whether the `miniray` container started before it terminated (as opposed to a container
/// that could not be started at all).
pub fn miniray_ran(pod: &Pod) -> bool {
    miniray_status(pod)
        .and_then(|s| s.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .is_some_and(|t| {
            t.started_at.is_some()
                && !matches!(
                    t.reason.as_deref(),
                    Some("StartError" | "ContainerCannotRun")
                )
        })
}
