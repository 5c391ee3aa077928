//! The Kubernetes provider's calls, request by request, against a mocked API server
//! (`tower_test::mock::pair` behind `kube::Client::new`): method, path, query (selectors
//! percent-decoded), the Pod it creates, and how it reads the server's answers (realistic
//! Pods and Status bodies).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use http_body_util::BodyExt;
use kube::client::Body;
use miniray_autoscaler::config::NodeTypeConfig;
use miniray_autoscaler::provider::{NodeProvider, ProviderCallError};
use miniray_common::Resources;
use miniray_k8s::config::KubernetesConfig;
use miniray_k8s::provider::{KubernetesProvider, KubernetesProviderConfig};
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

const NS: &str = "rl";
const PODS: &str = "/api/v1/namespaces/rl/pods";
const WORKERS: &str = "miniray.io/cluster=demo,miniray.io/component=worker";
const LIVE: &str = "status.phase!=Failed,status.phase!=Succeeded,status.phase!=Unknown";
const TERMINAL: &str = "status.phase!=Pending,status.phase!=Running,status.phase!=Unknown";
/// How long a test waits for the provider's next request (longer than the provider's own
/// call timeout plus backoff, which tests on virtual time run through).
const WAIT: Duration = Duration::from_secs(60);

fn node_type(resources: &[(&str, f64)], node_config: Value) -> NodeTypeConfig {
    NodeTypeConfig {
        resources: Resources::from_pairs(resources.iter().copied()).expect("resources"),
        min_workers: 0,
        max_workers: 4,
        idle_timeout: None,
        node_config,
    }
}

fn config(tls: bool) -> KubernetesProviderConfig {
    let k8s = KubernetesConfig::parse(&json!({
        "type": "kubernetes", "namespace": NS, "image": "registry.example/miniray:0.1",
        "image_pull_policy": "IfNotPresent", "gcs_port": 6380,
    }))
    .expect("provider section");
    let mut node_types = BTreeMap::new();
    node_types.insert(
        "cpu".to_string(),
        node_type(
            &[("CPU", 2.0), ("GPU", 1.0)],
            json!({
                "metadata": {"labels": {"team": "rl"}, "annotations": {"a": "b"}},
                "spec": {
                    "nodeSelector": {"pool": "cpu"},
                    "containers": [{
                        "name": "miniray",
                        "env": [{"name": "EXTRA", "value": "1"}],
                        "resources": {"limits": {"cpu": "4", "memory": "2Gi"}},
                    }],
                },
            }),
        ),
    );
    node_types.insert(
        "small".to_string(),
        node_type(
            &[],
            json!({"spec": {"containers": [{"name": "miniray",
                "resources": {"limits": {"cpu": "1500m"}}}]}}),
        ),
    );
    node_types.insert("bare".to_string(), node_type(&[], Value::Null));
    KubernetesProviderConfig {
        cluster_name: "demo".into(),
        k8s,
        node_types,
        tls,
    }
}

struct Server {
    handle: Handle<Request<Body>, Response<Body>>,
}

/// One request the provider made, with the means to answer it.
struct Got {
    method: Method,
    path: String,
    query: BTreeMap<String, String>,
    body: Value,
    respond: SendResponse<Response<Body>>,
}

fn provider(tls: bool) -> (Arc<KubernetesProvider>, Server) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, NS);
    let provider = KubernetesProvider::new(client, config(tls)).expect("provider");
    (Arc::new(provider), Server { handle })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("utf8");
                out.push(u8::from_str_radix(hex, 16).expect("hex"));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).expect("utf8")
}

impl Server {
    async fn next(&mut self) -> Got {
        let (req, respond) = tokio::time::timeout(WAIT, self.handle.next_request())
            .await
            .expect("the provider made no request in time")
            .expect("the client is gone");
        let (parts, body) = req.into_parts();
        let bytes = body.collect().await.expect("request body").to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON request body")
        };
        let query = parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        Got {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query,
            body,
            respond,
        }
    }

    /// The next request is this one: method, path and exact query.
    async fn expect(&mut self, method: Method, path: &str, query: &[(&str, &str)]) -> Got {
        let got = self.next().await;
        assert_eq!((&got.method, got.path.as_str()), (&method, path));
        let want: BTreeMap<String, String> = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(got.query, want, "query of {method} {path}");
        got
    }

    async fn expect_list(&mut self, labels: &str, fields: &str) -> Got {
        self.expect(
            Method::GET,
            PODS,
            &[("labelSelector", labels), ("fieldSelector", fields)],
        )
        .await
    }

    /// Nothing more was asked.
    async fn expect_no_more(&mut self) {
        let more = tokio::time::timeout(Duration::from_millis(300), self.handle.next_request());
        if let Ok(Some((req, _))) = more.await {
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
    }
}

