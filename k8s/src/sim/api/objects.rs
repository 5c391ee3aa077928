//! What each write does to the stored objects: create, replace, patch, delete and bind,
//! with the real server's defaults, preconditions and graceful Pod deletion. Every function
//! runs under the store's lock, so a read-modify-write is atomic.

use serde_json::{Value, json};

use super::meta;
use super::patch;
use super::resources::{NAMESPACES, PODS, ResourceType, SERVICE_ACCOUNTS};
use super::status::ApiError;
use super::store::Objects;
use super::validation;

/// The namespaces every cluster has.
pub const INITIAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

fn str_at<'a>(object: &'a Value, pointer: &str) -> Option<&'a str> {
    object.pointer(pointer).and_then(Value::as_str)
}

fn name_of(object: &Value) -> &str {
    str_at(object, "/metadata/name").unwrap_or_default()
}

/// Creates the initial namespaces (and their `default` ServiceAccounts).
pub fn bootstrap(objects: &mut Objects) {
    for name in INITIAL_NAMESPACES {
        let namespace = json!({"metadata": {"name": name}});
        if let Err(e) = create(objects, NAMESPACES, "", namespace) {
            tracing::error!(namespace = name, error = %e.message, "cannot create an initial namespace");
        }
    }
}

/// Fills in `kind` and `apiVersion` (clients may leave them out; responses always have them).
pub fn stamp_type(resource: &ResourceType, object: &mut Value) {
    object["kind"] = json!(resource.kind);
    object["apiVersion"] = json!(resource.api_version());
}

/// The fields the server defaults on create, as the real one does for the ones miniray and
/// kubectl look at.
fn apply_defaults(resource: &ResourceType, object: &mut Value) {
    let set_default = |object: &mut Value, pointer: &str, value: Value| {
        if object.pointer(pointer).is_none_or(Value::is_null) {
            let mut parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
            let last = parts.pop().unwrap_or_default();
            let mut at = &mut *object;
            for part in parts {
                if !at.get(part).is_some_and(Value::is_object) {
                    at[part] = json!({});
                }
                at = &mut at[part];
            }
            at[last] = value;
        }
    };
    match (resource.group, resource.plural) {
        ("", "pods") => {
            set_default(object, "/spec/restartPolicy", json!("Always"));
            set_default(object, "/spec/terminationGracePeriodSeconds", json!(30));
            set_default(object, "/spec/dnsPolicy", json!("ClusterFirst"));
            set_default(object, "/spec/schedulerName", json!("default-scheduler"));
            set_default(object, "/spec/serviceAccountName", json!("default"));
            set_default(object, "/spec/enableServiceLinks", json!(true));
            set_default(object, "/spec/priority", json!(0));
            set_default(object, "/spec/securityContext", json!({}));
            if let Some(containers) = object
                .pointer_mut("/spec/containers")
                .and_then(Value::as_array_mut)
            {
                for container in containers {
                    let image = str_at(container, "/image").unwrap_or_default();
                    let tagged = image
                        .rsplit('/')
                        .next()
                        .is_some_and(|last| last.contains(':') || last.contains('@'));
                    let policy = if !tagged || image.ends_with(":latest") {
                        "Always"
                    } else {
                        "IfNotPresent"
                    };
                    set_default(container, "/imagePullPolicy", json!(policy));
                    set_default(
                        container,
                        "/terminationMessagePath",
                        json!("/dev/termination-log"),
                    );
                    set_default(container, "/terminationMessagePolicy", json!("File"));
                    set_default(container, "/resources", json!({}));
                }
            }
            let qos = qos_class(object);
            object["status"] = json!({"phase": "Pending", "qosClass": qos});
        }
        ("", "services") => {
            set_default(object, "/spec/type", json!("ClusterIP"));
            set_default(object, "/spec/sessionAffinity", json!("None"));
            if let Some(ports) = object
                .pointer_mut("/spec/ports")
                .and_then(Value::as_array_mut)
            {
                for port in ports {
                    set_default(port, "/protocol", json!("TCP"));
                    if let Some(number) = port.get("port").cloned() {
                        set_default(port, "/targetPort", number);
                    }
                }
            }
            object["status"] = json!({"loadBalancer": {}});
        }
        ("", "secrets") => {
            set_default(object, "/type", json!("Opaque"));
            // stringData is write-only: folded into data, base64, as the real server does.
            if let Some(Value::Object(strings)) =
                object.as_object_mut().and_then(|o| o.remove("stringData"))
            {
                for (key, value) in strings {
                    let text = value.as_str().unwrap_or_default();
                    set_default(object, "/data", json!({}));
                    object["data"][key] = json!(crate::sim::base64(text.as_bytes()));
                }
            }
        }
        ("", "namespaces") => {
            let name = name_of(object).to_string();
            object["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            set_default(object, "/spec/finalizers", json!(["kubernetes"]));
            object["status"] = json!({"phase": "Active"});
        }
        ("apps", "deployments") => {
            set_default(object, "/spec/replicas", json!(1));
            set_default(object, "/spec/revisionHistoryLimit", json!(10));
            set_default(object, "/spec/progressDeadlineSeconds", json!(600));
            set_default(
                object,
                "/spec/strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
            );
            object["status"] = json!({});
        }
        _ => {}
    }
}

/// A Pod's QoS class from its containers' cpu and memory requests and limits: none at all is
/// BestEffort, limits on both for every container (requests, if given, equal) Guaranteed,
/// anything else Burstable.
fn qos_class(pod: &Value) -> &'static str {
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for container in &containers {
        for resource in ["cpu", "memory"] {
            let limit = container.pointer(&format!("/resources/limits/{resource}"));
            let request = container.pointer(&format!("/resources/requests/{resource}"));
            any |= limit.is_some() || request.is_some();
            guaranteed &= limit.is_some() && request.is_none_or(|r| Some(r) == limit);
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// Takes the object of a request body: a JSON object whose kind, if given, is the
/// resource's.
fn body_object(resource: &ResourceType, body: Value) -> Result<Value, ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(format!(
            "the body of a {} must be a JSON object",
            resource.kind
        )));
    }
    if let Some(kind) = str_at(&body, "/kind")
        && kind != resource.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind {kind:?} of the body does not match the resource ({})",
            resource.kind
        )));
    }
    Ok(body)
}

