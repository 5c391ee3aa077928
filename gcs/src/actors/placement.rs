//! Where an actor goes: a pure choice over a snapshot of the cluster, so that the policy is
//! unit-tested without nodes, raylets or timing.

use miniray_common::{NodeId, Resources};

/// One alive node as placement sees it.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub node_id: NodeId,
    pub total: Resources,
    /// As of the node's last heartbeat.
    pub available: Resources,
    /// Actors that are not dead and that the GCS has placed (or is placing) on this node.
    pub placed_actors: usize,
}

/// The node an actor needing `demand` should be leased from, or `None` when no alive node
/// could ever hold it (the actor then waits for the cluster to change).
///
/// Nodes whose `available` resources fit are preferred; when none fits right now, a node
/// whose `total` fits is chosen and the lease queues there. Within either group the node
/// with the fewest placed actors wins (actors are long-lived: spreading them keeps one
/// node's death from taking many), then the one with the most available CPU, then the
/// smallest node id so that equal inputs give equal answers.
pub(crate) fn choose_node(candidates: &[Candidate], demand: &Resources) -> Option<NodeId> {
    let best_of = |fits: &dyn Fn(&Candidate) -> bool| {
        candidates.iter().filter(|c| fits(c)).min_by(|a, b| {
            a.placed_actors
                .cmp(&b.placed_actors)
                .then_with(|| b.available.get("CPU").total_cmp(&a.available.get("CPU")))
                .then_with(|| a.node_id.as_bytes().cmp(b.node_id.as_bytes()))
        })
    };
    best_of(&|c| c.available.contains(demand))
        .or_else(|| best_of(&|c| c.total.contains(demand)))
        .map(|c| c.node_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(cpus: f64) -> Resources {
        Resources::from_pairs([("CPU", cpus)]).unwrap()
    }

    fn node(id: u8, total: f64, available: f64, placed: usize) -> Candidate {
        Candidate {
            node_id: NodeId::from_array([id; 16]),
            total: res(total),
            available: res(available),
            placed_actors: placed,
        }
    }

    fn id(n: u8) -> NodeId {
        NodeId::from_array([n; 16])
    }

    #[test]
    fn no_nodes_means_no_choice() {
        assert_eq!(choose_node(&[], &res(1.0)), None);
    }

    #[test]
    fn fewest_placed_actors_wins_among_fitting_nodes() {
        let nodes = [
            node(1, 8.0, 8.0, 3),
            node(2, 4.0, 2.0, 1),
            node(3, 8.0, 6.0, 2),
        ];
        assert_eq!(choose_node(&nodes, &res(1.0)), Some(id(2)));
    }

    #[test]
    fn most_available_cpu_breaks_ties() {
        let nodes = [
            node(1, 8.0, 2.0, 1),
            node(2, 8.0, 5.0, 1),
            node(3, 8.0, 4.0, 1),
        ];
        assert_eq!(choose_node(&nodes, &res(1.0)), Some(id(2)));
    }

    #[test]
    fn node_id_breaks_full_ties_deterministically() {
        let nodes = [
            node(3, 4.0, 4.0, 0),
            node(1, 4.0, 4.0, 0),
            node(2, 4.0, 4.0, 0),
        ];
        assert_eq!(choose_node(&nodes, &res(1.0)), Some(id(1)));
    }

    #[test]
    fn a_node_with_room_now_beats_a_less_loaded_busy_one() {
        // Node 1 has no actors but no free CPU; node 2 has actors and room.
        let nodes = [node(1, 4.0, 0.0, 0), node(2, 4.0, 2.0, 5)];
        assert_eq!(choose_node(&nodes, &res(2.0)), Some(id(2)));
    }

    #[test]
    fn falls_back_to_total_when_nothing_is_free() {
        let nodes = [
            node(1, 2.0, 0.0, 0),
            node(2, 8.0, 0.5, 2),
            node(3, 8.0, 0.0, 1),
        ];
        // Only nodes 2 and 3 could ever hold 4 CPUs; node 3 has fewer actors.
        assert_eq!(choose_node(&nodes, &res(4.0)), Some(id(3)));
    }

    #[test]
    fn infeasible_everywhere_means_wait() {
        let nodes = [node(1, 2.0, 2.0, 0), node(2, 4.0, 4.0, 0)];
        assert_eq!(choose_node(&nodes, &res(5.0)), None);
        let gpu = Resources::from_pairs([("GPU", 1.0)]).unwrap();
        assert_eq!(choose_node(&nodes, &gpu), None);
    }

    #[test]
    fn empty_demand_fits_anywhere() {
        let nodes = [node(1, 0.0, 0.0, 1), node(2, 1.0, 0.0, 0)];
        assert_eq!(choose_node(&nodes, &Resources::new()), Some(id(2)));
    }
}
