//! Runs jobs: checks a submission, records it, runs the uploaded driver executable as a child process with the cluster's address and token, keeps its output, and
//! records how it ended.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use miniray_common::auth::AuthedChannel;
use miniray_common::config::env;
use miniray_proto::gcs_client::GcsClient;
use parking_lot::Mutex;
use tonic::Status;

use super::logs::{self, LogWriter};
use super::record::{JobRecord, JobStatus};
use super::store::JobStore;
use crate::executables::{ExecutableStore, is_hash};

/// Longest submission id accepted.
const MAX_ID_LEN: usize = 128;
/// Output still read after the driver exited, from processes it left holding the pipe.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// Why a job request was refused or failed; each maps onto one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("a job with submission id {0:?} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    NotFound(String),
    #[error("job {id} is {status}; only a finished job can be deleted")]
    NotFinished { id: String, status: JobStatus },
    #[error("the gcs: {}", .0.message())]
    Gcs(#[from] Status),
    #[error("{0}")]
    Internal(String),
}

impl JobError {
    pub fn http_status(&self) -> u16 {
        match self {
            JobError::InvalidArgument(_) | JobError::NotFinished { .. } => 400,
            JobError::AlreadyExists(_) => 409,
            JobError::NotFound(_) => 404,
            JobError::Gcs(_) => 503,
            JobError::Internal(_) => 500,
        }
    }
}

/// What `POST /api/jobs/` carries.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct SubmitRequest {
    /// Chosen by the submitter, else generated (`mrjob_<16 hex>`).
    #[serde(default)]
    pub submission_id: Option<String>,
    /// blake3 hash of the driver executable, uploaded to the head beforehand.
    pub executable: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// How to show the command (the submitter's file name); the hash when absent.
    #[serde(default)]
    pub entrypoint: Option<String>,
}

/// How the manager reaches the cluster and where it keeps its files.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    pub gcs_address: String,
    pub token: String,
    /// Environment every driver gets besides the address and token (the TLS files): a
    /// value, or `None` to remove the variable.
    pub driver_env: Vec<(String, Option<String>)>,
    /// Private folder of this manager: the uploaded executables and each job's working folder.
    pub state_dir: PathBuf,
    /// Between SIGTERM and SIGKILL when a job is stopped.
    pub stop_grace: Duration,
}

/// A driver this manager runs.
struct Running {
    pid: Option<u32>,
    /// A user asked to stop it: its end is STOPPED whatever its exit status.
    stop_requested: bool,
}

struct Inner {
    cfg: ManagerConfig,
    store: JobStore,
    executables: ExecutableStore,
    running: Mutex<HashMap<String, Running>>,
}

/// Runs and tracks jobs; cheap to clone.
#[derive(Clone)]
pub struct JobManager {
    inner: Arc<Inner>,
}

impl JobManager {
    /// A manager over the GCS at `gcs`. Jobs recorded as PENDING or RUNNING that no
    /// manager runs any more (the head restarted) are marked FAILED first.
    pub async fn start(
        cfg: ManagerConfig,
        gcs: GcsClient<AuthedChannel>,
    ) -> Result<JobManager, JobError> {
        let store = JobStore::new(gcs);
        let executables =
            ExecutableStore::open(cfg.state_dir.join("executables")).map_err(|e| {
                JobError::Internal(format!(
                    "cannot use {}: {e}",
                    cfg.state_dir.join("executables").display()
                ))
            })?;
        let manager = JobManager {
            inner: Arc::new(Inner {
                cfg,
                store,
                executables,
                running: Mutex::new(HashMap::new()),
            }),
        };
        for mut record in manager.inner.store.list().await? {
            if record.status.is_terminal() {
                continue;
            }
            tracing::warn!(job = %record.submission_id, status = %record.status, "a job was running when the head stopped; marking it failed");
            record.status = JobStatus::Failed;
            record.message = "the head restarted while the job was running".into();
            record.end_time = Some(miniray_common::time::now_ms());
            manager.inner.store.put(&record).await?;
        }
        Ok(manager)
    }

    pub fn store(&self) -> &JobStore {
        &self.inner.store
    }

    /// The uploaded driver executables.
    pub fn executables(&self) -> &ExecutableStore {
        &self.inner.executables
    }

