//! `up` and `down` against an in-memory API server behind `tower_test::mock`: every request
//! is recorded, so the tests check which calls were made, in which order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use miniray_k8s::deploy::manifests::{self, Kind, Manifest};
use miniray_k8s::deploy::{self, Action, ClusterSpec, DeployError, Progress, Secrets, apply};
use serde_json::{Value, json};

const CONFIG: &str = "cluster_name: demo\n\
max_workers: 4\n\
provider:\n  type: kubernetes\n  namespace: rl\n  image: reg/miniray:1\n  redis: { deploy: true }\n\
head_node_type: head\n\
available_node_types:\n  head:\n    resources: { CPU: 0 }\n  cpu:\n    resources: { CPU: 1 }\n    max_workers: 4\n";

/// The in-memory API: objects by path (`/api/v1/namespaces/rl/secrets/demo-token`).
#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    resource_version: u64,
    /// `METHOD path` of every request, in order.
    log: Vec<String>,
    /// Paths whose next PUT is answered 409 (someone else wrote it meanwhile).
    conflict_next_put: BTreeSet<String>,
    /// Paths whose every PUT is answered 409.
    always_conflict: BTreeSet<String>,
    /// Paths whose POST is answered 403 (RBAC).
    forbidden: BTreeSet<String>,
    /// Created Deployments get a ready replica at once.
    deployments_ready: bool,
}

type Shared = Arc<Mutex<State>>;

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string().into_bytes()))
        .expect("response")
}

fn ok(value: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from(value.to_string().into_bytes()))
        .expect("response")
}

/// `labelSelector=a=b,c=d` as pairs (equality only: all `up` and `down` send).
fn selector(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("labelSelector="))
        .flat_map(|s| {
            let s = s
                .replace("%3D", "=")
                .replace("%2C", ",")
                .replace("%2F", "/");
            s.split(',')
                .filter_map(|p| {
                    p.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn answer(state: &Shared, method: &Method, path: &str, query: &str, body: &[u8]) -> Response<Body> {
    let mut s = state.lock().expect("state");
    s.log.push(format!("{method} {path}"));
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    // A collection path has an even number of segments after the namespace: `/api/v1/
    // namespaces/rl/pods` vs `.../pods/name`.
    let is_item = |p: &str| {
        let after_ns = p.split("/namespaces/").nth(1).unwrap_or("");
        after_ns.split('/').count() == 3
    };
    match (method.clone(), is_item(path)) {
        (Method::GET, true) => match s.objects.get(path) {
            Some(o) => ok(o),
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{path} not found"),
            ),
        },
        (Method::GET, false) => {
            let want = selector(query);
            let items: Vec<Value> = s
                .objects
                .iter()
                .filter(|(p, _)| p.rsplit_once('/').map(|(c, _)| c) == Some(path))
                .filter(|(_, o)| {
                    want.iter()
                        .all(|(k, v)| o["metadata"]["labels"][k] == v.as_str())
                })
                .map(|(_, o)| o.clone())
                .collect();
            ok(
                &json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}),
            )
        }
        (Method::POST, false) => {
            let name = body["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let item = format!("{path}/{name}");
            if s.forbidden.contains(&item) {
                return status(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    "roles.rbac.authorization.k8s.io is forbidden: User \"dev\" cannot create resource",
                );
            }
            if s.objects.contains_key(&item) {
                return status(StatusCode::CONFLICT, "AlreadyExists", "already exists");
            }
            s.resource_version += 1;
            let mut o = body;
            o["metadata"]["resourceVersion"] = json!(s.resource_version.to_string());
            if o["kind"] == "Deployment" {
                o["metadata"]["generation"] = json!(1);
                if s.deployments_ready {
                    o["status"] = json!({"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1});
                }
            }
            s.objects.insert(item, o.clone());
            ok(&o)
        }
        (Method::PUT, true) => {
            if s.conflict_next_put.remove(path) || s.always_conflict.contains(path) {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "the object has been modified",
                );
            }
            let Some(live) = s.objects.get(path).cloned() else {
                return status(StatusCode::NOT_FOUND, "NotFound", "gone");
            };
            if body["metadata"]["resourceVersion"] != live["metadata"]["resourceVersion"] {
                return status(StatusCode::CONFLICT, "Conflict", "stale resourceVersion");
            }
            s.resource_version += 1;
            let mut o = body;
            o["metadata"]["resourceVersion"] = json!(s.resource_version.to_string());
            if o["kind"] == "Deployment" {
                let generation = live["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                o["metadata"]["generation"] = json!(generation);
                if s.deployments_ready {
                    o["status"] = json!({"observedGeneration": generation, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1});
                }
            }
            s.objects.insert(path.to_string(), o.clone());
            ok(&o)
        }
        (Method::DELETE, true) => match s.objects.remove(path) {
            Some(o) => ok(&o),
            None => status(StatusCode::NOT_FOUND, "NotFound", "not found"),
        },
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "unexpected",
        ),
    }
}

/// A client whose requests `state` answers; the serving task stops with the test's runtime.
fn client(state: &Shared) -> kube::Client {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let state = state.clone();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let query = parts.uri.query().unwrap_or("").to_string();
            let response = answer(&state, &parts.method, parts.uri.path(), &query, &bytes);
            send.send_response(response);
        }
    });
    kube::Client::new(service, "rl")
}

