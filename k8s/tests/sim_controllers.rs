//! The simulator's controllers against the simulated API server, with the test standing in
//! for the kubelet (it patches `pods/status` where a Pod must run or be Ready).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use miniray_k8s::sim::api::ApiServer;
use miniray_k8s::sim::controllers::deployment::TEMPLATE_HASH_LABEL;
use miniray_k8s::sim::controllers::hosts::{self, HostEntry};
use miniray_k8s::sim::controllers::{Controllers, ControllersConfig, HOST_HOSTS_FILE};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(20);
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// An API server and the controllers, with a temporary directory for the hosts file.
struct Sim {
    server: Option<ApiServer>,
    controllers: Option<Controllers>,
    client: Client,
    hosts_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sim {
    async fn start(host_hosts_block: bool) -> Sim {
        let dir = tempfile::tempdir().expect("tempdir");
        let hosts_file = dir.path().join("hosts");
        let server = ApiServer::start(&[LOOPBACK], LOOPBACK, None)
            .await
            .expect("start the API server");
        let client = server.access().client().await.expect("client");
        let controllers = Controllers::start(
            client.clone(),
            ControllersConfig {
                hosts_file: hosts_file.clone(),
                host_hosts_block,
            },
        )
        .await
        .expect("start the controllers");
        Sim {
            server: Some(server),
            controllers: Some(controllers),
            client,
            hosts_file,
            _dir: dir,
        }
    }

    async fn stop_controllers(&mut self) {
        if let Some(controllers) = self.controllers.take() {
            controllers.shutdown().await;
        }
    }

    async fn shutdown(mut self) {
        self.stop_controllers().await;
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn hosts(&self) -> String {
        std::fs::read_to_string(&self.hosts_file).unwrap_or_default()
    }

    /// The Pods of `deployment` that are not terminating and not terminal.
    async fn live_pods(&self, deployment: &str) -> Vec<Pod> {
        let pods = self
            .pods()
            .list(&ListParams::default().labels(&format!("app={deployment}")))
            .await
            .expect("list pods");
        pods.items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Failed" | "Succeeded")
                )
            })
            .collect()
    }

    /// Waits until `deployment` has exactly `n` live Pods, and returns them.
    async fn wait_pods(&self, deployment: &str, n: usize, what: &str) -> Vec<Pod> {
        wait_for(what, || async {
            let pods = self.live_pods(deployment).await;
            (pods.len() == n).then_some(pods)
        })
        .await
    }

    /// Does what a kubelet does for a running Pod: phase, IP and the Ready condition.
    async fn kubelet_status(&self, pod: &str, phase: &str, ip: &str, ready: bool) {
        let ready = if ready { "True" } else { "False" };
        let patch = json!({"status": {
            "phase": phase,
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": ready}],
        }});
        self.pods()
            .patch_status(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch pod status");
    }

    async fn create_deployment(&self, name: &str, replicas: i32, image: &str) -> Deployment {
        self.deployments()
            .create(&PostParams::default(), &deployment(name, replicas, image))
            .await
            .expect("create deployment")
    }

    async fn patch_deployment(&self, name: &str, patch: serde_json::Value) {
        self.deployments()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch deployment");
    }

    async fn create_service(&self, name: &str) {
        let service: Service = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"app": name}, "ports": [{"name": "gcs", "port": 6379}]},
        }))
        .expect("service");
        self.services()
            .create(&PostParams::default(), &service)
            .await
            .expect("create service");
    }

    async fn cluster_ip(&self, service: &str) -> Option<String> {
        let service = self.services().get(service).await.expect("get service");
        service.spec.and_then(|s| s.cluster_ip)
    }
}

fn deployment(name: &str, replicas: i32, image: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, "tier": "test"}},
                "spec": {"containers": [{"name": "main", "image": image, "command": ["sleep", "1000"]}]},
            },
        },
    }))
    .expect("deployment")
}

/// Polls `check` until it returns `Some`, failing the test after [`DEADLINE`].
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The status of the Deployment's `Available` condition.
fn available(status: &k8s_openapi::api::apps::v1::DeploymentStatus) -> Option<&str> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Available")
        .map(|c| c.status.as_str())
}

fn is_name_of(pod: &str, deployment: &str) -> bool {
    let Some(rest) = pod.strip_prefix(&format!("{deployment}-")) else {
        return false;
    };
    let parts: Vec<&str> = rest.split('-').collect();
    let alnum = |s: &str| {
        s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    };
    parts.len() == 2
        && parts[0].len() == 10
        && parts[1].len() == 5
        && parts.iter().all(|p| alnum(p))
}

