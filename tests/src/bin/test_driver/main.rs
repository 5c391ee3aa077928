//! The driver program of the integration tests: one scenario per first argument, results
//! printed as `key=value` lines for the test to check. Like any miniray program, it is also
//! its own worker (and, in the tests, its own GCS and raylet daemons).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use miniray::{Error, IntoArg, ObjectRef, TaskOptions};

mod actors;
mod addresses;
mod autoscaling;
mod borrowing;
mod bounded;
mod gcs_faults;
mod limits;
mod plasma_memory;
mod retries;

#[miniray::remote]
fn square(x: u64) -> u64 {
    x * x
}

#[miniray::remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[miniray::remote]
fn sum(xs: Vec<u64>) -> u64 {
    xs.iter().sum()
}

/// Sleeps, then reports the node it ran on.
#[miniray::remote]
fn where_slow(ms: u64) -> String {
    std::thread::sleep(Duration::from_millis(ms));
    miniray::node_id()
        .map(|n| n.to_string())
        .unwrap_or_default()
}

/// Records that it started (a file named after its node in `dir`), sleeps, returns `x`.
#[miniray::remote]
fn marked_slow(dir: String, ms: u64, x: u64) -> u64 {
    let node = miniray::node_id()
        .map(|n| n.to_string())
        .unwrap_or_default();
    let _ = std::fs::write(format!("{dir}/{node}-{}", std::process::id()), b"started");
    std::thread::sleep(Duration::from_millis(ms));
    x
}

#[miniray::remote]
fn checksum(data: Vec<u8>) -> (u64, u64) {
    (data.len() as u64, fnv(&data))
}

#[miniray::remote]
fn make_bytes(len: u64, seed: u8) -> Vec<u8> {
    pattern(len as usize, seed)
}

#[miniray::remote]
fn node_of_task() -> String {
    miniray::node_id()
        .map(|n| n.to_string())
        .unwrap_or_default()
}

/// A task that submits tasks: depth > 0 recurses.
#[miniray::remote]
fn tree_sum(depth: u32, width: u64) -> u64 {
    if depth == 0 {
        return 1;
    }
    let refs: Vec<ObjectRef<u64>> = (0..width)
        .map(|_| tree_sum::remote(depth - 1, width))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("nested submit failed: {e}"));
    miniray::get_all(&refs)
        .unwrap_or_else(|e| panic!("nested get failed: {e}"))
        .iter()
        .sum()
}

#[miniray::remote]
fn explode(msg: String) -> u64 {
    panic!("{msg}");
}

#[miniray::remote]
fn die() -> u64 {
    std::process::abort();
}

/// Aborts its worker unless `marker` exists; creates it first, so the retry succeeds.
#[miniray::remote]
fn die_once(marker: String) -> u64 {
    if std::fs::metadata(&marker).is_err() {
        let _ = std::fs::write(&marker, b"x");
        std::process::abort();
    }
    42
}

/// Gets the values behind refs it was handed (borrowed references).
#[miniray::remote]
fn sum_refs(refs: Vec<ObjectRef<u64>>) -> u64 {
    miniray::get_all(&refs)
        .unwrap_or_else(|e| panic!("borrowed get failed: {e}"))
        .iter()
        .sum()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

pub(crate) fn out(key: &str, value: impl std::fmt::Display) {
    println!("{key}={value}");
}

pub(crate) fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::TaskFailed { .. } => "task_failed",
        Error::WorkerDied { .. } => "worker_died",
        Error::ObjectLost { .. } => "object_lost",
        Error::OwnerDied { .. } => "owner_died",
        Error::ObjectStoreFull(_) => "object_store_full",
        Error::Timeout(_) => "timeout",
        Error::ClusterUnreachable { .. } => "cluster_unreachable",
        Error::UnknownFunction { .. } => "unknown_function",
        Error::Deserialize { .. } => "deserialize",
        Error::Infeasible { .. } => "infeasible",
        Error::InvalidArgument(_) => "invalid_argument",
        Error::ActorDied { .. } => "actor_died",
        Error::ActorNotFound { .. } => "actor_not_found",
        _ => "other",
    }
}

