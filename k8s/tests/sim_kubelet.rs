//! The simulated kubelet against the simulated API server: Pods created through kube-rs
//! run as real processes, each in its own network namespace (where this machine allows
//! it; tests of isolation say so and stop early where it does not).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, DeleteParams, LogParams, PostParams};
use miniray_k8s::sim::ApiServer;
use miniray_k8s::sim::kubelet::{Kubelet, KubeletConfig, NODE_NAME, PodNetwork};
use serde_json::json;

/// How long anything the kubelet does may take to show.
const DEADLINE: Duration = Duration::from_secs(30);
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A Pod network, an API server and a kubelet; all stopped and removed on drop (also on
/// panic: the kubelet's tasks abort, its processes die with the test's runtime by their
/// parent-death signal, the network's namespaces and bridge are deleted).
struct Sim {
    net: Arc<PodNetwork>,
    server: Option<ApiServer>,
    kubelet: Option<Kubelet>,
    client: kube::Client,
    state_dir: PathBuf,
}

impl Sim {
    async fn start() -> Sim {
        Sim::start_with_exe("/nonexistent/miniray".into()).await
    }

    /// A simulator whose `miniray` command runs `miniray_exe`.
    async fn start_with_exe(miniray_exe: PathBuf) -> Sim {
        let net = Arc::new(PodNetwork::create());
        let bridge = net.bridge_ip();
        let mut listen = vec![IpAddr::from([127, 0, 0, 1])];
        if !listen.contains(&bridge) {
            listen.push(bridge);
        }
        let state_dir = PathBuf::from(format!(
            "/var/tmp/miniray-kubelet-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&state_dir);
        let server = ApiServer::start(&listen, bridge, Some(state_dir.clone()))
            .await
            .expect("the API server starts");
        let client = server.access().client().await.expect("a client");
        let cfg = KubeletConfig {
            node_name: NODE_NAME.into(),
            state_dir: state_dir.clone(),
            network: net.clone(),
            miniray_exe,
            api: server.access().clone(),
            hosts_file: state_dir.join("hosts"),
        };
        let kubelet = Kubelet::start(client.clone(), cfg)
            .await
            .expect("the kubelet starts");
        Sim {
            net,
            server: Some(server),
            kubelet: Some(kubelet),
            client,
            state_dir,
        }
    }

    fn pods(&self) -> Api<Pod> {
        Api::default_namespaced(self.client.clone())
    }

    fn kubelet(&self) -> &Kubelet {
        self.kubelet.as_ref().expect("running")
    }

    fn log(&self, pod: &str, container: &str) -> String {
        let path = self.kubelet().config().log_path("default", pod, container);
        std::fs::read_to_string(path).unwrap_or_default()
    }

    fn pod_dir(&self, pod: &str) -> PathBuf {
        self.kubelet().config().pod_dir("default", pod)
    }

    async fn stop_kubelet(&mut self) {
        if let Some(k) = self.kubelet.take() {
            k.shutdown().await;
        }
    }

    async fn stop(mut self) {
        self.stop_kubelet().await;
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        self.net.shutdown();
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.kubelet.take();
        self.server.take();
        self.net.shutdown();
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

fn pod(name: &str, script: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script]}]
        }
    }))
    .expect("a Pod")
}

async fn create(sim: &Sim, pod: &Pod) {
    sim.pods()
        .create(&PostParams::default(), pod)
        .await
        .expect("Pod created");
}

