//! The [`Consumer`]: reads a set of partitions of one topic, one following
//! `Fetch` stream per partition, and yields their records in offset order per
//! partition.
//!
//! Partitions are held as *assignments* in a [`fetch_set::FetchSet`]
//! (partition → fetcher task with a generation number). This consumer
//! assigns a fixed set once; the group consumer (`crate::group`) assigns and
//! revokes partitions as its group rebalances, and the generation lets it
//! drop records of revoked assignments still queued.

mod fetch_set;
mod fetcher;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use strata_proto::v1::{StartPosition, fetch_request, list_offsets_request};

use crate::client::Client;
use crate::error::Error;
use crate::retry::RetryConfig;
pub(crate) use fetch_set::{FetchFailure, FetchSet, FetchSettings, TopicPartition};

/// Where a consumer starts reading each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The oldest record still stored.
    Earliest,
    /// Only records produced from now on.
    #[default]
    Latest,
    /// This offset (in every partition read).
    Offset(u64),
    /// The first record with a timestamp at or after this one, in
    /// milliseconds since the Unix epoch (resolved with `ListOffsets`).
    Timestamp(i64),
}

/// Settings of a [`Consumer`].
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Where to start each partition.
    pub start: StartFrom,
    /// The partitions to read; `None` reads every partition the topic has
    /// when the consumer starts.
    pub partitions: Option<Vec<u32>>,
    /// Soft limit on the bytes of one fetch response (at least one batch is
    /// always returned).
    pub max_bytes: u32,
    /// How long the broker holds a fetch at the end of the log before
    /// answering with no records (the high watermark still updates).
    pub max_wait: Duration,
    /// Retries of transient fetch failures; the fetch resumes from the next
    /// offset.
    pub retry: RetryConfig,
    /// A stream that says nothing for `max_wait` plus this long is taken as
    /// dead and reopened.
    pub request_timeout: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            start: StartFrom::Latest,
            partitions: None,
            max_bytes: 1024 * 1024,
            max_wait: Duration::from_millis(500),
            retry: RetryConfig::default(),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// A record read from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// The topic it was read from (shared by every record of the topic, so
    /// it costs no allocation per record).
    pub topic: Arc<str>,
    /// The partition it was read from.
    pub partition: u32,
    /// Its offset within the partition.
    pub offset: u64,
    /// Milliseconds since the Unix epoch, as set by the producer.
    pub timestamp_ms: i64,
    /// The key it was produced with, if any.
    pub key: Option<Bytes>,
    /// The value (a null value written by another client reads as empty).
    pub value: Bytes,
    /// Headers in the order they were produced, e.g. W3C `traceparent`.
    pub headers: Vec<(String, Bytes)>,
}

impl ConsumedRecord {
    /// A `process` span linked to the record's creation context.
    pub(crate) fn process_span(&self, group: Option<&str>) -> Option<strata_telemetry::BoxedSpan> {
        use strata_telemetry::{Attribute, attr};
        if !strata_telemetry::enabled() {
            return None;
        }
        crate::telemetry::process_span(&self.topic, self.headers.iter().map(|(k, v)| (k.as_str(), v.as_ref())), || {
            let mut a = vec![
                Attribute::new(attr::PARTITION, self.partition.to_string()),
                Attribute::new(attr::MESSAGE_ID, self.offset.to_string()),
            ];
            if let Some(g) = group {
                a.push(Attribute::new(attr::GROUP, g.to_owned()));
            }
            a
        })
    }
}

impl ConsumedRecord {
    /// The first header with this name.
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// How far a consumer has read one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionProgress {
    /// The partition number.
    pub partition: u32,
    /// The offset of the next record [`Consumer::next`] will return for this
    /// partition; `None` until the first fetch response when starting from
    /// earliest or latest.
    pub position: Option<u64>,
    /// The partition's high watermark (offset after the last readable
    /// record) in the latest fetch response; `None` before the first.
    pub high_watermark: Option<u64>,
    /// The first offset still stored, from the latest fetch response.
    pub log_start_offset: Option<u64>,
}

