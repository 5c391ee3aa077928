//! The local cache of job executables, content-addressed by blake3 hash.
//!
//! Invariants:
//! - `<tmp_root>/executables/<hash>` only ever appears by an atomic `rename` of a fully
//!   written, hash-verified, mode-0755 file from the same folder, so a file under its final
//!   name is always complete and correct. Several raylets on one machine may fetch the same
//!   hash at once: each writes its own uniquely named temporary file and the last rename
//!   wins with identical content.
//! - The hash is validated as 64 lowercase hex characters before it touches a path, so a
//!   hostile job record cannot escape the cache folder.
//! - A raylet removes a cached executable once no job it knows of uses it ([`remove`]).
//!   Several raylets on one machine share the folder, so a file can vanish between
//!   [`ensure`] and the spawn of another raylet: that spawn fails with ENOENT and the
//!   worker pool fetches it again (`spawn_refetching`). A running worker is unaffected.
//!
//! [`remove`]: ExecutableCache::remove
//! [`ensure`]: ExecutableCache::ensure

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miniray_common::auth::AuthedChannel;
use miniray_proto::GetExecutableRequest;
use miniray_proto::gcs_client::GcsClient;
use tokio::io::AsyncWriteExt;

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
}

impl ExecutableError {
    pub fn code(&self) -> miniray_common::ErrorCode {
        use miniray_common::ErrorCode;
        match self {
            ExecutableError::BadHash(_) => ErrorCode::InvalidArgument,
            ExecutableError::Fetch { status, .. } => ErrorCode::of_status(status),
            ExecutableError::Corrupt { .. } => ErrorCode::Unavailable,
            ExecutableError::Io { .. } => ErrorCode::Internal,
        }
    }
}

/// Fetches executables from the GCS into the cache folder, once per hash per process.
pub struct ExecutableCache {
    dir: PathBuf,
    /// Serializes fetches of the same hash inside this process.
    locks: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ExecutableCache {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            locks: parking_lot::Mutex::new(HashMap::new()),
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

    /// The path of the cached executable, fetching it from the GCS first if absent.
    pub async fn ensure(
        &self,
        gcs: &mut GcsClient<AuthedChannel>,
        hash: &str,
    ) -> Result<PathBuf, ExecutableError> {
        let path = self.path_of(hash)?;
        if path.is_file() {
            return Ok(path);
        }
        let lock = self
            .locks
            .lock()
            .entry(hash.to_string())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        if path.is_file() {
            return Ok(path);
        }
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|source| ExecutableError::Io {
                path: self.dir.clone(),
                source,
            })?;
        let tmp = self.dir.join(format!(
            ".{hash}.{}.{}.tmp",
            std::process::id(),
            hex::encode(rand_suffix())
        ));
        let result = self.fetch_into(gcs, hash, &tmp, &path).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result.map(|()| path)
    }

    /// Deletes the cached executable `hash` (and forgets its fetch lock). Called by the
    /// worker pool once no job it knows of uses it.
    pub fn remove(&self, hash: &str) -> Result<(), ExecutableError> {
        let path = self.path_of(hash)?;
        self.locks.lock().remove(hash);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(hash, path = %path.display(), "removed cached executable: no job here uses it");
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
    ) -> Result<(), ExecutableError> {
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
        let mut file = tokio::fs::File::create(tmp).await.map_err(io_err)?;
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
        drop(file);
        tokio::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755))
            .await
            .map_err(io_err)?;
        tokio::fs::rename(tmp, dest).await.map_err(io_err)?;
        tracing::info!(hash, bytes = written, path = %dest.display(), "cached job executable");
        Ok(())
    }
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
        let cache = ExecutableCache::new(PathBuf::from("/nonexistent"));
        assert!(cache.path_of("../../etc/passwd").is_err());
        assert!(cache.path_of(&"A".repeat(64)).is_err());
        let ok = "0123456789abcdef".repeat(4);
        assert_eq!(
            cache.path_of(&ok).unwrap(),
            PathBuf::from("/nonexistent").join(&ok)
        );
    }
}
