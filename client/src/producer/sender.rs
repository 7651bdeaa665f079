//! The producer's background task: turns queued messages into batches, keeps
//! up to `max_in_flight_batches` of them in flight on one `ProduceStream`,
//! matches acknowledgements by `request_id`, and on failure reconnects and
//! resends in the original order.
//!
//! Ordering rules, which every change here must keep:
//! - Every sealed batch gets a sequence number (`seq`) in sealing order, and
//!   batches of one partition are sealed in message order.
//! - Batches not yet sent live in `ready`, ordered by `seq`; they are sent in
//!   that order, skipping only partitions that are backing off. A broken
//!   stream puts every in-flight batch back into `ready`, so the resend keeps
//!   the original order.
//! - After a per-batch transient error a partition is "probing": at most one
//!   of its batches is in flight until one succeeds.
//!
//! Idempotence (when the producer has an identity from `InitProducer`):
//! - A partition starts with one batch in flight until one succeeds: the
//!   broker accepts any sequence from a producer it does not know yet, so a
//!   second batch must not overtake a first one that fails.
//! - A batch gets its sequence when it is first sent (`stamp`), from the
//!   partition's counter, so sequences follow the order batches reach the
//!   broker. A resend (broken stream, transient error) sends the same bytes,
//!   and the broker answers a batch it already has with `duplicate = true`.
//! - At most [`MAX_IN_FLIGHT_PER_PARTITION`] batches of a partition are in
//!   flight: the broker remembers that many recent batches per producer, so
//!   any resent batch that it stored is recognised as a duplicate.
//! - A later batch refused with OUT_OF_ORDER_SEQUENCE because an earlier one
//!   failed transiently goes back to `ready` unchanged and follows the
//!   earlier one again, in order (no retry is spent on it).
//! - When a batch is given up and its numbers may be missing on the broker
//!   (refused for good, or lost with a stream whose retries ran out), the
//!   partition is renumbered: if nothing was stamped after it, its numbers
//!   go to the next batch; otherwise the partition "resyncs": the first
//!   refused batch takes the broker's `expected_sequence`, and every pending
//!   batch of the older numbering (`Stamp::generation`) gets new numbers, in
//!   order, before it is sent again.
//! - OUT_OF_ORDER_SEQUENCE that no earlier failure explains means the
//!   broker lost acknowledged data: every pending batch of the partition
//!   fails, and the partition continues at the broker's expected sequence.
//! - PRODUCER_FENCED is fatal for the whole producer (`fatal`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use backon::ExponentialBackoff;
use futures::FutureExt;
use futures::future::BoxFuture;
use strata_proto::v1::{ErrorCode, ProduceRequest, ProduceResponse};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;

use super::accumulator::{Accumulator, PendingMessage, SealedBatch, Stamp};
use super::{Command, Identity, ProducerConfig};
use crate::client::Client;
use crate::error::Error;
use crate::partitioner::Partitioner;

/// How many queued commands are handled before timers and the stream get a
/// look again.
const COMMAND_BURST: usize = 1024;

/// In-flight batches per partition for an idempotent producer: the broker
/// remembers this many recent batches per producer for duplicate detection.
pub(crate) const MAX_IN_FLIGHT_PER_PARTITION: usize = 5;

struct InFlight {
    batch: SealedBatch,
    sent_at: Instant,
}

#[derive(Default)]
struct PartitionState {
    in_flight: usize,
    /// Set after a per-batch transient error until one batch succeeds.
    probing: bool,
    backoff: Option<ExponentialBackoff>,
    /// Idempotence: the sequence the next stamped batch gets.
    next_sequence: i32,
    /// Idempotence: bumped when the partition is renumbered; batches stamped
    /// before get new numbers when they are sent again.
    numbering: u64,
    /// Idempotence: our numbering may disagree with the broker's (a batch
    /// was given up); adopt the broker's expected sequence on the next
    /// refusal of the partition's first pending batch.
    resync: bool,
    /// Idempotence: batches (by `seq`) up to this one fail when their
    /// outcome is an error: they were pending when a sequence gap nothing
    /// explained made the partition's pending batches fail.
    fail_through: Option<u64>,
}

