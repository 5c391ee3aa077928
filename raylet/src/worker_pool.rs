//! Worker processes of this node: start, register, lease out, idle, stop, reap.
//!
//! A worker is the job's executable (cached by hash, see [`ExecutableCache`]) started with
//! no arguments, stdin closed, stdout/stderr to `<session_dir>/logs/worker-<id>.out|.err`,
//! and this environment on top of the raylet's own: the job's `env` map, then
//! `MINIRAY_ROLE=worker`, `MINIRAY_GCS_ADDRESS`, `MINIRAY_RAYLET_ADDRESS` (host:port of this
//! raylet), `MINIRAY_NODE_ID`, `MINIRAY_NODE_IP` (the advertised host, which the worker
//! binds and advertises), `MINIRAY_WORKER_ID` (fresh, chosen here), `MINIRAY_JOB_ID`
//! (hex) and `MINIRAY_TOKEN`. It must call `RegisterWorker(worker_id, port, pid, job_id)`
//! once its CoreWorker server listens on `<advertised host>:port`.
//!
//! Invariants:
//! - Every worker process this pool spawned has exactly one entry in `workers` from spawn
//!   until its reaper task has collected its exit status; the reaper task owns the
//!   `Child` and is the only place that signals the process, so a signal can never reach a
//!   recycled pid.
//! - A worker is in exactly one state: `Starting` (spawned, not yet registered), `Idle`
//!   (registered, in no lease) or `Leased`. Only `Idle` workers are handed out, and only to
//!   leases of their own job.
//! - A `Starting` worker that has not called `RegisterWorker` within `start_timeout` is
//!   killed; whoever waited for it gets an error naming its log files.
//! - When a worker exits for any reason the pool sends its id and exit status on the exit
//!   channel, so the raylet frees the resources of the lease it held (and tells the GCS).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use miniray_common::auth::{AuthedChannel, connect_lazy};
use miniray_common::config::env;
use miniray_common::{ErrorCode, JobId, NodeId, WorkerId};
use miniray_proto::core_worker_client::CoreWorkerClient;
use miniray_proto::gcs_client::GcsClient;
use miniray_proto::{ExitRequest, GetJobRequest, JobInfo};
use tokio::sync::{mpsc, oneshot, watch};

use crate::executable_cache::{ExecutableCache, ExecutableError};
use crate::task_outcomes::{self, ExitRecord, ExitedWorkers, Outcomes};

/// Time a worker gets to exit after the Exit RPC or SIGTERM before it is SIGKILLed.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Workers that die before registering are replaced this many times per lease request.
const START_ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("job {0} is unknown to the gcs")]
    UnknownJob(JobId),
    #[error("looking up job {job}: {status}")]
    Gcs { job: JobId, status: tonic::Status },
    #[error(transparent)]
    Executable(#[from] ExecutableError),
    #[error("cannot spawn worker from {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create worker log file {path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("worker {worker} did not register within {timeout:?}; see {log}")]
    StartTimeout {
        worker: WorkerId,
        timeout: Duration,
        log: String,
    },
    #[error("worker {worker} exited before registering ({status}); see {log}")]
    DiedAtStart {
        worker: WorkerId,
        status: String,
        log: String,
    },
    #[error("the raylet is shutting down")]
    ShuttingDown,
}

impl PoolError {
    pub fn code(&self) -> ErrorCode {
        match self {
            PoolError::UnknownJob(_) => ErrorCode::NotFound,
            PoolError::Gcs { status, .. } => ErrorCode::of_status(status),
            PoolError::Executable(e) => e.code(),
            PoolError::Spawn { .. } | PoolError::Log { .. } => ErrorCode::Internal,
            PoolError::StartTimeout { .. }
            | PoolError::DiedAtStart { .. }
            | PoolError::ShuttingDown => ErrorCode::Unavailable,
        }
    }

    pub fn to_status(&self) -> tonic::Status {
        self.code().status(self.to_string())
    }
}

