//! The messages of queues: [`QueueMessage`] (what is sent), [`Delivery`]
//! (what a receiver gets, with its [`Receipt`]) and their wire conversions.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use strata_proto::v1 as pb;

use super::millis;

/// A message to send to a queue.
///
/// ```
/// use std::time::Duration;
/// use strata_client::QueueMessage;
///
/// let msg = QueueMessage::new("resize photo 42")
///     .priority(7)
///     .delay(Duration::from_secs(5))
///     .dedup_id("photo-42")
///     .header("traceparent", "00-abc-def-01");
/// assert_eq!(msg.priority, 7);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueMessage {
    /// The payload.
    pub body: Bytes,
    /// Headers, e.g. W3C `traceparent`.
    pub headers: Vec<(String, Bytes)>,
    /// 0 (the default) up to the queue's `priorities - 1`; higher is
    /// received first.
    pub priority: u32,
    /// Overrides the queue's delay before the message becomes visible.
    pub delay: Option<Duration>,
    /// Overrides the queue's time to live.
    pub ttl: Option<Duration>,
    /// FIFO message group (FIFO queues; `None` = the default group).
    pub group: Option<String>,
    /// Deduplication id: a second message with the same id within the
    /// queue's dedup window is accepted but not enqueued again. It also
    /// makes retries of [`Client::send_batch`](crate::Client::send_batch) exact.
    pub dedup_id: Option<String>,
    /// Routing key (carried along; set on messages routed from topics).
    pub key: Option<Bytes>,
    /// Request-reply: the queue to answer to.
    pub reply_to: Option<String>,
    /// Request-reply: the id the answer carries.
    pub correlation_id: Option<String>,
}

impl QueueMessage {
    /// A message with this body and every option at the queue default.
    pub fn new(body: impl Into<Bytes>) -> Self {
        QueueMessage { body: body.into(), ..Self::default() }
    }

    setters! {
        /// Sets the priority (higher is received first).
        priority(priority: u32) => priority = priority;
        /// Delivers the message no earlier than `delay` from now.
        delay(delay: Duration) => delay = Some(delay);
        /// Sets the time to live (the queue's TTL action applies after it).
        ttl(ttl: Duration) => ttl = Some(ttl);
        /// Sets the FIFO group (order is kept within a group).
        group(group: impl Into<String>) => group = Some(group.into());
        /// Sets the deduplication id: a second send with it within the queue's dedup window is not stored.
        dedup_id(id: impl Into<String>) => dedup_id = Some(id.into());
    }

    /// Adds a header (repeatable).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    setters! {
        /// Sets the key (used by bindings' key filters).
        key(key: impl Into<Bytes>) => key = Some(key.into());
        /// Request-reply: the queue the receiver should answer on.
        reply_to(queue: impl Into<String>) => reply_to = Some(queue.into());
        /// Request-reply: the id that pairs an answer with its request.
        correlation_id(id: impl Into<String>) => correlation_id = Some(id.into());
    }

    pub(crate) fn into_proto(self) -> pb::OutgoingMessage {
        pb::OutgoingMessage {
            body: self.body,
            headers: self.headers.into_iter().map(|(key, value)| pb::MessageHeader { key, value }).collect(),
            priority: self.priority,
            delay_ms: self.delay.map(millis),
            group: self.group.unwrap_or_default(),
            dedup_id: self.dedup_id.unwrap_or_default(),
            ttl_ms: self.ttl.map(millis),
            reply_to: self.reply_to.unwrap_or_default(),
            correlation_id: self.correlation_id.unwrap_or_default(),
            key: self.key.unwrap_or_default(),
        }
    }
}

impl From<&str> for QueueMessage {
    fn from(body: &str) -> Self {
        QueueMessage::new(Bytes::copy_from_slice(body.as_bytes()))
    }
}

impl From<String> for QueueMessage {
    fn from(body: String) -> Self {
        QueueMessage::new(body)
    }
}

impl From<Bytes> for QueueMessage {
    fn from(body: Bytes) -> Self {
        QueueMessage::new(body)
    }
}

/// Proof of one delivery of a message: acks, nacks and extends present it.
/// After a redelivery the receipt of an earlier delivery is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Receipt {
    /// The message id, unique within the queue.
    pub message_id: u64,
    /// 1 for the first delivery.
    pub delivery_count: u32,
}

impl From<Receipt> for pb::Receipt {
    fn from(r: Receipt) -> Self {
        pb::Receipt { message_id: r.message_id, delivery_count: r.delivery_count }
    }
}

impl From<pb::Receipt> for Receipt {
    fn from(r: pb::Receipt) -> Self {
        Receipt { message_id: r.message_id, delivery_count: r.delivery_count }
    }
}

