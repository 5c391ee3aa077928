//! The autoscaler daemon (`miniray autoscaler`, hidden: `miniray start --head
//! --autoscaling-config` starts it) and what `start` needs to launch it.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use miniray_autoscaler::autoscaler::{Autoscaler, DRAIN_PAUSE_HOOK_ENV};
use miniray_autoscaler::clients::Gcs;
use miniray_autoscaler::config::{AutoscalingConfig, ProviderConfig};
use miniray_autoscaler::local::{FAIL_LIST_HOOK_ENV, LocalProvider, LocalProviderConfig};
use miniray_autoscaler::provider::NodeProvider;
use miniray_common::config;
use miniray_common::tls::{self, TlsFiles};
use miniray_k8s::provider::{KubernetesProvider, KubernetesProviderConfig};
use tracing::info;

#[derive(Args)]
pub struct AutoscalerArgs {
    /// `HOST:PORT` of the GCS.
    #[arg(long)]
    address: String,
    /// The autoscaling config (YAML).
    #[arg(long)]
    config: PathBuf,
    /// Where launched nodes' output goes.
    #[arg(long)]
    log_dir: PathBuf,
    #[arg(long, env = "MINIRAY_TOKEN", hide_env_values = true)]
    token: String,
    /// Stop when the parent process (a `miniray start --block`) is gone.
    #[arg(long)]
    exit_with_parent: bool,
}

/// Parses and checks an autoscaling config for `start`, before anything starts; its
/// warnings (Ray keys miniray ignores) are printed.
pub fn load_config(path: &Path) -> anyhow::Result<AutoscalingConfig> {
    // The error names the file, the field and the line.
    let (config, warnings) = miniray_autoscaler::config::load(path)?;
    for w in warnings {
        tracing::warn!(config = %path.display(), "{w}");
    }
    if let ProviderConfig::Kubernetes(_) = config.provider {
        // The provider section and every node type's Pod, so `start` refuses a bad one
        // before anything starts, naming the field. TLS does not change what is valid.
        KubernetesProviderConfig::from_autoscaling(&config, false)
            .with_context(|| format!("autoscaling config {}", path.display()))?;
    }
    Ok(config)
}

/// Where the local provider keeps its instance records: per cluster name, not per session,
/// so a head restarted under the same name adopts the nodes it launched.
pub fn state_dir(cluster_name: &str) -> PathBuf {
    state_root().join(cluster_name)
}

/// The state folders of every cluster's local provider on this machine.
pub fn state_root() -> PathBuf {
    config::tmp_root().join("autoscaler")
}

/// Starts the autoscaler daemon. `attached`: it stops with this process (`start --block`);
/// otherwise it runs in a process group of its own and outlives `start`.
pub fn spawn(
    exe: &Path,
    gcs_address: &str,
    token: &str,
    config_path: &Path,
    logs: &Path,
    tls: Option<&TlsFiles>,
    attached: bool,
) -> anyhow::Result<Child> {
    let config_path = std::fs::canonicalize(config_path)
        .with_context(|| format!("locating {}", config_path.display()))?;
    std::fs::create_dir_all(logs).with_context(|| format!("creating {}", logs.display()))?;
    let log_path = logs.join("autoscaler.err");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = crate::daemons::head_daemon_command(exe, "autoscaler", token, log, tls, attached);
    cmd.arg("--address")
        .arg(gcs_address)
        .arg("--config")
        .arg(&config_path)
        .arg("--log-dir")
        .arg(logs.join("nodes"));
    cmd.spawn()
        .with_context(|| format!("starting the autoscaler ({})", exe.display()))
}

