//! How a client reaches a broker: [`ConnectOptions`] (TLS trust, client
//! identity, bearer token), the endpoint settings every connection uses,
//! and the interceptor that adds the token to every call. Shared by the
//! [`Client`](crate::Client) and the connection pool (`routing.rs`).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::Error;

/// How to reach a broker: TLS trust and client identity, and the bearer
/// token sent on every call (unary and streaming).
#[derive(Clone, Default)]
pub struct ConnectOptions {
    ca_pem: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    pub(crate) token: Option<String>,
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

    pub(crate) fn uses_tls(&self) -> bool {
        self.ca_pem.is_some() || self.identity.is_some()
    }
}

/// Adds `authorization: Bearer …` to every call; shared by a client's
/// clones, so [`Client::set_token`] switches all of them at once.
#[derive(Clone, Debug, Default)]
pub(crate) struct Credentials(pub(crate) Arc<RwLock<Option<MetadataValue<Ascii>>>>);

impl Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let value = self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let Some(v) = value {
            request.metadata_mut().insert("authorization", v);
        }
        Ok(request)
    }
}

pub(crate) fn bearer(token: &str) -> Result<MetadataValue<Ascii>, Error> {
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
