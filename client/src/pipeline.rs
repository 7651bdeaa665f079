//! What the topic producer and the queue producer share: the commands of
//! their background task, and the one bidirectional stream such a task
//! keeps to a broker (its states, its next event, opening it with a
//! deadline).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;

use crate::error::Error;

/// What a producer handle asks of its background task. (`Send` is the hot
/// variant, not boxed: boxing it would cost an allocation per message.)
pub(crate) enum Command<P> {
    Send(P),
    Flush(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
}

/// Asks the task to send everything enqueued so far and waits until it did.
pub(crate) async fn flush<P>(commands: &mpsc::UnboundedSender<Command<P>>) -> Result<(), Error> {
    let (tx, rx) = oneshot::channel();
    commands.send(Command::Flush(tx)).map_err(|_| Error::ProducerClosed)?;
    rx.await.map_err(|_| Error::ProducerClosed)
}

/// Asks the task to flush and stop, and waits until it is done; a task
/// already gone is done.
pub(crate) async fn close<P>(commands: &mpsc::UnboundedSender<Command<P>>) -> Result<(), Error> {
    let (tx, rx) = oneshot::channel();
    if commands.send(Command::Close(tx)).is_err() {
        return Ok(());
    }
    // The task dropping the sender also means it is done.
    let _ = rx.await;
    Ok(())
}

/// Polls the answer to one message (a closed channel: the producer
/// closed), ending the message's `send` span (tracing on) with it:
/// `on_success` adds what the broker said to the span.
pub(crate) fn poll_answer<T>(
    rx: &mut oneshot::Receiver<Result<T, Error>>,
    span: &mut Option<strata_telemetry::BoxedSpan>,
    cx: &mut Context<'_>,
    on_success: impl FnOnce(&T, &mut strata_telemetry::BoxedSpan),
) -> Poll<Result<T, Error>> {
    let out = Pin::new(rx).poll(cx).map(|r| r.unwrap_or(Err(Error::ProducerClosed)));
    if let Poll::Ready(r) = &out
        && let Some(mut span) = span.take()
    {
        use strata_telemetry::{Span, SpanStatus};
        match r {
            Ok(answer) => on_success(answer, &mut span),
            Err(e) => span.set_status(SpanStatus::error(e.to_string())),
        }
        span.end();
    }
    out
}

pub(crate) type StreamResult<Resp> = Result<Streaming<Resp>, Error>;

/// A task's stream to a broker.
pub(crate) enum Conn<Req, Resp> {
    /// No stream; one is opened when there is something to send.
    Idle,
    /// Waiting before reconnecting.
    Backoff(Instant),
    /// Opening. Requests may already be queued on `tx`.
    Connecting {
        tx: mpsc::Sender<Req>,
        open: BoxFuture<'static, StreamResult<Resp>>,
    },
    Up {
        tx: mpsc::Sender<Req>,
        rx: Box<Streaming<Resp>>,
    },
}

impl<Req: Send + 'static, Resp> Conn<Req, Resp> {
    /// Starts opening a stream: `open` makes the call with the stream of
    /// requests; at most `capacity` requests wait in it, and the call fails
    /// with a timeout naming `operation` when the broker does not answer
    /// within `timeout`.
    pub(crate) fn connecting<F, Fut>(capacity: usize, timeout: Duration, operation: &'static str, open: F) -> Self
    where
        F: FnOnce(ReceiverStream<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Streaming<Resp>>, tonic::Status>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(capacity);
        let call = open(ReceiverStream::new(rx));
        let open = async move {
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok(response)) => Ok(response.into_inner()),
                Ok(Err(status)) => Err(Error::from(status)),
                Err(_) => Err(Error::Timeout { operation, timeout }),
            }
        }
        .boxed();
        Conn::Connecting { tx, open }
    }

    /// Where requests go, while the stream is opening or up.
    pub(crate) fn sender(&self) -> Option<&mpsc::Sender<Req>> {
        match self {
            Conn::Connecting { tx, .. } | Conn::Up { tx, .. } => Some(tx),
            Conn::Idle | Conn::Backoff(_) => None,
        }
    }
}

// One event at a time, never stored: boxing would only add an allocation.
// (Both variants are large for every instance; clippy sees a generic one.)
#[allow(clippy::large_enum_variant)]
pub(crate) enum ConnEvent<Resp> {
    Opened(StreamResult<Resp>),
    Response(Result<Option<Resp>, tonic::Status>),
}

/// Waits for the next thing the connection has to say; pending forever when
/// it has nothing. Cancel-safe: the opening future lives in `conn`, and
/// `Streaming::message` loses nothing when dropped.
pub(crate) async fn conn_event<Req, Resp>(conn: &mut Conn<Req, Resp>) -> ConnEvent<Resp> {
    match conn {
        Conn::Connecting { open, .. } => ConnEvent::Opened(open.await),
        Conn::Up { rx, .. } => ConnEvent::Response(rx.message().await),
        Conn::Idle | Conn::Backoff(_) => std::future::pending().await,
    }
}
