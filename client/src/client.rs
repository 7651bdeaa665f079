//! [`Client`]: one gRPC channel to a broker plus the tenant every call is made
//! for; the entry point that hands out producers, consumers and admin calls.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use strata_proto::v1::GetMetadataRequest;
use strata_proto::v1::GetMetadataResponse;
use strata_proto::v1::admin_client::AdminClient;
use strata_proto::v1::groups_client::GroupsClient;
use strata_proto::v1::log_client::LogClient;
use strata_proto::v1::queues_client::QueuesClient;

pub use crate::connect::ConnectOptions;
use crate::connect::bearer;
pub(crate) use crate::connect::{Credentials, Transport, endpoint};
use crate::error::Error;
use crate::routing::{Learned, MAX_REDIRECTS, Router, Target};

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
    /// Connections (one per broker) and routes, shared by every clone.
    router: Arc<Router>,
    credentials: Credentials,
    url: Arc<str>,
    tenant: Arc<str>,
    timeout: Duration,
    /// What other parts of the crate keep per client (the request-reply
    /// queue of [`Client::call`], opened on first use), shared by every
    /// clone for the same tenant and dropped with the last one.
    state: Arc<ClientState>,
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
            state: Arc::new(ClientState::default()),
        })
    }

    /// A client for another tenant sharing this client's connection (but
    /// not its request-reply queue, which belongs to one tenant).
    pub fn with_tenant(&self, tenant: impl Into<String>) -> Client {
        Client { tenant: tenant.into().into(), state: Arc::new(ClientState::default()), ..self.clone() }
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

    /// This client's `T` (made on first use; see [`ClientState`]).
    pub(crate) fn state<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        self.state.get()
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

    /// One RPC at the broker serving `target`, as [`routed`](Self::routed):
    /// `call` gets the service's stub ([`Queues`], [`Groups`]) for that
    /// broker and the request (a copy of `req` per attempt, with this
    /// client's timeout); the answer's body.
    pub(crate) async fn rpc<S: Stub, Req, Resp, Fut>(
        &self,
        target: Target<'_>,
        req: Req,
        call: impl Fn(S, tonic::Request<Req>) -> Fut,
    ) -> Result<Resp, Error>
    where
        Req: Clone,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.routed(target, |url| {
            let answer = call(S::at(self, &url), self.request(req.clone()));
            async move { answer.await.map(tonic::Response::into_inner).map_err(Error::from) }
        })
        .await
    }
}

/// The `Queues` service's stub.
pub(crate) type Queues = QueuesClient<Transport>;
/// The `Groups` service's stub.
pub(crate) type Groups = GroupsClient<Transport>;

/// A service stub [`Client::rpc`] makes for the broker it calls.
pub(crate) trait Stub {
    fn at(client: &Client, url: &Arc<str>) -> Self;
}

impl Stub for Queues {
    fn at(client: &Client, url: &Arc<str>) -> Self {
        client.queues_rpc_at(url)
    }
}

impl Stub for Groups {
    fn at(client: &Client, url: &Arc<str>) -> Self {
        client.groups_rpc_at(url)
    }
}

/// Per-client state kept by other modules, one value per type (today the
/// request-reply queue's slot, `queue/reply.rs`), so the client holds it
/// without depending on those modules.
#[derive(Default)]
pub(crate) struct ClientState(std::sync::Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>);

impl ClientState {
    /// The `T` of this client, made on first use.
    fn get<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        let mut values = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let value = values.entry(TypeId::of::<T>()).or_insert_with(|| Arc::new(T::default())).clone();
        value.downcast::<T>().unwrap_or_else(|_| unreachable!("values are keyed by their type"))
    }
}

impl std::fmt::Debug for ClientState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |v| v.len());
        f.debug_struct("ClientState").field("values", &n).finish()
    }
}
