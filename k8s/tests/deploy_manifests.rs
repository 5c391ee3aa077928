//! What `miniray up` applies: names, labels, the head's command line and probe, RBAC,
//! Redis deployed or external, the head's `node_config` merged in, and the example
//! manifests kept in `k8s/manifests/` matching `up --dry-run`.

use std::path::PathBuf;

use miniray_k8s::deploy::manifests::{self, Kind, Manifest};
use miniray_k8s::deploy::{
    self, ClusterSpec, HASH_ANNOTATION, INPUTS_HASH_ANNOTATION, Secrets, TlsPem,
};
use serde_json::{Value, json};

/// The example's token, fixed so the dry run is deterministic.
const EXAMPLE_TOKEN: &str = "example-token-change-me";

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn config(provider_extra: &str, head_extra: &str) -> String {
    format!(
        "cluster_name: demo\n\
         max_workers: 4\n\
         provider:\n  type: kubernetes\n  namespace: rl\n  image: reg/miniray:1\n{provider_extra}\
         head_node_type: head\n\
         available_node_types:\n\
         \x20 head:\n    resources: {{ CPU: 0 }}\n{head_extra}\
         \x20 cpu:\n    resources: {{ CPU: 1 }}\n    max_workers: 4\n"
    )
}

fn build(text: &str, tls: Option<TlsPem>) -> Vec<Manifest> {
    let spec = ClusterSpec::parse(text).expect("a valid config");
    manifests::build(
        &spec,
        &Secrets {
            token: "t0k3n".into(),
            tls,
        },
    )
}

fn find<'a>(ms: &'a [Manifest], kind: Kind, name: &str) -> &'a Value {
    &ms.iter()
        .find(|m| m.kind == kind && m.name == name)
        .unwrap_or_else(|| {
            panic!(
                "no {kind} {name} in {:?}",
                ms.iter().map(|m| (m.kind, &m.name)).collect::<Vec<_>>()
            )
        })
        .object
}

fn head_container(ms: &[Manifest]) -> &Value {
    &find(ms, Kind::Deployment, "demo-head")["spec"]["template"]["spec"]["containers"][0]
}

#[test]
fn objects_come_in_apply_order_with_names_labels_and_hashes() {
    let ms = build(&config("", ""), None);
    let order: Vec<(Kind, &str)> = ms.iter().map(|m| (m.kind, m.name.as_str())).collect();
    assert_eq!(
        order,
        vec![
            (Kind::ServiceAccount, "demo-autoscaler"),
            (Kind::Role, "demo-autoscaler"),
            (Kind::RoleBinding, "demo-autoscaler"),
            (Kind::Secret, "demo-token"),
            (Kind::ConfigMap, "demo-config"),
            (Kind::Deployment, "demo-head"),
            (Kind::Service, "demo-head"),
        ]
    );
    for m in &ms {
        let meta = &m.object["metadata"];
        assert_eq!(meta["namespace"], "rl", "{}", m.name);
        assert_eq!(meta["name"], m.name.as_str());
        assert_eq!(meta["labels"]["miniray.io/cluster"], "demo");
        assert_eq!(meta["labels"]["app.kubernetes.io/managed-by"], "miniray");
        assert_eq!(m.object["kind"], m.kind.as_str());
        let hash = meta["annotations"][HASH_ANNOTATION]
            .as_str()
            .expect("hashed");
        assert_eq!(hash, manifests::object_hash(&m.object), "{}", m.name);
        assert_eq!(hash.len(), 16);
    }
    // The Secret holds the token (base64), the ConfigMap the config as given.
    let secret = find(&ms, Kind::Secret, "demo-token");
    assert_eq!(secret["data"]["token"], "dDBrM24=");
    assert!(secret["data"].get("tls.crt").is_none());
    let cm = find(&ms, Kind::ConfigMap, "demo-config");
    assert_eq!(cm["data"]["cluster.yaml"], config("", "").as_str());
}

#[test]
fn the_role_grants_pod_rights_in_its_namespace_only() {
    let ms = build(&config("", ""), None);
    let role = find(&ms, Kind::Role, "demo-autoscaler");
    assert_eq!(role["apiVersion"], "rbac.authorization.k8s.io/v1");
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": [""], "resources": ["pods"],
                "verbs": ["get", "list", "watch", "create", "delete"]}])
    );
    let binding = find(&ms, Kind::RoleBinding, "demo-autoscaler");
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "demo-autoscaler"})
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "demo-autoscaler", "namespace": "rl"}])
    );
    // Nothing cluster-wide.
    assert!(ms.iter().all(|m| {
        !m.object["kind"]
            .as_str()
            .unwrap_or("")
            .starts_with("Cluster")
    }));
}

