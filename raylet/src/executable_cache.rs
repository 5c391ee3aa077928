//! The local cache of job executables, content-addressed by blake3 hash.
//!
//! Invariants:
//! - The cache folder is a directory of its own (never a symlink) owned by this process's
//!   user, mode 0700; `ensure` refuses any other (and tightens a looser mode of its own).
//! - `<tmp_root>/executables/<hash>` only ever appears by an atomic `rename` of a fully
//!   written, hash-verified, mode-0700 file from the same folder. Several raylets on one
//!   machine may fetch the same hash at once: each writes its own uniquely named temporary
//!   file and the last rename wins with identical content.
//! - A cached file is checked before each use: a regular file of ours, writable by nobody
//!   else, whose content hashes to its name. A file that fails is removed and fetched again.
//!   The hash of an unchanged file is not recomputed: the file's identity (device, inode,
//!   size, mtime, ctime) at verification is remembered, and trusted only once its ctime is
//!   a second older than the verification, because timestamps are coarse and a write
//!   within the same tick could otherwise keep them (git's "racy" entries). The record
//!   also goes to `.<hash>.verified` beside the file, so that the next raylet on this
//!   machine (every run of a driver with a cluster of its own starts one) trusts an
//!   unchanged file without reading its 100+ MB again. The record proves what the one in
//!   memory does: the folder is this user's alone, and nobody can set a file's ctime back.
//!   A record that is not a private regular file of ours, or does not parse, is ignored.
//! - The hash is validated as 64 lowercase hex characters before it touches a path, so a
//!   hostile job record cannot escape the cache folder.
//! - An executable no job of this raylet uses any more is kept for a job that runs it
//!   again (the same driver run twice starts its workers without a fetch), up to a byte
//!   budget for such unused files, as Ray keeps unused runtime-env packages up to a cache
//!   size. Past the budget, the least recently released go first ([`release`]); a budget
//!   of 0 removes each file as its last job ends. Only a file no known job uses is ever
//!   removed, and the worker pool calls [`release`] under its jobs lock, where a new job
//!   is registered before its first spawn looks for the file.
//! - Several raylets on one machine share the folder, so a file can vanish between
//!   [`ensure`] and the spawn of another raylet: that spawn fails with ENOENT and the
//!   worker pool fetches it again (`spawn_refetching`). A running worker is unaffected.
//!
//! [`release`]: ExecutableCache::release
//! [`ensure`]: ExecutableCache::ensure

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use miniray_common::auth::AuthedChannel;
use miniray_proto::GetExecutableRequest;
use miniray_proto::gcs_client::GcsClient;
use tokio::io::AsyncWriteExt;

/// How much older than its verification a file's ctime must be for its identity to stand
/// for its content (see the module docs).
const RACY_WINDOW: Duration = Duration::from_secs(1);

/// Why an executable could not be made available.
#[derive(Debug, thiserror::Error)]
pub enum ExecutableError {
    #[error("invalid executable hash {0:?}: expected 64 hex characters")]
    BadHash(String),
    #[error("fetching executable {hash} from the gcs: {status}")]
    Fetch { hash: String, status: tonic::Status },
    #[error("executable {hash} from the gcs is corrupt: {reason}")]
    Corrupt { hash: String, reason: String },
    #[error("writing executable cache file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The cache folder could be changed by someone else: nothing in it is run.
    #[error("refusing the executable cache folder {dir}: {reason}")]
    UnsafeDir { dir: PathBuf, reason: String },
}

impl ExecutableError {
    pub fn code(&self) -> miniray_common::ErrorCode {
        use miniray_common::ErrorCode;
        match self {
            ExecutableError::BadHash(_) => ErrorCode::InvalidArgument,
            ExecutableError::Fetch { status, .. } => ErrorCode::of_status(status),
            ExecutableError::Corrupt { .. } => ErrorCode::Unavailable,
            ExecutableError::Io { .. } | ExecutableError::UnsafeDir { .. } => ErrorCode::Internal,
        }
    }
}

/// What identifies a file's content without reading it, as far as timestamps allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileIdentity {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileIdentity {
    fn of(m: &std::fs::Metadata) -> Self {
        FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    fn ctime(&self) -> SystemTime {
        let (secs, nanos) = self.ctime;
        let since_epoch = Duration::new(secs.max(0) as u64, nanos.clamp(0, 999_999_999) as u32);
        SystemTime::UNIX_EPOCH + since_epoch
    }
}

/// A file whose content was hashed at `at`.
#[derive(Clone, Copy, Debug)]
struct Verified {
    identity: FileIdentity,
    at: SystemTime,
}

