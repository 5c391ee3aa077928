//! Who owns the primary copies in this node's store, and which job each client of the store
//! (a driver or worker, by its worker id) belongs to: what the raylet needs to give memory
//! back when an owner dies or a job ends.
//!
//! Invariants:
//! - an object id is in `owner_of` iff it is in the `objects` of that owner's record;
//! - an owner record exists only while it owns an object here;
//! - nothing here frees store memory: callers take ids out, then delete them in the store.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use miniray_common::{JobId, ObjectId, WorkerId};
use miniray_proto::WorkerAddress;

/// The primary copies one owner has in this node's store.
struct OwnerRecord {
    address: WorkerAddress,
    job: Option<JobId>,
    objects: HashSet<ObjectId>,
}

#[derive(Default)]
pub(crate) struct Ownership {
    owner_of: HashMap<ObjectId, WorkerId>,
    owners: HashMap<WorkerId, OwnerRecord>,
    /// Clients that named themselves (`PlasmaInfo`), with their job.
    clients: HashMap<WorkerId, JobId>,
    /// When the last primary copy went; `None` while there is one, or before the first.
    /// A recorded copy is still referenced: its owner deletes it once freed.
    emptied_at: Option<Instant>,
}

impl Ownership {
    /// A client of the store announced itself.
    pub fn add_client(&mut self, client: WorkerId, job: JobId) {
        self.clients.insert(client, job);
    }

    /// A primary copy was created for `owner`. Without a job in the request, the owner's
    /// job is the one it announced as a client, if any.
    pub fn record(
        &mut self,
        id: ObjectId,
        owner: WorkerId,
        address: WorkerAddress,
        job: Option<JobId>,
    ) {
        let job = job.or_else(|| self.clients.get(&owner).copied());
        self.forget(id);
        let rec = self.owners.entry(owner).or_insert_with(|| OwnerRecord {
            address,
            job,
            objects: HashSet::new(),
        });
        if rec.job.is_none() {
            rec.job = job;
        }
        rec.objects.insert(id);
        self.owner_of.insert(id, owner);
        self.emptied_at = None;
    }

    /// Primary copies recorded here (each still referenced by its owner).
    pub fn primary_copies(&self) -> usize {
        self.owner_of.len()
    }

    /// Since when no primary copy is recorded: `None` while one is, `Some(None)` when none
    /// ever was.
    pub fn empty_since(&self) -> Option<Option<Instant>> {
        if self.owner_of.is_empty() {
            Some(self.emptied_at)
        } else {
            None
        }
    }

    fn note_removed(&mut self) {
        if self.owner_of.is_empty() && self.emptied_at.is_none() {
            self.emptied_at = Some(Instant::now());
        }
    }

    /// The owner freed (or aborted) the object.
    pub fn forget(&mut self, id: ObjectId) {
        let Some(owner) = self.owner_of.remove(&id) else {
            return;
        };
        if let Some(rec) = self.owners.get_mut(&owner) {
            rec.objects.remove(&id);
            if rec.objects.is_empty() {
                self.owners.remove(&owner);
            }
        }
        self.note_removed();
    }

    /// `worker` is gone: its primary copies, to delete, and it is no client any more.
    pub fn take_owner(&mut self, worker: WorkerId) -> Vec<ObjectId> {
        self.clients.remove(&worker);
        let Some(rec) = self.owners.remove(&worker) else {
            return Vec::new();
        };
        for id in &rec.objects {
            self.owner_of.remove(id);
        }
        self.note_removed();
        rec.objects.into_iter().collect()
    }

    /// `job` ended: the primary copies its owners had here, and its clients (whose pins and
    /// unsealed objects go too). Nothing of the job is remembered afterwards.
    pub fn take_job(&mut self, job: JobId) -> (Vec<ObjectId>, Vec<WorkerId>) {
        let mut clients: Vec<WorkerId> = self
            .clients
            .iter()
            .filter(|(_, j)| **j == job)
            .map(|(c, _)| *c)
            .collect();
        for c in &clients {
            self.clients.remove(c);
        }
        let owners: Vec<WorkerId> = self
            .owners
            .iter()
            .filter(|(_, r)| r.job == Some(job))
            .map(|(w, _)| *w)
            .collect();
        let mut objects = Vec::new();
        for w in owners {
            objects.extend(self.take_owner(w));
            if !clients.contains(&w) {
                clients.push(w);
            }
        }
        (objects, clients)
    }

    /// Every owner with a primary copy here, for liveness probes.
    pub fn owners(&self) -> Vec<(WorkerId, WorkerAddress)> {
        self.owners
            .iter()
            .map(|(w, r)| (*w, r.address.clone()))
            .collect()
    }

    /// Jobs that own a copy or have a client here (asked about at each heartbeat).
    pub fn jobs(&self) -> Vec<JobId> {
        let mut jobs: Vec<JobId> = self
            .owners
            .values()
            .filter_map(|r| r.job)
            .chain(self.clients.values().copied())
            .collect();
        jobs.sort();
        jobs.dedup();
        jobs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(worker: WorkerId) -> WorkerAddress {
        WorkerAddress {
            worker_id: worker.to_vec(),
            node_id: vec![0; 16],
            host: "127.0.0.1".into(),
            port: 1,
        }
    }

    fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
        v.sort();
        v
    }

    #[test]
    fn owners_and_jobs_give_back_what_they_hold_once() {
        let mut o = Ownership::default();
        let (driver, worker, other) = (WorkerId::random(), WorkerId::random(), WorkerId::random());
        let (job, other_job) = (JobId::random(), JobId::random());
        o.add_client(driver, job);
        o.add_client(worker, job);
        o.add_client(other, other_job);
        let (a, b, c) = (ObjectId::random(), ObjectId::random(), ObjectId::random());
        // The driver's job comes from its announcement when the create names none.
        o.record(a, driver, address(driver), None);
        o.record(b, driver, address(driver), Some(job));
        o.record(c, other, address(other), Some(other_job));
        assert_eq!(sorted(o.jobs()), sorted(vec![job, other_job]));
        assert_eq!(o.owners().len(), 2);

        o.forget(b);
        let (objects, clients) = o.take_job(job);
        assert_eq!(objects, vec![a]);
        assert_eq!(sorted(clients), sorted(vec![driver, worker]));
        assert_eq!(o.take_job(job), (Vec::new(), Vec::new()));
        assert_eq!(o.jobs(), vec![other_job]);

        assert_eq!(o.take_owner(other), vec![c]);
        assert!(o.take_owner(other).is_empty());
        assert!(o.jobs().is_empty());
        assert!(o.owners().is_empty());
    }

    #[test]
    fn primary_copies_are_counted_and_their_end_is_timed() {
        let mut o = Ownership::default();
        assert_eq!(o.empty_since(), Some(None));
        let owner = WorkerId::random();
        let (a, b) = (ObjectId::random(), ObjectId::random());
        o.record(a, owner, address(owner), None);
        o.record(b, owner, address(owner), None);
        assert_eq!(o.primary_copies(), 2);
        assert_eq!(o.empty_since(), None);
        o.forget(a);
        assert_eq!(o.empty_since(), None);
        let before = Instant::now();
        o.forget(b);
        let since = o.empty_since().flatten().unwrap();
        assert!(since >= before);
        o.record(a, owner, address(owner), None);
        assert_eq!(o.take_owner(owner), vec![a]);
        assert!(o.empty_since().flatten().unwrap() >= since);
    }
}
