//! The life of a broker-side resource (Tenant, Topic, Queue, ConsumerGroup):
//! pause → find the cluster → check the tenant → delete per policy or add
//! the finalizer → sync through `strata-client` → status and events. One
//! driver, [`reconcile`], runs it for every kind that implements
//! [`BrokerResource`].

use std::sync::Arc;
use std::time::Instant;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use crate::broker_cluster::{self, BrokerCluster};
use crate::context::Context;
use crate::error::Error;
use crate::resource::{Blocked, BrokerResource, CommonStatus, DeletionPolicy, FINALIZER, apply_status, is_paused};
use crate::status::{self, Reason};
use crate::tenant::Tenant;
pub use crate::tenant::tenant_allows;

fn has_finalizer<K: Resource>(obj: &K) -> bool {
    obj.meta().finalizers.as_ref().is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}

/// Adds or removes our finalizer with a merge patch that carries the
/// object's `resourceVersion`, so a concurrent change makes it fail (409)
/// instead of overwriting another controller's finalizers.
async fn set_finalizer<K: BrokerResource>(api: &Api<K>, obj: &K, present: bool) -> Result<(), Error> {
    let mut finalizers: Vec<String> = obj.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    if present {
        finalizers.push(FINALIZER.to_owned());
    }
    let patch = serde_json::json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": obj.resource_version() }
    });
    api.patch(&obj.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// The driver: one reconcile of a broker-side resource.
pub async fn reconcile<K: BrokerResource>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    // OTLP tracing on (OTEL_EXPORTER_OTLP_ENDPOINT): one span per reconcile.
    let mut span = strata_telemetry::enabled().then(|| {
        use strata_telemetry::{self as t, Attribute};
        let attrs = vec![
            Attribute::new("k8s.resource.kind", K::KIND),
            Attribute::new("k8s.resource.name", obj.name_any()),
            Attribute::new("k8s.namespace.name", obj.namespace().unwrap_or_default()),
        ];
        t::start(format!("reconcile {}", K::KIND), t::Kind::Internal, &t::TraceContext::new(), attrs)
    });
    let result = reconcile_inner(&*obj, &ctx).await;
    ctx.metrics.observe(K::KIND, started.elapsed(), result.as_ref().err());
    if let (Some(s), Err(e)) = (&mut span, &result) {
        use strata_telemetry::Span as _;
        s.set_status(strata_telemetry::SpanStatus::error(e.to_string()));
    }
    result
}

/// What the error policy of every broker-side controller does: requeue with
/// the object's backoff.
pub fn error_policy<K: BrokerResource>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(kind = K::KIND, name = %obj.name_any(), %error, "reconcile failed");
    Action::requeue(ctx.backoff.failure(&key(&*obj)))
}

/// The key of an object in the backoff and drift memories.
pub(crate) fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!("{}/{}/{}", K::kind(&()), obj.namespace().unwrap_or_default(), obj.name_any())
}