impl PartitionProgress {
    /// Whether every record that existed at the latest fetch response has
    /// been returned.
    pub fn is_caught_up(&self) -> bool {
        matches!((self.position, self.high_watermark), (Some(p), Some(h)) if p >= h)
    }

    /// Records known to exist but not yet returned.
    pub fn lag(&self) -> Option<u64> {
        Some(self.high_watermark?.saturating_sub(self.position?))
    }
}

/// Reads partitions of one topic. Records of one partition come in offset
/// order; partitions interleave as their responses arrive.
#[derive(Debug)]
pub struct Consumer {
    topic: Arc<str>,
    fetch: FetchSet,
    /// The `process` span of the record last returned (tracing on): it
    /// lasts until the application asks for the next record.
    processing: Option<strata_telemetry::BoxedSpan>,
    /// An error `poll` met after it already had records; the next `poll` returns it.
    deferred: Option<Error>,
}

impl Client {
    /// A consumer of `topic`. Fails when the topic, or a requested partition,
    /// does not exist.
    pub async fn consumer(&self, topic: &str, config: ConsumerConfig) -> Result<Consumer, Error> {
        Consumer::start(self, topic, config).await
    }
}

impl ConsumerConfig {
    pub(crate) fn fetch_settings(&self) -> FetchSettings {
        FetchSettings {
            max_bytes: self.max_bytes,
            max_wait: self.max_wait,
            retry: self.retry,
            request_timeout: self.request_timeout,
        }
    }
}

impl Consumer {
    async fn start(client: &Client, topic: &str, config: ConsumerConfig) -> Result<Self, Error> {
        let description = client.describe_topic(topic).await?;
        let partitions = match &config.partitions {
            None => (0..description.partitions).collect::<Vec<_>>(),
            Some(list) => {
                if let Some(bad) = list.iter().find(|p| **p >= description.partitions) {
                    return Err(Error::InvalidArgument(format!(
                        "topic {topic} has no partition {bad} (it has {})",
                        description.partitions
                    )));
                }
                let mut list = list.clone();
                list.sort_unstable();
                list.dedup();
                list
            }
        };
        let starts = resolve_starts(client, topic, &partitions, config.start).await?;
        let capacity = (2 * partitions.len()).clamp(4, 64);
        let topic: Arc<str> = topic.into();
        let mut fetch = FetchSet::new(client.clone(), config.fetch_settings(), capacity);
        for (partition, (start, position)) in partitions.into_iter().zip(starts) {
            fetch.assign((topic.clone(), partition), start, position);
        }
        Ok(Consumer { topic, fetch, processing: None, deferred: None })
    }

    /// The topic being read.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next record, waiting for one if needed. Errors are items too: a
    /// partition whose fetch failed for good (e.g. the topic was deleted)
    /// reports its error once and stops; a transient outage that outlasts the
    /// retries is reported and retried again. `None` once no partition is
    /// being read any more.
    pub async fn next(&mut self) -> Option<Result<ConsumedRecord, Error>> {
        self.processing = None;
        let next = self.next_record().await;
        if let Some(Ok(r)) = &next {
            self.processing = r.process_span(None);
        }
        next
    }

    async fn next_record(&mut self) -> Option<Result<ConsumedRecord, Error>> {
        loop {
            if let Some(record) = self.fetch.take_buffered() {
                return Some(Ok(record));
            }
            if self.fetch.is_empty() {
                return None;
            }
            let event = self.fetch.recv().await?;
            if let Some(failure) = self.fetch.load(event) {
                return Some(Err(failure.error));
            }
        }
    }