    /// Checks and records a job, then starts it in the background; returns its record.
    pub async fn submit(&self, req: SubmitRequest) -> Result<JobRecord, JobError> {
        let id = match req.submission_id {
            Some(id) => {
                check_id(&id)?;
                id
            }
            None => format!("mrjob_{}", hex::encode(rand::random::<[u8; 8]>())),
        };
        if !is_hash(&req.executable) {
            return Err(JobError::InvalidArgument(format!(
                "executable {:?}: expected a blake3 hash (64 lowercase hex characters)",
                req.executable
            )));
        }
        if self.inner.executables.get(&req.executable).is_none() {
            return Err(JobError::NotFound(format!(
                "no executable {} on the head: upload it first (PUT /api/executables/{})",
                req.executable, req.executable
            )));
        }
        let entrypoint = std::iter::once(req.entrypoint.unwrap_or_else(|| req.executable.clone()))
            .chain(req.args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        let record = JobRecord::pending(id.clone(), entrypoint, req.executable, req.args);
        if !self.inner.store.add(&record).await? {
            return Err(JobError::AlreadyExists(id));
        }
        self.inner.running.lock().insert(
            id.clone(),
            Running {
                pid: None,
                stop_requested: false,
            },
        );
        let inner = self.inner.clone();
        let started = record.clone();
        tokio::spawn(async move { run(inner, started).await });
        tracing::info!(job = %id, entrypoint = %record.entrypoint, "job submitted");
        Ok(record)
    }

    pub async fn get(&self, id: &str) -> Result<JobRecord, JobError> {
        self.inner
            .store
            .get(id)
            .await?
            .ok_or_else(|| JobError::NotFound(format!("no job with submission id {id:?}")))
    }

    pub async fn list(&self) -> Result<Vec<JobRecord>, JobError> {
        Ok(self.inner.store.list().await?)
    }

    /// Asks a running job to stop: SIGTERM to its driver, SIGKILL after the grace period.
    /// False when the job had already ended.
    pub async fn stop(&self, id: &str) -> Result<bool, JobError> {
        let record = self.get(id).await?;
        if record.status.is_terminal() {
            return Ok(false);
        }
        let pid = {
            let mut running = self.inner.running.lock();
            match running.get_mut(id) {
                Some(r) => {
                    r.stop_requested = true;
                    r.pid
                }
                // Recorded as running by a manager that is gone: `start` marks those.
                None => return Ok(false),
            }
        };
        if let Some(pid) = pid {
            tracing::info!(job = %id, pid, "stopping job");
            signal(pid, libc::SIGTERM);
            let inner = self.inner.clone();
            let id = id.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(inner.cfg.stop_grace).await;
                let still = inner.running.lock().get(&id).and_then(|r| r.pid);
                if still == Some(pid) {
                    tracing::warn!(job = %id, pid, "job did not stop in time; killing it");
                    signal(pid, libc::SIGKILL);
                }
            });
        }
        Ok(true)
    }

    /// Deletes a finished job's record and output. False when there was none.
    pub async fn delete(&self, id: &str) -> Result<bool, JobError> {
        let Some(record) = self.inner.store.get(id).await? else {
            return Ok(false);
        };
        if !record.status.is_terminal() {
            return Err(JobError::NotFinished {
                id: id.to_string(),
                status: record.status,
            });
        }
        self.inner.store.delete(id).await?;
        let _ = std::fs::remove_dir_all(self.inner.cfg.state_dir.join("jobs").join(id));
        Ok(true)
    }

    /// Stops every running driver (SIGTERM, then SIGKILL after the grace period) and
    /// records them as FAILED: the head they ran on is stopping.
    pub async fn shutdown(&self) {
        let pids: Vec<u32> = self
            .inner
            .running
            .lock()
            .values()
            .filter_map(|r| r.pid)
            .collect();
        for pid in &pids {
            signal(*pid, libc::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + self.inner.cfg.stop_grace;
        while !self.inner.running.lock().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for pid in &pids {
            signal(*pid, libc::SIGKILL);
        }
    }
}

/// Submission ids become keys and folder names: letters, digits, `-`, `_` and `.` only.
fn check_id(id: &str) -> Result<(), JobError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(JobError::InvalidArgument(format!(
            "submission id {id:?}: use 1 to {MAX_ID_LEN} letters, digits, '-', '_' or '.', not starting with '.'"
        )))
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) on the driver this manager started; a stale pid only errs.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Runs one job to its end and records how it ended.
async fn run(inner: Arc<Inner>, mut record: JobRecord) {
    let id = record.submission_id.clone();
    let mut writer = LogWriter::new(inner.store.clone(), id.clone());
    let outcome = run_driver(&inner, &mut record, &mut writer).await;
    let stop_requested = inner
        .running
        .lock()
        .remove(&id)
        .is_some_and(|r| r.stop_requested);
    let (status, message, code) = match outcome {
        Ok(status) => {
            let code = status.code();
            let (job_status, message) = if stop_requested {
                (JobStatus::Stopped, "stopped by a user".to_string())
            } else if status.success() {
                (
                    JobStatus::Succeeded,
                    "the driver exited with status 0".to_string(),
                )
            } else {
                (JobStatus::Failed, describe_exit(status))
            };
            (job_status, message, code)
        }
        Err(why) => (JobStatus::Failed, why, None),
    };
    record.status = status;
    record.message = message;
    record.driver_exit_code = code;
    record.end_time = Some(miniray_common::time::now_ms());
    record.log_bytes_dropped = writer.dropped;
    if let Err(e) = inner.store.put(&record).await {
        tracing::error!(job = %id, error = %e.message(), "could not record how the job ended");
    }
    tracing::info!(job = %id, status = %record.status, message = %record.message, "job ended");
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("the driver exited with status {code}"),
        (None, Some(sig)) => format!("the driver was killed by signal {sig}"),
        (None, None) => "the driver ended".to_string(),
    }
}