type StreamResult = Result<Streaming<ProduceResponse>, Error>;

enum Conn {
    /// No stream; one is opened when there is something to send.
    Idle,
    /// Waiting before reconnecting.
    Backoff(Instant),
    /// Opening. Requests may already be queued on `tx`.
    Connecting {
        tx: mpsc::Sender<ProduceRequest>,
        open: BoxFuture<'static, StreamResult>,
    },
    Up {
        tx: mpsc::Sender<ProduceRequest>,
        rx: Box<Streaming<ProduceResponse>>,
    },
}

impl Conn {
    fn sender(&self) -> Option<&mpsc::Sender<ProduceRequest>> {
        match self {
            Conn::Connecting { tx, .. } | Conn::Up { tx, .. } => Some(tx),
            Conn::Idle | Conn::Backoff(_) => None,
        }
    }
}

enum ConnEvent {
    Opened(StreamResult),
    Response(Result<Option<ProduceResponse>, tonic::Status>),
}

/// Waits for the next thing the connection has to say; pending forever when
/// it has nothing. Cancel-safe: the opening future lives in `conn`, and
/// `Streaming::message` loses nothing when dropped.
async fn conn_event(conn: &mut Conn) -> ConnEvent {
    match conn {
        Conn::Connecting { open, .. } => ConnEvent::Opened(open.await),
        Conn::Up { rx, .. } => ConnEvent::Response(rx.message().await),
        Conn::Idle | Conn::Backoff(_) => std::future::pending().await,
    }
}

enum Event {
    Command(Option<Command>),
    Conn(ConnEvent),
    Metadata(Result<u32, Error>),
    Timer,
}

pub(crate) struct SenderTask {
    client: Client,
    topic: String,
    config: ProducerConfig,
    /// Idempotent producer id and epoch; `None` when idempotence is off.
    identity: Option<Identity>,
    /// Set when the producer is fenced; every send fails with it from then on.
    fatal: Arc<OnceLock<Error>>,
    commands: mpsc::UnboundedReceiver<Command>,
    commands_open: bool,
    memory: Arc<Semaphore>,
    accumulator: Accumulator,
    partitioner: Partitioner,
    sealed: Vec<SealedBatch>,
    ready: BTreeMap<u64, SealedBatch>,
    /// Keyed by request id, which grows with sending time.
    in_flight: BTreeMap<u64, InFlight>,
    partitions: HashMap<u32, PartitionState>,
    /// Partitions backing off after a per-batch transient error. Kept apart
    /// from `partitions` so timers cost nothing when no partition backs off.
    backoff_until: HashMap<u32, Instant>,
    conn: Conn,
    conn_backoff: Option<ExponentialBackoff>,
    next_request_id: u64,
    flush_waiters: Vec<(u64, oneshot::Sender<()>)>,
    close_waiters: Vec<oneshot::Sender<()>>,
    closing: bool,
    metadata_tx: mpsc::Sender<Result<u32, Error>>,
    metadata_rx: mpsc::Receiver<Result<u32, Error>>,
    refresh_pending: bool,
    next_refresh: Instant,
}

