//! The [`Producer`]: batches messages per partition and sends them over one
//! pipelined `ProduceStream`, resolving each message's [`DeliveryFuture`]
//! when the broker acknowledges it.
//!
//! Parts: [`accumulator`] fills and seals batches; [`sender`] is the
//! background task that owns the stream, retries and ordering. Callers only
//! talk to the task through a channel, so a `Producer` is cheap to clone and
//! safe to use from many tasks.

mod accumulator;
mod sender;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use strata_proto::batch::{BatchBuilder, HEADER_LEN, HeaderRef};
use strata_proto::v1::InitProducerRequest;
use strata_telemetry::MessageTrace;
use tokio::sync::{Semaphore, mpsc, oneshot};

pub use strata_proto::batch::Compression;

use crate::client::{Client, MAX_MESSAGE_BYTES};
use crate::error::Error;
use crate::retry::RetryConfig;
use accumulator::PendingMessage;

/// Room left in a request for the protobuf framing around the batch.
const REQUEST_OVERHEAD: usize = 4096;

/// Tuning of a [`Producer`].
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// A partition's batch is sent once it holds this many bytes
    /// (uncompressed). A single larger message gets a batch of its own.
    pub batch_bytes: usize,
    /// ... or once its first message has waited this long.
    pub linger: Duration,
    /// Send at once when nothing is in flight (the default): a message that
    /// finds the pipe idle does not wait for `linger`, so latency at low
    /// rates is one round trip; under load batches still fill while earlier
    /// ones are in flight, up to `batch_bytes` or `linger`. Off, every batch
    /// waits for `linger` or `batch_bytes` (Kafka's `linger.ms` behaviour).
    pub send_when_idle: bool,
    /// Memory for messages not yet acknowledged (buffered and in flight).
    /// When it is used up, [`Producer::send`] / [`Producer::enqueue`] wait.
    pub max_in_flight_bytes: usize,
    /// Batches sent on the stream and not yet acknowledged. An idempotent
    /// producer also keeps at most 5 per partition in flight (the broker's
    /// duplicate-detection window), and a partition's first batch alone.
    pub max_in_flight_batches: usize,
    /// Retries of transient failures (stream broken, broker unavailable or
    /// overloaded). Non-retryable errors fail the affected messages at once.
    pub retry: RetryConfig,
    /// Compression of each batch.
    pub compression: Compression,
    /// How long a sent batch may wait for its acknowledgement (and a stream
    /// for its opening) before the stream is considered broken.
    pub request_timeout: Duration,
    /// How often the topic's partition count is re-read, so partitions added
    /// while producing get traffic. It is also re-read when the broker
    /// answers `UNKNOWN_PARTITION`.
    pub metadata_refresh: Duration,
    /// Idempotent producing (the default): the producer registers with
    /// `InitProducer` and numbers its batches, so the broker stores a
    /// retried batch only once. Turn it off only for brokers that do not
    /// support it; retries may then store a batch twice.
    pub idempotent: bool,
    /// A stable name for this producer (like Kafka's `transactional.id`):
    /// starting a producer with the same name fences every older instance,
    /// whose sends then fail with [`Error::ProducerFenced`]. `None` gives the
    /// producer a fresh identity. Needs `idempotent`.
    pub producer_name: Option<String>,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            batch_bytes: 256 * 1024,
            linger: Duration::from_millis(5),
            send_when_idle: true,
            max_in_flight_bytes: 32 * 1024 * 1024,
            max_in_flight_batches: 32,
            retry: RetryConfig::default(),
            compression: Compression::None,
            request_timeout: Duration::from_secs(30),
            metadata_refresh: Duration::from_secs(60),
            idempotent: true,
            producer_name: None,
        }
    }
}

/// A message to produce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// Messages with a key go to partition `xxh3_64(key) % partitions`
    /// (see [`crate::partition_for_key`]), so equal keys keep their order.
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// Headers, e.g. W3C `traceparent`.
    pub headers: Vec<(String, Bytes)>,
    /// Milliseconds since the Unix epoch; `None` means "now".
    pub timestamp: Option<i64>,
    /// Send to this partition, overriding the key hash.
    pub partition: Option<u32>,
}

