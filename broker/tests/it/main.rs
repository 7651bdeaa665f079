//! Integration tests of the broker: the real server on 127.0.0.1:0 spoken to
//! over real gRPC with the generated client, in-process and as a child
//! process killed with SIGKILL.

mod api;
mod cluster;
mod hardening;
mod harness;
mod membership;
mod metrics;
mod process;
mod queue;
mod quotas;
mod replication;
mod tier;
