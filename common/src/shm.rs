//! The node's shared-memory folder (plasma segment and reply journals) and its free space.
//!
//! The folder is `MINIRAY_PLASMA_DIR` when set, else `/dev/shm`. A segment is sparse, so
//! creating one larger than the folder's free space succeeds and the first write past the
//! space kills the writer with `SIGBUS`; a raylet therefore refuses an object store larger
//! than the free space at start ([`check_fits`]), caps the default size to what fits
//! ([`default_object_store_memory`]), and the store reserves pages as it hands them out.

use std::path::{Path, PathBuf};

use crate::config::env;

/// The shared-memory folder when `MINIRAY_PLASMA_DIR` is not set.
pub const DEFAULT_PLASMA_DIR: &str = "/dev/shm";

/// Share of the folder's free space the default object store may take: the rest is left
/// for reply journals and other users of the folder.
const DEFAULT_SHARE_PERCENT: u64 = 90;

/// Why the shared-memory folder cannot hold what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    #[error("cannot read the free space of {dir}: {source}")]
    Statvfs {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--object-store-memory {requested} bytes does not fit in {dir}: {free} bytes free")]
    DoesNotFit {
        requested: u64,
        dir: PathBuf,
        free: u64,
    },
}

/// The shared-memory folder: `MINIRAY_PLASMA_DIR`, else `/dev/shm`.
pub fn plasma_dir() -> PathBuf {
    std::env::var_os(env::PLASMA_DIR)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PLASMA_DIR))
}

/// Bytes an unprivileged process can still allocate in the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Result<u64, ShmError> {
    use std::os::unix::ffi::OsStrExt;
    let statvfs_err = |source| ShmError::Statvfs {
        dir: dir.to_path_buf(),
        source,
    };
    let c_dir = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| statvfs_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: statvfs writes only into `st`, which is a plain C struct of the right type.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_dir` is a valid NUL-terminated string and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c_dir.as_ptr(), &mut st) } != 0 {
        return Err(statvfs_err(std::io::Error::last_os_error()));
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Errors (naming both numbers) unless `requested` bytes fit in the free space of `dir`.
pub fn check_fits(dir: &Path, requested: u64) -> Result<(), ShmError> {
    let free = free_bytes(dir)?;
    if requested > free {
        return Err(ShmError::DoesNotFit {
            requested,
            dir: dir.to_path_buf(),
            free,
        });
    }
    Ok(())
}

/// The default object store size for a segment in `dir`: the memory-based default
/// ([`crate::config::default_object_store_memory`]) capped to 90% of the free space.
pub fn default_object_store_memory(dir: &Path) -> Result<u64, ShmError> {
    let free = free_bytes(dir)?;
    Ok(crate::config::memory_based_object_store_memory().min(free / 100 * DEFAULT_SHARE_PERCENT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read_and_checked_with_both_numbers() {
        let dir = std::env::temp_dir();
        let free = free_bytes(&dir).expect("statvfs of the temp dir");
        assert!(free > 0);
        check_fits(&dir, 1).expect("one byte fits");
        let err = check_fits(&dir, u64::MAX).expect_err("u64::MAX does not fit");
        let msg = err.to_string();
        assert!(msg.contains(&u64::MAX.to_string()), "{msg}");
        assert!(msg.contains("bytes free"), "{msg}");
        let default = default_object_store_memory(&dir).expect("default");
        assert!(default <= free);
        assert!(free_bytes(Path::new("/nonexistent/miniray")).is_err());
    }
}
