//! [`QueueProducer`]: the queue counterpart of the topic [`Producer`](crate::Producer).
//! [`QueueProducer::enqueue`] hands back a [`SendFuture`] at once; a
//! background task gathers messages into `SendStream` requests and keeps
//! several in flight on one stream.
//!
//! Batching ("linger that does not wait when the pipe is idle"): a message
//! that finds no request in flight is sent at once, alone; while requests
//! are in flight, messages gather until the batch is full
//! (`batch_bytes`/`batch_messages`), the oldest waited `linger`, or the pipe
//! drains — so a batch holds what arrived during one round trip, at any rate.
//!
//! Retries: a request is all-or-nothing on the broker. An explicit transient
//! refusal (shutting down, overloaded, queue full) or a failure before the
//! request could reach the broker stored nothing and is resent. A broken
//! stream may hide a success: its requests are resent only when the resend
//! is exact — the queue has a dedup window and every message has a dedup id,
//! which the producer gives each message that has none
//! ([`QueueProducerConfig::auto_dedup_ids`]). Otherwise their futures fail
//! with the stream's error (the messages may or may not be stored; nothing
//! is ever stored twice by the producer itself).
//!
//! Order: for FIFO queues one request is in flight at a time, so messages
//! are enqueued in the order `enqueue` returned; for other queues requests
//! are pipelined and may be enqueued by the broker out of request order.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use backon::ExponentialBackoff;
use strata_proto::v1 as pb;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::message::QueueMessage;
use super::send::{SendResult, stored_nothing, transient_refusal};
use crate::client::{Client, MAX_MESSAGE_BYTES};
use crate::error::Error;
use crate::pipeline::conn_event;
use crate::retry::RetryConfig;
use crate::routing::{Learned, MAX_REDIRECTS, Target};

/// Room left in a request for framing around the messages.
const REQUEST_OVERHEAD: usize = 64 * 1024;
/// Protobuf framing per message beyond body, headers and strings.
const MESSAGE_OVERHEAD: usize = 32;

/// Tuning of a [`QueueProducer`].
///
/// ```
/// use std::time::Duration;
/// use strata_client::QueueProducerConfig;
///
/// // Favour batches over latency: wait up to 20 ms for company even when idle.
/// let config = QueueProducerConfig {
///     send_when_idle: false,
///     linger: Duration::from_millis(20),
///     ..QueueProducerConfig::default()
/// };
/// assert!(config.batch_bytes > 0);
/// ```
#[derive(Debug, Clone)]
pub struct QueueProducerConfig {
    /// A request is sent once its messages hold this many bytes.
    pub batch_bytes: usize,
    /// ... or this many messages.
    pub batch_messages: usize,
    /// Longest a message waits for a batch to fill while requests are in
    /// flight (and, with `send_when_idle` off, at all).
    pub linger: Duration,
    /// Send at once when no request is in flight (the default): low latency
    /// at low rates, batching only under load.
    pub send_when_idle: bool,
    /// Memory for messages not yet acknowledged (gathering and in flight);
    /// when it is used up, [`QueueProducer::enqueue`] waits.
    pub max_in_flight_bytes: usize,
    /// Requests sent and not yet answered (1 for FIFO queues, whatever this says).
    pub max_in_flight_requests: usize,
    /// Retries of transient failures, per request.
    pub retry: RetryConfig,
    /// How long a request may wait for its answer (and the stream for its
    /// opening) before the stream is considered broken.
    pub request_timeout: Duration,
    /// Give every message without a dedup id a unique one, so that resends
    /// after a broken stream are exact (the broker drops the second copy).
    /// Takes effect only when the queue has a dedup window; receivers see the
    /// generated id in [`Delivery::dedup_id`](crate::Delivery::dedup_id).
    pub auto_dedup_ids: bool,
}

impl Default for QueueProducerConfig {
    /// 256 KiB or 1000 messages per request, 5 ms linger under load, sent at
    /// once when idle, 32 MiB in flight, 8 requests in flight, default retries.
    fn default() -> Self {
        QueueProducerConfig {
            batch_bytes: 256 * 1024,
            batch_messages: 1000,
            linger: Duration::from_millis(5),
            send_when_idle: true,
            max_in_flight_bytes: 32 * 1024 * 1024,
            max_in_flight_requests: 8,
            retry: RetryConfig::default(),
            request_timeout: Duration::from_secs(30),
            auto_dedup_ids: true,
        }
    }
}

