//! The `strata.v1.Queues` service: work queues. Transport only: decode,
//! call the [`QueueManager`], map errors.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use strata_proto::v1::{
    self as pb, AckRequest, AckResponse, BindRequest, CreateQueueRequest, DeleteQueueRequest, DeleteQueueResponse,
    DescribeQueueRequest, ExtendVisibilityRequest, ExtendVisibilityResponse, FailedReceipt, ListQueuesRequest,
    ListQueuesResponse, NackRequest, NackResponse, OpenReplyQueueRequest, PeekRequest, PeekResponse, PurgeQueueRequest,
    PurgeQueueResponse, QueueConfig, QueueDescription, QueueStats, ReceiveRequest, ReceiveResponse, RedriveRequest,
    RedriveResponse, ReplyQueueEvent, SendRequest, SendResponse, SendResult, SendStreamRequest, SendStreamResponse,
    UnbindRequest, UnbindResponse, queues_server::Queues, reply_queue_event,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{self, Auth, Operation, Resource};
use super::status::{invalid, status_to_item_error, to_item_error, to_status};
use super::wire::{durability_from_pb, durability_to_pb};
use crate::catalog::{BindingFilter, BindingRecord, TtlAction};
use crate::error::BrokerError;
use crate::queue::{QueueManager, QueueOverrides, QueueView};

/// Requests of one `SendStream` being handled at once; beyond it the stream
/// is not read (back-pressure through HTTP/2 flow control).
const SEND_STREAM_CONCURRENCY: usize = 64;

/// Longest long poll a receive may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);

pub(crate) struct QueuesService {
    queues: Arc<QueueManager>,
    auth: Auth,
}

impl QueuesService {
    pub fn new(queues: Arc<QueueManager>, auth: Auth) -> Self {
        QueuesService { queues, auth }
    }
}

fn overrides(c: Option<QueueConfig>) -> Result<QueueOverrides, Status> {
    let Some(c) = c else { return Ok(QueueOverrides::default()) };
    let durability = durability_from_pb(c.durability)?;
    let ttl_action = match pb::TtlAction::try_from(c.ttl_action) {
        Ok(pb::TtlAction::Unspecified) => None,
        Ok(pb::TtlAction::Drop) => Some(TtlAction::Drop),
        Ok(pb::TtlAction::DeadLetter) => Some(TtlAction::DeadLetter),
        Err(_) => return Err(invalid(format!("unknown ttl_action {}", c.ttl_action))),
    };
    Ok(QueueOverrides {
        visibility_timeout_ms: c.visibility_timeout_ms,
        max_deliveries: c.max_deliveries,
        dead_letter_queue: c.dead_letter_queue,
        retry_backoff_min_ms: c.retry_backoff_min_ms,
        retry_backoff_max_ms: c.retry_backoff_max_ms,
        delay_ms: c.delay_ms,
        ttl_ms: c.ttl_ms,
        ttl_action,
        fifo: c.fifo,
        dedup_window_ms: c.dedup_window_ms,
        priorities: c.priorities,
        durability,
    })
}

fn filter_from_pb(f: Option<pb::BindingFilter>) -> BindingFilter {
    let f = f.unwrap_or_default();
    BindingFilter { key: f.key, pattern: f.pattern, headers: f.headers.into_iter().collect() }
}

fn binding_to_pb(b: &BindingRecord) -> pb::Binding {
    pb::Binding {
        topic: b.topic.clone(),
        filter: Some(pb::BindingFilter {
            key: b.filter.key.clone(),
            pattern: b.filter.pattern.clone(),
            headers: b.filter.headers.clone().into_iter().collect(),
        }),
        created_at_ms: b.created_at_ms,
    }
}

fn view_to_pb(v: QueueView) -> QueueDescription {
    let s = &v.settings;
    QueueDescription {
        tenant: v.tenant,
        name: v.name,
        queue_id: v.id.to_string(),
        config: Some(QueueConfig {
            visibility_timeout_ms: Some(s.visibility_timeout_ms),
            max_deliveries: Some(s.max_deliveries),
            dead_letter_queue: Some(s.dead_letter_queue.clone().unwrap_or_default()),
            retry_backoff_min_ms: Some(s.retry_backoff_min_ms),
            retry_backoff_max_ms: Some(s.retry_backoff_max_ms),
            delay_ms: Some(s.delay_ms),
            ttl_ms: Some(s.ttl_ms),
            ttl_action: match s.ttl_action {
                TtlAction::Drop => pb::TtlAction::Drop as i32,
                TtlAction::DeadLetter => pb::TtlAction::DeadLetter as i32,
            },
            fifo: Some(s.fifo),
            dedup_window_ms: Some(s.dedup_window_ms),
            priorities: Some(s.priorities),
            durability: durability_to_pb(s.durability),
        }),
        created_at_ms: v.created_at_ms,
        stats: Some(QueueStats {
            visible: v.stats.visible,
            in_flight: v.stats.in_flight,
            delayed: v.stats.delayed,
            dead_lettered: v.stats.counters.dead_lettered,
            oldest_message_age_ms: v.stats.oldest_age_ms,
            sent_total: v.stats.counters.sent,
            acked_total: v.stats.counters.acked,
            expired_total: v.stats.counters.expired,
        }),
        bindings: v.bindings.iter().map(binding_to_pb).collect(),
        temporary: v.temporary,
    }
}

