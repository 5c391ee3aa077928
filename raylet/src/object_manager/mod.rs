//! Node-to-node object transfer: serve local objects, or byte ranges of them, to peer
//! raylets over the [`data_plane`] (and in chunks over gRPC, `ReadObject`, to clients that
//! cannot map the segment), and pull remote ones into the local store (`PullObject`).
//!
//! A pull reads its object as ranges of [`PULL_RANGE`] bytes, [`PULL_STREAMS`] at a time,
//! each over its own connection. A source writes its range to the socket straight from
//! its segment ([`PlasmaStore::sealed_view`]), and the puller reads the socket straight
//! into its own ([`PlasmaStore::unsealed_view_mut`]): the kernel's copies into and out of
//! the socket are the only ones.
//!
//! Broadcast: the source names, in its answer to the first range, the nodes that lately pulled the same
//! object from it ([`pullers`]); the puller reads every other range from one of them
//! instead, and a node serves the ranges of an object it is still receiving as they
//! arrive ([`progress`]). So when many nodes pull one object, the source sends each byte
//! about once per puller only for the first; later pullers share the load.
//!
//! Invariants:
//! - A sealed object being served holds one reader pin from the first chunk to the end of
//!   the stream (or until the reader goes away), so it cannot be evicted or freed
//!   mid-transfer; each chunk in flight holds an io pin on it too. An object still arriving
//!   is served only as far as [`progress::Progress`] says is written, each chunk under an
//!   io pin; if the pull fails, the stream fails.
//! - At most one pull per object id runs at a time in this raylet; concurrent `pull`s of
//!   the same id wait for that one and share its result.
//! - A pull (or a `PlasmaWrite`, see `fill_and_seal`) that fails leaves nothing behind: its
//!   unsealed copy is aborted. A pull seals only once its ranges, each checked to have
//!   arrived whole and in order, cover the object.
//!   A pull that succeeds leaves a sealed secondary (`primary = false`, evictable) copy.
//! - Whatever a peer fails to serve (gone, evicted, stalled for [`PEER_PATIENCE`]) is read
//!   from the source, from where the peer stopped; only the source failing fails a pull.

pub mod data_plane;
mod progress;
mod pullers;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use miniray_common::config::{MAX_MESSAGE_SIZE, TRANSFER_CHUNK_SIZE};
use miniray_common::net::host_port;
use miniray_common::{ErrorCode, NodeId, ObjectId};
use miniray_plasma::{ObjectView, PlasmaError, PlasmaStore};
use miniray_proto::{NodeAddress, ObjectChunk, ReadObjectRequest};
use tokio::sync::mpsc;

use progress::Progress;
use pullers::RecentPullers;

/// Largest chunk served, whatever the reader asks: well below the gRPC message limit.
pub const MAX_CHUNK_SIZE: usize = 16 << 20;
const _: () = assert!(MAX_CHUNK_SIZE < MAX_MESSAGE_SIZE);

/// Chunks buffered ahead of the network per served stream (views, not copies).
const READ_AHEAD: usize = 4;

/// Bytes of one range a pull asks a source for: an object up to this size is one stream.
pub const PULL_RANGE: u64 = 16 << 20;

/// Ranges of one pull in flight at once, and connections kept to each peer.
pub const PULL_STREAMS: usize = 4;

/// How long a node serving an object it is still receiving waits for the next bytes to
/// arrive (any of them) before failing the stream; its reader then asks the source.
pub const PEER_PATIENCE: Duration = Duration::from_secs(5);

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
    /// This node, as pullers name themselves to sources.
    address: NodeAddress,
    node_id: NodeId,
    token: String,
    store: Arc<PlasmaStore>,
    pulls: parking_lot::Mutex<HashMap<ObjectId, SharedPull>>,
    /// Objects being pulled here, and how much of each has arrived.
    arriving: parking_lot::Mutex<HashMap<ObjectId, Arc<Progress>>>,
    /// Who lately pulled which object from here.
    pullers: parking_lot::Mutex<RecentPullers>,
    pulls_started: AtomicU64,
    pulls_joined: AtomicU64,
    bytes_pulled: AtomicU64,
    bytes_served: Arc<AtomicU64>,
}

