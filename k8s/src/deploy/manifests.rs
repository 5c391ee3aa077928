//! Every object `miniray up` applies, built from the cluster config alone.
//!
//! Invariants: [`build`] returns the objects in apply order (what an object refers to comes
//! before it: the ServiceAccount before its RoleBinding, the Secret and ConfigMap before the
//! Pods that mount them, Redis before the head that dials it); every object is in the
//! config's namespace, carries [`names::LABEL_CLUSTER`] and [`names::LABEL_MANAGED_BY`], and
//! has [`HASH_ANNOTATION`] set to [`object_hash`] of itself without that annotation. The
//! same inputs give byte-identical objects (maps are sorted), so the hash is stable.

use k8s_openapi::ByteString;
use kube::api::ApiResource;
use serde_json::{Value, json};

use super::{ClusterSpec, HASH_ANNOTATION, INPUTS_HASH_ANNOTATION, Secrets};
use crate::config::RedisConfig;
use crate::{names, template};

/// The kinds `up` applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    ServiceAccount,
    Role,
    RoleBinding,
    Secret,
    ConfigMap,
    Deployment,
    Service,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::ServiceAccount,
        Kind::Role,
        Kind::RoleBinding,
        Kind::Secret,
        Kind::ConfigMap,
        Kind::Deployment,
        Kind::Service,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Role => "Role",
            Kind::RoleBinding => "RoleBinding",
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
            Kind::Deployment => "Deployment",
            Kind::Service => "Service",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Role | Kind::RoleBinding => "rbac.authorization.k8s.io/v1",
            Kind::Deployment => "apps/v1",
            _ => "v1",
        }
    }

    /// Where the API serves this kind (group, version, plural).
    pub fn api_resource(self) -> ApiResource {
        use k8s_openapi::api::{apps::v1 as apps, core::v1 as core, rbac::v1 as rbac};
        match self {
            Kind::ServiceAccount => ApiResource::erase::<core::ServiceAccount>(&()),
            Kind::Role => ApiResource::erase::<rbac::Role>(&()),
            Kind::RoleBinding => ApiResource::erase::<rbac::RoleBinding>(&()),
            Kind::Secret => ApiResource::erase::<core::Secret>(&()),
            Kind::ConfigMap => ApiResource::erase::<core::ConfigMap>(&()),
            Kind::Deployment => ApiResource::erase::<apps::Deployment>(&()),
            Kind::Service => ApiResource::erase::<core::Service>(&()),
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub kind: Kind,
    pub name: String,
    pub namespace: String,
    /// The whole object (`apiVersion`, `kind`, `metadata`, and its body), hash annotated.
    pub object: Value,
}

impl Manifest {
    /// The object's [`HASH_ANNOTATION`].
    pub fn hash(&self) -> &str {
        self.object["metadata"]["annotations"][HASH_ANNOTATION]
            .as_str()
            .unwrap_or_default()
    }
}

/// The hash of an object's desired state: FNV-1a (64 bits, hex) of its JSON with sorted keys
/// and without [`HASH_ANNOTATION`]. Not a security measure; it only tells "same as last
/// applied" from "changed", stably across runs and builds.
pub fn object_hash(object: &Value) -> String {
    let mut object = object.clone();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        let now_empty = meta
            .get_mut("annotations")
            .and_then(Value::as_object_mut)
            .is_some_and(|a| {
                a.remove(HASH_ANNOTATION);
                a.is_empty()
            });
        // An object is hashed before it has any annotation: hash it the same way here.
        if now_empty {
            meta.remove("annotations");
        }
    }
    fnv_hex(object.to_string().as_bytes())
}

