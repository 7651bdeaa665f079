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
    #[error("invalid queue configuration: {0}")]
    InvalidQueueConfig(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("record batch for {resource} rejected: {source}")]
    Batch { resource: String, source: BatchError },
    #[error("record batch for {resource} is {size} bytes, over the {limit}-byte limit")]
    BatchTooLarge { resource: String, size: usize, limit: u64 },
    #[error(
        "produce request for {resource} is {size} bytes, over the {limit}-byte message limit (limits.max_batch_bytes + 1MiB)"
    )]
    RequestTooLarge { resource: String, size: u64, limit: u64 },
    #[error("{resource}: {source}")]
    Producer { resource: String, source: crate::producer_ids::ProducerIdError },
    #[error("{resource}: {source}")]
    Log { resource: String, source: LogError },
    #[error("catalog storage failed: {0}")]
    CatalogStorage(#[source] StoreError),
    #[error("{resource}: cold tier failed: {source}")]
    ColdTier { resource: String, source: crate::tier::TierError },
    #[error("the broker's {what} task failed: {source}")]
    TaskFailed { what: &'static str, source: tokio::task::JoinError },
    #[error("internal error: {0}")]
    Internal(String),
    #[error("consumer group {group}: {action} offsets failed: {source}")]
    OffsetStorage { group: String, action: &'static str, source: std::io::Error },
    #[error("the broker is shutting down")]
    ShuttingDown,
    #[error("too many {what}: the broker holds {current} and {limit_name} is {limit}")]
    LimitExceeded { what: &'static str, limit_name: &'static str, limit: u64, current: u64 },
    #[error("consumer group {tenant}/{group} does not exist")]
    UnknownGroup { tenant: String, group: String },
    #[error("member {member} is not in group {group} (it left or was removed; it must rejoin)")]
    UnknownMember { group: String, member: String },
    #[error("member {member} of group {group} is fenced: {reason}")]
    FencedMember { group: String, member: String, reason: String },
    #[error("group {group} has {members} active member(s); stop them first (or force)")]
    GroupNotEmpty { group: String, members: usize },
    #[error("offset {offset} for {resource} is beyond the log end ({end})")]
    OffsetBeyondEnd { resource: String, offset: u64, end: u64 },
    #[error(
        "{resource}: cold tier unreachable or behind ({reason}): {waiting} bytes waiting for upload, over the budget of {budget}"
    )]
    ColdTierBacklog { resource: String, waiting: u64, budget: u64, reason: String },
    #[error("offset {offset} for {resource} is out of range: the partition holds offsets {start} to {end}")]
    OffsetOutOfRange { resource: String, offset: u64, start: u64, end: u64 },
    #[error("queue {queue} holds {messages} messages, its limit (limits.max_queue_messages) is {limit}")]
    QueueFull { queue: String, messages: u64, limit: u64 },
    #[error("queue {queue} still holds {messages} message(s)")]
    QueueNotEmpty { queue: String, messages: u64 },
    #[error("receipt for message {id} of queue {queue} is not valid: {reason}")]
    StaleReceipt { queue: String, id: u64, reason: String },
    #[error(
        "no metadata leader with a majority answered within {waited_ms} ms; the change may or may not have been made, retry it"
    )]
    NoMetadataQuorum { waited_ms: u64 },
    #[error(
        "{resource}: no leader with a majority of the replicas committed the batch within {waited_ms} ms ({why}); it may or may not be stored, retry it (an idempotent producer's retry is answered as a duplicate)"
    )]
    NoPartitionQuorum { resource: String, waited_ms: u64, why: String },
    #[error("{resource} is served by {}", match (owner, address) {
        (Some(id), Some(a)) => format!("broker {id} at {a}"),
        _ => "no live broker: its owner left the cluster".to_owned(),
    })]
    NotLeader { resource: String, owner: Option<u64>, address: Option<String> },
    #[error("this broker is standalone: it has no cluster members to change")]
    NotClustered,
    #[error("broker {id} is not a member of the cluster")]
    UnknownBroker { id: u64 },
    #[error("broker {id} is the cluster's last voter; a cluster cannot remove its last broker")]
    LastBroker { id: u64 },
    #[error(transparent)]
    Quota(#[from] crate::quota::QuotaExceeded),
}

impl From<StoreError> for BrokerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Catalog(c) => BrokerError::Catalog(c),
            other => BrokerError::CatalogStorage(other),
        }
    }
}
