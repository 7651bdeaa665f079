//! Batched acknowledgements: [`Receiver::ack`](crate::Receiver::ack) calls
//! made one message at a time (from one task or many) are gathered into
//! `Ack` requests by one background task per receiver.
//!
//! The same rule as the producers' linger: an ack that finds no request in
//! flight goes at once; while requests are in flight, acks gather until
//! [`MAX_ACK_BATCH`] of them wait or the oldest waited [`ACK_LINGER`], and at
//! most [`MAX_ACK_REQUESTS`] requests are in flight. Each caller gets the
//! outcome of its own receipt.

use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use strata_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::message::Receipt;
use crate::client::{Client, Queues};
use crate::error::{Error, ServerError};
use crate::routing::Target;

/// Most receipts in one `Ack` request.
pub(crate) const MAX_ACK_BATCH: usize = 1000;
/// Longest an ack waits for company while requests are in flight.
pub(crate) const ACK_LINGER: Duration = Duration::from_millis(2);
/// `Ack` requests in flight at once.
pub(crate) const MAX_ACK_REQUESTS: usize = 4;

type Waiter = oneshot::Sender<Result<(), Error>>;

/// Handle to a receiver's ack task; the task ends when the handle is dropped
/// (after answering every ack it has).
#[derive(Debug)]
pub(crate) struct Acker {
    tx: mpsc::UnboundedSender<(Receipt, Waiter)>,
}

impl Acker {
    pub(crate) fn start(client: Client, queue: String) -> Acker {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(client, queue, rx));
        Acker { tx }
    }

    /// Acknowledges one receipt with the next batch; resolves with its own
    /// outcome.
    pub(crate) async fn ack(&self, receipt: Receipt) -> Result<(), Error> {
        let (done, rx) = oneshot::channel();
        self.tx.send((receipt, done)).map_err(|_| Error::ConsumerClosed)?;
        rx.await.map_err(|_| Error::ConsumerClosed)?
    }
}

async fn run(client: Client, queue: String, mut rx: mpsc::UnboundedReceiver<(Receipt, Waiter)>) {
    let mut pending: Vec<(Receipt, Waiter)> = Vec::new();
    let mut oldest = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    loop {
        let due = !pending.is_empty()
            && in_flight.len() < MAX_ACK_REQUESTS
            && (in_flight.is_empty() || pending.len() >= MAX_ACK_BATCH || oldest + ACK_LINGER <= Instant::now());
        if due {
            let n = pending.len().min(MAX_ACK_BATCH);
            let batch: Vec<(Receipt, Waiter)> = pending.drain(..n).collect();
            oldest = Instant::now();
            in_flight.push(send(client.clone(), queue.clone(), batch));
            continue;
        }
        if !open && pending.is_empty() && in_flight.is_empty() {
            return;
        }
        let linger = (!pending.is_empty() && !in_flight.is_empty()).then_some(oldest + ACK_LINGER);
        tokio::select! {
            got = rx.recv(), if open && pending.len() < MAX_ACK_BATCH => match got {
                Some(item) => {
                    if pending.is_empty() {
                        oldest = Instant::now();
                    }
                    pending.push(item);
                    while pending.len() < MAX_ACK_BATCH {
                        match rx.try_recv() {
                            Ok(item) => pending.push(item),
                            Err(_) => break,
                        }
                    }
                }
                None => open = false,
            },
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            () = async { tokio::time::sleep_until(linger.unwrap_or_else(Instant::now)).await }, if linger.is_some() => {}
        }
    }
}

async fn send(client: Client, queue: String, batch: Vec<(Receipt, Waiter)>) {
    let req = pb::AckRequest {
        tenant: client.tenant().to_owned(),
        queue,
        receipts: batch.iter().map(|(r, _)| pb::Receipt::from(*r)).collect(),
    };
    let queue = req.queue.clone();
    let acked = client.rpc(Target::Queue(&queue), req, |mut c: Queues, r| async move { c.ack(r).await }).await;
    match acked {
        Ok(resp) => {
            let mut failed: Vec<pb::FailedReceipt> = resp.failed;
            for (receipt, waiter) in batch {
                let refusal = failed.iter().position(|f| {
                    f.receipt.is_some_and(|r| {
                        r.message_id == receipt.message_id && r.delivery_count == receipt.delivery_count
                    })
                });
                let outcome = match refusal {
                    None => Ok(()),
                    Some(i) => Err(refused(failed.swap_remove(i))),
                };
                let _ = waiter.send(outcome);
            }
        }
        Err(error) => {
            for (_, waiter) in batch {
                let _ = waiter.send(Err(error.clone()));
            }
        }
    }
}

/// The error one refused receipt resolves with (as a single `ack` reports it).
fn refused(f: pb::FailedReceipt) -> Error {
    let receipt = f.receipt.unwrap_or_default();
    let error = f.error.map(ServerError::from).unwrap_or_else(|| {
        ServerError::from(pb::ItemError {
            status_code: tonic::Code::Unknown as i32,
            message: "refused without a reason".into(),
            info: None,
        })
    });
    tracing::debug!(message_id = receipt.message_id, delivery = receipt.delivery_count, %error, "ack refused");
    Error::Server(Box::new(error))
}
