//! miniray-plasma
