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
use strata_proto::v1::{ErrorCode, ProduceRequest, ProduceResponse};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::accumulator::{Accumulator, PendingMessage, SealedBatch, Stamp};
use super::{Command, Identity, ProducerConfig};
use crate::client::Client;
use crate::error::{Error, ServerError};
use crate::partitioner::Partitioner;
use crate::pipeline::conn_event;
use crate::routing::{Learned, MAX_REDIRECTS, Target};

/// How many queued commands are handled before timers and the stream get a
/// look again.
const COMMAND_BURST: usize = 1024;

/// In-flight batches per partition for an idempotent producer: the broker
/// remembers this many recent batches per producer for duplicate detection.
pub(crate) const MAX_IN_FLIGHT_PER_PARTITION: usize = 5;

struct InFlight {
    batch: SealedBatch,
    sent_at: Instant,
    /// The broker it was sent to.
    url: Arc<str>,
}

/// The stream to one broker (the owner of some of the topic's partitions).
struct Link {
    conn: Conn,
    backoff: Option<ExponentialBackoff>,
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
    /// NOT_LEADER answers followed since the partition's last success.
    redirects: usize,
}

type Conn = crate::pipeline::Conn<ProduceRequest, ProduceResponse>;
type ConnEvent = crate::pipeline::ConnEvent<ProduceResponse>;
type StreamResult = crate::pipeline::StreamResult<ProduceResponse>;

/// The next event of any link, with the broker it came from. Cancel-safe
/// like [`conn_event`]. One link (standalone, or a topic on one broker) is
/// awaited directly, without the boxing `select_all` needs.
async fn link_event(links: &mut HashMap<Arc<str>, Link>) -> (Arc<str>, ConnEvent) {
    let mut active: Vec<_> =
        links.iter_mut().filter(|(_, l)| matches!(l.conn, Conn::Connecting { .. } | Conn::Up { .. })).collect();
    match active.len() {
        0 => std::future::pending().await,
        1 => {
            let (url, link) = active.pop().expect("one link");
            let event = conn_event(&mut link.conn).await;
            (url.clone(), event)
        }
        _ => {
            let waits = active.into_iter().map(|(url, link)| {
                async move {
                    let event = conn_event(&mut link.conn).await;
                    (url.clone(), event)
                }
                .boxed()
            });
            futures::future::select_all(waits).await.0
        }
    }
}