/// Resolves when the broker has enqueued one message (durably, per the
/// queue's durability) or definitively failed it. Dropping it does not
/// cancel the message.
#[derive(Debug)]
#[must_use = "a SendFuture tells whether the message was enqueued"]
pub struct SendFuture {
    rx: oneshot::Receiver<Result<SendResult, Error>>,
    /// The message's `send` span (tracing on); ends with the answer.
    span: Option<strata_telemetry::BoxedSpan>,
}

impl Future for SendFuture {
    type Output = Result<SendResult, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        crate::pipeline::poll_answer(&mut this.rx, &mut this.span, cx, |s, span| {
            use strata_telemetry::{Attribute, Span, attr};
            span.set_attribute(Attribute::new(attr::MESSAGE_ID, s.message_id.to_string()));
        })
    }
}

type Ack = oneshot::Sender<Result<SendResult, Error>>;

struct Pending {
    message: pb::OutgoingMessage,
    ack: Ack,
    permit: OwnedSemaphorePermit,
    size: usize,
}

type Command = crate::pipeline::Command<Pending>;

/// Sends messages to one queue, batching and pipelining them. Cheap to
/// clone; clones share the batches and the stream. Made by
/// [`Client::queue_producer`].
///
/// ```no_run
/// # async fn demo(client: strata_client::Client) -> Result<(), strata_client::Error> {
/// use strata_client::QueueMessage;
///
/// let producer = client.queue_producer("jobs").await?;
/// // One message per call, as an application sends them: the producer
/// // batches concurrent ones into one request.
/// let mut acks = Vec::new();
/// for i in 0..100 {
///     acks.push(producer.enqueue(QueueMessage::new(format!("job {i}"))).await?);
/// }
/// for ack in acks {
///     let result = ack.await?;
///     println!("enqueued as message {}", result.message_id);
/// }
/// // Or wait for one message's answer:
/// producer.send(QueueMessage::new("one more")).await?;
/// producer.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct QueueProducer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    queue: String,
    commands: mpsc::UnboundedSender<Command>,
    memory: Arc<Semaphore>,
    memory_limit: usize,
    /// Generated dedup ids: `<prefix><counter>`; `None` when not generated.
    dedup_prefix: Option<String>,
    dedup_counter: AtomicU64,
    exact_resends: bool,
}

impl Client {
    /// A [`QueueProducer`] for `queue` with the default
    /// [`QueueProducerConfig`]. Fails when the queue does not exist.
    pub async fn queue_producer(&self, queue: &str) -> Result<QueueProducer, Error> {
        self.queue_producer_with_config(queue, QueueProducerConfig::default()).await
    }

    /// A [`QueueProducer`] for `queue` with the given configuration.
    pub async fn queue_producer_with_config(
        &self,
        queue: &str,
        config: QueueProducerConfig,
    ) -> Result<QueueProducer, Error> {
        QueueProducer::start(self, queue, config).await
    }
}

impl QueueProducer {
    async fn start(client: &Client, queue: &str, config: QueueProducerConfig) -> Result<QueueProducer, Error> {
        for (name, value) in [
            ("batch_bytes", config.batch_bytes),
            ("batch_messages", config.batch_messages),
            ("max_in_flight_bytes", config.max_in_flight_bytes),
            ("max_in_flight_requests", config.max_in_flight_requests),
        ] {
            if value == 0 {
                return Err(Error::InvalidArgument(format!("{name} must be positive")));
            }
        }
        let description = client.describe_queue(queue).await?;
        let settings = description.config.unwrap_or_default();
        let dedup_window = settings.dedup_window_ms.unwrap_or(0) > 0;
        let fifo = settings.fifo.unwrap_or(false);
        let dedup_prefix = (dedup_window && config.auto_dedup_ids).then(unique_prefix);
        let memory_limit = config.max_in_flight_bytes.min(u32::MAX as usize).min(Semaphore::MAX_PERMITS);
        let memory = Arc::new(Semaphore::new(memory_limit));
        let (commands, rx) = mpsc::unbounded_channel();
        let max_in_flight = if fifo { 1 } else { config.max_in_flight_requests };
        let task = Task {
            client: client.clone(),
            queue: queue.to_owned(),
            config,
            max_in_flight,
            dedup_window,
            commands: rx,
            commands_open: true,
            memory: memory.clone(),
            open: Vec::new(),
            open_bytes: 0,
            open_since: None,
            ready: VecDeque::new(),
            in_flight: BTreeMap::new(),
            conn: Conn::Idle,
            conn_url: None,
            redirects: 0,
            conn_backoff: None,
            next_request_id: 0,
            next_seq: 0,
            flush_waiters: Vec::new(),
            close_waiters: Vec::new(),
            closing: false,
        };
        tokio::spawn(task.run());
        Ok(QueueProducer {
            shared: Arc::new(Shared {
                queue: queue.to_owned(),
                commands,
                memory,
                memory_limit,
                dedup_prefix,
                dedup_counter: AtomicU64::new(0),
                exact_resends: dedup_window,
            }),
        })
    }