impl Got {
    fn reply(self, code: u16, body: Value) {
        let response = Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).expect("json")))
            .expect("response");
        self.respond.send_response(response);
    }
}

fn status(code: u16, reason: &str, message: &str, name: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason,
        "details": {"name": name, "kind": "pods"}, "code": code,
    })
}

fn list(items: Vec<Value>) -> Value {
    json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1234"},
           "items": items})
}

/// The Pod as the server stores it: `body` (what was posted) with a name, uid and status.
fn stored(mut body: Value, name: &str) -> Value {
    body["metadata"]["name"] = json!(name);
    body["metadata"]["uid"] = json!(format!("uid-{name}"));
    body["metadata"]["resourceVersion"] = json!("1235");
    body["metadata"]["creationTimestamp"] = json!("2026-12-01T21:00:00Z");
    body["status"] = json!({"phase": "Pending", "qosClass": "Burstable"});
    body
}

/// A listed worker Pod of this cluster.
fn worker(name: &str, node_type: &str, request: &str, status: Value) -> Value {
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "name": name, "namespace": NS, "uid": format!("uid-{name}"),
            "resourceVersion": "1240", "creationTimestamp": "2026-12-01T21:00:00Z",
            "generateName": format!("demo-{node_type}-"),
            "labels": {"miniray.io/cluster": "demo", "miniray.io/node-type": node_type,
                       "miniray.io/launch-request": request, "miniray.io/component": "worker",
                       "app.kubernetes.io/managed-by": "miniray"},
        },
        "spec": {"restartPolicy": "Never", "nodeName": "node-1",
                 "containers": [{"name": "miniray", "image": "registry.example/miniray:0.1"}]},
        "status": status,
    })
}

fn running_status() -> Value {
    json!({"phase": "Running", "podIP": "10.1.0.7", "hostIP": "192.168.0.2",
           "startTime": "2026-12-01T21:00:01Z",
           "containerStatuses": [{"name": "miniray", "ready": true, "restartCount": 0,
               "image": "registry.example/miniray:0.1", "imageID": "sha256:abc",
               "containerID": "containerd://abc", "started": true,
               "state": {"running": {"startedAt": "2026-12-01T21:00:02Z"}}}]})
}

fn request_labels(request: &str) -> String {
    format!("{WORKERS},miniray.io/launch-request={request}")
}

fn container(body: &Value) -> &Value {
    let containers = body["spec"]["containers"].as_array().expect("containers");
    containers
        .iter()
        .find(|c| c["name"] == "miniray")
        .expect("the miniray container")
}