    /// Up to `max` records: waits up to `timeout` for the first one, then
    /// takes whatever else is already here (no further waiting). An empty
    /// list when nothing arrived in time. Each record carries its
    /// `partition` and `offset`. An error that comes after some records is
    /// returned by the next call.
    ///
    /// ```no_run
    /// # async fn demo(mut consumer: strata_client::Consumer) -> Result<(), strata_client::Error> {
    /// use std::time::Duration;
    ///
    /// for record in consumer.poll(500, Duration::from_millis(100)).await? {
    ///     println!("{}@{}: {:?}", record.partition, record.offset, record.value);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn poll(&mut self, max: usize, timeout: std::time::Duration) -> Result<Vec<ConsumedRecord>, Error> {
        poll_batch(self, max, timeout).await
    }

    /// The next record if one is already here, without waiting.
    pub fn try_next(&mut self) -> Option<Result<ConsumedRecord, Error>> {
        let next = self.try_next_record()?;
        // Like `next`: the previous record's `process` span ends, this one's starts.
        self.processing = None;
        if let Ok(r) = &next {
            self.processing = r.process_span(None);
        }
        Some(next)
    }

    fn try_next_record(&mut self) -> Option<Result<ConsumedRecord, Error>> {
        loop {
            if let Some(record) = self.fetch.take_buffered() {
                return Some(Ok(record));
            }
            let event = self.fetch.try_recv()?;
            if let Some(failure) = self.fetch.load(event) {
                return Some(Err(failure.error));
            }
        }
    }

    /// The consumer as a `Stream` of records.
    pub fn into_stream(self) -> impl Stream<Item = Result<ConsumedRecord, Error>> + Send {
        futures::stream::unfold(self, |mut consumer| async move { consumer.next().await.map(|item| (item, consumer)) })
    }

    /// Progress of every partition read, by partition.
    pub fn progress(&self) -> impl Iterator<Item = &PartitionProgress> {
        self.fetch.progress().map(|(_, p)| p)
    }

    /// The latest known high watermark of each partition.
    pub fn high_watermarks(&self) -> BTreeMap<u32, u64> {
        self.progress().filter_map(|p| Some((p.partition, p.high_watermark?))).collect()
    }

    /// Whether every partition has returned everything up to the high
    /// watermark of its latest fetch response.
    pub fn is_caught_up(&self) -> bool {
        self.progress().all(PartitionProgress::is_caught_up)
    }

    /// Total records known to exist but not yet returned.
    pub fn lag(&self) -> u64 {
        self.progress().filter_map(PartitionProgress::lag).sum()
    }
}

/// The fetch start of each partition and the first offset to deliver. A
/// timestamp is resolved to offsets up front so that reconnects and skipping
/// work on offsets only.
pub(crate) async fn resolve_starts(
    client: &Client,
    topic: &str,
    partitions: &[u32],
    start: StartFrom,
) -> Result<Vec<(fetch_request::Start, Option<u64>)>, Error> {
    let same = |s: fetch_request::Start, pos: Option<u64>| vec![(s, pos); partitions.len()];
    Ok(match start {
        StartFrom::Earliest => same(fetch_request::Start::Position(StartPosition::Earliest as i32), None),
        StartFrom::Latest => same(fetch_request::Start::Position(StartPosition::Latest as i32), None),
        StartFrom::Offset(o) => same(fetch_request::Start::Offset(o), Some(o)),
        StartFrom::Timestamp(ts) => {
            if partitions.is_empty() {
                return Ok(Vec::new());
            }
            let queries = partitions
                .iter()
                .map(|&partition| list_offsets_request::Query {
                    partition,
                    spec: Some(list_offsets_request::query::Spec::TimestampMs(ts)),
                })
                .collect();
            let resolved: HashMap<u32, u64> =
                client.list_offsets(topic, queries).await?.into_iter().map(|r| (r.partition, r.offset)).collect();
            partitions
                .iter()
                .map(|p| {
                    let offset = resolved.get(p).copied().ok_or_else(|| {
                        Error::from(tonic::Status::internal(format!(
                            "ListOffsets returned no offset for partition {p}"
                        )))
                    })?;
                    Ok((fetch_request::Start::Offset(offset), Some(offset)))
                })
                .collect::<Result<_, Error>>()?
        }
    })
}

