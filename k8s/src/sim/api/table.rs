//! `Table` responses (`Accept: application/json;as=Table;…`), the server-side printing kubectl
//! asks for: Pods get kubectl's usual columns (NAME READY STATUS RESTARTS AGE, IP and NODE
//! for `-o wide`), Deployments theirs, every other kind NAME and AGE.

use serde_json::{Value, json};

use super::resources::ResourceType;

/// Which Table version the client accepts, if it asks for one.
pub fn wanted(accept: &str) -> Option<&'static str> {
    let wants = |version: &str| {
        accept.split(',').any(|part| {
            let params: Vec<&str> = part.split(';').map(str::trim).collect();
            params.contains(&"as=Table")
                && params.contains(&"g=meta.k8s.io")
                && params.contains(&format!("v={version}").as_str())
        })
    };
    if wants("v1") {
        Some("meta.k8s.io/v1")
    } else if wants("v1beta1") {
        Some("meta.k8s.io/v1beta1")
    } else {
        None
    }
}

fn column(name: &str, kind: &str, format: &str, description: &str, priority: i64) -> Value {
    json!({"name": name, "type": kind, "format": format, "description": description, "priority": priority})
}

/// How long ago an RFC 3339 time was, as kubectl prints ages (`45s`, `3m12s`, `5h`, `2d`).
pub fn age(since: Option<&str>) -> String {
    let Some(since) = since.and_then(|s| s.parse::<k8s_openapi::jiff::Timestamp>().ok()) else {
        return "<unknown>".to_string();
    };
    let seconds = k8s_openapi::jiff::Timestamp::now()
        .duration_since(since)
        .as_secs()
        .max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn str_at<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// kubectl's STATUS of a Pod: Terminating, a container's waiting or terminated reason, the
/// Pod's reason, or its phase.
fn pod_status(pod: &Value) -> String {
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        return "Terminating".to_string();
    }
    let mut status = str_at(pod, "/status/reason").to_string();
    if status.is_empty() {
        status = str_at(pod, "/status/phase").to_string();
    }
    let containers = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for container in &containers {
        let waiting = str_at(container, "/state/waiting/reason");
        let terminated = str_at(container, "/state/terminated/reason");
        if !waiting.is_empty() {
            status = waiting.to_string();
        } else if !terminated.is_empty() {
            status = terminated.to_string();
        }
    }
    status
}

fn pod_cells(pod: &Value) -> Vec<Value> {
    let total = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ready = statuses
        .iter()
        .filter(|c| c["ready"] == json!(true))
        .count();
    let restarts: i64 = statuses
        .iter()
        .filter_map(|c| c["restartCount"].as_i64())
        .sum();
    let or_none = |s: &str| {
        if s.is_empty() {
            "<none>".to_string()
        } else {
            s.to_string()
        }
    };
    vec![
        json!(str_at(pod, "/metadata/name")),
        json!(format!("{ready}/{total}")),
        json!(pod_status(pod)),
        json!(restarts),
        json!(age(pod
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str))),
        json!(or_none(str_at(pod, "/status/podIP"))),
        json!(or_none(str_at(pod, "/spec/nodeName"))),
        json!("<none>"),
        json!("<none>"),
    ]
}

fn deployment_cells(deployment: &Value) -> Vec<Value> {
    let number = |pointer: &str| {
        deployment
            .pointer(pointer)
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    vec![
        json!(str_at(deployment, "/metadata/name")),
        json!(format!(
            "{}/{}",
            number("/status/readyReplicas"),
            number("/spec/replicas")
        )),
        json!(number("/status/updatedReplicas")),
        json!(number("/status/availableReplicas")),
        json!(age(deployment
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str))),
    ]
}