/// Checks that the namespace of a request exists (the real server's 404 when it does not).
fn check_namespace(
    objects: &Objects,
    resource: &ResourceType,
    namespace: &str,
) -> Result<(), ApiError> {
    if resource.namespaced && objects.get(NAMESPACES, "", namespace).is_none() {
        return Err(ApiError::not_found(NAMESPACES, namespace));
    }
    Ok(())
}

/// Creates an object in `namespace` (`""` for cluster-scoped kinds).
pub fn create(
    objects: &mut Objects,
    resource: &'static ResourceType,
    namespace: &str,
    body: Value,
) -> Result<Value, ApiError> {
    let mut object = body_object(resource, body)?;
    check_namespace(objects, resource, namespace)?;
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = json!({});
    }
    if resource.namespaced {
        match str_at(&object, "/metadata/namespace") {
            Some(ns) if !ns.is_empty() && ns != namespace => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => object["metadata"]["namespace"] = json!(namespace),
        }
    } else if let Some(meta) = object["metadata"].as_object_mut() {
        meta.remove("namespace");
    }
    if name_of(&object).is_empty()
        && let Some(prefix) = str_at(&object, "/metadata/generateName").filter(|p| !p.is_empty())
    {
        let name = meta::generate_name(prefix);
        object["metadata"]["name"] = json!(name);
    }
    let name = name_of(&object).to_string();
    let causes = validation::create(resource, &object);
    if !causes.is_empty() {
        return Err(ApiError::invalid(resource, &name, &causes));
    }
    if objects.get(resource, namespace, &name).is_some() {
        return Err(ApiError::already_exists(resource, &name));
    }
    if let Some(meta) = object["metadata"].as_object_mut() {
        // Server-owned fields: whatever the client sent is replaced.
        for field in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
        ] {
            meta.remove(field);
        }
        meta.insert("uid".into(), json!(meta::uid()));
        meta.insert("creationTimestamp".into(), json!(meta::now()));
        if resource.has_generation {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
    }
    apply_defaults(resource, &mut object);
    stamp_type(resource, &mut object);
    let stored = objects.put(resource, namespace, object);
    if std::ptr::eq(resource, NAMESPACES) {
        // The service account controller's part: every namespace has `default`.
        let account = json!({"metadata": {"name": "default"}});
        if let Err(e) = create(objects, SERVICE_ACCOUNTS, &name, account) {
            tracing::warn!(namespace = %name, error = %e.message, "cannot create the default service account");
        }
    }
    Ok(stored)
}

