//! Server side of the object store: the segment, the object table, pinning and eviction.
//!
//! # Object lifecycle
//!
//! ```text
//! create ──► unsealed ──seal──► sealed ──delete / evict──► gone
//!               │                  │
//!             abort           delete while readers pin it
//!               ▼                  ▼
//!             gone          doomed (invisible) ──last release──► gone
//! ```
//!
//! - An **unsealed** object belongs to its creator, who fills it (through its own
//!   [`SegmentMapping`](crate::SegmentMapping) or through [`PlasmaStore::write`]). It is
//!   invisible to [`get`](PlasmaStore::get), [`wait_get`](PlasmaStore::wait_get) and
//!   [`contains`](PlasmaStore::contains) and is never evicted.
//! - A **sealed** object is immutable; only sealed objects are visible to readers.
//! - A **doomed** object was deleted (or aborted) while something still pinned it: it is
//!   invisible to new readers at once and its bytes are freed when the last pin goes. Its id
//!   stays taken until then (`create` answers [`PlasmaError::AlreadyExists`]).
//!
//! # Pinning and eviction
//!
//! - A `primary` object is pinned until [`delete`](PlasmaStore::delete).
//! - Each `Some` returned by [`get`](PlasmaStore::get) / [`wait_get`](PlasmaStore::wait_get)
//!   is one reader pin, to be matched by exactly one [`release`](PlasmaStore::release).
//! - A sealed object with no primary pin, no reader pin and no server-side copy in flight is
//!   *evictable*. Evictable objects are evicted least-recently-used first (creation, `get`
//!   and the last `release` count as uses) and only when an allocation needs the room.
//! - Pinned and unsealed objects are never evicted. When the room cannot be made,
//!   `create` answers [`PlasmaError::ObjectStoreFull`] and nothing is lost.
//!
//! # Clients
//!
//! The `*_by` variants name the client (a driver or worker, by its [`WorkerId`]) that takes
//! a reader pin or creates an object. The store remembers, per client, its reader pins and
//! its unsealed objects, so that [`disconnect`](PlasmaStore::disconnect) can give back
//! everything a dead client held: a process killed between `get` and `release`, or between
//! `create` and `seal`, leaks nothing. Anonymous calls (the raylet's own transfers) are
//! released by their callers. A client may only release pins it took itself.

//! # Memory behind the segment
//!
//! The segment file is sparse. `create` reserves the file's pages (`posix_fallocate`) in
//! chunks of [`RESERVE_CHUNK`] the first time an allocation reaches them, before it hands
//! the range out, so a writer never touches a page the folder could not back: a full
//! tmpfs makes `create` answer [`PlasmaError::SegmentDirFull`] (an `ObjectStoreFull`)
//! instead of killing the writer with `SIGBUS`. Reserved pages stay reserved.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use memmap2::{MmapOptions, MmapRaw};
use miniray_common::{NodeId, ObjectId, WorkerId};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::alloc::{self, Allocator, BLOCK};
use crate::error::PlasmaError;

/// Granularity of page reservation in the segment file (see the module docs).
pub const RESERVE_CHUNK: u64 = 2 << 20;

/// Where an object's bytes sit inside the segment.
///
/// Invariant: `offset + size <= capacity` of the segment; `offset` is a multiple of 64.
/// Zero-size objects have `offset == 0` and occupy no space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectLocation {
    pub offset: u64,
    pub size: u64,
}

/// How to create a node's segment.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Bytes of the segment. The allocator uses this rounded down to a multiple of 64.
    pub capacity: u64,
    /// Folder of the segment file; `/dev/shm` so the segment lives in memory.
    pub segment_dir: PathBuf,
    /// File name of the segment, e.g. `miniray-plasma-<nodeid>`.
    pub segment_name: String,
    /// Reserve and map every page at creation. Costs the whole capacity in memory up front,
    /// but first writes then run at memcpy speed and a full `/dev/shm` is reported at
    /// creation instead of killing a writer with SIGBUS later.
    pub prefault: bool,
}

impl StoreConfig {
    /// A sparse (not prefaulted) segment named `segment_name` in `/dev/shm`.
    pub fn new(capacity: u64, segment_name: impl Into<String>) -> Self {
        StoreConfig {
            capacity,
            segment_dir: PathBuf::from("/dev/shm"),
            segment_name: segment_name.into(),
            prefault: false,
        }
    }

    /// The conventional segment of a node: `/dev/shm/miniray-plasma-<nodeid>`.
    pub fn for_node(capacity: u64, node_id: NodeId) -> Self {
        Self::new(capacity, format!("miniray-plasma-{node_id}"))
    }

    /// Full path of the segment file.
    pub fn segment_path(&self) -> PathBuf {
        self.segment_dir.join(&self.segment_name)
    }
}

