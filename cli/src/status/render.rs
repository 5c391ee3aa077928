//! What `miniray status` shows, as a pure function of the GCS's `GetClusterStatusReply`:
//! the JSON view and the table text (Ray's `ray status` layout when the cluster
//! autoscales).

use std::collections::BTreeMap;
use std::fmt::Write;

use miniray_common::Resources;
use miniray_proto::{
    ActorInfo, ActorState, AutoscalingState, ClusterResourceState, GetClusterStatusReply, NodeInfo,
    NodeState, ResourceDemandCount, ResourceSet,
};
use serde::Serialize;

/// Instance statuses of a node that has been asked for and has not joined yet.
const LAUNCHING: [&str; 2] = ["requested", "allocated"];

/// A node's type as status shows it when the raylet reported none.
const NO_TYPE: &str = "(no type)";

#[derive(Debug, Serialize)]
pub struct NodeView {
    pub node_id: String,
    pub address: String,
    pub state: String,
    pub is_head: bool,
    /// The autoscaler node type (the head's from the config when the raylet has none);
    /// empty for a node started by hand.
    pub node_type: String,
    pub cloud_instance_id: String,
    pub total: BTreeMap<String, f64>,
    pub available: BTreeMap<String, f64>,
    pub object_store_used: u64,
    pub object_store_capacity: u64,
    pub num_workers: u32,
    pub num_leased_workers: u32,
    /// 0 while busy.
    pub idle_duration_ms: u64,
    pub busy_reasons: Vec<String>,
    /// Live actors hosted here (`Class "name" (id)`): an actor keeps its node busy for life.
    pub actors: Vec<String>,
    pub death_reason: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct DemandView {
    pub shape: BTreeMap<String, f64>,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct ActorView {
    pub actor_id: String,
    pub class_name: String,
    pub name: String,
    pub state: String,
    pub node_id: String,
    pub num_restarts: u32,
    pub death_reason: String,
}

#[derive(Debug, Serialize)]
pub struct NodeTypeView {
    pub name: String,
    pub resources: BTreeMap<String, f64>,
    pub min_workers: u32,
    pub max_workers: u32,
    pub is_head: bool,
}

#[derive(Debug, Serialize)]
pub struct IdleNodeView {
    pub node_id: String,
    pub node_type: String,
    pub idle_ms: u64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct PendingView {
    pub node_type: String,
    pub status: String,
    pub count: usize,
}

#[derive(Debug, Serialize)]
pub struct InstanceView {
    pub instance_id: String,
    pub node_type: String,
    pub status: String,
    pub status_since_ms: u64,
    pub node_id: String,
}

#[derive(Debug, Serialize)]
pub struct FailureView {
    pub node_type: String,
    pub instance_id: String,
    pub message: String,
    pub time_ms: u64,
}

/// The autoscaler's side of the status, in Ray's terms.
#[derive(Debug, Serialize)]
pub struct AutoscalerView {
    pub max_workers: u32,
    pub node_types: Vec<NodeTypeView>,
    /// Alive nodes that are not idle, counted by node type (the head and nodes started by
    /// hand included).
    pub active: BTreeMap<String, usize>,
    pub idle: Vec<IdleNodeView>,
    pub draining: Vec<IdleNodeView>,
    /// Instances launched that have not joined, by node type and status.
    pub pending: Vec<PendingView>,
    pub instances: Vec<InstanceView>,
    pub recent_failures: Vec<FailureView>,
    pub recent_decisions: Vec<String>,
    /// When the autoscaler reported this (Unix milliseconds).
    pub reported_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct StatusView {
    pub session_name: String,
    pub gcs_address: String,
    pub nodes: Vec<NodeView>,
    /// Summed over alive (and draining) nodes.
    pub total: BTreeMap<String, f64>,
    pub available: BTreeMap<String, f64>,
    /// Queued lease requests by shape.
    pub demand: Vec<DemandView>,
    /// Actors waiting for a node, by shape.
    pub pending_actors: Vec<DemandView>,
    /// Demand no node (type) can ever provide.
    pub infeasible: Vec<DemandView>,
    /// The `request_resources` floor, by shape.
    pub requested: Vec<DemandView>,
    pub jobs_running: usize,
    pub jobs_finished: usize,
    pub actors: Vec<ActorView>,
    /// Absent (null) when the cluster does not autoscale.
    pub autoscaler: Option<AutoscalerView>,
    /// The time status was taken (Unix milliseconds), which ages in the table are from.
    pub now_ms: u64,
}

fn to_map(set: Option<&ResourceSet>) -> BTreeMap<String, f64> {
    set.map(|s| s.amounts.iter().map(|(k, v)| (k.clone(), *v)).collect())
        .unwrap_or_default()
}

fn hex_id(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn is_up(n: &NodeInfo) -> bool {
    n.state == NodeState::Alive as i32 || n.state == NodeState::Draining as i32
}

/// Adds `count` of `shape` to `table`, keyed by the shape's canonical text.
fn add_demand(table: &mut BTreeMap<String, DemandView>, shape: Option<&ResourceSet>, count: u64) {
    let shape = to_map(shape);
    let key = shape_text(&shape);
    table
        .entry(key)
        .or_insert(DemandView { shape, count: 0 })
        .count += count;
}

fn demand_counts(counts: &[ResourceDemandCount]) -> Vec<DemandView> {
    let mut table = BTreeMap::new();
    for d in counts {
        add_demand(&mut table, d.shape.as_ref(), d.count);
    }
    table.into_values().collect()
}

/// `{CPU: 1, GPU: 1}`, as the autoscaler's reasons write shapes.
fn shape_text(shape: &BTreeMap<String, f64>) -> String {
    Resources::from_pairs(shape.iter().map(|(k, v)| (k.clone(), *v)))
        .map(|r| r.to_string())
        // A shape that is not valid resources is still shown, as given.
        .unwrap_or_else(|_| format!("{shape:?}"))
}

/// Builds the view of `reply`, taken at `now_ms`.
pub fn build(reply: &GetClusterStatusReply, gcs_address: &str, now_ms: u64) -> StatusView {
    let head_type = reply.autoscaler.as_ref().and_then(|a| {
        a.node_types
            .iter()
            .find(|t| t.is_head)
            .map(|t| t.name.clone())
    });
    let actors_by_node = live_actors_by_node(&reply.actors);

    let mut total = Resources::new();
    let mut available = Resources::new();
    let mut queued = BTreeMap::new();
    let mut node_infeasible = BTreeMap::new();
    let mut nodes = Vec::new();
    for n in &reply.nodes {
        if is_up(n) {
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
                let table = if d.infeasible {
                    &mut node_infeasible
                } else {
                    &mut queued
                };
                add_demand(table, d.shape.as_ref(), d.count);
            }
        }
        nodes.push(node_view(n, head_type.as_deref(), &actors_by_node));
    }

    let infeasible = match &reply.autoscaler {
        Some(a) => demand_counts(&a.infeasible),
        None => node_infeasible.into_values().collect(),
    };
    let mut demand: Vec<DemandView> = queued.into_values().collect();
    let (mut pending_actors, requested) = match &reply.resource_state {
        Some(rs) => (demand_counts(&rs.pending_actors), requested(rs)),
        None => (Vec::new(), Vec::new()),
    };
    if reply.autoscaler.is_some() {
        // What the autoscaler found infeasible is shown there, not as waiting as well.
        for d in &infeasible {
            let left = take(&mut demand, &d.shape, d.count);
            take(&mut pending_actors, &d.shape, left);
        }
    }
    let autoscaler = reply
        .autoscaler
        .as_ref()
        .map(|a| autoscaler_view(a, &nodes));

    StatusView {
        session_name: reply.session_name.clone(),
        gcs_address: gcs_address.to_string(),
        total: total.iter().map(|(k, v)| (k.to_string(), v)).collect(),
        available: available.iter().map(|(k, v)| (k.to_string(), v)).collect(),
        nodes,
        demand,
        pending_actors,
        infeasible,
        requested,
        jobs_running: reply.jobs.iter().filter(|j| !j.finished).count(),
        jobs_finished: reply.jobs.iter().filter(|j| j.finished).count(),
        actors: reply.actors.iter().map(actor_view).collect(),
        autoscaler,
        now_ms,
    }
}

/// Takes up to `count` of `shape` out of `views` (dropping emptied entries); returns how
/// many were not there.
fn take(views: &mut Vec<DemandView>, shape: &BTreeMap<String, f64>, count: u64) -> u64 {
    let mut left = count;
    for v in views.iter_mut().filter(|v| &v.shape == shape) {
        let n = v.count.min(left);
        v.count -= n;
        left -= n;
    }
    views.retain(|v| v.count > 0);
    left
}

fn requested(rs: &ClusterResourceState) -> Vec<DemandView> {
    let mut table = BTreeMap::new();
    for bundle in &rs.constraint {
        add_demand(&mut table, Some(bundle), 1);
    }
    table.into_values().collect()
}

/// Alive actors by the hex id of their node, each as `Class "name" (id)`.
fn live_actors_by_node(actors: &[ActorInfo]) -> BTreeMap<String, Vec<String>> {
    let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in actors {
        if a.state != ActorState::Alive as i32 {
            continue;
        }
        let Some(node) = a.node.as_ref() else {
            continue;
        };
        let class = a.class_name.rsplit("::").next().unwrap_or(&a.class_name);
        let id = hex_id(&a.actor_id);
        let label = if a.name.is_empty() {
            format!("{class} ({})", short(&id))
        } else {
            format!("{class} {:?} ({})", a.name, short(&id))
        };
        by_node
            .entry(hex_id(&node.node_id))
            .or_default()
            .push(label);
    }
    by_node
}

fn node_view(
    n: &NodeInfo,
    head_type: Option<&str>,
    actors_by_node: &BTreeMap<String, Vec<String>>,
) -> NodeView {
    let state = NodeState::try_from(n.state)
        .map(|s| s.as_str_name().to_string())
        .unwrap_or_else(|_| "UNKNOWN".into());
    let node_id = n
        .address
        .as_ref()
        .map(|a| hex_id(&a.node_id))
        .unwrap_or_default();
    let node_type = match (n.node_type.is_empty(), n.is_head, head_type) {
        (true, true, Some(t)) => t.to_string(),
        _ => n.node_type.clone(),
    };
    NodeView {
        actors: actors_by_node.get(&node_id).cloned().unwrap_or_default(),
        node_id,
        address: n
            .address
            .as_ref()
            .map(|a| miniray_common::net::host_port(&a.host, a.port))
            .unwrap_or_default(),
        state,
        is_head: n.is_head,
        node_type,
        cloud_instance_id: n.cloud_instance_id.clone(),
        total: to_map(n.total.as_ref()),
        available: to_map(n.available.as_ref()),
        object_store_used: n.object_store_used,
        object_store_capacity: n.object_store_capacity,
        num_workers: n.num_workers,
        num_leased_workers: n.num_leased_workers,
        idle_duration_ms: n.idle_duration_ms,
        busy_reasons: n.busy_reasons.clone(),
        death_reason: n.death_reason.clone(),
    }
}

fn type_label(node_type: &str) -> String {
    if node_type.is_empty() {
        NO_TYPE.to_string()
    } else {
        node_type.to_string()
    }
}

fn autoscaler_view(a: &AutoscalingState, nodes: &[NodeView]) -> AutoscalerView {
    let mut active: BTreeMap<String, usize> = BTreeMap::new();
    let mut idle = Vec::new();
    let mut draining = Vec::new();
    for n in nodes {
        let entry = || IdleNodeView {
            node_id: n.node_id.clone(),
            node_type: type_label(&n.node_type),
            idle_ms: n.idle_duration_ms,
        };
        match n.state.as_str() {
            "DRAINING" => draining.push(entry()),
            "ALIVE" if n.idle_duration_ms > 0 => idle.push(entry()),
            "ALIVE" => *active.entry(type_label(&n.node_type)).or_insert(0) += 1,
            _ => {}
        }
    }
    // Longest idle first: the next to go.
    idle.sort_by(|x, y| y.idle_ms.cmp(&x.idle_ms).then(x.node_id.cmp(&y.node_id)));

    let mut pending: BTreeMap<(String, String), usize> = BTreeMap::new();
    for i in &a.instances {
        if LAUNCHING.contains(&i.status.as_str()) {
            *pending
                .entry((i.node_type.clone(), i.status.clone()))
                .or_insert(0) += 1;
        }
    }
    AutoscalerView {
        max_workers: a.max_workers,
        node_types: a
            .node_types
            .iter()
            .map(|t| NodeTypeView {
                name: t.name.clone(),
                resources: to_map(t.resources.as_ref()),
                min_workers: t.min_workers,
                max_workers: t.max_workers,
                is_head: t.is_head,
            })
            .collect(),
        active,
        idle,
        draining,
        pending: pending
            .into_iter()
            .map(|((node_type, status), count)| PendingView {
                node_type,
                status,
                count,
            })
            .collect(),
        instances: a
            .instances
            .iter()
            .map(|i| InstanceView {
                instance_id: i.instance_id.clone(),
                node_type: i.node_type.clone(),
                status: i.status.clone(),
                status_since_ms: i.status_since_ms,
                node_id: hex_id(&i.node_id),
            })
            .collect(),
        recent_failures: a
            .recent_failures
            .iter()
            .map(|f| FailureView {
                node_type: f.node_type.clone(),
                instance_id: f.instance_id.clone(),
                message: f.message.clone(),
                time_ms: f.time_ms,
            })
            .collect(),
        recent_decisions: a.recent_decisions.clone(),
        reported_ms: a.time_ms,
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

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// `35 s`, `4 min 10 s`, `2 h 5 min`.
fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// How many of what: `4 queued tasks`, `1 pending actor`.
fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

const RULE: &str = "--------------------------------------------------------";

/// The table: nodes, then (when the cluster autoscales) Ray's node status, then resources
/// and demand, jobs and actors.
pub fn table(v: &StatusView) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_table(&mut out, v);
    out
}

fn write_table(out: &mut String, v: &StatusView) -> std::fmt::Result {
    writeln!(
        out,
        "======== miniray cluster {} at {} ========",
        v.session_name, v.gcs_address
    )?;
    write_nodes(out, v)?;
    if let Some(a) = &v.autoscaler {
        writeln!(out)?;
        write_node_status(out, v, a)?;
        writeln!(out)?;
        writeln!(out, "Resources")?;
        writeln!(out, "{RULE}")?;
        writeln!(out, "Usage:")?;
        write_usage(out, v, " ")?;
    } else {
        writeln!(out, "Resources (used/total):")?;
        write_usage(out, v, "  ")?;
    }
    write_demands(out, v)?;
    if let Some(a) = &v.autoscaler {
        writeln!(out, "Recent decisions:")?;
        if a.recent_decisions.is_empty() {
            writeln!(out, " (none)")?;
        }
        for d in a.recent_decisions.iter().rev().take(5).rev() {
            writeln!(out, " {d}")?;
        }
        writeln!(out)?;
    }
    write_jobs_and_actors(out, v)
}

fn write_nodes(out: &mut String, v: &StatusView) -> std::fmt::Result {
    let alive = v.nodes.iter().filter(|n| n.state == "ALIVE").count();
    let draining = v.nodes.iter().filter(|n| n.state == "DRAINING").count();
    let dead = v.nodes.len() - alive - draining;
    if draining > 0 {
        writeln!(
            out,
            "Nodes: {alive} alive, {draining} draining, {dead} dead"
        )?;
    } else {
        writeln!(out, "Nodes: {alive} alive, {dead} dead")?;
    }
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
        let node_type = if n.node_type.is_empty() {
            String::new()
        } else {
            format!(" type {}", n.node_type)
        };
        writeln!(
            out,
            "  {} {:<21} {:<8} {:<6} {}  store {}/{}  workers {} ({} leased){node_type}{}",
            short(&n.node_id),
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
        )?;
    }
    Ok(())
}

fn write_node_status(out: &mut String, v: &StatusView, a: &AutoscalerView) -> std::fmt::Result {
    writeln!(out, "======== Autoscaler status ========")?;
    writeln!(out, "Node status")?;
    writeln!(out, "{RULE}")?;
    writeln!(out, "Active:")?;
    if a.active.is_empty() {
        writeln!(out, " (no active nodes)")?;
    }
    for (t, count) in &a.active {
        writeln!(out, " {count} {t}")?;
    }
    // Why each active node is busy; actors by name, since they hold a node for life.
    for n in v
        .nodes
        .iter()
        .filter(|n| n.state == "ALIVE" && n.idle_duration_ms == 0)
    {
        let mut why = n.busy_reasons.clone();
        if !n.actors.is_empty() {
            why.push(format!("actor {}", n.actors.join(", actor ")));
        }
        if !why.is_empty() {
            writeln!(
                out,
                "  {} {}: {}",
                short(&n.node_id),
                type_label(&n.node_type),
                why.join("; ")
            )?;
        }
    }
    writeln!(out, "Idle:")?;
    if a.idle.is_empty() {
        writeln!(out, " (no idle nodes)")?;
    }
    for n in &a.idle {
        writeln!(
            out,
            " {} {}: idle {}",
            n.node_type,
            short(&n.node_id),
            age(n.idle_ms)
        )?;
    }
    if !a.draining.is_empty() {
        writeln!(out, "Draining:")?;
        for n in &a.draining {
            writeln!(out, " {} {}", n.node_type, short(&n.node_id))?;
        }
    }
    writeln!(out, "Pending:")?;
    if a.pending.is_empty() {
        writeln!(out, " (no pending nodes)")?;
    }
    for p in &a.pending {
        writeln!(out, " {}, {} {}", p.node_type, p.count, p.status)?;
    }
    writeln!(out, "Recent failures:")?;
    if a.recent_failures.is_empty() {
        writeln!(out, " (no failures)")?;
    }
    for f in &a.recent_failures {
        let instance = if f.instance_id.is_empty() {
            String::new()
        } else {
            format!(" {}", f.instance_id)
        };
        writeln!(
            out,
            " {}{instance}: {} ({} ago)",
            f.node_type,
            f.message,
            age(v.now_ms.saturating_sub(f.time_ms))
        )?;
    }
    Ok(())
}

fn write_usage(out: &mut String, v: &StatusView, indent: &str) -> std::fmt::Result {
    for (k, t) in &v.total {
        let a = v.available.get(k).copied().unwrap_or(0.0);
        writeln!(out, "{indent}{}/{t} {k}", t - a)?;
    }
    if v.autoscaler.is_some() {
        let up = v.nodes.iter().filter(|n| n.state != "DEAD");
        let (used, cap) = up.fold((0, 0), |(u, c), n| {
            (u + n.object_store_used, c + n.object_store_capacity)
        });
        writeln!(out, "{indent}{}/{} object store", gib(used), gib(cap))?;
    }
    Ok(())
}

fn write_demands(out: &mut String, v: &StatusView) -> std::fmt::Result {
    writeln!(out, "Demands:")?;
    if v.demand.is_empty() && v.pending_actors.is_empty() {
        writeln!(out, " (no resource demands)")?;
    }
    for d in &v.demand {
        let what = plural(d.count, "queued task", "queued tasks");
        writeln!(out, " {}: {what}", shape_text(&d.shape))?;
    }
    for d in &v.pending_actors {
        let what = plural(d.count, "pending actor", "pending actors");
        writeln!(out, " {}: {what}", shape_text(&d.shape))?;
    }
    writeln!(out, "Infeasible:")?;
    if v.infeasible.is_empty() {
        writeln!(out, " (none)")?;
    }
    let never = if v.autoscaler.is_some() {
        "no node type can ever provide this"
    } else {
        "no node can ever provide this"
    };
    for d in &v.infeasible {
        writeln!(out, " {}: {} ({never})", shape_text(&d.shape), d.count)?;
    }
    writeln!(out, "Requested:")?;
    if v.requested.is_empty() {
        writeln!(out, " (no request_resources)")?;
    }
    for d in &v.requested {
        let what = plural(d.count, "bundle", "bundles");
        writeln!(out, " {}: {what}", shape_text(&d.shape))?;
    }
    Ok(())
}

fn write_jobs_and_actors(out: &mut String, v: &StatusView) -> std::fmt::Result {
    writeln!(
        out,
        "Jobs: {} running, {} finished",
        v.jobs_running, v.jobs_finished
    )?;
    let dead = v.actors.iter().filter(|a| a.state == "DEAD").count();
    writeln!(
        out,
        "Actors: {} not dead, {dead} dead",
        v.actors.len() - dead
    )?;
    for a in v.actors.iter().filter(|a| a.state != "DEAD") {
        let name = if a.name.is_empty() { "-" } else { &a.name };
        writeln!(
            out,
            "  {} {:<16} {:<24} {:<16} node {} restarts {}",
            short(&a.actor_id),
            name,
            a.class_name.rsplit("::").next().unwrap_or(&a.class_name),
            a.state,
            short(&a.node_id),
            a.num_restarts
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use miniray_proto::{
        AutoscalerFailure, AutoscalerInstance, NodeAddress, NodeTypeInfo, ResourceDemand,
    };

    fn set(pairs: &[(&str, f64)]) -> ResourceSet {
        ResourceSet {
            amounts: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    fn node(
        id: u8,
        head: bool,
        node_type: &str,
        total: &[(&str, f64)],
        free: &[(&str, f64)],
    ) -> NodeInfo {
        NodeInfo {
            address: Some(NodeAddress {
                node_id: vec![id; 16],
                host: format!("10.0.0.{id}"),
                port: 7000,
            }),
            state: NodeState::Alive as i32,
            total: Some(set(total)),
            available: Some(set(free)),
            is_head: head,
            node_type: node_type.into(),
            object_store_capacity: 1 << 30,
            ..Default::default()
        }
    }

    fn counts(shape: &[(&str, f64)], count: u64) -> ResourceDemandCount {
        ResourceDemandCount {
            shape: Some(set(shape)),
            count,
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    /// Asserts `expected` appear in the text as consecutive lines.
    fn assert_block(text: &str, expected: &[&str]) {
        let all = lines(text);
        let found = all.windows(expected.len()).any(|w| w == expected);
        assert!(found, "{expected:#?}\nnot found in:\n{text}");
    }

    const T0: u64 = 1_800_000_000_000;

    /// A cluster that does not autoscale: today's output, demand from the nodes.
    fn plain_reply() -> GetClusterStatusReply {
        let mut head = node(1, true, "", &[("CPU", 2.0)], &[("CPU", 1.0)]);
        head.demand = vec![
            ResourceDemand {
                shape: Some(set(&[("CPU", 1.0)])),
                count: 4,
                infeasible: false,
            },
            ResourceDemand {
                shape: Some(set(&[("GPU", 1.0)])),
                count: 1,
                infeasible: true,
            },
        ];
        let worker = node(2, false, "", &[("CPU", 1.0)], &[("CPU", 1.0)]);
        GetClusterStatusReply {
            nodes: vec![head, worker],
            session_name: "s1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn without_an_autoscaler_the_table_is_todays_plus_demands() {
        let v = build(&plain_reply(), "10.0.0.1:6379", T0);
        let text = table(&v);
        assert!(text.contains("Nodes: 2 alive, 0 dead"), "{text}");
        assert!(!text.contains("Autoscaler status"), "{text}");
        assert_block(&text, &["Resources (used/total):", "  1/3 CPU"]);
        assert_block(
            &text,
            &[
                "Demands:",
                " {CPU: 1}: 4 queued tasks",
                "Infeasible:",
                " {GPU: 1}: 1 (no node can ever provide this)",
                "Requested:",
                " (no request_resources)",
            ],
        );
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["autoscaler"], serde_json::Value::Null);
        assert_eq!(json["total"]["CPU"], 3.0);
        assert_eq!(json["demand"][0]["count"], 4);
        assert_eq!(json["infeasible"][0]["shape"]["GPU"], 1.0);
    }

    #[test]
    fn no_demand_says_so() {
        let mut reply = plain_reply();
        reply.nodes[0].demand.clear();
        reply.resource_state = Some(ClusterResourceState::default());
        let text = table(&build(&reply, "a:1", T0));
        assert_block(
            &text,
            &[
                "Demands:",
                " (no resource demands)",
                "Infeasible:",
                " (none)",
            ],
        );
    }

    /// An autoscaling cluster: a head, two `cpu` nodes (one busy with an actor, one idle),
    /// a node started by hand, one draining; launches pending; a failure; demand of each kind.
    fn autoscaling_reply() -> GetClusterStatusReply {
        let mut head = node(1, true, "", &[], &[]);
        head.idle_duration_ms = 600_000;
        // Queued at the head: 5 one-CPU tasks, and 2 TPU tasks the autoscaler found
        // infeasible (shown there only).
        let queued = |shape: &[(&str, f64)], count| ResourceDemand {
            shape: Some(set(shape)),
            count,
            infeasible: false,
        };
        head.demand = vec![queued(&[("CPU", 1.0)], 5), queued(&[("TPU", 1.0)], 2)];
        let mut busy = node(2, false, "cpu", &[("CPU", 2.0)], &[("CPU", 1.0)]);
        busy.cloud_instance_id = "local-2".into();
        busy.busy_reasons = vec!["1 leased worker".into()];
        busy.object_store_used = 1 << 29;
        let mut idle = node(3, false, "cpu", &[("CPU", 2.0)], &[("CPU", 2.0)]);
        idle.idle_duration_ms = 35_000;
        let hand = node(4, false, "", &[("CPU", 4.0)], &[("CPU", 0.0)]);
        let mut draining = node(5, false, "cpu", &[("CPU", 2.0)], &[("CPU", 2.0)]);
        draining.state = NodeState::Draining as i32;
        let actor = ActorInfo {
            actor_id: vec![0xab; 16],
            class_name: "rollout::Counter".into(),
            name: "ctr".into(),
            state: ActorState::Alive as i32,
            node: busy.address.clone(),
            ..Default::default()
        };
        let instance = |id: &str, t: &str, status: &str| AutoscalerInstance {
            instance_id: id.into(),
            node_type: t.into(),
            status: status.into(),
            status_since_ms: T0 - 5_000,
            node_id: Vec::new(),
        };
        let autoscaler = AutoscalingState {
            node_types: vec![
                NodeTypeInfo {
                    name: "head".into(),
                    resources: Some(set(&[])),
                    min_workers: 0,
                    max_workers: 0,
                    is_head: true,
                },
                NodeTypeInfo {
                    name: "cpu".into(),
                    resources: Some(set(&[("CPU", 2.0)])),
                    min_workers: 0,
                    max_workers: 6,
                    is_head: false,
                },
            ],
            max_workers: 8,
            instances: vec![
                instance("local-2", "cpu", "running"),
                instance("local-6", "cpu", "allocated"),
                instance("local-7", "cpu", "allocated"),
                instance("local-8", "gpu", "requested"),
            ],
            recent_failures: vec![AutoscalerFailure {
                node_type: "cpu".into(),
                instance_id: "local-9".into(),
                message: "the node did not join within 300s".into(),
                time_ms: T0 - 65_000,
            }],
            infeasible: vec![counts(&[("TPU", 1.0)], 2)],
            recent_decisions: vec!["launching 2 × cpu for 4 × {CPU: 1} queued".into()],
            time_ms: T0 - 1_000,
        };
        let resource_state = ClusterResourceState {
            pending_leases: vec![counts(&[("CPU", 1.0)], 5), counts(&[("TPU", 1.0)], 2)],
            pending_actors: vec![counts(&[("CPU", 2.0)], 1)],
            constraint: vec![set(&[("CPU", 1.0)]), set(&[("CPU", 1.0)])],
            ..Default::default()
        };
        GetClusterStatusReply {
            nodes: vec![head, busy, idle, hand, draining],
            session_name: "s2".into(),
            actors: vec![actor],
            autoscaler: Some(autoscaler),
            resource_state: Some(resource_state),
            ..Default::default()
        }
    }

    #[test]
    fn an_autoscaling_cluster_is_shown_in_rays_layout() {
        let v = build(&autoscaling_reply(), "10.0.0.1:6379", T0);
        let text = table(&v);
        assert!(
            text.contains("Nodes: 4 alive, 1 draining, 0 dead"),
            "{text}"
        );
        assert_block(
            &text,
            &[
                "======== Autoscaler status ========",
                "Node status",
                RULE,
                "Active:",
                " 1 (no type)",
                " 1 cpu",
                "  020202020202 cpu: 1 leased worker; actor Counter \"ctr\" (abababababab)",
                "Idle:",
                " head 010101010101: idle 10 min 0 s",
                " cpu 030303030303: idle 35 s",
                "Draining:",
                " cpu 050505050505",
                "Pending:",
                " cpu, 2 allocated",
                " gpu, 1 requested",
                "Recent failures:",
                " cpu local-9: the node did not join within 300s (1 min 5 s ago)",
            ],
        );
        assert_block(
            &text,
            &[
                "Resources",
                RULE,
                "Usage:",
                " 5/10 CPU",
                " 0.50 GiB/5.00 GiB object store",
                "Demands:",
                " {CPU: 1}: 5 queued tasks",
                " {CPU: 2}: 1 pending actor",
                "Infeasible:",
                " {TPU: 1}: 2 (no node type can ever provide this)",
                "Requested:",
                " {CPU: 1}: 2 bundles",
                "Recent decisions:",
                " launching 2 × cpu for 4 × {CPU: 1} queued",
            ],
        );
    }

    #[test]
    fn json_carries_the_same() {
        let v = build(&autoscaling_reply(), "10.0.0.1:6379", T0);
        let json = serde_json::to_value(&v).unwrap();
        let a = &json["autoscaler"];
        assert_eq!(a["max_workers"], 8);
        assert_eq!(a["active"]["cpu"], 1);
        assert_eq!(a["active"]["(no type)"], 1);
        assert_eq!(a["idle"][1]["idle_ms"], 35_000);
        assert_eq!(a["idle"][0]["node_type"], "head");
        assert_eq!(a["draining"][0]["node_id"], "05".repeat(16));
        assert_eq!(
            a["pending"],
            serde_json::json!([
                {"node_type": "cpu", "status": "allocated", "count": 2},
                {"node_type": "gpu", "status": "requested", "count": 1},
            ])
        );
        assert_eq!(a["recent_failures"][0]["instance_id"], "local-9");
        assert_eq!(
            a["recent_decisions"][0],
            "launching 2 × cpu for 4 × {CPU: 1} queued"
        );
        assert_eq!(json["demand"][0]["count"], 5);
        assert_eq!(
            json["demand"].as_array().map(Vec::len),
            Some(1),
            "infeasible demand is not shown as queued too: {json:#}"
        );
        assert_eq!(json["pending_actors"][0]["shape"]["CPU"], 2.0);
        assert_eq!(json["infeasible"][0]["shape"]["TPU"], 1.0);
        assert_eq!(json["requested"][0]["count"], 2);
        let busy = &json["nodes"][1];
        assert_eq!(busy["node_type"], "cpu");
        assert_eq!(busy["cloud_instance_id"], "local-2");
        assert_eq!(busy["actors"][0], "Counter \"ctr\" (abababababab)");
        assert_eq!(busy["busy_reasons"][0], "1 leased worker");
        assert_eq!(
            json["nodes"][0]["node_type"], "head",
            "the head's type from the config"
        );
    }
}
