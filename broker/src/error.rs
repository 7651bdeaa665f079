//! The broker's domain error. Every failure a request can meet is one
//! variant with the facts a client needs; `grpc::status` is the one place
//! that turns it into a gRPC status.

use strata_proto::batch::BatchError;

use crate::catalog::{CatalogError, StoreError};
use crate::log::LogError;
use crate::names::InvalidName;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("topic {tenant}/{topic} has no partition {partition} (it has {partitions})")]
    UnknownPartition { tenant: String, topic: String, partition: u32, partitions: u32 },
    #[error("invalid topic configuration: {0}")]
    InvalidConfig(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("record batch for {resource} rejected: {source}")]
    Batch { resource: String, source: BatchError },
    #[error("record batch for {resource} is {size} bytes, over the {limit}-byte limit")]
    BatchTooLarge { resource: String, size: usize, limit: u64 },
    #[error("{resource}: {source}")]
    Log { resource: String, source: LogError },
    #[error("catalog storage failed: {0}")]
    CatalogStorage(String),
    #[error("the broker is shutting down")]
    ShuttingDown,
}

impl From<StoreError> for BrokerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Catalog(c) => BrokerError::Catalog(c),
            other => BrokerError::CatalogStorage(other.to_string()),
        }
    }
}
