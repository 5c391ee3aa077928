//! Lease scheduling and resource accounting of one node: pure state, no I/O, no clock.
//!
//! The raylet server drives a [`Scheduler`] under one lock: every event (a lease request, a
//! returned lease, a blocked worker, a new cluster view) is a method call, and whatever the
//! event unblocked comes back as a list of [`Outcome`]s for the caller to deliver.
//!
//! Invariants:
//! - `available = total - Σ(resources of live leases) + Σ(CPUs handed back by blocked leases)`,
//!   per resource name. It can go negative transiently when a blocked worker unblocks while
//!   its CPUs are lent out (as in Ray); no lease is granted while a resource it needs is short.
//! - After every public method that frees resources or changes the cluster view, the caller
//!   runs [`Scheduler::schedule_queue`], so no queued request fits the available resources
//!   between events. This makes FIFO per shape hold: a new request of a shape never
//!   overtakes an older queued one, because the older one would have been granted first.
//! - Spillback never names this node, and only to a node whose available resources (as last
//!   reported, less what this node spilled there since) fit the request: a request no node
//!   has room for waits in this queue, where it counts as demand, instead of on a full node
//!   that cannot hand it on when others free up or join.
//! - A [`Placement::Pinned`] request is never spilled; a [`Placement::GrantOrReject`] request
//!   (one spilled here) is granted at once or rejected, never queued or spilled again, so a
//!   request is queued in one place only: the home raylet of its requester.
//! - A draining scheduler grants nothing and queues nothing: a new request is spilled to a
//!   node that fits it, else refused. Draining is only entered when the node is idle
//!   ([`Scheduler::busy_reasons`] empty), so no lease or queued request outlives it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use miniray_common::ids::LeaseId;
use miniray_common::{JobId, NodeId, Resources, WorkerId};
use miniray_proto::{NodeAddress, ResourceDemand};

/// Quantities this close to zero count as zero.
const EPSILON: f64 = 1e-9;
/// Distinct infeasible shapes warned about before the memory of them is cleared.
const MAX_WARNED_INFEASIBLE: usize = 1024;

/// Identifies one queued request until it is granted, spilled or cancelled.
pub type Ticket = u64;

/// A lease request as the scheduler sees it (already validated).
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    pub job_id: JobId,
    pub resources: Resources,
    pub placement: Placement,
}

/// Where a request may go besides this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Granted here, spilled to a node with room, or queued here until one of those.
    Anywhere,
    /// Granted here or queued here (the requester chose this node).
    Pinned,
    /// Spilled here: granted now or rejected (the requester asks its home raylet again).
    GrantOrReject,
}

impl Placement {
    /// From the two flags of the wire request; `grant_or_reject` wins.
    pub fn from_flags(no_spillback: bool, grant_or_reject: bool) -> Self {
        match (no_spillback, grant_or_reject) {
            (_, true) => Self::GrantOrReject,
            (true, false) => Self::Pinned,
            (false, false) => Self::Anywhere,
        }
    }
}

/// Another node of the cluster as last reported by the GCS.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    pub node_id: NodeId,
    pub address: NodeAddress,
    pub total: Resources,
    pub available: Resources,
}

/// What became of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Resources are taken on this node under this lease; a worker must be attached.
    Granted(LeaseId),
    /// Ask that node instead.
    Spill(NodeAddress),
}

/// Answer to [`Scheduler::submit`].
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    Done(Outcome),
    /// The node is draining and no other node fits: the requester tries elsewhere.
    Refused,
    /// A [`Placement::GrantOrReject`] request that does not fit now.
    Rejected,
    /// Waiting in the queue; [`Scheduler::schedule_queue`] will produce its outcome later.
    Queued(Ticket),
}

/// A live lease: resources held on this node.
#[derive(Debug, Clone)]
pub struct Lease {
    pub job_id: JobId,
    pub resources: Resources,
    /// The worker attached to this lease, once there is one.
    pub worker: Option<WorkerId>,
    /// CPUs handed back while the worker is blocked in get/wait (0 when not blocked).
    pub lent_cpus: f64,
}

#[derive(Debug)]
struct Queued {
    ticket: Ticket,
    req: LeaseRequest,
    /// No node known to this scheduler, this one included, could ever fit it.
    infeasible: bool,
}

