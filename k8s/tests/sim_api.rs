//! The simulated API server, through the clients that use it: kube-rs (`Api`, the
//! kube-runtime watcher) and kubectl.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use miniray_k8s::sim::{ApiAccess, ApiServer};
use serde_json::json;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// How long anything the server does may take to show.
const DEADLINE: Duration = Duration::from_secs(20);

async fn start() -> (ApiServer, kube::Client) {
    let server = ApiServer::start(&[LOOPBACK], LOOPBACK, None)
        .await
        .expect("the server starts");
    let client = server.access().client().await.expect("a client");
    (server, client)
}

fn pod(name: &str, labels: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "main", "image": "miniray:test", "command": ["miniray", "start"]}]},
    }))
    .expect("a pod")
}

fn status_of(error: kube::Error) -> Box<kube::core::Status> {
    match error {
        kube::Error::Api(status) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn generated_names_and_server_assigned_metadata() {
    let (server, client) = start().await;
    let pods: Api<Pod> = Api::default_namespaced(client);
    let mut template = pod("", json!({"a": "b"}));
    template.metadata.name = None;
    template.metadata.generate_name = Some("demo-worker-".into());
    let created = pods
        .create(&PostParams::default(), &template)
        .await
        .unwrap();
    let name = created.metadata.name.clone().unwrap();
    assert!(
        name.starts_with("demo-worker-") && name.len() == "demo-worker-".len() + 5,
        "{name}"
    );
    assert!(
        name["demo-worker-".len()..]
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    );
    assert_eq!(created.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(created.metadata.uid.as_ref().map(String::len), Some(36));
    assert!(created.metadata.creation_timestamp.is_some());
    assert!(
        created
            .metadata
            .resource_version
            .as_deref()
            .unwrap()
            .parse::<u64>()
            .is_ok()
    );
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Pending"));
    assert_eq!(
        created.spec.unwrap().restart_policy.as_deref(),
        Some("Always")
    );
    let fetched = pods.get(&name).await.unwrap();
    assert_eq!(fetched.metadata.uid, created.metadata.uid);
    server.shutdown().await;
}

#[tokio::test]
async fn errors_carry_the_real_status_bodies() {
    let (server, client) = start().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    pods.create(&PostParams::default(), &pod("p", json!({})))
        .await
        .unwrap();

    let exists = status_of(
        pods.create(&PostParams::default(), &pod("p", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (exists.code, exists.reason.as_str()),
        (409, "AlreadyExists")
    );
    assert_eq!(exists.message, "pods \"p\" already exists");

    let missing = status_of(pods.get("nope").await.unwrap_err());
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert_eq!(missing.message, "pods \"nope\" not found");
    let details = missing.details.unwrap();
    assert_eq!(
        (details.name.as_str(), details.kind.as_str()),
        ("nope", "pods")
    );
    assert_eq!(
        missing.status,
        Some(kube::core::response::StatusSummary::Failure)
    );

    let mut nameless = pod("", json!({}));
    nameless.metadata.name = None;
    let invalid = status_of(
        pods.create(&PostParams::default(), &nameless)
            .await
            .unwrap_err(),
    );
    assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));
    assert!(
        invalid.message.contains("name or generateName is required"),
        "{}",
        invalid.message
    );

    let elsewhere: Api<Pod> = Api::namespaced(client.clone(), "nowhere");
    let no_namespace = status_of(
        elsewhere
            .create(&PostParams::default(), &pod("p", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (no_namespace.code, no_namespace.message.as_str()),
        (404, "namespaces \"nowhere\" not found")
    );

    let mut stranger = server.access().clone();
    stranger.token = "wrong".into();
    let denied: Api<Pod> = Api::default_namespaced(stranger.client().await.unwrap());
    let unauthorized = status_of(denied.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(
        (unauthorized.code, unauthorized.reason.as_str()),
        (401, "Unauthorized")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_stale_update_conflicts_and_a_fresh_one_does_not() {
    let (server, client) = start().await;
    let pods: Api<Pod> = Api::default_namespaced(client);
    let created = pods
        .create(&PostParams::default(), &pod("p", json!({})))
        .await
        .unwrap();
    let mut fresh = created.clone();
    fresh.metadata.labels = Some([("x".to_string(), "1".to_string())].into());
    let updated = pods
        .replace("p", &PostParams::default(), &fresh)
        .await
        .unwrap();
    assert_ne!(
        updated.metadata.resource_version,
        created.metadata.resource_version
    );

    let mut stale = created.clone();
    stale.metadata.labels = Some([("x".to_string(), "2".to_string())].into());
    let conflict = status_of(
        pods.replace("p", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    assert!(
        conflict.message.contains("the object has been modified"),
        "{}",
        conflict.message
    );
    assert_eq!(
        pods.get("p").await.unwrap().metadata.labels.unwrap()["x"],
        "1"
    );

    let mut immutable = updated.clone();
    immutable.spec.as_mut().unwrap().containers[0].command = Some(vec!["other".into()]);
    let forbidden = status_of(
        pods.replace("p", &PostParams::default(), &immutable)
            .await
            .unwrap_err(),
    );
    assert_eq!(forbidden.code, 422);
    server.shutdown().await;
}

#[tokio::test]
async fn merge_patches_and_the_status_subresource() {
    let (server, client) = start().await;
    let pods: Api<Pod> = Api::default_namespaced(client);
    pods.create(
        &PostParams::default(),
        &pod("p", json!({"keep": "1", "drop": "1"})),
    )
    .await
    .unwrap();
    let patched = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"drop": null, "new": "2"}}})),
        )
        .await
        .unwrap();
    let labels = patched.metadata.labels.unwrap();
    assert_eq!(labels.keys().collect::<Vec<_>>(), vec!["keep", "new"]);

    // The main resource ignores status; the status subresource ignores everything else.
    let ignored = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await
        .unwrap();
    assert_eq!(ignored.status.unwrap().phase.as_deref(), Some("Pending"));
    let running = pods
        .patch_status(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}, "status": {"phase": "Running", "podIP": "10.0.0.2"}})),
        )
        .await
        .unwrap();
    let status = running.status.unwrap();
    assert_eq!(
        (status.phase.as_deref(), status.pod_ip.as_deref()),
        (Some("Running"), Some("10.0.0.2"))
    );
    assert!(!running.metadata.labels.unwrap().contains_key("x"));
    server.shutdown().await;
}

