//! [`Receiver`]: leases messages of one queue with long polls, and settles
//! them — ack (delete), nack (visible again, now or later), extend (keep the
//! lease longer) — by their receipts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_proto::v1 as pb;

use super::acker::Acker;
use super::message::{Delivery, Receipt};
use super::millis;
use crate::client::{Client, Queues};
use crate::error::{Error, RejectedReceipt, ServerError};
use crate::routing::Target;

/// The longest wait of one `Receive` call the broker accepts; longer waits
/// are split into several calls.
const MAX_POLL: Duration = Duration::from_secs(20);

/// Most messages one `Receive` call may ask for.
pub const MAX_RECEIVE_MESSAGES: u32 = 1000;

/// Receives messages of one queue; made by [`Client::receiver`].
///
/// ```no_run
/// # async fn demo(client: strata_client::Client) -> Result<(), strata_client::Error> {
/// use std::time::Duration;
///
/// let receiver = client.receiver("jobs").max_messages(10).wait(Duration::from_secs(10));
/// for delivery in receiver.receive().await? {
///     match std::str::from_utf8(&delivery.body) {
///         Ok(text) => {
///             println!("{text}");
///             receiver.ack(&delivery).await?;
///         }
///         // Try again later (the queue's retry backoff).
///         Err(_) => receiver.nack(&delivery, None).await?,
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Receiver {
    client: Client,
    queue: Arc<str>,
    max_messages: u32,
    wait: Duration,
    visibility_timeout: Option<Duration>,
    auto_ack: bool,
    /// `process` spans of the last batch received (tracing on); they end
    /// when the next batch is asked for, or with the receiver.
    processing: Arc<std::sync::Mutex<Vec<strata_telemetry::BoxedSpan>>>,
    /// The task batching [`Receiver::ack`] calls; started on first use.
    acker: Arc<std::sync::OnceLock<Acker>>,
}

impl Client {
    /// A receiver for `queue`: by default one message per call, a 10 s long
    /// poll, the queue's visibility timeout, explicit acks.
    pub fn receiver(&self, queue: &str) -> Receiver {
        Receiver {
            client: self.clone(),
            queue: queue.into(),
            max_messages: 1,
            wait: Duration::from_secs(10),
            visibility_timeout: None,
            auto_ack: false,
            processing: Arc::default(),
            acker: Arc::default(),
        }
    }
}

impl Receiver {
    setters! {
        /// Up to this many messages per [`receive`](Self::receive) (1 to 1000).
        max_messages(n: u32) => max_messages = n.clamp(1, MAX_RECEIVE_MESSAGES);
        /// How long `receive` waits for a first message (zero: not at all).
        wait(wait: Duration) => wait = wait;
        /// Lease received messages for this long instead of the queue's
        /// visibility timeout.
        visibility_timeout(timeout: Duration) => visibility_timeout = Some(timeout);
        /// Acknowledge messages as they are delivered: at-most-once (a message
        /// is lost if the application fails after receiving it).
        auto_ack(auto_ack: bool) => auto_ack = auto_ack;
    }

    /// Ends the previous batch's `process` spans and starts this batch's.
    fn start_processing(&self, deliveries: &[Delivery]) {
        if !strata_telemetry::enabled() {
            return;
        }
        use strata_telemetry::{Attribute, attr};
        let spans = deliveries.iter().filter_map(|d| {
            crate::telemetry::process_span(&self.queue, d.headers.iter().map(|(k, v)| (k.as_str(), v.as_ref())), || {
                vec![
                    Attribute::new(attr::MESSAGE_ID, d.receipt.message_id.to_string()),
                    Attribute::new(attr::DELIVERY_COUNT, i64::from(d.receipt.delivery_count)),
                ]
            })
        });
        let mut current = self.processing.lock().unwrap_or_else(|p| p.into_inner());
        *current = spans.collect();
    }

    /// The queue this receiver reads.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Leases up to `max_messages` visible messages, waiting up to `wait`
    /// for the first one; an empty list when none arrived in time.
    pub async fn receive(&self) -> Result<Vec<Delivery>, Error> {
        self.receive_up_to(self.max_messages).await
    }

    /// Like [`receive`](Self::receive) with another batch limit (so callers
    /// that need exactly N messages never lease more than they will handle).
    pub async fn receive_up_to(&self, max_messages: u32) -> Result<Vec<Delivery>, Error> {
        self.poll(max_messages, self.wait).await
    }

