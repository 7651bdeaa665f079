//! `strata bench group`: producers and consumer-group members on one topic
//! at the same time, to show whether the group keeps up with the producers.
//!
//! The members join first (a new group reading from the earliest offset, so
//! nothing is skipped); once every partition is assigned the producers run
//! for the plan, then the members drain what is left. Reported: the
//! producers' msgs/s (first send to last ack) and acknowledgement latency;
//! the group's msgs/s (first record to last record, so a group that keeps up
//! reads at the producers' rate and one that falls behind reads at its own
//! ceiling); end-to-end latency (record timestamp to `poll` returning it,
//! millisecond clock); and the drain time after the last acknowledgement.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use strata_client::{Client, Durability, GroupConsumer, GroupConsumerConfig, ProducerConfig, StartFrom, TopicOptions};
use tokio::sync::watch;

use super::{Plan, Report, new_histogram, produce_load, random_topic_name};
use crate::parse;
use crate::parse::DurabilityArg;

#[derive(Debug, clap::Args)]
pub(crate) struct BenchGroupArgs {
    /// Size of each message value (e.g. 1024, 4KiB).
    #[arg(long, default_value = "1024", value_parser = parse::size)]
    pub(crate) size: u64,
    /// How long the producers send.
    #[arg(long, default_value = "10s", value_parser = parse::duration)]
    pub(crate) duration: Duration,
    /// Number of concurrent producers.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) producers: u32,
    /// Number of members of the consumer group.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub(crate) members: u32,
    /// Partitions of the temporary benchmark topic.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) partitions: u32,
    /// Durability of the topic [default: the broker's].
    #[arg(long, value_enum)]
    pub(crate) durability: Option<DurabilityArg>,
    /// How long the members may take, after the last acknowledgement, to
    /// read what is left before the run fails.
    #[arg(long, default_value = "60s", value_parser = parse::duration)]
    pub(crate) drain_timeout: Duration,
    /// Produce first, then start the group on the backlog: the group's
    /// catch-up rate (its ceiling) instead of its rate alongside producers.
    #[arg(long)]
    pub(crate) backlog: bool,
    /// Bytes each producer may hold buffered and in flight (as in
    /// `bench produce`).
    #[arg(long, default_value = "512KiB", value_parser = parse::positive_size)]
    pub(crate) max_in_flight: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// What one member read.
struct MemberStats {
    messages: u64,
    bytes: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    /// Microseconds from the record's timestamp to `poll` returning it.
    e2e: Histogram<u64>,
}

pub(crate) async fn bench_group(client: &Client, args: BenchGroupArgs) -> anyhow::Result<Report> {
    let topic = random_topic_name();
    let options = TopicOptions { durability: args.durability.map(Durability::from), ..TopicOptions::default() };
    client.create_topic(&topic, args.partitions, options).await.with_context(|| format!("creating topic {topic}"))?;
    let result = run(client, &topic, &args).await;
    if let Err(e) = client.delete_topic(&topic).await {
        eprintln!("warning: could not delete benchmark topic {topic}: {e}");
    }
    if let Err(e) = client.delete_group(&topic).await {
        eprintln!("warning: could not delete benchmark group {topic}: {e}");
    }
    result
}

async fn run(client: &Client, topic: &str, args: &BenchGroupArgs) -> anyhow::Result<Report> {
    let config = ProducerConfig {
        max_in_flight_bytes: usize::try_from(args.max_in_flight).unwrap_or(usize::MAX),
        ..ProducerConfig::default()
    };
    let produce =
        || produce_load(client, topic, &config, args.size, args.producers, Plan::Duration(args.duration), None);
    let backlog = if args.backlog { Some(produce().await.context("producing")?) } else { None };

    let consumed = Arc::new(AtomicU64::new(0));
    // Partitions each member owns, as it last saw.
    let assigned: Arc<Vec<AtomicUsize>> = Arc::new((0..args.members).map(|_| AtomicUsize::new(0)).collect());
    // The number of acknowledged messages once the producers are done.
    let (target_tx, target_rx) = watch::channel(None::<u64>);
    let mut members = Vec::new();
    for i in 0..args.members {
        let config = GroupConsumerConfig {
            auto_offset_reset: StartFrom::Earliest,
            client_id: format!("strata bench group, member {i}"),
            ..GroupConsumerConfig::default()
        };
        // The group is named after the (random) topic.
        let consumer = client.group_consumer(topic, [topic], config).await?;
        let slot = (assigned.clone(), i as usize);
        members.push(tokio::spawn(member(consumer, consumed.clone(), slot, target_rx.clone())));
    }

    // Start the load only once the group has settled: every partition
    // owned, by as many members as can have one.
    let partitions = usize::try_from(args.partitions).unwrap_or(usize::MAX);
    let holders = partitions.min(assigned.len());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let owned: Vec<usize> = assigned.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        if owned.iter().sum::<usize>() == partitions && owned.iter().filter(|&&n| n > 0).count() == holders {
            break;
        }
        if Instant::now() >= deadline {
            bail!("the group did not spread its {partitions} partitions over its members within 60 s: {owned:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let produced = match backlog {
        Some(stats) => stats,
        None => produce().await.context("producing")?,
    };
    let produced_at = Instant::now();
    target_tx.send_replace(Some(produced.messages));

    let mut e2e = new_histogram()?;
    let (mut messages, mut bytes, mut first, mut last) = (0u64, 0u64, None::<Instant>, None::<Instant>);
    for task in members {
        let stats = match tokio::time::timeout(args.drain_timeout, task).await {
            Ok(joined) => joined.context("group member task")??,
            Err(_) => bail!(
                "the group read {} of {} messages; the rest did not arrive within --drain-timeout {:?}",
                consumed.load(Ordering::Relaxed),
                produced.messages,
                args.drain_timeout
            ),
        };
        e2e.add(&stats.e2e).context("merging latency histograms")?;
        messages += stats.messages;
        bytes += stats.bytes;
        first = [first, stats.first].into_iter().flatten().min();
        last = [last, stats.last].into_iter().flatten().max();
    }

    let mut report = Report::new("group", topic, args.size, &produced, "ack");
    report.producers = Some(args.producers);
    report.consumers = Some(args.members);
    report.backlog = Some(args.backlog);
    let seconds = match (first, last) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => 0.0,
    };
    let per_sec = |n: u64| if seconds > 0.0 { n as f64 / seconds } else { 0.0 };
    report.consumed_messages = Some(messages);
    report.consume_msgs_per_sec = Some(per_sec(messages));
    report.consume_mb_per_sec = Some(per_sec(bytes) / 1e6);
    report.drain_ms = Some(last.map_or(0.0, |l| l.saturating_duration_since(produced_at).as_secs_f64() * 1000.0));
    let ms = |q: f64| if e2e.is_empty() { 0.0 } else { e2e.value_at_quantile(q) as f64 / 1000.0 };
    report.e2e_p50_ms = Some(ms(0.5));
    report.e2e_p99_ms = Some(ms(0.99));
    report.e2e_p999_ms = Some(ms(0.999));
    Ok(report)
}

/// One member: polls batches until the group as a whole has read every
/// acknowledged message, then leaves the group.
async fn member(
    mut consumer: GroupConsumer,
    consumed: Arc<AtomicU64>,
    (assigned, slot): (Arc<Vec<AtomicUsize>>, usize),
    mut target: watch::Receiver<Option<u64>>,
) -> anyhow::Result<MemberStats> {
    let mut stats = MemberStats { messages: 0, bytes: 0, first: None, last: None, e2e: new_histogram()? };
    loop {
        let done = target.borrow_and_update().is_some_and(|t| consumed.load(Ordering::Relaxed) >= t);
        if done {
            break;
        }
        let records = tokio::select! {
            records = consumer.poll(4096, Duration::from_millis(100)) => records?,
            // Producers finished: re-check whether the group is done.
            _ = target.changed() => continue,
        };
        assigned[slot].store(consumer.assignment().len(), Ordering::Relaxed);
        if records.is_empty() {
            continue;
        }
        let now = Instant::now();
        stats.first.get_or_insert(now);
        stats.last = Some(now);
        let wall_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        for record in &records {
            stats.bytes += record.value.len() as u64;
            let age_ms = u64::try_from(wall_ms - record.timestamp_ms).unwrap_or(0);
            stats.e2e.saturating_record(age_ms * 1000);
        }
        stats.messages += records.len() as u64;
        consumed.fetch_add(records.len() as u64, Ordering::Relaxed);
    }
    consumer.close().await?;
    Ok(stats)
}
