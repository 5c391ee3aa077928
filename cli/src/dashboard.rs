//! The dashboard daemon (`miniray dashboard`, which `start --head` runs): the head's HTTP
//! API on the dashboard port (`miniray-dashboard`). It binds first, then writes the port it
//! got into `<state-dir>/port`, which `start` waits for.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use miniray_common::tls::{self, TlsFiles};
use miniray_dashboard::{JobManager, ManagerConfig};

/// How long `start` waits for the dashboard to listen.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Between SIGTERM and SIGKILL for a stopped job's driver.
const JOB_STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Args)]
pub struct DashboardArgs {
    /// `HOST:PORT` of the GCS.
    #[arg(long)]
    address: String,
    #[arg(long)]
    host: String,
    #[arg(long)]
    port: u16,
    /// Private folder: the port file, the executable cache, each job's working folder.
    #[arg(long)]
    state_dir: PathBuf,
    #[arg(long, env = "MINIRAY_TOKEN", hide_env_values = true)]
    token: String,
    /// Stop when the parent process (a `miniray start --block`) is gone.
    #[arg(long)]
    exit_with_parent: bool,
}

/// Starts the dashboard daemon and waits until it listens; returns it and its port.
pub fn spawn(
    exe: &Path,
    gcs_address: &str,
    token: &str,
    (host, port): (&str, u16),
    session_dir: &Path,
    tls: Option<&TlsFiles>,
    attached: bool,
) -> anyhow::Result<(Child, u16)> {
    let state_dir = session_dir.join("dashboard");
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let port_file = state_dir.join("port");
    let _ = std::fs::remove_file(&port_file);
    let log_path = session_dir.join("logs").join("dashboard.err");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = crate::daemons::head_daemon_command(exe, "dashboard", token, log, tls, attached);
    cmd.args(["--address", gcs_address, "--host", host])
        .arg("--port")
        .arg(port.to_string())
        .arg("--state-dir")
        .arg(&state_dir);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting the dashboard ({})", exe.display()))?;
    let started = Instant::now();
    loop {
        if let Some(port) = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
        {
            return Ok((child, port));
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = log.lines().last().unwrap_or_default().to_string();
            bail!("the dashboard exited ({status}): {last}");
        }
        if started.elapsed() > STARTUP_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the dashboard did not listen within {STARTUP_TIMEOUT:?}; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `miniray dashboard`: serves until SIGTERM or SIGINT (or the parent's exit, if asked),
/// then stops the jobs it runs.
pub fn run(args: DashboardArgs) -> anyhow::Result<()> {
    tls::install_from_env().context("MINIRAY_TLS_*")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting a runtime")?;
    runtime.block_on(async move {
        let channel = miniray_common::auth::connect(&args.address, &args.token)
            .await
            .with_context(|| format!("connecting to the gcs at {}", args.address))?;
        let gcs = miniray_proto::gcs_client::GcsClient::new(channel)
            .max_decoding_message_size(usize::MAX);
        let manager = JobManager::start(
            ManagerConfig {
                gcs_address: args.address.clone(),
                token: args.token.clone(),
                driver_env: tls::child_env()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.map(|p| p.display().to_string())))
                    .collect(),
                state_dir: args.state_dir.clone(),
                stop_grace: JOB_STOP_GRACE,
            },
            gcs.clone(),
        )
        .await
        .context("starting the job manager")?;
        let bind = miniray_common::net::host_port(&args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&bind)
            .await
            .with_context(|| format!("listening on {bind}"))?;
        let port = listener.local_addr().context("the bound address")?.port();
        std::fs::write(args.state_dir.join("port"), port.to_string())
            .context("writing the port file")?;
        tracing::info!(address = %bind, port, gcs = %args.address, tls = tls::current().is_some(), "dashboard listening");
        let https = tls::current()
            .map(|t| t.https_server_config())
            .transpose()
            .context("the dashboard's TLS")?;
        let stop = crate::autoscaler::stop_requested(args.exit_with_parent);
        let options = miniray_dashboard::ServeOptions {
            tls: https,
            token: args.token.clone(),
            gcs,
            host: args.host.clone(),
        };
        miniray_dashboard::serve(listener, options, manager.clone(), stop)
            .await
            .context("serving")?;
        manager.shutdown().await;
        tracing::info!("dashboard stopped");
        Ok(())
    })
}