/// Why `RegisterWorker` was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("worker {0} was not started by this raylet")]
    Unknown(WorkerId),
    #[error("worker {worker} belongs to job {expected}, not {got}")]
    WrongJob {
        worker: WorkerId,
        expected: JobId,
        got: JobId,
    },
    #[error("worker {0} is already registered")]
    AlreadyRegistered(WorkerId),
}

/// A registered worker handed to a lease.
#[derive(Debug, Clone)]
pub struct LeasedWorker {
    pub worker_id: WorkerId,
    pub port: u16,
}

/// What the waiter for a starting worker learns.
#[derive(Debug)]
enum StartEvent {
    Registered(u16),
    Exited(String),
    TimedOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Idle(Instant),
    Leased,
    Stopping,
}

#[derive(Debug, Clone, Copy)]
enum Signal {
    Term,
    Kill,
}

struct Worker {
    job_id: JobId,
    state: State,
    port: Option<u16>,
    err_log: PathBuf,
    /// Present while `Starting` and someone waits for the registration.
    start_tx: Option<oneshot::Sender<StartEvent>>,
    signal_tx: mpsc::UnboundedSender<Signal>,
    /// Becomes true once the process has been reaped.
    exited: watch::Receiver<bool>,
}

/// Settings of the pool, fixed at raylet start.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub node_id: NodeId,
    pub gcs_address: String,
    pub raylet_address: String,
    /// The node IP: workers bind it and are reachable on it (their registered port is on
    /// this host); given to them as `MINIRAY_NODE_IP`.
    pub worker_host: String,
    pub token: String,
    pub log_dir: PathBuf,
    pub start_timeout: Duration,
    pub idle_timeout: Duration,
    /// Idle workers kept per job before the extras start timing out.
    pub idle_soft_limit: usize,
    /// Folder of the workers' reply journals (the plasma segment's, so in memory).
    pub journal_dir: PathBuf,
    /// Name prefix of this node's journals (the plasma segment's name).
    pub journal_name: String,
}

/// Counts for heartbeats and stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounts {
    pub total: u32,
    pub idle: u32,
    pub leased: u32,
    pub starting: u32,
}

pub struct WorkerPool {
    cfg: PoolConfig,
    cache: ExecutableCache,
    gcs: GcsClient<AuthedChannel>,
    workers: parking_lot::Mutex<HashMap<WorkerId, Worker>>,
    jobs: parking_lot::Mutex<HashMap<JobId, JobInfo>>,
    /// Every exited worker with its exit status ("signal: 9 (SIGKILL)", "exit status: 1").
    exits: mpsc::UnboundedSender<(WorkerId, String)>,
    /// What exited workers recorded about their tasks.
    exited: ExitedWorkers,
    shutting_down: AtomicBool,
}

impl WorkerPool {
    /// A pool and the channel on which it reports the id and exit status of every worker
    /// that exits.
    pub fn new(
        cfg: PoolConfig,
        cache: ExecutableCache,
        gcs: GcsClient<AuthedChannel>,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<(WorkerId, String)>) {
        let (exits, rx) = mpsc::unbounded_channel();
        let pool = Arc::new(Self {
            cfg,
            cache,
            gcs,
            workers: parking_lot::Mutex::new(HashMap::new()),
            jobs: parking_lot::Mutex::new(HashMap::new()),
            exits,
            exited: ExitedWorkers::default(),
            shutting_down: AtomicBool::new(false),
        });
        (pool, rx)
    }

    pub fn counts(&self) -> PoolCounts {
        let workers = self.workers.lock();
        let mut c = PoolCounts::default();
        for w in workers.values() {
            c.total += 1;
            match w.state {
                State::Starting => c.starting += 1,
                State::Idle(_) => c.idle += 1,
                State::Leased => c.leased += 1,
                State::Stopping => {}
            }
        }
        c
    }

