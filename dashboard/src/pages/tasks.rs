//! Tasks: the task records the GCS keeps (from the workers' task events), counted by
//! function and state, and the most recent failures with their errors.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use maud::html;
use miniray_proto::{GetTaskEventsRequest, TaskState};

use super::{error_page, page, short, time};
use crate::server::AppState;

/// Failures the page lists, the most recent first.
const SHOWN_FAILURES: usize = 20;
/// The states the table has a column for, in order.
const COLUMNS: [TaskState; 5] = [
    TaskState::Submitted,
    TaskState::Scheduled,
    TaskState::Running,
    TaskState::Finished,
    TaskState::Failed,
];

fn state_name(state: TaskState) -> &'static str {
    match state {
        TaskState::Submitted => "SUBMITTED",
        TaskState::Scheduled => "SCHEDULED",
        TaskState::Running => "RUNNING",
        TaskState::Finished => "FINISHED",
        TaskState::Failed => "FAILED",
        TaskState::Unspecified => "UNKNOWN",
    }
}

pub(super) async fn summary(State(state): State<AppState>) -> Response {
    let reply = match state
        .gcs
        .clone()
        .get_task_events(GetTaskEventsRequest::default())
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => return error_page("Tasks", "/tasks", format!("the GCS: {}", e.message())),
    };
    let mut by_function: BTreeMap<&str, [u64; 5]> = BTreeMap::new();
    for t in &reply.tasks {
        let column = COLUMNS.iter().position(|s| *s as i32 == t.state);
        if let Some(c) = column {
            by_function.entry(t.function_name.as_str()).or_default()[c] += 1;
        }
    }
    let totals: Vec<u64> = (0..COLUMNS.len())
        .map(|c| by_function.values().map(|row| row[c]).sum())
        .collect();
    let failures: Vec<_> = reply
        .tasks
        .iter()
        .rev()
        .filter(|t| t.state == TaskState::Failed as i32)
        .take(SHOWN_FAILURES)
        .collect();
    page(
        "Tasks",
        "/tasks",
        html! {
            div.cards {
                div.card { b { (reply.tasks.len()) } "tasks kept" }
                @for (c, s) in COLUMNS.iter().enumerate().skip(2) {
                    div.card { b { (totals[c]) } (state_name(*s).to_lowercase()) }
                }
                div.card { b { (reply.dropped_at_sources + reply.dropped_at_gcs) } "events dropped" }
            }
            h2 { "By function" }
            @if by_function.is_empty() {
                p.muted { "No task has run yet (or task events are off: "
                    code { "MINIRAY_TASK_EVENTS_REPORT_INTERVAL_MS=0" } ")." }
            } @else {
                table #task-table {
                    tr { th { "Function" } @for s in COLUMNS { th { (state_name(s)) } } }
                    @for (function, row) in &by_function {
                        tr.function data-function=(function) {
                            td { code { (function) } }
                            @for n in row { td { (n) } }
                        }
                    }
                }
            }
            h2 { "Recent failures" }
            @if failures.is_empty() { p.muted { "None." } } @else {
                table #task-failures {
                    tr { th { "Failed" } th { "Function" } th { "Task" } th { "Node" } th { "Error" } }
                    @for t in &failures {
                        tr {
                            td { (time(t.failed_time_us / 1000)) }
                            td { code { (t.function_name) } }
                            td { code { (short(&t.task_id)) } @if t.attempt > 0 { " (attempt " (t.attempt) ")" } }
                            td { code { (short(&t.node_id)) } }
                            td.error { pre { (t.error_message) } }
                        }
                    }
                }
            }
            p.muted { "A Chrome trace of these tasks, one row per worker: "
                code { "miniray timeline -o trace.json" } "." }
        },
    )
}
