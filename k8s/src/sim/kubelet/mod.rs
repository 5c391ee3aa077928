//! The simulated kubelet.
pub mod env;
pub mod network;
pub mod process;
pub mod sources;
pub mod volumes;