pub(crate) fn report<T: std::fmt::Debug>(prefix: &str, r: miniray::Result<T>) {
    match r {
        Ok(v) => out(prefix, format!("ok:{v:?}")),
        Err(e) => {
            out(&format!("{prefix}_kind"), error_kind(&e));
            out(
                &format!("{prefix}_message"),
                e.to_string().replace('\n', " "),
            );
        }
    }
}

fn main() -> anyhow::Result<()> {
    let scenario = std::env::args().nth(1).unwrap_or_default();
    if scenario == "unreachable" {
        // Join a cluster that is not there: must fail quickly with a clear error.
        let port = std::env::args().nth(2).unwrap_or_default();
        let start = Instant::now();
        let r = miniray::init_with(
            miniray::InitOptions::new()
                .address(format!("127.0.0.1:{port}"))
                .token("t"),
        );
        report("init", r);
        out("elapsed_ms", start.elapsed().as_millis());
        return Ok(());
    }
    miniray::init()?;
    let result = run(&scenario);
    miniray::shutdown();
    result
}

fn run(scenario: &str) -> anyhow::Result<()> {
    match scenario {
        "basic" => {
            let r = square::remote(7)?;
            let dep = square::remote(&r)?;
            out("chained", miniray::get(&dep)?);
            let both = add::remote(&r, 1)?;
            out("add", miniray::get(&both)?);
            let refs: Vec<_> = (0..100).map(square::remote).collect::<Result<_, _>>()?;
            out("sum100", miniray::get_all(&refs)?.iter().sum::<u64>());
            let (ready, pending) = miniray::wait(&refs, 10, Some(Duration::from_secs(10)))?;
            out("wait_ready", ready.len());
            out("wait_pending", pending.len());
            let borrowed = sum_refs::remote(vec![r.clone(), dep.clone()])?;
            out("borrowed", miniray::get(&borrowed)?);
            out("driver_node", miniray::node_id()?);
        }
        "spill" => {
            // As many slow tasks at once as 1-CPU nodes (two unless given): one must run on
            // each node.
            let count = std::env::args()
                .nth(2)
                .and_then(|n| n.parse().ok())
                .unwrap_or(2);
            let refs: Vec<_> = (0..count)
                .map(|_| where_slow::remote(1500))
                .collect::<Result<_, _>>()?;
            let nodes: BTreeSet<String> = miniray::get_all(&refs)?.into_iter().collect();
            out("distinct_nodes", nodes.len());
            out("driver_node", miniray::node_id()?);
            for n in nodes {
                out("task_node", n);
            }
        }
        "fanout" => {
            let n: u64 = 10_000;
            let refs: Vec<_> = (0..n).map(square::remote).collect::<Result<_, _>>()?;
            let chunks: Vec<ObjectRef<u64>> = refs
                .chunks(1000)
                .map(|c| {
                    let values = miniray::get_all(c)?;
                    sum::remote(values)
                })
                .collect::<Result<_, _>>()?;
            let total: u64 = miniray::get_all(&chunks)?.iter().sum();
            out("total", total);
            out("expected", (0..n).map(|x| x * x).sum::<u64>());
        }
        "nested" => {
            let r = tree_sum::remote(2, 4)?;
            out("leaves", miniray::get(&r)?);
        }
        "cross_node_object" => {
            // The remote node has the custom resource "remote".
            let len: u64 = 200 << 20;
            let data = pattern(len as usize, 7);
            let expected = fnv(&data);
            let big = miniray::put(data)?;
            let r = checksum::options().resource("remote", 1.0).remote(&big)?;
            let (got_len, got_sum) = miniray::get(&r)?;
            out("to_remote_ok", got_len == len && got_sum == expected);
            let where_ = node_of_task::options().resource("remote", 1.0).remote()?;
            out("remote_node", miniray::get(&where_)?);
            out("driver_node", miniray::node_id()?);
            // And back: made on the remote node, read here.
            let made = make_bytes::options()
                .resource("remote", 1.0)
                .remote(len, 9)?;
            let bytes = miniray::get(&made)?;
            out(
                "from_remote_ok",
                bytes.len() as u64 == len && fnv(&bytes) == fnv(&pattern(len as usize, 9)),
            );
            // Read in place: the pulled copy here, the driver's own put, and (owned) a
            // small inline value.
            let view = miniray::get_bytes(&made)?;
            out(
                "from_remote_view",
                format!("{}:{}", view.is_zero_copy(), fnv(&view) == fnv(&bytes)),
            );
            let local = miniray::get_bytes(&big)?;
            out(
                "local_view",
                format!(
                    "{}:{}",
                    local.is_zero_copy(),
                    local.len() as u64 == len && fnv(&local) == expected
                ),
            );
            let small = miniray::get_bytes(&miniray::put(vec![1u8, 2, 3])?)?;
            out(
                "inline_view",
                format!("{}:{:?}", small.is_zero_copy(), &small[..]),
            );
        }
        "failures" => {
            report(
                "panic",
                miniray::get(&explode::remote("boom at 42".to_string())?),
            );
            report(
                "abort",
                miniray::get(&die::options().max_retries(1).remote()?),
            );
            let marker = std::env::args().nth(2).unwrap_or_default();
            report(
                "abort_once",
                miniray::get(&die_once::remote(marker.clone())?),
            );
            let unknown: ObjectRef<u64> = TaskOptions::new("no::such::function").submit(vec![])?;
            report("unknown", miniray::get(&unknown));
            let bad: ObjectRef<u64> =
                TaskOptions::new(square::NAME).submit(vec![IntoArg::<String>::into_arg(
                    "not a number".to_string(),
                )?])?;
            report("bad_arg", miniray::get(&bad));
            report(
                "infeasible",
                miniray::get(&square::options().resource("TPU", 1.0).remote(1)?),
            );
            report(
                "bad_option",
                square::options().num_cpus(-1.0).remote(1).map(|_| ()),
            );
            // The worker pool still serves after all that.
            report("after", miniray::get(&square::remote(9)?));
            // A worker dying in the middle of a pipelined batch: the tasks queued behind the
            // one that killed it never ran, so even with no retries of their own they succeed.
            let warm: Vec<_> = (0..200).map(square::remote).collect::<Result<_, _>>()?;
            miniray::get_all(&warm)?;
            let marker2 = format!("{marker}-batch");
            let before: Vec<_> = (0..10u64)
                .map(|i| square::options().max_retries(0).remote(i))
                .collect::<Result<_, _>>()?;
            let crasher = die_once::remote(marker2)?;
            let behind: Vec<_> = (10..20u64)
                .map(|i| square::options().max_retries(0).remote(i))
                .collect::<Result<_, _>>()?;
            // The tasks before the crasher finished (their replies are recovered from the
            // worker's journal if they had not left it); the ones behind it never started.
            let before_ok = before.iter().filter(|r| miniray::get(*r).is_ok()).count();
            out("batch_before_ok", before_ok);
            let survived = behind.iter().filter(|r| miniray::get(*r).is_ok()).count();
            out("batch_survivors", survived);
            report("batch_crasher", miniray::get(&crasher));
        }
        "raylet_killed" => {
            let dir = std::env::args().nth(2).unwrap_or_default();
            let refs: Vec<_> = (0..6)
                .map(|i| marked_slow::remote(dir.clone(), 2000, i))
                .collect::<Result<_, _>>()?;
            let values = miniray::get_all(&refs)?;
            out("values", format!("{values:?}"));
        }
        "refcount" => {
            let stats = std::env::args().nth(2).unwrap_or_default();
            let used = || plasma_used(&stats);
            out("before", used()?);
            let refs: Vec<_> = (0..4)
                .map(|i| miniray::put(pattern(20 << 20, i)))
                .collect::<Result<_, _>>()?;
            let task_out = make_bytes::remote(20 << 20, 1)?;
            miniray::get(&task_out)?;
            out("during", used()?);
            drop(refs);
            drop(task_out);
            // Frees are asynchronous: wait for usage to fall back, with a deadline.
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut after = used()?;
            while after > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
                after = used()?;
            }
            out("after", after);
        }
        "async" => {
            // The async twins, from a driver that runs its own tokio runtime.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let r = miniray::put_async(21u64).await?;
                let doubled = add::remote(&r, &r)?;
                out("get_async", miniray::get_async(&doubled).await?);
                let refs: Vec<_> = (0..10).map(square::remote).collect::<Result<_, _>>()?;
                let all = miniray::get_all_async(&refs).await?;
                out("get_all_async", all.iter().sum::<u64>());
                let (ready, pending) =
                    miniray::wait_async(&refs, 10, Some(Duration::from_secs(10))).await?;
                out("wait_async", format!("{}/{}", ready.len(), pending.len()));
                // Actors: created, found, called and killed without blocking calls.
                let counter = actors::Counter::options()
                    .name("async-counter")
                    .remote_async(40)
                    .await?;
                let found: miniray::ActorHandle<actors::Counter> =
                    miniray::get_actor_async("async-counter").await?;
                out("actor_async", miniray::get_async(&found.incr(2)?).await?);
                miniray::kill_async(&counter).await?;
                // A blocking call inside an async runtime is refused, not a panic.
                report("blocking_in_async", miniray::get(&doubled));
                Ok::<_, Error>(())
            })?;
        }
        "crash" => {
            // Hold every CPU of the cluster with running tasks, then die without shutdown.
            let dir = std::env::args().nth(2).unwrap_or_default();
            let _refs: Vec<_> = (0..4)
                .map(|i| marked_slow::remote(dir.clone(), 60_000, i))
                .collect::<Result<_, _>>()?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0) < 2 {
                anyhow::ensure!(Instant::now() < deadline, "tasks did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            std::process::abort();
        }
        "store_full" => {
            // The node's store holds 256 MiB: two 100 MiB objects fit, a third does not.
            let a = miniray::put(pattern(100 << 20, 1))?;
            let b = miniray::put(pattern(100 << 20, 2))?;
            report("third", miniray::put(pattern(100 << 20, 3)).map(|_| ()));
            drop(a);
            // Frees are asynchronous: retry within a deadline until the space is back.
            let deadline = Instant::now() + Duration::from_secs(20);
            let again = loop {
                match miniray::put(pattern(100 << 20, 4)) {
                    Err(Error::ObjectStoreFull(_)) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    other => break other,
                }
            };
            report("after_free", again.map(|_| ()));
            out(
                "kept_intact",
                fnv(&miniray::get(&b)?) == fnv(&pattern(100 << 20, 2)),
            );
        }
        "retry_accounting" => {
            let dir = std::env::args().nth(2).unwrap_or_default();
            retries::task_rounds(&dir, 12, 40, 20)?;
            retries::actor_rounds(&dir, 6, 40, 20)?;
        }
        "borrow_loop" => {
            let raylet = std::env::args().nth(2).unwrap_or_default();
            let iterations = std::env::args()
                .nth(3)
                .and_then(|n| n.parse().ok())
                .unwrap_or(10_000);
            borrowing::borrow_loop(&raylet, iterations)?;
        }
        "borrowed_actor_handles" => borrowing::borrowed_actor_handles()?,
        "gcs_restart" => {
            let dir = std::env::args().nth(2).unwrap_or_default();
            gcs_faults::across_gcs_restart(&dir)?;
        }
        "head_restart" => {
            let dir = std::env::args().nth(2).unwrap_or_default();
            gcs_faults::across_head_restart(&dir)?;
        }
        "shm_full" => limits::shm_full()?,
        "addresses" => addresses::run()?,
        "hold_actor" => limits::hold_actor()?,
        other => {
            if !actors::run(other)?
                && !plasma_memory::run(other)?
                && !bounded::run(other)?
                && !autoscaling::run(other)?
            {
                anyhow::bail!("unknown scenario {other:?}");
            }
        }
    }
    Ok(())
}

/// Plasma bytes in use on the local node, read from the raylet (address in `stats`).
pub(crate) fn plasma_used(raylet: &str) -> anyhow::Result<u64> {
    let token = std::env::var("MINIRAY_TOKEN")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let channel = miniray_common::auth::connect(raylet, &token).await?;
        let mut client = miniray_proto::raylet_client::RayletClient::new(channel);
        let stats = client
            .get_node_stats(miniray_proto::GetNodeStatsRequest {})
            .await?
            .into_inner();
        anyhow::Ok(stats.object_store_used)
    })
}
