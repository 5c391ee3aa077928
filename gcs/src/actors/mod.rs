//! The actor table: registration, lookups, kills and deaths of actors, and the state
//! machine every change goes through. Each actor that is not dead has one supervisor task
//! ([`supervisor`]) that places it ([`placement`]), leases a worker for it, runs its
//! constructor there and waits for whatever ends the worker.
//!
//! ```text
//! PENDING_CREATION ──constructed──▶ ALIVE ──worker/node died, restarts left──▶ RESTARTING
//!        │                            │                                           │
//!        └──────── kill, job finished, constructor failed, no restarts left ──────┴──▶ DEAD
//! ```
//!
//! Invariants:
//! - State changes are persisted before they are visible: a change reaches memory,
//!   subscribers and `GetActor` waiters only after the backend accepted it, so a failed
//!   write changes nothing and a restarted GCS sees every state anyone was told about.
//! - Every state change bumps the actor's `version`. A supervisor's change applies only to
//!   the version it observed, so a kill, a job end or a reported death that came first
//!   always wins over a supervisor that was still working on an older state.
//! - A death is counted once: only events naming the actor's current worker (the one
//!   hosting it, or the one leased for its creation) count, and the change they cause
//!   clears that worker in the same critical section, so a second report of the same death
//!   names nobody's current worker and is ignored.
//! - Whoever takes a lease out of an entry returns it to the raylet that granted it
//!   (disconnecting the worker); a supervisor whose grant never made it into the entry
//!   returns that grant itself.
//! - No storage call is made while `table` (a plain mutex, memory work only) is held.
//!   Persisted changes are serialized by `writes`, held around "write storage, then apply
//!   in memory"; every version bump happens under it, so a change computed under `writes`
//!   still applies to the version it was computed from when the write returns.
//! - Lock order: the GCS `job_writes` may be held while taking `writes`, never the other
//!   way round.
//! - Dead actors stay in the table and in storage, so callers learn why an actor died, but
//!   only the last `max_destroyed` of them (Ray's `maximum_gcs_destroyed_actor_cached_count`):
//!   beyond that the one that died first is forgotten (removed from storage, then from the
//!   table). Actors that are not dead are never forgotten; a forgotten actor is NOT_FOUND.

pub(crate) mod placement;
pub(crate) mod supervisor;
mod table;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use miniray_common::ids::{InvalidId, LeaseId};
use miniray_common::time::now_ms;
use miniray_common::{ActorId, ErrorCode, JobId, NodeId, Resources, WorkerId};
use miniray_proto::{
    ActorInfo, ActorState, Channel, GetActorRequest, JobInfo, KillActorRequest, NodeAddress,
    PubMessage, ReportWorkerFailureRequest, ResourceSet, WorkerAddress, pub_message,
};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::{broadcast, watch};
use tonic::Status;

use self::table::ActorTable;
use crate::GcsError;
use crate::storage::{ACTORS_TABLE, Storage, StorageError};

/// Longest a `GetActor` with `wait` is held; also what `timeout_ms = 0` means.
pub(crate) const GET_ACTOR_MAX_WAIT: Duration = Duration::from_secs(60);

/// Death reason of an actor killed without a reason.
const DEFAULT_KILL_REASON: &str = "killed";
/// Death reason of the actors of a finished job.
pub(crate) const JOB_FINISHED_REASON: &str = "its job finished";

/// A worker lease held for an actor.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Lease {
    pub lease_id: LeaseId,
    /// The raylet that granted the lease (and must get it back).
    pub node: NodeAddress,
    pub worker: WorkerAddress,
}

/// The creation in progress (memory only: a restarted GCS starts creations over).
#[derive(Debug, Clone)]
struct Attempt {
    node: NodeAddress,
    /// Set once the raylet granted a worker.
    lease: Option<Lease>,
}

/// One actor as the GCS tracks it.
struct ActorEntry {
    info: ActorInfo,
    /// Bumped on every persisted change; see the module invariants.
    version: u64,
    /// Carries `version`: `GetActor` waiters and the supervisor wait on it.
    changed: watch::Sender<u64>,
    /// Only while PENDING_CREATION or RESTARTING; cleared by every state change.
    attempt: Option<Attempt>,
}

impl ActorEntry {
    fn new(info: ActorInfo) -> Self {
        Self {
            info,
            version: 0,
            changed: watch::Sender::new(0),
            attempt: None,
        }
    }

    fn is_dead(&self) -> bool {
        is_dead(&self.info)
    }

    /// The lease the actor's current worker is held under.
    fn lease(&self) -> Option<Lease> {
        if self.info.state == ActorState::Alive as i32 {
            lease_of(&self.info)
        } else {
            self.attempt.as_ref().and_then(|a| a.lease.clone())
        }
    }

    /// The node the actor lives on, or is being placed on.
    fn node_id(&self) -> Option<NodeId> {
        let node = if self.info.state == ActorState::Alive as i32 {
            self.info.node.as_ref()
        } else {
            self.attempt.as_ref().map(|a| &a.node)
        };
        node.and_then(|n| NodeId::from_bytes(&n.node_id).ok())
    }
}

