//! The simulator's controllers: the Deployment controller, garbage collection of Pods whose
//! Deployment is gone, and Service name resolution (the cluster hosts file, `spec.clusterIP`,
//! and optionally a block in this machine's `/etc/hosts`).
//!
//! They talk to the API server only through kube-rs, as real controllers do: watchers on
//! Deployments, Pods and Services only *wake* one reconcile loop; each pass then lists Pods,
//! Deployments and Services afresh and acts on what the server says (level-triggered, so a
//! missed event or a failed call is made good by the next pass; a pass also runs every
//! [`RESYNC`]). A fresh list per pass is what keeps the controller from creating a Pod twice:
//! the Pods it created in the previous pass are in the next list.
//!
//! Invariant: one pass at a time; the hosts file is (re)written before [`Controllers::start`]
//! returns, so it exists for the kubelet to bind-mount.

pub mod deployment;
pub mod gc;
pub mod hosts;
pub mod services;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use hosts::{HostBlock, HostEntry};

/// The machine's hosts file, where [`ControllersConfig::host_hosts_block`] writes its block.
pub const HOST_HOSTS_FILE: &str = "/etc/hosts";

/// How often a pass runs without any event (makes good failed calls and missed events).
pub const RESYNC: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ControllersError {
    #[error("{path}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not UTF-8; not editing it", path = path.display())]
    HostsNotUtf8 { path: PathBuf },
    #[error("this process already has its block in the hosts file (one simulator per process)")]
    HostBlockHeld,
    #[error("API server: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Clone, Debug)]
pub struct ControllersConfig {
    /// The cluster hosts file (Pods get it bind-mounted on `/etc/hosts`); created if missing,
    /// always rewritten in place; left in place at shutdown (its directory's owner removes it).
    pub hosts_file: PathBuf,
    /// Also keep the Service names in a marked block of this machine's `/etc/hosts`
    /// (removed at shutdown), so host processes resolve `<svc>.<ns>.svc.cluster.local`.
    /// At most one running [`Controllers`] per process may set it.
    pub host_hosts_block: bool,
}

/// The running controllers. Dropping it without [`Controllers::shutdown`] also stops them
/// (tasks aborted; the `/etc/hosts` block is removed when its task is dropped).
pub struct Controllers {
    stop: watch::Sender<bool>,
    reconciler: Option<JoinHandle<()>>,
    watchers: Vec<JoinHandle<()>>,
}

/// What every pass needs.
struct State {
    client: Client,
    hosts_file: PathBuf,
    host_block: Option<HostBlock>,
}

impl Controllers {
    /// Writes the hosts file (and claims the `/etc/hosts` block, sweeping blocks of dead pids),
    /// then starts the watchers and the reconcile loop.
    pub async fn start(
        client: Client,
        cfg: ControllersConfig,
    ) -> Result<Controllers, ControllersError> {
        hosts::write_in_place(&cfg.hosts_file, &hosts::render_cluster_hosts(&[]))?;
        let host_block = if cfg.host_hosts_block {
            Some(HostBlock::claim(Path::new(HOST_HOSTS_FILE))?)
        } else {
            None
        };
        let state = State {
            client: client.clone(),
            hosts_file: cfg.hosts_file,
            host_block,
        };
        let wake = Arc::new(Notify::new());
        let watchers = vec![
            spawn_watcher::<Deployment>(&client, &wake),
            spawn_watcher::<Pod>(&client, &wake),
            spawn_watcher::<Service>(&client, &wake),
        ];
        let (stop, stopped) = watch::channel(false);
        let reconciler = tokio::spawn(run(state, wake, stopped));
        tracing::info!("the simulator's controllers started");
        Ok(Controllers {
            stop,
            reconciler: Some(reconciler),
            watchers,
        })
    }

    /// Stops the loop after its current pass, stops the watchers and removes the `/etc/hosts`
    /// block (if any).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(reconciler) = self.reconciler.take() {
            let _ = reconciler.await;
        }
        for watcher in self.watchers.drain(..) {
            watcher.abort();
            let _ = watcher.await;
        }
        tracing::info!("the simulator's controllers stopped");
    }
}

impl Drop for Controllers {
    fn drop(&mut self) {
        if let Some(reconciler) = &self.reconciler {
            reconciler.abort();
        }
        for watcher in &self.watchers {
            watcher.abort();
        }
    }
}

/// A task that wakes the loop on every event of kind `K` (errors are retried with backoff).
fn spawn_watcher<K>(client: &Client, wake: &Arc<Notify>) -> JoinHandle<()>
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send,
    K: 'static,
{
    let api: Api<K> = Api::all(client.clone());
    let wake = wake.clone();
    tokio::spawn(async move {
        let kind = K::kind(&());
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(_) => wake.notify_one(),
                Err(error) => tracing::debug!(%kind, %error, "watch failed; retrying"),
            }
        }
    })
}

async fn run(state: State, wake: Arc<Notify>, mut stopped: watch::Receiver<bool>) {
    loop {
        pass(&state).await;
        tokio::select! {
            _ = stopped.changed() => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(RESYNC) => {}
        }
        if *stopped.borrow() {
            break;
        }
    }
    // Removes the /etc/hosts block now rather than whenever `state` would be dropped.
    drop(state);
}

/// One pass of every controller. Failures are logged and made good by a later pass.
async fn pass(state: &State) {
    let client = &state.client;
    // Pods before Deployments: every owner a listed Pod had is then in the Deployment list
    // or truly gone (see `gc::collect`).
    let pods = match list::<Pod>(client).await {
        Ok(pods) => pods,
        Err(error) => {
            tracing::warn!(%error, "could not list Pods");
            return;
        }
    };
    match list::<Deployment>(client).await {
        Ok(deployments) => {
            for deployment in &deployments {
                if let Err(error) = deployment::reconcile(client, deployment, &pods).await {
                    tracing::warn!(deployment = %deployment.name_any(), %error, "Deployment pass failed");
                }
            }
            if let Err(error) = gc::collect(client, &pods, &deployments).await {
                tracing::warn!(%error, "garbage collection failed");
            }
        }
        Err(error) => tracing::warn!(%error, "could not list Deployments"),
    }
    match list::<Service>(client).await {
        Ok(services) => {
            let desired = services::desired_cluster_ips(&services, &pods);
            write_hosts(state, &services::host_entries(&desired));
            if let Err(error) = services::update_cluster_ips(client, &services, &desired).await {
                tracing::warn!(%error, "could not update Service addresses");
            }
        }
        Err(error) => tracing::warn!(%error, "could not list Services"),
    }
}

fn write_hosts(state: &State, entries: &[HostEntry]) {
    let content = hosts::render_cluster_hosts(entries);
    match hosts::write_in_place(&state.hosts_file, &content) {
        Ok(true) => {
            tracing::info!(path = %state.hosts_file.display(), services = entries.len(), "rewrote the cluster hosts file")
        }
        Ok(false) => {}
        Err(error) => tracing::warn!(%error, "could not write the cluster hosts file"),
    }
    if let Some(block) = &state.host_block
        && let Err(error) = block.set(entries)
    {
        tracing::warn!(%error, "could not update the /etc/hosts block");
    }
}

async fn list<K>(client: &Client) -> Result<Vec<K>, kube::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    Ok(api.list(&ListParams::default()).await?.items)
}
