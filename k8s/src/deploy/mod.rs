//! `miniray up` / `miniray down`: a cluster's head on Kubernetes, from its autoscaling config.
//!
//! - [`manifests`]: every object `up` applies, built from the config alone (no API call), in
//!   apply order; `up --dry-run` prints them.
//! - [`apply`]: applies them idempotently (create, leave unchanged, or replace), each object
//!   carrying [`HASH_ANNOTATION`], the hash of what was desired when it was written.
//! - [`wait`]: waits for the head Deployment to be ready.
//! - [`down`]: deletes everything `up` created and every Pod of the cluster, and waits until
//!   they are gone.
//!
//! [`up`] runs the first three in order. Recording the head's address on this machine is
//! the CLI's job (it is what `miniray start --head` does), so this module touches no file.

pub mod apply;
pub mod down;
pub mod manifests;
pub mod wait;

use std::path::{Path, PathBuf};
use std::time::Duration;

use miniray_autoscaler::config::{AutoscalingConfig, ConfigError};

use crate::config::{KubernetesConfig, KubernetesConfigError};
use crate::names;

pub use apply::{Action, Applied};
pub use down::Deleted;
pub use manifests::{Kind, Manifest};

/// The annotation every applied object carries: the hash of the object as `up` built it
/// (without this annotation). Equal hashes mean nothing to write.
pub const HASH_ANNOTATION: &str = "miniray.io/config-hash";
/// On the head Pod template: the hash of the ConfigMap and the Secret, so a changed config
/// (or TLS material) rolls the head, which reads both only at start.
pub const INPUTS_HASH_ANNOTATION: &str = "miniray.io/inputs-hash";

/// Why `up` or `down` failed. Messages say what was being done and to which object, and
/// hold the whole cause (hence `cause`, not a `source` an error reporter would print again).
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// The autoscaling config was refused (its message names the field and the line).
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("autoscaling config{}: line {line}: {cause}", path_suffix(path))]
    Kubernetes {
        path: Option<PathBuf>,
        line: u64,
        cause: KubernetesConfigError,
    },
    #[error("cannot read the TLS {what} {}: {cause}", path.display())]
    Tls {
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(transparent)]
    TlsSetting(#[from] miniray_common::tls::TlsError),
    #[error("{action} {kind} {namespace}/{name}: {}", describe_api_error(cause))]
    Api {
        action: &'static str,
        kind: &'static str,
        namespace: String,
        name: String,
        cause: Box<kube::Error>,
    },
    #[error(
        "listing {kind} in namespace {namespace} with label {selector}: {}",
        describe_api_error(cause)
    )]
    ApiList {
        kind: &'static str,
        namespace: String,
        selector: String,
        cause: Box<kube::Error>,
    },
    #[error("{kind} {namespace}/{name} kept changing under us ({attempts} conflicting writes)")]
    Conflict {
        kind: &'static str,
        namespace: String,
        name: String,
        attempts: u32,
    },
    #[error(
        "the Secret {namespace}/{name} has no readable `token` key; delete it or run `miniray down` first"
    )]
    BadToken { namespace: String, name: String },
    #[error("cannot use the kubeconfig {}: {message}", path.display())]
    Kubeconfig { path: PathBuf, message: String },
    #[error(
        "cannot find the Kubernetes API (no --kubeconfig given, and neither KUBECONFIG, \
         ~/.kube/config nor an in-cluster service account works): {0}"
    )]
    NoKubeconfig(String),
    #[error("cannot make a client for the Kubernetes API at {url}: {message}")]
    Client { url: String, message: String },
    #[error("cannot write the manifests as YAML: {0}")]
    Yaml(String),
    #[error("timed out after {}s {what}", waited.as_secs())]
    Timeout { what: String, waited: Duration },
}

fn path_suffix(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" {}", p.display()))
        .unwrap_or_default()
}

/// Says what an API failure means for the user: unreachable, forbidden (RBAC), or the
/// server's own message.
pub fn describe_api_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => match status.code {
            401 => format!(
                "the Kubernetes API refused our credentials (401 Unauthorized): {}",
                status.message
            ),
            403 => format!(
                "forbidden by the cluster's RBAC (403): {} — the kubeconfig's user needs rights \
                 on this kind in this namespace",
                status.message
            ),
            404 if status.message.contains("namespace") => format!(
                "the Kubernetes API answered 404 NotFound: {} (create the namespace first, or \
                 name another in provider.namespace)",
                status.message
            ),
            code => format!(
                "the Kubernetes API answered {code} {}: {}",
                status.reason, status.message
            ),
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            format!("cannot reach the Kubernetes API: {}", error_chain(e))
        }
        other => error_chain(other),
    }
}

