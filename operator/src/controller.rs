//! Wiring: one kube-rs `Controller` per kind, the HTTP endpoints, and leader
//! election around the controllers. [`run`] is what the binary calls.

use std::fmt::Debug;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::broker_cluster::{self, BrokerCluster};
use crate::consumer_group::ConsumerGroup;
use crate::context::{BrokerDirectory, Context, FixedAddress, ServiceDns, Settings};
use crate::error::Error;
use crate::leader::{LeaseConfig, LeaseLock};
use crate::lifecycle;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::resource::BrokerResource;
use crate::status;
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

/// What makes a change of a resource worth a reconcile: its spec
/// (`generation`), labels, annotations (pause, force-delete) and deletion.
/// A status-only change is not: the operator's own status write would
/// otherwise trigger a second reconcile at once (which doubled backoffs).
pub fn reconcile_trigger<K: Resource>(obj: &K) -> Option<u64> {
    let m = obj.meta();
    let mut h = DefaultHasher::new();
    m.generation.hash(&mut h);
    m.labels.hash(&mut h);
    m.annotations.hash(&mut h);
    m.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

fn in_namespace_of<K: BrokerResource>(obj: &K, parent_ns: &str) -> bool {
    let own = obj.namespace().unwrap_or_default();
    obj.placement().cluster.namespace.as_deref().unwrap_or(&own) == parent_ns
}

/// The resources among `objs` that wait for `cluster`, when it is ready (a
/// resource waiting for its cluster is retried at once, not after its
/// backoff) or being deleted (their finalizers may be released).
pub fn waiting_for_cluster<K: BrokerResource>(objs: &[Arc<K>], cluster: &BrokerCluster) -> Vec<ObjectRef<K>> {
    let ready = cluster.status.as_ref().is_some_and(|s| status::is_true(&s.conditions, status::READY));
    if !ready && cluster.meta().deletion_timestamp.is_none() {
        return Vec::new();
    }
    let ns = cluster.namespace().unwrap_or_default();
    let name = cluster.name_any();
    objs.iter()
        .filter(|o| o.placement().cluster.name == name && in_namespace_of(o.as_ref(), &ns))
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

/// The resources among `objs` that wait for `tenant`, once it is ready.
pub fn waiting_for_tenant<K: BrokerResource>(objs: &[Arc<K>], tenant: &Tenant) -> Vec<ObjectRef<K>> {
    let ready = tenant.status.as_ref().is_some_and(|s| status::is_true(&s.conditions, status::READY));
    if !ready {
        return Vec::new();
    }
    let ns = tenant.namespace().unwrap_or_default();
    let name = tenant.name_any();
    objs.iter()
        .filter(|o| o.placement().tenant == Some(name.as_str()) && in_namespace_of(o.as_ref(), &ns))
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

/// The objects of kind `K` a controller reconciles: their cache, and the
/// stream of the changes that need a reconcile (not status-only writes).
fn own_objects<K>(
    client: &kube::Client,
) -> (reflector::Store<K>, impl Stream<Item = Result<K, watcher::Error>> + Send + 'static)
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let own = watcher(Api::<K>::all(client.clone()), watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(reconcile_trigger, Default::default());
    (reader, own)
}

/// A controller's outcome: failures are retried by its error policy and
/// only logged here.
async fn log_event<T, E: std::fmt::Display>(res: Result<T, E>) {
    if let Err(e) = res {
        tracing::debug!(error = %e, "controller event");
    }
}

async fn run_kind<K>(ctx: Arc<Context>, stop: watch::Receiver<bool>)
where
    K: BrokerResource + kube::Resource<DynamicType = ()>,
{
    let client = ctx.client.clone();
    let (reader, own) = own_objects::<K>(&client);
    let (by_cluster, by_tenant) = (reader.clone(), reader.clone());
    Controller::for_stream(own, reader)
        .watches(Api::<BrokerCluster>::all(client.clone()), watcher::Config::default(), move |c| {
            waiting_for_cluster(&by_cluster.state(), &c)
        })
        .watches(Api::<Tenant>::all(client), watcher::Config::default(), move |t| {
            waiting_for_tenant(&by_tenant.state(), &t)
        })
        .graceful_shutdown_on(shutdown_signal(&stop))
        .run(lifecycle::reconcile::<K>, lifecycle::error_policy::<K>, ctx)
        .for_each(log_event)
        .await;
}

/// Runs every controller until `stop` turns true.
pub async fn run_controllers(ctx: Arc<Context>, stop: watch::Receiver<bool>) {
    let client = ctx.client.clone();
    let (reader, own) = own_objects::<BrokerCluster>(&client);
    let clusters = Controller::for_stream(own, reader)
        .owns(Api::<StatefulSet>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Service>::all(client.clone()), watcher::Config::default())
        .owns(Api::<ConfigMap>::all(client.clone()), watcher::Config::default())
        .owns(Api::<ServiceAccount>::all(client.clone()), watcher::Config::default())
        .owns(Api::<PodDisruptionBudget>::all(client.clone()), watcher::Config::default())
        .graceful_shutdown_on(shutdown_signal(&stop))
        .run(broker_cluster::reconcile, broker_cluster::error_policy, ctx.clone())
        .for_each(log_event);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker_cluster::tests::cluster;
    use crate::resource::{ClusterRef, DeletionPolicy};
    use crate::status::{Condition, Reason};
    use crate::topic::{Topic, TopicSpec};

    fn topic(name: &str, ns: &str, tenant: &str, cluster_ns: Option<&str>) -> Arc<Topic> {
        let mut t = Topic::new(
            name,
            TopicSpec {
                cluster_ref: ClusterRef { name: "main".into(), namespace: cluster_ns.map(str::to_owned) },
                tenant: tenant.into(),
                topic_name: None,
                partitions: 1,
                retention: None,
                retention_bytes: None,
                segment_bytes: None,
                durability: None,
                local_retention: None,
                local_retention_bytes: None,
                replication_factor: None,
                deletion_policy: DeletionPolicy::Delete,
            },
        );
        t.metadata.namespace = Some(ns.into());
        Arc::new(t)
    }

    fn ready() -> Vec<Condition> {
        let mut c = Vec::new();
        status::set(&mut c, status::READY, true, Reason::Reconciled, "", Some(1));
        c
    }

    fn names(refs: Vec<ObjectRef<Topic>>) -> Vec<String> {
        refs.into_iter().map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name)).collect()
    }

    #[test]
    fn a_ready_cluster_or_tenant_triggers_the_resources_waiting_for_it() {
        let topics = vec![
            topic("a", "apps", "default", Some("strata")),
            topic("b", "apps", "team-b", Some("strata")),
            topic("c", "strata", "default", None),
            topic("d", "apps", "default", None),
        ];
        let mut c = cluster();
        assert!(waiting_for_cluster(&topics, &c).is_empty(), "not ready: nothing to retry yet");
        c.status = Some(crate::broker_cluster::BrokerClusterStatus { conditions: ready(), ..Default::default() });
        assert_eq!(names(waiting_for_cluster(&topics, &c)), ["apps/a", "apps/b", "strata/c"]);

        let mut t = crate::tenant::tests::tenant("default", &["*"]);
        assert!(waiting_for_tenant(&topics, &t).is_empty());
        t.status = Some(crate::tenant::TenantStatus { conditions: ready(), ..Default::default() });
        assert_eq!(names(waiting_for_tenant(&topics, &t)), ["apps/a", "strata/c"]);
    }

    #[test]
    fn status_only_changes_do_not_trigger_a_reconcile() {
        let t = topic("a", "apps", "default", None);
        let mut own_write = (*t).clone();
        own_write.status = Some(Default::default());
        own_write.metadata.resource_version = Some("42".into());
        own_write.metadata.managed_fields = Some(vec![Default::default()]);
        assert_eq!(reconcile_trigger(&*t), reconcile_trigger(&own_write));
        for change in [
            |o: &mut Topic| o.metadata.generation = Some(2),
            |o: &mut Topic| o.metadata.annotations = Some([("strata.dev/paused".to_owned(), "true".to_owned())].into()),
            |o: &mut Topic| {
                o.metadata.deletion_timestamp =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH))
            },
        ] {
            let mut changed = (*t).clone();
            change(&mut changed);
            assert_ne!(reconcile_trigger(&*t), reconcile_trigger(&changed));
        }
    }
}
