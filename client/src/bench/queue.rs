//! `strata bench queue`: durable send + receive + ack through one queue.
//!
//! Producers send batches of `--batch` messages, several requests in flight
//! each (with `--per-message`: one `QueueProducer::enqueue` per message, and
//! one `Receiver::ack` per delivery; with `--rate`: at a fixed rate); consumers receive up to `--batch` messages per long poll and ack
//! each batch in one call while already receiving the next. Every body
//! starts with the time its send call started (nanoseconds since the run
//! began), so a consumer measures end-to-end latency. Producers pause while
//! `--max-backlog` messages are sent but not yet acked, which keeps the queue
//! short and the end-to-end latency a measure of the broker, not of a
//! backlog the run itself piled up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use strata_client::{Client, Durability, QueueMessage, QueueOptions, QueueProducerConfig};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::{LoadStats, Report, micros, new_histogram, payload, random_topic_name};
use crate::parse;
use crate::parse::DurabilityArg;

/// Send requests in flight per producer.
const SEND_PIPELINE: usize = 4;
/// Ack requests in flight per consumer.
const ACK_PIPELINE: usize = 2;
/// Long poll of one receive.
const RECEIVE_WAIT: Duration = Duration::from_millis(500);
/// How long consumers may take to drain the queue once producers stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub(crate) struct BenchQueueArgs {
    /// Size of each message body (at least 8 bytes: the send timestamp).
    #[arg(long, default_value = "1024", value_parser = parse::size)]
    pub(crate) size: u64,
    /// How long to send [default: 10s].
    #[arg(long, value_parser = parse::duration)]
    pub(crate) duration: Option<Duration>,
    /// Number of messages to send (instead of --duration).
    #[arg(long, conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: Option<u64>,
    /// Number of concurrent producers.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub(crate) producers: u32,
    /// Number of concurrent consumers.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub(crate) consumers: u32,
    /// Messages per send request and most messages per receive (1 to 1000).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) batch: u32,
    /// Messages sent but not yet acknowledged at most; producers wait above
    /// it. By Little's law end-to-end latency ≈ this / throughput: the
    /// default keeps consumers busy without piling up a backlog.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_backlog: u32,
    /// Use (or create) this queue and keep it afterwards.
    #[arg(long)]
    pub(crate) queue: Option<String>,
    /// Durability of the queue when it is created [default: the broker's, fsync].
    #[arg(long, value_enum)]
    pub(crate) durability: Option<DurabilityArg>,
    /// Hand each message to the client on its own, as applications do:
    /// producers call `QueueProducer::enqueue` per message (the client
    /// batches and pipelines), consumers ack each delivery with its own
    /// `Receiver::ack` call (the client batches acks). Without it, producers
    /// send --batch messages per request themselves.
    #[arg(long)]
    pub(crate) per_message: bool,
    /// Send at this fixed total rate (messages per second, shared by the
    /// producers; implies --per-message): latency at a given load.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) rate: Option<u64>,
    /// Per-message mode: let requests wait for the producer's linger even
    /// when nothing is in flight.
    #[arg(long)]
    pub(crate) no_idle_send: bool,
    /// Per-message mode: the producer's linger under load [default: the
    /// client's default, `QueueProducerConfig::linger`].
    #[arg(long, value_parser = parse::duration)]
    pub(crate) linger: Option<Duration>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

impl BenchQueueArgs {
    fn per_message(&self) -> bool {
        self.per_message || self.rate.is_some()
    }
}

/// State shared by producers and consumers of one run.
struct Shared {
    base: Instant,
    /// Messages producers may still send before consumers ack more.
    backlog: Semaphore,
    /// Messages the broker accepted.
    sent: AtomicU64,
    /// Set once every producer finished (after its last answer).
    producers_done: AtomicBool,
    /// Messages received and acked.
    acked: AtomicU64,
    /// Nanoseconds since `base` of the last ack.
    last_ack_ns: AtomicU64,
    /// Set when a task failed: everyone stops.
    failed: AtomicBool,
}

impl Shared {
    /// Whether a producer sends more: messages left (`None`: no count),
    /// time left, and no task failed.
    fn may_send(&self, remaining: Option<u64>, deadline: Option<Instant>) -> bool {
        remaining != Some(0) && deadline.is_none_or(|d| Instant::now() < d) && !self.failed.load(Ordering::Acquire)
    }
}

