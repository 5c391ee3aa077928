//! Jobs: a driver executable run on the head as a driver of the cluster.
//!
//! Invariants:
//! - A job's record is written to the GCS before its driver starts, under a submission id
//!   added only if absent, so two submissions with one id cannot both run.
//! - A record's status only moves forward: PENDING → RUNNING → one of SUCCEEDED, FAILED,
//!   STOPPED; a terminal record is never changed again except by deletion.
//! - A job whose record says PENDING or RUNNING but that no manager of this process runs
//!   (the head restarted) is marked FAILED when the manager starts, with that reason.
//! - A job's output is kept in the GCS in order, in chunks of at most `LOG_CHUNK_BYTES`,
//!   and at most `MAX_LOG_CHUNKS` of them: the oldest go first and the record counts the
//!   bytes dropped.

mod logs;
mod manager;
mod record;
mod store;

pub use manager::{JobError, JobManager, ManagerConfig, SubmitRequest};
pub use record::{JobRecord, JobStatus};
pub use store::JobStore;
