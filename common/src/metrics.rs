//! Prometheus metrics: the `/metrics` endpoint every daemon serves (`--metrics-port`), the
//! rendering both scrape formats share, and the RPC latency histogram every gRPC server
//! records (see [`RpcMetricsLayer`]).
//!
//! Metrics are kept with `prometheus-client`. A scraper that asks for OpenMetrics
//! (Prometheus does) gets it; any other gets the classic text format (0.0.4), which is
//! what `promtool check metrics` and older tools read: the two differ in how a counter's
//! family is named (`x` with samples `x_total`, against `x_total`) and in the `# EOF` and
//! `# UNIT` lines.
//!
//! Invariants:
//! - An endpoint answers only requests with the cluster token (`Authorization: Bearer`),
//!   like every other miniray server, and speaks TLS when the process has a TLS setting.
//! - Recording an RPC's latency takes no lock on the hot path once its method has been
//!   seen: the histogram of each method is looked up under a read lock by path, created
//!   once under the write lock.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use parking_lot::RwLock;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

use crate::tls;

pub use prometheus_client;

/// The content type of OpenMetrics, as Prometheus asks for it.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the RPC latency buckets, in seconds: 50 µs to 10 s.
const RPC_BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    /// `Service/Method`, e.g. `Gcs/Heartbeat`.
    method: String,
}

type RpcFamily = Family<RpcLabels, Histogram, fn() -> Histogram>;

/// The process's RPC latency histograms, and their lookup by request path.
struct RpcHistograms {
    family: RpcFamily,
    by_path: RwLock<HashMap<String, Histogram>>,
}

fn rpc_histograms() -> &'static RpcHistograms {
    static RPC: OnceLock<RpcHistograms> = OnceLock::new();
    RPC.get_or_init(|| RpcHistograms {
        family: Family::new_with_constructor(|| Histogram::new(RPC_BUCKETS)),
        by_path: RwLock::new(HashMap::new()),
    })
}

fn rpc_histogram(path: &str) -> Histogram {
    let rpc = rpc_histograms();
    if let Some(h) = rpc.by_path.read().get(path) {
        return h.clone();
    }
    // `/miniray.gcs.Gcs/Heartbeat` → `Gcs/Heartbeat`.
    let trimmed = path.trim_start_matches('/');
    let method = match trimmed.split_once('/') {
        Some((service, method)) => {
            let service = service.rsplit('.').next().unwrap_or(service);
            format!("{service}/{method}")
        }
        None => trimmed.to_string(),
    };
    let histogram = rpc.family.get_or_create(&RpcLabels { method }).clone();
    rpc.by_path
        .write()
        .entry(path.to_string())
        .or_insert(histogram)
        .clone()
}

/// Registers the process's RPC latency histograms (`miniray_rpc_server_duration_seconds`)
/// in `registry`. Every server built by [`crate::transport::server_builder`] records them.
pub fn register_rpc_metrics(registry: &mut Registry) {
    registry.register_with_unit(
        "miniray_rpc_server_duration",
        "Time from an RPC's arrival to its reply (a stream's first message), by method",
        Unit::Seconds,
        rpc_histograms().family.clone(),
    );
}

/// The tower layer that times every RPC of a server.
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcMetricsLayer;

impl<S> tower_layer::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics { inner }
    }
}

/// A service timed by [`RpcMetricsLayer`].
#[derive(Clone, Debug)]
pub struct RpcMetrics<S> {
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower_service::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let histogram = rpc_histogram(request.uri().path());
        let started = Instant::now();
        let reply = self.inner.call(request);
        Box::pin(async move {
            let reply = reply.await;
            histogram.observe(started.elapsed().as_secs_f64());
            reply
        })
    }
}

/// The labels of one series a collector encodes.
pub type Labels = Vec<(&'static str, String)>;

/// The one series of a family without labels, for [`encode_gauges`] and
/// [`encode_counters`].
pub fn unlabelled<T>(value: T) -> [(Labels, T); 1] {
    [(Vec::new(), value)]
}

/// A metric family's name, help and unit.
pub type Descriptor<'a> = (&'a str, &'a str, Option<&'a Unit>);

/// Encodes one gauge family from `series` (a single series without labels is encoded as
/// a plain gauge).
pub fn encode_gauges(
    encoder: &mut DescriptorEncoder,
    (name, help, unit): Descriptor,
    series: impl IntoIterator<Item = (Labels, f64)>,
) -> Result<(), std::fmt::Error> {
    encode_family(
        encoder,
        (name, help, unit),
        MetricType::Gauge,
        series,
        |v, e| ConstGauge::new(v).encode(e),
    )
}

/// Encodes one counter family from `series`, as [`encode_gauges`] does gauges.
pub fn encode_counters(
    encoder: &mut DescriptorEncoder,
    (name, help, unit): Descriptor,
    series: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    encode_family(
        encoder,
        (name, help, unit),
        MetricType::Counter,
        series,
        |v, e| ConstCounter::new(v).encode(e),
    )
}