/// Polls Pod `name` until `ok` holds; panics with `what` and the last Pod at the deadline.
async fn wait_pod(sim: &Sim, name: &str, what: &str, ok: impl Fn(&Pod) -> bool) -> Pod {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let pod = sim.pods().get_opt(name).await.expect("get Pod");
        if let Some(p) = &pod
            && ok(p)
        {
            return p.clone();
        }
        assert!(
            Instant::now() < deadline,
            "Pod {name}: {what} not within {DEADLINE:?}; last: {pod:#?}; log: {}",
            sim.log(name, "main")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_gone(sim: &Sim, name: &str) {
    let deadline = Instant::now() + DEADLINE;
    while sim.pods().get_opt(name).await.expect("get Pod").is_some() {
        assert!(Instant::now() < deadline, "Pod {name} still there");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `ok` holds of the file at `path` (read as text).
async fn wait_file(path: &Path, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if ok(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not within {DEADLINE:?}: {} holds {text:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn condition(p: &Pod, type_: &str) -> Option<(String, Option<String>)> {
    let c = p
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone()))
}

fn ready(p: &Pod) -> bool {
    condition(p, "Ready").is_some_and(|(s, _)| s == "True")
}

fn pod_ip(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("a Pod IP")
}

/// The pid of the Pod's first container, from its containerID.
fn container_pid(p: &Pod) -> i32 {
    let id = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| {
            c.first()?
                .container_id
                .as_deref()?
                .strip_prefix("miniray-sim://")?
                .parse()
                .ok()
        });
    id.expect("a container pid")
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
}

async fn wait_dead(pid: i32) {
    let deadline = Instant::now() + DEADLINE;
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} still alive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn netns_list() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn link_list() -> String {
    let out = Command::new("ip").args(["-o", "link", "show"]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The namespace (and veth) of the Pod with address `ip`, while it has one.
fn netns_of(sim: &Sim, ip: &str) -> (Option<String>, Option<String>) {
    let net = sim.net.pods().into_iter().find(|n| n.ip.to_string() == ip);
    let net = net.expect("the Pod's address is on the network");
    (net.netns.clone(), net.veth().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_runs_with_its_address_env_and_expanded_args() {
    let sim = Sim::start().await;
    let secrets: Api<Secret> = Api::default_namespaced(sim.client.clone());
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "tok"},
        "stringData": {"token": "s3cret"}
    }))
    .expect("a Secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("Secret created");
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "envpod"},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [{
                "name": "main",
                "image": "busybox",
                "command": ["sh", "-c", "echo \"args=$1\"; (echo \"$1\" > /data/out.tmp && mv /data/out.tmp /data/out) 2>/dev/null; \
                    echo \"host=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT hostname=$(hostname)\"; exec sleep 300", "sh"],
                "args": ["$(MY_NAME)/$(MY_IP)/$(TOKEN)/$(GREETING)/$$(MY_NAME)"],
                "env": [
                    {"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "token"}}},
                    {"name": "GREETING", "value": "hello-$(MY_NAME)"}
                ],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]
            }]
        }
    }))
    .expect("a Pod");
    create(&sim, &p).await;
    let running = wait_pod(&sim, "envpod", "Running", |p| phase(p) == "Running").await;
    let ip = pod_ip(&running);
    let status = running.status.clone().expect("status");
    assert_eq!(
        running.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(NODE_NAME)
    );
    assert_eq!(status.host_ip, Some(sim.net.bridge_ip().to_string()));
    assert_ne!(ip, sim.net.bridge_ip().to_string());
    assert!(status.start_time.is_some());
    assert_eq!(
        condition(&running, "PodScheduled").map(|c| c.0).as_deref(),
        Some("True")
    );
    let cs = &status.container_statuses.expect("container statuses")[0];
    assert_eq!(cs.name, "main");
    assert_eq!(cs.restart_count, 0);
    assert!(
        cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some(),
        "{cs:?}"
    );

    let expected = format!("envpod/{ip}/s3cret/hello-envpod/$(MY_NAME)");
    let log = wait_file(
        &sim.kubelet().config().log_path("default", "envpod", "main"),
        "the log",
        |t| t.contains("hostname="),
    )
    .await;
    assert!(log.contains(&format!("args={expected}\n")), "{log}");
    if sim.net.isolated() {
        assert!(log.contains("hostname=envpod"), "{log}");
        // The emptyDir is the Pod's directory's volumes/data.
        let out = sim.pod_dir("envpod").join("volumes/data/out");
        let text = wait_file(&out, "the expanded args", |t| t.ends_with('\n')).await;
        assert_eq!(text.trim(), expected);
    }
    let api = sim.server.as_ref().expect("server").access();
    assert!(
        log.contains(&format!("host={}:{}", api.pod_host, api.port)),
        "{log}"
    );

    // A second Pod gets another address.
    create(&sim, &pod("second", "exec sleep 300")).await;
    let second = wait_pod(&sim, "second", "Running", |p| phase(p) == "Running").await;
    assert_ne!(pod_ip(&second), ip);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_each_other_by_pod_ip_only_and_the_host_reaches_them() {
    let sim = Sim::start().await;
    if !sim.net.isolated() {
        eprintln!("no network namespaces here: Pod isolation is not tested");
        return;
    }
    let port = 18081;
    create(
        &sim,
        &pod(
            "server",
            &format!("exec python3 -m http.server {port} --bind 0.0.0.0"),
        ),
    )
    .await;
    let server = wait_pod(&sim, "server", "Running", |p| phase(p) == "Running").await;
    let server_ip = pod_ip(&server);
    // The host reaches the Pod's address.
    let deadline = Instant::now() + DEADLINE;
    while std::net::TcpStream::connect_timeout(
        &format!("{server_ip}:{port}").parse().expect("addr"),
        Duration::from_secs(1),
    )
    .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the host cannot reach {server_ip}:{port}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let probe = |target: &str| {
        format!(
            "if timeout 3 bash -c 'echo > /dev/tcp/{target}/{port}' 2>/dev/null; \
             then echo {target}=open; else echo {target}=closed; fi"
        )
    };
    let script = format!("{}; {}", probe("127.0.0.1"), probe(&server_ip));
    create(&sim, &pod("client", &script)).await;
    wait_pod(&sim, "client", "Succeeded", |p| phase(p) == "Succeeded").await;
    let log = sim.log("client", "main");
    assert!(
        log.contains("127.0.0.1=closed"),
        "another Pod's loopback is not ours: {log}"
    );
    assert!(log.contains(&format!("{server_ip}=open")), "{log}");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_has_its_own_tmp_and_shm_its_config_map_and_service_account() {
    let sim = Sim::start().await;
    if !sim.net.isolated() {
        eprintln!("no network namespaces here: Pod mounts are not tested");
        return;
    }
    let maps: Api<ConfigMap> = Api::default_namespaced(sim.client.clone());
    let map: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "conf"},
        "data": {"cluster.yaml": "cluster_name: demo\n"}
    }))
    .expect("a ConfigMap");
    maps.create(&PostParams::default(), &map)
        .await
        .expect("ConfigMap created");
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let marker = format!("kubelet-test-{}-{n}", std::process::id());
    let mount = format!("/etc/miniray-kubelet-test-{}-{n}", std::process::id());
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    let script = format!(
        "echo shm=$(ls -A /dev/shm | wc -l); touch /tmp/{marker} /dev/shm/{marker}; \
         echo tmp=$(ls -A /tmp); echo conf=$(cat {mount}/cluster.yaml); \
         echo sa=$(ls {sa} | tr '\\n' ,); echo ns=$(cat {sa}/namespace); \
         echo token=$(cat {sa}/token); head -1 {sa}/ca.crt"
    );
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "mounts"},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "conf", "configMap": {"name": "conf"}}],
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script],
                "volumeMounts": [{"name": "conf", "mountPath": mount}]}]
        }
    }))
    .expect("a Pod");
    create(&sim, &p).await;
    wait_pod(&sim, "mounts", "Succeeded", |p| phase(p) == "Succeeded").await;
    let log = sim.log("mounts", "main");
    let token = &sim.server.as_ref().expect("server").access().token;
    assert!(log.contains("shm=0"), "a fresh /dev/shm: {log}");
    assert!(
        log.contains(&format!("tmp={marker}\n")),
        "an empty /tmp of its own: {log}"
    );
    assert!(log.contains("conf=cluster_name: demo"), "{log}");
    assert!(log.contains("sa=ca.crt,namespace,token,"), "{log}");
    assert!(log.contains("ns=default"), "{log}");
    assert!(log.contains(&format!("token={token}")), "{log}");
    assert!(log.contains("-----BEGIN CERTIFICATE-----"), "{log}");
    assert!(
        !Path::new("/tmp").join(&marker).exists(),
        "the host's /tmp is untouched"
    );
    assert!(
        !Path::new("/dev/shm").join(&marker).exists(),
        "the host's /dev/shm is untouched"
    );
    assert!(sim.pod_dir("mounts").join("tmp").join(&marker).exists());
    assert!(
        Path::new(&mount).is_dir(),
        "the mount point was made on the host"
    );
    // The mount point goes when the process's last kubelet shuts down (tests run several
    // at once; `volumes::MountPoints` has the unit test).
    sim.stop().await;
}

