//! A job's record, in the JSON shape of Ray's `JobDetails` where the two overlap.

use serde::{Deserialize, Serialize};

/// Where a job is in its life (Ray's `JobStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    /// Recorded; its driver is being fetched and started.
    Pending,
    Running,
    /// The driver exited with status 0.
    Succeeded,
    /// The driver exited otherwise, could not start, or was lost with the head.
    Failed,
    /// Stopped by a user.
    Stopped,
}

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Stopped)
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pending => "PENDING",
            Self::Running => "RUNNING",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::Stopped => "STOPPED",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Always `SUBMISSION` (Ray also lists drivers run by hand, as `DRIVER`).
    #[serde(rename = "type")]
    pub kind: String,
    pub submission_id: String,
    pub status: JobStatus,
    /// What ran, as a command line: the executable's file name and its arguments.
    pub entrypoint: String,
    /// blake3 hash of the driver executable (as stored in the GCS).
    pub executable: String,
    pub args: Vec<String>,
    /// Why the job is in its status, in words.
    pub message: String,
    /// Unix milliseconds.
    pub start_time: u64,
    pub end_time: Option<u64>,
    pub driver_exit_code: Option<i32>,
    /// Output bytes no longer kept (the oldest, past the log bound).
    #[serde(default)]
    pub log_bytes_dropped: u64,
}

impl JobRecord {
    pub fn pending(
        submission_id: String,
        entrypoint: String,
        executable: String,
        args: Vec<String>,
    ) -> Self {
        JobRecord {
            kind: "SUBMISSION".into(),
            submission_id,
            status: JobStatus::Pending,
            entrypoint,
            executable,
            args,
            message: "the job is being started".into(),
            start_time: miniray_common::time::now_ms(),
            end_time: None,
            driver_exit_code: None,
            log_bytes_dropped: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_as_rays_and_only_ends_are_terminal() {
        let r = JobRecord::pending("a".into(), "drv x".into(), "h".into(), vec!["x".into()]);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["status"], "PENDING");
        assert_eq!(json["type"], "SUBMISSION");
        assert_eq!(json["submission_id"], "a");
        let back: JobRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
        assert!(!JobStatus::Running.is_terminal());
        assert!(JobStatus::Stopped.is_terminal());
        assert_eq!(JobStatus::Succeeded.to_string(), "SUCCEEDED");
    }
}
