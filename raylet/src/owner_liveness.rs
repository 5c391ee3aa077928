//! Probes the owners of this node's primary copies and releases what a dead owner held.
//!
//! A local worker's death is known at once (the pool reaps it); a driver, or an owner on
//! another node, is only known to be gone by not answering. Every `PROBE_INTERVAL` each
//! owner with a primary copy here gets a `core_worker_answers` probe.
//!
//! Invariants:
//! - an owner is declared gone only after `FAILURES_BEFORE_GONE` failed probes in a row
//!   spanning at least `MIN_SILENCE`, so one slow answer from a busy process frees nothing;
//! - an owner whose address is loopback on another node is never probed from a node with a
//!   real address (the probe would reach this machine, not the owner); its copies go when
//!   its job ends. An owner with a real address (a remote driver, say) is probed wherever
//!   it runs;
//! - probes run concurrently, each bounded by `PROBE_TIMEOUT`, so one hung owner does not
//!   delay the others.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use miniray_common::auth::{AuthedChannel, connect_lazy};
use miniray_common::probe::core_worker_answers;
use miniray_common::{WorkerId, net};
use miniray_proto::WorkerAddress;
use miniray_proto::core_worker_client::CoreWorkerClient;
use tokio::time::Instant;

use crate::node::Node;

const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const FAILURES_BEFORE_GONE: u32 = 3;
const MIN_SILENCE: Duration = Duration::from_secs(3);

/// Failed probes of one owner since it last answered.
struct Silence {
    since: Instant,
    failures: u32,
}

pub(crate) async fn run(node: Arc<Node>) {
    let mut shutdown = node.shutdown_signal();
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut silent: HashMap<WorkerId, Silence> = HashMap::new();
    let mut clients: HashMap<WorkerId, CoreWorkerClient<AuthedChannel>> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let owners: Vec<(WorkerId, WorkerAddress)> = node
            .ownership
            .lock()
            .owners()
            .into_iter()
            .filter(|(_, a)| probeable(&node, a))
            .collect();
        silent.retain(|w, _| owners.iter().any(|(o, _)| o == w));
        clients.retain(|w, _| owners.iter().any(|(o, _)| o == w));
        let probes = owners.into_iter().filter_map(|(worker, address)| {
            let client = match clients.get(&worker) {
                Some(c) => c.clone(),
                None => {
                    let endpoint = miniray_common::net::host_port(&address.host, address.port);
                    match connect_lazy(&endpoint, &node.cfg.token) {
                        Ok(ch) => {
                            let c = CoreWorkerClient::new(ch);
                            clients.insert(worker, c.clone());
                            c
                        }
                        Err(e) => {
                            tracing::debug!(owner = %worker, %endpoint, error = %e, "bad owner address");
                            return None;
                        }
                    }
                }
            };
            Some(async move { (worker, core_worker_answers(client, PROBE_TIMEOUT).await) })
        });
        let results = futures::future::join_all(probes).await;
        let now = Instant::now();
        for (worker, answered) in results {
            if answered {
                silent.remove(&worker);
                continue;
            }
            let s = silent.entry(worker).or_insert(Silence {
                since: now,
                failures: 0,
            });
            s.failures += 1;
            tracing::debug!(owner = %worker, failures = s.failures, "owner did not answer a probe");
            if s.failures >= FAILURES_BEFORE_GONE && now.duration_since(s.since) >= MIN_SILENCE {
                silent.remove(&worker);
                clients.remove(&worker);
                node.release_owner(worker, "owner stopped answering");
            }
        }
    }
}

/// Whether a probe of `address` from this node reaches the owner itself.
fn probeable(node: &Node, address: &WorkerAddress) -> bool {
    if address.node_id == node.node_id.as_bytes() {
        return true;
    }
    owner_reachable_from(&node.address.host, &address.host)
}

/// Whether an owner advertising `owner_host` (on another node) is reached by a probe from a
/// node advertising `node_host`. A loopback owner is reached only from a node that is
/// itself on loopback: such a node is reachable from this machine alone, so the owner runs
/// here too. From a node with a real address the probe would reach the wrong machine.
fn owner_reachable_from(node_host: &str, owner_host: &str) -> bool {
    if net::is_unspecified(owner_host) {
        return false;
    }
    !net::is_loopback(owner_host) || net::is_loopback(node_host)
}

#[cfg(test)]
mod tests {
    use super::owner_reachable_from;

    #[test]
    fn loopback_owners_are_probed_only_from_loopback_nodes() {
        assert!(owner_reachable_from("10.0.0.2", "10.0.0.9"));
        assert!(owner_reachable_from("127.0.0.2", "10.0.0.9"));
        assert!(owner_reachable_from("127.0.0.2", "127.0.0.4"));
        assert!(!owner_reachable_from("10.0.0.2", "127.0.0.1"));
        assert!(!owner_reachable_from("10.0.0.2", "localhost"));
        assert!(!owner_reachable_from("127.0.0.2", "0.0.0.0"));
    }
}
