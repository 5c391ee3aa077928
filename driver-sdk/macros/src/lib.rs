//! miniray-macros
