//! A cluster across hosts: three nodes and a driver, each in a network namespace of its own
//! (see `support/netns.rs`), so an address that leaked as loopback fails the test. Tasks,
//! objects and actors cross hosts; a host whose link is cut loses its node, and its tasks
//! finish elsewhere.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use miniray_proto::NodeState;
use support::netns::Hosts;
use support::{Cluster, DriverRun, Options, wait_until};

/// Hosts 0, 1 and 2 run a node each (the GCS on host 0); the driver runs on host 3.
const NODE_HOSTS: usize = 3;
const DRIVER_HOST: usize = 3;
const STORE: u64 = 1 << 30;
/// How long one driver run may take: a hang fails in bounded time.
const RUN_DEADLINE: Duration = Duration::from_secs(120);

fn run_driver(cluster: &Cluster, args: &[&str]) -> DriverRun {
    DriverRun::wait(cluster.spawn_driver_on(DRIVER_HOST, args), RUN_DEADLINE)
}

/// Three 1-CPU nodes on hosts 0–2; the one on host 2 has the custom resource "remote".
fn cluster_on_hosts(node_timeout: Duration) -> Cluster {
    let hosts = Arc::new(Hosts::new(NODE_HOSTS + 1));
    let mut cluster = Cluster::start(Options {
        head_cpus: 1.0,
        node_timeout,
        hosts: Some(hosts),
        ..Options::default()
    });
    cluster.add_node_on_host(1, 1.0, &[], false, STORE);
    cluster.add_node_on_host(2, 1.0, &[("remote", 1.0)], false, STORE);
    cluster
}

/// Every node is registered under its own host's IP.
fn assert_nodes_on_their_hosts(cluster: &Cluster) {
    for node in &cluster.nodes {
        let ip = cluster.host_ip(node.host);
        assert!(
            node.address.starts_with(&format!("{ip}:")),
            "node on host {} announced {}",
            node.host,
            node.address
        );
    }
    let registered: BTreeSet<String> = cluster
        .nodes_info()
        .into_iter()
        .filter_map(|n| n.address.map(|a| a.host))
        .collect();
    let expected: BTreeSet<String> = (0..NODE_HOSTS)
        .map(|h| cluster.host_ip(h).to_string())
        .collect();
    assert_eq!(registered, expected, "the GCS's node addresses");
}