/// What [`poll_batch`] needs of a consumer ([`Consumer`], `GroupConsumer`).
pub(crate) trait RecordSource {
    /// Waits for the next record (`None`: the source ended).
    fn next(&mut self) -> impl std::future::Future<Output = Option<Result<ConsumedRecord, Error>>> + Send;
    /// The next record if one is already here.
    fn try_next(&mut self) -> Option<Result<ConsumedRecord, Error>>;
    /// An error met after a batch's first record, answered by the next call.
    fn deferred(&mut self) -> &mut Option<Error>;
}

/// Implements [`RecordSource`] for a consumer type by its own `next` and
/// `try_next` and its `deferred` field.
macro_rules! record_source {
    ($consumer:ty) => {
        impl $crate::consumer::RecordSource for $consumer {
            fn next(
                &mut self,
            ) -> impl std::future::Future<Output = Option<Result<$crate::ConsumedRecord, $crate::Error>>> + Send {
                <$consumer>::next(self)
            }
            fn try_next(&mut self) -> Option<Result<$crate::ConsumedRecord, $crate::Error>> {
                <$consumer>::try_next(self)
            }
            fn deferred(&mut self) -> &mut Option<$crate::Error> {
                &mut self.deferred
            }
        }
    };
}
pub(crate) use record_source;

record_source!(Consumer);

