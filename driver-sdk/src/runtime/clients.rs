//! Cached gRPC clients to other core workers and raylets, one channel per address.

use dashmap::DashMap;
use miniray_common::auth::{self, AuthedChannel};
use miniray_common::config::MAX_MESSAGE_SIZE;
use miniray_proto::core_worker_client::CoreWorkerClient;
use miniray_proto::raylet_client::RayletClient;

use crate::error::{Error, Result};

pub(crate) struct Clients {
    token: String,
    core_workers: DashMap<String, CoreWorkerClient<AuthedChannel>>,
    raylets: DashMap<String, RayletClient<AuthedChannel>>,
}

fn channel(address: &str, token: &str) -> Result<AuthedChannel> {
    auth::connect_lazy(address, token).map_err(|e| Error::ClusterUnreachable {
        address: address.to_string(),
        reason: e.to_string(),
    })
}

impl Clients {
    pub(crate) fn new(token: String) -> Self {
        Self {
            token,
            core_workers: DashMap::new(),
            raylets: DashMap::new(),
        }
    }

    pub(crate) fn core_worker(&self, address: &str) -> Result<CoreWorkerClient<AuthedChannel>> {
        if let Some(c) = self.core_workers.get(address) {
            return Ok(c.clone());
        }
        let client = CoreWorkerClient::new(channel(address, &self.token)?)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        self.core_workers
            .insert(address.to_string(), client.clone());
        Ok(client)
    }

    pub(crate) fn raylet(&self, address: &str) -> Result<RayletClient<AuthedChannel>> {
        if let Some(c) = self.raylets.get(address) {
            return Ok(c.clone());
        }
        let client = RayletClient::new(channel(address, &self.token)?)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        self.raylets.insert(address.to_string(), client.clone());
        Ok(client)
    }

    /// Forgets a peer that failed, so the next call reconnects.
    pub(crate) fn forget_core_worker(&self, address: &str) {
        self.core_workers.remove(address);
    }
}

pub(crate) fn node_endpoint(node: &miniray_proto::NodeAddress) -> String {
    format!("{}:{}", node.host, node.port)
}
