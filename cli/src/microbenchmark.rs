//! `miniray microbenchmark`: Ray's core microbenchmark loops (same names, same definitions)
//! against a private local cluster or the cluster at `MINIRAY_ADDRESS`.
//!
//! Each metric runs a warm-up, then four timed trials; the printed value is the mean rate
//! over the trials (`metric value`, one line each; the spread goes to stderr). Then
//! `nested_tree_sum_8192`, seconds per run, lower is better: each trial runs cold, on a
//! new connection, without a warm-up. Last, on clusters the microbenchmark starts itself
//! ([`local_nodes`]): `worker_start_latency`, milliseconds, lower is better, each trial a
//! new job; and the metrics that need several nodes ([`multi_node`]).
//!
//! Ray's `ray.put` always goes through its shared-memory store. Here a small object stays
//! in its owner's process, so `single_client_put_calls` and `single_client_get_calls`
//! measure that in-process store; their `_plasma` twins use objects just above the inline
//! limit, which go through the node's plasma store as Ray's do.

pub(crate) mod local_nodes;
mod multi_node;

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use miniray::{ActorHandle, ObjectRef};
use miniray_common::config::DEFAULT_INLINE_THRESHOLD;

#[derive(Args)]
pub struct BenchArgs {
    /// Only run metrics whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Seconds per timed trial.
    #[arg(long, default_value_t = 2.0)]
    trial_secs: f64,
    /// Seconds of warm-up before the trials.
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Timed trials per metric.
    #[arg(long, default_value_t = 4)]
    trials: usize,
    /// Record task events (`miniray timeline`) in the driver and its workers, or not, to
    /// measure what they cost (default: as `MINIRAY_TASK_EVENTS_REPORT_INTERVAL_MS` says,
    /// on when unset).
    #[arg(long, value_enum)]
    task_events: Option<TaskEvents>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TaskEvents {
    On,
    Off,
}

#[miniray::remote]
fn small_value() -> Vec<u8> {
    b"ok".to_vec()
}

/// Ray's `create_object_containing_ref`: puts `n` small values and returns their
/// references in one object, whose getter then borrows each from this worker.
#[miniray::remote]
fn refs_to_new_objects(n: u64) -> Vec<miniray::ObjectRef<u64>> {
    (0..n)
        .map(|_| miniray::put(1u64).unwrap_or_else(|e| panic!("put: {e}")))
        .collect()
}

/// A client that submits `n` tasks and waits for them (Ray uses an actor per client; a task
/// that holds no CPU plays the same role).
#[miniray::remote(num_cpus = 0)]
fn small_value_batch(n: u64) -> u64 {
    let refs: Vec<ObjectRef<Vec<u8>>> = (0..n)
        .map(|_| small_value::remote())
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("submitting tasks failed: {e}"));
    miniray::get_all(&refs).unwrap_or_else(|e| panic!("getting results failed: {e}"));
    n
}

/// The actor of Ray's actor benchmarks (no CPU held, as Ray's `num_cpus=0`).
#[miniray::actor]
pub struct BenchActor;

#[miniray::actor]
impl BenchActor {
    pub fn new() -> Self {
        BenchActor
    }

    pub fn small_value(&self) -> Vec<u8> {
        b"ok".to_vec()
    }
}

/// An actor that calls other actors: `n` calls to each server, then waits for all.
#[miniray::actor]
pub struct BenchClient {
    servers: Vec<ActorHandle<BenchActor>>,
}

#[miniray::actor]
impl BenchClient {
    pub fn new(servers: Vec<ActorHandle<BenchActor>>) -> Self {
        BenchClient { servers }
    }

    pub fn small_value_batch(&self, n: u64) -> u64 {
        let mut refs = Vec::new();
        for s in &self.servers {
            for _ in 0..n {
                refs.push(
                    s.small_value()
                        .unwrap_or_else(|e| panic!("submitting actor calls failed: {e}")),
                );
            }
        }
        miniray::get_all(&refs).unwrap_or_else(|e| panic!("getting results failed: {e}"));
        n
    }
}