#[tokio::test]
async fn label_and_field_selectors() {
    let (server, client) = start().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    for (name, cluster, phase) in [
        ("a", "demo", "Running"),
        ("b", "demo", "Failed"),
        ("c", "other", "Running"),
    ] {
        pods.create(
            &PostParams::default(),
            &pod(name, json!({"miniray.io/cluster": cluster})),
        )
        .await
        .unwrap();
        pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": phase}})),
        )
        .await
        .unwrap();
    }
    let names = |list: kube::core::ObjectList<Pod>| {
        list.items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect::<Vec<_>>()
    };
    let select = |labels: &str, fields: &str| {
        let mut params = ListParams::default();
        if !labels.is_empty() {
            params = params.labels(labels);
        }
        if !fields.is_empty() {
            params = params.fields(fields);
        }
        params
    };
    assert_eq!(
        names(
            pods.list(&select("miniray.io/cluster=demo", ""))
                .await
                .unwrap()
        ),
        ["a", "b"]
    );
    assert_eq!(
        names(
            pods.list(&select("miniray.io/cluster!=demo", ""))
                .await
                .unwrap()
        ),
        ["c"]
    );
    assert_eq!(
        names(
            pods.list(&select("miniray.io/cluster in (other,x)", ""))
                .await
                .unwrap()
        ),
        ["c"]
    );
    assert_eq!(
        names(pods.list(&select("!miniray.io/cluster", "")).await.unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(
        names(
            pods.list(&select("miniray.io/cluster=demo", "status.phase!=Failed"))
                .await
                .unwrap()
        ),
        ["a"]
    );
    assert_eq!(
        names(
            pods.list(&select("", "metadata.name=c,status.phase=Running"))
                .await
                .unwrap()
        ),
        ["c"]
    );
    let unsupported = status_of(pods.list(&select("", "spec.image=x")).await.unwrap_err());
    assert_eq!(unsupported.code, 400);

    // Across namespaces.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap(),
        )
        .await
        .unwrap();
    Api::<Pod>::namespaced(client.clone(), "team")
        .create(
            &PostParams::default(),
            &pod("d", json!({"miniray.io/cluster": "demo"})),
        )
        .await
        .unwrap();
    let everywhere: Api<Pod> = Api::all(client);
    let list = everywhere
        .list(&select("miniray.io/cluster=demo", ""))
        .await
        .unwrap();
    assert_eq!(names(list), ["a", "b", "d"]);
    server.shutdown().await;
}

