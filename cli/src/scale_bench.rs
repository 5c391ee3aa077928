//! `miniray scale-bench`: Ray's scalability envelope (its release tests `many_tasks`,
//! `many_actors`, `many_nodes`) measured on this machine, each workload on a local cluster
//! of its own, so that the peak memory (`VmHWM`) of each process is that workload's.
//!
//! Prints `metric value` lines:
//! - `many_tasks_s`: seconds for one driver to submit `--tasks` tasks (1 CPU each, on a
//!   2-CPU node, so nearly all of them queue) and get every result;
//! - `many_actors_s`: seconds until `--actors` actors of 0 CPU, spread over 4 nodes, are
//!   alive and each has answered one call (fewer, and `many_actors_count` says how many,
//!   when this machine's memory or process ids do not hold them), and
//!   `many_actors_{rss,pss}_mib_per_worker`;
//! - `many_nodes_register_s`: seconds until `--nodes` raylets of 0 CPU are registered, then
//!   `many_nodes_gcs_cpu_percent` (the GCS's CPU, of one core, over 10 s of heartbeats) and
//!   `many_nodes_status_ms` (median of 5 `GetClusterStatus` calls);
//!
//! and after each workload `<workload>_peak_mib_{driver,gcs,raylet_max,raylets}`.

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::microbenchmark::local_nodes;
use miniray::cluster::LocalCluster;

#[derive(clap::Args)]
pub struct ScaleArgs {
    /// Only run workloads whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Tasks of `many_tasks`.
    #[arg(long, default_value_t = 1_000_000)]
    tasks: u64,
    /// Actors of `many_actors` (at most what this machine's memory and `kernel.pid_max`
    /// hold). Ray's envelope is 10,000; on a 2-core machine runs past about 6,000 fail
    /// (README, "Scale"), so the default is what completes there.
    #[arg(long, default_value_t = 4_000)]
    actors: usize,
    /// Raylets of `many_nodes`.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
}

impl ScaleArgs {
    fn wanted(&self, name: &str) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|f| name.contains(f.as_str()))
    }
}

#[miniray::remote]
fn noop() -> u8 {
    0
}

/// An actor that holds nothing (and no CPU) and answers.
#[miniray::actor]
pub struct Idle;

#[miniray::actor]
impl Idle {
    pub fn new() -> Self {
        Idle
    }

    pub fn ping(&self) -> u8 {
        1
    }
}

pub fn run(args: ScaleArgs) -> anyhow::Result<()> {
    if args.wanted("many_tasks") {
        many_tasks(&args)?;
    }
    if args.wanted("many_actors") {
        many_actors(&args)?;
    }
    if args.wanted("many_nodes") {
        many_nodes(&args)?;
    }
    Ok(())
}

fn print(name: &str, value: f64) {
    println!("{name} {value:.3}");
}

fn many_tasks(args: &ScaleArgs) -> anyhow::Result<()> {
    let nodes = local_nodes::start(1, 256 << 20, 2.0)?;
    local_nodes::join(&nodes).context("many_tasks: joining its cluster")?;
    let start = Instant::now();
    let result = (|| {
        let refs = (0..args.tasks)
            .map(|_| noop::remote())
            .collect::<miniray::Result<Vec<_>>>()?;
        let done = miniray::get_all(&refs)?;
        anyhow::ensure!(
            done.len() as u64 == args.tasks,
            "{} results of {} tasks",
            done.len(),
            args.tasks
        );
        Ok(())
    })();
    let secs = start.elapsed().as_secs_f64();
    let peaks = Peaks::of(&nodes);
    miniray::shutdown();
    result?;
    print("many_tasks_s", secs);
    peaks.print("many_tasks");
    Ok(())
}

/// Memory each actor is assumed to need when deciding how many fit. Measured: an idle
/// actor worker's own memory (PSS) is about 1.4 MiB (its resident size, about 14 MiB, is
/// mostly the executable's pages, which all workers share), and `MemAvailable` falls by
/// about 1 MiB per actor beyond the cluster's daemons; this is twice that.
const ACTOR_BUDGET: u64 = 2 << 20;