/// `kubectl logs` and kube-rs read a container's output through `pods/NAME/log`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_log_is_served_whole_or_its_last_lines() {
    let sim = Sim::start().await;
    create(&sim, &pod("talker", "echo one; echo two >&2; echo three")).await;
    wait_pod(&sim, "talker", "Succeeded", |p| phase(p) == "Succeeded").await;
    let pods = sim.pods();
    let whole = pods
        .logs("talker", &LogParams::default())
        .await
        .expect("the log");
    assert_eq!(whole, "one\ntwo\nthree\n");
    let last = pods
        .logs(
            "talker",
            &LogParams {
                tail_lines: Some(1),
                container: Some("main".into()),
                ..LogParams::default()
            },
        )
        .await
        .expect("the last line");
    assert_eq!(last, "three\n");
    let wrong = pods
        .logs(
            "talker",
            &LogParams {
                container: Some("sidecar".into()),
                ..LogParams::default()
            },
        )
        .await
        .expect_err("no such container");
    assert!(
        matches!(&wrong, kube::Error::Api(e) if e.code == 400 && e.message.contains("sidecar")),
        "{wrong:?}"
    );
    let missing = pods
        .logs("nobody", &LogParams::default())
        .await
        .expect_err("no such Pod");
    assert!(
        matches!(&missing, kube::Error::Api(e) if e.code == 404),
        "{missing:?}"
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_make_pods_succeed_or_fail() {
    let sim = Sim::start().await;
    create(&sim, &pod("ok", "exit 0")).await;
    create(&sim, &pod("bad", "echo failing; exit 3")).await;
    let no_command: Pod = serde_json::from_value(json!({
        "metadata": {"name": "nocmd"},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]}
    }))
    .expect("a Pod");
    create(&sim, &no_command).await;
    let ok = wait_pod(&sim, "ok", "Succeeded", |p| phase(p) == "Succeeded").await;
    let bad = wait_pod(&sim, "bad", "Failed", |p| phase(p) == "Failed").await;
    let terminated = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c[0].state.as_ref()?.terminated.clone())
    };
    let t = terminated(&ok).expect("terminated");
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    let t = terminated(&bad).expect("terminated");
    assert_eq!((t.exit_code, t.reason.as_deref()), (3, Some("Error")));
    assert!(!ready(&bad));
    assert!(sim.log("bad", "main").contains("failing"));
    let nocmd = wait_pod(&sim, "nocmd", "Failed", |p| phase(p) == "Failed").await;
    let message = nocmd.status.and_then(|s| s.message).unwrap_or_default();
    assert!(message.contains("no command"), "{message}");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_sends_sigterm_then_sigkill_after_the_grace_period() {
    let sim = Sim::start().await;
    create(
        &sim,
        &pod(
            "polite",
            "trap 'echo got-sigterm; exit 0' TERM; echo started; while :; do sleep 0.1; done",
        ),
    )
    .await;
    let mut stubborn = pod(
        "stubborn",
        "trap '' TERM; echo started; while :; do sleep 0.1; done",
    );
    stubborn
        .spec
        .as_mut()
        .expect("spec")
        .termination_grace_period_seconds = Some(2);
    create(&sim, &stubborn).await;
    let polite = wait_pod(&sim, "polite", "Running", |p| phase(p) == "Running").await;
    let stubborn = wait_pod(&sim, "stubborn", "Running", |p| phase(p) == "Running").await;
    let log_path = sim.kubelet().config().log_path("default", "polite", "main");
    wait_file(&log_path, "the trap is set", |t| t.contains("started")).await;
    let stubborn_log = sim
        .kubelet()
        .config()
        .log_path("default", "stubborn", "main");
    wait_file(&stubborn_log, "the trap is set", |t| t.contains("started")).await;
    let (polite_pid, stubborn_pid) = (container_pid(&polite), container_pid(&stubborn));
    let (polite_ns, polite_veth) = netns_of(&sim, &pod_ip(&polite));
    let (stubborn_ns, _) = netns_of(&sim, &pod_ip(&stubborn));

    let started = Instant::now();
    sim.pods()
        .delete("polite", &DeleteParams::default())
        .await
        .expect("delete");
    sim.pods()
        .delete("stubborn", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&sim, "polite").await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a Pod that exits on SIGTERM goes at once, not after the grace period"
    );
    let log = std::fs::read_to_string(&log_path).expect("the log stays");
    assert!(log.contains("got-sigterm"), "{log}");
    wait_dead(polite_pid).await;
    wait_gone(&sim, "stubborn").await;
    assert!(
        started.elapsed() >= Duration::from_millis(1800),
        "a Pod ignoring SIGTERM is killed only after its grace period ({:?})",
        started.elapsed()
    );
    wait_dead(stubborn_pid).await;
    let namespaces = netns_list();
    for ns in [polite_ns, stubborn_ns].into_iter().flatten() {
        assert!(!namespaces.contains(&ns), "{ns} is left: {namespaces}");
    }
    if let Some(veth) = polite_veth {
        assert!(
            !link_list().contains(&format!(" {veth}@")),
            "{veth} is left"
        );
    }
    assert!(
        !sim.pod_dir("polite").join("tmp").exists(),
        "the Pod's directory goes"
    );
    assert!(sim.net.pods().is_empty());
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_pods_mode_unschedulable_leaves_pods_pending_and_fail_fails_them() {
    let sim = Sim::start().await;
    let maps: Api<ConfigMap> = Api::namespaced(sim.client.clone(), "kube-system");
    let mut map: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "miniray-simulator"},
        "data": {"new-pods": "unschedulable"}
    }))
    .expect("a ConfigMap");
    maps.create(&PostParams::default(), &map)
        .await
        .expect("created");
    create(&sim, &pod("waiting", "exec sleep 300")).await;
    let waiting = wait_pod(&sim, "waiting", "Unschedulable", |p| {
        condition(p, "PodScheduled")
            == Some(("False".to_string(), Some("Unschedulable".to_string())))
    })
    .await;
    assert_eq!(phase(&waiting), "Pending");
    assert!(
        waiting
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_none()
    );

    map.data = Some([("new-pods".to_string(), "fail".to_string())].into());
    maps.replace("miniray-simulator", &PostParams::default(), &map)
        .await
        .expect("replaced");
    create(&sim, &pod("doomed", "exec sleep 300")).await;
    let doomed = wait_pod(&sim, "doomed", "Failed", |p| phase(p) == "Failed").await;
    assert!(doomed.status.and_then(|s| s.reason).is_some());
    // The mode is read when a Pod is first seen: the first one still waits.
    let waiting = sim.pods().get("waiting").await.expect("still there");
    assert_eq!(phase(&waiting), "Pending");
    assert!(
        sim.net.pods().is_empty(),
        "no address for Pods that do not run"
    );
    // An unbound Pod is removed by the server at once.
    sim.pods()
        .delete("waiting", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&sim, "waiting").await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_readiness_probe_makes_the_pod_ready_once_the_port_listens() {
    let sim = Sim::start().await;
    let port = 18082;
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "slow"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "main",
                "image": "python",
                "command": ["sh", "-c", format!("sleep 3; exec python3 -m http.server {port} --bind 0.0.0.0")],
                "ports": [{"name": "http", "containerPort": port}],
                "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1}
            }]
        }
    }))
    .expect("a Pod");
    create(&sim, &p).await;
    let running = wait_pod(&sim, "slow", "Running", |p| phase(p) == "Running").await;
    let since = Instant::now();
    assert!(!ready(&running), "not ready before the port listens");
    assert_eq!(
        condition(&running, "ContainersReady")
            .map(|c| c.0)
            .as_deref(),
        Some("False")
    );
    let ready_pod = wait_pod(&sim, "slow", "Ready", ready).await;
    assert!(
        since.elapsed() >= Duration::from_millis(1500),
        "ready only once the port listens ({:?})",
        since.elapsed()
    );
    let cs = &ready_pod
        .status
        .and_then(|s| s.container_statuses)
        .expect("statuses")[0];
    assert!(cs.ready);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_no_process_namespace_or_link_behind() {
    let mut sim = Sim::start().await;
    create(&sim, &pod("one", "exec sleep 300")).await;
    create(&sim, &pod("two", "trap '' TERM; sleep 300 & sleep 300")).await;
    let one = wait_pod(&sim, "one", "Running", |p| phase(p) == "Running").await;
    let two = wait_pod(&sim, "two", "Running", |p| phase(p) == "Running").await;
    let nets: Vec<_> = [&one, &two]
        .iter()
        .map(|p| netns_of(&sim, &pod_ip(p)))
        .collect();
    let pids = [container_pid(&one), container_pid(&two)];
    let bridge = sim.net.bridge_name().map(str::to_string);
    sim.stop_kubelet().await;
    for pid in pids {
        assert!(!alive(pid), "process {pid} survived the kubelet");
    }
    let namespaces = netns_list();
    let links = link_list();
    for (ns, veth) in nets {
        if let Some(ns) = ns {
            assert!(!namespaces.contains(&ns), "{ns} is left: {namespaces}");
        }
        if let Some(veth) = veth {
            assert!(!links.contains(&format!(" {veth}@")), "{veth} is left");
        }
    }
    // Pods stay in the API as they were; the network's bridge goes with the network.
    assert!(sim.pods().get_opt("one").await.expect("get").is_some());
    sim.stop().await;
    if let Some(bridge) = bridge {
        assert!(
            !link_list().contains(&format!(" {bridge}:")),
            "{bridge} is left"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_keeps_the_pod_waiting_until_it_exists() {
    let sim = Sim::start().await;
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "needs-secret"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", "echo token=$T"],
                "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "late", "key": "token"}}}]}]
        }
    }))
    .expect("a Pod");
    create(&sim, &p).await;
    let waiting = wait_pod(&sim, "needs-secret", "CreateContainerConfigError", |p| {
        let cs = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref());
        cs.and_then(|c| c[0].state.as_ref()?.waiting.as_ref()?.reason.clone())
            .as_deref()
            == Some("CreateContainerConfigError")
    })
    .await;
    assert_eq!(phase(&waiting), "Pending");
    let secrets: Api<Secret> = Api::default_namespaced(sim.client.clone());
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "late"},
        "stringData": {"token": "arrived"}
    }))
    .expect("a Secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("created");
    wait_pod(&sim, "needs-secret", "Succeeded", |p| {
        phase(p) == "Succeeded"
    })
    .await;
    assert!(sim.log("needs-secret", "main").contains("token=arrived"));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_miniray_command_runs_the_given_executable_even_from_tmp() {
    let dir = tempfile::tempdir_in("/tmp").expect("a directory under /tmp");
    let exe = dir.path().join("miniray");
    std::fs::write(&exe, "#!/bin/sh\necho \"fake-miniray $*\"\n").expect("write");
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let sim = Sim::start_with_exe(exe).await;
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "head"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "miniray:test",
                "command": ["miniray", "start", "--node-ip-address", "$(IP)", "--block"],
                "env": [{"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]}]
        }
    }))
    .expect("a Pod");
    create(&sim, &p).await;
    let done = wait_pod(&sim, "head", "Succeeded", |p| phase(p) == "Succeeded").await;
    let log = sim.log("head", "main");
    assert_eq!(
        log.trim(),
        format!(
            "fake-miniray start --node-ip-address {} --block",
            pod_ip(&done)
        )
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_reaches_the_api_server_with_its_service_account_as_in_cluster() {
    let sim = Sim::start().await;
    if !sim.net.isolated() {
        eprintln!("no network namespaces here: the in-cluster configuration is not tested");
        return;
    }
    let script = r#"
import json, os, ssl, urllib.request
d = "/var/run/secrets/kubernetes.io/serviceaccount"
ctx = ssl.create_default_context(cafile=d + "/ca.crt")
url = "https://%s:%s/api/v1/namespaces/%s/pods" % (
    os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"],
    open(d + "/namespace").read())
req = urllib.request.Request(url, headers={"Authorization": "Bearer " + open(d + "/token").read()})
pods = json.load(urllib.request.urlopen(req, context=ctx, timeout=10))["items"]
print("pods=" + ",".join(sorted(p["metadata"]["name"] for p in pods)))
"#;
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "incluster"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "python", "command": ["python3", "-c", script]}]
        }
    }))
    .expect("a Pod");
    create(&sim, &p).await;
    wait_pod(&sim, "incluster", "Succeeded", |p| phase(p) == "Succeeded").await;
    let log = sim.log("incluster", "main");
    assert!(log.contains("pods=incluster"), "{log}");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_left_by_a_previous_kubelet_are_failed_and_their_deletion_finished() {
    let mut sim = Sim::start().await;
    create(&sim, &pod("old", "exec sleep 300")).await;
    let old = wait_pod(&sim, "old", "Running", |p| phase(p) == "Running").await;
    let pid = container_pid(&old);
    let cfg = sim.kubelet().config().clone();
    sim.stop_kubelet().await;
    assert!(!alive(pid));
    sim.kubelet = Some(
        Kubelet::start(sim.client.clone(), cfg)
            .await
            .expect("the kubelet starts again"),
    );
    let failed = wait_pod(&sim, "old", "Failed", |p| phase(p) == "Failed").await;
    assert_eq!(
        failed.status.and_then(|s| s.reason).as_deref(),
        Some("NodeRestarted")
    );
    // New Pods run as usual.
    create(&sim, &pod("new", "exit 0")).await;
    wait_pod(&sim, "new", "Succeeded", |p| phase(p) == "Succeeded").await;
    // A bound Pod is only removed once its kubelet says so: the new one does.
    sim.pods()
        .delete("old", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&sim, "old").await;
    sim.stop().await;
}