/// An error with its sources, `a: b: c` (hyper's own Display says only "client error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The HTTP status of an API error, if the server answered.
pub(crate) fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// A cluster as `up` and `down` see it: the config file's text (what the ConfigMap holds,
/// byte for byte) and the checked config.
///
/// Invariant: `config.provider` is a checked Kubernetes section, `k8s`.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub text: String,
    pub config: AutoscalingConfig,
    pub k8s: KubernetesConfig,
    /// Ray keys the config parser ignored.
    pub warnings: Vec<String>,
}

impl ClusterSpec {
    /// Reads and checks a config file; a refusal names the file, the field and the line.
    pub fn load(path: &Path) -> Result<Self, DeployError> {
        let text = std::fs::read_to_string(path).map_err(|cause| DeployError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        Self::parse_named(text, Some(path))
    }

    /// Checks a config given as text.
    pub fn parse(text: impl Into<String>) -> Result<Self, DeployError> {
        Self::parse_named(text.into(), None)
    }

    fn parse_named(text: String, path: Option<&Path>) -> Result<Self, DeployError> {
        let (config, warnings) =
            miniray_autoscaler::config::parse(&text).map_err(|e| match path {
                Some(p) => ConfigError::File {
                    path: p.to_path_buf(),
                    source: Box::new(e),
                },
                None => e,
            })?;
        let k8s = KubernetesConfig::from_autoscaling(&config).map_err(|cause| {
            let line = match &cause {
                KubernetesConfigError::Invalid { field, .. } => line_of(&text, field),
                KubernetesConfigError::NotKubernetes => line_of(&text, "provider.type"),
            };
            DeployError::Kubernetes {
                path: path.map(Path::to_path_buf),
                line,
                cause,
            }
        })?;
        Ok(ClusterSpec {
            text,
            config,
            k8s,
            warnings,
        })
    }

    pub fn cluster_name(&self) -> &str {
        &self.config.cluster_name
    }

    pub fn namespace(&self) -> &str {
        &self.k8s.namespace
    }

    /// What drivers, workers and `miniray status` dial: the head Service's cluster DNS name
    /// and the GCS port.
    pub fn head_address(&self) -> String {
        format!(
            "{}:{}",
            names::service_dns(&names::head_service(self.cluster_name()), self.namespace()),
            self.k8s.gcs_port
        )
    }
}

/// The line (1-based) a dotted field such as `provider.redis.address` is on: each part is
/// looked for as a `key:` after the previous one (block or flow style); a part not found
/// (a missing field) leaves the line of its parent. 0 when not even the first part is found.
fn line_of(text: &str, field: &str) -> u64 {
    let lines: Vec<&str> = text.lines().collect();
    let mut found: Option<usize> = None;
    for part in field.split('.') {
        let start = found.unwrap_or(0);
        let key = format!("{part}:");
        let hit = lines.iter().enumerate().skip(start).find(|(_, l)| {
            let code = l.split('#').next().unwrap_or("");
            code.match_indices(&key).any(|(i, _)| {
                // A whole key: preceded by the line's start, a space, `{` or `,`.
                code[..i]
                    .chars()
                    .last()
                    .is_none_or(|c| c == ' ' || c == '{' || c == ',' || c == '\t')
            })
        });
        match hit {
            Some((i, _)) => found = Some(i),
            None => break,
        }
    }
    found.map(|i| i as u64 + 1).unwrap_or(0)
}

/// TLS material for the cluster's Pods: the PEM files named by `MINIRAY_TLS_*` on the
/// machine running `up`, put into the token Secret and mounted at [`names::TLS_DIR`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub ca: Vec<u8>,
}

impl TlsPem {
    /// The material named by `MINIRAY_TLS_CERT`, `MINIRAY_TLS_KEY` and `MINIRAY_TLS_CA`:
    /// `None` when TLS is off; the files are read and checked (as `miniray start` does).
    pub fn from_env() -> Result<Option<TlsPem>, DeployError> {
        let Some(files) = miniray_common::tls::TlsFiles::from_env()? else {
            return Ok(None);
        };
        // Checked now, so a bad file stops `up` before anything is applied.
        files.load()?;
        let read = |what, path: &Path| {
            std::fs::read(path).map_err(|cause| DeployError::Tls {
                what,
                path: path.to_path_buf(),
                cause,
            })
        };
        Ok(Some(TlsPem {
            cert: read("certificate", &files.cert)?,
            key: read("key", &files.key)?,
            ca: read("CA certificate", &files.ca)?,
        }))
    }
}

/// What goes into the token Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secrets {
    /// The cluster token: kept from the live Secret on a later `up`.
    pub token: String,
    pub tls: Option<TlsPem>,
}

/// A step of `up` worth telling the user about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// One object applied (created, updated or unchanged).
    Applied(Applied),
    /// One object `down` deleted.
    Deleted(down::Deleted),
    /// A line about what is being waited for (the head Pod's state, Pods still there).
    Waiting(String),
}

