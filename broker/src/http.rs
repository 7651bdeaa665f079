//! The HTTP endpoint: `/healthz` (the process is alive), `/readyz` (the
//! broker has recovered its data and accepts requests) and `/metrics`
//! (Prometheus text format).

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::broker::Broker;
use crate::group::GroupCoordinator;
use crate::metrics::{GroupLabels, PartitionLabels};
use crate::queue::QueueManager;

#[derive(Clone)]
struct AppState {
    broker: Arc<Broker>,
    queues: Arc<QueueManager>,
    groups: Arc<GroupCoordinator>,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.broker.is_ready() { (StatusCode::OK, "ready\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n") }
}

/// Gauges come from the live state at scrape time; counters are kept as
/// requests happen.
async fn metrics(State(s): State<AppState>, headers: axum::http::HeaderMap) -> axum::response::Response {
    if !s.broker.config().auth.open_metrics {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let admin = bearer.and_then(|t| s.broker.credentials().by_token(t));
        if admin != Some(crate::security::Identity::ClusterAdmin) {
            return (StatusCode::UNAUTHORIZED, "authorization: Bearer <admin token> required\n").into_response();
        }
    }
    let m = s.broker.metrics();
    for g in [
        &m.log_end_offset,
        &m.log_start_offset,
        &m.log_size,
        &m.tier_upload_lag,
        &m.tier_remote_bytes,
        &m.tier_remote_end_offset,
    ] {
        g.clear();
    }
    for (tenant, topic, parts) in s.broker.partition_stats() {
        for (p, (st, pending)) in parts.iter().enumerate() {
            let l = PartitionLabels { tenant: tenant.clone(), topic: topic.clone(), partition: p as u32 };
            m.log_end_offset.get_or_create(&l).set(st.high_watermark as i64);
            m.log_start_offset.get_or_create(&l).set(st.start_offset as i64);
            m.log_size.get_or_create(&l).set(st.size_bytes as i64);
            if st.remote_segments > 0 || *pending > 0 {
                m.tier_upload_lag.get_or_create(&l).set(*pending as i64);
                m.tier_remote_bytes.get_or_create(&l).set(st.remote_bytes as i64);
                m.tier_remote_end_offset.get_or_create(&l).set(st.remote_end_offset as i64);
            }
        }
    }
    for g in [&m.partition_leader, &m.partition_under_replicated, &m.partition_replication_lag] {
        g.clear();
    }
    for g in s.broker.replica_groups().all() {
        let id = g.partition_id();
        let l =
            PartitionLabels { tenant: id.tenant().to_string(), topic: id.topic().to_string(), partition: id.index() };
        let leads = g.is_leader();
        m.partition_leader.get_or_create(&l).set(i64::from(leads));
        if leads {
            let under = g.in_sync().len() < g.replica_count();
            m.partition_under_replicated.get_or_create(&l).set(i64::from(under));
            m.partition_replication_lag.get_or_create(&l).set(g.max_lag().unwrap_or(0) as i64);
        }
    }
    s.queues.refresh_metrics();
    m.group_lag.clear();
    for tenant in s.broker.list_tenants().await {
        let Ok(groups) = s.groups.list(&tenant.name).await else { continue };
        for (group, _, _) in groups {
            let Ok(view) = s.groups.describe(&tenant.name, &group).await else { continue };
            for p in view.partitions {
                let l = GroupLabels { tenant: tenant.name.clone(), group: group.clone(), topic: p.topic.clone() };
                m.group_lag.get_or_create(&l).inc_by(p.lag as i64);
            }
        }
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], m.encode()).into_response()
}

pub(crate) async fn serve(
    broker: Arc<Broker>,
    queues: Arc<QueueManager>,
    groups: Arc<GroupCoordinator>,
    listener: TcpListener,
    tls: Option<Arc<crate::tls::ServerTls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AppState { broker, queues, groups });
    match tls {
        Some(tls) => axum::serve(tls.http_listener(listener)?, app).with_graceful_shutdown(shutdown).await,
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown).await,
    }
}
