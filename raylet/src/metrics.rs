//! The raylet's Prometheus metrics (`/metrics` on `RayletConfig::metrics_port`), read from
//! the node at each scrape: workers by state, leases queued, held, granted and spilled,
//! the object store's bytes and objects, transfers between nodes, the node's resources,
//! and the tasks it ran by function and state. Plus the RPC latency histograms every server records.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use miniray_common::metrics::prometheus_client::collector::Collector;
use miniray_common::metrics::prometheus_client::encoding::DescriptorEncoder;
use miniray_common::metrics::prometheus_client::registry::{Registry, Unit};
use miniray_common::metrics::{
    Labels, encode_counters as counters, encode_gauges as gauges, unlabelled,
};

use crate::node::Node;

/// The raylet's registry: the node's collector and the RPC histograms.
pub(crate) fn registry(node: Arc<Node>) -> Registry {
    let mut registry = Registry::default();
    miniray_common::metrics::register_rpc_metrics(&mut registry);
    registry.register_collector(Box::new(NodeCollector { node }));
    registry
}

struct NodeCollector {
    node: Arc<Node>,
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeCollector")
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let node = &self.node;
        let workers = node.pool.counts();
        gauges(
            &mut encoder,
            (
                "miniray_workers",
                "Worker processes of this node by state",
                None,
            ),
            [
                ("idle", workers.idle),
                ("leased", workers.leased),
                ("starting", workers.starting),
            ]
            .map(|(state, n)| (vec![("state", state.to_string())], f64::from(n))),
        )?;
        let (queued, held, total, available) = {
            let st = node.sched.lock();
            (
                st.scheduler.queue_len(),
                st.scheduler.num_leases(),
                st.scheduler.total().clone(),
                st.scheduler.available(),
            )
        };
        gauges(
            &mut encoder,
            (
                "miniray_leases_queued",
                "Lease requests waiting at this node",
                None,
            ),
            unlabelled(queued as f64),
        )?;
        gauges(
            &mut encoder,
            (
                "miniray_leases_active",
                "Leases this node has granted that are not returned",
                None,
            ),
            unlabelled(held as f64),
        )?;
        counters(
            &mut encoder,
            (
                "miniray_leases_granted",
                "Lease requests this node granted",
                None,
            ),
            unlabelled(node.leases_granted.load(Ordering::Relaxed)),
        )?;
        counters(
            &mut encoder,
            (
                "miniray_leases_spilled",
                "Lease requests this node sent to another node",
                None,
            ),
            unlabelled(node.leases_spilled.load(Ordering::Relaxed)),
        )?;
        let mut resources: Vec<(Labels, f64)> = Vec::new();
        for (name, amount) in total.iter() {
            resources.push((
                vec![("resource", name.to_string()), ("state", "total".into())],
                amount,
            ));
            resources.push((
                vec![
                    ("resource", name.to_string()),
                    ("state", "available".into()),
                ],
                available.get(name),
            ));
        }
        gauges(
            &mut encoder,
            (
                "miniray_node_resources",
                "This node's resources: its total and what is free",
                None,
            ),
            resources,
        )?;

        gauges(
            &mut encoder,
            (
                "miniray_object_store_used",
                "Bytes of the object store in use (sealed and unsealed objects)",
                Some(&Unit::Bytes),
            ),
            unlabelled(node.store.used() as f64),
        )?;
        gauges(
            &mut encoder,
            (
                "miniray_object_store_capacity",
                "Size of the object store",
                Some(&Unit::Bytes),
            ),
            unlabelled(node.store.capacity() as f64),
        )?;
        gauges(
            &mut encoder,
            (
                "miniray_object_store_objects",
                "Objects in the object store",
                None,
            ),
            unlabelled(node.store.num_objects() as f64),
        )?;
        counters(
            &mut encoder,
            (
                "miniray_tasks",
                "Tasks this node ran, by function and state: RUNNING counts those that started, \
                 FINISHED and FAILED those that ended so (from the workers' task events)",
                None,
            ),
            node.task_events
                .counts
                .snapshot()
                .into_iter()
                .map(|(function, state, n)| {
                    (
                        vec![("state", state.to_string()), ("function", function)],
                        n,
                    )
                }),
        )?;
        let transfers = node.objects.stats();
        counters(
            &mut encoder,
            (
                "miniray_objects_pulled",
                "Objects this node pulled from other nodes",
                None,
            ),
            unlabelled(transfers.pulls_started),
        )?;
        counters(
            &mut encoder,
            (
                "miniray_object_transfer",
                "Object bytes moved between this node and others, by direction",
                Some(&Unit::Bytes),
            ),
            [
                (
                    vec![("direction", "in".to_string())],
                    transfers.bytes_pulled,
                ),
                (
                    vec![("direction", "out".to_string())],
                    transfers.bytes_served,
                ),
            ],
        )?;
        Ok(())
    }
}
