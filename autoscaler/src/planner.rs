//! The planner: a pure function `(cluster view, config) -> decision`. No processes, no
//! clocks, no I/O, so every policy is unit-tested (cases ported from Ray's autoscaler v2
//! scheduler tests).

mod packing;

use std::collections::{BTreeMap, HashSet};

use miniray_common::{NodeId, Resources};

use crate::config::AutoscalingConfig;
use packing::{Bin, Group};

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
    /// Node types to launch, with how many of each: one entry per node type and cause
    /// (`min_workers`, then `request_resources`, then queued demand; by type name within).
    pub launch: Vec<Launch>,
    /// Removals in the order decided: instances of types no longer configured, nodes above
    /// a maximum (never joined first, then longest idle), then idle nodes (longest first).
    pub terminate: Vec<Termination>,
    /// Demand (and `request_resources` bundles) that no node type with `max_workers > 0`
    /// and no live node could ever hold, one entry per request.
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

/// Demand-driven launches pending at once are capped at
/// `max(MIN_PENDING_LAUNCHES, ceil(upscaling_speed × running workers))` (Ray's rule).
pub const MIN_PENDING_LAUNCHES: usize = 5;

/// Decides one round: what to launch and what to remove, and why.
///
/// In order: instances of types no longer configured and nodes above a `max_workers` are
/// removed (a launch that never joins in time is the loop's to give up on); `min_workers`
/// are launched; the `request_resources` floor is packed onto total capacity and new
/// nodes; queued demand onto free capacity, launching nodes and then new nodes (capped by
/// `upscaling_speed`); last, idle nodes nothing needs are removed.
pub fn plan(view: &ClusterView, config: &AutoscalingConfig) -> Decision {
    let mut p = Planner::new(view, config);
    p.remove_unconfigured();
    p.enforce_type_max();
    p.enforce_global_max();
    p.launch_min_workers();
    p.satisfy_constraint();
    p.serve_demand();
    p.remove_idle();
    p.finish()
}

/// Why a node is launched; launches are reported per node type and cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Cause {
    MinWorkers,
    Constraint,
    Demand,
}

/// A node this round decided to launch, with the requests it was launched for.
struct NewNode {
    node_type: String,
    cause: Cause,
    placed: Vec<Group>,
}

struct Planner<'a> {
    view: &'a ClusterView,
    config: &'a AutoscalingConfig,
    /// Indices into `view.nodes` / `view.launching` terminated this round.
    removed_nodes: HashSet<usize>,
    removed_launching: HashSet<usize>,
    new_nodes: Vec<NewNode>,
    terminate: Vec<Termination>,
    infeasible: Vec<Resources>,
    /// Nodes (indices into `view.nodes`) that demand or the floor was packed onto.
    needed: HashSet<usize>,
}

impl<'a> Planner<'a> {
    fn new(view: &'a ClusterView, config: &'a AutoscalingConfig) -> Self {
        Planner {
            view,
            config,
            removed_nodes: HashSet::new(),
            removed_launching: HashSet::new(),
            new_nodes: Vec::new(),
            terminate: Vec::new(),
            infeasible: Vec::new(),
            needed: HashSet::new(),
        }
    }

    /// Worker nodes (not the head) with a configured type: what `max_workers` counts.
    fn is_counted(&self, n: &NodeView) -> bool {
        !n.is_head && self.config.node_types.contains_key(&n.node_type)
    }

    /// A node that can still take work and be counted on: alive, not leaving.
    fn is_live(&self, i: usize) -> bool {
        !self.view.nodes[i].draining && !self.removed_nodes.contains(&i)
    }

    /// Nodes this planner may terminate: launched by the autoscaler, not the head.
    fn is_removable(n: &NodeView) -> bool {
        !n.is_head && !n.instance_id.is_empty()
    }

    /// Everything of `node_type` that exists or will: nodes (draining ones too, until gone),
    /// launching instances and launches decided this round. Terminations this round still
    /// count: the instance exists until it is gone.
    fn type_count(&self, node_type: &str) -> usize {
        let nodes = self
            .view
            .nodes
            .iter()
            .filter(|n| !n.is_head && n.node_type == node_type)
            .count();
        let launching = self
            .view
            .launching
            .iter()
            .filter(|l| l.node_type == node_type)
            .count();
        let new = self
            .new_nodes
            .iter()
            .filter(|n| n.node_type == node_type)
            .count();
        nodes + launching + new
    }

    /// All worker nodes, counted as `type_count` does, against the global `max_workers`.
    fn worker_count(&self) -> usize {
        let nodes = self
            .view
            .nodes
            .iter()
            .filter(|n| self.is_counted(n))
            .count();
        nodes + self.view.launching.len() + self.new_nodes.len()
    }

    /// Whether one more node of `node_type` stays within both maxima.
    fn has_room(&self, node_type: &str) -> bool {
        let Some(t) = self.config.node_types.get(node_type) else {
            return false;
        };
        self.type_count(node_type) < t.max_workers as usize
            && self.worker_count() < self.config.max_workers as usize
    }

    /// Nodes of `node_type` that count toward its `min_workers`: live nodes and launches
    /// not removed this round, and launches decided this round.
    fn live_count(&self, node_type: &str) -> usize {
        let nodes = (0..self.view.nodes.len())
            .filter(|&i| {
                let n = &self.view.nodes[i];
                !n.is_head && n.node_type == node_type && self.is_live(i)
            })
            .count();
        let launching = (0..self.view.launching.len())
            .filter(|i| {
                !self.removed_launching.contains(i)
                    && self.view.launching[*i].node_type == node_type
            })
            .count();
        let new = self
            .new_nodes
            .iter()
            .filter(|n| n.node_type == node_type)
            .count();
        nodes + launching + new
    }

