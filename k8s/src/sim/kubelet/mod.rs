//! The simulated kubelet.
pub mod env;
pub mod network;
pub mod probes;
pub mod process;
pub mod sources;
pub mod status;
pub mod volumes;
