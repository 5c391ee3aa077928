//! The planner: a pure function `(cluster view, config) -> decision`. No processes, no
//! clocks, no I/O, so every policy is unit-tested (cases ported from Ray's autoscaler v2
//! scheduler tests).

use miniray_common::{NodeId, Resources};

/// The cluster as one round of the autoscaler sees it.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// The GCS's clock, Unix milliseconds.
    pub now_ms: u64,
    /// Raylets registered and alive (or draining).
    pub nodes: Vec<NodeView>,
    /// Instances the autoscaler launched that have not joined yet (requested or allocated).
    pub launching: Vec<LaunchingInstance>,
    /// Demand waiting for resources, one entry per request (queued leases, pending actors).
    pub demand: Vec<Resources>,
    /// The `request_resources` floor, one entry per bundle; counted against total capacity.
    pub constraint: Vec<Resources>,
}

#[derive(Debug, Clone)]
pub struct NodeView {
    pub node_id: NodeId,
    /// Empty for a node the autoscaler did not launch (the head, nodes started by hand).
    pub instance_id: String,
    /// Empty when the node has no configured type.
    pub node_type: String,
    pub is_head: bool,
    pub total: Resources,
    pub available: Resources,
    /// How long the node has been idle; 0 while busy.
    pub idle_ms: u64,
    /// Accepted a drain: it counts for nothing and is not removed again.
    pub draining: bool,
}

#[derive(Debug, Clone)]
pub struct LaunchingInstance {
    pub instance_id: String,
    pub node_type: String,
    /// When it was requested (Unix milliseconds).
    pub requested_ms: u64,
}

/// What to do this round, with the reason for every part of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    /// Node types to launch, with how many of each, in a stable order.
    pub launch: Vec<Launch>,
    pub terminate: Vec<Termination>,
    /// Demand no node type can ever satisfy, one entry per request.
    pub infeasible: Vec<Resources>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub node_type: String,
    pub count: usize,
    /// `launching 2 × cpu for 4 × {CPU: 1} queued`.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Termination {
    /// A launching instance that never joined has no node id.
    pub node_id: Option<NodeId>,
    pub instance_id: String,
    pub node_type: String,
    pub reason: String,
}
