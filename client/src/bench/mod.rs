//! `strata bench ...`: load generators that report throughput and latency
//! percentiles, as text or as one JSON object.
//!
//! What is measured:
//! - `bench produce`: msgs/s and MB/s (10^6 bytes of message values) from the
//!   first send to the last acknowledgement; latency = from handing a message
//!   to the producer (including any wait for producer memory) to its
//!   acknowledgement.
//! - `bench consume`: msgs/s and MB/s from creating the consumer to the Nth
//!   record; latency = how long the application waited for each fetch
//!   response when nothing was buffered (records already buffered are not
//!   counted), i.e. the fetch latency the reader experiences.
//! - `bench queue` (in `queue`): durable send + receive + ack through one
//!   queue; msgs/s and MB/s of acknowledged receipts from the first send to
//!   the last ack; send latency (send call to its answer) and end-to-end
//!   latency (send call to receipt, from a timestamp in the body).
//! - `bench group` (in `group`): producers and consumer-group members at
//!   once; both rates, end-to-end latency and the group's drain time.

mod group;
mod queue;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Subcommand, ValueEnum};
use futures::{FutureExt as _, StreamExt as _, stream::FuturesUnordered};
use hdrhistogram::Histogram;
use serde::Serialize;
use strata_client::{
    Client, Compression, ConsumerConfig, DeliveryFuture, Durability, Message, ProducerConfig, RecordMetadata,
    StartFrom, TopicOptions,
};
use tokio::sync::mpsc;

