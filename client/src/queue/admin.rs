//! Queue administration on [`Client`]: create, update, describe, list,
//! delete, purge, redrive, and topic bindings with their [`BindingFilter`].

use std::collections::BTreeMap;
use std::time::Duration;

use strata_proto::v1 as pb;
use strata_proto::v1::{Durability, QueueConfig, QueueDescription, TtlAction};

use super::millis;
use crate::client::{Client, Queues};
use crate::error::Error;
use crate::routing::Target;

/// Settings for [`Client::create_queue`] and [`Client::update_queue`]. Every
/// `None` means "the broker default" on create and "unchanged" on update.
///
/// ```
/// use std::time::Duration;
/// use strata_client::QueueOptions;
///
/// let options = QueueOptions::new()
///     .visibility_timeout(Duration::from_secs(60))
///     .max_deliveries(5)
///     .dead_letter_queue("jobs-dlq")
///     .retry_backoff(Duration::from_secs(1), Duration::from_secs(60));
/// assert_eq!(options.max_deliveries, Some(5));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueOptions {
    /// How long a received message stays invisible to other consumers
    /// (broker default 30 s).
    pub visibility_timeout: Option<Duration>,
    /// Deliveries after which a message is dead-lettered (or dropped when
    /// there is no dead-letter queue); 0 = unlimited.
    pub max_deliveries: Option<u32>,
    /// Queue (same tenant) receiving exhausted and, with
    /// [`TtlAction::DeadLetter`], expired messages; `Some("")` removes it.
    pub dead_letter_queue: Option<String>,
    /// Nack without a delay: visible again after `min * 2^(deliveries-1)`,
    /// capped at `max`; `(0, 0)` = at once.
    pub retry_backoff: Option<(Duration, Duration)>,
    /// Default delay before a new message becomes visible.
    pub delay: Option<Duration>,
    /// Default time to live of a message; zero = forever.
    pub ttl: Option<Duration>,
    /// What happens to expired messages.
    pub ttl_action: Option<TtlAction>,
    /// Per-group ordering, one in-flight message per group (fixed at creation).
    pub fifo: Option<bool>,
    /// A dedup id seen within this window is not enqueued again; zero = off.
    pub dedup_window: Option<Duration>,
    /// Priority levels (1 = none, at most 255); higher is received first.
    pub priorities: Option<u32>,
    /// When a send or an ack is acknowledged; see [`Durability`].
    pub durability: Option<Durability>,
}

impl QueueOptions {
    /// Every setting at the broker default.
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// How long a received message stays invisible to other receivers before it is delivered again.
        visibility_timeout(timeout: Duration) => visibility_timeout = Some(timeout);
        /// Deliveries after which a message goes to the dead-letter queue (or is dropped).
        max_deliveries(n: u32) => max_deliveries = Some(n);
        /// The queue that takes messages after `max_deliveries`.
        dead_letter_queue(queue: impl Into<String>) => dead_letter_queue = Some(queue.into());
        /// Delay before a nacked message is delivered again, growing from `min` to `max`.
        retry_backoff(min: Duration, max: Duration) => retry_backoff = Some((min, max));
        /// Default delay before a sent message becomes visible.
        delay(delay: Duration) => delay = Some(delay);
        /// Default time to live of a message.
        ttl(ttl: Duration) => ttl = Some(ttl);
        /// What happens to a message whose time to live ran out.
        ttl_action(action: TtlAction) => ttl_action = Some(action);
        /// FIFO: messages of one group are delivered one at a time, in order.
        fifo(fifo: bool) => fifo = Some(fifo);
        /// How long a dedup id is remembered.
        dedup_window(window: Duration) => dedup_window = Some(window);
        /// Number of priority levels (`0..levels`).
        priorities(levels: u32) => priorities = Some(levels);
        /// When a sent message counts as stored (fsync or not).
        durability(durability: Durability) => durability = Some(durability);
    }

    /// The wire form: unset fields stay unset.
    pub(crate) fn to_config(&self) -> QueueConfig {
        QueueConfig {
            visibility_timeout_ms: self.visibility_timeout.map(millis),
            max_deliveries: self.max_deliveries,
            dead_letter_queue: self.dead_letter_queue.clone(),
            retry_backoff_min_ms: self.retry_backoff.map(|(min, _)| millis(min)),
            retry_backoff_max_ms: self.retry_backoff.map(|(_, max)| millis(max)),
            delay_ms: self.delay.map(millis),
            ttl_ms: self.ttl.map(millis),
            ttl_action: self.ttl_action.unwrap_or(TtlAction::Unspecified) as i32,
            fifo: self.fifo,
            dedup_window_ms: self.dedup_window.map(millis),
            priorities: self.priorities,
            durability: self.durability.unwrap_or(Durability::Unspecified) as i32,
        }
    }
}