fn encode_family<V>(
    encoder: &mut DescriptorEncoder,
    (name, help, unit): Descriptor,
    kind: MetricType,
    series: impl IntoIterator<Item = (Labels, V)>,
    encode: impl Fn(V, MetricEncoder) -> Result<(), std::fmt::Error>,
) -> Result<(), std::fmt::Error> {
    let mut series: Vec<(Labels, V)> = series.into_iter().collect();
    let mut family = encoder.encode_descriptor(name, help, unit, kind)?;
    if series.len() == 1
        && series[0].0.is_empty()
        && let Some((_, value)) = series.pop()
    {
        return encode(value, family);
    }
    for (labels, value) in series {
        encode(value, family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// `registry` in the format the `accept` header asks for: its content type and body.
pub fn render(
    registry: &Registry,
    accept: Option<&str>,
) -> Result<(&'static str, String), std::fmt::Error> {
    let mut openmetrics = String::new();
    prometheus_client::encoding::text::encode(&mut openmetrics, registry)?;
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        Ok((OPENMETRICS_CONTENT_TYPE, openmetrics))
    } else {
        Ok((TEXT_CONTENT_TYPE, to_classic_text(&openmetrics)))
    }
}

/// OpenMetrics text as the classic format: counter families take their samples' `_total`
/// name, and the lines the classic format does not have (`# EOF`, `# UNIT`) go.
fn to_classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 64);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// An HTTP reply of `registry` for a request with these headers.
pub fn reply(registry: &Registry, headers: &http::HeaderMap) -> Response {
    let accept = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    match render(registry, accept) {
        Ok((content_type, body)) => {
            ([(http::header::CONTENT_TYPE, content_type)], body).into_response()
        }
        Err(_) => (
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics",
        )
            .into_response(),
    }
}

/// A registry an endpoint serves while metrics can still be added to it (a driver's, where
/// the program registers its own).
pub type SharedRegistry = Arc<RwLock<Registry>>;

/// `registry`, served as it is.
pub fn shared(registry: Registry) -> SharedRegistry {
    Arc::new(RwLock::new(registry))
}

#[derive(Clone)]
struct EndpointState {
    registry: SharedRegistry,
    token: Arc<str>,
}

async fn authenticate(
    State(state): State<EndpointState>,
    request: Request,
    next: Next,
) -> Response {
    if crate::auth::bearer_token_matches(request.headers(), &state.token) {
        next.run(request).await
    } else {
        (
            http::StatusCode::UNAUTHORIZED,
            "missing or wrong cluster token (Authorization: Bearer <token>)",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<EndpointState>, headers: http::HeaderMap) -> Response {
    reply(&state.registry.read(), &headers)
}

/// Binds a metrics endpoint on `host:port` (port 0: any free one).
pub async fn bind(host: &str, port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind(crate::net::host_port(host, port)).await
}

/// Serves `GET /metrics` of `registry` on `listener` until `shutdown` resolves: over TLS
/// when this process has a TLS setting, to requests with the cluster token only.
pub async fn serve(
    listener: TcpListener,
    registry: SharedRegistry,
    token: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MetricsError> {
    let state = EndpointState {
        registry,
        token: token.into(),
    };
    let router = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state);
    match tls::current() {
        Some(material) => {
            let config = material.https_server_config()?;
            crate::https::serve_tls(
                listener,
                tokio_rustls::TlsAcceptor::from(config),
                router,
                shutdown,
            )
            .await;
            Ok(())
        }
        None => axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(MetricsError::Serve),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("the metrics endpoint's TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("serving metrics: {0}")]
    Serve(std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Labels {
        state: String,
    }

    fn registry() -> Registry {
        let mut registry = Registry::default();
        let tasks = Family::<Labels, Counter>::default();
        tasks
            .get_or_create(&Labels {
                state: "FINISHED".into(),
            })
            .inc_by(3);
        registry.register("miniray_tasks", "Tasks run", tasks);
        let used = Gauge::<i64>::default();
        used.set(42);
        registry.register_with_unit(
            "miniray_object_store_used",
            "Bytes used",
            prometheus_client::registry::Unit::Bytes,
            used,
        );
        registry
    }

    #[test]
    fn openmetrics_is_served_to_scrapers_that_ask_for_it() {
        let (ct, body) = render(
            &registry(),
            Some("application/openmetrics-text;version=1.0.0"),
        )
        .unwrap();
        assert_eq!(ct, OPENMETRICS_CONTENT_TYPE);
        assert!(body.contains("# TYPE miniray_tasks counter\n"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
    }

    #[test]
    fn the_classic_format_names_counter_families_by_their_samples() {
        let (ct, body) = render(&registry(), Some("text/plain")).unwrap();
        assert_eq!(ct, TEXT_CONTENT_TYPE);
        assert!(
            body.contains("# HELP miniray_tasks_total Tasks run.\n"),
            "{body}"
        );
        assert!(
            body.contains("# TYPE miniray_tasks_total counter\n"),
            "{body}"
        );
        assert!(
            body.contains("miniray_tasks_total{state=\"FINISHED\"} 3\n"),
            "{body}"
        );
        assert!(
            body.contains("# TYPE miniray_object_store_used_bytes gauge\n"),
            "{body}"
        );
        assert!(
            body.contains("miniray_object_store_used_bytes 42\n"),
            "{body}"
        );
        assert!(
            !body.contains("# EOF") && !body.contains("# UNIT"),
            "{body}"
        );
    }

    #[test]
    fn rpc_paths_are_labelled_by_service_and_method() {
        let h = rpc_histogram("/miniray.gcs.Gcs/Heartbeat");
        h.observe(0.001);
        let mut registry = Registry::default();
        register_rpc_metrics(&mut registry);
        let (_, body) = render(&registry, None).unwrap();
        assert!(
            body.contains("miniray_rpc_server_duration_seconds_count{method=\"Gcs/Heartbeat\"} 1"),
            "{body}"
        );
    }
}