impl Verified {
    /// Whether a file with `identity` still has the verified content.
    fn stands_for(&self, identity: &FileIdentity) -> bool {
        self.identity == *identity
            && identity
                .ctime()
                .checked_add(RACY_WINDOW)
                .is_some_and(|t| t < self.at)
    }
}

/// How a cached file was found good.
enum Checked {
    /// What was verified before (here, or by an earlier raylet) still stands for it.
    Trusted(Verified),
    /// Its content was hashed now.
    Hashed(Verified),
}

/// First word of a verification record: its format.
const RECORD_FORMAT: &str = "miniray-verified-1";

fn record_path(dir: &Path, hash: &str) -> PathBuf {
    dir.join(format!(".{hash}.verified"))
}

/// The verification recorded at `path`; `None` if there is none or it cannot be trusted.
fn load_record(path: &Path) -> Option<Verified> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.uid() != current_uid() || meta.mode() & 0o022 != 0 {
        return None;
    }
    let mut text = String::new();
    file.take(256).read_to_string(&mut text).ok()?;
    let mut words = text.split_ascii_whitespace();
    if words.next()? != RECORD_FORMAT {
        return None;
    }
    let mut n = || -> Option<i64> { words.next()?.parse().ok() };
    let (dev, ino, len) = (n()?, n()?, n()?);
    let (mtime, ctime, at) = ((n()?, n()?), (n()?, n()?), (n()?, n()?));
    let at = SystemTime::UNIX_EPOCH
        + Duration::new(u64::try_from(at.0).ok()?, u32::try_from(at.1).ok()?);
    Some(Verified {
        identity: FileIdentity {
            dev: u64::try_from(dev).ok()?,
            ino: u64::try_from(ino).ok()?,
            len: u64::try_from(len).ok()?,
            mtime,
            ctime,
        },
        at,
    })
}

/// Records `v` at `path` (written aside, then renamed into place). A record that cannot
/// be written costs the next raylet a hash, nothing else.
fn store_record(path: &Path, v: &Verified) {
    let Ok(at) = v.at.duration_since(SystemTime::UNIX_EPOCH) else {
        return;
    };
    let i = &v.identity;
    let text = format!(
        "{RECORD_FORMAT} {} {} {} {} {} {} {} {} {}\n",
        i.dev,
        i.ino,
        i.len,
        i.mtime.0,
        i.mtime.1,
        i.ctime.0,
        i.ctime.1,
        at.as_secs(),
        at.subsec_nanos()
    );
    let tmp = path.with_extension(format!("{}.tmp", hex::encode(rand_suffix())));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        tracing::debug!(path = %path.display(), error = %e, "cannot record an executable's verification");
    }
}

/// Default byte budget of cached executables no job uses
/// (`MINIRAY_EXECUTABLE_CACHE_BYTES`).
pub const DEFAULT_UNUSED_BUDGET: u64 = 1 << 30;

/// Cached executables no job of this raylet uses, least recently released first.
#[derive(Default)]
struct Unused {
    files: VecDeque<(String, u64)>,
    bytes: u64,
}

impl Unused {
    /// Takes `hash` out (it is in use again, or gone); its size, if it was here.
    fn take(&mut self, hash: &str) -> Option<u64> {
        let at = self.files.iter().position(|(h, _)| h == hash)?;
        let (_, size) = self.files.remove(at)?;
        self.bytes -= size;
        Some(size)
    }
}

/// Fetches executables from the GCS into the cache folder, once per hash per process.
pub struct ExecutableCache {
    dir: PathBuf,
    /// Bytes of unused executables kept (see the module docs).
    unused_budget: u64,
    unused: parking_lot::Mutex<Unused>,
    /// Serializes fetches and checks of the same hash inside this process.
    locks: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Files whose content was verified in this process, by hash.
    verified: parking_lot::Mutex<HashMap<String, Verified>>,
}

