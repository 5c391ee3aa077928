//! How miniray processes talk: the one place where servers and client channels are
//! configured.
//!
//! Invariants:
//! - Every tonic server is built by [`server_builder`] and every client channel by
//!   [`endpoint`] (through `auth::connect`/`connect_lazy`), so HTTP/2 keepalive, flow
//!   control windows, `TCP_NODELAY` and TLS ([`crate::tls`]) are the same everywhere.
//!   Message size limits are per service in tonic; every service uses
//!   [`crate::config::MAX_MESSAGE_SIZE`].
//! - Both ends ping every [`KEEPALIVE_INTERVAL`], also on idle connections, and close a
//!   connection whose ping is not answered within [`KEEPALIVE_TIMEOUT`]. A call to a peer
//!   whose link was cut without FIN or RST therefore fails within about 10 s, the GCS's
//!   node timeout, instead of hanging until TCP gives up (minutes).
//! - With TLS on, a server accepts only clients with a certificate from the cluster CA, and
//!   a client talks only to servers whose certificate from that CA names `miniray`.

use std::time::Duration;

use tonic::transport::{Endpoint, Server};
use tower_layer::{Identity, Stack};

use crate::metrics::RpcMetricsLayer;

use crate::auth::AuthError;
use crate::tls;

/// How often each end of a connection sends an HTTP/2 ping.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a ping may go unanswered before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout for establishing a TCP connection to a miniray server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 flow-control windows: large enough that an object-manager chunk or a large
/// argument does not stall on window updates.
const STREAM_WINDOW: u32 = 8 << 20;
const CONNECTION_WINDOW: u32 = 32 << 20;
/// Largest HTTP/2 frame this end accepts: object chunks travel in frames this big rather
/// than the protocol's default 16 KiB, 64 times fewer of them.
const MAX_FRAME: u32 = 1 << 20;

/// The builder of every miniray server: keepalive, windows, this process's TLS setting,
/// and the RPC latency histograms ([`crate::metrics`]). Servers that accept sockets
/// themselves must still set `TCP_NODELAY` on them (tonic's option only covers listeners it
/// binds).
pub fn server_builder() -> Server<Stack<RpcMetricsLayer, Identity>> {
    tls::current()
        .map_or_else(Server::builder, tls::Tls::server)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .max_frame_size(Some(MAX_FRAME))
        .tcp_nodelay(true)
        .layer(RpcMetricsLayer)
}

/// The endpoint of every client channel to `address` (`HOST:PORT`, or a URI): keepalive,
/// windows, and this process's TLS setting (`https` with TLS on).
pub fn endpoint(address: &str) -> Result<Endpoint, AuthError> {
    let tls = tls::current();
    let bare = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"))
        .unwrap_or(address);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let bad = |reason: String| AuthError::BadAddress {
        address: address.to_string(),
        reason,
    };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{bare}"))
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .http2_adaptive_window(true)
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .max_frame_size(Some(MAX_FRAME));
    match tls {
        Some(tls) => endpoint
            .tls_config(tls.client())
            .map_err(|e| bad(crate::auth::error_chain(&e))),
        None => Ok(endpoint),
    }
}