fn is_dead(info: &ActorInfo) -> bool {
    info.state == ActorState::Dead as i32
}

fn lease_of(info: &ActorInfo) -> Option<Lease> {
    Some(Lease {
        lease_id: LeaseId::from_bytes(&info.lease_id).ok()?,
        node: info.node.clone()?,
        worker: info.address.clone()?,
    })
}

/// The record without a worker: only ALIVE actors have one.
fn without_worker(info: &ActorInfo) -> ActorInfo {
    ActorInfo {
        address: None,
        lease_id: Vec::new(),
        node: None,
        ..info.clone()
    }
}

fn dead(info: &ActorInfo, reason: String) -> ActorInfo {
    ActorInfo {
        state: ActorState::Dead as i32,
        death_reason: reason,
        end_time_ms: now_ms(),
        ..without_worker(info)
    }
}

/// The record after the actor's current worker died for `why`: restarting while restarts
/// are left (`max_restarts = -1` has no limit), dead otherwise. The reason says which.
pub(crate) fn after_worker_death(info: &ActorInfo, why: &str) -> ActorInfo {
    let max = info.max_restarts;
    if max == -1 || i64::from(info.num_restarts) < max {
        let restart = info.num_restarts.saturating_add(1);
        let limit = if max == -1 {
            "no limit".to_string()
        } else {
            format!("max_restarts = {max}")
        };
        ActorInfo {
            state: ActorState::Restarting as i32,
            num_restarts: restart,
            death_reason: format!("its worker died ({why}); restart {restart} ({limit})"),
            ..without_worker(info)
        }
    } else {
        dead(
            info,
            format!("its worker died ({why}) and it has no restarts left (max_restarts = {max})"),
        )
    }
}

/// What a supervisor wants to happen to its actor.
#[derive(Debug, Clone)]
pub(crate) enum Transition {
    /// The constructor returned on the attempt's worker.
    Alive,
    /// The constructor failed: dead for good, no restart.
    ConstructorFailed(String),
    /// The current worker died or became unreachable.
    WorkerDied(String),
    /// Dead for this reason (its job finished, its record is unusable).
    Dead(String),
}

/// Why a supervisor's change was not applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpdateError {
    #[error("actor {0} is unknown")]
    Unknown(ActorId),
    /// Someone else changed the actor first; the supervisor re-reads it.
    #[error("actor {0} changed meanwhile")]
    Stale(ActorId),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The state of one actor as a supervisor saw it.
pub(crate) struct Snapshot {
    pub info: ActorInfo,
    pub version: u64,
    /// Fires on the first change after the snapshot was taken.
    pub changed: watch::Receiver<u64>,
}

pub(crate) struct ActorManager {
    storage: Arc<dyn Storage>,
    events: broadcast::Sender<PubMessage>,
    /// The cluster token, for leases and pushes to raylets and workers.
    token: String,
    /// Memory only; never held across an await (see the module invariants).
    table: Mutex<ActorTable>,
    /// Held around each persisted change, so writes land in the order of the in-memory
    /// updates (same discipline as the node and job tables).
    writes: tokio::sync::Mutex<()>,
    /// Bumped when a node registers or dies: waiting placements and supervisors watching
    /// their node re-check.
    cluster: watch::Sender<u64>,
    /// Dead actors kept before the oldest is forgotten.
    max_destroyed: usize,
    /// Ids of the dead actors in the table, the first to die first (see the invariants).
    destroyed: parking_lot::Mutex<VecDeque<ActorId>>,
    /// Actors whose placement found no alive node that could ever hold them, with what
    /// they need: the autoscaler's pending actors. Kept by the supervisor while it waits.
    unplaceable: parking_lot::Mutex<HashMap<ActorId, Resources>>,
}

impl ActorManager {
    /// Reloads the actor table from the backend. Supervisors are started separately
    /// ([`supervisor::resume`]) once the GCS state is shared.
    pub(crate) async fn load(
        storage: Arc<dyn Storage>,
        events: broadcast::Sender<PubMessage>,
        token: String,
        max_destroyed: usize,
    ) -> Result<Self, GcsError> {
        let mut table = ActorTable::default();
        for (key, value) in storage.get_all(ACTORS_TABLE).await? {
            let corrupt = |reason: String| GcsError::CorruptRecord {
                table: ACTORS_TABLE,
                key: hex::encode(&key),
                reason,
            };
            let info = ActorInfo::decode(value.as_slice()).map_err(|e| corrupt(e.to_string()))?;
            let id = ActorId::from_bytes(&key).map_err(|e| corrupt(e.to_string()))?;
            table.insert(id, ActorEntry::new(info));
        }
        if !table.is_empty() {
            let alive = table.values().filter(|e| !e.is_dead()).count();
            tracing::info!(
                actors = table.len(),
                not_dead = alive,
                "reloaded actors from storage"
            );
        }
        let mut dead: Vec<(u64, u64, ActorId)> = table
            .iter()
            .filter(|(_, e)| e.is_dead())
            .map(|(id, e)| (e.info.end_time_ms, e.info.create_time_ms, *id))
            .collect();
        dead.sort();
        let manager = Self {
            storage,
            events,
            token,
            table: Mutex::new(table),
            writes: tokio::sync::Mutex::new(()),
            cluster: watch::Sender::new(0),
            max_destroyed,
            destroyed: parking_lot::Mutex::new(dead.into_iter().map(|(_, _, id)| id).collect()),
            unplaceable: parking_lot::Mutex::new(HashMap::new()),
        };
        manager.evict_destroyed().await;
        Ok(manager)
    }

