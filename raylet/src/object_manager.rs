//! Node-to-node object transfer: serve local sealed objects in chunks (`ReadObject`) and
//! pull remote ones into the local store (`PullObject`).
//!
//! Invariants:
//! - A served object holds one reader pin from the first chunk to the end of the stream
//!   (or until the reader goes away), so it cannot be evicted or freed mid-transfer.
//! - At most one pull per object id runs at a time in this raylet; concurrent `pull`s of
//!   the same id wait for that one and share its result.
//! - A pull (or a `PlasmaWrite`, see `fill_and_seal`) that fails leaves nothing behind: its
//!   unsealed copy is aborted.
//!   A pull that succeeds leaves a sealed secondary (`primary = false`, evictable) copy.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, Stream, StreamExt};
use miniray_common::auth::{AuthedChannel, connect_lazy};
use miniray_common::config::{MAX_MESSAGE_SIZE, TRANSFER_CHUNK_SIZE};
use miniray_common::{ErrorCode, NodeId, ObjectId};
use miniray_plasma::PlasmaStore;
use miniray_proto::raylet_client::RayletClient;
use miniray_proto::{NodeAddress, ObjectChunk, ReadObjectRequest};
use tokio::sync::mpsc;

/// Largest chunk served, whatever the reader asks: well below the gRPC message limit.
pub const MAX_CHUNK_SIZE: usize = 16 << 20;
const _: () = assert!(MAX_CHUNK_SIZE < MAX_MESSAGE_SIZE);

/// Chunks buffered ahead of the network per served stream.
const READ_AHEAD: usize = 2;

/// A pull's failure, shareable between the callers that waited for it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct PullError {
    pub code: ErrorCode,
    pub message: String,
}

impl PullError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn to_status(&self) -> tonic::Status {
        self.code.status(self.message.clone())
    }
}

/// Transfer counters (for stats and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Pulls that actually streamed from a peer.
    pub pulls_started: u64,
    /// Pull requests that joined a pull already in flight.
    pub pulls_joined: u64,
    /// Bytes received from peers into this store.
    pub bytes_pulled: u64,
    /// Bytes served to peers.
    pub bytes_served: u64,
}

type SharedPull = Shared<BoxFuture<'static, Result<u64, PullError>>>;

pub struct ObjectManager {
    node_id: NodeId,
    token: String,
    store: Arc<PlasmaStore>,
    peers: parking_lot::Mutex<HashMap<NodeId, RayletClient<AuthedChannel>>>,
    pulls: parking_lot::Mutex<HashMap<ObjectId, SharedPull>>,
    pulls_started: AtomicU64,
    pulls_joined: AtomicU64,
    bytes_pulled: AtomicU64,
    bytes_served: Arc<AtomicU64>,
}

