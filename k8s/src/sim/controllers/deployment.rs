//! The Deployment controller: keeps `spec.replicas` live Pods of a Deployment's current
//! template and reports them in `status`.
//!
//! Simplifications against the real one (documented, enough for miniray's head and Redis):
//! Pods are owned by the Deployment directly (no ReplicaSets); every template change rolls
//! out as `Recreate` (old Pods are deleted and new ones are created only once no old Pod is
//! still running), whatever `spec.strategy` says; orphaned Pods matching the selector are not
//! adopted; `minReadySeconds` is ignored (available = ready).
//!
//! Invariant after a pass converges: the Deployment owns exactly `spec.replicas` Pods of its
//! current template hash that are neither terminating nor terminal. Terminal (Failed,
//! Succeeded) Pods are deleted and replaced, as a Deployment's Pods are meant to run forever.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};

use super::ControllersError;

/// The label carrying the hash of the template a Pod was made from (as the real controller).
pub const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// Letters of a template hash: lowercase alphanumerics without vowels and look-alikes (the
/// real controller's alphabet), so a hash never spells a word.
const HASH_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
const HASH_LEN: usize = 10;

/// A stable 10-character hash of `template`: FNV-1a over its JSON (struct fields in a fixed
/// order, maps sorted), so it is the same in every process and across restarts.
pub fn template_hash(template: &PodTemplateSpec) -> String {
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let base = HASH_ALPHABET.len() as u64;
    (0..HASH_LEN)
        .map(|_| {
            let c = HASH_ALPHABET[(hash % base) as usize] as char;
            hash /= base;
            c
        })
        .collect()
}

/// What one pass does to one Deployment.
#[derive(Debug, PartialEq)]
pub struct Plan {
    /// New Pods of the current template to create.
    pub create: usize,
    /// Names of owned Pods to delete (terminal, of an old template, or surplus).
    pub delete: Vec<String>,
    /// The status describing the Pods as they were found.
    pub status: DeploymentStatus,
}

/// Whether `pod`'s controller ownerReference is the Deployment with `uid`.
pub fn owned_by(pod: &Pod, uid: &str) -> bool {
    pod.owner_references()
        .iter()
        .any(|r| r.controller == Some(true) && r.kind == "Deployment" && r.uid == uid)
}

pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

pub fn is_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), Some("Failed" | "Succeeded"))
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

/// Whether the Pod's `Ready` condition is `True`.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn hash_of(pod: &Pod) -> Option<&str> {
    pod.labels().get(TEMPLATE_HASH_LABEL).map(String::as_str)
}

/// Decides creates, deletes and status for `deployment` given the Pods it owns.
pub fn plan(deployment: &Deployment, owned: &[&Pod]) -> Plan {
    let spec = deployment.spec.as_ref();
    let replicas = spec.and_then(|s| s.replicas).unwrap_or(1).max(0) as usize;
    let current = spec.map(|s| template_hash(&s.template)).unwrap_or_default();
    let is_current = |pod: &Pod| hash_of(pod) == Some(current.as_str());
    let live = |pod: &Pod| !is_terminating(pod) && !is_terminal(pod);

    let mut delete: Vec<String> = owned
        .iter()
        .filter(|p| !is_terminating(p) && (is_terminal(p) || !is_current(p)))
        .map(|p| p.name_any())
        .collect();

    // Recreate: an old Pod still running (terminating or not) holds back the new ones.
    let old_running = owned.iter().any(|p| !is_current(p) && !is_terminal(p));
    let mut active: Vec<&Pod> = owned
        .iter()
        .copied()
        .filter(|p| is_current(p) && live(p))
        .collect();
    let mut create = 0;
    if !old_running && active.len() < replicas {
        create = replicas - active.len();
    } else if active.len() > replicas {
        // Scale down the least useful first: not ready before ready, newest before oldest.
        active.sort_by(|a, b| {
            is_ready(a)
                .cmp(&is_ready(b))
                .then_with(|| b.creation_timestamp().cmp(&a.creation_timestamp()))
                .then_with(|| a.name_any().cmp(&b.name_any()))
        });
        delete.extend(
            active[..active.len() - replicas]
                .iter()
                .map(|p| p.name_any()),
        );
    }

    let count = |f: &dyn Fn(&Pod) -> bool| owned.iter().filter(|p| f(p)).count() as i32;
    let ready = count(&|p| live(p) && is_ready(p));
    let status = DeploymentStatus {
        observed_generation: deployment.metadata.generation,
        replicas: Some(count(&|p| live(p))),
        updated_replicas: Some(count(&|p| live(p) && is_current(p))),
        ready_replicas: Some(ready),
        available_replicas: Some(ready),
        unavailable_replicas: Some((replicas as i32 - ready).max(0)),
        conditions: Some(vec![available_condition(ready >= replicas as i32)]),
        ..DeploymentStatus::default()
    };
    Plan {
        create,
        delete,
        status,
    }
}

