//! A node's logs: the files of its `<session>/logs` (daemons, workers, drivers), read from
//! its raylet.

use axum::extract::{Path, State};
use axum::response::Response;
use maud::html;
use miniray_proto::raylet_client::RayletClient;
use miniray_proto::{GetAllNodesRequest, ListLogsRequest, NodeState, ReadLogRequest};

use super::{error_page, human_bytes, page, short, time};
use crate::server::AppState;

/// How much of a log file its page shows (its end).
const SHOWN_TAIL: u64 = 256 << 10;

/// The raylet of the node with hex id `node_id`, if the node is up.
async fn raylet(
    state: &AppState,
    node_id: &str,
) -> Result<(RayletClient<miniray_common::auth::AuthedChannel>, String), String> {
    let nodes = state
        .gcs
        .clone()
        .get_all_nodes(GetAllNodesRequest {})
        .await
        .map_err(|e| format!("the GCS: {}", e.message()))?
        .into_inner()
        .nodes;
    let node = nodes
        .into_iter()
        .find(|n| {
            n.state != NodeState::Dead as i32
                && n.address
                    .as_ref()
                    .is_some_and(|a| hex::encode(&a.node_id) == node_id)
        })
        .and_then(|n| n.address)
        .ok_or_else(|| format!("no live node {node_id}"))?;
    let address = miniray_common::net::host_port(&node.host, node.port);
    let channel = miniray_common::auth::connect(&address, &state.token)
        .await
        .map_err(|e| format!("the raylet at {address}: {e}"))?;
    Ok((
        RayletClient::new(channel)
            .max_decoding_message_size(miniray_common::config::MAX_MESSAGE_SIZE),
        address,
    ))
}

/// Every live node, each with a link to its logs.
pub(super) async fn nodes(State(state): State<AppState>) -> Response {
    let nodes = match state.gcs.clone().get_all_nodes(GetAllNodesRequest {}).await {
        Ok(r) => r.into_inner().nodes,
        Err(e) => return error_page("Logs", "/logs", format!("the GCS: {}", e.message())),
    };
    page(
        "Logs",
        "/logs",
        html! {
            ul #log-nodes {
                @for n in nodes.iter().filter(|n| n.state != NodeState::Dead as i32) {
                    @if let Some(a) = &n.address {
                        li { a href=(format!("/nodes/{}/logs", hex::encode(&a.node_id))) {
                            code { (short(&a.node_id)) } " " (a.host) @if n.is_head { " (head)" } } }
                    }
                }
            }
        },
    )
}

pub(super) async fn files(State(state): State<AppState>, Path(node_id): Path<String>) -> Response {
    let title = format!("Logs of node {}", &node_id[..node_id.len().min(12)]);
    let (mut client, address) = match raylet(&state, &node_id).await {
        Ok(c) => c,
        Err(e) => return error_page(&title, "/logs", e),
    };
    let files = match client.list_logs(ListLogsRequest {}).await {
        Ok(r) => r.into_inner().files,
        Err(e) => return error_page(&title, "/logs", format!("{address}: {}", e.message())),
    };
    page(
        &title,
        "/logs",
        html! {
            p.muted { "Raylet " (address) }
            table #log-files {
                tr { th { "File" } th { "Size" } th { "Last written" } }
                @for f in &files {
                    tr { td { a href=(format!("/nodes/{node_id}/logs/{}", f.name)) { (f.name) } }
                         td { (human_bytes(f.size)) } td { (time(f.modified_ms)) } }
                }
            }
        },
    )
}

pub(super) async fn file(
    State(state): State<AppState>,
    Path((node_id, name)): Path<(String, String)>,
) -> Response {
    let title = format!("{name} on node {}", &node_id[..node_id.len().min(12)]);
    let (mut client, address) = match raylet(&state, &node_id).await {
        Ok(c) => c,
        Err(e) => return error_page(&title, "/logs", e),
    };
    let reply = match client
        .read_log(ReadLogRequest {
            name: name.clone(),
            tail_bytes: SHOWN_TAIL,
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => return error_page(&title, "/logs", format!("{address}: {}", e.message())),
    };
    page(
        &title,
        "/logs",
        html! {
            p.muted { (human_bytes(reply.size)) @if reply.size > reply.data.len() as u64 {
                ", its last " (human_bytes(reply.data.len() as u64)) " shown" } }
            pre #log-text { (String::from_utf8_lossy(&reply.data)) }
        },
    )
}
