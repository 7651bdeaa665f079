//! Reading a partition: where a fetch starts (an offset, a timestamp, the
//! earliest or latest position), offset lookups, and the fetch session that
//! streams whole batches from there, long-polling at the end of the log.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::Broker;
use crate::error::BrokerError;
use crate::log::LogError;
use crate::partition::Partition;

const DEFAULT_FETCH_BYTES: u64 = 1024 * 1024;
const DEFAULT_FETCH_WAIT: Duration = Duration::from_millis(500);

/// Where a fetch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Offset(u64),
    /// The first offset whose timestamp is at or after this (ms).
    Timestamp(i64),
    Earliest,
    Latest,
}

/// One offset lookup (`ListOffsets`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetQuery {
    Earliest,
    Latest,
    Timestamp(i64),
}

/// A fetch as the client asked for it; zeros mean the defaults.
#[derive(Debug, Clone, Copy)]
pub struct FetchOptions {
    pub start: StartAt,
    pub max_bytes: u32,
    pub max_wait_ms: u32,
    /// Keep streaming after the first response.
    pub follow: bool,
}

/// One response of a fetch session: stored batch bytes as they are, or a
/// heartbeat (no records) at the end of the log.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub partition: u32,
    pub records: Bytes,
    pub high_watermark: u64,
    pub log_start: u64,
    pub next_offset: u64,
}

/// One answered offset query: the offset, its timestamp (-1 when not looked
/// up by time or when none matched), and the partition's bounds.
#[derive(Debug, Clone, Copy)]
pub struct OffsetAnswer {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub log_start: u64,
    pub high_watermark: u64,
}

impl Broker {
    /// Resolves `start` to an offset in `[log start, high watermark]`; an
    /// explicit offset outside that range is an error.
    pub(crate) async fn start_offset(&self, partition: &Arc<Partition>, start: StartAt) -> Result<u64, BrokerError> {
        let (lo, hw) = partition.bounds();
        match start {
            StartAt::Offset(o) if o < lo.get() || o > hw.get() => Err(BrokerError::Log {
                resource: partition.id().to_string(),
                source: LogError::OffsetOutOfRange { requested: o, start: lo.get(), end: hw.get() },
            }),
            StartAt::Offset(o) => Ok(o),
            StartAt::Timestamp(ts) => Ok(partition.offset_for_timestamp(ts).await?.0),
            StartAt::Earliest => Ok(lo.get()),
            StartAt::Latest => Ok(hw.get()),
        }
    }

    /// Answers one offset query on a partition.
    pub async fn lookup_offset(
        &self,
        tenant: &str,
        topic: &str,
        partition: u32,
        query: OffsetQuery,
    ) -> Result<OffsetAnswer, BrokerError> {
        let p = self.partition(tenant, topic, partition)?;
        let stats = p.stats();
        let (offset, timestamp_ms) = match query {
            OffsetQuery::Earliest => (stats.start_offset, -1),
            OffsetQuery::Latest => (stats.high_watermark, -1),
            OffsetQuery::Timestamp(ts) => p.offset_for_timestamp(ts).await?,
        };
        Ok(OffsetAnswer { offset, timestamp_ms, log_start: stats.start_offset, high_watermark: stats.high_watermark })
    }

    /// Starts a fetch session: the start is resolved first (its error is the
    /// call's), then a task streams responses into a channel of two, so a
    /// slow or vanished client is noticed by the channel.
    pub async fn fetch(
        self: &Arc<Self>,
        tenant: &str,
        topic: &str,
        partition: u32,
        options: FetchOptions,
    ) -> Result<mpsc::Receiver<Result<Fetched, BrokerError>>, BrokerError> {
        let p = self.partition(tenant, topic, partition)?;
        let limits = &self.config.limits;
        let max_bytes = match options.max_bytes {
            0 => DEFAULT_FETCH_BYTES,
            n => u64::from(n).min(limits.max_fetch_bytes.0),
        } as usize;
        let max_wait = match options.max_wait_ms {
            0 => DEFAULT_FETCH_WAIT,
            n => Duration::from_millis(u64::from(n)).min(limits.max_fetch_wait.0),
        };
        let start = self.start_offset(&p, options.start).await?;
        let (tx, rx) = mpsc::channel(2);
        let session = FetchSession {
            broker: self.clone(),
            partition: p,
            next: start,
            max_bytes,
            max_wait,
            follow: options.follow,
        };
        tokio::spawn(session.run(tx));
        Ok(rx)
    }

