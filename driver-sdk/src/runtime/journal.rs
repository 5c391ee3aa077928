//! A worker's reply journals: one shared-memory file per push session in which the task
//! thread records each task's start and reply, so that the raylet can tell, after this
//! process died, which task was running and which replies never reached their caller.
//! Format and invariants: `miniray_common::reply_journal`.
//!
//! Recording costs a copy of each reply into mapped memory; no system call on the task path
//! except when a journal grows. A journal that cannot grow (no space in `/dev/shm`) is
//! marked incomplete, so the raylet answers "unknown" instead of a wrong account.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::MmapMut;
use miniray_common::reply_journal::{
    COMMITTED_OFFSET, ENTRY_HEADER_LEN, FLAG_INCOMPLETE, FLAGS_OFFSET, HEADER_LEN, KIND_REPLY,
    KIND_STARTED, MAGIC, entry_header, session_path,
};
use miniray_proto::PushTaskReply;
use parking_lot::Mutex;
use prost::Message;
use tracing::warn;

/// Size of a new journal: room for the replies of a typical batch without growing.
const INITIAL_LEN: usize = 64 << 10;
/// A journal that grew past this is shrunk back when its next batch starts.
const SHRINK_ABOVE: usize = 4 << 20;
/// Journals of sessions that ended without every reply read are kept for the raylet until
/// this process exits; only the newest this many (older ones are long resolved).
const KEEP_FAILED: usize = 16;

/// The journals of this worker process.
pub(crate) struct Journals {
    prefix: PathBuf,
    next_session: AtomicU64,
    /// Session 0: created at start so the raylet always finds a file; marked incomplete if
    /// a later session's journal could not be created.
    base: Mutex<Option<SessionJournal>>,
    kept: Mutex<VecDeque<PathBuf>>,
}

impl Journals {
    /// Starts journaling under `prefix` (given by the raylet); `None` (with a warning) if
    /// the base journal cannot be created, in which case the raylet reports "unknown".
    pub(crate) fn start(prefix: PathBuf) -> Option<Arc<Journals>> {
        match SessionJournal::create(session_path(&prefix, 0)) {
            Ok(base) => Some(Arc::new(Journals {
                prefix,
                next_session: AtomicU64::new(1),
                base: Mutex::new(Some(base)),
                kept: Mutex::new(VecDeque::new()),
            })),
            Err(e) => {
                warn!(prefix = %prefix.display(), error = %e, "cannot create the reply journal; task outcomes after a crash will be unknown");
                None
            }
        }
    }

    /// A journal for a new push session. On failure the whole account is marked incomplete.
    pub(crate) fn open_session(self: &Arc<Self>) -> Option<Arc<Mutex<SessionJournal>>> {
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        match SessionJournal::create(session_path(&self.prefix, n)) {
            Ok(mut j) => {
                j.owner = Some(self.clone());
                Some(Arc::new(Mutex::new(j)))
            }
            Err(e) => {
                warn!(session = n, error = %e, "cannot create a session's reply journal");
                if let Some(base) = self.base.lock().as_mut() {
                    base.mark_incomplete();
                }
                None
            }
        }
    }

    fn keep(&self, path: PathBuf) {
        let mut kept = self.kept.lock();
        kept.push_back(path);
        while kept.len() > KEEP_FAILED {
            if let Some(old) = kept.pop_front() {
                let _ = std::fs::remove_file(old);
            }
        }
    }
}

/// The journal of one push session, written by the task thread only.
pub(crate) struct SessionJournal {
    path: PathBuf,
    file: File,
    map: MmapMut,
    /// Bytes of committed entries after the header.
    len: usize,
    incomplete: bool,
    /// Set when the session ended with every reply read: nothing left to recover.
    pub(crate) ended_cleanly: bool,
    owner: Option<Arc<Journals>>,
}

