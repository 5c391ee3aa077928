//! The HTTP routes of the dashboard port. Every request carries the cluster token
//! (`Authorization: Bearer <token>`), compared in constant time; errors are JSON
//! `{"error": "…"}` with the status of their [`JobError`].
//!
//! | route | |
//! |---|---|
//! | `GET /`, `/jobs`, `/actors`, `/logs`, … | the web pages ([`crate::pages`]) |
//! | `GET /api/version` | `{"version"}` |
//! | `GET /metrics` | jobs by state (Prometheus) |
//! | `GET /api/prometheus/sd` | the cluster's metrics endpoints (Prometheus file_sd / http_sd) |
//! | `GET /api/executables/{hash}` | 200 if the head has it, else 404 |
//! | `PUT /api/executables/{hash}` | the executable's bytes, checked against the hash |
//! | `POST /api/jobs/` | a [`SubmitRequest`]; `{"submission_id", "job_id"}` |
//! | `GET /api/jobs/` | every [`JobRecord`] |
//! | `GET /api/jobs/{id}` | one record |
//! | `GET /api/jobs/{id}/logs` | `{"logs"}`: the output kept so far |
//! | `GET /api/jobs/{id}/logs/tail` | the output as plain text, streamed until the job ends |
//! | `POST /api/jobs/{id}/stop` | `{"stopped"}`: false if it had already ended |
//! | `DELETE /api/jobs/{id}` | `{"deleted"}`; refused while the job runs |

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use serde_json::json;

use miniray_common::auth::AuthedChannel;
use miniray_proto::gcs_client::GcsClient;

use crate::executables::is_hash;
use crate::jobs::{JobError, JobManager, SubmitRequest};

/// Largest executable accepted.
const MAX_EXECUTABLE_BYTES: usize = 2 << 30;
/// How often a streamed log looks for new output.
const TAIL_POLL: Duration = Duration::from_millis(200);

/// What the routes share.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) token: String,
    pub(crate) jobs: JobManager,
    pub(crate) gcs: GcsClient<AuthedChannel>,
    /// The host and port this server listens on, for the service discovery.
    listen: (String, u16),
}

/// How the dashboard serves.
pub struct ServeOptions {
    /// The cluster's TLS, when it uses TLS.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    pub token: String,
    /// The GCS, for the cluster's metrics targets.
    pub gcs: GcsClient<AuthedChannel>,
    /// The host the listener is bound to (its own target in the service discovery).
    pub host: String,
}

