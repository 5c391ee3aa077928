//! Jobs: every submitted job, and one job with the end of its output.

use axum::extract::{Path, State};
use axum::response::Response;
use maud::html;

use super::{error_page, human_bytes, page, time};
use crate::server::AppState;

/// How much of a job's output its page shows (its end).
const SHOWN_OUTPUT: usize = 64 << 10;

pub(super) async fn list(State(state): State<AppState>) -> Response {
    let mut records = match state.jobs.list().await {
        Ok(r) => r,
        Err(e) => return error_page("Jobs", "/jobs", e),
    };
    records.sort_by_key(|r| std::cmp::Reverse(r.start_time));
    page(
        "Jobs",
        "/jobs",
        html! {
            @if records.is_empty() {
                p.muted { "No job was submitted. Submit one with "
                    code { "miniray job submit --address http://HEAD:8265 -- ./driver" } "." }
            } @else {
                table #job-table {
                    tr { th { "Submission id" } th { "Status" } th { "Entrypoint" } th { "Started" }
                         th { "Ended" } th { "Message" } }
                    @for r in &records {
                        tr.job data-job-id=(r.submission_id) {
                            td { a href=(format!("/jobs/{}", r.submission_id)) { (r.submission_id) } }
                            td { span class={"state " (r.status)} { (r.status) } }
                            td { code { (r.entrypoint) } }
                            td { (time(r.start_time)) }
                            td { (r.end_time.map(time).unwrap_or_default()) }
                            td { (r.message) }
                        }
                    }
                }
            }
        },
    )
}

pub(super) async fn detail(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let record = match state.jobs.get(&id).await {
        Ok(r) => r,
        Err(e) => return error_page("Job", "/jobs", e),
    };
    // The last two chunks hold at least the shown end of the output.
    let chunks = state.jobs.store().log_chunks(&id).await.unwrap_or_default();
    let from = chunks.len().saturating_sub(2);
    let output = match chunks.get(from) {
        Some(first) => state
            .jobs
            .store()
            .read_log(&id, *first)
            .await
            .map(|c| c.into_iter().flat_map(|(_, b)| b).collect::<Vec<u8>>())
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let shown = &output[output.len().saturating_sub(SHOWN_OUTPUT)..];
    page(
        &format!("Job {id}"),
        "/jobs",
        html! {
            table {
                tr { th { "Status" } td { span class={"state " (record.status)} { (record.status) } " " (record.message) } }
                tr { th { "Entrypoint" } td { code { (record.entrypoint) } } }
                tr { th { "Executable" } td { code { (record.executable) } } }
                tr { th { "Started" } td { (time(record.start_time)) } }
                tr { th { "Ended" } td { (record.end_time.map(time).unwrap_or_default()) } }
                tr { th { "Exit code" } td { (record.driver_exit_code.map(|c| c.to_string()).unwrap_or_default()) } }
            }
            h2 { "Output" @if output.len() > shown.len() || record.log_bytes_dropped > 0 {
                span.muted { " (its end; " (human_bytes(record.log_bytes_dropped)) " dropped before)" } } }
            pre #job-output { (String::from_utf8_lossy(shown)) }
        },
    )
}
