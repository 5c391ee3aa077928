//! Instance records: one per node the autoscaler launched, persisted as JSON in the GCS KV
//! (namespace [`KV_NAMESPACE`]), which the GCS writes through its storage (Redis when
//! configured), so a restarted autoscaler knows what it launched.
//!
//! Lifecycle (after Ray v2's instance manager):
//!
//! ```text
//! requested ─▶ allocated ─▶ running ─▶ draining ─▶ terminating ─▶ terminated
//!     │ ▲          │           ▲  │         │           ▲
//!     └─┘ retry    │           └──┼─────────┘ refused   │
//!                  └──────────────┴─────────────────────┘ never joined / raylet died
//! ```
//!
//! Invariants:
//! - A record is written `requested`, with a fresh launch request id, before the provider
//!   is asked to launch; launches are idempotent per request id, so re-issuing a
//!   `requested` record (after a failure or a restart) never creates a second node.
//! - A record changes state only along the edges above ([`InstanceRecord::transition`]);
//!   a change is persisted before the autoscaler acts on it.
//! - A `terminated` record is deleted, not stored.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::clients::{Gcs, RpcError};

/// The GCS KV namespace of instance records.
pub const KV_NAMESPACE: &str = "autoscaler";
const KEY_PREFIX: &str = "instance/";

/// Launch retries back off from 1 s, doubling up to this.
const MAX_BACKOFF_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Written before the provider is asked; re-issued with the same request id.
    Requested,
    /// The provider created it; its raylet has not registered yet.
    Allocated,
    /// Its raylet registered (the record has its node id).
    Running,
    /// Its raylet accepted a drain; it exits once its work is done.
    Draining,
    /// The provider is asked to stop it.
    Terminating,
    /// Gone; the record is deleted.
    Terminated,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Requested => "requested",
            Status::Allocated => "allocated",
            Status::Running => "running",
            Status::Draining => "draining",
            Status::Terminating => "terminating",
            Status::Terminated => "terminated",
        }
    }

    /// The edges of the lifecycle.
    fn may_become(self, to: Status) -> bool {
        use Status::*;
        matches!(
            (self, to),
            (Requested, Requested | Allocated | Terminated)
                | (Allocated, Running | Terminating | Terminated)
                | (Running, Draining | Terminating | Terminated)
                | (Draining, Running | Terminating | Terminated)
                | (Terminating, Terminated)
        )
    }

    /// Not joined yet: counts as a launching node for the planner.
    pub fn is_launching(self) -> bool {
        matches!(self, Status::Requested | Status::Allocated)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// The record's own id (its KV key); stable from `requested` on.
    pub id: String,
    pub node_type: String,
    /// The launch request id the provider is asked with (idempotent per id).
    pub request_id: String,
    /// The provider's name for it, once allocated.
    pub instance_id: Option<String>,
    /// The raylet's node id (hex), once it registered.
    pub node_id: Option<String>,
    pub status: Status,
    /// Unix milliseconds of the last status change.
    pub status_since_ms: u64,
    pub created_ms: u64,
    /// Launch calls made so far and the last one's error.
    pub launch_attempts: u32,
    pub last_error: Option<String>,
    /// A failed launch is not re-issued before this (Unix milliseconds).
    pub next_attempt_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("instance {id}: {from} cannot become {to}")]
    BadTransition {
        id: String,
        from: Status,
        to: Status,
    },
    #[error("instance records: {0}")]
    Storage(#[from] RpcError),
    #[error("instance record {key} is not valid: {reason}")]
    Corrupt { key: String, reason: String },
}

impl InstanceRecord {
    /// A fresh `requested` record with a new request id.
    pub fn requested(node_type: &str, now_ms: u64) -> Self {
        let id = miniray_common::NodeId::random().hex();
        Self {
            request_id: format!("req-{id}"),
            id,
            node_type: node_type.to_string(),
            instance_id: None,
            node_id: None,
            status: Status::Requested,
            status_since_ms: now_ms,
            created_ms: now_ms,
            launch_attempts: 0,
            last_error: None,
            next_attempt_ms: now_ms,
        }
    }

    /// Moves to `to` along an edge of the lifecycle.
    pub fn transition(&mut self, to: Status, now_ms: u64) -> Result<(), InstanceError> {
        if !self.status.may_become(to) {
            return Err(InstanceError::BadTransition {
                id: self.id.clone(),
                from: self.status,
                to,
            });
        }
        if self.status != to {
            self.status_since_ms = now_ms;
        }
        self.status = to;
        Ok(())
    }

    /// The provider created it as `instance_id`.
    pub fn allocated(&mut self, instance_id: String, now_ms: u64) -> Result<(), InstanceError> {
        self.transition(Status::Allocated, now_ms)?;
        self.instance_id = Some(instance_id);
        self.last_error = None;
        Ok(())
    }

    /// A launch call failed: stays `requested`, re-issued after an exponential backoff.
    pub fn launch_failed(&mut self, error: String, now_ms: u64) -> Result<(), InstanceError> {
        self.transition(Status::Requested, now_ms)?;
        self.last_error = Some(error);
        let exp = self.launch_attempts.saturating_sub(1).min(16);
        self.next_attempt_ms = now_ms + (1000u64 << exp).min(MAX_BACKOFF_MS);
        Ok(())
    }

    /// Its raylet registered as `node_id`.
    pub fn joined(&mut self, node_id: String, now_ms: u64) -> Result<(), InstanceError> {
        self.transition(Status::Running, now_ms)?;
        self.node_id = Some(node_id);
        Ok(())
    }