fn spec(text: &str) -> ClusterSpec {
    ClusterSpec::parse(text).expect("valid config")
}

fn build(spec: &ClusterSpec, token: &str) -> Vec<Manifest> {
    manifests::build(
        spec,
        &Secrets {
            token: token.into(),
            tls: None,
        },
    )
}

/// The collection path of a manifest.
fn collection(m: &Manifest) -> String {
    let (prefix, plural) = match m.kind {
        Kind::ServiceAccount => ("/api/v1", "serviceaccounts"),
        Kind::Role => ("/apis/rbac.authorization.k8s.io/v1", "roles"),
        Kind::RoleBinding => ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
        Kind::Secret => ("/api/v1", "secrets"),
        Kind::ConfigMap => ("/api/v1", "configmaps"),
        Kind::Deployment => ("/apis/apps/v1", "deployments"),
        Kind::Service => ("/api/v1", "services"),
    };
    format!("{prefix}/namespaces/{}/{plural}", m.namespace)
}

fn item(m: &Manifest) -> String {
    format!("{}/{}", collection(m), m.name)
}

fn take_log(state: &Shared) -> Vec<String> {
    std::mem::take(&mut state.lock().expect("state").log)
}

async fn apply_all(client: &kube::Client, ms: &[Manifest]) -> Vec<(Kind, String, Action)> {
    apply::apply(client, ms, &mut |_| {})
        .await
        .expect("apply")
        .into_iter()
        .map(|a| (a.kind, a.name, a.action))
        .collect()
}

#[tokio::test]
async fn the_first_apply_creates_each_object_in_order_and_the_second_only_reads() {
    let state = Shared::default();
    let client = client(&state);
    let spec = spec(CONFIG);
    let ms = build(&spec, "tok");
    assert_eq!(ms.len(), 9, "with Redis");

    let done = apply_all(&client, &ms).await;
    assert!(
        done.iter().all(|(_, _, a)| *a == Action::Created),
        "{done:?}"
    );
    let expected: Vec<String> = ms
        .iter()
        .flat_map(|m| {
            [
                format!("GET {}", item(m)),
                format!("POST {}", collection(m)),
            ]
        })
        .collect();
    assert_eq!(take_log(&state), expected);
    // What was stored is what was built (the hash annotation included).
    for m in &ms {
        let stored = state.lock().expect("state").objects[&item(m)].clone();
        assert_eq!(
            stored["metadata"]["annotations"],
            m.object["metadata"]["annotations"]
        );
    }

    // Again: the live objects carry the same hashes, so nothing is written.
    let done = apply_all(&client, &ms).await;
    assert!(
        done.iter().all(|(_, _, a)| *a == Action::Unchanged),
        "{done:?}"
    );
    let expected: Vec<String> = ms.iter().map(|m| format!("GET {}", item(m))).collect();
    assert_eq!(take_log(&state), expected);
}