/// A snapshot of the store's accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes of the segment.
    pub capacity: u64,
    /// Bytes allocated to objects (each object rounded up to 64 bytes).
    pub used: u64,
    /// Allocated bytes that cannot be evicted: primary, read-pinned, unsealed and doomed
    /// objects. `used - pinned` is what eviction could free.
    pub pinned: u64,
    /// Objects holding space, in any state.
    pub num_objects: usize,
    /// Of those, how many are sealed and still visible.
    pub num_sealed: usize,
    /// Objects evicted since the store was created.
    pub num_evictions: u64,
}

#[derive(Debug)]
struct Entry {
    offset: u64,
    size: u64,
    /// Bytes taken from the allocator: `size` rounded up to 64, or 0 for empty objects.
    alloc_len: u64,
    sealed: bool,
    primary: bool,
    /// Reader pins from get/wait_get, released by `release`.
    readers: u32,
    /// Server-side copies in flight (`write`, `read_sealed`), which run outside the lock.
    io: u32,
    /// Deleted or aborted; freed once `readers == 0 && io == 0`.
    doomed: bool,
    /// Last use, for LRU order.
    tick: u64,
    /// The key of this entry in `Inner::lru` while it is evictable.
    lru_key: Option<u64>,
    /// The client that created it, while it is unsealed (for `disconnect`).
    creator: Option<WorkerId>,
}

impl Entry {
    fn location(&self) -> ObjectLocation {
        ObjectLocation {
            offset: self.offset,
            size: self.size,
        }
    }

    fn visible(&self) -> bool {
        self.sealed && !self.doomed
    }

    fn evictable(&self) -> bool {
        self.sealed && !self.primary && !self.doomed && self.readers == 0 && self.io == 0
    }

    fn unpinned(&self) -> bool {
        self.readers == 0 && self.io == 0
    }
}

/// What one client holds in the store.
#[derive(Debug, Default)]
struct ClientState {
    /// Reader pins taken by this client and not yet released, per object.
    readers: HashMap<ObjectId, u32>,
    /// Unsealed objects this client created.
    created: HashSet<ObjectId>,
}

impl ClientState {
    fn is_empty(&self) -> bool {
        self.readers.is_empty() && self.created.is_empty()
    }
}

/// What [`PlasmaStore::disconnect`] gave back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Disconnected {
    /// Reader pins released.
    pub pins_released: u64,
    /// Unsealed objects the client created, now aborted.
    pub aborted: Vec<ObjectId>,
}

/// The object table and allocator, guarded together by one mutex.
///
/// Invariants:
/// - an id is in `lru` iff its entry is `evictable()`, under the key `entry.lru_key`;
/// - `evictable_bytes` is the sum of `alloc_len` over entries in `lru`;
/// - the allocator's used bytes equal the sum of `alloc_len` over all entries;
/// - a client's reader count for an object is at most that entry's `readers`, and an id is
///   in a client's `created` iff its entry is unsealed, not doomed, with that `creator`;
///   clients holding nothing are not in `clients`.
#[derive(Debug)]
struct Inner {
    objects: HashMap<ObjectId, Entry>,
    clients: HashMap<WorkerId, ClientState>,
    alloc: Allocator,
    lru: BTreeMap<u64, ObjectId>,
    evictable_bytes: u64,
    next_tick: u64,
    num_evictions: u64,
    reserved: Reservations,
}

/// Which [`RESERVE_CHUNK`]-sized chunks of the segment file have their pages reserved.
#[derive(Debug)]
struct Reservations {
    /// One bit per chunk.
    bits: Vec<u64>,
    /// Bytes of the segment file.
    len: u64,
}

impl Reservations {
    fn new(len: u64, all: bool) -> Self {
        let chunks = len.div_ceil(RESERVE_CHUNK) as usize;
        let fill = if all { u64::MAX } else { 0 };
        Reservations {
            bits: vec![fill; chunks.div_ceil(64)],
            len,
        }
    }

