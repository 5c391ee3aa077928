//! The objects, the one resourceVersion counter, and the history of changes watches replay.
//!
//! Invariants: every change takes the next resourceVersion, stamps it into the object, is
//! appended to the history and is broadcast, all under one lock; so the history and the
//! broadcast are both in resourceVersion order, and a watcher that takes its backlog and
//! subscribes under that lock misses nothing and sees nothing twice.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::resources::ResourceType;

/// How many changes are kept for watches that resume from a resourceVersion; older ones
/// get 410 Gone, as after the real server's compaction.
const HISTORY: usize = 10_000;
/// How far a live watcher may fall behind before its stream is ended (it resumes from the
/// last resourceVersion it saw, which the history still holds).
const BROADCAST: usize = 4_096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change of one object.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub resource: &'static ResourceType,
    pub namespace: String,
    pub kind: EventType,
    /// The object after the change (for DELETED, as it was, with the deletion's
    /// resourceVersion).
    pub object: Value,
    /// The object before a MODIFIED change, so selector watches can tell an object leaving
    /// their selection (sent as DELETED) from one entering it (ADDED).
    pub old: Option<Value>,
}

/// A receiver of the changes after some point.
pub type Changes = broadcast::Receiver<Arc<Change>>;

type Key = (&'static str, &'static str, String, String);

fn key(resource: &'static ResourceType, namespace: &str, name: &str) -> Key {
    (
        resource.group,
        resource.plural,
        namespace.to_string(),
        name.to_string(),
    )
}

/// The state behind the lock.
pub struct Objects {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    /// The highest resourceVersion dropped from the history (0: none dropped).
    compacted: u64,
    changes: broadcast::Sender<Arc<Change>>,
}

/// The objects, shared by every request.
pub struct Store {
    inner: Mutex<Objects>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    pub fn new() -> Store {
        Store::with_history(HISTORY)
    }

    /// A store keeping the last `history` changes for watches.
    pub fn with_history(history: usize) -> Store {
        let (changes, _) = broadcast::channel(BROADCAST);
        Store {
            inner: Mutex::new(Objects {
                rv: 0,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                history_limit: history.max(1),
                compacted: 0,
                changes,
            }),
        }
    }

    /// The objects, locked. Nothing awaits while holding it.
    pub fn lock(&self) -> MutexGuard<'_, Objects> {
        // A panic while holding the lock leaves whole objects (each change is one insert),
        // so the data is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a watch cannot start from the resourceVersion asked for.
#[derive(Debug)]
pub struct TooOld {
    pub asked: u64,
    pub oldest: u64,
}

impl Objects {
    /// The current resourceVersion (that of the last change).
    pub fn rv(&self) -> u64 {
        self.rv
    }

    pub fn get(
        &self,
        resource: &'static ResourceType,
        namespace: &str,
        name: &str,
    ) -> Option<&Value> {
        self.objects.get(&key(resource, namespace, name))
    }

    /// Every object of `resource`, in `namespace` or (None) all of them, by namespace then name.
    pub fn list(&self, resource: &'static ResourceType, namespace: Option<&str>) -> Vec<&Value> {
        let start = key(resource, namespace.unwrap_or(""), "");
        self.objects
            .range(start..)
            .take_while(|((g, p, ns, _), _)| {
                *g == resource.group
                    && *p == resource.plural
                    && namespace.is_none_or(|wanted| wanted == ns)
            })
            .map(|(_, v)| v)
            .collect()
    }

    /// Stores `object` (new or replacing) with the next resourceVersion; returns it as stored.
    pub fn put(
        &mut self,
        resource: &'static ResourceType,
        namespace: &str,
        mut object: Value,
    ) -> Value {
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let old = self
            .objects
            .insert(key(resource, namespace, &name), object.clone());
        let kind = if old.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(resource, namespace, kind, object.clone(), old);
        object
    }

    /// Removes an object; returns it with the deletion's resourceVersion.
    pub fn remove(
        &mut self,
        resource: &'static ResourceType,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let mut object = self.objects.remove(&key(resource, namespace, name))?;
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(
            resource,
            namespace,
            EventType::Deleted,
            object.clone(),
            None,
        );
        Some(object)
    }

    fn record(
        &mut self,
        resource: &'static ResourceType,
        namespace: &str,
        kind: EventType,
        object: Value,
        old: Option<Value>,
    ) {
        let change = Arc::new(Change {
            rv: self.rv,
            resource,
            namespace: namespace.to_string(),
            kind,
            object,
            old,
        });
        if self.history.len() >= self.history_limit
            && let Some(dropped) = self.history.pop_front()
        {
            self.compacted = dropped.rv;
        }
        self.history.push_back(change.clone());
        // No receiver is fine: nobody watches.
        let _ = self.changes.send(change);
    }

    /// The changes after `rv` and a receiver of every later one, taken together so nothing
    /// is missed between them.
    pub fn watch_from(&self, rv: u64) -> Result<(Vec<Arc<Change>>, Changes), TooOld> {
        if rv < self.compacted {
            return Err(TooOld {
                asked: rv,
                oldest: self.compacted,
            });
        }
        let backlog = self.history.iter().filter(|c| c.rv > rv).cloned().collect();
        Ok((backlog, self.changes.subscribe()))
    }

    /// A receiver of every change after now.
    pub fn subscribe(&self) -> Changes {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::api::resources::{NAMESPACES, PODS};

    #[test]
    fn changes_take_increasing_versions_and_replay_from_any_of_them() {
        let store = Store::new();
        let mut objects = store.lock();
        objects.put(NAMESPACES, "", json!({"metadata": {"name": "ns"}}));
        let a = objects.put(PODS, "ns", json!({"metadata": {"name": "a"}}));
        objects.put(
            PODS,
            "ns",
            json!({"metadata": {"name": "a", "labels": {"x": "y"}}}),
        );
        objects.remove(PODS, "ns", "a");
        assert_eq!(a["metadata"]["resourceVersion"], "2");
        assert_eq!(objects.rv(), 4);
        assert_eq!(objects.list(PODS, Some("ns")).len(), 0);
        assert_eq!(objects.list(NAMESPACES, None).len(), 1);
        let (backlog, _) = objects.watch_from(2).unwrap();
        let kinds: Vec<_> = backlog.iter().map(|c| (c.rv, c.kind)).collect();
        assert_eq!(
            kinds,
            vec![(3, EventType::Modified), (4, EventType::Deleted)]
        );
    }

    #[test]
    fn a_watch_from_before_the_kept_history_is_too_old() {
        let store = Store::with_history(2);
        let mut objects = store.lock();
        for name in ["a", "b", "c"] {
            objects.put(PODS, "ns", json!({"metadata": {"name": name}}));
        }
        let too_old = objects.watch_from(0).unwrap_err();
        assert_eq!((too_old.asked, too_old.oldest), (0, 1));
        assert_eq!(objects.watch_from(1).unwrap().0.len(), 2);
    }

    #[test]
    fn lists_keep_to_their_namespace() {
        let store = Store::new();
        let mut objects = store.lock();
        objects.put(PODS, "a", json!({"metadata": {"name": "p"}}));
        objects.put(PODS, "ab", json!({"metadata": {"name": "p"}}));
        objects.put(PODS, "b", json!({"metadata": {"name": "p"}}));
        assert_eq!(objects.list(PODS, Some("a")).len(), 1);
        assert_eq!(objects.list(PODS, None).len(), 3);
    }
}