enum Event {
    Command(Option<Command>),
    Conn(Arc<str>, ConnEvent),
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
    /// One stream per broker that owns partitions this producer writes.
    links: HashMap<Arc<str>, Link>,
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
            links: HashMap::new(),
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
                (url, ev) = link_event(&mut self.links) => Event::Conn(url, ev),
                cmd = self.commands.recv(), if self.commands_open => Event::Command(cmd),
                meta = self.metadata_rx.recv() => match meta {
                    Some(m) => Event::Metadata(m),
                    None => Event::Timer,
                },
                () = sleep_until(wake) => Event::Timer,
            };
            match event {
                Event::Command(cmd) => self.on_commands(cmd),
                Event::Conn(url, ConnEvent::Opened(result)) => self.on_opened(&url, result),
                Event::Conn(url, ConnEvent::Response(result)) => self.on_response(&url, result),
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
        // A partition whose batches cannot go now keeps filling its open one.
        let per_partition = if self.identity.is_some() { MAX_IN_FLIGHT_PER_PARTITION } else { usize::MAX };
        let full = self.in_flight.len() >= self.config.max_in_flight_batches;
        let (partitions, ready) = (&self.partitions, &self.ready);
        // Asked only for batches whose linger expired.
        let hold = |p: u32| {
            full || partitions.get(&p).is_some_and(|s| (s.probing && s.in_flight > 0) || s.in_flight >= per_partition)
                || ready.values().any(|b| b.partition == p)
        };
        self.accumulator.expire(now, hold, &mut self.sealed);
        self.take_sealed();
        for link in self.links.values_mut() {
            if let Conn::Backoff(until) = link.conn
                && until <= now
            {
                link.conn = Conn::Idle;
            }
        }
        let timed_out = self
            .in_flight
            .values()
            .next()
            .filter(|f| f.sent_at + self.config.request_timeout <= now)
            .map(|f| f.url.clone());
        if let Some(url) = timed_out {
            self.on_stream_failure(
                &url,
                Error::Timeout {
                    operation: "waiting for a produce acknowledgement",
                    timeout: self.config.request_timeout,
                },
            );
        }
        if self.next_refresh <= now {
            self.next_refresh = now + self.config.metadata_refresh;
            self.refresh_metadata();
        }
    }

    fn next_wakeup(&mut self, now: Instant) -> Instant {
        let mut wake = self.next_refresh;
        let mut consider = |t: Instant| wake = wake.min(t);
        if let Some(t) = self.accumulator.next_deadline(now) {
            consider(t);
        }
        if let Some(f) = self.in_flight.values().next() {
            consider(f.sent_at + self.config.request_timeout);
        }
        for link in self.links.values() {
            if let Conn::Backoff(t) = link.conn {
                consider(t);
            }
        }
        // Expired backoffs need no wakeup: `pump` already saw them.
        self.backoff_until.retain(|_, t| *t > now);
        for t in self.backoff_until.values() {
            consider(*t);
        }
        wake
    }

    // ---- sending -------------------------------------------------------------

    /// The broker serving `partition`: its owner from the route table, or,
    /// while unknown, a bootstrap broker (whose NOT_LEADER answer names the
    /// owner) with a metadata look-up started.
    fn url_for(&mut self, partition: u32) -> Arc<str> {
        let router = self.client.router();
        match router.cached(self.client.tenant(), Target::Partition(&self.topic, partition)) {
            Some(url) => url,
            None => {
                let any = router.any();
                self.refresh_metadata();
                any
            }
        }
    }

    /// Sends ready batches, each to its partition's broker, while the
    /// pipeline has room. Batches whose broker's stream is backing off or
    /// full wait; the others go on (in `seq` order per partition).
    fn pump(&mut self, now: Instant) {
        if self.ready.is_empty() {
            return;
        }
        let per_partition = if self.identity.is_some() { MAX_IN_FLIGHT_PER_PARTITION } else { usize::MAX };
        // Brokers that cannot take a batch in this round, and the partitions
        // waiting on them (a later batch must not overtake an earlier one).
        let mut unavailable: Vec<Arc<str>> = Vec::new();
        let mut waiting: Vec<u32> = Vec::new();
        let mut cursor = 0u64;
        while self.in_flight.len() < self.config.max_in_flight_batches {
            let (partitions, backoff_until) = (&self.partitions, &self.backoff_until);
            let next = self.ready.range(cursor..).find_map(|(seq, b)| {
                let backing_off = backoff_until.get(&b.partition).is_some_and(|t| *t > now);
                let blocked = partitions
                    .get(&b.partition)
                    .is_some_and(|s| (s.probing && s.in_flight > 0) || s.in_flight >= per_partition);
                (!backing_off && !blocked && !waiting.contains(&b.partition)).then_some(*seq)
            });
            let Some(seq) = next else {
                break;
            };
            cursor = seq + 1;
            let partition = self.ready[&seq].partition;
            let url = self.url_for(partition);
            if unavailable.contains(&url) {
                waiting.push(partition);
                continue;
            }
            let link = self.links.entry(url.clone()).or_insert_with(|| Link { conn: Conn::Idle, backoff: None });
            if matches!(link.conn, Conn::Idle) {
                link.conn = open_stream(&self.client, &url, &self.config);
            }
            let Some(tx) = link.conn.sender().cloned() else {
                // Backing off after a failure.
                unavailable.push(url);
                waiting.push(partition);
                continue;
            };
            let Some(mut batch) = self.ready.remove(&seq) else {
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
                // The stream is going away (or full); its failure arrives
                // through the response side and triggers a resend.
                self.ready.insert(batch.seq, batch);
                unavailable.push(url);
                waiting.push(partition);
                continue;
            }
            self.next_request_id += 1;
            partition_state(&mut self.partitions, batch.partition, self.identity.is_some()).in_flight += 1;
            self.in_flight.insert(request_id, InFlight { batch, sent_at: now, url });
        }
    }

    fn on_opened(&mut self, url: &Arc<str>, result: StreamResult) {
        match result {
            Ok(rx) => {
                if let Some(link) = self.links.get_mut(url)
                    && let Conn::Connecting { tx, .. } = std::mem::replace(&mut link.conn, Conn::Idle)
                {
                    link.conn = Conn::Up { tx, rx: Box::new(rx) };
                }
            }
            Err(e) => self.on_stream_failure(url, e),
        }
    }

    fn on_response(&mut self, url: &Arc<str>, result: Result<Option<ProduceResponse>, tonic::Status>) {
        let response = match result {
            Ok(Some(r)) => r,
            Ok(None) if !self.in_flight.values().any(|f| f.url == *url) => {
                // The broker closed an idle stream; reopen on demand.
                if let Some(link) = self.links.get_mut(url) {
                    link.conn = Conn::Idle;
                }
                return;
            }
            Ok(None) => {
                return self.on_stream_failure(
                    url,
                    Error::from(tonic::Status::unavailable("the broker closed the produce stream")),
                );
            }
            Err(status) => return self.on_stream_failure(url, Error::from(status)),
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
            if let Some(link) = self.links.get_mut(url) {
                link.backoff = None;
            }
            state.redirects = 0;
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
        if error.error_code() == ErrorCode::NotLeader {
            // Sent to a broker that does not serve the partition: nothing
            // was stored. Back in line (same bytes, same sequence numbers)
            // for the owner the answer names; the partition sends one batch
            // at a time until the owner accepted one, so the batches still
            // on their way to the old broker come back first and keep
            // their order. Redirects to a named owner are bounded (two
            // brokers disagreeing must not loop); waiting for an owner (a
            // replicated partition electing its leader) is bounded by the
            // retry budget.
            let target = Target::Partition(&self.topic, batch.partition);
            let moved = matches!(self.client.learn(target, url, &error), Learned::Moved(_));
            if moved && state.redirects < MAX_REDIRECTS {
                state.redirects += 1;
                state.probing = true;
                self.ready.insert(batch.seq, batch);
                return;
            }
            if !moved {
                // No owner named (or the same broker): look it up again
                // after the partition's backoff.
                state.probing = true;
                let retry = self.config.retry;
                if let Some(delay) = state.backoff.get_or_insert_with(|| retry.backoff()).next() {
                    tracing::debug!(partition = batch.partition, %error, ?delay, "no owner known; retrying");
                    self.backoff_until.insert(batch.partition, now + delay);
                    self.ready.insert(batch.seq, batch);
                    self.refresh_metadata();
                    return;
                }
                state.probing = false;
                state.backoff = None;
                self.given_up(&batch);
                batch.fail(&error);
                return;
            }
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
                // A tenant rate quota says how long to wait at least.
                let delay = delay.max(error.retry_after().unwrap_or_default());
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

    /// The stream to `url` broke: its in-flight batches go back to `ready` in
    /// order, and the stream is reopened after a backoff (to the owner the
    /// route table then names: a broken connection triggers a metadata
    /// look-up, from another broker if need be) — or, when the error is
    /// permanent or retries are used up, every pending batch for that broker
    /// fails with it.
    fn on_stream_failure(&mut self, url: &Arc<str>, error: Error) {
        let link = self.links.entry(url.clone()).or_insert_with(|| Link { conn: Conn::Idle, backoff: None });
        link.conn = Conn::Idle;
        let broken: Vec<u64> = self.in_flight.iter().filter(|(_, f)| f.url == *url).map(|(id, _)| *id).collect();
        for id in broken {
            if let Some(f) = self.in_flight.remove(&id) {
                let state = partition_state(&mut self.partitions, f.batch.partition, self.identity.is_some());
                state.in_flight = state.in_flight.saturating_sub(1);
                self.ready.insert(f.batch.seq, f.batch);
            }
        }
        if let Some(fatal) = self.fatal.get() {
            for (_, batch) in std::mem::take(&mut self.ready) {
                batch.fail(fatal);
            }
            return;
        }
        if error.is_retryable() {
            // Forget the routes through this broker and look them up again.
            let routed_here: Vec<u32> = {
                let router = self.client.router();
                let tenant = self.client.tenant();
                let mut ps: Vec<u32> = self.ready.values().map(|b| b.partition).collect();
                ps.dedup();
                ps.into_iter()
                    .filter(|p| router.cached(tenant, Target::Partition(&self.topic, *p)).as_ref() == Some(url))
                    .collect()
            };
            for p in routed_here.iter().take(1) {
                self.client.learn(Target::Partition(&self.topic, *p), url, &error);
            }
            let retry = self.config.retry;
            let link = self.links.get_mut(url).expect("inserted above");
            let backoff = link.backoff.get_or_insert_with(|| retry.backoff());
            if let Some(delay) = backoff.next() {
                tracing::debug!(broker = %url, ?delay, %error, "produce stream failed; reconnecting");
                link.conn = Conn::Backoff(Instant::now() + delay);
                return;
            }
        }
        tracing::debug!(broker = %url, %error, "produce stream failed; failing its pending batches");
        if let Some(link) = self.links.get_mut(url) {
            link.backoff = None;
        }
        let error = self.fatal.get().cloned().unwrap_or_else(|| unreachable_broker(&self.topic, url, error));
        let router = self.client.router().clone();
        let tenant = self.client.tenant().to_owned();
        let doomed: Vec<u64> = self
            .ready
            .iter()
            .filter(|(_, b)| {
                router.cached(&tenant, Target::Partition(&self.topic, b.partition)).is_none_or(|u| u == *url)
            })
            .map(|(seq, _)| *seq)
            .collect();
        for seq in doomed {
            let Some(batch) = self.ready.remove(&seq) else { continue };
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
            let result = client.topic_partitions(&topic).await;
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

/// A transport error (no broker answered) names the broker and the topic,
/// so "tcp connect error" says whose loss it is.
fn unreachable_broker(topic: &str, url: &str, error: Error) -> Error {
    match error.server_error() {
        Some(s) if !s.has_details => Error::Server(Box::new(ServerError {
            message: format!("the broker at {url}, which serves partitions of {topic}, is unreachable: {}", s.message),
            ..s.clone()
        })),
        _ => error,
    }
}

/// Opens a produce stream to `url`.
fn open_stream(client: &Client, url: &Arc<str>, config: &ProducerConfig) -> Conn {
    // Never more than max_in_flight_batches requests are queued.
    let mut rpc = client.log_rpc_at(url);
    Conn::connecting(
        config.max_in_flight_batches,
        config.request_timeout,
        "opening the produce stream",
        |requests| async move { rpc.produce_stream(requests).await },
    )
}

async fn sleep_until(t: Instant) {
    tokio::time::sleep_until(t.into()).await;
}
