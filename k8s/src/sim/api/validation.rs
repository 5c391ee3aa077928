//! What makes an object Invalid (422): names, labels, and fields that cannot change.

use serde_json::Value;

use super::resources::{NAMESPACES, PODS, ResourceType};

/// One reason an object is invalid: `(field path, cause reason, message)`.
pub type Cause = (String, &'static str, String);

fn dns1123_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn dns1123_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(dns1123_label)
}

/// Services name DNS records of their own: a DNS-1035 label (starts with a letter).
fn dns1035_label(name: &str) -> bool {
    dns1123_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase())
}

/// A qualified name part or a label value: alphanumerics, `-`, `_`, `.`, starting and ending
/// alphanumeric.
fn qualified_part(text: &str) -> bool {
    text.len() <= 63
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn label_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => dns1123_subdomain(prefix) && qualified_part(name),
        None => qualified_part(key),
    }
}

fn label_value(value: &str) -> bool {
    value.is_empty() || qualified_part(value)
}

/// The name check of a kind, or None when its name only has to be a path segment.
fn name_problem(resource: &ResourceType, name: &str) -> Option<String> {
    let ok = if std::ptr::eq(resource, NAMESPACES) {
        dns1123_label(name)
    } else if resource.plural == "services" {
        dns1035_label(name)
    } else if resource.group == "rbac.authorization.k8s.io" {
        !name.is_empty()
            && !name.contains('/')
            && !name.contains('%')
            && name != "."
            && name != ".."
    } else {
        dns1123_subdomain(name)
    };
    (!ok).then(|| {
        "a lowercase RFC 1123 name must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".to_string()
    })
}

/// The problems of metadata on create or update (after a generated name is assigned).
pub fn metadata(resource: &ResourceType, object: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name.is_empty() {
        causes.push((
            "metadata.name".to_string(),
            "FieldValueRequired",
            "Required value: name or generateName is required".to_string(),
        ));
    } else if let Some(problem) = name_problem(resource, name) {
        causes.push((
            "metadata.name".to_string(),
            "FieldValueInvalid",
            format!("Invalid value: \"{name}\": {problem}"),
        ));
    }
    if let Some(labels) = object.pointer("/metadata/labels") {
        match labels.as_object() {
            Some(labels) => {
                for (key, value) in labels {
                    let field = format!("metadata.labels[{key}]");
                    if !label_key(key) {
                        causes.push((
                            "metadata.labels".to_string(),
                            "FieldValueInvalid",
                            format!("Invalid value: \"{key}\": name part must consist of alphanumeric characters, '-', '_' or '.'"),
                        ));
                    }
                    match value.as_str() {
                        Some(v) if label_value(v) => {}
                        _ => causes.push((
                            field,
                            "FieldValueInvalid",
                            format!("Invalid value: {value}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
                        )),
                    }
                }
            }
            None if labels.is_null() => {}
            None => causes.push((
                "metadata.labels".to_string(),
                "FieldValueInvalid",
                "Invalid value: labels must be a map of strings".to_string(),
            )),
        }
    }
    causes
}

/// The problems of a new object's spec.
pub fn create(resource: &ResourceType, object: &Value) -> Vec<Cause> {
    let mut causes = metadata(resource, object);
    if std::ptr::eq(resource, PODS) {
        let containers = object.pointer("/spec/containers").and_then(Value::as_array);
        match containers {
            None => causes.push((
                "spec.containers".to_string(),
                "FieldValueRequired",
                "Required value".to_string(),
            )),
            Some(containers) => {
                for (i, container) in containers.iter().enumerate() {
                    if container
                        .get("name")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        causes.push((
                            format!("spec.containers[{i}].name"),
                            "FieldValueRequired",
                            "Required value".to_string(),
                        ));
                    }
                    if container
                        .get("image")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        causes.push((
                            format!("spec.containers[{i}].image"),
                            "FieldValueRequired",
                            "Required value".to_string(),
                        ));
                    }
                }
            }
        }
    }
    if resource.plural == "deployments" {
        let selector = object.pointer("/spec/selector");
        if selector.is_none_or(Value::is_null) {
            causes.push((
                "spec.selector".to_string(),
                "FieldValueRequired",
                "Required value".to_string(),
            ));
        }
        let labels = object.pointer("/spec/template/metadata/labels");
        if let (Some(wanted), Some(labels)) = (
            selector
                .and_then(|s| s.get("matchLabels"))
                .and_then(Value::as_object),
            labels.and_then(Value::as_object),
        ) && wanted.iter().any(|(k, v)| labels.get(k) != Some(v))
        {
            causes.push((
                "spec.template.metadata.labels".to_string(),
                "FieldValueInvalid",
                "Invalid value: `selector` does not match template `labels`".to_string(),
            ));
        }
    }
    causes
}

/// The spec of a Pod with the fields an update may change blanked out: an update whose
/// result differs here from the stored Pod changes something immutable.
fn pod_immutable_spec(pod: &Value) -> Value {
    let mut spec = pod.get("spec").cloned().unwrap_or(Value::Null);
    for list in ["containers", "initContainers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for container in containers {
                if let Some(c) = container.as_object_mut() {
                    c.remove("image");
                }
            }
        }
    }
    if let Some(spec) = spec.as_object_mut() {
        // Mutable by update: the deadline, tolerations (additions), the grace period (the
        // server itself sets it on deletion), scheduling gates.
        for field in [
            "activeDeadlineSeconds",
            "tolerations",
            "terminationGracePeriodSeconds",
            "schedulingGates",
        ] {
            spec.remove(field);
        }
    }
    spec
}

/// The problems of replacing `old` with `new` (both whole objects).
pub fn update(resource: &ResourceType, old: &Value, new: &Value) -> Vec<Cause> {
    let mut causes = metadata(resource, new);
    if std::ptr::eq(resource, PODS) && pod_immutable_spec(old) != pod_immutable_spec(new) {
        causes.push((
            "spec".to_string(),
            "FieldValueForbidden",
            "Forbidden: pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations), `spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".to_string(),
        ));
    }
    if resource.plural == "deployments"
        && old.pointer("/spec/selector") != new.pointer("/spec/selector")
    {
        causes.push((
            "spec.selector".to_string(),
            "FieldValueInvalid",
            "Invalid value: field is immutable".to_string(),
        ));
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_and_labels() {
        assert!(dns1123_subdomain("demo-head.x"));
        assert!(!dns1123_subdomain("Demo"));
        assert!(!dns1035_label("1abc"));
        assert!(label_key("miniray.io/cluster"));
        assert!(!label_key("a b"));
        assert!(label_value(""));
        assert!(!label_value("-x"));
        let pod = json!({"metadata": {"name": "p", "labels": {"a": "not ok!"}}});
        assert_eq!(metadata(PODS, &pod).len(), 1);
        assert_eq!(
            metadata(PODS, &json!({"metadata": {}}))[0].1,
            "FieldValueRequired"
        );
    }

    #[test]
    fn a_pod_update_may_change_the_image_only() {
        let old = json!({"spec": {"containers": [{"name": "c", "image": "a"}]}, "metadata": {"name": "p"}});
        let image = json!({"spec": {"containers": [{"name": "c", "image": "b"}]}, "metadata": {"name": "p"}});
        let command = json!({"spec": {"containers": [{"name": "c", "image": "a", "command": ["x"]}]}, "metadata": {"name": "p"}});
        assert!(update(PODS, &old, &image).is_empty());
        assert_eq!(update(PODS, &old, &command).len(), 1);
    }
}