impl ObjectManager {
    /// The object manager of node `node_id`, reached at `address`.
    pub fn new(
        node_id: NodeId,
        address: NodeAddress,
        token: String,
        store: Arc<PlasmaStore>,
    ) -> Arc<Self> {
        Arc::new(Self {
            address,
            node_id,
            token,
            store,
            pulls: parking_lot::Mutex::new(HashMap::new()),
            arriving: parking_lot::Mutex::new(HashMap::new()),
            pullers: parking_lot::Mutex::new(RecentPullers::default()),
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

    /// Streams the bytes `[offset, offset + length)` of a local object (`length` 0, or past
    /// the end: to the end) in chunks of `chunk_size` (0 = default, capped at
    /// [`MAX_CHUNK_SIZE`]), none crossing a multiple of [`PULL_RANGE`]. Always sends at
    /// least one chunk, so readers learn the size of empty objects too. An offset past the
    /// end is refused. For clients that cannot map the segment (`ReadObject`); raylets
    /// pull over the [`data_plane`].
    ///
    /// A sealed object is served at once; one this node is still pulling, as its bytes
    /// arrive. `puller`, on a read from offset 0, is remembered, and the first chunk names
    /// the nodes that pulled `id` from here before it.
    pub fn read(
        &self,
        id: ObjectId,
        chunk_size: u64,
        offset: u64,
        length: u64,
        puller: Option<NodeAddress>,
    ) -> Result<mpsc::Receiver<Result<ObjectChunk, tonic::Status>>, PullError> {
        let chunk = match chunk_size {
            0 => TRANSFER_CHUNK_SIZE as u64,
            n => n.min(MAX_CHUNK_SIZE as u64),
        };
        let (mut range, peers) = self.serve_range(id, chunk, offset, length, puller)?;
        let mut peers = Some(peers);
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        tokio::spawn(async move {
            while let Some(next) = range.next().await {
                let msg = next
                    .map(|(offset, view)| ObjectChunk {
                        total_size: range.total,
                        offset,
                        data: bytes::Bytes::from_owner(view),
                        peers: peers.take().unwrap_or_default(),
                    })
                    .map_err(|e| e.to_status());
                let failed = msg.is_err();
                if tx.send(msg).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(rx)
    }

    /// The bytes `[offset, offset + length)` of a local object, as [`read`](Self::read)
    /// serves them, and the peers to name to `puller`.
    fn serve_range(
        &self,
        id: ObjectId,
        chunk: u64,
        offset: u64,
        length: u64,
        puller: Option<NodeAddress>,
    ) -> Result<(ServedRange, Vec<NodeAddress>), PullError> {
        let source = match self.store.get(id) {
            Some(loc) => Served::Sealed {
                total: loc.size,
                _pin: ReaderPin {
                    store: Arc::clone(&self.store),
                    id,
                },
            },
            None => match self.arriving.lock().get(&id) {
                Some(progress) => Served::Arriving(Arc::clone(progress)),
                None => {
                    return Err(PullError::new(
                        ErrorCode::NotFound,
                        format!("object {id} is not in the store of node {}", self.node_id),
                    ));
                }
            },
        };
        let total = source.total();
        if offset > total {
            return Err(PullError::new(
                ErrorCode::InvalidArgument,
                format!("offset {offset} is past the end of object {id} ({total} bytes)"),
            ));
        }
        let end = match length {
            0 => total,
            n => offset.saturating_add(n).min(total),
        };
        let peers = match puller {
            Some(p) if offset == 0 && p.node_id != self.address.node_id => {
                self.pullers.lock().note(id, p, Instant::now())
            }
            _ => Vec::new(),
        };
        let range = ServedRange {
            store: Arc::clone(&self.store),
            id,
            source,
            total,
            at: offset,
            end,
            chunk: chunk.max(1),
            started: false,
            served: Arc::clone(&self.bytes_served),
        };
        Ok((range, peers))
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
                NodeId::from_bytes(&source.node_id)
                    .map_err(|e| PullError::new(ErrorCode::InvalidArgument, e.to_string()))?;
                let source = host_port(&source.host, source.port);
                let this = Arc::clone(self);
                // The transfer runs in its own task so that it completes (or cleans up)
                // even when every caller waiting for it goes away.
                let task = tokio::spawn(async move {
                    let r = this.transfer(id, &source).await;
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

    /// Pulls `id` as ranges: the first from the source (at `source`, host and port), which
    /// tells the object's size and the peers that lately pulled it; then the others,
    /// [`PULL_STREAMS`] at a time alongside it, taken in turn from the source and each
    /// peer.
    async fn transfer(&self, id: ObjectId, source: &str) -> Result<u64, PullError> {
        let mut head = data_plane::open_range(
            source,
            &self.token,
            read_request(id, 0, PULL_RANGE, Some(self.address.clone())),
        )
        .await?;
        let total = head.header.total_size;
        let head_end = total.min(PULL_RANGE);
        head.expect(id, total, 0, head_end)?;
        // A peer that cannot be reached, or answers badly, is replaced by the source range
        // by range.
        let peers: Vec<String> = head
            .header
            .peers
            .iter()
            .filter(|p| p.node_id != self.address.node_id)
            .map(|p| host_port(&p.host, p.port))
            .collect();
        self.store
            .create(id, total, false)
            .map_err(|e| PullError::new(e.code(), e.to_string()))?;
        let guard = AbortOnDrop {
            store: &self.store,
            id,
            armed: true,
        };
        let progress = Arc::new(Progress::new(total, PULL_RANGE));
        // After `guard`, so dropped before it: a failed pull is marked failed before its
        // copy is aborted (see `Progress::has_failed`).
        let arriving = Arriving::register(&self.arriving, id, Arc::clone(&progress));

        let head = async {
            let mut at = 0;
            self.receive(id, &mut head, head_end, &mut at, &progress)
                .await
        };
        let rest = futures::stream::iter((head_end..total).step_by(PULL_RANGE as usize))
            .enumerate()
            .map(|(i, start)| {
                // Turns go round the source and each peer.
                let turn = i + 1;
                let from_peer = match turn % (1 + peers.len()) {
                    0 => None,
                    k => peers.get(k - 1),
                };
                let end = start.saturating_add(PULL_RANGE).min(total);
                let progress = &progress;
                async move {
                    let mut at = start;
                    if let Some(peer) = from_peer {
                        match self
                            .fill_from(peer, id, total, end, &mut at, progress)
                            .await
                        {
                            Ok(()) => return Ok(()),
                            Err(e) => tracing::debug!(
                                object_id = %id, at, end, error = %e,
                                "a peer did not serve its range; reading the rest from the source"
                            ),
                        }
                    }
                    self.fill_from(source, id, total, end, &mut at, progress)
                        .await
                }
            })
            .buffer_unordered(PULL_STREAMS.saturating_sub(1).max(1))
            .try_for_each(|_| futures::future::ready(Ok(())));
        futures::try_join!(head, rest)?;
        self.store
            .seal(id)
            .map_err(|e| PullError::new(e.code(), e.to_string()))?;
        let mut guard = guard;
        guard.armed = false;
        arriving.done();
        tracing::debug!(object_id = %id, bytes = total, peers = peers.len(), "pulled object");
        Ok(total)
    }

    /// Reads the bytes `[*at, end)` of `id` (an object of `total` bytes) from the node at
    /// `address` into the unsealed local copy; `*at` follows what has been written, also
    /// on failure.
    async fn fill_from(
        &self,
        address: &str,
        id: ObjectId,
        total: u64,
        end: u64,
        at: &mut u64,
        progress: &Progress,
    ) -> Result<(), PullError> {
        let mut range =
            data_plane::open_range(address, &self.token, read_request(id, *at, end - *at, None))
                .await?;
        range.expect(id, total, *at, end)?;
        self.receive(id, &mut range, end, at, progress).await
    }
}

/// A request for the bytes `[offset, offset + length)` of `id`.
fn read_request(
    id: ObjectId,
    offset: u64,
    length: u64,
    puller: Option<NodeAddress>,
) -> ReadObjectRequest {
    ReadObjectRequest {
        object_id: id.to_vec(),
        offset,
        length,
        puller,
        ..Default::default()
    }
}

/// What a `ReadObject` stream serves from.
enum Served {
    /// A sealed copy, pinned for the stream's life.
    Sealed { total: u64, _pin: ReaderPin },
    /// A copy this node is still pulling: served as it arrives.
    Arriving(Arc<Progress>),
}

impl Served {
    fn total(&self) -> u64 {
        match self {
            Served::Sealed { total, .. } => *total,
            Served::Arriving(p) => p.total(),
        }
    }
}

/// A range of a local object being served: its chunks, as views of the segment.
struct ServedRange {
    store: Arc<PlasmaStore>,
    id: ObjectId,
    source: Served,
    total: u64,
    at: u64,
    end: u64,
    chunk: u64,
    /// Whether a chunk was served: an empty range still serves one, empty.
    started: bool,
    served: Arc<AtomicU64>,
}

impl ServedRange {
    /// The next chunk (its offset in the object, and its bytes), none crossing a multiple
    /// of [`PULL_RANGE`]; `None` once the range is served. Counts what it hands out as
    /// served.
    async fn next(&mut self) -> Option<Result<(u64, ObjectView), PullError>> {
        if self.started && self.at >= self.end {
            return None;
        }
        self.started = true;
        let (id, at) = (self.id, self.at);
        let boundary = (at / PULL_RANGE + 1) * PULL_RANGE;
        let len = (self.end - at).min(self.chunk).min(boundary - at);
        let view = match &self.source {
            Served::Sealed { .. } => self.store.sealed_view(id, at, len as usize),
            Served::Arriving(progress) => {
                match progress.wait_written(at, at + len, PEER_PATIENCE).await {
                    // Failed by now: the view may be of a new copy of `id` (this pull
                    // aborted, another began), not of the bytes awaited.
                    Ok(()) => self
                        .store
                        .written_view(id, at, len as usize)
                        .and_then(|view| match progress.has_failed() {
                            false => Ok(view),
                            true => Err(PlasmaError::NotFound(id)),
                        }),
                    Err(e) => {
                        // Nothing more comes from this range.
                        self.at = self.end;
                        return Some(Err(PullError::new(
                            ErrorCode::Unavailable,
                            format!("object {id} bytes at {at}: {e}"),
                        )));
                    }
                }
            }
        };
        match view {
            Ok(view) => {
                self.served.fetch_add(len, Ordering::Relaxed);
                self.at += len;
                Some(Ok((at, view)))
            }
            Err(e) => {
                self.at = self.end;
                Some(Err(PullError::new(e.code(), e.to_string())))
            }
        }
    }
}

/// An object's entry in `arriving` for the life of its pull: removed when the pull ends;
/// unless marked done, its readers are told it failed.
struct Arriving<'a> {
    map: &'a parking_lot::Mutex<HashMap<ObjectId, Arc<Progress>>>,
    id: ObjectId,
    progress: Arc<Progress>,
    done: bool,
}

impl<'a> Arriving<'a> {
    fn register(
        map: &'a parking_lot::Mutex<HashMap<ObjectId, Arc<Progress>>>,
        id: ObjectId,
        progress: Arc<Progress>,
    ) -> Self {
        map.lock().insert(id, Arc::clone(&progress));
        Self {
            map,
            id,
            progress,
            done: false,
        }
    }

    fn done(mut self) {
        self.done = true;
    }
}

impl Drop for Arriving<'_> {
    fn drop(&mut self) {
        self.map.lock().remove(&self.id);
        if !self.done {
            self.progress.fail();
        }
    }
}

/// Copies `chunks` (each its offset in the object and its bytes, in order from 0) into
/// the unsealed object `id` of `total` bytes, then seals it. A failed, out-of-order, long
/// or short stream aborts the object, and so does dropping this future: nothing
/// half-written stays. For `PlasmaWrite` from remote clients.
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

#[cfg(test)]
mod tests;
