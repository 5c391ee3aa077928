//! miniray-gcs: the Global Control Store on the head node.
//!
//! One tonic service (`Gcs` in `proto/gcs.proto`) over the cluster tables: nodes (with a
//! heartbeat health check), jobs, content-addressed executables and a namespaced KV store,
//! plus pub/sub of node, job and actor changes, and the actor manager ([`actors`]) that
//! places, creates, restarts and kills actors. Storage sits behind [`storage::Storage`]: in
//! memory by default, or written through to Redis so that a GCS restarted on the same
//! Redis reloads the cluster state.

pub mod storage;
pub mod testing;

mod actors;
mod autoscaling;
mod driver_monitor;
mod executables;
mod metrics;
mod service;
mod task_events;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use miniray_common::auth::{TokenCheck, error_chain};
use miniray_common::config::{DEFAULT_NODE_TIMEOUT, MAX_MESSAGE_SIZE};
use miniray_proto::gcs_server::GcsServer as GcsGrpcServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;

pub use service::MAX_EXECUTABLE_SIZE;
use service::{GcsService, GcsState, health_loop, stopped};
use storage::{MemoryStorage, RedisStorage, Storage, StorageError};
pub use task_events::DEFAULT_MAX_TASK_EVENTS;

/// Where the GCS keeps its tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StorageConfig {
    /// In process memory: lost when the GCS exits.
    #[default]
    Memory,
    /// Written through to Redis at `url` (`redis://host:port`); reloaded on restart.
    Redis { url: String },
}

#[derive(Debug, Clone)]
pub struct GcsConfig {
    /// Address to listen on; port 0 picks a free port (see [`GcsHandle::address`]).
    pub bind: SocketAddr,
    /// The cluster token every RPC must carry.
    pub token: String,
    pub storage: StorageConfig,
    /// A node silent for this long is marked dead.
    pub node_timeout: Duration,
    /// Reported by `GetClusterStatus`.
    pub session_name: String,
    /// Dead actors kept in the actor table (and storage) so callers learn why an actor
    /// died; older ones are forgotten first. Live actors are never forgotten.
    pub max_destroyed_actors: usize,
    /// Serve Prometheus metrics (`/metrics`) on this port of the bind address (0: any free
    /// port); `None`: no metrics endpoint.
    pub metrics_port: Option<u16>,
    /// Task-event entries kept (about two per task; memory only);
    /// the batches that arrived first go first.
    pub max_task_events: usize,
    /// How long the executable of the last finished job stays stored when no running job
    /// uses it, so that its driver run again need not upload it (zero: removed at once).
    pub unused_executable_ttl: Duration,
}

/// Default of [`GcsConfig::unused_executable_ttl`] (as long as Ray pins an uploaded
/// runtime-env package, `RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S`).
pub const DEFAULT_UNUSED_EXECUTABLE_TTL: Duration = Duration::from_secs(600);

/// Default of [`GcsConfig::max_destroyed_actors`] (Ray's
/// `maximum_gcs_destroyed_actor_cached_count`).
pub const DEFAULT_MAX_DESTROYED_ACTORS: usize = 10_000;

impl GcsConfig {
    /// Loopback on a free port, in-memory storage, the default node timeout.
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            token: token.into(),
            storage: StorageConfig::Memory,
            node_timeout: DEFAULT_NODE_TIMEOUT,
            session_name: format!("session_{}", miniray_common::time::now_ms()),
            max_destroyed_actors: DEFAULT_MAX_DESTROYED_ACTORS,
            metrics_port: None,
            max_task_events: DEFAULT_MAX_TASK_EVENTS,
            unused_executable_ttl: DEFAULT_UNUSED_EXECUTABLE_TTL,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GcsError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A stored record does not decode: the backend holds data this GCS cannot trust.
    #[error("corrupt record {key} in table {table}: {reason}")]
    CorruptRecord {
        table: &'static str,
        key: String,
        reason: String,
    },
    #[error("gcs server failed: {0}")]
    Serve(String),
    #[error("gcs server task ended abnormally: {0}")]
    Task(String),
    #[error(transparent)]
    Auth(#[from] miniray_common::auth::AuthError),
}

/// Builds and starts the GCS.
pub struct GcsServer;

impl GcsServer {
    /// Connects the configured storage, reloads its tables, binds and starts serving.
    pub async fn start(cfg: GcsConfig) -> Result<GcsHandle, GcsError> {
        let storage: Arc<dyn Storage> = match &cfg.storage {
            StorageConfig::Memory => Arc::new(MemoryStorage::new()),
            StorageConfig::Redis { url } => Arc::new(RedisStorage::connect(url).await?),
        };
        Self::start_with_storage(cfg, storage).await
    }