fn fnv_hex(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Labels of every object of `cluster`.
fn labels(cluster: &str, extra: &[(&str, &str)]) -> Value {
    let mut map = serde_json::Map::new();
    map.insert(names::LABEL_CLUSTER.into(), json!(cluster));
    map.insert(names::LABEL_MANAGED_BY.into(), json!(names::MANAGED_BY));
    for (k, v) in extra {
        map.insert((*k).into(), json!(v));
    }
    Value::Object(map)
}

/// Finishes an object: kind, name, namespace, labels, and its hash annotation.
fn object(
    kind: Kind,
    name: &str,
    spec: &ClusterSpec,
    extra: &[(&str, &str)],
    body: Value,
) -> Manifest {
    let mut object = json!({
        "apiVersion": kind.api_version(),
        "kind": kind.as_str(),
        "metadata": {
            "name": name,
            "namespace": spec.namespace(),
            "labels": labels(spec.cluster_name(), extra),
        },
    });
    if let (Some(o), Value::Object(body)) = (object.as_object_mut(), body) {
        o.extend(body);
    }
    let hash = object_hash(&object);
    object["metadata"]["annotations"] = json!({ HASH_ANNOTATION: hash });
    Manifest {
        kind,
        name: name.to_string(),
        namespace: spec.namespace().to_string(),
        object,
    }
}

/// Every object `up` applies, in apply order (see the module's invariants).
pub fn build(spec: &ClusterSpec, secrets: &Secrets) -> Vec<Manifest> {
    let cluster = spec.cluster_name();
    let ns = spec.namespace();
    let sa = names::service_account(cluster);
    let mut out = vec![
        object(Kind::ServiceAccount, &sa, spec, &[], json!({})),
        object(Kind::Role, &sa, spec, &[], json!({ "rules": role_rules() })),
        object(
            Kind::RoleBinding,
            &sa,
            spec,
            &[],
            json!({
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
            }),
        ),
        secret(spec, secrets),
        object(
            Kind::ConfigMap,
            &names::config_map(cluster),
            spec,
            &[],
            json!({ "data": { names::CONFIG_KEY: spec.text } }),
        ),
    ];
    if let RedisConfig::Deploy { image } = &spec.k8s.redis {
        out.push(redis_deployment(spec, image));
        out.push(service(
            spec,
            &names::redis(cluster),
            names::COMPONENT_REDIS,
            &[("redis", names::REDIS_PORT)],
        ));
    }
    // The head reads the config and the Secret only when it starts: their hash in its Pod
    // template makes a change to either roll it.
    let inputs = fnv_hex(format!("{}/{}", out[3].hash(), out[4].hash()).as_bytes());
    out.push(head_deployment(spec, &inputs, secrets.tls.is_some()));
    out.push(service(
        spec,
        &names::head_service(cluster),
        names::COMPONENT_HEAD,
        &[
            ("gcs", spec.k8s.gcs_port),
            ("dashboard", names::DASHBOARD_PORT),
        ],
    ));
    out
}

/// The autoscaler's rights: Pods of its own namespace, nothing else.
pub fn role_rules() -> Value {
    json!([{
        "apiGroups": [""],
        "resources": ["pods"],
        "verbs": ["get", "list", "watch", "create", "delete"],
    }])
}

fn b64(bytes: &[u8]) -> Value {
    // ByteString serializes as base64, the encoding of a Secret's `data`.
    serde_json::to_value(ByteString(bytes.to_vec())).unwrap_or(Value::Null)
}

fn secret(spec: &ClusterSpec, secrets: &Secrets) -> Manifest {
    let mut data = serde_json::Map::new();
    data.insert(names::TOKEN_KEY.into(), b64(secrets.token.as_bytes()));
    if let Some(tls) = &secrets.tls {
        data.insert(names::TLS_CERT_KEY.into(), b64(&tls.cert));
        data.insert(names::TLS_KEY_KEY.into(), b64(&tls.key));
        data.insert(names::TLS_CA_KEY.into(), b64(&tls.ca));
    }
    object(
        Kind::Secret,
        &names::token_secret(spec.cluster_name()),
        spec,
        &[],
        json!({"type": "Opaque", "data": data}),
    )
}

/// A Service in front of the Pods of `component`, with these named TCP ports.
fn service(spec: &ClusterSpec, name: &str, component: &str, ports: &[(&str, u16)]) -> Manifest {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(port_name, port)| {
            json!({"name": port_name, "port": port, "targetPort": port, "protocol": "TCP"})
        })
        .collect();
    object(
        Kind::Service,
        name,
        spec,
        &[(names::LABEL_COMPONENT, component)],
        json!({
            "spec": {
                "selector": selector(spec.cluster_name(), component),
                "ports": ports,
            },
        }),
    )
}

