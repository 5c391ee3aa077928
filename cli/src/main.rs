//! `miniray`: start and stop cluster nodes, put a cluster on Kubernetes (`up`, `down`), show
//! cluster status, run the microbenchmark and the scale benchmark.
//!
//! The binary is also a miniray executable: the daemons `start` launches are this binary
//! started in a daemon role, and the microbenchmark's workers are this binary in worker mode.

mod autoscaler;
mod daemons;
mod dashboard;
mod job;
mod k8s;
mod microbenchmark;
mod scale_bench;
mod simulate;
mod start;
mod status;
mod timeline;
mod tls;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "miniray",
    version,
    about = "A distributed runtime for Rust in the mould of Ray"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a head node (`--head`) or a worker node joining `--address`, in the background.
    // Boxed: start's flags make it far larger than the other variants.
    Start(Box<start::StartArgs>),
    /// Stop every miniray daemon `miniray start` launched on this machine.
    Stop(start::StopArgs),
    /// Show nodes, resources, and queued and infeasible demand.
    Status(status::StatusArgs),
    /// Write the cluster's task timeline as a Chrome trace (chrome://tracing, Perfetto).
    Timeline(timeline::TimelineArgs),
    /// Run Ray's core microbenchmark loops and print `metric value` lines.
    Microbenchmark(microbenchmark::BenchArgs),
    /// Measure Ray's scalability envelope on this machine (many tasks, actors, nodes) on
    /// local clusters it starts, with each process's peak memory.
    ScaleBench(scale_bench::ScaleArgs),
    /// Put a cluster's head on Kubernetes from its autoscaling config (provider type
    /// kubernetes), wait until it is ready, and print its address.
    Up(k8s::UpArgs),
    /// Delete everything `up` created and every Pod of the cluster, and wait until they are gone.
    Down(k8s::DownArgs),
    /// Mutual TLS certificates.
    #[command(subcommand)]
    Tls(tls::TlsCommand),
    /// Kubernetes tools: `miniray k8s simulate` serves a simulated cluster.
    #[command(subcommand)]
    K8s(simulate::K8sCommand),
    /// Submit jobs to a cluster's head and follow them (`--address http://HEAD:8265`).
    #[command(subcommand)]
    Job(job::JobCommand),
    /// The autoscaler daemon (`start --head --autoscaling-config` runs it).
    #[command(hide = true)]
    Autoscaler(autoscaler::AutoscalerArgs),
    /// The dashboard daemon (`start --head` runs it).
    #[command(hide = true)]
    Dashboard(dashboard::DashboardArgs),
}

fn main() -> anyhow::Result<()> {
    // Daemon and worker roles branch off here and never return.
    if std::env::var_os(miniray_common::config::env::ROLE).is_some() {
        miniray::init()?;
    }
    let cli = Cli::parse();
    // A daemon logs what it does; a command only what goes wrong.
    let default_filter = match cli.command {
        Command::Autoscaler(_) | Command::Dashboard(_) | Command::K8s(_) => "info",
        // kube's client logs each failed request; up/down report it themselves, with what
        // they were doing.
        Command::Up(_) | Command::Down(_) => "warn,kube_client=off",
        _ => "warn",
    };
    miniray_common::logging::init(default_filter);
    match cli.command {
        Command::Start(args) => start::start(*args),
        Command::Stop(args) => start::stop(args),
        Command::Status(args) => status::status(args),
        Command::Timeline(args) => timeline::timeline(args),
        Command::Microbenchmark(args) => microbenchmark::run(args),
        Command::ScaleBench(args) => scale_bench::run(args),
        Command::Up(args) => k8s::up(args),
        Command::Down(args) => k8s::down(args),
        Command::Tls(command) => tls::run(command),
        Command::Autoscaler(args) => autoscaler::run(args),
        Command::Dashboard(args) => dashboard::run(args),
        Command::Job(command) => job::run(command),
        Command::K8s(command) => simulate::run(command),
    }
}
