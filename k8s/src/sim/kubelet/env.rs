//! A container's environment and command line, resolved as the real kubelet does.
//!
//! - `envFrom` first (ConfigMaps and Secrets, with their `prefix`), then `env` in order,
//!   later names replacing earlier ones.
//! - `value` is expanded with `$(VAR)` over the variables defined before it (and the base
//!   ones, such as `KUBERNETES_SERVICE_HOST`); `valueFrom` values are taken as they are.
//! - `valueFrom.fieldRef`: `metadata.name`, `metadata.namespace`, `metadata.uid`,
//!   `metadata.labels['k']`, `metadata.annotations['k']`, `status.podIP`, `status.hostIP`,
//!   `spec.nodeName`, `spec.serviceAccountName`.
//! - `secretKeyRef` / `configMapKeyRef`: a missing object or key is an error (the Pod waits
//!   with `CreateContainerConfigError`), unless the reference is `optional`.
//! - `command` and `args` are expanded with `$(VAR)` over the final environment.
//!
//! Expansion (Kubernetes' rules): `$(NAME)` becomes the value of `NAME` when it is defined
//! and stays `$(NAME)` when not; `$$` becomes `$`; any other `$` is kept.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Container;

use super::sources::Sources;

/// Why a container's environment cannot be built yet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("secret \"{0}\" not found")]
    SecretMissing(String),
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKeyMissing {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("configmap \"{0}\" not found")]
    ConfigMapMissing(String),
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKeyMissing {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("env {var}: {why}")]
    Unsupported { var: String, why: String },
}