/// The `Available` condition (what `kubectl wait --for=condition=Available` reads), without
/// times: [`reconcile`] keeps the stored times while the status does not change.
fn available_condition(available: bool) -> DeploymentCondition {
    let (status, reason, message) = if available {
        (
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
        )
    } else {
        (
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        )
    };
    DeploymentCondition {
        type_: "Available".into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        ..DeploymentCondition::default()
    }
}

/// The `Available` condition's status in `status`, if it has one.
fn available_status(status: &DeploymentStatus) -> Option<&str> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Available")
        .map(|c| c.status.as_str())
}

/// Gives the conditions of `new` times: those of `old`'s condition of the same type and
/// status if there is one (nothing changed), else now.
fn stamp_conditions(new: &mut DeploymentStatus, old: Option<&DeploymentStatus>) {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let old = old.and_then(|o| o.conditions.as_ref());
    for condition in new.conditions.iter_mut().flatten() {
        let same = old.and_then(|o| {
            o.iter()
                .find(|c| c.type_ == condition.type_ && c.status == condition.status)
        });
        condition.last_transition_time = Some(
            same.and_then(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone()),
        );
        condition.last_update_time = Some(
            same.and_then(|c| c.last_update_time.clone())
                .unwrap_or_else(|| now.clone()),
        );
    }
}

/// A new Pod of `deployment`'s current template: named `<deployment>-<hash>-<5 random>` by
/// the server (generateName), labelled with the hash, controlled by the Deployment.
pub fn new_pod(deployment: &Deployment) -> Result<Pod, ControllersError> {
    let name = deployment.name_any();
    let uid = deployment
        .uid()
        .ok_or_else(|| ControllersError::Invalid(format!("Deployment {name} has no uid")))?;
    let template = deployment
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .ok_or_else(|| ControllersError::Invalid(format!("Deployment {name} has no spec")))?;
    let hash = template_hash(&template);
    let meta = template.metadata.unwrap_or_default();
    let mut labels: BTreeMap<String, String> = meta.labels.unwrap_or_default();
    labels.insert(TEMPLATE_HASH_LABEL.into(), hash.clone());
    Ok(Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-{hash}-")),
            namespace: deployment.namespace(),
            labels: Some(labels),
            annotations: meta.annotations,
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name,
                uid,
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    })
}

/// Whether two statuses say the same about the fields this controller sets.
fn same_status(a: Option<&DeploymentStatus>, b: &DeploymentStatus) -> bool {
    a.is_some_and(|a| {
        a.observed_generation == b.observed_generation
            && a.replicas.unwrap_or(0) == b.replicas.unwrap_or(0)
            && a.updated_replicas.unwrap_or(0) == b.updated_replicas.unwrap_or(0)
            && a.ready_replicas.unwrap_or(0) == b.ready_replicas.unwrap_or(0)
            && a.available_replicas.unwrap_or(0) == b.available_replicas.unwrap_or(0)
            && a.unavailable_replicas.unwrap_or(0) == b.unavailable_replicas.unwrap_or(0)
            && available_status(a) == available_status(b)
    })
}