/// A task making `n` calls spread round-robin over `actors` (Ray's `work`).
#[miniray::remote]
fn actor_calls_round_robin(actors: Vec<ActorHandle<BenchActor>>, n: u64) -> u64 {
    let refs: Vec<ObjectRef<Vec<u8>>> = (0..n as usize)
        .map(|i| actors[i % actors.len()].small_value())
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("submitting actor calls failed: {e}"));
    miniray::get_all(&refs).unwrap_or_else(|e| panic!("getting results failed: {e}"));
    n
}

/// Ray's nested-task workload: a binary tree of tasks down to ranges of 64, each parent
/// blocking in `get` on its two children (so about as many workers as leaves must exist
/// at once).
#[miniray::remote]
fn tree_sum(lo: u64, hi: u64) -> u64 {
    if hi - lo <= 64 {
        return (lo..hi).sum();
    }
    let mid = lo + (hi - lo) / 2;
    let children = [tree_sum::remote(lo, mid), tree_sum::remote(mid, hi)]
        .into_iter()
        .collect::<miniray::Result<Vec<_>>>()
        .unwrap_or_else(|e| panic!("submitting children failed: {e}"));
    miniray::get_all(&children)
        .unwrap_or_else(|e| panic!("getting children failed: {e}"))
        .iter()
        .sum()
}

struct Bench<'a> {
    args: &'a BenchArgs,
}

impl Bench<'_> {
    /// Whether `--filter` lets the metric `name` run.
    fn wanted(&self, name: &str) -> bool {
        self.args
            .filter
            .as_ref()
            .is_none_or(|filter| name.contains(filter.as_str()))
    }

    /// Runs `f` once per trial, each on a fresh connection to the cluster (a new job, so
    /// none of its workers exist yet; a fresh private cluster when `init` starts one), and
    /// prints `name seconds`: the mean time of `f` alone, lower is better.
    fn time_cold(
        &self,
        name: &str,
        mut f: impl FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        if !self.wanted(name) {
            return Ok(());
        }
        let mut times = Vec::with_capacity(self.args.trials);
        for _ in 0..self.args.trials.max(1) {
            miniray::shutdown();
            miniray::init().with_context(|| format!("{name}: starting miniray"))?;
            let start = Instant::now();
            f().with_context(|| name.to_string())?;
            times.push(start.elapsed().as_secs_f64());
        }
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        println!("{name} {mean:.3}");
        eprintln!("  {name}: {mean:.3} s (trials: {times:.3?})");
        Ok(())
    }

    /// Runs `f` once per trial, without a warm-up, and prints `name value`: the mean of
    /// the values `f` returns (each trial times what it measures itself).
    fn time_each(
        &self,
        name: &str,
        mut f: impl FnMut() -> anyhow::Result<f64>,
    ) -> anyhow::Result<()> {
        if !self.wanted(name) {
            return Ok(());
        }
        let values = (0..self.args.trials.max(1))
            .map(|_| f().with_context(|| name.to_string()))
            .collect::<anyhow::Result<Vec<f64>>>()?;
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        println!("{name} {mean:.3}");
        eprintln!("  {name}: {mean:.3} (trials: {values:.3?})");
        Ok(())
    }

    /// Runs `f` repeatedly and prints `name rate` where rate = multiplier * calls / second.
    fn timeit(
        &self,
        name: &str,
        multiplier: f64,
        mut f: impl FnMut() -> miniray::Result<()>,
    ) -> anyhow::Result<()> {
        if !self.wanted(name) {
            return Ok(());
        }
        let warmup = Duration::from_secs_f64(self.args.warmup_secs);
        let start = Instant::now();
        let mut warm_calls = 0u64;
        while start.elapsed() < warmup || warm_calls == 0 {
            f().with_context(|| format!("{name} warm-up"))?;
            warm_calls += 1;
        }
        let step = warm_calls / 10 + 1;
        let trial = Duration::from_secs_f64(self.args.trial_secs);
        let mut rates = Vec::with_capacity(self.args.trials);
        for _ in 0..self.args.trials.max(1) {
            let start = Instant::now();
            let mut calls = 0u64;
            while start.elapsed() < trial {
                for _ in 0..step {
                    f().with_context(|| name.to_string())?;
                }
                calls += step;
            }
            rates.push(multiplier * calls as f64 / start.elapsed().as_secs_f64());
        }
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        let var = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rates.len() as f64;
        println!("{name} {mean:.2}");
        eprintln!("  {name}: {mean:.2} +- {:.2} per second", var.sqrt());
        Ok(())
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(setting) = args.task_events {
        let interval = match setting {
            TaskEvents::On => "1000",
            TaskEvents::Off => "0",
        };
        // The driver reads it at `init`; its private cluster's raylet passes it on to the
        // workers, and the job's environment carries it to the workers of a joined cluster.
        // SAFETY: no other thread runs yet (nothing was started before `init`), so nothing
        // reads the environment concurrently.
        unsafe {
            std::env::set_var(
                miniray_common::config::env::TASK_EVENTS_REPORT_INTERVAL_MS,
                interval,
            )
        };
    }
    miniray::init().context("starting miniray")?;
    let result = run_all(&args);
    miniray::shutdown();
    result?;
    let b = Bench { args: &args };
    worker_start_latency(&b)?;
    multi_node::run(&b)
}