    /// Leases up to `max_messages` visible messages, waiting up to `wait`
    /// (this call's own wait, whatever the receiver was built with) for the
    /// first one; an empty list when none arrived in time. The same shape as
    /// [`Consumer::poll`](crate::Consumer::poll).
    ///
    /// ```no_run
    /// # async fn demo(receiver: strata_client::Receiver) -> Result<(), strata_client::Error> {
    /// use std::time::Duration;
    ///
    /// // Whatever is there right now, without waiting:
    /// let now = receiver.poll(100, Duration::ZERO).await?;
    /// // Up to 10 messages, waiting up to 30 s for the first:
    /// let later = receiver.poll(10, Duration::from_secs(30)).await?;
    /// # let _ = (now, later); Ok(()) }
    /// ```
    pub async fn poll(&self, max_messages: u32, wait: Duration) -> Result<Vec<Delivery>, Error> {
        let max_messages = max_messages.clamp(1, MAX_RECEIVE_MESSAGES);
        let deadline = Instant::now() + wait;
        loop {
            let poll = deadline.saturating_duration_since(Instant::now()).min(MAX_POLL);
            let req = pb::ReceiveRequest {
                tenant: self.client.tenant().to_owned(),
                queue: self.queue.to_string(),
                max_messages,
                wait_ms: millis(poll),
                visibility_timeout_ms: self.visibility_timeout.map(millis),
                auto_ack: self.auto_ack,
            };
            // The deadline covers the long poll plus the usual answer time.
            // NOT_LEADER (nothing leased) is followed to the queue's owner.
            let messages = self
                .client
                .routed(Target::Queue(&self.queue), |url| {
                    let mut request = tonic::Request::new(req.clone());
                    request.set_timeout(self.client.timeout() + poll);
                    async move { self.client.queues_rpc_at(&url).receive(request).await.map_err(Error::from) }
                })
                .await?
                .into_inner()
                .messages;
            if !messages.is_empty() || Instant::now() >= deadline {
                let deliveries: Vec<Delivery> =
                    messages.into_iter().map(|m| Delivery::from_proto(&self.queue, m)).collect();
                self.start_processing(&deliveries);
                return Ok(deliveries);
            }
        }
    }

    /// Deletes a delivered message. A stale receipt (the lease expired and
    /// the message was delivered again) fails with
    /// [`ErrorCode::StaleReceipt`](crate::ErrorCode::StaleReceipt); see
    /// [`Error::is_stale_receipt`].
    ///
    /// Acks of single messages are batched: concurrent `ack` calls on this
    /// receiver (and its clones) share `Ack` requests — one goes at once when
    /// none is in flight, the others gather meanwhile — and each call
    /// resolves with its own receipt's outcome once the broker made the
    /// acknowledgement durable.
    pub async fn ack(&self, delivery: &Delivery) -> Result<(), Error> {
        self.acker.get_or_init(|| Acker::start(self.client.clone(), self.queue.to_string())).ack(delivery.receipt).await
    }

    /// Deletes several delivered messages in one call. When some receipts
    /// are refused the others are still applied, and the error is
    /// [`Error::ReceiptsRejected`] listing the refused ones.
    pub async fn ack_all(&self, deliveries: &[Delivery]) -> Result<(), Error> {
        let receipts: Vec<Receipt> = deliveries.iter().map(|d| d.receipt).collect();
        self.ack_receipts(&receipts).await
    }

    /// [`ack_all`](Self::ack_all) by receipts.
    pub async fn ack_receipts(&self, receipts: &[Receipt]) -> Result<(), Error> {
        let receipts = receipts.iter().copied().map(pb::Receipt::from).collect();
        let request = |tenant, queue, receipts| pb::AckRequest { tenant, queue, receipts };
        self.settle(receipts, request, |mut c: Queues, r| async move { c.ack(r).await }).await
    }

    /// Returns a message to the queue: visible again after `delay`, or after
    /// the queue's retry backoff when `None`.
    pub async fn nack(&self, delivery: &Delivery, delay: Option<Duration>) -> Result<(), Error> {
        self.nack_all(std::slice::from_ref(delivery), delay).await.map_err(single)
    }

    /// [`nack`](Self::nack) for several messages in one call.
    pub async fn nack_all(&self, deliveries: &[Delivery], delay: Option<Duration>) -> Result<(), Error> {
        let delay_ms = delay.map(millis);
        let request = |tenant, queue, receipts| pb::NackRequest { tenant, queue, receipts, delay_ms };
        self.settle(receipts_of(deliveries), request, |mut c: Queues, r| async move { c.nack(r).await }).await
    }

    /// Keeps a message leased until now + `timeout`.
    pub async fn extend(&self, delivery: &Delivery, timeout: Duration) -> Result<(), Error> {
        self.extend_all(std::slice::from_ref(delivery), timeout).await.map_err(single)
    }

    /// [`extend`](Self::extend) for several messages in one call.
    pub async fn extend_all(&self, deliveries: &[Delivery], timeout: Duration) -> Result<(), Error> {
        let visibility_timeout_ms = millis(timeout);
        let request =
            |tenant, queue, receipts| pb::ExtendVisibilityRequest { tenant, queue, receipts, visibility_timeout_ms };
        self.settle(receipts_of(deliveries), request, |mut c: Queues, r| async move { c.extend_visibility(r).await })
            .await
    }