enum Decision {
    Local,
    Spill(NodeAddress),
    Queue { infeasible: bool },
    Refuse,
    Reject,
}

/// Per-node lease scheduler; see the module docs for its invariants.
#[derive(Debug)]
pub struct Scheduler {
    node_id: NodeId,
    total: Resources,
    /// May hold negative amounts (see module invariants), hence not a [`Resources`].
    available: BTreeMap<String, f64>,
    leases: HashMap<LeaseId, Lease>,
    queue: VecDeque<Queued>,
    /// Other ALIVE nodes (never this one).
    cluster: Vec<ClusterNode>,
    next_ticket: Ticket,
    /// Shapes already warned about as infeasible, so the log says it once.
    warned_infeasible: HashSet<String>,
    /// The node accepted a drain: it takes no new leases (see the module invariants).
    draining: bool,
}

impl Scheduler {
    pub fn new(node_id: NodeId, total: Resources) -> Self {
        let available = total.iter().map(|(k, v)| (k.to_string(), v)).collect();
        Self {
            node_id,
            total,
            available,
            leases: HashMap::new(),
            queue: VecDeque::new(),
            cluster: Vec::new(),
            next_ticket: 1,
            warned_infeasible: HashSet::new(),
            draining: false,
        }
    }

    pub fn total(&self) -> &Resources {
        &self.total
    }

    /// Available resources as reported to the GCS: negative amounts show as zero.
    pub fn available(&self) -> Resources {
        let mut r = Resources::new();
        for (k, v) in &self.available {
            if *v > EPSILON {
                // Positive finite amounts under non-empty names are always valid.
                let _ = r.set(k.clone(), *v);
            }
        }
        r
    }

    /// The raw (possibly negative) available amount of one resource.
    pub fn available_amount(&self, name: &str) -> f64 {
        self.available.get(name).copied().unwrap_or(0.0)
    }

    pub fn lease(&self, id: &LeaseId) -> Option<&Lease> {
        self.leases.get(id)
    }

    pub fn num_leases(&self) -> usize {
        self.leases.len()
    }

    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    pub fn lease_of_worker(&self, worker: &WorkerId) -> Option<LeaseId> {
        self.leases
            .iter()
            .find(|(_, l)| l.worker.as_ref() == Some(worker))
            .map(|(id, _)| *id)
    }

    /// Attaches a worker to a granted lease. False when the lease is gone.
    pub fn bind_worker(&mut self, lease: &LeaseId, worker: WorkerId) -> bool {
        match self.leases.get_mut(lease) {
            Some(l) => {
                l.worker = Some(worker);
                true
            }
            None => false,
        }
    }

    fn fits_available(&self, req: &Resources) -> bool {
        req.iter()
            .all(|(k, v)| self.available_amount(k) + EPSILON >= v)
    }

    fn take(&mut self, req: &Resources) {
        for (k, v) in req.iter() {
            *self.available.entry(k.to_string()).or_insert(0.0) -= v;
        }
    }

    /// Gives resources back, never above the node's total (guards against double returns).
    fn give(&mut self, res: &Resources) {
        for (k, v) in res.iter() {
            let cap = self.total.get(k);
            let slot = self.available.entry(k.to_string()).or_insert(0.0);
            *slot = (*slot + v).min(cap);
        }
    }

    /// The other node that best fits `req` by `view` (available or total): the one whose
    /// scarcest requested resource is most plentiful; ties go to the lowest node id.
    fn best_node(&self, req: &Resources, use_total: bool) -> Option<&ClusterNode> {
        let score = |n: &ClusterNode| {
            let view = if use_total { &n.total } else { &n.available };
            if req.is_empty() {
                view.get("CPU")
            } else {
                req.iter()
                    .map(|(k, _)| view.get(k))
                    .fold(f64::INFINITY, f64::min)
            }
        };
        self.cluster
            .iter()
            .filter(|n| n.node_id != self.node_id)
            .filter(|n| {
                if use_total {
                    n.total.contains(req)
                } else {
                    n.available.contains(req)
                }
            })
            .max_by(|a, b| {
                score(a)
                    .total_cmp(&score(b))
                    .then_with(|| b.node_id.cmp(&a.node_id))
            })
    }

