//! This process's view of its node's plasma store: the segment mapped into memory, and the
//! raylet RPCs that create, seal, pin and release objects in it.
//!
//! A driver with no raylet on its own machine (a laptop, a CI runner, another Pod) uses a
//! *home raylet* over the network instead, without a mapping (remote mode): a put streams
//! the bytes to it (`PlasmaWrite`), a get streams them from the node holding the copy
//! (`ReadObject`) into a buffer. Workers always run next to their raylet and map it.
//!
//! Invariants:
//! - Bytes are read straight out of the mapping (no copy before decoding) between a
//!   `PlasmaGet`, which pins the object, and the matching `PlasmaRelease`.
//! - Every call names this process (its worker id) as the client, so the raylet can give
//!   back its pins and unsealed objects if it dies.
//! - A created object is either sealed or aborted: a put that fails after `PlasmaCreate`
//!   aborts it (best effort; if the raylet is unreachable it aborts it when we are gone).

use std::sync::Arc;

use miniray_common::ErrorCode;
use miniray_common::auth::AuthedChannel;
use miniray_common::config::TRANSFER_CHUNK_SIZE;
use miniray_common::{JobId, ObjectId, WorkerId};
use miniray_plasma::{ObjectLocation, SegmentMapping};
use miniray_proto::raylet_client::RayletClient;
use miniray_proto::{
    NodeAddress, PlasmaAbortRequest, PlasmaCreateRequest, PlasmaGetRequest, PlasmaInfoRequest,
    PlasmaReleaseRequest, PlasmaSealRequest, PlasmaWriteChunk, PullObjectRequest,
    ReadObjectRequest, WorkerAddress,
};
use tonic::Status;

use super::home::{Home, HomeCell};
use crate::codec::Encoded;
use crate::error::{Error, Result};

pub(crate) struct PlasmaClient {
    /// The segment of a raylet on this machine; `None` in remote mode.
    mapping: Option<SegmentMapping>,
    /// The raylet whose store this is; in remote mode it can change (see `home.rs`).
    home: Arc<HomeCell>,
    /// This process, as the raylet knows it: its worker id and job.
    client_id: WorkerId,
    job_id: JobId,
}

