//! The worker Pod of a node type: the default miniray builds, merged with the type's
//! `node_config` (a Pod template), with the identity fields the provider relies on set last.
//!
//! Invariants of every Pod built here:
//! - it carries the labels `miniray.io/cluster`, `miniray.io/node-type`,
//!   `miniray.io/launch-request`, `miniray.io/component: worker` and
//!   `app.kubernetes.io/managed-by: miniray`, `generateName: <cluster>-<type>-`, the
//!   provider's namespace and `restartPolicy: Never`, whatever `node_config` says: listing,
//!   idempotent launches and "a node that exits is gone" depend on them;
//! - it has a container named `miniray` (the node).
//!
//! Everything else in the default (image, command, env, resources...) may be overridden by
//! `node_config`, merged as [`crate::template::merge`] does.

use k8s_openapi::api::core::v1::Pod;
use miniray_autoscaler::config::NodeTypeConfig;
use miniray_common::config::env;
use serde_json::{Value, json};

use crate::config::KubernetesConfig;
use crate::names;

/// Why a node type's Pod cannot be built. `field` is the config path to the culprit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{field}`: {message}")]
pub struct PodError {
    pub field: String,
    pub message: String,
}

fn pod_error(field: String, message: impl Into<String>) -> PodError {
    PodError {
        field,
        message: message.into(),
    }
}

/// The volume holding the TLS material (from the token Secret) when TLS is on.
const TLS_VOLUME: &str = "miniray-tls";

/// What every worker Pod of a cluster shares.
#[derive(Debug, Clone)]
pub struct WorkerPodParams<'a> {
    pub cluster_name: &'a str,
    pub k8s: &'a KubernetesConfig,
    /// Mount the TLS material and point `MINIRAY_TLS_*` at it.
    pub tls: bool,
}

/// The Pod (not yet created) of one node of `node_type`, for the launch `request_id`.
pub fn worker_pod(
    params: &WorkerPodParams<'_>,
    node_type: &str,
    t: &NodeTypeConfig,
    request_id: &str,
) -> Result<Pod, PodError> {
    let field = format!("available_node_types.{node_type}.node_config");
    let mut pod = default_pod(params, node_type);
    let overlay = node_config_overlay(&field, &t.node_config)?;
    crate::template::merge(&mut pod, &overlay);
    impose_identity(params, node_type, request_id, &mut pod)?;
    let container = miniray_container(&mut pod)
        .ok_or_else(|| pod_error(field.clone(), "has no `miniray` container left"))?;
    let cpus = match t.resources.get("CPU") {
        n if n > 0.0 => Some(format_amount(n)),
        _ => limits_cpu(container)
            .map_err(|m| pod_error(format!("{field}.spec.containers.miniray.resources"), m))?
            .map(|n| n.to_string()),
    };
    fill_node_args(container, cpus.as_deref(), resources_arg(t));
    serde_json::from_value(pod).map_err(|e| pod_error(field, format!("not a valid Pod: {e}")))
}

/// `node_config` as a template overlay: `{metadata, spec}` (apiVersion and kind, if given,
/// must be a Pod's and are dropped).
fn node_config_overlay(field: &str, node_config: &Value) -> Result<Value, PodError> {
    let map = match node_config {
        Value::Null => return Ok(json!({})),
        Value::Object(map) => map,
        other => {
            return Err(pod_error(
                field.into(),
                format!("must be a Pod template ({{metadata, spec}}), not {other}"),
            ));
        }
    };
    let mut overlay = serde_json::Map::new();
    for (key, value) in map {
        match key.as_str() {
            "metadata" | "spec" => {
                if !value.is_object() && !value.is_null() {
                    return Err(pod_error(format!("{field}.{key}"), "must be a mapping"));
                }
                overlay.insert(key.clone(), value.clone());
            }
            "apiVersion" if value == "v1" => {}
            "kind" if value == "Pod" => {}
            _ => {
                return Err(pod_error(
                    format!("{field}.{key}"),
                    "not a field of a Pod template (metadata, spec)",
                ));
            }
        }
    }
    Ok(Value::Object(overlay))
}