    /// A registered worker of `job` for a lease: an idle one, else a freshly started one.
    /// Dropping the future leaves any worker it started to become idle when it registers.
    pub async fn acquire(self: &Arc<Self>, job: JobId) -> Result<LeasedWorker, PoolError> {
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            if let Some(w) = self.take_idle(job) {
                return Ok(w);
            }
            let (worker_id, rx, log) = self.spawn(job).await?;
            match rx.await {
                Ok(StartEvent::Registered(port)) => return Ok(LeasedWorker { worker_id, port }),
                Ok(StartEvent::TimedOut) => {
                    return Err(PoolError::StartTimeout {
                        worker: worker_id,
                        timeout: self.cfg.start_timeout,
                        log,
                    });
                }
                Ok(StartEvent::Exited(status)) => {
                    tracing::warn!(worker_id = %worker_id, %status, log = %log, "worker exited before registering");
                    last_err = Some(PoolError::DiedAtStart {
                        worker: worker_id,
                        status,
                        log,
                    });
                }
                Err(_) => return Err(PoolError::ShuttingDown),
            }
            if self.shutting_down.load(Ordering::SeqCst) {
                return Err(PoolError::ShuttingDown);
            }
        }
        Err(last_err.unwrap_or(PoolError::ShuttingDown))
    }

    fn take_idle(&self, job: JobId) -> Option<LeasedWorker> {
        let mut workers = self.workers.lock();
        // Most recently idle first: its caches are warmest and the oldest ones time out.
        let (id, w) = workers
            .iter_mut()
            .filter(|(_, w)| w.job_id == job && matches!(w.state, State::Idle(_)))
            .max_by_key(|(_, w)| match w.state {
                State::Idle(since) => since,
                _ => Instant::now(),
            })?;
        w.state = State::Leased;
        Some(LeasedWorker {
            worker_id: *id,
            port: w.port?,
        })
    }

    async fn job_info(&self, job: JobId) -> Result<JobInfo, PoolError> {
        if let Some(info) = self.jobs.lock().get(&job) {
            return Ok(info.clone());
        }
        let mut gcs = self.gcs.clone();
        let reply = gcs
            .get_job(GetJobRequest {
                job_id: job.to_vec(),
            })
            .await
            .map_err(|status| {
                if status.code() == tonic::Code::NotFound {
                    PoolError::UnknownJob(job)
                } else {
                    PoolError::Gcs { job, status }
                }
            })?
            .into_inner();
        let info = reply.job.ok_or(PoolError::UnknownJob(job))?;
        self.jobs.lock().insert(job, info.clone());
        Ok(info)
    }

    /// Starts one worker process of `job`; the receiver tells how its start ends.
    async fn spawn(
        self: &Arc<Self>,
        job: JobId,
    ) -> Result<(WorkerId, oneshot::Receiver<StartEvent>, String), PoolError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(PoolError::ShuttingDown);
        }
        let info = self.job_info(job).await?;
        let mut gcs = self.gcs.clone();
        let exe = self.cache.ensure(&mut gcs, &info.executable_hash).await?;
        let worker_id = WorkerId::random();
        tokio::fs::create_dir_all(&self.cfg.log_dir)
            .await
            .map_err(|source| PoolError::Log {
                path: self.cfg.log_dir.clone(),
                source,
            })?;
        let out_log = self.cfg.log_dir.join(format!("worker-{worker_id}.out"));
        let err_log = self.cfg.log_dir.join(format!("worker-{worker_id}.err"));
        let [stdout, stderr] = create_logs([out_log, err_log.clone()]).await?;
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .envs(&info.env)
            .env(env::ROLE, "worker")
            .env(env::GCS_ADDRESS, &self.cfg.gcs_address)
            .env(env::RAYLET_ADDRESS, &self.cfg.raylet_address)
            .env(env::NODE_ID, self.cfg.node_id.hex())
            // The node IP: what the worker binds and advertises.
            .env(env::NODE_IP, &self.cfg.worker_host)
            .env(env::WORKER_ID, worker_id.hex())
            .env(env::JOB_ID, job.hex())
            .env(env::TOKEN, &self.cfg.token)
            .env(env::REPLY_JOURNAL, self.journal_prefix(worker_id));
        // Workers use this raylet's TLS files, or none (whatever the job's env says).
        for (name, value) in miniray_common::tls::child_env() {
            match value {
                Some(path) => cmd.env(name, path),
                None => cmd.env_remove(name),
            };
        }
        // The entry exists before the process does: a worker that starts and registers
        // while this thread is still descheduled after the fork must be found.
        let (start_tx, start_rx) = oneshot::channel();
        let (signal_tx, signal_rx) = mpsc::unbounded_channel();
        let (exited_tx, exited) = watch::channel(false);
        self.workers.lock().insert(
            worker_id,
            Worker {
                job_id: job,
                state: State::Starting,
                port: None,
                err_log: err_log.clone(),
                start_tx: Some(start_tx),
                signal_tx,
                exited,
            },
        );
        // From the entry on, the start runs in a task of its own: a caller that goes away
        // (its lease request cancelled) must not drop a process being spawned, whose entry
        // would then stay with nothing to reap it or remove it.
        let launch = Arc::clone(self).launch(
            worker_id,
            job,
            cmd,
            info.executable_hash,
            exe.clone(),
            signal_rx,
            exited_tx,
        );
        tokio::spawn(launch).await.map_err(|e| PoolError::Spawn {
            path: exe,
            source: std::io::Error::other(format!("the start task failed: {e}")),
        })??;
        Ok((worker_id, start_rx, err_log.display().to_string()))
    }

    /// Spawns the process of the worker whose entry `spawn` made, then hands it to its
    /// reaper and arms its start deadline; on failure, removes the entry.
    #[allow(clippy::too_many_arguments)]
    async fn launch(
        self: Arc<Self>,
        worker_id: WorkerId,
        job: JobId,
        cmd: tokio::process::Command,
        executable_hash: String,
        exe: PathBuf,
        signal_rx: mpsc::UnboundedReceiver<Signal>,
        exited_tx: watch::Sender<bool>,
    ) -> Result<(), PoolError> {
        let child = match self.spawn_refetching(cmd, &executable_hash).await {
            Ok(child) => child,
            Err(source) => {
                self.workers.lock().remove(&worker_id);
                return Err(PoolError::Spawn { path: exe, source });
            }
        };
        let pid = child.id().unwrap_or(0);
        tracing::info!(worker_id = %worker_id, job_id = %job, pid, exe = %exe.display(), "started worker");
        // `shutdown` sets the flag before it lists the workers to stop, so a worker spawned
        // concurrently is either in that list or stopped here.
        if self.shutting_down.load(Ordering::SeqCst) {
            self.stop(worker_id);
        }
        tokio::spawn(reap(
            Arc::clone(&self),
            worker_id,
            child,
            signal_rx,
            exited_tx,
        ));
        let timeout = self.cfg.start_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            self.start_deadline_passed(worker_id);
        });
        Ok(())
    }

    fn start_deadline_passed(&self, worker_id: WorkerId) {
        let mut workers = self.workers.lock();
        let Some(w) = workers.get_mut(&worker_id) else {
            return;
        };
        if w.state != State::Starting {
            return;
        }
        tracing::warn!(worker_id = %worker_id, log = %w.err_log.display(), "worker did not register in time; killing it");
        w.state = State::Stopping;
        if let Some(tx) = w.start_tx.take() {
            let _ = tx.send(StartEvent::TimedOut);
        }
        let _ = w.signal_tx.send(Signal::Kill);
    }

    /// A worker announces its CoreWorker port. It then goes to whoever waits for it, or to
    /// the idle pool.
    pub fn register(
        &self,
        worker_id: WorkerId,
        job: JobId,
        port: u16,
    ) -> Result<(), RegisterError> {
        let mut workers = self.workers.lock();
        let w = workers
            .get_mut(&worker_id)
            .ok_or(RegisterError::Unknown(worker_id))?;
        if w.job_id != job {
            return Err(RegisterError::WrongJob {
                worker: worker_id,
                expected: w.job_id,
                got: job,
            });
        }
        if w.state != State::Starting {
            return Err(RegisterError::AlreadyRegistered(worker_id));
        }
        w.port = Some(port);
        let handed = match w.start_tx.take() {
            Some(tx) => tx.send(StartEvent::Registered(port)).is_ok(),
            None => false,
        };
        w.state = if handed {
            State::Leased
        } else {
            State::Idle(Instant::now())
        };
        tracing::info!(worker_id = %worker_id, port, leased = handed, "worker registered");
        Ok(())
    }

    /// A lease ended: the worker goes back to the idle pool, or is stopped if `disconnect`.
    pub fn release(self: &Arc<Self>, worker_id: WorkerId, disconnect: bool) {
        let mut workers = self.workers.lock();
        let Some(w) = workers.get_mut(&worker_id) else {
            return;
        };
        if w.state != State::Leased {
            return;
        }
        if disconnect || self.shutting_down.load(Ordering::SeqCst) {
            drop(workers);
            self.stop(worker_id);
        } else {
            w.state = State::Idle(Instant::now());
        }
    }

    /// Asks a worker to exit (Exit RPC, else SIGTERM), SIGKILLs it after a grace period.
    pub fn stop(self: &Arc<Self>, worker_id: WorkerId) {
        let (port, signal_tx, mut exited) = {
            let mut workers = self.workers.lock();
            let Some(w) = workers.get_mut(&worker_id) else {
                return;
            };
            if w.state == State::Stopping {
                return;
            }
            w.state = State::Stopping;
            if let Some(tx) = w.start_tx.take() {
                let _ = tx.send(StartEvent::Exited("stopped by the raylet".into()));
            }
            (w.port, w.signal_tx.clone(), w.exited.clone())
        };
        let address = port.map(|p| miniray_common::net::host_port(&self.cfg.worker_host, p));
        let token = self.cfg.token.clone();
        tokio::spawn(async move {
            let asked = match address {
                Some(addr) => ask_exit(&addr, &token).await,
                None => false,
            };
            if !asked {
                let _ = signal_tx.send(Signal::Term);
            }
            let done = tokio::time::timeout(STOP_GRACE, exited.wait_for(|d| *d)).await;
            if done.is_err() {
                tracing::warn!(worker_id = %worker_id, "worker ignored the request to exit; killing it");
                let _ = signal_tx.send(Signal::Kill);
            }
        });
    }

    /// The records of the jobs this node started workers for and has not seen finish, for a
    /// GCS that lost its job table (see `heartbeat.rs`).
    pub fn job_records(&self) -> Vec<JobInfo> {
        self.jobs.lock().values().cloned().collect()
    }

    /// Jobs that have a worker process on this node, or whose record it keeps (their
    /// workers may all have exited): the heartbeat asks the GCS whether they finished, so
    /// that both are forgotten.
    pub fn jobs_present(&self) -> Vec<JobId> {
        let mut jobs: Vec<JobId> = self.workers.lock().values().map(|w| w.job_id).collect();
        jobs.extend(self.jobs.lock().keys().copied());
        jobs.sort();
        jobs.dedup();
        jobs
    }

    /// Stops every worker of a finished job, leased or not, and forgets the job.
    pub fn stop_job(self: &Arc<Self>, job: JobId) {
        let ids: Vec<WorkerId> = {
            let workers = self.workers.lock();
            workers
                .iter()
                .filter(|(_, w)| w.job_id == job)
                .map(|(id, _)| *id)
                .collect()
        };
        self.forget_job(job);
        for id in ids {
            self.stop(id);
        }
    }

    /// Drops a finished job's record, and releases its cached executable when no other job
    /// known here uses it (kept within the cache's budget for unused ones). Released under
    /// the `jobs` lock: a new job of an executable is in `jobs` before its first spawn
    /// looks for the file, so no file a known job needs is removed, and a spawn that
    /// finds its file gone (another raylet's) fetches it again.
    fn forget_job(&self, job: JobId) {
        let mut jobs = self.jobs.lock();
        let Some(info) = jobs.remove(&job) else {
            return;
        };
        let hash = info.executable_hash;
        let in_use = |h: &str| jobs.values().any(|j| j.executable_hash == h);
        if hash.is_empty() || in_use(&hash) {
            return;
        }
        if let Err(e) = self.cache.release(&hash, in_use) {
            tracing::warn!(job_id = %job, error = %e, "cannot release the cached executable of a finished job");
        }
    }

    /// Stops idle workers beyond the per-job soft limit that have idled past the timeout.
    pub fn reap_idle(self: &Arc<Self>) {
        let now = Instant::now();
        let mut victims = Vec::new();
        {
            let workers = self.workers.lock();
            let mut idle_by_job: HashMap<JobId, Vec<(Instant, WorkerId)>> = HashMap::new();
            for (id, w) in workers.iter() {
                if let State::Idle(since) = w.state {
                    idle_by_job.entry(w.job_id).or_default().push((since, *id));
                }
            }
            for (_, mut idle) in idle_by_job {
                if idle.len() <= self.cfg.idle_soft_limit {
                    continue;
                }
                idle.sort();
                let extra = idle.len() - self.cfg.idle_soft_limit;
                victims.extend(
                    idle.into_iter()
                        .take(extra)
                        .filter(|(since, _)| now.duration_since(*since) >= self.cfg.idle_timeout)
                        .map(|(_, id)| id),
                );
            }
        }
        for id in victims {
            tracing::info!(worker_id = %id, "stopping idle worker above the soft limit");
            self.stop(id);
        }
    }

    /// Stops every worker and waits until all are reaped (SIGKILL after the grace period).
    pub async fn shutdown(self: &Arc<Self>) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let ids: Vec<WorkerId> = self.workers.lock().keys().copied().collect();
        let mut waits = Vec::new();
        for id in ids {
            if let Some(w) = self.workers.lock().get(&id) {
                waits.push((w.exited.clone(), w.signal_tx.clone()));
            }
            self.stop(id);
        }
        // Waited for together: one at a time, thousands of workers slow to exit (a
        // stalled kernel) would keep the raylet past its own stop deadline, and it would
        // be killed before it removed anything below.
        futures::future::join_all(waits.into_iter().map(|(mut exited, signal_tx)| async move {
            if tokio::time::timeout(STOP_GRACE * 2, exited.wait_for(|d| *d))
                .await
                .is_err()
            {
                let _ = signal_tx.send(Signal::Kill);
                let _ = tokio::time::timeout(STOP_GRACE, exited.wait_for(|d| *d)).await;
            }
        }))
        .await;
        // Journals of workers that were never reaped (none, unless a kill failed).
        task_outcomes::remove_all(
            &self.cfg.journal_dir,
            &format!("{}-journal-", self.cfg.journal_name),
        );
    }

    fn journal_prefix(&self, worker_id: WorkerId) -> PathBuf {
        task_outcomes::journal_prefix(&self.cfg.journal_dir, &self.cfg.journal_name, worker_id)
    }

    /// What `worker_id` recorded about `task_ids` before it exited, waiting up to `wait`
    /// for it to exit if it still runs. `None` when that is not known.
    pub async fn task_outcomes(
        &self,
        worker_id: WorkerId,
        task_ids: &[Vec<u8>],
        wait: Duration,
    ) -> Option<Outcomes> {
        let exited = self
            .workers
            .lock()
            .get(&worker_id)
            .map(|w| w.exited.clone());
        if let Some(mut exited) = exited {
            // Cannot fail: the reaper sends `true` before dropping the sender.
            let _ = tokio::time::timeout(wait, exited.wait_for(|d| *d)).await;
        }
        self.exited.outcomes(worker_id, task_ids)
    }

    fn on_exit(&self, worker_id: WorkerId, status: String) {
        // Read before anyone waiting for the exit is woken (see `task_outcomes.rs`).
        let account = task_outcomes::collect(&self.journal_prefix(worker_id));
        self.exited.insert(
            worker_id,
            ExitRecord {
                status: status.clone(),
                account,
            },
        );
        let removed = self.workers.lock().remove(&worker_id);
        if let Some(mut w) = removed {
            tracing::info!(worker_id = %worker_id, %status, state = ?w.state, "worker exited");
            if let Some(tx) = w.start_tx.take() {
                let _ = tx.send(StartEvent::Exited(status.clone()));
            }
        }
        let _ = self.exits.send((worker_id, status));
    }
}

