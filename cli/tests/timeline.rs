//! Task events end to end: `miniray start --head`, two drivers (this very executable,
//! `harness = false`) that run tasks (one of which panics) and an actor call, then what the
//! GCS pieced together (`GetTaskEvents`), the raylet's task counts (`GetNodeStats`), and
//! `miniray timeline -o` with and without `--job`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use miniray_proto::gcs_client::GcsClient;
use miniray_proto::raylet_client::RayletClient;
use miniray_proto::{
    GetAllNodesRequest, GetNodeStatsRequest, GetTaskEventsRequest, NodeAddress, TaskRecord,
    TaskState,
};
use serde_json::Value;
use support::head::Head;
use support::k8s::poll;
use support::run::Run;

const MINIRAY: &str = env!("CARGO_BIN_EXE_miniray");
/// How long events may take to reach the GCS, and a command to run, on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(90);
/// Tasks of `square` each driver runs.
const SQUARES: u64 = 5;

// ---------------------------------------------------------------------------------------
// The driver side.

#[miniray::remote]
fn square(x: u64) -> u64 {
    x * x
}

#[miniray::remote(max_retries = 0)]
fn boom() -> u64 {
    panic!("boom on purpose")
}

#[miniray::actor]
pub struct Counter {
    n: u64,
}

#[miniray::actor]
impl Counter {
    pub fn new(start: u64) -> Self {
        Counter { n: start }
    }

    pub fn bump(&mut self) -> u64 {
        self.n += 1;
        self.n
    }
}

fn out(key: &str, value: impl std::fmt::Display) {
    println!("{key}={value}");
    let _ = std::io::stdout().flush();
}

/// `work`: squares, one panicking task and one actor call; prints its job id.
fn driver(args: &[String]) -> Result<(), String> {
    if args.first().map(String::as_str) != Some("work") {
        return Err(format!("unknown scenario {args:?}"));
    }
    miniray::init().map_err(|e| format!("init: {e}"))?;
    let result = (|| {
        out(
            "job",
            miniray::__debug::job_id().map_err(|e| e.to_string())?,
        );
        let refs: Vec<_> = (0..SQUARES)
            .map(square::remote)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("submit: {e}"))?;
        let sum: u64 = miniray::get_all(&refs)
            .map_err(|e| format!("get: {e}"))?
            .iter()
            .sum();
        out("sum", sum);
        let failed = boom::remote().and_then(|r| miniray::get(&r));
        out("boom_failed", failed.is_err());
        let counter = Counter::remote(0).map_err(|e| format!("actor: {e}"))?;
        let n = counter
            .bump()
            .and_then(|r| miniray::get(&r))
            .map_err(|e| format!("call: {e}"))?;
        out("bumped", n);
        // No node has this resource: the task waits in the driver's queue until the end,
        // seen SUBMITTED only through the last report's scan of the queues (or fails as
        // infeasible, if the driver's check of the cluster answers first).
        let _waiting = square::options()
            .resource("nowhere", 1.0)
            .remote(SQUARES)
            .map_err(|e| format!("submit: {e}"))?;
        Ok(())
    })();
    // Reports the driver's last events (SUBMITTED, SCHEDULED) before it goes.
    miniray::shutdown();
    result
}

// ---------------------------------------------------------------------------------------
// The tests.

/// A head (`miniray stop` on drop), and a runtime for the test's own gRPC calls.
struct Cluster {
    head: Head,
    /// Runs the test's own gRPC calls (a channel lives on the runtime it was made on).
    rt: tokio::runtime::Runtime,
}

impl Cluster {
    fn start() -> Cluster {
        Cluster {
            head: Head::start("timeline", &[]),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
        }
    }

