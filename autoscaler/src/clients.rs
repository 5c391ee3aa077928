//! The autoscaler's gRPC calls: the GCS (resource state, autoscaling state, the KV that
//! holds instance records) and a raylet's `DrainNode`.
//!
//! Every channel carries the cluster token and this process's TLS setting
//! (`miniray_common::auth`), and every call has a deadline, so a stalled peer costs one
//! round, never the loop.

use std::time::Duration;

use miniray_common::auth::{self, AuthError, AuthedChannel};
use miniray_proto::gcs_client::GcsClient;
use miniray_proto::raylet_client::RayletClient;
use miniray_proto::{
    AutoscalingState, ClusterResourceState, DrainNodeReply, DrainNodeRequest,
    GetClusterResourceStateRequest, KvDelRequest, KvGetRequest, KvKeysRequest, KvPutRequest,
    ReportAutoscalingStateRequest,
};

/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error(transparent)]
    Connect(#[from] AuthError),
    #[error("{call} failed: {message}")]
    Failed { call: &'static str, message: String },
    #[error("{call} timed out after {timeout:?}")]
    TimedOut {
        call: &'static str,
        timeout: Duration,
    },
    #[error("{call}: the reply has no {field}")]
    Incomplete {
        call: &'static str,
        field: &'static str,
    },
}

async fn call<T>(
    name: &'static str,
    fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, RpcError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status)) => Err(RpcError::Failed {
            call: name,
            message: status.message().to_string(),
        }),
        Err(_) => Err(RpcError::TimedOut {
            call: name,
            timeout: CALL_TIMEOUT,
        }),
    }
}

/// The GCS as the autoscaler uses it. Cheap to clone (one shared channel).
#[derive(Clone)]
pub struct Gcs {
    client: GcsClient<AuthedChannel>,
    token: String,
}

impl Gcs {
    /// A client that connects on first use and reconnects after failures (the GCS may
    /// restart under a running autoscaler).
    pub fn connect_lazy(address: &str, token: &str) -> Result<Self, RpcError> {
        let channel = auth::connect_lazy(address, token)?;
        Ok(Self {
            client: GcsClient::new(channel)
                .max_decoding_message_size(miniray_common::config::MAX_MESSAGE_SIZE),
            token: token.to_string(),
        })
    }

    pub async fn resource_state(&self) -> Result<ClusterResourceState, RpcError> {
        let mut c = self.client.clone();
        let reply = call(
            "GetClusterResourceState",
            c.get_cluster_resource_state(GetClusterResourceStateRequest {}),
        )
        .await?;
        reply.state.ok_or(RpcError::Incomplete {
            call: "GetClusterResourceState",
            field: "state",
        })
    }

    pub async fn report_state(&self, state: AutoscalingState) -> Result<(), RpcError> {
        let mut c = self.client.clone();
        call(
            "ReportAutoscalingState",
            c.report_autoscaling_state(ReportAutoscalingStateRequest { state: Some(state) }),
        )
        .await?;
        Ok(())
    }

    pub async fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, RpcError> {
        let mut c = self.client.clone();
        let reply = call(
            "KvGet",
            c.kv_get(KvGetRequest {
                ns: ns.to_string(),
                key: key.as_bytes().to_vec(),
            }),
        )
        .await?;
        Ok(reply.found.then_some(reply.value))
    }

    /// Writes `key` (replacing any value); the GCS writes it through its storage.
    pub async fn kv_put(&self, ns: &str, key: &str, value: Vec<u8>) -> Result<(), RpcError> {
        let mut c = self.client.clone();
        call(
            "KvPut",
            c.kv_put(KvPutRequest {
                ns: ns.to_string(),
                key: key.as_bytes().to_vec(),
                value,
                overwrite: true,
            }),
        )
        .await?;
        Ok(())
    }

    pub async fn kv_del(&self, ns: &str, key: &str) -> Result<(), RpcError> {
        let mut c = self.client.clone();
        call(
            "KvDel",
            c.kv_del(KvDelRequest {
                ns: ns.to_string(),
                key: key.as_bytes().to_vec(),
            }),
        )
        .await?;
        Ok(())
    }

    /// Keys of `ns` starting with `prefix`; keys that are not UTF-8 are not ours and are
    /// skipped.
    pub async fn kv_keys(&self, ns: &str, prefix: &str) -> Result<Vec<String>, RpcError> {
        let mut c = self.client.clone();
        let reply = call(
            "KvKeys",
            c.kv_keys(KvKeysRequest {
                ns: ns.to_string(),
                prefix: prefix.as_bytes().to_vec(),
            }),
        )
        .await?;
        Ok(reply
            .keys
            .into_iter()
            .filter_map(|k| String::from_utf8(k).ok())
            .collect())
    }

    /// Asks the raylet at `address` (`HOST:PORT`) to drain; it refuses unless it is idle.
    pub async fn drain_node(
        &self,
        address: &str,
        reason: &str,
    ) -> Result<DrainNodeReply, RpcError> {
        let channel =
            match tokio::time::timeout(CALL_TIMEOUT, auth::connect(address, &self.token)).await {
                Ok(channel) => channel?,
                Err(_) => {
                    return Err(RpcError::TimedOut {
                        call: "DrainNode",
                        timeout: CALL_TIMEOUT,
                    });
                }
            };
        let mut c = RayletClient::new(channel);
        call(
            "DrainNode",
            c.drain_node(DrainNodeRequest {
                reason: reason.to_string(),
            }),
        )
        .await
    }
}