    /// Forgets the dead actors that died first while more than `max_destroyed` are kept.
    /// One that cannot be removed from storage stays (in the table too) and is retried at
    /// the next death.
    async fn evict_destroyed(&self) {
        let victims: Vec<ActorId> = {
            let mut destroyed = self.destroyed.lock();
            let excess = destroyed.len().saturating_sub(self.max_destroyed);
            destroyed.drain(..excess).collect()
        };
        if victims.is_empty() {
            return;
        }
        // Under `writes` (storage first, then memory), never under `table`.
        let _writes = self.writes.lock().await;
        for (i, id) in victims.iter().enumerate() {
            // Only dead actors are listed, and a dead actor never changes again.
            if !self.table.lock().get(id).is_some_and(ActorEntry::is_dead) {
                continue;
            }
            if let Err(e) = self.storage.delete(ACTORS_TABLE, id.as_bytes()).await {
                tracing::warn!(actor_id = %id, error = %e, "cannot forget a dead actor; will retry");
                let mut destroyed = self.destroyed.lock();
                for id in victims[i..].iter().rev() {
                    destroyed.push_front(*id);
                }
                return;
            }
            self.table.lock().remove(id);
            tracing::debug!(actor_id = %id, "dead actor forgotten");
        }
    }

    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// Records that no alive node could ever hold the actor (`Some`), or that this is over
    /// (`None`: placed, changed or gone).
    pub(crate) fn set_unplaceable(&self, id: ActorId, needs: Option<Resources>) {
        let mut unplaceable = self.unplaceable.lock();
        match needs {
            Some(r) => unplaceable.insert(id, r),
            None => unplaceable.remove(&id),
        };
    }

    /// What each actor waiting for a node that could hold it needs.
    pub(crate) fn unplaceable(&self) -> Vec<Resources> {
        self.unplaceable.lock().values().cloned().collect()
    }