    /// Runs `program ARGS` as a driver of the cluster to its end (killed after DEADLINE).
    fn run(&self, program: &Path, args: &[&str]) -> Run {
        let mut child = self
            .head
            .driver_command(program, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let end = Instant::now() + DEADLINE;
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() > end {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Run::from(child.wait_with_output().expect("output"))
    }

    /// Runs the `work` driver; its job id.
    fn work(&self) -> String {
        let exe = std::env::current_exe().expect("this test's executable");
        let run = self.run(&exe, &["driver", "work"]);
        assert_eq!(run.code, Some(0), "{}", run.describe());
        assert_eq!(
            run.value("sum"),
            Some((0..SQUARES).map(|x| x * x).sum::<u64>().to_string())
        );
        assert_eq!(run.value("boom_failed").as_deref(), Some("true"));
        assert_eq!(run.value("bumped").as_deref(), Some("1"));
        run.value("job")
            .unwrap_or_else(|| panic!("no job id:\n{}", run.describe()))
    }

    fn timeline(&self, out: &Path, extra: &[&str]) -> Value {
        let path = out.to_string_lossy().into_owned();
        let mut args = vec!["timeline", "-o", &path];
        args.extend_from_slice(extra);
        let run = self.run(Path::new(MINIRAY), &args);
        assert_eq!(run.code, Some(0), "{}", run.describe());
        let bytes = std::fs::read(out).expect("the trace file");
        serde_json::from_slice(&bytes).expect("the trace is JSON")
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    fn gcs(&self) -> GcsClient<miniray_common::auth::AuthedChannel> {
        let channel = self
            .block_on(miniray_common::auth::connect(
                &self.head.address(),
                &self.head.token(),
            ))
            .expect("connect to the gcs");
        GcsClient::new(channel)
    }

    fn task_records(&self, job: &str) -> Vec<TaskRecord> {
        let job = hex::decode(job).expect("hex job id");
        self.block_on(self.gcs().get_task_events(GetTaskEventsRequest {
            job_id: job,
            limit: 0,
        }))
        .expect("GetTaskEvents")
        .into_inner()
        .tasks
    }

    /// The head raylet's address and task counts: (function, state) → count.
    fn task_counts(&self) -> (NodeAddress, BTreeMap<(String, String), u64>) {
        let nodes = self
            .block_on(self.gcs().get_all_nodes(GetAllNodesRequest {}))
            .expect("GetAllNodes")
            .into_inner()
            .nodes;
        let head = nodes
            .iter()
            .filter(|n| n.is_head)
            .find_map(|n| n.address.clone())
            .expect("the head node");
        let endpoint = format!("{}:{}", head.host, head.port);
        let stats = self.block_on(async {
            let channel = miniray_common::auth::connect(&endpoint, &self.head.token())
                .await
                .expect("connect to the raylet");
            RayletClient::new(channel)
                .get_node_stats(GetNodeStatsRequest {})
                .await
                .expect("GetNodeStats")
                .into_inner()
        });
        let counts = stats
            .task_counts
            .into_iter()
            .map(|c| ((short(&c.function_name).to_string(), c.state), c.count))
            .collect();
        (head, counts)
    }
}

/// The last path segment of a registered function name.
fn short(name: &str) -> &str {
    name.rsplit("::").next().unwrap_or(name)
}

/// Whether a job's records are complete: every square FINISHED through every state, the
/// panicking task FAILED with its message, the actor call FINISHED, the square that could
/// not be scheduled SUBMITTED (or FAILED as infeasible) and never placed.
fn complete(records: &[TaskRecord], node: &[u8]) -> Result<(), String> {
    let of = |name: &str| -> Vec<&TaskRecord> {
        records
            .iter()
            .filter(|r| short(&r.function_name) == name)
            .collect()
    };
    let squares = of("square");
    let done = squares
        .iter()
        .filter(|r| {
            r.state() == TaskState::Finished
                && r.submitted_time_us > 0
                && r.scheduled_time_us >= r.submitted_time_us
                && r.running_time_us >= r.scheduled_time_us
                && r.finished_time_us >= r.running_time_us
                && r.node_id == node
                && r.worker_id.len() == 16
                && r.attempt == 0
        })
        .count();
    if done != SQUARES as usize {
        return Err(format!(
            "{done} complete squares of {}: {squares:?}",
            squares.len()
        ));
    }
    let boom = of("boom");
    let failed = boom.iter().any(|r| {
        r.state() == TaskState::Failed
            && r.error_message.contains("boom on purpose")
            && r.submitted_time_us > 0
            && r.running_time_us > 0
            && r.failed_time_us >= r.running_time_us
            && r.node_id == node
            && r.worker_id.len() == 16
    });
    if !failed {
        return Err(format!("boom not failed with its message: {boom:?}"));
    }
    let bump = of("bump");
    let called = bump.iter().any(|r| {
        r.state() == TaskState::Finished
            && r.actor_id.len() == 16
            && r.submitted_time_us > 0
            && r.running_time_us > 0
            && r.node_id == node
    });
    if !called {
        return Err(format!("no finished actor call: {bump:?}"));
    }
    // It stays SUBMITTED (reported by the last report's scan of the queue) unless the
    // driver's feasibility check answered before it shut down: then it FAILED as
    // infeasible, still with its SUBMITTED time. Either way it never reached a worker.
    let waiting = squares.iter().any(|r| {
        let outcome = match r.state() {
            TaskState::Submitted => true,
            TaskState::Failed => r.error_message.contains("infeasible"),
            _ => false,
        };
        outcome && r.submitted_time_us > 0 && r.scheduled_time_us == 0 && r.worker_id.is_empty()
    });
    if !waiting {
        return Err(format!("no square left SUBMITTED: {squares:?}"));
    }
    Ok(())
}

fn x_events(trace: &Value) -> Vec<&Value> {
    trace["traceEvents"]
        .as_array()
        .expect("traceEvents")
        .iter()
        .filter(|e| e["ph"] == "X")
        .collect()
}

fn tasks_report_their_states_and_the_timeline_shows_them() {
    let head = Cluster::start();
    let first = head.work();
    let second = head.work();
    assert_ne!(first, second);
    let (head_node, _) = head.task_counts();
    let node = head_node.node_id.clone();

    for job in [&first, &second] {
        poll("task records of a job", DEADLINE, || {
            complete(&head.task_records(job), &node)
        });
    }

    // The head ran everything: two jobs' worth of each function.
    poll("the raylet's task counts", DEADLINE, || {
        let (_, counts) = head.task_counts();
        let count = |f: &str, s: &str| {
            counts
                .get(&(f.to_string(), s.to_string()))
                .copied()
                .unwrap_or(0)
        };
        let want = [
            ("square", "RUNNING", 2 * SQUARES),
            ("square", "FINISHED", 2 * SQUARES),
            ("boom", "RUNNING", 2),
            ("boom", "FAILED", 2),
            ("bump", "FINISHED", 2),
        ];
        match want.iter().find(|(f, s, n)| count(f, s) != *n) {
            None if count("square", "FAILED") == 0 => Ok(()),
            _ => Err(format!("{counts:?}")),
        }
    });

    let dir = head.head.root.join("traces");
    std::fs::create_dir_all(&dir).expect("traces dir");
    let all = head.timeline(&dir.join("all.json"), &[]);
    let only_first = head.timeline(&dir.join("first.json"), &["--job", &first]);

    // Every task that ran is one complete event: per job 5 squares, boom, the actor's
    // creation and its call.
    let jobs_of = |trace: &Value| -> BTreeMap<String, usize> {
        let mut jobs = BTreeMap::new();
        for e in x_events(trace) {
            *jobs
                .entry(e["args"]["job_id"].as_str().unwrap_or("").to_string())
                .or_default() += 1;
        }
        jobs
    };
    let per_job = SQUARES as usize + 3;
    assert_eq!(
        jobs_of(&all),
        BTreeMap::from([(first.clone(), per_job), (second.clone(), per_job)])
    );
    assert_eq!(
        jobs_of(&only_first),
        BTreeMap::from([(first.clone(), per_job)])
    );

    let events = x_events(&only_first);
    let named = |name: &str| -> Vec<&&Value> {
        events
            .iter()
            .filter(|e| short(e["name"].as_str().unwrap_or("")) == name)
            .collect()
    };
    assert_eq!(named("square").len(), SQUARES as usize);
    assert!(named("square").iter().all(|e| e["cat"] == "task"
        && e["args"]["state"] == "FINISHED"
        && e["dur"].as_u64().is_some()));
    let boom = named("boom");
    assert_eq!(boom.len(), 1);
    assert_eq!(boom[0]["args"]["state"], "FAILED");
    assert!(
        boom[0]["args"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("boom on purpose")),
        "{}",
        boom[0]
    );
    let bump = named("bump");
    assert_eq!(bump.len(), 1);
    assert_eq!(bump[0]["cat"], "actor_task");

    // One thread per worker: each (pid, tid) is named after the worker its events ran on,
    // and no two workers share one.
    let meta: Vec<&Value> = only_first["traceEvents"]
        .as_array()
        .expect("traceEvents")
        .iter()
        .filter(|e| e["ph"] == "M")
        .collect();
    let thread_names: BTreeMap<(u64, u64), String> = meta
        .iter()
        .filter(|e| e["name"] == "thread_name")
        .map(|e| {
            (
                (
                    e["pid"].as_u64().unwrap_or(0),
                    e["tid"].as_u64().unwrap_or(0),
                ),
                e["args"]["name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let mut workers = BTreeSet::new();
    for e in &events {
        let key = (
            e["pid"].as_u64().unwrap_or(0),
            e["tid"].as_u64().unwrap_or(0),
        );
        let worker = e["args"]["worker_id"].as_str().unwrap_or("");
        assert_eq!(
            thread_names.get(&key),
            Some(&format!("worker {worker}")),
            "{e}"
        );
        workers.insert(worker.to_string());
    }
    assert_eq!(thread_names.len(), workers.len());
    let processes: Vec<&str> = meta
        .iter()
        .filter(|e| e["name"] == "process_name")
        .filter_map(|e| e["args"]["name"].as_str())
        .collect();
    assert_eq!(processes, vec![format!("Node {}", head_node.host)]);
}

const TESTS: &[support::harness::Test] = &[(
    "tasks_report_their_states_and_the_timeline_shows_them",
    tasks_report_their_states_and_the_timeline_shows_them,
)];

fn main() {
    support::harness::run(TESTS, driver);
}
