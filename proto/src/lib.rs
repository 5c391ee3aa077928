//! The wire contract between miniray processes: every service and message, generated from
//! `proto/*.proto`. Nothing else lives here.

#![allow(clippy::large_enum_variant, clippy::enum_variant_names)]

tonic::include_proto!("miniray");

/// Metadata key that carries the cluster token on every RPC.
pub const TOKEN_METADATA_KEY: &str = "x-miniray-token";
