//! The life of a broker-side resource (Tenant, Topic, Queue, ConsumerGroup):
//! pause → find the cluster → check the tenant → delete per policy or add
//! the finalizer → sync through `strata-client` → status and events. One
//! driver, [`reconcile`], runs it for every kind that implements
//! [`BrokerResource`].

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::broker_cluster::BrokerCluster;
use crate::context::{Context, MANAGER};
use crate::error::Error;
use crate::status::{self, Condition, Reason};
use crate::tenant::Tenant;

/// Annotation that stops all broker calls for a resource while `"true"`.
pub const PAUSED_ANNOTATION: &str = "strata.dev/paused";
/// Annotation that lets a `deletionPolicy: Delete` remove a topic or queue
/// that still holds messages.
pub const FORCE_DELETE_ANNOTATION: &str = "strata.dev/force-delete";
/// The finalizer that keeps a resource until its broker-side object is
/// deleted (or retained) per its policy.
pub const FINALIZER: &str = "strata.dev/cleanup";

/// Which `BrokerCluster` a resource belongs to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRef {
    /// Name of the `BrokerCluster`.
    pub name: String,
    /// Its namespace; defaults to the resource's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// What happens on the broker when the Kubernetes resource is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum DeletionPolicy {
    /// Delete the broker-side object (refused while it holds messages unless
    /// annotated `strata.dev/force-delete: "true"`).
    #[default]
    Delete,
    /// Leave the broker-side object in place.
    Retain,
}

/// Where a resource lives on the broker side.
#[derive(Debug, Clone)]
pub struct Placement<'a> {
    pub cluster: &'a ClusterRef,
    /// The broker tenant; `None` for the `Tenant` kind itself.
    pub tenant: Option<&'a str>,
    pub deletion_policy: DeletionPolicy,
}

/// Why the broker side cannot match the spec right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub reason: Reason,
    pub message: String,
}

impl Blocked {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Blocked { reason, message: message.into() }
    }

    /// Maps a `strata-client` error to a reason: what the broker refused, or
    /// that it could not be reached.
    pub fn from_client(what: &str, e: &strata_client::Error) -> Self {
        use strata_client::ErrorCode as C;
        let reason = match e {
            strata_client::Error::Server(s) => match s.error_code {
                C::UnknownTenant => Reason::TenantNotFound,
                C::InvalidConfig | C::InvalidName | C::InvalidRequest => Reason::InvalidSpec,
                C::PartitionsCannotShrink => Reason::PartitionDecreaseRefused,
                C::GroupNotEmpty => Reason::GroupNotEmpty,
                C::TenantNotEmpty | C::QueueNotEmpty | C::QueueInUse => Reason::DeletionBlocked,
                C::Unspecified if !s.has_details => Reason::BrokerUnavailable,
                _ => Reason::BrokerRejected,
            },
            strata_client::Error::Connect { .. } | strata_client::Error::Timeout { .. } => Reason::BrokerUnavailable,
            strata_client::Error::Unsupported(_) => Reason::Unsupported,
            _ => Reason::BrokerRejected,
        };
        Blocked { reason, message: format!("{what}: {e}") }
    }
}

/// What a successful sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Changes made because the spec changed (or the object was new).
    pub changes: Vec<String>,
    /// Out-of-band changes that were reverted.
    pub drift: Vec<String>,
}

/// The common part of every status: conditions and `observedGeneration`.
pub trait CommonStatus: Serialize + Default + Clone + Debug + PartialEq + Send + Sync {
    fn conditions(&self) -> &[Condition];
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
    fn set_observed_generation(&mut self, generation: Option<i64>);
}