    /// Tells supervisors that nodes registered or died.
    pub(crate) fn cluster_changed(&self) {
        self.cluster.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Fires on the next [`ActorManager::cluster_changed`].
    pub(crate) fn watch_cluster(&self) -> watch::Receiver<u64> {
        self.cluster.subscribe()
    }

    /// Persists `next` as the actor's record, then installs it, wakes waiters and publishes
    /// it. Returns the lease that the change ended, which the caller must return. The caller
    /// holds `writes` and computed `next` under it.
    async fn commit(&self, id: ActorId, next: ActorInfo) -> Result<Option<Lease>, StorageError> {
        self.storage
            .put(ACTORS_TABLE, id.as_bytes(), &next.encode_to_vec())
            .await?;
        // Entries are never removed while `writes` is held, so the actor is still there.
        let ended = self.table.lock().update(&id, |entry| {
            let before = entry.lease();
            if is_dead(&next) {
                // Deaths are final, so each actor is listed once (see `evict_destroyed`).
                self.destroyed.lock().push_back(id);
            }
            entry.info = next;
            entry.attempt = None;
            entry.version += 1;
            entry.changed.send_replace(entry.version);
            let _ = self.events.send(PubMessage {
                channel: Channel::ActorChanges as i32,
                payload: Some(pub_message::Payload::Actor(entry.info.clone())),
            });
            // Becoming ALIVE keeps the creation's lease; every other change ends it.
            before.filter(|b| entry.lease().as_ref() != Some(b))
        });
        Ok(ended.flatten())
    }

    /// Registers a validated new actor (`CreateActor`). `job` is the actor's job as the
    /// table has it; the caller holds the GCS `job_writes`, so the job cannot finish between
    /// the check and the insert. Returns true when the actor is new and needs a supervisor;
    /// a repeated identical request returns false.
    pub(crate) async fn register(
        &self,
        job: Option<&JobInfo>,
        id: ActorId,
        job_id: JobId,
        info: ActorInfo,
    ) -> Result<bool, Status> {
        let _writes = self.writes.lock().await;
        {
            let table = self.table.lock();
            if let Some(existing) = table.get(&id) {
                if same_request(&existing.info, &info) {
                    return Ok(false);
                }
                return Err(ErrorCode::AlreadyExists.status(format!(
                    "actor {id} exists already with a different definition"
                )));
            }
            match job {
                None => return Err(invalid(format!("create actor: unknown job {job_id}"))),
                Some(job) if job.finished => {
                    return Err(invalid(format!("create actor: job {job_id} has finished")));
                }
                Some(_) => {}
            }
            if !info.name.is_empty()
                && let Some((other, _)) = table
                    .iter()
                    .find(|(_, e)| !e.is_dead() && e.info.name == info.name)
            {
                return Err(ErrorCode::AlreadyExists.status(format!(
                    "an actor named {:?} exists already (actor {other}); names are unique among actors that are not dead",
                    info.name
                )));
            }
        }
        self.storage
            .put(ACTORS_TABLE, id.as_bytes(), &info.encode_to_vec())
            .await
            .map_err(|e| e.to_status())?;
        tracing::info!(actor_id = %id, job_id = %job_id, name = %info.name, class = %info.class_name, max_restarts = info.max_restarts, "actor registered");
        let _ = self.events.send(PubMessage {
            channel: Channel::ActorChanges as i32,
            payload: Some(pub_message::Payload::Actor(info.clone())),
        });
        self.table.lock().insert(id, ActorEntry::new(info));
        Ok(true)
    }

    /// `GetActor`: by id (any state) or by name (actors that are not dead), optionally
    /// waiting until the actor is ALIVE with enough restarts, or DEAD, or the wait ends.
    pub(crate) async fn get(&self, req: GetActorRequest) -> Result<ActorInfo, Status> {
        let id = {
            let table = self.table.lock();
            if !req.actor_id.is_empty() {
                let id = parse_actor_id(&req.actor_id)?;
                if !table.contains_key(&id) {
                    return Err(ErrorCode::NotFound.status(format!("unknown actor {id}")));
                }
                id
            } else if !req.name.is_empty() {
                table
                    .iter()
                    .find(|(_, e)| !e.is_dead() && e.info.name == req.name)
                    .map(|(id, _)| *id)
                    .ok_or_else(|| {
                        ErrorCode::NotFound.status(format!("no live actor is named {:?}", req.name))
                    })?
            } else {
                return Err(invalid("get actor: give an actor id or a name"));
            }
        };
        let wait = match req.timeout_ms {
            0 => GET_ACTOR_MAX_WAIT,
            ms => Duration::from_millis(ms).min(GET_ACTOR_MAX_WAIT),
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut changed = {
                let table = self.table.lock();
                let entry = table
                    .get(&id)
                    .ok_or_else(|| ErrorCode::NotFound.status(format!("unknown actor {id}")))?;
                let info = &entry.info;
                let settled = is_dead(info)
                    || (info.state == ActorState::Alive as i32
                        && info.num_restarts >= req.min_num_restarts);
                if !req.wait || settled {
                    return Ok(info.clone());
                }
                // Subscribed under the lock: no change after this check can be missed.
                entry.changed.subscribe()
            };
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                // Changed: re-check.
                Ok(Ok(())) => {}
                // Timed out (or the entry's sender is gone, which cannot happen while the
                // table holds it): answer with the state as it is now.
                Ok(Err(_)) | Err(_) => {
                    let table = self.table.lock();
                    return table
                        .get(&id)
                        .map(|e| e.info.clone())
                        .ok_or_else(|| ErrorCode::NotFound.status(format!("unknown actor {id}")));
                }
            }
        }
    }

    /// `KillActor`: dead for good, from any state; killing a dead actor changes nothing.
    pub(crate) async fn kill(&self, req: KillActorRequest) -> Result<(), Status> {
        let id = parse_actor_id(&req.actor_id)?;
        let reason = if req.reason.is_empty() {
            DEFAULT_KILL_REASON.to_string()
        } else {
            req.reason
        };
        let ended = {
            let _writes = self.writes.lock().await;
            let next = {
                let table = self.table.lock();
                let entry = table
                    .get(&id)
                    .ok_or_else(|| ErrorCode::NotFound.status(format!("unknown actor {id}")))?;
                if entry.is_dead() {
                    return Ok(());
                }
                dead(&entry.info, reason.clone())
            };
            let name = next.name.clone();
            let ended = self.commit(id, next).await.map_err(|e| e.to_status())?;
            tracing::info!(actor_id = %id, name = %name, reason = %reason, "actor killed");
            ended
        };
        if let Some(lease) = ended {
            supervisor::return_lease(self.token.clone(), id, lease);
        }
        self.evict_destroyed().await;
        Ok(())
    }

