//! The GCS's Prometheus metrics (`/metrics` on `GcsConfig::metrics_port`): the cluster as
//! its tables see it, read at each scrape: nodes and actors by state, cluster resources,
//! and the autoscaler's latest report (its nodes by type and state, pending launches).
//! Plus the RPC latency histograms every server records.

use std::collections::BTreeMap;
use std::sync::Arc;

use miniray_common::metrics::encode_gauges;
use miniray_common::metrics::prometheus_client::collector::Collector;
use miniray_common::metrics::prometheus_client::encoding::DescriptorEncoder;
use miniray_common::metrics::prometheus_client::registry::Registry;
use miniray_proto::{ActorState, GetMetricsTargetsReply, MetricsTarget, NodeState};

use crate::service::GcsState;

/// Autoscaler instance statuses, as the autoscaler reports them; each is always exported
/// (0 included) so a series does not vanish when its last node leaves it.
const INSTANCE_STATUSES: [&str; 5] = [
    "requested",
    "allocated",
    "running",
    "draining",
    "terminating",
];
/// Statuses of a launch that has not become a node yet.
const PENDING_STATUSES: [&str; 2] = ["requested", "allocated"];

/// The GCS's registry: its tables' collector and the RPC histograms.
pub(crate) fn registry(state: Arc<GcsState>) -> Registry {
    let mut registry = Registry::default();
    miniray_common::metrics::register_rpc_metrics(&mut registry);
    registry.register_collector(Box::new(TablesCollector { state }));
    registry
}

/// The cluster's `/metrics` endpoints: this GCS's (`own`; on the head node's IP when it
/// listens on every interface), those of the raylets that are not dead and those of the
/// drivers of running jobs that serve one; and the head node's IP.
pub(crate) fn targets(
    state: &GcsState,
    own: Option<std::net::SocketAddr>,
) -> GetMetricsTargetsReply {
    let nodes = state.node_infos();
    let head_host = nodes
        .iter()
        .find(|n| n.is_head && n.state != NodeState::Dead as i32)
        .and_then(|n| n.address.as_ref())
        .map(|a| a.host.clone())
        .unwrap_or_default();
    let mut targets = Vec::new();
    if let Some(own) = own {
        let host = if own.ip().is_unspecified() && !head_host.is_empty() {
            head_host.clone()
        } else {
            own.ip().to_string()
        };
        targets.push(MetricsTarget {
            address: miniray_common::net::host_port(&host, own.port()),
            component: "gcs".into(),
            node_id: Vec::new(),
            job_id: Vec::new(),
        });
    }
    for node in nodes {
        if node.state == NodeState::Dead as i32 || node.metrics_port == 0 {
            continue;
        }
        let Some(address) = &node.address else {
            continue;
        };
        targets.push(MetricsTarget {
            address: miniray_common::net::host_port(&address.host, node.metrics_port),
            component: "raylet".into(),
            node_id: address.node_id.clone(),
            job_id: Vec::new(),
        });
    }
    for (driver, port, job_id) in state.driver_metrics_endpoints() {
        targets.push(MetricsTarget {
            address: miniray_common::net::host_port(&driver.host, port),
            component: "driver".into(),
            node_id: driver.node_id,
            job_id,
        });
    }
    GetMetricsTargetsReply { targets, head_host }
}

struct TablesCollector {
    state: Arc<GcsState>,
}

impl std::fmt::Debug for TablesCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TablesCollector")
    }
}

impl Collector for TablesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let nodes = self.state.node_infos();
        let mut by_state: BTreeMap<&str, u64> = [("ALIVE", 0), ("DRAINING", 0), ("DEAD", 0)].into();
        let mut resources: BTreeMap<(String, &str), f64> = BTreeMap::new();
        for node in &nodes {
            let state = match NodeState::try_from(node.state) {
                Ok(NodeState::Alive) => "ALIVE",
                Ok(NodeState::Draining) => "DRAINING",
                _ => "DEAD",
            };
            *by_state.entry(state).or_default() += 1;
            if state == "DEAD" {
                continue;
            }
            for (what, set) in [("total", &node.total), ("available", &node.available)] {
                for (name, amount) in set.iter().flat_map(|s| s.amounts.iter()) {
                    *resources.entry((name.clone(), what)).or_default() += amount;
                }
            }
        }
        encode_gauges(
            &mut encoder,
            ("miniray_nodes", "Nodes in the cluster table by state", None),
            by_state
                .into_iter()
                .map(|(s, n)| (vec![("state", s.to_string())], n as f64)),
        )?;
        encode_gauges(
            &mut encoder,
            (
                "miniray_cluster_resources",
                "Resources of the alive and draining nodes, summed: their total and what is free",
                None,
            ),
            resources.into_iter().map(|((name, what), amount)| {
                (
                    vec![("resource", name), ("state", what.to_string())],
                    amount,
                )
            }),
        )?;

        let actor_counts = self.state.actors.state_counts();
        encode_gauges(
            &mut encoder,
            (
                "miniray_actors",
                "Actors in the actor table by state (dead ones as far as the table keeps them)",
                None,
            ),
            [
                ActorState::PendingCreation,
                ActorState::Alive,
                ActorState::Restarting,
                ActorState::Dead,
            ]
            .into_iter()
            .map(|s| {
                let name = s
                    .as_str_name()
                    .trim_start_matches("ACTOR_STATE_")
                    .to_string();
                let n = actor_counts.get(&(s as i32)).copied().unwrap_or(0);
                (vec![("state", name)], n as f64)
            }),
        )?;

        if let Some(report) = self.state.autoscaling_report() {
            let mut instances: BTreeMap<(String, String), u64> = BTreeMap::new();
            for t in report.node_types.iter().filter(|t| !t.is_head) {
                for status in INSTANCE_STATUSES {
                    instances.insert((t.name.clone(), status.to_string()), 0);
                }
            }
            for i in &report.instances {
                *instances
                    .entry((i.node_type.clone(), i.status.clone()))
                    .or_default() += 1;
            }
            let mut pending: BTreeMap<String, u64> = BTreeMap::new();
            for ((node_type, status), n) in &instances {
                let entry = pending.entry(node_type.clone()).or_default();
                if PENDING_STATUSES.contains(&status.as_str()) {
                    *entry += n;
                }
            }
            encode_gauges(
                &mut encoder,
                (
                    "miniray_autoscaler_nodes",
                    "Worker nodes the autoscaler manages, by node type and status",
                    None,
                ),
                instances.into_iter().map(|((node_type, status), n)| {
                    (vec![("node_type", node_type), ("state", status)], n as f64)
                }),
            )?;
            encode_gauges(
                &mut encoder,
                (
                    "miniray_autoscaler_pending_launches",
                    "Nodes the autoscaler launched that have not joined yet, by node type",
                    None,
                ),
                pending
                    .into_iter()
                    .map(|(node_type, n)| (vec![("node_type", node_type)], n as f64)),
            )?;
            encode_gauges(
                &mut encoder,
                (
                    "miniray_autoscaler_infeasible_demands",
                    "Resource demands no node type can hold, as of the autoscaler's last report",
                    None,
                ),
                [(
                    Vec::new(),
                    report.infeasible.iter().map(|d| d.count as f64).sum(),
                )],
            )?;
        }
        Ok(())
    }
}
