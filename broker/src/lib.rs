//! The Strata broker library: configuration, the partition log, the topic
//! catalog, the broker domain service and its gRPC/HTTP front ends.
//!
//! `main.rs` only parses flags and calls [`start`]; tests call it in-process
//! with `127.0.0.1:0` listeners.

mod acl;
mod broker;
mod catalog;
pub mod clock;
mod cluster;
pub mod config;
mod error;
mod fds;
pub mod fs;
mod fsutil;
mod group;
mod grpc;
mod http;
mod locks;
pub mod log;
mod metrics;
mod names;
mod partition;
mod producer_ids;
mod queue;
mod quota;
mod replication;
mod security;
mod telemetry;
mod tier;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use broker::{Broker, OpenError};

/// Entry points of the fuzz targets in `fuzz/` (the decoders of what the
/// broker reads back from disk). Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::queue::codec_fuzzing::{journal_entry, message_meta, snapshot as queue_snapshot};
}
pub use config::Config;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("cannot recover queues: {0}")]
    Queues(#[from] error::BrokerError),
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// A broker serving on its listeners.
pub struct RunningBroker {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    broker: Arc<Broker>,
    queues: Arc<queue::QueueManager>,
    stop: watch::Sender<bool>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    http: JoinHandle<std::io::Result<()>>,
}

impl std::fmt::Debug for RunningBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningBroker").field("grpc_addr", &self.grpc_addr).field("http_addr", &self.http_addr).finish()
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
}

/// Raises the soft open-file limit to the hard one: a broker holds files
/// for its partitions, queues and connections, and the usual soft default
/// (1024) is far below what the kernel allows. Returns (before, now, hard)
/// for the start-up log; `None` when the limit cannot be read.
fn raise_open_file_limit() -> Option<(u64, u64, u64)> {
    use rlimit::Resource;
    let (soft, hard) = Resource::NOFILE.get().ok()?;
    let now = if soft < hard && Resource::NOFILE.set(hard, hard).is_ok() { hard } else { soft };
    Some((soft, now, hard))
}

/// Logs the open-file limit once the broker is up, and warns when
/// `limits.max_connections` or `limits.max_open_segments` alone could take
/// every descriptor.
fn log_open_file_limit(limits: Option<(u64, u64, u64)>, config: &Config) {
    let Some((was, now, hard)) = limits else {
        tracing::warn!("cannot read the open-file limit");
        return;
    };
    let segments = crate::fs::handles::capacity_for(config.limits.max_open_segments) as u64;
    tracing::info!(was, now, hard, max_open_segments = segments, "open-file limit");
    if u64::from(config.limits.max_connections) >= now {
        tracing::warn!(
            max_connections = config.limits.max_connections,
            open_files = now,
            "limits.max_connections is not below the open-file limit: connections could starve partitions of files"
        );
    }
    if segments >= now {
        tracing::warn!(
            max_open_segments = segments,
            open_files = now,
            "limits.max_open_segments is not below the open-file limit: segment files could take every descriptor"
        );
    }
}

/// Binds the listeners, opens (recovers) the data directory and serves.
pub async fn start(config: Config) -> Result<RunningBroker, StartError> {
    start_on(config, Arc::new(clock::SystemClock), fs::real()).await
}

/// [`start`] with `clock` and with everything the broker persists through
/// the filesystem seam on `fs` (partition logs, catalog, queues, offsets,
/// Raft logs and markers; the data directory's lock stays a real file).
/// For tests: brokers on a fault-injecting filesystem, in process.
pub(crate) async fn start_on(
    config: Config,
    clock: Arc<dyn clock::Clock>,
    fs: fs::Fs,
) -> Result<RunningBroker, StartError> {
    let open_files = raise_open_file_limit();
    // TLS files are checked before anything binds or opens.
    let server_tls = if config.tls.enabled() { Some(tls::ServerTls::load(&config.tls)?) } else { None };
    let grpc_listener = bind(config.server.listen).await?;
    let http_listener = bind(config.server.http_listen).await?;
    let grpc_addr =
        grpc_listener.local_addr().map_err(|source| StartError::Bind { addr: config.server.listen, source })?;
    let http_addr =
        http_listener.local_addr().map_err(|source| StartError::Bind { addr: config.server.http_listen, source })?;
    let broker = Broker::open_on(config, clock, fs).await?;
    let node = if broker.config().cluster.is_clustered() {
        let node = cluster::ClusterNode::start(cluster::NodeSetup {
            host: broker.clone(),
            config: broker.config(),
            fs: broker.segment_files().fs().clone(),
            admin_token: broker.admin_token().map(str::to_owned),
            shutdown: broker.shutdown_signal(),
        })
        .await?;
        broker.set_cluster(node.clone());
        broker.start_replica_groups().await;
        tokio::spawn(broker.clone().register_in_catalog());
        Some(node)
    } else {
        None
    };
    let (stop, _) = watch::channel(false);
    let stopped = |rx: watch::Receiver<bool>| async move {
        let mut rx = rx;
        let _ = rx.wait_for(|s| *s).await;
    };
    let queues = queue::QueueManager::open(broker.clone()).await?;
    tokio::spawn(broker.clone().maintenance_loop());
    tokio::spawn(queues.clone().maintenance_loop());
    tokio::spawn(broker.clone().upload_loop());
    let coordinator = group::GroupCoordinator::new(broker.clone());
    if let Some(t) = &server_tls {
        tokio::spawn(t.clone().watch(stopped(stop.subscribe())));
    }
    let grpc = tokio::spawn(grpc::serve(
        broker.clone(),
        coordinator.clone(),
        queues.clone(),
        node,
        grpc::Listener { tcp: grpc_listener, tls: server_tls.clone() },
        stopped(stop.subscribe()),
    ));
    let http = tokio::spawn(http::serve(
        broker.clone(),
        queues.clone(),
        coordinator,
        http_listener,
        server_tls,
        stopped(stop.subscribe()),
    ));
    log_open_file_limit(open_files, broker.config());
    tracing::info!(%grpc_addr, %http_addr, data_dir = %broker.config().storage.data_dir.display(), "strata-broker serving");
    Ok(RunningBroker { grpc_addr, http_addr, broker, queues, stop, grpc, http })
}

impl RunningBroker {
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Graceful stop: refuse new work, end streams, let in-flight calls
    /// finish (up to `server.shutdown_timeout`), then flush every partition.
    pub async fn shutdown(self) {
        self.broker.shutdown();
        self.stop.send_replace(true);
        let timeout = self.broker.config().server.shutdown_timeout.0;
        let grpc_abort = self.grpc.abort_handle();
        match tokio::time::timeout(timeout, self.grpc).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "gRPC server failed"),
            Ok(Err(e)) => tracing::error!(error = %e, "gRPC server task failed"),
            Err(_) => {
                tracing::warn!("in-flight requests did not finish within {timeout:?}; closing them");
                grpc_abort.abort();
            }
        }
        let _ = tokio::time::timeout(timeout, self.http).await;
        if let Some(node) = self.broker.cluster() {
            node.shutdown().await;
        }
        self.queues.close().await;
        self.broker.close().await;
        tracing::info!("strata-broker stopped; all partitions flushed");
    }
}
