//! Wiring: one kube-rs `Controller` per kind, the HTTP endpoints, and leader
//! election around the controllers. [`run`] is what the binary calls.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::runtime::Controller;
use kube::runtime::watcher;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::broker_cluster::{self, BrokerCluster};
use crate::consumer_group::ConsumerGroup;
use crate::context::{BrokerDirectory, Context, FixedAddress, ServiceDns, Settings};
use crate::error::Error;
use crate::leader::{LeaseConfig, LeaseLock};
use crate::lifecycle::{self, BrokerResource};
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::tenant::Tenant;
use crate::topic::Topic;

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub settings: Settings,
    /// `None`: no leader election (a single replica).
    pub leader_election: Option<LeaseConfig>,
    /// Reach every cluster at this address instead of its Service DNS name
    /// (an operator running outside the cluster, or tests).
    pub broker_url: Option<String>,
}

fn shutdown_signal(rx: &watch::Receiver<bool>) -> impl Future<Output = ()> + Send + Sync + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

async fn run_kind<K>(ctx: Arc<Context>, stop: watch::Receiver<bool>)
where
    K: BrokerResource + kube::Resource<DynamicType = ()>,
{
    Controller::new(Api::<K>::all(ctx.client.clone()), watcher::Config::default().any_semantic())
        .graceful_shutdown_on(shutdown_signal(&stop))
        .run(lifecycle::reconcile::<K>, lifecycle::error_policy::<K>, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}

/// Runs every controller until `stop` turns true.
pub async fn run_controllers(ctx: Arc<Context>, stop: watch::Receiver<bool>) {
    let client = ctx.client.clone();
    let clusters =
        Controller::new(Api::<BrokerCluster>::all(client.clone()), watcher::Config::default().any_semantic())
            .owns(Api::<StatefulSet>::all(client.clone()), watcher::Config::default())
            .owns(Api::<Service>::all(client.clone()), watcher::Config::default())
            .owns(Api::<ConfigMap>::all(client.clone()), watcher::Config::default())
            .owns(Api::<ServiceAccount>::all(client.clone()), watcher::Config::default())
            .owns(Api::<PodDisruptionBudget>::all(client.clone()), watcher::Config::default())
            .graceful_shutdown_on(shutdown_signal(&stop))
            .run(broker_cluster::reconcile, broker_cluster::error_policy, ctx.clone())
            .for_each(|res| async move {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "controller event");
                }
            });
    tokio::join!(
        clusters,
        run_kind::<Tenant>(ctx.clone(), stop.clone()),
        run_kind::<Topic>(ctx.clone(), stop.clone()),
        run_kind::<Queue>(ctx.clone(), stop.clone()),
        run_kind::<ConsumerGroup>(ctx.clone(), stop.clone()),
    );
}

/// The operator: HTTP endpoints on `listener`, then (as leader, when
/// elected) every controller, until `shutdown` completes.
pub async fn run(
    config: Config,
    client: kube::Client,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let addr: SocketAddr =
        listener.local_addr().map_err(|source| Error::Listen { addr: ([0, 0, 0, 0], 0).into(), source })?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let metrics = Arc::new(Metrics::new());
    let http = tokio::spawn(crate::http::serve(listener, metrics.clone(), shutdown_signal(&stop_rx)));
    tracing::info!(%addr, "serving /metrics and /healthz");

    let brokers: Arc<dyn BrokerDirectory> = match &config.broker_url {
        Some(url) => Arc::new(FixedAddress(url.clone())),
        None => Arc::new(ServiceDns),
    };
    let ctx = Arc::new(Context::new(client.clone(), brokers, metrics.clone(), config.settings.clone()));
    let result = match config.leader_election {
        Some(lease) => {
            let lock = LeaseLock::new(client, lease);
            let m = metrics.clone();
            lock.run_elected(run_controllers(ctx, stop_rx.clone()), shutdown_signal(&stop_rx), move |leader| {
                m.set_leader(leader)
            })
            .await
        }
        None => {
            metrics.set_leader(true);
            run_controllers(ctx, stop_rx.clone()).await;
            Ok(())
        }
    };
    // On error (lost lease) stop the HTTP server too, so the process exits.
    drop(stop_rx);
    http.abort();
    result
}
