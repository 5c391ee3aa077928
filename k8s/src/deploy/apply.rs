//! Applies manifests idempotently, one object at a time, in order.
//!
//! For each object: GET it; absent → create; its [`HASH_ANNOTATION`] equal to ours →
//! nothing is written; otherwise → replace (PUT with the live `resourceVersion`), and on a
//! 409 (someone wrote it in between, or created it after our GET) start over from the GET.
//! So a second `up` with the same config only reads, and a changed config rewrites exactly
//! the objects whose desired state changed.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DynamicObject, PostParams};

use super::manifests::{Kind, Manifest};
use super::{ClusterSpec, DeployError, HASH_ANNOTATION, api_code};
use crate::names;

/// Writes of one object that may conflict before `apply` gives up.
pub const MAX_ATTEMPTS: u32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Created,
    Updated,
    Unchanged,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Unchanged => "unchanged",
        }
    }
}

/// What `apply` did to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub action: Action,
}

impl std::fmt::Display for Applied {
    /// `deployment/demo-head created`, as kubectl says it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} {}",
            self.kind.as_str().to_lowercase(),
            self.name,
            self.action.as_str()
        )
    }
}

/// The token of the cluster's live Secret, if it exists (a later `up` keeps it, so running
/// drivers and worker Pods keep working). A Secret without a readable token is an error,
/// not a reason to replace it.
pub async fn existing_token(
    client: &kube::Client,
    spec: &ClusterSpec,
) -> Result<Option<String>, DeployError> {
    let name = names::token_secret(spec.cluster_name());
    let api: Api<Secret> = Api::namespaced(client.clone(), spec.namespace());
    let secret = api
        .get_opt(&name)
        .await
        .map_err(|source| DeployError::Api {
            action: "reading",
            kind: "Secret",
            namespace: spec.namespace().to_string(),
            name: name.clone(),
            cause: Box::new(source),
        })?;
    let Some(secret) = secret else {
        return Ok(None);
    };
    let token = secret
        .data
        .as_ref()
        .and_then(|d| d.get(names::TOKEN_KEY))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    match token {
        Some(t) => Ok(Some(t)),
        None => Err(DeployError::BadToken {
            namespace: spec.namespace().to_string(),
            name,
        }),
    }
}

/// Applies `manifests` in order, calling `on_each` after each object; stops at the first
/// failure (what comes later may depend on it).
pub async fn apply(
    client: &kube::Client,
    manifests: &[Manifest],
    on_each: &mut (dyn FnMut(&Applied) + Send),
) -> Result<Vec<Applied>, DeployError> {
    let mut done = Vec::with_capacity(manifests.len());
    for m in manifests {
        let action = apply_one(client, m).await?;
        tracing::debug!(kind = %m.kind, name = %m.name, action = action.as_str(), "applied");
        let applied = Applied {
            kind: m.kind,
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            action,
        };
        on_each(&applied);
        done.push(applied);
    }
    Ok(done)
}

async fn apply_one(client: &kube::Client, m: &Manifest) -> Result<Action, DeployError> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &m.namespace, &m.kind.api_resource());
    let api_error = |action, source| DeployError::Api {
        action,
        kind: m.kind.as_str(),
        namespace: m.namespace.clone(),
        name: m.name.clone(),
        cause: Box::new(source),
    };
    let desired: DynamicObject = serde_json::from_value(m.object.clone())
        .map_err(|e| DeployError::Yaml(format!("{} {}: {e}", m.kind, m.name)))?;
    for attempt in 1..=MAX_ATTEMPTS {
        let live = api
            .get_opt(&m.name)
            .await
            .map_err(|e| api_error("reading", e))?;
        let result = match live {
            None => api
                .create(&PostParams::default(), &desired)
                .await
                .map(|_| Action::Created)
                .map_err(|e| ("creating", e)),
            Some(live) => {
                let live_hash = live
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(HASH_ANNOTATION));
                if live_hash.map(String::as_str) == Some(m.hash()) {
                    return Ok(Action::Unchanged);
                }
                let mut replacement = desired.clone();
                replacement.metadata.resource_version = live.metadata.resource_version.clone();
                if m.kind == Kind::Service {
                    keep_cluster_ip(&mut replacement, &live);
                }
                api.replace(&m.name, &PostParams::default(), &replacement)
                    .await
                    .map(|_| Action::Updated)
                    .map_err(|e| ("replacing", e))
            }
        };
        match result {
            Ok(action) => return Ok(action),
            Err((action, e)) if api_code(&e) == Some(409) => {
                tracing::info!(kind = %m.kind, name = %m.name, attempt, "conflict while {action}; reading it again");
            }
            Err((action, e)) => return Err(api_error(action, e)),
        }
    }
    Err(DeployError::Conflict {
        kind: m.kind.as_str(),
        namespace: m.namespace.clone(),
        name: m.name.clone(),
        attempts: MAX_ATTEMPTS,
    })
}

/// A Service's cluster IP is the server's choice and immutable: a replacement keeps it.
fn keep_cluster_ip(replacement: &mut DynamicObject, live: &DynamicObject) {
    for field in ["clusterIP", "clusterIPs"] {
        if let Some(value) = live.data.pointer(&format!("/spec/{field}"))
            && let Some(spec) = replacement
                .data
                .get_mut("spec")
                .and_then(|s| s.as_object_mut())
        {
            spec.insert(field.to_string(), value.clone());
        }
    }
}
