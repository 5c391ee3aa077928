//! The dashboard's part of the metrics: its own `/metrics` (jobs by state), and
//! `/api/prometheus/sd`, the cluster's scrape targets in Prometheus's file_sd / http_sd
//! format, so one Prometheus finds every node.

use std::collections::BTreeMap;

use miniray_common::auth::AuthedChannel;
use miniray_proto::gcs_client::GcsClient;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::jobs::{JobError, JobRecord, JobStatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// The registry of one scrape: submitted jobs by state (every state, 0 included).
pub fn jobs_registry(records: &[JobRecord]) -> Registry {
    let mut counts: BTreeMap<String, i64> = [
        JobStatus::Pending,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Stopped,
    ]
    .into_iter()
    .map(|s| (s.to_string(), 0))
    .collect();
    for r in records {
        *counts.entry(r.status.to_string()).or_default() += 1;
    }
    let jobs = Family::<StateLabel, Gauge>::default();
    for (state, n) in counts {
        jobs.get_or_create(&StateLabel { state }).set(n);
    }
    let mut registry = Registry::default();
    registry.register(
        "miniray_jobs",
        "Jobs submitted to this head by state (as long as their records are kept)",
        jobs,
    );
    registry
}

/// One target group of Prometheus's file_sd / http_sd format.
#[derive(Debug, Serialize, PartialEq)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// The cluster's scrape targets: the GCS's and every raylet's endpoint as the GCS lists
/// them, and this dashboard's own (`dashboard`: HOST:PORT; on the head node's IP when it
/// listens on every interface).
pub async fn targets(
    mut gcs: GcsClient<AuthedChannel>,
    dashboard: (&str, u16),
) -> Result<Vec<TargetGroup>, JobError> {
    let listed = gcs
        .get_metrics_targets(miniray_proto::GetMetricsTargetsRequest {})
        .await
        .map_err(JobError::Gcs)?
        .into_inner();
    let (host, port) = dashboard;
    let host = match host.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_unspecified() && !listed.head_host.is_empty() => listed.head_host,
        _ => host.to_string(),
    };
    let mut groups = vec![TargetGroup {
        targets: vec![miniray_common::net::host_port(&host, port)],
        labels: [("component".to_string(), "dashboard".to_string())].into(),
    }];
    for t in listed.targets {
        let mut labels = BTreeMap::from([("component".to_string(), t.component)]);
        if !t.node_id.is_empty() {
            labels.insert("node_id".into(), hex::encode(&t.node_id));
        }
        if !t.job_id.is_empty() {
            labels.insert("job_id".into(), hex::encode(&t.job_id));
        }
        groups.push(TargetGroup {
            targets: vec![t.address],
            labels,
        });
    }
    Ok(groups)
}