impl WorkerPool {
    /// Spawns `cmd`, the cached executable `hash`. When the file is gone (another raylet
    /// sharing the cache folder removed it after `ensure`), fetches it again and retries.
    async fn spawn_refetching(
        &self,
        mut cmd: tokio::process::Command,
        hash: &str,
    ) -> std::io::Result<tokio::process::Child> {
        for _ in 1..START_ATTEMPTS {
            let spawned;
            (cmd, spawned) = spawn_retrying_busy(cmd).await?;
            match spawned {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::info!(
                        hash,
                        "cached executable vanished before the spawn; fetching it again"
                    );
                    let mut gcs = self.gcs.clone();
                    self.cache
                        .ensure(&mut gcs, hash)
                        .await
                        .map_err(std::io::Error::other)?;
                }
                other => return other,
            }
        }
        spawn_retrying_busy(cmd).await?.1
    }
}

/// Owns the child: delivers signals to it and collects its exit status.
async fn reap(
    pool: Arc<WorkerPool>,
    worker_id: WorkerId,
    mut child: tokio::process::Child,
    mut signals: mpsc::UnboundedReceiver<Signal>,
    exited: watch::Sender<bool>,
) {
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            Some(sig) = signals.recv() => match sig {
                Signal::Kill => { let _ = child.start_kill(); }
                Signal::Term => {
                    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                        // SAFETY: kill(2) has no memory-safety preconditions; the child is
                        // not reaped yet (only this task waits for it), so the pid is ours.
                        unsafe { libc::kill(pid, libc::SIGTERM) };
                    }
                }
            },
        }
    };
    let status = match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("wait failed: {e}"),
    };
    pool.on_exit(worker_id, status);
    let _ = exited.send(true);
}

