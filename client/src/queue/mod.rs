//! Work queues: each message goes to one consumer at a time, leased for a
//! visibility timeout, then acknowledged, negatively acknowledged or, after
//! too many deliveries, dead-lettered by the broker.
//!
//! - `admin`: [`QueueOptions`], [`BindingFilter`] and the admin calls on
//!   [`Client`](crate::Client) (`create_queue`, `describe_queue`, `bind`, ...).
//! - `message`: [`QueueMessage`] (sent), [`Delivery`] and [`Receipt`] (received).
//! - `send`: [`Client::send_batch`](crate::Client::send_batch) and its retry rule.
//! - `producer`: [`QueueProducer`] — one message per call, batched and
//!   pipelined over a `SendStream`, exact resends with dedup ids.
//! - `receiver`: [`Receiver`] — receive (long poll), ack, nack, extend.
//! - `reply`: request-reply — [`Client::call`](crate::Client::call) over one
//!   temporary reply queue per client, and `Client::reply`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), strata_client::Error> {
//! use std::time::Duration;
//! use strata_client::{Client, QueueMessage, QueueOptions};
//!
//! let client = Client::connect("http://127.0.0.1:7070").await?;
//! client.create_queue("jobs-dlq", QueueOptions::new()).await?;
//! client.create_queue("jobs", QueueOptions::new().max_deliveries(5).dead_letter_queue("jobs-dlq")).await?;
//! client.send_batch("jobs", [QueueMessage::new("resize 42"), QueueMessage::new("resize 43")]).await?;
//!
//! let receiver = client.receiver("jobs").max_messages(10).wait(Duration::from_secs(5));
//! let deliveries = receiver.receive().await?;
//! receiver.ack_all(&deliveries).await?;
//! # Ok(()) }
//! ```

mod acker;
mod admin;
mod message;
mod producer;
mod receiver;
mod reply;
mod send;

use std::time::Duration;

pub use admin::{BindingFilter, QueueOptions};
pub use message::{Delivery, QueueMessage, Receipt};
pub use producer::{QueueProducer, QueueProducerConfig, SendFuture};
pub use receiver::{MAX_RECEIVE_MESSAGES, Receiver};
pub use send::SendResult;

/// A duration in whole milliseconds for the wire, saturating at `i64::MAX`
/// (the broker rejects absurd values with a precise error rather than the
/// client wrapping them into negative ones).
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
