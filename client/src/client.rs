//! [`Client`]: one gRPC channel to a broker plus the tenant every call is made
//! for; the entry point that hands out producers, consumers and admin calls.

use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::sync::RwLock;

use strata_proto::v1::GetMetadataRequest;
use strata_proto::v1::GetMetadataResponse;
use strata_proto::v1::admin_client::AdminClient;
use strata_proto::v1::groups_client::GroupsClient;
use strata_proto::v1::log_client::LogClient;
use strata_proto::v1::queues_client::QueuesClient;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::Error;
use crate::queue::ReplySlot;
use crate::routing::{Learned, MAX_REDIRECTS, Router, Target};

/// Largest gRPC message the client sends or accepts (64 MiB), so one request
/// can hold a large batch and one fetch response several.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Deadline applied to unary calls (admin, list offsets) unless changed with
/// [`Client::with_timeout`]. Streams have no deadline; they are watched by
/// their own keep-alive logic.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach a broker: TLS trust and client identity, and the bearer
/// token sent on every call (unary and streaming).
#[derive(Clone, Default)]
pub struct ConnectOptions {
    ca_pem: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    token: Option<String>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity.is_some())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ConnectOptions {
    /// No TLS settings and no token (plaintext, anonymous).
    pub fn new() -> ConnectOptions {
        ConnectOptions::default()
    }

    /// PEM CA certificates the broker's certificate must chain to (without
    /// one, `https://` URLs use the system's roots).
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> ConnectOptions {
        self.ca_pem = Some(pem.into());
        self
    }

    /// A client certificate and its key (PEM), for mTLS.
    pub fn identity_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> ConnectOptions {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// The bearer token (`strata_…`, or the admin token).
    pub fn token(mut self, token: impl Into<String>) -> ConnectOptions {
        self.token = Some(token.into());
        self
    }

    fn uses_tls(&self) -> bool {
        self.ca_pem.is_some() || self.identity.is_some()
    }
}

/// Adds `authorization: Bearer …` to every call; shared by a client's
/// clones, so [`Client::set_token`] switches all of them at once.
#[derive(Clone, Debug, Default)]
pub(crate) struct Credentials(Arc<RwLock<Option<MetadataValue<Ascii>>>>);

impl Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let value = self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let Some(v) = value {
            request.metadata_mut().insert("authorization", v);
        }
        Ok(request)
    }
}

fn bearer(token: &str) -> Result<MetadataValue<Ascii>, Error> {
    format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| Error::InvalidArgument("a token is printable ASCII without line breaks".into()))
}

/// An endpoint for `url` with the settings every connection uses.
pub(crate) fn endpoint(url: &str, options: &ConnectOptions) -> Result<Endpoint, Error> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| Error::InvalidUrl { url: url.to_owned(), cause: Arc::new(e) })?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        // Detect dead connections under long-lived fetch streams.
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        // The h2 default window (64 KiB) would throttle 256 KiB batches.
        .initial_stream_window_size(Some(8 * 1024 * 1024))
        .initial_connection_window_size(Some(32 * 1024 * 1024));
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        match &options.ca_pem {
            Some(ca) => tls = tls.ca_certificate(Certificate::from_pem(ca)),
            None => tls = tls.with_native_roots(),
        }
        if let Some((cert, key)) = &options.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        endpoint =
            endpoint.tls_config(tls).map_err(|e| Error::InvalidUrl { url: url.to_owned(), cause: Arc::new(e) })?;
    } else if options.uses_tls() {
        return Err(Error::InvalidArgument(format!("TLS settings need an https:// server URL, not {url}")));
    }
    Ok(endpoint)
}

/// The transport every RPC client of this crate uses.
pub(crate) type Transport = InterceptedService<Channel, Credentials>;

