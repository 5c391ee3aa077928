//! miniray-raylet: the per-node daemon.
//!
//! A raylet hosts its node's plasma store, starts and leases out worker processes, schedules
//! lease requests against the node's resources (spilling to other nodes when this one is
//! busy), moves objects between nodes, and keeps the GCS informed by heartbeats.
//!
//! Contracts other processes rely on:
//! - Start order: plasma segment `<plasma dir>/miniray-<session>-<node id hex>` exists and the
//!   gRPC server listens *before* the node registers with the GCS, so any node the GCS
//!   lists as ALIVE can be called at once.
//! - Every RPC needs the cluster token (`TokenCheck`); messages up to
//!   [`miniray_common::config::MAX_MESSAGE_SIZE`].
//! - Workers get exactly the environment described in [`worker_pool`] and must call
//!   `RegisterWorker` within `worker_start_timeout`.
//! - Shutdown (`RayletHandle::shutdown`, the `Shutdown` RPC, an accepted `DrainNode`, the
//!   GCS refusing the node as dead): UnregisterNode, every worker process stopped and
//!   reaped, the segment removed. A drained raylet unregisters with `drained: <reason>`
//!   and stops without error.

pub mod config;
pub mod error;
pub mod executable_cache;
mod heartbeat;
mod incoming;
mod logs;
mod metrics;
mod node;
pub mod object_manager;
mod owner_liveness;
mod ownership;
pub mod scheduler;
mod server;
pub mod task_events;
pub mod task_outcomes;
pub mod worker_pool;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use miniray_common::NodeId;
use miniray_common::auth::{TokenCheck, connect};
use miniray_common::config::{MAX_MESSAGE_SIZE, num_cpus};
use miniray_plasma::{PlasmaStore, StoreConfig};
use miniray_proto::gcs_client::GcsClient;
use miniray_proto::raylet_server::RayletServer;
use miniray_proto::{NodeAddress, RegisterNodeRequest, UnregisterNodeRequest};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;

pub use config::RayletConfig;
pub use error::RayletError;
pub use object_manager::TransferStats;
pub use task_events::TaskCounts;

use crate::executable_cache::ExecutableCache;
use crate::node::Node;
use crate::object_manager::ObjectManager;
use crate::worker_pool::{PoolConfig, WorkerPool};

/// How long a stopping raylet waits for in-flight RPCs before dropping them.
const SERVER_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the GCS calls made while starting and stopping.
const GCS_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Entry point: [`Raylet::start`].
pub struct Raylet;

/// A running raylet. Dropping it does not stop the raylet; call [`RayletHandle::shutdown`].
pub struct RayletHandle {
    node_id: NodeId,
    address: SocketAddr,
    node: Arc<Node>,
    task: JoinHandle<Result<(), RayletError>>,
}

/// The plasma segment name: `miniray-<session dir basename>-<node id hex>`, restricted to
/// characters safe in a file name.
pub fn segment_name(session_dir: &std::path::Path, node_id: NodeId) -> String {
    let session: String = session_dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "session".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("miniray-{session}-{}", node_id.hex())
}