impl ExecutableCache {
    /// A cache in `dir` that keeps up to `unused_budget` bytes of executables no job uses.
    pub fn new(dir: PathBuf, unused_budget: u64) -> Self {
        Self {
            dir,
            unused_budget,
            unused: parking_lot::Mutex::new(Unused::default()),
            locks: parking_lot::Mutex::new(HashMap::new()),
            verified: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// The default folder: `<tmp_root>/executables`.
    pub fn default_dir() -> PathBuf {
        miniray_common::config::tmp_root().join("executables")
    }

    pub fn path_of(&self, hash: &str) -> Result<PathBuf, ExecutableError> {
        let valid = hash.len() == 64
            && hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(ExecutableError::BadHash(hash.to_string()));
        }
        Ok(self.dir.join(hash))
    }

    /// The path of the cached executable, verified, fetching it from the GCS first if it is
    /// absent or fails verification.
    pub async fn ensure(
        &self,
        gcs: &mut GcsClient<AuthedChannel>,
        hash: &str,
    ) -> Result<PathBuf, ExecutableError> {
        let path = self.path_of(hash)?;
        // In use again: no release may remove it now.
        self.unused.lock().take(hash);
        let lock = self
            .locks
            .lock()
            .entry(hash.to_string())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        self.prepare_dir()?;
        let known = self.verified.lock().get(hash).copied();
        let checked = {
            let (path, hash, record) =
                (path.clone(), hash.to_string(), record_path(&self.dir, hash));
            tokio::task::spawn_blocking(move || check_recorded(&path, &hash, &record, known))
                .await
                .map_err(|e| ExecutableError::Io {
                    path: self.dir.clone(),
                    source: std::io::Error::other(e.to_string()),
                })??
        };
        if let Some(Checked::Trusted(verified) | Checked::Hashed(verified)) = checked {
            self.verified.lock().insert(hash.to_string(), verified);
            return Ok(path);
        }
        self.verified.lock().remove(hash);
        let tmp = self.dir.join(format!(
            ".{hash}.{}.{}.tmp",
            std::process::id(),
            hex::encode(rand_suffix())
        ));
        let result = self.fetch_into(gcs, hash, &tmp, &path).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        let verified = result?;
        // No record for a file just written: its ctime is within the racy window of this
        // verification, so no later raylet could trust one. The next raylet hashes it once
        // and records that.
        self.verified.lock().insert(hash.to_string(), verified);
        Ok(path)
    }

    /// Creates the cache folder (mode 0700) or checks that the existing one is ours alone.
    fn prepare_dir(&self) -> Result<(), ExecutableError> {
        let dir = &self.dir;
        let unsafe_dir = |reason: String| ExecutableError::UnsafeDir {
            dir: dir.clone(),
            reason,
        };
        let io_err = |source| ExecutableError::Io {
            path: dir.clone(),
            source,
        };
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(io_err)?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(e)),
        }
        let meta = std::fs::symlink_metadata(dir).map_err(io_err)?;
        if meta.file_type().is_symlink() {
            return Err(unsafe_dir("it is a symbolic link".into()));
        }
        if !meta.is_dir() {
            return Err(unsafe_dir("it is not a directory".into()));
        }
        let me = current_uid();
        if meta.uid() != me {
            return Err(unsafe_dir(format!(
                "it is owned by uid {}, not by this user (uid {me})",
                meta.uid()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            // Ours, but others may read or change it: make it private before using it.
            tracing::warn!(dir = %dir.display(), mode = format!("{:o}", meta.mode() & 0o777), "executable cache folder was not private; setting mode 0700");
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io_err)?;
        }
        Ok(())
    }

    /// No job of this raylet uses `hash` any more: it is kept for a job that runs it
    /// again, and the least recently released unused files beyond the budget are removed,
    /// but none that `in_use` names (a job registered meanwhile). Returns what was removed.
    pub fn release(
        &self,
        hash: &str,
        in_use: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, ExecutableError> {
        let path = self.path_of(hash)?;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let evict: Vec<String> = {
            let mut unused = self.unused.lock();
            unused.take(hash);
            unused.files.push_back((hash.to_string(), size));
            unused.bytes += size;
            let mut evict = Vec::new();
            let mut i = 0;
            while unused.bytes > self.unused_budget && i < unused.files.len() {
                if in_use(&unused.files[i].0) {
                    i += 1;
                    continue;
                }
                if let Some((h, size)) = unused.files.remove(i) {
                    unused.bytes -= size;
                    evict.push(h);
                }
            }
            evict
        };
        for h in &evict {
            self.remove(h)?;
        }
        Ok(evict)
    }

    /// Deletes the cached executable `hash` (and forgets its fetch lock and what was
    /// verified of it).
    fn remove(&self, hash: &str) -> Result<(), ExecutableError> {
        let path = self.path_of(hash)?;
        self.locks.lock().remove(hash);
        self.verified.lock().remove(hash);
        let _ = std::fs::remove_file(record_path(&self.dir, hash));
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(hash, path = %path.display(), budget = self.unused_budget, "removed cached executable: no job here uses it, and unused ones exceed the budget");
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ExecutableError::Io { path, source }),
        }
    }