    fn remove_node(&mut self, i: usize, reason: String) {
        let n = &self.view.nodes[i];
        self.removed_nodes.insert(i);
        self.terminate.push(Termination {
            node_id: Some(n.node_id),
            instance_id: n.instance_id.clone(),
            node_type: n.node_type.clone(),
            reason,
        });
    }

    fn remove_launching(&mut self, i: usize, reason: String) {
        let l = &self.view.launching[i];
        self.removed_launching.insert(i);
        self.terminate.push(Termination {
            node_id: None,
            instance_id: l.instance_id.clone(),
            node_type: l.node_type.clone(),
            reason,
        });
    }

    /// Instances of a node type the config no longer has (a restart with a changed file).
    fn remove_unconfigured(&mut self) {
        for i in 0..self.view.launching.len() {
            let t = &self.view.launching[i].node_type;
            if !self.removed_launching.contains(&i) && !self.config.node_types.contains_key(t) {
                let reason = format!("node type {t:?} is not in the config");
                self.remove_launching(i, reason);
            }
        }
        for i in 0..self.view.nodes.len() {
            let n = &self.view.nodes[i];
            if Self::is_removable(n)
                && !n.node_type.is_empty()
                && !n.draining
                && !self.config.node_types.contains_key(&n.node_type)
            {
                let reason = format!("node type {:?} is not in the config", n.node_type);
                self.remove_node(i, reason);
            }
        }
    }

    /// Which of the given candidates go first when some must: never joined (the latest
    /// request first), then idle (longest first), then busy (least used first).
    fn removal_order(&self, nodes: &[usize], launching: &[usize]) -> Vec<Victim> {
        let mut l: Vec<usize> = launching.to_vec();
        l.sort_by_key(|&i| std::cmp::Reverse(self.view.launching[i].requested_ms));
        let mut idle: Vec<usize> = nodes
            .iter()
            .copied()
            .filter(|&i| self.view.nodes[i].idle_ms > 0)
            .collect();
        idle.sort_by_key(|&i| std::cmp::Reverse(self.view.nodes[i].idle_ms));
        let mut busy: Vec<usize> = nodes
            .iter()
            .copied()
            .filter(|&i| self.view.nodes[i].idle_ms == 0)
            .collect();
        busy.sort_by(|&a, &b| {
            utilization(&self.view.nodes[a]).total_cmp(&utilization(&self.view.nodes[b]))
        });
        l.into_iter()
            .map(Victim::Launching)
            .chain(idle.into_iter().chain(busy).map(Victim::Node))
            .collect()
    }

    fn remove_victim(&mut self, v: Victim, reason: String) {
        match v {
            Victim::Node(i) => self.remove_node(i, reason),
            Victim::Launching(i) => self.remove_launching(i, reason),
        }
    }

    /// Live, removable nodes and launches matching `pred` on their node type.
    fn candidates(&self, pred: impl Fn(&str) -> bool) -> (Vec<usize>, Vec<usize>) {
        let nodes = (0..self.view.nodes.len())
            .filter(|&i| {
                let n = &self.view.nodes[i];
                self.is_live(i) && Self::is_removable(n) && self.is_counted(n) && pred(&n.node_type)
            })
            .collect();
        let launching = (0..self.view.launching.len())
            .filter(|i| {
                !self.removed_launching.contains(i) && pred(&self.view.launching[*i].node_type)
            })
            .collect();
        (nodes, launching)
    }

    /// Above a type's `max_workers` (the config was lowered): the excess goes. Nodes
    /// already draining are on their way and make up part of it.
    fn enforce_type_max(&mut self) {
        let types: Vec<(String, u32)> = self
            .config
            .node_types
            .iter()
            .map(|(name, t)| (name.clone(), t.max_workers))
            .collect();
        for (name, max) in types {
            let present = self.present(|t| t == name);
            let excess = present.saturating_sub(max as usize);
            if excess == 0 {
                continue;
            }
            let (nodes, launching) = self.candidates(|t| t == name);
            let reason = format!("{name} has {present} nodes, above its max_workers {max}");
            for v in self
                .removal_order(&nodes, &launching)
                .into_iter()
                .take(excess)
            {
                self.remove_victim(v, reason.clone());
            }
        }
    }

    /// The same for the global `max_workers`, over all types.
    fn enforce_global_max(&mut self) {
        let max = self.config.max_workers as usize;
        let present = self.present(|t| self.config.node_types.contains_key(t));
        let excess = present.saturating_sub(max);
        if excess == 0 {
            return;
        }
        let (nodes, launching) = self.candidates(|t| self.config.node_types.contains_key(t));
        let reason = format!("{present} worker nodes, above max_workers {max}");
        for v in self
            .removal_order(&nodes, &launching)
            .into_iter()
            .take(excess)
        {
            self.remove_victim(v, reason.clone());
        }
    }

    /// Worker nodes and launches of the matching types not on their way out. Draining
    /// nodes are leaving already, so they are not part of an excess still to remove.
    fn present(&self, pred: impl Fn(&str) -> bool) -> usize {
        let nodes = (0..self.view.nodes.len())
            .filter(|&i| {
                let n = &self.view.nodes[i];
                !n.is_head && self.is_live(i) && pred(&n.node_type)
            })
            .count();
        let launching = (0..self.view.launching.len())
            .filter(|i| {
                !self.removed_launching.contains(i) && pred(&self.view.launching[*i].node_type)
            })
            .count();
        nodes + launching
    }

    /// Tops every type up to its `min_workers`, within the maxima; not capped by
    /// `upscaling_speed`.
    fn launch_min_workers(&mut self) {
        let types: Vec<(String, usize)> = self
            .config
            .node_types
            .iter()
            .map(|(name, t)| (name.clone(), t.min_workers as usize))
            .collect();
        for (name, min) in types {
            while self.live_count(&name) < min && self.has_room(&name) {
                self.new_nodes.push(NewNode {
                    node_type: name.clone(),
                    cause: Cause::MinWorkers,
                    placed: Vec::new(),
                });
            }
        }
    }