/// Which part of an object a write replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The object: its status is kept as stored.
    Main,
    /// The `status` subresource: only the status changes.
    Status,
}

/// Replaces the stored object `name` with `new` (a PUT, or the result of a patch).
/// A non-empty `metadata.resourceVersion` in `new` must be the stored one (409 otherwise).
pub fn replace(
    objects: &mut Objects,
    resource: &'static ResourceType,
    namespace: &str,
    name: &str,
    new: Value,
    part: Part,
) -> Result<Value, ApiError> {
    let new = body_object(resource, new)?;
    let old = objects
        .get(resource, namespace, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(resource, name))?;
    if let Some(body_name) = str_at(&new, "/metadata/name").filter(|n| !n.is_empty())
        && body_name != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    if resource.namespaced
        && let Some(ns) = str_at(&new, "/metadata/namespace").filter(|n| !n.is_empty())
        && ns != namespace
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    if let Some(rv) = str_at(&new, "/metadata/resourceVersion").filter(|rv| !rv.is_empty())
        && Some(rv) != str_at(&old, "/metadata/resourceVersion")
    {
        return Err(ApiError::stale(resource, name));
    }
    if let Some(uid) = str_at(&new, "/metadata/uid").filter(|u| !u.is_empty())
        && Some(uid) != str_at(&old, "/metadata/uid")
    {
        return Err(ApiError::conflict(
            resource,
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                str_at(&old, "/metadata/uid").unwrap_or_default()
            ),
        ));
    }
    let mut result = match part {
        Part::Status => {
            let mut result = old.clone();
            match new.get("status") {
                Some(status) if !status.is_null() => result["status"] = status.clone(),
                _ => {
                    if let Some(o) = result.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            result
        }
        Part::Main => {
            let mut result = new;
            if !result.get("metadata").is_some_and(Value::is_object) {
                result["metadata"] = json!({});
            }
            if resource.has_status() {
                match old.get("status") {
                    Some(status) => result["status"] = status.clone(),
                    None => {
                        if let Some(o) = result.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
            }
            // Server-owned metadata stays as stored.
            for field in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "generateName",
            ] {
                match old["metadata"].get(field) {
                    Some(value) => result["metadata"][field] = value.clone(),
                    None => {
                        if let Some(meta) = result["metadata"].as_object_mut() {
                            meta.remove(field);
                        }
                    }
                }
            }
            if resource.kind == "Secret" {
                apply_defaults(resource, &mut result);
            }
            result
        }
    };
    stamp_type(resource, &mut result);
    result["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
    let causes = validation::update(resource, &old, &result);
    if !causes.is_empty() {
        return Err(ApiError::invalid(resource, name, &causes));
    }
    if result == old {
        // The real server writes nothing for a no-op update: same resourceVersion, no event.
        return Ok(old);
    }
    if resource.has_generation && old.get("spec") != result.get("spec") {
        let generation = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        result["metadata"]["generation"] = json!(generation + 1);
    }
    Ok(objects.put(resource, namespace, result))
}

/// The patch formats accepted, by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json`, and `application/strategic-merge-patch+json` taken
    /// as a merge patch (lists replace instead of merging by key).
    Merge,
    /// `application/apply-patch+yaml`: server-side apply approximated as create-or-merge.
    Apply,
    /// `application/json-patch+json` (RFC 6902).
    Json,
}

/// Patches the stored object (or, for apply, creates it when missing).
pub fn patch(
    objects: &mut Objects,
    resource: &'static ResourceType,
    namespace: &str,
    name: &str,
    body: Value,
    kind: PatchKind,
    part: Part,
) -> Result<Value, ApiError> {
    if kind != PatchKind::Json && !body.is_object() {
        return Err(ApiError::bad_request("a merge patch must be a JSON object"));
    }
    let Some(old) = objects.get(resource, namespace, name).cloned() else {
        if kind == PatchKind::Apply && part == Part::Main {
            let mut object = body;
            object["metadata"]["name"] = json!(name);
            return create(objects, resource, namespace, object);
        }
        return Err(ApiError::not_found(resource, name));
    };
    // Patched from the stored object, so its resourceVersion is carried through unless the
    // patch sets one, which is then a precondition.
    let mut patched = old;
    match kind {
        PatchKind::Merge | PatchKind::Apply => patch::merge(&mut patched, &body),
        PatchKind::Json => patch::json_patch(&mut patched, &body).map_err(|e| {
            ApiError::unprocessable(format!(
                "the server rejected our request due to an error in our request: {e}"
            ))
        })?,
    }
    replace(objects, resource, namespace, name, patched, part)
}

/// The options of a delete, from the query and the DeleteOptions body.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
}

/// Deletes an object. A Pod bound to a node that is not finished is only marked
/// (`deletionTimestamp`, `deletionGracePeriodSeconds`) unless the grace period is 0: its
/// kubelet stops it and then deletes it with grace 0. Returns the object as it now is (or
/// as it was, when removed).
pub fn delete(
    objects: &mut Objects,
    resource: &'static ResourceType,
    namespace: &str,
    name: &str,
    options: &DeleteOptions,
) -> Result<Value, ApiError> {
    let old = objects
        .get(resource, namespace, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(resource, name))?;
    if let Some(uid) = &options.precondition_uid
        && Some(uid.as_str()) != str_at(&old, "/metadata/uid")
    {
        return Err(ApiError::conflict(
            resource,
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                str_at(&old, "/metadata/uid").unwrap_or_default()
            ),
        ));
    }
    if let Some(rv) = &options.precondition_resource_version
        && Some(rv.as_str()) != str_at(&old, "/metadata/resourceVersion")
    {
        return Err(ApiError::conflict(
            resource,
            name,
            &format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                str_at(&old, "/metadata/resourceVersion").unwrap_or_default()
            ),
        ));
    }
    if std::ptr::eq(resource, PODS) {
        let bound = str_at(&old, "/spec/nodeName").is_some_and(|n| !n.is_empty());
        let finished = matches!(str_at(&old, "/status/phase"), Some("Failed" | "Succeeded"));
        let grace = options.grace_period_seconds.unwrap_or_else(|| {
            old.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(30)
        });
        if bound && !finished && grace > 0 {
            let current = old
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64);
            if current.is_some_and(|c| c <= grace) {
                // Already terminating at least as fast: nothing changes.
                return Ok(old);
            }
            let mut marked = old;
            marked["metadata"]["deletionTimestamp"] = json!(meta::now_plus(grace));
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            return Ok(objects.put(resource, namespace, marked));
        }
    }
    if std::ptr::eq(resource, NAMESPACES) {
        // The namespace controller's part, done at once: everything in it goes too.
        for other in super::resources::RESOURCES.iter().filter(|r| r.namespaced) {
            let names: Vec<String> = objects
                .list(other, Some(name))
                .iter()
                .map(|o| name_of(o).to_string())
                .collect();
            for inner in names {
                objects.remove(other, name, &inner);
            }
        }
    }
    objects
        .remove(resource, namespace, name)
        .ok_or_else(|| ApiError::not_found(resource, name))
}