pub(crate) async fn bench_queue(client: &Client, args: BenchQueueArgs) -> anyhow::Result<Report> {
    if args.size < 8 {
        bail!("--size must be at least 8 bytes (each body carries its send timestamp)");
    }
    let (queue, temporary) = match args.queue.clone() {
        Some(q) => (q, false),
        None => (random_topic_name(), true),
    };
    let options = QueueOptions { durability: args.durability.map(Durability::from), ..QueueOptions::default() };
    client.ensure_queue(&queue, options).await.with_context(|| format!("creating queue {queue}"))?;
    let result = run_load(client, &queue, &args).await;
    if temporary && let Err(e) = client.delete_queue(&queue, false).await {
        eprintln!("warning: could not delete benchmark queue {queue}: {e}");
    }
    let (stats, e2e) = result?;
    let mut report = Report::new("queue", "", args.size, &stats, "send");
    report.queue = Some(queue);
    report.producers = Some(args.producers);
    report.rate = args.rate;
    report.per_message = Some(args.per_message());
    report.consumers = Some(args.consumers);
    let ms = |q: f64| if e2e.is_empty() { 0.0 } else { e2e.value_at_quantile(q) as f64 / 1000.0 };
    report.e2e_p50_ms = Some(ms(0.5));
    report.e2e_p99_ms = Some(ms(0.99));
    report.e2e_p999_ms = Some(ms(0.999));
    Ok(report)
}

async fn run_load(client: &Client, queue: &str, args: &BenchQueueArgs) -> anyhow::Result<(LoadStats, Histogram<u64>)> {
    let size = usize::try_from(args.size).context("--size is too large")?;
    let body = payload(size);
    let shared = Arc::new(Shared {
        base: Instant::now(),
        backlog: Semaphore::new(args.max_backlog as usize),
        sent: AtomicU64::new(0),
        producers_done: AtomicBool::new(false),
        acked: AtomicU64::new(0),
        last_ack_ns: AtomicU64::new(0),
        failed: AtomicBool::new(false),
    });
    let deadline = match (args.count, args.duration) {
        (Some(_), _) => None,
        (None, d) => Some(shared.base + d.unwrap_or(Duration::from_secs(10))),
    };
    let mut consumers = Vec::new();
    for _ in 0..args.consumers {
        let work = consume(connection(client).await?, queue.to_owned(), args.batch, args.per_message(), shared.clone());
        consumers.push(tokio::spawn(stop_all_on_error(shared.clone(), work)));
    }
    // A batch never needs more backlog room than there is.
    let send_batch = args.batch.min(args.max_backlog) as usize;
    let mut producers = Vec::new();
    for i in 0..u64::from(args.producers) {
        let count = args.count.map(|n| {
            let p = u64::from(args.producers);
            n / p + u64::from(i < n % p)
        });
        let task = if args.per_message() {
            let gap = args.rate.map(|r| Duration::from_secs_f64(f64::from(args.producers) / r as f64));
            let defaults = QueueProducerConfig::default();
            let config = QueueProducerConfig {
                send_when_idle: !args.no_idle_send,
                linger: args.linger.unwrap_or(defaults.linger),
                ..defaults
            };
            let work = produce_per_message(
                connection(client).await?,
                queue.to_owned(),
                body.clone(),
                (count, deadline, gap),
                config,
                shared.clone(),
            );
            tokio::spawn(stop_all_on_error(shared.clone(), work))
        } else {
            let work = produce(
                connection(client).await?,
                queue.to_owned(),
                body.clone(),
                send_batch,
                count,
                deadline,
                shared.clone(),
            );
            tokio::spawn(stop_all_on_error(shared.clone(), work))
        };
        producers.push(task);
    }
    let mut first_error = None;
    let send_latency = join_latencies(producers, "producer task", &shared, &mut first_error).await?;
    shared.producers_done.store(true, Ordering::Release);
    let e2e = join_latencies(consumers, "consumer task", &shared, &mut first_error).await?;
    if let Some(e) = first_error {
        return Err(e);
    }
    let messages = shared.acked.load(Ordering::Acquire);
    let sent = shared.sent.load(Ordering::Acquire);
    if messages < sent {
        eprintln!("warning: only {messages} of {sent} sent messages were received within {DRAIN_TIMEOUT:?}");
    }
    let elapsed = Duration::from_nanos(shared.last_ack_ns.load(Ordering::Acquire));
    Ok((LoadStats { messages, bytes: messages * args.size, elapsed, latency: send_latency }, e2e))
}

/// Waits for every task and merges their latencies. The first failure is
/// kept in `first_error` (the others stop meanwhile).
async fn join_latencies(
    tasks: Vec<JoinHandle<anyhow::Result<Histogram<u64>>>>,
    what: &'static str,
    shared: &Shared,
    first_error: &mut Option<anyhow::Error>,
) -> anyhow::Result<Histogram<u64>> {
    let mut merged = new_histogram()?;
    for task in tasks {
        match task.await.context(what)? {
            Ok(h) => merged.add(&h).context("merging latency histograms")?,
            Err(e) => {
                shared.failed.store(true, Ordering::Release);
                first_error.get_or_insert(e);
            }
        }
    }
    Ok(merged)
}

