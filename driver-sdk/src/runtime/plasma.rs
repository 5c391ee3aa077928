//! This process's view of its node's plasma store: the segment mapped into memory, and the
//! raylet RPCs that create, seal, pin and release objects in it.
//!
//! Invariant: bytes are read straight out of the mapping (no copy before decoding) between a
//! `PlasmaGet`, which pins the object, and the matching `PlasmaRelease`.

use miniray_common::ErrorCode;
use miniray_common::ObjectId;
use miniray_common::auth::AuthedChannel;
use miniray_plasma::{ObjectLocation, SegmentMapping};
use miniray_proto::raylet_client::RayletClient;
use miniray_proto::{
    NodeAddress, PlasmaCreateRequest, PlasmaGetRequest, PlasmaInfoRequest, PlasmaReleaseRequest,
    PlasmaSealRequest, PullObjectRequest, WorkerAddress,
};
use tonic::Status;

use crate::codec::Encoded;
use crate::error::{Error, Result};

pub(crate) struct PlasmaClient {
    mapping: SegmentMapping,
    raylet: RayletClient<AuthedChannel>,
    raylet_address: String,
}

pub(crate) fn status_error(address: &str, status: Status) -> Error {
    match ErrorCode::of_status(&status) {
        ErrorCode::ObjectStoreFull => Error::ObjectStoreFull(status.message().to_string()),
        ErrorCode::Unavailable => Error::ClusterUnreachable {
            address: address.to_string(),
            reason: status.message().to_string(),
        },
        ErrorCode::InvalidArgument => Error::InvalidArgument(status.message().to_string()),
        code => Error::Internal(format!(
            "{address} answered {}: {}",
            code.as_str(),
            status.message()
        )),
    }
}

impl PlasmaClient {
    pub(crate) async fn connect(
        mut raylet: RayletClient<AuthedChannel>,
        raylet_address: String,
    ) -> Result<Self> {
        let info = raylet
            .plasma_info(PlasmaInfoRequest {})
            .await
            .map_err(|s| status_error(&raylet_address, s))?
            .into_inner();
        let mapping = SegmentMapping::open(std::path::Path::new(&info.segment_path))
            .map_err(|e| Error::Startup(format!("cannot map the object store: {e}")))?;
        Ok(Self {
            mapping,
            raylet,
            raylet_address,
        })
    }

    fn err(&self, status: Status) -> Error {
        status_error(&self.raylet_address, status)
    }

    /// Creates, writes in place, and seals a primary copy owned by `owner`.
    pub(crate) async fn put(
        &self,
        id: ObjectId,
        owner: WorkerAddress,
        encoded: &Encoded<'_>,
    ) -> Result<u64> {
        let size = encoded.len() as u64;
        let mut raylet = self.raylet.clone();
        let offset = raylet
            .plasma_create(PlasmaCreateRequest {
                object_id: id.to_vec(),
                data_size: size,
                owner: Some(owner),
            })
            .await
            .map_err(|s| self.err(s))?
            .into_inner()
            .offset;
        let loc = ObjectLocation { offset, size };
        // SAFETY: the store handed this range to us alone for an unsealed object we created;
        // nobody reads it before the seal below.
        let dst = unsafe { self.mapping.slice_mut(loc) }
            .map_err(|e| Error::Internal(format!("object store gave a bad range: {e}")))?;
        encoded.write_to(dst);
        raylet
            .plasma_seal(PlasmaSealRequest {
                object_id: id.to_vec(),
            })
            .await
            .map_err(|s| self.err(s))?;
        Ok(size)
    }

    /// Pins the object if it is sealed in this node's store; pair with `release`.
    pub(crate) async fn pin(&self, id: ObjectId) -> Result<Option<ObjectLocation>> {
        let mut raylet = self.raylet.clone();
        let reply = raylet
            .plasma_get(PlasmaGetRequest {
                object_ids: vec![id.to_vec()],
                timeout_ms: 0,
            })
            .await
            .map_err(|s| self.err(s))?
            .into_inner();
        Ok(reply
            .objects
            .into_iter()
            .find(|o| o.found)
            .map(|o| ObjectLocation {
                offset: o.offset,
                size: o.size,
            }))
    }

    /// The bytes of a pinned object, straight from the mapping.
    pub(crate) fn slice(&self, loc: ObjectLocation) -> Result<&[u8]> {
        self.mapping
            .slice(loc)
            .map_err(|e| Error::Internal(format!("object store gave a bad range: {e}")))
    }

    /// Drops the pins taken by `pin`.
    pub(crate) async fn release(&self, ids: &[ObjectId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut raylet = self.raylet.clone();
        raylet
            .plasma_release(PlasmaReleaseRequest {
                object_ids: ids.iter().map(|id| id.to_vec()).collect(),
            })
            .await
            .map_err(|s| self.err(s))?;
        Ok(())
    }

    /// Runs `f` on the object's bytes if it is sealed in this node's store.
    pub(crate) async fn with_object<R>(
        &self,
        id: ObjectId,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>> {
        let Some(loc) = self.pin(id).await? else {
            return Ok(None);
        };
        let out = self.slice(loc).map(f);
        // Release even when the range was bad, so the pin does not leak.
        let released = self.release(&[id]).await;
        let out = out?;
        released?;
        Ok(Some(out))
    }

    /// Brings an object from `source`'s store into this node's store.
    pub(crate) async fn pull(&self, id: ObjectId, source: &NodeAddress) -> Result<()> {
        let mut raylet = self.raylet.clone();
        raylet
            .pull_object(PullObjectRequest {
                object_id: id.to_vec(),
                source: Some(source.clone()),
            })
            .await
            .map_err(|s| match ErrorCode::of_status(&s) {
                ErrorCode::NotFound | ErrorCode::Unavailable => Error::ObjectLost {
                    object_id: id.to_string(),
                    reason: format!(
                        "cannot fetch it from node {}:{}: {}",
                        source.host,
                        source.port,
                        s.message()
                    ),
                },
                _ => self.err(s),
            })?;
        Ok(())
    }
}
