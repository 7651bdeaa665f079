//! Strata's Kubernetes operator: the CRD types (`BrokerCluster`, `Tenant`,
//! `Topic`, `Queue`, `ConsumerGroup` in `strata.dev/v1alpha1`), their pure
//! desired-state builders and reconcilers, leader election, metrics, and
//! [`run`], which the `strata-operator` binary calls.
//!
//! The operator talks to brokers only through `strata-client`.

pub mod broker_cluster;
pub mod consumer_group;
pub mod context;
pub mod controller;
pub mod crdgen;
pub mod error;
pub mod events;
pub mod http;
pub mod leader;
pub mod lifecycle;
pub mod metrics;
pub mod queue;
pub mod rbac;
pub mod resource;
pub mod status;
pub mod tenant;
pub mod topic;

pub use controller::{Config, run};
pub use error::Error;