/// A client with its own HTTP/2 connection, so producers and consumers do
/// not queue behind each other on one connection (on either side).
async fn connection(client: &Client) -> anyhow::Result<Client> {
    let own = Client::connect(client.url()).await?.with_timeout(client.timeout());
    Ok(if client.tenant().is_empty() { own } else { own.with_tenant(client.tenant()) })
}

/// Runs a producer or consumer; when it fails, the others stop too.
async fn stop_all_on_error<T>(
    shared: Arc<Shared>,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let result = work.await;
    if result.is_err() {
        shared.failed.store(true, Ordering::Release);
        shared.backlog.close();
    }
    result
}

/// `body` with the first 8 bytes replaced by `ns`.
fn stamped(body: &Bytes, ns: u64) -> Bytes {
    let mut b = BytesMut::from(&body[..]);
    b[..8].copy_from_slice(&ns.to_le_bytes());
    b.freeze()
}

fn stamp_of(body: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(body.get(..8)?.try_into().ok()?))
}

fn since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

async fn produce(
    client: Client,
    queue: String,
    body: Bytes,
    batch: usize,
    count: Option<u64>,
    deadline: Option<Instant>,
    shared: Arc<Shared>,
) -> anyhow::Result<Histogram<u64>> {
    let mut latency = new_histogram()?;
    let mut in_flight = FuturesUnordered::new();
    let mut remaining = count;
    loop {
        let more = shared.may_send(remaining, deadline);
        if !more && in_flight.is_empty() {
            break;
        }
        if more && in_flight.len() < SEND_PIPELINE {
            let n = remaining.map_or(batch, |r| batch.min(usize::try_from(r).unwrap_or(usize::MAX)));
            // Wait for room in the backlog, but keep collecting answers.
            let permit = tokio::select! {
                permit = shared.backlog.acquire_many(n as u32) => match permit {
                    Ok(permit) => permit,
                    // Closed: a consumer failed and reports why.
                    Err(_) => break,
                },
                Some(result) = in_flight.next(), if !in_flight.is_empty() => {
                    record_send(&shared, &mut latency, result)?;
                    continue;
                }
            };
            permit.forget(); // given back by the consumers' acks
            let started = since(shared.base);
            let messages: Vec<QueueMessage> = (0..n).map(|_| QueueMessage::new(stamped(&body, started))).collect();
            let client = client.clone();
            let queue = queue.clone();
            in_flight.push(async move {
                let t = Instant::now();
                let result = client.send_batch(&queue, messages).await;
                (result.map(|r| r.len()), t.elapsed())
            });
            if let Some(r) = remaining.as_mut() {
                *r -= n as u64;
            }
            continue;
        }
        if let Some(result) = in_flight.next().await {
            record_send(&shared, &mut latency, result)?;
        }
    }
    Ok(latency)
}

/// One message per `enqueue`, as an application sends; `plan` is the
/// message count, the deadline and the gap between messages (fixed rate).
async fn produce_per_message(
    client: Client,
    queue: String,
    body: Bytes,
    plan: (Option<u64>, Option<Instant>, Option<Duration>),
    config: QueueProducerConfig,
    shared: Arc<Shared>,
) -> anyhow::Result<Histogram<u64>> {
    let (count, deadline, gap) = plan;
    let producer = client.queue_producer_with_config(&queue, config).await?;
    let mut pacer = gap.map(super::Pacer::new);
    let mut latency = new_histogram()?;
    let mut in_flight = FuturesUnordered::new();
    let mut remaining = count;
    loop {
        let more = shared.may_send(remaining, deadline);
        if !more {
            break;
        }
        if let Some(p) = pacer.as_mut() {
            p.wait().await;
        }
        // Wait for room in the backlog, but keep collecting answers.
        let permit = loop {
            tokio::select! {
                permit = shared.backlog.acquire() => break permit,
                Some(result) = in_flight.next(), if !in_flight.is_empty() => record_send(&shared, &mut latency, result)?,
            }
        };
        let Ok(permit) = permit else { break };
        permit.forget(); // given back by the consumers' acks
        let started = Instant::now();
        let ack = producer.enqueue(QueueMessage::new(stamped(&body, since(shared.base)))).await?;
        in_flight.push(async move { (ack.await.map(|_| 1usize), started.elapsed()) });
        if let Some(r) = remaining.as_mut() {
            *r -= 1;
        }
        // Collect what is done without waiting.
        while let Some(Some(result)) = in_flight.next().now_or_never() {
            record_send(&shared, &mut latency, result)?;
        }
    }
    while let Some(result) = in_flight.next().await {
        record_send(&shared, &mut latency, result)?;
    }
    producer.close().await?;
    Ok(latency)
}

