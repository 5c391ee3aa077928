//! Bin-packing of resource requests onto nodes, with Ray v2's utilization score to choose
//! between candidate nodes.

use std::cmp::Ordering;

use miniray_common::Resources;

/// Sorts requests largest first (more resource kinds, then more in total, then by name and
/// amount), as Ray does: big shapes are placed while there is room, and the order requests
/// arrived in never changes the result.
pub(super) fn sort_largest_first(requests: &mut [Resources]) {
    requests.sort_by(|a, b| compare_size(b, a));
}

fn compare_size(a: &Resources, b: &Resources) -> Ordering {
    let kinds = a.iter().count().cmp(&b.iter().count());
    let sum = |r: &Resources| r.iter().map(|(_, v)| v).sum::<f64>();
    kinds.then_with(|| sum(a).total_cmp(&sum(b))).then_with(|| {
        // Same size: any fixed order between different shapes will do.
        let mut ai = a.iter();
        let mut bi = b.iter();
        loop {
            match (ai.next(), bi.next()) {
                (None, None) => return Ordering::Equal,
                (None, Some(_)) => return Ordering::Less,
                (Some(_), None) => return Ordering::Greater,
                (Some((ak, av)), Some((bk, bv))) => {
                    let o = ak.cmp(bk).then_with(|| av.total_cmp(&bv));
                    if o != Ordering::Equal {
                        return o;
                    }
                }
            }
        }
    })
}

/// A node requests can be placed on: its total and what is still free.
#[derive(Debug, Clone)]
pub(super) struct Bin {
    pub total: Resources,
    pub free: Resources,
}

/// What trying a bin gave: the requests placed (indices into the list tried), what is left
/// free, and the score.
struct Trial {
    placed: Vec<usize>,
    free: Resources,
    score: Score,
}

/// Places, in order, every request that still fits `free` (first fit on one node).
fn try_bin(bin: &Bin, requests: &[Resources]) -> Option<Trial> {
    let mut free = bin.free.clone();
    let mut placed = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        if free.contains(r) {
            free.subtract(r);
            placed.push(i);
        }
    }
    if placed.is_empty() {
        return None;
    }
    let placed_requests: Vec<&Resources> = placed.iter().map(|&i| &requests[i]).collect();
    let score = Score::of(&bin.total, &free, &placed_requests);
    Some(Trial {
        placed,
        free,
        score,
    })
}

/// Ray v2's utilization score of a node after placing requests on it, compared
/// lexicographically: no GPU node for work that needs no GPU (a preference, not a rule);
/// then the more resource kinds of the requests the node has; then the least-used resource
/// as used as possible; then the average use. Use of a resource of amount `v` counts as
/// `v × util³`, which favours filling nodes up.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Score {
    gpu_ok: bool,
    matching_kinds: usize,
    min_util: f64,
    mean_util: f64,
}

impl Score {
    fn of(total: &Resources, free: &Resources, placed: &[&Resources]) -> Score {
        let wants_gpu = placed.iter().any(|r| r.get("GPU") > 0.0);
        let gpu_ok = wants_gpu || total.get("GPU") <= 0.0;
        let mut kinds: Vec<&str> = placed
            .iter()
            .flat_map(|r| r.iter().map(|(k, _)| k))
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        let matching_kinds = kinds.iter().filter(|k| total.get(k) > 0.0).count();
        let utils: Vec<f64> = total
            .iter()
            .filter(|(_, v)| *v > 0.0)
            .map(|(k, v)| {
                let util = ((v - free.get(k)) / v).clamp(0.0, 1.0);
                v * util.powi(3)
            })
            .collect();
        let min_util = utils.iter().copied().fold(f64::INFINITY, f64::min);
        let min_util = if utils.is_empty() { 0.0 } else { min_util };
        let mean_util = if utils.is_empty() {
            0.0
        } else {
            utils.iter().sum::<f64>() / utils.len() as f64
        };
        Score {
            gpu_ok,
            matching_kinds,
            min_util,
            mean_util,
        }
    }

    fn better_than(&self, other: &Score) -> bool {
        let o = self
            .gpu_ok
            .cmp(&other.gpu_ok)
            .then(self.matching_kinds.cmp(&other.matching_kinds))
            .then(self.min_util.total_cmp(&other.min_util))
            .then(self.mean_util.total_cmp(&other.mean_util));
        o == Ordering::Greater
    }
}

/// Where requests went: for each bin used, its index and the requests placed on it.
pub(super) struct Packing {
    pub used: Vec<(usize, Vec<Resources>)>,
    pub left: Vec<Resources>,
}

