//! miniray-raylet
