//! Best-fit allocator for the fixed arena of the segment.
//!
//! Invariants (checked by `check_invariants` in tests):
//! - every offset and size handed out or kept free is a multiple of [`BLOCK`];
//! - `by_offset` and `by_size` describe exactly the same set of free ranges;
//! - free ranges never overlap and never touch: two adjacent free ranges are always merged
//!   at `free` time, so fragmentation cannot leak space — once every block is freed, the
//!   arena is again a single free range of its full size;
//! - `free_bytes + allocated bytes == arena size`.

use std::collections::{BTreeMap, BTreeSet};

/// Alignment and granularity of every allocation: a cache line, so objects never share one
/// and SIMD copies start aligned.
pub const BLOCK: u64 = 64;

/// Rounds `n` up to a whole number of blocks; `None` on overflow.
pub fn round_up(n: u64) -> Option<u64> {
    n.checked_add(BLOCK - 1).map(|v| v & !(BLOCK - 1))
}

#[derive(Debug)]
pub struct Allocator {
    size: u64,
    free_bytes: u64,
    /// Free ranges: offset -> length.
    by_offset: BTreeMap<u64, u64>,
    /// The same free ranges ordered by (length, offset), for best fit.
    by_size: BTreeSet<(u64, u64)>,
}

impl Allocator {
    /// An allocator over `[0, size)`; `size` must be a multiple of [`BLOCK`].
    pub fn new(size: u64) -> Self {
        debug_assert!(size.is_multiple_of(BLOCK));
        let mut a = Allocator {
            size,
            free_bytes: 0,
            by_offset: BTreeMap::new(),
            by_size: BTreeSet::new(),
        };
        if size > 0 {
            a.insert_free(0, size);
        }
        a
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn free_bytes(&self) -> u64 {
        self.free_bytes
    }

    pub fn used_bytes(&self) -> u64 {
        self.size - self.free_bytes
    }

    /// Length of the largest free range (what the next allocation can get at most).
    #[cfg(test)]
    pub fn largest_free(&self) -> u64 {
        self.by_size.last().map_or(0, |&(len, _)| len)
    }

    /// Allocates `len` bytes (a non-zero multiple of [`BLOCK`]) from the smallest free range
    /// that holds them, lowest offset first among equals. Returns the offset.
    pub fn alloc(&mut self, len: u64) -> Option<u64> {
        debug_assert!(len > 0 && len.is_multiple_of(BLOCK));
        let &(free_len, offset) = self.by_size.range((len, 0)..).next()?;
        self.remove_free(offset, free_len);
        if free_len > len {
            self.insert_free(offset + len, free_len - len);
        }
        Some(offset)
    }

    /// Returns `[offset, offset + len)` to the free list, merging it with free neighbours.
    pub fn free(&mut self, offset: u64, len: u64) {
        debug_assert!(len > 0 && len.is_multiple_of(BLOCK) && offset.is_multiple_of(BLOCK));
        debug_assert!(offset + len <= self.size);
        let mut start = offset;
        let mut end = offset + len;
        if let Some((&prev_off, &prev_len)) = self.by_offset.range(..offset).next_back() {
            debug_assert!(prev_off + prev_len <= offset, "double free at {offset}");
            if prev_off + prev_len == offset {
                self.remove_free(prev_off, prev_len);
                start = prev_off;
            }
        }
        if let Some(&next_len) = self.by_offset.get(&end) {
            self.remove_free(end, next_len);
            end += next_len;
        }
        debug_assert!(
            self.by_offset.range(start..end).next().is_none(),
            "double free at {offset}"
        );
        self.insert_free(start, end - start);
    }

    fn insert_free(&mut self, offset: u64, len: u64) {
        self.by_offset.insert(offset, len);
        self.by_size.insert((len, offset));
        self.free_bytes += len;
    }

    fn remove_free(&mut self, offset: u64, len: u64) {
        self.by_offset.remove(&offset);
        self.by_size.remove(&(len, offset));
        self.free_bytes -= len;
    }

    /// Panics if any invariant from the module docs is broken.
    #[cfg(test)]
    pub fn check_invariants(&self) {
        assert_eq!(self.by_offset.len(), self.by_size.len());
        let mut total = 0;
        let mut prev_end: Option<u64> = None;
        for (&off, &len) in &self.by_offset {
            assert!(self.by_size.contains(&(len, off)));
            assert_eq!(off % BLOCK, 0);
            assert_eq!(len % BLOCK, 0);
            assert!(len > 0);
            if let Some(pe) = prev_end {
                assert!(pe < off, "free ranges overlap or touch at {off}");
            }
            prev_end = Some(off + len);
            total += len;
        }
        assert!(prev_end.unwrap_or(0) <= self.size);
        assert_eq!(total, self.free_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn best_fit_picks_the_smallest_hole() {
        let mut a = Allocator::new(64 * 10);
        let x = a.alloc(64 * 3).unwrap();
        let y = a.alloc(64).unwrap();
        let z = a.alloc(64 * 2).unwrap();
        let _w = a.alloc(64).unwrap();
        a.free(x, 64 * 3); // hole of 3 blocks at 0
        a.free(z, 64 * 2); // hole of 2 blocks at 4, plus 3 blocks at the end
        // A 2-block request goes to the exact 2-block hole, not the first or the tail.
        assert_eq!(a.alloc(64 * 2), Some(z));
        a.check_invariants();
        a.free(y, 64);
        a.check_invariants();
    }

    #[test]
    fn neighbours_coalesce_in_any_order() {
        let mut a = Allocator::new(64 * 4);
        let offs: Vec<u64> = (0..4).map(|_| a.alloc(64).unwrap()).collect();
        assert_eq!(a.alloc(64), None);
        for &i in &[1usize, 3, 2, 0] {
            a.free(offs[i], 64);
            a.check_invariants();
        }
        assert_eq!(a.largest_free(), 64 * 4);
        assert_eq!(a.alloc(64 * 4), Some(0));
    }

    #[test]
    fn random_churn_leaves_one_full_range() {
        let size = 64 * 4096;
        let mut a = Allocator::new(size);
        let mut rng = StdRng::seed_from_u64(7);
        let mut live: Vec<(u64, u64)> = Vec::new();
        for _ in 0..20_000 {
            if live.is_empty() || rng.random_bool(0.55) {
                let len = round_up(rng.random_range(1..=64 * 64)).unwrap();
                if let Some(off) = a.alloc(len) {
                    live.push((off, len));
                }
            } else {
                let i = rng.random_range(0..live.len());
                let (off, len) = live.swap_remove(i);
                a.free(off, len);
            }
        }
        a.check_invariants();
        for (off, len) in live.drain(..) {
            a.free(off, len);
        }
        a.check_invariants();
        assert_eq!(a.free_bytes(), size);
        assert_eq!(a.largest_free(), size);
    }
}