/// A message received from a queue: leased to this receiver until
/// `visible_until` (unless auto-acknowledged), to be acked, nacked or
/// extended with its [`Receipt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The queue it came from (shared, so it costs no allocation per message).
    pub queue: Arc<str>,
    /// The receipt to ack, nack or extend this delivery with.
    pub receipt: Receipt,
    /// The payload.
    pub body: Bytes,
    /// Headers as sent.
    pub headers: Vec<(String, Bytes)>,
    /// The priority it was sent with.
    pub priority: u32,
    /// FIFO group (`None`: the default group).
    pub group: Option<String>,
    /// The deduplication id it was sent with.
    pub dedup_id: Option<String>,
    /// The key it was sent with.
    pub key: Option<Bytes>,
    /// Request-reply: where the sender waits for an answer.
    pub reply_to: Option<String>,
    /// Request-reply: the id that pairs an answer with its request.
    pub correlation_id: Option<String>,
    /// When the message was sent (enqueued).
    pub enqueued_at: SystemTime,
    /// Until when the lease holds; `None` when auto-acknowledged.
    pub visible_until: Option<SystemTime>,
}

impl Delivery {
    /// How many times the message has been delivered, this time included.
    pub fn delivery_count(&self) -> u32 {
        self.receipt.delivery_count
    }

    /// The first header with this name.
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    pub(crate) fn from_proto(queue: &Arc<str>, m: pb::ReceivedMessage) -> Delivery {
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        Delivery {
            queue: queue.clone(),
            receipt: m.receipt.map(Receipt::from).unwrap_or(Receipt { message_id: 0, delivery_count: 0 }),
            body: m.body,
            headers: m.headers.into_iter().map(|h| (h.key, h.value)).collect(),
            priority: m.priority,
            group: non_empty(m.group),
            dedup_id: non_empty(m.dedup_id),
            key: (!m.key.is_empty()).then_some(m.key),
            reply_to: non_empty(m.reply_to),
            correlation_id: non_empty(m.correlation_id),
            enqueued_at: epoch_ms(m.enqueued_at_ms),
            visible_until: (m.visible_until_ms > 0).then(|| epoch_ms(m.visible_until_ms)),
        }
    }
}

fn epoch_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_builder_maps_to_the_wire() {
        let m = QueueMessage::new("body")
            .priority(3)
            .delay(Duration::from_secs(2))
            .ttl(Duration::from_millis(1500))
            .group("g")
            .dedup_id("d")
            .header("a", "1")
            .header("a", "2")
            .key("k")
            .reply_to("r")
            .correlation_id("c");
        let p = m.into_proto();
        assert_eq!(&p.body[..], b"body");
        assert_eq!(p.priority, 3);
        assert_eq!(p.delay_ms, Some(2000));
        assert_eq!(p.ttl_ms, Some(1500));
        assert_eq!((p.group.as_str(), p.dedup_id.as_str()), ("g", "d"));
        assert_eq!(p.headers.len(), 2);
        assert_eq!(&p.headers[1].value[..], b"2");
        assert_eq!(&p.key[..], b"k");
        assert_eq!((p.reply_to.as_str(), p.correlation_id.as_str()), ("r", "c"));

        let plain = QueueMessage::from("x").into_proto();
        assert_eq!(plain.delay_ms, None);
        assert_eq!(plain.ttl_ms, None);
        assert!(plain.group.is_empty() && plain.reply_to.is_empty());
    }

    #[test]
    fn deliveries_read_empty_strings_as_none() {
        let queue: Arc<str> = "q".into();
        let d = Delivery::from_proto(
            &queue,
            pb::ReceivedMessage {
                receipt: Some(pb::Receipt { message_id: 9, delivery_count: 2 }),
                body: Bytes::from_static(b"hi"),
                headers: vec![pb::MessageHeader { key: "h".into(), value: Bytes::from_static(b"v") }],
                priority: 1,
                correlation_id: "c".into(),
                enqueued_at_ms: 1_700_000_000_000,
                ..Default::default()
            },
        );
        assert_eq!(d.receipt, Receipt { message_id: 9, delivery_count: 2 });
        assert_eq!(d.delivery_count(), 2);
        assert_eq!(d.header("h").map(|v| &v[..]), Some(&b"v"[..]));
        assert_eq!(d.header("x"), None);
        assert_eq!((d.group.as_deref(), d.reply_to.as_deref(), d.key.as_ref()), (None, None, None));
        assert_eq!(d.correlation_id.as_deref(), Some("c"));
        assert_eq!(d.visible_until, None);
        assert_eq!(d.enqueued_at.duration_since(UNIX_EPOCH).unwrap().as_millis(), 1_700_000_000_000);
    }
}
