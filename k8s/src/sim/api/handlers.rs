//! Routing: authenticates each request, maps its path onto discovery or a resource, parses
//! the query and body, and turns the store's answers into responses.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::response::Response;
use http::Method;
use serde_json::{Value, json};

use super::discovery;
use super::objects::{self, DeleteOptions, Part, PatchKind};
use super::resources::{self, ResourceType};
use super::selectors::{FieldSelector, LabelSelector};
use super::status::{ApiError, json_response};
use super::store::Store;
use super::table;
use super::watch::{self, WatchRequest};

/// The largest request body accepted (the real server's limit is 3 MiB per object).
const MAX_BODY: usize = 8 * 1024 * 1024;

/// What every request handler shares.
pub struct App {
    pub store: Arc<Store>,
    pub token: String,
    /// `host:port` clients reach the server at (in `/api`'s document).
    pub server_address: String,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// The simulator's state folder, where the kubelet writes container logs.
    pub state_dir: Option<std::path::PathBuf>,
}

/// The request's resource: which collection, and which object and subresource in it.
struct Target {
    resource: &'static ResourceType,
    /// `""` for cluster-scoped kinds; None for a namespaced kind's list across namespaces.
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

type Params = HashMap<String, String>;

/// The one handler: every path goes through here.
pub async fn handle(State(app): State<Arc<App>>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = if miniray_common::auth::bearer_token_matches(request.headers(), &app.token) {
        route(&app, request)
            .await
            .unwrap_or_else(ApiError::into_response)
    } else {
        ApiError::unauthorized().into_response()
    };
    tracing::debug!(%method, %path, status = response.status().as_u16(), "api request");
    response
}

async fn route(app: &Arc<App>, request: Request) -> Result<Response, ApiError> {
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ok = |body: Value| Ok(json_response(200, &body));
    let get_only = |request: &Request| {
        if request.method() == Method::GET {
            Ok(())
        } else {
            Err(ApiError::method_not_allowed(
                request.method().as_str(),
                &path,
            ))
        }
    };
    match segments.as_slice() {
        ["version"] => {
            get_only(&request)?;
            ok(discovery::version())
        }
        ["api"] => {
            get_only(&request)?;
            ok(discovery::core_versions(&app.server_address))
        }
        ["apis"] => {
            get_only(&request)?;
            ok(discovery::group_list())
        }
        ["api", "v1"] => {
            get_only(&request)?;
            discovery::resource_list("", "v1").map_or_else(|| Err(unknown(&request)), ok)
        }
        ["apis", group] => {
            get_only(&request)?;
            discovery::api_group(group).map_or_else(|| Err(unknown(&request)), ok)
        }
        ["apis", group, version] => {
            get_only(&request)?;
            discovery::resource_list(group, version).map_or_else(|| Err(unknown(&request)), ok)
        }
        ["api", "v1", rest @ ..] => {
            let target = target("", "v1", rest).ok_or_else(|| unknown(&request))?;
            resource(app, target, request).await
        }
        ["apis", group, version, rest @ ..] => {
            let target = target(group, version, rest).ok_or_else(|| unknown(&request))?;
            resource(app, target, request).await
        }
        _ => Err(unknown(&request)),
    }
}

/// A 404 for a path nothing serves, logged so a client's needs show up in the logs.
fn unknown(request: &Request) -> ApiError {
    let path = request.uri().path();
    if path.starts_with("/openapi") {
        // kubectl asks for the OpenAPI schema to validate and explain; it copes without.
        tracing::debug!(method = %request.method(), path, "no OpenAPI document is served");
    } else {
        tracing::warn!(method = %request.method(), path, query = request.uri().query().unwrap_or_default(), "request for a path the simulated API server does not serve");
    }
    ApiError::path_not_found(path)
}

fn target(group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let namespaced_form = rest.len() >= 3
        && rest[0] == "namespaces"
        && resources::find(group, version, rest[2]).is_some_and(|r| r.namespaced);
    let (namespace, rest) = if namespaced_form {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    let resource = resources::find(group, version, plural)?;
    if let Some(sub) = &subresource
        && !resource.subresources.contains(&sub.as_str())
    {
        return None;
    }
    match (resource.namespaced, namespace) {
        (false, Some(_)) => None,
        (false, None) => Some(Target {
            resource,
            namespace: Some(String::new()),
            name,
            subresource,
        }),
        // A namespaced kind without a namespace: only the list (and watch) across them.
        (true, None) if name.is_some() => None,
        (true, namespace) => Some(Target {
            resource,
            namespace,
            name,
            subresource,
        }),
    }
}

fn params(request: &Request) -> Result<Params, ApiError> {
    Query::<Params>::try_from_uri(request.uri())
        .map(|Query(p)| p)
        .map_err(|e| ApiError::bad_request(format!("bad query: {e}")))
}

fn flag(params: &Params, name: &str) -> bool {
    params.get(name).is_some_and(|v| v == "true" || v == "1")
}

/// Reads a JSON body (or, for apply patches, YAML).
async fn body(request: Request, yaml: bool) -> Result<Value, ApiError> {
    let bytes = axum::body::to_bytes(request.into_body(), MAX_BODY)
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
    match serde_json::from_slice(&bytes) {
        Ok(value) => Ok(value),
        Err(e) if yaml => {
            let text = std::str::from_utf8(&bytes).map_err(|_| {
                ApiError::bad_request(format!("the body is neither JSON nor YAML: {e}"))
            })?;
            serde_saphyr::from_str::<Value>(text).map_err(|e| {
                ApiError::bad_request(format!("the body is neither JSON nor YAML: {e}"))
            })
        }
        Err(e) => Err(ApiError::bad_request(format!("the body is not JSON: {e}"))),
    }
}

fn header(request: &Request, name: http::header::HeaderName) -> &str {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn selectors(
    params: &Params,
    resource: &ResourceType,
) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(params.get("labelSelector").map_or("", String::as_str))
        .map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(
        params.get("fieldSelector").map_or("", String::as_str),
        resource,
    )
    .map_err(ApiError::bad_request)?;
    Ok((labels, fields))
}

async fn resource(app: &Arc<App>, target: Target, request: Request) -> Result<Response, ApiError> {
    let params = params(&request)?;
    if params.get("dryRun").is_some_and(|d| !d.is_empty()) {
        return Err(ApiError::bad_request(
            "dry run is not supported by the simulated API server",
        ));
    }
    let method = request.method().clone();
    let resource = target.resource;
    let accept = header(&request, http::header::ACCEPT).to_string();
    let Target {
        namespace,
        name,
        subresource,
        ..
    } = target;
    let ns = namespace.clone().unwrap_or_default();
    let part = match subresource.as_deref() {
        Some("status") => Part::Status,
        _ => Part::Main,
    };
    let store = &app.store;
    match (&method, name, subresource.as_deref()) {
        (&Method::GET, None, None) => {
            let (labels, fields) = selectors(&params, resource)?;
            if flag(&params, "watch") {
                let timeout = params
                    .get("timeoutSeconds")
                    .and_then(|t| t.parse::<u64>().ok())
                    .map(Duration::from_secs);
                let request = WatchRequest {
                    resource,
                    namespace,
                    labels,
                    fields,
                    resource_version: params.get("resourceVersion").cloned(),
                    timeout,
                    bookmarks: flag(&params, "allowWatchBookmarks"),
                    send_initial_events: flag(&params, "sendInitialEvents"),
                };
                return Ok(watch::start(store, request, app.shutdown.clone()));
            }
            let (items, rv) = {
                let objects = store.lock();
                let items: Vec<Value> = objects
                    .list(resource, namespace.as_deref())
                    .into_iter()
                    .filter(|o| labels.matches(o) && fields.matches(o))
                    .cloned()
                    .collect();
                (items, objects.rv())
            };
            if let Some(version) = table::wanted(&accept) {
                let include = params.get("includeObject").map(String::as_str);
                return Ok(json_response(
                    200,
                    &table::render(resource, version, &items, rv, include),
                ));
            }
            Ok(json_response(200, &list(resource, items, rv)))
        }
        (&Method::POST, None, None) => {
            let body = body(request, false).await?;
            let created = objects::create(&mut store.lock(), resource, &ns, body)?;
            Ok(json_response(201, &created))
        }
        (&Method::DELETE, None, None) => {
            let (labels, fields) = selectors(&params, resource)?;
            let options = delete_options(&params, request).await?;
            let mut objects = store.lock();
            let names: Vec<(String, String)> = objects
                .list(resource, namespace.as_deref())
                .into_iter()
                .filter(|o| labels.matches(o) && fields.matches(o))
                .map(|o| {
                    (
                        o.pointer("/metadata/namespace")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        o.pointer("/metadata/name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                    )
                })
                .collect();
            let mut deleted = Vec::new();
            for (ns, name) in names {
                deleted.push(objects::delete(
                    &mut objects,
                    resource,
                    &ns,
                    &name,
                    &options,
                )?);
            }
            let rv = objects.rv();
            Ok(json_response(200, &list(resource, deleted, rv)))
        }
        (&Method::GET, Some(name), None | Some("status")) => {
            let object = store
                .lock()
                .get(resource, &ns, &name)
                .cloned()
                .ok_or_else(|| ApiError::not_found(resource, &name))?;
            if let Some(version) = table::wanted(&accept) {
                let rv = store.lock().rv();
                let include = params.get("includeObject").map(String::as_str);
                return Ok(json_response(
                    200,
                    &table::render(resource, version, &[object], rv, include),
                ));
            }
            Ok(json_response(200, &object))
        }
        (&Method::GET, Some(name), Some("log")) => {
            let pod = store
                .lock()
                .get(resource, &ns, &name)
                .cloned()
                .ok_or_else(|| ApiError::not_found(resource, &name))?;
            let text = pod_log(app.state_dir.as_deref(), &pod, &ns, &name, &params)?;
            let mut response = Response::new(axum::body::Body::from(text));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain"),
            );
            Ok(response)
        }
        (&Method::PUT, Some(name), None | Some("status")) => {
            let body = body(request, false).await?;
            let replaced = objects::replace(&mut store.lock(), resource, &ns, &name, body, part)?;
            Ok(json_response(200, &replaced))
        }
        (&Method::PATCH, Some(name), None | Some("status")) => {
            let content_type = header(&request, http::header::CONTENT_TYPE);
            let kind = match content_type.split(';').next().unwrap_or_default().trim() {
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    PatchKind::Merge
                }
                "application/apply-patch+yaml" => {
                    if params.get("fieldManager").is_none_or(String::is_empty) {
                        return Err(ApiError::invalid(
                            resource,
                            &name,
                            &[(
                                "fieldManager".to_string(),
                                "FieldValueRequired",
                                "Required value: is required for apply patch".to_string(),
                            )],
                        ));
                    }
                    PatchKind::Apply
                }
                "application/json-patch+json" => PatchKind::Json,
                other => return Err(ApiError::unsupported_media_type(other)),
            };
            let body = body(request, kind == PatchKind::Apply).await?;
            let patched =
                objects::patch(&mut store.lock(), resource, &ns, &name, body, kind, part)?;
            Ok(json_response(200, &patched))
        }
        (&Method::DELETE, Some(name), None) => {
            let options = delete_options(&params, request).await?;
            let deleted = objects::delete(&mut store.lock(), resource, &ns, &name, &options)?;
            Ok(json_response(200, &deleted))
        }
        (&Method::POST, Some(name), Some("binding")) => {
            let body = body(request, false).await?;
            objects::bind(&mut store.lock(), &ns, &name, &body)?;
            Ok(json_response(
                201,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            ))
        }
        (method, name, sub) => {
            let what = format!(
                "{}{}{}",
                resource.plural,
                name.map(|n| format!("/{n}")).unwrap_or_default(),
                sub.map(|s| format!("/{s}")).unwrap_or_default()
            );
            Err(ApiError::method_not_allowed(method.as_str(), &what))
        }
    }
}

/// The log of one container of `pod`, as `GET pods/NAME/log` answers it: the container named
/// by `container` (optional when the Pod has one), whole or its last `tailLines` lines.
fn pod_log(
    state_dir: Option<&std::path::Path>,
    pod: &Value,
    ns: &str,
    name: &str,
    params: &Params,
) -> Result<String, ApiError> {
    let containers: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();
    let container = match params.get("container").filter(|c| !c.is_empty()) {
        Some(c) if containers.contains(&c.as_str()) => c.clone(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )));
        }
        None => match containers.as_slice() {
            [only] => (*only).to_string(),
            all => {
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    all.join(" ")
                )));
            }
        },
    };
    let tail = match params.get("tailLines") {
        None => None,
        Some(t) => Some(t.parse::<usize>().map_err(|_| {
            ApiError::bad_request(format!("tailLines: {t:?} is not a number of lines"))
        })?),
    };
    let Some(state_dir) = state_dir else {
        return Ok(String::new());
    };
    let path = crate::sim::container_log(state_dir, ns, name, &container);
    let text = match std::fs::read(&path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::bad_request(format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
            )));
        }
        Err(e) => {
            return Err(ApiError::bad_request(format!(
                "cannot read the log of container {container}: {e}"
            )));
        }
    };
    Ok(match tail {
        None => text,
        Some(n) => {
            let lines: Vec<&str> = text.lines().collect();
            let mut out = lines[lines.len().saturating_sub(n)..].join("\n");
            if !out.is_empty() {
                out.push('\n');
            }
            out
        }
    })
}