    /// The name the planner and `miniray status` know it by: the provider's id once it has
    /// one, before that the record's.
    pub fn display_id(&self) -> &str {
        self.instance_id.as_deref().unwrap_or(&self.id)
    }
}

/// The records, in memory and in the GCS KV. Every change goes to the KV first.
pub struct InstanceStore {
    gcs: Gcs,
    records: BTreeMap<String, InstanceRecord>,
}

impl InstanceStore {
    /// Loads every stored record.
    pub async fn load(gcs: Gcs) -> Result<Self, InstanceError> {
        let mut records = BTreeMap::new();
        for key in gcs.kv_keys(KV_NAMESPACE, KEY_PREFIX).await? {
            let Some(bytes) = gcs.kv_get(KV_NAMESPACE, &key).await? else {
                continue;
            };
            let record: InstanceRecord =
                serde_json::from_slice(&bytes).map_err(|e| InstanceError::Corrupt {
                    key: key.clone(),
                    reason: e.to_string(),
                })?;
            records.insert(record.id.clone(), record);
        }
        Ok(Self { gcs, records })
    }

    /// A store holding `records` as if loaded (for tests of what is built from them).
    #[cfg(test)]
    pub(crate) fn with_records(gcs: Gcs, records: Vec<InstanceRecord>) -> Self {
        Self {
            gcs,
            records: records.into_iter().map(|r| (r.id.clone(), r)).collect(),
        }
    }

    pub fn records(&self) -> impl Iterator<Item = &InstanceRecord> {
        self.records.values()
    }

    pub fn get(&self, id: &str) -> Option<&InstanceRecord> {
        self.records.get(id)
    }

    /// Stores `record` (a `terminated` one is deleted), then keeps it in memory.
    pub async fn save(&mut self, record: InstanceRecord) -> Result<(), InstanceError> {
        let key = format!("{KEY_PREFIX}{}", record.id);
        if record.status == Status::Terminated {
            self.gcs.kv_del(KV_NAMESPACE, &key).await?;
            self.records.remove(&record.id);
            return Ok(());
        }
        let json = serde_json::to_vec(&record).map_err(|e| InstanceError::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        self.gcs.kv_put(KV_NAMESPACE, &key, json).await?;
        self.records.insert(record.id.clone(), record);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_goes_through_its_whole_life() {
        let mut r = InstanceRecord::requested("cpu", 100);
        assert!(r.status.is_launching());
        r.allocated("local-1".into(), 200).unwrap();
        assert_eq!((r.status, r.status_since_ms), (Status::Allocated, 200));
        assert_eq!(r.display_id(), "local-1");
        r.joined("ab".into(), 300).unwrap();
        assert!(!r.status.is_launching());
        r.transition(Status::Draining, 400).unwrap();
        r.transition(Status::Terminating, 500).unwrap();
        r.transition(Status::Terminated, 600).unwrap();
        assert_eq!(r.status_since_ms, 600);
        assert_eq!(r.created_ms, 100);
    }

    #[test]
    fn a_refused_drain_goes_back_to_running_and_a_never_joined_node_skips_the_drain() {
        let mut r = InstanceRecord::requested("cpu", 0);
        r.allocated("i".into(), 1).unwrap();
        r.transition(Status::Terminating, 2).unwrap();
        let mut r = InstanceRecord::requested("cpu", 0);
        r.allocated("i".into(), 1).unwrap();
        r.joined("n".into(), 2).unwrap();
        r.transition(Status::Draining, 3).unwrap();
        r.transition(Status::Running, 4).unwrap();
        assert_eq!(r.status, Status::Running);
    }

    #[test]
    fn edges_outside_the_lifecycle_are_refused_and_change_nothing() {
        let mut r = InstanceRecord::requested("cpu", 0);
        for to in [Status::Running, Status::Draining, Status::Terminating] {
            let e = r.transition(to, 5).unwrap_err();
            assert!(e.to_string().contains("requested cannot become"), "{e}");
        }
        assert_eq!((r.status, r.status_since_ms), (Status::Requested, 0));
        r.allocated("i".into(), 1).unwrap();
        assert!(r.transition(Status::Draining, 2).is_err());
        assert!(r.transition(Status::Requested, 2).is_err());
        r.transition(Status::Terminating, 3).unwrap();
        for to in [Status::Running, Status::Draining, Status::Allocated] {
            assert!(r.transition(to, 4).is_err());
        }
    }

    #[test]
    fn failed_launches_back_off_exponentially_up_to_a_minute() {
        let mut r = InstanceRecord::requested("cpu", 0);
        let request_id = r.request_id.clone();
        let mut waits = Vec::new();
        for _ in 0..10 {
            r.launch_attempts += 1;
            r.launch_failed("no".into(), 1_000).unwrap();
            waits.push(r.next_attempt_ms - 1_000);
        }
        assert_eq!(
            waits,
            [
                1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000, 60_000
            ]
        );
        assert_eq!(r.status, Status::Requested);
        // Re-issued with the same request id, so the provider creates nothing twice.
        assert_eq!(r.request_id, request_id);
        assert_eq!(r.last_error.as_deref(), Some("no"));
    }

    #[test]
    fn records_round_trip_through_json() {
        let mut r = InstanceRecord::requested("gpu", 7);
        r.allocated("local-x".into(), 8).unwrap();
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"status\":\"allocated\""), "{json}");
        let back: InstanceRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }
}
