//! The core worker: the part of every driver and worker process that owns objects, submits
//! tasks, and serves other processes (task pushes, object status).
//!
//! One `CoreWorker` exists per process, behind a global set by `init` and cleared by
//! `shutdown`. Its tokio runtime runs all RPCs; the blocking API enters it with `block_on`
//! from user threads (never from inside the runtime).

pub(crate) mod actors;
pub(crate) mod bootstrap;
pub(crate) mod borrowing;
mod clients;
pub(crate) mod cluster;
mod event_clock;
pub(crate) mod executor;
mod home;
mod job;
mod journal;
pub(crate) mod local_cluster;
pub(crate) mod metrics;
mod nodes;
pub(crate) mod plasma;
mod push;
mod server;
mod store;
mod submitter;
pub(crate) mod task_events;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use miniray_common::auth::AuthedChannel;
use miniray_common::{JobId, NodeId, ObjectId, WorkerId};
use miniray_proto::gcs_client::GcsClient;
use miniray_proto::{
    GetObjectStatusRequest, NodeAddress, NotifyBlockedRequest, PlasmaDeleteRequest,
    get_object_status_reply,
};
use parking_lot::RwLock;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::mpsc;
use tracing::debug;

use crate::codec::{self, Encoded};
use crate::error::{Error, Result};
use crate::object_ref::{OwnerAddr, RefHandle};
use clients::{Clients, node_endpoint};
use plasma::PlasmaClient;
use store::{Freed, ObjectStore, State, Value};
use submitter::Submitter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Driver,
    Worker,
}

pub(crate) struct CoreWorker {
    pub(crate) mode: Mode,
    pub(crate) worker_id: WorkerId,
    pub(crate) job_id: JobId,
    /// This process's own CoreWorker server: the owner address of what it creates. Its
    /// node id is the home's at start; nothing uses it to judge the owner's liveness (a
    /// remote driver outlives its first home, see `home.rs`).
    pub(crate) address: OwnerAddr,
    /// The raylet this process leases from and puts through; a remote driver's can change.
    pub(crate) home: Arc<home::HomeCell>,
    pub(crate) gcs: GcsClient<AuthedChannel>,
    pub(crate) gcs_address: String,
    pub(crate) clients: Clients,
    pub(crate) plasma: PlasmaClient,
    pub(crate) store: ObjectStore,
    pub(crate) submitter: Submitter,
    pub(crate) actors: actors::ActorSubmitter,
    /// Nodes the GCS declared dead (see `nodes.rs`).
    pub(crate) dead_nodes: Arc<nodes::DeadNodes>,
    pub(crate) inline_threshold: usize,
    /// Borrowed references waiting for registration with their owners, and registrations
    /// to give back (see `borrowing.rs`).
    pub(crate) borrows: Arc<borrowing::BorrowQueue>,
    /// State transitions of the tasks this process submits and runs (see `task_events.rs`).
    pub(crate) task_events: Arc<task_events::TaskEvents>,
    /// What the process's `/metrics` counts (see `metrics.rs`).
    pub(crate) counters: metrics::CoreCounters,
    pub(crate) handle: Handle,
}

/// How long a call that found the home unreachable waits for a re-home before it tries
/// again (the home may also just come back).
const HOME_RETRY: Duration = Duration::from_millis(500);

/// The process-wide runtime state.
struct Global {
    cw: Arc<CoreWorker>,
    runtime: Runtime,
    server_stop: Option<tokio::sync::oneshot::Sender<()>>,
    cluster: Option<local_cluster::LocalCluster>,
}

static GLOBAL: RwLock<Option<Global>> = RwLock::new(None);

/// The core worker of this process.
pub(crate) fn current() -> Result<Arc<CoreWorker>> {
    GLOBAL
        .read()
        .as_ref()
        .map(|g| g.cw.clone())
        .ok_or(Error::NotInitialized)
}

pub(crate) fn is_initialized() -> bool {
    GLOBAL.read().is_some()
}

fn install(global: Global) {
    *GLOBAL.write() = Some(global);
}

/// Tears down this process's runtime: returns leases, frees owned plasma copies, marks the
/// job finished, stops the local cluster if this driver started one.
pub(crate) fn shutdown() {
    let Some(mut global) = GLOBAL.write().take() else {
        return;
    };
    let cw = global.cw.clone();
    global.runtime.block_on(async {
        // First, while the home raylet surely still runs: a short driver's events go too.
        if tokio::time::timeout(task_events::FINAL_REPORT_DEADLINE, cw.report_task_events())
            .await
            .is_err()
        {
            debug!("the last task events were not reported in time");
        }
        cw.return_all_leases().await;
        let freed = cw.store.drain_owned_plasma();
        cw.free_plasma(freed).await;
        if cw.mode == Mode::Driver {
            job::mark_finished(&cw).await;
        }
    });
    if let Some(stop) = global.server_stop.take() {
        let _ = stop.send(());
    }
    drop(cw);
    global.runtime.shutdown_timeout(Duration::from_secs(2));
    metrics::ended();
    if let Some(mut cluster) = global.cluster.take() {
        cluster.stop();
    }
}

