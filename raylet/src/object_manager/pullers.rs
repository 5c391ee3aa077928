//! The nodes that lately pulled each object from this one: a source names them to later
//! pullers, which then read part of the object from them (broadcast without every byte
//! coming from the source).
//!
//! Invariant: what it names may be stale (a node gone, a copy evicted or a pull failed);
//! pullers fall back to the source for whatever a named peer does not serve.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use miniray_common::ObjectId;
use miniray_proto::NodeAddress;

/// How long a puller is remembered.
pub(crate) const PULLER_MEMORY: Duration = Duration::from_secs(60);

/// Most peers named to one puller.
pub(crate) const MAX_PEERS: usize = 3;

/// Below this many objects the map is not swept.
const SWEEP_FLOOR: usize = 1024;

#[derive(Default)]
pub(crate) struct RecentPullers {
    by_object: HashMap<ObjectId, Vec<(NodeAddress, Instant)>>,
    /// Sweep the whole map for expired entries once it holds more objects than this.
    sweep_at: usize,
}

impl RecentPullers {
    /// Records `puller` as pulling `id` now and returns the others remembered for it, the
    /// most recent first, at most [`MAX_PEERS`].
    pub(crate) fn note(
        &mut self,
        id: ObjectId,
        puller: NodeAddress,
        now: Instant,
    ) -> Vec<NodeAddress> {
        let fresh = |t: &Instant| now.saturating_duration_since(*t) < PULLER_MEMORY;
        let entries = self.by_object.entry(id).or_default();
        entries.retain(|(node, t)| fresh(t) && node.node_id != puller.node_id);
        let peers = entries
            .iter()
            .rev()
            .take(MAX_PEERS)
            .map(|(node, _)| node.clone())
            .collect();
        entries.push((puller, now));
        if self.by_object.len() > self.sweep_at.max(SWEEP_FLOOR) {
            self.by_object.retain(|_, entries| {
                entries.retain(|(_, t)| fresh(t));
                !entries.is_empty()
            });
            // Amortised: the next sweep waits until the map has doubled.
            self.sweep_at = self.by_object.len() * 2;
        }
        peers
    }

    #[cfg(test)]
    fn objects(&self) -> usize {
        self.by_object.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u8) -> NodeAddress {
        NodeAddress {
            node_id: vec![n; 28],
            host: "127.0.0.1".into(),
            port: 1000 + u32::from(n),
        }
    }

    #[test]
    fn names_earlier_pullers_newest_first_and_forgets_old_ones() {
        let mut p = RecentPullers::default();
        let id = ObjectId::random();
        let t0 = Instant::now();
        assert!(p.note(id, node(1), t0).is_empty());
        assert_eq!(p.note(id, node(2), t0), vec![node(1)]);
        // A node asking again is not named to itself, and moves to the newest place.
        assert_eq!(p.note(id, node(1), t0), vec![node(2)]);
        for n in 3..=6 {
            p.note(id, node(n), t0);
        }
        assert_eq!(p.note(id, node(7), t0), vec![node(6), node(5), node(4)]);
        // Another object has its own pullers.
        assert!(p.note(ObjectId::random(), node(1), t0).is_empty());
        // Past the memory, none is named.
        let later = t0 + PULLER_MEMORY;
        assert!(p.note(id, node(8), later).is_empty());
    }

    #[test]
    fn the_map_of_many_objects_is_swept_of_expired_entries() {
        let mut p = RecentPullers::default();
        let t0 = Instant::now();
        for _ in 0..SWEEP_FLOOR {
            p.note(ObjectId::random(), node(1), t0);
        }
        assert_eq!(p.objects(), SWEEP_FLOOR);
        p.note(ObjectId::random(), node(1), t0 + PULLER_MEMORY);
        assert_eq!(p.objects(), 1, "only the fresh entry is left");
    }
}
