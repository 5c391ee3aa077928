//! Every process binds and advertises its node's IP, never a hard-coded loopback. On Linux
//! all of 127/8 is local, so distinct loopback addresses stand in for distinct hosts: the
//! GCS on 127.0.0.1, the head on 127.0.0.2, a second node on 127.0.0.3, and a driver on
//! 127.0.0.4, where no raylet runs (a remote driver: it works through the head over the
//! network, its object store not mapped).

mod support;

use std::path::Path;

use support::{Cluster, DRIVER, DRIVER_DEADLINE, DriverRun, Options};

const HEAD_IP: &str = "127.0.0.2";
const SECOND_IP: &str = "127.0.0.3";
const DRIVER_IP: &str = "127.0.0.4";

/// Checks `node|ips` lines printed by the driver: each from the expected node, listening
/// on that node's IP only.
fn assert_on(run: &DriverRun, key: &str, node: &str, ip: &str) {
    let lines = run.all(key);
    assert!(!lines.is_empty(), "no {key} lines\n{}", run.stdout);
    for line in lines {
        let (got_node, ips) = line.split_once('|').expect("node|ips");
        assert_eq!(got_node, node, "{key}: ran on the wrong node");
        assert_eq!(ips, ip, "{key}: a worker of {node} listens on {ips}");
    }
}

/// `text` without terminal colour sequences (`ESC [ ... m`), as a log reader sees it.
fn without_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn a_remote_driver_uses_nodes_on_distinct_addresses() {
    let mut cluster = Cluster::start(Options {
        head_cpus: 2.0,
        head_resources: vec![("a", 10.0)],
        head_bind_host: Some(HEAD_IP.into()),
        object_store_memory: 512 << 20,
        ..Options::default()
    });
    let second = cluster.add_node_on(SECOND_IP, 2.0, &[("b", 10.0)], false, 512 << 20);
    let (head_id, second_id) = (
        cluster.nodes[0].node_id.to_string(),
        cluster.nodes[second].node_id.to_string(),
    );
    assert!(cluster.nodes[0].address.starts_with(&format!("{HEAD_IP}:")));
    assert!(
        cluster.nodes[second]
            .address
            .starts_with(&format!("{SECOND_IP}:"))
    );
    let advertised: Vec<String> = cluster
        .nodes_info()
        .into_iter()
        .filter_map(|n| n.address.map(|a| a.host))
        .collect();
    assert_eq!(advertised.len(), 2, "{advertised:?}");
    assert!(advertised.iter().all(|h| h == HEAD_IP || h == SECOND_IP));

    let child = cluster
        .driver_command(Path::new(DRIVER), &["addresses"])
        .env("MINIRAY_NODE_IP", DRIVER_IP)
        .env("MINIRAY_LOG", "miniray=info")
        .spawn()
        .expect("driver starts");
    let run = DriverRun::wait(child, DRIVER_DEADLINE);
    run.assert_success();

    // The home raylet of a driver with none on its IP is the head, reached over the network.
    assert_eq!(run.get("driver_node"), head_id);
    let log = without_ansi(&run.stderr);
    assert!(
        log.contains("remote=true") && log.contains(&format!("node_ip={DRIVER_IP}")),
        "the driver did not run in remote mode on {DRIVER_IP}\n{}",
        run.stderr
    );
    assert_eq!(
        run.get("driver_listeners"),
        DRIVER_IP,
        "the driver listens on its own IP"
    );
    assert_on(&run, "task_a", &head_id, HEAD_IP);
    assert_on(&run, "task_b", &second_id, SECOND_IP);
    assert_on(&run, "actor_a", &head_id, HEAD_IP);
    assert_on(&run, "actor_b", &second_id, SECOND_IP);
    for size in ["small", "big"] {
        for check in [
            "read_a",
            "read_b",
            "back_a",
            "back_b",
            "made_b",
            "driver_get",
        ] {
            assert_eq!(
                run.get(&format!("{size}_{check}")),
                "true",
                "{size}_{check}"
            );
        }
    }
    assert_eq!(run.get("actor_a_checksum"), "true");
    assert_eq!(run.get("actor_b_checksum"), "true");

    // The driver advertised its own IP (the GCS probes it there, and so do raylets).
    let jobs = cluster.jobs().expect("job table");
    let drivers: Vec<String> = jobs
        .iter()
        .filter_map(|j| j.driver.as_ref().map(|d| d.host.clone()))
        .collect();
    assert_eq!(drivers, vec![DRIVER_IP.to_string()]);

    let left = cluster.stop();
    assert!(left.is_empty(), "segments left behind: {left:?}");
}