impl Message {
    /// A message with this value and nothing else set.
    pub fn new(value: impl Into<Bytes>) -> Self {
        Message { value: value.into(), ..Message::default() }
    }

    /// Sets the key (which chooses the partition).
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header (repeatable).
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }

    setters! {
        /// Sets the timestamp, in milliseconds since the Unix epoch.
        with_timestamp(timestamp_ms: i64) => timestamp = Some(timestamp_ms);
        /// Sends to this partition, overriding the key hash.
        with_partition(partition: u32) => partition = Some(partition);
    }

    /// Bytes the message takes in a batch, with its trace context.
    pub(crate) fn encoded_size(&self, trace: Option<&MessageTrace>) -> usize {
        BatchBuilder::record_size_of(self.key.as_deref(), Some(&self.value), record_headers(&self.headers, trace))
    }
}

/// The headers a message is stored with: its own and, when tracing is on,
/// its trace context (which replaces any `traceparent`/`tracestate` the
/// application set).
pub(crate) fn record_headers<'a>(
    headers: &'a [(String, Bytes)],
    trace: Option<&'a MessageTrace>,
) -> impl Iterator<Item = HeaderRef<'a>> + Clone {
    headers
        .iter()
        .filter(move |(k, _)| trace.is_none() || !MessageTrace::replaces(k))
        .map(|(k, v)| (k.as_str(), Some(&v[..])))
        .chain(trace.into_iter().flat_map(|t| t.headers().map(|(k, v)| (k, Some(v)))))
}

/// Where an acknowledged message was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordMetadata {
    /// The partition it was stored in.
    pub partition: u32,
    /// Its offset within the partition.
    pub offset: u64,
}

/// Resolves when the broker has acknowledged (or definitively rejected) one
/// message. Dropping it does not cancel the message.
#[derive(Debug)]
#[must_use = "a DeliveryFuture tells whether the message was stored"]
pub struct DeliveryFuture {
    rx: oneshot::Receiver<Result<RecordMetadata, Error>>,
    /// The message's `send` span (tracing on); ends with the acknowledgement.
    span: Option<strata_telemetry::BoxedSpan>,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        crate::pipeline::poll_answer(&mut this.rx, &mut this.span, cx, |m, span| {
            use strata_telemetry::{Attribute, Span, attr};
            span.set_attribute(Attribute::new(attr::PARTITION, m.partition.to_string()));
            span.set_attribute(Attribute::new(attr::MESSAGE_ID, m.offset.to_string()));
        })
    }
}

pub(crate) type Command = crate::pipeline::Command<PendingMessage>;

/// The id and epoch an idempotent producer got from `InitProducer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) producer_id: i64,
    pub(crate) epoch: i16,
}

/// Produces messages to one topic. Clone it to share it between tasks; all
/// clones feed the same batches and stream.
///
/// Guarantees:
/// - Messages of one partition are appended in the order they were enqueued
///   (across clones, in the order the enqueue calls completed).
/// - **Idempotent by default** ([`ProducerConfig::idempotent`]): at start the
///   producer gets a producer id and epoch from the broker (`InitProducer`)
///   and every batch carries them plus a per-partition sequence number
///   (starting at 0, growing by the batch's record count, wrapping around
///   from `i32::MAX` to `i32::MIN` as the broker's arithmetic does). A
///   retried batch is resent with the same bytes, and the broker answers a
///   batch it already stored with that copy's offsets, so retries after a
///   lost acknowledgement never store a message twice, and order holds even
///   when a batch fails transiently while later batches of its partition
///   are in flight (they are refused and resent after it, in order). Each
///   acknowledged message is stored exactly once.
/// - With a [`ProducerConfig::producer_name`], starting another producer
///   with the same name fences this one: everything pending and every later
///   send fails with [`Error::ProducerFenced`].
/// - If the broker reports a gap in a partition's sequence that no earlier
///   failure explains (it lost acknowledged data, e.g. after a crash of a
///   `durability = none` topic), every pending message of that partition
///   fails with `OUT_OF_ORDER_SEQUENCE`; later messages continue from where
///   the broker stands.
/// - Without idempotence delivery is at-least-once: a batch whose
///   acknowledgement was lost is sent again and may be stored twice, and a
///   later batch of the same partition that was already in flight can land
///   before a batch that failed transiently (use
///   `max_in_flight_batches = 1` for strict order).
///
/// A message that fails (its future resolves to an error) may still be
/// stored when the failure was a lost connection whose retries ran out.
#[derive(Clone, Debug)]
pub struct Producer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    topic: String,
    commands: mpsc::UnboundedSender<Command>,
    memory: Arc<Semaphore>,
    memory_limit: usize,
    identity: Option<Identity>,
    /// Set once the producer is fenced.
    fatal: Arc<OnceLock<Error>>,
}