/// Which messages of a topic a binding routes into a queue. No fields (the
/// [`BindingFilter::all`] filter) means every message: fan-out.
///
/// ```
/// use strata_client::BindingFilter;
///
/// let direct = BindingFilter::key("eu.orders");
/// let topic = BindingFilter::pattern("eu.*.#");
/// let headers = BindingFilter::all().header("region", "eu").header("kind", "order");
/// assert!(BindingFilter::all().is_fan_out());
/// # let _ = (direct, topic, headers);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BindingFilter {
    /// Exact routing-key match.
    pub key: Option<String>,
    /// Dot-separated key pattern: `*` matches one word, `#` zero or more.
    pub pattern: Option<String>,
    /// Every header must be present with this value.
    pub headers: BTreeMap<String, String>,
}

impl BindingFilter {
    /// Every message of the topic (fan-out).
    pub fn all() -> Self {
        Self::default()
    }

    /// Messages whose key is exactly `key` (a direct exchange).
    pub fn key(key: impl Into<String>) -> Self {
        BindingFilter { key: Some(key.into()), ..Self::default() }
    }

    /// Messages whose key matches a dot-separated pattern such as `a.*.#`
    /// (a topic exchange).
    pub fn pattern(pattern: impl Into<String>) -> Self {
        BindingFilter { pattern: Some(pattern.into()), ..Self::default() }
    }

    /// Also require a header with this value (a headers exchange when used
    /// alone: `BindingFilter::all().header(k, v)`).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Whether the filter lets every message through.
    pub fn is_fan_out(&self) -> bool {
        self.key.is_none() && self.pattern.is_none() && self.headers.is_empty()
    }

    pub(crate) fn to_proto(&self) -> pb::BindingFilter {
        pb::BindingFilter {
            key: self.key.clone(),
            pattern: self.pattern.clone(),
            headers: self.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }
}

impl From<pb::BindingFilter> for BindingFilter {
    fn from(f: pb::BindingFilter) -> Self {
        BindingFilter { key: f.key, pattern: f.pattern, headers: f.headers.into_iter().collect() }
    }
}

impl std::fmt::Display for BindingFilter {
    /// `key=K`, `pattern=P`, `header:k=v` parts joined by spaces, or `*`
    /// (everything).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_fan_out() {
            return f.write_str("*");
        }
        let mut parts = Vec::new();
        if let Some(k) = &self.key {
            parts.push(format!("key={k}"));
        }
        if let Some(p) = &self.pattern {
            parts.push(format!("pattern={p}"));
        }
        for (k, v) in &self.headers {
            parts.push(format!("header:{k}={v}"));
        }
        f.write_str(&parts.join(" "))
    }
}

impl Client {
    /// Creates a queue; fails with `ALREADY_EXISTS` (`QUEUE_EXISTS`) when it
    /// exists, `NOT_FOUND` when the dead-letter queue does not exist, and
    /// `INVALID_ARGUMENT` for bad settings.
    pub async fn create_queue(&self, name: &str, options: QueueOptions) -> Result<QueueDescription, Error> {
        self.create_queue_inner(name, &options, false).await
    }

