//! TLS for the broker's listeners: the rustls server configuration built from
//! PEM files, the certificate reloaded when its files change (cert-manager
//! rotates Secrets in place, so a running broker must pick up the new
//! certificate without a restart), optional client-certificate verification
//! (mTLS), handshakes off the accept loop, and the client side of
//! broker-to-broker (Raft) traffic.
//!
//! The certificate is served through [`ReloadingCert`], a
//! `ResolvesServerCert` holding the current `CertifiedKey` behind a lock: a
//! reload swaps it, and every handshake after the swap presents the new one.
//! Established connections keep the session they negotiated.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::TlsConfig;
use crate::locks::{read_lock, write_lock};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: io::Error },
    #[error("{what} {path} holds no usable PEM {kind}: {message}")]
    Pem { what: &'static str, path: PathBuf, kind: &'static str, message: String },
    #[error("the private key {key} does not fit the certificate {cert}: {message}")]
    Mismatch { cert: PathBuf, key: PathBuf, message: String },
    #[error("invalid TLS setup: {0}")]
    Setup(String),
}

/// The crypto provider the broker uses (ring: no C toolchain beyond cc).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_path_buf(), source })
}

/// All certificates of a PEM file (at least one).
pub(crate) fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(what, path)?;
    let pem_err = |message: String| TlsError::Pem { what, path: path.to_path_buf(), kind: "certificate", message };
    let certs =
        CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| pem_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file("private key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        what: "private key",
        path: path.to_path_buf(),
        kind: "private key",
        message: e.to_string(),
    })
}

/// Reads the certificate chain and key and checks that they belong together.
fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = load_certs("certificate", cert)?;
    let key_der = load_key(key)?;
    let ck = CertifiedKey::from_der(chain, key_der, &provider()).map_err(|e| TlsError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(Arc::new(ck))
}

/// The served certificate, swapped in place when its files change.
#[derive(Debug)]
pub(crate) struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(read_lock(&self.current).clone())
    }
}

/// What identifies a version of a file: modification time, size and inode
/// (Kubernetes swaps a Secret volume's `..data` symlink, so the inode
/// changes even when the time does not).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Some(FileStamp { modified: m.modified().ok(), len: m.len(), inode })
}

/// The broker's TLS setup: one certificate resolver shared by the gRPC and
/// HTTP server configurations.
#[derive(Debug)]
pub(crate) struct ServerTls {
    cert_path: PathBuf,
    key_path: PathBuf,
    resolver: Arc<ReloadingCert>,
    grpc: Arc<rustls::ServerConfig>,
    http: Arc<rustls::ServerConfig>,
    reload_interval: Duration,
}

impl ServerTls {
    /// Loads the certificate, key and (optional) client CA and builds the
    /// server configurations. Fails with the file and the reason.
    pub(crate) fn load(config: &TlsConfig) -> Result<Arc<ServerTls>, TlsError> {
        let ck = load_certified_key(&config.cert, &config.key)?;
        let resolver = Arc::new(ReloadingCert { current: RwLock::new(ck) });
        // `require`: whether a client certificate is mandatory. The HTTP
        // listener never requires one: its probes stay open (kubelets and
        // load balancers present none), `/metrics` has its own token check.
        let build = |alpn: &[&[u8]], require: bool| -> Result<Arc<rustls::ServerConfig>, TlsError> {
            let builder = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Setup(e.to_string()))?;
            let builder = if config.client_ca.as_os_str().is_empty() {
                builder.with_no_client_auth()
            } else {
                let mut roots = rustls::RootCertStore::empty();
                for ca in load_certs("client CA", &config.client_ca)? {
                    roots.add(ca).map_err(|e| TlsError::Pem {
                        what: "client CA",
                        path: config.client_ca.clone(),
                        kind: "CA certificate",
                        message: e.to_string(),
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
                let verifier = if require { verifier } else { verifier.allow_unauthenticated() };
                builder.with_client_cert_verifier(verifier.build().map_err(|e| TlsError::Setup(e.to_string()))?)
            };
            let mut server = builder.with_cert_resolver(resolver.clone());
            server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(Arc::new(server))
        };
        Ok(Arc::new(ServerTls {
            cert_path: config.cert.clone(),
            key_path: config.key.clone(),
            grpc: build(&[b"h2"], config.require_client_cert)?,
            http: build(&[b"http/1.1"], false)?,
            resolver,
            reload_interval: config.reload_interval.0,
        }))
    }

    /// Re-reads the certificate and key; a bad pair is reported and the
    /// served certificate stays as it was.
    fn reload(&self) -> Result<(), TlsError> {
        let ck = load_certified_key(&self.cert_path, &self.key_path)?;
        *write_lock(&self.resolver.current) = ck;
        Ok(())
    }

    /// Watches the certificate and key files until `stop` resolves and
    /// reloads them when either changes. A half-written pair (the key not
    /// matching yet) is retried at the next tick.
    pub(crate) async fn watch(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let stamps = || (stamp(&self.cert_path), stamp(&self.key_path));
        let mut seen = stamps();
        let mut tick = tokio::time::interval(self.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
            }
            let now = stamps();
            if now == seen {
                continue;
            }
            match self.reload() {
                Ok(()) => {
                    tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
                    seen = now;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TLS certificate changed but cannot be loaded; serving the previous one")
                }
            }
        }
    }

    /// Handshakes of accepted connections, each in its own task (bounded by
    /// a timeout), so a slow or silent client never holds up the accept
    /// loop; failed handshakes are logged and dropped.
    pub(crate) fn grpc_incoming<S, IO>(
        &self,
        accepted: S,
    ) -> impl Stream<Item = io::Result<TlsStream<IO>>> + Send + 'static
    where
        S: Stream<Item = io::Result<IO>> + Send + 'static,
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        handshakes(TlsAcceptor::from(self.grpc.clone()), accepted.filter_map(|c| async move { c.ok() }))
            .map(Ok::<_, io::Error>)
    }