impl Client {
    /// A producer for `topic` with the default [`ProducerConfig`]. Fails when
    /// the topic does not exist.
    pub async fn producer(&self, topic: &str) -> Result<Producer, Error> {
        self.producer_with_config(topic, ProducerConfig::default()).await
    }

    /// A producer for `topic` with the given configuration.
    pub async fn producer_with_config(&self, topic: &str, config: ProducerConfig) -> Result<Producer, Error> {
        Producer::start(self, topic, config).await
    }
}

impl Producer {
    async fn start(client: &Client, topic: &str, config: ProducerConfig) -> Result<Producer, Error> {
        if config.batch_bytes == 0 {
            return Err(Error::InvalidArgument("batch_bytes must be positive".into()));
        }
        if config.max_in_flight_batches == 0 {
            return Err(Error::InvalidArgument("max_in_flight_batches must be positive".into()));
        }
        if config.max_in_flight_bytes == 0 {
            return Err(Error::InvalidArgument("max_in_flight_bytes must be positive".into()));
        }
        if config.producer_name.is_some() && !config.idempotent {
            return Err(Error::InvalidArgument("producer_name needs an idempotent producer".into()));
        }
        // Also learns which broker serves each partition.
        let partitions = client.topic_partitions(topic).await?;
        let identity =
            if config.idempotent { Some(init_producer(client, config.producer_name.as_deref()).await?) } else { None };
        // Permits are acquired per message with a u32 count.
        let memory_limit = config.max_in_flight_bytes.min(u32::MAX as usize).min(Semaphore::MAX_PERMITS);
        let memory = Arc::new(Semaphore::new(memory_limit));
        let fatal = Arc::new(OnceLock::new());
        let (commands, rx) = mpsc::unbounded_channel();
        let task = sender::SenderTask::new(
            client.clone(),
            topic.to_owned(),
            partitions,
            config,
            identity,
            (rx, memory.clone(), fatal.clone()),
        );
        tokio::spawn(task.run());
        Ok(Producer {
            shared: Arc::new(Shared { topic: topic.to_owned(), commands, memory, memory_limit, identity, fatal }),
        })
    }

    /// The producer id and epoch of an idempotent producer.
    pub fn producer_id(&self) -> Option<(i64, i16)> {
        self.shared.identity.map(|i| (i.producer_id, i.epoch))
    }

    /// The topic this producer writes to.
    pub fn topic(&self) -> &str {
        &self.shared.topic
    }

    /// Sends one message and waits until the broker has acknowledged it.
    ///
    /// Waits first for memory when `max_in_flight_bytes` are in use. To keep
    /// many messages in flight from one task, use [`Producer::enqueue`].
    pub async fn send(&self, message: Message) -> Result<RecordMetadata, Error> {
        self.enqueue(message).await?.await
    }

