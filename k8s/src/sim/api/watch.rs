//! Watch streams: newline-delimited JSON events (`ADDED`, `MODIFIED`, `DELETED`, `ERROR`,
//! `BOOKMARK`) from a resourceVersion on, filtered by namespace and selectors.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::resources::ResourceType;
use super::selectors::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::{Change, EventType, Store};

/// How often a watch that allows bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(15);
/// A watch without `timeoutSeconds` ends after this, as the real server's default
/// (`--min-request-timeout` 1800 s) does; clients resume from the last version they saw.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// What a watch selects and how it behaves.
pub struct WatchRequest {
    pub resource: &'static ResourceType,
    /// None: every namespace.
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// None or `"0"`: the current objects first (as ADDED), then changes.
    pub resource_version: Option<String>,
    pub timeout: Option<Duration>,
    pub bookmarks: bool,
    /// `sendInitialEvents=true` (streaming lists): the current objects as ADDED, then a
    /// BOOKMARK annotated `k8s.io/initial-events-end`, then changes.
    pub send_initial_events: bool,
}

impl WatchRequest {
    fn selects(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }

    /// The event a change is for this watch: a MODIFIED that moves an object into the
    /// selection is ADDED, out of it DELETED, as the real server's filtered watches do.
    fn event_for(&self, change: &Change) -> Option<(EventType, Value)> {
        if !std::ptr::eq(change.resource, self.resource)
            || self
                .namespace
                .as_ref()
                .is_some_and(|ns| *ns != change.namespace)
        {
            return None;
        }
        let now = self.selects(&change.object);
        let kind = match change.kind {
            EventType::Modified => {
                let before = change.old.as_ref().is_some_and(|o| self.selects(o));
                match (before, now) {
                    (true, true) => EventType::Modified,
                    (false, true) => EventType::Added,
                    (true, false) => EventType::Deleted,
                    (false, false) => return None,
                }
            }
            kind if now => kind,
            _ => return None,
        };
        Some((kind, change.object.clone()))
    }
}

fn line(kind: &str, object: &Value) -> Result<Bytes, std::io::Error> {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Ok(Bytes::from(text))
}

/// Starts a watch: the response streams until the timeout, a fall-behind (the client then
/// resumes), or the server's shutdown.
pub fn start(
    store: &Arc<Store>,
    request: WatchRequest,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Response {
    // Initial events are the current state, which is at least as new as any version asked.
    let asked = request
        .resource_version
        .as_deref()
        .filter(|rv| !rv.is_empty() && *rv != "0" && !request.send_initial_events);
    let (initial, receiver, mut last_rv): (Vec<(EventType, Value)>, _, u64) = {
        let objects = store.lock();
        match asked {
            None => {
                let initial = objects
                    .list(request.resource, request.namespace.as_deref())
                    .into_iter()
                    .filter(|o| request.selects(o))
                    .map(|o| (EventType::Added, o.clone()))
                    .collect();
                (initial, Ok(objects.subscribe()), objects.rv())
            }
            Some(rv) => match rv.parse::<u64>() {
                Err(_) => {
                    return ApiError::bad_request(format!("invalid resource version {rv:?}"))
                        .into_response();
                }
                Ok(rv) => match objects.watch_from(rv) {
                    Ok((backlog, receiver)) => (
                        backlog
                            .iter()
                            .filter_map(|c| request.event_for(c))
                            .collect(),
                        Ok(receiver),
                        objects.rv(),
                    ),
                    Err(too_old) => (
                        Vec::new(),
                        Err(ApiError::gone(format!(
                            "too old resource version: {} ({})",
                            too_old.asked, too_old.oldest
                        ))),
                        objects.rv(),
                    ),
                },
            },
        }
    };
    let deadline = tokio::time::Instant::now() + request.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let (sender, body_rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        for (kind, object) in initial {
            if sender.send(line(kind.as_str(), &object)).await.is_err() {
                return;
            }
        }
        let mut receiver = match receiver {
            Ok(receiver) => receiver,
            Err(gone) => {
                let _ = sender.send(line("ERROR", &gone.to_status())).await;
                return;
            }
        };
        if request.send_initial_events {
            let end = json!({
                "kind": request.resource.kind,
                "apiVersion": request.resource.api_version(),
                "metadata": {
                    "resourceVersion": last_rv.to_string(),
                    "annotations": {"k8s.io/initial-events-end": "true"},
                },
            });
            if sender.send(line("BOOKMARK", &end)).await.is_err() {
                return;
            }
        }
        let mut bookmarks =
            tokio::time::interval_at(tokio::time::Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = shutdown.changed() => return,
                _ = sender.closed() => return,
                _ = bookmarks.tick(), if request.bookmarks => {
                    let bookmark = json!({
                        "kind": request.resource.kind,
                        "apiVersion": request.resource.api_version(),
                        "metadata": {"resourceVersion": last_rv.to_string()},
                    });
                    if sender.send(line("BOOKMARK", &bookmark)).await.is_err() {
                        return;
                    }
                }
                change = receiver.recv() => match change {
                    Ok(change) => {
                        last_rv = change.rv;
                        if let Some((kind, object)) = request.event_for(&change)
                            && sender.send(line(kind.as_str(), &object)).await.is_err() {
                                return;
                            }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "a watch fell behind; ending it so the client resumes");
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(body_rx).boxed();
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::api::resources::PODS;

    async fn events(response: Response) -> Vec<Value> {
        let bytes = tokio::time::timeout(
            Duration::from_secs(10),
            axum::body::to_bytes(response.into_body(), 1 << 20),
        )
        .await
        .expect("the watch ends")
        .expect("a body");
        bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("a JSON event"))
            .collect()
    }

    fn request(rv: &str, initial: bool) -> WatchRequest {
        WatchRequest {
            resource: PODS,
            namespace: Some("ns".into()),
            labels: LabelSelector::default(),
            fields: FieldSelector::default(),
            resource_version: Some(rv.into()),
            timeout: Some(Duration::from_millis(200)),
            bookmarks: false,
            send_initial_events: initial,
        }
    }

    #[tokio::test]
    async fn a_watch_from_compacted_history_gets_410_gone() {
        let store = Arc::new(Store::with_history(2));
        for name in ["a", "b", "c", "d"] {
            store
                .lock()
                .put(PODS, "ns", json!({"metadata": {"name": name}}));
        }
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let expired = events(start(&store, request("1", false), shutdown.clone())).await;
        assert_eq!(expired.len(), 1, "{expired:?}");
        assert_eq!(expired[0]["type"], "ERROR");
        assert_eq!(expired[0]["object"]["code"], 410);
        assert_eq!(expired[0]["object"]["reason"], "Expired");

        let kept = events(start(&store, request("2", false), shutdown.clone())).await;
        let names: Vec<&Value> = kept
            .iter()
            .map(|e| &e["object"]["metadata"]["name"])
            .collect();
        assert_eq!(names, ["c", "d"]);

        // "0" is the current state, whatever the history holds.
        let current = events(start(&store, request("0", false), shutdown.clone())).await;
        assert_eq!(current.len(), 4);
        assert!(current.iter().all(|e| e["type"] == "ADDED"));

        // A streaming list: the state, then the bookmark that ends it.
        let streamed = events(start(&store, request("1", true), shutdown.clone())).await;
        assert_eq!(streamed.len(), 5);
        assert_eq!(streamed[4]["type"], "BOOKMARK");
        assert_eq!(
            streamed[4]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
            "true"
        );
    }
}
