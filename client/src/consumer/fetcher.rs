//! One partition's fetch loop: a `Fetch` stream with `follow = true`, decoded
//! into records and handed to the consumer in order; transient failures
//! reopen the stream from the next offset after a backoff.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_proto::batch::{BatchError, BatchIter};
use strata_proto::v1::{FetchRequest, FetchResponse, fetch_request};
use tokio::sync::mpsc;

use super::ConsumedRecord;
use crate::client::Client;
use crate::error::Error;
use crate::retry::RetryConfig;
use crate::routing::{Learned, MAX_REDIRECTS, Target};

/// What a fetcher tells the consumer. `generation` identifies the assignment
/// the fetcher serves, so events of a revoked assignment can be ignored.
#[derive(Debug)]
pub(crate) enum FetchEvent {
    Records {
        generation: u64,
        topic: Arc<str>,
        partition: u32,
        records: Vec<ConsumedRecord>,
        /// Where this partition continues once `records` are consumed.
        next_offset: Option<u64>,
        high_watermark: u64,
        log_start_offset: u64,
    },
    Error {
        generation: u64,
        topic: Arc<str>,
        partition: u32,
        error: Error,
        /// The fetcher stopped; this is its last event.
        fatal: bool,
    },
}

/// Everything one fetcher needs.
#[derive(Debug, Clone)]
pub(crate) struct FetchSpec {
    pub(crate) client: Client,
    pub(crate) topic: Arc<str>,
    pub(crate) partition: u32,
    pub(crate) generation: u64,
    /// Where to start when no offset is known yet.
    pub(crate) start: fetch_request::Start,
    /// The first offset to deliver; records below it in the first batch
    /// (the broker returns whole batches) are skipped.
    pub(crate) position: Option<u64>,
    pub(crate) max_bytes: u32,
    pub(crate) max_wait: Duration,
    pub(crate) retry: RetryConfig,
    pub(crate) stall_timeout: Duration,
}

enum StreamEnd {
    /// The consumer is gone; stop.
    ConsumerGone,
    /// The stream ended or failed with this error.
    Failed(Error),
}

pub(crate) async fn run(mut spec: FetchSpec, tx: mpsc::Sender<FetchEvent>) {
    let mut backoff = None;
    let mut redirects = 0;
    loop {
        let mut progressed = false;
        // The partition's owner (looked up when not known yet).
        let url = tokio::select! {
            url = spec.client.route(Target::Partition(&spec.topic, spec.partition)) => url,
            () = tx.closed() => return,
        };
        let error = match fetch_stream(&mut spec, &url, &tx, &mut progressed).await {
            StreamEnd::ConsumerGone => return,
            StreamEnd::Failed(error) => error,
        };
        if progressed {
            backoff = None;
            redirects = 0;
        }
        // NOT_LEADER naming the owner: continue there at once, from the
        // same position. A broken connection makes the route be looked up
        // again (from another broker if need be) before the retry below.
        let target = Target::Partition(&spec.topic, spec.partition);
        if let Learned::Moved(owner) = spec.client.learn(target, &url, &error)
            && redirects < MAX_REDIRECTS
        {
            redirects += 1;
            tracing::debug!(partition = spec.partition, %owner, "fetching from the partition's owner");
            continue;
        }
        if !error.is_retryable() {
            let _ = tx
                .send(FetchEvent::Error {
                    generation: spec.generation,
                    topic: spec.topic.clone(),
                    partition: spec.partition,
                    error,
                    fatal: true,
                })
                .await;
            return;
        }
        let retry = spec.retry;
        let delay = match backoff.get_or_insert_with(|| retry.backoff()).next() {
            Some(delay) => delay,
            None => {
                // Retries are used up: tell the application, then start
                // another round in case it goes on reading.
                let event = FetchEvent::Error {
                    generation: spec.generation,
                    topic: spec.topic.clone(),
                    partition: spec.partition,
                    error,
                    fatal: false,
                };
                if tx.send(event).await.is_err() {
                    return;
                }
                backoff = None;
                retry.max_delay
            }
        };
        tracing::debug!(partition = spec.partition, ?delay, "fetch stream failed; reconnecting");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = tx.closed() => return,
        }
    }
}