impl Raylet {
    /// Starts the raylet: segment, server, registration, background loops. Fails (and
    /// leaves nothing behind) if any of these fails.
    pub async fn start(cfg: RayletConfig) -> Result<RayletHandle, RayletError> {
        if cfg.heartbeat_interval.is_zero() {
            return Err(RayletError::Config(
                "heartbeat_interval must be positive".into(),
            ));
        }
        if cfg.token.is_empty() {
            return Err(RayletError::Config("the cluster token is empty".into()));
        }
        // A sparse segment larger than its folder's free memory would SIGBUS its writers.
        miniray_common::shm::check_fits(&cfg.plasma_dir, cfg.object_store_memory)?;
        let total = cfg.effective_resources();
        let log_dir = cfg.session_dir.join("logs");
        std::fs::create_dir_all(&log_dir).map_err(|source| RayletError::Io {
            path: log_dir.clone(),
            source,
        })?;

        let store = Arc::new(PlasmaStore::create_segment(StoreConfig {
            capacity: cfg.object_store_memory,
            segment_dir: cfg.plasma_dir.clone(),
            segment_name: segment_name(&cfg.session_dir, cfg.node_id),
            prefault: cfg.prefault_object_store,
        })?);
        // From here on, an early return drops `store`, which removes the segment.

        let bind = miniray_common::net::host_port(&cfg.bind_host, cfg.port);
        let listener = tokio::net::TcpListener::bind(&bind)
            .await
            .map_err(|source| RayletError::Bind {
                address: bind.clone(),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| RayletError::Bind {
            address: bind.clone(),
            source,
        })?;
        let host = cfg.advertised_host().await?;
        let raylet_address = miniray_common::net::host_port(&host, local.port());
        tracing::info!(bind = %bind, node_ip = %host, "raylet listening");

        let gcs = GcsClient::new(connect(&cfg.gcs_address, &cfg.token).await?)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);

        let idle_soft_limit = (total.get("CPU").ceil() as usize).clamp(1, num_cpus().max(1) * 4);
        let (pool, exits) = WorkerPool::new(
            PoolConfig {
                node_id: cfg.node_id,
                gcs_address: cfg.gcs_address.clone(),
                raylet_address: raylet_address.clone(),
                worker_host: host.clone(),
                token: cfg.token.clone(),
                log_dir,
                start_timeout: cfg.worker_start_timeout,
                idle_timeout: cfg.idle_worker_timeout,
                idle_soft_limit,
                journal_dir: cfg.plasma_dir.clone(),
                journal_name: segment_name(&cfg.session_dir, cfg.node_id),
            },
            ExecutableCache::new(ExecutableCache::default_dir(), cfg.executable_cache_bytes),
            gcs.clone(),
        );
        let address = NodeAddress {
            node_id: cfg.node_id.to_vec(),
            host,
            port: u32::from(local.port()),
        };
        let objects = ObjectManager::new(
            cfg.node_id,
            address.clone(),
            cfg.token.clone(),
            Arc::clone(&store),
        );
        let metrics_listener = match cfg.metrics_port {
            Some(port) => {
                let bind = miniray_common::net::host_port(&cfg.bind_host, port);
                Some(
                    tokio::net::TcpListener::bind(&bind)
                        .await
                        .map_err(|source| RayletError::Bind {
                            address: bind.clone(),
                            source,
                        })?,
                )
            }
            None => None,
        };
        let metrics_port = match &metrics_listener {
            Some(l) => l
                .local_addr()
                .map_err(|source| RayletError::Bind {
                    address: cfg.bind_host.clone(),
                    source,
                })?
                .port(),
            None => 0,
        };
        let (shutdown_tx, _) = watch::channel(false);
        let node = Arc::new(Node::new(
            cfg.clone(),
            address,
            total,
            pool,
            store,
            objects,
            gcs,
            shutdown_tx,
            metrics_port,
        ));
        if let Some(listener) = metrics_listener {
            let registry = miniray_common::metrics::shared(metrics::registry(Arc::clone(&node)));
            let mut signal = node.shutdown_signal();
            let token = cfg.token.clone();
            tokio::spawn(async move {
                let shutdown = async move {
                    let _ = signal.wait_for(|s| *s).await;
                };
                if let Err(e) =
                    miniray_common::metrics::serve(listener, registry, &token, shutdown).await
                {
                    tracing::warn!(error = %e, "the metrics endpoint stopped");
                }
            });
        }

        let server = {
            let svc = RayletServer::new(server::RayletService {
                node: Arc::clone(&node),
            })
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
            let svc = InterceptedService::new(svc, TokenCheck::new(&cfg.token));
            let mut signal = node.shutdown_signal();
            tokio::spawn(
                miniray_common::transport::server_builder()
                    .add_service(svc)
                    // The routing sets nodelay on the accepted sockets: the builder's
                    // setting only applies to listeners tonic binds itself.
                    .serve_with_incoming_shutdown(
                        incoming::route(
                            listener,
                            Arc::clone(&node.objects),
                            node.shutdown_signal(),
                        ),
                        async move {
                            let _ = signal.wait_for(|s| *s).await;
                        },
                    ),
            )
        };

        let register = {
            let mut gcs = node.gcs.clone();
            tokio::time::timeout(
                GCS_CALL_TIMEOUT,
                gcs.register_node(RegisterNodeRequest {
                    node: Some(node.node_info()),
                    ..Default::default()
                }),
            )
            .await
        };
        let register_err = match register {
            Ok(Ok(_)) => None,
            Ok(Err(status)) => Some(status),
            Err(_) => Some(tonic::Status::deadline_exceeded("register_node timed out")),
        };
        if let Some(status) = register_err {
            node.trigger_shutdown(None);
            let _ = server.await;
            node.pool.shutdown().await;
            return Err(RayletError::Gcs {
                rpc: "RegisterNode",
                status,
            });
        }
        tracing::info!(
            node_id = %cfg.node_id,
            address = %raylet_address,
            resources = %node.sched.lock().scheduler.total(),
            segment = %node.store.segment_path().display(),
            "raylet started"
        );

        let heartbeat = tokio::spawn(heartbeat::run(Arc::clone(&node)));
        tokio::spawn(watch_exits(Arc::clone(&node), exits));
        tokio::spawn(owner_liveness::run(Arc::clone(&node)));
        tokio::spawn(task_events::run(
            Arc::clone(&node),
            cfg.task_events_forward_interval,
        ));
        let task = tokio::spawn(supervise(Arc::clone(&node), server, heartbeat));
        Ok(RayletHandle {
            node_id: cfg.node_id,
            address: SocketAddr::new(local.ip(), local.port()),
            node,
            task,
        })
    }
}

