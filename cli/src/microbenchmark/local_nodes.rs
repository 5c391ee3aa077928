//! The local clusters the benchmarks start for the metrics that need their own (several
//! nodes, or jobs coming and going on one cluster), whatever `MINIRAY_ADDRESS` says: a
//! [`LocalCluster`] whose raylets after the head each hold a resource that names it
//! (`bench_node_<k>`), so a task can be placed on a chosen node. Drivers join it through
//! the head.

use anyhow::Context;
use miniray::InitOptions;
use miniray::cluster::{LocalCluster, LocalNodeOptions};
use miniray_common::Resources;

/// The resource only node `k` (1-based, after the head) has.
pub(crate) fn node_resource(k: usize) -> String {
    format!("bench_node_{k}")
}

/// Starts a GCS and `count` raylets (the first is the head), each with `store_bytes` of
/// plasma and `cpus` CPUs. Their session, logs included, is removed when it stops.
pub(crate) fn start(count: usize, store_bytes: u64, cpus: f64) -> anyhow::Result<LocalCluster> {
    let nodes = (0..count)
        .map(|k| {
            let mut resources = Resources::new();
            if k > 0 {
                resources.set(node_resource(k), 1.0)?;
            }
            Ok(LocalNodeOptions {
                num_cpus: Some(cpus),
                resources,
                object_store_memory: Some(store_bytes),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    LocalCluster::start(&nodes, false)
        .with_context(|| format!("starting a local cluster of {count} nodes"))
}

/// Connects this process to `cluster` as a driver: a new job.
pub(crate) fn join(cluster: &LocalCluster) -> miniray::Result<()> {
    miniray::init_with(
        InitOptions::new()
            .address(cluster.gcs_address().to_owned())
            .token(cluster.token().to_owned()),
    )
}