async fn fetch_stream(
    spec: &mut FetchSpec,
    url: &Arc<str>,
    tx: &mpsc::Sender<FetchEvent>,
    progressed: &mut bool,
) -> StreamEnd {
    let request = FetchRequest {
        tenant: spec.client.tenant().to_owned(),
        topic: spec.topic.to_string(),
        partition: spec.partition,
        start: Some(spec.position.map_or(spec.start, fetch_request::Start::Offset)),
        max_bytes: spec.max_bytes,
        max_wait_ms: u32::try_from(spec.max_wait.as_millis()).unwrap_or(u32::MAX),
        follow: true,
    };
    let mut rpc = spec.client.log_rpc_at(url);
    let opened = tokio::select! {
        r = tokio::time::timeout(spec.stall_timeout, rpc.fetch(request)) => r,
        () = tx.closed() => return StreamEnd::ConsumerGone,
    };
    let mut stream = match opened {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => return StreamEnd::Failed(status.into()),
        Err(_) => {
            return StreamEnd::Failed(Error::Timeout {
                operation: "opening a fetch stream",
                timeout: spec.stall_timeout,
            });
        }
    };
    loop {
        let next = tokio::select! {
            r = tokio::time::timeout(spec.stall_timeout, stream.message()) => r,
            () = tx.closed() => return StreamEnd::ConsumerGone,
        };
        let response = match next {
            Ok(Ok(Some(response))) => response,
            Ok(Ok(None)) => {
                return StreamEnd::Failed(Error::from(tonic::Status::unavailable("the broker ended the fetch stream")));
            }
            Ok(Err(status)) => return StreamEnd::Failed(status.into()),
            Err(_) => {
                return StreamEnd::Failed(Error::Timeout {
                    operation: "waiting for a fetch response",
                    timeout: spec.stall_timeout,
                });
            }
        };
        *progressed = true;
        let event = match decode_response(&spec.topic, spec.partition, response, spec.position) {
            Ok(decoded) => {
                spec.position = decoded.next_offset.or(spec.position);
                FetchEvent::Records {
                    generation: spec.generation,
                    topic: spec.topic.clone(),
                    partition: spec.partition,
                    records: decoded.records,
                    next_offset: spec.position,
                    high_watermark: decoded.high_watermark,
                    log_start_offset: decoded.log_start_offset,
                }
            }
            Err(e) => return StreamEnd::Failed(Error::Batch(e)),
        };
        if tx.send(event).await.is_err() {
            return StreamEnd::ConsumerGone;
        }
    }
}

/// The records of one fetch response that the consumer has not seen yet.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) records: Vec<ConsumedRecord>,
    /// The offset to continue from, when known.
    pub(crate) next_offset: Option<u64>,
    pub(crate) high_watermark: u64,
    pub(crate) log_start_offset: u64,
}

/// Decodes a fetch response, dropping records below `position` (the broker
/// sends the whole batch that contains the requested offset).
pub(crate) fn decode_response(
    topic: &Arc<str>,
    partition: u32,
    response: FetchResponse,
    position: Option<u64>,
) -> Result<Decoded, BatchError> {
    let data: Bytes = response.records;
    let mut records = Vec::new();
    let mut next = position;
    for batch in BatchIter::new(data) {
        let batch = batch?;
        if position.is_some_and(|p| batch.header.next_offset() <= p) {
            // Entirely before the position: skip without decoding.
            continue;
        }
        for record in batch.records()? {
            if position.is_some_and(|p| record.offset < p) {
                continue;
            }
            next = Some(record.offset + 1);
            records.push(ConsumedRecord {
                topic: topic.clone(),
                partition,
                offset: record.offset,
                timestamp_ms: record.timestamp_ms,
                key: record.key,
                value: record.value.unwrap_or_default(),
                headers: record.headers.into_iter().map(|h| (h.key, h.value.unwrap_or_default())).collect(),
            });
        }
    }
    // The broker's `next_offset` also covers responses without records.
    if response.next_offset > 0 || next.is_none() {
        next = Some(next.map_or(response.next_offset, |n| n.max(response.next_offset)));
    }
    Ok(Decoded {
        records,
        next_offset: next,
        high_watermark: response.high_watermark,
        log_start_offset: response.log_start_offset,
    })
}