pub(crate) fn status_error(address: &str, status: Status) -> Error {
    // A connection that broke under a call (the peer was killed, a reset) surfaces from
    // the transport as UNKNOWN without the error code a miniray service sets: the peer is
    // unreachable, as for UNAVAILABLE (a remote driver's home is then suspected gone).
    if status.code() == tonic::Code::Unknown && status.metadata().get("x-miniray-error").is_none() {
        return Error::ClusterUnreachable {
            address: address.to_string(),
            reason: status.message().to_string(),
        };
    }
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
    /// Registers this process as a store client of the home raylet; maps its segment when
    /// `local` (the raylet runs on this machine), else works in remote mode.
    pub(crate) async fn connect(
        home: Arc<HomeCell>,
        client_id: WorkerId,
        job_id: JobId,
        local: bool,
    ) -> Result<Self> {
        let current = home.get();
        let info = current
            .raylet
            .clone()
            .plasma_info(PlasmaInfoRequest {
                client_id: client_id.to_vec(),
                job_id: job_id.to_vec(),
            })
            .await
            .map_err(|s| status_error(&current.endpoint, s))?
            .into_inner();
        let mapping = if local {
            Some(
                SegmentMapping::open(std::path::Path::new(&info.segment_path))
                    .map_err(|e| Error::Startup(format!("cannot map the object store: {e}")))?,
            )
        } else {
            None
        };
        Ok(Self {
            mapping,
            home,
            client_id,
            job_id,
        })
    }

    /// The home raylet, for one call.
    fn home(&self) -> Arc<Home> {
        self.home.get()
    }

    /// Whether this process works without a mapping (see the module doc).
    pub(crate) fn is_remote(&self) -> bool {
        self.mapping.is_none()
    }

    fn mapping(&self) -> Result<&SegmentMapping> {
        self.mapping.as_ref().ok_or_else(|| {
            Error::Internal("the object store of a remote raylet is not mapped here".into())
        })
    }

    /// Creates, writes in place, and seals a primary copy owned by `owner` in the store of
    /// `home` (the caller's current home, read once for the whole put).
    pub(crate) async fn put(
        &self,
        home: &Home,
        id: ObjectId,
        owner: WorkerAddress,
        encoded: &Encoded<'_>,
    ) -> Result<u64> {
        let Some(mapping) = &self.mapping else {
            return self.put_remote(home, id, owner, encoded).await;
        };
        let size = encoded.len() as u64;
        let err = |s| status_error(&home.endpoint, s);
        let mut raylet = home.raylet.clone();
        let offset = raylet
            .plasma_create(PlasmaCreateRequest {
                object_id: id.to_vec(),
                data_size: size,
                owner: Some(owner),
                job_id: self.job_id.to_vec(),
                client_id: self.client_id.to_vec(),
            })
            .await
            .map_err(err)?
            .into_inner()
            .offset;
        let loc = ObjectLocation { offset, size };
        // SAFETY: the store handed this range to us alone for an unsealed object we created;
        // nobody reads it before the seal below.
        let dst = match unsafe { mapping.slice_mut(loc) } {
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
            return Err(err(s));
        }
        Ok(size)
    }

    /// Streams a primary copy to the home raylet, which creates, fills and seals it; a
    /// failure on either side aborts it there, so nothing half-written stays.
    async fn put_remote(
        &self,
        home: &Home,
        id: ObjectId,
        owner: WorkerAddress,
        encoded: &Encoded<'_>,
    ) -> Result<u64> {
        let size = encoded.len() as u64;
        // Two chunks in flight: the copy of the next overlaps the send of the last.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let mut raylet = home.raylet.clone();
        let call = raylet.plasma_write(tokio_stream::wrappers::ReceiverStream::new(rx));
        let feed = async move {
            let mut chunks = encoded.chunks(TRANSFER_CHUNK_SIZE);
            let mut next = PlasmaWriteChunk {
                create: Some(PlasmaCreateRequest {
                    object_id: id.to_vec(),
                    data_size: size,
                    owner: Some(owner),
                    job_id: self.job_id.to_vec(),
                    client_id: self.client_id.to_vec(),
                }),
                offset: 0,
                data: chunks.next().unwrap_or_default(),
            };
            loop {
                let sent = next.data.len() as u64;
                let offset = next.offset;
                // A closed channel means the call ended (an error the call reports).
                if tx.send(next).await.is_err() {
                    return;
                }
                let Some(data) = chunks.next() else { return };
                next = PlasmaWriteChunk {
                    offset: offset + sent,
                    data,
                    ..Default::default()
                };
            }
        };
        let (reply, ()) = tokio::join!(call, feed);
        reply.map_err(|s| status_error(&home.endpoint, s))?;
        Ok(size)
    }

    /// Reads a sealed object's bytes from the store of the raylet behind `source` (at
    /// `address`), whose reader pin holds the object for the length of the stream.
    pub(crate) async fn read_remote(
        &self,
        id: ObjectId,
        mut source: RayletClient<AuthedChannel>,
        address: &str,
    ) -> Result<Vec<u8>> {
        let lost = |s: Status| match ErrorCode::of_status(&s) {
            ErrorCode::NotFound | ErrorCode::Unavailable => Error::ObjectLost {
                object_id: id.to_string(),
                reason: format!("cannot read it from node {address}: {}", s.message()),
            },
            _ => status_error(address, s),
        };
        let mut stream = source
            .read_object(ReadObjectRequest {
                object_id: id.to_vec(),
                chunk_size: TRANSFER_CHUNK_SIZE as u64,
                offset: 0,
                length: 0,
                puller: None,
            })
            .await
            .map_err(lost)?
            .into_inner();
        let mut out: Vec<u8> = Vec::new();
        let mut total = None;
        while let Some(chunk) = stream.message().await.map_err(lost)? {
            let expected = *total.get_or_insert(chunk.total_size);
            if chunk.total_size != expected || chunk.offset != out.len() as u64 {
                return Err(Error::Internal(format!(
                    "{address} sent object {id} out of order (chunk at {} of {}, expected {} of {expected})",
                    chunk.offset,
                    chunk.total_size,
                    out.len()
                )));
            }
            if out.capacity() == 0 {
                // Sized once from the announced total, so a bogus size fails here cleanly.
                out.try_reserve_exact(usize::try_from(expected).unwrap_or(usize::MAX))
                    .map_err(|e| {
                        Error::Internal(format!("cannot hold object {id} of {expected} bytes: {e}"))
                    })?;
            }
            out.extend_from_slice(&chunk.data);
        }
        match total {
            Some(t) if out.len() as u64 == t => Ok(out),
            _ => Err(Error::ObjectLost {
                object_id: id.to_string(),
                reason: format!("the stream from {address} ended after {} bytes", out.len()),
            }),
        }
    }

    /// Discards an object this process created and could not seal.
    async fn abort(&self, id: ObjectId) {
        let mut raylet = self.home().raylet.clone();
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
        let home = self.home();
        let mut raylet = home.raylet.clone();
        let reply = raylet
            .plasma_get(PlasmaGetRequest {
                object_ids: vec![id.to_vec()],
                timeout_ms: 0,
                client_id: self.client_id.to_vec(),
            })
            .await
            .map_err(|s| status_error(&home.endpoint, s))?
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
        self.mapping()?
            .slice(loc)
            .map_err(|e| Error::Internal(format!("object store gave a bad range: {e}")))
    }

    /// Drops the pins taken by `pin`.
    pub(crate) async fn release(&self, ids: &[ObjectId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let home = self.home();
        let mut raylet = home.raylet.clone();
        raylet
            .plasma_release(PlasmaReleaseRequest {
                object_ids: ids.iter().map(|id| id.to_vec()).collect(),
                client_id: self.client_id.to_vec(),
            })
            .await
            .map_err(|s| status_error(&home.endpoint, s))?;
        Ok(())
    }

    /// Runs `f` on the object's bytes if it is sealed in this node's store.
    pub(crate) async fn with_object<R>(
        &self,
        id: ObjectId,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>> {
        if self.is_remote() {
            let home = self.home();
            let bytes = self
                .read_remote(id, home.raylet.clone(), &home.endpoint)
                .await;
            return match bytes {
                Ok(bytes) => Ok(Some(f(&bytes))),
                Err(Error::ObjectLost { .. }) => Ok(None),
                Err(e) => Err(e),
            };
        }
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
        let home = self.home();
        let mut raylet = home.raylet.clone();
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
                _ => status_error(&home.endpoint, s),
            })?;
        Ok(())
    }
}
