//! Async Rust client for Strata: a [`Client`] connection with admin calls,
//! a batching, pipelined, idempotent [`Producer`], a following [`Consumer`]
//! of chosen partitions, and a [`GroupConsumer`] that shares partitions with
//! the other members of a consumer group; and work queues: [`QueueOptions`]
//! and the queue admin calls, [`Client::send_batch`], a [`Receiver`] with ack,
//! nack and extend, and request-reply with [`Client::call`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), strata_client::Error> {
//! use strata_client::{Client, ConsumerConfig, Message, StartFrom, TopicOptions};
//!
//! let client = Client::connect("http://127.0.0.1:7070").await?;
//! client.create_topic("orders", 3, TopicOptions::default()).await?;
//!
//! let producer = client.producer("orders").await?;
//! let meta = producer.send(Message::new("hello").with_key("customer-7")).await?;
//! println!("stored at partition {} offset {}", meta.partition, meta.offset);
//! producer.close().await?;
//!
//! let config = ConsumerConfig { start: StartFrom::Earliest, ..Default::default() };
//! let mut consumer = client.consumer("orders", config).await?;
//! if let Some(record) = consumer.next().await {
//!     println!("{:?}", record?.value);
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

/// Builder setters: `name(arg: Type, ...) => field = value;` makes
/// `pub fn name(mut self, arg: Type, ...) -> Self { self.field = value; self }`,
/// with the doc comments written above each line.
macro_rules! setters {
    ($($(#[$attr:meta])* $name:ident($($arg:ident: $ty:ty),+) => $field:ident = $value:expr;)*) => {
        $(
            $(#[$attr])*
            pub fn $name(mut self, $($arg: $ty),+) -> Self {
                self.$field = $value;
                self
            }
        )*
    };
}

mod admin;
mod client;
mod connect;
mod consumer;
mod error;
mod group;
mod partitioner;
mod pipeline;
mod producer;
mod queue;
mod retry;
mod routing;
mod telemetry;

#[cfg(test)]
mod mock_broker;

pub use admin::{PartitionOffsets, Retention, TopicOptions};
pub use client::{Client, ConnectOptions, DEFAULT_TIMEOUT, MAX_MESSAGE_BYTES};
pub use consumer::{ConsumedRecord, Consumer, ConsumerConfig, PartitionProgress, StartFrom};
pub use error::{Error, ErrorKind, RejectedReceipt, ServerError};
pub use group::{CommittedOffset, GroupConsumer, GroupConsumerConfig, RebalanceListener};
pub use partitioner::partition_for_key;
pub use producer::{Compression, DeliveryFuture, Message, Producer, ProducerConfig, RecordMetadata};
pub use queue::{
    BindingFilter, Delivery, MAX_RECEIVE_MESSAGES, QueueMessage, QueueOptions, QueueProducer, QueueProducerConfig,
    Receipt, Receiver, SendFuture, SendResult,
};
pub use retry::RetryConfig;
/// The generated `strata.v1` types returned by admin calls.
pub use strata_proto::v1::{
    Acl, AclOperation, AclPatternType, AclResourceKind, Binding, Durability, ErrorCode, GroupDescription, GroupMember,
    GroupSummary, PartitionDescription, PartitionLag, QueueConfig, QueueDescription, QueueStats, ServerInfo, Tenant,
    TenantQuotas, TenantUsage, TopicConfig, TopicDescription, TopicPartitions, TopicSummary, TtlAction,
};