    /// Launchable shapes: configured types with room for one more, in name order.
    fn launchable(&self) -> Vec<(String, Resources)> {
        self.config
            .node_types
            .iter()
            .filter(|(name, t)| !t.resources.is_empty() && self.has_room(name))
            .map(|(name, t)| (name.clone(), t.resources.clone()))
            .collect()
    }

    /// Adds new nodes for `requests` (sorted) while some type with room takes some of them;
    /// `cap` bounds how many. Returns what no new node took.
    fn launch_for(&mut self, mut requests: Vec<Group>, cause: Cause, cap: usize) -> Vec<Group> {
        let mut launched = 0;
        while !requests.is_empty() && launched < cap {
            let types = self.launchable();
            let shapes: Vec<&Resources> = types.iter().map(|(_, r)| r).collect();
            let Some((i, placed)) = packing::best_new_bin(&requests, &shapes) else {
                break;
            };
            let (taken, rest) = packing::split(requests, &placed);
            requests = rest;
            self.new_nodes.push(NewNode {
                node_type: types[i].0.clone(),
                cause,
                placed: taken,
            });
            launched += 1;
        }
        requests
    }

    /// Whether some node type could ever be launched for `r`, or some node could take it.
    fn feasible(&self, r: &Resources) -> bool {
        self.config
            .node_types
            .values()
            .any(|t| t.max_workers > 0 && t.resources.contains(r))
            || (0..self.view.nodes.len())
                .any(|i| self.is_live(i) && self.view.nodes[i].total.contains(r))
    }

    /// Splits off what can never be served (reported infeasible) and sorts the rest.
    fn feasible_sorted(&mut self, requests: &[Resources]) -> Vec<Group> {
        let (ok, bad): (Vec<Group>, Vec<Group>) = packing::group_largest_first(requests)
            .into_iter()
            .partition(|g| self.feasible(&g.shape));
        for g in bad {
            self.infeasible
                .extend(std::iter::repeat_n(g.shape, g.count));
        }
        ok
    }

    /// Bins for live nodes (`free` from `available`, or the total when `whole`), with
    /// their indices in `view.nodes`.
    fn node_bins(&self, whole: bool) -> (Vec<Bin>, Vec<usize>) {
        let mut order: Vec<usize> = (0..self.view.nodes.len())
            .filter(|&i| self.is_live(i))
            .collect();
        // Ties between equal nodes go the same way every round.
        order.sort_by_key(|&i| self.view.nodes[i].node_id);
        let bins = order
            .iter()
            .map(|&i| {
                let n = &self.view.nodes[i];
                Bin {
                    total: n.total.clone(),
                    free: if whole {
                        n.total.clone()
                    } else {
                        n.available.clone()
                    },
                }
            })
            .collect();
        (bins, order)
    }

    /// Bins for launches not yet joined and launches decided this round, at their type's
    /// full resources.
    fn launch_bins(&self) -> Vec<Bin> {
        let types = (0..self.view.launching.len())
            .filter(|i| !self.removed_launching.contains(i))
            .map(|i| self.view.launching[i].node_type.as_str())
            .chain(self.new_nodes.iter().map(|n| n.node_type.as_str()));
        types
            .filter_map(|t| self.config.node_types.get(t))
            .map(|t| Bin {
                total: t.resources.clone(),
                free: t.resources.clone(),
            })
            .collect()
    }

    /// The `request_resources` floor, against total capacity (busy or not) of live nodes and
    /// launches; what does not fit launches nodes, not capped.
    fn satisfy_constraint(&mut self) {
        if self.view.constraint.is_empty() {
            return;
        }
        let bundles = self.feasible_sorted(&self.view.constraint);
        let (mut bins, order) = self.node_bins(true);
        let node_bins = bins.len();
        bins.extend(self.launch_bins());
        let packing = packing::pack(bundles, &mut bins);
        for (b, _) in &packing.used {
            if *b < node_bins {
                self.needed.insert(order[*b]);
            }
        }
        self.launch_for(packing.left, Cause::Constraint, usize::MAX);
    }

    /// Queued demand: onto free capacity of live nodes, then launching nodes, then new
    /// nodes, at most `max(5, ceil(upscaling_speed × running workers))` pending at once.
    fn serve_demand(&mut self) {
        if self.view.demand.is_empty() {
            return;
        }
        let demand = self.feasible_sorted(&self.view.demand);
        let (mut bins, order) = self.node_bins(false);
        let on_nodes = packing::pack(demand, &mut bins);
        for (b, _) in &on_nodes.used {
            self.needed.insert(order[*b]);
        }
        let mut launching = self.launch_bins();
        let on_launching = packing::pack(on_nodes.left, &mut launching);
        let cap = self.pending_cap();
        self.launch_for(on_launching.left, Cause::Demand, cap);
    }

    /// How many demand-driven launches may start now.
    fn pending_cap(&self) -> usize {
        let running = (0..self.view.nodes.len())
            .filter(|&i| !self.view.nodes[i].is_head && self.is_live(i))
            .count();
        let by_speed = (self.config.upscaling_speed * running as f64).ceil();
        // A float beyond usize saturates: an enormous speed means no cap at all.
        let by_speed = if by_speed.is_finite() {
            by_speed as usize
        } else {
            usize::MAX
        };
        let pending = (0..self.view.launching.len())
            .filter(|i| !self.removed_launching.contains(i))
            .count();
        by_speed.max(MIN_PENDING_LAUNCHES).saturating_sub(pending)
    }