fn service_cells(service: &Value) -> Vec<Value> {
    let or_none = |s: &str| {
        if s.is_empty() {
            "<none>".to_string()
        } else {
            s.to_string()
        }
    };
    let ports: Vec<String> = service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|ports| {
            ports
                .iter()
                .map(|p| {
                    let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                    format!(
                        "{}/{protocol}",
                        p.get("port").cloned().unwrap_or(Value::Null)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let selector: Vec<String> = service
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .map(|s| {
            s.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    vec![
        json!(str_at(service, "/metadata/name")),
        json!(str_at(service, "/spec/type")),
        json!(or_none(str_at(service, "/spec/clusterIP"))),
        json!("<none>"),
        json!(or_none(&ports.join(","))),
        json!(age(service
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str))),
        json!(or_none(&selector.join(","))),
    ]
}

fn namespace_cells(namespace: &Value) -> Vec<Value> {
    vec![
        json!(str_at(namespace, "/metadata/name")),
        json!(str_at(namespace, "/status/phase")),
        json!(age(namespace
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str))),
    ]
}

/// The cells of one object's row.
type Cells = fn(&Value) -> Vec<Value>;

/// The Table of `objects` (already filtered), with each row's object as
/// `PartialObjectMetadata` (kubectl's default `includeObject=Metadata`), or the whole object
/// for `includeObject=Object`.
pub fn render(
    resource: &ResourceType,
    api_version: &str,
    objects: &[Value],
    resource_version: u64,
    include_object: Option<&str>,
) -> Value {
    let name = column(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace.",
        0,
    );
    let age_column = column(
        "Age",
        "string",
        "",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
        0,
    );
    let (columns, cells): (Vec<Value>, Cells) = match (resource.group, resource.plural) {
        ("", "pods") => (
            vec![
                name,
                column(
                    "Ready",
                    "string",
                    "",
                    "The aggregate readiness state of this pod for accepting traffic.",
                    0,
                ),
                column(
                    "Status",
                    "string",
                    "",
                    "The aggregate status of the containers in this pod.",
                    0,
                ),
                column(
                    "Restarts",
                    "string",
                    "",
                    "The number of times the containers in this pod have been restarted.",
                    0,
                ),
                age_column,
                column("IP", "string", "", "IP address allocated to the pod.", 1),
                column(
                    "Node",
                    "string",
                    "",
                    "Name of the node this pod is scheduled on.",
                    1,
                ),
                column(
                    "Nominated Node",
                    "string",
                    "",
                    "Name of the node this pod is nominated to run on.",
                    1,
                ),
                column(
                    "Readiness Gates",
                    "string",
                    "",
                    "The readiness gates of this pod.",
                    1,
                ),
            ],
            pod_cells,
        ),
        ("apps", "deployments") => (
            vec![
                name,
                column(
                    "Ready",
                    "string",
                    "",
                    "Number of the pod with ready state",
                    0,
                ),
                column(
                    "Up-to-date",
                    "string",
                    "",
                    "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
                    0,
                ),
                column(
                    "Available",
                    "string",
                    "",
                    "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
                    0,
                ),
                age_column,
            ],
            deployment_cells,
        ),
        ("", "services") => (
            vec![
                name,
                column("Type", "string", "", "The type of the service.", 0),
                column(
                    "Cluster-IP",
                    "string",
                    "",
                    "The cluster IP of the service.",
                    0,
                ),
                column(
                    "External-IP",
                    "string",
                    "",
                    "The external IPs of the service.",
                    0,
                ),
                column("Port(s)", "string", "", "The ports of the service.", 0),
                age_column,
                column("Selector", "string", "", "The selector of the service.", 1),
            ],
            service_cells,
        ),
        ("", "namespaces") => (
            vec![
                name,
                column("Status", "string", "", "The status of the namespace.", 0),
                age_column,
            ],
            namespace_cells,
        ),
        _ => (vec![name, age_column], |object: &Value| {
            vec![
                json!(str_at(object, "/metadata/name")),
                json!(age(object
                    .pointer("/metadata/creationTimestamp")
                    .and_then(Value::as_str))),
            ]
        }),
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let row_object = match include_object {
                Some("None") => Value::Null,
                Some("Object") => object.clone(),
                _ => json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": object.get("metadata").cloned().unwrap_or(json!({})),
                }),
            };
            json!({"cells": cells(object), "object": row_object})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": api_version,
        "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::api::resources::PODS;

    #[test]
    fn kubectl_accept_headers_pick_a_table_version() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(wanted(kubectl), Some("meta.k8s.io/v1"));
        assert_eq!(
            wanted("application/json;as=Table;v=v1beta1;g=meta.k8s.io, application/json"),
            Some("meta.k8s.io/v1beta1")
        );
        assert_eq!(wanted("application/json"), None);
    }

    #[test]
    fn a_terminating_pod_says_so() {
        let pod = json!({"metadata": {"name": "p", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{}]}, "status": {"phase": "Running"}});
        let table = render(PODS, "meta.k8s.io/v1", &[pod], 7, None);
        assert_eq!(table["rows"][0]["cells"][1], "0/1");
        assert_eq!(table["rows"][0]["cells"][2], "Terminating");
        assert_eq!(table["metadata"]["resourceVersion"], "7");
    }
}