#[tokio::test]
async fn launch_lists_its_request_then_creates_the_worker_pod() {
    let (p, mut server) = provider(false);
    let task = tokio::spawn({
        let p = p.clone();
        async move { p.launch("cpu", 1, "req-1").await }
    });
    server
        .expect_list(&request_labels("req-1"), LIVE)
        .await
        .reply(200, list(vec![]));
    let post = server.expect(Method::POST, PODS, &[]).await;
    let body = post.body.clone();
    assert_eq!(body["apiVersion"], "v1");
    assert_eq!(body["kind"], "Pod");
    assert_eq!(body["metadata"]["generateName"], "demo-cpu-");
    assert_eq!(body["metadata"]["namespace"], NS);
    assert!(body["metadata"].get("name").is_none());
    assert_eq!(
        body["metadata"]["labels"],
        json!({"miniray.io/cluster": "demo", "miniray.io/node-type": "cpu",
               "miniray.io/launch-request": "req-1", "miniray.io/component": "worker",
               "app.kubernetes.io/managed-by": "miniray", "team": "rl"})
    );
    assert_eq!(body["metadata"]["annotations"], json!({"a": "b"}));
    assert_eq!(body["spec"]["restartPolicy"], "Never");
    assert_eq!(body["spec"]["automountServiceAccountToken"], false);
    assert_eq!(body["spec"]["nodeSelector"], json!({"pool": "cpu"}));
    assert!(body["spec"].get("volumes").is_none(), "no TLS volume");
    let c = container(&body);
    assert_eq!(c["image"], "registry.example/miniray:0.1");
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    // The type's CPU wins over the limits (4); the other resources go to --resources.
    assert_eq!(
        c["command"],
        json!([
            "miniray",
            "start",
            "--address",
            "demo-head.rl.svc.cluster.local:6380",
            "--node-ip-address",
            "$(MINIRAY_NODE_IP)",
            "--num-cpus",
            "2",
            "--resources",
            "{\"GPU\":1.0}",
            "--block"
        ])
    );
    assert_eq!(
        c["env"],
        json!([
            {"name": "MINIRAY_TOKEN",
             "valueFrom": {"secretKeyRef": {"name": "demo-token", "key": "token"}}},
            {"name": "MINIRAY_NODE_IP",
             "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "MINIRAY_CLOUD_INSTANCE_ID",
             "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "MINIRAY_NODE_TYPE", "value": "cpu"},
            {"name": "EXTRA", "value": "1"},
        ])
    );
    assert_eq!(
        c["resources"],
        json!({"limits": {"cpu": "4", "memory": "2Gi"}})
    );
    post.reply(201, stored(body, "demo-cpu-x7k2p"));
    let ids = task.await.expect("join").expect("launch");
    assert_eq!(ids, ["demo-cpu-x7k2p"]);
    server.expect_no_more().await;
}

#[tokio::test]
async fn cpu_comes_from_the_limits_rounded_up_and_tls_mounts_the_secret() {
    let (p, mut server) = provider(true);
    for (node_type, cpus) in [("small", Some("2")), ("bare", None)] {
        let task = tokio::spawn({
            let p = p.clone();
            async move { p.launch(node_type, 1, "req-2").await }
        });
        server
            .expect_list(&request_labels("req-2"), LIVE)
            .await
            .reply(200, list(vec![]));
        let post = server.expect(Method::POST, PODS, &[]).await;
        let body = post.body.clone();
        let c = container(&body);
        let mut command = vec![
            "miniray",
            "start",
            "--address",
            "demo-head.rl.svc.cluster.local:6380",
            "--node-ip-address",
            "$(MINIRAY_NODE_IP)",
        ];
        if let Some(n) = cpus {
            command.extend(["--num-cpus", n]);
        }
        command.extend(["--resources", "{}", "--block"]);
        assert_eq!(c["command"], json!(command), "{node_type}");
        let env: BTreeMap<&str, &Value> = c["env"]
            .as_array()
            .expect("env")
            .iter()
            .map(|e| (e["name"].as_str().expect("name"), e))
            .collect();
        assert_eq!(env["MINIRAY_TLS_CERT"]["value"], "/etc/miniray-tls/tls.crt");
        assert_eq!(env["MINIRAY_TLS_KEY"]["value"], "/etc/miniray-tls/tls.key");
        assert_eq!(env["MINIRAY_TLS_CA"]["value"], "/etc/miniray-tls/ca.crt");
        assert_eq!(
            c["volumeMounts"],
            json!([{"name": "miniray-tls", "mountPath": "/etc/miniray-tls", "readOnly": true}])
        );
        assert_eq!(
            body["spec"]["volumes"],
            json!([{"name": "miniray-tls", "secret": {"secretName": "demo-token", "items": [
                {"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"},
                {"key": "ca.crt", "path": "ca.crt"}]}}])
        );
        post.reply(201, stored(body, &format!("demo-{node_type}-abcde")));
        task.await.expect("join").expect("launch");
    }
    server.expect_no_more().await;
}

#[tokio::test]
async fn a_generated_name_taken_409_is_created_again() {
    let (p, mut server) = provider(false);
    let task = tokio::spawn({
        let p = p.clone();
        async move { p.launch("cpu", 1, "req-3").await }
    });
    server
        .expect_list(&request_labels("req-3"), LIVE)
        .await
        .reply(200, list(vec![]));
    server.expect(Method::POST, PODS, &[]).await.reply(
        409,
        status(
            409,
            "AlreadyExists",
            "pods \"demo-cpu-aaaaa\" already exists",
            "demo-cpu-aaaaa",
        ),
    );
    // Nothing was created: no list in between, a second create.
    let post = server.expect(Method::POST, PODS, &[]).await;
    assert_eq!(post.body["metadata"]["generateName"], "demo-cpu-");
    let body = post.body.clone();
    post.reply(201, stored(body, "demo-cpu-bbbbb"));
    assert_eq!(
        task.await.expect("join").expect("launch"),
        ["demo-cpu-bbbbb"]
    );
    server.expect_no_more().await;
}

#[tokio::test]
async fn a_500_on_create_lists_again_before_creating() {
    let (p, mut server) = provider(false);
    let task = tokio::spawn({
        let p = p.clone();
        async move { p.launch("cpu", 1, "req-4").await }
    });
    server
        .expect_list(&request_labels("req-4"), LIVE)
        .await
        .reply(200, list(vec![]));
    server.expect(Method::POST, PODS, &[]).await.reply(
        500,
        status(500, "InternalError", "etcdserver: request timed out", ""),
    );
    // The outcome was unknown: the request's Pods are listed again, then created.
    server
        .expect_list(&request_labels("req-4"), LIVE)
        .await
        .reply(200, list(vec![]));
    let post = server.expect(Method::POST, PODS, &[]).await;
    let body = post.body.clone();
    post.reply(201, stored(body, "demo-cpu-ccccc"));
    assert_eq!(
        task.await.expect("join").expect("launch"),
        ["demo-cpu-ccccc"]
    );
    server.expect_no_more().await;

    // A 504 whose create did happen: the list finds it, nothing is created twice.
    let task = tokio::spawn({
        let p = p.clone();
        async move { p.launch("cpu", 1, "req-5").await }
    });
    server
        .expect_list(&request_labels("req-5"), LIVE)
        .await
        .reply(200, list(vec![]));
    server.expect(Method::POST, PODS, &[]).await.reply(
        504,
        status(
            504,
            "Timeout",
            "Timeout: request did not complete within requested timeout",
            "",
        ),
    );
    server
        .expect_list(&request_labels("req-5"), LIVE)
        .await
        .reply(
            200,
            list(vec![worker(
                "demo-cpu-ddddd",
                "cpu",
                "req-5",
                json!({"phase": "Pending"}),
            )]),
        );
    assert_eq!(
        task.await.expect("join").expect("launch"),
        ["demo-cpu-ddddd"]
    );
    server.expect_no_more().await;
}

#[tokio::test]
async fn a_relaunch_with_the_same_request_creates_only_the_missing_pods() {
    let (p, mut server) = provider(false);
    let task = tokio::spawn({
        let p = p.clone();
        async move { p.launch("cpu", 3, "req-6").await }
    });
    let mut deleting = worker("demo-cpu-old00", "cpu", "req-6", running_status());
    deleting["metadata"]["deletionTimestamp"] = json!("2026-12-01T21:05:00Z");
    deleting["metadata"]["deletionGracePeriodSeconds"] = json!(30);
    server
        .expect_list(&request_labels("req-6"), LIVE)
        .await
        .reply(
            200,
            list(vec![
                worker("demo-cpu-eeeee", "cpu", "req-6", running_status()),
                deleting,
            ]),
        );
    // One exists (the one being deleted does not count): two are created.
    for name in ["demo-cpu-fffff", "demo-cpu-ggggg"] {
        let post = server.expect(Method::POST, PODS, &[]).await;
        assert_eq!(
            post.body["metadata"]["labels"]["miniray.io/launch-request"],
            "req-6"
        );
        let body = post.body.clone();
        post.reply(201, stored(body, name));
    }
    assert_eq!(
        task.await.expect("join").expect("launch"),
        ["demo-cpu-eeeee", "demo-cpu-fffff", "demo-cpu-ggggg"]
    );
    server.expect_no_more().await;

    // Again: all three exist, nothing is created.
    let task = tokio::spawn({
        let p = p.clone();
        async move { p.launch("cpu", 3, "req-6").await }
    });
    server
        .expect_list(&request_labels("req-6"), LIVE)
        .await
        .reply(
            200,
            list(
                ["demo-cpu-eeeee", "demo-cpu-fffff", "demo-cpu-ggggg"]
                    .iter()
                    .map(|n| worker(n, "cpu", "req-6", json!({"phase": "Pending"})))
                    .collect(),
            ),
        );
    assert_eq!(task.await.expect("join").expect("launch").len(), 3);
    server.expect_no_more().await;
}

#[tokio::test]
async fn a_refused_create_is_returned_and_reported_once() {
    let (p, mut server) = provider(false);
    for (code, reason) in [(422, "Invalid"), (403, "Forbidden")] {
        let task = tokio::spawn({
            let p = p.clone();
            async move { p.launch("cpu", 1, "req-7").await }
        });
        server
            .expect_list(&request_labels("req-7"), LIVE)
            .await
            .reply(200, list(vec![]));
        let message = format!("Pod \"\" is invalid: {reason}");
        server
            .expect(Method::POST, PODS, &[])
            .await
            .reply(code, status(code, reason, &message, ""));
        let e = task.await.expect("join").unwrap_err();
        assert!(matches!(e, ProviderCallError::Invalid(_)), "{e}");
        assert!(e.to_string().contains(&message), "{e}");
        let errors = p.poll_errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].node_type, "cpu");
        assert_eq!(errors[0].request_id, "req-7");
        assert_eq!(errors[0].instance_id, "");
        assert!(errors[0].message.contains(&code.to_string()), "{errors:?}");
        assert!(p.poll_errors().is_empty());
        server.expect_no_more().await;
    }
}