/// `pods/binding`: assigns the Pod to `target.name` (409 if it is already assigned or being
/// deleted), and marks it scheduled.
pub fn bind(
    objects: &mut Objects,
    namespace: &str,
    name: &str,
    binding: &Value,
) -> Result<(), ApiError> {
    let node = str_at(binding, "/target/name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                PODS,
                name,
                &[(
                    "target.name".to_string(),
                    "FieldValueRequired",
                    "Required value".to_string(),
                )],
            )
        })?
        .to_string();
    let mut pod = objects
        .get(PODS, namespace, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(PODS, name))?;
    if let Some(uid) = str_at(binding, "/metadata/uid").filter(|u| !u.is_empty())
        && Some(uid) != str_at(&pod, "/metadata/uid")
    {
        return Err(ApiError::conflict(
            PODS,
            name,
            "Precondition failed: UID mismatch",
        ));
    }
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        return Err(ApiError::conflict(
            PODS,
            name,
            &format!("pod {name} is being deleted, cannot be assigned to a host"),
        ));
    }
    if let Some(current) = str_at(&pod, "/spec/nodeName").filter(|n| !n.is_empty()) {
        return Err(ApiError::conflict(
            PODS,
            name,
            &format!("pod {name} is already assigned to node \"{current}\""),
        ));
    }
    pod["spec"]["nodeName"] = json!(node);
    let scheduled = json!({
        "type": "PodScheduled", "status": "True", "lastProbeTime": null,
        "lastTransitionTime": meta::now(),
    });
    let conditions = pod["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut conditions: Vec<Value> = conditions
        .into_iter()
        .filter(|c| str_at(c, "/type") != Some("PodScheduled"))
        .collect();
    conditions.push(scheduled);
    pod["status"]["conditions"] = json!(conditions);
    objects.put(PODS, namespace, pod);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::api::store::Store;

    fn pod(name: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "i"}]}})
    }

    #[test]
    fn a_bound_pod_is_marked_and_an_unbound_one_removed() {
        let store = Store::new();
        let mut objects = store.lock();
        bootstrap(&mut objects);
        create(&mut objects, PODS, "default", pod("a")).unwrap();
        create(&mut objects, PODS, "default", pod("b")).unwrap();
        bind(
            &mut objects,
            "default",
            "a",
            &json!({"target": {"name": "n"}}),
        )
        .unwrap();
        assert_eq!(
            bind(
                &mut objects,
                "default",
                "a",
                &json!({"target": {"name": "n"}})
            )
            .unwrap_err()
            .code,
            409
        );
        let marked = delete(
            &mut objects,
            PODS,
            "default",
            "a",
            &DeleteOptions::default(),
        )
        .unwrap();
        assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 30);
        assert!(objects.get(PODS, "default", "a").is_some());
        delete(
            &mut objects,
            PODS,
            "default",
            "b",
            &DeleteOptions::default(),
        )
        .unwrap();
        assert!(objects.get(PODS, "default", "b").is_none());
        let now = DeleteOptions {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        delete(&mut objects, PODS, "default", "a", &now).unwrap();
        assert!(objects.get(PODS, "default", "a").is_none());
    }

    #[test]
    fn qos_classes() {
        let with = |resources: Value| json!({"spec": {"containers": [{"resources": resources}]}});
        assert_eq!(qos_class(&with(json!({}))), "BestEffort");
        assert_eq!(
            qos_class(&with(json!({"requests": {"cpu": "1"}}))),
            "Burstable"
        );
        assert_eq!(
            qos_class(&with(json!({"limits": {"cpu": "1", "memory": "1Gi"}}))),
            "Guaranteed"
        );
    }

    #[test]
    fn objects_need_their_namespace() {
        let store = Store::new();
        let mut objects = store.lock();
        bootstrap(&mut objects);
        assert_eq!(
            create(&mut objects, PODS, "nowhere", pod("a"))
                .unwrap_err()
                .code,
            404
        );
        assert!(
            objects
                .get(SERVICE_ACCOUNTS, "kube-system", "default")
                .is_some()
        );
    }
}