#[test]
fn the_sandbox_makes_and_removes_hosts_and_sweeps_leftovers() {
    let dead_pid = {
        let mut child = Command::new("true").spawn().expect("run true");
        child.wait().expect("true exits");
        child.id()
    };
    let hosts = Hosts::new(2);
    assert_ne!(hosts.ip(0), hosts.ip(1));
    if !hosts.isolated() {
        return;
    }
    let namespaces = || {
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let own: Vec<String> = (0..2)
        .filter_map(|h| hosts.namespace(h).map(String::from))
        .collect();
    let listed = |name: &str| {
        namespaces()
            .lines()
            .any(|l| l.starts_with(&format!("{name} ")) || l == name)
    };
    let links = hosts.links();
    let linked = |name: &String| {
        Command::new("ip")
            .args(["link", "show", name])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    assert_eq!(
        (own.len(), links.len()),
        (2, 3),
        "two namespaces, two veths, a bridge"
    );
    assert!(links.iter().all(linked), "{links:?}");
    assert!(
        own.iter().all(|ns| listed(ns)),
        "{own:?} in {}",
        namespaces()
    );
    // Each host sees its own address only, and a loopback of its own.
    let addresses = hosts
        .command(1, "ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(
        addresses.contains(&format!(" {}/", hosts.ip(1))),
        "{addresses}"
    );
    assert!(
        !addresses.contains(&format!(" {}/", hosts.ip(0))),
        "{addresses}"
    );
    assert!(addresses.contains(" 127.0.0.1/"), "{addresses}");
    drop(hosts);
    assert!(
        !own.iter().any(|ns| listed(ns)),
        "{own:?} in {}",
        namespaces()
    );
    assert!(!links.iter().any(linked), "{links:?} left behind");

    // A crashed run's namespace and bridge (their owner pid no longer runs) go at the next
    // creation.
    let stale = format!("mrn-{dead_pid}-0-0");
    let stale_bridge = format!("mrn{dead_pid}x0b");
    let ip = |args: &[&str]| {
        let made = Command::new("ip").args(args).status();
        assert!(made.is_ok_and(|s| s.success()), "ip {args:?} failed");
    };
    ip(&["netns", "add", &stale]);
    ip(&["link", "add", &stale_bridge, "type", "bridge"]);
    let hosts = Hosts::new(1);
    assert!(!listed(&stale), "{stale} was not swept");
    assert!(!linked(&stale_bridge), "{stale_bridge} was not swept");
    drop(hosts);
}

#[test]
fn tasks_objects_and_actors_cross_hosts() {
    let mut cluster = cluster_on_hosts(Duration::from_secs(10));
    assert_nodes_on_their_hosts(&cluster);

    // Three slow tasks at once on three 1-CPU nodes: one runs on each.
    let run = run_driver(&cluster, &["spill", "3"]);
    run.assert_success();
    let task_nodes: BTreeSet<String> = run.all("task_node").into_iter().collect();
    let node_ids: BTreeSet<String> = cluster
        .nodes
        .iter()
        .map(|n| n.node_id.to_string())
        .collect();
    assert_eq!(task_nodes, node_ids, "{}", run.stdout);

    let run = run_driver(&cluster, &["basic"]);
    run.assert_success();
    assert_eq!(run.get("chained"), "2401");
    assert_eq!(run.get("add"), "50");
    assert_eq!(run.get("borrowed"), (49 + 2401).to_string());

    let run = run_driver(&cluster, &["cross_node_object"]);
    run.assert_success();
    assert_eq!(run.get("remote_node"), cluster.nodes[2].node_id.to_string());
    assert_eq!(run.get("to_remote_ok"), "true");
    assert_eq!(run.get("from_remote_ok"), "true");

    let run = run_driver(&cluster, &["actor_order"]);
    run.assert_success();
    assert_eq!(run.get("lens_in_order"), "true");
    assert_eq!(run.get("seen_in_order"), "true");

    assert!(cluster.stop().is_empty(), "segments left behind");
}

#[test]
fn a_host_cut_off_mid_run_loses_its_node_and_its_tasks_finish_elsewhere() {
    let node_timeout = Duration::from_secs(4);
    let cluster = cluster_on_hosts(node_timeout);
    let victim = 2;
    let victim_id = cluster.nodes[victim].node_id;
    let marks = cluster.session_dir.join("marks");
    std::fs::create_dir_all(&marks).expect("marks dir");
    let driver = cluster.spawn_driver_on(DRIVER_HOST, &["raylet_killed", &marks.to_string_lossy()]);
    let mut driver = Some(driver);
    // A second driver calls an actor that only the victim can host (no restarts).
    let actor_marks = cluster.session_dir.join("actor_marks");
    std::fs::create_dir_all(&actor_marks).expect("actor marks dir");
    let actor_driver = cluster.spawn_driver_on(
        DRIVER_HOST,
        &["actor_on_cut_node", &actor_marks.to_string_lossy()],
    );
    let mut actor_driver = Some(actor_driver);
    let actor_call_started = || {
        std::fs::read_dir(&actor_marks)
            .map(|d| d.flatten().next().is_some())
            .unwrap_or(false)
    };
    // Cut the victim's host off once a task and the actor call have started there (the
    // filesystem is shared).
    let started_on_victim = || {
        std::fs::read_dir(&marks)
            .map(|d| {
                d.flatten().any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&victim_id.to_string())
                })
            })
            .unwrap_or(false)
    };
    let wait = Instant::now();
    while !(started_on_victim() && actor_call_started()) {
        if wait.elapsed() > Duration::from_secs(60) {
            let run = DriverRun::wait(driver.take().expect("driver"), Duration::ZERO);
            let actor_run =
                DriverRun::wait(actor_driver.take().expect("actor driver"), Duration::ZERO);
            panic!(
                "no task or actor call started on the victim\n--- stdout\n{}\n--- stderr\n{}\n\
                 --- actor driver stdout\n{}\n--- stderr\n{}",
                run.stdout, run.stderr, actor_run.stdout, actor_run.stderr
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let hosts = cluster.hosts().expect("hosts");
    hosts.cut_link(cluster.nodes[victim].host);
    let cut = Instant::now();
    wait_until(
        "the cut-off node to be marked dead",
        node_timeout * 4,
        || cluster.node_state(victim_id) == Some(NodeState::Dead),
    );
    let marked_dead = cut.elapsed();
    // Its tasks run again elsewhere; the driver neither hangs on the silent host nor fails.
    // The driver follows the GCS's node changes: once the node is declared dead (the node
    // timeout) its pushes there fail at once, nothing asks the cut-off raylet what ran, and
    // the task runs again (2 s). Neither HTTP/2 keepalive (5 s + 5 s) nor a connect timeout
    // is waited for. Measured about 7 s; the bound leaves room for a loaded machine.
    let bound = node_timeout * 3;
    // The actor cannot be placed anywhere else: its call fails as soon as the node is
    // declared dead, not when keepalive gives up on the silent worker.
    let actor_run = DriverRun::wait(
        actor_driver.take().expect("actor driver"),
        Duration::from_secs(90),
    );
    let actor_finished = cut.elapsed();
    actor_run.assert_success();
    assert_eq!(actor_run.get("slow_call_kind"), "actor_died");
    assert!(
        actor_finished < bound,
        "the actor call took {actor_finished:?} to fail after the cut (node marked dead \
         after {marked_dead:?}), more than {bound:?}"
    );
    let run = DriverRun::wait(driver.take().expect("driver"), Duration::from_secs(90));
    let finished = cut.elapsed();
    run.assert_success();
    assert_eq!(run.get("values"), "[0, 1, 2, 3, 4, 5]");
    eprintln!(
        "node marked dead {marked_dead:?}, actor call failed {actor_finished:?} and driver \
         done {finished:?} after the cut"
    );
    assert!(
        finished < bound,
        "the driver took {finished:?} after the cut (node marked dead after {marked_dead:?}), \
         more than {bound:?}"
    );
}
