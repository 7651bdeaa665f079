//! Request-reply: [`Client::call`] sends a request and waits for the answer
//! on a temporary reply queue; [`Client::reply`] answers a request.
//!
//! A client opens at most one reply queue (an `OpenReplyQueue` stream),
//! lazily on the first call, shared by its clones for the same tenant. A
//! background task reads the stream and hands each reply to the call waiting
//! for its correlation id through a oneshot channel; every call uses a fresh
//! correlation id, so concurrent calls never see each other's replies, and a
//! reply arriving after its call gave up is dropped. When the last clone of
//! the client is dropped the task is aborted, the stream closes and the
//! broker deletes the queue. If the stream fails, waiting calls fail with
//! [`Error::ReplyQueueClosed`] and the next call opens a new queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use strata_proto::v1 as pb;
use strata_proto::v1::reply_queue_event::Event;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::message::{Delivery, QueueMessage};
use crate::client::Client;
use crate::error::Error;

type Waiters = Mutex<HashMap<String, oneshot::Sender<Result<Delivery, Error>>>>;

/// Where a client keeps its reply queue (empty until the first call).
#[derive(Default)]
pub(crate) struct ReplySlot {
    queue: tokio::sync::Mutex<Option<Arc<ReplyQueue>>>,
}

impl std::fmt::Debug for ReplySlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.queue.try_lock().ok().and_then(|q| q.as_ref().map(|q| q.name.clone()));
        f.debug_struct("ReplySlot").field("queue", &name).finish()
    }
}

/// One open reply queue: its name, the calls waiting on it and the task
/// reading it (aborted, closing the stream, when this is dropped).
struct ReplyQueue {
    name: String,
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
}

struct Shared {
    waiters: Waiters,
    closed: AtomicBool,
}

impl Drop for ReplyQueue {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Removes a call's waiter however the call ends (reply, timeout, drop).
struct WaiterGuard<'a> {
    shared: &'a Shared,
    id: String,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut waiters) = self.shared.waiters.lock() {
            waiters.remove(&self.id);
        }
    }
}