/// Fetches and starts the driver, records it RUNNING, keeps its output until it exits.
async fn run_driver(
    inner: &Arc<Inner>,
    record: &mut JobRecord,
    writer: &mut LogWriter,
) -> Result<std::process::ExitStatus, String> {
    let id = record.submission_id.clone();
    let exe = inner.executables.get(&record.executable).ok_or_else(|| {
        format!(
            "the driver executable {} is gone from the head",
            record.executable
        )
    })?;
    let work_dir = inner.cfg.state_dir.join("jobs").join(&id);
    std::fs::create_dir_all(&work_dir)
        .map_err(|e| format!("could not create {}: {e}", work_dir.display()))?;
    let (reader, pipe) =
        std::io::pipe().map_err(|e| format!("could not make the output pipe: {e}"))?;
    let pipe_err = pipe
        .try_clone()
        .map_err(|e| format!("could not make the output pipe: {e}"))?;
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.args(&record.args)
        .current_dir(&work_dir)
        .env(env::ADDRESS, &inner.cfg.gcs_address)
        .env(env::TOKEN, &inner.cfg.token)
        .env("MINIRAY_SUBMISSION_ID", &id)
        .env_remove(env::ROLE)
        .stdin(Stdio::null())
        .stdout(Stdio::from(pipe))
        .stderr(Stdio::from(pipe_err));
    for (k, v) in &inner.cfg.driver_env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut child = spawn_retrying(&mut cmd, &exe)?;
    // `cmd` holds the write ends until dropped: the pipe closes only when the driver (and
    // whatever it started with them) is done.
    drop(cmd);
    let pid = child.id();
    if let Some(r) = inner.running.lock().get_mut(&id) {
        r.pid = pid;
    }
    record.status = JobStatus::Running;
    record.message = "the driver is running".into();
    inner
        .store
        .put(record)
        .await
        .map_err(|e| format!("could not record the job running: {}", e.message()))?;
    tracing::info!(job = %id, pid = pid.unwrap_or(0), "job running");
    let rx = logs::read_pipe(reader);
    let mut pump = std::pin::pin!(logs::pump(rx, writer));
    let mut pumped = false;
    let status = tokio::select! {
        status = child.wait() => status,
        () = &mut pump => {
            pumped = true;
            child.wait().await
        }
    }
    .map_err(|e| format!("could not wait for the driver: {e}"))?;
    if !pumped {
        // Whatever the driver left running with the pipe gets a moment to finish writing.
        let _ = tokio::time::timeout(OUTPUT_DRAIN, pump).await;
    }
    Ok(status)
}

/// Spawns `cmd`; a text file busy (the cache just renamed the file in) is retried briefly.
fn spawn_retrying(
    cmd: &mut tokio::process::Command,
    exe: &Path,
) -> Result<tokio::process::Child, String> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Ok(child) => return Ok(child),
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("could not start {}: {e}", exe.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submission_ids_are_checked() {
        for good in ["a", "job-1", "x_y.z", &"a".repeat(MAX_ID_LEN)] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "a b",
            "ü",
            &"a".repeat(MAX_ID_LEN + 1),
        ] {
            assert!(
                matches!(check_id(bad), Err(JobError::InvalidArgument(_))),
                "{bad}"
            );
        }
    }
}
