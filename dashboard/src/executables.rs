//! Driver executables users uploaded, kept on the head's disk by content (blake3 hash), so
//! a driver submitted again is not uploaded again. (The GCS keeps a job's executable only
//! while a job uses it; a driver registers its own when it starts, as any driver does.)
//!
//! Invariants:
//! - The folder is this process's own, mode 0700.
//! - `<dir>/<hash>` only appears by renaming a fully written file whose content hashed to
//!   `hash` (the caller checks; see `server.rs`), mode 0700.
//! - At most `MAX_KEPT` are kept; putting one more removes the least recently used. A
//!   driver already started is unaffected by its file's removal.

use std::path::PathBuf;
use std::time::SystemTime;

/// Executables kept at most.
const MAX_KEPT: usize = 16;

/// Whether `hash` names a blake3 hash: 64 lowercase hex characters (so it is a safe file
/// name too).
pub fn is_hash(hash: &str) -> bool {
    hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub struct ExecutableStore {
    dir: PathBuf,
}

impl ExecutableStore {
    /// The store in `dir`, created private if missing.
    pub fn open(dir: PathBuf) -> std::io::Result<ExecutableStore> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(ExecutableStore { dir })
    }

    /// The path of executable `hash`, if it is kept; marks it used.
    pub fn get(&self, hash: &str) -> Option<PathBuf> {
        if !is_hash(hash) {
            return None;
        }
        let path = self.dir.join(hash);
        let file = std::fs::File::options().write(true).open(&path).ok()?;
        // Recently used: the last to be removed.
        let _ = file.set_modified(SystemTime::now());
        Some(path)
    }

    /// Keeps `bytes` as executable `hash` (already checked to hash to it).
    pub fn put(&self, hash: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if !is_hash(hash) {
            return Err(std::io::Error::other(format!(
                "{hash:?} is not a blake3 hash"
            )));
        }
        let path = self.dir.join(hash);
        let tmp = self.dir.join(format!(
            ".{hash}.{}.{}.tmp",
            std::process::id(),
            hex::encode(rand::random::<[u8; 6]>())
        ));
        let written = (|| {
            let mut f = std::fs::File::options()
                .write(true)
                .create_new(true)
                .mode(0o700)
                .open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        self.evict();
        Ok(path)
    }

    /// Removes the least recently used past `MAX_KEPT`.
    fn evict(&self) {
        let mut kept: Vec<(SystemTime, PathBuf)> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| is_hash(&e.file_name().to_string_lossy()))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if kept.len() <= MAX_KEPT {
            return;
        }
        kept.sort();
        for (_, path) in &kept[..kept.len() - MAX_KEPT] {
            tracing::info!(path = %path.display(), "removing a driver executable not used lately");
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_by_hash_and_the_least_recently_used_go_first() {
        let dir = std::env::temp_dir().join(format!("miniray-exe-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = ExecutableStore::open(dir.clone()).unwrap();
        assert!(store.get("nothex").is_none());
        assert!(store.put("../x", b"x").is_err());
        let hashes: Vec<String> = (0..=MAX_KEPT as u8)
            .map(|i| blake3::hash(&[i]).to_hex().to_string())
            .collect();
        for (i, h) in hashes.iter().enumerate() {
            let path = store.put(h, &[i as u8]).unwrap();
            // Older by a second each, so the order does not rest on timestamp granularity.
            let age = std::time::Duration::from_secs((MAX_KEPT + 10 - i) as u64);
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(SystemTime::now() - age)
                .unwrap();
            if i == 0 {
                assert_eq!(std::fs::read(&path).unwrap(), vec![0]);
            }
        }
        // One more than kept: putting a new one removes the oldest.
        let extra = blake3::hash(b"extra").to_hex().to_string();
        store.put(&extra, b"extra").unwrap();
        assert!(store.get(&hashes[0]).is_none());
        assert!(store.get(&hashes[1]).is_none());
        assert!(store.get(&hashes[2]).is_some());
        assert!(store.get(&extra).is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
