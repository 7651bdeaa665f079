//! The HTTP endpoint for probes: `/healthz` (the process is alive) and
//! `/readyz` (the broker has recovered its data and accepts requests).

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::broker::Broker;

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(broker): State<Arc<Broker>>) -> (StatusCode, &'static str) {
    if broker.is_ready() { (StatusCode::OK, "ready\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n") }
}

pub(crate) async fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(broker);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
