//! `miniray k8s simulate`: the Kubernetes API simulator as a foreground process, for tests
//! and for trying `miniray up` without a cluster.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use miniray_k8s::sim::{Simulator, SimulatorConfig};

#[derive(Subcommand)]
pub enum K8sCommand {
    /// Serve a simulated Kubernetes API on loopback (Pods run as local processes, each in a
    /// network namespace of its own) until SIGTERM or SIGINT.
    Simulate(SimulateArgs),
}

#[derive(Args)]
pub struct SimulateArgs {
    /// Where to write the kubeconfig of the simulated cluster (once it serves).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Pod directories and container logs (default: /var/tmp/miniray-k8s-sim-<pid>); not
    /// under /tmp, which each Pod has of its own.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Do not add the Services' names to this machine's /etc/hosts (processes on this
    /// machine then cannot resolve `<svc>.<ns>.svc.cluster.local`).
    #[arg(long)]
    no_host_dns: bool,
}

pub fn run(command: K8sCommand) -> anyhow::Result<()> {
    match command {
        K8sCommand::Simulate(args) => simulate(args),
    }
}

fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    // The simulator speaks no miniray RPC; this installs rustls's ring provider for kube-rs.
    miniray_common::tls::install(None).context("installing the TLS provider")?;
    let exe = std::env::current_exe().context("locating the miniray executable")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let sim = Simulator::start(SimulatorConfig {
            kubeconfig: args.kubeconfig.clone(),
            miniray_exe: exe,
            state_dir: args.state_dir,
            host_hosts_block: !args.no_host_dns,
        })
        .await
        .context("starting the Kubernetes simulator")?;
        eprintln!(
            "simulated Kubernetes API serving; kubeconfig: {} (Pod logs under {})",
            args.kubeconfig.display(),
            sim.state_dir().join("pods").display()
        );
        wait_for_signal().await?;
        sim.shutdown().await;
        Ok(())
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