    async fn fetch_into(
        &self,
        gcs: &mut GcsClient<AuthedChannel>,
        hash: &str,
        tmp: &Path,
        dest: &Path,
    ) -> Result<Verified, ExecutableError> {
        let fetch_err = |status| ExecutableError::Fetch {
            hash: hash.to_string(),
            status,
        };
        let io_err = |source| ExecutableError::Io {
            path: tmp.to_path_buf(),
            source,
        };
        let mut stream = gcs
            .get_executable(GetExecutableRequest {
                hash: hash.to_string(),
            })
            .await
            .map_err(fetch_err)?
            .into_inner();
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .custom_flags(libc::O_NOFOLLOW)
            .open(tmp)
            .await
            .map_err(io_err)?;
        let mut hasher = blake3::Hasher::new();
        let mut written: u64 = 0;
        let mut expected: Option<u64> = None;
        while let Some(chunk) = stream.message().await.map_err(fetch_err)? {
            if expected.is_none() {
                expected = Some(chunk.total_size);
            }
            hasher.update(&chunk.data);
            file.write_all(&chunk.data).await.map_err(io_err)?;
            written += chunk.data.len() as u64;
        }
        let corrupt = |reason: String| ExecutableError::Corrupt {
            hash: hash.to_string(),
            reason,
        };
        match expected {
            Some(total) if total != written => {
                return Err(corrupt(format!("got {written} of {total} bytes")));
            }
            None => return Err(corrupt("empty stream".into())),
            _ => {}
        }
        let got = hasher.finalize().to_hex().to_string();
        if got != hash {
            return Err(corrupt(format!("content hashes to {got}")));
        }
        file.flush().await.map_err(io_err)?;
        file.sync_all().await.map_err(io_err)?;
        // The umask may have narrowed the mode further; the owner must be able to run it.
        file.set_permissions(std::fs::Permissions::from_mode(0o700))
            .await
            .map_err(io_err)?;
        let meta = file.metadata().await.map_err(io_err)?;
        drop(file);
        let at = SystemTime::now();
        tokio::fs::rename(tmp, dest).await.map_err(io_err)?;
        tracing::info!(hash, bytes = written, path = %dest.display(), "cached job executable");
        Ok(Verified {
            identity: FileIdentity::of(&meta),
            at,
        })
    }
}

/// [`check_cached`] with what this process knows of the file, or else what its record
/// says; a file hashed now gets a new record, one found bad loses its record.
fn check_recorded(
    path: &Path,
    hash: &str,
    record: &Path,
    known: Option<Verified>,
) -> Result<Option<Checked>, ExecutableError> {
    let checked = check_cached(path, hash, known.or_else(|| load_record(record)));
    match &checked {
        Ok(Some(Checked::Hashed(v))) => store_record(record, v),
        Ok(None) => {
            let _ = std::fs::remove_file(record);
        }
        _ => {}
    }
    checked
}

/// Whether `path` holds the executable `hash`, safe to run; removes a file that is not.
/// `known` is what this process verified of it before.
fn check_cached(
    path: &Path,
    hash: &str,
    known: Option<Verified>,
) -> Result<Option<Checked>, ExecutableError> {
    let io_err = |source| ExecutableError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    let identity = FileIdentity::of(&meta);
    let problem = if !meta.file_type().is_file() {
        "not a regular file".to_string()
    } else if meta.uid() != current_uid() {
        format!("owned by uid {}", meta.uid())
    } else if meta.mode() & 0o022 != 0 {
        format!("mode {:o} lets others write it", meta.mode() & 0o777)
    } else if let Some(known) = known.filter(|v| v.stands_for(&identity)) {
        return Ok(Some(Checked::Trusted(known)));
    } else {
        let at = SystemTime::now();
        match hash_file(path, &identity) {
            Ok(got) if got == hash => return Ok(Some(Checked::Hashed(Verified { identity, at }))),
            Ok(got) => format!("content hashes to {got}"),
            Err(e) => format!("cannot read it: {e}"),
        }
    };
    tracing::warn!(path = %path.display(), problem, "cached executable failed verification; fetching it again");
    match std::fs::remove_file(path) {
        Ok(()) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(e)),
    }
}