/// A kind whose spec is realised on the brokers through `strata-client`.
pub trait BrokerResource:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// Kind name for logs and metrics.
    const KIND: &'static str;
    type Status: CommonStatus;

    fn placement(&self) -> Placement<'_>;
    fn status(&self) -> Option<&Self::Status>;

    /// Makes the broker match the spec (create, correct drift) and fills
    /// the observed part of `status`. `previous` is the status as it was
    /// read, to tell spec changes from drift.
    fn sync(
        &self,
        broker: &strata_client::Client,
        status: &mut Self::Status,
        ctx: &Context,
    ) -> impl Future<Output = Result<Report, Blocked>> + Send;

    /// Deletes the broker-side object (policy `Delete`), honouring the
    /// guard against deleting data. Already gone is success.
    fn delete(&self, broker: &strata_client::Client) -> impl Future<Output = Result<(), Blocked>> + Send;
}

/// Whether the pause annotation is set to `"true"`.
pub fn is_paused<K: Resource>(obj: &K) -> bool {
    obj.meta().annotations.as_ref().and_then(|a| a.get(PAUSED_ANNOTATION)).is_some_and(|v| v == "true")
}

/// Whether `strata.dev/force-delete: "true"` is set.
pub fn force_delete<K: Resource>(obj: &K) -> bool {
    obj.meta().annotations.as_ref().and_then(|a| a.get(FORCE_DELETE_ANNOTATION)).is_some_and(|v| v == "true")
}

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

/// Writes the status subresource with server-side apply.
pub async fn apply_status<K>(api: &Api<K>, name: &str, status: &impl Serialize) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

/// Whether `namespace` may use `tenant`.
pub fn tenant_allows(tenant: &Tenant, namespace: &str) -> bool {
    let own = tenant.namespace();
    if own.as_deref() == Some(namespace) {
        return true;
    }
    tenant.spec.allowed_namespaces.iter().any(|n| n == "*" || n == namespace)
}

/// The driver: one reconcile of a broker-side resource.
pub async fn reconcile<K: BrokerResource>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    // OTLP tracing on (OTEL_EXPORTER_OTLP_ENDPOINT): one span per reconcile.
    let mut span = strata_proto::telemetry::enabled().then(|| {
        use strata_proto::telemetry::{self as t, Attribute};
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
        use strata_proto::telemetry::Span as _;
        s.set_status(strata_proto::telemetry::SpanStatus::error(e.to_string()));
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
    let cluster = clusters.get_opt(&cluster_name).await?;
    let cluster_alive = cluster.as_ref().is_some_and(|c| c.meta().deletion_timestamp.is_none());
    if deleting && !has_finalizer(obj) {
        return Ok(Action::await_change());
    }
    if !cluster_alive {
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
    }

    if deleting {
        if placement.deletion_policy == DeletionPolicy::Retain {
            set_finalizer(&api, obj, false).await?;
            ctx.event(obj, false, "Retained", "Delete", "deletionPolicy Retain: the broker-side object is kept".into())
                .await;
            return Ok(Action::await_change());
        }
        let broker = match connect(ctx, &cluster_ns, &cluster_name, placement.tenant).await {
            Ok(b) => b,
            Err(b) => return blocked(obj, ctx, &api, previous, st, b).await,
        };
        return match obj.delete(&broker).await {
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

    let broker = match connect(ctx, &cluster_ns, &cluster_name, placement.tenant).await {
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

async fn connect(
    ctx: &Context,
    ns: &str,
    cluster: &str,
    tenant: Option<&str>,
) -> Result<strata_client::Client, Blocked> {
    let client = ctx
        .broker(ns, cluster)
        .await
        .map_err(|e| Blocked::from_client(&format!("BrokerCluster {ns}/{cluster}"), &e))?;
    Ok(match tenant {
        Some(t) => client.with_tenant(t),
        None => client,
    })
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
    use crate::tenant::TenantSpec;

    #[test]
    fn tenants_allow_their_own_and_listed_namespaces() {
        let mut t = Tenant::new(
            "team-a",
            TenantSpec {
                cluster_ref: ClusterRef { name: "main".into(), namespace: None },
                allowed_namespaces: vec!["apps".into()],
                deletion_policy: DeletionPolicy::Retain,
            },
        );
        t.metadata.namespace = Some("strata".into());
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
