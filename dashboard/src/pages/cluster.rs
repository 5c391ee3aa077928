//! The cluster overview: totals, every node with its resources and object store, and the
//! autoscaler's view (node types, its nodes, pending launches, decisions, failures).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use maud::{Markup, html};
use miniray_proto::{
    AutoscalingState, GetAllNodesRequest, GetAutoscalingStateRequest, NodeInfo, NodeState,
    ResourceSet,
};

use super::{error_page, human_bytes, meter, page, short, time};
use crate::server::AppState;

fn state_name(node: &NodeInfo) -> &'static str {
    match NodeState::try_from(node.state) {
        Ok(NodeState::Alive) => "ALIVE",
        Ok(NodeState::Draining) => "DRAINING",
        _ => "DEAD",
    }
}

fn amounts(set: Option<&ResourceSet>) -> BTreeMap<String, f64> {
    set.map(|s| s.amounts.clone().into_iter().collect())
        .unwrap_or_default()
}

/// `CPU 1/2 · GPU 0/1`: in use of total, per resource.
fn resources(node: &NodeInfo) -> Markup {
    let total = amounts(node.total.as_ref());
    let available = amounts(node.available.as_ref());
    html! {
        @for (name, t) in &total {
            @let used = t - available.get(name).copied().unwrap_or(0.0);
            div { (name) " " (format!("{used}/{t}")) (meter(used, *t)) }
        }
    }
}

pub(super) async fn overview(State(state): State<AppState>) -> Response {
    let mut gcs = state.gcs.clone();
    let nodes = match gcs.get_all_nodes(GetAllNodesRequest {}).await {
        Ok(r) => r.into_inner().nodes,
        Err(e) => return error_page("Cluster", "/", format!("the GCS: {}", e.message())),
    };
    let autoscaler = gcs
        .get_autoscaling_state(GetAutoscalingStateRequest {})
        .await
        .ok()
        .and_then(|r| r.into_inner().state);
    let live: Vec<&NodeInfo> = nodes.iter().filter(|n| state_name(n) != "DEAD").collect();
    let (mut cpu_total, mut cpu_free, mut store_used, mut store_cap) = (0.0, 0.0, 0, 0);
    for n in &live {
        cpu_total += amounts(n.total.as_ref()).get("CPU").copied().unwrap_or(0.0);
        cpu_free += amounts(n.available.as_ref())
            .get("CPU")
            .copied()
            .unwrap_or(0.0);
        store_used += n.object_store_used;
        store_cap += n.object_store_capacity;
    }
    let content = html! {
        div.cards {
            div.card #nodes-alive { b { (live.len()) } "nodes up" }
            div.card { b { (nodes.len() - live.len()) } "nodes dead" }
            div.card #cpus { b { (format!("{}/{}", cpu_total - cpu_free, cpu_total)) } "CPUs in use" }
            div.card #store { b { (human_bytes(store_used)) } "of " (human_bytes(store_cap)) " object store" }
        }
        h2 { "Nodes" }
        table #node-table {
            tr { th { "Node" } th { "Address" } th { "State" } th { "Resources (in use/total)" }
                 th { "Object store" } th { "Workers" } th { "Idle" } th { "Logs" } }
            @for n in &nodes {
                @let id = n.address.as_ref().map(|a| a.node_id.clone()).unwrap_or_default();
                @let addr = n.address.as_ref().map(|a| format!("{}:{}", a.host, a.port)).unwrap_or_default();
                tr.node data-node-id=(hex::encode(&id)) {
                    td { code { (short(&id)) } @if n.is_head { " (head)" } @if !n.node_type.is_empty() { br; span.muted { (n.node_type) } } }
                    td { (addr) }
                    td { span class={"state " (state_name(n))} { (state_name(n)) }
                         @if !n.death_reason.is_empty() { br; span.muted { (n.death_reason) } } }
                    td { (resources(n)) }
                    td { (human_bytes(n.object_store_used)) " / " (human_bytes(n.object_store_capacity))
                         (meter(n.object_store_used as f64, n.object_store_capacity as f64)) }
                    td { (n.num_workers) " (" (n.num_leased_workers) " leased)" }
                    td { @if n.busy_reasons.is_empty() { (n.idle_duration_ms / 1000) " s" }
                         @else { span.muted { (n.busy_reasons.join(", ")) } } }
                    td { @if state_name(n) != "DEAD" { a href=(format!("/nodes/{}/logs", hex::encode(&id))) { "logs" } } }
                }
            }
        }
        (autoscaler_view(autoscaler.as_ref()))
    };
    page("Cluster", "/", content)
}

fn autoscaler_view(state: Option<&AutoscalingState>) -> Markup {
    let Some(s) = state else {
        return html! { h2 { "Autoscaler" } p.muted { "This cluster does not autoscale." } };
    };
    let pending = s
        .instances
        .iter()
        .filter(|i| i.status == "requested" || i.status == "allocated")
        .count();
    html! {
        h2 #autoscaler { "Autoscaler" }
        p { (s.instances.len()) " worker nodes of at most " (s.max_workers) "; "
            (pending) " launching. Reported " (time(s.time_ms)) "." }
        table #node-types {
            tr { th { "Node type" } th { "Resources" } th { "Min" } th { "Max" } th { "Nodes" } }
            @for t in &s.node_types {
                tr {
                    td { (t.name) @if t.is_head { " (head)" } }
                    td { @for (k, v) in amounts(t.resources.as_ref()) { (k) " " (v) " " } }
                    td { (t.min_workers) } td { (t.max_workers) }
                    td { (s.instances.iter().filter(|i| i.node_type == t.name).count()) }
                }
            }
        }
        @if !s.instances.is_empty() {
            h2 { "Autoscaler nodes" }
            table {
                tr { th { "Instance" } th { "Type" } th { "Status" } th { "Since" } th { "Node" } }
                @for i in &s.instances {
                    tr { td { code { (i.instance_id) } } td { (i.node_type) }
                         td { span class={"state " (i.status)} { (i.status) } }
                         td { (time(i.status_since_ms)) } td { code { (short(&i.node_id)) } } }
                }
            }
        }
        @if !s.infeasible.is_empty() {
            h2 { "Demand no node type can hold" }
            ul { @for d in &s.infeasible {
                li { (d.count) " × " @for (k, v) in amounts(d.shape.as_ref()) { (k) " " (v) " " } }
            } }
        }
        @if !s.recent_decisions.is_empty() {
            h2 { "Recent decisions" }
            ul { @for d in s.recent_decisions.iter().rev().take(10) { li { (d) } } }
        }
        @if !s.recent_failures.is_empty() {
            h2 { "Recent failures" }
            ul { @for f in &s.recent_failures {
                li.error { (time(f.time_ms)) " " (f.node_type) " " (f.instance_id) ": " (f.message) }
            } }
        }
    }
}
