//! The gRPC front end: the Strata services plus standard health and
//! reflection, on one tonic server.

mod admin;
pub(crate) mod auth;
mod connections;
mod groups;
mod log;
mod oversize;
mod queue;
mod raft;
pub(crate) mod status;
mod wire;

use std::future::Future;
use std::sync::Arc;

use strata_proto::v1::{
    admin_server::AdminServer, groups_server::GroupsServer, log_server::LogServer, queues_server::QueuesServer,
};
use tokio::net::TcpListener;

use crate::broker::Broker;
use crate::group::GroupCoordinator;
use crate::queue::QueueManager;

/// The gRPC listener and, when configured, its TLS setup.
pub(crate) struct Listener {
    pub tcp: TcpListener,
    pub tls: Option<Arc<crate::tls::ServerTls>>,
}

/// Serves until `shutdown` resolves, then waits for in-flight calls.
pub(crate) async fn serve(
    broker: Arc<Broker>,
    coordinator: Arc<GroupCoordinator>,
    queues: Arc<QueueManager>,
    cluster: Option<Arc<crate::cluster::ClusterNode>>,
    listener: Listener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<LogServer<log::LogService>>().await;
    reporter.set_serving::<AdminServer<admin::AdminService>>().await;
    reporter.set_serving::<GroupsServer<groups::GroupsService>>().await;
    reporter.set_serving::<QueuesServer<queue::QueuesService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(strata_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| {
            tracing::error!(error = %e, "reflection descriptors are invalid");
            e
        });
    // Credentials and the tenant rule (DESIGN §4.5); anonymous callers are
    // allowed unless `auth.mode = required`.
    let required = broker.config().auth.mode == crate::config::AuthMode::Required;
    let authz = Arc::new(auth::CredentialAuthorizer::new(broker.credentials().clone(), required));
    let auth: auth::Auth = auth::Gate::new(authz, Some(broker.quotas().clone()));
    let limits = &broker.config().limits;
    let max_in = (limits.max_batch_bytes.0 + 1024 * 1024) as usize;
    let max_out = (limits.max_fetch_bytes.0 + 1024 * 1024) as usize;
    // An AppendEntries carries at most `replication::MAX_PAYLOAD_ENTRIES`
    // entries, each at most one batch or `replication::MAX_ENTRY_BYTES`.
    let raft_limit = crate::replication::max_append_bytes(limits.max_batch_bytes.0 as usize).max(64 * 1024 * 1024);
    let log_service = LogServer::new(log::LogService::new(broker.clone(), auth.clone()))
        .max_decoding_message_size(max_in)
        .max_encoding_message_size(max_out);
    let admin_service = AdminServer::new(admin::AdminService::new(broker.clone(), auth.clone()));
    let groups_service = GroupsServer::new(groups::GroupsService::new(coordinator, auth.clone()));
    let queues_service = QueuesServer::new(queue::QueuesService::new(queues, auth.clone()))
        .max_decoding_message_size(max_in)
        .max_encoding_message_size(max_out);
    let mut builder = tonic::transport::Server::builder()
        .layer(crate::metrics::RpcMetricsLayer(broker.metrics().clone()))
        // Oversized messages never reach tonic's decoder (every request is answered).
        .layer(oversize::OversizeLayer {
            large: max_in,
            large_name: "limits.max_batch_bytes + 1MiB",
            large_reported: max_in as u64,
            raft: raft_limit,
        })
        .tcp_nodelay(true)
        .max_concurrent_streams(Some(limits.max_streams_per_connection))
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(16 * 1024 * 1024));
    let mut router = builder
        .add_service(health)
        .add_service(log_service)
        .add_service(admin_service)
        .add_service(groups_service)
        .add_service(queues_service)
        .add_optional_service(cluster.map(|node| {
            strata_proto::v1::raft_server::RaftServer::new(raft::RaftService::new(
                node,
                broker.replica_groups().clone(),
                auth.clone(),
            ))
            .max_decoding_message_size(raft_limit)
            .max_encoding_message_size(raft_limit)
        }));
    if let Ok(reflection) = reflection {
        router = router.add_service(reflection);
    }
    let stop_reporting = async move {
        shutdown.await;
        reporter.set_not_serving::<LogServer<log::LogService>>().await;
        reporter.set_not_serving::<AdminServer<admin::AdminService>>().await;
        reporter.set_not_serving::<GroupsServer<groups::GroupsService>>().await;
        reporter.set_not_serving::<QueuesServer<queue::QueuesService>>().await;
    };
    // Every accepted socket gets `TCP_NODELAY` (the builder's setting only
    // applies to listeners tonic binds itself; without it small responses
    // wait for Nagle + delayed ACK, ~40 ms) and a connection permit.
    let incoming = connections::limited(
        listener.tcp,
        limits.max_connections as usize,
        broker.metrics().clone(),
        broker.quotas().clone(),
    );
    match listener.tls {
        Some(tls) => router.serve_with_incoming_shutdown(tls.grpc_incoming(incoming), stop_reporting).await,
        None => router.serve_with_incoming_shutdown(incoming, stop_reporting).await,
    }
}
