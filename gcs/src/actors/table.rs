//! The in-memory actor table, with the count of actors on (or being placed on) each node
//! kept beside it.
//!
//! Invariant: `placed[n]` is the number of entries whose `node_id()` is `n`, at every
//! moment the table's lock is free. Entries change only through [`ActorTable::insert`],
//! [`ActorTable::remove`] and [`ActorTable::update`] (reads go through `Deref`; there is no
//! `DerefMut`), and each of them moves the counts with the entry. Placement reads the counts
//! for every actor it places, so they are kept rather than counted: counting scanned the
//! whole table per placement, quadratic in the number of actors (creating 8,000 actors
//! slowed to about 10 a second).

use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;

use miniray_common::{ActorId, NodeId};

use super::ActorEntry;

#[derive(Default)]
pub(super) struct ActorTable {
    entries: BTreeMap<ActorId, ActorEntry>,
    placed: HashMap<NodeId, usize>,
}

impl ActorTable {
    pub(super) fn insert(&mut self, id: ActorId, entry: ActorEntry) {
        self.count(entry.node_id());
        if let Some(old) = self.entries.insert(id, entry) {
            self.uncount(old.node_id());
        }
    }

    pub(super) fn remove(&mut self, id: &ActorId) -> Option<ActorEntry> {
        let old = self.entries.remove(id)?;
        self.uncount(old.node_id());
        Some(old)
    }

    /// Runs `change` on the entry of `id`, if any, and moves the node counts with it.
    pub(super) fn update<R>(
        &mut self,
        id: &ActorId,
        change: impl FnOnce(&mut ActorEntry) -> R,
    ) -> Option<R> {
        let entry = self.entries.get_mut(id)?;
        let before = entry.node_id();
        let out = change(entry);
        let after = entry.node_id();
        if before != after {
            self.uncount(before);
            self.count(after);
        }
        Some(out)
    }

    /// Actors on, or being placed on, each node (dead ones are on none).
    pub(super) fn placed(&self) -> &HashMap<NodeId, usize> {
        &self.placed
    }

    fn count(&mut self, node: Option<NodeId>) {
        if let Some(node) = node {
            *self.placed.entry(node).or_default() += 1;
        }
    }

    fn uncount(&mut self, node: Option<NodeId>) {
        if let Some(node) = node
            && let Some(count) = self.placed.get_mut(&node)
        {
            *count -= 1;
            if *count == 0 {
                self.placed.remove(&node);
            }
        }
    }
}

impl FromIterator<(ActorId, ActorEntry)> for ActorTable {
    fn from_iter<I: IntoIterator<Item = (ActorId, ActorEntry)>>(iter: I) -> Self {
        let mut table = Self::default();
        for (id, entry) in iter {
            table.insert(id, entry);
        }
        table
    }
}

impl Deref for ActorTable {
    type Target = BTreeMap<ActorId, ActorEntry>;

    fn deref(&self) -> &Self::Target {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use miniray_proto::{ActorInfo, ActorState, NodeAddress};

    use super::super::Attempt;
    use super::*;

    fn address(node: NodeId) -> NodeAddress {
        NodeAddress {
            node_id: node.as_bytes().to_vec(),
            ..NodeAddress::default()
        }
    }

    fn alive_on(node: NodeId) -> ActorInfo {
        ActorInfo {
            state: ActorState::Alive as i32,
            node: Some(address(node)),
            ..ActorInfo::default()
        }
    }

    #[test]
    fn node_counts_follow_placement_life_and_death() {
        let (a, b) = (NodeId::random(), NodeId::random());
        let (one, two) = (ActorId::random(), ActorId::random());
        let mut table: ActorTable = [(one, ActorEntry::new(alive_on(a)))].into_iter().collect();
        assert_eq!(table.placed().get(&a), Some(&1));

        // A new actor counts once a node is chosen for it, and stays counted once alive.
        table.insert(two, ActorEntry::new(ActorInfo::default()));
        assert_eq!(table.placed().get(&b), None);
        table.update(&two, |e| {
            e.attempt = Some(Attempt {
                node: address(b),
                lease: None,
            })
        });
        assert_eq!(table.placed().get(&b), Some(&1));
        table.update(&two, |e| {
            e.info = alive_on(b);
            e.attempt = None;
        });
        assert_eq!(table.placed().get(&b), Some(&1));

        // A dead actor is on no node; a forgotten one neither.
        table.update(&one, |e| {
            e.info = ActorInfo {
                state: ActorState::Dead as i32,
                ..ActorInfo::default()
            }
        });
        assert_eq!(table.placed().get(&a), None);
        table.remove(&one);
        table.remove(&two);
        assert!(table.placed().is_empty());
    }
}
