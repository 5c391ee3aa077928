//! `miniray status`: nodes, resources, queued and infeasible demand, actors.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use miniray_common::Resources;
use miniray_common::config;
use miniray_proto::gcs_client::GcsClient;
use miniray_proto::{ActorInfo, ActorState, GetClusterStatusRequest, NodeInfo, NodeState};
use serde::Serialize;

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Args)]
pub struct StatusArgs {
    /// `HOST:PORT` of the GCS (default: `MINIRAY_ADDRESS`, else the one cluster started on
    /// this machine).
    #[arg(long, env = "MINIRAY_ADDRESS")]
    address: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Serialize)]
struct NodeView {
    node_id: String,
    address: String,
    state: String,
    is_head: bool,
    total: BTreeMap<String, f64>,
    available: BTreeMap<String, f64>,
    object_store_used: u64,
    object_store_capacity: u64,
    num_workers: u32,
    num_leased_workers: u32,
    death_reason: String,
    /// Empty for a node started by hand (see `NodeInfo`).
    cloud_instance_id: String,
    node_type: String,
    idle_duration_ms: u64,
    busy_reasons: Vec<String>,
}

#[derive(Serialize)]
struct DemandView {
    shape: BTreeMap<String, f64>,
    count: u64,
}

#[derive(Serialize)]
struct ActorView {
    actor_id: String,
    class_name: String,
    name: String,
    state: String,
    node_id: String,
    num_restarts: u32,
    death_reason: String,
}

#[derive(Serialize)]
struct StatusView {
    session_name: String,
    gcs_address: String,
    nodes: Vec<NodeView>,
    total: BTreeMap<String, f64>,
    available: BTreeMap<String, f64>,
    demand: Vec<DemandView>,
    infeasible: Vec<DemandView>,
    jobs_running: usize,
    jobs_finished: usize,
    actors: Vec<ActorView>,
}

fn to_map(set: Option<&miniray_proto::ResourceSet>) -> BTreeMap<String, f64> {
    set.map(|s| s.amounts.iter().map(|(k, v)| (k.clone(), *v)).collect())
        .unwrap_or_default()
}

/// The GCS address: given, else the only cluster whose token file is on this machine.
fn resolve_address(given: Option<String>) -> anyhow::Result<String> {
    if let Some(a) = given.filter(|a| !a.is_empty()) {
        return Ok(a);
    }
    let dir = config::tmp_root().join("clusters");
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(stem) = name.strip_suffix(".token")
                && let Some((host, port)) = stem.rsplit_once('_')
            {
                found.push(format!("{}:{port}", host.replace('_', ".")));
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("no cluster found on this machine: pass --address or set MINIRAY_ADDRESS"),
        _ => bail!(
            "several clusters run on this machine ({}): pass --address",
            found.join(", ")
        ),
    }
}

pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let address = resolve_address(args.address)?;
    miniray_common::tls::install_from_env()?;
    let token = config::find_token(&address)
        .with_context(|| format!("no token for {address}: set MINIRAY_TOKEN"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reply = rt.block_on(async {
        let channel = miniray_common::auth::connect(&address, &token).await?;
        let mut gcs = GcsClient::new(channel);
        let reply = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            gcs.get_cluster_status(GetClusterStatusRequest {}),
        )
        .await
        .context("the GCS did not answer within 10 s")??;
        anyhow::Ok(reply.into_inner())
    })?;

    let mut total = Resources::new();
    let mut available = Resources::new();
    let mut demand: BTreeMap<String, DemandView> = BTreeMap::new();
    let mut infeasible: BTreeMap<String, DemandView> = BTreeMap::new();
    let mut nodes = Vec::new();
    for n in &reply.nodes {
        let alive = n.state == NodeState::Alive as i32;
        if alive {
            if let Some(t) = n.total.as_ref().and_then(|t| Resources::from_proto(t).ok()) {
                total.add(&t, None);
            }
            if let Some(a) = n
                .available
                .as_ref()
                .and_then(|a| Resources::from_proto(a).ok())
            {
                available.add(&a, None);
            }
            for d in &n.demand {
                let shape = to_map(d.shape.as_ref());
                let key = format!("{shape:?}");
                let table = if d.infeasible {
                    &mut infeasible
                } else {
                    &mut demand
                };
                table
                    .entry(key)
                    .or_insert(DemandView { shape, count: 0 })
                    .count += d.count;
            }
        }
        nodes.push(node_view(n));
    }
    let view = StatusView {
        session_name: reply.session_name,
        gcs_address: address,
        total: total.iter().map(|(k, v)| (k.to_string(), v)).collect(),
        available: available.iter().map(|(k, v)| (k.to_string(), v)).collect(),
        nodes,
        demand: demand.into_values().collect(),
        infeasible: infeasible.into_values().collect(),
        jobs_running: reply.jobs.iter().filter(|j| !j.finished).count(),
        jobs_finished: reply.jobs.iter().filter(|j| j.finished).count(),
        actors: reply.actors.iter().map(actor_view).collect(),
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&view)?),
        Format::Table => print_table(&view),
    }
    Ok(())
}