/// Collects `count` events of a watch, with a deadline.
async fn next_events<S>(stream: &mut S, count: usize) -> Vec<WatchEvent<Pod>>
where
    S: futures::Stream<Item = kube::Result<WatchEvent<Pod>>> + Unpin,
{
    let mut events = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while events.len() < count {
            match stream.try_next().await.unwrap() {
                Some(WatchEvent::Bookmark(_)) => {}
                Some(event) => events.push(event),
                None => panic!("the watch ended after {} events", events.len()),
            }
        }
    })
    .await
    .expect("the events arrive in time");
    events
}

#[tokio::test]
async fn a_watch_replays_changes_in_order_from_a_resource_version() {
    let (server, client) = start().await;
    let pods: Api<Pod> = Api::default_namespaced(client);
    let before = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    pods.create(&PostParams::default(), &pod("p", json!({"app": "x"})))
        .await
        .unwrap();
    pods.patch(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"n": "1"}}})),
    )
    .await
    .unwrap();
    pods.delete("p", &DeleteParams::default()).await.unwrap();
    let mut stream = pods
        .watch(&WatchParams::default().labels("app=x"), &before)
        .await
        .unwrap()
        .boxed();
    let events = next_events(&mut stream, 3).await;
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match e {
            WatchEvent::Added(_) => "ADDED",
            WatchEvent::Modified(_) => "MODIFIED",
            WatchEvent::Deleted(_) => "DELETED",
            _ => "OTHER",
        })
        .collect();
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);

    // Live events too, and an object leaving the selection is DELETED for the watch.
    pods.create(&PostParams::default(), &pod("q", json!({"app": "x"})))
        .await
        .unwrap();
    pods.patch(
        "q",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "y"}}})),
    )
    .await
    .unwrap();
    let events = next_events(&mut stream, 2).await;
    assert!(matches!(&events[0], WatchEvent::Added(p) if p.metadata.name.as_deref() == Some("q")));
    assert!(
        matches!(&events[1], WatchEvent::Deleted(p) if p.metadata.labels.as_ref().unwrap()["app"] == "y")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_watch_times_out_when_asked() {
    let (server, client) = start().await;
    let pods: Api<Pod> = Api::default_namespaced(client);
    let mut stream = pods
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap()
        .boxed();
    let ended = tokio::time::timeout(DEADLINE, async {
        while stream.try_next().await.unwrap().is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the watch ends after timeoutSeconds");
    server.shutdown().await;
}

#[tokio::test]
async fn the_runtime_watcher_sees_every_kind_of_event() {
    let (server, client) = start().await;
    let pods: Api<Pod> = Api::default_namespaced(client);
    pods.create(&PostParams::default(), &pod("before", json!({})))
        .await
        .unwrap();
    let mut events = watcher(pods.clone(), watcher::Config::default()).boxed();
    let mut seen = Vec::new();
    let mut step = 0;
    tokio::time::timeout(DEADLINE, async {
        while let Some(event) = events.try_next().await.unwrap() {
            match event {
                watcher::Event::InitApply(p) => {
                    seen.push(format!("init {}", p.metadata.name.unwrap()))
                }
                watcher::Event::InitDone => {
                    seen.push("init done".into());
                    pods.create(&PostParams::default(), &pod("after", json!({})))
                        .await
                        .unwrap();
                }
                watcher::Event::Apply(p) => {
                    seen.push(format!("apply {}", p.metadata.name.unwrap()));
                    if step == 0 {
                        step = 1;
                        pods.delete("after", &DeleteParams::default())
                            .await
                            .unwrap();
                    }
                }
                watcher::Event::Delete(p) => {
                    seen.push(format!("delete {}", p.metadata.name.unwrap()));
                    break;
                }
                watcher::Event::Init => {}
            }
        }
    })
    .await
    .expect("the watcher sees the changes in time");
    assert_eq!(
        seen,
        ["init before", "init done", "apply after", "delete after"]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_runtime_watcher_streams_lists_too() {
    let (server, client) = start().await;
    let pods: Api<Pod> = Api::default_namespaced(client);
    pods.create(&PostParams::default(), &pod("before", json!({})))
        .await
        .unwrap();
    let config = watcher::Config::default().streaming_lists();
    let mut events = watcher(pods.clone(), config).boxed();
    let mut seen = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while let Some(event) = events.try_next().await.unwrap() {
            match event {
                watcher::Event::InitApply(p) => {
                    seen.push(format!("init {}", p.metadata.name.unwrap()))
                }
                watcher::Event::InitDone => {
                    seen.push("init done".into());
                    pods.create(&PostParams::default(), &pod("after", json!({})))
                        .await
                        .unwrap();
                }
                watcher::Event::Apply(p) => {
                    seen.push(format!("apply {}", p.metadata.name.unwrap()));
                    break;
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the watcher sees the changes in time");
    assert_eq!(seen, ["init before", "init done", "apply after"]);
    server.shutdown().await;
}

#[tokio::test]
async fn a_bound_pod_terminates_gracefully_and_an_unbound_one_goes_at_once() {
    let (server, client) = start().await;
    let pods: Api<Pod> = Api::default_namespaced(client);
    pods.create(&PostParams::default(), &pod("bound", json!({})))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("unbound", json!({})))
        .await
        .unwrap();
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "bound"}, "target": {"kind": "Node", "name": "miniray-sim"}});
    let _: serde_json::Value = pods
        .create_subresource("binding", "bound", &PostParams::default(), &binding)
        .await
        .unwrap();
    let bound = pods.get("bound").await.unwrap();
    assert_eq!(
        bound.spec.unwrap().node_name.as_deref(),
        Some("miniray-sim")
    );
    let conditions = bound.status.unwrap().conditions.unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.status == "True")
    );
    let again = pods
        .create_subresource::<_, serde_json::Value>(
            "binding",
            "bound",
            &PostParams::default(),
            &binding,
        )
        .await
        .unwrap_err();
    assert_eq!(status_of(again).code, 409);

    pods.delete("unbound", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(status_of(pods.get("unbound").await.unwrap_err()).code, 404);

    let terminating = pods
        .delete("bound", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .expect("the pod");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(30));
    assert!(
        pods.get("bound")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    let shorter = pods
        .delete("bound", &DeleteParams::default().grace_period(5))
        .await
        .unwrap()
        .left()
        .unwrap();
    assert_eq!(shorter.metadata.deletion_grace_period_seconds, Some(5));
    pods.delete("bound", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert_eq!(status_of(pods.get("bound").await.unwrap_err()).code, 404);
    server.shutdown().await;
}

#[tokio::test]
async fn a_deployment_generation_follows_its_spec() {
    let (server, client) = start().await;
    let deployments: Api<Deployment> = Api::default_namespaced(client);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "demo-head"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "head"}},
            "strategy": {"type": "Recreate"},
            "template": {"metadata": {"labels": {"app": "head"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
        },
    }))
    .unwrap();
    let created = deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(
        created
            .spec
            .as_ref()
            .unwrap()
            .strategy
            .as_ref()
            .unwrap()
            .type_
            .as_deref(),
        Some("Recreate")
    );
    let labelled = deployments
        .patch(
            "demo-head",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_eq!(labelled.metadata.generation, Some(1));
    let scaled = deployments
        .patch(
            "demo-head",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    assert_eq!(scaled.metadata.generation, Some(2));
    let status = deployments
        .patch_status(
            "demo-head",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"observedGeneration": 2, "replicas": 2, "readyReplicas": 1}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(status.metadata.generation, Some(2));
    assert_eq!(status.status.unwrap().ready_replicas, Some(1));
    server.shutdown().await;
}

#[tokio::test]
async fn apply_creates_then_merges() {
    let (server, client) = start().await;
    let maps: Api<ConfigMap> = Api::default_namespaced(client);
    let apply = PatchParams::apply("miniray");
    let first = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"a": "1"}});
    maps.patch("cfg", &apply, &Patch::Apply(&first))
        .await
        .unwrap();
    let second = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"a": "2"}});
    let applied = maps
        .patch("cfg", &apply, &Patch::Apply(&second))
        .await
        .unwrap();
    assert_eq!(applied.data.unwrap()["a"], "2");
    server.shutdown().await;
}

