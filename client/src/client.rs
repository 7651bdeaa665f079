//! [`Client`]: one gRPC channel to a broker plus the tenant every call is made
//! for; the entry point that hands out producers, consumers and admin calls.

use std::sync::Arc;
use std::time::Duration;

use strata_proto::v1::admin_client::AdminClient;
use strata_proto::v1::log_client::LogClient;
use strata_proto::v1::queues_client::QueuesClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::Error;
use crate::queue::ReplySlot;

/// Largest gRPC message the client sends or accepts (64 MiB), so one request
/// can hold a large batch and one fetch response several.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Deadline applied to unary calls (admin, list offsets) unless changed with
/// [`Client::with_timeout`]. Streams have no deadline; they are watched by
/// their own keep-alive logic.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to a Strata broker.
///
/// Cheap to clone: clones share the underlying HTTP/2 connection.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    url: Arc<str>,
    tenant: Arc<str>,
    timeout: Duration,
    /// The request-reply queue of [`Client::call`], opened on first use and
    /// shared by every clone for the same tenant; closed when the last one
    /// is dropped.
    replies: Arc<ReplySlot>,
}

impl Client {
    /// Connects to a broker, e.g. `http://127.0.0.1:7070`. A URL without a
    /// scheme gets `http://`. The tenant is the empty string, which the broker
    /// reads as the caller's own tenant (`default` with anonymous access).
    pub async fn connect(url: &str) -> Result<Client, Error> {
        let url = if url.contains("://") { url.to_owned() } else { format!("http://{url}") };
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| Error::InvalidUrl { url: url.clone(), cause: Arc::new(e) })?
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            // Detect dead connections under long-lived fetch streams.
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            // The h2 default window (64 KiB) would throttle 256 KiB batches.
            .initial_stream_window_size(Some(8 * 1024 * 1024))
            .initial_connection_window_size(Some(32 * 1024 * 1024));
        let channel = endpoint.connect().await.map_err(|e| Error::Connect { url: url.clone(), cause: Arc::new(e) })?;
        Ok(Client {
            channel,
            url: url.into(),
            tenant: "".into(),
            timeout: DEFAULT_TIMEOUT,
            replies: Arc::new(ReplySlot::default()),
        })
    }

    /// A client for another tenant sharing this client's connection (but
    /// not its request-reply queue, which belongs to one tenant).
    pub fn with_tenant(&self, tenant: impl Into<String>) -> Client {
        Client { tenant: tenant.into().into(), replies: Arc::new(ReplySlot::default()), ..self.clone() }
    }

    /// A client whose unary calls use another deadline.
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client { timeout, ..self.clone() }
    }

    /// The tenant calls are made for (empty: the caller's own tenant).
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The URL this client connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The deadline of unary calls.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The shared HTTP/2 channel.
    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub(crate) fn log_rpc(&self) -> LogClient<Channel> {
        LogClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub(crate) fn admin_rpc(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub(crate) fn queues_rpc(&self) -> QueuesClient<Channel> {
        QueuesClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The slot holding this client's request-reply queue.
    pub(crate) fn reply_slot(&self) -> &Arc<ReplySlot> {
        &self.replies
    }

    /// Wraps a unary request body with this client's deadline.
    pub(crate) fn request<T>(&self, body: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(body);
        req.set_timeout(self.timeout);
        req
    }
}