    /// Waits up to `timeout` for the partition's high watermark to pass
    /// `offset`, for shutdown, or for the log to close. Returns the watermark.
    pub(crate) async fn wait_for_data(&self, partition: &Partition, offset: u64, timeout: Duration) -> u64 {
        let mut hw = partition.log().subscribe();
        let _ = tokio::time::timeout(timeout, async {
            tokio::select! {
                _ = async { let _ = hw.wait_for(|h| *h > offset).await; } => {}
                _ = self.until_shutdown() => {}
            }
        })
        .await;
        partition.high_watermark()
    }
}

/// A running fetch: streams a partition from `next` until the client goes
/// away, the broker shuts down, or (without `follow`) after the first
/// response.
struct FetchSession {
    broker: Arc<Broker>,
    partition: Arc<Partition>,
    next: u64,
    max_bytes: usize,
    max_wait: Duration,
    follow: bool,
}

impl FetchSession {
    async fn run(mut self, tx: mpsc::Sender<Result<Fetched, BrokerError>>) {
        let stop = self.broker.shutdown_signal();
        let labels = self.partition.labels();
        let index = self.partition.id().index();
        loop {
            if *stop.borrow() || tx.is_closed() {
                return;
            }
            let read = match self.partition.read(self.next, self.max_bytes).await {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            if read.records.is_empty() {
                // At the end of the log: long-poll for new data.
                let hw = tokio::select! {
                    hw = self.broker.wait_for_data(&self.partition, self.next, self.max_wait) => hw,
                    _ = tx.closed() => return,
                };
                if hw > self.next && !*stop.borrow() {
                    continue;
                }
                let heartbeat = Fetched {
                    partition: index,
                    records: Bytes::new(),
                    high_watermark: hw,
                    log_start: read.log_start,
                    next_offset: self.next,
                };
                if tx.send(Ok(heartbeat)).await.is_err() || !self.follow || *stop.borrow() {
                    return;
                }
                continue;
            }
            let read_from = self.next;
            self.next = read.next_offset;
            let records: u64 = strata_proto::batch::BatchIter::new(read.records.clone())
                .filter_map(Result::ok)
                .map(|b| u64::from(b.header.record_count))
                .sum();
            let metrics = self.broker.metrics();
            metrics.messages_out.get_or_create(&labels).inc_by(records);
            metrics.bytes_out.get_or_create(&labels).inc_by(read.records.len() as u64);
            let delivered = strata_telemetry::enabled().then(|| {
                let mut spans = crate::telemetry::batch_spans(&read.records, "deliver", &labels.topic, index);
                // Where the bytes came from: the local disk or the cold tier.
                let tier = if self.partition.is_cold(read_from) { "cold" } else { "hot" };
                for (_, s) in &mut spans {
                    use strata_telemetry::{Attribute, Span as _};
                    s.set_attribute(Attribute::new("messaging.strata.tier", tier));
                }
                spans
            });
            let resp = Fetched {
                partition: index,
                records: read.records,
                high_watermark: read.high_watermark,
                log_start: read.log_start,
                next_offset: self.next,
            };
            let sent = tx.send(Ok(resp)).await;
            // Deliver spans end once the batch is handed to the transport.
            drop(delivered);
            if sent.is_err() || !self.follow {
                return;
            }
        }
    }
}