#[tokio::test]
async fn an_unknown_node_type_is_invalid_and_calls_nothing() {
    let (p, mut server) = provider(false);
    let e = p.launch("gpu", 1, "req-8").await.unwrap_err();
    assert!(matches!(e, ProviderCallError::Invalid(_)), "{e}");
    server.expect_no_more().await;
}

#[tokio::test]
async fn terminate_deletes_each_pod_and_a_404_is_success() {
    let (p, mut server) = provider(false);
    let task = tokio::spawn({
        let p = p.clone();
        async move {
            p.terminate(&["demo-cpu-aaaaa".into(), "demo-cpu-gone0".into()], "req-t")
                .await
        }
    });
    let del = server
        .expect(Method::DELETE, &format!("{PODS}/demo-cpu-aaaaa"), &[])
        .await;
    let mut pod = worker("demo-cpu-aaaaa", "cpu", "req-1", running_status());
    pod["metadata"]["deletionTimestamp"] = json!("2026-12-01T21:10:30Z");
    pod["metadata"]["deletionGracePeriodSeconds"] = json!(30);
    del.reply(200, pod);
    server
        .expect(Method::DELETE, &format!("{PODS}/demo-cpu-gone0"), &[])
        .await
        .reply(
            404,
            status(
                404,
                "NotFound",
                "pods \"demo-cpu-gone0\" not found",
                "demo-cpu-gone0",
            ),
        );
    task.await.expect("join").expect("terminate");
    server.expect_no_more().await;

    // A server error: the outcome is unknown.
    let task = tokio::spawn({
        let p = p.clone();
        async move { p.terminate(&["demo-cpu-bbbbb".into()], "req-t").await }
    });
    server
        .expect(Method::DELETE, &format!("{PODS}/demo-cpu-bbbbb"), &[])
        .await
        .reply(
            503,
            status(503, "ServiceUnavailable", "the server is shutting down", ""),
        );
    let e = task.await.expect("join").unwrap_err();
    assert!(matches!(e, ProviderCallError::Unavailable(_)), "{e}");
    assert!(e.to_string().contains("demo-cpu-bbbbb"), "{e}");
}

