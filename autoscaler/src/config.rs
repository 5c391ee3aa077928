//! The autoscaling config: one YAML file. Ray's spellings are accepted
//! (`available_node_types`, `idle_timeout_minutes`, `node_config`, `head_node_type`), so a
//! Ray user's file needs only its provider section changed.

use std::collections::BTreeMap;
use std::time::Duration;

use miniray_common::Resources;

/// A validated config: every invariant below holds once `parse` returns it.
///
/// Invariants: `head_node_type` names an entry of `node_types`; every type's
/// `min_workers <= max_workers`; each type's `max_workers` and the sum of all `min_workers`
/// are at most the global `max_workers`; `upscaling_speed > 0`.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscalingConfig {
    pub cluster_name: String,
    /// Worker nodes of all types together; the head is not counted.
    pub max_workers: u32,
    pub upscaling_speed: f64,
    /// `idle_timeout_s`, or `idle_timeout_minutes` × 60; a type may override it.
    pub idle_timeout: Duration,
    /// A launched node that has not joined after this long is terminated and replaced
    /// (`node_launch_timeout_s`, default 300 s).
    pub node_launch_timeout: Duration,
    pub provider: ProviderConfig,
    pub head_node_type: String,
    pub node_types: BTreeMap<String, NodeTypeConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeTypeConfig {
    pub resources: Resources,
    pub min_workers: u32,
    pub max_workers: u32,
    /// This type's own idle timeout, if it overrides the global one.
    pub idle_timeout: Option<Duration>,
    /// Provider-specific settings (a Pod template for Kubernetes), kept as given.
    pub node_config: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProviderConfig {
    /// Each worker node a raylet process on this machine.
    Local,
    /// Worker nodes as Pods; the settings are the provider section as given.
    Kubernetes(serde_json::Value),
}