async fn reconcile_inner<K: BrokerResource>(obj: &K, ctx: &Context) -> Result<Action, Error> {
    let name = obj.name_any();
    let ns = obj.namespace().ok_or_else(|| Error::MissingNamespace { kind: K::KIND, name: name.clone() })?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let generation = obj.meta().generation;
    let deleting = obj.meta().deletion_timestamp.is_some();
    let previous = obj.status().cloned().unwrap_or_default();
    let mut st = previous.clone();
    let placement = obj.placement();
    let cluster_ns = placement.cluster.namespace.clone().unwrap_or_else(|| ns.clone());
    let cluster_name = placement.cluster.name.clone();

    // Paused: no broker calls at all, deletion included.
    if is_paused(obj) {
        status::set(
            st.conditions_mut(),
            status::PAUSED,
            true,
            Reason::Paused,
            "strata.dev/paused is \"true\"",
            generation,
        );
        status::set(st.conditions_mut(), status::READY, false, Reason::Paused, "reconciliation is paused", generation);
        if !status::is_true(previous.conditions(), status::PAUSED) {
            ctx.event(obj, false, "Paused", "Reconcile", "reconciliation paused by annotation".into()).await;
        }
        if st.conditions() != previous.conditions() {
            apply_status(&api, &name, &st).await?;
        }
        return Ok(Action::requeue(ctx.settings.resync));
    }
    if status::find(previous.conditions(), status::PAUSED).is_some() {
        status::remove(st.conditions_mut(), status::PAUSED);
        ctx.event(obj, false, "Resumed", "Reconcile", "reconciliation resumed".into()).await;
    }

    // The cluster. When it is gone nothing can be cleaned up on the broker
    // side, so a deletion releases the finalizer rather than hang forever.
    let clusters: Api<BrokerCluster> = Api::namespaced(ctx.client.clone(), &cluster_ns);
    let cluster = clusters.get_opt(&cluster_name).await?.filter(|c| c.meta().deletion_timestamp.is_none());
    if deleting && !has_finalizer(obj) {
        return Ok(Action::await_change());
    }
    let Some(cluster) = cluster else {
        let message = format!("BrokerCluster {cluster_ns}/{cluster_name} not found");
        if deleting {
            set_finalizer(&api, obj, false).await?;
            ctx.event(
                obj,
                true,
                "FinalizerReleased",
                "Delete",
                format!("{message}; nothing to clean up on the broker"),
            )
            .await;
            return Ok(Action::await_change());
        }
        return blocked(
            obj,
            ctx,
            &api,
            previous,
            st,
            Blocked::new(Reason::ClusterNotFound, format!("{message}; waiting for it")),
        )
        .await;
    };

    if deleting {
        if placement.deletion_policy == DeletionPolicy::Retain {
            set_finalizer(&api, obj, false).await?;
            ctx.event(obj, false, "Retained", "Delete", "deletionPolicy Retain: the broker-side object is kept".into())
                .await;
            return Ok(Action::await_change());
        }
        let broker = match connect(ctx, &cluster, placement.tenant).await? {
            Ok(b) => b,
            Err(b) => return blocked(obj, ctx, &api, previous, st, b).await,
        };
        return match obj.delete(&broker, ctx).await {
            Ok(()) => {
                set_finalizer(&api, obj, false).await?;
                ctx.event(obj, false, "Deleted", "Delete", "deleted on the broker".into()).await;
                Ok(Action::await_change())
            }
            Err(b) => blocked(obj, ctx, &api, previous, st, b).await,
        };
    }

    // The tenant: it must exist and allow this namespace.
    if let Some(tenant_name) = placement.tenant {
        let tenants: Api<Tenant> = Api::namespaced(ctx.client.clone(), &cluster_ns);
        match tenants.get_opt(tenant_name).await? {
            None => {
                let b = Blocked::new(
                    Reason::TenantNotFound,
                    format!("Tenant {cluster_ns}/{tenant_name} not found; waiting for it"),
                );
                return blocked(obj, ctx, &api, previous, st, b).await;
            }
            Some(t) if !tenant_allows(&t, &ns) => {
                let b = Blocked::new(
                    Reason::NamespaceNotAllowed,
                    format!("Tenant {tenant_name} does not allow namespace {ns} (spec.allowedNamespaces)"),
                );
                return blocked(obj, ctx, &api, previous, st, b).await;
            }
            Some(_) => {}
        }
    }

    if !has_finalizer(obj) {
        set_finalizer(&api, obj, true).await?;
    }

    let broker = match connect(ctx, &cluster, placement.tenant).await? {
        Ok(b) => b,
        Err(b) => return blocked(obj, ctx, &api, previous, st, b).await,
    };
    match obj.sync(&broker, &mut st, ctx).await {
        Ok(report) => {
            status::set(
                st.conditions_mut(),
                status::READY,
                true,
                Reason::Reconciled,
                "the broker matches the spec",
                generation,
            );
            let k = key(obj);
            if report.drift.is_empty() {
                // Drift reverted less than a resync ago stays reported: the
                // reconciles that follow at once (status refreshes, a parent
                // turning ready) are not the resync that confirms it is gone.
                if !ctx.drift.holds(&k, ctx.settings.resync) {
                    status::set(st.conditions_mut(), status::DRIFTED, false, Reason::InSync, "", generation);
                }
            } else {
                let what = report.drift.join("; ");
                ctx.drift.record(&k);
                status::set(
                    st.conditions_mut(),
                    status::DRIFTED,
                    true,
                    Reason::Drifted,
                    format!("reverted: {what}"),
                    generation,
                );
                ctx.event(obj, true, "Drifted", "Reconcile", format!("out-of-band change reverted: {what}")).await;
            }
            for change in &report.changes {
                ctx.event(obj, false, "Updated", "Reconcile", change.clone()).await;
            }
            if !status::is_true(previous.conditions(), status::READY) {
                ctx.event(obj, false, "Ready", "Reconcile", "the broker matches the spec".into()).await;
            }
            st.set_observed_generation(generation);
            // An unchanged status is not written: every write is a watch
            // event, and a reconcile of its own.
            if st != previous {
                apply_status(&api, &name, &st).await?;
            }
            ctx.backoff.success(&k);
            // Counters (messages, lag, depth) move without any Kubernetes
            // event: look again soon, well before the drift resync.
            Ok(Action::requeue(ctx.settings.status_refresh.min(ctx.settings.resync)))
        }
        Err(b) => blocked(obj, ctx, &api, previous, st, b).await,
    }
}