/// A `XList` of `items` at resourceVersion `rv`.
fn list(resource: &ResourceType, items: Vec<Value>, rv: u64) -> Value {
    json!({
        "kind": resource.list_kind(),
        "apiVersion": resource.api_version(),
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    })
}

/// The DeleteOptions of a delete: query parameters, overridden by a body when there is one.
async fn delete_options(params: &Params, request: Request) -> Result<DeleteOptions, ApiError> {
    let mut options =
        DeleteOptions {
            grace_period_seconds: match params.get("gracePeriodSeconds") {
                Some(g) => Some(g.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}"))
                })?),
                None => None,
            },
            ..DeleteOptions::default()
        };
    let bytes = axum::body::to_bytes(request.into_body(), MAX_BODY)
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(options);
    }
    let body: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the DeleteOptions body is not JSON: {e}")))?;
    if let Some(grace) = body.get("gracePeriodSeconds").and_then(Value::as_i64) {
        options.grace_period_seconds = Some(grace);
    }
    if let Some(uid) = body.pointer("/preconditions/uid").and_then(Value::as_str) {
        options.precondition_uid = Some(uid.to_string());
    }
    if let Some(rv) = body
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str)
    {
        options.precondition_resource_version = Some(rv.to_string());
    }
    // propagationPolicy needs no handling here: dependents are removed by the simulator's
    // garbage collector in the background whichever policy is asked for.
    Ok(options)
}