/// The Pod of the plan's "Worker Pod" before `node_config`: `--num-cpus` is added after the
/// merge (it may come from the merged limits).
fn default_pod(params: &WorkerPodParams<'_>, node_type: &str) -> Value {
    let k8s = params.k8s;
    let head = format!(
        "{}:{}",
        names::service_dns(&names::head_service(params.cluster_name), &k8s.namespace),
        k8s.gcs_port
    );
    let mut env = vec![
        json!({"name": env::TOKEN, "valueFrom": {"secretKeyRef": {
            "name": names::token_secret(params.cluster_name), "key": names::TOKEN_KEY}}}),
        json!({"name": env::NODE_IP, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}),
        json!({"name": env::CLOUD_INSTANCE_ID,
               "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": env::NODE_TYPE, "value": node_type}),
    ];
    let mut container = json!({
        "name": names::CONTAINER_NAME,
        "image": k8s.image,
        "command": [
            names::MINIRAY_COMMAND, "start",
            "--address", head,
            "--node-ip-address", format!("$({})", env::NODE_IP),
            "--block",
        ],
    });
    if let Some(policy) = &k8s.image_pull_policy {
        container["imagePullPolicy"] = json!(policy);
    }
    let mut spec = json!({
        "restartPolicy": "Never",
        "automountServiceAccountToken": false,
    });
    if params.tls {
        for (var, key) in [
            (env::TLS_CERT, names::TLS_CERT_KEY),
            (env::TLS_KEY, names::TLS_KEY_KEY),
            (env::TLS_CA, names::TLS_CA_KEY),
        ] {
            env.push(json!({"name": var, "value": format!("{}/{key}", names::TLS_DIR)}));
        }
        container["volumeMounts"] =
            json!([{"name": TLS_VOLUME, "mountPath": names::TLS_DIR, "readOnly": true}]);
        let items: Vec<Value> = [names::TLS_CERT_KEY, names::TLS_KEY_KEY, names::TLS_CA_KEY]
            .iter()
            .map(|k| json!({"key": k, "path": k}))
            .collect();
        spec["volumes"] = json!([{"name": TLS_VOLUME, "secret": {
            "secretName": names::token_secret(params.cluster_name),
            "items": items,
        }}]);
    }
    container["env"] = Value::Array(env);
    spec["containers"] = json!([container]);
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {}, "spec": spec})
}

/// Sets what the provider's bookkeeping depends on, after the merge.
fn impose_identity(
    params: &WorkerPodParams<'_>,
    node_type: &str,
    request_id: &str,
    pod: &mut Value,
) -> Result<(), PodError> {
    if let Some(why) = label_value_error(request_id) {
        return Err(pod_error("request_id".into(), why));
    }
    let Some(pod) = pod.as_object_mut() else {
        return Err(pod_error("node_config".into(), "is not a mapping"));
    };
    pod.insert("apiVersion".into(), json!("v1"));
    pod.insert("kind".into(), json!("Pod"));
    let metadata = object_at(pod, "metadata");
    metadata.remove("name");
    metadata.insert(
        "generateName".into(),
        json!(names::worker_generate_name(params.cluster_name, node_type)),
    );
    metadata.insert("namespace".into(), json!(params.k8s.namespace));
    let labels = object_at(metadata, "labels");
    for (k, v) in [
        (names::LABEL_CLUSTER, params.cluster_name),
        (names::LABEL_NODE_TYPE, node_type),
        (names::LABEL_LAUNCH_REQUEST, request_id),
        (names::LABEL_COMPONENT, names::COMPONENT_WORKER),
        (names::LABEL_MANAGED_BY, names::MANAGED_BY),
    ] {
        labels.insert(k.into(), json!(v));
    }
    object_at(pod, "spec").insert("restartPolicy".into(), json!("Never"));
    Ok(())
}