    /// `ReportWorkerFailure`: the actor whose current worker this is (if any) restarts or
    /// dies. Reports naming no actor's current worker are ignored, which makes repeated
    /// reports of one death harmless.
    pub(crate) async fn worker_failed(
        &self,
        req: ReportWorkerFailureRequest,
    ) -> Result<(), Status> {
        let node_id = NodeId::from_bytes(&req.node_id).map_err(bad_id)?;
        let worker_id = WorkerId::from_bytes(&req.worker_id).map_err(bad_id)?;
        let why = if req.reason.is_empty() {
            format!("worker {worker_id} exited")
        } else {
            format!("worker {worker_id} exited with {}", req.reason)
        };
        let (id, ended) = {
            let _writes = self.writes.lock().await;
            let found = self
                .table
                .lock()
                .iter()
                .find(|(_, e)| {
                    !e.is_dead()
                        && e.lease().is_some_and(|l| {
                            l.worker.worker_id == worker_id.as_bytes()
                                && l.node.node_id == node_id.as_bytes()
                        })
                })
                .map(|(id, e)| (*id, after_worker_death(&e.info, &why)));
            let Some((id, next)) = found else {
                tracing::debug!(worker_id = %worker_id, node_id = %node_id, "failure of a worker hosting no actor ignored");
                return Ok(());
            };
            let (name, state, reason) =
                (next.name.clone(), next.state(), next.death_reason.clone());
            let ended = self.commit(id, next).await.map_err(|e| e.to_status())?;
            tracing::warn!(actor_id = %id, name = %name, node_id = %node_id, worker_id = %worker_id, ?state, reason = %reason, "actor's worker died");
            (id, ended)
        };
        if let Some(lease) = ended {
            // The raylet has freed it already; returning it again is harmless and keeps
            // "whoever takes a lease out returns it" without exceptions.
            supervisor::return_lease(self.token.clone(), id, lease);
        }
        self.evict_destroyed().await;
        Ok(())
    }

    /// The job finished: every actor of it that is not dead dies. Called with the GCS
    /// `job_writes` held (lock order job writes → actor writes). A change that cannot be
    /// persisted is logged; the actor's supervisor retries it when it next looks at the
    /// actor.
    pub(crate) async fn end_job(&self, job_id: JobId) {
        let mut ended = Vec::new();
        {
            let _writes = self.writes.lock().await;
            let changes: Vec<(ActorId, ActorInfo)> = self
                .table
                .lock()
                .iter()
                .filter(|(_, e)| !e.is_dead() && e.info.job_id == job_id.as_bytes())
                .map(|(id, e)| (*id, dead(&e.info, JOB_FINISHED_REASON.to_string())))
                .collect();
            for (id, next) in changes {
                let name = next.name.clone();
                match self.commit(id, next).await {
                    Ok(lease) => {
                        tracing::info!(actor_id = %id, job_id = %job_id, name = %name, "actor ended with its job");
                        ended.extend(lease.map(|l| (id, l)));
                    }
                    Err(e) => {
                        tracing::warn!(actor_id = %id, job_id = %job_id, error = %e, "cannot persist the end of an actor; its supervisor will retry")
                    }
                }
            }
        }
        for (id, lease) in ended {
            supervisor::return_lease(self.token.clone(), id, lease);
        }
        self.evict_destroyed().await;
    }

    /// How many actors the table holds in each state (the metrics' view; no clones).
    pub(crate) fn state_counts(&self) -> HashMap<i32, u64> {
        let mut counts = HashMap::new();
        for entry in self.table.lock().values() {
            *counts.entry(entry.info.state).or_default() += 1;
        }
        counts
    }

    /// Every actor, dead ones included.
    pub(crate) async fn all(&self) -> Vec<ActorInfo> {
        self.table.lock().values().map(|e| e.info.clone()).collect()
    }

    /// The actor as it is now, with a receiver that fires on its next change.
    pub(crate) async fn snapshot(&self, id: ActorId) -> Option<Snapshot> {
        let table = self.table.lock();
        let entry = table.get(&id)?;
        Some(Snapshot {
            info: entry.info.clone(),
            version: entry.version,
            changed: entry.changed.subscribe(),
        })
    }

    /// Ids of the actors that need a supervisor, and whether each is (believed) ALIVE.
    pub(crate) async fn not_dead(&self) -> Vec<(ActorId, bool)> {
        self.table
            .lock()
            .iter()
            .filter(|(_, e)| !e.is_dead())
            .map(|(id, e)| (*id, e.info.state == ActorState::Alive as i32))
            .collect()
    }

    /// Actors that are not dead per node they live on or are being placed on.
    pub(crate) async fn placed_counts(&self) -> HashMap<NodeId, usize> {
        self.table.lock().placed().clone()
    }

    /// Records the node chosen for the creation at `version`. False when the actor changed.
    pub(crate) async fn set_attempt_node(
        &self,
        id: ActorId,
        version: u64,
        node: NodeAddress,
    ) -> bool {
        self.table.lock().update(&id, |e| {
            let current = e.version == version && !e.is_dead();
            if current {
                e.attempt = Some(Attempt { node, lease: None });
            }
            current
        }) == Some(true)
    }

    /// Hands the lease granted for the creation at `version` to the entry, which from then
    /// on owns it (see the module invariants). False when the actor changed: the caller
    /// still owns the lease and must return it.
    pub(crate) async fn set_attempt_lease(&self, id: ActorId, version: u64, lease: Lease) -> bool {
        self.table.lock().update(&id, |e| {
            let current = e.version == version && !e.is_dead();
            if current {
                e.attempt = Some(Attempt {
                    node: lease.node.clone(),
                    lease: Some(lease),
                });
            }
            current
        }) == Some(true)
    }