impl SenderTask {
    pub(crate) fn new(
        client: Client,
        topic: String,
        partitions: u32,
        config: ProducerConfig,
        identity: Option<Identity>,
        channels: (mpsc::UnboundedReceiver<Command>, Arc<Semaphore>, Arc<OnceLock<Error>>),
    ) -> Self {
        let (commands, memory, fatal) = channels;
        let (metadata_tx, metadata_rx) = mpsc::channel(1);
        SenderTask {
            accumulator: Accumulator::new(config.batch_bytes, config.linger, config.compression, identity.is_some()),
            identity,
            fatal,
            partitioner: Partitioner::new(partitions),
            next_refresh: Instant::now() + config.metadata_refresh,
            client,
            topic,
            config,
            commands,
            commands_open: true,
            memory,
            sealed: Vec::new(),
            ready: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            partitions: HashMap::new(),
            backoff_until: HashMap::new(),
            conn: Conn::Idle,
            conn_backoff: None,
            next_request_id: 0,
            flush_waiters: Vec::new(),
            close_waiters: Vec::new(),
            closing: false,
            metadata_tx,
            metadata_rx,
            refresh_pending: false,
        }
    }

    pub(crate) async fn run(mut self) {
        loop {
            let now = Instant::now();
            self.on_timers(now);
            if self.config.send_when_idle
                && self.in_flight.is_empty()
                && self.ready.is_empty()
                && !self.accumulator.is_empty()
            {
                // The pipe is idle: nothing to wait for, send what is open.
                self.seal_all();
            }
            self.pump(now);
            self.notify_flush_waiters();
            if self.closing && self.is_drained() {
                break;
            }
            let wake = self.next_wakeup(now);
            let event = tokio::select! {
                // Acknowledgements first: they free memory and slots.
                biased;
                ev = conn_event(&mut self.conn) => Event::Conn(ev),
                cmd = self.commands.recv(), if self.commands_open => Event::Command(cmd),
                meta = self.metadata_rx.recv() => match meta {
                    Some(m) => Event::Metadata(m),
                    None => Event::Timer,
                },
                () = sleep_until(wake) => Event::Timer,
            };
            match event {
                Event::Command(cmd) => self.on_commands(cmd),
                Event::Conn(ConnEvent::Opened(result)) => self.on_opened(result),
                Event::Conn(ConnEvent::Response(result)) => self.on_response(result),
                Event::Metadata(result) => self.on_metadata(result),
                Event::Timer => {}
            }
        }
        self.memory.close();
        for waiter in self.flush_waiters.drain(..) {
            let _ = waiter.1.send(());
        }
        for waiter in self.close_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }

    fn is_drained(&self) -> bool {
        self.accumulator.is_empty() && self.ready.is_empty() && self.in_flight.is_empty()
    }

    // ---- commands --------------------------------------------------------

    fn on_commands(&mut self, first: Option<Command>) {
        let now = Instant::now();
        let mut next = first;
        let mut handled = 0;
        loop {
            match next {
                Some(cmd) => self.on_command(cmd, now),
                None => {
                    // Every Producer handle is gone: deliver what is queued,
                    // then stop.
                    self.commands_open = false;
                    self.start_closing();
                    return;
                }
            }
            handled += 1;
            if handled == COMMAND_BURST {
                return;
            }
            next = match self.commands.try_recv() {
                Ok(cmd) => Some(cmd),
                Err(mpsc::error::TryRecvError::Empty) => return,
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
        }
    }

    fn on_command(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::Send(msg) => self.on_send(msg, now),
            Command::Flush(waiter) => {
                self.seal_all();
                self.flush_waiters.push((self.accumulator.next_seq(), waiter));
            }
            Command::Close(waiter) => {
                self.close_waiters.push(waiter);
                self.start_closing();
            }
        }
    }

    fn start_closing(&mut self) {
        self.closing = true;
        // Wake enqueuers waiting for memory; they get ProducerClosed.
        self.memory.close();
        self.seal_all();
    }

    fn on_send(&mut self, msg: PendingMessage, now: Instant) {
        if let Some(error) = self.fatal.get() {
            let _ = msg.ack.send(Err(error.clone()));
            return;
        }
        if self.closing {
            let _ = msg.ack.send(Err(Error::ProducerClosed));
            return;
        }
        let Some(partition) = self.partitioner.choose(msg.message.key.as_deref(), msg.message.partition) else {
            let _ = msg.ack.send(Err(Error::InvalidArgument(format!("topic {} has no partitions", self.topic))));
            return;
        };
        self.accumulator.append(partition, msg, now, &mut self.sealed);
        self.take_sealed();
    }