#[tokio::test]
async fn a_deployment_keeps_its_pods() {
    let sim = Sim::start(false).await;
    let dep = sim.create_deployment("web", 1, "img:1").await;
    let uid = dep.uid().expect("uid");

    let pods = sim.wait_pods("web", 1, "the first Pod").await;
    let first = &pods[0];
    assert!(is_name_of(&first.name_any(), "web"), "{}", first.name_any());
    assert_eq!(first.labels()["app"], "web");
    assert_eq!(first.labels()["tier"], "test");
    let owner = &first.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("Deployment", "web", uid.as_str())
    );
    assert_eq!(owner.controller, Some(true));
    let spec = first.spec.as_ref().expect("spec");
    assert_eq!(spec.containers[0].image.as_deref(), Some("img:1"));

    // A deleted Pod is replaced.
    sim.pods()
        .delete(&first.name_any(), &DeleteParams::default())
        .await
        .expect("delete pod");
    let second = wait_for("a replacement for the deleted Pod", || async {
        let pods = sim.live_pods("web").await;
        (pods.len() == 1 && pods[0].name_any() != first.name_any()).then(|| pods[0].clone())
    })
    .await;

    // A Failed Pod is deleted and replaced.
    sim.kubelet_status(&second.name_any(), "Failed", "10.214.250.2", false)
        .await;
    let third = wait_for("a replacement for the failed Pod", || async {
        let pods = sim.live_pods("web").await;
        (pods.len() == 1 && pods[0].name_any() != second.name_any()).then(|| pods[0].clone())
    })
    .await;
    wait_for("the failed Pod to be deleted", || async {
        sim.pods()
            .get_opt(&second.name_any())
            .await
            .expect("get")
            .is_none()
            .then_some(())
    })
    .await;

    // Scaling up and down.
    sim.patch_deployment("web", json!({"spec": {"replicas": 2}}))
        .await;
    let two = sim.wait_pods("web", 2, "two Pods").await;
    assert!(two.iter().any(|p| p.name_any() == third.name_any()));
    sim.patch_deployment("web", json!({"spec": {"replicas": 1}}))
        .await;
    let one = sim.wait_pods("web", 1, "one Pod again").await;
    let hash = one[0].labels()[TEMPLATE_HASH_LABEL].clone();

    // A changed template replaces the Pod.
    sim.patch_deployment(
        "web",
        json!({"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "img:2", "command": ["sleep", "1000"]}]}}}}),
    )
    .await;
    let updated = wait_for("a Pod of the new template", || async {
        let pods = sim.live_pods("web").await;
        (pods.len() == 1 && pods[0].labels()[TEMPLATE_HASH_LABEL] != hash).then(|| pods[0].clone())
    })
    .await;
    assert_eq!(
        updated.spec.as_ref().expect("spec").containers[0]
            .image
            .as_deref(),
        Some("img:2")
    );
    let all = sim.pods().list(&ListParams::default()).await.expect("list");
    assert_eq!(all.items.len(), 1, "the old Pod is gone");

    sim.shutdown().await;
}

/// Recreate: while an old Pod is terminating (a bound Pod waits for its kubelet), no Pod of
/// the new template is made, so two heads never run at once.
#[tokio::test]
async fn a_new_template_waits_for_the_old_pod_to_stop() {
    let sim = Sim::start(false).await;
    sim.create_deployment("rec", 1, "img:1").await;
    let old = sim.wait_pods("rec", 1, "the first Pod").await.remove(0);
    let binding = json!({"apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": old.name_any()}, "target": {"kind": "Node", "name": "miniray-sim"}});
    let _: serde_json::Value = sim
        .pods()
        .create_subresource("binding", &old.name_any(), &PostParams::default(), &binding)
        .await
        .expect("bind");
    sim.kubelet_status(&old.name_any(), "Running", "10.214.250.30", true)
        .await;

    sim.patch_deployment(
        "rec",
        json!({"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "img:2", "command": ["sleep", "1000"]}]}}}}),
    )
    .await;
    // A pass that saw the old Pod terminating reports no live replica.
    wait_for(
        "the old Pod terminating, seen by the controller",
        || async {
            let dep = sim.deployments().get("rec").await.expect("get");
            let status = dep.status.clone().unwrap_or_default();
            let pod = sim.pods().get(&old.name_any()).await.expect("get pod");
            (pod.metadata.deletion_timestamp.is_some()
                && status.observed_generation == dep.metadata.generation
                && status.replicas == Some(0))
            .then_some(())
        },
    )
    .await;
    let all = sim.pods().list(&ListParams::default()).await.expect("list");
    assert_eq!(all.items.len(), 1, "no new Pod while the old one stops");

    // The kubelet's last word: the old Pod is gone, so the new one comes.
    sim.pods()
        .delete(&old.name_any(), &DeleteParams::default().grace_period(0))
        .await
        .expect("delete with grace 0");
    let new = sim.wait_pods("rec", 1, "the Pod of the new template").await;
    assert_ne!(new[0].name_any(), old.name_any());
    assert_eq!(
        new[0].spec.as_ref().expect("spec").containers[0]
            .image
            .as_deref(),
        Some("img:2")
    );

    sim.shutdown().await;
}

#[tokio::test]
async fn ready_replicas_follow_the_ready_condition_and_gc_deletes_orphans() {
    let sim = Sim::start(false).await;
    sim.create_deployment("ready", 1, "img:1").await;
    let pod = sim.wait_pods("ready", 1, "the Pod").await.remove(0);

    let status_is = |ready: i32| {
        let sim = &sim;
        move || async move {
            let dep = sim.deployments().get("ready").await.expect("get");
            let status = dep.status.clone().unwrap_or_default();
            (status.ready_replicas.unwrap_or(0) == ready
                && status.available_replicas.unwrap_or(0) == ready
                && status.replicas == Some(1)
                && status.updated_replicas == Some(1)
                && status.observed_generation == dep.metadata.generation
                && available(&status) == Some(if ready == 1 { "True" } else { "False" }))
            .then_some(())
        }
    };
    wait_for("status with 0 ready", status_is(0)).await;
    sim.kubelet_status(&pod.name_any(), "Running", "10.214.250.3", true)
        .await;
    wait_for("status with 1 ready", status_is(1)).await;
    sim.kubelet_status(&pod.name_any(), "Running", "10.214.250.3", false)
        .await;
    wait_for("status with 0 ready again", status_is(0)).await;

    // Converged: a later pass (seen through another object it changes) leaves the Deployment
    // alone, so the controller does not rewrite its own status forever.
    let settled = sim.deployments().get("ready").await.expect("get");
    sim.create_service("unrelated").await;
    wait_for("a later pass", || async {
        (sim.cluster_ip("unrelated").await.as_deref() == Some("None")).then_some(())
    })
    .await;
    let later = sim.deployments().get("ready").await.expect("get");
    assert_eq!(later.resource_version(), settled.resource_version());

    // Deleting the Deployment deletes its Pods.
    sim.deployments()
        .delete("ready", &DeleteParams::default())
        .await
        .expect("delete deployment");
    wait_for("the Pods to be collected", || async {
        let all = sim.pods().list(&ListParams::default()).await.expect("list");
        all.items.is_empty().then_some(())
    })
    .await;

    sim.shutdown().await;
}

#[tokio::test]
async fn service_names_follow_the_ready_endpoint() {
    let sim = Sim::start(false).await;
    let inode = std::os::unix::fs::MetadataExt::ino(
        &std::fs::metadata(&sim.hosts_file).expect("the hosts file exists at start"),
    );
    assert!(sim.hosts().contains("localhost"));
    sim.create_deployment("demo-head", 1, "img:1").await;
    sim.create_service("demo-head").await;
    let name = "demo-head.default.svc.cluster.local";

    let pod = sim
        .wait_pods("demo-head", 1, "the head Pod")
        .await
        .remove(0);
    wait_for("clusterIP None without endpoints", || async {
        (sim.cluster_ip("demo-head").await.as_deref() == Some("None")).then_some(())
    })
    .await;
    assert!(!sim.hosts().contains(name));

    sim.kubelet_status(&pod.name_any(), "Running", "10.214.250.10", true)
        .await;
    let line = format!("10.214.250.10 {name} demo-head.default.svc demo-head.default\n");
    wait_for("the name in the hosts file", || async {
        sim.hosts().contains(&line).then_some(())
    })
    .await;
    wait_for("clusterIP = the endpoint", || async {
        (sim.cluster_ip("demo-head").await.as_deref() == Some("10.214.250.10")).then_some(())
    })
    .await;

    // The Pod is replaced by one with another IP.
    sim.pods()
        .delete(&pod.name_any(), &DeleteParams::default())
        .await
        .expect("delete pod");
    let new = wait_for("the replacement Pod", || async {
        let pods = sim.live_pods("demo-head").await;
        (pods.len() == 1 && pods[0].name_any() != pod.name_any()).then(|| pods[0].clone())
    })
    .await;
    wait_for("the name to go with its endpoint", || async {
        (!sim.hosts().contains(name)).then_some(())
    })
    .await;
    sim.kubelet_status(&new.name_any(), "Running", "10.214.250.11", true)
        .await;
    wait_for("the name at the new IP", || async {
        sim.hosts()
            .contains(&format!("10.214.250.11 {name} "))
            .then_some(())
    })
    .await;
    assert!(!sim.hosts().contains("10.214.250.10"));

    // No ready endpoint: the name disappears.
    sim.kubelet_status(&new.name_any(), "Running", "10.214.250.11", false)
        .await;
    wait_for("the name to disappear", || async {
        (!sim.hosts().contains(name)).then_some(())
    })
    .await;
    wait_for("clusterIP None again", || async {
        (sim.cluster_ip("demo-head").await.as_deref() == Some("None")).then_some(())
    })
    .await;
    assert!(sim.hosts().contains("localhost"));
    let now =
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&sim.hosts_file).expect("stat"));
    assert_eq!(now, inode, "the hosts file is rewritten in place");

    sim.shutdown().await;
}