/// Serves the routes on `listener` until `shutdown` resolves: over TLS with `options.tls`
/// (the cluster's, when it uses TLS), else plain HTTP.
pub async fn serve(
    listener: tokio::net::TcpListener,
    options: ServeOptions,
    jobs: JobManager,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let port = listener.local_addr()?.port();
    let state = AppState {
        token: options.token,
        jobs,
        gcs: options.gcs,
        listen: (options.host, port),
    };
    let router = router(state);
    match options.tls {
        Some(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            miniray_common::https::serve_tls(listener, acceptor, router, shutdown).await;
            Ok(())
        }
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/version", get(version))
        .route("/metrics", get(metrics))
        .route("/api/prometheus/sd", get(prometheus_sd))
        .route(
            "/api/executables/{hash}",
            get(has_executable).put(put_executable),
        )
        .route("/api/jobs", get(list_jobs).post(submit_job))
        .route("/api/jobs/", get(list_jobs).post(submit_job))
        .route("/api/jobs/{id}", get(get_job).delete(delete_job))
        .route("/api/jobs/{id}/logs", get(job_logs))
        .route("/api/jobs/{id}/logs/tail", get(tail_logs))
        .route("/api/jobs/{id}/stop", axum::routing::post(stop_job))
        .merge(crate::pages::routes())
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

/// `GET /metrics`: jobs by state, in the format the scraper asks for.
async fn metrics(State(state): State<AppState>, headers: http::HeaderMap) -> Response {
    match state.jobs.list().await {
        Ok(records) => {
            miniray_common::metrics::reply(&crate::metrics::jobs_registry(&records), &headers)
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /api/prometheus/sd`: every metrics endpoint of the cluster, as Prometheus's
/// file_sd / http_sd target groups.
async fn prometheus_sd(State(state): State<AppState>) -> Response {
    let (host, port) = &state.listen;
    match crate::metrics::targets(state.gcs.clone(), (host, *port)).await {
        Ok(groups) => axum::Json(groups).into_response(),
        Err(e) => e.into_response(),
    }
}

fn error(status: u16, message: impl Into<String>) -> Response {
    let code =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    (code, axum::Json(json!({"error": message.into()}))).into_response()
}

impl IntoResponse for JobError {
    fn into_response(self) -> Response {
        error(self.http_status(), self.to_string())
    }
}

/// Lets through requests with the token: as a bearer header, or (GET requests of pages)
/// as the pages' cookie; a page opened with `?token=` sets that cookie first.
async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let page = crate::pages::is_page(request.uri().path());
    if page && let Some(response) = crate::pages::login(&request, &state.token) {
        return response;
    }
    let bearer = miniray_common::auth::bearer_token_matches(request.headers(), &state.token);
    let cookie = page
        && crate::pages::cookie_token(&request).is_some_and(|t| {
            miniray_common::auth::token_matches(state.token.as_bytes(), t.as_bytes())
        });
    if bearer || cookie {
        return next.run(request).await;
    }
    if page {
        return crate::pages::login_page("This dashboard needs the cluster token.");
    }
    error(
        401,
        "missing or wrong cluster token (Authorization: Bearer <token>)",
    )
}

async fn version() -> Response {
    axum::Json(json!({"version": env!("CARGO_PKG_VERSION")})).into_response()
}

/// A 400 for a path segment that is not a blake3 hash; `None` for one that is.
fn bad_hash(hash: &str) -> Option<Response> {
    (!is_hash(hash)).then(|| {
        error(
            400,
            format!("{hash:?} is not a blake3 hash (64 lowercase hex characters)"),
        )
    })
}

async fn has_executable(State(state): State<AppState>, Path(hash): Path<String>) -> Response {
    if let Some(r) = bad_hash(&hash) {
        return r;
    }
    match state.jobs.executables().get(&hash) {
        Some(_) => axum::Json(json!({"present": true})).into_response(),
        None => error(404, format!("no executable {hash} on the head")),
    }
}

/// Receives an executable and keeps it under its hash; nothing is kept unless the bytes
/// hash to the name.
async fn put_executable(
    State(state): State<AppState>,
    Path(hash): Path<String>,
    body: Body,
) -> Response {
    if let Some(r) = bad_hash(&hash) {
        return r;
    }
    let mut bytes = Vec::new();
    let mut hasher = blake3::Hasher::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return error(400, format!("reading the upload: {e}")),
        };
        if bytes.len() + chunk.len() > MAX_EXECUTABLE_BYTES {
            return error(
                413,
                format!("executables are limited to {MAX_EXECUTABLE_BYTES} bytes"),
            );
        }
        hasher.update(&chunk);
        bytes.extend_from_slice(&chunk);
    }
    let actual = hasher.finalize().to_hex().to_string();
    if actual != hash {
        return error(400, format!("the upload hashes to {actual}, not {hash}"));
    }
    let size = bytes.len();
    let jobs = state.jobs.clone();
    let stored =
        tokio::task::spawn_blocking(move || jobs.executables().put(&hash, &bytes).map(|_| hash))
            .await;
    match stored {
        Ok(Ok(hash)) => {
            tracing::info!(%hash, size, "executable uploaded");
            axum::Json(json!({"present": true, "size": size})).into_response()
        }
        Ok(Err(e)) => error(500, format!("keeping the executable: {e}")),
        Err(e) => error(500, format!("keeping the executable: {e}")),
    }
}

async fn submit_job(State(state): State<AppState>, body: Bytes) -> Response {
    let req: SubmitRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(400, format!("the request is not a job submission: {e}")),
    };
    match state.jobs.submit(req).await {
        Ok(record) => axum::Json(json!({
            "submission_id": record.submission_id,
            "job_id": record.submission_id,
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn list_jobs(State(state): State<AppState>) -> Response {
    match state.jobs.list().await {
        Ok(records) => axum::Json(records).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn get_job(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.jobs.get(&id).await {
        Ok(record) => axum::Json(record).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn job_logs(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    if let Err(e) = state.jobs.get(&id).await {
        return e.into_response();
    }
    match state.jobs.store().read_log(&id, 0).await {
        Ok(chunks) => {
            let bytes: Vec<u8> = chunks.into_iter().flat_map(|(_, b)| b).collect();
            axum::Json(json!({"logs": String::from_utf8_lossy(&bytes)})).into_response()
        }
        Err(status) => JobError::Gcs(status).into_response(),
    }
}

/// The output as it comes: what is kept, then new chunks until the job has ended and
/// everything it wrote was sent.
async fn tail_logs(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    if let Err(e) = state.jobs.get(&id).await {
        return e.into_response();
    }
    let jobs = state.jobs.clone();
    // (next chunk to send, whether the job had ended at the last look)
    let stream = futures::stream::unfold((0u64, false), move |(next, ended)| {
        let jobs = jobs.clone();
        let id = id.clone();
        async move {
            loop {
                let done = jobs
                    .get(&id)
                    .await
                    .map(|r| r.status.is_terminal())
                    .unwrap_or(true);
                let chunks = jobs.store().read_log(&id, next).await.unwrap_or_default();
                if let Some(last) = chunks.last().map(|(s, _)| *s) {
                    let bytes: Vec<u8> = chunks.into_iter().flat_map(|(_, b)| b).collect();
                    return Some((Ok::<_, Infallible>(Bytes::from(bytes)), (last + 1, done)));
                }
                // Read after seeing the end: nothing more will come.
                if ended || done {
                    if ended {
                        return None;
                    }
                    return Some((Ok(Bytes::new()), (next, true)));
                }
                tokio::time::sleep(TAIL_POLL).await;
            }
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn stop_job(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.jobs.stop(&id).await {
        Ok(stopped) => axum::Json(json!({"stopped": stopped})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn delete_job(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.jobs.delete(&id).await {
        Ok(deleted) => axum::Json(json!({"deleted": deleted})).into_response(),
        Err(e) => e.into_response(),
    }
}