    /// Reserves the pages of every chunk `[offset, offset + len)` touches that is not
    /// reserved yet. On failure the chunks this call reserved are given back, so a failed
    /// `create` leaves the folder's memory to its other users (reply journals).
    fn reserve(&mut self, fd: RawFd, offset: u64, len: u64) -> std::io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let first = offset / RESERVE_CHUNK;
        let last = (offset + len - 1) / RESERVE_CHUNK;
        let mut fresh = Vec::new();
        for chunk in first..=last {
            if self.is_reserved(chunk) {
                continue;
            }
            let (start, chunk_len) = self.range_of(chunk);
            let rc = loop {
                // SAFETY: plain syscall on the segment's file descriptor, which the store
                // keeps open; it only allocates blocks of that file.
                let rc = unsafe {
                    libc::posix_fallocate(fd, start as libc::off_t, chunk_len as libc::off_t)
                };
                if rc != libc::EINTR {
                    break rc;
                }
            };
            if rc != 0 {
                for chunk in fresh {
                    self.release(fd, chunk);
                }
                return Err(std::io::Error::from_raw_os_error(rc));
            }
            self.bits[(chunk / 64) as usize] |= 1 << (chunk % 64);
            fresh.push(chunk);
        }
        Ok(())
    }

    fn is_reserved(&self, chunk: u64) -> bool {
        self.bits[(chunk / 64) as usize] & (1 << (chunk % 64)) != 0
    }

    /// Byte range of `chunk` in the file.
    fn range_of(&self, chunk: u64) -> (u64, u64) {
        let start = chunk * RESERVE_CHUNK;
        (start, RESERVE_CHUNK.min(self.len - start))
    }

    /// Frees the pages of a chunk no object uses (it stays reserved if that fails).
    fn release(&mut self, fd: RawFd, chunk: u64) {
        let (start, chunk_len) = self.range_of(chunk);
        // SAFETY: plain syscall on the segment's file descriptor; the chunk holds no object.
        let rc = unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                start as libc::off_t,
                chunk_len as libc::off_t,
            )
        };
        if rc == 0 {
            self.bits[(chunk / 64) as usize] &= !(1 << (chunk % 64));
        } else {
            tracing::debug!(chunk, error = %std::io::Error::last_os_error(), "cannot free reserved pages");
        }
    }
}

impl Inner {
    /// The live (not doomed) object `id`, which must be sealed (`sealed`) or not yet.
    fn live_mut(&mut self, id: ObjectId, sealed: bool) -> Result<&mut Entry, PlasmaError> {
        let e = self.live_any(id)?;
        match (e.sealed, sealed) {
            (true, false) => Err(PlasmaError::AlreadySealed(id)),
            (false, true) => Err(PlasmaError::NotSealed(id)),
            _ => Ok(e),
        }
    }

    /// The live (not doomed) object `id`, sealed or not.
    fn live_any(&mut self, id: ObjectId) -> Result<&mut Entry, PlasmaError> {
        self.objects
            .get_mut(&id)
            .filter(|e| !e.doomed)
            .ok_or(PlasmaError::NotFound(id))
    }

    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    /// Re-establishes the `lru` invariant for `id` after its entry changed.
    fn refresh_lru(&mut self, id: ObjectId) {
        let Some(e) = self.objects.get_mut(&id) else {
            return;
        };
        if let Some(key) = e.lru_key.take() {
            self.lru.remove(&key);
            self.evictable_bytes -= e.alloc_len;
        }
        if e.evictable() {
            e.lru_key = Some(e.tick);
            self.lru.insert(e.tick, id);
            self.evictable_bytes += e.alloc_len;
        }
    }

    /// Removes `id` from the table and returns its bytes to the allocator.
    fn remove(&mut self, id: ObjectId) {
        if let Some(e) = self.objects.remove(&id) {
            if let Some(c) = e.creator {
                self.forget_created(c, id);
            }
            if let Some(key) = e.lru_key {
                self.lru.remove(&key);
                self.evictable_bytes -= e.alloc_len;
            }
            if e.alloc_len > 0 {
                self.alloc.free(e.offset, e.alloc_len);
            }
        }
    }

    fn pinned_bytes(&self) -> u64 {
        self.alloc.used_bytes() - self.evictable_bytes
    }

    /// Drops `id` from `client`'s unsealed objects (it was sealed, aborted or removed).
    fn forget_created(&mut self, client: WorkerId, id: ObjectId) {
        if let Some(c) = self.clients.get_mut(&client) {
            c.created.remove(&id);
            if c.is_empty() {
                self.clients.remove(&client);
            }
        }
    }

    /// Discards an unsealed object: freed now, or doomed until its pins go.
    fn abort_unsealed(&mut self, id: ObjectId) -> Result<(), PlasmaError> {
        let e = self.live_mut(id, false)?;
        let creator = e.creator.take();
        if e.unpinned() {
            self.remove(id);
        } else {
            e.doomed = true;
        }
        if let Some(c) = creator {
            self.forget_created(c, id);
        }
        Ok(())
    }

    /// `pin_reader`, recorded against `client` when named.
    fn pin_reader_by(&mut self, client: Option<WorkerId>, id: ObjectId) -> Option<ObjectLocation> {
        let loc = self.pin_reader(id)?;
        if let Some(c) = client {
            *self
                .clients
                .entry(c)
                .or_default()
                .readers
                .entry(id)
                .or_insert(0) += 1;
        }
        Some(loc)
    }

    /// `release_reader` of a pin `client` took (anonymous when `None`). A named client
    /// without a pin on `id` releases nothing, so it cannot drop another client's pin.
    fn release_reader_by(&mut self, client: Option<WorkerId>, id: ObjectId) {
        if let Some(c) = client {
            let Some(state) = self.clients.get_mut(&c) else {
                tracing::warn!(object_id = %id, client = %c, "release by a client without pins");
                return;
            };
            let Some(n) = state.readers.get_mut(&id) else {
                tracing::warn!(object_id = %id, client = %c, "release of an object this client did not pin");
                return;
            };
            *n -= 1;
            if *n == 0 {
                state.readers.remove(&id);
                if state.is_empty() {
                    self.clients.remove(&c);
                }
            }
        }
        self.release_reader(id);
    }

