//! Registering the driver's job: its executable (content-addressed, uploaded once) and the
//! job record raylets read to start workers.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use miniray_common::ErrorCode;
use miniray_common::auth::AuthedChannel;
use miniray_common::time::now_ms;
use miniray_proto::gcs_client::GcsClient;
use miniray_proto::{AddJobRequest, HasExecutableRequest, JobInfo, MarkJobFinishedRequest};
use tracing::{debug, info};

use super::CoreWorker;
use super::plasma::status_error;
use crate::error::{Error, Result};

/// Environment variables a driver passes on to its workers.
const FORWARDED_ENV: &[&str] = &[
    "MINIRAY_LOG",
    "RUST_LOG",
    "RUST_BACKTRACE",
    miniray_common::config::env::TASK_EVENTS_REPORT_INTERVAL_MS,
];

/// Registers the job of driver `cw`, whose `/metrics` endpoint is on `metrics_port` (0:
/// none).
pub(crate) async fn register(cw: &Arc<CoreWorker>, metrics_port: u16) -> Result<()> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::Startup(format!("cannot find this program's executable: {e}")))?;
    let bytes = Bytes::from(
        tokio::fs::read(&exe)
            .await
            .map_err(|e| Error::Startup(format!("cannot read {}: {e}", exe.display())))?,
    );
    let hash = blake3::hash(&bytes).to_hex().to_string();
    let mut gcs = cw.gcs.clone();
    let err = |s| status_error(&cw.gcs_address, s);
    let present = gcs
        .has_executable(HasExecutableRequest { hash: hash.clone() })
        .await
        .map_err(err)?
        .into_inner()
        .present;
    if !present {
        upload(&mut gcs, &hash, &bytes).await.map_err(err)?;
    } else {
        debug!(%hash, "job executable already registered");
    }
    let env: HashMap<String, String> = FORWARDED_ENV
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect();
    let job = AddJobRequest {
        job: Some(JobInfo {
            job_id: cw.job_id.to_vec(),
            executable_hash: hash.clone(),
            driver: Some(cw.address.to_proto()),
            start_time_ms: now_ms(),
            end_time_ms: 0,
            finished: false,
            env,
            driver_metrics_port: u32::from(metrics_port),
        }),
    };
    match gcs.add_job(job.clone()).await {
        Ok(_) => Ok(()),
        // The last job using this executable finished after it was found present, and the
        // GCS removed it: upload it again and retry once.
        Err(status) if ErrorCode::of_status(&status) == ErrorCode::NotFound => {
            debug!(%hash, "job executable was removed meanwhile; uploading it again");
            upload(&mut gcs, &hash, &bytes).await.map_err(err)?;
            gcs.add_job(job).await.map_err(err)?;
            Ok(())
        }
        Err(status) => Err(err(status)),
    }
}

/// Uploads the executable in `TRANSFER_CHUNK_SIZE` chunks; the first names hash and size.
async fn upload(
    gcs: &mut GcsClient<AuthedChannel>,
    hash: &str,
    bytes: &Bytes,
) -> std::result::Result<(), tonic::Status> {
    info!(size = bytes.len(), %hash, "uploading the job executable");
    // Slices of `bytes`: the upload holds no second copy of the executable.
    let chunks = miniray_common::executable::chunks(hash, bytes.clone());
    gcs.put_executable(futures::stream::iter(chunks)).await?;
    Ok(())
}

pub(crate) async fn mark_finished(cw: &CoreWorker) {
    let mut gcs = cw.gcs.clone();
    if let Err(status) = gcs
        .mark_job_finished(MarkJobFinishedRequest {
            job_id: cw.job_id.to_vec(),
        })
        .await
    {
        debug!(error = %status, "marking the job finished failed");
    }
}