/// `miniray autoscaler`: runs the loop until SIGTERM or SIGINT.
pub fn run(args: AutoscalerArgs) -> anyhow::Result<()> {
    let config = load_config(&args.config)?;
    tls::install_from_env().context("MINIRAY_TLS_*")?;
    let local = match &config.provider {
        ProviderConfig::Local => Some(local_provider(&args, &config)?),
        ProviderConfig::Kubernetes(_) => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    runtime.block_on(async move {
        // A channel needs the runtime it will run on.
        let gcs = Gcs::connect_lazy(&args.address, &args.token)?;
        let provider: Arc<dyn NodeProvider> = match local {
            Some(local) => Arc::new(local),
            None => {
                // Worker Pods use TLS when this autoscaler does (the head's setting).
                let cfg = KubernetesProviderConfig::from_autoscaling(
                    &config,
                    tls::current().is_some(),
                )?;
                info!(namespace = %cfg.k8s.namespace, tls = cfg.tls, "using the Kubernetes provider");
                Arc::new(KubernetesProvider::connect(cfg).await?)
            }
        };
        info!(gcs = %args.address, cluster = %config.cluster_name, "autoscaler starting");
        let autoscaler = Autoscaler::new(config, gcs, provider)
            .with_drain_pause(std::env::var_os(DRAIN_PAUSE_HOOK_ENV).map(PathBuf::from));
        autoscaler.run(stop_requested(args.exit_with_parent)).await;
        info!("autoscaler stopped");
        Ok(())
    })
}

/// The local provider: nodes as `miniray start` processes on this machine.
fn local_provider(
    args: &AutoscalerArgs,
    config: &AutoscalingConfig,
) -> anyhow::Result<LocalProvider> {
    let exe = std::env::current_exe().context("locating the miniray executable")?;
    let node_env = tls::child_env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.map(Path::to_path_buf)))
        .collect();
    Ok(LocalProvider::new(LocalProviderConfig {
        exe,
        gcs_address: args.address.clone(),
        token: args.token.clone(),
        cluster_name: config.cluster_name.clone(),
        state_dir: state_dir(&config.cluster_name),
        log_dir: args.log_dir.clone(),
        node_types: config.node_types.clone(),
        env: node_env,
        terminate_grace: Duration::from_secs(10),
        fail_list_while: std::env::var_os(FAIL_LIST_HOOK_ENV).map(PathBuf::from),
    })?)
}

/// SIGTERM, SIGINT, or (if asked) the parent's exit.
pub(crate) async fn stop_requested(exit_with_parent: bool) {
    use tokio::signal::unix::{SignalKind, signal};
    let parent = std::os::unix::process::parent_id();
    let parent_gone = async move {
        if !exit_with_parent {
            return std::future::pending::<()>().await;
        }
        miniray_common::parent::exited(parent).await;
    };
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = parent_gone => {}
        },
        _ => parent_gone.await,
    }
}

/// How long `start` waits for a new autoscaler's first report.
const FIRST_REPORT_DEADLINE: Duration = Duration::from_secs(30);

/// Waits until the autoscaler has reported its state to the GCS. Until then a driver's
/// request that only a node type could hold would be refused as infeasible, so `start`
/// returns only after it. Fails if the autoscaler exits first (with its last words) or does
/// not report in time.
pub fn wait_for_first_report(
    child: &mut Child,
    gcs_address: &str,
    token: &str,
    logs: &Path,
) -> anyhow::Result<()> {
    use miniray_proto::GetAutoscalingStateRequest;
    use miniray_proto::gcs_client::GcsClient;
    let log_path = logs.join("autoscaler.err");
    let last_words = || {
        std::fs::read_to_string(&log_path)
            .ok()
            .and_then(|text| {
                text.lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(str::to_string)
            })
            .unwrap_or_default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    runtime.block_on(async {
        let channel = miniray_common::auth::connect_lazy(gcs_address, token)?;
        let mut gcs = GcsClient::new(channel);
        let deadline = tokio::time::Instant::now() + FIRST_REPORT_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().context("watching the autoscaler")? {
                bail!(
                    "the autoscaler exited ({status}) before its first report; see {}\n  {}",
                    log_path.display(),
                    last_words()
                );
            }
            let reported = gcs
                .get_autoscaling_state(GetAutoscalingStateRequest {})
                .await
                .is_ok_and(|reply| reply.into_inner().state.is_some());
            if reported {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "the autoscaler did not report to the GCS within {FIRST_REPORT_DEADLINE:?}; see {}",
                    log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}
