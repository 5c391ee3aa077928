//! miniray on Kubernetes.
//!
//! - [`provider`]: the autoscaler's `NodeProvider` for worker Pods (one Pod per worker node).
//! - [`deploy`]: `miniray up` / `miniray down`: the head Deployment, its Service, RBAC, the
//!   token Secret, the config ConfigMap and an optional Redis, applied idempotently.
//! - [`sim`]: the Kubernetes API simulator (`miniray k8s simulate`): the part of the API the
//!   two above use, served over HTTPS on loopback, with a kubelet that runs each Pod's
//!   command as a real process in a network namespace of its own.
//!
//! Shared by all three: [`config`] (the `provider` section of the autoscaling config),
//! [`names`] (labels, object names, mount paths) and [`template`] (Pod template merging).
//!
//! Layering: above `common` and `autoscaler`; below `cli`. Everything talks to the API server
//! through kube-rs, the simulator's controllers included, so the wire is the only part the
//! simulator stands in for.

pub mod config;
pub mod deploy;
pub mod names;
pub mod provider;
pub mod sim;
pub mod template;