/// Packs `requests` (sorted largest first) onto `bins`, each bin used once: repeatedly the
/// bin that scores best after taking what fits of the remaining requests (ties go to the
/// earlier bin), until nothing more fits.
pub(super) fn pack(requests: Vec<Resources>, bins: &mut [Bin]) -> Packing {
    let mut left = requests;
    let mut used_bins = vec![false; bins.len()];
    let mut used = Vec::new();
    while !left.is_empty() {
        let mut best: Option<(usize, Trial)> = None;
        for (i, bin) in bins.iter().enumerate() {
            if used_bins[i] {
                continue;
            }
            if let Some(trial) = try_bin(bin, &left) {
                keep_better(&mut best, i, trial);
            }
        }
        let Some((i, trial)) = best else { break };
        used_bins[i] = true;
        bins[i].free = trial.free;
        let (placed, rest) = split(left, &trial.placed);
        left = rest;
        used.push((i, placed));
    }
    Packing { used, left }
}

/// Chooses the best of `candidates` (node shapes not yet launched) for the remaining
/// requests: the index of the candidate and what it would take, or `None` when none fits
/// any request.
pub(super) fn best_new_bin(
    requests: &[Resources],
    candidates: &[&Resources],
) -> Option<(usize, Vec<usize>)> {
    let mut best: Option<(usize, Trial)> = None;
    for (i, shape) in candidates.iter().enumerate() {
        let bin = Bin {
            total: (*shape).clone(),
            free: (*shape).clone(),
        };
        if let Some(trial) = try_bin(&bin, requests) {
            keep_better(&mut best, i, trial);
        }
    }
    best.map(|(i, trial)| (i, trial.placed))
}

/// Keeps `trial` if it scores better than the best so far (ties keep the earlier one).
fn keep_better(best: &mut Option<(usize, Trial)>, i: usize, trial: Trial) {
    if best
        .as_ref()
        .is_none_or(|(_, b)| trial.score.better_than(&b.score))
    {
        *best = Some((i, trial));
    }
}

/// Splits `requests` into those at `placed` (ascending indices) and the rest, both in order.
pub(super) fn split(
    requests: Vec<Resources>,
    placed: &[usize],
) -> (Vec<Resources>, Vec<Resources>) {
    let mut taken = Vec::with_capacity(placed.len());
    let mut rest = Vec::with_capacity(requests.len().saturating_sub(placed.len()));
    let mut next = placed.iter().peekable();
    for (i, r) in requests.into_iter().enumerate() {
        if next.peek() == Some(&&i) {
            next.next();
            taken.push(r);
        } else {
            rest.push(r);
        }
    }
    (taken, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(pairs: &[(&str, f64)]) -> Resources {
        Resources::from_pairs(pairs.iter().map(|(k, v)| (*k, *v))).unwrap()
    }

    #[test]
    fn largest_first_is_independent_of_input_order() {
        let a = vec![
            res(&[("CPU", 1.0)]),
            res(&[("CPU", 1.0), ("GPU", 1.0)]),
            res(&[("CPU", 4.0)]),
        ];
        let mut b = a.clone();
        b.reverse();
        let mut a = a;
        sort_largest_first(&mut a);
        sort_largest_first(&mut b);
        assert_eq!(a, b);
        assert_eq!(a[0], res(&[("CPU", 1.0), ("GPU", 1.0)]));
        assert_eq!(a[1], res(&[("CPU", 4.0)]));
    }

    #[test]
    fn rays_score_prefers_the_smaller_fitting_node_and_no_gpu() {
        // test_multi_node_types_score: {CPU: 1} and {CPU: 2} go to type_small.
        let large = res(&[("CPU", 10.0)]);
        let small = res(&[("CPU", 5.0)]);
        let gpu = res(&[("CPU", 2.0), ("GPU", 2.0)]);
        for cpus in [1.0, 2.0] {
            let (i, _) = best_new_bin(&[res(&[("CPU", cpus)])], &[&large, &small, &gpu]).unwrap();
            assert_eq!(i, 1, "for {cpus} CPU");
        }
        // test_multi_node_types_score_with_gpu: the GPU type is avoided for CPU work.
        let multi = res(&[("CPU", 2.0), ("XXX", 2.0)]);
        let gpu = res(&[("CPU", 1.0), ("GPU", 2.0)]);
        let (i, _) = best_new_bin(&[res(&[("CPU", 1.0)])], &[&gpu, &multi]).unwrap();
        assert_eq!(i, 1);
    }
}
