//! An in-memory stand-in for the broker's gRPC API, for the client's own
//! tests: real tonic server on `127.0.0.1:0`, real batch validation,
//! idempotent-producer semantics as `log.proto` defines them (`InitProducer`,
//! duplicate detection over the last [`RECENT_BATCHES`] batches, sequence
//! gaps, epoch fencing), and fault injection (broken produce streams, lost
//! acknowledgements, per-batch errors, broken fetch streams). Not a broker: no
//! durability, no retention, one tenant.

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

/// How many recent batches per producer and partition are remembered for
/// duplicate detection (the broker's window, as Kafka's).
pub(crate) const RECENT_BATCHES: usize = 5;

#[derive(Default)]
struct Partition {
    /// (base offset, stored batch bytes)
    batches: Vec<(u64, Bytes)>,
    next_offset: u64,
    producers: HashMap<i64, ProducerSeq>,
}

/// One idempotent producer's state in one partition.
struct ProducerSeq {
    epoch: i16,
    last_seq: i32,
    /// (base sequence, last sequence, base offset, last offset)
    recent: VecDeque<(i32, i32, u64, u64)>,
}

/// What the sequence check decided about an idempotent batch.
enum SeqCheck {
    Append,
    Duplicate { base_offset: u64 },
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
    /// Break the produce stream when this many more batches have been
    /// received, *after* storing the batch that trips it: its
    /// acknowledgement is lost, so the client sends it again.
    pub(crate) lose_ack_after: Option<usize>,
    /// Store the next batches, then answer each with this per-batch error
    /// instead of its offsets (another way to lose an acknowledgement).
    pub(crate) store_then_fail: VecDeque<(tonic::Code, ErrorCode)>,
}

/// One step of a fault's countdown (`*_after`): true when it reaches zero,
/// which also disarms it.
fn fires(countdown: &mut Option<usize>) -> bool {
    match countdown {
        Some(0) => {
            *countdown = None;
            true
        }
        Some(n) => {
            *n -= 1;
            false
        }
        None => false,
    }
}

impl Inner {
    /// Whether an open stream breaks now: the broker is down, or the
    /// fault's countdown ran out (a down broker also disarms it).
    fn stream_breaks(&mut self, countdown: impl FnOnce(&mut Faults) -> &mut Option<usize>) -> bool {
        let down = self.down;
        let countdown = countdown(&mut self.faults);
        if down {
            *countdown = Some(0);
        }
        fires(countdown)
    }
}

#[derive(Default)]
struct Inner {
    topics: HashMap<String, Vec<Partition>>,
    faults: Faults,
    produce_streams: usize,
    batches_received: usize,
    /// Batches answered as duplicates of stored ones.
    duplicates: usize,
    /// Batches refused with OUT_OF_ORDER_SEQUENCE by the sequence check.
    out_of_order: usize,
    /// Producer ids and epochs of named producers.
    named_producers: HashMap<String, (i64, i16)>,
    next_producer_id: i64,
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
    /// A mock broker with topic `t` of `partitions` partitions, and a client.
    pub(crate) async fn with_topic(partitions: u32) -> (MockBroker, crate::Client) {
        let broker = MockBroker::start().await;
        let client = crate::Client::connect(&broker.url).await.unwrap();
        client.create_topic("t", partitions, crate::TopicOptions::default()).await.unwrap();
        (broker, client)
    }

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

    /// Batches answered with `duplicate = true`.
    pub(crate) fn duplicates(&self) -> usize {
        self.state.lock().duplicates
    }