impl SessionJournal {
    fn create(path: PathBuf) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        let map = match reserve_and_map(&file, INITIAL_LEN) {
            Ok(map) => map,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        let mut j = SessionJournal {
            path,
            file,
            map,
            len: 0,
            incomplete: false,
            ended_cleanly: false,
            owner: None,
        };
        j.map[..MAGIC.len()].copy_from_slice(&MAGIC);
        j.publish(0);
        Ok(j)
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: the map is page-aligned and at least HEADER_LEN long, so the 8 bytes at
        // offsets 8 and 16 are in bounds and 8-aligned; other processes only read them.
        unsafe { &*(self.map.as_ptr().add(offset) as *const AtomicU64) }
    }

    /// Publishes the committed length; entries before it were written first.
    fn publish(&mut self, len: usize) {
        self.len = len;
        self.word(COMMITTED_OFFSET)
            .store(len as u64, Ordering::Release);
    }

    fn mark_incomplete(&mut self) {
        self.incomplete = true;
        self.word(FLAGS_OFFSET)
            .fetch_or(FLAG_INCOMPLETE, Ordering::Release);
    }

    /// A new batch of the session starts: the caller has read every earlier reply.
    pub(crate) fn begin_batch(&mut self) {
        self.publish(0);
        if self.map.len() > SHRINK_ABOVE && !self.incomplete {
            // Give back the pages of an unusually large batch.
            if let Ok(map) = reserve_and_map(&self.file, INITIAL_LEN) {
                let _ = self.file.set_len(INITIAL_LEN as u64);
                self.map = map;
            }
        }
    }

    pub(crate) fn record_started(&mut self, task_id: &[u8]) {
        self.append(KIND_STARTED, task_id.len(), |buf| {
            buf.copy_from_slice(task_id)
        });
    }

    pub(crate) fn record_reply(&mut self, reply: &PushTaskReply) {
        self.append(KIND_REPLY, reply.encoded_len(), |mut buf| {
            // Cannot fail: the buffer has exactly the encoded length.
            let _ = reply.encode(&mut buf);
        });
    }

    fn append(&mut self, kind: u8, payload_len: usize, write: impl FnOnce(&mut [u8])) {
        if self.incomplete {
            return;
        }
        let Some(header) = entry_header(kind, payload_len) else {
            self.mark_incomplete();
            return;
        };
        let start = HEADER_LEN + self.len;
        let end = start + ENTRY_HEADER_LEN + payload_len;
        if end > self.map.len() && !self.grow(end) {
            self.mark_incomplete();
            return;
        }
        self.map[start..start + ENTRY_HEADER_LEN].copy_from_slice(&header);
        write(&mut self.map[start + ENTRY_HEADER_LEN..end]);
        self.publish(end - HEADER_LEN);
    }

    fn grow(&mut self, needed: usize) -> bool {
        let new_len = needed.max(self.map.len() * 2).next_multiple_of(4096);
        match reserve_and_map(&self.file, new_len) {
            Ok(map) => {
                self.map = map;
                true
            }
            Err(e) => {
                warn!(path = %self.path.display(), bytes = new_len, error = %e, "reply journal cannot grow");
                false
            }
        }
    }
}

impl Drop for SessionJournal {
    fn drop(&mut self) {
        let Some(owner) = &self.owner else {
            // The base journal: kept for the raylet, which removes it when this process exits.
            return;
        };
        if self.ended_cleanly {
            let _ = std::fs::remove_file(&self.path);
        } else {
            owner.keep(self.path.clone());
        }
    }
}

/// Sets the file's length to `len`, reserves its pages (so writing cannot SIGBUS on a full
/// tmpfs) and maps it.
fn reserve_and_map(file: &File, len: usize) -> std::io::Result<MmapMut> {
    file.set_len(len as u64)?;
    // SAFETY: posix_fallocate on an fd we own; it only allocates blocks of the file.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    // SAFETY: the file is this process's private journal (created with O_EXCL, mode 0600);
    // only the raylet reads it, after this process is gone, so no one truncates it under us.
    unsafe { MmapMut::map_mut(file) }
}