async fn ask_exit(address: &str, token: &str) -> bool {
    let Ok(channel) = connect_lazy(address, token) else {
        return false;
    };
    let mut client = CoreWorkerClient::new(channel);
    matches!(
        tokio::time::timeout(Duration::from_secs(1), client.exit(ExitRequest {})).await,
        Ok(Ok(_))
    )
}

/// Starts `cmd`, retrying briefly on ETXTBSY (a freshly written executable can still be
/// open for writing in a child forked concurrently by another thread, until that child
/// execs), and hands `cmd` back for another try.
///
/// Runs on the blocking pool: starting a process can block in the kernel for long (the
/// exec waits on locks of the executable's mapping, which thousands of workers share),
/// and a runtime thread blocked there would stall heartbeats and RPCs. Err only when the
/// blocking pool could not run it (the runtime is shutting down).
async fn spawn_retrying_busy(
    mut cmd: tokio::process::Command,
) -> std::io::Result<(
    tokio::process::Command,
    std::io::Result<tokio::process::Child>,
)> {
    tokio::task::spawn_blocking(move || {
        let mut delay = Duration::from_millis(10);
        for _ in 0..8 {
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(delay);
                    delay *= 2;
                }
                other => return (cmd, other),
            }
        }
        let last = cmd.spawn();
        (cmd, last)
    })
    .await
    .map_err(std::io::Error::other)
}

/// Creates a worker's log files on the blocking pool (file creation can block as long as
/// a spawn; see [`spawn_retrying_busy`]).
async fn create_logs(paths: [PathBuf; 2]) -> Result<[std::fs::File; 2], PoolError> {
    let dir = paths[0].parent().map(Path::to_path_buf).unwrap_or_default();
    tokio::task::spawn_blocking(move || {
        let create = |path: &PathBuf| {
            std::fs::File::create(path).map_err(|source| PoolError::Log {
                path: path.clone(),
                source,
            })
        };
        Ok([create(&paths[0])?, create(&paths[1])?])
    })
    .await
    .unwrap_or_else(|join| {
        Err(PoolError::Log {
            path: dir,
            source: std::io::Error::other(join),
        })
    })
}
