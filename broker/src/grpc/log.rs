//! The `strata.v1.Log` service: transport only. It decodes requests, calls
//! the broker and maps errors; fetch streams run in their own task feeding a
//! bounded channel, so a slow or vanished client is noticed by the channel.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use strata_proto::v1::{
    FetchRequest, FetchResponse, InitProducerRequest, InitProducerResponse, ListOffsetsRequest, ListOffsetsResponse,
    ProduceRequest, ProduceResponse, StartPosition, fetch_request, list_offsets_request, list_offsets_response,
    log_server::Log,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{self, Auth, Operation, Resource};
use super::status::{invalid, status_to_item_error, to_item_error, to_status};
use crate::broker::{Broker, FetchOptions, OffsetQuery, Produced, StartAt};

pub(crate) struct LogService {
    broker: Arc<Broker>,
    auth: Auth,
}

impl LogService {
    pub fn new(broker: Arc<Broker>, auth: Auth) -> Self {
        LogService { broker, auth }
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
        throttle_ms: 0,
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Log for LogService {
    async fn produce(&self, request: Request<ProduceRequest>) -> Result<Response<ProduceResponse>, Status> {
        let (caller, mut r) = auth::split(request);
        self.auth.authorize(&caller, Operation::Produce, &mut r.tenant, Resource::Topic(&r.topic)).await?;
        if let Some(e) = oversize_error(&self.broker, &r) {
            return Err(to_status(e));
        }
        let throttle_ms = self.auth.produce_bytes(&r.tenant, r.batch.len() as u64).await?;
        let produced = self.broker.produce(&r.tenant, &r.topic, r.partition, r.batch).await.map_err(to_status)?;
        Ok(Response::new(ProduceResponse { throttle_ms, ..produce_response(r.request_id, r.partition, produced) }))
    }

    type ProduceStreamStream = BoxStream<ProduceResponse>;

    async fn produce_stream(
        &self,
        request: Request<Streaming<ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        // Each request names its own topic: authorised one by one.
        // Authenticated once, when the stream opens.
        let caller = self.auth.session(auth::Caller::of(&request))?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<ProduceResponse, Status>>(1024);
        let broker = self.broker.clone();
        let authz = self.auth.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    _ = broker.until_shutdown() => break,
                };
                let mut r = match msg {
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
                if let Err(status) =
                    authz.authorize(&caller, Operation::Produce, &mut r.tenant, Resource::Topic(&r.topic)).await
                {
                    let refused = status_response(r.request_id, r.partition, &status);
                    if tx.send(Ok(refused)).await.is_err() {
                        break;
                    }
                    continue;
                }
                if let Some(e) = oversize_error(&broker, &r) {
                    if tx.send(Ok(error_response(r.request_id, r.partition, e))).await.is_err() {
                        break;
                    }
                    continue;
                }
                // The tenant's byte rate: the stream waits (its later
                // batches with it) or this batch is refused.
                let throttle_ms = match authz.produce_bytes(&r.tenant, r.batch.len() as u64).await {
                    Ok(ms) => ms,
                    Err(status) => {
                        if tx.send(Ok(status_response(r.request_id, r.partition, &status))).await.is_err() {
                            break;
                        }
                        continue;
                    }
                };
                // Appends happen here, in stream order; only the durability
                // wait runs concurrently, so pipelined batches share fsyncs.
                match broker.append(&r.tenant, &r.topic, r.partition, r.batch).await {
                    Ok(pending) => {
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let resp = match pending.wait().await {
                                Ok(p) => {
                                    ProduceResponse { throttle_ms, ..produce_response(r.request_id, r.partition, p) }
                                }
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
        let (caller, mut r) = auth::split(request);
        self.auth.authorize(&caller, Operation::Consume, &mut r.tenant, Resource::Topic(&r.topic)).await?;
        let start = match r.start {
            None => return Err(invalid("fetch needs a start: an offset, a timestamp or a position")),
            Some(fetch_request::Start::Offset(o)) => StartAt::Offset(o),
            Some(fetch_request::Start::TimestampMs(ts)) => StartAt::Timestamp(ts),
            Some(fetch_request::Start::Position(p)) => match StartPosition::try_from(p) {
                Ok(StartPosition::Earliest) => StartAt::Earliest,
                Ok(StartPosition::Latest) => StartAt::Latest,
                _ => return Err(invalid(format!("unknown start position {p}"))),
            },
        };
        let options = FetchOptions { start, max_bytes: r.max_bytes, max_wait_ms: r.max_wait_ms, follow: r.follow };
        // The tenant's consume rate: what earlier reads returned is paid
        // before this one starts, and before each later response of a
        // following fetch.
        let first_throttle = self.auth.before_consume(&r.tenant).await?;
        let rx = self.broker.fetch(&r.tenant, &r.topic, r.partition, options).await.map_err(to_status)?;
        let gate = self.auth.clone();
        let tenant = r.tenant;
        let mut first = Some(first_throttle);
        let responses = ReceiverStream::new(rx).then(move |item| {
            let gate = gate.clone();
            let tenant = tenant.clone();
            let paid = first.take();
            async move {
                let f = item.map_err(to_status)?;
                let throttle_ms = match paid {
                    Some(ms) => ms,
                    None => gate.before_consume(&tenant).await?,
                };
                gate.consumed(&tenant, f.records.len() as u64);
                Ok(FetchResponse {
                    partition: f.partition,
                    records: f.records,
                    high_watermark: f.high_watermark,
                    log_start_offset: f.log_start,
                    next_offset: f.next_offset,
                    throttle_ms,
                })
            }
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn init_producer(
        &self,
        request: Request<InitProducerRequest>,
    ) -> Result<Response<InitProducerResponse>, Status> {
        // Kafka's rule: an idempotent producer initialises with WRITE on
        // any topic (each batch is then checked against its own topic).
        let (caller, mut r) = auth::split(request);
        self.auth.authorize(&caller, Operation::Produce, &mut r.tenant, Resource::AnyTopic).await?;
        let (producer_id, epoch) = self.broker.init_producer(&r.tenant, &r.producer_name).await.map_err(to_status)?;
        Ok(Response::new(InitProducerResponse { producer_id, producer_epoch: i32::from(epoch) }))
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        let (caller, mut r) = auth::split(request);
        self.auth.authorize(&caller, Operation::Describe, &mut r.tenant, Resource::Topic(&r.topic)).await?;
        let mut queries = Vec::with_capacity(r.queries.len());
        for q in r.queries {
            let query = match q.spec {
                None => return Err(invalid("each offsets query needs a position or a timestamp")),
                Some(list_offsets_request::query::Spec::Position(p)) => match StartPosition::try_from(p) {
                    Ok(StartPosition::Earliest) => OffsetQuery::Earliest,
                    Ok(StartPosition::Latest) => OffsetQuery::Latest,
                    _ => return Err(invalid(format!("unknown position {p}"))),
                },
                Some(list_offsets_request::query::Spec::TimestampMs(ts)) => OffsetQuery::Timestamp(ts),
            };
            queries.push((q.partition, query));
        }
        if queries.is_empty() {
            // No query: earliest and latest of every partition.
            let n = self.broker.partition_count(&r.tenant, &r.topic).map_err(to_status)?;
            for p in 0..n {
                queries.push((p, OffsetQuery::Earliest));
                queries.push((p, OffsetQuery::Latest));
            }
        }
        let mut results = Vec::with_capacity(queries.len());
        for (partition, query) in queries {
            let a = self.broker.lookup_offset(&r.tenant, &r.topic, partition, query).await.map_err(to_status)?;
            results.push(list_offsets_response::Result {
                partition,
                offset: a.offset,
                timestamp_ms: a.timestamp_ms,
                log_start_offset: a.log_start,
                high_watermark: a.high_watermark,
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

/// A refusal by the authoriser as a per-request error.
fn status_response(request_id: u64, partition: u32, status: &Status) -> ProduceResponse {
    ProduceResponse { request_id, partition, error: Some(status_to_item_error(status)), ..Default::default() }
}

fn error_response(request_id: u64, partition: u32, e: crate::error::BrokerError) -> ProduceResponse {
    ProduceResponse { request_id, partition, error: Some(to_item_error(e)), ..Default::default() }
}