/// The blake3 hex of the file at `path`, which must still be the file `identity` names.
fn hash_file(path: &Path, identity: &FileIdentity) -> std::io::Result<String> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let meta = file.metadata()?;
    if (meta.dev(), meta.ino()) != (identity.dev, identity.ino) {
        return Err(std::io::Error::other("the file was replaced while checked"));
    }
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn rand_suffix() -> [u8; 8] {
    let mut b = [0u8; 8];
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    b[..4].copy_from_slice(&nanos.to_le_bytes());
    b[4..].copy_from_slice(&miniray_common::WorkerId::random().as_bytes()[..4]);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_validated_before_touching_paths() {
        let cache = ExecutableCache::new(PathBuf::from("/nonexistent"), 0);
        assert!(cache.path_of("../../etc/passwd").is_err());
        assert!(cache.path_of(&"A".repeat(64)).is_err());
        let ok = "0123456789abcdef".repeat(4);
        assert_eq!(
            cache.path_of(&ok).unwrap(),
            PathBuf::from("/nonexistent").join(&ok)
        );
    }

    #[test]
    fn unused_executables_beyond_the_budget_go_least_recently_released_first() {
        let dir = tempfile::tempdir().expect("temp dir");
        // Three cached files of 100 bytes; room for two unused ones.
        let cache = ExecutableCache::new(dir.path().to_path_buf(), 250);
        let [a, b, c] = ["a", "b", "c"].map(|n| n.repeat(64));
        for h in [&a, &b, &c] {
            std::fs::write(dir.path().join(h), [0u8; 100]).expect("file written");
        }
        let nothing_in_use = |_: &str| false;
        assert!(cache.release(&a, nothing_in_use).unwrap().is_empty());
        assert!(cache.release(&b, nothing_in_use).unwrap().is_empty());
        // Released again: now the most recent.
        assert!(cache.release(&a, nothing_in_use).unwrap().is_empty());
        assert_eq!(cache.release(&c, nothing_in_use).unwrap(), vec![b.clone()]);
        assert!(!dir.path().join(&b).exists());
        assert!(dir.path().join(&a).exists() && dir.path().join(&c).exists());
        // A file a known job uses is never removed, however old.
        std::fs::write(dir.path().join(&b), [0u8; 100]).expect("file written");
        let a_in_use = |h: &str| h == a;
        assert_eq!(cache.release(&b, a_in_use).unwrap(), vec![c.clone()]);
        assert!(dir.path().join(&a).exists());
    }

    #[test]
    fn a_later_raylet_trusts_what_an_earlier_one_verified_until_the_file_changes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let content = b"#!/bin/sh\necho a job executable\n".repeat(1000);
        let hash = blake3::hash(&content).to_hex().to_string();
        let path = dir.path().join(&hash);
        std::fs::write(&path, &content).expect("file written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).expect("mode");
        let record = record_path(dir.path(), &hash);
        // Each check is a raylet of its own: it knows only the record.
        let check = || check_recorded(&path, &hash, &record, None).expect("checked");
        assert!(
            matches!(check(), Some(Checked::Hashed(_))),
            "nothing known yet"
        );
        assert!(
            load_record(&record).is_some(),
            "the verification was recorded"
        );
        // Within the racy window of its ctime a file is hashed again, whatever is known.
        let ctime = FileIdentity::of(&std::fs::metadata(&path).expect("metadata")).ctime();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while SystemTime::now() <= ctime + RACY_WINDOW {
            assert!(
                std::time::Instant::now() < deadline,
                "the clock does not move"
            );
            std::thread::yield_now();
        }
        assert!(matches!(check(), Some(Checked::Hashed(_))));
        assert!(
            matches!(check(), Some(Checked::Trusted(_))),
            "a later raylet trusts the record of an unchanged file"
        );
        // A changed file is hashed again, found bad, and loses its record.
        std::fs::write(&path, b"something else").expect("file changed");
        assert!(check().is_none());
        assert!(!path.exists() && !record.exists());
        // A record that does not parse, or that others could write, is not trusted.
        std::fs::write(&path, &content).expect("file written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).expect("mode");
        assert!(matches!(check(), Some(Checked::Hashed(_))));
        let text = std::fs::read_to_string(&record).expect("record");
        std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o622)).expect("mode");
        assert!(load_record(&record).is_none(), "others can write it");
        std::fs::remove_file(&record).expect("removed");
        std::fs::write(&record, text.replace(RECORD_FORMAT, "other-format")).expect("written");
        assert!(
            load_record(&record).is_none(),
            "not a record of this format"
        );
    }

    #[test]
    fn a_budget_of_zero_removes_each_executable_as_its_last_job_ends() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = ExecutableCache::new(dir.path().to_path_buf(), 0);
        let a = "a".repeat(64);
        std::fs::write(dir.path().join(&a), [0u8; 100]).expect("file written");
        assert_eq!(cache.release(&a, |_| false).unwrap(), vec![a.clone()]);
        assert!(!dir.path().join(&a).exists());
    }
}