    /// Creates a queue unless one with this name exists; either way returns
    /// the queue's description (an existing queue keeps its settings).
    pub async fn ensure_queue(&self, name: &str, options: QueueOptions) -> Result<QueueDescription, Error> {
        self.create_queue_inner(name, &options, true).await
    }

    async fn create_queue_inner(
        &self,
        name: &str,
        options: &QueueOptions,
        if_not_exists: bool,
    ) -> Result<QueueDescription, Error> {
        let req = pb::CreateQueueRequest {
            tenant: self.tenant().to_owned(),
            name: name.to_owned(),
            config: Some(options.to_config()),
            if_not_exists,
        };
        Ok(self.queues_rpc().create_queue(self.request(req)).await?.into_inner())
    }

    /// Changes the settings given in `options`, leaving the others
    /// unchanged (`fifo` cannot change).
    pub async fn update_queue(&self, name: &str, options: QueueOptions) -> Result<QueueDescription, Error> {
        let req = pb::UpdateQueueRequest {
            tenant: self.tenant().to_owned(),
            name: name.to_owned(),
            config: Some(options.to_config()),
        };
        self.rpc(Target::Queue(name), req, |mut c: Queues, r| async move { c.update_queue(r).await }).await
    }

    /// A queue's settings, message counts and bindings.
    pub async fn describe_queue(&self, name: &str) -> Result<QueueDescription, Error> {
        let req = pb::DescribeQueueRequest { tenant: self.tenant().to_owned(), name: name.to_owned() };
        self.rpc(Target::Queue(name), req, |mut c: Queues, r| async move { c.describe_queue(r).await }).await
    }

    /// The tenant's queues (temporary reply queues included, marked
    /// `temporary`).
    pub async fn list_queues(&self) -> Result<Vec<QueueDescription>, Error> {
        let req = pb::ListQueuesRequest { tenant: self.tenant().to_owned() };
        Ok(self.queues_rpc().list_queues(self.request(req)).await?.into_inner().queues)
    }

    /// Deletes a queue and its messages. With `if_empty` the broker refuses
    /// (`QUEUE_NOT_EMPTY`) while messages remain; it always refuses
    /// (`QUEUE_IN_USE`) while another queue uses it as dead-letter queue.
    pub async fn delete_queue(&self, name: &str, if_empty: bool) -> Result<(), Error> {
        let req = pb::DeleteQueueRequest { tenant: self.tenant().to_owned(), name: name.to_owned(), if_empty };
        self.rpc(Target::Queue(name), req, |mut c: Queues, r| async move { c.delete_queue(r).await }).await?;
        Ok(())
    }

    /// [`delete_queue`](Self::delete_queue) unless the queue does not exist;
    /// `true` when it was deleted.
    pub async fn delete_queue_if_exists(&self, name: &str, if_empty: bool) -> Result<bool, Error> {
        crate::error::if_exists(self.delete_queue(name, if_empty).await, crate::ErrorCode::UnknownQueue)
    }

    /// Deletes every message of a queue (visible, delayed and in flight);
    /// returns how many.
    pub async fn purge_queue(&self, name: &str) -> Result<u64, Error> {
        let req = pb::PurgeQueueRequest { tenant: self.tenant().to_owned(), name: name.to_owned() };
        Ok(self.rpc(Target::Queue(name), req, |mut c: Queues, r| async move { c.purge_queue(r).await }).await?.purged)
    }

    /// Moves messages of a dead-letter queue back to the queues they came
    /// from (at most `max`, or all); returns how many moved.
    pub async fn redrive(&self, dead_letter_queue: &str, max: Option<u64>) -> Result<u64, Error> {
        let req = pb::RedriveRequest {
            tenant: self.tenant().to_owned(),
            dead_letter_queue: dead_letter_queue.to_owned(),
            max_messages: max.unwrap_or(0),
        };
        Ok(self
            .rpc(Target::Queue(dead_letter_queue), req, |mut c: Queues, r| async move { c.redrive(r).await })
            .await?
            .moved)
    }

