//! Test support: a small tmpfs of its own, to fill a shared-memory folder on purpose.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A tmpfs of a given size mounted on a fresh folder under the temp dir; unmounted and
/// removed on drop. Mounting needs root (or `CAP_SYS_ADMIN`).
#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes (rounded up to pages by the kernel).
    pub fn mount(size: u64) -> std::io::Result<Tmpfs> {
        let dir = std::env::temp_dir().join(format!(
            "miniray-tmpfs-{}-{}",
            std::process::id(),
            miniray_common::ObjectId::random().hex()
        ));
        std::fs::create_dir(&dir)?;
        let to_c = |b: &[u8]| {
            CString::new(b).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        };
        let target = to_c(dir.as_os_str().as_bytes())?;
        let opts = to_c(format!("size={size},mode=0700").as_bytes())?;
        // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            let _ = std::fs::remove_dir(&dir);
            return Err(err);
        }
        Ok(Tmpfs { dir })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let Ok(target) = CString::new(self.dir.as_os_str().as_bytes()) else {
            return;
        };
        // SAFETY: a valid NUL-terminated path. A process still mapping a file there makes a
        // plain unmount fail with EBUSY; detach it then, so it goes when the last user does.
        unsafe {
            if libc::umount2(target.as_ptr(), 0) != 0 {
                libc::umount2(target.as_ptr(), libc::MNT_DETACH);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