    /// Allocates `len` bytes (a multiple of 64) whose pages are reserved in the segment
    /// file `fd` (in folder `dir`), evicting LRU objects while that helps.
    fn allocate(
        &mut self,
        len: u64,
        capacity: u64,
        fd: RawFd,
        dir: &Path,
    ) -> Result<u64, PlasmaError> {
        loop {
            let off = self.allocate_range(len, capacity)?;
            let Err(source) = self.reserved.reserve(fd, off, len) else {
                return Ok(off);
            };
            self.alloc.free(off, len);
            // The folder is out of memory, but the pages of an evicted object are already
            // reserved: make room there and try again.
            let Some((_, &victim)) = self.lru.first_key_value() else {
                return Err(PlasmaError::SegmentDirFull {
                    requested: len,
                    dir: dir.to_path_buf(),
                    source,
                });
            };
            self.remove(victim);
            self.num_evictions += 1;
            tracing::debug!(object_id = %victim, "evicted object for reserved pages");
        }
    }

    /// Allocates `len` bytes (a multiple of 64) of the arena, evicting LRU objects while
    /// that helps.
    fn allocate_range(&mut self, len: u64, capacity: u64) -> Result<u64, PlasmaError> {
        if let Some(off) = self.alloc.alloc(len) {
            return Ok(off);
        }
        // Evict only when it can succeed, so a hopeless request does not flush the cache.
        // (Fragmentation can still defeat it; then the evicted objects were fair game anyway.)
        if self.alloc.free_bytes() + self.evictable_bytes >= len {
            while let Some((_, &victim)) = self.lru.first_key_value() {
                let size = self.objects.get(&victim).map_or(0, |e| e.size);
                self.remove(victim);
                self.num_evictions += 1;
                tracing::debug!(object_id = %victim, size, "evicted object");
                if let Some(off) = self.alloc.alloc(len) {
                    return Ok(off);
                }
            }
        }
        Err(PlasmaError::ObjectStoreFull {
            requested: len,
            capacity,
            used: self.alloc.used_bytes(),
            pinned: self.pinned_bytes(),
        })
    }

    /// Takes a reader pin on a visible object.
    fn pin_reader(&mut self, id: ObjectId) -> Option<ObjectLocation> {
        let tick = self.tick();
        let e = self.objects.get_mut(&id)?;
        if !e.visible() {
            return None;
        }
        e.readers += 1;
        e.tick = tick;
        let loc = e.location();
        self.refresh_lru(id);
        Some(loc)
    }

    fn release_reader(&mut self, id: ObjectId) {
        let tick = self.tick();
        let Some(e) = self.objects.get_mut(&id) else {
            tracing::warn!(object_id = %id, "release of an object not in the store");
            return;
        };
        if e.readers == 0 {
            tracing::warn!(object_id = %id, "release of an object without reader pins");
            return;
        }
        e.readers -= 1;
        e.tick = tick;
        if e.doomed && e.unpinned() {
            self.remove(id);
        } else {
            self.refresh_lru(id);
        }
    }

    /// Drops a transient server-side pin taken for a copy outside the lock.
    fn release_io(&mut self, id: ObjectId) {
        if let Some(e) = self.objects.get_mut(&id) {
            e.io -= 1;
            if e.doomed && e.unpinned() {
                self.remove(id);
            } else {
                self.refresh_lru(id);
            }
        }
    }
}

/// The node's shared-memory object store (server side).
///
/// `Send + Sync`: all state sits behind one mutex, and byte copies happen outside it on
/// ranges kept alive by pins. Dropping the store unmaps the segment and removes its file;
/// clients that still map it keep their mapping until they drop it.
pub struct PlasmaStore {
    path: PathBuf,
    capacity: u64,
    /// Kept open to reserve pages as allocations reach them.
    file: File,
    map: MmapRaw,
    inner: Mutex<Inner>,
    /// Woken (all waiters) on every seal.
    sealed: Notify,
}