    /// The queue this producer sends to.
    pub fn queue(&self) -> &str {
        &self.shared.queue
    }

    /// Whether requests lost with a broken stream are resent (the queue has a
    /// dedup window, so a resend cannot enqueue a message twice) rather than
    /// failed.
    pub fn resends_are_exact(&self) -> bool {
        self.shared.exact_resends
    }

    /// Sends one message and waits until the broker has enqueued it.
    pub async fn send(&self, message: QueueMessage) -> Result<SendResult, Error> {
        self.enqueue(message).await?.await
    }

    /// Queues one message and returns once it has its place in the
    /// producer's order, handing back a future for the broker's answer.
    ///
    /// Waits only for memory (back-pressure: `max_in_flight_bytes`), never
    /// for the broker, so calling it in a loop batches and pipelines.
    pub async fn enqueue(&self, mut message: QueueMessage) -> Result<SendFuture, Error> {
        let span = match crate::telemetry::send_span(&self.shared.queue, message.body.len()) {
            Some((trace, span)) => {
                trace.write_into(&mut message.headers);
                span
            }
            None => None,
        };
        if message.dedup_id.is_none()
            && let Some(prefix) = &self.shared.dedup_prefix
        {
            let n = self.shared.dedup_counter.fetch_add(1, Ordering::Relaxed);
            message.dedup_id = Some(format!("{prefix}{n:x}"));
        }
        let message = message.into_proto();
        let size = encoded_size(&message);
        let limit = MAX_MESSAGE_BYTES - REQUEST_OVERHEAD;
        if size > limit {
            return Err(Error::RecordTooLarge { size, limit });
        }
        let permits = size.clamp(1, self.shared.memory_limit) as u32;
        let permit = self.shared.memory.clone().acquire_many_owned(permits).await.map_err(|_| Error::ProducerClosed)?;
        let (ack, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Send(Pending { message, ack, permit, size }))
            .map_err(|_| Error::ProducerClosed)?;
        Ok(SendFuture { rx, span })
    }

    /// Sends every message enqueued so far without waiting for `linger`, and
    /// waits until each has its answer (reported through its own future).
    pub async fn flush(&self) -> Result<(), Error> {
        crate::pipeline::flush(&self.shared.commands).await
    }

    /// Sends what is pending, waits for the answers and stops the
    /// background task; later sends fail with [`Error::ProducerClosed`].
    /// Closing twice is fine.
    pub async fn close(&self) -> Result<(), Error> {
        crate::pipeline::close(&self.shared.commands).await
    }

    /// Bytes of messages enqueued and not yet answered.
    pub fn in_flight_bytes(&self) -> usize {
        self.shared.memory_limit - self.shared.memory.available_permits()
    }
}

/// A prefix no other producer uses: time, process and a counter, hashed.
fn unique_prefix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let seed = format!("{nanos}/{}/{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("qp-{:016x}-", xxhash_rust::xxh3::xxh3_64(seed.as_bytes()))
}

/// Bytes a message takes in a request, near enough for batching and memory.
fn encoded_size(m: &pb::OutgoingMessage) -> usize {
    let headers: usize = m.headers.iter().map(|h| h.key.len() + h.value.len() + 4).sum();
    m.body.len()
        + headers
        + m.group.len()
        + m.dedup_id.len()
        + m.reply_to.len()
        + m.correlation_id.len()
        + m.key.len()
        + MESSAGE_OVERHEAD
}

