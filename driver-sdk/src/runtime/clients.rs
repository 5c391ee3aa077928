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

pub(crate) struct Clients {
    token: String,
    core_workers: DashMap<String, CoreWorkerClient<AuthedChannel>>,
    raylets: DashMap<String, RayletClient<AuthedChannel>>,
    /// Push sessions not carrying a batch right now, by worker address.
    idle_sessions: DashMap<String, Vec<PushSession>>,
    /// Sessions to workers that exited are swept once this many workers have entries, so
    /// a long-running process that meets many workers keeps only live ones.
    sweep_at: AtomicUsize,
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
    format!("{}:{}", node.host, node.port)
}
