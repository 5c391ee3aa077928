//! `miniray timeline`: the cluster's task records (`GetTaskEvents`) as a Chrome trace
//! (`chrome://tracing`, Perfetto), as `ray timeline` writes one: a process per node, a
//! thread per worker, and a complete (`X`) event per task attempt that ran, from RUNNING to
//! FINISHED or FAILED.
//!
//! `trace` is a pure function of the records and the node table, unit-tested on built
//! replies.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use miniray_common::JobId;
use miniray_proto::{GetAllNodesRequest, GetTaskEventsRequest, NodeInfo, TaskRecord, TaskState};
use serde_json::{Value, json};

/// Bound on each GCS call.
const GCS_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Args)]
pub struct TimelineArgs {
    /// `HOST:PORT` of the GCS (default: `MINIRAY_ADDRESS`, else the one cluster started on
    /// this machine).
    #[arg(long, env = "MINIRAY_ADDRESS")]
    address: Option<String>,
    /// Only this job's tasks (its id in hex).
    #[arg(long)]
    job: Option<String>,
    /// Where to write the trace (default: `miniray-timeline-<unix ms>.json` in the temp
    /// folder).
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
}

pub fn timeline(args: TimelineArgs) -> anyhow::Result<()> {
    let job = match &args.job {
        Some(hex) => Some(JobId::from_hex(hex).with_context(|| format!("--job {hex}"))?),
        None => None,
    };
    let (_, (tasks, nodes)) = crate::status::with_gcs(args.address, async |mut gcs| {
        let tasks = tokio::time::timeout(
            GCS_DEADLINE,
            gcs.get_task_events(GetTaskEventsRequest {
                job_id: job.map(|j| j.to_vec()).unwrap_or_default(),
                limit: 0,
            }),
        )
        .await
        .context("the GCS did not answer in time")??
        .into_inner();
        let nodes = tokio::time::timeout(GCS_DEADLINE, gcs.get_all_nodes(GetAllNodesRequest {}))
            .await
            .context("the GCS did not answer in time")??
            .into_inner()
            .nodes;
        anyhow::Ok((tasks, nodes))
    })?;
    let trace = trace(&tasks.tasks, &nodes);
    let output = args.output.unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "miniray-timeline-{}.json",
            miniray_common::time::now_ms()
        ))
    });
    let bytes = serde_json::to_vec(&trace)?;
    std::fs::write(&output, bytes).with_context(|| format!("writing {}", output.display()))?;
    let ran = trace["traceEvents"]
        .as_array()
        .map_or(0, |e| e.iter().filter(|e| e["ph"] == "X").count());
    println!(
        "{ran} task(s) of {} recorded written to {}",
        tasks.tasks.len(),
        output.display()
    );
    if tasks.dropped_at_sources + tasks.dropped_at_gcs > 0 {
        println!(
            "events dropped: {} before the GCS, {} at the GCS (its limit of task records)",
            tasks.dropped_at_sources, tasks.dropped_at_gcs
        );
    }
    println!("open it in chrome://tracing or https://ui.perfetto.dev");
    Ok(())
}

fn state_name(state: TaskState) -> &'static str {
    match state {
        TaskState::Unspecified => "UNSPECIFIED",
        TaskState::Submitted => "SUBMITTED",
        TaskState::Scheduled => "SCHEDULED",
        TaskState::Running => "RUNNING",
        TaskState::Finished => "FINISHED",
        TaskState::Failed => "FAILED",
    }
}

/// The trace ids of nodes and workers: small integers in order of first appearance.
#[derive(Default)]
struct Ids {
    pids: BTreeMap<Vec<u8>, u64>,
    tids: BTreeMap<(u64, Vec<u8>), u64>,
}

impl Ids {
    fn pid(&mut self, node: &[u8]) -> u64 {
        let next = self.pids.len() as u64 + 1;
        *self.pids.entry(node.to_vec()).or_insert(next)
    }

    fn tid(&mut self, pid: u64, worker: &[u8]) -> u64 {
        let next = self.tids.keys().filter(|(p, _)| *p == pid).count() as u64 + 1;
        *self.tids.entry((pid, worker.to_vec())).or_insert(next)
    }
}