fn selector(cluster: &str, component: &str) -> Value {
    json!({ names::LABEL_CLUSTER: cluster, names::LABEL_COMPONENT: component })
}

/// A one-replica Deployment (Recreate: never two heads, or two Redis, at once) of `template`.
fn deployment(spec: &ClusterSpec, name: &str, component: &str, template: Value) -> Manifest {
    object(
        Kind::Deployment,
        name,
        spec,
        &[(names::LABEL_COMPONENT, component)],
        json!({
            "spec": {
                "replicas": 1,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": selector(spec.cluster_name(), component)},
                "template": template,
            },
        }),
    )
}

fn tcp_probe(port: Value) -> Value {
    json!({"tcpSocket": {"port": port}, "periodSeconds": 2, "failureThreshold": 3})
}

fn redis_deployment(spec: &ClusterSpec, image: &str) -> Manifest {
    let cluster = spec.cluster_name();
    let port = names::REDIS_PORT;
    let template = json!({
        "metadata": {"labels": labels(cluster, &[(names::LABEL_COMPONENT, names::COMPONENT_REDIS)])},
        "spec": {
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "redis",
                "image": image,
                // Memory only: the head's GCS is what survives a head restart, not Redis.
                "command": ["redis-server", "--port", port.to_string(), "--bind", "0.0.0.0",
                            "--protected-mode", "no", "--save", "", "--appendonly", "no"],
                "ports": [{"name": "redis", "containerPort": port, "protocol": "TCP"}],
                "readinessProbe": tcp_probe(json!(port)),
            }],
        },
    });
    deployment(
        spec,
        &names::redis(cluster),
        names::COMPONENT_REDIS,
        template,
    )
}

/// The environment every miniray Pod's container gets: the token from the Secret, the Pod
/// IP as the node IP, the Pod name as the instance id, the node type, and TLS file paths.
fn miniray_env(cluster: &str, node_type: &str, tls: bool) -> Value {
    let mut env = vec![
        json!({"name": "MINIRAY_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": names::token_secret(cluster), "key": names::TOKEN_KEY}}}),
        json!({"name": "MINIRAY_NODE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}),
        json!({"name": "MINIRAY_CLOUD_INSTANCE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": "MINIRAY_NODE_TYPE", "value": node_type}),
    ];
    if tls {
        for (var, key) in [
            ("MINIRAY_TLS_CERT", names::TLS_CERT_KEY),
            ("MINIRAY_TLS_KEY", names::TLS_KEY_KEY),
            ("MINIRAY_TLS_CA", names::TLS_CA_KEY),
        ] {
            env.push(json!({"name": var, "value": format!("{}/{key}", names::TLS_DIR)}));
        }
    }
    Value::Array(env)
}

