//! Garbage collection: a Pod whose controller ownerReference names a Deployment that no
//! longer exists is deleted (the real garbage collector's background propagation, for the
//! one owner kind the simulator creates).
//!
//! Invariant: a Pod is deleted only after a GET of its owner by name says 404, or returns an
//! object with another uid (the owner was deleted and re-created), so a stale list never
//! costs a live Deployment its Pods.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use kube::{Api, Client, ResourceExt};

use super::ControllersError;
use super::deployment::is_terminating;

/// The Deployment (name, uid) controlling `pod`, if any.
pub fn controlling_deployment(pod: &Pod) -> Option<(&str, &str)> {
    pod.owner_references()
        .iter()
        .find(|r| r.controller == Some(true) && r.kind == "Deployment")
        .map(|r| (r.name.as_str(), r.uid.as_str()))
}

/// Pods (not already terminating) whose controlling Deployment is not in `deployments`
/// (matched by namespace and uid): the candidates, to be confirmed by a GET.
pub fn orphan_candidates<'a>(pods: &'a [Pod], deployments: &[Deployment]) -> Vec<&'a Pod> {
    pods.iter()
        .filter(|pod| !is_terminating(pod))
        .filter(|pod| {
            controlling_deployment(pod).is_some_and(|(_, uid)| {
                !deployments
                    .iter()
                    .any(|d| d.uid().as_deref() == Some(uid) && d.namespace() == pod.namespace())
            })
        })
        .collect()
}

/// Deletes the orphans among `pods`. `deployments` must have been listed **after** `pods`, so
/// every owner a listed Pod had at list time is either in it or truly gone.
pub async fn collect(
    client: &Client,
    pods: &[Pod],
    deployments: &[Deployment],
) -> Result<(), ControllersError> {
    for pod in orphan_candidates(pods, deployments) {
        let Some((owner, uid)) = controlling_deployment(pod) else {
            continue;
        };
        let namespace = pod.namespace().unwrap_or_else(|| "default".into());
        let owners: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
        let gone = match owners.get_opt(owner).await? {
            None => true,
            Some(found) => found.uid().as_deref() != Some(uid),
        };
        if !gone {
            continue;
        }
        let name = pod.name_any();
        let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {
                tracing::info!(pod = %name, %namespace, %owner, "deleted a Pod whose Deployment is gone")
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn pod(name: &str, owner_uid: Option<&str>, controller: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                owner_references: owner_uid.map(|uid| {
                    vec![OwnerReference {
                        api_version: "apps/v1".into(),
                        kind: "Deployment".into(),
                        name: "demo-head".into(),
                        uid: uid.into(),
                        controller: Some(controller),
                        block_owner_deletion: None,
                    }]
                }),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    fn deployment(uid: &str, namespace: &str) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("demo-head".into()),
                namespace: Some(namespace.into()),
                uid: Some(uid.into()),
                ..ObjectMeta::default()
            },
            ..Deployment::default()
        }
    }

    #[test]
    fn only_pods_of_missing_controllers_are_candidates() {
        let pods = vec![
            pod("owned", Some("u1"), true),
            pod("orphan", Some("u2"), true),
            pod("bare", None, false),
            pod("not-controller", Some("u3"), false),
        ];
        let names: Vec<String> = orphan_candidates(&pods, &[deployment("u1", "default")])
            .iter()
            .map(|p| p.name_any())
            .collect();
        assert_eq!(names, vec!["orphan".to_string()]);
    }

    #[test]
    fn an_owner_in_another_namespace_does_not_count() {
        let pods = vec![pod("owned", Some("u1"), true)];
        assert_eq!(
            orphan_candidates(&pods, &[deployment("u1", "other")]).len(),
            1
        );
    }
}
