//! The node's periodic duties: heartbeat to the GCS, refresh the cluster view used for
//! spillback, retire idle workers.
//!
//! Invariants:
//! - One heartbeat per `heartbeat_interval` (missed ticks are delayed, not bunched), each
//!   bounded by a timeout so a hung GCS cannot stall the loop.
//! - A heartbeat answered `accepted = false` means the GCS considers this node dead or
//!   unknown. The raylet re-registers under the same node id, reporting the jobs it has
//!   workers for: a GCS restarted on the in-memory store lost the node and its jobs and
//!   takes both back. Only when the GCS refuses with `ALREADY_EXISTS` (the id was marked
//!   dead) does the raylet shut down (it must not keep granting leases nobody can see); any
//!   other failure is retried on the next tick.
//! - A GCS that does not answer is not a reason to stop: the raylet keeps serving local
//!   leases and retries on the next tick.
//! - Leases and workers of a job the GCS reports finished are reclaimed within a tick, and
//!   so is its plasma memory here (primary copies, pins, unsealed objects).

use std::sync::Arc;
use std::time::Duration;

use miniray_common::ErrorCode;
use miniray_common::auth::AuthedChannel;
use miniray_proto::gcs_client::GcsClient;
use miniray_proto::{GetAllNodesRequest, GetJobRequest, RegisterNodeRequest};

use crate::error::RayletError;
use crate::node::Node;

/// Bound on each GCS call of the loop.
const GCS_CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) async fn run(node: Arc<Node>) {
    let mut shutdown = node.shutdown_signal();
    let mut tick = tokio::time::interval(node.cfg.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gcs = node.gcs.clone();
    let mut gcs_down = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        node.pool.reap_idle();
        let req = node.heartbeat_request();
        match tokio::time::timeout(GCS_CALL_TIMEOUT, gcs.heartbeat(req)).await {
            Ok(Ok(reply)) => {
                if gcs_down {
                    tracing::info!("gcs reachable again");
                    gcs_down = false;
                }
                if !reply.into_inner().accepted && !reregister(&node, &mut gcs).await {
                    node.trigger_shutdown(Some(RayletError::HeartbeatRejected));
                    return;
                }
            }
            Ok(Err(status)) => {
                if !gcs_down {
                    tracing::warn!(error = %status, "heartbeat failed");
                }
                gcs_down = true;
                continue;
            }
            Err(_) => {
                if !gcs_down {
                    tracing::warn!("heartbeat timed out");
                }
                gcs_down = true;
                continue;
            }
        }
        match tokio::time::timeout(GCS_CALL_TIMEOUT, gcs.get_all_nodes(GetAllNodesRequest {})).await
        {
            Ok(Ok(reply)) => node.update_cluster(&reply.into_inner().nodes),
            Ok(Err(status)) => tracing::warn!(error = %status, "cannot refresh the cluster view"),
            Err(_) => tracing::warn!("refreshing the cluster view timed out"),
        }
        reclaim_finished_jobs(&node, &mut gcs).await;
    }
}

/// Registers again under the same node id after the GCS refused a heartbeat, with the jobs
/// this node has workers or job records for. False when the GCS refuses for good (the id
/// was marked dead); a failure that may pass is logged and left to the next tick.
async fn reregister(node: &Arc<Node>, gcs: &mut GcsClient<AuthedChannel>) -> bool {
    let request = RegisterNodeRequest {
        node: Some(node.node_info()),
        jobs: node.pool.job_records(),
    };
    let jobs = request.jobs.len();
    match tokio::time::timeout(GCS_CALL_TIMEOUT, gcs.register_node(request)).await {
        Ok(Ok(_)) => {
            tracing::info!(node_id = %node.node_id, jobs, "the gcs did not know this node; registered again under the same id");
            true
        }
        Ok(Err(status)) if ErrorCode::of_status(&status) == ErrorCode::AlreadyExists => {
            tracing::error!(node_id = %node.node_id, error = %status.message(), "the gcs considers this node dead; shutting down");
            false
        }
        Ok(Err(status)) => {
            tracing::warn!(node_id = %node.node_id, error = %status, "registering again failed; retrying on the next tick");
            true
        }
        Err(_) => {
            tracing::warn!(node_id = %node.node_id, "registering again timed out; retrying on the next tick");
            true
        }
    }
}

/// Ends the leases, workers and plasma memory of jobs the GCS reports finished. Only jobs
/// with a worker, a primary copy or a store client here are asked about, so the cost
/// follows this node's load, not the job table's size.
async fn reclaim_finished_jobs(node: &Arc<Node>, gcs: &mut GcsClient<AuthedChannel>) {
    let mut jobs = node.pool.jobs_present();
    jobs.extend(node.ownership.lock().jobs());
    jobs.sort();
    jobs.dedup();
    for job in jobs {
        let reply = tokio::time::timeout(
            GCS_CALL_TIMEOUT,
            gcs.get_job(GetJobRequest {
                job_id: job.to_vec(),
            }),
        )
        .await;
        match reply {
            Ok(Ok(r)) if r.get_ref().job.as_ref().is_some_and(|j| j.finished) => {
                node.end_job(job);
            }
            Ok(Ok(_)) => {}
            Ok(Err(status)) => {
                tracing::debug!(job_id = %job, error = %status, "cannot read job state")
            }
            Err(_) => tracing::debug!(job_id = %job, "reading job state timed out"),
        }
    }
}
