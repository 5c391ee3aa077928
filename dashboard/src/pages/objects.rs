//! Actors: every actor the GCS keeps, with its state, restarts and node.

use axum::extract::State;
use axum::response::Response;
use maud::html;
use miniray_proto::{ActorState, GetAllActorsRequest};

use super::{error_page, page, short, time};
use crate::server::AppState;

pub(super) async fn actors(State(state): State<AppState>) -> Response {
    let mut gcs = state.gcs.clone();
    let mut actors = match gcs.get_all_actors(GetAllActorsRequest::default()).await {
        Ok(r) => r.into_inner().actors,
        Err(e) => return error_page("Actors", "/actors", format!("the GCS: {}", e.message())),
    };
    // Live ones first, then the most recent.
    actors.sort_by_key(|a| {
        (
            a.state == ActorState::Dead as i32,
            std::cmp::Reverse(a.create_time_ms),
        )
    });
    page(
        "Actors",
        "/actors",
        html! {
            @if actors.is_empty() { p.muted { "No actors." } } @else {
                table #actor-table {
                    tr { th { "Actor" } th { "Class" } th { "Name" } th { "State" } th { "Restarts" }
                         th { "Node" } th { "Job" } th { "Created" } th { "Death or last restart" } }
                    @for a in &actors {
                        @let state_name = ActorState::try_from(a.state)
                            .map(|s| s.as_str_name().trim_start_matches("ACTOR_STATE_").to_string())
                            .unwrap_or_else(|_| "UNKNOWN".into());
                        tr.actor data-actor-id=(hex::encode(&a.actor_id)) {
                            td { code { (short(&a.actor_id)) } }
                            td { (a.class_name) }
                            td { (a.name) }
                            td { span class={"state " (state_name)} { (state_name) } }
                            td { (a.num_restarts) " / " @if a.max_restarts < 0 { "∞" } @else { (a.max_restarts) } }
                            td { @if let Some(n) = &a.node { code { (short(&n.node_id)) } " " (n.host) } }
                            td { code { (short(&a.job_id)) } }
                            td { (time(a.create_time_ms)) }
                            td.muted { (a.death_reason) }
                        }
                    }
                }
            }
        },
    )
}
