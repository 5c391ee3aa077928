//! The head's HTTP API, on the dashboard port (8265 by default): job submission in the
//! shape of Ray's Job Submission API.
//!
//! - [`jobs`]: job records and logs kept in the GCS's key-value store (so a head restarted on
//!   Redis still lists past jobs and their logs), and the manager that runs each job's
//!   driver as a child process of this daemon.
//! - [`server`]: the HTTP routes, each behind the cluster token (`Authorization: Bearer`).
//!
//! - [`executables`]: the driver executables users uploaded, by content.
//! - `pages`: the web pages (cluster, jobs, actors, tasks, node logs), rendered here.
//! - [`metrics`]: the dashboard's own metrics (jobs by state) and the cluster's Prometheus
//!   service discovery.
//!
//! Layering: above `miniray-proto` and `miniray-common`, below `miniray-cli`, which runs it
//! as `miniray dashboard` beside the head's GCS.

pub mod executables;
pub mod jobs;
pub mod metrics;
mod pages;
pub mod server;

pub use jobs::{JobError, JobManager, JobRecord, JobStatus, ManagerConfig, SubmitRequest};
pub use server::{ServeOptions, serve};