#[tokio::test]
async fn a_changed_config_replaces_the_configmap_and_the_head_deployment_only() {
    let state = Shared::default();
    let client = client(&state);
    apply_all(&client, &build(&spec(CONFIG), "tok")).await;
    take_log(&state);

    let changed = spec(&CONFIG.replace("max_workers: 4\nprovider", "max_workers: 5\nprovider"));
    let ms = build(&changed, "tok");
    let done = apply_all(&client, &ms).await;
    let updated: Vec<&str> = done
        .iter()
        .filter(|(_, _, a)| *a == Action::Updated)
        .map(|(_, n, _)| n.as_str())
        .collect();
    assert_eq!(updated, vec!["demo-config", "demo-head"]);
    let writes: Vec<String> = take_log(&state)
        .into_iter()
        .filter(|l| !l.starts_with("GET"))
        .collect();
    assert_eq!(
        writes,
        vec![
            "PUT /api/v1/namespaces/rl/configmaps/demo-config".to_string(),
            "PUT /apis/apps/v1/namespaces/rl/deployments/demo-head".to_string(),
        ]
    );
    let s = state.lock().expect("state");
    let cm = &s.objects["/api/v1/namespaces/rl/configmaps/demo-config"];
    assert!(
        cm["data"]["cluster.yaml"]
            .as_str()
            .unwrap_or("")
            .contains("max_workers: 5")
    );
    // The head Service (same spec) was left alone.
    assert_eq!(
        s.objects["/api/v1/namespaces/rl/services/demo-head"]["metadata"]["resourceVersion"],
        "9"
    );
}

#[tokio::test]
async fn a_conflict_on_replace_is_retried_from_a_fresh_read() {
    let state = Shared::default();
    let client = client(&state);
    apply_all(&client, &build(&spec(CONFIG), "tok")).await;
    take_log(&state);
    let cm = "/api/v1/namespaces/rl/configmaps/demo-config";
    state
        .lock()
        .expect("state")
        .conflict_next_put
        .insert(cm.to_string());

    let ms = build(&spec(&format!("{CONFIG}# changed\n")), "tok");
    let config_map: Vec<Manifest> = ms
        .into_iter()
        .filter(|m| m.kind == Kind::ConfigMap)
        .collect();
    let done = apply_all(&client, &config_map).await;
    assert_eq!(
        done,
        vec![(Kind::ConfigMap, "demo-config".to_string(), Action::Updated)]
    );
    assert_eq!(
        take_log(&state),
        vec![
            format!("GET {cm}"),
            format!("PUT {cm}"),
            format!("GET {cm}"),
            format!("PUT {cm}")
        ]
    );
    // A conflict that never ends is reported after a few attempts, not looped on forever.
    state
        .lock()
        .expect("state")
        .always_conflict
        .insert(cm.to_string());
    let ms = build(&spec(&format!("{CONFIG}# changed again\n")), "tok");
    let config_map: Vec<Manifest> = ms
        .into_iter()
        .filter(|m| m.kind == Kind::ConfigMap)
        .collect();
    let e = apply::apply(&client, &config_map, &mut |_| {})
        .await
        .expect_err("endless conflict");
    assert!(
        matches!(
            e,
            DeployError::Conflict {
                attempts: apply::MAX_ATTEMPTS,
                ..
            }
        ),
        "{e}"
    );
    let puts = take_log(&state)
        .iter()
        .filter(|l| l.starts_with("PUT"))
        .count();
    assert_eq!(puts, apply::MAX_ATTEMPTS as usize);
}

