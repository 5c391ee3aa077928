//! This process's view of its node's plasma store: the segment mapped into memory, and the
//! raylet RPCs that create, seal, pin and release objects in it.
//!
//! Invariants:
//! - Bytes are read straight out of the mapping (no copy before decoding) between a
//!   `PlasmaGet`, which pins the object, and the matching `PlasmaRelease`.
//! - Every call names this process (its worker id) as the client, so the raylet can give
//!   back its pins and unsealed objects if it dies.
//! - A created object is either sealed or aborted: a put that fails after `PlasmaCreate`
//!   aborts it (best effort; if the raylet is unreachable it aborts it when we are gone).

use miniray_common::ErrorCode;
use miniray_common::auth::AuthedChannel;
use miniray_common::{JobId, ObjectId, WorkerId};
use miniray_plasma::{ObjectLocation, SegmentMapping};
use miniray_proto::raylet_client::RayletClient;
use miniray_proto::{
    NodeAddress, PlasmaAbortRequest, PlasmaCreateRequest, PlasmaGetRequest, PlasmaInfoRequest,
    PlasmaReleaseRequest, PlasmaSealRequest, PullObjectRequest, WorkerAddress,
};
use tonic::Status;

use crate::codec::Encoded;
use crate::error::{Error, Result};

pub(crate) struct PlasmaClient {
    mapping: SegmentMapping,
    raylet: RayletClient<AuthedChannel>,
    raylet_address: String,
    /// This process, as the raylet knows it: its worker id and job.
    client_id: WorkerId,
    job_id: JobId,
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
        client_id: WorkerId,
        job_id: JobId,
    ) -> Result<Self> {
        let info = raylet
            .plasma_info(PlasmaInfoRequest {
                client_id: client_id.to_vec(),
                job_id: job_id.to_vec(),
            })
            .await
            .map_err(|s| status_error(&raylet_address, s))?
            .into_inner();
        let mapping = SegmentMapping::open(std::path::Path::new(&info.segment_path))
            .map_err(|e| Error::Startup(format!("cannot map the object store: {e}")))?;
        Ok(Self {
            mapping,
            raylet,
            raylet_address,
            client_id,
            job_id,
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
                job_id: self.job_id.to_vec(),
                client_id: self.client_id.to_vec(),
            })
            .await
            .map_err(|s| self.err(s))?
            .into_inner()
            .offset;
        let loc = ObjectLocation { offset, size };
        // SAFETY: the store handed this range to us alone for an unsealed object we created;
        // nobody reads it before the seal below.
        let dst = match unsafe { self.mapping.slice_mut(loc) } {
            Ok(dst) => dst,
            Err(e) => {
                self.abort(id).await;
                return Err(Error::Internal(format!(
                    "object store gave a bad range: {e}"
                )));
            }
        };
        encoded.write_to(dst);
        if let Err(s) = raylet
            .plasma_seal(PlasmaSealRequest {
                object_id: id.to_vec(),
            })
            .await
        {
            // An unsealed object is invisible and never evicted: give it back, not leak it.
            self.abort(id).await;
            return Err(self.err(s));
        }
        Ok(size)
    }

    /// Discards an object this process created and could not seal.
    async fn abort(&self, id: ObjectId) {
        let mut raylet = self.raylet.clone();
        if let Err(status) = raylet
            .plasma_abort(PlasmaAbortRequest {
                object_id: id.to_vec(),
            })
            .await
        {
            tracing::debug!(object_id = %id, error = %status, "aborting an unsealed object failed");
        }
    }

    /// Pins the object if it is sealed in this node's store; pair with `release`.
    pub(crate) async fn pin(&self, id: ObjectId) -> Result<Option<ObjectLocation>> {
        let mut raylet = self.raylet.clone();
        let reply = raylet
            .plasma_get(PlasmaGetRequest {
                object_ids: vec![id.to_vec()],
                timeout_ms: 0,
                client_id: self.client_id.to_vec(),
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
                client_id: self.client_id.to_vec(),
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