    fn seal_all(&mut self) {
        self.accumulator.seal_all(&mut self.sealed);
        self.take_sealed();
    }

    fn take_sealed(&mut self) {
        for batch in self.sealed.drain(..) {
            self.partitioner.batch_sealed(batch.partition);
            match self.fatal.get() {
                Some(error) => batch.fail(error),
                None => {
                    self.ready.insert(batch.seq, batch);
                }
            }
        }
    }

    // ---- timers ------------------------------------------------------------

    fn on_timers(&mut self, now: Instant) {
        self.accumulator.expire(now, &mut self.sealed);
        self.take_sealed();
        if let Conn::Backoff(until) = self.conn
            && until <= now
        {
            self.conn = Conn::Idle;
        }
        let timed_out = self.in_flight.values().next().is_some_and(|f| f.sent_at + self.config.request_timeout <= now);
        if timed_out {
            self.on_stream_failure(Error::Timeout {
                operation: "waiting for a produce acknowledgement",
                timeout: self.config.request_timeout,
            });
        }
        if self.next_refresh <= now {
            self.next_refresh = now + self.config.metadata_refresh;
            self.refresh_metadata();
        }
    }

    fn next_wakeup(&mut self, now: Instant) -> Instant {
        let mut wake = self.next_refresh;
        let mut consider = |t: Instant| wake = wake.min(t);
        if let Some(t) = self.accumulator.next_deadline() {
            consider(t);
        }
        if let Some(f) = self.in_flight.values().next() {
            consider(f.sent_at + self.config.request_timeout);
        }
        if let Conn::Backoff(t) = self.conn {
            consider(t);
        }
        // Expired backoffs need no wakeup: `pump` already saw them.
        self.backoff_until.retain(|_, t| *t > now);
        for t in self.backoff_until.values() {
            consider(*t);
        }
        wake
    }

    // ---- sending -------------------------------------------------------------

    /// Sends ready batches while the stream has room.
    fn pump(&mut self, now: Instant) {
        if self.ready.is_empty() {
            return;
        }
        if matches!(self.conn, Conn::Idle) {
            self.open_stream();
        }
        let Some(tx) = self.conn.sender().cloned() else {
            return;
        };
        let per_partition = if self.identity.is_some() { MAX_IN_FLIGHT_PER_PARTITION } else { usize::MAX };
        while self.in_flight.len() < self.config.max_in_flight_batches {
            let (partitions, backoff_until) = (&self.partitions, &self.backoff_until);
            let next = self.ready.iter().find_map(|(seq, b)| {
                let backing_off = backoff_until.get(&b.partition).is_some_and(|t| *t > now);
                let blocked = partitions
                    .get(&b.partition)
                    .is_some_and(|s| (s.probing && s.in_flight > 0) || s.in_flight >= per_partition);
                (!backing_off && !blocked).then_some(*seq)
            });
            let Some(mut batch) = next.and_then(|seq| self.ready.remove(&seq)) else {
                break;
            };
            if let Some(identity) = self.identity {
                let state = partition_state(&mut self.partitions, batch.partition, self.identity.is_some());
                stamp(&mut batch, identity, state);
            }
            let Some(bytes) = batch.bytes().cloned() else {
                // Only idempotent batches are left open, and they were just
                // stamped; this cannot happen, but must not be sent.
                batch.fail(&Error::InvalidArgument("internal error: a batch was sent unencoded".into()));
                continue;
            };
            let request_id = self.next_request_id;
            let request = ProduceRequest {
                tenant: self.client.tenant().to_owned(),
                topic: self.topic.clone(),
                partition: batch.partition,
                batch: bytes,
                request_id,
                ..Default::default()
            };
            if tx.try_send(request).is_err() {
                // The stream is going away; its failure arrives through the
                // response side and triggers a resend.
                self.ready.insert(batch.seq, batch);
                break;
            }
            self.next_request_id += 1;
            partition_state(&mut self.partitions, batch.partition, self.identity.is_some()).in_flight += 1;
            self.in_flight.insert(request_id, InFlight { batch, sent_at: now });
        }
    }

