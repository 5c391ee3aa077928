//! The interface to whatever creates machines (after Ray v2's cloud provider): local
//! processes, Kubernetes Pods.

use std::collections::BTreeMap;

/// An instance the provider knows about and has not finished terminating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudInstance {
    /// The provider's name for it; the raylet reports it as `cloud_instance_id`.
    pub instance_id: String,
    pub node_type: String,
    /// The launch request that created it (makes a retried launch idempotent).
    pub request_id: String,
    /// Still starting (a Pod not yet running, a process not yet up) rather than running.
    pub pending: bool,
}

/// A launch or terminate that failed, as `poll_errors` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderError {
    pub node_type: String,
    /// Empty for a launch that created nothing.
    pub instance_id: String,
    pub request_id: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderCallError {
    /// The call failed or timed out: the outcome is unknown, never "no instances".
    #[error("provider call failed: {0}")]
    Unavailable(String),
    #[error("invalid provider request: {0}")]
    Invalid(String),
}

/// Creates and removes worker nodes. Implementations must be idempotent per
/// `request_id`: a launch retried with the same id creates nothing twice.
#[async_trait::async_trait]
pub trait NodeProvider: Send + Sync {
    /// Starts `count` nodes of `node_type`, named by the provider; returns their ids.
    async fn launch(
        &self,
        node_type: &str,
        count: usize,
        request_id: &str,
    ) -> Result<Vec<String>, ProviderCallError>;
    /// Stops these instances (a no-op for ids already gone).
    async fn terminate(
        &self,
        instance_ids: &[String],
        request_id: &str,
    ) -> Result<(), ProviderCallError>;
    /// Every instance of this cluster that is not terminated, by instance id.
    async fn non_terminated(&self) -> Result<BTreeMap<String, CloudInstance>, ProviderCallError>;
    /// Failures of earlier asynchronous launches and terminations, each reported once.
    fn poll_errors(&self) -> Vec<ProviderError>;
}