    /// Routes the messages produced to `topic` that pass `filter` into
    /// `queue` from now on.
    pub async fn bind(&self, queue: &str, topic: &str, filter: BindingFilter) -> Result<pb::Binding, Error> {
        let req = pb::BindRequest {
            tenant: self.tenant().to_owned(),
            queue: queue.to_owned(),
            topic: topic.to_owned(),
            filter: Some(filter.to_proto()),
        };
        self.rpc(Target::Queue(queue), req, |mut c: Queues, r| async move { c.bind(r).await }).await
    }

    /// Removes the binding with exactly this topic and filter
    /// (`UNKNOWN_BINDING` when there is none).
    pub async fn unbind(&self, queue: &str, topic: &str, filter: BindingFilter) -> Result<(), Error> {
        let req = pb::UnbindRequest {
            tenant: self.tenant().to_owned(),
            queue: queue.to_owned(),
            topic: topic.to_owned(),
            filter: Some(filter.to_proto()),
        };
        self.rpc(Target::Queue(queue), req, |mut c: Queues, r| async move { c.unbind(r).await }).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options_leave_everything_unset() {
        let cfg = QueueOptions::default().to_config();
        assert_eq!(cfg, QueueConfig::default());
    }

    #[test]
    fn options_map_to_config() {
        let cfg = QueueOptions::new()
            .visibility_timeout(Duration::from_secs(30))
            .max_deliveries(5)
            .dead_letter_queue("dlq")
            .retry_backoff(Duration::from_secs(1), Duration::from_secs(60))
            .delay(Duration::from_millis(250))
            .ttl(Duration::from_secs(3600))
            .ttl_action(TtlAction::DeadLetter)
            .fifo(true)
            .dedup_window(Duration::from_secs(300))
            .priorities(10)
            .durability(Durability::None)
            .to_config();
        assert_eq!(cfg.visibility_timeout_ms, Some(30_000));
        assert_eq!(cfg.max_deliveries, Some(5));
        assert_eq!(cfg.dead_letter_queue.as_deref(), Some("dlq"));
        assert_eq!((cfg.retry_backoff_min_ms, cfg.retry_backoff_max_ms), (Some(1000), Some(60_000)));
        assert_eq!(cfg.delay_ms, Some(250));
        assert_eq!(cfg.ttl_ms, Some(3_600_000));
        assert_eq!(cfg.ttl_action, TtlAction::DeadLetter as i32);
        assert_eq!(cfg.fifo, Some(true));
        assert_eq!(cfg.dedup_window_ms, Some(300_000));
        assert_eq!(cfg.priorities, Some(10));
        assert_eq!(cfg.durability, Durability::None as i32);
    }

    #[test]
    fn huge_durations_saturate_instead_of_wrapping() {
        let cfg = QueueOptions::new().ttl(Duration::MAX).to_config();
        assert_eq!(cfg.ttl_ms, Some(i64::MAX));
    }

    #[test]
    fn binding_filters() {
        assert!(BindingFilter::all().is_fan_out());
        assert_eq!(BindingFilter::all().to_string(), "*");
        let f = BindingFilter::key("eu.orders").header("b", "2").header("a", "1");
        assert!(!f.is_fan_out());
        assert_eq!(f.to_string(), "key=eu.orders header:a=1 header:b=2");
        let p = f.to_proto();
        assert_eq!(p.key.as_deref(), Some("eu.orders"));
        assert_eq!(p.pattern, None);
        assert_eq!(p.headers.len(), 2);
        assert_eq!(BindingFilter::from(p), f);
        assert_eq!(BindingFilter::pattern("a.*.#").to_proto().pattern.as_deref(), Some("a.*.#"));
    }
}