/// One pass over one Deployment: deletes, creates, then the status, all through the API.
/// `pods` is every Pod of the Deployment's namespace (or more), listed after the Deployment.
pub async fn reconcile(
    client: &Client,
    deployment: &Deployment,
    pods: &[Pod],
) -> Result<(), ControllersError> {
    let name = deployment.name_any();
    let namespace = deployment.namespace().unwrap_or_else(|| "default".into());
    let Some(uid) = deployment.uid() else {
        return Err(ControllersError::Invalid(format!(
            "Deployment {name} has no uid"
        )));
    };
    let owned: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()) && owned_by(p, &uid))
        .collect();
    let mut plan = plan(deployment, &owned);
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), &namespace);

    for pod in &plan.delete {
        match pod_api.delete(pod, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(deployment = %name, %namespace, pod = %pod, "deleted a Pod"),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error.into()),
        }
    }
    for _ in 0..plan.create {
        let created = pod_api
            .create(&PostParams::default(), &new_pod(deployment)?)
            .await?;
        tracing::info!(deployment = %name, %namespace, pod = %created.name_any(), "created a Pod");
    }
    if !same_status(deployment.status.as_ref(), &plan.status) {
        stamp_conditions(&mut plan.status, deployment.status.as_ref());
        let api: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
        let patch = serde_json::json!({ "status": plan.status });
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        tracing::debug!(deployment = %name, %namespace, status = ?plan.status, "updated the status");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentSpec;
    use k8s_openapi::api::core::v1::{Container, PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

    fn deployment(replicas: i32, image: &str) -> Deployment {
        let labels = BTreeMap::from([("app".to_string(), "demo".to_string())]);
        Deployment {
            metadata: ObjectMeta {
                name: Some("demo-head".into()),
                namespace: Some("default".into()),
                uid: Some("uid-1".into()),
                generation: Some(3),
                ..ObjectMeta::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some(labels.clone()),
                    ..LabelSelector::default()
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "main".into(),
                            image: Some(image.into()),
                            ..Container::default()
                        }],
                        ..PodSpec::default()
                    }),
                },
                ..DeploymentSpec::default()
            }),
            status: None,
        }
    }

    fn pod(dep: &Deployment, name: &str, age: i64, phase: &str, ready: bool) -> Pod {
        let mut pod = new_pod(dep).expect("pod");
        pod.metadata.name = Some(name.into());
        pod.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 - age).expect("time"),
        ));
        pod.status = Some(PodStatus {
            phase: Some(phase.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        });
        pod
    }

    #[test]
    fn hashes_are_stable_short_and_follow_the_template() {
        let a = template_hash(&deployment(1, "x").spec.expect("spec").template);
        assert_eq!(a.len(), 10);
        assert!(a.bytes().all(|c| HASH_ALPHABET.contains(&c)));
        assert_eq!(
            a,
            template_hash(&deployment(5, "x").spec.expect("spec").template)
        );
        assert_ne!(
            a,
            template_hash(&deployment(1, "y").spec.expect("spec").template)
        );
    }

    #[test]
    fn new_pods_carry_labels_hash_and_owner() {
        let dep = deployment(1, "x");
        let pod = new_pod(&dep).expect("pod");
        let hash = template_hash(&dep.spec.as_ref().expect("spec").template);
        assert_eq!(
            pod.metadata.generate_name.as_deref(),
            Some(format!("demo-head-{hash}-").as_str())
        );
        assert_eq!(pod.labels()["app"], "demo");
        assert_eq!(pod.labels()[TEMPLATE_HASH_LABEL], hash);
        assert!(owned_by(&pod, "uid-1"));
        assert!(!owned_by(&pod, "uid-2"));
        assert_eq!(pod.namespace().as_deref(), Some("default"));
    }

    #[test]
    fn missing_pods_are_created() {
        let dep = deployment(2, "x");
        let p = pod(&dep, "a", 10, "Running", true);
        let plan = plan(&dep, &[&p]);
        assert_eq!(plan.create, 1);
        assert!(plan.delete.is_empty());
        assert_eq!(plan.status.replicas, Some(1));
        assert_eq!(plan.status.ready_replicas, Some(1));
        assert_eq!(plan.status.observed_generation, Some(3));
        assert_eq!(available_status(&plan.status), Some("False"));
        let full = pod(&dep, "b", 5, "Running", true);
        let plan2 = super::plan(&dep, &[&p, &full]);
        assert_eq!(available_status(&plan2.status), Some("True"));
    }

    #[test]
    fn terminal_pods_are_deleted_and_replaced_terminating_ones_not_counted() {
        let dep = deployment(1, "x");
        let failed = pod(&dep, "failed", 10, "Failed", false);
        let mut going = pod(&dep, "going", 5, "Running", true);
        going.metadata.deletion_timestamp = going.metadata.creation_timestamp.clone();
        let plan = plan(&dep, &[&failed, &going]);
        assert_eq!(plan.delete, vec!["failed".to_string()]);
        assert_eq!(plan.create, 1);
        assert_eq!(plan.status.replicas, Some(0));
        assert_eq!(plan.status.ready_replicas, Some(0));
    }

    #[test]
    fn surplus_pods_go_unready_and_newest_first() {
        let dep = deployment(1, "x");
        let old_ready = pod(&dep, "old-ready", 30, "Running", true);
        let new_ready = pod(&dep, "new-ready", 10, "Running", true);
        let unready = pod(&dep, "unready", 40, "Pending", false);
        let plan = plan(&dep, &[&old_ready, &new_ready, &unready]);
        assert_eq!(plan.create, 0);
        assert_eq!(
            plan.delete,
            vec!["unready".to_string(), "new-ready".to_string()]
        );
    }

    #[test]
    fn a_changed_template_recreates() {
        let old = deployment(1, "x");
        let new = deployment(1, "y");
        let running = pod(&old, "old", 10, "Running", true);
        let first = plan(&new, &[&running]);
        assert_eq!(first.delete, vec!["old".to_string()]);
        assert_eq!(first.create, 0, "no new Pod while an old one runs");
        assert_eq!(first.status.updated_replicas, Some(0));

        let mut terminating = running.clone();
        terminating.metadata.deletion_timestamp = running.metadata.creation_timestamp.clone();
        let second = plan(&new, &[&terminating]);
        assert!(second.delete.is_empty());
        assert_eq!(second.create, 0, "still waiting for the old Pod to stop");

        let third = plan(&new, &[]);
        assert_eq!(third.create, 1);
    }

    #[test]
    fn zero_replicas_delete_everything() {
        let dep = deployment(0, "x");
        let p = pod(&dep, "a", 10, "Running", true);
        let plan = plan(&dep, &[&p]);
        assert_eq!(plan.delete, vec!["a".to_string()]);
        assert_eq!(plan.create, 0);
    }

    #[test]
    fn status_comparison_ignores_unset_as_zero() {
        let status = DeploymentStatus {
            observed_generation: Some(1),
            replicas: Some(0),
            ..DeploymentStatus::default()
        };
        let mut stored = status.clone();
        stored.replicas = None;
        assert!(same_status(Some(&stored), &status));
        assert!(!same_status(None, &status));
        stored.observed_generation = Some(2);
        assert!(!same_status(Some(&stored), &status));
        stored.observed_generation = Some(1);
        let mut available = status.clone();
        available.conditions = Some(vec![available_condition(true)]);
        assert!(!same_status(Some(&stored), &available));
    }

    #[test]
    fn condition_times_change_only_with_the_condition() {
        let mut old = DeploymentStatus {
            conditions: Some(vec![available_condition(false)]),
            ..DeploymentStatus::default()
        };
        stamp_conditions(&mut old, None);
        let then = old.conditions.as_ref().expect("conds")[0]
            .last_transition_time
            .clone();
        assert!(then.is_some());
        let mut same = DeploymentStatus {
            conditions: Some(vec![available_condition(false)]),
            ..DeploymentStatus::default()
        };
        stamp_conditions(&mut same, Some(&old));
        assert_eq!(
            same.conditions.as_ref().expect("conds")[0].last_transition_time,
            then
        );
    }
}
