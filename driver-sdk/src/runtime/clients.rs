//! Cached gRPC clients to other core workers and raylets, one channel per address, and the
//! idle push sessions to workers.

use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use miniray_common::auth::{self, AuthedChannel};
use miniray_common::config::MAX_MESSAGE_SIZE;
use miniray_proto::core_worker_client::CoreWorkerClient;
use miniray_proto::raylet_client::RayletClient;

use super::push::PushSession;
use crate::error::{Error, Result};

/// Idle sessions kept per worker. One is the usual need (one batch in flight per lease and
/// per actor); a few more absorb short bursts of concurrent pushes to one worker.
const IDLE_SESSIONS_PER_WORKER: usize = 4;
/// Workers with idle sessions before the first sweep of closed ones.
const FIRST_SWEEP_AT: usize = 64;
/// Cached channels (per map) before the first sweep of those to peers not in use.
const FIRST_CHANNEL_SWEEP_AT: usize = 64;

pub(crate) struct Clients {
    token: String,
    core_workers: DashMap<String, CoreWorkerClient<AuthedChannel>>,
    raylets: DashMap<String, RayletClient<AuthedChannel>>,
    /// Push sessions not carrying a batch right now, by worker address.
    idle_sessions: DashMap<String, Vec<PushSession>>,
    /// Sessions to workers that exited are swept once this many workers have entries, so
    /// a long-running process that meets many workers keeps only live ones.
    sweep_at: AtomicUsize,
    /// Channel sweeps of `core_workers` and `raylets` run once they hold this many
    /// entries; each sweep sets the next at twice what it kept, so sweeps cost O(1) per
    /// insert and the maps stay within twice the peers in use.
    core_worker_sweep_at: AtomicUsize,
    raylet_sweep_at: AtomicUsize,
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
            idle_sessions: DashMap::new(),
            sweep_at: AtomicUsize::new(FIRST_SWEEP_AT),
            core_worker_sweep_at: AtomicUsize::new(FIRST_CHANNEL_SWEEP_AT),
            raylet_sweep_at: AtomicUsize::new(FIRST_CHANNEL_SWEEP_AT),
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
        if self.core_workers.len() > self.core_worker_sweep_at.load(Ordering::Relaxed) {
            self.sweep_core_workers(address);
        }
        Ok(client)
    }

    /// Drops the channels of workers with no idle session (exited ones above all: their
    /// sessions closed), keeping `keep`. A channel dropped from a live worker only costs a
    /// reconnect at its next call.
    fn sweep_core_workers(&self, keep: &str) {
        self.idle_sessions.retain(|_, sessions| {
            sessions.retain_mut(PushSession::is_open);
            !sessions.is_empty()
        });
        self.core_workers
            .retain(|address, _| address == keep || self.idle_sessions.contains_key(address));
        let next = (2 * self.core_workers.len()).max(FIRST_CHANNEL_SWEEP_AT);
        self.core_worker_sweep_at.store(next, Ordering::Relaxed);
    }

    pub(crate) fn raylet(&self, address: &str) -> Result<RayletClient<AuthedChannel>> {
        if let Some(c) = self.raylets.get(address) {
            return Ok(c.clone());
        }
        let client = RayletClient::new(channel(address, &self.token)?)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        self.raylets.insert(address.to_string(), client.clone());
        if self.raylets.len() > self.raylet_sweep_at.load(Ordering::Relaxed) {
            // Raylets of nodes that are gone pile up in a long-running process; nothing
            // tells which are, so all but this one go and the others reconnect when used.
            self.raylets.retain(|a, _| a == address);
            self.raylet_sweep_at
                .store(FIRST_CHANNEL_SWEEP_AT, Ordering::Relaxed);
        }
        Ok(client)
    }

    /// How many channels are cached (workers, raylets), for tests of the bounds.
    #[cfg(test)]
    pub(crate) fn cached_channels(&self) -> (usize, usize) {
        (self.core_workers.len(), self.raylets.len())
    }

    /// Forgets a peer that failed, so the next call reconnects.
    pub(crate) fn forget_core_worker(&self, address: &str) {
        self.core_workers.remove(address);
        self.idle_sessions.remove(address);
    }

    /// An idle push session to `address` that is still open, if there is one.
    pub(crate) fn take_session(&self, address: &str) -> Option<PushSession> {
        let mut idle = self.idle_sessions.get_mut(address)?;
        while let Some(mut session) = idle.pop() {
            if session.is_open() {
                return Some(session);
            }
        }
        None
    }

    /// Keeps a session whose batches were all answered for the next push to `address`.
    pub(crate) fn return_session(&self, address: &str, session: PushSession) {
        {
            let mut idle = self.idle_sessions.entry(address.to_string()).or_default();
            if idle.len() >= IDLE_SESSIONS_PER_WORKER {
                session.close();
                return;
            }
            idle.push(session);
        }
        if self.idle_sessions.len() > self.sweep_at.load(Ordering::Relaxed) {
            self.idle_sessions.retain(|_, sessions| {
                sessions.retain_mut(PushSession::is_open);
                !sessions.is_empty()
            });
            let next = (2 * self.idle_sessions.len()).max(FIRST_SWEEP_AT);
            self.sweep_at.store(next, Ordering::Relaxed);
        }
    }
}

pub(crate) fn node_endpoint(node: &miniray_proto::NodeAddress) -> String {
    miniray_common::net::host_port(&node.host, node.port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cached_channels_to_many_peers_stay_bounded() {
        let clients = Clients::new("t".into());
        // Nothing listens there: lazy channels never connect, like those of exited workers.
        for port in 1..=1000u16 {
            clients.core_worker(&format!("127.0.0.1:{port}")).unwrap();
            clients.raylet(&format!("127.0.0.2:{port}")).unwrap();
            let (workers, raylets) = clients.cached_channels();
            assert!(
                workers <= FIRST_CHANNEL_SWEEP_AT + 1,
                "{workers} worker channels"
            );
            assert!(
                raylets <= FIRST_CHANNEL_SWEEP_AT + 1,
                "{raylets} raylet channels"
            );
        }
        // The peer just asked for is always kept.
        assert!(clients.core_workers.contains_key("127.0.0.1:1000"));
        assert!(clients.raylets.contains_key("127.0.0.2:1000"));
    }
}
