//! Bounded connections: every accepted gRPC connection holds a permit of
//! `limits.max_connections`; a connection beyond it is closed at once (the
//! client sees UNAVAILABLE straight away instead of waiting), counted and
//! logged, so a flood of idle sockets can never take the descriptors and
//! memory that serving clients need.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::metrics::Metrics;
use crate::quota::Quotas;

/// An accepted connection and its permit (returned when it closes).
pub(crate) struct Limited {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// The connection leaves its tenant's connection count when it closes.
    peer: std::net::SocketAddr,
    quotas: Arc<Quotas>,
}

impl Drop for Limited {
    fn drop(&mut self) {
        self.quotas.disconnected(self.peer);
    }
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The accepted connections within `max` at a time; the others are closed
/// as soon as they are accepted. Accept errors (a transient EMFILE, a
/// connection reset before accept) are logged and skipped: they never end
/// the server.
pub(crate) fn limited(
    listener: tokio::net::TcpListener,
    max: usize,
    metrics: Arc<Metrics>,
    quotas: Arc<Quotas>,
) -> impl Stream<Item = io::Result<Limited>> + Send + 'static {
    let slots = Arc::new(Semaphore::new(max));
    futures::stream::unfold((listener, slots, metrics), move |(listener, slots, metrics)| {
        let quotas = quotas.clone();
        async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        // EMFILE and the like: give descriptors a moment to free.
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        continue;
                    }
                };
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let _ = stream.set_nodelay(true);
                        let conn = Limited { stream, _permit: permit, peer, quotas };
                        return Some((Ok(conn), (listener, slots, metrics)));
                    }
                    Err(_) => {
                        metrics
                            .rejections
                            .get_or_create(&crate::metrics::RejectLabels { reason: "max_connections" })
                            .inc();
                        tracing::warn!(%peer, limit = max, "connection refused: limits.max_connections reached");
                        drop(stream);
                    }
                }
            }
        }
    })
}
