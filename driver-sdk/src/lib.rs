//! miniray
