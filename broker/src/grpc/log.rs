//! The `strata.v1.Log` service: transport only. It decodes requests, calls
//! the broker and maps errors; fetch streams run in their own task feeding a
//! bounded channel, so a slow or vanished client is noticed by the channel.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use strata_proto::v1::{
    FetchRequest, FetchResponse, InitProducerRequest, InitProducerResponse, ListOffsetsRequest, ListOffsetsResponse,
    ProduceRequest, ProduceResponse, StartPosition, fetch_request, list_offsets_request, list_offsets_response,
    log_server::Log,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::status::{invalid, to_item_error, to_status};
use crate::broker::{Broker, Produced};
use crate::log::PartitionLog;

const DEFAULT_FETCH_BYTES: u32 = 1024 * 1024;
const DEFAULT_FETCH_WAIT: Duration = Duration::from_millis(500);

pub(crate) struct LogService {
    broker: Arc<Broker>,
}

impl LogService {
    pub fn new(broker: Arc<Broker>) -> Self {
        LogService { broker }
    }
}

fn produce_response(request_id: u64, partition: u32, p: Produced) -> ProduceResponse {
    ProduceResponse {
        request_id,
        partition,
        base_offset: p.base_offset,
        last_offset: p.last_offset,
        log_append_time_ms: p.append_time_ms,
        duplicate: p.duplicate,
        error: None,
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Log for LogService {
    async fn produce(&self, request: Request<ProduceRequest>) -> Result<Response<ProduceResponse>, Status> {
        let r = request.into_inner();
        if let Some(e) = oversize_error(&self.broker, &r) {
            return Err(to_status(e));
        }
        let produced = self.broker.produce(&r.tenant, &r.topic, r.partition, r.batch).await.map_err(to_status)?;
        Ok(Response::new(produce_response(r.request_id, r.partition, produced)))
    }

    type ProduceStreamStream = BoxStream<ProduceResponse>;

    async fn produce_stream(
        &self,
        request: Request<Streaming<ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<ProduceResponse, Status>>(1024);
        let broker = self.broker.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    _ = broker.until_shutdown() => break,
                };
                let r = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(status) => {
                        // A malformed message (INVALID_ARGUMENT from the
                        // codec) or a broken connection: the stream cannot
                        // go on, but it ends with the reason, not OK.
                        tracing::debug!(%status, "produce stream failed");
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                if let Some(e) = oversize_error(&broker, &r) {
                    if tx.send(Ok(error_response(r.request_id, r.partition, e))).await.is_err() {
                        break;
                    }
                    continue;
                }
                // Appends happen here, in stream order; only the durability
                // wait runs concurrently, so pipelined batches share fsyncs.
                match broker.append(&r.tenant, &r.topic, r.partition, r.batch).await {
                    Ok(pending) => {
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let resp = match pending.wait().await {
                                Ok(p) => produce_response(r.request_id, r.partition, p),
                                Err(e) => error_response(r.request_id, r.partition, e),
                            };
                            let _ = tx.send(Ok(resp)).await;
                        });
                    }
                    Err(e) => {
                        if tx.send(Ok(error_response(r.request_id, r.partition, e))).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type FetchStream = BoxStream<FetchResponse>;

    async fn fetch(&self, request: Request<FetchRequest>) -> Result<Response<Self::FetchStream>, Status> {
        let r = request.into_inner();
        let (log, resource) = self.broker.partition(&r.tenant, &r.topic, r.partition).map_err(to_status)?;
        let limits = &self.broker.config().limits;
        let max_bytes = match r.max_bytes {
            0 => DEFAULT_FETCH_BYTES as usize,
            n => (n as u64).min(limits.max_fetch_bytes.0) as usize,
        };
        let max_wait = match r.max_wait_ms {
            0 => DEFAULT_FETCH_WAIT,
            n => Duration::from_millis(u64::from(n)).min(limits.max_fetch_wait.0),
        };
        let start = match r.start {
            None => return Err(invalid("fetch needs a start: an offset, a timestamp or a position")),
            Some(fetch_request::Start::Offset(o)) => {
                let (lo, hw) = (log.stats().start_offset, log.high_watermark());
                if o < lo || o > hw {
                    // Checked up front so the error is the call's status.
                    return Err(to_status(crate::error::BrokerError::Log {
                        resource,
                        source: crate::log::LogError::OffsetOutOfRange { requested: o, start: lo, end: hw },
                    }));
                }
                o
            }
            Some(fetch_request::Start::TimestampMs(ts)) => {
                Broker::offset_for_timestamp(&log, &resource, ts).await.map_err(to_status)?.0
            }
            Some(fetch_request::Start::Position(p)) => match StartPosition::try_from(p) {
                Ok(StartPosition::Earliest) => log.stats().start_offset,
                Ok(StartPosition::Latest) => log.high_watermark(),
                _ => return Err(invalid(format!("unknown start position {p}"))),
            },
        };
        let (tx, rx) = mpsc::channel(2);
        let broker = self.broker.clone();
        tokio::spawn(fetch_loop(broker, log, resource, r.partition, start, max_bytes, max_wait, r.follow, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn init_producer(
        &self,
        request: Request<InitProducerRequest>,
    ) -> Result<Response<InitProducerResponse>, Status> {
        let r = request.into_inner();
        let (producer_id, epoch) = self.broker.init_producer(&r.tenant, &r.producer_name).await.map_err(to_status)?;
        Ok(Response::new(InitProducerResponse { producer_id, producer_epoch: i32::from(epoch) }))
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        let r = request.into_inner();
        let mut queries = r.queries;
        if queries.is_empty() {
            let topic = self.broker.describe_topic(&r.tenant, &r.topic).map_err(to_status)?;
            for p in 0..topic.partitions {
                for pos in [StartPosition::Earliest, StartPosition::Latest] {
                    queries.push(list_offsets_request::Query {
                        partition: p,
                        spec: Some(list_offsets_request::query::Spec::Position(pos as i32)),
                    });
                }
            }
        }
        let mut results = Vec::with_capacity(queries.len());
        for q in queries {
            let (log, resource) = self.broker.partition(&r.tenant, &r.topic, q.partition).map_err(to_status)?;
            let stats = log.stats();
            let (offset, timestamp_ms) = match q.spec {
                None => return Err(invalid("each offsets query needs a position or a timestamp")),
                Some(list_offsets_request::query::Spec::Position(p)) => match StartPosition::try_from(p) {
                    Ok(StartPosition::Earliest) => (stats.start_offset, -1),
                    Ok(StartPosition::Latest) => (stats.high_watermark, -1),
                    _ => return Err(invalid(format!("unknown position {p}"))),
                },
                Some(list_offsets_request::query::Spec::TimestampMs(ts)) => {
                    Broker::offset_for_timestamp(&log, &resource, ts).await.map_err(to_status)?
                }
            };
            results.push(list_offsets_response::Result {
                partition: q.partition,
                offset,
                timestamp_ms,
                log_start_offset: stats.start_offset,
                high_watermark: stats.high_watermark,
            });
        }
        Ok(Response::new(ListOffsetsResponse { results }))
    }
}

/// The answer to a request the transport found over the message limit (see
/// `grpc::oversize`): its batch was never read.
fn oversize_error(broker: &Broker, r: &ProduceRequest) -> Option<crate::error::BrokerError> {
    (r.oversize_bytes > 0).then(|| {
        let tenant = if r.tenant.is_empty() { crate::names::DEFAULT_TENANT } else { r.tenant.as_str() };
        crate::error::BrokerError::RequestTooLarge {
            resource: format!("{tenant}/{}/{}", r.topic, r.partition),
            size: r.oversize_bytes,
            limit: broker.config().limits.max_batch_bytes.0 + 1024 * 1024,
        }
    })
}

fn error_response(request_id: u64, partition: u32, e: crate::error::BrokerError) -> ProduceResponse {
    ProduceResponse { request_id, partition, error: Some(to_item_error(e)), ..Default::default() }
}

/// Streams a partition from `next` until the client goes away, the broker
/// shuts down, or (without `follow`) after the first response.
#[allow(clippy::too_many_arguments)]
async fn fetch_loop(
    broker: Arc<Broker>,
    log: Arc<PartitionLog>,
    resource: String,
    partition: u32,
    mut next: u64,
    max_bytes: usize,
    max_wait: Duration,
    follow: bool,
    tx: mpsc::Sender<Result<FetchResponse, Status>>,
) {
    let stop = broker.shutdown_signal();
    let labels = crate::metrics::TopicLabels::from_resource(&resource);
    loop {
        if *stop.borrow() || tx.is_closed() {
            return;
        }
        let read = match Broker::read(&log, &resource, next, max_bytes).await {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(to_status(e))).await;
                return;
            }
        };
        if read.records.is_empty() {
            // At the end of the log: long-poll for new data.
            let hw = tokio::select! {
                hw = broker.wait_for_data(&log, next, max_wait) => hw,
                _ = tx.closed() => return,
            };
            if hw > next && !*stop.borrow() {
                continue;
            }
            let heartbeat = FetchResponse {
                partition,
                records: Default::default(),
                high_watermark: hw,
                log_start_offset: read.log_start,
                next_offset: next,
            };
            if tx.send(Ok(heartbeat)).await.is_err() || !follow || *stop.borrow() {
                return;
            }
            continue;
        }
        let read_from = next;
        next = read.next_offset;
        let records: u64 = strata_proto::batch::BatchIter::new(read.records.clone())
            .filter_map(Result::ok)
            .map(|b| u64::from(b.header.record_count))
            .sum();
        let metrics = broker.metrics();
        metrics.messages_out.get_or_create(&labels).inc_by(records);
        metrics.bytes_out.get_or_create(&labels).inc_by(read.records.len() as u64);
        let delivered = strata_proto::telemetry::enabled().then(|| {
            let mut spans = crate::telemetry::batch_spans(&read.records, "deliver", &labels.topic, partition);
            // Where the bytes came from: the local disk or the cold tier.
            let tier = if log.remote().is_some() && read_from < log.local_start() { "cold" } else { "hot" };
            for (_, s) in &mut spans {
                use strata_proto::telemetry::{Attribute, Span as _};
                s.set_attribute(Attribute::new("messaging.strata.tier", tier));
            }
            spans
        });
        let resp = FetchResponse {
            partition,
            records: read.records,
            high_watermark: read.high_watermark,
            log_start_offset: read.log_start,
            next_offset: next,
        };
        let sent = tx.send(Ok(resp)).await;
        // Deliver spans end once the batch is handed to the transport.
        drop(delivered);
        if sent.is_err() || !follow {
            return;
        }
    }
}