/// A client for the Kubernetes API: from the kubeconfig at `kubeconfig` (its current
/// context), else as kube-rs infers it (`KUBECONFIG`, `~/.kube/config`, in-cluster). Returns
/// the API server's URL too, for messages. Contacts nothing yet.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<(kube::Client, String), DeployError> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    // kube's rustls needs a process-wide crypto provider; ring is the only one compiled in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = match kubeconfig {
        Some(path) => {
            let bad = |e: &dyn std::error::Error| DeployError::Kubeconfig {
                path: path.to_path_buf(),
                message: error_chain(e),
            };
            let file = Kubeconfig::read_from(path).map_err(|e| bad(&e))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| bad(&e))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| DeployError::NoKubeconfig(error_chain(&e)))?,
    };
    let url = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).map_err(|e| DeployError::Client {
        url: url.clone(),
        message: error_chain(&e),
    })?;
    Ok((client, url))
}

/// `up --dry-run`: every manifest `up` would apply with this token and TLS material, as
/// one multi-document YAML stream. Contacts nothing.
pub fn dry_run(
    spec: &ClusterSpec,
    token: &str,
    tls: Option<TlsPem>,
) -> Result<String, DeployError> {
    let secrets = Secrets {
        token: token.to_string(),
        tls,
    };
    manifests::to_yaml(&manifests::build(spec, &secrets))
}

/// Runs `up`: reads the live token (or, the first time, takes `new_token`, else generates
/// one), applies every manifest in order, then waits until the head Deployment has a ready
/// replica; the whole within `timeout`. Returns the head address
/// ([`ClusterSpec::head_address`]) and the token, for the caller to record.
pub async fn up(
    client: &kube::Client,
    spec: &ClusterSpec,
    tls: Option<TlsPem>,
    new_token: Option<String>,
    timeout: Duration,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<(String, String), DeployError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let token = match apply::existing_token(client, spec).await? {
        Some(token) => token,
        None => new_token
            .filter(|t| !t.is_empty())
            .unwrap_or_else(miniray_common::auth::generate_token),
    };
    let secrets = Secrets {
        token: token.clone(),
        tls,
    };
    let manifests = manifests::build(spec, &secrets);
    apply::apply(client, &manifests, &mut |applied| {
        progress(Progress::Applied(applied.clone()))
    })
    .await?;
    wait::head_ready(client, spec, deadline, &mut |line| {
        progress(Progress::Waiting(line))
    })
    .await
    .map_err(|e| whole_timeout(e, timeout))?;
    Ok((spec.head_address(), token))
}

/// A timeout reports the whole time allowed (`--timeout`), not only its last phase.
fn whole_timeout(e: DeployError, timeout: Duration) -> DeployError {
    match e {
        DeployError::Timeout { what, .. } => DeployError::Timeout {
            what,
            waited: timeout,
        },
        other => other,
    }
}

/// Runs `down`: deletes every object of the cluster and its Pods, and waits (at most
/// `timeout`) until the Pods are gone. Returns what was deleted.
pub async fn down(
    client: &kube::Client,
    spec: &ClusterSpec,
    timeout: Duration,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Vec<Deleted>, DeployError> {
    down::down(
        client,
        spec,
        tokio::time::Instant::now() + timeout,
        progress,
    )
    .await
}

/// The objects of `api` (in `namespace`) labelled `selector`; an error names `kind`.
async fn list_labelled<K>(
    api: &kube::Api<K>,
    kind: &'static str,
    namespace: &str,
    selector: &str,
) -> Result<Vec<K>, DeployError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&kube::api::ListParams::default().labels(selector))
        .await
        .map(|l| l.items)
        .map_err(|e| DeployError::ApiList {
            kind,
            namespace: namespace.to_string(),
            selector: selector.to_string(),
            cause: Box::new(e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_on_their_line() {
        let text = "cluster_name: demo\nprovider:\n  type: kubernetes\n  image: m\n  redis: { address: r:1 }\nhead_node_type: head\n";
        assert_eq!(line_of(text, "provider"), 2);
        assert_eq!(line_of(text, "provider.image"), 4);
        assert_eq!(line_of(text, "provider.redis.address"), 5);
        // Missing: the parent's line.
        assert_eq!(line_of(text, "provider.namespace"), 2);
        assert_eq!(line_of(text, "nothing"), 0);
        // `type:` is not found inside `node_type:`.
        assert_eq!(line_of("head_node_type: x\ntype: y\n", "type"), 2);
    }

    #[test]
    fn a_bad_provider_section_names_field_and_line() {
        let text = "cluster_name: demo\nprovider:\n  type: kubernetes\n  namespace: Bad_NS\n  image: m\nhead_node_type: head\navailable_node_types:\n  head: { resources: { CPU: 0 } }\n";
        let e = ClusterSpec::parse(text).unwrap_err().to_string();
        assert!(
            e.contains("line 4") && e.contains("provider.namespace"),
            "{e}"
        );
    }
}