impl Client {
    /// Sends `request` to `queue` and waits up to `timeout` for the reply,
    /// which a responder sends with [`Client::reply`]. The request's
    /// `reply_to` and `correlation_id` are set here (a fresh id per call).
    ///
    /// ```no_run
    /// # async fn demo(client: strata_client::Client) -> Result<(), strata_client::Error> {
    /// use std::time::Duration;
    /// use strata_client::QueueMessage;
    ///
    /// let answer = client.call("rpc", QueueMessage::new("2+2"), Duration::from_secs(5)).await?;
    /// println!("{}", String::from_utf8_lossy(&answer.body));
    /// # Ok(()) }
    /// ```
    pub async fn call(&self, queue: &str, request: QueueMessage, timeout: Duration) -> Result<Delivery, Error> {
        let timed_out = || Error::Timeout { operation: "call", timeout };
        let deadline = Instant::now() + timeout;
        let reply_queue =
            tokio::time::timeout_at(deadline.into(), self.reply_queue()).await.map_err(|_| timed_out())??;
        let id = correlation_id();
        let (tx, rx) = oneshot::channel();
        {
            let mut waiters = reply_queue.shared.waiters.lock().map_err(|_| poisoned())?;
            // Checked under the lock the reader takes to fail waiters, so a
            // waiter is never added after they were failed.
            if reply_queue.shared.closed.load(Ordering::Acquire) {
                return Err(Error::ReplyQueueClosed("the stream ended".into()));
            }
            waiters.insert(id.clone(), tx);
        }
        let _guard = WaiterGuard { shared: &reply_queue.shared, id: id.clone() };
        let request = request.reply_to(reply_queue.name.clone()).correlation_id(id);
        let sent = tokio::time::timeout_at(deadline.into(), self.send_batch(queue, [request])).await;
        sent.map_err(|_| timed_out())??;
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Err(_) => Err(timed_out()),
            Ok(Err(_)) => Err(Error::ReplyQueueClosed("the stream ended".into())),
            Ok(Ok(result)) => result,
        }
    }

    /// Answers a request received from a queue: sends `reply` to the
    /// request's `reply_to` queue with the request's correlation id. Fails
    /// with [`Error::InvalidArgument`] when the request has no `reply_to`.
    pub async fn reply(&self, request: &Delivery, reply: QueueMessage) -> Result<(), Error> {
        let Some(reply_to) = request.reply_to.as_deref() else {
            return Err(Error::InvalidArgument(format!(
                "message {} of queue {} has no reply_to: it was not sent as a request",
                request.receipt.message_id, request.queue
            )));
        };
        let mut reply = reply;
        reply.correlation_id = request.correlation_id.clone();
        self.send_batch(reply_to, [reply]).await?;
        Ok(())
    }

    /// The name of this client's reply queue, opening it if needed.
    pub async fn reply_queue_name(&self) -> Result<String, Error> {
        Ok(self.reply_queue().await?.name.clone())
    }

    /// This client's open reply queue, opened if there is none (or the last
    /// one closed).
    async fn reply_queue(&self) -> Result<Arc<ReplyQueue>, Error> {
        let reply_slot = self.state::<ReplySlot>();
        let mut slot = reply_slot.queue.lock().await;
        if let Some(q) = slot.as_ref()
            && !q.shared.closed.load(Ordering::Acquire)
        {
            return Ok(q.clone());
        }
        let q = Arc::new(self.open_reply_queue().await?);
        *slot = Some(q.clone());
        Ok(q)
    }

    async fn open_reply_queue(&self) -> Result<ReplyQueue, Error> {
        let req = pb::OpenReplyQueueRequest { tenant: self.tenant().to_owned() };
        let timeout = self.timeout();
        let open = async {
            let mut stream = self.queues_rpc().open_reply_queue(tonic::Request::new(req)).await?.into_inner();
            match stream.message().await? {
                Some(pb::ReplyQueueEvent { event: Some(Event::Opened(name)) }) => Ok((name, stream)),
                Some(_) => Err(Error::Unsupported("the reply queue stream did not start with its name".into())),
                None => Err(Error::ReplyQueueClosed("the broker ended the stream before naming the queue".into())),
            }
        };
        let (name, stream) = tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| Error::Timeout { operation: "opening the reply queue", timeout })??;
        let shared = Arc::new(Shared { waiters: Mutex::new(HashMap::new()), closed: AtomicBool::new(false) });
        let queue_name: Arc<str> = name.as_str().into();
        let reader = tokio::spawn(read_replies(stream, Arc::downgrade(&shared), queue_name));
        Ok(ReplyQueue { name, shared, reader })
    }
}

/// Dispatches replies to waiting calls until the stream ends, then fails the
/// calls still waiting.
async fn read_replies(mut stream: tonic::Streaming<pb::ReplyQueueEvent>, shared: Weak<Shared>, queue: Arc<str>) {
    let reason = loop {
        match stream.next().await {
            Some(Ok(pb::ReplyQueueEvent { event: Some(Event::Message(m)) })) => {
                let Some(shared) = shared.upgrade() else { return };
                let delivery = Delivery::from_proto(&queue, m);
                let waiter = match (delivery.correlation_id.as_deref(), shared.waiters.lock()) {
                    (Some(id), Ok(mut waiters)) => waiters.remove(id),
                    _ => None,
                };
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(Ok(delivery));
                    }
                    None => tracing::debug!(
                        queue = %queue,
                        correlation_id = ?delivery.correlation_id,
                        "dropping a reply nobody waits for"
                    ),
                }
            }
            Some(Ok(_)) => {} // a repeated `opened` or an unknown event
            Some(Err(status)) => break Error::from(status).to_string(),
            None => break "the broker ended the stream".to_owned(),
        }
    };
    tracing::debug!(queue = %queue, %reason, "reply queue closed");
    let Some(shared) = shared.upgrade() else { return };
    let Ok(mut waiters) = shared.waiters.lock() else { return };
    shared.closed.store(true, Ordering::Release);
    for (_, tx) in waiters.drain() {
        let _ = tx.send(Err(Error::ReplyQueueClosed(reason.clone())));
    }
}

fn poisoned() -> Error {
    Error::ReplyQueueClosed("internal state is poisoned by a panic".into())
}

/// A correlation id unique to this process run: a random-ish prefix (time,
/// process id and std's per-process hash seed) and a counter.
fn correlation_id() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.finish()
    });
    format!("{prefix:016x}-{:x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlation_ids_are_unique() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| correlation_id()).collect();
        assert_eq!(ids.len(), 1000);
    }
}