#[tokio::test]
async fn the_token_is_generated_once_and_kept() {
    let state = Shared::default();
    {
        let mut s = state.lock().expect("state");
        s.deployments_ready = true;
    }
    let client = client(&state);
    let spec = spec(CONFIG);
    assert_eq!(
        apply::existing_token(&client, &spec).await.expect("read"),
        None
    );

    let mut lines = Vec::new();
    let (address, token) = deploy::up(
        &client,
        &spec,
        None,
        None,
        Duration::from_secs(5),
        &mut |p| lines.push(p),
    )
    .await
    .expect("up");
    assert_eq!(address, "demo-head.rl.svc.cluster.local:6379");
    assert_eq!(token.len(), 32);
    let created = lines
        .iter()
        .filter(|p| matches!(p, Progress::Applied(a) if a.action == Action::Created))
        .count();
    assert_eq!(created, 9, "{lines:?}");
    assert_eq!(
        apply::existing_token(&client, &spec).await.expect("read"),
        Some(token.clone())
    );
    take_log(&state);

    // A later `up` reads the Secret, keeps its token (whatever token it is offered), and so
    // writes nothing.
    let mut lines = Vec::new();
    let offered = Some("another-token".to_string());
    let (_, again) = deploy::up(
        &client,
        &spec,
        None,
        offered,
        Duration::from_secs(5),
        &mut |p| lines.push(p),
    )
    .await
    .expect("up again");
    assert_eq!(again, token);
    assert!(
        lines
            .iter()
            .all(|p| !matches!(p, Progress::Applied(a) if a.action != Action::Unchanged)),
        "{lines:?}"
    );
    assert!(take_log(&state).iter().all(|l| l.starts_with("GET")));

    // A Secret without a token is refused rather than silently replaced.
    state
        .lock()
        .expect("state")
        .objects
        .get_mut("/api/v1/namespaces/rl/secrets/demo-token")
        .expect("secret")["data"] = json!({});
    let e = apply::existing_token(&client, &spec)
        .await
        .expect_err("no token");
    assert!(matches!(e, DeployError::BadToken { .. }), "{e}");
}

#[tokio::test]
async fn a_token_given_at_the_first_up_is_the_clusters() {
    let state = Shared::default();
    state.lock().expect("state").deployments_ready = true;
    let client = client(&state);
    let spec = spec(CONFIG);
    let given = Some("given-token".to_string());
    let (_, token) = deploy::up(
        &client,
        &spec,
        None,
        given,
        Duration::from_secs(5),
        &mut |_| {},
    )
    .await
    .expect("up");
    assert_eq!(token, "given-token");
    assert_eq!(
        apply::existing_token(&client, &spec).await.expect("read"),
        Some("given-token".to_string())
    );
}

#[tokio::test]
async fn up_waits_for_the_head_until_its_deadline() {
    let state = Shared::default();
    let client = client(&state);
    let spec = spec(CONFIG);
    let mut lines = Vec::new();
    let started = std::time::Instant::now();
    let e = deploy::up(
        &client,
        &spec,
        None,
        None,
        Duration::from_millis(1200),
        &mut |p| lines.push(p),
    )
    .await
    .expect_err("the head never gets ready");
    assert!(started.elapsed() < Duration::from_secs(5));
    let text = e.to_string();
    assert!(
        text.contains("timed out")
            && text.contains("rl/demo-head")
            && text.contains("no head Pod yet"),
        "{text}"
    );
    assert!(
        lines.contains(&Progress::Waiting(
            "waiting for the head: no head Pod yet".into()
        )),
        "{lines:?}"
    );

    // A head Pod appears, not yet ready: its state is reported.
    state.lock().expect("state").objects.insert(
        "/api/v1/namespaces/rl/pods/demo-head-abc".into(),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "demo-head-abc", "namespace": "rl",
                            "labels": {"miniray.io/cluster": "demo", "miniray.io/component": "head"}},
               "status": {"phase": "Pending", "conditions": [
                   {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}}),
    );
    let mut lines = Vec::new();
    let e = deploy::up(
        &client,
        &spec,
        None,
        None,
        Duration::from_millis(700),
        &mut |p| lines.push(p),
    )
    .await
    .expect_err("still not ready");
    assert!(
        e.to_string()
            .contains("demo-head-abc: Pending (Unschedulable)"),
        "{e}"
    );
}

