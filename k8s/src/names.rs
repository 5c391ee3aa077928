//! Names of everything miniray creates on Kubernetes: labels, objects, mount paths.
//!
//! Invariant: every object `up` creates and every worker Pod carries
//! [`LABEL_CLUSTER`]` = <cluster_name>` and [`LABEL_MANAGED_BY`]` = miniray`, so `down`
//! and the provider find exactly this cluster's objects by label.

/// The cluster an object belongs to (its `cluster_name`).
pub const LABEL_CLUSTER: &str = "miniray.io/cluster";
/// A worker Pod's node type.
pub const LABEL_NODE_TYPE: &str = "miniray.io/node-type";
/// The autoscaler's launch request that created a worker Pod (makes launches idempotent).
pub const LABEL_LAUNCH_REQUEST: &str = "miniray.io/launch-request";
/// What a Pod is: [`COMPONENT_HEAD`], [`COMPONENT_WORKER`] or [`COMPONENT_REDIS`].
pub const LABEL_COMPONENT: &str = "miniray.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "miniray";

pub const COMPONENT_HEAD: &str = "head";
pub const COMPONENT_WORKER: &str = "worker";
pub const COMPONENT_REDIS: &str = "redis";

/// The container that runs `miniray` in head and worker Pods.
pub const CONTAINER_NAME: &str = "miniray";
/// The executable in the image (`k8s/Dockerfile` puts it on `PATH`).
pub const MINIRAY_COMMAND: &str = "miniray";

/// The head's GCS port (`miniray start --port`) unless the provider section says otherwise.
pub const DEFAULT_GCS_PORT: u16 = 6379;
/// The head's dashboard port (job submission): Ray's, and `miniray start`'s default.
pub const DASHBOARD_PORT: u16 = 8265;
pub const REDIS_PORT: u16 = 6379;

/// Where the head Pod finds the cluster config (the ConfigMap, mounted).
pub const CONFIG_DIR: &str = "/etc/miniray";
pub const CONFIG_KEY: &str = "cluster.yaml";
/// Where head and worker Pods find the TLS material (the Secret, mounted) when TLS is on.
pub const TLS_DIR: &str = "/etc/miniray-tls";
/// Keys of the token Secret.
pub const TOKEN_KEY: &str = "token";
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";
pub const TLS_CA_KEY: &str = "ca.crt";

pub fn head_deployment(cluster: &str) -> String {
    format!("{cluster}-head")
}

/// The Service in front of the head Pod; workers and drivers dial its DNS name.
pub fn head_service(cluster: &str) -> String {
    format!("{cluster}-head")
}

/// The head's ServiceAccount, Role and RoleBinding (the autoscaler's rights on Pods).
pub fn service_account(cluster: &str) -> String {
    format!("{cluster}-autoscaler")
}

pub fn token_secret(cluster: &str) -> String {
    format!("{cluster}-token")
}

pub fn config_map(cluster: &str) -> String {
    format!("{cluster}-config")
}

/// The Redis Deployment and Service `up` deploys when the config asks for one.
pub fn redis(cluster: &str) -> String {
    format!("{cluster}-redis")
}

/// `generateName` of a worker Pod of `node_type`.
pub fn worker_generate_name(cluster: &str, node_type: &str) -> String {
    format!("{cluster}-{node_type}-")
}

/// The cluster DNS name of a Service.
pub fn service_dns(service: &str, namespace: &str) -> String {
    format!("{service}.{namespace}.svc.cluster.local")
}

/// Why `name` is not a DNS-1123 label (lowercase alphanumerics and `-`, starting and ending
/// alphanumeric, at most `max` bytes), if it is not.
pub fn dns_label_error(name: &str, max: usize) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > max {
        return Some(format!("must be at most {max} characters"));
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if !name.chars().all(ok_char) {
        return Some("may hold only lowercase letters, digits and '-'".into());
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some("must start and end with a letter or digit".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        assert_eq!(dns_label_error("demo-1", 63), None);
        assert!(dns_label_error("", 63).is_some());
        assert!(dns_label_error("Demo", 63).is_some());
        assert!(dns_label_error("demo_1", 63).is_some());
        assert!(dns_label_error("-demo", 63).is_some());
        assert!(dns_label_error(&"a".repeat(64), 63).is_some());
    }

    #[test]
    fn service_names_resolve_in_the_cluster_domain() {
        assert_eq!(
            service_dns(&head_service("demo"), "rl"),
            "demo-head.rl.svc.cluster.local"
        );
    }
}
