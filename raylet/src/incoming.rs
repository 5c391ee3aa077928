//! One port, two planes: the raylet's listener hands each connection it accepts to the
//! object data plane or to gRPC, by the connection's first byte
//! ([`data_plane::is_data_plane`]).
//!
//! Invariant: every connection is accepted here, so nothing reaches a server that this
//! listener's bind address (the node's `bind_host`) does not let in; each plane checks the
//! cluster token itself.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::object_manager::ObjectManager;
use crate::object_manager::data_plane;

/// How long a new connection may stay silent before it is closed (clients of either
/// plane speak first: an HTTP/2 client its preface, a data-plane client its magic).
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed accept (out of file descriptors, say), so that the loop does not
/// spin while connections close.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts on `listener` until `shutdown` turns true: data-plane connections are served
/// by `objects`, the others come out of the returned stream, for tonic.
pub(crate) fn route(
    listener: TcpListener,
    objects: Arc<ObjectManager>,
    mut shutdown: watch::Receiver<bool>,
) -> ReceiverStream<std::io::Result<TcpStream>> {
    let (grpc, incoming) = mpsc::channel(128);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((conn, _)) => {
                    if let Err(e) = conn.set_nodelay(true) {
                        tracing::debug!(error = %e, "could not set TCP_NODELAY");
                    }
                    tokio::spawn(route_one(conn, Arc::clone(&objects), grpc.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    });
    ReceiverStream::new(incoming)
}

async fn route_one(
    conn: TcpStream,
    objects: Arc<ObjectManager>,
    grpc: mpsc::Sender<std::io::Result<TcpStream>>,
) {
    let mut first = [0u8; 1];
    match tokio::time::timeout(FIRST_BYTE_TIMEOUT, conn.peek(&mut first)).await {
        Ok(Ok(1..)) if data_plane::is_data_plane(first[0]) => {
            objects.serve_connection(conn).await;
        }
        Ok(Ok(1..)) => {
            // Fails only once the server is gone.
            let _ = grpc.send(Ok(conn)).await;
        }
        // Closed before a byte, failed, or silent: dropped.
        _ => {}
    }
}
