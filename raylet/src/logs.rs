//! The node's log files for the dashboard (`ListLogs`, `ReadLog`): the plain files of
//! `<session>/logs`, read from their end.
//!
//! Invariant: only a plain file directly in the log folder is ever opened: a name with a
//! path separator, a leading dot or a NUL is refused, and a symlink is neither listed nor
//! followed, so a caller with the token reads the node's logs and nothing else.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use miniray_common::ErrorCode;
use miniray_proto::{LogFile, ReadLogReply};
use tonic::Status;

/// What `ReadLog` returns when the caller asks for no particular amount.
const DEFAULT_TAIL: u64 = 64 << 10;
/// The most `ReadLog` returns at once.
const MAX_TAIL: u64 = 1 << 20;

/// The plain files of `dir`, by name.
pub(crate) fn list(dir: &Path) -> Result<Vec<LogFile>, Status> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ErrorCode::Internal.status(format!("cannot list {}: {e}", dir.display())))?;
    let mut files = Vec::new();
    for entry in entries.flatten() {
        // `file_type` does not follow symlinks: a link is skipped.
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if !kind.is_file() {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        let modified_ms = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        files.push(LogFile {
            name: entry.file_name().to_string_lossy().into_owned(),
            size: meta.len(),
            modified_ms,
        });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// The last `tail_bytes` of the log `name` in `dir`.
pub(crate) fn read(dir: &Path, name: &str, tail_bytes: u64) -> Result<ReadLogReply, Status> {
    if name.is_empty() || name.starts_with('.') || name.contains('/') || name.contains('\0') {
        return Err(ErrorCode::InvalidArgument.status(format!("{name:?} is not a log file name")));
    }
    let path = dir.join(name);
    let not_found = || ErrorCode::NotFound.status(format!("no log file {name:?} on this node"));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|_| not_found())?;
    let meta = file.metadata().map_err(|_| not_found())?;
    if !meta.is_file() {
        return Err(not_found());
    }
    let want = match tail_bytes {
        0 => DEFAULT_TAIL,
        n => n.min(MAX_TAIL),
    };
    let size = meta.len();
    let start = size.saturating_sub(want);
    file.seek(SeekFrom::Start(start))
        .map_err(|e| ErrorCode::Internal.status(format!("reading {name}: {e}")))?;
    let mut data = Vec::new();
    file.take(want)
        .read_to_end(&mut data)
        .map_err(|e| ErrorCode::Internal.status(format!("reading {name}: {e}")))?;
    Ok(ReadLogReply { data, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_plain_files_and_reads_their_tails_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("raylet.err"), b"0123456789").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        let names: Vec<_> = list(dir.path())
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, ["raylet.err"]);

        let tail = read(dir.path(), "raylet.err", 4).unwrap();
        assert_eq!((tail.data.as_slice(), tail.size), (&b"6789"[..], 10));
        assert_eq!(
            read(dir.path(), "raylet.err", 0).unwrap().data,
            b"0123456789"
        );

        for bad in ["../raylet.err", "sub/x", ".hidden", ""] {
            let e = read(dir.path(), bad, 0).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
        }
        assert_eq!(
            read(dir.path(), "link", 0).unwrap_err().code(),
            tonic::Code::NotFound
        );
        assert_eq!(
            read(dir.path(), "sub", 0).unwrap_err().code(),
            tonic::Code::NotFound
        );
        assert_eq!(
            read(dir.path(), "missing", 0).unwrap_err().code(),
            tonic::Code::NotFound
        );
    }
}
