//! The Kubernetes API simulator: the part of a cluster miniray's provider and `miniray up`
//! talk to, run in this process so the Kubernetes code paths can be tested on one machine.
//!
//! - [`api`]: an HTTPS API server holding objects in memory (Pods, Services, Deployments,
//!   RBAC, …) with the real server's semantics for names, resourceVersions, selectors,
//!   watches and graceful Pod deletion. RBAC objects are stored but not enforced: one bearer
//!   token is the whole of authentication and authorization.
//!
//! Everything else (the kubelet, the controllers) is a client of [`api`] through kube-rs,
//! exactly as on a real cluster.

pub mod api;
pub mod controllers;
pub mod kubelet;
pub mod simulator;

use std::path::{Path, PathBuf};

pub use api::ApiServer;
pub use simulator::{Simulator, SimulatorConfig, SimulatorError};

/// The folder of Pod `namespace/name` under the simulator's state folder: the kubelet keeps
/// the Pod's volumes and container logs there, and the API server reads the logs from it.
pub fn pod_dir(state_dir: &Path, namespace: &str, name: &str) -> PathBuf {
    state_dir.join("pods").join(format!("{namespace}_{name}"))
}

/// The log of container `container` of Pod `namespace/name` (stdout and stderr).
pub fn container_log(state_dir: &Path, namespace: &str, name: &str, container: &str) -> PathBuf {
    pod_dir(state_dir, namespace, name).join(format!("{container}.log"))
}

/// What can go wrong starting or reaching the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot make the API server's certificates: {0}")]
    Certificates(String),
    #[error("cannot set up the API server's TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the simulator's kubeconfig is not usable: {0}")]
    Kubeconfig(String),
    #[error("cannot make a Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("no address to listen on")]
    NoListenAddress,
}

/// The name of the cluster, user and context in the kubeconfig [`ApiAccess`] writes.
pub const KUBECONFIG_NAME: &str = "miniray-sim";

/// How a client reaches the simulated API server.
///
/// `url` is for processes on this machine; Pods dial `pod_host:port` (the server's certificate
/// names every listen address, `localhost` and the `kubernetes.default.svc…` names).
#[derive(Clone, Debug)]
pub struct ApiAccess {
    /// `https://127.0.0.1:PORT` (the first listen address).
    pub url: String,
    /// The IP Pods dial: the Pod network's bridge IP, or 127.0.0.1.
    pub pod_host: String,
    pub port: u16,
    /// The CA that signed the server's certificate, PEM.
    pub ca_pem: String,
    /// The bearer token every request must carry.
    pub token: String,
}

impl ApiAccess {
    /// A kubeconfig whose cluster, user and context are all named `miniray-sim`, with the
    /// `default` namespace, the CA inline and the bearer token.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: {n}\n  \
               cluster:\n    \
                 server: {url}\n    \
                 certificate-authority-data: {ca}\n\
             users:\n\
             - name: {n}\n  \
               user:\n    \
                 token: {token}\n\
             contexts:\n\
             - name: {n}\n  \
               context:\n    \
                 cluster: {n}\n    \
                 user: {n}\n    \
                 namespace: default\n\
             current-context: {n}\n",
            n = KUBECONFIG_NAME,
            url = self.url,
            ca = base64(self.ca_pem.as_bytes()),
            token = self.token,
        )
    }

    /// Writes [`Self::kubeconfig_yaml`] to `path` with mode 0600 (it holds the token),
    /// replacing a file already there.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), SimError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let err = |source| SimError::Write {
            path: path.to_path_buf(),
            source,
        };
        // Removed first so the new file gets mode 0600 even if an older one was readable.
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
            _ => {}
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        file.write_all(self.kubeconfig_yaml().as_bytes())
            .map_err(err)
    }

    /// A kube-rs client for the server, made through kube's kubeconfig path so it is
    /// configured exactly as a user's client reading the written kubeconfig would be.
    pub async fn client(&self) -> Result<kube::Client, SimError> {
        // kube builds its rustls config with the process default provider; ring is the only
        // one compiled in, installing it again is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&self.kubeconfig_yaml())
            .map_err(|e| SimError::Kubeconfig(e.to_string()))?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .map_err(|e| SimError::Kubeconfig(e.to_string()))?;
        Ok(kube::Client::try_from(config)?)
    }
}

/// Standard base64 with padding (the kubeconfig's `certificate-authority-data`).
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(plain.as_bytes()), encoded);
        }
    }
}
