//! An in-memory stand-in for the broker's gRPC API, for the client's own
//! tests: real tonic server on `127.0.0.1:0`, real batch validation, and
//! fault injection (broken produce streams, per-batch errors, broken fetch
//! streams). Not a broker: no durability, no retention, one tenant.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use strata_proto::batch::{self, BatchIter, Limits};
use strata_proto::v1::admin_server::{Admin, AdminServer};
use strata_proto::v1::log_server::{Log, LogServer};
use strata_proto::v1::*;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

#[derive(Default)]
struct Partition {
    /// (base offset, stored batch bytes)
    batches: Vec<(u64, Bytes)>,
    next_offset: u64,
}

/// Faults applied to upcoming requests.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// Break the produce stream when this many more batches have been
    /// received; the batch that trips it is not stored.
    pub(crate) break_produce_after: Option<usize>,
    /// Answer the next batches with these per-batch errors instead of
    /// storing them.
    pub(crate) item_errors: VecDeque<(tonic::Code, ErrorCode)>,
    /// End fetch streams with UNAVAILABLE after this many more responses.
    pub(crate) break_fetch_after: Option<usize>,
}

#[derive(Default)]
struct Inner {
    topics: HashMap<String, Vec<Partition>>,
    faults: Faults,
    produce_streams: usize,
    batches_received: usize,
    /// Every call and stream answers UNAVAILABLE, as a dead broker would.
    down: bool,
}

