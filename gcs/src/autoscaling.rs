//! What the autoscaler reads and writes at the GCS: the `request_resources` floor
//! (persisted), the autoscaler's latest report (memory only), and the aggregation of node
//! and actor demand into a [`ClusterResourceState`].
//!
//! Invariants:
//! - The floor is written to storage before it replaces the one in memory (under
//!   `constraint_writes`), so a GCS restarted on Redis serves the last floor any client was
//!   told was set. A floor that does not validate changes nothing.
//! - The report is not persisted: the autoscaler reports again every round.

use std::collections::BTreeMap;

use miniray_common::{ErrorCode, Resources};
use miniray_proto::{AutoscalingState, NodeInfo, ResourceDemandCount, ResourceSet};
use parking_lot::Mutex;
use prost::Message;
use tonic::Status;

use crate::GcsError;
use crate::storage::{AUTOSCALER_TABLE, Storage};

/// Key of the `request_resources` floor in [`AUTOSCALER_TABLE`]: a prost-encoded
/// `RequestClusterResourceConstraintRequest`.
const CONSTRAINT_KEY: &[u8] = b"resource_constraint";

/// Most bundles one floor may hold; each is a planner input, so a runaway list would make
/// every autoscaler round slow.
pub(crate) const MAX_CONSTRAINT_BUNDLES: usize = 10_000;

pub(crate) struct Autoscaling {
    /// Memory only; never held across an await.
    constraint: Mutex<Vec<ResourceSet>>,
    /// Held around "write storage, then replace in memory".
    constraint_writes: tokio::sync::Mutex<()>,
    report: Mutex<Option<AutoscalingState>>,
}

impl Autoscaling {
    /// Reloads the floor from the backend.
    pub(crate) async fn load(storage: &dyn Storage) -> Result<Self, GcsError> {
        let constraint = match storage.get(AUTOSCALER_TABLE, CONSTRAINT_KEY).await? {
            Some(bytes) => {
                miniray_proto::RequestClusterResourceConstraintRequest::decode(bytes.as_slice())
                    .map_err(|e| GcsError::CorruptRecord {
                        table: AUTOSCALER_TABLE,
                        key: String::from_utf8_lossy(CONSTRAINT_KEY).into_owned(),
                        reason: e.to_string(),
                    })?
                    .bundles
            }
            None => Vec::new(),
        };
        if !constraint.is_empty() {
            tracing::info!(
                bundles = constraint.len(),
                "reloaded the request_resources floor"
            );
        }
        Ok(Self {
            constraint: Mutex::new(constraint),
            constraint_writes: tokio::sync::Mutex::new(()),
            report: Mutex::new(None),
        })
    }

    pub(crate) fn constraint(&self) -> Vec<ResourceSet> {
        self.constraint.lock().clone()
    }

    /// Validates `bundles` and makes them the floor (an empty list clears it).
    pub(crate) async fn set_constraint(
        &self,
        storage: &dyn Storage,
        bundles: Vec<ResourceSet>,
    ) -> Result<(), Status> {
        let bundles = validate_bundles(&bundles)?;
        let _writes = self.constraint_writes.lock().await;
        let record = miniray_proto::RequestClusterResourceConstraintRequest {
            bundles: bundles.clone(),
        };
        if bundles.is_empty() {
            storage.delete(AUTOSCALER_TABLE, CONSTRAINT_KEY).await
        } else {
            storage
                .put(AUTOSCALER_TABLE, CONSTRAINT_KEY, &record.encode_to_vec())
                .await
        }
        .map_err(|e| e.to_status())?;
        tracing::info!(bundles = bundles.len(), "request_resources floor set");
        *self.constraint.lock() = bundles;
        Ok(())
    }

    pub(crate) fn set_report(&self, state: AutoscalingState) {
        *self.report.lock() = Some(state);
    }

    pub(crate) fn report(&self) -> Option<AutoscalingState> {
        self.report.lock().clone()
    }
}

/// The bundles in canonical form, or INVALID_ARGUMENT naming the first bad one.
fn validate_bundles(bundles: &[ResourceSet]) -> Result<Vec<ResourceSet>, Status> {
    if bundles.len() > MAX_CONSTRAINT_BUNDLES {
        return Err(ErrorCode::InvalidArgument.status(format!(
            "request_resources: {} bundles, at most {MAX_CONSTRAINT_BUNDLES}",
            bundles.len()
        )));
    }
    bundles
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let r = Resources::from_proto(b).map_err(|e| {
                ErrorCode::InvalidArgument.status(format!("request_resources: bundle {i}: {e}"))
            })?;
            if r.is_empty() {
                return Err(ErrorCode::InvalidArgument.status(format!(
                    "request_resources: bundle {i} asks for no resources"
                )));
            }
            Ok(r.to_proto())
        })
        .collect()
}