impl std::fmt::Debug for PlasmaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlasmaStore")
            .field("path", &self.path)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl PlasmaStore {
    /// Creates the segment file (failing if it exists), sizes it, and maps it `MAP_SHARED`.
    pub fn create_segment(cfg: StoreConfig) -> Result<Self, PlasmaError> {
        if cfg.capacity < BLOCK {
            return Err(PlasmaError::InvalidConfig(format!(
                "capacity {} is below the minimum of {BLOCK} bytes",
                cfg.capacity
            )));
        }
        let map_len = usize::try_from(cfg.capacity).map_err(|_| {
            PlasmaError::InvalidConfig(format!(
                "capacity {} does not fit the address space",
                cfg.capacity
            ))
        })?;
        let path = cfg.segment_path();
        let io_err = |source: std::io::Error| PlasmaError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    PlasmaError::SegmentExists { path: path.clone() }
                } else {
                    io_err(e)
                }
            })?;
        // From here on the file is ours: remove it again if anything below fails.
        let cleanup = RemoveOnDrop(Some(path.clone()));
        file.set_len(cfg.capacity).map_err(io_err)?;
        if cfg.prefault {
            // Reserve the pages now so a too-small /dev/shm fails here, not with a SIGBUS
            // in some writer later.
            // SAFETY: plain syscall on a file descriptor we own.
            let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, cfg.capacity as i64) };
            if rc != 0 {
                return Err(io_err(std::io::Error::from_raw_os_error(rc)));
            }
        }
        let mut opts = MmapOptions::new();
        opts.len(map_len);
        if cfg.prefault {
            opts.populate();
        }
        let map = opts.map_raw(&file).map_err(io_err)?;
        cleanup.disarm();
        tracing::info!(
            path = %path.display(),
            capacity = cfg.capacity,
            prefault = cfg.prefault,
            "created plasma segment"
        );
        let arena = cfg.capacity & !(BLOCK - 1);
        Ok(PlasmaStore {
            path,
            capacity: cfg.capacity,
            file,
            map,
            inner: Mutex::new(Inner {
                objects: HashMap::new(),
                clients: HashMap::new(),
                alloc: Allocator::new(arena),
                lru: BTreeMap::new(),
                evictable_bytes: 0,
                next_tick: 0,
                num_evictions: 0,
                reserved: Reservations::new(cfg.capacity, cfg.prefault),
            }),
            sealed: Notify::new(),
        })
    }

    /// Path of the segment file, for clients to [`open`](crate::SegmentMapping::open).
    pub fn segment_path(&self) -> &Path {
        &self.path
    }

    /// Bytes of the segment.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes allocated to objects, each rounded up to 64.
    pub fn used(&self) -> u64 {
        self.inner.lock().alloc.used_bytes()
    }

    /// Objects holding space, in any state.
    pub fn num_objects(&self) -> usize {
        self.inner.lock().objects.len()
    }

    /// Allocates an unsealed object of `size` bytes owned by the caller.
    ///
    /// `primary` pins it until [`delete`](Self::delete); otherwise (a secondary copy pulled
    /// from another node) it becomes evictable once sealed and unread. Evicts LRU objects
    /// if needed; [`PlasmaError::ObjectStoreFull`] when the room cannot be made.
    pub fn create(
        &self,
        id: ObjectId,
        size: u64,
        primary: bool,
    ) -> Result<ObjectLocation, PlasmaError> {
        self.create_by(None, id, size, primary)
    }

    /// [`create`](Self::create) on behalf of `client`: if the client disconnects before
    /// sealing, the object is aborted.
    pub fn create_by(
        &self,
        client: Option<WorkerId>,
        id: ObjectId,
        size: u64,
        primary: bool,
    ) -> Result<ObjectLocation, PlasmaError> {
        let mut inner = self.inner.lock();
        if inner.objects.contains_key(&id) {
            return Err(PlasmaError::AlreadyExists(id));
        }
        let arena = inner.alloc.size();
        let too_large = PlasmaError::TooLarge {
            id,
            requested: size,
            capacity: arena,
        };
        if size > arena {
            return Err(too_large);
        }
        let alloc_len = alloc::round_up(size).ok_or(too_large)?;
        let offset = if alloc_len == 0 {
            0
        } else {
            let dir = self.path.parent().unwrap_or(Path::new("/"));
            let fd = self.file.as_raw_fd();
            inner
                .allocate(alloc_len, self.capacity, fd, dir)
                .inspect_err(|e| {
                    tracing::warn!(object_id = %id, size, error = %e, "object store full");
                })?
        };
        let tick = inner.tick();
        inner.objects.insert(
            id,
            Entry {
                offset,
                size,
                alloc_len,
                sealed: false,
                primary,
                readers: 0,
                io: 0,
                doomed: false,
                tick,
                lru_key: None,
                creator: client,
            },
        );
        if let Some(c) = client {
            inner.clients.entry(c).or_default().created.insert(id);
        }
        tracing::debug!(object_id = %id, size, offset, primary, "created object");
        Ok(ObjectLocation { offset, size })
    }

    /// Copies `data` into an unsealed object at `offset_in_object` (server-side writes,
    /// e.g. a remote driver's `PlasmaWrite` chunks). The copy runs outside the lock; the object
    /// cannot be freed under it.
    pub fn write(
        &self,
        id: ObjectId,
        offset_in_object: u64,
        data: &[u8],
    ) -> Result<(), PlasmaError> {
        let loc = self.pin_unsealed(id, offset_in_object, data.len())?;
        // SAFETY: the range lies inside the object (checked by `pin_unsealed`), which lies
        // inside the mapping; the io pin keeps the object allocated until `release_io`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.map
                    .as_mut_ptr()
                    .add((loc.offset + offset_in_object) as usize),
                data.len(),
            );
        }
        self.inner.lock().release_io(id);
        Ok(())
    }

    /// Makes the object immutable and visible to readers, and wakes `wait_get` callers.
    pub fn seal(&self, id: ObjectId) -> Result<ObjectLocation, PlasmaError> {
        let loc = {
            let mut inner = self.inner.lock();
            let e = inner.live_mut(id, false)?;
            e.sealed = true;
            let creator = e.creator.take();
            let loc = e.location();
            inner.refresh_lru(id);
            if let Some(c) = creator {
                inner.forget_created(c, id);
            }
            loc
        };
        tracing::debug!(object_id = %id, size = loc.size, "sealed object");
        self.sealed.notify_waiters();
        Ok(loc)
    }

    /// Discards an unsealed object (the creator gave up writing it).
    pub fn abort(&self, id: ObjectId) -> Result<(), PlasmaError> {
        self.inner.lock().abort_unsealed(id)?;
        tracing::debug!(object_id = %id, "aborted object");
        Ok(())
    }

    /// Takes a reader pin on a sealed object and marks it used. `None` if absent, unsealed
    /// or being deleted. Each `Some` must be matched by one [`release`](Self::release).
    pub fn get(&self, id: ObjectId) -> Option<ObjectLocation> {
        self.inner.lock().pin_reader(id)
    }

    /// [`get`](Self::get) for `client`; match with [`release_by`](Self::release_by).
    pub fn get_by(&self, client: Option<WorkerId>, id: ObjectId) -> Option<ObjectLocation> {
        self.inner.lock().pin_reader_by(client, id)
    }

    /// Waits until every id is sealed here or `timeout` passes, then answers like
    /// [`get`](Self::get) for each (one reader pin per `Some`, duplicates included).
    ///
    /// A zero timeout answers at once. Cancel-safe: if the future is dropped, the pins it
    /// took are released.
    pub async fn wait_get(
        &self,
        ids: &[ObjectId],
        timeout: Duration,
    ) -> Vec<Option<ObjectLocation>> {
        self.wait_get_by(None, ids, timeout).await
    }

    /// [`wait_get`](Self::wait_get) for `client`: its pins are released by
    /// [`release_by`](Self::release_by) or [`disconnect`](Self::disconnect).
    pub async fn wait_get_by(
        &self,
        client: Option<WorkerId>,
        ids: &[ObjectId],
        timeout: Duration,
    ) -> Vec<Option<ObjectLocation>> {
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        let mut pins = PinGuard {
            store: self,
            client,
            found: vec![None; ids.len()],
        };
        loop {
            // Register interest before looking, so a seal between the look and the await
            // still wakes us.
            let mut notified = pin!(self.sealed.notified());
            notified.as_mut().enable();
            {
                let mut inner = self.inner.lock();
                for (slot, &id) in pins.found.iter_mut().zip(ids) {
                    if slot.is_none() {
                        *slot = inner.pin_reader_by(client, id).map(|loc| (id, loc));
                    }
                }
            }
            if pins.found.iter().all(Option::is_some) || timeout.is_zero() {
                break;
            }
            match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d, notified).await.is_err() {
                        break;
                    }
                }
                None => notified.await,
            }
        }
        pins.into_locations()
    }

    /// Drops one reader pin. Frees the object if it was deleted and this was the last pin.
    pub fn release(&self, id: ObjectId) {
        self.inner.lock().release_reader(id);
    }

    /// Drops one reader pin `client` took; a client cannot drop pins it does not hold.
    pub fn release_by(&self, client: Option<WorkerId>, id: ObjectId) {
        self.inner.lock().release_reader_by(client, id);
    }

    /// `client` is gone: releases every reader pin it holds and aborts every object it
    /// created and did not seal. Its sealed objects are untouched (their owner frees them).
    pub fn disconnect(&self, client: WorkerId) -> Disconnected {
        let mut inner = self.inner.lock();
        let Some(state) = inner.clients.remove(&client) else {
            return Disconnected::default();
        };
        let mut out = Disconnected::default();
        for (id, n) in state.readers {
            for _ in 0..n {
                inner.release_reader(id);
            }
            out.pins_released += u64::from(n);
        }
        for id in state.created {
            if let Some(e) = inner.objects.get_mut(&id) {
                // Already forgotten from `clients`; keep `abort_unsealed` from looking again.
                e.creator = None;
            }
            if inner.abort_unsealed(id).is_ok() {
                out.aborted.push(id);
            }
        }
        drop(inner);
        if out.pins_released > 0 || !out.aborted.is_empty() {
            tracing::info!(
                client = %client,
                pins_released = out.pins_released,
                aborted = out.aborted.len(),
                "released what a gone client held"
            );
        }
        out
    }

    /// Clients that hold pins or unsealed objects here.
    pub fn clients(&self) -> Vec<WorkerId> {
        self.inner.lock().clients.keys().copied().collect()
    }

    /// The owner frees the object: drops its primary pin and removes it. If readers still
    /// pin it, it turns invisible now and is freed at the last release. Deleting an
    /// unsealed object discards it like [`abort`](Self::abort). `false` if absent.
    pub fn delete(&self, id: ObjectId) -> bool {
        let mut inner = self.inner.lock();
        let Some(e) = inner.objects.get_mut(&id).filter(|e| !e.doomed) else {
            return false;
        };
        e.primary = false;
        let creator = if e.sealed { None } else { e.creator.take() };
        if e.unpinned() {
            inner.remove(id);
        } else {
            e.doomed = true;
            inner.refresh_lru(id);
        }
        if let Some(c) = creator {
            inner.forget_created(c, id);
        }
        tracing::debug!(object_id = %id, "deleted object");
        true
    }

    /// Whether the object is sealed and present (takes no pin).
    pub fn contains(&self, id: ObjectId) -> bool {
        self.inner
            .lock()
            .objects
            .get(&id)
            .is_some_and(Entry::visible)
    }

    /// Location of a sealed object without taking a pin (for bookkeeping, not for reading).
    pub fn location(&self, id: ObjectId) -> Option<ObjectLocation> {
        self.inner
            .lock()
            .objects
            .get(&id)
            .filter(|e| e.visible())
            .map(Entry::location)
    }

    /// A copy of `len` bytes at `offset` of a sealed object, for streaming to other nodes.
    pub fn read_sealed(
        &self,
        id: ObjectId,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, PlasmaError> {
        self.read_sealed_with(id, offset, len, <[u8]>::to_vec)
    }

    /// Calls `f` on the bytes `[offset, offset + len)` of a sealed object, zero-copy. The
    /// object stays allocated while `f` runs (outside the store's lock).
    pub fn read_sealed_with<R>(
        &self,
        id: ObjectId,
        offset: u64,
        len: usize,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, PlasmaError> {
        let loc = {
            let mut inner = self.inner.lock();
            let e = inner.live_mut(id, true)?;
            check_range(e.size, offset, len as u64)?;
            e.io += 1;
            let loc = e.location();
            inner.refresh_lru(id);
            loc
        };
        // Drop the io pin even if `f` panics.
        struct IoPin<'a>(&'a PlasmaStore, ObjectId);
        impl Drop for IoPin<'_> {
            fn drop(&mut self) {
                self.0.inner.lock().release_io(self.1);
            }
        }
        let _pin = IoPin(self, id);
        // SAFETY: the range lies inside a sealed object inside the mapping; sealed objects
        // are immutable and the io pin keeps this one allocated until `_pin` drops.
        let bytes = unsafe {
            std::slice::from_raw_parts(self.map.as_ptr().add((loc.offset + offset) as usize), len)
        };
        Ok(f(bytes))
    }

    /// A zero-copy view of the bytes `[offset, offset + len)` of a sealed object, for
    /// streaming to other nodes without copying out first. The view holds an io pin, so
    /// the object stays allocated (a delete waits for it) until the view drops.
    pub fn sealed_view(
        self: &Arc<Self>,
        id: ObjectId,
        offset: u64,
        len: usize,
    ) -> Result<ObjectView, PlasmaError> {
        self.view(id, offset, len, true)
    }

    /// [`sealed_view`](Self::sealed_view) of an object sealed or not: for a node serving
    /// the part of an object it has already received while the rest still arrives. The
    /// caller vouches that the range is written and will not be written again; an abort
    /// waits for the view like a delete does.
    pub fn written_view(
        self: &Arc<Self>,
        id: ObjectId,
        offset: u64,
        len: usize,
    ) -> Result<ObjectView, PlasmaError> {
        self.view(id, offset, len, false)
    }

    /// A writable view of the bytes `[offset, offset + len)` of an unsealed object, to
    /// receive them in place: a pull reads its socket straight into the segment. Holds an
    /// io pin like [`ObjectView`], so an abort waits for it.
    ///
    /// # Safety
    /// While the view lives, the caller must be the only one writing or reading these
    /// bytes: no other writable view of them, and no [`written_view`](Self::written_view)
    /// of them until the view is dropped. (Nothing else in this process or another sees an
    /// unsealed object's bytes.)
    pub unsafe fn unsealed_view_mut(
        self: &Arc<Self>,
        id: ObjectId,
        offset: u64,
        len: usize,
    ) -> Result<ObjectViewMut, PlasmaError> {
        let loc = self.pin_unsealed(id, offset, len)?;
        // SAFETY: the range lies inside the object (checked there), inside the mapping.
        let ptr = unsafe { self.map.as_mut_ptr().add((loc.offset + offset) as usize) };
        Ok(ObjectViewMut {
            store: Arc::clone(self),
            id,
            ptr,
            len,
        })
    }

    /// Takes an io pin on the unsealed object `id` for writing `len` bytes at `offset`,
    /// after checking that they lie inside it; match with `release_io`.
    fn pin_unsealed(
        &self,
        id: ObjectId,
        offset: u64,
        len: usize,
    ) -> Result<ObjectLocation, PlasmaError> {
        let mut inner = self.inner.lock();
        let e = inner.live_mut(id, false)?;
        check_range(e.size, offset, len as u64)?;
        e.io += 1;
        Ok(e.location())
    }

    fn view(
        self: &Arc<Self>,
        id: ObjectId,
        offset: u64,
        len: usize,
        sealed_only: bool,
    ) -> Result<ObjectView, PlasmaError> {
        let loc = {
            let mut inner = self.inner.lock();
            let e = if sealed_only {
                inner.live_mut(id, true)?
            } else {
                inner.live_any(id)?
            };
            check_range(e.size, offset, len as u64)?;
            e.io += 1;
            let loc = e.location();
            inner.refresh_lru(id);
            loc
        };
        // SAFETY: the range lies inside the object (checked above), inside the mapping.
        let ptr = unsafe { self.map.as_ptr().add((loc.offset + offset) as usize) };
        Ok(ObjectView {
            store: Arc::clone(self),
            id,
            ptr,
            len,
        })
    }

    /// Current accounting.
    pub fn stats(&self) -> StoreStats {
        let inner = self.inner.lock();
        StoreStats {
            capacity: self.capacity,
            used: inner.alloc.used_bytes(),
            pinned: inner.pinned_bytes(),
            num_objects: inner.objects.len(),
            num_sealed: inner.objects.values().filter(|e| e.visible()).count(),
            num_evictions: inner.num_evictions,
        }
    }
}