    fn decide(&self, req: &LeaseRequest) -> Decision {
        let placement = req.placement;
        if self.draining {
            return match placement {
                Placement::Pinned => Decision::Refuse,
                Placement::GrantOrReject => Decision::Reject,
                // A draining node may not queue, so a busy node that fits is better than
                // a refusal; should it reject, the requester comes back here and is spilled
                // again with a fresher view.
                Placement::Anywhere => match self
                    .best_node(&req.resources, false)
                    .or_else(|| self.best_node(&req.resources, true))
                {
                    Some(n) => Decision::Spill(n.address.clone()),
                    None => Decision::Refuse,
                },
            };
        }
        if self.fits_available(&req.resources) {
            return Decision::Local;
        }
        match placement {
            Placement::GrantOrReject => return Decision::Reject,
            Placement::Anywhere => {
                if let Some(n) = self.best_node(&req.resources, false) {
                    return Decision::Spill(n.address.clone());
                }
            }
            Placement::Pinned => {}
        }
        // Waits here: granted when this node frees up, or (when not pinned) spilled once
        // another node that fits has room. Infeasible only if no known node ever fits it.
        let feasible =
            self.total.contains(&req.resources) || self.best_node(&req.resources, true).is_some();
        Decision::Queue {
            infeasible: !feasible,
        }
    }

    fn grant(&mut self, req: &LeaseRequest) -> LeaseId {
        self.take(&req.resources);
        let id = LeaseId::random();
        self.leases.insert(
            id,
            Lease {
                job_id: req.job_id,
                resources: req.resources.clone(),
                worker: None,
                lent_cpus: 0.0,
            },
        );
        id
    }

    /// Books a spill into the local view of the target so a burst of requests spreads over
    /// nodes instead of piling onto the one that looked emptiest.
    fn note_spill(&mut self, target: &NodeAddress, req: &Resources) {
        if let Some(n) = self
            .cluster
            .iter_mut()
            .find(|n| n.address.node_id == target.node_id)
        {
            n.available.subtract(req);
        }
    }

    fn warn_infeasible(&mut self, req: &Resources) {
        // Shapes come from clients: start over rather than remember every one ever seen
        // (the cost is a repeated warning).
        if self.warned_infeasible.len() >= MAX_WARNED_INFEASIBLE {
            self.warned_infeasible.clear();
        }
        if self.warned_infeasible.insert(req.shape_key()) {
            tracing::warn!(
                shape = %req,
                "infeasible lease request: no node of the cluster has these resources; queued until one joins"
            );
        }
    }

    /// Places a new request: granted here, spilled, or queued.
    pub fn submit(&mut self, req: LeaseRequest) -> Submitted {
        match self.decide(&req) {
            Decision::Local => Submitted::Done(Outcome::Granted(self.grant(&req))),
            Decision::Spill(addr) => {
                self.note_spill(&addr, &req.resources);
                Submitted::Done(Outcome::Spill(addr))
            }
            Decision::Refuse => Submitted::Refused,
            Decision::Reject => Submitted::Rejected,
            Decision::Queue { infeasible } => {
                if infeasible {
                    self.warn_infeasible(&req.resources);
                }
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                self.queue.push_back(Queued {
                    ticket,
                    req,
                    infeasible,
                });
                Submitted::Queued(ticket)
            }
        }
    }

    /// Removes a queued request (its caller went away). False if it is not queued.
    pub fn cancel(&mut self, ticket: Ticket) -> bool {
        let before = self.queue.len();
        self.queue.retain(|q| q.ticket != ticket);
        self.queue.len() != before
    }

    /// Re-places queued requests in FIFO order; returns the ones that left the queue.
    pub fn schedule_queue(&mut self) -> Vec<(Ticket, Outcome)> {
        let mut out = Vec::new();
        let mut remaining = VecDeque::with_capacity(self.queue.len());
        while let Some(mut q) = self.queue.pop_front() {
            match self.decide(&q.req) {
                Decision::Local => {
                    let id = self.grant(&q.req);
                    out.push((q.ticket, Outcome::Granted(id)));
                }
                Decision::Spill(addr) => {
                    self.note_spill(&addr, &q.req.resources);
                    out.push((q.ticket, Outcome::Spill(addr)));
                }
                Decision::Queue { infeasible } => {
                    if infeasible && !q.infeasible {
                        self.warn_infeasible(&q.req.resources);
                    }
                    q.infeasible = infeasible;
                    remaining.push_back(q);
                }
                // Not reached: draining starts with an empty queue and queues nothing, and
                // a grant-or-reject request is never queued.
                Decision::Refuse | Decision::Reject => remaining.push_back(q),
            }
        }
        self.queue = remaining;
        out
    }