#[tokio::test]
async fn non_terminated_is_one_list_read_from_the_container_status() {
    let (p, mut server) = provider(false);
    let task = tokio::spawn({
        let p = p.clone();
        async move { p.non_terminated().await }
    });
    // Phase Running, but the container is still waiting: pending.
    let mut starting = running_status();
    starting["containerStatuses"][0]["state"] = json!({"waiting": {"reason": "ContainerCreating"}});
    starting["containerStatuses"][0]["ready"] = json!(false);
    let mut deleting = worker("demo-cpu-del00", "cpu", "req-1", running_status());
    deleting["metadata"]["deletionTimestamp"] = json!("2026-12-01T21:10:30Z");
    let mut unlabelled = worker("demo-cpu-nolab", "cpu", "req-1", running_status());
    unlabelled["metadata"]["labels"]
        .as_object_mut()
        .expect("labels")
        .remove("miniray.io/node-type");
    server.expect_list(WORKERS, LIVE).await.reply(
        200,
        list(vec![
            worker("demo-cpu-run00", "cpu", "req-1", running_status()),
            worker("demo-small-st000", "small", "req-2", starting),
            worker(
                "demo-cpu-pend0",
                "cpu",
                "req-3",
                json!({"phase": "Pending"}),
            ),
            deleting,
            unlabelled,
        ]),
    );
    let listed = task.await.expect("join").expect("list");
    let got: Vec<(&str, &str, &str, bool)> = listed
        .iter()
        .map(|(id, i)| {
            assert_eq!(id, &i.instance_id);
            (
                id.as_str(),
                i.node_type.as_str(),
                i.request_id.as_str(),
                i.pending,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("demo-cpu-pend0", "cpu", "req-3", true),
            ("demo-cpu-run00", "cpu", "req-1", false),
            ("demo-small-st000", "small", "req-2", true),
        ]
    );
    server.expect_no_more().await;
    assert!(p.poll_errors().is_empty());

    // A failing list is an error, never "no instances".
    let task = tokio::spawn({
        let p = p.clone();
        async move { p.non_terminated().await }
    });
    server
        .expect_list(WORKERS, LIVE)
        .await
        .reply(500, status(500, "InternalError", "etcd unavailable", ""));
    let e = task.await.expect("join").unwrap_err();
    assert!(matches!(e, ProviderCallError::Unavailable(_)), "{e}");
}

type ListTask = tokio::task::JoinHandle<
    Result<BTreeMap<String, miniray_autoscaler::provider::CloudInstance>, ProviderCallError>,
>;

/// Starts a `non_terminated` and answers its live list with `items`.
async fn list_once(
    p: &Arc<KubernetesProvider>,
    server: &mut Server,
    items: Vec<Value>,
) -> ListTask {
    let task = tokio::spawn({
        let p = p.clone();
        async move { p.non_terminated().await }
    });
    server
        .expect_list(WORKERS, LIVE)
        .await
        .reply(200, list(items));
    task
}

#[tokio::test]
async fn a_pod_that_fails_before_running_is_reported_once_and_removed() {
    let (p, mut server) = provider(false);
    let mut pulling = json!({"phase": "Pending", "containerStatuses": [{
        "name": "miniray", "ready": false, "restartCount": 0, "image": "bad:1", "imageID": "",
        "state": {"waiting": {"reason": "ErrImagePull",
                              "message": "pull access denied for bad"}}}]});
    // Seen pending, stuck pulling its image: reported once, however often it is listed
    // (and while the kubelet alternates between ErrImagePull and ImagePullBackOff).
    for reason in ["ErrImagePull", "ImagePullBackOff", "ErrImagePull"] {
        pulling["containerStatuses"][0]["state"]["waiting"]["reason"] = json!(reason);
        let task = list_once(
            &p,
            &mut server,
            vec![worker("demo-cpu-bad00", "cpu", "req-9", pulling.clone())],
        )
        .await;
        let listed = task.await.expect("join").expect("list");
        assert!(listed["demo-cpu-bad00"].pending);
    }
    let errors = p.poll_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].instance_id, "demo-cpu-bad00");
    assert!(errors[0].message.contains("ErrImagePull"), "{errors:?}");
    assert!(
        errors[0].message.contains("pull access denied"),
        "{errors:?}"
    );

    // Then it fails: gone from the live list, found among the terminal Pods, reported
    // with its reason and deleted.
    let task = list_once(&p, &mut server, vec![]).await;
    pulling["phase"] = json!("Failed");
    pulling["reason"] = json!("ImagePullFailed");
    pulling["message"] = json!("the image could not be pulled");
    server.expect_list(WORKERS, TERMINAL).await.reply(
        200,
        list(vec![worker("demo-cpu-bad00", "cpu", "req-9", pulling)]),
    );
    server
        .expect(Method::DELETE, &format!("{PODS}/demo-cpu-bad00"), &[])
        .await
        .reply(
            200,
            worker("demo-cpu-bad00", "cpu", "req-9", json!({"phase": "Failed"})),
        );
    assert!(task.await.expect("join").expect("list").is_empty());
    let errors = p.poll_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].node_type, "cpu");
    assert_eq!(errors[0].request_id, "req-9");
    assert!(
        errors[0].message.contains("failed before it ran"),
        "{errors:?}"
    );
    assert!(errors[0].message.contains("ImagePullFailed"), "{errors:?}");

    // Nothing vanished since: one list, nothing reported again.
    let task = list_once(&p, &mut server, vec![]).await;
    task.await.expect("join").expect("list");
    server.expect_no_more().await;
    assert!(p.poll_errors().is_empty());
}

