//! The simulated API server: HTTPS with one bearer token, objects in memory.
//!
//! A faithful subset of kube-apiserver for the kinds in [`resources`]: the real paths, JSON
//! bodies (the k8s-openapi types' JSON), `Status` errors, resourceVersions from one counter,
//! label and field selectors, watches with history, merge patches and graceful Pod deletion.
//! Not served: RBAC enforcement (any request with the token may do anything), admission,
//! finalizers, `limit`/`continue` paging (lists are whole), protobuf, OpenAPI, `exec` and
//! `attach`. A Pod's `log` is served from the files the kubelet writes (whole or its last
//! `tailLines`; `follow` returns what is written so far instead of streaming).
//! Namespaces must exist before objects are created in them (404 otherwise, as on a real
//! cluster); `default`, `kube-system` and `kube-public` exist from the start, each with its
//! `default` ServiceAccount, and deleting a namespace removes everything in it at once.
//! Server-side apply is approximated: create when missing, else a merge patch.

mod discovery;
mod handlers;
mod meta;
mod objects;
mod patch;
mod resources;
mod selectors;
mod status;
mod store;
mod table;
mod tls;
mod validation;
mod watch;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::{ApiAccess, SimError};

/// How many times a port free on the first listen address is tried on the others.
const PORT_ATTEMPTS: usize = 20;

/// A running API server. Dropping it without [`ApiServer::shutdown`] aborts its tasks.
pub struct ApiServer {
    access: ApiAccess,
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl ApiServer {
    /// Starts a server on one port on every address of `listen` (the first one is in
    /// [`ApiAccess::url`]); its certificate also names `pod_host`, the address Pods dial.
    /// Pods' `log` is read from the kubelet's files under `state_dir` (see
    /// [`super::container_log`]); without one, every log is empty.
    pub async fn start(
        listen: &[IpAddr],
        pod_host: IpAddr,
        state_dir: Option<PathBuf>,
    ) -> Result<ApiServer, SimError> {
        let first = *listen.first().ok_or(SimError::NoListenAddress)?;
        let listeners = bind_all(listen).await?;
        let port = listeners[0]
            .local_addr()
            .map_err(|source| SimError::Listen {
                addr: SocketAddr::new(first, 0),
                source,
            })?
            .port();
        let mut names: Vec<IpAddr> = listen.to_vec();
        if !names.contains(&pod_host) {
            names.push(pod_host);
        }
        let tls = tls::make(&names)?;
        let token = hex::encode(rand::random::<[u8; 24]>());
        let url = format!("https://{}", SocketAddr::new(first, port));
        let access = ApiAccess {
            url,
            pod_host: pod_host.to_string(),
            port,
            ca_pem: tls.ca_pem.clone(),
            token: token.clone(),
        };

        let store = Arc::new(store::Store::new());
        objects::bootstrap(&mut store.lock());
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let app = Arc::new(handlers::App {
            store,
            token,
            server_address: SocketAddr::new(first, port).to_string(),
            shutdown: shutdown_rx.clone(),
            state_dir,
        });
        let router = axum::Router::new()
            .fallback(handlers::handle)
            .with_state(app);
        let acceptor = TlsAcceptor::from(tls.config);
        let mut tasks = JoinSet::new();
        for listener in listeners {
            let mut shutdown = shutdown_rx.clone();
            tasks.spawn(miniray_common::https::serve_tls(
                listener,
                acceptor.clone(),
                router.clone(),
                async move {
                    let _ = shutdown.changed().await;
                },
            ));
        }
        tracing::info!(url = %access.url, pod_host = %access.pod_host, "simulated Kubernetes API server listening");
        Ok(ApiServer {
            access,
            shutdown,
            tasks,
        })
    }

    pub fn access(&self) -> &ApiAccess {
        &self.access
    }

    /// Stops accepting, ends every watch and closes every connection.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Binds one port on every address: a free port on the first, then the same on the others
/// (another port if one of them has it taken).
async fn bind_all(listen: &[IpAddr]) -> Result<Vec<TcpListener>, SimError> {
    let mut last_error = None;
    for _ in 0..PORT_ATTEMPTS {
        let first = SocketAddr::new(listen[0], 0);
        let listener = TcpListener::bind(first)
            .await
            .map_err(|source| SimError::Listen {
                addr: first,
                source,
            })?;
        let port = listener
            .local_addr()
            .map_err(|source| SimError::Listen {
                addr: first,
                source,
            })?
            .port();
        let mut listeners = vec![listener];
        for ip in &listen[1..] {
            let addr = SocketAddr::new(*ip, port);
            match TcpListener::bind(addr).await {
                Ok(l) => listeners.push(l),
                Err(source) if source.kind() == std::io::ErrorKind::AddrInUse => {
                    last_error = Some(SimError::Listen { addr, source });
                    break;
                }
                Err(source) => return Err(SimError::Listen { addr, source }),
            }
        }
        if listeners.len() == listen.len() {
            return Ok(listeners);
        }
    }
    Err(last_error.unwrap_or(SimError::NoListenAddress))
}
