//! `miniray up` and `miniray down`: a cluster on Kubernetes from its autoscaling config
//! (`provider: {type: kubernetes}`). The work is `miniray_k8s::deploy`'s; this module
//! parses flags, prints progress (objects on stdout, waiting on stderr) and records the
//! head on this machine as `miniray start --head` does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use miniray_k8s::deploy::{self, ClusterSpec, Progress, TlsPem};

#[derive(Args)]
pub struct UpArgs {
    /// The cluster's autoscaling config (YAML, `provider: {type: kubernetes, …}`).
    config: PathBuf,
    /// Print every manifest as YAML and contact nothing. The Secret's token is
    /// `MINIRAY_TOKEN` if set, else a fresh random one.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args)]
pub struct DownArgs {
    /// The cluster's autoscaling config, as given to `miniray up`.
    config: PathBuf,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args)]
struct ApiArgs {
    /// Kubeconfig file to use (default: as kubectl finds it: KUBECONFIG, ~/.kube/config, or
    /// the in-cluster service account).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Seconds to wait for the head to be ready (up) or for every Pod to be gone (down).
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

fn load(path: &Path) -> anyhow::Result<ClusterSpec> {
    let spec = ClusterSpec::load(path)?;
    for w in &spec.warnings {
        eprintln!("autoscaling config {}: {w}", path.display());
    }
    Ok(spec)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")
}

/// What `up --dry-run` prints for this config: the manifests with `token`, and the TLS
/// material named by `MINIRAY_TLS_*` if set.
pub fn dry_run(spec: &ClusterSpec, token: &str) -> anyhow::Result<String> {
    let tls = TlsPem::from_env()?;
    Ok(deploy::dry_run(spec, token, tls)?)
}

fn print_progress(p: Progress) {
    match p {
        Progress::Applied(a) => println!("{a}"),
        Progress::Deleted(d) => println!("{d}"),
        Progress::Waiting(line) => eprintln!("{line}"),
    }
}

pub fn up(args: UpArgs) -> anyhow::Result<()> {
    let spec = load(&args.config)?;
    if args.dry_run {
        let token = std::env::var(miniray_common::config::env::TOKEN)
            .ok()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(miniray_common::auth::generate_token);
        print!("{}", dry_run(&spec, &token)?);
        return Ok(());
    }
    // Checked before anything is applied.
    let tls = TlsPem::from_env()?;
    // The head serves its dashboard over the cluster's TLS when it has one.
    let dashboard_scheme = if tls.is_some() { "https" } else { "http" };
    // As `start --head`: a token given in MINIRAY_TOKEN is the cluster's, the first time.
    let given_token = std::env::var(miniray_common::config::env::TOKEN)
        .ok()
        .filter(|t| !t.is_empty());
    let (address, token) = runtime()?.block_on(async {
        let (client, url) = deploy::connect(args.api.kubeconfig.as_deref()).await?;
        eprintln!(
            "Applying cluster {:?} to namespace {:?} at {url}",
            spec.cluster_name(),
            spec.namespace()
        );
        deploy::up(
            &client,
            &spec,
            tls,
            given_token.clone(),
            Duration::from_secs(args.api.timeout),
            &mut print_progress,
        )
        .await
        .with_context(|| format!("miniray up {} (API server {url})", args.config.display()))
    })?;
    if given_token.as_ref().is_some_and(|t| *t != token) {
        eprintln!(
            "warning: MINIRAY_TOKEN is not this cluster's token (its Secret keeps the one made \
             at the first `up`); unset it so drivers here use the recorded one"
        );
    }
    crate::start::record_head(&address, &token)?;
    let dashboard = dashboard_address(&spec);
    crate::start::record_dashboard(&dashboard, &token)?;
    eprintln!(
        "Submit jobs with: miniray job submit --address {dashboard_scheme}://{dashboard} -- ./driver"
    );
    eprintln!(
        "The head is ready. Drivers and `miniray status` on this machine find its token; \
         elsewhere set MINIRAY_TOKEN (kubectl get secret -n {} {} -o jsonpath='{{.data.token}}' | base64 -d).",
        spec.namespace(),
        miniray_k8s::names::token_secret(spec.cluster_name())
    );
    println!("{address}");
    Ok(())
}

/// `HOST:PORT` of the head Service's dashboard port.
fn dashboard_address(spec: &miniray_k8s::deploy::ClusterSpec) -> String {
    let host = miniray_k8s::names::service_dns(
        &miniray_k8s::names::head_service(spec.cluster_name()),
        spec.namespace(),
    );
    miniray_common::net::host_port(&host, miniray_k8s::names::DASHBOARD_PORT)
}

pub fn down(args: DownArgs) -> anyhow::Result<()> {
    let spec = load(&args.config)?;
    let deleted = runtime()?.block_on(async {
        let (client, url) = deploy::connect(args.api.kubeconfig.as_deref()).await?;
        deploy::down(
            &client,
            &spec,
            Duration::from_secs(args.api.timeout),
            &mut print_progress,
        )
        .await
        .with_context(|| format!("miniray down {} (API server {url})", args.config.display()))
    })?;
    crate::start::forget_head(&spec.head_address());
    let _ = std::fs::remove_file(miniray_common::config::dashboard_token_file(
        &dashboard_address(&spec),
    ));
    if deleted.is_empty() {
        println!(
            "Nothing of cluster {:?} was left in namespace {:?}.",
            spec.cluster_name(),
            spec.namespace()
        );
    } else {
        println!(
            "Cluster {:?} is down ({} objects deleted).",
            spec.cluster_name(),
            deleted.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `k8s/manifests/example.yaml` is exactly what `miniray up --dry-run` prints for
    /// `k8s/example-cluster.yaml` with `MINIRAY_TOKEN=example-token-change-me` (and TLS off).
    #[test]
    fn the_dry_run_prints_the_example_manifests() {
        let k8s = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../k8s");
        let spec = load(&k8s.join("example-cluster.yaml")).expect("valid example");
        let printed = deploy::dry_run(&spec, "example-token-change-me", None).expect("yaml");
        let kept = std::fs::read_to_string(k8s.join("manifests/example.yaml")).expect("example");
        assert!(
            printed == kept,
            "the dry run differs from k8s/manifests/example.yaml"
        );
    }
}