    /// Like [`GcsServer::start`] with a ready storage backend; `cfg.storage` is ignored.
    pub async fn start_with_storage(
        cfg: GcsConfig,
        storage: Arc<dyn Storage>,
    ) -> Result<GcsHandle, GcsError> {
        let token_check = TokenCheck::try_new(&cfg.token)?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let state = Arc::new(GcsState::load(storage, &cfg, shutdown_rx.clone()).await?);
        // Executables left by jobs that ended while no GCS ran (or before this GCS
        // reclaimed them) go now.
        state.remove_unused_executables().await;
        let listener = TcpListener::bind(cfg.bind)
            .await
            .map_err(|source| GcsError::Bind {
                addr: cfg.bind,
                source,
            })?;
        let address = listener.local_addr().map_err(|source| GcsError::Bind {
            addr: cfg.bind,
            source,
        })?;
        // Reloaded actors that are not dead get their supervisors back (they end with the
        // server: they watch the same shutdown signal).
        actors::supervisor::resume(&state).await;

        let metrics_address = match cfg.metrics_port {
            Some(port) => {
                let bind = SocketAddr::new(cfg.bind.ip(), port);
                let listener = TcpListener::bind(bind)
                    .await
                    .map_err(|source| GcsError::Bind { addr: bind, source })?;
                let metrics_address = listener
                    .local_addr()
                    .map_err(|source| GcsError::Bind { addr: bind, source })?;
                let registry = miniray_common::metrics::shared(metrics::registry(state.clone()));
                let mut stop = shutdown_rx.clone();
                let token = cfg.token.clone();
                tokio::spawn(async move {
                    let shutdown = async move { stopped(&mut stop).await };
                    if let Err(e) =
                        miniray_common::metrics::serve(listener, registry, &token, shutdown).await
                    {
                        tracing::warn!(error = %e, "the metrics endpoint stopped");
                    }
                });
                Some(metrics_address)
            }
            None => None,
        };
        let grpc = GcsGrpcServer::new(GcsService {
            state: state.clone(),
            metrics_address,
        })
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let grpc = InterceptedService::new(grpc, token_check);
        let incoming = TcpListenerStream::new(listener).map(|conn| {
            if let Ok(stream) = &conn {
                // Small RPCs (heartbeats, KV) must not wait for Nagle.
                let _ = stream.set_nodelay(true);
            }
            conn
        });
        let mut stop = shutdown_rx.clone();
        let serve = miniray_common::transport::server_builder()
            .add_service(grpc)
            // A closed channel (every handle dropped) stops the server too.
            .serve_with_incoming_shutdown(incoming, async move { stopped(&mut stop).await });
        let server = tokio::spawn(async move { serve.await.map_err(|e| error_chain(&e)) });
        // Ends with the server (it watches the same shutdown signal).
        tokio::spawn(driver_monitor::run(
            state.clone(),
            cfg.token.clone(),
            shutdown_rx.clone(),
        ));
        tokio::spawn(executables::expiry_loop(state.clone(), shutdown_rx.clone()));
        let health = tokio::spawn(health_loop(state, shutdown_rx));
        tracing::info!(%address, session = %cfg.session_name, node_timeout_ms = cfg.node_timeout.as_millis() as u64, "gcs listening");
        Ok(GcsHandle {
            address,
            metrics_address,
            shutdown: Arc::new(shutdown_tx),
            server,
            health,
        })
    }
}

/// A running GCS. Dropping the handle (and every [`ShutdownTrigger`]) stops the server
/// without waiting for it; [`GcsHandle::shutdown`] stops it and waits.
pub struct GcsHandle {
    address: SocketAddr,
    metrics_address: Option<SocketAddr>,
    shutdown: Arc<watch::Sender<bool>>,
    server: JoinHandle<Result<(), String>>,
    health: JoinHandle<()>,
}

impl GcsHandle {
    /// The address the server is bound to.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Where the GCS serves Prometheus metrics, if it does.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_address
    }

    /// Something that stops the server from elsewhere while [`GcsHandle::wait`] runs.
    pub fn shutdown_trigger(&self) -> ShutdownTrigger {
        ShutdownTrigger {
            tx: self.shutdown.clone(),
        }
    }

    /// Stops accepting connections, ends subscriber streams, lets in-flight RPCs finish,
    /// and waits for the server and the health checker to exit.
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        if let Err(e) = self.finish().await {
            tracing::warn!(error = %e, "gcs stopped with an error");
        }
    }

    /// Runs until the server stops (after a [`ShutdownTrigger`] fired, or on failure).
    pub async fn wait(self) -> Result<(), GcsError> {
        self.finish().await
    }

    async fn finish(self) -> Result<(), GcsError> {
        let GcsHandle {
            address,
            metrics_address: _,
            shutdown,
            server,
            health,
        } = self;
        let result = match server.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(GcsError::Serve(e)),
            Err(e) => Err(GcsError::Task(e.to_string())),
        };
        shutdown.send_replace(true);
        if let Err(e) = health.await {
            tracing::warn!(error = %e, "gcs health checker ended abnormally");
        }
        tracing::info!(%address, "gcs stopped");
        result
    }
}

/// Stops a running GCS; cheap to clone.
#[derive(Clone)]
pub struct ShutdownTrigger {
    tx: Arc<watch::Sender<bool>>,
}

impl ShutdownTrigger {
    pub fn shutdown(&self) {
        self.tx.send_replace(true);
    }
}

/// Starts the GCS and runs it until it stops.
pub async fn run(cfg: GcsConfig) -> Result<(), GcsError> {
    GcsServer::start(cfg).await?.wait().await
}
