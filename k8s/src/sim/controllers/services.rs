//! Service name resolution: a Service with a selector resolves to one of its ready endpoints.
//!
//! The simulator has no kube-proxy and no virtual IPs, so a Service's name resolves straight
//! to one ready Pod's IP, and `spec.clusterIP` reports that IP (or `None` while there is no
//! ready endpoint) so `kubectl get svc` shows where the name points.
//!
//! Invariant (stable choice): while the Pod a Service points at stays ready, the Service keeps
//! pointing at it; otherwise it points at the oldest ready Pod (ties by name). The current
//! choice is read back from `spec.clusterIP`, so it survives a controller restart.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

use super::ControllersError;
use super::deployment::{is_ready, is_terminating};
use super::hosts::HostEntry;

/// What `spec.clusterIP` says while a Service has no ready endpoint.
pub const NO_ENDPOINT: &str = "None";

/// The Service's selector, if it has a non-empty one (a Service without one is managed by
/// hand in Kubernetes and ignored here).
fn selector(service: &Service) -> Option<&BTreeMap<String, String>> {
    service
        .spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
}

/// The Pod's IP if it can serve: running, Ready, not terminating, with an IP.
fn serving_ip(pod: &Pod) -> Option<&str> {
    let status = pod.status.as_ref()?;
    if is_terminating(pod) || status.phase.as_deref() != Some("Running") || !is_ready(pod) {
        return None;
    }
    status.pod_ip.as_deref().filter(|ip| !ip.is_empty())
}

/// The IP `service` should resolve to among `pods` (any namespace; filtered here).
pub fn endpoint(service: &Service, pods: &[Pod]) -> Option<String> {
    let selector = selector(service)?;
    let namespace = service.namespace();
    let mut ready: Vec<(&Pod, &str)> = pods
        .iter()
        .filter(|p| p.namespace() == namespace)
        .filter(|p| {
            let labels = p.labels();
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .filter_map(|p| serving_ip(p).map(|ip| (p, ip)))
        .collect();
    let current = service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref());
    if let Some(current) = current
        && ready.iter().any(|(_, ip)| *ip == current)
    {
        return Some(current.to_string());
    }
    ready.sort_by(|(a, _), (b, _)| {
        a.creation_timestamp()
            .cmp(&b.creation_timestamp())
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
    ready.first().map(|(_, ip)| ip.to_string())
}

/// The desired `spec.clusterIP` of each selector Service, keyed by (namespace, name).
pub fn desired_cluster_ips(
    services: &[Service],
    pods: &[Pod],
) -> BTreeMap<(String, String), String> {
    services
        .iter()
        .filter(|s| selector(s).is_some())
        .map(|s| {
            let key = (
                s.namespace().unwrap_or_else(|| "default".into()),
                s.name_any(),
            );
            (key, endpoint(s, pods).unwrap_or_else(|| NO_ENDPOINT.into()))
        })
        .collect()
}

/// Hosts entries for the Services whose desired address is an endpoint (sorted).
pub fn host_entries(desired: &BTreeMap<(String, String), String>) -> Vec<HostEntry> {
    desired
        .iter()
        .filter(|(_, ip)| ip.as_str() != NO_ENDPOINT)
        .map(|((namespace, service), ip)| HostEntry {
            namespace: namespace.clone(),
            service: service.clone(),
            ip: ip.clone(),
        })
        .collect()
}

/// Patches `spec.clusterIP` of every Service whose desired value differs from its own.
pub async fn update_cluster_ips(
    client: &Client,
    services: &[Service],
    desired: &BTreeMap<(String, String), String>,
) -> Result<(), ControllersError> {
    for service in services {
        let namespace = service.namespace().unwrap_or_else(|| "default".into());
        let name = service.name_any();
        let Some(want) = desired.get(&(namespace.clone(), name.clone())) else {
            continue;
        };
        let have = service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref());
        if have == Some(want.as_str()) {
            continue;
        }
        let api: Api<Service> = Api::namespaced(client.clone(), &namespace);
        let patch = serde_json::json!({ "spec": { "clusterIP": want } });
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        tracing::info!(service = %name, %namespace, cluster_ip = %want, "Service now points at its endpoint");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn service(name: &str, cluster_ip: Option<&str>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(BTreeMap::from([("app".into(), name.into())])),
                cluster_ip: cluster_ip.map(Into::into),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }

    fn pod(name: &str, app: &str, ip: &str, age: i64, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                labels: Some(BTreeMap::from([("app".into(), app.into())])),
                creation_timestamp: Some(Time(
                    k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 - age).expect("time"),
                )),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some(ip.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn the_oldest_ready_matching_pod_is_chosen() {
        let pods = vec![
            pod("young", "web", "10.0.0.2", 1, true),
            pod("old", "web", "10.0.0.1", 50, true),
            pod("older-unready", "web", "10.0.0.3", 90, false),
            pod("other-app", "db", "10.0.0.4", 99, true),
        ];
        assert_eq!(
            endpoint(&service("web", None), &pods).as_deref(),
            Some("10.0.0.1")
        );
    }

    #[test]
    fn the_current_endpoint_is_kept_while_ready() {
        let pods = vec![
            pod("young", "web", "10.0.0.2", 1, true),
            pod("old", "web", "10.0.0.1", 50, true),
        ];
        assert_eq!(
            endpoint(&service("web", Some("10.0.0.2")), &pods).as_deref(),
            Some("10.0.0.2")
        );
        assert_eq!(
            endpoint(&service("web", Some("10.0.0.9")), &pods).as_deref(),
            Some("10.0.0.1")
        );
    }

    #[test]
    fn terminating_pending_and_ipless_pods_do_not_serve() {
        let mut terminating = pod("a", "web", "10.0.0.1", 5, true);
        terminating.metadata.deletion_timestamp = terminating.metadata.creation_timestamp.clone();
        let mut pending = pod("b", "web", "10.0.0.2", 5, true);
        pending.status.as_mut().expect("status").phase = Some("Pending".into());
        let ipless = pod("c", "web", "", 5, true);
        assert_eq!(
            endpoint(&service("web", None), &[terminating, pending, ipless]),
            None
        );
    }

    #[test]
    fn desired_addresses_and_entries() {
        let mut no_selector = service("manual", None);
        no_selector.spec.as_mut().expect("spec").selector = None;
        let services = vec![service("web", None), service("db", None), no_selector];
        let pods = vec![pod("w", "web", "10.0.0.1", 5, true)];
        let desired = desired_cluster_ips(&services, &pods);
        assert_eq!(desired.len(), 2);
        assert_eq!(desired[&("default".into(), "db".into())], NO_ENDPOINT);
        assert_eq!(desired[&("default".into(), "web".into())], "10.0.0.1");
        let entries = host_entries(&desired);
        assert_eq!(
            entries,
            vec![HostEntry {
                namespace: "default".into(),
                service: "web".into(),
                ip: "10.0.0.1".into()
            }]
        );
    }
}