    /// The HTTP listener's TLS connections (HTTP/1.1), with their peers.
    pub(crate) fn http_listener(&self, listener: tokio::net::TcpListener) -> io::Result<HttpsListener> {
        let local = listener.local_addr()?;
        let accepted = futures::stream::unfold(listener, |l| async move {
            loop {
                match l.accept().await {
                    Ok((s, peer)) => return Some((PeerStream(s, peer), l)),
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting an HTTP connection failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        });
        let (tx, rx) = mpsc::channel(64);
        let mut conns = Box::pin(handshakes(TlsAcceptor::from(self.http.clone()), accepted));
        tokio::spawn(async move {
            while let Some(c) = conns.next().await {
                let peer = c.get_ref().0.1;
                if tx.send((c, peer)).await.is_err() {
                    return;
                }
            }
        });
        Ok(HttpsListener { rx, local })
    }
}

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn handshakes<S, IO>(acceptor: TlsAcceptor, accepted: S) -> impl Stream<Item = TlsStream<IO>> + Send + 'static
where
    S: Stream<Item = IO> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut accepted = Box::pin(accepted);
        while let Some(conn) = accepted.next().await {
            if tx.is_closed() {
                return;
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(tls).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A TCP stream with its peer address (for the HTTP listener's log).
#[derive(Debug)]
pub(crate) struct PeerStream(tokio::net::TcpStream, std::net::SocketAddr);

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The HTTPS listener axum serves from: connections whose handshake is done.
#[derive(Debug)]
pub(crate) struct HttpsListener {
    rx: mpsc::Receiver<(TlsStream<PeerStream>, std::net::SocketAddr)>,
    local: std::net::SocketAddr,
}

impl axum::serve::Listener for HttpsListener {
    type Io = TlsStream<PeerStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The handshake task ends only with the runtime.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The client side of broker-to-broker traffic when TLS is on: brokers
/// trust the client CA (the cluster CA that signs their certificates) and
/// present their own certificate.
#[derive(Debug, Clone)]
pub(crate) struct PeerTls {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl PeerTls {
    /// `None` when TLS is off. With TLS but no client CA, the broker's own
    /// certificate chain is trusted (a self-signed or single-CA setup).
    pub(crate) fn from_config(config: &TlsConfig) -> Result<Option<PeerTls>, TlsError> {
        if !config.enabled() {
            return Ok(None);
        }
        let ca_path = if config.client_ca.as_os_str().is_empty() { &config.cert } else { &config.client_ca };
        Ok(Some(PeerTls {
            ca_pem: read_file("client CA", ca_path)?,
            cert_pem: read_file("certificate", &config.cert)?,
            key_pem: read_file("private key", &config.key)?,
        }))
    }

    pub(crate) fn client_config(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

/// The principal name a verified client certificate carries: its subject
/// CN, else its first DNS subject alternative name.
pub(crate) fn certificate_identity(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    if let Some(cn) = parsed.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()) {
        return Some(cn.to_owned());
    }
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
        _ => None,
    })
}