    /// Batches the sequence check refused as out of order.
    pub(crate) fn out_of_order(&self) -> usize {
        self.state.lock().out_of_order
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
        let item = |code: tonic::Code, e: ErrorCode, m: String| ItemError {
            status_code: code as i32,
            message: m,
            info: Some(ErrorInfo { code: e as i32, ..Default::default() }),
        };
        if let Some((code, error_code)) = inner.faults.item_errors.pop_front() {
            let mut error = item(code, error_code, format!("injected {error_code:?}"));
            if error_code == ErrorCode::OutOfOrderSequence {
                // Say what the partition really expects, as the broker does.
                let expected = batch::BatchHeader::parse(&req.batch).ok().and_then(|h| {
                    let p = inner.topics.get(&req.topic)?.get(req.partition as usize)?;
                    p.producers.get(&h.producer_id).map(|s| s.last_seq.wrapping_add(1))
                });
                if let Some(info) = error.info.as_mut() {
                    info.metadata.insert("expected_sequence".into(), expected.unwrap_or(0).to_string());
                }
            }
            return Err(error);
        }
        let fail_after_store = inner.faults.store_then_fail.pop_front();
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
        let header = batch::validate(&bytes, Limits::new(1 << 20))
            .map_err(|e| item(tonic::Code::InvalidArgument, ErrorCode::CorruptBatch, e.to_string()))?;
        let count = header.record_count;
        let checked = match partition.check_sequence(&header) {
            Ok(checked) => checked,
            Err((e, message, expected)) => {
                let mut error = item(tonic::Code::FailedPrecondition, e, message);
                if let (Some(info), Some(expected)) = (error.info.as_mut(), expected) {
                    info.metadata.insert("expected_sequence".into(), expected.to_string());
                }
                if e == ErrorCode::OutOfOrderSequence {
                    inner.out_of_order += 1;
                }
                return Err(error);
            }
        };
        let (base, duplicate) = match checked {
            SeqCheck::Duplicate { base_offset } => (base_offset, true),
            SeqCheck::Append => {
                let base = partition.next_offset;
                batch::set_base_offset(&mut bytes, base);
                partition.batches.push((base, Bytes::from(bytes)));
                partition.next_offset += u64::from(count);
                partition.record_sequence(&header, base);
                (base, false)
            }
        };
        if duplicate {
            inner.duplicates += 1;
        }
        drop(inner);
        if !duplicate {
            self.appended.send_modify(|v| *v += 1);
        }
        if let Some((code, error_code)) = fail_after_store {
            return Err(item(code, error_code, format!("injected {error_code:?} after storing the batch")));
        }
        Ok(ProduceResponse {
            request_id: req.request_id,
            partition: req.partition,
            base_offset: base,
            last_offset: base + u64::from(count) - 1,
            log_append_time_ms: 0,
            duplicate,
            error: None,
            throttle_ms: 0,
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

impl Partition {
    /// The broker's sequence rules: a batch from an older epoch is fenced, a
    /// new epoch starts at sequence 0, a batch matching one of the recent
    /// ones is a duplicate, anything else must continue the sequence.
    fn check_sequence(&self, h: &batch::BatchHeader) -> Result<SeqCheck, (ErrorCode, String, Option<i32>)> {
        if !h.has_producer_id() {
            return Ok(SeqCheck::Append);
        }
        let Some(s) = self.producers.get(&h.producer_id) else {
            return Ok(SeqCheck::Append);
        };
        let out_of_order = |expected: i32| {
            (
                ErrorCode::OutOfOrderSequence,
                format!("producer {} sent sequence {} where {expected} was expected", h.producer_id, h.base_sequence),
                Some(expected),
            )
        };
        if h.producer_epoch < s.epoch {
            return Err((
                ErrorCode::ProducerFenced,
                format!("producer {} is fenced: epoch {} is older than {}", h.producer_id, h.producer_epoch, s.epoch),
                None,
            ));
        }
        if h.producer_epoch > s.epoch {
            return if h.base_sequence == 0 { Ok(SeqCheck::Append) } else { Err(out_of_order(0)) };
        }
        let last = h.base_sequence.wrapping_add(h.record_count as i32 - 1);
        if let Some(&(_, _, base_offset, _)) = s.recent.iter().find(|(b, l, _, _)| *b == h.base_sequence && *l == last)
        {
            return Ok(SeqCheck::Duplicate { base_offset });
        }
        let expected = s.last_seq.wrapping_add(1);
        if h.base_sequence == expected { Ok(SeqCheck::Append) } else { Err(out_of_order(expected)) }
    }

    fn record_sequence(&mut self, h: &batch::BatchHeader, base_offset: u64) {
        if !h.has_producer_id() {
            return;
        }
        let last = h.base_sequence.wrapping_add(h.record_count as i32 - 1);
        let s = self.producers.entry(h.producer_id).or_insert_with(|| ProducerSeq {
            epoch: h.producer_epoch,
            last_seq: -1,
            recent: VecDeque::new(),
        });
        if s.epoch != h.producer_epoch {
            s.epoch = h.producer_epoch;
            s.recent.clear();
        }
        s.last_seq = last;
        s.recent.push_back((h.base_sequence, last, base_offset, base_offset + u64::from(h.record_count) - 1));
        while s.recent.len() > RECENT_BATCHES {
            s.recent.pop_front();
        }
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
                    inner.stream_breaks(|f| &mut f.break_produce_after)
                };
                if broken {
                    let _ = tx.send(Err(Status::unavailable("injected stream break"))).await;
                    return;
                }
                let lose_ack = {
                    let mut inner = state.lock();
                    fires(&mut inner.faults.lose_ack_after)
                };
                if lose_ack {
                    let _ = state.append(&req);
                    let _ = tx.send(Err(Status::unavailable("injected stream break after storing a batch"))).await;
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
                let broken = state.lock().stream_breaks(|f| &mut f.break_fetch_after);
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
                    throttle_ms: 0,
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

    async fn init_producer(
        &self,
        request: Request<InitProducerRequest>,
    ) -> Result<Response<InitProducerResponse>, Status> {
        let name = request.into_inner().producer_name;
        let mut inner = self.lock();
        if inner.down {
            return Err(Status::unavailable("broker is down"));
        }
        let (producer_id, epoch) = if name.is_empty() {
            inner.next_producer_id += 1;
            (inner.next_producer_id, 0)
        } else {
            let fresh = inner.next_producer_id + 1;
            let entry = inner.named_producers.entry(name).and_modify(|(_, e)| *e += 1).or_insert((fresh, 0));
            let identity = *entry;
            if identity.0 == fresh {
                inner.next_producer_id = fresh;
            }
            identity
        };
        Ok(Response::new(InitProducerResponse { producer_id, producer_epoch: i32::from(epoch) }))
    }
}

#[tonic::async_trait]
impl Admin for State {
    async fn create_tenant(&self, _: Request<CreateTenantRequest>) -> Result<Response<Tenant>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn update_tenant(
        &self,
        _: Request<strata_proto::v1::UpdateTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn describe_tenant(
        &self,
        _: Request<strata_proto::v1::DescribeTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn create_principal(
        &self,
        _: Request<strata_proto::v1::CreatePrincipalRequest>,
    ) -> Result<Response<strata_proto::v1::Principal>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn list_principals(
        &self,
        _: Request<strata_proto::v1::ListPrincipalsRequest>,
    ) -> Result<Response<strata_proto::v1::ListPrincipalsResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn delete_principal(
        &self,
        _: Request<strata_proto::v1::DeletePrincipalRequest>,
    ) -> Result<Response<strata_proto::v1::DeletePrincipalResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn issue_token(
        &self,
        _: Request<strata_proto::v1::IssueTokenRequest>,
    ) -> Result<Response<strata_proto::v1::IssueTokenResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn revoke_token(
        &self,
        _: Request<strata_proto::v1::RevokeTokenRequest>,
    ) -> Result<Response<strata_proto::v1::RevokeTokenResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn add_acl(
        &self,
        _: Request<strata_proto::v1::AddAclRequest>,
    ) -> Result<Response<strata_proto::v1::AddAclResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn list_acls(
        &self,
        _: Request<strata_proto::v1::ListAclsRequest>,
    ) -> Result<Response<strata_proto::v1::ListAclsResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn remove_acl(
        &self,
        _: Request<strata_proto::v1::RemoveAclRequest>,
    ) -> Result<Response<strata_proto::v1::RemoveAclResponse>, Status> {
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

    async fn describe_cluster(
        &self,
        _request: Request<strata_proto::v1::DescribeClusterRequest>,
    ) -> Result<Response<strata_proto::v1::DescribeClusterResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn remove_broker(
        &self,
        _request: Request<strata_proto::v1::RemoveBrokerRequest>,
    ) -> Result<Response<strata_proto::v1::RemoveBrokerResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn get_metadata(
        &self,
        _request: Request<strata_proto::v1::GetMetadataRequest>,
    ) -> Result<Response<strata_proto::v1::GetMetadataResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn get_server_info(
        &self,
        _: Request<strata_proto::v1::GetServerInfoRequest>,
    ) -> Result<Response<strata_proto::v1::ServerInfo>, Status> {
        Err(Status::unimplemented("mock"))
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
            replication_factor: 1,
            partition_details: parts
                .iter()
                .enumerate()
                .map(|(i, p)| PartitionDescription {
                    partition: i as u32,
                    start_offset: 0,
                    end_offset: p.next_offset,
                    size_bytes: p.batches.iter().map(|(_, b)| b.len() as u64).sum(),
                    segment_count: 1,
                    local_size_bytes: p.batches.iter().map(|(_, b)| b.len() as u64).sum(),
                    ..Default::default()
                })
                .collect(),
        })
    }
}
