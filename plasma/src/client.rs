//! Client side: a driver's or worker's own mapping of the node's segment.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{Advice, MmapOptions, MmapRaw};

use crate::error::PlasmaError;
use crate::store::{ObjectLocation, check_range};

/// A process's `MAP_SHARED` read-write mapping of an existing plasma segment.
///
/// Offsets come from the store (`create`, `get`, `wait_get`); this type only checks that
/// they lie inside the segment. What the bytes mean is governed by the store's lifecycle:
/// read an object only while holding a reader pin on it (sealed objects are immutable),
/// write an object only while you are its creator and it is unsealed.
pub struct SegmentMapping {
    path: PathBuf,
    map: MmapRaw,
    /// One bit per [`POPULATE_CHUNK`] of the mapping: set once this mapping's page tables
    /// hold writable entries for the whole chunk. Only a hint: if the kernel drops entries
    /// later, writes just page-fault again.
    populated: Box<[AtomicU64]>,
}

/// Granularity of write prefaulting in [`SegmentMapping::slice_mut`].
const POPULATE_CHUNK: u64 = 2 << 20;

impl std::fmt::Debug for SegmentMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentMapping")
            .field("path", &self.path)
            .field("len", &self.map.len())
            .finish()
    }
}

impl SegmentMapping {
    /// Maps the whole segment at `path` read-write and shared.
    pub fn open(path: &Path) -> Result<Self, PlasmaError> {
        let io_err = |source: std::io::Error| PlasmaError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        if len == 0 {
            return Err(PlasmaError::InvalidConfig(format!(
                "segment {} is empty",
                path.display()
            )));
        }
        let len = usize::try_from(len).map_err(|_| {
            PlasmaError::InvalidConfig(format!("segment of {len} bytes exceeds the address space"))
        })?;
        let map = MmapOptions::new().len(len).map_raw(&file).map_err(io_err)?;
        let chunks = (len as u64).div_ceil(POPULATE_CHUNK);
        let populated = (0..chunks.div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        Ok(SegmentMapping {
            path: path.to_path_buf(),
            map,
            populated,
        })
    }

    /// Path this mapping was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes mapped (the segment's capacity).
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Whether the mapping is empty (never true: `open` refuses empty segments).
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// A zero-copy view of an object's bytes.
    ///
    /// Meaningful for a sealed object on which this process holds a reader pin (from the
    /// store's `get`/`wait_get`) until the view is dropped: sealed bytes never change and the
    /// pin keeps them from being reused. Without a pin, the store may hand the range to
    /// another object, and the view would show that object's bytes.
    pub fn slice(&self, loc: ObjectLocation) -> Result<&[u8], PlasmaError> {
        check_range(self.len(), loc.offset, loc.size)?;
        // SAFETY: the range is inside the mapping, which lives as long as `self`.
        Ok(unsafe {
            std::slice::from_raw_parts(
                self.map.as_ptr().add(loc.offset as usize),
                loc.size as usize,
            )
        })
    }

    /// A mutable view of an unsealed object, for its creator to fill in place.
    ///
    /// Also asks the kernel to map the range's pages writable up front (one batched call
    /// instead of one page fault per 4 KiB), so the copy that follows runs at memcpy speed.
    ///
    /// # Safety
    ///
    /// The caller must guarantee, for the lifetime of the returned slice, that:
    /// - `loc` is an object this process created in the store and has not yet sealed,
    ///   aborted or deleted (once sealed, other processes read it and it must not change;
    ///   once freed, the range belongs to someone else);
    /// - no other live slice (from `slice` or `slice_mut`, through this or another mapping
    ///   in this process) overlaps the range, and nobody else writes it (for example
    ///   [`PlasmaStore::write`](crate::PlasmaStore::write) on the same object).
    ///
    /// Drop the slice before sealing.
    #[allow(clippy::mut_from_ref)] // the contract above is what makes this sound
    pub unsafe fn slice_mut(&self, loc: ObjectLocation) -> Result<&mut [u8], PlasmaError> {
        check_range(self.len(), loc.offset, loc.size)?;
        self.prefault(loc);
        // SAFETY: the range is inside the mapping, which lives as long as `self`;
        // exclusivity is the caller's contract.
        Ok(unsafe {
            std::slice::from_raw_parts_mut(
                self.map.as_mut_ptr().add(loc.offset as usize),
                loc.size as usize,
            )
        })
    }

    /// Maps the pages around `loc` writable now (`MADV_POPULATE_WRITE`), once per 2 MiB
    /// chunk of this mapping. A batched populate costs about half as much as taking one
    /// page fault per 4 KiB during the copy, and a warm chunk costs nothing. Best effort: on
    /// kernels without it, pages simply fault in on first touch.
    ///
    /// Populating does not change any byte, so covering whole chunks (beyond `loc`) is
    /// harmless to other objects; on a sparse segment it allocates those pages early.
    fn prefault(&self, loc: ObjectLocation) {
        if loc.size == 0 {
            return;
        }
        let len = self.len();
        let first = loc.offset / POPULATE_CHUNK;
        let last = (loc.offset + loc.size - 1) / POPULATE_CHUNK;
        for chunk in first..=last {
            let (word, bit) = ((chunk / 64) as usize, 1u64 << (chunk % 64));
            if self.populated[word].load(Ordering::Relaxed) & bit != 0 {
                continue;
            }
            let start = chunk * POPULATE_CHUNK;
            let end = (start + POPULATE_CHUNK).min(len);
            match self.map.advise_range(
                Advice::PopulateWrite,
                start as usize,
                (end - start) as usize,
            ) {
                Ok(()) => {
                    self.populated[word].fetch_or(bit, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot prefault segment pages");
                    return;
                }
            }
        }
    }
}