#[tokio::test]
async fn rbac_refusals_name_the_object_and_the_cause() {
    let state = Shared::default();
    state
        .lock()
        .expect("state")
        .forbidden
        .insert("/apis/rbac.authorization.k8s.io/v1/namespaces/rl/roles/demo-autoscaler".into());
    let client = client(&state);
    let e = apply::apply(&client, &build(&spec(CONFIG), "tok"), &mut |_| {})
        .await
        .expect_err("forbidden");
    let text = e.to_string();
    assert!(
        text.contains("creating Role rl/demo-autoscaler") && text.contains("RBAC"),
        "{text}"
    );
    // It stopped there: nothing after the Role was attempted.
    assert!(!take_log(&state).iter().any(|l| l.contains("rolebindings")));
}

#[tokio::test]
async fn down_deletes_everything_of_the_cluster_and_is_idempotent() {
    let state = Shared::default();
    let client = client(&state);
    let spec = spec(CONFIG);
    apply_all(&client, &build(&spec, "tok")).await;
    {
        let mut s = state.lock().expect("state");
        let labels = |component: &str| json!({"miniray.io/cluster": "demo", "miniray.io/component": component});
        for (name, component) in [
            ("demo-head-x1", "head"),
            ("demo-redis-x2", "redis"),
            ("demo-cpu-abcde", "worker"),
        ] {
            s.objects.insert(
                format!("/api/v1/namespaces/rl/pods/{name}"),
                json!({"kind": "Pod", "metadata": {"name": name, "namespace": "rl", "labels": labels(component)}}),
            );
        }
        // Another cluster's Pod and a ConfigMap left by an older config of this one.
        s.objects.insert(
            "/api/v1/namespaces/rl/pods/other-cpu-zzzzz".into(),
            json!({"kind": "Pod", "metadata": {"name": "other-cpu-zzzzz", "labels": {"miniray.io/cluster": "other"}}}),
        );
        s.objects.insert(
            "/api/v1/namespaces/rl/configmaps/old-name".into(),
            json!({"kind": "ConfigMap", "metadata": {"name": "old-name", "labels": {"miniray.io/cluster": "demo"}}}),
        );
    }
    take_log(&state);
    let mut lines = Vec::new();
    let deleted = deploy::down(&client, &spec, Duration::from_secs(5), &mut |p| {
        lines.push(p)
    })
    .await
    .expect("down");
    let deleted: BTreeSet<String> = deleted.iter().map(|d| d.to_string()).collect();
    for expected in [
        "deployment/demo-head deleted",
        "deployment/demo-redis deleted",
        "service/demo-head deleted",
        "service/demo-redis deleted",
        "configmap/demo-config deleted",
        "configmap/old-name deleted",
        "secret/demo-token deleted",
        "rolebinding/demo-autoscaler deleted",
        "role/demo-autoscaler deleted",
        "serviceaccount/demo-autoscaler deleted",
        "pod/demo-head-x1 deleted",
        "pod/demo-redis-x2 deleted",
        "pod/demo-cpu-abcde deleted",
    ] {
        assert!(deleted.contains(expected), "{expected} not in {deleted:?}");
    }
    assert_eq!(deleted.len(), 13, "{deleted:?}");
    let left: Vec<String> = state
        .lock()
        .expect("state")
        .objects
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        left,
        vec!["/api/v1/namespaces/rl/pods/other-cpu-zzzzz".to_string()]
    );
    // The Deployments went before anything else.
    let deletes: Vec<String> = take_log(&state)
        .into_iter()
        .filter(|l| l.starts_with("DELETE"))
        .collect();
    assert!(
        deletes[0].contains("/deployments/") && deletes[1].contains("/deployments/"),
        "{deletes:?}"
    );

    // Again: everything is already gone, which is fine.
    let deleted = deploy::down(&client, &spec, Duration::from_secs(5), &mut |_| {})
        .await
        .expect("down again");
    assert!(deleted.is_empty(), "{deleted:?}");
}