fn failed(items: Vec<(pb::Receipt, BrokerError)>) -> Vec<FailedReceipt> {
    items.into_iter().map(|(r, e)| FailedReceipt { receipt: Some(r), error: Some(to_item_error(e)) }).collect()
}

fn non_negative(field: &str, v: i64) -> Result<(), Status> {
    if v < 0 { Err(invalid(format!("{field} must not be negative, got {v}"))) } else { Ok(()) }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<ReplyQueueEvent, Status>> + Send>>;
type SendResponses = Pin<Box<dyn Stream<Item = Result<SendStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Queues for QueuesService {
    async fn create_queue(&self, req: Request<CreateQueueRequest>) -> Result<Response<QueueDescription>, Status> {
        let (caller, mut r) = auth::split(req);
        self.auth.authorize(&caller, Operation::Admin, &mut r.tenant, Resource::Queue(&r.name)).await?;
        let o = overrides(r.config)?;
        let v = self.queues.create_queue(&r.tenant, &r.name, o, r.if_not_exists).await.map_err(to_status)?;
        Ok(Response::new(view_to_pb(v)))
    }

    async fn update_queue(&self, req: Request<pb::UpdateQueueRequest>) -> Result<Response<QueueDescription>, Status> {
        let (caller, mut r) = auth::split(req);
        self.auth.authorize(&caller, Operation::Admin, &mut r.tenant, Resource::Queue(&r.name)).await?;
        let o = overrides(r.config)?;
        let v = self.queues.update_queue(&r.tenant, &r.name, o).await.map_err(to_status)?;
        Ok(Response::new(view_to_pb(v)))
    }

    async fn list_queues(&self, req: Request<ListQueuesRequest>) -> Result<Response<ListQueuesResponse>, Status> {
        // Only the queues the caller may describe.
        let caller = self.auth.session(auth::Caller::of(&req))?;
        let mut r = req.into_inner();
        self.auth.authorize(&caller, Operation::Describe, &mut r.tenant, Resource::Tenant).await?;
        let list = self.queues.list_queues(&r.tenant).await.map_err(to_status)?;
        let queues = list
            .into_iter()
            .filter(|q| self.auth.permits(&caller, Operation::Describe, Resource::Queue(&q.name)))
            .map(view_to_pb)
            .collect();
        Ok(Response::new(ListQueuesResponse { queues }))
    }

    async fn describe_queue(&self, req: Request<DescribeQueueRequest>) -> Result<Response<QueueDescription>, Status> {
        let (caller, mut r) = auth::split(req);
        self.auth.authorize(&caller, Operation::Describe, &mut r.tenant, Resource::Queue(&r.name)).await?;
        let v = self.queues.describe_queue_full(&r.tenant, &r.name).await.map_err(to_status)?;
        Ok(Response::new(view_to_pb(v)))
    }

    async fn delete_queue(&self, req: Request<DeleteQueueRequest>) -> Result<Response<DeleteQueueResponse>, Status> {
        let (caller, mut r) = auth::split(req);
        self.auth.authorize(&caller, Operation::Admin, &mut r.tenant, Resource::Queue(&r.name)).await?;
        self.queues.delete_queue(&r.tenant, &r.name, r.if_empty).await.map_err(to_status)?;
        Ok(Response::new(DeleteQueueResponse {}))
    }

    async fn purge_queue(&self, req: Request<PurgeQueueRequest>) -> Result<Response<PurgeQueueResponse>, Status> {
        let (caller, mut r) = auth::split(req);
        self.auth.authorize(&caller, Operation::Admin, &mut r.tenant, Resource::Queue(&r.name)).await?;
        let purged = self.queues.purge(&r.tenant, &r.name).await.map_err(to_status)?;
        Ok(Response::new(PurgeQueueResponse { purged }))
    }

    async fn redrive(&self, req: Request<RedriveRequest>) -> Result<Response<RedriveResponse>, Status> {
        let (caller, mut r) = auth::split(req);
        self.auth.authorize(&caller, Operation::Admin, &mut r.tenant, Resource::Queue(&r.dead_letter_queue)).await?;
        let moved = self.queues.redrive(&r.tenant, &r.dead_letter_queue, r.max_messages).await.map_err(to_status)?;
        Ok(Response::new(RedriveResponse { moved }))
    }

    async fn bind(&self, req: Request<BindRequest>) -> Result<Response<pb::Binding>, Status> {
        let (caller, mut r) = auth::split(req);
        self.auth.authorize(&caller, Operation::Admin, &mut r.tenant, Resource::Queue(&r.queue)).await?;
        // A binding copies the topic's messages into the queue: reading them.
        self.auth.authorize(&caller, Operation::Consume, &mut r.tenant, Resource::Topic(&r.topic)).await?;
        let b = self.queues.bind(&r.tenant, &r.queue, &r.topic, filter_from_pb(r.filter)).await.map_err(to_status)?;
        Ok(Response::new(binding_to_pb(&b)))
    }

    async fn unbind(&self, req: Request<UnbindRequest>) -> Result<Response<UnbindResponse>, Status> {
        let (caller, mut r) = auth::split(req);
        self.auth.authorize(&caller, Operation::Admin, &mut r.tenant, Resource::Queue(&r.queue)).await?;
        self.queues.unbind(&r.tenant, &r.queue, &r.topic, filter_from_pb(r.filter)).await.map_err(to_status)?;
        Ok(Response::new(UnbindResponse {}))
    }

    async fn send(&self, req: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        let (caller, mut r) = auth::split(req);
        self.auth.authorize(&caller, Operation::Produce, &mut r.tenant, Resource::Queue(&r.queue)).await?;
        let throttle_ms = self.auth.produce_bytes(&r.tenant, outgoing_bytes(&r.messages)).await?;
        let sent = self.queues.send(&r.tenant, &r.queue, r.messages).await.map_err(to_status)?;
        Ok(Response::new(SendResponse {
            results: sent.into_iter().map(|s| SendResult { message_id: s.id, duplicate: s.duplicate }).collect(),
            throttle_ms,
        }))
    }

    type SendStreamStream = SendResponses;

    async fn send_stream(
        &self,
        req: Request<Streaming<SendStreamRequest>>,
    ) -> Result<Response<Self::SendStreamStream>, Status> {
        let caller = self.auth.session(auth::Caller::of(&req))?;
        let authz = self.auth.clone();
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<SendStreamResponse, Status>>(SEND_STREAM_CONCURRENCY);
        let queues = self.queues.clone();
        let slots = Arc::new(tokio::sync::Semaphore::new(SEND_STREAM_CONCURRENCY));
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    _ = queues.broker().until_shutdown() => break,
                };
                let r = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "send stream ended by client");
                        break;
                    }
                };
                let Ok(slot) = slots.clone().acquire_owned().await else { break };
                let request_id = r.request_id;
                let answer = move |result: Result<Vec<crate::queue::Sent>, BrokerError>| match result {
                    Ok(sent) => SendStreamResponse {
                        request_id,
                        results: sent
                            .into_iter()
                            .map(|s| SendResult { message_id: s.id, duplicate: s.duplicate })
                            .collect(),
                        error: None,
                    },
                    Err(e) => SendStreamResponse { request_id, results: Vec::new(), error: Some(to_item_error(e)) },
                };
                let mut r = r;
                let gate = match authz
                    .authorize(&caller, Operation::Produce, &mut r.tenant, Resource::Queue(&r.queue))
                    .await
                {
                    Ok(()) => authz.produce_bytes(&r.tenant, outgoing_bytes(&r.messages)).await.map(|_| ()),
                    Err(status) => Err(status),
                };
                if let Err(status) = gate {
                    let resp = SendStreamResponse {
                        request_id,
                        results: Vec::new(),
                        error: Some(status_to_item_error(&status)),
                    };
                    if tx.send(Ok(resp)).await.is_err() {
                        break;
                    }
                    continue;
                }
                // Appended in stream order (so FIFO groups keep the order the
                // client sent), then acknowledged concurrently: pipelined
                // requests share the queue's fsyncs.
                match queues.send_pending(&r.tenant, &r.queue, r.messages).await {
                    Ok(pending) => {
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let _ = tx.send(Ok(answer(pending.wait().await))).await;
                            drop(slot);
                        });
                    }
                    Err(e) => {
                        if tx.send(Ok(answer(Err(e)))).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as SendResponses))
    }

    async fn receive(&self, req: Request<ReceiveRequest>) -> Result<Response<ReceiveResponse>, Status> {
        let (caller, mut r) = auth::split(req);
        self.auth.authorize(&caller, Operation::Consume, &mut r.tenant, Resource::Queue(&r.queue)).await?;
        non_negative("wait_ms", r.wait_ms)?;
        let wait = Duration::from_millis(r.wait_ms as u64).min(MAX_WAIT);
        // The tenant's consume rate: earlier receives are paid first (a
        // refusal here leases nothing).
        let throttle_ms = self.auth.before_consume(&r.tenant).await?;
        let messages = self
            .queues
            .receive(&r.tenant, &r.queue, r.max_messages as usize, wait, r.visibility_timeout_ms, r.auto_ack)
            .await
            .map_err(to_status)?;
        self.auth.consumed(&r.tenant, messages.iter().map(|m| (m.body.len() + m.key.len()) as u64).sum());
        Ok(Response::new(ReceiveResponse { messages, throttle_ms }))
    }

    async fn ack(&self, req: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        let (caller, mut r) = auth::split(req);
        self.auth.authorize(&caller, Operation::Consume, &mut r.tenant, Resource::Queue(&r.queue)).await?;
        let f = self.queues.ack(&r.tenant, &r.queue, &r.receipts).await.map_err(to_status)?;
        Ok(Response::new(AckResponse { failed: failed(f) }))
    }

    async fn nack(&self, req: Request<NackRequest>) -> Result<Response<NackResponse>, Status> {
        let (caller, mut r) = auth::split(req);
        self.auth.authorize(&caller, Operation::Consume, &mut r.tenant, Resource::Queue(&r.queue)).await?;
        let f = self.queues.nack(&r.tenant, &r.queue, &r.receipts, r.delay_ms).await.map_err(to_status)?;
        Ok(Response::new(NackResponse { failed: failed(f) }))
    }

    async fn extend_visibility(
        &self,
        req: Request<ExtendVisibilityRequest>,
    ) -> Result<Response<ExtendVisibilityResponse>, Status> {
        let (caller, mut r) = auth::split(req);
        self.auth.authorize(&caller, Operation::Consume, &mut r.tenant, Resource::Queue(&r.queue)).await?;
        let f = self.queues.extend(&r.tenant, &r.queue, &r.receipts, r.visibility_timeout_ms).map_err(to_status)?;
        Ok(Response::new(ExtendVisibilityResponse { failed: failed(f) }))
    }

    async fn peek(&self, req: Request<PeekRequest>) -> Result<Response<PeekResponse>, Status> {
        let (caller, mut r) = auth::split(req);
        // Peeking reads messages: consume, not describe.
        self.auth.authorize(&caller, Operation::Consume, &mut r.tenant, Resource::Queue(&r.queue)).await?;
        let messages = self.queues.peek(&r.tenant, &r.queue, r.max_messages as usize).await.map_err(to_status)?;
        Ok(Response::new(PeekResponse { messages }))
    }

    type OpenReplyQueueStream = ReplyStream;

    async fn open_reply_queue(
        &self,
        req: Request<OpenReplyQueueRequest>,
    ) -> Result<Response<Self::OpenReplyQueueStream>, Status> {
        // Reply queues are named `reply-…`: consuming them takes an ACL
        // matching that prefix (or every queue).
        let (caller, mut r) = auth::split(req);
        self.auth
            .authorize(&caller, Operation::Consume, &mut r.tenant, Resource::Queue(crate::queue::REPLY_PREFIX))
            .await?;
        let name = self.queues.create_reply_queue(&r.tenant).await.map_err(to_status)?;
        let (tx, rx) = mpsc::channel(16);
        let queues = self.queues.clone();
        let tenant = r.tenant;
        tokio::spawn(async move {
            let opened = ReplyQueueEvent { event: Some(reply_queue_event::Event::Opened(name.clone())) };
            if tx.send(Ok(opened)).await.is_ok() {
                loop {
                    let got = tokio::select! {
                        got = queues.receive(&tenant, &name, 100, Duration::from_secs(30), None, true) => got,
                        _ = tx.closed() => break,
                    };
                    match got {
                        Ok(messages) => {
                            for m in messages {
                                let ev = ReplyQueueEvent { event: Some(reply_queue_event::Event::Message(m)) };
                                if tx.send(Ok(ev)).await.is_err() {
                                    break;
                                }
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(to_status(e))).await;
                            break;
                        }
                    }
                    if tx.is_closed() {
                        break;
                    }
                }
            }
            // The caller went away (or the broker is stopping): the reply queue goes too.
            if let Err(e) = queues.delete_queue(&tenant, &name, false).await {
                tracing::debug!(queue = %name, error = %e, "reply queue already gone");
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as ReplyStream))
    }
}

/// The bytes a send carries, for the tenant's produce rate.
fn outgoing_bytes(messages: &[strata_proto::v1::OutgoingMessage]) -> u64 {
    messages.iter().map(|m| (m.body.len() + m.key.len()) as u64).sum()
}
