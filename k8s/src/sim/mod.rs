//! Placeholder until k8s-sim-api is merged (sim-api owns this file): only the contract's
//! `ApiAccess` fields, so the kubelet compiles before the merge.
pub mod kubelet;

/// How a client reaches the simulated API server.
#[derive(Clone, Debug)]
pub struct ApiAccess {
    pub url: String,
    pub pod_host: String,
    pub port: u16,
    pub ca_pem: String,
    pub token: String,
}