    /// Applies a supervisor's change if the actor is still at `version`.
    pub(crate) async fn apply(
        &self,
        id: ActorId,
        version: u64,
        transition: &Transition,
    ) -> Result<(), UpdateError> {
        let ended = {
            let _writes = self.writes.lock().await;
            let next = {
                let table = self.table.lock();
                let entry = table.get(&id).ok_or(UpdateError::Unknown(id))?;
                if entry.version != version || entry.is_dead() {
                    return Err(UpdateError::Stale(id));
                }
                match transition {
                    Transition::Alive => {
                        let lease = entry.lease().ok_or(UpdateError::Stale(id))?;
                        ActorInfo {
                            state: ActorState::Alive as i32,
                            address: Some(lease.worker),
                            lease_id: lease.lease_id.to_vec(),
                            node: Some(lease.node),
                            ..entry.info.clone()
                        }
                    }
                    Transition::ConstructorFailed(msg) => {
                        dead(&entry.info, format!("its constructor failed: {msg}"))
                    }
                    Transition::WorkerDied(why) => after_worker_death(&entry.info, why),
                    Transition::Dead(why) => dead(&entry.info, why.clone()),
                }
            };
            let info = next.clone();
            let ended = self.commit(id, next).await?;
            let node_id = info
                .node
                .as_ref()
                .map(|n| hex::encode(&n.node_id))
                .unwrap_or_default();
            match info.state() {
                ActorState::Alive => {
                    tracing::info!(actor_id = %id, name = %info.name, node_id = %node_id, num_restarts = info.num_restarts, "actor alive")
                }
                state => {
                    tracing::warn!(actor_id = %id, name = %info.name, ?state, reason = %info.death_reason, "actor changed state")
                }
            }
            ended
        };
        if let Some(lease) = ended {
            supervisor::return_lease(self.token.clone(), id, lease);
        }
        self.evict_destroyed().await;
        Ok(())
    }
}

/// Whether two records come from the same `CreateActor` request (fields the GCS fills are
/// not compared).
fn same_request(a: &ActorInfo, b: &ActorInfo) -> bool {
    a.actor_id == b.actor_id
        && a.job_id == b.job_id
        && a.class_name == b.class_name
        && a.name == b.name
        && a.max_restarts == b.max_restarts
        && a.creation == b.creation
        && a.resources == b.resources
        && a.owner == b.owner
}

/// Checks a `CreateActor` request and fills the fields the GCS owns. The job's existence
/// is checked by [`ActorManager::register`] under the job table lock.
pub(crate) fn validate_new(
    info: Option<ActorInfo>,
    canonical: impl Fn(Option<&ResourceSet>, &str) -> Result<ResourceSet, Status>,
) -> Result<(ActorId, JobId, ActorInfo), Status> {
    let mut info = info.ok_or_else(|| invalid("create actor: missing actor"))?;
    let id = parse_actor_id(&info.actor_id)?;
    let job_id = JobId::from_bytes(&info.job_id).map_err(bad_id)?;
    if info.class_name.is_empty() {
        return Err(invalid("create actor: empty class name"));
    }
    let Some(creation) = &info.creation else {
        return Err(invalid("create actor: missing creation task"));
    };
    if !creation.actor_creation {
        return Err(invalid(
            "create actor: the creation task does not have actor_creation set",
        ));
    }
    if creation.actor_id != info.actor_id {
        return Err(invalid(
            "create actor: the creation task names a different actor",
        ));
    }
    if info.max_restarts < -1 {
        return Err(invalid(format!(
            "create actor: max_restarts must be -1 (no limit) or at least 0, not {}",
            info.max_restarts
        )));
    }
    if let Some(owner) = &info.owner {
        WorkerId::from_bytes(&owner.worker_id).map_err(bad_id)?;
    }
    let resources = canonical(info.resources.as_ref(), "actor resources")?;
    // Validated here so that placement can rely on it.
    Resources::from_proto(&resources).map_err(|e| invalid(format!("actor resources: {e}")))?;
    info.resources = Some(resources);
    info.state = ActorState::PendingCreation as i32;
    info.num_restarts = 0;
    info.address = None;
    info.lease_id.clear();
    info.node = None;
    info.death_reason.clear();
    info.create_time_ms = now_ms();
    Ok((id, job_id, info))
}

fn invalid(msg: impl Into<String>) -> Status {
    ErrorCode::InvalidArgument.status(msg)
}

fn bad_id(e: InvalidId) -> Status {
    invalid(e.to_string())
}

