//! The one HTTPS server loop, shared by the dashboard port (with the cluster's TLS) and the
//! Kubernetes simulator's API server: TLS on each accepted connection, then HTTP/1.1 or
//! HTTP/2 (by ALPN) served by an axum router.

use std::future::Future;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// Accepts TLS connections on `listener` until `shutdown` resolves; a failed handshake ends
/// that connection only. Connections still open when it returns are aborted.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: axum::Router,
    shutdown: impl Future<Output = ()>,
) {
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting an HTTPS connection failed");
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let service = TowerToHyperService::new(router.clone());
                connections.spawn(async move {
                    let stream = match acceptor.accept(tcp).await {
                        Ok(stream) => stream,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                    };
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                        tracing::debug!(%peer, error = %e, "HTTPS connection ended with an error");
                    }
                });
            }
        }
    }
}