/// Bytes of an object, read in place ([`PlasmaStore::sealed_view`],
/// [`PlasmaStore::written_view`]).
pub struct ObjectView {
    store: Arc<PlasmaStore>,
    id: ObjectId,
    ptr: *const u8,
    len: usize,
}

// SAFETY: the bytes are immutable (the object is sealed, or the range written for good, as
// `written_view`'s caller vouches) and stay mapped and allocated for the view's life (its
// `Arc` keeps the mapping, its io pin the object); the store is Sync.
unsafe impl Send for ObjectView {}
unsafe impl Sync for ObjectView {}

impl std::fmt::Debug for ObjectView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectView")
            .field("object_id", &self.id)
            .field("len", &self.len)
            .finish()
    }
}

impl AsRef<[u8]> for ObjectView {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: see the `Send`/`Sync` impls: `ptr..ptr + len` is live, immutable memory.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for ObjectView {
    fn drop(&mut self) {
        self.store.inner.lock().release_io(self.id);
    }
}

/// Bytes of an unsealed object, written in place ([`PlasmaStore::unsealed_view_mut`]).
pub struct ObjectViewMut {
    store: Arc<PlasmaStore>,
    id: ObjectId,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the bytes stay mapped and allocated for the view's life (its `Arc` keeps the
// mapping, its io pin the object), and its creator vouched that nobody else touches them.
unsafe impl Send for ObjectViewMut {}

impl std::fmt::Debug for ObjectViewMut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectViewMut")
            .field("object_id", &self.id)
            .field("len", &self.len)
            .finish()
    }
}