/// The Chrome trace of `tasks`: one `X` event per attempt that ran and ended, on the
/// process of its node and the thread of its worker, named by `M` metadata events.
pub fn trace(tasks: &[TaskRecord], nodes: &[NodeInfo]) -> Value {
    let hosts: HashMap<&[u8], &str> = nodes
        .iter()
        .filter_map(|n| n.address.as_ref())
        .map(|a| (a.node_id.as_slice(), a.host.as_str()))
        .collect();
    let mut per_host: HashMap<&str, usize> = HashMap::new();
    for host in hosts.values() {
        *per_host.entry(host).or_default() += 1;
    }
    let mut ids = Ids::default();
    let mut events = Vec::new();
    for t in tasks {
        let end = t.finished_time_us.max(t.failed_time_us);
        if t.running_time_us == 0 || end == 0 {
            continue;
        }
        let pid = ids.pid(&t.node_id);
        let tid = ids.tid(pid, &t.worker_id);
        let mut args = json!({
            "task_id": hex::encode(&t.task_id),
            "attempt": t.attempt,
            "job_id": hex::encode(&t.job_id),
            "state": state_name(t.state()),
            "worker_id": hex::encode(&t.worker_id),
            "node_id": hex::encode(&t.node_id),
        });
        if !t.actor_id.is_empty() {
            args["actor_id"] = json!(hex::encode(&t.actor_id));
        }
        if !t.error_message.is_empty() {
            args["error"] = json!(t.error_message);
        }
        events.push(json!({
            "name": t.function_name,
            "cat": if t.actor_id.is_empty() { "task" } else { "actor_task" },
            "ph": "X",
            "ts": t.running_time_us,
            "dur": end.saturating_sub(t.running_time_us),
            "pid": pid,
            "tid": tid,
            "args": args,
        }));
    }
    let mut meta = Vec::new();
    for (node, pid) in &ids.pids {
        let name = match hosts.get(node.as_slice()) {
            Some(host) if per_host.get(host) == Some(&1) => format!("Node {host}"),
            Some(host) => format!("Node {host} {}", hex::encode(node)),
            None => format!("Node {}", hex::encode(node)),
        };
        meta.push(json!({
            "name": "process_name", "ph": "M", "pid": pid, "args": { "name": name },
        }));
    }
    for ((pid, worker), tid) in &ids.tids {
        meta.push(json!({
            "name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
            "args": { "name": format!("worker {}", hex::encode(worker)) },
        }));
    }
    meta.extend(events);
    json!({ "traceEvents": meta, "displayTimeUnit": "ms" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use miniray_proto::NodeAddress;

    fn record(node: u8, worker: u8, state: TaskState, running: u64, end: u64) -> TaskRecord {
        let mut r = TaskRecord {
            task_id: vec![worker; 16],
            function_name: "f".into(),
            node_id: vec![node; 16],
            worker_id: vec![worker; 16],
            running_time_us: running,
            ..Default::default()
        };
        r.set_state(state);
        match state {
            TaskState::Failed => {
                r.failed_time_us = end;
                r.error_message = "boom".into();
            }
            _ => r.finished_time_us = end,
        }
        r
    }

    #[test]
    fn tasks_that_ran_become_complete_events_on_their_node_and_worker() {
        let nodes = vec![NodeInfo {
            address: Some(NodeAddress {
                node_id: vec![1; 16],
                host: "10.0.0.1".into(),
                port: 1,
            }),
            ..Default::default()
        }];
        let mut actor_call = record(1, 2, TaskState::Finished, 100, 150);
        actor_call.actor_id = vec![9; 16];
        let tasks = vec![
            record(1, 1, TaskState::Finished, 10, 30),
            record(1, 1, TaskState::Failed, 40, 45),
            actor_call,
            record(2, 3, TaskState::Finished, 5, 6),
            // Still running: no complete event yet.
            record(1, 1, TaskState::Running, 50, 0),
        ];
        let trace = trace(&tasks, &nodes);
        let events = trace["traceEvents"].as_array().unwrap();
        let x: Vec<&Value> = events.iter().filter(|e| e["ph"] == "X").collect();
        assert_eq!(x.len(), 4);
        assert_eq!(
            (x[0]["ts"].as_u64(), x[0]["dur"].as_u64()),
            (Some(10), Some(20))
        );
        assert_eq!(x[1]["args"]["state"], "FAILED");
        assert_eq!(x[1]["args"]["error"], "boom");
        assert_eq!(x[2]["cat"], "actor_task");
        assert_eq!(x[0]["cat"], "task");
        // One process per node, one thread per worker.
        assert_eq!(x[0]["pid"], x[2]["pid"]);
        assert_ne!(x[0]["tid"], x[2]["tid"]);
        assert_ne!(x[0]["pid"], x[3]["pid"]);
        let names: Vec<String> = events
            .iter()
            .filter(|e| e["name"] == "process_name")
            .map(|e| e["args"]["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            vec![
                "Node 10.0.0.1".to_string(),
                format!("Node {}", hex::encode([2u8; 16]))
            ]
        );
        let threads = events.iter().filter(|e| e["name"] == "thread_name").count();
        assert_eq!(threads, 3);
    }
}