    /// Queues one message and returns once it has its place in the
    /// producer's order, handing back a future for its acknowledgement.
    ///
    /// This waits only for memory (backpressure), never for the broker, so
    /// calling it in a loop pipelines messages into batches.
    pub async fn enqueue(&self, message: Message) -> Result<DeliveryFuture, Error> {
        if let Some(error) = self.shared.fatal.get() {
            return Err(error.clone());
        }
        // Tracing on: the message carries its trace context, and a sampled
        // one has a `send` span, ended by the acknowledgement.
        let (trace, span) = match crate::telemetry::send_span(&self.shared.topic, message.value.len()) {
            Some((trace, span)) => (Some(trace), span),
            None => (None, None),
        };
        let size = message.encoded_size(trace.as_ref());
        let limit = MAX_MESSAGE_BYTES - HEADER_LEN - REQUEST_OVERHEAD;
        if size > limit {
            return Err(Error::RecordTooLarge { size, limit });
        }
        // A message larger than the whole budget waits for all of it.
        let permits = size.clamp(1, self.shared.memory_limit) as u32;
        let permit = self
            .shared
            .memory
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| self.shared.fatal.get().cloned().unwrap_or(Error::ProducerClosed))?;
        let timestamp_ms = message.timestamp.unwrap_or_else(now_ms);
        let (ack, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Send(PendingMessage { message, timestamp_ms, ack, permit: Some(permit), trace, size }))
            .map_err(|_| Error::ProducerClosed)?;
        Ok(DeliveryFuture { rx, span })
    }

    /// Sends every message enqueued so far without waiting for `linger`, and
    /// waits until each is acknowledged or failed (outcomes are reported
    /// through their own futures).
    pub async fn flush(&self) -> Result<(), Error> {
        crate::pipeline::flush(&self.shared.commands).await
    }

    /// Flushes, then stops the producer (and every clone of it). Messages
    /// enqueued after this fail with [`Error::ProducerClosed`]. Closing twice
    /// is harmless.
    pub async fn close(&self) -> Result<(), Error> {
        crate::pipeline::close(&self.shared.commands).await
    }
}