#[derive(Clone)]
struct State {
    inner: Arc<Mutex<Inner>>,
    appended: Arc<watch::Sender<u64>>,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

fn not_found(what: &str) -> Status {
    strata_proto::status_with_info(
        tonic::Code::NotFound,
        format!("{what} does not exist"),
        ErrorInfo { code: ErrorCode::UnknownTopic as i32, resource: what.to_owned(), ..Default::default() },
    )
}

/// A running mock broker; stops when dropped.
pub(crate) struct MockBroker {
    pub(crate) url: String,
    state: State,
    _shutdown: oneshot::Sender<()>,
}

impl MockBroker {
    pub(crate) async fn start() -> MockBroker {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let (appended, _) = watch::channel(0);
        let state = State { inner: Arc::default(), appended: Arc::new(appended) };
        let (shutdown, on_shutdown) = oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(LogServer::new(state.clone()))
            .add_service(AdminServer::new(state.clone()))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = on_shutdown.await;
            });
        tokio::spawn(server);
        MockBroker { url: format!("http://{addr}"), state, _shutdown: shutdown }
    }

    pub(crate) fn faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.state.lock().faults);
    }

    /// Makes every call and open stream fail with UNAVAILABLE.
    pub(crate) fn take_down(&self) {
        self.state.lock().down = true;
        // Wake long-polling fetches so they notice.
        self.state.appended.send_modify(|v| *v += 1);
    }

    /// Undoes [`MockBroker::take_down`].
    pub(crate) fn bring_up(&self) {
        self.state.lock().down = false;
    }

    pub(crate) fn produce_streams_opened(&self) -> usize {
        self.state.lock().produce_streams
    }

    pub(crate) fn batches_received(&self) -> usize {
        self.state.lock().batches_received
    }

    /// Every stored record value of a partition, in offset order.
    pub(crate) fn values(&self, topic: &str, partition: u32) -> Vec<Bytes> {
        let inner = self.state.lock();
        let Some(p) = inner.topics.get(topic).and_then(|t| t.get(partition as usize)) else {
            return Vec::new();
        };
        p.batches
            .iter()
            .flat_map(|(_, b)| {
                BatchIter::new(b.clone())
                    .flat_map(|raw| raw.expect("stored batch").records().expect("records"))
                    .map(|r| r.value.unwrap_or_default())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl State {
    fn append(&self, req: &ProduceRequest) -> Result<ProduceResponse, ItemError> {
        let mut inner = self.lock();
        if let Some((code, error_code)) = inner.faults.item_errors.pop_front() {
            return Err(ItemError {
                status_code: code as i32,
                message: format!("injected {error_code:?}"),
                info: Some(ErrorInfo { code: error_code as i32, ..Default::default() }),
            });
        }
        let item = |code: tonic::Code, e: ErrorCode, m: String| ItemError {
            status_code: code as i32,
            message: m,
            info: Some(ErrorInfo { code: e as i32, ..Default::default() }),
        };
        let Some(topic) = inner.topics.get_mut(&req.topic) else {
            return Err(item(
                tonic::Code::NotFound,
                ErrorCode::UnknownTopic,
                format!("topic {} does not exist", req.topic),
            ));
        };
        let Some(partition) = topic.get_mut(req.partition as usize) else {
            return Err(item(
                tonic::Code::NotFound,
                ErrorCode::UnknownPartition,
                format!("partition {} does not exist", req.partition),
            ));
        };
        let mut bytes = req.batch.to_vec();
        let header = batch::validate(&bytes, Limits { max_record_bytes: 1 << 20 })
            .map_err(|e| item(tonic::Code::InvalidArgument, ErrorCode::CorruptBatch, e.to_string()))?;
        let base = partition.next_offset;
        batch::set_base_offset(&mut bytes, base);
        partition.batches.push((base, Bytes::from(bytes)));
        partition.next_offset += u64::from(header.record_count);
        drop(inner);
        self.appended.send_modify(|v| *v += 1);
        Ok(ProduceResponse {
            request_id: req.request_id,
            partition: req.partition,
            base_offset: base,
            last_offset: base + u64::from(header.record_count) - 1,
            log_append_time_ms: 0,
            duplicate: false,
            error: None,
        })
    }

    /// Batches at or after `from` up to about `max_bytes`, the next offset
    /// and the high watermark.
    fn read(&self, topic: &str, partition: u32, from: u64, max_bytes: usize) -> Result<(Vec<u8>, u64, u64), Status> {
        let inner = self.lock();
        let p = inner.topics.get(topic).and_then(|t| t.get(partition as usize)).ok_or_else(|| not_found(topic))?;
        let mut out = Vec::new();
        let mut next = from;
        for (base, bytes) in &p.batches {
            let header = batch::BatchHeader::parse(bytes).map_err(|e| Status::internal(e.to_string()))?;
            if header.next_offset() <= from {
                continue;
            }
            if !out.is_empty() && out.len() + bytes.len() > max_bytes {
                break;
            }
            out.extend_from_slice(bytes);
            next = base + u64::from(header.record_count);
        }
        Ok((out, next, p.next_offset))
    }

    fn offset_for_timestamp(&self, topic: &str, partition: u32, ts: i64) -> Result<u64, Status> {
        let inner = self.lock();
        let p = inner.topics.get(topic).and_then(|t| t.get(partition as usize)).ok_or_else(|| not_found(topic))?;
        for (_, bytes) in &p.batches {
            for raw in BatchIter::new(bytes.clone()) {
                let raw = raw.map_err(|e| Status::internal(e.to_string()))?;
                for r in raw.records().map_err(|e| Status::internal(e.to_string()))? {
                    if r.timestamp_ms >= ts {
                        return Ok(r.offset);
                    }
                }
            }
        }
        Ok(p.next_offset)
    }
}

type ResponseStream<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl Log for State {
    async fn produce(&self, request: Request<ProduceRequest>) -> Result<Response<ProduceResponse>, Status> {
        self.append(request.get_ref())
            .map(Response::new)
            .map_err(|e| Status::new(tonic::Code::from_i32(e.status_code), e.message))
    }

    type ProduceStreamStream = ResponseStream<ProduceResponse>;

    async fn produce_stream(
        &self,
        request: Request<tonic::Streaming<ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        {
            let mut inner = self.lock();
            if inner.down {
                return Err(Status::unavailable("broker is down"));
            }
            inner.produce_streams += 1;
        }
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let state = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = incoming.message().await {
                let broken = {
                    let mut inner = state.lock();
                    inner.batches_received += 1;
                    if inner.down {
                        inner.faults.break_produce_after = Some(0);
                    }
                    match &mut inner.faults.break_produce_after {
                        Some(0) => {
                            inner.faults.break_produce_after = None;
                            true
                        }
                        Some(n) => {
                            *n -= 1;
                            false
                        }
                        None => false,
                    }
                };
                if broken {
                    let _ = tx.send(Err(Status::unavailable("injected stream break"))).await;
                    return;
                }
                let response = match state.append(&req) {
                    Ok(r) => r,
                    Err(error) => ProduceResponse {
                        request_id: req.request_id,
                        partition: req.partition,
                        error: Some(error),
                        ..Default::default()
                    },
                };
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type FetchStream = ResponseStream<FetchResponse>;

    async fn fetch(&self, request: Request<FetchRequest>) -> Result<Response<Self::FetchStream>, Status> {
        let req = request.into_inner();
        if self.lock().down {
            return Err(Status::unavailable("broker is down"));
        }
        let mut position = match req.start {
            Some(fetch_request::Start::Offset(o)) => o,
            Some(fetch_request::Start::TimestampMs(ts)) => self.offset_for_timestamp(&req.topic, req.partition, ts)?,
            Some(fetch_request::Start::Position(p)) if p == StartPosition::Latest as i32 => {
                self.read(&req.topic, req.partition, u64::MAX, 0)?.2
            }
            _ => 0,
        };
        // Fail up front for an unknown topic.
        self.read(&req.topic, req.partition, position, 0)?;
        let (tx, rx) = mpsc::channel(4);
        let state = self.clone();
        let max_wait = Duration::from_millis(u64::from(req.max_wait_ms.max(1)));
        let max_bytes = if req.max_bytes == 0 { 1 << 20 } else { req.max_bytes as usize };
        tokio::spawn(async move {
            let mut appended = state.appended.subscribe();
            loop {
                appended.borrow_and_update();
                let (records, next, hwm) = match state.read(&req.topic, req.partition, position, max_bytes) {
                    Ok(r) => r,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                if records.is_empty() && matches!(tokio::time::timeout(max_wait, appended.changed()).await, Ok(Ok(())))
                {
                    continue;
                }
                let broken = {
                    let mut inner = state.lock();
                    if inner.down {
                        inner.faults.break_fetch_after = Some(0);
                    }
                    match &mut inner.faults.break_fetch_after {
                        Some(0) => {
                            inner.faults.break_fetch_after = None;
                            true
                        }
                        Some(n) => {
                            *n -= 1;
                            false
                        }
                        None => false,
                    }
                };
                if broken {
                    let _ = tx.send(Err(Status::unavailable("injected fetch break"))).await;
                    return;
                }
                position = next;
                let response = FetchResponse {
                    partition: req.partition,
                    records: records.into(),
                    high_watermark: hwm,
                    log_start_offset: 0,
                    next_offset: next,
                };
                if tx.send(Ok(response)).await.is_err() || !req.follow {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        let req = request.into_inner();
        let mut results = Vec::new();
        for q in req.queries {
            let hwm = self.read(&req.topic, q.partition, u64::MAX, 0)?.2;
            let offset = match q.spec {
                Some(list_offsets_request::query::Spec::TimestampMs(ts)) => {
                    self.offset_for_timestamp(&req.topic, q.partition, ts)?
                }
                Some(list_offsets_request::query::Spec::Position(p)) if p == StartPosition::Latest as i32 => hwm,
                _ => 0,
            };
            results.push(list_offsets_response::Result {
                partition: q.partition,
                offset,
                timestamp_ms: -1,
                log_start_offset: 0,
                high_watermark: hwm,
            });
        }
        Ok(Response::new(ListOffsetsResponse { results }))
    }
}

#[tonic::async_trait]
impl Admin for State {
    async fn create_tenant(&self, _: Request<CreateTenantRequest>) -> Result<Response<Tenant>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn list_tenants(&self, _: Request<ListTenantsRequest>) -> Result<Response<ListTenantsResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn delete_tenant(&self, _: Request<DeleteTenantRequest>) -> Result<Response<DeleteTenantResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn create_topic(&self, request: Request<CreateTopicRequest>) -> Result<Response<TopicDescription>, Status> {
        let req = request.into_inner();
        {
            let mut inner = self.lock();
            if inner.topics.contains_key(&req.name) && !req.if_not_exists {
                return Err(Status::already_exists(format!("topic {} exists", req.name)));
            }
            inner
                .topics
                .entry(req.name.clone())
                .or_insert_with(|| (0..req.partitions).map(|_| Partition::default()).collect());
        }
        self.describe(&req.name).map(Response::new)
    }

    async fn list_topics(&self, _: Request<ListTopicsRequest>) -> Result<Response<ListTopicsResponse>, Status> {
        let inner = self.lock();
        let topics = inner
            .topics
            .iter()
            .map(|(name, parts)| TopicSummary {
                tenant: "default".into(),
                name: name.clone(),
                partitions: parts.len() as u32,
                durability: Durability::Fsync as i32,
            })
            .collect();
        Ok(Response::new(ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<TopicDescription>, Status> {
        self.describe(&request.get_ref().name).map(Response::new)
    }

    async fn add_partitions(
        &self,
        request: Request<AddPartitionsRequest>,
    ) -> Result<Response<TopicDescription>, Status> {
        let req = request.into_inner();
        {
            let mut inner = self.lock();
            let parts = inner.topics.get_mut(&req.name).ok_or_else(|| not_found(&req.name))?;
            while (parts.len() as u32) < req.partitions {
                parts.push(Partition::default());
            }
        }
        self.describe(&req.name).map(Response::new)
    }

    async fn update_topic_config(
        &self,
        _: Request<UpdateTopicConfigRequest>,
    ) -> Result<Response<TopicDescription>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        let name = &request.get_ref().name;
        self.lock().topics.remove(name).ok_or_else(|| not_found(name))?;
        Ok(Response::new(DeleteTopicResponse {}))
    }
}

impl State {
    fn describe(&self, name: &str) -> Result<TopicDescription, Status> {
        let inner = self.lock();
        let parts = inner.topics.get(name).ok_or_else(|| not_found(name))?;
        Ok(TopicDescription {
            tenant: "default".into(),
            name: name.to_owned(),
            topic_id: format!("id-{name}"),
            partitions: parts.len() as u32,
            config: Some(TopicConfig::default()),
            created_at_ms: 0,
            partition_details: parts
                .iter()
                .enumerate()
                .map(|(i, p)| PartitionDescription {
                    partition: i as u32,
                    start_offset: 0,
                    end_offset: p.next_offset,
                    size_bytes: p.batches.iter().map(|(_, b)| b.len() as u64).sum(),
                    segment_count: 1,
                })
                .collect(),
        })
    }
}