/// A connection to a Strata broker.
///
/// Cheap to clone: clones share the underlying HTTP/2 connection.
#[derive(Clone, Debug)]
pub struct Client {
    /// Connections (one per broker) and routes, shared by every clone.
    router: Arc<Router>,
    credentials: Credentials,
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
        Client::connect_with(url, ConnectOptions::default()).await
    }

    /// Connects with TLS settings and a token. A URL without a scheme gets
    /// `https://` when TLS settings are given, else `http://`.
    ///
    /// `url` may list several brokers of one cluster, separated by commas:
    /// the first that accepts a connection bootstraps the client, the others
    /// stay known for metadata look-ups when it goes away. Requests for a
    /// partition, queue or group then go to the broker serving it (see
    /// ARCHITECTURE.md, "Client routing").
    pub async fn connect_with(url: &str, options: ConnectOptions) -> Result<Client, Error> {
        let urls: Vec<String> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                if u.contains("://") {
                    u.to_owned()
                } else if options.uses_tls() {
                    format!("https://{u}")
                } else {
                    format!("http://{u}")
                }
            })
            .collect();
        if urls.is_empty() {
            return Err(Error::InvalidArgument("no broker URL given".into()));
        }
        let credentials = Credentials::default();
        if let Some(t) = &options.token {
            *credentials.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(bearer(t)?);
        }
        let mut endpoints = Vec::with_capacity(urls.len());
        for u in &urls {
            endpoints.push(endpoint(u, &options)?);
        }
        let mut first_error = None;
        let mut connected = None;
        for (u, e) in urls.iter().zip(endpoints) {
            match e.connect().await {
                Ok(channel) => {
                    connected = Some((Arc::<str>::from(u.as_str()), channel));
                    break;
                }
                Err(e) => {
                    first_error.get_or_insert(Error::Connect { url: u.clone(), cause: Arc::new(e) });
                }
            }
        }
        let Some(first) = connected else {
            return Err(first_error.unwrap_or_else(|| Error::InvalidArgument("no broker URL given".into())));
        };
        let others = urls.iter().map(|u| Arc::<str>::from(u.as_str())).collect();
        let url = first.0.clone();
        Ok(Client {
            router: Arc::new(Router::new(options, credentials.clone(), first, others)),
            credentials,
            url,
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

    /// The URL of the broker this client bootstrapped from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The broker (its URL) requests for `partition` of `topic` go to, as
    /// last learned from metadata or a NOT_LEADER answer; `None` while not
    /// known (standalone: the bootstrap broker, once it said so).
    pub fn partition_route(&self, topic: &str, partition: u32) -> Option<String> {
        self.router.cached(&self.tenant, Target::Partition(topic, partition)).map(|u| u.to_string())
    }

    /// Points the route of a partition at `url` regardless of who owns it,
    /// as if the route table were stale. For tests of NOT_LEADER handling.
    #[doc(hidden)]
    pub fn set_partition_route(&self, topic: &str, partition: u32, url: &str) {
        self.router.set(&self.tenant, Target::Partition(topic, partition), Some(url.into()));
    }

    /// The deadline of unary calls.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Replaces the bearer token of this client and all its clones (token
    /// rotation: calls and streams opened from now on carry the new one).
    pub fn set_token(&self, token: Option<&str>) -> Result<(), Error> {
        let value = token.map(bearer).transpose()?;
        *self.credentials.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = value;
        Ok(())
    }

    /// The channel to a broker for general requests (admin, metadata,
    /// producer ids), with this client's credentials.
    pub(crate) fn channel(&self) -> Transport {
        self.router.channel(&self.router.any())
    }

    pub(crate) fn log_rpc(&self) -> LogClient<Transport> {
        LogClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub(crate) fn admin_rpc(&self) -> AdminClient<Transport> {
        AdminClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub(crate) fn queues_rpc(&self) -> QueuesClient<Transport> {
        QueuesClient::new(self.channel())
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

// ---- routing -------------------------------------------------------------

impl Client {
    pub(crate) fn router(&self) -> &Arc<Router> {
        &self.router
    }

    pub(crate) fn log_rpc_at(&self, url: &Arc<str>) -> LogClient<Transport> {
        LogClient::new(self.router.channel(url))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub(crate) fn queues_rpc_at(&self, url: &Arc<str>) -> QueuesClient<Transport> {
        QueuesClient::new(self.router.channel(url))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub(crate) fn groups_rpc_at(&self, url: &Arc<str>) -> GroupsClient<Transport> {
        GroupsClient::new(self.router.channel(url))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The broker serving `target`: from the route table, else looked up;
    /// when no broker can say, a bootstrap broker (whose NOT_LEADER answer
    /// names the owner).
    pub(crate) async fn route(&self, target: Target<'_>) -> Arc<str> {
        if let Some(url) = self.router.cached(&self.tenant, target) {
            return url;
        }
        if let Err(error) = self.refresh_route(target).await {
            tracing::debug!(?target, %error, "route look-up failed; asking a bootstrap broker");
        }
        self.router.cached(&self.tenant, target).unwrap_or_else(|| self.router.any())
    }

    /// Looks up where `target` is served (and updates the route table).
    pub(crate) async fn refresh_route(&self, target: Target<'_>) -> Result<GetMetadataResponse, Error> {
        self.router.refresh(&self.tenant, self.metadata_request(target), self.timeout).await
    }

    /// [`Client::refresh_route`] without waiting for it.
    pub(crate) fn refresh_route_in_background(&self, target: Target<'_>) {
        let router = self.router.clone();
        let (tenant, request, timeout) = (self.tenant.clone(), self.metadata_request(target), self.timeout);
        tokio::spawn(async move {
            if let Err(error) = router.refresh(&tenant, request, timeout).await {
                tracing::debug!(%error, "background metadata refresh failed");
            }
        });
    }

    fn metadata_request(&self, target: Target<'_>) -> GetMetadataRequest {
        let mut request = GetMetadataRequest { tenant: self.tenant.to_string(), ..Default::default() };
        match target {
            Target::Partition(topic, _) => request.topics = vec![topic.to_owned()],
            Target::Queue(_) => request.queues = true,
            Target::Group(group) => request.groups = vec![group.to_owned()],
        }
        request
    }

    /// Applies what a failed request to `asked` about `target` says about
    /// routes (see [`Router::learn`]).
    pub(crate) fn learn(&self, target: Target<'_>, asked: &str, error: &Error) -> Learned {
        let learned = self.router.learn(&self.tenant, target, asked, error);
        if learned == Learned::Nothing && error.is_retryable() {
            // The broker may be gone: look the route up again, from another
            // broker if need be, before the caller's retry.
            self.router.forget(&self.tenant, target);
            self.refresh_route_in_background(target);
        }
        learned
    }

    /// Runs a unary call on the broker serving `target`, following up to
    /// [`MAX_REDIRECTS`] NOT_LEADER answers to the owner they name. Other
    /// errors are returned (a retryable one also refreshes the route), so
    /// the caller's retry policy applies.
    pub(crate) async fn routed<T, F, Fut>(&self, target: Target<'_>, mut call: F) -> Result<T, Error>
    where
        F: FnMut(Arc<str>) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut url = self.route(target).await;
        for _ in 0..MAX_REDIRECTS {
            let error = match call(url.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            match self.learn(target, &url, &error) {
                Learned::Moved(next) => url = next,
                Learned::NoOwner | Learned::Nothing => return Err(error),
            }
        }
        call(url).await
    }
}