thread_local! {
    /// Set on a worker's task thread while a task runs: blocking there hands CPUs back.
    static IN_TASK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

pub(crate) fn set_in_task(v: bool) {
    IN_TASK.with(|c| c.set(v));
}

impl CoreWorker {
    /// Runs `fut` to completion from a user thread.
    pub(crate) fn block_on<F: std::future::Future>(&self, fut: F) -> Result<F::Output> {
        if Handle::try_current().is_ok() {
            return Err(Error::InvalidArgument(
                "a blocking miniray call was made inside an async runtime; use the *_async twin"
                    .into(),
            ));
        }
        Ok(self.handle.block_on(fut))
    }

    /// Like `block_on`, for calls that may wait on other tasks: on a worker's task thread the
    /// worker's CPUs go back to the raylet while it waits, so nested tasks cannot deadlock.
    pub(crate) fn block_on_waiting<F: std::future::Future>(
        &self,
        ready_now: bool,
        fut: F,
    ) -> Result<F::Output> {
        let hand_back = !ready_now && self.mode == Mode::Worker && IN_TASK.with(|c| c.get());
        if !hand_back {
            return self.block_on(fut);
        }
        self.block_on(async {
            self.notify_blocked(true).await;
            let out = fut.await;
            self.notify_blocked(false).await;
            out
        })
    }

    /// The node of the home raylet (this process's node, unless it is a remote driver).
    pub(crate) fn node_id(&self) -> NodeId {
        self.home.get().id
    }

    async fn notify_blocked(&self, blocked: bool) {
        let mut raylet = self.home.get().raylet.clone();
        if let Err(status) = raylet
            .notify_blocked(NotifyBlockedRequest {
                worker_id: self.worker_id.to_vec(),
                blocked,
            })
            .await
        {
            debug!(error = %status, "notify blocked failed");
        }
    }

    /// Whether the object's value is known here without waiting.
    pub(crate) fn is_ready_locally(&self, id: ObjectId) -> bool {
        matches!(
            self.store.state(id),
            Some(State::Ready(_)) | Some(State::Failed(_))
        )
    }

    /// Polls briefly for an owned object to become ready before the caller parks: a result
    /// that arrives within a round trip is then picked up without a thread wake-up, which
    /// is a large part of a synchronous call's latency. Bounded, so a long wait costs
    /// at most `SPIN_BEFORE_PARK` of CPU.
    pub(crate) fn spin_until_ready(&self, id: ObjectId) -> bool {
        const SPIN_BEFORE_PARK: Duration = Duration::from_micros(300);
        if !self.store.is_owned(id) {
            return false;
        }
        let start = std::time::Instant::now();
        while start.elapsed() < SPIN_BEFORE_PARK {
            if self.is_ready_locally(id) {
                return true;
            }
            std::thread::yield_now();
        }
        false
    }

    /// Drops one local reference (called by `RefHandle::drop`).
    pub(crate) fn release_ref(&self, id: ObjectId) {
        self.store.remove_local_ref(id);
    }

    /// Where the object's value is, waiting until it is ready.
    pub(crate) async fn resolve(&self, h: &RefHandle, timeout: Option<Duration>) -> Result<Value> {
        let fut = self.resolve_inner(h);
        match timeout {
            None => fut.await,
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .map_err(|_| Error::Timeout(t))?,
        }
    }

    async fn resolve_inner(&self, h: &RefHandle) -> Result<Value> {
        if h.owner.worker_id == self.worker_id {
            return match self.store.wait_owned(h.id).await {
                Some(r) => r,
                None => Err(Error::ObjectLost {
                    object_id: h.id.to_string(),
                    reason: "it was freed".into(),
                }),
            };
        }
        match self.store.state(h.id) {
            Some(State::Ready(v)) => return Ok(v),
            Some(State::Failed(e)) => return Err(e),
            _ => {}
        }
        let owner = h.owner.endpoint();
        let owner_gone = |reason: String| Error::OwnerDied {
            object_id: h.id.to_string(),
            reason,
        };
        let mut client = self
            .clients
            .core_worker(&owner)
            .map_err(|e| owner_gone(e.to_string()))?;
        let reply = client
            .get_object_status(GetObjectStatusRequest {
                object_id: h.id.to_vec(),
                wait: true,
            })
            .await
            .map_err(|s| owner_gone(format!("{owner}: {}", s.message())))?
            .into_inner();
        use get_object_status_reply::Status;
        match Status::try_from(reply.status).unwrap_or(Status::Unspecified) {
            Status::Ready => {
                let v = reply
                    .value
                    .ok_or_else(|| Error::Internal("ready object without a value".into()))
                    .and_then(Value::from_proto)?;
                self.store.cache_borrowed(h.id, &v);
                Ok(v)
            }
            Status::Failed => Err(reply
                .error
                .map(|e| Error::from_task_error(&e))
                .unwrap_or_else(|| Error::Internal("failed object without an error".into()))),
            _ => Err(Error::ObjectLost {
                object_id: h.id.to_string(),
                reason: format!("its owner {owner} no longer has it"),
            }),
        }
    }

    /// Decodes a ready object's value, fetching it into this node's store if it is elsewhere.
    pub(crate) async fn read<T: DeserializeOwned + 'static>(
        &self,
        id: ObjectId,
        value: &Value,
    ) -> Result<T> {
        let value = self.decode_value(id, value).await;
        // References decoded from the value are registered with their owners before the
        // caller can rely on them (see `borrowing.rs`).
        self.register_new_borrows().await;
        value
    }

    async fn decode_value<T: DeserializeOwned + 'static>(
        &self,
        id: ObjectId,
        value: &Value,
    ) -> Result<T> {
        match value {
            Value::Inline(bytes) => codec::decode(bytes),
            Value::Plasma { node, .. } if self.plasma.is_remote() => {
                // Read straight from the node holding the copy rather than pulling it into
                // the home raylet first: one transfer instead of two, no secondary copy
                // taking room there, and the holder's reader pin keeps the copy for the
                // stream's length (a pulled secondary copy could be evicted before read).
                let endpoint = node_endpoint(node);
                let holder = self.clients.raylet(&endpoint)?;
                let bytes = self.plasma.read_remote(id, holder, &endpoint).await?;
                codec::decode(&bytes)
            }
            Value::Plasma { node, .. } => {
                self.make_local(id, node).await?;
                match self.plasma.with_object(id, codec::decode::<T>).await? {
                    Some(r) => r,
                    None => Err(Error::ObjectLost {
                        object_id: id.to_string(),
                        reason: "it is no longer in the object store".into(),
                    }),
                }
            }
        }
    }

    /// Makes sure a plasma object is in this node's store.
    pub(crate) async fn make_local(&self, id: ObjectId, node: &NodeAddress) -> Result<()> {
        if node.node_id != self.home.get().id.as_bytes() {
            self.plasma.pull(id, node).await?;
        }
        Ok(())
    }

    pub(crate) async fn get<T: DeserializeOwned + 'static>(
        &self,
        h: &RefHandle,
        timeout: Option<Duration>,
    ) -> Result<T> {
        let v = self.resolve(h, timeout).await?;
        self.read(h.id, &v).await
    }

    /// The bytes of a `Vec<u8>` object: in place when it is in (or can be pulled into)
    /// this node's store, else owned.
    pub(crate) async fn get_bytes(
        self: &Arc<Self>,
        h: &RefHandle,
        timeout: Option<Duration>,
    ) -> Result<crate::ObjectBytes> {
        let v = self.resolve(h, timeout).await?;
        let node = match &v {
            Value::Plasma { node, .. } if !self.plasma.is_remote() => node,
            _ => {
                return self
                    .read::<Vec<u8>>(h.id, &v)
                    .await
                    .map(crate::ObjectBytes::owned);
            }
        };
        self.make_local(h.id, node).await?;
        let Some(loc) = self.plasma.pin(h.id).await? else {
            return Err(Error::ObjectLost {
                object_id: h.id.to_string(),
                reason: "it is no longer in the object store".into(),
            });
        };
        let payload = self
            .plasma
            .slice(loc)
            .and_then(codec::bytes_payload)
            .map(|p| (p.as_ptr(), p.len()));
        match payload {
            // SAFETY: the payload lies in this store's mapping, in object `id`, on which
            // `pin` took the one reader pin handed over here.
            Ok((ptr, len)) => Ok(unsafe {
                crate::ObjectBytes::in_store(
                    Arc::clone(self),
                    h.id,
                    std::slice::from_raw_parts(ptr, len),
                )
            }),
            Err(e) => {
                // Release the pin, so a bad object does not stay pinned.
                let _ = self.plasma.release(&[h.id]).await;
                Err(e)
            }
        }
    }

    /// Stores a value owned by this process: inline when small, else in this node's plasma.
    pub(crate) async fn put_value<T: Serialize + 'static>(
        self: &Arc<Self>,
        value: &T,
    ) -> Result<Arc<RefHandle>> {
        let (encoded, contained) = borrowing::capture_refs(|| codec::encode_lazy(value));
        let encoded = encoded?;
        let id = ObjectId::random();
        let v = self
            .store_encoded(id, self.address.to_proto(), &encoded)
            .await?;
        self.store
            .insert_owned_holding(id, State::Ready(v), contained);
        Ok(RefHandle::new(self, id, self.address.clone()))
    }

    /// Puts an encoded value inline or into plasma, with `owner` as the owner.
    pub(crate) async fn store_encoded(
        &self,
        id: ObjectId,
        owner: miniray_proto::WorkerAddress,
        encoded: &Encoded<'_>,
    ) -> Result<Value> {
        if encoded.len() < self.inline_threshold {
            return Ok(Value::Inline(Arc::new(match encoded {
                Encoded::Owned(v) => v.clone(),
                other => other_to_vec(other),
            })));
        }
        let started = std::time::Instant::now();
        loop {
            let home = self.home.usable(&self.dead_nodes).await?;
            match self.plasma.put(&home, id, owner.clone(), encoded).await {
                Ok(size) => {
                    return Ok(Value::Plasma {
                        node: home.node.clone(),
                        size,
                    });
                }
                // A remote driver's home that stopped answering may be gone for good: the
                // put goes again to the next home once there is one (the failed stream
                // left nothing behind there).
                Err(Error::ClusterUnreachable { .. })
                    if self.home.is_movable() && started.elapsed() < home::REHOME_DEADLINE =>
                {
                    self.home.report_unreachable(&home);
                    self.home.wait_change(&home, HOME_RETRY).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Stores already-encoded bytes in the background; the handle resolves once stored.
    pub(crate) fn put_in_background(
        self: &Arc<Self>,
        bytes: Vec<u8>,
        contained: Vec<borrowing::Held>,
    ) -> Arc<RefHandle> {
        let id = ObjectId::random();
        self.store
            .insert_owned_holding(id, State::Pending, contained);
        let handle = RefHandle::new(self, id, self.address.clone());
        let cw = self.clone();
        self.handle.spawn(async move {
            let r = cw
                .store_encoded(id, cw.address.to_proto(), &Encoded::Owned(bytes))
                .await;
            cw.store.complete(id, r);
        });
        handle
    }

    /// Waits until `num_returns` of the objects are ready (or failed), or `timeout` passes.
    /// Returns the indices of the ready ones.
    pub(crate) async fn wait_ready(
        &self,
        handles: &[Arc<RefHandle>],
        num_returns: usize,
        timeout: Option<Duration>,
    ) -> Vec<usize> {
        let mut ready = Vec::new();
        let mut futs: FuturesUnordered<_> = handles
            .iter()
            .enumerate()
            .map(|(i, h)| async move {
                let _ = self.resolve_inner(h).await;
                i
            })
            .collect();
        let collect = async {
            while ready.len() < num_returns {
                match futs.next().await {
                    Some(i) => ready.push(i),
                    None => break,
                }
            }
        };
        match timeout {
            Some(t) => {
                let _ = tokio::time::timeout(t, collect).await;
            }
            None => collect.await,
        }
        ready.sort_unstable();
        ready
    }

    /// Frees primary plasma copies (the owner's job when the last reference goes).
    async fn free_plasma(&self, freed: Vec<Freed>) {
        let mut by_node: std::collections::HashMap<String, Vec<Vec<u8>>> = Default::default();
        for f in freed {
            by_node
                .entry(node_endpoint(&f.node))
                .or_default()
                .push(f.id.to_vec());
        }
        for (endpoint, ids) in by_node {
            let Ok(mut raylet) = self.clients.raylet(&endpoint) else {
                continue;
            };
            if let Err(status) = raylet
                .plasma_delete(PlasmaDeleteRequest { object_ids: ids })
                .await
            {
                debug!(raylet = %endpoint, error = %status, "freeing objects failed");
            }
        }
    }

    /// Runs until the runtime stops: frees plasma copies as their last references go.
    pub(crate) async fn run_freer(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Freed>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            self.free_plasma(batch).await;
        }
    }
}

fn other_to_vec(e: &Encoded<'_>) -> Vec<u8> {
    let mut v = vec![0u8; e.len()];
    e.write_to(&mut v);
    v
}