use crate::parse;
use crate::parse::DurabilityArg;

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Produce as fast as possible; report msgs/s, MB/s and acknowledgement
    /// latency. Without --topic a temporary topic `bench-<random>` is created
    /// and deleted afterwards.
    Produce(BenchProduceArgs),
    /// Read --count messages from the earliest offset; report msgs/s, MB/s and
    /// fetch wait latency. The topic is created and filled first when it holds
    /// fewer messages (the fill is reported separately on stderr).
    Consume(BenchConsumeArgs),
    /// Send, receive and acknowledge through a queue as fast as possible;
    /// report msgs/s, MB/s, send latency and end-to-end latency. Without
    /// --queue a temporary queue `bench-<random>` is created and deleted
    /// afterwards.
    Queue(queue::BenchQueueArgs),
    /// Producers and consumer-group members on one topic at once (default
    /// 2 and 2): report both rates, end-to-end latency and how long the
    /// group took to drain after the last acknowledgement.
    Group(group::BenchGroupArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum CompressionArg {
    None,
    Lz4,
}

impl From<CompressionArg> for Compression {
    fn from(c: CompressionArg) -> Self {
        match c {
            CompressionArg::None => Compression::None,
            CompressionArg::Lz4 => Compression::Lz4,
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct BenchProduceArgs {
    /// Size of each message value (e.g. 1024, 4KiB).
    #[arg(long, default_value = "1024", value_parser = parse::size)]
    pub(crate) size: u64,
    /// Number of messages to send (default: run for --duration).
    #[arg(long, conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: Option<u64>,
    /// How long to send [default: 10s].
    #[arg(long, value_parser = parse::duration)]
    pub(crate) duration: Option<Duration>,
    /// Number of concurrent producers.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) producers: u32,
    /// Partitions of the benchmark topic when it is created.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) partitions: u32,
    /// Use (or create) this topic and keep it afterwards.
    #[arg(long)]
    pub(crate) topic: Option<String>,
    /// Durability of the topic when it is created [default: the broker's].
    #[arg(long, value_enum)]
    pub(crate) durability: Option<DurabilityArg>,
    /// Replication factor of the topic when it is created [default: the
    /// broker's].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) replication_factor: Option<u32>,
    /// Producer batch size.
    #[arg(long, default_value = "128KiB", value_parser = parse::positive_size)]
    pub(crate) batch_bytes: u64,
    /// Producer linger.
    #[arg(long, default_value = "5ms", value_parser = parse::duration_or_zero)]
    pub(crate) linger: Duration,
    /// Bytes each producer may hold buffered and in flight before `send`
    /// waits. By Little's law latency ≈ this / throughput: lower it to trade
    /// peak throughput for acknowledgement latency.
    /// The default keeps acknowledgement latency low while saturating the disk.
    #[arg(long, default_value = "512KiB", value_parser = parse::positive_size)]
    pub(crate) max_in_flight: u64,
    /// Batch compression.
    #[arg(long, value_enum, default_value = "none")]
    pub(crate) compression: CompressionArg,
    /// Send at this fixed total rate (messages per second, shared by the
    /// producers) instead of as fast as possible: latency at a given load.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) rate: Option<u64>,
    /// Let every batch wait for --linger even when nothing is in flight
    /// (the producer's default sends at once when the pipe is idle).
    #[arg(long)]
    pub(crate) no_idle_send: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct BenchConsumeArgs {
    /// The topic to read (created and filled when needed, and kept).
    #[arg(long, default_value = "strata-bench")]
    pub(crate) topic: String,
    /// Size of each message value when filling the topic.
    #[arg(long, default_value = "1024", value_parser = parse::size)]
    pub(crate) size: u64,
    /// Number of messages to read.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: u64,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) partitions: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) async fn run(client: &Client, cmd: BenchCommand) -> anyhow::Result<()> {
    let (report, json) = match cmd {
        BenchCommand::Produce(args) => {
            let json = args.json;
            (bench_produce(client, args).await?, json)
        }
        BenchCommand::Consume(args) => {
            let json = args.json;
            (bench_consume(client, args).await?, json)
        }
        BenchCommand::Queue(args) => {
            let json = args.json;
            (queue::bench_queue(client, args).await?, json)
        }
        BenchCommand::Group(args) => {
            let json = args.json;
            (group::bench_group(client, args).await?, json)
        }
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.human());
    }
    Ok(())
}

/// The result of one benchmark; its JSON form is a stable interface.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) benchmark: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) topic: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) queue: Option<String>,
    pub(crate) messages: u64,
    /// Bytes of message values.
    pub(crate) bytes: u64,
    /// Configured message value size.
    pub(crate) size: u64,
    pub(crate) seconds: f64,
    pub(crate) msgs_per_sec: f64,
    /// 10^6 bytes per second.
    pub(crate) mb_per_sec: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    /// What the latency percentiles measure.
    pub(crate) latency: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) producers: Option<u32>,
    /// The fixed rate asked for with `--rate` (messages per second).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rate: Option<u64>,
    /// `bench queue --per-message`: each message handed to the client on its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) per_message: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) filled_messages: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) consumers: Option<u32>,
    /// End-to-end latency percentiles (`bench queue`: send call to receipt).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) e2e_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) e2e_p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) e2e_p999_ms: Option<f64>,
    /// `bench group`: records the group read, and its rate from its first
    /// record to its last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) consumed_messages: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) consume_msgs_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) consume_mb_per_sec: Option<f64>,
    /// `bench group --backlog`: the group started after the producers finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) backlog: Option<bool>,
    /// `bench group`: from the last acknowledgement to the group's last record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) drain_ms: Option<f64>,
}

impl Report {
    fn new(benchmark: &'static str, topic: &str, size: u64, stats: &LoadStats, latency: &'static str) -> Report {
        let seconds = stats.elapsed.as_secs_f64();
        let per_sec = |n: u64| {
            if seconds > 0.0 { n as f64 / seconds } else { 0.0 }
        };
        let ms = |q: f64| {
            if stats.latency.is_empty() { 0.0 } else { stats.latency.value_at_quantile(q) as f64 / 1000.0 }
        };
        Report {
            benchmark,
            topic: topic.to_owned(),
            queue: None,
            messages: stats.messages,
            bytes: stats.bytes,
            size,
            seconds,
            msgs_per_sec: per_sec(stats.messages),
            mb_per_sec: per_sec(stats.bytes) / 1e6,
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            latency,
            producers: None,
            rate: None,
            per_message: None,
            filled_messages: None,
            consumers: None,
            e2e_p50_ms: None,
            e2e_p99_ms: None,
            e2e_p999_ms: None,
            consumed_messages: None,
            consume_msgs_per_sec: None,
            consume_mb_per_sec: None,
            drain_ms: None,
            backlog: None,
        }
    }

    fn human(&self) -> String {
        let mut text = format!(
            "{} {}: {} messages ({} B values) in {:.2} s\n  \
             throughput: {:.0} msgs/s, {:.2} MB/s\n  \
             {} latency: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms\n",
            self.benchmark,
            self.queue.as_deref().unwrap_or(&self.topic),
            self.messages,
            self.size,
            self.seconds,
            self.msgs_per_sec,
            self.mb_per_sec,
            self.latency,
            self.p50_ms,
            self.p99_ms,
            self.p999_ms,
        );
        if let Some(rate) = self.rate {
            text.push_str(&format!("  at a fixed rate of {rate} msgs/s\n"));
        }
        if let (Some(n), Some(rate), Some(mb), Some(drain)) =
            (self.consumed_messages, self.consume_msgs_per_sec, self.consume_mb_per_sec, self.drain_ms)
        {
            text.push_str(&format!(
                "  group: {n} messages read at {rate:.0} msgs/s, {mb:.2} MB/s; drained {drain:.1} ms after the last ack\n"
            ));
        }
        if let (Some(p50), Some(p99), Some(p999)) = (self.e2e_p50_ms, self.e2e_p99_ms, self.e2e_p999_ms) {
            text.push_str(&format!("  end-to-end latency: p50 {p50:.3} ms, p99 {p99:.3} ms, p99.9 {p999:.3} ms\n"));
        }
        text
    }
}

/// What a load run measured.
pub(crate) struct LoadStats {
    messages: u64,
    bytes: u64,
    elapsed: Duration,
    /// Microseconds.
    latency: Histogram<u64>,
}

#[derive(Debug, Clone, Copy)]
enum Plan {
    Count(u64),
    Duration(Duration),
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    // 1 µs to 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).context("creating a latency histogram")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

async fn bench_produce(client: &Client, args: BenchProduceArgs) -> anyhow::Result<Report> {
    let (topic, temporary) = match args.topic {
        Some(t) => (t, false),
        None => (random_topic_name(), true),
    };
    let options = TopicOptions {
        durability: args.durability.map(Durability::from),
        replication_factor: args.replication_factor,
        ..TopicOptions::default()
    };
    client.ensure_topic(&topic, args.partitions, options).await.with_context(|| format!("creating topic {topic}"))?;
    let plan = match (args.count, args.duration) {
        (Some(n), _) => Plan::Count(n),
        (None, Some(d)) => Plan::Duration(d),
        (None, None) => Plan::Duration(Duration::from_secs(10)),
    };
    let config = ProducerConfig {
        batch_bytes: usize::try_from(args.batch_bytes).unwrap_or(usize::MAX),
        linger: args.linger,
        compression: args.compression.into(),
        max_in_flight_bytes: usize::try_from(args.max_in_flight).unwrap_or(usize::MAX),
        send_when_idle: !args.no_idle_send,
        ..ProducerConfig::default()
    };
    let result = produce_load(client, &topic, &config, args.size, args.producers, plan, args.rate).await;
    if temporary && let Err(e) = client.delete_topic(&topic).await {
        eprintln!("warning: could not delete benchmark topic {topic}: {e}");
    }
    let stats = result?;
    let mut report = Report::new("produce", &topic, args.size, &stats, "ack");
    report.producers = Some(args.producers);
    report.rate = args.rate;
    Ok(report)
}

async fn bench_consume(client: &Client, args: BenchConsumeArgs) -> anyhow::Result<Report> {
    client
        .ensure_topic(&args.topic, args.partitions, TopicOptions::default())
        .await
        .with_context(|| format!("creating topic {}", args.topic))?;
    let description = client.describe_topic(&args.topic).await?;
    let stored: u64 = description.partition_details.iter().map(|p| p.end_offset.saturating_sub(p.start_offset)).sum();
    let mut filled = None;
    if stored < args.count {
        let missing = args.count - stored;
        let stats =
            produce_load(client, &args.topic, &ProducerConfig::default(), args.size, 1, Plan::Count(missing), None)
                .await
                .context("filling the topic")?;
        let fill = Report::new("fill", &args.topic, args.size, &stats, "ack");
        eprint!("{}", fill.human());
        filled = Some(stats.messages);
    }

    let config = ConsumerConfig { start: StartFrom::Earliest, ..ConsumerConfig::default() };
    let mut latency = new_histogram()?;
    let start = Instant::now();
    let mut consumer = client.consumer(&args.topic, config).await?;
    let (mut messages, mut bytes) = (0u64, 0u64);
    while messages < args.count {
        let item = match consumer.try_next() {
            Some(item) => item,
            None => {
                let waited = Instant::now();
                let item = consumer.next().await;
                latency.saturating_record(micros(waited.elapsed()));
                match item {
                    Some(item) => item,
                    None => bail!("the consumer stopped after {messages} messages"),
                }
            }
        };
        let record = item?;
        messages += 1;
        bytes += record.value.len() as u64;
    }
    let stats = LoadStats { messages, bytes, elapsed: start.elapsed(), latency };
    let mut report = Report::new("consume", &args.topic, args.size, &stats, "fetch wait");
    report.filled_messages = filled;
    Ok(report)
}

/// Runs `producers` producers in parallel until the plan is done.
async fn produce_load(
    client: &Client,
    topic: &str,
    config: &ProducerConfig,
    size: u64,
    producers: u32,
    plan: Plan,
    rate: Option<u64>,
) -> anyhow::Result<LoadStats> {
    // Each producer's share of a fixed rate, as the gap between its messages.
    let gap = rate.map(|r| Duration::from_secs_f64(f64::from(producers) / r as f64));
    let value = payload(usize::try_from(size).context("--size is too large")?);
    let start = Instant::now();
    let deadline = match plan {
        Plan::Duration(d) => Some(start + d),
        Plan::Count(_) => None,
    };
    let mut tasks = Vec::new();
    for i in 0..u64::from(producers) {
        let count = match plan {
            Plan::Count(n) => {
                let p = u64::from(producers);
                Some(n / p + u64::from(i < n % p))
            }
            Plan::Duration(_) => None,
        };
        tasks.push(tokio::spawn(one_producer(
            client.clone(),
            topic.to_owned(),
            config.clone(),
            value.clone(),
            count,
            deadline,
            gap,
        )));
    }
    let mut latency = new_histogram()?;
    let mut messages = 0;
    for task in tasks {
        let (hist, acked) = task.await.context("producer task")??;
        latency.add(&hist).context("merging latency histograms")?;
        messages += acked;
    }
    Ok(LoadStats { messages, bytes: messages * size, elapsed: start.elapsed(), latency })
}

async fn one_producer(
    client: Client,
    topic: String,
    config: ProducerConfig,
    value: Bytes,
    count: Option<u64>,
    deadline: Option<Instant>,
    gap: Option<Duration>,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let producer = client.producer_with_config(&topic, config).await?;
    let mut pacer = gap.map(Pacer::new);
    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    let collector = tokio::spawn(collect_acks(acks_rx, new_histogram()?));
    let mut sent = 0u64;
    let mut failure = None;
    loop {
        if count.is_some_and(|c| sent >= c) {
            break;
        }
        if let Some(p) = pacer.as_mut() {
            p.wait().await;
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        match producer.enqueue(Message::new(value.clone())).await {
            Ok(ack) => {
                if acks_tx.send((now, ack)).is_err() {
                    break; // the collector saw a failure
                }
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
        sent += 1;
    }
    drop(acks_tx);
    producer.close().await?;
    let collected = collector.await.context("acknowledgement collector")?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    collected
}

/// Paces one sender at a fixed rate: message `i` is due at `start + i *
/// gap`. A sender that fell behind catches up without sleeping (so the rate
/// holds on average even though timers tick in milliseconds).
pub(crate) struct Pacer {
    start: tokio::time::Instant,
    gap: Duration,
    sent: u32,
}

impl Pacer {
    pub(crate) fn new(gap: Duration) -> Pacer {
        Pacer { start: tokio::time::Instant::now(), gap, sent: 0 }
    }

    pub(crate) async fn wait(&mut self) {
        let due = self.start + self.gap * self.sent;
        self.sent = self.sent.saturating_add(1);
        if due > tokio::time::Instant::now() {
            tokio::time::sleep_until(due).await;
        }
    }
}

/// Awaits acknowledgements as they complete, recording each latency.
async fn collect_acks(
    mut acks: mpsc::UnboundedReceiver<(Instant, DeliveryFuture)>,
    mut latency: Histogram<u64>,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut pending = FuturesUnordered::<Timed>::new();
    let mut open = true;
    let mut acked = 0u64;
    while open || !pending.is_empty() {
        tokio::select! {
            Some((result, sent_at)) = pending.next(), if !pending.is_empty() => {
                result.context("message not acknowledged")?;
                latency.saturating_record(micros(sent_at.elapsed()));
                acked += 1;
            }
            item = acks.recv(), if open => match item {
                Some((sent_at, ack)) => pending.push(Timed { ack, sent_at }),
                None => open = false,
            },
        }
    }
    Ok((latency, acked))
}

/// An acknowledgement with the time its message was handed over.
struct Timed {
    ack: DeliveryFuture,
    sent_at: Instant,
}

impl std::future::Future for Timed {
    type Output = (Result<RecordMetadata, strata_client::Error>, Instant);

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let sent_at = self.sent_at;
        self.ack.poll_unpin(cx).map(|r| (r, sent_at))
    }
}

/// Incompressible-looking bytes, the same for every message.
fn payload(size: usize) -> Bytes {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let take = (size - out.len()).min(8);
        out.extend_from_slice(&state.to_le_bytes()[..take]);
    }
    Bytes::from(out)
}

fn random_topic_name() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let seed = (nanos as u64) ^ (u64::from(std::process::id()) << 32);
    format!("bench-{:08x}", xxhash_rust::xxh3::xxh3_64(&seed.to_le_bytes()) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_report_has_the_documented_fields() {
        let mut latency = new_histogram().unwrap();
        for us in [1_000u64, 2_000, 3_000, 100_000] {
            latency.record(us).unwrap();
        }
        let stats = LoadStats { messages: 4, bytes: 4096, elapsed: Duration::from_secs(2), latency };
        let mut report = Report::new("produce", "bench-x", 1024, &stats, "ack");
        report.producers = Some(1);
        let json: serde_json::Value = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        let obj = json.as_object().unwrap();
        for key in ["msgs_per_sec", "mb_per_sec", "p50_ms", "p99_ms", "p999_ms", "messages", "bytes", "seconds", "size"]
        {
            assert!(obj.contains_key(key), "missing {key} in {json}");
        }
        assert_eq!(json["msgs_per_sec"], 2.0);
        assert_eq!(json["mb_per_sec"], 0.002048);
        assert_eq!(json["messages"], 4);
        assert!((json["p50_ms"].as_f64().unwrap() - 2.0).abs() < 0.01);
        assert!((json["p999_ms"].as_f64().unwrap() - 100.0).abs() < 0.1);
        assert!(!obj.contains_key("filled_messages"));
        assert!(report.human().contains("2 msgs/s"));
    }

    #[test]
    fn empty_runs_report_zeros_not_nan() {
        let stats = LoadStats { messages: 0, bytes: 0, elapsed: Duration::ZERO, latency: new_histogram().unwrap() };
        let report = Report::new("consume", "t", 1, &stats, "fetch wait");
        assert_eq!(report.msgs_per_sec, 0.0);
        assert_eq!(report.p99_ms, 0.0);
        assert!(serde_json::to_string(&report).unwrap().contains("\"p99_ms\":0.0"));
    }

    #[test]
    fn payload_has_the_requested_size() {
        for n in [0, 1, 7, 8, 1024, 1025] {
            assert_eq!(payload(n).len(), n);
        }
        assert!(random_topic_name().starts_with("bench-"));
    }
}