impl AsMut<[u8]> for ObjectViewMut {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr..ptr + len` is live memory that only this view touches (see the
        // `Send` impl).
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for ObjectViewMut {
    fn drop(&mut self) {
        self.store.inner.lock().release_io(self.id);
    }
}

impl Drop for PlasmaStore {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => tracing::debug!(path = %self.path.display(), "removed plasma segment"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove plasma segment")
            }
        }
    }
}

/// Errors unless `[offset, offset + len)` lies within `size` bytes.
pub(crate) fn check_range(size: u64, offset: u64, len: u64) -> Result<(), PlasmaError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(PlasmaError::OutOfBounds { offset, len, size }),
    }
}

/// Reader pins taken by an unfinished `wait_get`, released if its future is dropped.
struct PinGuard<'a> {
    store: &'a PlasmaStore,
    client: Option<WorkerId>,
    found: Vec<Option<(ObjectId, ObjectLocation)>>,
}

impl PinGuard<'_> {
    fn into_locations(mut self) -> Vec<Option<ObjectLocation>> {
        std::mem::take(&mut self.found)
            .into_iter()
            .map(|f| f.map(|(_, loc)| loc))
            .collect()
    }
}

impl Drop for PinGuard<'_> {
    fn drop(&mut self) {
        if self.found.iter().any(Option::is_some) {
            let mut inner = self.store.inner.lock();
            for (id, _) in self.found.iter().flatten() {
                inner.release_reader_by(self.client, *id);
            }
        }
    }
}

/// Removes a half-created segment file unless disarmed.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}
