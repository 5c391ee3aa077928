//! The metrics that need more than one node, on a local cluster the microbenchmark starts
//! itself (whatever `MINIRAY_ADDRESS` says): a head and [`EXTRA_NODES`] more raylets, all
//! on loopback, each holding a resource that names it (`bench_node_<k>`), so a task can be
//! placed on a chosen node. The driver works through the head.
//!
//! - `inter_node_get_gigabytes`: a task on node 1 makes 1 GiB; once it is done, the driver
//!   times its `get_bytes` (the pull into the head's store, then a view of it, as Ray's
//!   `ray.get` of a numpy array reads it in place); GB/s.
//! - `broadcast_1gib_3_nodes_s`: the driver puts 1 GiB, then a task on each of nodes 1-3
//!   reads it in place (`get_bytes`, once pulled); seconds from submit until all three
//!   answered, lower is better (Ray's object-store broadcast release test, whose tasks take
//!   the array as a zero-copy argument).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::time::Instant;

use anyhow::Context;
use miniray::cluster::{DaemonSpec, GcsSpec, RayletSpec, spawn_daemon, stop_daemon};
use miniray::{InitOptions, NodeId, ObjectRef};
use miniray_common::Resources;
use miniray_common::config::{self, DEFAULT_NODE_TIMEOUT};

use super::Bench;

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

/// The resource only node `k` (1-based) has.
fn node_resource(k: usize) -> String {
    format!("bench_node_{k}")
}

/// A GCS and `1 + EXTRA_NODES` raylets, stopped (raylets first) when dropped.
struct LocalNodes {
    gcs: Child,
    raylets: Vec<Child>,
    gcs_address: String,
    token: String,
    session_dir: PathBuf,
}

impl LocalNodes {
    fn start() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding this program's executable")?;
        for _ in 0..=EXTRA_NODES {
            miniray_common::shm::check_fits(&miniray_common::shm::plasma_dir(), STORE_BYTES)
                .context("the multi-node metrics need 1.5 GiB of plasma per node")?;
        }
        let session_name = format!(
            "session_{}_{}_bench",
            miniray_common::time::now_ms(),
            std::process::id()
        );
        let session_dir = config::tmp_root().join(&session_name);
        let logs = session_dir.join("logs");
        let token = miniray_common::auth::generate_token();
        let gcs = spawn_daemon(
            &exe,
            &DaemonSpec::Gcs(GcsSpec {
                bind: SocketAddr::from(([127, 0, 0, 1], 0)),
                token: token.clone(),
                session_name,
                redis_address: None,
                node_timeout_ms: DEFAULT_NODE_TIMEOUT.as_millis() as u64,
                max_destroyed_actors: None,
                max_task_events: None,
                tls: None,
                metrics_port: None,
            }),
            &logs.join("gcs.err"),
            true,
        )
        .context("starting the GCS")?;
        let mut nodes = LocalNodes {
            gcs: gcs.child,
            raylets: Vec::new(),
            gcs_address: gcs.address,
            token,
            session_dir,
        };
        for k in 0..=EXTRA_NODES {
            let mut resources = Resources::new();
            if k > 0 {
                resources.set(node_resource(k), 1.0)?;
            }
            let raylet = spawn_daemon(
                &exe,
                &DaemonSpec::Raylet(RayletSpec {
                    gcs_address: nodes.gcs_address.clone(),
                    token: nodes.token.clone(),
                    bind_host: "127.0.0.1".into(),
                    port: 0,
                    node_id: NodeId::random(),
                    resources,
                    object_store_memory: STORE_BYTES,
                    prefault_object_store: false,
                    is_head: k == 0,
                    session_dir: nodes.session_dir.clone(),
                    plasma_dir: None,
                    tls: None,
                    cloud_instance_id: None,
                    node_type: None,
                    num_cpus: Some(1.0),
                    metrics_port: None,
                }),
                &logs.join(format!("raylet-{k}.err")),
                true,
            )
            .with_context(|| format!("starting raylet {k}"))?;
            nodes.raylets.push(raylet.child);
        }
        Ok(nodes)
    }
}

impl Drop for LocalNodes {
    fn drop(&mut self) {
        for raylet in &mut self.raylets {
            stop_daemon(raylet);
        }
        stop_daemon(&mut self.gcs);
        let _ = std::fs::remove_dir_all(&self.session_dir);
    }
}

/// Runs the multi-node metrics (those `--filter` lets through) on their own cluster; the
/// caller's connection must be shut down.
pub(super) fn run(b: &Bench<'_>) -> anyhow::Result<()> {
    let names = ["inter_node_get_gigabytes", "broadcast_1gib_3_nodes_s"];
    if !names.iter().any(|n| b.wanted(n)) {
        return Ok(());
    }
    let nodes = LocalNodes::start()?;
    miniray::init_with(
        InitOptions::new()
            .address(nodes.gcs_address.clone())
            .token(nodes.token.clone()),
    )
    .context("joining the multi-node cluster")?;
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
                .resource(node_resource(k), 1.0)
                .remote(Vec::<ObjectRef<Vec<u8>>>::new())
        })
        .collect::<miniray::Result<Vec<_>>>()?;
    miniray::get_all(&warm)?;

    b.time_each("inter_node_get_gigabytes", || {
        let made = filled_bytes::options()
            .resource(node_resource(1), 1.0)
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
                    .resource(node_resource(k), 1.0)
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