/// The head's command line: GCS, raylet and autoscaler in one foreground process.
pub fn head_command(spec: &ClusterSpec) -> Vec<String> {
    let port = spec.k8s.gcs_port.to_string();
    let dashboard_port = names::DASHBOARD_PORT.to_string();
    let mut cmd: Vec<String> = [
        names::MINIRAY_COMMAND,
        "start",
        "--head",
        "--host",
        "$(MINIRAY_NODE_IP)",
        "--node-ip-address",
        "$(MINIRAY_NODE_IP)",
        "--port",
        &port,
        "--dashboard-port",
        &dashboard_port,
        "--autoscaling-config",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    cmd.push(format!("{}/{}", names::CONFIG_DIR, names::CONFIG_KEY));
    if let Some(redis) = redis_address(spec) {
        cmd.push("--redis-address".into());
        cmd.push(redis);
    }
    cmd.push("--block".into());
    cmd
}

/// The Redis the head writes its tables through, if any.
pub fn redis_address(spec: &ClusterSpec) -> Option<String> {
    match &spec.k8s.redis {
        RedisConfig::None => None,
        RedisConfig::External { address } => Some(address.clone()),
        RedisConfig::Deploy { .. } => Some(format!(
            "redis://{}:{}",
            names::service_dns(&names::redis(spec.cluster_name()), spec.namespace()),
            names::REDIS_PORT
        )),
    }
}

/// The head Pod template: the default one below, with the head node type's `node_config`
/// merged over it ([`template::merge`]).
pub fn head_pod_template(spec: &ClusterSpec, inputs_hash: &str, tls: bool) -> Value {
    let cluster = spec.cluster_name();
    let head_type = &spec.config.head_node_type;
    let port = spec.k8s.gcs_port;
    let mut container = json!({
        "name": names::CONTAINER_NAME,
        "image": spec.k8s.image,
        "command": head_command(spec),
        "env": miniray_env(cluster, head_type, tls),
        "ports": [
            {"name": "gcs", "containerPort": port, "protocol": "TCP"},
            {"name": "dashboard", "containerPort": names::DASHBOARD_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": tcp_probe(json!(port)),
        "volumeMounts": [{"name": "config", "mountPath": names::CONFIG_DIR, "readOnly": true}],
    });
    if let Some(policy) = &spec.k8s.image_pull_policy {
        container["imagePullPolicy"] = json!(policy);
    }
    let mut volumes =
        vec![json!({"name": "config", "configMap": {"name": names::config_map(cluster)}})];
    if tls {
        if let Some(mounts) = container["volumeMounts"].as_array_mut() {
            mounts.push(json!({"name": "tls", "mountPath": names::TLS_DIR, "readOnly": true}));
        }
        volumes.push(tls_volume(cluster));
    }
    let mut template = json!({
        "metadata": {
            "labels": labels(cluster, &[
                (names::LABEL_COMPONENT, names::COMPONENT_HEAD),
                (names::LABEL_NODE_TYPE, head_type),
            ]),
            "annotations": { INPUTS_HASH_ANNOTATION: inputs_hash },
        },
        "spec": {
            "serviceAccountName": names::service_account(cluster),
            "containers": [container],
            "volumes": volumes,
        },
    });
    if let Some(node_config) = spec
        .config
        .node_types
        .get(head_type)
        .map(|t| &t.node_config)
        && node_config.is_object()
    {
        template::merge(&mut template, node_config);
    }
    template
}

/// The token Secret's TLS keys only (the token reaches the container as an env variable).
fn tls_volume(cluster: &str) -> Value {
    let items: Vec<Value> = [names::TLS_CERT_KEY, names::TLS_KEY_KEY, names::TLS_CA_KEY]
        .iter()
        .map(|k| json!({"key": k, "path": k}))
        .collect();
    json!({"name": "tls", "secret": {"secretName": names::token_secret(cluster), "items": items}})
}

fn head_deployment(spec: &ClusterSpec, inputs_hash: &str, tls: bool) -> Manifest {
    let template = head_pod_template(spec, inputs_hash, tls);
    deployment(
        spec,
        &names::head_deployment(spec.cluster_name()),
        names::COMPONENT_HEAD,
        template,
    )
}

/// The manifests as one multi-document YAML stream (`---` between documents), as
/// `up --dry-run` prints them and `kubectl apply -f` reads them.
pub fn to_yaml(manifests: &[Manifest]) -> Result<String, super::DeployError> {
    let objects: Vec<&Value> = manifests.iter().map(|m| &m.object).collect();
    serde_saphyr::to_string_multiple(&objects).map_err(|e| super::DeployError::Yaml(e.to_string()))
}