/// The Pod fields `fieldRef` can name.
#[derive(Clone, Debug, Default)]
pub struct PodFields {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub pod_ip: String,
    pub host_ip: String,
    pub node_name: String,
    pub service_account_name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl PodFields {
    /// The value of `path`, or `None` for a field this simulator does not know.
    pub fn get(&self, path: &str) -> Option<String> {
        let quoted = |prefix: &str| {
            path.strip_prefix(prefix)?
                .strip_suffix("']")
                .map(str::to_string)
        };
        if let Some(k) = quoted("metadata.labels['") {
            return Some(self.labels.get(&k).cloned().unwrap_or_default());
        }
        if let Some(k) = quoted("metadata.annotations['") {
            return Some(self.annotations.get(&k).cloned().unwrap_or_default());
        }
        Some(
            match path {
                "metadata.name" => &self.name,
                "metadata.namespace" => &self.namespace,
                "metadata.uid" => &self.uid,
                "status.podIP" => &self.pod_ip,
                "status.hostIP" => &self.host_ip,
                "spec.nodeName" => &self.node_name,
                "spec.serviceAccountName" => &self.service_account_name,
                _ => return None,
            }
            .clone(),
        )
    }
}

/// Expands `$(NAME)` references in `input` with `lookup` (Kubernetes' rules, see the module
/// doc).
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('(') {
            match tail.find(')') {
                Some(close) => {
                    let name = &tail[..close];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &tail[close + 1..];
                }
                None => {
                    // An unclosed reference is kept as it is.
                    out.push_str("$(");
                    rest = tail;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The environment of `container`: `base` (set first, overridable), then `envFrom`, then
/// `env`. Order is kept; a redefined name keeps its first position, as in the real kubelet.
pub fn resolve(
    container: &Container,
    fields: &PodFields,
    base: &[(String, String)],
    sources: &Sources,
) -> Result<Vec<(String, String)>, EnvError> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| match env
        .iter_mut()
        .find(|(n, _)| *n == name)
    {
        Some(slot) => slot.1 = value,
        None => env.push((name, value)),
    };
    for (k, v) in base {
        set(&mut env, k.clone(), v.clone());
    }
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(r) = &from.config_map_ref {
            match sources.config_map(&r.name) {
                Some(d) => d,
                None if r.optional == Some(true) => continue,
                None => return Err(EnvError::ConfigMapMissing(r.name.clone())),
            }
        } else if let Some(r) = &from.secret_ref {
            match sources.secret(&r.name) {
                Some(d) => d,
                None if r.optional == Some(true) => continue,
                None => return Err(EnvError::SecretMissing(r.name.clone())),
            }
        } else {
            continue;
        };
        for (k, v) in data {
            set(
                &mut env,
                format!("{prefix}{k}"),
                String::from_utf8_lossy(v).into_owned(),
            );
        }
    }
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => {
                let defined = env.clone();
                let lookup = |name: &str| {
                    defined
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| v.clone())
                };
                expand(var.value.as_deref().unwrap_or(""), lookup)
            }
            Some(from) => {
                if let Some(f) = &from.field_ref {
                    fields
                        .get(&f.field_path)
                        .ok_or_else(|| EnvError::Unsupported {
                            var: var.name.clone(),
                            why: format!("fieldRef {} is not supported", f.field_path),
                        })?
                } else if let Some(r) = &from.secret_key_ref {
                    let optional = r.optional == Some(true);
                    match sources.secret(&r.name).map(|d| d.get(&r.key)) {
                        Some(Some(v)) => String::from_utf8_lossy(v).into_owned(),
                        _ if optional => continue,
                        None => return Err(EnvError::SecretMissing(r.name.clone())),
                        Some(None) => {
                            return Err(EnvError::SecretKeyMissing {
                                namespace: fields.namespace.clone(),
                                name: r.name.clone(),
                                key: r.key.clone(),
                            });
                        }
                    }
                } else if let Some(r) = &from.config_map_key_ref {
                    let optional = r.optional == Some(true);
                    match sources.config_map(&r.name).map(|d| d.get(&r.key)) {
                        Some(Some(v)) => String::from_utf8_lossy(v).into_owned(),
                        _ if optional => continue,
                        None => return Err(EnvError::ConfigMapMissing(r.name.clone())),
                        Some(None) => {
                            return Err(EnvError::ConfigMapKeyMissing {
                                namespace: fields.namespace.clone(),
                                name: r.name.clone(),
                                key: r.key.clone(),
                            });
                        }
                    }
                } else {
                    return Err(EnvError::Unsupported {
                        var: var.name.clone(),
                        why: "only fieldRef, secretKeyRef and configMapKeyRef are supported".into(),
                    });
                }
            }
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

/// `command` + `args` of `container`, each expanded over `env`. Empty when the container
/// has no `command` (the simulator cannot read an image's entrypoint).
pub fn command_line(container: &Container, env: &[(String, String)]) -> Vec<String> {
    let lookup = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let Some(command) = &container.command else {
        return Vec::new();
    };
    command
        .iter()
        .chain(container.args.iter().flatten())
        .map(|s| expand(s, lookup))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        assert_eq!(expand("$(A)", lookup), "alpha");
        assert_eq!(expand("x-$(A)-y", lookup), "x-alpha-y");
        assert_eq!(expand("$(B)", lookup), "$(B)");
        assert_eq!(expand("$$(A)", lookup), "$(A)");
        assert_eq!(expand("$$$(A)", lookup), "$alpha");
        assert_eq!(expand("$A", lookup), "$A");
        assert_eq!(expand("$(A", lookup), "$(A");
        assert_eq!(expand("end$", lookup), "end$");
        assert_eq!(expand("$(EMPTY)z", lookup), "z");
        assert_eq!(expand("$()", lookup), "$()");
        assert_eq!(expand("ünï$(A)cödé", lookup), "ünïalphacödé");
    }

    fn container(v: serde_json::Value) -> Container {
        serde_json::from_value(v).expect("a container")
    }

    fn fields() -> PodFields {
        PodFields {
            name: "pod-a".into(),
            namespace: "ns1".into(),
            uid: "u-1".into(),
            pod_ip: "10.214.3.2".into(),
            host_ip: "10.214.3.1".into(),
            node_name: "miniray-sim".into(),
            service_account_name: "default".into(),
            labels: [("app".to_string(), "demo".to_string())].into(),
            annotations: BTreeMap::new(),
        }
    }

    fn sources() -> Sources {
        let mut s = Sources::default();
        s.secrets.insert(
            "tok".into(),
            Some([("token".to_string(), b"s3cret".to_vec())].into()),
        );
        s.secrets.insert("gone".into(), None);
        s.config_maps.insert(
            "cm".into(),
            Some([("mode".to_string(), b"fast".to_vec())].into()),
        );
        s
    }

    #[test]
    fn env_resolves_values_fields_secrets_and_config_maps_in_order() {
        let c = container(json!({
            "name": "c",
            "command": ["sh", "-c", "echo $(NAME) $(IP) $$(IP) $(UNDEFINED)"],
            "args": ["--token=$(TOKEN)"],
            "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
            "env": [
                {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "token"}}},
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "mode"}}},
                {"name": "URL", "value": "http://$(IP):$(KUBERNETES_SERVICE_PORT)/$(LATER)"},
                {"name": "LATER", "value": "x"},
                {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k", "optional": true}}}
            ]
        }));
        let base = vec![("KUBERNETES_SERVICE_PORT".to_string(), "443".to_string())];
        let env = resolve(&c, &fields(), &base, &sources()).expect("resolves");
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("CM_mode"), Some("fast"));
        assert_eq!(get("NAME"), Some("pod-a"));
        assert_eq!(get("IP"), Some("10.214.3.2"));
        assert_eq!(get("APP"), Some("demo"));
        assert_eq!(get("TOKEN"), Some("s3cret"));
        assert_eq!(get("MODE"), Some("fast"));
        // Only variables defined before are expanded.
        assert_eq!(get("URL"), Some("http://10.214.3.2:443/$(LATER)"));
        assert_eq!(get("OPT"), None);
        let argv = command_line(&c, &env);
        assert_eq!(
            argv,
            [
                "sh",
                "-c",
                "echo pod-a 10.214.3.2 $(IP) $(UNDEFINED)",
                "--token=s3cret"
            ]
        );
    }

    #[test]
    fn missing_secrets_and_keys_are_errors_unless_optional() {
        let missing = container(json!({"name": "c", "env": [
            {"name": "T", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "token"}}}
        ]}));
        assert_eq!(
            resolve(&missing, &fields(), &[], &sources()),
            Err(EnvError::SecretMissing("gone".into()))
        );
        let no_key = container(json!({"name": "c", "env": [
            {"name": "T", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "nope"}}}
        ]}));
        assert!(matches!(
            resolve(&no_key, &fields(), &[], &sources()),
            Err(EnvError::SecretKeyMissing { .. })
        ));
        let no_map = container(json!({"name": "c", "env": [
            {"name": "T", "valueFrom": {"configMapKeyRef": {"name": "other", "key": "k"}}}
        ]}));
        assert_eq!(
            resolve(&no_map, &fields(), &[], &sources()),
            Err(EnvError::ConfigMapMissing("other".into()))
        );
        let bad_field = container(json!({"name": "c", "env": [
            {"name": "T", "valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}}
        ]}));
        assert!(matches!(
            resolve(&bad_field, &fields(), &[], &sources()),
            Err(EnvError::Unsupported { .. })
        ));
    }

    #[test]
    fn no_command_gives_an_empty_command_line() {
        let c = container(json!({"name": "c", "args": ["x"]}));
        assert!(command_line(&c, &[]).is_empty());
    }
}