#[tokio::test]
async fn the_other_kinds_and_their_defaults() {
    let (server, client) = start().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let team: Namespace = serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap();
    let created = namespaces
        .create(&PostParams::default(), &team)
        .await
        .unwrap();
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Active"));
    let all: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert_eq!(all, ["default", "kube-public", "kube-system", "team"]);

    // Every namespace has its default service account, as the real controller makes.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "team");
    accounts.get("default").await.unwrap();
    let autoscaler: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "demo-autoscaler"}})).unwrap();
    accounts
        .create(&PostParams::default(), &autoscaler)
        .await
        .unwrap();

    let secrets: Api<Secret> = Api::namespaced(client.clone(), "team");
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "demo-token"}, "stringData": {"token": "s3cret"}}),
    )
    .unwrap();
    let stored = secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    assert_eq!(stored.type_.as_deref(), Some("Opaque"));
    assert_eq!(stored.data.unwrap()["token"].0, b"s3cret");
    assert!(stored.string_data.is_none());

    let services: Api<Service> = Api::namespaced(client.clone(), "team");
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "demo-head"},
        "spec": {"selector": {"app": "head"}, "ports": [{"name": "gcs", "port": 6380}]},
    }))
    .unwrap();
    let stored = services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let spec = stored.spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    let port = &spec.ports.unwrap()[0];
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
    assert_eq!(
        port.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(6380))
    );
    let bad: Service =
        serde_json::from_value(json!({"metadata": {"name": "1-bad"}, "spec": {}})).unwrap();
    assert_eq!(
        status_of(
            services
                .create(&PostParams::default(), &bad)
                .await
                .unwrap_err()
        )
        .code,
        422
    );

    let roles: Api<Role> = Api::namespaced(client.clone(), "team");
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "demo-autoscaler"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "delete"]}],
    }))
    .unwrap();
    roles.create(&PostParams::default(), &role).await.unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), "team");
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "demo-autoscaler"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "demo-autoscaler"},
        "subjects": [{"kind": "ServiceAccount", "name": "demo-autoscaler", "namespace": "team"}],
    }))
    .unwrap();
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    assert_eq!(
        bindings.get("demo-autoscaler").await.unwrap().role_ref.name,
        "demo-autoscaler"
    );

    // Deleting the namespace takes everything in it along.
    namespaces
        .delete("team", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        status_of(namespaces.get("team").await.unwrap_err()).code,
        404
    );
    assert!(
        Api::<Service>::all(client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        Api::<Role>::all(client)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    server.shutdown().await;
}

/// A kubeconfig written for kubectl, removed with its folder on drop.
struct Kubectl {
    dir: tempfile::TempDir,
}

impl Kubectl {
    fn new(access: &ApiAccess) -> Kubectl {
        let dir = tempfile::tempdir().unwrap();
        access
            .write_kubeconfig(&dir.path().join("kubeconfig"))
            .unwrap();
        Kubectl { dir }
    }

    /// Runs kubectl with the kubeconfig (and a discovery cache of its own); returns its
    /// stdout, failing the test if it fails.
    async fn run(&self, args: &[&str]) -> String {
        let kubectl = std::env::var_os("KUBECTL").unwrap_or_else(|| "kubectl".into());
        let mut command = tokio::process::Command::new(kubectl);
        command
            .arg("--kubeconfig")
            .arg(self.dir.path().join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .kill_on_drop(true);
        let output = tokio::time::timeout(DEADLINE, command.output())
            .await
            .expect("kubectl finishes in time")
            .expect("kubectl runs (scripts/test.sh installs it)");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "kubectl {args:?} failed: {}\n{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }
}

#[tokio::test]
async fn kubectl_gets_and_deletes_pods() {
    let (server, client) = start().await;
    let kubeconfig = tempfile::tempdir().unwrap();
    let path = kubeconfig.path().join("config");
    server.access().write_kubeconfig(&path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let pods: Api<Pod> = Api::default_namespaced(client);
    pods.create(
        &PostParams::default(),
        &pod("demo-worker-abcde", json!({"miniray.io/cluster": "demo"})),
    )
    .await
    .unwrap();
    pods.create(
        &PostParams::default(),
        &pod("other-worker", json!({"miniray.io/cluster": "other"})),
    )
    .await
    .unwrap();
    let kubectl = Kubectl::new(server.access());
    let table = kubectl
        .run(&["get", "pods", "-l", "miniray.io/cluster=demo"])
        .await;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header[..3], ["NAME", "READY", "STATUS"], "{table}");
    assert!(table.contains("demo-worker-abcde"), "{table}");
    assert!(!table.contains("other-worker"), "{table}");

    let deleted = kubectl.run(&["delete", "pod", "demo-worker-abcde"]).await;
    assert!(deleted.contains("demo-worker-abcde"), "{deleted}");
    assert_eq!(
        status_of(pods.get("demo-worker-abcde").await.unwrap_err()).code,
        404
    );
    server.shutdown().await;
}

/// A stand-in kubelet: deletes the first Pod it sees marked for deletion with grace 0;
/// returns whether it saw one.
fn remove_terminating_pod(pods: Api<Pod>) -> tokio::task::JoinHandle<bool> {
    tokio::spawn(async move {
        let mut events = watcher(pods.clone(), watcher::Config::default()).boxed();
        while let Ok(Some(event)) = events.try_next().await {
            if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = event
                && p.metadata.deletion_timestamp.is_some()
            {
                let name = p.metadata.name.unwrap_or_default();
                let _ = pods
                    .delete(&name, &DeleteParams::default().grace_period(0))
                    .await;
                return true;
            }
        }
        false
    })
}

#[tokio::test]
async fn kubectl_waits_for_a_terminating_pod_until_its_kubelet_removes_it() {
    let (server, client) = start().await;
    let pods: Api<Pod> = Api::default_namespaced(client);
    pods.create(&PostParams::default(), &pod("demo-head", json!({})))
        .await
        .unwrap();
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "demo-head"}, "target": {"kind": "Node", "name": "miniray-sim"}});
    let _: serde_json::Value = pods
        .create_subresource("binding", "demo-head", &PostParams::default(), &binding)
        .await
        .unwrap();
    let kubelet = remove_terminating_pod(pods.clone());
    let kubectl = Kubectl::new(server.access());
    let deleted = kubectl.run(&["delete", "pod", "demo-head"]).await;
    assert!(deleted.contains("demo-head"), "{deleted}");
    assert_eq!(
        status_of(pods.get("demo-head").await.unwrap_err()).code,
        404
    );
    let marked = tokio::time::timeout(DEADLINE, kubelet)
        .await
        .expect("the kubelet is done")
        .unwrap();
    assert!(marked, "the deletion was graceful");
    server.shutdown().await;
}