/// Removes, also on panic, every block this test may have left in `/etc/hosts`: its own
/// process's and the stale one it planted. Nothing else in the file is touched.
struct EtcHostsGuard {
    pids: Vec<u32>,
}

impl Drop for EtcHostsGuard {
    fn drop(&mut self) {
        for pid in &self.pids {
            if let Err(error) = hosts::update_host_block(Path::new(HOST_HOSTS_FILE), *pid, None) {
                eprintln!("could not clean /etc/hosts of block {pid}: {error}");
            }
        }
    }
}

fn etc_hosts() -> String {
    std::fs::read_to_string(HOST_HOSTS_FILE).expect("read /etc/hosts")
}

/// Whether this machine's name service reads `/etc/hosts` for host names.
fn nsswitch_reads_files() -> bool {
    let conf = std::fs::read_to_string("/etc/nsswitch.conf").unwrap_or_default();
    conf.lines()
        .filter_map(|l| l.trim().strip_prefix("hosts:"))
        .any(|sources| sources.split_whitespace().any(|s| s == "files"))
}

fn getent(name: &str) -> Option<String> {
    let out = std::process::Command::new("getent")
        .args(["hosts", name])
        .output()
        .expect("run getent");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn the_etc_hosts_block_resolves_on_the_host_and_is_removed() {
    // A dead process's pid: a child that has exited and been reaped.
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let dead = child.id();
    child.wait().expect("wait true");
    let me = std::process::id();
    let _guard = EtcHostsGuard {
        pids: vec![me, dead],
    };
    let before = etc_hosts();
    let stale = HostEntry {
        namespace: "default".into(),
        service: "stale".into(),
        ip: "10.214.250.99".into(),
    };
    hosts::update_host_block(Path::new(HOST_HOSTS_FILE), dead, Some(&[stale]))
        .expect("plant a stale block");
    assert!(etc_hosts().contains(&format!("# BEGIN miniray-k8s-sim {dead}\n")));

    let mut sim = Sim::start(true).await;
    let text = etc_hosts();
    assert!(
        !text.contains(&format!("miniray-k8s-sim {dead}\n")),
        "the stale block is swept: {text}"
    );
    assert!(text.contains(&format!(
        "# BEGIN miniray-k8s-sim {me}\n# END miniray-k8s-sim {me}\n"
    )));

    sim.create_deployment("demo-head", 1, "img:1").await;
    sim.create_service("demo-head").await;
    let pod = sim
        .wait_pods("demo-head", 1, "the head Pod")
        .await
        .remove(0);
    sim.kubelet_status(&pod.name_any(), "Running", "10.214.250.20", true)
        .await;
    let name = "demo-head.default.svc.cluster.local";
    wait_for("the name in /etc/hosts", || async {
        etc_hosts()
            .contains(&format!("10.214.250.20 {name} "))
            .then_some(())
    })
    .await;
    if nsswitch_reads_files() {
        let resolved = getent(name).expect("getent resolves the Service name");
        assert!(resolved.starts_with("10.214.250.20 "), "{resolved}");
    } else {
        eprintln!("nsswitch.conf does not read files for hosts; getent not checked");
    }

    sim.stop_controllers().await;
    let after = etc_hosts();
    assert!(!after.contains("miniray-k8s-sim"), "{after}");
    assert!(!after.contains(name));
    // Everything outside miniray blocks is as it was (other simulators' blocks may come and
    // go meanwhile; they are not ours to check).
    let outside = hosts::edit_block(&before, me, None, |_| false);
    for line in outside.lines().filter(|l| !l.is_empty()) {
        assert!(after.contains(line), "line {line:?} kept");
    }
    sim.shutdown().await;
}
