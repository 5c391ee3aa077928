//! The whole simulator in one value: the Pod network, the API server, the controllers and
//! the kubelet, started in that order and stopped in the reverse one.
//!
//! Invariant: the kubeconfig file is written last, once every part serves, so a process that
//! waits for the file (a test, `miniray up`) finds a cluster that runs Pods.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::controllers::{Controllers, ControllersConfig};
use super::kubelet::network::PodNetwork;
use super::kubelet::{Kubelet, KubeletConfig, NODE_NAME};
use super::{ApiAccess, ApiServer, SimError};

#[derive(Clone, Debug)]
pub struct SimulatorConfig {
    /// Written (mode 0600) once the simulator serves.
    pub kubeconfig: PathBuf,
    /// What a container whose command is `miniray` runs: the image stands for this binary.
    pub miniray_exe: PathBuf,
    /// Pod directories, logs and the cluster hosts file; must not lie under `/tmp` (each Pod
    /// has a `/tmp` of its own). Default: `/var/tmp/miniray-k8s-sim-<pid>`.
    pub state_dir: Option<PathBuf>,
    /// Keep Service names in a marked block of this machine's `/etc/hosts`, so processes
    /// on the host resolve `<svc>.<ns>.svc.cluster.local` as Pods do.
    pub host_hosts_block: bool,
}

pub struct Simulator {
    network: Arc<PodNetwork>,
    api: Option<ApiServer>,
    controllers: Option<Controllers>,
    kubelet: Option<Kubelet>,
    state_dir: PathBuf,
    kubeconfig: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SimulatorError {
    #[error(transparent)]
    Api(#[from] SimError),
    #[error("the simulator's controllers: {0}")]
    Controllers(#[from] super::controllers::ControllersError),
    #[error("the simulator's kubelet: {0}")]
    Kubelet(#[from] super::kubelet::KubeletError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Simulator {
    pub async fn start(cfg: SimulatorConfig) -> Result<Simulator, SimulatorError> {
        let state_dir = cfg.state_dir.clone().unwrap_or_else(|| {
            PathBuf::from(format!("/var/tmp/miniray-k8s-sim-{}", std::process::id()))
        });
        std::fs::create_dir_all(&state_dir).map_err(|source| SimulatorError::Io {
            what: "creating",
            path: state_dir.clone(),
            source,
        })?;
        let network = Arc::new(PodNetwork::create());
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let bridge = network.bridge_ip();
        let mut listen = vec![loopback];
        if bridge != loopback {
            listen.push(bridge);
        }
        let mut sim = Simulator {
            network: network.clone(),
            api: None,
            controllers: None,
            kubelet: None,
            state_dir: state_dir.clone(),
            kubeconfig: cfg.kubeconfig.clone(),
        };
        // On any error below, dropping `sim` stops what started.
        let api = ApiServer::start(&listen, bridge, Some(state_dir.clone())).await?;
        let access = api.access().clone();
        sim.api = Some(api);
        let hosts_file = state_dir.join("hosts");
        sim.controllers = Some(
            Controllers::start(
                access.client().await?,
                ControllersConfig {
                    hosts_file: hosts_file.clone(),
                    host_hosts_block: cfg.host_hosts_block,
                },
            )
            .await?,
        );
        sim.kubelet = Some(
            Kubelet::start(
                access.client().await?,
                KubeletConfig {
                    node_name: NODE_NAME.into(),
                    state_dir: state_dir.clone(),
                    network,
                    miniray_exe: cfg.miniray_exe.clone(),
                    api: access.clone(),
                    hosts_file,
                },
            )
            .await?,
        );
        access.write_kubeconfig(&cfg.kubeconfig)?;
        tracing::info!(
            url = %access.url,
            kubeconfig = %cfg.kubeconfig.display(),
            isolated = sim.network.isolated(),
            "the Kubernetes simulator serves"
        );
        Ok(sim)
    }

    /// How to reach the API server.
    pub fn access(&self) -> Option<&ApiAccess> {
        self.api.as_ref().map(ApiServer::access)
    }

    /// Where Pod directories and container logs live (`pods/<ns>_<name>/<container>.log`).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Whether each Pod has a network namespace of its own (false in the loopback fallback).
    pub fn isolated(&self) -> bool {
        self.network.isolated()
    }

    /// Stops every Pod process, the controllers (removing the `/etc/hosts` block) and the API
    /// server, removes the Pod network and the kubeconfig. Logs stay under `state_dir`.
    pub async fn shutdown(mut self) {
        if let Some(kubelet) = self.kubelet.take() {
            kubelet.shutdown().await;
        }
        if let Some(controllers) = self.controllers.take() {
            controllers.shutdown().await;
        }
        if let Some(api) = self.api.take() {
            api.shutdown().await;
        }
        self.network.shutdown();
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        // Without `shutdown` (an error at start, a panic): the parts' own drops abort their
        // tasks; the network goes here.
        self.kubelet.take();
        self.controllers.take();
        self.api.take();
        self.network.shutdown();
    }
}
