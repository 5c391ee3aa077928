//! miniray-gcs