/// Memory left to the rest of the machine.
const HEADROOM: u64 = 2 << 30;

/// Threads (each a process id) of an idle actor worker: the runtime's, one per core, plus
/// its main and task threads.
fn threads_per_worker() -> u64 {
    miniray_common::config::num_cpus() as u64 + 2
}

/// Process ids left below `kernel.pid_max`, less a margin for the rest of the machine.
fn pids_left() -> Option<u64> {
    let max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let used = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .map(|pid| std::fs::read_dir(format!("/proc/{pid}/task")).map_or(1, |t| t.count() as u64))
        .sum::<u64>();
    Some(max.saturating_sub(used).saturating_sub(1_000))
}

fn many_actors(args: &ScaleArgs) -> anyhow::Result<()> {
    let available = mem_available().context("reading MemAvailable")?;
    let by_memory = (available.saturating_sub(HEADROOM) / ACTOR_BUDGET) as usize;
    let pids = pids_left();
    let by_pids = pids.map_or(usize::MAX, |left| (left / threads_per_worker()) as usize);
    let count = args.actors.min(by_memory).min(by_pids);
    if count < args.actors {
        let bound = if by_pids < by_memory {
            format!(
                "kernel.pid_max: {} process ids, {} threads per worker",
                pids.unwrap_or(0),
                threads_per_worker()
            )
        } else {
            format!(
                "memory: {} MiB available, {} MiB each assumed",
                available >> 20,
                ACTOR_BUDGET >> 20
            )
        };
        eprintln!(
            "many_actors: {} actors asked, {count} fit (bounded by {bound})",
            args.actors
        );
    }
    let nodes = local_nodes::start(4, 64 << 20, 0.0)?;
    local_nodes::join(&nodes).context("many_actors: joining its cluster")?;
    let start = Instant::now();
    let result = (|| {
        let actors = (0..count)
            .map(|_| Idle::remote())
            .collect::<miniray::Result<Vec<_>>>()?;
        let calls = actors
            .iter()
            .map(|a| a.ping())
            .collect::<miniray::Result<Vec<_>>>()?;
        let answered: u64 = miniray::get_all(&calls)?
            .iter()
            .map(|&n| u64::from(n))
            .sum();
        anyhow::ensure!(
            answered as usize == count,
            "{answered} of {count} actors answered"
        );
        Ok(actors)
    })();
    let secs = start.elapsed().as_secs_f64();
    let workers = worker_rss(&nodes.raylet_pids());
    let peaks = Peaks::of(&nodes);
    let actors = result;
    miniray::shutdown();
    drop(actors?);
    print("many_actors_count", count as f64);
    print("many_actors_s", secs);
    if workers.count > 0 {
        print(
            "many_actors_rss_mib_per_worker",
            workers.rss as f64 / workers.count as f64 / (1 << 20) as f64,
        );
        print(
            "many_actors_pss_mib_per_worker",
            workers.pss as f64 / workers.count as f64 / (1 << 20) as f64,
        );
    }
    peaks.print("many_actors");
    Ok(())
}