    /// The live leases of one job.
    pub fn leases_of_job(&self, job: JobId) -> Vec<LeaseId> {
        self.leases
            .iter()
            .filter(|(_, l)| l.job_id == job)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Ends a lease and gives its resources back. The caller then runs `schedule_queue`.
    pub fn release(&mut self, id: &LeaseId) -> Option<Lease> {
        let lease = self.leases.remove(id)?;
        let mut back = lease.resources.clone();
        if lease.lent_cpus > 0.0 {
            // The lent CPUs are already back in `available`.
            let cpus = (back.get("CPU") - lease.lent_cpus).max(0.0);
            let _ = back.set("CPU", cpus);
        }
        self.give(&back);
        Some(lease)
    }

    /// A leased worker blocked (true) or unblocked (false) in get/wait. Blocking lends the
    /// lease's CPUs back to the node; unblocking takes them again even if that drives
    /// `available` negative. Returns false when the lease is unknown or nothing changed.
    pub fn set_blocked(&mut self, id: &LeaseId, blocked: bool) -> bool {
        let Some(lease) = self.leases.get_mut(id) else {
            return false;
        };
        let cpus = lease.resources.get("CPU");
        if cpus <= 0.0 {
            return false;
        }
        match (blocked, lease.lent_cpus > 0.0) {
            (true, false) => {
                lease.lent_cpus = cpus;
                *self.available.entry("CPU".to_string()).or_insert(0.0) += cpus;
                true
            }
            (false, true) => {
                lease.lent_cpus = 0.0;
                *self.available.entry("CPU".to_string()).or_insert(0.0) -= cpus;
                true
            }
            _ => false,
        }
    }

    /// Replaces the view of the other alive nodes. The caller then runs `schedule_queue`.
    pub fn update_cluster(&mut self, nodes: Vec<ClusterNode>) {
        let me = self.node_id;
        self.cluster = nodes.into_iter().filter(|n| n.node_id != me).collect();
    }

    /// Queued demand grouped by shape, in first-queued order.
    pub fn demand(&self) -> Vec<ResourceDemand> {
        let mut order: Vec<String> = Vec::new();
        let mut by_shape: HashMap<String, ResourceDemand> = HashMap::new();
        for q in &self.queue {
            let key = q.req.resources.shape_key();
            let entry = by_shape.entry(key.clone()).or_insert_with(|| {
                order.push(key);
                ResourceDemand {
                    shape: Some(q.req.resources.to_proto()),
                    count: 0,
                    infeasible: false,
                }
            });
            entry.count += 1;
            entry.infeasible |= q.infeasible;
        }
        order
            .into_iter()
            .filter_map(|k| by_shape.remove(&k))
            .collect()
    }

    /// Why the node is not idle, empty when it is: every resource back at its total, no
    /// lease (so no leased worker and no actor, which holds its lease for life), nothing
    /// queued.
    pub fn busy_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        let leased = self.leases.len();
        if leased > 0 {
            reasons.push(plural(leased, "leased worker"));
        }
        let queued = self.queue.len();
        if queued > 0 {
            reasons.push(plural(queued, "queued lease request"));
        }
        let short: Vec<&str> = self
            .total
            .iter()
            .filter(|(k, v)| self.available_amount(k) + EPSILON < *v)
            .map(|(k, _)| k)
            .collect();
        if leased == 0 && !short.is_empty() {
            // Not expected (resources only leave with a lease); reported rather than hidden.
            reasons.push(format!("resources in use: {}", short.join(", ")));
        }
        reasons
    }

    /// Whether [`Scheduler::busy_reasons`] is empty, without building it.
    pub fn is_idle(&self) -> bool {
        self.leases.is_empty()
            && self.queue.is_empty()
            && self
                .total
                .iter()
                .all(|(k, v)| self.available_amount(k) + EPSILON >= v)
    }