/// Lease requests queued at the nodes, summed by shape, in shape order.
pub(crate) fn pending_leases(nodes: &[NodeInfo]) -> Vec<ResourceDemandCount> {
    count_shapes(nodes.iter().flat_map(|n| {
        n.demand.iter().filter_map(|d| {
            let shape = Resources::from_proto(d.shape.as_ref()?).ok()?;
            Some((shape, d.count))
        })
    }))
}

/// Waiting actors, counted by shape, in shape order.
pub(crate) fn pending_actors(needs: Vec<Resources>) -> Vec<ResourceDemandCount> {
    count_shapes(needs.into_iter().map(|r| (r, 1)))
}

fn count_shapes(items: impl Iterator<Item = (Resources, u64)>) -> Vec<ResourceDemandCount> {
    let mut by_shape: BTreeMap<String, (Resources, u64)> = BTreeMap::new();
    for (shape, count) in items {
        if count == 0 {
            continue;
        }
        let slot = by_shape
            .entry(shape.shape_key())
            .or_insert_with(|| (shape, 0));
        slot.1 = slot.1.saturating_add(count);
    }
    by_shape
        .into_values()
        .map(|(shape, count)| ResourceDemandCount {
            shape: Some(shape.to_proto()),
            count,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;
    use miniray_proto::ResourceDemand;

    fn set(pairs: &[(&str, f64)]) -> ResourceSet {
        ResourceSet {
            amounts: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn demand_is_summed_by_shape_over_nodes() {
        let node = |demand: Vec<(ResourceSet, u64)>| NodeInfo {
            demand: demand
                .into_iter()
                .map(|(shape, count)| ResourceDemand {
                    shape: Some(shape),
                    count,
                    infeasible: false,
                })
                .collect(),
            ..Default::default()
        };
        let nodes = [
            node(vec![(set(&[("CPU", 1.0)]), 2), (set(&[("GPU", 1.0)]), 1)]),
            node(vec![(set(&[("CPU", 1.0)]), 3)]),
        ];
        let sum = pending_leases(&nodes);
        assert_eq!(sum.len(), 2);
        assert_eq!(sum[0].shape, Some(set(&[("CPU", 1.0)])));
        assert_eq!(sum[0].count, 5);
        assert_eq!(sum[1].count, 1);

        let cpu = Resources::from_pairs([("CPU", 2.0)]).unwrap();
        let actors = pending_actors(vec![cpu.clone(), cpu]);
        assert_eq!(actors.len(), 1);
        assert_eq!(actors[0].count, 2);
    }

    #[tokio::test]
    async fn the_floor_is_validated_persisted_and_cleared() {
        let storage = MemoryStorage::new();
        let a = Autoscaling::load(&storage).await.unwrap();
        assert!(a.constraint().is_empty());
        let err = a
            .set_constraint(&storage, vec![set(&[("CPU", -1.0)])])
            .await
            .unwrap_err();
        assert_eq!(ErrorCode::of_status(&err), ErrorCode::InvalidArgument);
        assert!(err.message().contains("bundle 0"), "{}", err.message());
        let err = a
            .set_constraint(&storage, vec![set(&[])])
            .await
            .unwrap_err();
        assert_eq!(ErrorCode::of_status(&err), ErrorCode::InvalidArgument);

        a.set_constraint(&storage, vec![set(&[("CPU", 2.0), ("GPU", 0.0)])])
            .await
            .unwrap();
        assert_eq!(a.constraint(), vec![set(&[("CPU", 2.0)])]);
        // A new GCS on the same storage serves the same floor.
        let again = Autoscaling::load(&storage).await.unwrap();
        assert_eq!(again.constraint(), vec![set(&[("CPU", 2.0)])]);

        a.set_constraint(&storage, Vec::new()).await.unwrap();
        assert!(a.constraint().is_empty());
        assert!(
            Autoscaling::load(&storage)
                .await
                .unwrap()
                .constraint()
                .is_empty()
        );
    }
}