fn many_nodes(args: &ScaleArgs) -> anyhow::Result<()> {
    let count = args.nodes.max(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("a runtime for the status calls")?;
    let start = Instant::now();
    let nodes = local_nodes::start(count, 16 << 20, 0.0)?;
    let mut gcs = rt.block_on(async {
        let channel = miniray_common::auth::connect(nodes.gcs_address(), nodes.token())
            .await
            .context("connecting to the GCS")?;
        anyhow::Ok(
            miniray_proto::gcs_client::GcsClient::new(channel)
                .max_decoding_message_size(miniray_common::config::MAX_MESSAGE_SIZE),
        )
    })?;
    // One `status` call: its latency, and how many nodes are alive.
    let mut status = || {
        rt.block_on(async {
            let t = Instant::now();
            let reply = gcs
                .get_cluster_status(miniray_proto::GetClusterStatusRequest {})
                .await
                .context("GetClusterStatus")?
                .into_inner();
            let alive = reply
                .nodes
                .iter()
                .filter(|n| n.state() == miniray_proto::NodeState::Alive)
                .count();
            anyhow::Ok((t.elapsed().as_secs_f64() * 1000.0, alive))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, alive) = status()?;
        if alive == count {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{alive} of {count} raylets registered after 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    print("many_nodes_register_s", start.elapsed().as_secs_f64());

    let pid = nodes.gcs_pid();
    let before = cpu_ticks(pid).context("reading the GCS's CPU time")?;
    let window = Duration::from_secs(10);
    // The measurement itself: heartbeats arrive on their own schedule meanwhile. Slept on
    // the runtime, so that the status connection answers its keepalive pings.
    rt.block_on(async { tokio::time::sleep(window).await });
    let after = cpu_ticks(pid).context("reading the GCS's CPU time")?;
    print(
        "many_nodes_gcs_cpu_percent",
        100.0 * after.saturating_sub(before) as f64 / clock_ticks_per_sec() / window.as_secs_f64(),
    );

    let mut latencies = Vec::new();
    for _ in 0..5 {
        let (ms, alive) = status()?;
        anyhow::ensure!(alive == count, "{alive} of {count} raylets alive");
        latencies.push(ms);
    }
    latencies.sort_by(f64::total_cmp);
    print("many_nodes_status_ms", latencies[latencies.len() / 2]);
    Peaks::of(&nodes).print("many_nodes");
    Ok(())
}

/// Peak resident memory (`VmHWM`, MiB) of the processes of one workload.
struct Peaks {
    driver: f64,
    gcs: f64,
    raylet_max: f64,
    raylets: f64,
}

impl Peaks {
    fn of(nodes: &LocalCluster) -> Self {
        let mib = |pid: Option<u32>| hwm_kib(pid).unwrap_or(0) as f64 / 1024.0;
        let raylets: Vec<f64> = nodes
            .raylet_pids()
            .into_iter()
            .map(|p| mib(Some(p)))
            .collect();
        Peaks {
            driver: mib(None),
            gcs: mib(Some(nodes.gcs_pid())),
            raylet_max: raylets.iter().copied().fold(0.0, f64::max),
            raylets: raylets.iter().sum(),
        }
    }

    fn print(&self, workload: &str) {
        print(&format!("{workload}_peak_mib_driver"), self.driver);
        print(&format!("{workload}_peak_mib_gcs"), self.gcs);
        print(&format!("{workload}_peak_mib_raylet_max"), self.raylet_max);
        print(&format!("{workload}_peak_mib_raylets"), self.raylets);
    }
}

/// A `/proc/<pid>/status` field in KiB (`None`: this process).
fn status_kib(pid: Option<u32>, field: &str) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    kib_field(&path, field)
}

/// The `field: N kB` line of a `/proc` file, in KiB.
fn kib_field(path: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `Pss` of `pid` (its share of every page it maps), in KiB.
fn pss_kib(pid: u32) -> Option<u64> {
    kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

fn hwm_kib(pid: Option<u32>) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Memory of the worker processes (children of `raylets`): resident, and proportional
/// (`Pss`: shared pages split between the processes that map them, so the executable's
/// pages count once over all workers).
struct WorkerRss {
    count: usize,
    rss: u64,
    pss: u64,
}

fn worker_rss(raylets: &[u32]) -> WorkerRss {
    let mut out = WorkerRss {
        count: 0,
        rss: 0,
        pss: 0,
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let parent = status_kib(Some(pid), "PPid:").map(|p| p as u32);
        if parent.is_some_and(|p| raylets.contains(&p)) {
            out.count += 1;
            out.rss += status_kib(Some(pid), "VmRSS:").unwrap_or(0) << 10;
            out.pss += pss_kib(pid).unwrap_or(0) << 10;
        }
    }
    out
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// `MemAvailable` of this machine, in bytes.
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|k| k << 10)
}
