//! `miniray status` on a cluster across hosts: a GCS and three raylets, each in a network
//! namespace of its own (the sandbox of `tests/tests/support/netns.rs`), and `status` run
//! from a fourth host lists every node under its own host's IP.

#[path = "../../tests/tests/support/netns.rs"]
mod netns;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use miniray::cluster::{DaemonSpec, GcsSpec, RayletSpec, spawn_daemon_via, stop_daemon};
use miniray_common::{NodeId, Resources};
use netns::Hosts;
use serde_json::Value;

const MINIRAY: &str = env!("CARGO_BIN_EXE_miniray");
const NODE_HOSTS: usize = 3;
const STATUS_HOST: usize = 3;
/// How long three freshly started nodes may take to show as alive on a loaded machine.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(60);

/// The daemons of the test; stopped on drop, with any plasma segment they left removed,
/// also when an assertion fails.
struct Daemons {
    /// Names of plasma segments of this session start with it.
    segment_prefix: String,
    children: Vec<Child>,
}

impl Drop for Daemons {
    fn drop(&mut self) {
        // Raylets first: they leave the GCS as they stop.
        while let Some(mut child) = self.children.pop() {
            stop_daemon(&mut child);
        }
        let shm = miniray_common::shm::plasma_dir();
        for entry in std::fs::read_dir(&shm).into_iter().flatten().flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(&self.segment_prefix)
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

fn spawn(hosts: &Hosts, host: usize, spec: &DaemonSpec, log: &Path) -> (Child, String) {
    let daemon = spawn_daemon_via(&hosts.wrapper(host), Path::new(MINIRAY), spec, log, true)
        .unwrap_or_else(|e| panic!("daemon on host {host} starts: {e}"));
    (daemon.child, daemon.address)
}

#[test]
fn status_from_another_host_lists_each_node_with_its_own_ip() {
    let hosts = Hosts::new(NODE_HOSTS + 1);
    let session = format!(
        "miniray-multihost-status-{}-{}",
        std::process::id(),
        NodeId::random().hex().get(..6).unwrap_or("x")
    );
    let session_dir = std::env::temp_dir().join(&session);
    let mut daemons = Daemons {
        segment_prefix: format!("miniray-{session}"),
        children: Vec::new(),
    };
    let token = miniray_common::auth::generate_token();
    let (gcs, gcs_address) = spawn(
        &hosts,
        0,
        &DaemonSpec::Gcs(GcsSpec {
            bind: format!("{}:0", hosts.ip(0)).parse().expect("a host IP"),
            token: token.clone(),
            session_name: "multihost-status".into(),
            redis_address: None,
            node_timeout_ms: 10_000,
            max_destroyed_actors: None,
            max_task_events: None,
            unused_executable_ttl_ms: None,
            tls: None,
            metrics_port: None,
        }),
        &session_dir.join("logs/gcs.err"),
    );
    daemons.children.push(gcs);
    let mut node_ids = BTreeSet::new();
    for host in 0..NODE_HOSTS {
        let node_id = NodeId::random();
        let (raylet, _) = spawn(
            &hosts,
            host,
            &DaemonSpec::Raylet(RayletSpec {
                gcs_address: gcs_address.clone(),
                token: token.clone(),
                bind_host: hosts.ip(host).to_string(),
                port: 0,
                node_id,
                resources: Resources::from_pairs([("CPU", 1.0)]).expect("valid resources"),
                object_store_memory: 64 << 20,
                prefault_object_store: false,
                is_head: host == 0,
                session_dir: session_dir.clone(),
                plasma_dir: None,
                tls: None,
                metrics_port: None,
                executable_cache_bytes: None,
                cloud_instance_id: None,
                node_type: None,
                num_cpus: None,
            }),
            &session_dir.join(format!("logs/raylet-{host}.err")),
        );
        daemons.children.push(raylet);
        node_ids.insert(node_id.to_string());
    }

    // What each node is listed under, once all three are alive.
    let start = Instant::now();
    let listed = loop {
        let out = hosts
            .command(STATUS_HOST, MINIRAY)
            .args(["status", "--format", "json"])
            .env("MINIRAY_ADDRESS", &gcs_address)
            .env("MINIRAY_TOKEN", &token)
            .env_remove("MINIRAY_ROLE")
            .stdin(Stdio::null())
            .output()
            .expect("run miniray status");
        let status: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let alive: Vec<(String, String)> = status["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["state"] == "ALIVE")
            .map(|n| {
                let field = |k: &str| n[k].as_str().unwrap_or_default().to_string();
                (field("node_id"), field("address"))
            })
            .collect();
        if alive.len() == NODE_HOSTS {
            break alive;
        }
        assert!(
            start.elapsed() < CLUSTER_DEADLINE,
            "status did not list {NODE_HOSTS} alive nodes in {CLUSTER_DEADLINE:?}\n\
             --- stdout\n{}\n--- stderr\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let ids: BTreeSet<String> = listed.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids, node_ids);
    let ips: BTreeSet<String> = listed
        .iter()
        .map(|(_, address)| {
            address
                .rsplit_once(':')
                .map(|(ip, _)| ip.to_string())
                .unwrap_or_default()
        })
        .collect();
    let expected: BTreeSet<String> = (0..NODE_HOSTS).map(|h| hosts.ip(h).to_string()).collect();
    assert_eq!(ips, expected, "nodes as listed: {listed:?}");
    drop(daemons);
}