/// The object under `key`, made one if it is missing or not an object.
fn object_at<'a>(
    map: &'a mut serde_json::Map<String, Value>,
    key: &str,
) -> &'a mut serde_json::Map<String, Value> {
    let slot = map.entry(key).or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    match slot {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

fn miniray_container(pod: &mut Value) -> Option<&mut Value> {
    pod.pointer_mut("/spec/containers")?
        .as_array_mut()?
        .iter_mut()
        .find(|c| c["name"] == names::CONTAINER_NAME)
}

/// Inserts `--num-cpus N` (when known) and `--resources JSON` before `--block` in the
/// default command line; a command `node_config` replaced is left as it is.
fn fill_node_args(container: &mut Value, cpus: Option<&str>, resources: String) {
    let Some(command) = container.get_mut("command").and_then(Value::as_array_mut) else {
        return;
    };
    let is_ours = command.first().is_some_and(|c| c == names::MINIRAY_COMMAND)
        && command.get(1).is_some_and(|c| c == "start")
        && !command
            .iter()
            .any(|a| a == "--num-cpus" || a == "--resources");
    if !is_ours {
        return;
    }
    let at = command
        .iter()
        .position(|a| a == "--block")
        .unwrap_or(command.len());
    let mut args = Vec::new();
    if let Some(cpus) = cpus {
        args.extend([json!("--num-cpus"), json!(cpus)]);
    }
    args.extend([json!("--resources"), json!(resources)]);
    command.splice(at..at, args);
}

/// `--resources` JSON: the type's resources other than CPU (CPU goes to `--num-cpus`).
fn resources_arg(t: &NodeTypeConfig) -> String {
    let others: std::collections::BTreeMap<&str, f64> =
        t.resources.iter().filter(|(k, _)| *k != "CPU").collect();
    serde_json::to_string(&others).unwrap_or_else(|_| "{}".into())
}

/// An amount as `miniray start` takes it: `2`, `0.5`.
fn format_amount(n: f64) -> String {
    n.to_string()
}

/// The `miniray` container's CPU limit rounded up to whole CPUs, if it has one.
fn limits_cpu(container: &Value) -> Result<Option<u64>, String> {
    match container.pointer("/resources/limits/cpu") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(q)) => cpu_ceil(q).map(Some),
        Some(Value::Number(n)) => cpu_ceil(&n.to_string()).map(Some),
        Some(other) => Err(format!("limits.cpu {other} is not a quantity")),
    }
}

/// A Kubernetes CPU quantity (`"2"`, `"1500m"`, `"0.5"`, `"1e3"`, `"2k"`) rounded up to
/// whole CPUs.
pub fn cpu_ceil(quantity: &str) -> Result<u64, String> {
    let bad = || format!("limits.cpu {quantity:?} is not a Kubernetes quantity");
    let q = quantity.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    if number.is_empty() || number.starts_with('-') {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    // Divide for negative powers of ten: a division of exact integers is exact when the
    // quotient is (3000m is 3, not 3.0000000000000004).
    let amount = match suffix {
        "" => value,
        "n" => value / 1e9,
        "u" => value / 1e6,
        "m" => value / 1e3,
        "k" => value * 1e3,
        "M" => value * 1e6,
        "G" => value * 1e9,
        "T" => value * 1e12,
        "P" => value * 1e15,
        "E" => value * 1e18,
        "Ki" => value * 1024.0,
        "Mi" => value * 1024f64.powi(2),
        "Gi" => value * 1024f64.powi(3),
        "Ti" => value * 1024f64.powi(4),
        "Pi" => value * 1024f64.powi(5),
        "Ei" => value * 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().map_err(|_| bad())?;
            if exp < 0 {
                value / 10f64.powi(-exp)
            } else {
                value * 10f64.powi(exp)
            }
        }
        _ => return Err(bad()),
    };
    if !amount.is_finite() || amount > u32::MAX as f64 {
        return Err(bad());
    }
    Ok(amount.ceil() as u64)
}

/// Why `value` cannot be a label value (at most 63 of alphanumerics, `-`, `_`, `.`,
/// starting and ending alphanumeric), if it cannot.
pub fn label_value_error(value: &str) -> Option<String> {
    if value.len() > 63 {
        return Some(format!("{value:?} is longer than 63 characters"));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let edge = |c: Option<char>| c.is_none_or(|c| c.is_ascii_alphanumeric());
    if !value.chars().all(ok) || !edge(value.chars().next()) || !edge(value.chars().last()) {
        return Some(format!("{value:?} is not a valid label value"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities_round_up() {
        assert_eq!(cpu_ceil("2"), Ok(2));
        assert_eq!(cpu_ceil("1500m"), Ok(2));
        assert_eq!(cpu_ceil("3000m"), Ok(3));
        assert_eq!(cpu_ceil("0.5"), Ok(1));
        assert_eq!(cpu_ceil("100m"), Ok(1));
        assert_eq!(cpu_ceil("2.0"), Ok(2));
        assert_eq!(cpu_ceil("1e1"), Ok(10));
        assert_eq!(cpu_ceil("2k"), Ok(2000));
        assert_eq!(cpu_ceil("0"), Ok(0));
        for bad in ["", "m", "two", "-1", "1x", "1.5.5", "1e"] {
            assert!(cpu_ceil(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn label_values() {
        assert_eq!(label_value_error("req-0a1b"), None);
        assert_eq!(label_value_error(""), None);
        assert!(label_value_error("a b").is_some());
        assert!(label_value_error("-a").is_some());
        assert!(label_value_error(&"a".repeat(64)).is_some());
    }
}