/// `poll` of every consumer: waits up to `timeout` for a first record, then
/// takes what is already here, up to `max`. An error after the first record
/// is kept for the next call, so no record before it is lost.
pub(crate) async fn poll_batch<S: RecordSource>(
    source: &mut S,
    max: usize,
    timeout: Duration,
) -> Result<Vec<ConsumedRecord>, Error> {
    if let Some(error) = source.deferred().take() {
        return Err(error);
    }
    let mut out = Vec::new();
    if max == 0 {
        return Ok(out);
    }
    match tokio::time::timeout(timeout, source.next()).await {
        Err(_) | Ok(None) => return Ok(out),
        Ok(Some(Err(error))) => return Err(error),
        Ok(Some(Ok(record))) => out.push(record),
    }
    while out.len() < max {
        match source.try_next() {
            Some(Ok(record)) => out.push(record),
            Some(Err(error)) => {
                *source.deferred() = Some(error);
                break;
            }
            None => break,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_broker::MockBroker;
    use crate::{Message, ProducerConfig};
    use strata_proto::batch::{BatchBuilder, Compression};
    use strata_proto::v1::FetchResponse;

    /// A consumer from `start` whose fetches wait at most 10 ms.
    fn short_waits(start: StartFrom) -> ConsumerConfig {
        ConsumerConfig { start, max_wait: Duration::from_millis(10), ..ConsumerConfig::default() }
    }

    async fn setup(partitions: u32) -> (MockBroker, Client) {
        MockBroker::with_topic(partitions).await
    }

    /// Produces `values` to `partition` as one batch per `per_batch` values.
    async fn produce(client: &Client, partition: u32, values: &[String], per_batch: usize) {
        let producer = client
            .producer_with_config(
                "t",
                ProducerConfig { linger: Duration::from_secs(3600), ..ProducerConfig::default() },
            )
            .await
            .unwrap();
        for chunk in values.chunks(per_batch) {
            let mut acks = Vec::new();
            for (i, v) in chunk.iter().enumerate() {
                let msg = Message::new(v.clone()).with_partition(partition).with_timestamp(1_000 + i as i64);
                acks.push(producer.enqueue(msg).await.unwrap());
            }
            producer.flush().await.unwrap();
            for ack in acks {
                ack.await.unwrap();
            }
        }
        producer.close().await.unwrap();
    }

    fn values(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    async fn read(consumer: &mut Consumer, n: usize) -> Vec<ConsumedRecord> {
        let mut out = Vec::new();
        while out.len() < n {
            out.push(consumer.next().await.unwrap().unwrap());
        }
        out
    }

    fn text(r: &ConsumedRecord) -> String {
        String::from_utf8_lossy(&r.value).into_owned()
    }

    #[tokio::test]
    async fn reads_every_partition_from_earliest_in_order() {
        let (_broker, client) = setup(3).await;
        for p in 0..3 {
            produce(&client, p, &values(&format!("p{p}-"), 20), 7).await;
        }
        let config = ConsumerConfig { start: StartFrom::Earliest, max_bytes: 1, ..ConsumerConfig::default() };
        let mut consumer = client.consumer("t", config).await.unwrap();
        let records = read(&mut consumer, 60).await;
        for p in 0..3u32 {
            let got: Vec<(u64, String)> =
                records.iter().filter(|r| r.partition == p).map(|r| (r.offset, text(r))).collect();
            let expected: Vec<(u64, String)> =
                values(&format!("p{p}-"), 20).into_iter().enumerate().map(|(i, v)| (i as u64, v)).collect();
            assert_eq!(got, expected);
        }
        assert!(consumer.is_caught_up());
        assert_eq!(consumer.lag(), 0);
        assert_eq!(consumer.high_watermarks(), BTreeMap::from([(0, 20), (1, 20), (2, 20)]));
    }

    #[tokio::test]
    async fn an_offset_inside_a_batch_skips_the_records_before_it() {
        let (_broker, client) = setup(1).await;
        produce(&client, 0, &values("v", 10), 10).await;
        let config = ConsumerConfig { start: StartFrom::Offset(4), ..ConsumerConfig::default() };
        let mut consumer = client.consumer("t", config).await.unwrap();
        let first = consumer.next().await.unwrap().unwrap();
        assert_eq!((first.offset, text(&first)), (4, "v4".to_owned()));
        assert_eq!(first.timestamp_ms, 1_004);
    }

    #[tokio::test]
    async fn a_timestamp_start_is_resolved_to_an_offset() {
        let (_broker, client) = setup(2).await;
        produce(&client, 1, &values("v", 10), 10).await;
        let config = ConsumerConfig {
            start: StartFrom::Timestamp(1_006),
            partitions: Some(vec![1]),
            ..ConsumerConfig::default()
        };
        let mut consumer = client.consumer("t", config).await.unwrap();
        let first = consumer.next().await.unwrap().unwrap();
        assert_eq!((first.partition, first.offset), (1, 6));
    }

    #[tokio::test]
    async fn a_broken_fetch_stream_resumes_at_the_next_offset() {
        let (broker, client) = setup(1).await;
        produce(&client, 0, &values("v", 30), 5).await;
        broker.faults(|f| f.break_fetch_after = Some(2));
        let config = ConsumerConfig {
            start: StartFrom::Earliest,
            max_bytes: 1,
            retry: RetryConfig::fast(5, 5),
            ..ConsumerConfig::default()
        };
        let mut consumer = client.consumer("t", config).await.unwrap();
        let records = read(&mut consumer, 30).await;
        let offsets: Vec<u64> = records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (0..30).collect::<Vec<u64>>());
    }

    #[tokio::test]
    async fn an_outage_longer_than_the_retries_is_reported_and_then_survived() {
        let (broker, client) = setup(1).await;
        produce(&client, 0, &values("a", 3), 3).await;
        let config = ConsumerConfig { retry: RetryConfig::fast(2, 2), ..short_waits(StartFrom::Earliest) };
        let mut consumer = client.consumer("t", config).await.unwrap();
        assert_eq!(read(&mut consumer, 3).await.len(), 3);
        broker.take_down();
        let err = consumer.next().await.unwrap().unwrap_err();
        assert!(err.is_retryable(), "{err}");
        broker.bring_up();
        produce(&client, 0, &values("b", 2), 2).await;
        // More reports of the outage may be queued before the records.
        let mut records = Vec::new();
        while records.len() < 2 {
            match consumer.next().await.unwrap() {
                Ok(r) => records.push(r),
                Err(e) => assert!(e.is_retryable(), "{e}"),
            }
        }
        assert_eq!((records[0].offset, text(&records[0])), (3, "b0".to_owned()));
    }

    #[tokio::test]
    async fn latest_reads_only_new_records() {
        let (_broker, client) = setup(1).await;
        produce(&client, 0, &values("old", 5), 5).await;
        let config = short_waits(StartFrom::Latest);
        let mut consumer = client.consumer("t", config).await.unwrap();
        // Wait for the first (empty) response, which fixes the position.
        while consumer.progress().all(|p| p.position.is_none()) {
            assert!(consumer.try_next().is_none());
            tokio::task::yield_now().await;
        }
        assert!(consumer.is_caught_up());
        produce(&client, 0, &values("new", 2), 2).await;
        let records = read(&mut consumer, 2).await;
        assert_eq!(text(&records[0]), "new0");
        assert_eq!(records[0].offset, 5);
    }

    #[tokio::test]
    async fn unknown_topics_and_partitions_are_refused() {
        let (_broker, client) = setup(2).await;
        let err = client.consumer("nope", ConsumerConfig::default()).await.unwrap_err();
        assert!(err.is_not_found());
        let config = ConsumerConfig { partitions: Some(vec![0, 2]), ..ConsumerConfig::default() };
        let err = client.consumer("t", config).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    }

    #[tokio::test]
    async fn a_deleted_topic_is_reported_once_and_the_stream_ends() {
        let (_broker, client) = setup(1).await;
        let config = short_waits(StartFrom::Offset(0));
        let mut consumer = client.consumer("t", config).await.unwrap();
        client.delete_topic("t").await.unwrap();
        // The mock ends streams of a deleted topic with NOT_FOUND.
        let err = consumer.next().await.unwrap().unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(consumer.next().await.is_none());
    }

    fn batch(base: u64, values: &[&str]) -> Vec<u8> {
        let mut b = BatchBuilder::new(Compression::None);
        for v in values {
            b.push(7, Some(b"k"), Some(v.as_bytes()), &[("h", Some(b"x"))]);
        }
        let mut bytes = b.finish().unwrap().to_vec();
        strata_proto::batch::set_base_offset(&mut bytes, base);
        bytes
    }

    #[test]
    fn decoding_skips_whole_and_partial_batches_below_the_position() {
        let mut records = batch(0, &["a", "b"]);
        records.extend(batch(2, &["c", "d", "e"]));
        let response = |records: Vec<u8>| FetchResponse {
            partition: 3,
            records: records.into(),
            high_watermark: 5,
            log_start_offset: 0,
            next_offset: 5,
            throttle_ms: 0,
        };
        let topic: Arc<str> = "t".into();
        let decoded = fetcher::decode_response(&topic, 3, response(records.clone()), Some(3)).unwrap();
        let got: Vec<(u64, &[u8])> = decoded.records.iter().map(|r| (r.offset, &r.value[..])).collect();
        assert_eq!(got, vec![(3, &b"d"[..]), (4, &b"e"[..])]);
        assert_eq!(decoded.next_offset, Some(5));
        assert_eq!(decoded.records[0].partition, 3);
        assert_eq!(&*decoded.records[0].topic, "t");
        assert_eq!(decoded.records[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(decoded.records[0].header("h").map(|v| &v[..]), Some(&b"x"[..]));

        let all = fetcher::decode_response(&topic, 3, response(records.clone()), None).unwrap();
        assert_eq!(all.records.len(), 5);

        let empty = fetcher::decode_response(&topic, 3, response(Vec::new()), None).unwrap();
        assert!(empty.records.is_empty());
        assert_eq!(empty.next_offset, Some(5));

        let mut corrupt = records;
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert!(fetcher::decode_response(&topic, 3, response(corrupt), None).is_err());
    }
}