impl ObjectManager {
    pub fn new(node_id: NodeId, token: String, store: Arc<PlasmaStore>) -> Arc<Self> {
        Arc::new(Self {
            node_id,
            token,
            store,
            peers: parking_lot::Mutex::new(HashMap::new()),
            pulls: parking_lot::Mutex::new(HashMap::new()),
            pulls_started: AtomicU64::new(0),
            pulls_joined: AtomicU64::new(0),
            bytes_pulled: AtomicU64::new(0),
            bytes_served: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn stats(&self) -> TransferStats {
        TransferStats {
            pulls_started: self.pulls_started.load(Ordering::Relaxed),
            pulls_joined: self.pulls_joined.load(Ordering::Relaxed),
            bytes_pulled: self.bytes_pulled.load(Ordering::Relaxed),
            bytes_served: self.bytes_served.load(Ordering::Relaxed),
        }
    }

    /// Streams a sealed local object in chunks of `chunk_size` (0 = default, capped at
    /// [`MAX_CHUNK_SIZE`]). Always sends at least one chunk, so readers learn the size of
    /// empty objects too.
    pub fn read(
        &self,
        id: ObjectId,
        chunk_size: u64,
    ) -> Result<mpsc::Receiver<Result<ObjectChunk, tonic::Status>>, PullError> {
        let chunk = match chunk_size {
            0 => TRANSFER_CHUNK_SIZE,
            n => usize::try_from(n)
                .unwrap_or(MAX_CHUNK_SIZE)
                .min(MAX_CHUNK_SIZE),
        };
        let loc = self.store.get(id).ok_or_else(|| {
            PullError::new(
                ErrorCode::NotFound,
                format!(
                    "object {id} is not sealed in the store of node {}",
                    self.node_id
                ),
            )
        })?;
        let pin = ReaderPin {
            store: Arc::clone(&self.store),
            id,
        };
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let served = Arc::clone(&self.bytes_served);
        tokio::spawn(async move {
            let _pin = pin;
            let total = loc.size;
            let mut offset = 0u64;
            loop {
                let len = (total - offset).min(chunk as u64) as usize;
                let store = Arc::clone(&_pin.store);
                let read =
                    tokio::task::spawn_blocking(move || store.read_sealed(id, offset, len)).await;
                let msg = match read {
                    Ok(Ok(data)) => Ok(ObjectChunk {
                        total_size: total,
                        offset,
                        data,
                    }),
                    Ok(Err(e)) => Err(e.code().status(e.to_string())),
                    Err(e) => Err(ErrorCode::Internal.status(format!("read task failed: {e}"))),
                };
                let failed = msg.is_err();
                if tx.send(msg).await.is_err() || failed {
                    return;
                }
                served.fetch_add(len as u64, Ordering::Relaxed);
                offset += len as u64;
                if offset >= total {
                    return;
                }
            }
        });
        Ok(rx)
    }

    /// Drops the cached clients of nodes not in `alive` (dead ones), so the map follows the
    /// cluster rather than every node ever met. A peer needed again reconnects.
    pub fn retain_peers(&self, alive: &std::collections::HashSet<NodeId>) {
        self.peers.lock().retain(|node, _| alive.contains(node));
    }

    fn peer(&self, source: &NodeAddress) -> Result<RayletClient<AuthedChannel>, PullError> {
        let node = NodeId::from_bytes(&source.node_id)
            .map_err(|e| PullError::new(ErrorCode::InvalidArgument, e.to_string()))?;
        if let Some(c) = self.peers.lock().get(&node) {
            return Ok(c.clone());
        }
        let address = miniray_common::net::host_port(&source.host, source.port);
        let channel = connect_lazy(&address, &self.token)
            .map_err(|e| PullError::new(ErrorCode::InvalidArgument, e.to_string()))?;
        let client = RayletClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        self.peers.lock().insert(node, client.clone());
        Ok(client)
    }

    /// Brings `id` from `source` into the local store; returns its size. Already sealed
    /// here: answers at once. Concurrent pulls of one id share a single transfer.
    pub async fn pull(
        self: &Arc<Self>,
        id: ObjectId,
        source: NodeAddress,
    ) -> Result<u64, PullError> {
        if let Some(loc) = self.store.location(id) {
            return Ok(loc.size);
        }
        let shared = {
            let mut pulls = self.pulls.lock();
            if let Some(p) = pulls.get(&id) {
                self.pulls_joined.fetch_add(1, Ordering::Relaxed);
                p.clone()
            } else {
                // Re-check under the lock: a pull may have finished and left the map.
                if let Some(loc) = self.store.location(id) {
                    return Ok(loc.size);
                }
                let client = self.peer(&source)?;
                let this = Arc::clone(self);
                // The transfer runs in its own task so that it completes (or cleans up)
                // even when every caller waiting for it goes away.
                let task = tokio::spawn(async move {
                    let r = this.transfer(id, client).await;
                    this.pulls.lock().remove(&id);
                    r
                });
                let fut: BoxFuture<'static, Result<u64, PullError>> = async move {
                    match task.await {
                        Ok(r) => r,
                        Err(e) => Err(PullError::new(
                            ErrorCode::Internal,
                            format!("pull task failed: {e}"),
                        )),
                    }
                }
                .boxed();
                let shared = fut.shared();
                pulls.insert(id, shared.clone());
                self.pulls_started.fetch_add(1, Ordering::Relaxed);
                shared
            }
        };
        shared.await
    }

    async fn transfer(
        &self,
        id: ObjectId,
        mut client: RayletClient<AuthedChannel>,
    ) -> Result<u64, PullError> {
        let unavailable = |what: &str, s: tonic::Status| {
            let code = match ErrorCode::of_status(&s) {
                ErrorCode::NotFound => ErrorCode::NotFound,
                _ => ErrorCode::Unavailable,
            };
            PullError::new(
                code,
                format!("pulling object {id}: {what}: {}", s.message()),
            )
        };
        let mut stream = client
            .read_object(ReadObjectRequest {
                object_id: id.to_vec(),
                chunk_size: TRANSFER_CHUNK_SIZE as u64,
            })
            .await
            .map_err(|s| unavailable("read request failed", s))?
            .into_inner();
        let first = stream
            .message()
            .await
            .map_err(|s| unavailable("stream failed", s))?
            .ok_or_else(|| {
                PullError::new(
                    ErrorCode::Unavailable,
                    format!("pulling object {id}: the source sent no data"),
                )
            })?;
        let total = first.total_size;
        self.store
            .create(id, total, false)
            .map_err(|e| PullError::new(e.code(), e.to_string()))?;
        let chunks = futures::stream::once(async { Ok(first) })
            .chain(stream)
            .map(move |chunk| {
                let chunk = chunk.map_err(|s| unavailable("stream failed", s))?;
                if chunk.total_size != total {
                    return Err(PullError::new(
                        ErrorCode::Unavailable,
                        format!(
                            "pulling object {id}: chunk of an object of {} bytes, expected {total}",
                            chunk.total_size
                        ),
                    ));
                }
                Ok((chunk.offset, chunk.data))
            });
        let pulled = fill_and_seal(&self.store, id, total, "pulling", chunks).await?;
        self.bytes_pulled.fetch_add(pulled, Ordering::Relaxed);
        tracing::debug!(object_id = %id, bytes = total, "pulled object");
        Ok(total)
    }
}

/// Copies `chunks` (each its offset in the object and its bytes, in order from 0) into
/// the unsealed object `id` of `total` bytes, then seals it. A failed, out-of-order, long
/// or short stream aborts the object, and so does dropping this future: nothing
/// half-written stays. Shared by pulls from peers and `PlasmaWrite` from remote clients.
pub(crate) async fn fill_and_seal(
    store: &Arc<PlasmaStore>,
    id: ObjectId,
    total: u64,
    what: &str,
    chunks: impl Stream<Item = Result<(u64, Vec<u8>), PullError>>,
) -> Result<u64, PullError> {
    let mut guard = AbortOnDrop {
        store,
        id,
        armed: true,
    };
    let mut chunks = std::pin::pin!(chunks);
    let mut received = 0u64;
    while let Some(chunk) = chunks.next().await {
        let (offset, data) = chunk?;
        if offset != received {
            return Err(PullError::new(
                ErrorCode::Unavailable,
                format!("{what} object {id}: out-of-order chunk at {offset} (expected {received})"),
            ));
        }
        let len = data.len() as u64;
        let store = Arc::clone(store);
        tokio::task::spawn_blocking(move || store.write(id, offset, &data))
            .await
            .map_err(|e| PullError::new(ErrorCode::Internal, format!("write task failed: {e}")))?
            .map_err(|e| PullError::new(e.code(), e.to_string()))?;
        received += len;
    }
    if received != total {
        return Err(PullError::new(
            ErrorCode::Unavailable,
            format!("{what} object {id}: stream ended after {received} of {total} bytes"),
        ));
    }
    store
        .seal(id)
        .map_err(|e| PullError::new(e.code(), e.to_string()))?;
    guard.armed = false;
    Ok(total)
}

/// Drops a reader pin when a served stream ends.
struct ReaderPin {
    store: Arc<PlasmaStore>,
    id: ObjectId,
}

impl Drop for ReaderPin {
    fn drop(&mut self) {
        self.store.release(self.id);
    }
}

/// Aborts a partially pulled object unless disarmed after sealing.
struct AbortOnDrop<'a> {
    store: &'a Arc<PlasmaStore>,
    id: ObjectId,
    armed: bool,
}

impl Drop for AbortOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.store.abort(self.id);
        }
    }
}