/// A client of `cluster`, authenticated as its admin (the token from its
/// Secret) and scoped to `tenant`. `Err` inside: a missing Secret or a
/// broker that cannot be reached.
pub(crate) async fn connect(
    ctx: &Context,
    cluster: &BrokerCluster,
    tenant: Option<&str>,
) -> Result<Result<strata_client::Client, Blocked>, Error> {
    let ns = cluster.namespace().unwrap_or_default();
    let name = cluster.name_any();
    let access = match broker_cluster::access(ctx, cluster).await? {
        Ok(a) => a,
        Err((reason, message)) => {
            return Ok(Err(Blocked::new(reason, format!("BrokerCluster {ns}/{name}: {message}"))));
        }
    };
    let client = match ctx.broker(&ns, &name, &access).await {
        Ok(c) => c,
        Err(e) => return Ok(Err(Blocked::from_client(&format!("BrokerCluster {ns}/{name}"), &e))),
    };
    Ok(Ok(match tenant {
        Some(t) => client.with_tenant(t),
        None => client,
    }))
}

/// Records `Ready=False` with the reason, publishes a Warning event when the
/// reason or message changed, and requeues with backoff (never an error:
/// a spec the broker can't satisfy is not a crash).
async fn blocked<K: BrokerResource>(
    obj: &K,
    ctx: &Context,
    api: &Api<K>,
    previous: K::Status,
    mut st: K::Status,
    b: Blocked,
) -> Result<Action, Error> {
    let generation = obj.meta().generation;
    tracing::info!(kind = K::KIND, name = %obj.name_any(), reason = %b.reason, message = %b.message, "not ready");
    status::set(st.conditions_mut(), status::READY, false, b.reason, b.message.clone(), generation);
    let before = status::find(previous.conditions(), status::READY);
    if before.is_none_or(|c| c.reason != b.reason.as_str() || c.message != b.message) {
        ctx.event(obj, true, b.reason.as_str(), "Reconcile", b.message.clone()).await;
    }
    st.set_observed_generation(generation);
    if st != previous {
        apply_status(api, &obj.name_any(), &st).await?;
    }
    Ok(Action::requeue(ctx.backoff.failure(&key(obj))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_allow_their_own_and_listed_namespaces() {
        let mut t = crate::tenant::tests::tenant("team-a", &["apps"]);
        assert!(tenant_allows(&t, "strata"));
        assert!(tenant_allows(&t, "apps"));
        assert!(!tenant_allows(&t, "other"));
        t.spec.allowed_namespaces = vec!["*".into()];
        assert!(tenant_allows(&t, "other"));
    }

    #[test]
    fn client_errors_map_to_precise_reasons() {
        let e = strata_client::Error::InvalidArgument("x".into());
        assert_eq!(Blocked::from_client("topic", &e).reason, Reason::BrokerRejected);
        let e = strata_client::Error::Unsupported("queues".into());
        assert_eq!(Blocked::from_client("queue", &e).reason, Reason::Unsupported);
    }
}
