//! The autoscaler: every round it reads the cluster's resource state from the GCS, asks the
//! pure [`planner`] what to launch and what to remove, and carries that out through a
//! [`provider::NodeProvider`].
//!
//! Layering: above `proto` and `common` only; it talks to the GCS and raylets over gRPC
//! like any other client.

pub mod autoscaler;
pub mod clients;
pub mod config;
pub mod instances;
pub mod local;
pub mod planner;
pub mod provider;