#[tokio::test]
async fn a_pod_deleted_by_this_provider_is_not_a_failure() {
    let (p, mut server) = provider(false);
    let task = tokio::spawn({
        let p = p.clone();
        async move { p.non_terminated().await }
    });
    server.expect_list(WORKERS, LIVE).await.reply(
        200,
        list(vec![worker(
            "demo-cpu-run00",
            "cpu",
            "req-1",
            running_status(),
        )]),
    );
    task.await.expect("join").expect("list");
    let task = tokio::spawn({
        let p = p.clone();
        async move { p.terminate(&["demo-cpu-run00".into()], "req-t").await }
    });
    server
        .expect(Method::DELETE, &format!("{PODS}/demo-cpu-run00"), &[])
        .await
        .reply(
            200,
            worker("demo-cpu-run00", "cpu", "req-1", running_status()),
        );
    task.await.expect("join").expect("terminate");
    // Gone from the list: asked for, so no sweep and no report.
    let task = tokio::spawn({
        let p = p.clone();
        async move { p.non_terminated().await }
    });
    server
        .expect_list(WORKERS, LIVE)
        .await
        .reply(200, list(vec![]));
    assert!(task.await.expect("join").expect("list").is_empty());
    server.expect_no_more().await;
    assert!(p.poll_errors().is_empty());
}