fn run_all(args: &BenchArgs) -> anyhow::Result<()> {
    let b = Bench { args };
    // Every handle and object of the warm loops is gone before the cold ones start over.
    warm_loops(&b)?;
    b.time_cold("nested_tree_sum_8192", || {
        let sum = miniray::get(&tree_sum::remote(0, 8192)?)?;
        anyhow::ensure!(sum == 8192 * 8191 / 2, "tree_sum(0, 8192) returned {sum}");
        Ok(())
    })
}

/// Tasks submitted at once per cold trial of `worker_start_latency`: one per core here.
const WORKER_STARTS: usize = 2;

/// When it started (unix µs); then it keeps its worker for `hold_ms`, so that tasks
/// submitted together each start a worker of their own.
#[miniray::remote(num_cpus = 0)]
fn started_at(hold_ms: u64) -> u64 {
    let now = miniray_common::time::now_us();
    std::thread::sleep(Duration::from_millis(hold_ms));
    now
}

/// `worker_start_latency`: milliseconds from submitting a task in a new job (no worker
/// of the job exists) to the task running on a worker started for it, the median over
/// [`WORKER_STARTS`] tasks submitted at once per trial. It runs on a one-node cluster of
/// its own that stays up, each trial a new job, as jobs come to a running cluster; a first,
/// untimed job lets the raylet fetch and verify the job's executable once (that first
/// start goes to stderr).
fn worker_start_latency(b: &Bench<'_>) -> anyhow::Result<()> {
    let name = "worker_start_latency";
    if !b.wanted(name) {
        return Ok(());
    }
    let nodes = local_nodes::start(1, 256 << 20, 2.0)?;
    let job = || -> anyhow::Result<Vec<f64>> {
        local_nodes::join(&nodes).with_context(|| format!("{name}: joining its cluster"))?;
        let latencies = (|| {
            let submitted = miniray_common::time::now_us();
            let refs = (0..WORKER_STARTS)
                .map(|_| started_at::remote(100))
                .collect::<miniray::Result<Vec<_>>>()?;
            let started = miniray::get_all(&refs)?;
            Ok::<_, miniray::Error>(
                started
                    .iter()
                    .map(|s| s.saturating_sub(submitted) as f64 / 1000.0)
                    .collect(),
            )
        })();
        miniray::shutdown();
        Ok(latencies?)
    };
    let first = job()?;
    let mut latencies = Vec::new();
    for _ in 0..b.args.trials.max(1) {
        latencies.extend(job()?);
    }
    latencies.sort_by(f64::total_cmp);
    let median = latencies[latencies.len() / 2];
    println!("{name} {median:.3}");
    eprintln!(
        "  {name}: median {median:.3} ms (all: {latencies:.1?}; the cluster's first job: {first:.1?})"
    );
    Ok(())
}