    /// Nodes idle strictly longer than their type's timeout, longest idle first, that
    /// nothing was packed onto, down to each type's `min_workers`.
    fn remove_idle(&mut self) {
        let mut idle: Vec<(usize, u64)> = (0..self.view.nodes.len())
            .filter_map(|i| {
                let n = &self.view.nodes[i];
                if !self.is_live(i)
                    || !Self::is_removable(n)
                    || !self.is_counted(n)
                    || self.needed.contains(&i)
                {
                    return None;
                }
                let limit = duration_ms(self.config.idle_timeout_of(&n.node_type));
                (n.idle_ms > limit).then_some((i, limit))
            })
            .collect();
        idle.sort_by_key(|&(i, _)| {
            (
                std::cmp::Reverse(self.view.nodes[i].idle_ms),
                self.view.nodes[i].node_id,
            )
        });
        for (i, limit) in idle {
            let n = &self.view.nodes[i];
            let min = self
                .config
                .node_types
                .get(&n.node_type)
                .map_or(0, |t| t.min_workers as usize);
            if self.live_count(&n.node_type) <= min {
                continue;
            }
            let reason = format!("idle for {} > {}", secs(n.idle_ms), secs(limit));
            self.remove_node(i, reason);
        }
    }

    /// Groups the new nodes by cause and type into launches with their reasons.
    fn finish(self) -> Decision {
        let mut groups: BTreeMap<(Cause, String), Vec<&NewNode>> = BTreeMap::new();
        for n in &self.new_nodes {
            groups
                .entry((n.cause, n.node_type.clone()))
                .or_default()
                .push(n);
        }
        let launch = groups
            .into_iter()
            .map(|((cause, node_type), nodes)| {
                let count = nodes.len();
                let placed: Vec<Group> = nodes
                    .iter()
                    .flat_map(|n| n.placed.iter().cloned())
                    .collect();
                let reason = match cause {
                    Cause::MinWorkers => {
                        let min = self
                            .config
                            .node_types
                            .get(&node_type)
                            .map_or(0, |t| t.min_workers);
                        format!("launching {count} × {node_type} for min_workers {min}")
                    }
                    Cause::Constraint => format!(
                        "launching {count} × {node_type} for request_resources {}",
                        shapes(&placed)
                    ),
                    Cause::Demand => format!(
                        "launching {count} × {node_type} for {} queued",
                        shapes(&placed)
                    ),
                };
                Launch {
                    node_type,
                    count,
                    reason,
                }
            })
            .collect();
        Decision {
            launch,
            terminate: self.terminate,
            infeasible: self.infeasible,
        }
    }
}

/// Something to remove: a joined node or a launch that has not joined.
#[derive(Debug, Clone, Copy)]
enum Victim {
    Node(usize),
    Launching(usize),
}

/// How much of a node is in use, 0 to 1, over its resource kinds.
fn utilization(n: &NodeView) -> f64 {
    let kinds: Vec<f64> = n
        .total
        .iter()
        .filter(|(_, v)| *v > 0.0)
        .map(|(k, v)| ((v - n.available.get(k)) / v).clamp(0.0, 1.0))
        .collect();
    if kinds.is_empty() {
        0.0
    } else {
        kinds.iter().sum::<f64>() / kinds.len() as f64
    }
}