    /// One settle request (ack, nack or extend) to the queue's owner, made
    /// by `request` of the tenant, the queue and the receipts and sent by
    /// `call`; none when there are no receipts. Refused receipts are an
    /// error ([`Error::ReceiptsRejected`]).
    async fn settle<Req: Clone, Resp: Settled, Fut>(
        &self,
        receipts: Vec<pb::Receipt>,
        request: impl FnOnce(String, String, Vec<pb::Receipt>) -> Req,
        call: impl Fn(Queues, tonic::Request<Req>) -> Fut,
    ) -> Result<(), Error>
    where
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        if receipts.is_empty() {
            return Ok(());
        }
        let req = request(self.client.tenant().to_owned(), self.queue.to_string(), receipts);
        rejected(self.client.rpc(Target::Queue(&self.queue), req, call).await?.failed())
    }

    /// Visible messages in delivery order, without leasing them.
    pub async fn peek(&self, max_messages: u32) -> Result<Vec<Delivery>, Error> {
        let req = pb::PeekRequest {
            tenant: self.client.tenant().to_owned(),
            queue: self.queue.to_string(),
            max_messages: max_messages.clamp(1, MAX_RECEIVE_MESSAGES),
        };
        let messages = self
            .client
            .rpc(Target::Queue(&self.queue), req, |mut c: Queues, r| async move { c.peek(r).await })
            .await?
            .messages;
        Ok(messages.into_iter().map(|m| Delivery::from_proto(&self.queue, m)).collect())
    }
}

/// The refused receipts of a settle call as an error, if any.
fn receipts_of(deliveries: &[Delivery]) -> Vec<pb::Receipt> {
    deliveries.iter().map(|d| pb::Receipt::from(d.receipt)).collect()
}

/// The answer to a settle request: the receipts it refused.
trait Settled {
    fn failed(self) -> Vec<pb::FailedReceipt>;
}

macro_rules! settled {
    ($($response:ty),*) => {
        $(impl Settled for $response {
            fn failed(self) -> Vec<pb::FailedReceipt> {
                self.failed
            }
        })*
    };
}

settled!(pb::AckResponse, pb::NackResponse, pb::ExtendVisibilityResponse);

fn rejected(failed: Vec<pb::FailedReceipt>) -> Result<(), Error> {
    if failed.is_empty() {
        return Ok(());
    }
    Err(Error::ReceiptsRejected(
        failed
            .into_iter()
            .map(|f| {
                let receipt = f.receipt.unwrap_or_default();
                RejectedReceipt {
                    message_id: receipt.message_id,
                    delivery_count: receipt.delivery_count,
                    error: Box::new(f.error.map(ServerError::from).unwrap_or_else(|| {
                        ServerError::from(pb::ItemError {
                            status_code: tonic::Code::Unknown as i32,
                            message: "refused without a reason".into(),
                            info: None,
                        })
                    })),
                }
            })
            .collect(),
    ))
}

/// For one receipt, the refusal itself is the error.
fn single(err: Error) -> Error {
    match err {
        Error::ReceiptsRejected(mut list) if list.len() == 1 => match list.pop() {
            Some(r) => Error::Server(r.error),
            None => Error::ReceiptsRejected(list),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::v1::{ErrorCode, ErrorInfo, ItemError};

    fn failed(id: u64, code: ErrorCode) -> pb::FailedReceipt {
        pb::FailedReceipt {
            receipt: Some(pb::Receipt { message_id: id, delivery_count: 1 }),
            error: Some(ItemError {
                status_code: tonic::Code::FailedPrecondition as i32,
                message: format!("receipt of message {id} is stale"),
                info: Some(ErrorInfo { code: code as i32, ..Default::default() }),
            }),
        }
    }

    #[test]
    fn refused_receipts_are_typed_errors() {
        assert!(rejected(Vec::new()).is_ok());
        let err = rejected(vec![failed(1, ErrorCode::StaleReceipt), failed(2, ErrorCode::StaleReceipt)]).unwrap_err();
        assert!(err.is_stale_receipt(), "{err}");
        assert!(err.to_string().starts_with("2 of the receipts were not applied; first: message 1"), "{err}");
        let Error::ReceiptsRejected(list) = &err else { panic!("{err:?}") };
        assert_eq!(list[1].message_id, 2);

        let mixed = rejected(vec![failed(1, ErrorCode::StaleReceipt), failed(2, ErrorCode::UnknownQueue)]).unwrap_err();
        assert!(!mixed.is_stale_receipt());

        let one = single(rejected(vec![failed(7, ErrorCode::StaleReceipt)]).unwrap_err());
        assert_eq!(one.error_code(), ErrorCode::StaleReceipt);
        assert!(one.is_stale_receipt());
        assert_eq!(one.to_string(), "receipt of message 7 is stale");
    }
}
