//! Bin-packing of resource requests onto nodes, with Ray v2's utilization score to choose
//! between candidate nodes.

use std::cmp::Ordering;

use miniray_common::Resources;

/// Requests of one shape: `count` of `shape`. Packing works on groups, so its cost grows
/// with the number of distinct shapes, not of requests (thousands of queued tasks are
/// usually a handful of shapes).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Group {
    pub shape: Resources,
    pub count: usize,
}

/// Groups requests by shape, largest shape first (more resource kinds, then more in total,
/// then by name and amount), as Ray sorts them: big shapes are placed while there is room,
/// and the order requests arrived in never changes the result.
pub(super) fn group_largest_first(requests: &[Resources]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut sorted: Vec<&Resources> = requests.iter().collect();
    sorted.sort_by(|a, b| compare_size(b, a));
    for r in sorted {
        match groups.last_mut() {
            Some(g) if g.shape == *r => g.count += 1,
            _ => groups.push(Group {
                shape: r.clone(),
                count: 1,
            }),
        }
    }
    groups
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

/// What trying a bin gave: how many of each group it takes, what is left free, the score.
struct Trial {
    taken: Vec<usize>,
    free: Resources,
    score: Score,
}

/// `shape` × `n`.
fn scaled(shape: &Resources, n: usize) -> Resources {
    let mut out = Resources::new();
    for (k, v) in shape.iter() {
        // Amounts are valid (finite, >= 0) and so is their multiple.
        let _ = out.set(k, v * n as f64);
    }
    out
}

/// How many of `shape` fit in `free`, at most `max`: what first fit over that many equal
/// requests would place.
fn how_many_fit(free: &Resources, shape: &Resources, max: usize) -> usize {
    let mut n = max;
    for (k, v) in shape.iter() {
        if v > 0.0 {
            // The same tolerance as `Resources::contains`.
            let fit = ((free.get(k) + 1e-9) / v).floor();
            n = n.min(if fit >= max as f64 { max } else { fit as usize });
        }
    }
    // Guards against rounding at the boundary.
    while n > 0 && !free.contains(&scaled(shape, n)) {
        n -= 1;
    }
    n
}

/// Places, group by group in order, as many requests as still fit (first fit on one node).
fn try_bin(bin: &Bin, groups: &[Group]) -> Option<Trial> {
    let mut free = bin.free.clone();
    let mut taken = vec![0; groups.len()];
    for (i, g) in groups.iter().enumerate() {
        let n = how_many_fit(&free, &g.shape, g.count);
        if n > 0 {
            free.subtract(&scaled(&g.shape, n));
            taken[i] = n;
        }
    }
    if taken.iter().all(|&n| n == 0) {
        return None;
    }
    let placed: Vec<&Resources> = groups
        .iter()
        .zip(&taken)
        .filter(|(_, n)| **n > 0)
        .map(|(g, _)| &g.shape)
        .collect();
    let score = Score::of(&bin.total, &free, &placed);
    Some(Trial { taken, free, score })
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
    /// `placed`: the shapes placed on the node (one each is enough).
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
        let (min_util, mean_util) = if utils.is_empty() {
            (0.0, 0.0)
        } else {
            (
                utils.iter().copied().fold(f64::INFINITY, f64::min),
                utils.iter().sum::<f64>() / utils.len() as f64,
            )
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

/// Where requests went: for each bin used, its index and the groups placed on it.
pub(super) struct Packing {
    pub used: Vec<(usize, Vec<Group>)>,
    pub left: Vec<Group>,
}

/// Packs `groups` (largest first) onto `bins`, each bin used once: repeatedly the bin that
/// scores best after taking what fits of the remaining requests (ties go to the earlier
/// bin), until nothing more fits.
pub(super) fn pack(groups: Vec<Group>, bins: &mut [Bin]) -> Packing {
    let mut left = groups;
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
        let (placed, rest) = split(left, &trial.taken);
        left = rest;
        used.push((i, placed));
    }
    Packing { used, left }
}

/// Chooses the best of `candidates` (node shapes not yet launched) for the remaining
/// requests: the index of the candidate and how many of each group it would take, or
/// `None` when none fits any request.
pub(super) fn best_new_bin(
    groups: &[Group],
    candidates: &[&Resources],
) -> Option<(usize, Vec<usize>)> {
    let mut best: Option<(usize, Trial)> = None;
    for (i, shape) in candidates.iter().enumerate() {
        let bin = Bin {
            total: (*shape).clone(),
            free: (*shape).clone(),
        };
        if let Some(trial) = try_bin(&bin, groups) {
            keep_better(&mut best, i, trial);
        }
    }
    best.map(|(i, trial)| (i, trial.taken))
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

/// Splits `groups` into what `taken` (a count per group) takes and the rest, both in order.
pub(super) fn split(groups: Vec<Group>, taken: &[usize]) -> (Vec<Group>, Vec<Group>) {
    let mut placed = Vec::new();
    let mut rest = Vec::new();
    for (g, &n) in groups.into_iter().zip(taken) {
        let n = n.min(g.count);
        if n > 0 {
            placed.push(Group {
                shape: g.shape.clone(),
                count: n,
            });
        }
        if g.count > n {
            rest.push(Group {
                shape: g.shape,
                count: g.count - n,
            });
        }
    }
    (placed, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(pairs: &[(&str, f64)]) -> Resources {
        Resources::from_pairs(pairs.iter().map(|(k, v)| (*k, *v))).unwrap()
    }

    fn one_each(shapes: &[Resources]) -> Vec<Group> {
        shapes
            .iter()
            .map(|s| Group {
                shape: s.clone(),
                count: 1,
            })
            .collect()
    }

    #[test]
    fn largest_first_is_independent_of_input_order() {
        let a = vec![
            res(&[("CPU", 1.0)]),
            res(&[("CPU", 1.0), ("GPU", 1.0)]),
            res(&[("CPU", 4.0)]),
            res(&[("CPU", 1.0)]),
        ];
        let mut b = a.clone();
        b.reverse();
        let ga = group_largest_first(&a);
        assert_eq!(ga, group_largest_first(&b));
        assert_eq!(ga[0].shape, res(&[("CPU", 1.0), ("GPU", 1.0)]));
        assert_eq!(ga[1].shape, res(&[("CPU", 4.0)]));
        assert_eq!(
            (ga[2].shape.clone(), ga[2].count),
            (res(&[("CPU", 1.0)]), 2)
        );
    }

    #[test]
    fn a_group_places_what_first_fit_would() {
        let bin = Bin {
            total: res(&[("CPU", 1.0)]),
            free: res(&[("CPU", 1.0)]),
        };
        // Ten tenths fill one CPU exactly, in spite of float rounding.
        let groups = vec![Group {
            shape: res(&[("CPU", 0.1)]),
            count: 12,
        }];
        let trial = try_bin(&bin, &groups).unwrap();
        assert_eq!(trial.taken, vec![10]);
        let (placed, rest) = split(groups, &trial.taken);
        assert_eq!((placed[0].count, rest[0].count), (10, 2));
    }

    #[test]
    fn rays_score_prefers_the_smaller_fitting_node_and_no_gpu() {
        // test_multi_node_types_score: {CPU: 1} and {CPU: 2} go to type_small.
        let large = res(&[("CPU", 10.0)]);
        let small = res(&[("CPU", 5.0)]);
        let gpu = res(&[("CPU", 2.0), ("GPU", 2.0)]);
        for cpus in [1.0, 2.0] {
            let groups = one_each(&[res(&[("CPU", cpus)])]);
            let (i, _) = best_new_bin(&groups, &[&large, &small, &gpu]).unwrap();
            assert_eq!(i, 1, "for {cpus} CPU");
        }
        // test_multi_node_types_score_with_gpu: the GPU type is avoided for CPU work.
        let multi = res(&[("CPU", 2.0), ("XXX", 2.0)]);
        let gpu = res(&[("CPU", 1.0), ("GPU", 2.0)]);
        let (i, _) = best_new_bin(&one_each(&[res(&[("CPU", 1.0)])]), &[&gpu, &multi]).unwrap();
        assert_eq!(i, 1);
    }
}