    fn open_stream(&mut self) {
        // Never more than max_in_flight_batches requests are queued.
        let (tx, rx) = mpsc::channel(self.config.max_in_flight_batches);
        let mut rpc = self.client.log_rpc();
        let timeout = self.config.request_timeout;
        let open = async move {
            match tokio::time::timeout(timeout, rpc.produce_stream(ReceiverStream::new(rx))).await {
                Ok(Ok(response)) => Ok(response.into_inner()),
                Ok(Err(status)) => Err(Error::from(status)),
                Err(_) => Err(Error::Timeout { operation: "opening the produce stream", timeout }),
            }
        }
        .boxed();
        self.conn = Conn::Connecting { tx, open };
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

    fn on_response(&mut self, result: Result<Option<ProduceResponse>, tonic::Status>) {
        let response = match result {
            Ok(Some(r)) => r,
            Ok(None) if self.in_flight.is_empty() => {
                // The broker closed an idle stream; reopen on demand.
                self.conn = Conn::Idle;
                return;
            }
            Ok(None) => {
                return self.on_stream_failure(Error::from(tonic::Status::unavailable(
                    "the broker closed the produce stream",
                )));
            }
            Err(status) => return self.on_stream_failure(Error::from(status)),
        };
        let Some(InFlight { batch, .. }) = self.in_flight.remove(&response.request_id) else {
            tracing::warn!(request_id = response.request_id, "produce response for an unknown request");
            return;
        };
        let now = Instant::now();
        if response
            .error
            .as_ref()
            .and_then(|e| e.info.as_ref())
            .is_some_and(|i| i.code == ErrorCode::UnknownPartition as i32)
        {
            self.refresh_metadata();
        }
        let state = partition_state(&mut self.partitions, batch.partition, self.identity.is_some());
        state.in_flight = state.in_flight.saturating_sub(1);
        let Some(item) = response.error else {
            self.conn_backoff = None;
            state.probing = false;
            state.backoff = None;
            state.resync = false;
            if response.duplicate {
                tracing::debug!(partition = batch.partition, offset = response.base_offset, "batch was already stored");
            }
            batch.succeed(response.base_offset);
            return;
        };
        let error = Error::from(item);
        if let Some(fatal) = self.fatal.get() {
            batch.fail(fatal);
            return;
        }
        if state.fail_through.is_some_and(|through| batch.seq <= through) {
            batch.fail(&error);
            return;
        }
        if self.identity.is_some() {
            match error.error_code() {
                ErrorCode::ProducerFenced => return self.on_fenced(batch, error),
                ErrorCode::OutOfOrderSequence => return self.on_out_of_order(batch, error, now),
                _ => {}
            }
        }
        if error.is_retryable() {
            let retry = self.config.retry;
            let backoff = state.backoff.get_or_insert_with(|| retry.backoff());
            if let Some(delay) = backoff.next() {
                tracing::debug!(
                    partition = batch.partition,
                    ?delay,
                    %error,
                    "retrying batch"
                );
                state.probing = true;
                self.backoff_until.insert(batch.partition, now + delay);
                self.ready.insert(batch.seq, batch);
                return;
            }
        }
        state.probing = false;
        state.backoff = None;
        self.given_up(&batch);
        batch.fail(&error);
    }

    /// A batch the broker refused for good (it is not stored) is about to
    /// fail: keep the partition's numbering without a hole.
    fn given_up(&mut self, batch: &SealedBatch) {
        let Some(stamp) = batch.stamp else {
            return;
        };
        let state = partition_state(&mut self.partitions, batch.partition, self.identity.is_some());
        let end = stamp.base_sequence.wrapping_add(batch.record_count as i32);
        if stamp.generation == state.numbering && state.next_sequence == end {
            // Nothing was numbered after it: its numbers go to the next batch.
            state.next_sequence = stamp.base_sequence;
        } else {
            // Later batches carry numbers after the hole and will be refused;
            // the first of them learns where the broker stands.
            state.resync = true;
            state.probing = true;
        }
    }

    /// OUT_OF_ORDER_SEQUENCE: the broker expected another sequence.
    fn on_out_of_order(&mut self, batch: SealedBatch, error: Error, now: Instant) {
        let partition = batch.partition;
        let earlier_pending = self.ready.range(..batch.seq).any(|(_, b)| b.partition == partition)
            || self.in_flight.values().any(|f| f.batch.partition == partition && f.batch.seq < batch.seq);
        let state = partition_state(&mut self.partitions, partition, self.identity.is_some());
        let stale = batch.stamp.is_some_and(|s| s.generation != state.numbering);
        if earlier_pending || stale {
            // An earlier batch failed and goes first again, or this batch is
            // renumbered before it is resent: either way, back in line.
            tracing::debug!(partition, "batch refused behind an earlier failure; resending in order");
            state.probing = true;
            self.ready.insert(batch.seq, batch);
            return;
        }
        let expected =
            error.server_error().and_then(|s| s.metadata.get("expected_sequence")).and_then(|v| v.parse::<i32>().ok());
        if state.resync
            && let Some(expected) = expected
        {
            let retry = self.config.retry;
            if let Some(delay) = state.backoff.get_or_insert_with(|| retry.backoff()).next() {
                tracing::debug!(partition, expected, "renumbering the partition's pending batches");
                state.numbering += 1;
                state.next_sequence = expected;
                state.probing = true;
                self.backoff_until.insert(partition, now + delay);
                self.ready.insert(batch.seq, batch);
                return;
            }
        }
        // Nothing we did explains the gap: the broker lost batches it had
        // acknowledged. Fail what is pending for the partition and continue
        // from where the broker stands.
        tracing::warn!(partition, %error, "sequence gap on the broker; failing the partition's pending batches");
        let through = self.in_flight.values().filter(|f| f.batch.partition == partition).map(|f| f.batch.seq).max();
        let state = partition_state(&mut self.partitions, partition, self.identity.is_some());
        state.backoff = None;
        state.probing = true;
        match expected {
            Some(expected) => {
                state.numbering += 1;
                state.next_sequence = expected;
                state.resync = false;
            }
            None => state.resync = true,
        }
        if through.is_some() {
            state.fail_through = through;
        }
        batch.fail(&error);
        let pending: Vec<u64> = self.ready.iter().filter(|(_, b)| b.partition == partition).map(|(s, _)| *s).collect();
        for seq in pending {
            if let Some(b) = self.ready.remove(&seq) {
                b.fail(&error);
            }
        }
    }

    /// PRODUCER_FENCED: a newer instance took over. Everything pending and
    /// everything sent later fails; in-flight batches fail as they return.
    fn on_fenced(&mut self, batch: SealedBatch, error: Error) {
        let fenced = match error {
            Error::Server(server) => Error::ProducerFenced(server),
            other => other,
        };
        tracing::warn!(topic = %self.topic, error = %fenced, "producer fenced");
        let fenced = self.fatal.get_or_init(|| fenced).clone();
        batch.fail(&fenced);
        self.accumulator.seal_all(&mut self.sealed);
        for b in self.sealed.drain(..) {
            b.fail(&fenced);
        }
        for (_, b) in std::mem::take(&mut self.ready) {
            b.fail(&fenced);
        }
    }

    /// The stream broke: everything in flight goes back to `ready` in order,
    /// and the stream is reopened after a backoff — or, when the error is
    /// permanent or retries are used up, every pending batch fails with it.
    fn on_stream_failure(&mut self, error: Error) {
        self.conn = Conn::Idle;
        for (_, f) in std::mem::take(&mut self.in_flight) {
            self.ready.insert(f.batch.seq, f.batch);
        }
        for state in self.partitions.values_mut() {
            state.in_flight = 0;
        }
        if let Some(fatal) = self.fatal.get() {
            for (_, batch) in std::mem::take(&mut self.ready) {
                batch.fail(fatal);
            }
            return;
        }
        if error.is_retryable() {
            let retry = self.config.retry;
            let backoff = self.conn_backoff.get_or_insert_with(|| retry.backoff());
            if let Some(delay) = backoff.next() {
                tracing::debug!(?delay, %error, "produce stream failed; reconnecting");
                self.conn = Conn::Backoff(Instant::now() + delay);
                return;
            }
        }
        tracing::debug!(%error, "produce stream failed; failing pending batches");
        self.conn_backoff = None;
        let error = self.fatal.get().cloned().unwrap_or(error);
        for (_, batch) in std::mem::take(&mut self.ready) {
            if batch.stamp.is_some() {
                // It may or may not be stored: learn from the broker which
                // sequence it expects next.
                let state = partition_state(&mut self.partitions, batch.partition, self.identity.is_some());
                state.resync = true;
                state.probing = true;
            }
            batch.fail(&error);
        }
    }

    // ---- metadata --------------------------------------------------------------

    fn refresh_metadata(&mut self) {
        if self.refresh_pending {
            return;
        }
        self.refresh_pending = true;
        let client = self.client.clone();
        let topic = self.topic.clone();
        let tx = self.metadata_tx.clone();
        tokio::spawn(async move {
            let result = client.describe_topic(&topic).await.map(|d| d.partitions);
            let _ = tx.send(result).await;
        });
    }

    fn on_metadata(&mut self, result: Result<u32, Error>) {
        self.refresh_pending = false;
        match result {
            Ok(partitions) if partitions > 0 => self.partitioner.set_partitions(partitions),
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "refreshing topic metadata failed"),
        }
    }