/// The loops that share one connection and warm up first.
fn warm_loops(b: &Bench<'_>) -> anyhow::Result<()> {
    let value = miniray::put(0u64)?;
    b.timeit("single_client_get_calls", 1.0, || {
        miniray::get(&value).map(|_| ())
    })?;
    b.timeit("single_client_put_calls", 1.0, || {
        miniray::put(0u64).map(|_| ())
    })?;

    // One byte above the inline limit: the smallest object that lives in plasma.
    let plasma_sized = vec![7u8; DEFAULT_INLINE_THRESHOLD + 1];
    let value = miniray::put_ref(&plasma_sized)?;
    b.timeit("single_client_get_calls_plasma", 1.0, || {
        miniray::get(&value).map(|_| ())
    })?;
    b.timeit("single_client_put_calls_plasma", 1.0, || {
        miniray::put_ref(&plasma_sized).map(|_| ())
    })?;
    drop(value);

    // 800 MiB per put, as Ray's 100 Mi int64 array; the rate is in GB/s (Ray's multiplier).
    // Ray's array is zeros, whose pages all map the kernel's zero page, so its source reads
    // come from cache; real bytes make the copy pay for reading its source too.
    let big: Vec<u8> = (0..800usize << 20).map(|i| (i % 251) as u8).collect();
    b.timeit("single_client_put_gigabytes", 8.0 * 0.1, || {
        miniray::put_ref(&big).map(|_| ())
    })?;
    drop(big);

    b.timeit("single_client_tasks_and_get_batch", 1.0, || {
        let refs: Vec<_> = (0..1000)
            .map(|_| small_value::remote())
            .collect::<miniray::Result<_>>()?;
        miniray::get_all(&refs).map(|_| ())
    })?;

    b.timeit("single_client_wait_1k_refs", 1.0, || {
        let mut not_ready: Vec<_> = (0..1000)
            .map(|_| small_value::remote())
            .collect::<miniray::Result<_>>()?;
        while !not_ready.is_empty() {
            let (_ready, rest) = miniray::wait(&not_ready, 1, None)?;
            not_ready = rest;
        }
        Ok(())
    })?;

    b.timeit("single_client_get_object_containing_10k_refs", 1.0, || {
        let refs = miniray::get(&refs_to_new_objects::remote(10_000)?)?;
        match refs.len() {
            10_000 => Ok(()),
            n => Err(miniray::Error::InvalidArgument(format!(
                "the object held {n} references, not 10000"
            ))),
        }
    })?;

    b.timeit("single_client_tasks_sync", 1.0, || {
        miniray::get(&small_value::remote()?).map(|_| ())
    })?;

    b.timeit("single_client_tasks_async", 1000.0, || {
        let refs: Vec<_> = (0..1000)
            .map(|_| small_value::remote())
            .collect::<miniray::Result<_>>()?;
        miniray::get_all(&refs).map(|_| ())
    })?;

    let (n, m) = (10_000u64, 4usize);
    b.timeit("multi_client_tasks_async", (n * m as u64) as f64, || {
        let clients: Vec<_> = (0..m)
            .map(|_| small_value_batch::remote(n))
            .collect::<miniray::Result<_>>()?;
        miniray::get_all(&clients).map(|_| ())
    })?;

    let a = BenchActor::remote()?;
    b.timeit("1_1_actor_calls_sync", 1.0, || {
        miniray::get(&a.small_value()?).map(|_| ())
    })?;

    let a = BenchActor::remote()?;
    b.timeit("1_1_actor_calls_async", 1000.0, || {
        let refs: Vec<_> = (0..1000)
            .map(|_| a.small_value())
            .collect::<miniray::Result<_>>()?;
        miniray::get_all(&refs).map(|_| ())
    })?;

    // Ray sizes these by half the machine's cores.
    let n_cpu = (std::thread::available_parallelism().map_or(2, |n| n.get()) / 2).max(1);
    let n = 5_000u64;
    let actors = (0..n_cpu)
        .map(|_| BenchActor::remote())
        .collect::<miniray::Result<Vec<_>>>()?;
    let client = BenchClient::remote(actors.clone())?;
    b.timeit("1_n_actor_calls_async", (n * n_cpu as u64) as f64, || {
        miniray::get(&client.small_value_batch(n)?).map(|_| ())
    })?;

    let actors = (0..n_cpu)
        .map(|_| BenchActor::remote())
        .collect::<miniray::Result<Vec<_>>>()?;
    b.timeit("n_n_actor_calls_async", (m as u64 * n) as f64, || {
        let works: Vec<_> = (0..m)
            .map(|_| actor_calls_round_robin::remote(actors.clone(), n))
            .collect::<miniray::Result<_>>()?;
        miniray::get_all(&works).map(|_| ())
    })?;
    Ok(())
}