/// Registers an idempotent producer with the broker.
async fn init_producer(client: &Client, name: Option<&str>) -> Result<Identity, Error> {
    let request =
        InitProducerRequest { tenant: client.tenant().to_owned(), producer_name: name.unwrap_or_default().to_owned() };
    let response = match client.log_rpc().init_producer(client.request(request)).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            return Err(Error::Unsupported(
                "the broker does not support idempotent producers (InitProducer); set ProducerConfig::idempotent = false to produce without them".into(),
            ));
        }
        Err(status) => return Err(status.into()),
    };
    let epoch = i16::try_from(response.producer_epoch).ok().filter(|e| *e >= 0);
    match epoch {
        Some(epoch) if response.producer_id >= 0 => Ok(Identity { producer_id: response.producer_id, epoch }),
        _ => Err(Error::from(tonic::Status::internal(format!(
            "InitProducer returned an invalid identity (producer id {}, epoch {})",
            response.producer_id, response.producer_epoch
        )))),
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use futures::FutureExt;

    use super::*;
    use crate::mock_broker::MockBroker;
    use strata_proto::v1::ErrorCode;

    async fn setup(partitions: u32) -> (MockBroker, Client) {
        MockBroker::with_topic(partitions).await
    }

    fn small_batches() -> ProducerConfig {
        ProducerConfig { batch_bytes: 200, retry: RetryConfig::fast(5, 5), ..ProducerConfig::default() }
    }

    async fn produce_all(producer: &Producer, messages: Vec<Message>) -> Vec<Result<RecordMetadata, Error>> {
        let mut acks = Vec::new();
        for m in messages {
            acks.push(producer.enqueue(m).await.unwrap());
        }
        producer.flush().await.unwrap();
        futures::future::join_all(acks).await
    }

    fn numbered(n: usize) -> Vec<Message> {
        (0..n).map(|i| Message::new(format!("m{i}"))).collect()
    }

    #[tokio::test]
    async fn keyless_messages_are_acknowledged_with_contiguous_offsets() {
        let (broker, client) = setup(3).await;
        let producer = client.producer_with_config("t", small_batches()).await.unwrap();
        let results = produce_all(&producer, numbered(500)).await;
        let mut by_partition: HashMap<u32, Vec<u64>> = HashMap::new();
        let mut values: HashMap<u32, Vec<String>> = HashMap::new();
        for (i, r) in results.into_iter().enumerate() {
            let meta = r.unwrap();
            by_partition.entry(meta.partition).or_default().push(meta.offset);
            values.entry(meta.partition).or_default().push(format!("m{i}"));
        }
        assert!(by_partition.len() > 1, "keyless messages spread over partitions");
        for (partition, offsets) in by_partition {
            let expected: Vec<u64> = (0..offsets.len() as u64).collect();
            assert_eq!(offsets, expected, "partition {partition}");
            let stored: Vec<String> =
                broker.values("t", partition).iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect();
            assert_eq!(stored, values[&partition], "order kept in partition {partition}");
        }
        producer.close().await.unwrap();
    }

    #[tokio::test]
    async fn keyed_messages_follow_the_key_hash_and_explicit_partitions_win() {
        let (_broker, client) = setup(4).await;
        let producer = client.producer("t").await.unwrap();
        for key in ["a", "b", "c", "order-42"] {
            let meta = producer.send(Message::new("v").with_key(key)).await.unwrap();
            assert_eq!(meta.partition, crate::partition_for_key(key.as_bytes(), 4));
        }
        let meta = producer.send(Message::new("v").with_key("a").with_partition(2)).await.unwrap();
        assert_eq!(meta.partition, 2);
    }

    #[tokio::test]
    async fn a_broken_stream_is_reopened_and_unacked_batches_resent_in_order() {
        let (broker, client) = setup(1).await;
        broker.faults(|f| f.break_produce_after = Some(3));
        let producer = client.producer_with_config("t", small_batches()).await.unwrap();
        let results = produce_all(&producer, numbered(300)).await;
        let offsets: Vec<u64> = results.into_iter().map(|r| r.unwrap().offset).collect();
        assert_eq!(offsets, (0..300).collect::<Vec<u64>>());
        let stored: Vec<String> =
            broker.values("t", 0).iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect();
        let expected: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
        assert_eq!(stored, expected);
        assert!(broker.produce_streams_opened() >= 2);
    }

    #[tokio::test]
    async fn transient_batch_errors_are_retried_in_order() {
        let (broker, client) = setup(1).await;
        broker.faults(|f| {
            f.item_errors.push_back((tonic::Code::Unavailable, ErrorCode::ShuttingDown));
            f.item_errors.push_back((tonic::Code::ResourceExhausted, ErrorCode::ResourceExhausted));
        });
        let config = ProducerConfig { max_in_flight_batches: 1, ..small_batches() };
        let producer = client.producer_with_config("t", config).await.unwrap();
        let results = produce_all(&producer, numbered(100)).await;
        assert!(results.iter().all(Result::is_ok));
        let stored: Vec<String> =
            broker.values("t", 0).iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect();
        assert_eq!(stored, (0..100).map(|i| format!("m{i}")).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn permanent_batch_errors_fail_only_that_batch() {
        let (broker, client) = setup(1).await;
        broker.faults(|f| f.item_errors.push_back((tonic::Code::InvalidArgument, ErrorCode::CorruptBatch)));
        let producer = client.producer("t").await.unwrap();
        let first = producer.send(Message::new("x")).await.unwrap_err();
        assert_eq!(first.code(), Some(tonic::Code::InvalidArgument));
        assert_eq!(first.error_code(), ErrorCode::CorruptBatch);
        let second = producer.send(Message::new("y")).await.unwrap();
        assert_eq!(second.offset, 0);
        assert_eq!(broker.batches_received(), 2);
    }

    #[tokio::test]
    async fn unknown_partitions_fail_without_retries() {
        let (_broker, client) = setup(2).await;
        let producer = client.producer("t").await.unwrap();
        let err = producer.send(Message::new("x").with_partition(9)).await.unwrap_err();
        assert_eq!(err.error_code(), ErrorCode::UnknownPartition);
        assert!(producer.send(Message::new("ok")).await.is_ok());
    }

    #[tokio::test]
    async fn missing_topics_and_bad_configs_fail_at_creation() {
        let (_broker, client) = setup(1).await;
        let err = client.producer("nope").await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        let err = client
            .producer_with_config("t", ProducerConfig { batch_bytes: 0, ..ProducerConfig::default() })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)));
    }

    #[tokio::test]
    async fn enqueue_waits_for_memory_and_resumes_after_acks() {
        let (_broker, client) = setup(1).await;
        let config = ProducerConfig {
            max_in_flight_bytes: 1000,
            // Nothing is sent until flushed, so nothing frees memory.
            linger: Duration::from_secs(3600),
            send_when_idle: false,
            ..ProducerConfig::default()
        };
        let producer = client.producer_with_config("t", config).await.unwrap();
        let mut acks = Vec::new();
        let blocked = loop {
            let mut fut = Box::pin(producer.enqueue(Message::new(vec![0u8; 100])));
            match (&mut fut).now_or_never() {
                Some(ack) => acks.push(ack.unwrap()),
                None => break fut,
            }
            assert!(acks.len() < 20, "memory limit not enforced");
        };
        assert!(acks.len() >= 8);
        // Flushing acknowledges the queued messages, which frees memory.
        let flusher = producer.clone();
        let (ack, flushed) = tokio::join!(blocked, flusher.flush());
        flushed.unwrap();
        acks.push(ack.unwrap());
        producer.flush().await.unwrap();
        for ack in acks {
            ack.await.unwrap();
        }
        assert_eq!(producer.shared.memory.available_permits(), 1000);
    }

    #[tokio::test]
    async fn close_delivers_pending_messages_then_refuses_new_ones() {
        let (broker, client) = setup(1).await;
        let config =
            ProducerConfig { linger: Duration::from_secs(3600), send_when_idle: false, ..ProducerConfig::default() };
        let producer = client.producer_with_config("t", config).await.unwrap();
        let ack = producer.enqueue(Message::new("last words")).await.unwrap();
        producer.close().await.unwrap();
        assert_eq!(ack.await.unwrap().offset, 0);
        assert_eq!(broker.values("t", 0).len(), 1);
        let err = producer.send(Message::new("late")).await.unwrap_err();
        assert!(matches!(err, Error::ProducerClosed));
        producer.close().await.unwrap();
        assert!(matches!(producer.flush().await, Err(Error::ProducerClosed)));
    }

    #[tokio::test]
    async fn dropping_every_handle_still_delivers_queued_messages() {
        let (broker, client) = setup(1).await;
        let producer = client.producer("t").await.unwrap();
        let ack = producer.enqueue(Message::new("orphan")).await.unwrap();
        drop(producer);
        assert_eq!(ack.await.unwrap().offset, 0);
        assert_eq!(broker.values("t", 0).len(), 1);
    }

    #[tokio::test]
    async fn a_vanished_broker_fails_messages_once_retries_are_used_up() {
        let (broker, client) = setup(1).await;
        let producer = client.producer_with_config("t", small_batches()).await.unwrap();
        producer.send(Message::new("before")).await.unwrap();
        broker.take_down();
        let err = producer.send(Message::new("after")).await.unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        // The producer stays usable: a later message tries again.
        let err = producer.send(Message::new("again")).await.unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        // Once the broker is back, the sequence is resynchronised with it.
        broker.bring_up();
        let meta = producer.send(Message::new("back")).await.unwrap();
        assert_eq!(meta.offset, 1);
        assert_eq!(stored(&broker), vec!["before", "back"]);
    }

    #[tokio::test]
    async fn oversized_records_are_refused_locally() {
        let (_broker, client) = setup(1).await;
        let producer = client.producer("t").await.unwrap();
        let err = producer.enqueue(Message::new(vec![0u8; MAX_MESSAGE_BYTES])).await.unwrap_err();
        assert!(matches!(err, Error::RecordTooLarge { .. }));
        assert_eq!(err.error_code(), ErrorCode::RecordTooLarge);
    }

    fn stored(broker: &MockBroker) -> Vec<String> {
        broker.values("t", 0).iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect()
    }

    /// Produces `messages`, returning every outcome in order.
    async fn outcomes(producer: &Producer, messages: Vec<Message>) -> Vec<Result<RecordMetadata, Error>> {
        produce_all(producer, messages).await
    }

    #[tokio::test]
    async fn lost_acknowledgements_are_resent_and_stored_exactly_once() {
        let (broker, client) = setup(1).await;
        // The 4th batch is stored, then the stream breaks before its answer.
        broker.faults(|f| f.lose_ack_after = Some(3));
        let producer = client.producer_with_config("t", small_batches()).await.unwrap();
        assert!(producer.producer_id().is_some(), "idempotent by default");
        let results = outcomes(&producer, numbered(300)).await;
        let offsets: Vec<u64> = results.into_iter().map(|r| r.unwrap().offset).collect();
        assert_eq!(offsets, (0..300).collect::<Vec<u64>>(), "contiguous offsets, nothing twice");
        assert_eq!(stored(&broker), (0..300).map(|i| format!("m{i}")).collect::<Vec<_>>());
        assert!(broker.duplicates() >= 1, "the resent batch was recognised");
        assert!(broker.produce_streams_opened() >= 2);
    }

    #[tokio::test]
    async fn a_batch_stored_but_answered_with_an_error_is_not_stored_again() {
        let (broker, client) = setup(1).await;
        producer_sends_first(&client).await;
        broker.faults(|f| f.store_then_fail.push_back((tonic::Code::Unavailable, ErrorCode::ShuttingDown)));
        let producer = client.producer_with_config("t", small_batches()).await.unwrap();
        let results = outcomes(&producer, numbered(100)).await;
        let offsets: Vec<u64> = results.into_iter().map(|r| r.unwrap().offset).collect();
        assert_eq!(offsets, (1..101).collect::<Vec<u64>>());
        let mut expected = vec!["first".to_owned()];
        expected.extend((0..100).map(|i| format!("m{i}")));
        assert_eq!(stored(&broker), expected);
        assert_eq!(broker.duplicates(), 1);
    }

    async fn producer_sends_first(client: &Client) {
        let producer = client.producer("t").await.unwrap();
        producer.send(Message::new("first")).await.unwrap();
        producer.close().await.unwrap();
    }

    /// A producer of small batches has stored "first"; the broker refuses
    /// its next batch with `code` and `error` while `n` numbered messages go
    /// out. The broker, the producer and the outcomes of those messages.
    async fn after_a_refusal(
        code: tonic::Code,
        error: ErrorCode,
        n: usize,
    ) -> (MockBroker, Producer, Vec<Result<RecordMetadata, Error>>) {
        let (broker, client) = setup(1).await;
        let producer = client.producer_with_config("t", small_batches()).await.unwrap();
        producer.send(Message::new("first")).await.unwrap();
        broker.faults(|f| f.item_errors.push_back((code, error)));
        let results = outcomes(&producer, numbered(n)).await;
        (broker, producer, results)
    }

    #[tokio::test]
    async fn a_transient_failure_ahead_of_batches_in_flight_keeps_their_order() {
        // The next batch fails transiently while later ones are in flight:
        // the broker refuses those (sequence gap) and they follow it again.
        let (broker, _producer, results) =
            after_a_refusal(tonic::Code::Unavailable, ErrorCode::ShuttingDown, 200).await;
        let offsets: Vec<u64> = results.into_iter().map(|r| r.unwrap().offset).collect();
        assert_eq!(offsets, (1..201).collect::<Vec<u64>>());
        let mut expected = vec!["first".to_owned()];
        expected.extend((0..200).map(|i| format!("m{i}")));
        assert_eq!(stored(&broker), expected, "order kept, each message once");
        assert!(broker.out_of_order() >= 1, "later batches were in flight, refused, and resent");
    }

    #[tokio::test]
    async fn a_batch_refused_for_good_does_not_leave_a_hole_in_the_sequence() {
        let (broker, producer, results) =
            after_a_refusal(tonic::Code::InvalidArgument, ErrorCode::CorruptBatch, 200).await;
        let failed: Vec<usize> = results.iter().enumerate().filter(|(_, r)| r.is_err()).map(|(i, _)| i).collect();
        assert!(!failed.is_empty() && failed.len() < 200, "only the refused batch fails: {failed:?}");
        assert_eq!(failed, (0..failed.len()).collect::<Vec<_>>(), "it was the first batch");
        for r in &results {
            if let Err(e) = r {
                assert_eq!(e.error_code(), ErrorCode::CorruptBatch, "{e}");
            }
        }
        let mut expected = vec!["first".to_owned()];
        expected.extend((failed.len()..200).map(|i| format!("m{i}")));
        assert_eq!(stored(&broker), expected);
        assert!(broker.out_of_order() >= 1, "batches numbered after the hole were renumbered");
        // Later messages carry on.
        producer.send(Message::new("later")).await.unwrap();
    }

    #[tokio::test]
    async fn an_unexplained_sequence_gap_fails_the_partitions_pending_batches_then_recovers() {
        let (broker, producer, results) =
            after_a_refusal(tonic::Code::FailedPrecondition, ErrorCode::OutOfOrderSequence, 100).await;
        let first_error = results.iter().find_map(|r| r.as_ref().err()).expect("the gap fails messages");
        assert_eq!(first_error.error_code(), ErrorCode::OutOfOrderSequence);
        assert!(results[0].is_err(), "the refused batch fails");
        let acked: Vec<String> =
            results.iter().enumerate().filter(|(_, r)| r.is_ok()).map(|(i, _)| format!("m{i}")).collect();
        let mut expected = vec!["first".to_owned()];
        expected.extend(acked);
        let later = producer.send(Message::new("later")).await.unwrap();
        expected.push("later".to_owned());
        assert_eq!(stored(&broker), expected, "exactly the acknowledged messages are stored");
        assert_eq!(later.offset, expected.len() as u64 - 1);
    }

    #[tokio::test]
    async fn a_newer_producer_with_the_same_name_fences_the_older_one() {
        let (broker, client) = setup(1).await;
        let named = ProducerConfig { producer_name: Some("orders-writer".into()), ..small_batches() };
        let old = client.producer_with_config("t", named.clone()).await.unwrap();
        old.send(Message::new("old-1")).await.unwrap();
        let new = client.producer_with_config("t", named).await.unwrap();
        assert_eq!(new.producer_id().map(|p| p.0), old.producer_id().map(|p| p.0), "same id");
        assert!(new.producer_id().map(|p| p.1) > old.producer_id().map(|p| p.1), "newer epoch");
        new.send(Message::new("new-1")).await.unwrap();
        let err = old.send(Message::new("old-2")).await.unwrap_err();
        assert!(matches!(err, Error::ProducerFenced(_)), "{err:?}");
        assert_eq!(err.error_code(), ErrorCode::ProducerFenced);
        // Fatal: later sends fail at once, without reaching the broker.
        let received = broker.batches_received();
        let err = old.send(Message::new("old-3")).await.unwrap_err();
        assert_eq!(err.error_code(), ErrorCode::ProducerFenced);
        assert_eq!(broker.batches_received(), received);
        new.send(Message::new("new-2")).await.unwrap();
        assert_eq!(stored(&broker), vec!["old-1", "new-1", "new-2"]);
    }

    #[tokio::test]
    async fn without_idempotence_no_identity_is_requested_and_names_are_refused() {
        let (broker, client) = setup(1).await;
        let config = ProducerConfig { idempotent: false, ..ProducerConfig::default() };
        let producer = client.producer_with_config("t", config).await.unwrap();
        assert_eq!(producer.producer_id(), None);
        producer.send(Message::new("x")).await.unwrap();
        assert_eq!(stored(&broker), vec!["x"]);
        let config = ProducerConfig { idempotent: false, producer_name: Some("n".into()), ..ProducerConfig::default() };
        let err = client.producer_with_config("t", config).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    }
}