    // ---- flush -----------------------------------------------------------------

    fn notify_flush_waiters(&mut self) {
        if self.flush_waiters.is_empty() {
            return;
        }
        let ready_min = self.ready.keys().next().copied();
        let flight_min = self.in_flight.values().map(|f| f.batch.seq).min();
        let outstanding = match (ready_min, flight_min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut i = 0;
        while i < self.flush_waiters.len() {
            if outstanding.is_none_or(|min| min >= self.flush_waiters[i].0) {
                let (_, waiter) = self.flush_waiters.swap_remove(i);
                let _ = waiter.send(());
            } else {
                i += 1;
            }
        }
    }
}

/// A partition's state, created on first use. An idempotent producer's
/// partition starts probing (one batch in flight until one succeeds): the
/// broker accepts any sequence from a producer it does not know yet, so a
/// second batch must not overtake a first one that fails.
fn partition_state(
    partitions: &mut HashMap<u32, PartitionState>,
    partition: u32,
    idempotent: bool,
) -> &mut PartitionState {
    partitions.entry(partition).or_insert_with(|| PartitionState { probing: idempotent, ..PartitionState::default() })
}

/// Gives a batch its idempotent sequence unless it already has one in the
/// partition's current numbering.
fn stamp(batch: &mut SealedBatch, identity: Identity, state: &mut PartitionState) {
    if batch.stamp.is_some_and(|s| s.generation == state.numbering) {
        return;
    }
    let stamp = Stamp { generation: state.numbering, base_sequence: state.next_sequence };
    // Sequences wrap around like the broker's (two's complement).
    state.next_sequence = state.next_sequence.wrapping_add(batch.record_count as i32);
    batch.stamp(identity.producer_id, identity.epoch, stamp);
}

async fn sleep_until(t: Instant) {
    tokio::time::sleep_until(t.into()).await;
}