struct Batch {
    /// Sealing order: flushes wait for every batch sealed before them.
    seq: u64,
    messages: Vec<pb::OutgoingMessage>,
    acks: Vec<Ack>,
    /// Held for its `Drop`: the memory returns when the batch completes.
    _permits: Vec<OwnedSemaphorePermit>,
    /// Every message has a dedup id and the queue a dedup window.
    exact: bool,
    backoff: Option<ExponentialBackoff>,
    not_before: Option<Instant>,
}

impl Batch {
    fn succeed(mut self, results: Vec<SendResult>) {
        if results.len() != self.acks.len() {
            let n = self.acks.len();
            return self.fail(&Error::Unsupported(format!(
                "the broker answered a send of {n} messages with {} results",
                results.len()
            )));
        }
        for (ack, result) in std::mem::take(&mut self.acks).into_iter().zip(results) {
            let _ = ack.send(Ok(result));
        }
    }

    fn fail(mut self, error: &Error) {
        for ack in std::mem::take(&mut self.acks) {
            let _ = ack.send(Err(error.clone()));
        }
    }
}

type Conn = crate::pipeline::Conn<pb::SendStreamRequest, pb::SendStreamResponse>;
type ConnEvent = crate::pipeline::ConnEvent<pb::SendStreamResponse>;
type StreamResult = crate::pipeline::StreamResult<pb::SendStreamResponse>;

struct Task {
    client: Client,
    queue: String,
    config: QueueProducerConfig,
    max_in_flight: usize,
    dedup_window: bool,
    commands: mpsc::UnboundedReceiver<Command>,
    commands_open: bool,
    memory: Arc<Semaphore>,
    /// The batch being gathered.
    open: Vec<Pending>,
    open_bytes: usize,
    open_since: Option<Instant>,
    ready: VecDeque<Batch>,
    in_flight: BTreeMap<u64, (Batch, Instant)>,
    conn: Conn,
    /// The broker `conn` goes to (the queue's owner, as far as known).
    conn_url: Option<Arc<str>>,
    /// NOT_LEADER answers followed since the last success.
    redirects: usize,
    conn_backoff: Option<ExponentialBackoff>,
    next_request_id: u64,
    next_seq: u64,
    flush_waiters: Vec<(u64, oneshot::Sender<()>)>,
    close_waiters: Vec<oneshot::Sender<()>>,
    closing: bool,
}

impl Task {
    async fn run(mut self) {
        loop {
            let now = Instant::now();
            self.on_timers(now);
            self.seal_if_due(now);
            self.pump(now);
            self.notify_flush_waiters();
            if self.closing && self.open.is_empty() && self.ready.is_empty() && self.in_flight.is_empty() {
                break;
            }
            let wake = self.next_wakeup();
            tokio::select! {
                biased;
                ev = conn_event(&mut self.conn) => match ev {
                    ConnEvent::Opened(r) => self.on_opened(r),
                    ConnEvent::Response(r) => self.on_response(r),
                },
                cmd = self.commands.recv(), if self.commands_open => self.on_commands(cmd),
                () = sleep_until(wake) => {}
            }
        }
        self.memory.close();
        for (_, waiter) in self.flush_waiters.drain(..) {
            let _ = waiter.send(());
        }
        for waiter in self.close_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }

    fn on_commands(&mut self, first: Option<Command>) {
        let mut next = first;
        for handled in 1.. {
            match next {
                Some(Command::Send(p)) => self.on_send(p),
                Some(Command::Flush(waiter)) => {
                    self.seal();
                    self.flush_waiters.push((self.next_seq, waiter));
                }
                Some(Command::Close(waiter)) => {
                    self.close_waiters.push(waiter);
                    self.start_closing();
                }
                None => {
                    // Every handle is gone: deliver what is queued, then stop.
                    self.commands_open = false;
                    self.start_closing();
                    return;
                }
            }
            if handled == 1024 {
                // Let the stream and timers have a look.
                return;
            }
            next = match self.commands.try_recv() {
                Ok(cmd) => Some(cmd),
                Err(mpsc::error::TryRecvError::Empty) => return,
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
        }
    }

    fn start_closing(&mut self) {
        self.closing = true;
        self.memory.close();
        self.seal();
    }

    fn on_send(&mut self, p: Pending) {
        if self.closing {
            let _ = p.ack.send(Err(Error::ProducerClosed));
            return;
        }
        if !self.open.is_empty() && self.open_bytes + p.size > self.config.batch_bytes {
            self.seal();
        }
        self.open_since.get_or_insert_with(Instant::now);
        self.open_bytes += p.size;
        self.open.push(p);
        if self.open_bytes >= self.config.batch_bytes || self.open.len() >= self.config.batch_messages {
            self.seal();
        }
    }

    /// Seals the open batch when the pipe is idle or its linger is over.
    fn seal_if_due(&mut self, now: Instant) {
        let Some(since) = self.open_since else { return };
        let idle = self.config.send_when_idle && self.in_flight.is_empty() && self.ready.is_empty();
        if idle || since + self.config.linger <= now {
            self.seal();
        }
    }

    fn seal(&mut self) {
        if self.open.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.open);
        self.open_bytes = 0;
        self.open_since = None;
        let mut batch = Batch {
            seq: self.next_seq,
            messages: Vec::with_capacity(pending.len()),
            acks: Vec::with_capacity(pending.len()),
            _permits: Vec::with_capacity(pending.len()),
            exact: false,
            backoff: None,
            not_before: None,
        };
        self.next_seq += 1;
        for p in pending {
            batch.messages.push(p.message);
            batch.acks.push(p.ack);
            batch._permits.push(p.permit);
        }
        batch.exact = self.dedup_window && batch.messages.iter().all(|m| !m.dedup_id.is_empty());
        self.ready.push_back(batch);
    }