fn parse_actor_id(bytes: &[u8]) -> Result<ActorId, Status> {
    ActorId::from_bytes(bytes).map_err(bad_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(max_restarts: i64, num_restarts: u32) -> ActorInfo {
        ActorInfo {
            state: ActorState::Alive as i32,
            max_restarts,
            num_restarts,
            address: Some(WorkerAddress::default()),
            lease_id: vec![1; 16],
            node: Some(NodeAddress::default()),
            ..Default::default()
        }
    }

    #[test]
    fn worker_death_restarts_while_restarts_are_left() {
        let next = after_worker_death(&info(2, 1), "signal: 9 (SIGKILL)");
        assert_eq!(next.state(), ActorState::Restarting);
        assert_eq!(next.num_restarts, 2);
        assert!(next.death_reason.contains("signal: 9 (SIGKILL)"));
        assert!(next.address.is_none() && next.node.is_none() && next.lease_id.is_empty());
    }

    #[test]
    fn worker_death_without_restarts_left_is_final_and_says_why() {
        let next = after_worker_death(&info(2, 2), "exit status: 1");
        assert_eq!(next.state(), ActorState::Dead);
        assert_eq!(next.num_restarts, 2);
        assert_eq!(
            next.death_reason,
            "its worker died (exit status: 1) and it has no restarts left (max_restarts = 2)"
        );
        let never = after_worker_death(&info(0, 0), "gone");
        assert_eq!(never.state(), ActorState::Dead);
    }

    fn manager() -> ActorManager {
        let (events, _) = broadcast::channel(16);
        ActorManager {
            storage: Arc::new(crate::storage::MemoryStorage::new()),
            events,
            token: "t".into(),
            table: Mutex::new(ActorTable::default()),
            writes: tokio::sync::Mutex::new(()),
            cluster: watch::Sender::new(0),
            max_destroyed: 10,
            destroyed: Default::default(),
            unplaceable: Default::default(),
        }
    }

    /// Registers a pending actor of a running job and returns its id.
    async fn pending(m: &ActorManager, max_restarts: i64) -> ActorId {
        let id = ActorId::random();
        let job = JobId::random();
        let job_info = JobInfo {
            job_id: job.to_vec(),
            ..Default::default()
        };
        let info = ActorInfo {
            actor_id: id.to_vec(),
            job_id: job.to_vec(),
            class_name: "C".into(),
            max_restarts,
            creation: Some(miniray_proto::TaskSpec {
                actor_id: id.to_vec(),
                actor_creation: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let (id, job, info) =
            validate_new(Some(info), |r, _| Ok(r.cloned().unwrap_or_default())).unwrap();
        assert!(m.register(Some(&job_info), id, job, info).await.unwrap());
        id
    }

    /// Leases a worker for the actor's current attempt and makes it ALIVE there.
    async fn make_alive(m: &ActorManager, id: ActorId) -> (NodeId, WorkerId) {
        let snap = m.snapshot(id).await.unwrap();
        let node = NodeId::random();
        let worker = WorkerId::random();
        // Port 1 on loopback: the lease return spawned later fails quietly.
        let node_address = NodeAddress {
            node_id: node.to_vec(),
            host: "127.0.0.1".into(),
            port: 1,
        };
        let lease = Lease {
            lease_id: LeaseId::random(),
            node: node_address.clone(),
            worker: WorkerAddress {
                worker_id: worker.to_vec(),
                node_id: node.to_vec(),
                host: "127.0.0.1".into(),
                port: 1,
            },
        };
        assert!(m.set_attempt_node(id, snap.version, node_address).await);
        assert!(m.set_attempt_lease(id, snap.version, lease).await);
        assert_eq!(m.placed_counts().await.get(&node), Some(&1));
        m.apply(id, snap.version, &Transition::Alive).await.unwrap();
        (node, worker)
    }

    fn report(node: NodeId, worker: WorkerId) -> ReportWorkerFailureRequest {
        ReportWorkerFailureRequest {
            node_id: node.to_vec(),
            worker_id: worker.to_vec(),
            reason: "signal: 9 (SIGKILL)".into(),
        }
    }

    #[tokio::test]
    async fn a_worker_death_is_counted_once() {
        let m = manager();
        let id = pending(&m, 5).await;
        let (node, worker) = make_alive(&m, id).await;
        let alive = m.snapshot(id).await.unwrap();
        assert_eq!(alive.info.state(), ActorState::Alive);
        assert_eq!(
            alive.info.address.as_ref().unwrap().worker_id,
            worker.to_vec()
        );

        m.worker_failed(report(node, worker)).await.unwrap();
        // The same death reported again, and by the supervisor that saw the ALIVE state:
        // neither counts.
        m.worker_failed(report(node, worker)).await.unwrap();
        let stale = m
            .apply(
                id,
                alive.version,
                &Transition::WorkerDied("push failed".into()),
            )
            .await;
        assert!(matches!(stale, Err(UpdateError::Stale(_))));

        let after = m.snapshot(id).await.unwrap().info;
        assert_eq!(after.state(), ActorState::Restarting);
        assert_eq!(after.num_restarts, 1);
        assert!(
            after.death_reason.contains("SIGKILL"),
            "{}",
            after.death_reason
        );
        assert!(after.address.is_none());
        assert!(m.placed_counts().await.is_empty());
    }

    #[tokio::test]
    async fn the_worker_of_a_creation_in_progress_is_the_current_worker() {
        let m = manager();
        let id = pending(&m, 0).await;
        let snap = m.snapshot(id).await.unwrap();
        let node = NodeId::random();
        let worker = WorkerId::random();
        let address = NodeAddress {
            node_id: node.to_vec(),
            host: "127.0.0.1".into(),
            port: 1,
        };
        let lease = Lease {
            lease_id: LeaseId::random(),
            node: address.clone(),
            worker: WorkerAddress {
                worker_id: worker.to_vec(),
                node_id: node.to_vec(),
                host: "127.0.0.1".into(),
                port: 1,
            },
        };
        assert!(m.set_attempt_lease(id, snap.version, lease).await);
        // A report from another node naming the same worker id is not this worker.
        m.worker_failed(report(NodeId::random(), worker))
            .await
            .unwrap();
        assert_eq!(
            m.snapshot(id).await.unwrap().info.state(),
            ActorState::PendingCreation
        );
        m.worker_failed(report(node, worker)).await.unwrap();
        let dead = m.snapshot(id).await.unwrap().info;
        assert_eq!(dead.state(), ActorState::Dead);
        assert!(
            dead.death_reason.contains("max_restarts = 0"),
            "{}",
            dead.death_reason
        );
        // The constructor's answer arriving afterwards changes nothing.
        let late = m.apply(id, snap.version, &Transition::Alive).await;
        assert!(matches!(late, Err(UpdateError::Stale(_))));
    }

    #[tokio::test]
    async fn a_failed_constructor_is_final() {
        let m = manager();
        let id = pending(&m, -1).await;
        let snap = m.snapshot(id).await.unwrap();
        m.apply(
            id,
            snap.version,
            &Transition::ConstructorFailed("boom".into()),
        )
        .await
        .unwrap();
        let dead = m.snapshot(id).await.unwrap().info;
        assert_eq!(dead.state(), ActorState::Dead);
        assert_eq!(dead.death_reason, "its constructor failed: boom");
    }

    #[tokio::test]
    async fn only_the_last_dead_actors_are_kept() {
        let m = manager();
        let live = pending(&m, 0).await;
        let mut killed = Vec::new();
        for _ in 0..m.max_destroyed + 5 {
            let id = pending(&m, 0).await;
            m.kill(KillActorRequest {
                actor_id: id.to_vec(),
                reason: String::new(),
            })
            .await
            .unwrap();
            killed.push(id);
        }
        let (forgotten, kept) = killed.split_at(5);
        let lookup = |id: &ActorId| GetActorRequest {
            actor_id: id.to_vec(),
            ..Default::default()
        };
        for id in forgotten {
            let err = m.get(lookup(id)).await.unwrap_err();
            assert_eq!(ErrorCode::of_status(&err), ErrorCode::NotFound);
            assert!(!m.storage.exists(ACTORS_TABLE, id.as_bytes()).await.unwrap());
        }
        for id in kept {
            let info = m.get(lookup(id)).await.unwrap();
            assert_eq!(info.state(), ActorState::Dead);
            assert!(info.end_time_ms > 0);
            assert!(m.storage.exists(ACTORS_TABLE, id.as_bytes()).await.unwrap());
        }
        // The live actor is never forgotten, however many die after it.
        assert_eq!(
            m.get(lookup(&live)).await.unwrap().state(),
            ActorState::PendingCreation
        );
        assert_eq!(m.all().await.len(), m.max_destroyed + 1);

        // A GCS reloading more dead actors than it keeps forgets those that died first.
        let storage: Arc<dyn Storage> = Arc::new(crate::storage::MemoryStorage::new());
        let record = |id: ActorId, state: ActorState, end_time_ms: u64| ActorInfo {
            actor_id: id.to_vec(),
            state: state as i32,
            end_time_ms,
            ..Default::default()
        };
        let dead_ids: Vec<ActorId> = (0..5).map(|_| ActorId::random()).collect();
        // Stored out of death order: the reload sorts by end time.
        for (i, id) in dead_ids.iter().enumerate().rev() {
            let info = record(*id, ActorState::Dead, 100 + i as u64);
            storage
                .put(ACTORS_TABLE, id.as_bytes(), &info.encode_to_vec())
                .await
                .unwrap();
        }
        let alive = ActorId::random();
        let info = record(alive, ActorState::Restarting, 0);
        storage
            .put(ACTORS_TABLE, alive.as_bytes(), &info.encode_to_vec())
            .await
            .unwrap();
        let (events, _) = broadcast::channel(16);
        let reloaded = ActorManager::load(Arc::clone(&storage), events, "t".into(), 3)
            .await
            .unwrap();
        let mut ids: Vec<Vec<u8>> = reloaded
            .all()
            .await
            .into_iter()
            .map(|a| a.actor_id)
            .collect();
        let mut expected: Vec<Vec<u8>> = dead_ids[2..].iter().map(|id| id.to_vec()).collect();
        expected.push(alive.to_vec());
        ids.sort();
        expected.sort();
        assert_eq!(ids, expected);
        assert_eq!(storage.get_all(ACTORS_TABLE).await.unwrap().len(), 4);
    }

    #[test]
    fn unlimited_restarts_never_run_out() {
        let next = after_worker_death(&info(-1, 1000), "gone");
        assert_eq!(next.state(), ActorState::Restarting);
        assert_eq!(next.num_restarts, 1001);
    }
}