#[tokio::test]
async fn kubectl_lists_every_kind_it_is_asked_for() {
    let (server, client) = start().await;
    let services: Api<Service> = Api::default_namespaced(client.clone());
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "demo-head"},
        "spec": {"selector": {"app": "head"}, "ports": [{"name": "gcs", "port": 6380}]},
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::default_namespaced(client.clone());
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "demo-head"},
        "spec": {
            "selector": {"matchLabels": {"app": "head"}},
            "template": {"metadata": {"labels": {"app": "head"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
        },
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    Api::<Pod>::namespaced(client.clone(), "kube-system")
        .create(&PostParams::default(), &pod("system-pod", json!({})))
        .await
        .unwrap();

    let kubectl = Kubectl::new(server.access());
    let svc = kubectl.run(&["get", "svc"]).await;
    assert!(
        svc.starts_with("NAME") && svc.contains("CLUSTER-IP") && svc.contains("6380/TCP"),
        "{svc}"
    );
    let deploy = kubectl.run(&["get", "deploy"]).await;
    assert!(
        deploy.contains("READY") && deploy.contains("demo-head") && deploy.contains("0/1"),
        "{deploy}"
    );
    let ns = kubectl.run(&["get", "ns"]).await;
    assert!(ns.contains("kube-system") && ns.contains("Active"), "{ns}");
    let everywhere = kubectl.run(&["get", "pods", "-A"]).await;
    assert!(
        everywhere.starts_with("NAMESPACE")
            && everywhere.contains("kube-system")
            && everywhere.contains("system-pod"),
        "{everywhere}"
    );
    let names = kubectl
        .run(&["get", "pods", "-n", "kube-system", "-o", "name"])
        .await;
    assert_eq!(names.trim(), "pod/system-pod");
    let yaml = kubectl
        .run(&["get", "svc", "demo-head", "-o", "yaml"])
        .await;
    assert!(
        yaml.contains("kind: Service") && yaml.contains("port: 6380"),
        "{yaml}"
    );
    server.shutdown().await;
}