    fn on_timers(&mut self, now: Instant) {
        if let Conn::Backoff(until) = self.conn
            && until <= now
        {
            self.conn = Conn::Idle;
        }
        let timed_out = self.in_flight.values().any(|(_, sent)| *sent + self.config.request_timeout <= now);
        if timed_out {
            self.on_stream_failure(Error::Timeout {
                operation: "waiting for a queue send acknowledgement",
                timeout: self.config.request_timeout,
            });
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut consider = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        if let Some(since) = self.open_since {
            consider(since + self.config.linger);
        }
        if let Some(sent) = self.in_flight.values().map(|(_, sent)| *sent).min() {
            consider(sent + self.config.request_timeout);
        }
        if let Conn::Backoff(t) = self.conn {
            consider(t);
        }
        if let Some(t) = self.ready.front().and_then(|b| b.not_before) {
            consider(t);
        }
        wake
    }

    fn pump(&mut self, now: Instant) {
        if self.ready.is_empty() {
            return;
        }
        if matches!(self.conn, Conn::Idle) {
            self.open_stream();
        }
        let tx = match &self.conn {
            Conn::Connecting { tx, .. } | Conn::Up { tx, .. } => tx.clone(),
            Conn::Idle | Conn::Backoff(_) => return,
        };
        while self.in_flight.len() < self.max_in_flight {
            // Batches go in order; one backing off holds the rest back.
            if self.ready.front().is_none_or(|b| b.not_before.is_some_and(|t| t > now)) {
                break;
            }
            let Some(batch) = self.ready.pop_front() else { break };
            let request_id = self.next_request_id;
            let request = pb::SendStreamRequest {
                tenant: self.client.tenant().to_owned(),
                queue: self.queue.clone(),
                // Bodies are `Bytes`: the clone kept for resends is cheap.
                messages: batch.messages.clone(),
                request_id,
            };
            if tx.try_send(request).is_err() {
                // The stream is going away; its failure arrives on the
                // response side.
                self.ready.push_front(batch);
                break;
            }
            self.next_request_id += 1;
            self.in_flight.insert(request_id, (batch, now));
        }
    }

    fn open_stream(&mut self) {
        // The queue's owner when known; else a bootstrap broker, whose
        // NOT_LEADER answer names the owner (and a look-up runs meanwhile).
        let target = Target::Queue(&self.queue);
        let url = match self.client.router().cached(self.client.tenant(), target) {
            Some(url) => url,
            None => {
                self.client.refresh_route_in_background(target);
                self.client.router().any()
            }
        };
        let mut rpc = self.client.queues_rpc_at(&url);
        self.conn_url = Some(url);
        let timeout = self.config.request_timeout;
        self.conn =
            Conn::connecting(self.max_in_flight, timeout, "opening the queue send stream", |requests| async move {
                rpc.send_stream(requests).await
            });
    }

    fn on_opened(&mut self, result: StreamResult) {
        match result {
            Ok(rx) => {
                if let Conn::Connecting { tx, .. } = std::mem::replace(&mut self.conn, Conn::Idle) {
                    self.conn = Conn::Up { tx, rx: Box::new(rx) };
                }
            }
            Err(e) => self.on_stream_failure(e),
        }
    }

    fn on_response(&mut self, result: Result<Option<pb::SendStreamResponse>, tonic::Status>) {
        let response = match result {
            Ok(Some(r)) => r,
            Ok(None) if self.in_flight.is_empty() => {
                self.conn = Conn::Idle;
                return;
            }
            Ok(None) => {
                return self.on_stream_failure(Error::from(tonic::Status::unavailable(
                    "the broker closed the queue send stream",
                )));
            }
            Err(status) => return self.on_stream_failure(Error::from(status)),
        };
        let Some((mut batch, _)) = self.in_flight.remove(&response.request_id) else {
            tracing::warn!(request_id = response.request_id, "queue send response for an unknown request");
            return;
        };
        let Some(item) = response.error else {
            self.conn_backoff = None;
            self.redirects = 0;
            batch.succeed(response.results);
            return;
        };
        let error = Error::from(item);
        let asked = self.conn_url.clone().unwrap_or_default();
        if self.redirects < MAX_REDIRECTS
            && let Learned::Moved(_) = self.client.learn(Target::Queue(&self.queue), &asked, &error)
        {
            // The stream goes to a broker that does not serve the queue:
            // whatever is on it is refused the same way (stored nothing), so
            // all of it goes to the owner, in order, on a new stream.
            self.redirects += 1;
            self.requeue(batch);
            for (_, (b, _)) in std::mem::take(&mut self.in_flight) {
                self.requeue(b);
            }
            self.conn = Conn::Idle;
            return;
        }
        // The broker chose this answer and a request is all-or-nothing: a
        // transient refusal stored nothing.
        if error.server_error().is_some_and(transient_refusal) {
            let retry = self.config.retry;
            if let Some(delay) = batch.backoff.get_or_insert_with(|| retry.backoff()).next() {
                // A tenant rate quota says how long to wait at least.
                let delay = delay.max(error.retry_after().unwrap_or_default());
                tracing::debug!(queue = %self.queue, %error, ?delay, "retrying queue send");
                batch.not_before = Some(Instant::now() + delay);
                self.requeue(batch);
                return;
            }
        }
        batch.fail(&error);
    }

    /// Puts a batch back among the ready ones, in sealing order.
    fn requeue(&mut self, batch: Batch) {
        let at = self.ready.iter().position(|b| b.seq > batch.seq).unwrap_or(self.ready.len());
        self.ready.insert(at, batch);
    }

    fn on_stream_failure(&mut self, error: Error) {
        self.conn = Conn::Idle;
        if let Some(url) = self.conn_url.take() {
            // A broken connection: look the owner up again before reconnecting.
            self.client.learn(Target::Queue(&self.queue), &url, &error);
        }
        let safe = stored_nothing(&error);
        let retry = self.config.retry;
        let delay = self.conn_backoff.get_or_insert_with(|| retry.backoff()).next();
        let in_flight = std::mem::take(&mut self.in_flight);
        for (_, (mut batch, _)) in in_flight {
            let resend = (safe || batch.exact)
                && error.is_retryable()
                && batch.backoff.get_or_insert_with(|| retry.backoff()).next().is_some();
            if resend && delay.is_some() {
                self.requeue(batch);
            } else {
                batch.fail(&error);
            }
        }
        match delay {
            Some(delay) if error.is_retryable() => {
                tracing::debug!(queue = %self.queue, %error, ?delay, "queue send stream failed; reconnecting");
                self.conn = Conn::Backoff(Instant::now() + delay);
            }
            _ => {
                // Out of retries: everything waiting fails, later messages
                // try again with a fresh backoff.
                self.conn_backoff = None;
                for batch in self.ready.drain(..) {
                    batch.fail(&error);
                }
            }
        }
    }

    fn notify_flush_waiters(&mut self) {
        if self.flush_waiters.is_empty() {
            return;
        }
        let oldest = self
            .ready
            .iter()
            .map(|b| b.seq)
            .chain(self.in_flight.values().map(|(b, _)| b.seq))
            .min()
            .unwrap_or(self.next_seq);
        let mut i = 0;
        while i < self.flush_waiters.len() {
            if self.flush_waiters[i].0 <= oldest {
                let (_, waiter) = self.flush_waiters.swap_remove(i);
                let _ = waiter.send(());
            } else {
                i += 1;
            }
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
