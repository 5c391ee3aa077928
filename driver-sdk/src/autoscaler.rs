//! Talking to the cluster's autoscaler (Ray's `ray.autoscaler.sdk`).

use std::collections::BTreeMap;

use miniray_common::Resources;
use miniray_proto::RequestClusterResourceConstraintRequest;

use crate::runtime::{self, plasma::status_error};
use crate::{Error, Result};

/// Asks an autoscaling cluster to keep room for these bundles (Ray's `request_resources`):
/// a floor of capacity counted against the nodes' total, not free, resources, so the
/// autoscaler launches nodes until each bundle fits on some node and keeps them while the
/// floor stands, busy or not. Each call replaces the previous floor; an empty slice clears
/// it. A bundle is a resource map as in [`crate::cluster_resources`]:
///
/// ```no_run
/// use std::collections::BTreeMap;
/// # fn main() -> miniray::Result<()> {
/// // Keep room for three 2-CPU bundles.
/// miniray::autoscaler::request_resources(&vec![BTreeMap::from([("CPU", 2.0)]); 3])?;
/// miniray::autoscaler::request_resources::<&str>(&[])?; // no floor any more
/// # Ok(()) }
/// ```
///
/// A negative or non-finite amount, an empty name or an empty bundle is
/// [`Error::InvalidArgument`] and changes nothing. On a cluster without an autoscaler the
/// floor is recorded and has no effect.
pub fn request_resources<K: AsRef<str>>(bundles: &[BTreeMap<K, f64>]) -> Result<()> {
    let request = to_request(bundles)?;
    let cw = runtime::current()?;
    cw.block_on(send(&cw, request))?
}

/// [`request_resources`] for async code.
pub async fn request_resources_async<K: AsRef<str>>(bundles: &[BTreeMap<K, f64>]) -> Result<()> {
    let request = to_request(bundles)?;
    let cw = runtime::current()?;
    send(&cw, request).await
}

fn to_request<K: AsRef<str>>(
    bundles: &[BTreeMap<K, f64>],
) -> Result<RequestClusterResourceConstraintRequest> {
    let bundles = bundles
        .iter()
        .enumerate()
        .map(|(i, bundle)| {
            let r = Resources::from_pairs(bundle.iter().map(|(k, v)| (k.as_ref(), *v))).map_err(
                |e| Error::InvalidArgument(format!("request_resources: bundle {i}: {e}")),
            )?;
            if r.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "request_resources: bundle {i} asks for no resources"
                )));
            }
            Ok(r.to_proto())
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RequestClusterResourceConstraintRequest { bundles })
}

async fn send(
    cw: &runtime::CoreWorker,
    request: RequestClusterResourceConstraintRequest,
) -> Result<()> {
    let mut gcs = cw.gcs.clone();
    gcs.request_cluster_resource_constraint(request)
        .await
        .map_err(|s| status_error(&cw.gcs_address, s))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_bundles_are_refused_before_anything_is_sent() {
        let err = to_request(&[
            BTreeMap::from([("CPU", 1.0)]),
            BTreeMap::from([("GPU", -1.0)]),
        ])
        .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains("bundle 1") && m.contains("GPU")),
            "{err}"
        );
        let empty: BTreeMap<&str, f64> = BTreeMap::new();
        assert!(matches!(
            to_request(&[empty]),
            Err(Error::InvalidArgument(_))
        ));
        let ok = to_request(&[BTreeMap::from([("CPU".to_string(), 2.0)])]).unwrap();
        assert_eq!(ok.bundles.len(), 1);
        assert!(to_request::<&str>(&[]).unwrap().bundles.is_empty());
    }
}