/// An API server that does not answer: the call gives up (virtual time), as unknown.
#[tokio::test(start_paused = true)]
async fn a_list_that_gets_no_answer_times_out() {
    let (p, mut server) = provider(false);
    let task = tokio::spawn({
        let p = p.clone();
        async move { p.non_terminated().await }
    });
    let unanswered = server.expect_list(WORKERS, LIVE).await;
    let e = task.await.expect("join").unwrap_err();
    assert!(matches!(e, ProviderCallError::Unavailable(_)), "{e}");
    drop(unanswered);
}

/// A create that gets no answer may have happened: the request is listed again (and found),
/// not created twice. A server that keeps failing gives `Unavailable` after a bounded number
/// of attempts, and nothing for the operator (a transient state, not a config error).
#[tokio::test(start_paused = true)]
async fn unanswered_and_failing_launches_are_bounded() {
    let (p, mut server) = provider(false);
    let task = tokio::spawn({
        let p = p.clone();
        async move { p.launch("cpu", 1, "req-10").await }
    });
    server
        .expect_list(&request_labels("req-10"), LIVE)
        .await
        .reply(200, list(vec![]));
    let unanswered = server.expect(Method::POST, PODS, &[]).await;
    server
        .expect_list(&request_labels("req-10"), LIVE)
        .await
        .reply(
            200,
            list(vec![worker(
                "demo-cpu-hhhhh",
                "cpu",
                "req-10",
                json!({"phase": "Pending"}),
            )]),
        );
    assert_eq!(
        task.await.expect("join").expect("launch"),
        ["demo-cpu-hhhhh"]
    );
    drop(unanswered);
    server.expect_no_more().await;

    let task = tokio::spawn({
        let p = p.clone();
        async move { p.launch("cpu", 1, "req-11").await }
    });
    for _ in 0..4 {
        server
            .expect_list(&request_labels("req-11"), LIVE)
            .await
            .reply(
                503,
                status(503, "ServiceUnavailable", "apiserver is restarting", ""),
            );
    }
    let e = task.await.expect("join").unwrap_err();
    assert!(matches!(e, ProviderCallError::Unavailable(_)), "{e}");
    assert!(e.to_string().contains("apiserver is restarting"), "{e}");
    server.expect_no_more().await;
    assert!(p.poll_errors().is_empty());
}

#[test]
fn a_bad_node_config_is_refused_naming_the_field() {
    let field = |node_config: Value| {
        let mut cfg = config(false);
        cfg.node_types
            .insert("odd".into(), node_type(&[], node_config));
        match cfg.check() {
            Err(miniray_k8s::config::KubernetesConfigError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        field(json!({"image": "x"})),
        "available_node_types.odd.node_config.image"
    );
    assert_eq!(
        field(json!(["not", "a", "template"])),
        "available_node_types.odd.node_config"
    );
    assert_eq!(
        field(json!({"spec": {"containers": [{"name": "miniray",
            "resources": {"limits": {"cpu": "lots"}}}]}})),
        "available_node_types.odd.node_config.spec.containers.miniray.resources"
    );
    assert_eq!(
        field(json!({"spec": {"containers": [{"name": "miniray", "ports": "many"}]}})),
        "available_node_types.odd.node_config"
    );
}
