//! The Strata broker library: configuration, the partition log, the topic
//! catalog, the broker domain service and its gRPC/HTTP front ends.
//!
//! `main.rs` only parses flags and calls [`start`]; tests call it in-process.

pub mod log;