fn record_send(
    shared: &Shared,
    latency: &mut Histogram<u64>,
    (result, took): (Result<usize, strata_client::Error>, Duration),
) -> anyhow::Result<()> {
    let n = result.context("send failed")?;
    latency.saturating_record_n(micros(took), n as u64);
    shared.sent.fetch_add(n as u64, Ordering::AcqRel);
    Ok(())
}

async fn consume(
    client: Client,
    queue: String,
    batch: u32,
    per_message: bool,
    shared: Arc<Shared>,
) -> anyhow::Result<Histogram<u64>> {
    let receiver = client.receiver(&queue).max_messages(batch).wait(RECEIVE_WAIT);
    let mut e2e = new_histogram()?;
    let mut acks = FuturesUnordered::new();
    let mut drain_started: Option<Instant> = None;
    loop {
        if shared.failed.load(Ordering::Acquire) {
            break;
        }
        // Done once the producers finished and everything they sent (and
        // everything in flight to ack) is acked.
        if shared.producers_done.load(Ordering::Acquire) {
            let done = shared.acked.load(Ordering::Acquire) >= shared.sent.load(Ordering::Acquire);
            if done || drain_started.get_or_insert_with(Instant::now).elapsed() > DRAIN_TIMEOUT {
                break;
            }
        }
        let ack_limit = if per_message { ACK_PIPELINE * batch as usize } else { ACK_PIPELINE };
        while acks.len() >= ack_limit {
            if let Some(r) = acks.next().await {
                settle(&shared, r)?;
            }
        }
        // Collect finished acks without waiting, then receive the next batch
        // while the others are still in flight.
        // (The receive is pinned outside the loop: dropping a long poll
        // could lose messages the broker already leased to it.)
        let receive = receiver.receive();
        tokio::pin!(receive);
        let received = loop {
            tokio::select! {
                biased;
                Some(r) = acks.next(), if !acks.is_empty() => settle(&shared, r)?,
                received = &mut receive => break received,
            }
        };
        let deliveries = received.context("receive failed")?;
        if deliveries.is_empty() {
            continue;
        }
        let now = since(shared.base);
        for d in &deliveries {
            if let Some(sent_at) = stamp_of(&d.body) {
                e2e.saturating_record(now.saturating_sub(sent_at) / 1000);
            }
        }
        if per_message {
            // One `ack` call per delivery, as an application handling each
            // message on its own does (the receiver batches them).
            for d in deliveries {
                let receiver = receiver.clone();
                acks.push(async move { (receiver.ack(&d).await, 1) }.boxed());
            }
        } else {
            let receiver = receiver.clone();
            acks.push(
                async move {
                    let n = deliveries.len() as u64;
                    (receiver.ack_all(&deliveries).await, n)
                }
                .boxed(),
            );
        }
    }
    while let Some(r) = acks.next().await {
        settle(&shared, r)?;
    }
    Ok(e2e)
}

fn settle(shared: &Shared, (result, n): (Result<(), strata_client::Error>, u64)) -> anyhow::Result<()> {
    result.context("ack failed")?;
    shared.acked.fetch_add(n, Ordering::AcqRel);
    shared.last_ack_ns.fetch_max(since(shared.base), Ordering::AcqRel);
    shared.backlog.add_permits(n as usize);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_their_send_time() {
        let body = payload(1024);
        let b = stamped(&body, 123_456_789);
        assert_eq!(b.len(), 1024);
        assert_eq!(stamp_of(&b), Some(123_456_789));
        assert_eq!(&b[8..], &body[8..]);
        assert_eq!(stamp_of(b"short"), None);
    }

    #[test]
    fn report_shows_both_latencies() {
        let mut latency = new_histogram().unwrap();
        latency.record(2_000).unwrap();
        let stats = LoadStats { messages: 10, bytes: 10_240, elapsed: Duration::from_secs(1), latency };
        let mut report = Report::new("queue", "", 1024, &stats, "send");
        report.queue = Some("bench-x".into());
        report.e2e_p50_ms = Some(3.0);
        report.e2e_p99_ms = Some(4.0);
        report.e2e_p999_ms = Some(5.0);
        let text = report.human();
        assert!(text.starts_with("queue bench-x: 10 messages"), "{text}");
        assert!(text.contains("send latency: p50 2.000 ms"), "{text}");
        assert!(text.contains("end-to-end latency: p50 3.000 ms, p99 4.000 ms, p99.9 5.000 ms"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        assert_eq!(json["queue"], "bench-x");
        assert_eq!(json["e2e_p99_ms"], 4.0);
        assert!(json.get("topic").is_none(), "{json}");
    }
}