fn node_view(n: &NodeInfo) -> NodeView {
    let state = NodeState::try_from(n.state)
        .map(|s| s.as_str_name().to_string())
        .unwrap_or_else(|_| "UNKNOWN".into());
    NodeView {
        node_id: n
            .address
            .as_ref()
            .map(|a| hex_id(&a.node_id))
            .unwrap_or_default(),
        address: n
            .address
            .as_ref()
            .map(|a| miniray_common::net::host_port(&a.host, a.port))
            .unwrap_or_default(),
        state,
        is_head: n.is_head,
        total: to_map(n.total.as_ref()),
        available: to_map(n.available.as_ref()),
        object_store_used: n.object_store_used,
        object_store_capacity: n.object_store_capacity,
        num_workers: n.num_workers,
        num_leased_workers: n.num_leased_workers,
        death_reason: n.death_reason.clone(),
        cloud_instance_id: n.cloud_instance_id.clone(),
        node_type: n.node_type.clone(),
        idle_duration_ms: n.idle_duration_ms,
        busy_reasons: n.busy_reasons.clone(),
    }
}

fn actor_view(a: &ActorInfo) -> ActorView {
    ActorView {
        actor_id: hex_id(&a.actor_id),
        class_name: a.class_name.clone(),
        name: a.name.clone(),
        state: ActorState::try_from(a.state)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("ACTOR_STATE_")
                    .to_string()
            })
            .unwrap_or_else(|_| "UNKNOWN".into()),
        node_id: a
            .node
            .as_ref()
            .map(|n| hex_id(&n.node_id))
            .unwrap_or_default(),
        num_restarts: a.num_restarts,
        death_reason: a.death_reason.clone(),
    }
}

fn hex_id(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / f64::from(1u32 << 30))
}

fn print_table(v: &StatusView) {
    println!(
        "======== miniray cluster {} at {} ========",
        v.session_name, v.gcs_address
    );
    let alive = v.nodes.iter().filter(|n| n.state == "ALIVE").count();
    println!("Nodes: {alive} alive, {} dead", v.nodes.len() - alive);
    for n in &v.nodes {
        let role = if n.is_head { "head" } else { "worker" };
        let used: Vec<String> = n
            .total
            .iter()
            .map(|(k, t)| {
                let a = n.available.get(k).copied().unwrap_or(0.0);
                format!("{}/{t} {k}", t - a)
            })
            .collect();
        println!(
            "  {} {:<21} {:<6} {:<6} {}  store {}/{}  workers {} ({} leased){}",
            &n.node_id[..n.node_id.len().min(12)],
            n.address,
            n.state,
            role,
            used.join(", "),
            gib(n.object_store_used),
            gib(n.object_store_capacity),
            n.num_workers,
            n.num_leased_workers,
            if n.death_reason.is_empty() {
                String::new()
            } else {
                format!("  ({})", n.death_reason)
            }
        );
    }
    println!("Resources (used/total):");
    for (k, t) in &v.total {
        let a = v.available.get(k).copied().unwrap_or(0.0);
        println!("  {}/{t} {k}", t - a);
    }
    println!("Demand:");
    if v.demand.is_empty() {
        println!("  (no queued tasks)");
    }
    for d in &v.demand {
        println!("  {:?}: {} queued", d.shape, d.count);
    }
    println!("Infeasible demand:");
    if v.infeasible.is_empty() {
        println!("  (none)");
    }
    for d in &v.infeasible {
        println!(
            "  {:?}: {} (no node can ever provide this)",
            d.shape, d.count
        );
    }
    println!(
        "Jobs: {} running, {} finished",
        v.jobs_running, v.jobs_finished
    );
    let dead = v.actors.iter().filter(|a| a.state == "DEAD").count();
    println!("Actors: {} not dead, {dead} dead", v.actors.len() - dead);
    for a in v.actors.iter().filter(|a| a.state != "DEAD") {
        let name = if a.name.is_empty() { "-" } else { &a.name };
        println!(
            "  {} {:<16} {:<24} {:<16} node {} restarts {}",
            &a.actor_id[..a.actor_id.len().min(12)],
            name,
            a.class_name.rsplit("::").next().unwrap_or(&a.class_name),
            a.state,
            &a.node_id[..a.node_id.len().min(12)],
            a.num_restarts
        );
    }
}
