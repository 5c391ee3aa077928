//! Placeholder until k8s-sim-api is merged (sim-api owns this file).
pub mod kubelet;