#[test]
fn the_head_runs_gcs_raylet_and_autoscaler_behind_a_probe_and_a_service() {
    let ms = build(&config("", ""), None);
    let d = find(&ms, Kind::Deployment, "demo-head");
    assert_eq!(d["apiVersion"], "apps/v1");
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
    let selector = json!({"miniray.io/cluster": "demo", "miniray.io/component": "head"});
    assert_eq!(d["spec"]["selector"]["matchLabels"], selector);
    let pod = &d["spec"]["template"];
    for (k, v) in selector.as_object().expect("map") {
        assert_eq!(&pod["metadata"]["labels"][k], v, "template label {k}");
    }
    assert_eq!(pod["metadata"]["labels"]["miniray.io/node-type"], "head");
    assert_eq!(pod["spec"]["serviceAccountName"], "demo-autoscaler");
    let c = head_container(&ms);
    assert_eq!(c["name"], "miniray");
    assert_eq!(c["image"], "reg/miniray:1");
    assert_eq!(
        c["command"],
        json!([
            "miniray",
            "start",
            "--head",
            "--host",
            "$(MINIRAY_NODE_IP)",
            "--node-ip-address",
            "$(MINIRAY_NODE_IP)",
            "--port",
            "6379",
            "--dashboard-port",
            "8265",
            "--autoscaling-config",
            "/etc/miniray/cluster.yaml",
            "--block"
        ])
    );
    assert_eq!(c["readinessProbe"]["tcpSocket"]["port"], 6379);
    assert_eq!(
        c["ports"],
        json!([
            {"name": "gcs", "containerPort": 6379, "protocol": "TCP"},
            {"name": "dashboard", "containerPort": 8265, "protocol": "TCP"},
        ])
    );
    let env = c["env"].as_array().expect("env");
    let var = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(
        var("MINIRAY_TOKEN")["valueFrom"]["secretKeyRef"],
        json!({"name": "demo-token", "key": "token"})
    );
    assert_eq!(
        var("MINIRAY_NODE_IP")["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    assert_eq!(
        var("MINIRAY_CLOUD_INSTANCE_ID")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(var("MINIRAY_NODE_TYPE")["value"], "head");
    assert_eq!(var("MINIRAY_TLS_CERT"), Value::Null);
    assert_eq!(
        c["volumeMounts"],
        json!([{"name": "config", "mountPath": "/etc/miniray", "readOnly": true}])
    );
    assert_eq!(
        pod["spec"]["volumes"],
        json!([{"name": "config", "configMap": {"name": "demo-config"}}])
    );

    let svc = find(&ms, Kind::Service, "demo-head");
    assert_eq!(svc["spec"]["selector"], selector);
    assert_eq!(
        svc["spec"]["ports"],
        json!([
            {"name": "gcs", "port": 6379, "targetPort": 6379, "protocol": "TCP"},
            {"name": "dashboard", "port": 8265, "targetPort": 8265, "protocol": "TCP"},
        ])
    );
    let spec = ClusterSpec::parse(config("", "")).expect("valid");
    assert_eq!(spec.head_address(), "demo-head.rl.svc.cluster.local:6379");
}

#[test]
fn the_gcs_port_and_pull_policy_come_from_the_provider_section() {
    let ms = build(
        &config("  gcs_port: 7000\n  image_pull_policy: Always\n", ""),
        None,
    );
    let c = head_container(&ms);
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(c["readinessProbe"]["tcpSocket"]["port"], 7000);
    let cmd = c["command"].as_array().expect("command");
    let port = cmd.iter().position(|a| a == "--port").expect("--port");
    assert_eq!(cmd[port + 1], "7000");
    assert_eq!(
        find(&ms, Kind::Service, "demo-head")["spec"]["ports"][0]["port"],
        7000
    );
}

#[test]
fn redis_is_deployed_beside_the_head_or_named_outside() {
    let ms = build(&config("  redis: { deploy: true }\n", ""), None);
    let order: Vec<(Kind, &str)> = ms.iter().map(|m| (m.kind, m.name.as_str())).collect();
    // Redis before the head that dials it.
    let redis_at = order
        .iter()
        .position(|o| *o == (Kind::Deployment, "demo-redis"))
        .expect("redis");
    assert_eq!(order[redis_at + 1], (Kind::Service, "demo-redis"));
    assert!(
        redis_at
            < order
                .iter()
                .position(|o| *o == (Kind::Deployment, "demo-head"))
                .expect("head")
    );
    let d = find(&ms, Kind::Deployment, "demo-redis");
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "redis:7");
    assert_eq!(
        c["command"],
        json!([
            "redis-server",
            "--port",
            "6379",
            "--bind",
            "0.0.0.0",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no"
        ])
    );
    assert_eq!(c["readinessProbe"]["tcpSocket"]["port"], 6379);
    let sel = json!({"miniray.io/cluster": "demo", "miniray.io/component": "redis"});
    assert_eq!(d["spec"]["selector"]["matchLabels"], sel);
    assert_eq!(
        find(&ms, Kind::Service, "demo-redis")["spec"]["selector"],
        sel
    );
    let cmd = head_container(&ms)["command"].clone();
    let cmd: Vec<&str> = cmd
        .as_array()
        .expect("cmd")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let at = cmd
        .iter()
        .position(|a| *a == "--redis-address")
        .expect("--redis-address");
    assert_eq!(cmd[at + 1], "redis://demo-redis.rl.svc.cluster.local:6379");
    assert_eq!(*cmd.last().expect("last"), "--block");

    // External: no Redis objects, the head dials the given address.
    let ms = build(
        &config("  redis: { address: \"redis://r.infra:6380\" }\n", ""),
        None,
    );
    assert!(ms.iter().all(|m| m.name != "demo-redis"));
    let cmd = head_container(&ms)["command"].to_string();
    assert!(
        cmd.contains(r#""--redis-address","redis://r.infra:6380""#),
        "{cmd}"
    );
    // None: no flag.
    let ms = build(&config("", ""), None);
    assert!(
        !head_container(&ms)["command"]
            .to_string()
            .contains("--redis-address")
    );
}

#[test]
fn the_head_node_config_is_merged_over_the_default_pod() {
    let head = "    node_config:\n\
                \x20     metadata: { labels: { team: rl } }\n\
                \x20     spec:\n\
                \x20       nodeSelector: { pool: system }\n\
                \x20       containers:\n\
                \x20       - name: miniray\n\
                \x20         image: other/miniray:2\n\
                \x20         resources: { limits: { cpu: \"2\", memory: 4Gi } }\n\
                \x20         env: [ { name: EXTRA, value: \"1\" } ]\n";
    let ms = build(&config("", head), None);
    let pod = &find(&ms, Kind::Deployment, "demo-head")["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["team"], "rl");
    assert_eq!(
        pod["metadata"]["labels"]["miniray.io/component"], "head",
        "defaults kept"
    );
    assert_eq!(pod["spec"]["nodeSelector"], json!({"pool": "system"}));
    assert_eq!(pod["spec"]["serviceAccountName"], "demo-autoscaler");
    let containers = pod["spec"]["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "merged by name");
    let c = &containers[0];
    assert_eq!(c["image"], "other/miniray:2");
    assert_eq!(c["resources"]["limits"]["memory"], "4Gi");
    assert_eq!(c["command"][1], "start", "the command is kept");
    let env: Vec<&str> = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(env.first(), Some(&"MINIRAY_TOKEN"));
    assert_eq!(env.last(), Some(&"EXTRA"));
}

#[test]
fn tls_material_goes_into_the_secret_and_is_mounted() {
    let tls = TlsPem {
        cert: b"CERT".to_vec(),
        key: b"KEY".to_vec(),
        ca: b"CA".to_vec(),
    };
    let ms = build(&config("", ""), Some(tls));
    let secret = find(&ms, Kind::Secret, "demo-token");
    assert_eq!(secret["data"]["tls.crt"], "Q0VSVA==");
    assert_eq!(secret["data"]["tls.key"], "S0VZ");
    assert_eq!(secret["data"]["ca.crt"], "Q0E=");
    let c = head_container(&ms);
    let env = c["env"].to_string();
    for (var, file) in [
        ("MINIRAY_TLS_CERT", "tls.crt"),
        ("MINIRAY_TLS_KEY", "tls.key"),
        ("MINIRAY_TLS_CA", "ca.crt"),
    ] {
        assert!(
            env.contains(&format!(
                r#""name":"{var}","value":"/etc/miniray-tls/{file}""#
            )),
            "{env}"
        );
    }
    assert_eq!(
        c["volumeMounts"][1],
        json!({"name": "tls", "mountPath": "/etc/miniray-tls", "readOnly": true})
    );
    let volumes = &find(&ms, Kind::Deployment, "demo-head")["spec"]["template"]["spec"]["volumes"];
    assert_eq!(volumes[1]["secret"]["secretName"], "demo-token");
    // Only the TLS keys are mounted, never the token.
    assert!(!volumes[1].to_string().contains("\"token\""));
}

#[test]
fn a_changed_config_changes_the_configmap_and_the_head_template_only() {
    let before = build(&config("", ""), None);
    let text = format!("{}# a comment\n", config("", ""));
    let after = build(&text, None);
    let changed: Vec<(Kind, &str)> = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| a.hash() != b.hash())
        .map(|(a, _)| (a.kind, a.name.as_str()))
        .collect();
    assert_eq!(
        changed,
        vec![
            (Kind::ConfigMap, "demo-config"),
            (Kind::Deployment, "demo-head")
        ]
    );
    let annotation = |ms: &[Manifest]| {
        find(ms, Kind::Deployment, "demo-head")["spec"]["template"]["metadata"]["annotations"]
            [INPUTS_HASH_ANNOTATION]
            .clone()
    };
    assert_ne!(annotation(&before), annotation(&after));
    // The same inputs build the same objects.
    assert_eq!(before, build(&config("", ""), None));
}

#[test]
fn configs_that_are_not_for_kubernetes_are_refused_with_field_and_line() {
    let e = ClusterSpec::parse(config("", "").replace("  image: reg/miniray:1\n", ""))
        .expect_err("no image")
        .to_string();
    assert!(e.contains("provider.image") && e.contains("line 3"), "{e}");
    let local = "cluster_name: demo\nprovider:\n  type: local\nhead_node_type: head\navailable_node_types:\n  head:\n    resources: { CPU: 1 }\n";
    let e = ClusterSpec::parse(local).expect_err("local").to_string();
    assert!(e.contains("not kubernetes") && e.contains("line 3"), "{e}");
    let e = ClusterSpec::parse(config("", "").replace("max_workers: 4\n", "max_workers: -1\n"))
        .expect_err("bad")
        .to_string();
    assert!(e.contains("line 2"), "{e}");
}

/// `k8s/manifests/example.yaml` is `miniray up --dry-run k8s/example-cluster.yaml` with
/// `MINIRAY_TOKEN=example-token-change-me`; `MINIRAY_BLESS=1` rewrites it.
#[test]
fn the_example_manifests_match_the_dry_run() {
    let config = crate_dir().join("example-cluster.yaml");
    let spec = ClusterSpec::load(&config).expect("the example config is valid");
    let yaml = deploy::dry_run(&spec, EXAMPLE_TOKEN, None).expect("yaml");
    let path = crate_dir().join("manifests").join("example.yaml");
    if std::env::var_os("MINIRAY_BLESS").is_some() {
        std::fs::write(&path, &yaml).expect("write the example manifests");
    }
    let kept = std::fs::read_to_string(&path)
        .expect("k8s/manifests/example.yaml (MINIRAY_BLESS=1 writes it)");
    assert!(
        kept == yaml,
        "{} differs from `miniray up --dry-run {}` (run with MINIRAY_BLESS=1 to rewrite it)",
        path.display(),
        config.display()
    );
    // And it reads back as the same objects (what kubectl apply would send).
    let docs: Vec<Value> = serde_saphyr::from_multiple(&kept).expect("valid YAML");
    let built = manifests::build(
        &spec,
        &Secrets {
            token: EXAMPLE_TOKEN.into(),
            tls: None,
        },
    );
    assert_eq!(
        docs,
        built.iter().map(|m| m.object.clone()).collect::<Vec<_>>()
    );
    // The example as the issue describes it: a head of CPU 0, a `cpu` type of 1 CPU, max 4.
    assert_eq!(spec.config.node_types["head"].resources.get("CPU"), 0.0);
    assert_eq!(spec.config.node_types["cpu"].resources.get("CPU"), 1.0);
    assert_eq!(spec.config.node_types["cpu"].max_workers, 4);
}
