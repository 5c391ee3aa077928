//! The core worker's metrics, and a driver's Prometheus endpoint (`MINIRAY_METRICS_PORT` or
//! `InitOptions::metrics_port`): what the process submitted and got back, what waits in
//! its queues, the leases it holds, the objects it references, the latency of its RPC
//! server, and whatever the program registered itself (`miniray::metrics`).
//!
//! Invariants:
//! - The task path pays one relaxed increment per counted event, each counter on its own
//!   cache line: submissions are counted by the submitting thread, replies by a runtime
//!   thread, and neither moves the other's line.
//! - Gauges are read from the core worker's tables at scrape time, never kept up to date
//!   on the way.
//! - There is one registry per process ([`registry`]); it outlives `shutdown`, so what the
//!   program registered stays registered across `init`s, and the core worker's collector
//!   reads whichever core worker runs at the scrape (nothing when none does).
//! - The endpoint listens on the driver's node IP (loopback for a private cluster), checks
//!   the cluster token and speaks TLS when the cluster does (`miniray_common::metrics`);
//!   the GCS lists it for Prometheus while the job runs (`JobInfo.driver_metrics_port`).

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use miniray_common::config::env;
use miniray_common::metrics::prometheus_client::collector::Collector;
use miniray_common::metrics::prometheus_client::encoding::DescriptorEncoder;
use miniray_common::metrics::prometheus_client::registry::Registry;
use miniray_common::metrics::{SharedRegistry, encode_counters, encode_gauges, unlabelled};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tracing::{info, warn};

use super::CoreWorker;
use crate::error::{Error, Result};

/// A counter alone on its cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded(AtomicU64);

impl Padded {
    fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counts the core worker keeps for its metrics.
#[derive(Debug, Default)]
pub(crate) struct CoreCounters {
    tasks_submitted: Padded,
    actor_calls_submitted: Padded,
    /// Replies from workers, by outcome (one thread's: they share a line).
    replies: [AtomicU64; 2],
}

/// Outcomes of a reply, in [`CoreCounters::replies`] order.
const OUTCOMES: [&str; 2] = ["value", "error"];

impl CoreCounters {
    pub(crate) fn task_submitted(&self) {
        self.tasks_submitted.add();
    }

    pub(crate) fn actor_call_submitted(&self) {
        self.actor_calls_submitted.add();
    }

    /// A worker answered a task or actor call: with its value, or with an error.
    pub(crate) fn replied(&self, ok: bool) {
        self.replies[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }
}

/// This process's registry: the core worker's collector, the RPC latency histograms, and
/// what the program registers.
pub(crate) fn registry() -> &'static SharedRegistry {
    static REGISTRY: LazyLock<SharedRegistry> = LazyLock::new(|| {
        let mut registry = Registry::default();
        miniray_common::metrics::register_rpc_metrics(&mut registry);
        registry.register_collector(Box::new(CoreWorkerCollector));
        miniray_common::metrics::shared(registry)
    });
    &REGISTRY
}

/// The port `MINIRAY_METRICS_PORT` asks for; `None` when it is unset or empty.
pub(crate) fn port_from_env() -> Result<Option<u16>> {
    match std::env::var(env::METRICS_PORT) {
        Ok(raw) if !raw.trim().is_empty() => raw.trim().parse::<u16>().map(Some).map_err(|e| {
            Error::InvalidArgument(format!(
                "{}={raw:?} is not a port number (0 to 65535): {e}",
                env::METRICS_PORT
            ))
        }),
        _ => Ok(None),
    }
}

/// Binds the driver's endpoint on `host:port` (0: any free port); returns it and its port.
pub(crate) async fn bind(host: &str, port: u16) -> Result<(TcpListener, u16)> {
    let listener = miniray_common::metrics::bind(host, port)
        .await
        .map_err(|e| Error::Startup(format!("cannot serve metrics on {host}:{port}: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::Startup(e.to_string()))?
        .port();
    Ok((listener, port))
}

/// Where this driver serves `/metrics` now.
static ENDPOINT: Mutex<Option<String>> = Mutex::new(None);

pub(crate) fn endpoint() -> Option<String> {
    ENDPOINT.lock().clone()
}

/// The endpoint ended with its runtime (`shutdown`).
pub(crate) fn ended() {
    ENDPOINT.lock().take();
}

/// Serves `/metrics` on `listener`, bound by [`bind`] to `host:port`, for as long as the
/// runtime runs (it ends at `shutdown`, with the runtime).
pub(crate) fn serve(listener: TcpListener, host: &str, port: u16, token: &str) {
    let token = token.to_string();
    let address = miniray_common::net::host_port(host, port);
    info!(%address, "driver metrics endpoint serving /metrics");
    *ENDPOINT.lock() = Some(address);
    tokio::spawn(async move {
        let forever = std::future::pending::<()>();
        if let Err(e) =
            miniray_common::metrics::serve(listener, registry().clone(), &token, forever).await
        {
            warn!(error = %e, "the driver's metrics endpoint stopped");
        }
    });
}

/// Reads the running core worker at each scrape.
#[derive(Debug)]
struct CoreWorkerCollector;

impl Collector for CoreWorkerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::result::Result<(), std::fmt::Error> {
        let Ok(cw) = super::current() else {
            return Ok(());
        };
        encode_core_worker(&cw, &mut encoder)
    }
}

fn encode_core_worker(
    cw: &CoreWorker,
    encoder: &mut DescriptorEncoder,
) -> std::result::Result<(), std::fmt::Error> {
    let counters = &cw.counters;
    encode_counters(
        encoder,
        (
            "miniray_driver_tasks_submitted",
            "Tasks and actor calls this process submitted, by kind",
            None,
        ),
        [
            ("task", counters.tasks_submitted.get()),
            ("actor_call", counters.actor_calls_submitted.get()),
        ]
        .map(|(kind, n)| (vec![("kind", kind.to_string())], n)),
    )?;
    encode_counters(
        encoder,
        (
            "miniray_driver_task_replies",
            "Answers of workers to the tasks and actor calls this process submitted, by outcome",
            None,
        ),
        OUTCOMES.iter().zip(&counters.replies).map(|(outcome, n)| {
            (
                vec![("outcome", outcome.to_string())],
                n.load(Ordering::Relaxed),
            )
        }),
    )?;
    let submitter = cw.submitter.usage();
    encode_gauges(
        encoder,
        (
            "miniray_driver_tasks_queued",
            "Tasks of this process waiting for a worker",
            None,
        ),
        unlabelled(submitter.queued as f64),
    )?;
    encode_gauges(
        encoder,
        (
            "miniray_driver_leases_held",
            "Workers this process holds leases on",
            None,
        ),
        unlabelled(submitter.leases as f64),
    )?;
    encode_gauges(
        encoder,
        (
            "miniray_driver_object_refs",
            "Objects this process references, owned or borrowed",
            None,
        ),
        unlabelled(cw.store.len() as f64),
    )?;
    Ok(())
}