    /// Stops granting and queueing (see the module invariants). The caller checks that the
    /// node is idle first.
    pub fn start_draining(&mut self) {
        self.draining = true;
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Fails everything: drops the queue and every lease (used at shutdown).
    pub fn drain(&mut self) -> Vec<Ticket> {
        let tickets = self.queue.drain(..).map(|q| q.ticket).collect();
        let ids: Vec<LeaseId> = self.leases.keys().copied().collect();
        for id in ids {
            self.release(&id);
        }
        tickets
    }
}

/// "1 leased worker", "3 leased workers" (regular plurals only).
fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(pairs: &[(&str, f64)]) -> Resources {
        Resources::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), *v))).unwrap()
    }

    fn req(pairs: &[(&str, f64)], placement: Placement) -> LeaseRequest {
        LeaseRequest {
            job_id: JobId::from_array([1; 16]),
            resources: res(pairs),
            placement,
        }
    }

    fn node(byte: u8, total: &[(&str, f64)], avail: &[(&str, f64)]) -> ClusterNode {
        let node_id = NodeId::from_array([byte; 16]);
        ClusterNode {
            node_id,
            address: NodeAddress {
                node_id: node_id.to_vec(),
                host: "127.0.0.1".into(),
                port: 1000 + byte as u32,
            },
            total: res(total),
            available: res(avail),
        }
    }

    fn granted(s: Submitted) -> LeaseId {
        match s {
            Submitted::Done(Outcome::Granted(id)) => id,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    #[test]
    fn grants_then_queues_fifo_then_grants_on_release() {
        let mut s = Scheduler::new(NodeId::random(), res(&[("CPU", 2.0)]));
        let a = granted(s.submit(req(&[("CPU", 2.0)], Placement::Anywhere)));
        assert_eq!(s.available_amount("CPU"), 0.0);
        let Submitted::Queued(t1) = s.submit(req(&[("CPU", 1.0)], Placement::Anywhere)) else {
            panic!("expected queued")
        };
        let Submitted::Queued(t2) = s.submit(req(&[("CPU", 1.0)], Placement::Anywhere)) else {
            panic!("expected queued")
        };
        assert_eq!(s.demand().len(), 1);
        assert_eq!(s.demand()[0].count, 2);
        assert!(!s.demand()[0].infeasible);
        assert!(s.schedule_queue().is_empty());
        s.release(&a).unwrap();
        let out = s.schedule_queue();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0, t1);
        assert_eq!(out[1].0, t2);
        assert!(s.demand().is_empty());
        assert_eq!(s.available_amount("CPU"), 0.0);
        assert!(s.release(&a).is_none(), "double release is refused");
    }

    #[test]
    fn spills_to_the_node_with_most_available_never_itself() {
        let me = NodeId::from_array([9; 16]);
        let mut s = Scheduler::new(me, res(&[("CPU", 1.0)]));
        granted(s.submit(req(&[("CPU", 1.0)], Placement::Anywhere)));
        s.update_cluster(vec![
            node(9, &[("CPU", 8.0)], &[("CPU", 8.0)]),
            node(1, &[("CPU", 4.0)], &[("CPU", 1.0)]),
            node(2, &[("CPU", 4.0)], &[("CPU", 3.0)]),
        ]);
        let Submitted::Done(Outcome::Spill(addr)) =
            s.submit(req(&[("CPU", 1.0)], Placement::Anywhere))
        else {
            panic!("expected spillback")
        };
        assert_eq!(addr.node_id, vec![2; 16]);
        // A pinned request queues here instead.
        assert!(matches!(
            s.submit(req(&[("CPU", 1.0)], Placement::Pinned)),
            Submitted::Queued(_)
        ));
    }

    #[test]
    fn infeasible_is_reported_and_spilled_once_a_node_that_fits_has_room() {
        let mut s = Scheduler::new(NodeId::random(), res(&[("CPU", 1.0)]));
        let Submitted::Queued(t) = s.submit(req(&[("GPU", 1.0)], Placement::Anywhere)) else {
            panic!("expected queued")
        };
        let d = s.demand();
        assert_eq!(d.len(), 1);
        assert!(d[0].infeasible);
        // A busy GPU node joins: the request is feasible now but waits here, where it is
        // still demand, rather than on a node that could not hand it on.
        s.update_cluster(vec![node(3, &[("GPU", 1.0)], &[])]);
        assert!(s.schedule_queue().is_empty());
        let d = s.demand();
        assert_eq!(d[0].count, 1);
        assert!(!d[0].infeasible);
        // The GPU node reports room: spill there.
        s.update_cluster(vec![node(3, &[("GPU", 1.0)], &[("GPU", 1.0)])]);
        let out = s.schedule_queue();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, t);
        assert!(matches!(&out[0].1, Outcome::Spill(a) if a.node_id == vec![3; 16]));
        assert_eq!(s.queue_len(), 0);
    }

    #[test]
    fn requests_no_node_has_room_for_wait_at_home_and_go_where_room_appears() {
        // The home has no CPU (a head of `CPU: 0`); one worker node, full.
        let mut s = Scheduler::new(NodeId::from_array([9; 16]), res(&[]));
        s.update_cluster(vec![node(1, &[("CPU", 1.0)], &[])]);
        let tickets: Vec<Ticket> = (0..3)
            .map(
                |_| match s.submit(req(&[("CPU", 1.0)], Placement::Anywhere)) {
                    Submitted::Queued(t) => t,
                    other => panic!("expected queued at home, got {other:?}"),
                },
            )
            .collect();
        assert_eq!(s.demand()[0].count, 3);
        assert!(!s.demand()[0].infeasible);
        // Two new nodes join with room: the two oldest requests go there, one each.
        s.update_cluster(vec![
            node(1, &[("CPU", 1.0)], &[]),
            node(2, &[("CPU", 1.0)], &[("CPU", 1.0)]),
            node(3, &[("CPU", 1.0)], &[("CPU", 1.0)]),
        ]);
        let out = s.schedule_queue();
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].0, out[1].0), (tickets[0], tickets[1]));
        let targets: HashSet<Vec<u8>> = out
            .iter()
            .map(|(_, o)| match o {
                Outcome::Spill(a) => a.node_id.clone(),
                other => panic!("expected spillback, got {other:?}"),
            })
            .collect();
        assert_eq!(targets, HashSet::from([vec![2; 16], vec![3; 16]]));
        assert_eq!(s.queue_len(), 1);
    }

    #[test]
    fn a_spilled_request_is_granted_now_or_rejected_never_queued() {
        let mut s = Scheduler::new(NodeId::random(), res(&[("CPU", 1.0)]));
        s.update_cluster(vec![node(2, &[("CPU", 4.0)], &[("CPU", 4.0)])]);
        let a = granted(s.submit(req(&[("CPU", 1.0)], Placement::GrantOrReject)));
        // Full now: rejected, though another node has room and this one could fit it later.
        assert_eq!(
            s.submit(req(&[("CPU", 1.0)], Placement::GrantOrReject)),
            Submitted::Rejected
        );
        assert_eq!(
            s.submit(req(&[("GPU", 1.0)], Placement::GrantOrReject)),
            Submitted::Rejected
        );
        assert_eq!(s.queue_len(), 0);
        assert!(s.demand().is_empty());
        s.release(&a).unwrap();
        granted(s.submit(req(&[("CPU", 1.0)], Placement::GrantOrReject)));
    }

    #[test]
    fn placement_from_wire_flags() {
        assert_eq!(Placement::from_flags(false, false), Placement::Anywhere);
        assert_eq!(Placement::from_flags(true, false), Placement::Pinned);
        assert_eq!(Placement::from_flags(false, true), Placement::GrantOrReject);
        assert_eq!(Placement::from_flags(true, true), Placement::GrantOrReject);
    }

    #[test]
    fn blocked_workers_lend_cpus_and_may_drive_available_negative() {
        let mut s = Scheduler::new(NodeId::random(), res(&[("CPU", 1.0)]));
        let a = granted(s.submit(req(&[("CPU", 1.0)], Placement::Pinned)));
        let Submitted::Queued(_) = s.submit(req(&[("CPU", 1.0)], Placement::Pinned)) else {
            panic!("expected queued")
        };
        assert!(s.set_blocked(&a, true));
        assert!(!s.set_blocked(&a, true), "blocking twice changes nothing");
        let out = s.schedule_queue();
        assert_eq!(out.len(), 1);
        let Outcome::Granted(b) = out[0].1.clone() else {
            panic!("expected grant")
        };
        assert!(s.set_blocked(&a, false));
        assert_eq!(s.available_amount("CPU"), -1.0);
        assert!(s.available().is_empty());
        s.release(&b).unwrap();
        assert_eq!(s.available_amount("CPU"), 0.0);
        s.release(&a).unwrap();
        assert_eq!(s.available_amount("CPU"), 1.0);
        // A lease released while blocked gives back only what it still holds.
        let c = granted(s.submit(req(&[("CPU", 1.0)], Placement::Pinned)));
        s.set_blocked(&c, true);
        s.release(&c).unwrap();
        assert_eq!(s.available_amount("CPU"), 1.0);
    }

    #[test]
    fn cancel_removes_queued_requests() {
        let mut s = Scheduler::new(NodeId::random(), res(&[("CPU", 1.0)]));
        let Submitted::Queued(t) = s.submit(req(&[("CPU", 2.0)], Placement::Anywhere)) else {
            panic!("expected queued")
        };
        assert!(s.cancel(t));
        assert!(!s.cancel(t));
        assert!(s.demand().is_empty());
    }

    #[test]
    fn busy_reasons_name_leases_and_queue_and_clear_when_idle() {
        let mut s = Scheduler::new(NodeId::random(), res(&[("CPU", 1.0)]));
        assert!(s.busy_reasons().is_empty());
        let a = granted(s.submit(req(&[("CPU", 1.0)], Placement::Anywhere)));
        let b = granted(s.submit(req(&[], Placement::Anywhere)));
        let Submitted::Queued(_) = s.submit(req(&[("CPU", 1.0)], Placement::Pinned)) else {
            panic!("expected queued")
        };
        assert_eq!(
            s.busy_reasons(),
            vec!["2 leased workers", "1 queued lease request"]
        );
        s.release(&b).unwrap();
        s.release(&a).unwrap();
        let out = s.schedule_queue();
        let Outcome::Granted(c) = out[0].1.clone() else {
            panic!("expected grant")
        };
        assert_eq!(s.busy_reasons(), vec!["1 leased worker"]);
        s.release(&c).unwrap();
        assert!(s.busy_reasons().is_empty());
    }

    #[test]
    fn a_draining_node_spills_or_refuses_and_never_grants() {
        let me = NodeId::from_array([9; 16]);
        let mut s = Scheduler::new(me, res(&[("CPU", 4.0)]));
        s.start_draining();
        assert!(s.is_draining());
        assert_eq!(
            s.submit(req(&[("CPU", 1.0)], Placement::Anywhere)),
            Submitted::Refused
        );
        assert_eq!(
            s.submit(req(&[("CPU", 1.0)], Placement::Pinned)),
            Submitted::Refused
        );
        assert_eq!(
            s.submit(req(&[("CPU", 1.0)], Placement::GrantOrReject)),
            Submitted::Rejected
        );
        // A draining node may not queue, so it spills even to a busy node whose total fits
        // (which grants or rejects; a rejected requester comes back with a fresher view).
        s.update_cluster(vec![node(2, &[("CPU", 2.0)], &[])]);
        let Submitted::Done(Outcome::Spill(addr)) =
            s.submit(req(&[("CPU", 1.0)], Placement::Anywhere))
        else {
            panic!("expected spillback")
        };
        assert_eq!(addr.node_id, vec![2; 16]);
        assert_eq!(
            s.submit(req(&[("CPU", 1.0)], Placement::Pinned)),
            Submitted::Refused
        );
        assert_eq!(
            s.submit(req(&[("CPU", 8.0)], Placement::Anywhere)),
            Submitted::Refused
        );
        assert_eq!(s.num_leases(), 0);
        assert_eq!(s.queue_len(), 0);
    }

    #[test]
    fn workers_bind_to_leases() {
        let mut s = Scheduler::new(NodeId::random(), res(&[("CPU", 1.0)]));
        let a = granted(s.submit(req(&[], Placement::Anywhere)));
        let w = WorkerId::random();
        assert!(s.bind_worker(&a, w));
        assert_eq!(s.lease_of_worker(&w), Some(a));
        assert_eq!(s.num_leases(), 1);
        assert!(s.drain().is_empty());
        assert_eq!(s.num_leases(), 0);
    }
}
