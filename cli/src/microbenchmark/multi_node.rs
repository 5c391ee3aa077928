//! The metrics that need more than one node, on a local cluster the microbenchmark starts
//! itself (whatever `MINIRAY_ADDRESS` says, see [`local_nodes`]): a head and
//! [`EXTRA_NODES`] more raylets. The driver works through the head.
//!
//! - `inter_node_get_gigabytes`: a task on node 1 makes 1 GiB; once it is done, the driver
//!   times its `get_bytes` (the pull into the head's store, then a view of it, as Ray's
//!   `ray.get` of a numpy array reads it in place); GB/s.
//! - `broadcast_1gib_3_nodes_s`: the driver puts 1 GiB, then a task on each of nodes 1-3
//!   reads it in place (`get_bytes`, once pulled); seconds from submit until all three
//!   answered, lower is better (Ray's object-store broadcast release test, whose tasks take
//!   the array as a zero-copy argument).

use std::time::Instant;

use anyhow::Context;
use miniray::ObjectRef;

use super::Bench;
use super::local_nodes;

const GIB: u64 = 1 << 30;

/// Raylets besides the head: three broadcast targets.
const EXTRA_NODES: usize = 3;

/// Plasma per node: one 1 GiB object and room to spare.
const STORE_BYTES: u64 = 3 * GIB / 2;

/// `n` bytes that are not all one value (a zero page would make reads free).
#[miniray::remote(num_cpus = 0)]
fn filled_bytes(n: u64) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// The length of the object behind `object[0]`, read in place once pulled here (passed
/// inside a vector, the reference is not resolved into a copy before the task runs).
#[miniray::remote(num_cpus = 0)]
fn byte_len(object: Vec<ObjectRef<Vec<u8>>>) -> u64 {
    object
        .first()
        .map(|r| miniray::get_bytes(r).map(|b| b.len() as u64))
        .transpose()
        .unwrap_or_else(|e| panic!("reading the object: {e}"))
        .unwrap_or(0)
}

/// Runs the multi-node metrics (those `--filter` lets through) on their own cluster; the
/// caller's connection must be shut down.
pub(super) fn run(b: &Bench<'_>) -> anyhow::Result<()> {
    let names = ["inter_node_get_gigabytes", "broadcast_1gib_3_nodes_s"];
    if !names.iter().any(|n| b.wanted(n)) {
        return Ok(());
    }
    let nodes = local_nodes::start(1 + EXTRA_NODES, STORE_BYTES, 1.0)?;
    local_nodes::join(&nodes).context("joining the multi-node cluster")?;
    let result = metrics(b);
    miniray::shutdown();
    drop(nodes);
    result
}

fn metrics(b: &Bench<'_>) -> anyhow::Result<()> {
    // A worker on each node first, so the broadcast times transfers, not worker starts.
    let warm = (1..=EXTRA_NODES)
        .map(|k| {
            byte_len::options()
                .resource(local_nodes::node_resource(k), 1.0)
                .remote(Vec::<ObjectRef<Vec<u8>>>::new())
        })
        .collect::<miniray::Result<Vec<_>>>()?;
    miniray::get_all(&warm)?;

    b.time_each("inter_node_get_gigabytes", || {
        let made = filled_bytes::options()
            .resource(local_nodes::node_resource(1), 1.0)
            .remote(GIB)?;
        miniray::wait(std::slice::from_ref(&made), 1, None)?;
        let start = Instant::now();
        let data = miniray::get_bytes(&made)?;
        let secs = start.elapsed().as_secs_f64();
        anyhow::ensure!(data.is_zero_copy(), "the pulled copy was not read in place");
        check_filled(&data)?;
        Ok(GIB as f64 / 1e9 / secs)
    })?;

    b.time_each("broadcast_1gib_3_nodes_s", || {
        let data: Vec<u8> = (0..GIB).map(|i| (i % 251) as u8).collect();
        let object: ObjectRef<Vec<u8>> = miniray::put_ref(&data)?;
        drop(data);
        let start = Instant::now();
        let lens = (1..=EXTRA_NODES)
            .map(|k| {
                byte_len::options()
                    .resource(local_nodes::node_resource(k), 1.0)
                    .remote(vec![object.clone()])
            })
            .collect::<miniray::Result<Vec<_>>>()?;
        let lens = miniray::get_all(&lens)?;
        let secs = start.elapsed().as_secs_f64();
        anyhow::ensure!(
            lens.iter().all(|&n| n == GIB),
            "a node read {lens:?} bytes, not {GIB}"
        );
        Ok(secs)
    })
}

/// The bytes `filled_bytes` makes, checked in a few places (all would cost a second).
fn check_filled(data: &[u8]) -> anyhow::Result<()> {
    anyhow::ensure!(
        data.len() as u64 == GIB,
        "got {} bytes, not {GIB}",
        data.len()
    );
    for i in [0, 1, 250, 251, GIB as usize / 2 + 3, GIB as usize - 1] {
        anyhow::ensure!(
            data[i] == (i % 251) as u8,
            "byte {i} is {}, expected {}",
            data[i],
            i % 251
        );
    }
    Ok(())
}