/// Frees the lease of every worker that exits (and tells the GCS, for actors).
async fn watch_exits(
    node: Arc<Node>,
    mut exits: tokio::sync::mpsc::UnboundedReceiver<(miniray_common::WorkerId, String)>,
) {
    while let Some((worker_id, status)) = exits.recv().await {
        node.on_worker_exit(worker_id, status);
    }
}

/// Waits for the shutdown signal, then tears down in order: server, GCS registration,
/// workers, segment.
async fn supervise(
    node: Arc<Node>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    heartbeat: JoinHandle<()>,
) -> Result<(), RayletError> {
    let mut signal = node.shutdown_signal();
    let mut server = server;
    let server_result = tokio::select! {
        r = &mut server => {
            // The server stopped on its own: that is fatal for the node.
            node.trigger_shutdown(None);
            Some(r)
        }
        _ = signal.wait_for(|s| *s) => None,
    };
    let server_result = match server_result {
        Some(r) => Some(r),
        None => match tokio::time::timeout(SERVER_DRAIN_TIMEOUT, &mut server).await {
            Ok(r) => Some(r),
            Err(_) => {
                tracing::warn!("in-flight rpcs did not finish in time; dropping them");
                server.abort();
                None
            }
        },
    };
    heartbeat.abort();
    // What the node's workers reported last goes before the node unregisters
    // (best-effort: each call is bounded).
    node.task_events.forward(&node).await;
    let mut gcs = node.gcs.clone();
    let reason = match node.take_stop_reason() {
        Some(r) => r,
        None => RayletError::Internal(String::new()),
    };
    let (unregister_reason, result) = match reason {
        // An accepted drain is a clean stop with its own reason.
        RayletError::Internal(s) if s.is_empty() => (
            node.drain_reason()
                .unwrap_or_else(|| "raylet stopped".to_string()),
            Ok(()),
        ),
        other => (other.to_string(), Err(other)),
    };
    match tokio::time::timeout(
        GCS_CALL_TIMEOUT,
        gcs.unregister_node(UnregisterNodeRequest {
            node_id: node.node_id.to_vec(),
            reason: unregister_reason,
        }),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(status)) => tracing::warn!(error = %status, "unregister from the gcs failed"),
        Err(_) => tracing::warn!("unregister from the gcs timed out"),
    }
    node.pool.shutdown().await;
    let path = node.store.segment_path().to_path_buf();
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove plasma segment")
        }
    }
    tracing::info!(node_id = %node.node_id, "raylet stopped");
    match server_result {
        Some(Ok(Err(e))) if result.is_ok() => Err(RayletError::Server(e)),
        Some(Err(e)) if result.is_ok() && !e.is_cancelled() => {
            Err(RayletError::Internal(format!("server task: {e}")))
        }
        _ => result,
    }
}

impl RayletHandle {
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Where the gRPC server listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Node-to-node transfer counters of this raylet.
    pub fn transfer_stats(&self) -> TransferStats {
        self.node.objects.stats()
    }

    /// The tasks this node ran, by function and state.
    pub fn task_counts(&self) -> Arc<TaskCounts> {
        Arc::clone(&self.node.task_events.counts)
    }

    /// Something that starts the graceful stop from elsewhere while [`RayletHandle::wait`]
    /// runs (a daemon waiting for a signal, for one).
    pub fn shutdown_trigger(&self) -> ShutdownTrigger {
        ShutdownTrigger {
            node: Arc::clone(&self.node),
        }
    }

    /// Stops the raylet and waits until workers are gone and the segment is removed.
    pub async fn shutdown(self) {
        self.node.trigger_shutdown(None);
        if let Err(e) = self.wait().await {
            tracing::debug!(error = %e, "raylet stopped with an error");
        }
    }

    /// Waits until the raylet stops (Shutdown RPC, rejected heartbeat, server failure).
    pub async fn wait(self) -> Result<(), RayletError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(RayletError::Internal(format!("raylet task: {e}"))),
        }
    }
}

/// Starts a raylet's graceful stop; see [`RayletHandle::shutdown_trigger`].
#[derive(Clone)]
pub struct ShutdownTrigger {
    node: Arc<Node>,
}

impl ShutdownTrigger {
    pub fn shutdown(&self) {
        self.node.trigger_shutdown(None);
    }
}

/// Runs a raylet until it stops or the process gets SIGINT/SIGTERM.
pub async fn run(cfg: RayletConfig) -> Result<(), RayletError> {
    let handle = Raylet::start(cfg).await?;
    let node = Arc::clone(&handle.node);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| RayletError::Io {
            path: PathBuf::from("<signal handler>"),
            source,
        })?;
    let signals = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("signal received; stopping");
        node.trigger_shutdown(None);
    };
    let waiter = tokio::spawn(signals);
    let result = handle.wait().await;
    waiter.abort();
    result
}