fn duration_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `65 s`, or `0.5 s` below whole seconds.
fn secs(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

/// `4 × {CPU: 1}, 1 × {GPU: 1}`: requests by shape, in the order given.
fn shapes(groups: &[Group]) -> String {
    let mut merged: Vec<(String, usize)> = Vec::new();
    for g in groups {
        let key = g.shape.shape_key();
        match merged.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += g.count,
            None => merged.push((key, g.count)),
        }
    }
    merged
        .iter()
        .map(|(k, n)| format!("{n} × {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    //! Cases ported from Ray's `autoscaler/v2/tests/test_scheduler.py` (named after the Ray
    //! test they come from) and the list.

    use std::time::Duration;

    use super::*;
    use crate::config::{NodeTypeConfig, ProviderConfig};

    fn r(pairs: &[(&str, f64)]) -> Resources {
        Resources::from_pairs(pairs.iter().map(|(k, v)| (*k, *v))).unwrap()
    }

    fn cpu(n: f64) -> Resources {
        r(&[("CPU", n)])
    }

    /// A config with a resource-less head type and `types` as (name, resources, min, max).
    fn config(max_workers: u32, types: &[(&str, Resources, u32, u32)]) -> AutoscalingConfig {
        let mut node_types = BTreeMap::new();
        node_types.insert(
            "head".to_string(),
            NodeTypeConfig {
                resources: Resources::new(),
                min_workers: 0,
                max_workers: 0,
                idle_timeout: None,
                node_config: serde_json::Value::Null,
            },
        );
        for (name, resources, min, max) in types {
            node_types.insert(
                name.to_string(),
                NodeTypeConfig {
                    resources: resources.clone(),
                    min_workers: *min,
                    max_workers: *max,
                    idle_timeout: None,
                    node_config: serde_json::Value::Null,
                },
            );
        }
        AutoscalingConfig {
            cluster_name: "test".into(),
            max_workers,
            upscaling_speed: 1.0,
            idle_timeout: Duration::from_secs(60),
            node_launch_timeout: Duration::from_secs(300),
            provider: ProviderConfig::Local,
            head_node_type: "head".into(),
            node_types,
        }
    }

    fn head() -> NodeView {
        NodeView {
            node_id: NodeId::from_array([0; 16]),
            instance_id: String::new(),
            node_type: "head".into(),
            is_head: true,
            total: Resources::new(),
            available: Resources::new(),
            idle_ms: 999_000,
            draining: false,
        }
    }

    /// A joined worker the autoscaler launched: instance `i-<id>`, node id from `id`.
    fn node(
        id: u8,
        node_type: &str,
        total: Resources,
        available: Resources,
        idle_ms: u64,
    ) -> NodeView {
        NodeView {
            node_id: NodeId::from_array([id; 16]),
            instance_id: format!("i-{id}"),
            node_type: node_type.into(),
            is_head: false,
            total,
            available,
            idle_ms,
            draining: false,
        }
    }

    fn busy(id: u8, node_type: &str, total: Resources) -> NodeView {
        let available = Resources::new();
        node(id, node_type, total, available, 0)
    }

    fn idle(id: u8, node_type: &str, total: Resources, idle_ms: u64) -> NodeView {
        node(id, node_type, total.clone(), total, idle_ms)
    }

    fn launching(id: &str, node_type: &str) -> LaunchingInstance {
        LaunchingInstance {
            instance_id: id.into(),
            node_type: node_type.into(),
            requested_ms: 1_000,
        }
    }

    fn view(nodes: Vec<NodeView>, launching: Vec<LaunchingInstance>) -> ClusterView {
        let mut all = vec![head()];
        all.extend(nodes);
        ClusterView {
            now_ms: 10_000,
            nodes: all,
            launching,
            demand: Vec::new(),
            constraint: Vec::new(),
        }
    }

    fn with_demand(mut v: ClusterView, demand: Vec<Resources>) -> ClusterView {
        v.demand = demand;
        v
    }

    /// Launches summed per node type.
    fn launched(d: &Decision) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for l in &d.launch {
            *m.entry(l.node_type.clone()).or_insert(0) += l.count;
        }
        m
    }

    fn expect(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    /// Terminated instance ids, sorted.
    fn terminated(d: &Decision) -> Vec<String> {
        let mut ids: Vec<String> = d.terminate.iter().map(|t| t.instance_id.clone()).collect();
        ids.sort();
        ids
    }

    fn n(count: usize, shape: Resources) -> Vec<Resources> {
        vec![shape; count]
    }

    // 1. min_workers, launching instances counting toward them.
    #[test]
    fn test_min_worker_nodes() {
        let c = config(
            10,
            &[
                ("type_1", cpu(1.0), 1, 10),
                ("type_2", cpu(1.0), 0, 10),
                ("type_3", cpu(1.0), 2, 10),
            ],
        );
        let d = plan(&view(vec![], vec![]), &c);
        assert_eq!(launched(&d), expect(&[("type_1", 1), ("type_3", 2)]));
        assert!(d.terminate.is_empty());
        let l3 = d.launch.iter().find(|l| l.node_type == "type_3").unwrap();
        assert_eq!(l3.reason, "launching 2 × type_3 for min_workers 2");

        let running = vec![busy(1, "type_1", cpu(1.0)), busy(2, "type_1", cpu(1.0))];
        let d = plan(&view(running, vec![]), &c);
        assert_eq!(launched(&d), expect(&[("type_3", 2)]));

        let pending = vec![launching("a", "type_1"), launching("b", "type_1")];
        let d = plan(&view(vec![], pending), &c);
        assert_eq!(launched(&d), expect(&[("type_3", 2)]));

        let d = plan(&view(vec![], vec![launching("c", "type_3")]), &c);
        assert_eq!(launched(&d), expect(&[("type_1", 1), ("type_3", 1)]));
    }

    // 2 and 3: free capacity first, a launching node absorbs what fits it.
    #[test]
    fn test_single_resources() {
        let c = config(10, &[("type_1", cpu(1.0), 0, 10)]);
        let d = plan(&with_demand(view(vec![], vec![]), vec![cpu(1.0)]), &c);
        assert_eq!(launched(&d), expect(&[("type_1", 1)]));

        let d = plan(&with_demand(view(vec![], vec![]), n(3, cpu(1.0))), &c);
        assert_eq!(launched(&d), expect(&[("type_1", 3)]));
        assert_eq!(
            d.launch[0].reason,
            "launching 3 × type_1 for 3 × {CPU: 1} queued"
        );

        // A running node with the capacity free takes it.
        let free = vec![idle(1, "type_1", cpu(1.0), 0)];
        let d = plan(&with_demand(view(free, vec![]), vec![cpu(1.0)]), &c);
        assert!(d.launch.is_empty(), "{d:?}");

        // Not quite enough free: a new node.
        let partly = vec![node(1, "type_1", cpu(1.0), cpu(0.9), 0)];
        let d = plan(&with_demand(view(partly, vec![]), vec![cpu(1.0)]), &c);
        assert_eq!(launched(&d), expect(&[("type_1", 1)]));

        // A node still launching absorbs it: nothing more.
        let d = plan(
            &with_demand(view(vec![], vec![launching("0", "type_1")]), vec![cpu(1.0)]),
            &c,
        );
        assert!(d.launch.is_empty(), "{d:?}");

        // Two requests, one launching node: one more launch.
        let d = plan(
            &with_demand(view(vec![], vec![launching("0", "type_1")]), n(2, cpu(1.0))),
            &c,
        );
        assert_eq!(launched(&d), expect(&[("type_1", 1)]));
    }

    #[test]
    fn test_max_worker_num_enforce_with_resource_requests() {
        let c = config(2, &[("type_1", cpu(1.0), 0, 10)]);
        let free = vec![idle(1, "type_1", cpu(1.0), 0)];
        let d = plan(&with_demand(view(free, vec![]), n(3, cpu(1.0))), &c);
        assert_eq!(launched(&d), expect(&[("type_1", 1)]));
        assert!(d.infeasible.is_empty());
    }

    // 3: bin-packing, request order does not change the result.
    #[test]
    fn test_multi_requests_fittable() {
        let c = config(
            10,
            &[
                ("type_1", r(&[("CPU", 1.0), ("GPU", 1.0)]), 0, 1),
                ("type_2", cpu(3.0), 0, 1),
            ],
        );
        let gpu_bundle = r(&[("CPU", 1.0), ("GPU", 1.0)]);
        let mut requests = n(3, cpu(1.0));
        requests.push(gpu_bundle.clone());
        let d = plan(&with_demand(view(vec![], vec![]), requests.clone()), &c);
        assert_eq!(launched(&d), expect(&[("type_1", 1), ("type_2", 1)]));
        assert!(d.infeasible.is_empty());

        requests.reverse();
        let reversed = plan(&with_demand(view(vec![], vec![]), requests), &c);
        assert_eq!(reversed, d, "request order changed the decision");

        let half = r(&[("CPU", 0.5), ("GPU", 0.5)]);
        let d = plan(
            &with_demand(
                view(vec![], vec![]),
                vec![cpu(2.0), cpu(1.0), half.clone(), half],
            ),
            &c,
        );
        assert_eq!(launched(&d), expect(&[("type_1", 1), ("type_2", 1)]));

        // Fragmented: the type_1 node has its GPU free but no CPU, and type_1 is at its
        // max. The GPU bundle waits (Ray calls it infeasible; here a type fits it, so it is
        // pending, not infeasible).
        let fragmented = vec![node(
            1,
            "type_1",
            r(&[("CPU", 1.0), ("GPU", 1.0)]),
            r(&[("GPU", 1.0)]),
            0,
        )];
        let d = plan(
            &with_demand(
                view(fragmented, vec![]),
                vec![cpu(1.0), cpu(1.0), gpu_bundle],
            ),
            &c,
        );
        assert_eq!(launched(&d), expect(&[("type_2", 1)]));
        assert!(d.infeasible.is_empty());
    }

    // 4: least waste; GPU types avoided as a preference only.
    #[test]
    fn test_multi_node_types_score() {
        let c = config(
            10,
            &[
                ("type_large", cpu(10.0), 0, 1),
                ("type_small", cpu(5.0), 0, 1),
                ("type_gpu", r(&[("CPU", 2.0), ("GPU", 2.0)]), 0, 1),
            ],
        );
        for cpus in [1.0, 2.0] {
            let d = plan(&with_demand(view(vec![], vec![]), vec![cpu(cpus)]), &c);
            assert_eq!(launched(&d), expect(&[("type_small", 1)]), "for {cpus} CPU");
        }
    }

    #[test]
    fn test_multi_node_types_score_with_gpu() {
        let c = config(
            10,
            &[
                ("type_gpu", r(&[("CPU", 1.0), ("GPU", 2.0)]), 0, 1),
                ("type_multi", r(&[("CPU", 2.0), ("XXX", 2.0)]), 0, 1),
            ],
        );
        let d = plan(&with_demand(view(vec![], vec![]), vec![cpu(1.0)]), &c);
        assert_eq!(launched(&d), expect(&[("type_multi", 1)]));

        // With only a GPU type, CPU work still gets it.
        let only_gpu = config(10, &[("type_gpu", r(&[("CPU", 1.0), ("GPU", 2.0)]), 0, 1)]);
        let d = plan(
            &with_demand(view(vec![], vec![]), vec![cpu(1.0)]),
            &only_gpu,
        );
        assert_eq!(launched(&d), expect(&[("type_gpu", 1)]));
    }

    // 5.
    #[test]
    fn gpu_bundle_and_fifteen_cpus_launch_one_gpu_node() {
        let c = config(
            10,
            &[
                ("cpu", cpu(4.0), 0, 10),
                ("gpu", r(&[("CPU", 16.0), ("GPU", 1.0)]), 0, 10),
            ],
        );
        let mut demand = n(15, cpu(1.0));
        demand.insert(7, r(&[("GPU", 1.0), ("CPU", 1.0)]));
        let d = plan(&with_demand(view(vec![], vec![]), demand), &c);
        assert_eq!(launched(&d), expect(&[("gpu", 1)]));
        assert_eq!(
            d.launch[0].reason,
            "launching 1 × gpu for 1 × {CPU: 1, GPU: 1}, 15 × {CPU: 1} queued"
        );
    }

    // 6: the maxima, counting launching and draining nodes; excess removed in order.
    #[test]
    fn test_max_workers_per_type() {
        let c = config(10, &[("type_1", cpu(1.0), 2, 2)]);
        assert!(plan(&view(vec![], vec![]), &c).terminate.is_empty());

        let nodes = vec![
            idle(1, "type_1", cpu(1.0), 10),
            node(2, "type_1", cpu(1.0), cpu(0.5), 0),
        ];
        let d = plan(&view(nodes.clone(), vec![launching("i-0", "type_1")]), &c);
        assert_eq!(terminated(&d), vec!["i-0"]);
        assert_eq!(d.terminate[0].node_id, None);
        assert_eq!(
            d.terminate[0].reason,
            "type_1 has 3 nodes, above its max_workers 2"
        );

        let c = config(10, &[("type_1", cpu(1.0), 0, 1)]);
        let d = plan(&view(nodes, vec![launching("i-0", "type_1")]), &c);
        assert_eq!(terminated(&d), vec!["i-0", "i-1"]);
    }

    #[test]
    fn test_max_num_nodes() {
        let types = [("type_1", cpu(1.0), 0, 2), ("type_2", cpu(1.0), 0, 2)];
        let nodes = vec![
            idle(1, "type_1", cpu(1.0), 10),
            node(2, "type_2", cpu(1.0), cpu(0.5), 0),
            busy(3, "type_2", cpu(1.0)),
        ];
        let pending = vec![launching("i-0", "type_1")];
        let run = |max: u32| plan(&view(nodes.clone(), pending.clone()), &config(max, &types));
        assert!(run(4).terminate.is_empty());
        assert_eq!(terminated(&run(3)), vec!["i-0"]);
        assert_eq!(terminated(&run(2)), vec!["i-0", "i-1"]);
        // Busy nodes last, the least used first.
        assert_eq!(terminated(&run(1)), vec!["i-0", "i-1", "i-2"]);
        assert_eq!(
            run(1).terminate[0].reason,
            "4 worker nodes, above max_workers 1"
        );

        // With a per-type max of 0 as well.
        let types = [("type_1", cpu(1.0), 0, 2), ("type_2", cpu(1.0), 0, 0)];
        let d = plan(&view(nodes.clone(), pending.clone()), &config(1, &types));
        assert_eq!(terminated(&d), vec!["i-0", "i-2", "i-3"]);
    }

    #[test]
    fn maxima_are_never_exceeded_counting_launching_and_draining_nodes() {
        let c = config(4, &[("a", cpu(1.0), 0, 3), ("b", cpu(1.0), 0, 4)]);
        let demand = n(10, cpu(1.0));
        // One `a` launching, one `a` draining: one more `a` fits its max of 3, and the
        // global max of 4 leaves one more node after that.
        let mut draining = busy(1, "a", cpu(1.0));
        draining.draining = true;
        let v = with_demand(view(vec![draining], vec![launching("x", "a")]), demand);
        let d = plan(&v, &c);
        assert_eq!(launched(&d).values().sum::<usize>(), 2, "{d:?}");
        assert!(launched(&d).get("a").copied().unwrap_or(0) <= 1);
        assert!(
            d.terminate.is_empty(),
            "a draining node is not removed again"
        );

        // Nodes started by hand (no type) count for neither.
        let mut by_hand = busy(9, "", cpu(1.0));
        by_hand.instance_id.clear();
        let v = with_demand(view(vec![by_hand], vec![]), n(10, cpu(1.0)));
        assert_eq!(launched(&plan(&v, &c)).values().sum::<usize>(), 4);
    }

    // 7: pending launches capped at max(5, ceil(upscaling_speed × running workers)).
    #[test]
    fn upscaling_speed_caps_pending_launches() {
        let mut c = config(100, &[("w", cpu(1.0), 0, 100)]);
        let running = |k: u8| (1..=k).map(|i| busy(i, "w", cpu(1.0))).collect::<Vec<_>>();
        let total = |d: &Decision| launched(d).values().sum::<usize>();

        // No workers yet: the floor of 5.
        let d = plan(&with_demand(view(vec![], vec![]), n(20, cpu(1.0))), &c);
        assert_eq!(total(&d), 5);

        // 10 running at speed 1: 10; with 3 launching (which absorb 3 requests): 7 more.
        let d = plan(&with_demand(view(running(10), vec![]), n(20, cpu(1.0))), &c);
        assert_eq!(total(&d), 10);
        let pending: Vec<_> = ["p1", "p2", "p3"]
            .iter()
            .map(|id| launching(id, "w"))
            .collect();
        let d = plan(
            &with_demand(view(running(10), pending), n(20, cpu(1.0))),
            &c,
        );
        assert_eq!(total(&d), 7);

        // ceil(0.5 × 13) = 7.
        c.upscaling_speed = 0.5;
        let d = plan(&with_demand(view(running(13), vec![]), n(20, cpu(1.0))), &c);
        assert_eq!(total(&d), 7);

        // Small speed: the floor of 5 still holds.
        c.upscaling_speed = 0.1;
        let d = plan(&with_demand(view(running(13), vec![]), n(20, cpu(1.0))), &c);
        assert_eq!(total(&d), 5);

        // Large enough: everything in one round.
        c.upscaling_speed = 1000.0;
        let d = plan(&with_demand(view(running(1), vec![]), n(50, cpu(1.0))), &c);
        assert_eq!(total(&d), 50);

        // More launching than the cap allows: nothing more for demand.
        c.upscaling_speed = 1.0;
        let pending: Vec<_> = (0..6).map(|i| launching(&format!("p{i}"), "w")).collect();
        let d = plan(&with_demand(view(vec![], pending), n(20, cpu(1.0))), &c);
        assert_eq!(total(&d), 0);
    }

    #[test]
    fn min_workers_and_request_resources_are_not_capped() {
        let c = config(100, &[("w", cpu(1.0), 8, 100)]);
        let d = plan(&view(vec![], vec![]), &c);
        assert_eq!(launched(&d), expect(&[("w", 8)]));

        let c = config(100, &[("w", cpu(1.0), 0, 100)]);
        let mut v = view(vec![], vec![]);
        v.constraint = n(12, cpu(1.0));
        let d = plan(&v, &c);
        assert_eq!(launched(&d), expect(&[("w", 12)]));
        assert_eq!(
            d.launch[0].reason,
            "launching 12 × w for request_resources 12 × {CPU: 1}"
        );
    }

    // 8: infeasible demand is reported, and the rest is still served.
    #[test]
    fn infeasible_demand_is_reported_and_the_rest_served() {
        let c = config(10, &[("cpu", cpu(2.0), 0, 10)]);
        let gpu = r(&[("GPU", 1.0)]);
        let big = cpu(3.0);
        let mut demand = vec![gpu.clone(), big.clone()];
        demand.extend(n(4, cpu(1.0)));
        let d = plan(&with_demand(view(vec![], vec![]), demand), &c);
        assert_eq!(launched(&d), expect(&[("cpu", 2)]));
        assert_eq!(
            d.launch[0].reason,
            "launching 2 × cpu for 4 × {CPU: 1} queued"
        );
        // Largest shape first, whatever order they came in.
        assert_eq!(d.infeasible, vec![big, gpu.clone()]);

        // A node started by hand with a GPU makes GPU demand feasible: it waits for it.
        let mut by_hand = busy(9, "", r(&[("GPU", 1.0)]));
        by_hand.instance_id.clear();
        let d = plan(&with_demand(view(vec![by_hand], vec![]), vec![gpu]), &c);
        assert!(d.infeasible.is_empty());
        assert!(d.launch.is_empty());
    }

    // 9: idle removal.
    #[test]
    fn test_idle_termination() {
        let c = config(10, &[("type_cpu", cpu(1.0), 0, 5)]);
        let idle_ms = 5_000;
        for timeout_s in [1, 2, 5, 10] {
            for constrained in [false, true] {
                let mut c = c.clone();
                c.idle_timeout = Duration::from_secs(timeout_s);
                let mut v = view(
                    vec![
                        busy(1, "type_cpu", cpu(1.0)),
                        idle(2, "type_cpu", cpu(1.0), idle_ms),
                    ],
                    vec![],
                );
                if constrained {
                    v.constraint = n(2, cpu(1.0));
                }
                let d = plan(&v, &c);
                // Strictly longer than the timeout (Ray removes at equal, too).
                if timeout_s * 1000 < idle_ms && !constrained {
                    assert_eq!(terminated(&d), vec!["i-2"], "timeout {timeout_s}");
                    assert_eq!(d.terminate[0].node_id, Some(NodeId::from_array([2; 16])));
                } else {
                    assert!(
                        d.terminate.is_empty(),
                        "timeout {timeout_s} {constrained}: {d:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn idle_removal_reason_and_type_override() {
        let mut c = config(
            10,
            &[("cpu", cpu(1.0), 0, 5), ("gpu", r(&[("GPU", 1.0)]), 0, 5)],
        );
        if let Some(t) = c.node_types.get_mut("gpu") {
            t.idle_timeout = Some(Duration::from_secs(300));
        }
        let v = view(
            vec![
                idle(1, "cpu", cpu(1.0), 65_000),
                idle(2, "gpu", r(&[("GPU", 1.0)]), 65_000),
            ],
            vec![],
        );
        let d = plan(&v, &c);
        assert_eq!(terminated(&d), vec!["i-1"]);
        assert_eq!(d.terminate[0].reason, "idle for 65 s > 60 s");
    }

    #[test]
    fn idle_nodes_kept_for_head_min_workers_demand_and_hand_started() {
        let c = config(10, &[("cpu", cpu(2.0), 2, 5)]);
        // The head (idle 999 s) and two idle nodes at min_workers 2: nothing goes.
        let v = view(
            vec![
                idle(1, "cpu", cpu(2.0), 70_000),
                idle(2, "cpu", cpu(2.0), 90_000),
            ],
            vec![],
        );
        assert!(plan(&v, &c).terminate.is_empty());

        // A third: the longest idle goes; a launching one counts toward min_workers.
        let three = vec![
            idle(1, "cpu", cpu(2.0), 70_000),
            idle(2, "cpu", cpu(2.0), 90_000),
            idle(3, "cpu", cpu(2.0), 80_000),
        ];
        assert_eq!(
            terminated(&plan(&view(three.clone(), vec![]), &c)),
            vec!["i-2"]
        );
        let d = plan(&view(three.clone(), vec![launching("x", "cpu")]), &c);
        assert_eq!(terminated(&d), vec!["i-2", "i-3"]);

        // Queued demand packed onto an idle node keeps it.
        let c0 = config(10, &[("cpu", cpu(2.0), 0, 5)]);
        let v = with_demand(
            view(vec![idle(1, "cpu", cpu(2.0), 70_000)], vec![]),
            vec![cpu(2.0)],
        );
        let d = plan(&v, &c0);
        assert!(d.terminate.is_empty() && d.launch.is_empty(), "{d:?}");

        // Started by hand (no instance, no type): never removed.
        let mut by_hand = idle(4, "", cpu(2.0), 900_000);
        by_hand.instance_id.clear();
        assert!(plan(&view(vec![by_hand], vec![]), &c0).terminate.is_empty());
    }

    // 10: never joined first, then longest idle.
    #[test]
    fn removal_order_is_never_joined_then_longest_idle() {
        let c = config(10, &[("w", cpu(1.0), 0, 2)]);
        let nodes = vec![
            idle(1, "w", cpu(1.0), 5_000),
            idle(2, "w", cpu(1.0), 9_000),
            idle(3, "w", cpu(1.0), 7_000),
        ];
        let d = plan(&view(nodes.clone(), vec![launching("never", "w")]), &c);
        let order: Vec<&str> = d.terminate.iter().map(|t| t.instance_id.as_str()).collect();
        assert_eq!(order, vec!["never", "i-2"]);
    }

    #[test]
    fn test_resource_constrains() {
        let c = config(
            10,
            &[
                ("type_cpu", cpu(1.0), 1, 5),
                ("type_gpu", r(&[("CPU", 1.0), ("GPU", 2.0)]), 0, 1),
            ],
        );
        // The min_workers node satisfies the floor.
        let mut v = view(vec![], vec![]);
        v.constraint = vec![cpu(1.0)];
        assert_eq!(launched(&plan(&v, &c)), expect(&[("type_cpu", 1)]));

        v.constraint = vec![cpu(1.0), cpu(1.0), r(&[("GPU", 1.0)])];
        assert_eq!(
            launched(&plan(&v, &c)),
            expect(&[("type_cpu", 1), ("type_gpu", 1)])
        );

        // Counted against total capacity: a busy node still counts for the floor.
        let c0 = config(10, &[("type_cpu", cpu(1.0), 0, 5)]);
        let mut v = view(vec![busy(1, "type_cpu", cpu(1.0))], vec![]);
        v.constraint = vec![cpu(1.0)];
        assert!(plan(&v, &c0).launch.is_empty());
    }

    #[test]
    fn instances_of_types_no_longer_configured_are_removed() {
        let c = config(10, &[("w", cpu(1.0), 0, 5)]);
        let v = view(
            vec![busy(1, "gone", cpu(1.0))],
            vec![launching("x", "gone")],
        );
        let d = plan(&v, &c);
        assert_eq!(terminated(&d), vec!["i-1", "x"]);
    }
}
