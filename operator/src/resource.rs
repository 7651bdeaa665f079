//! What every broker-side kind (Tenant, Topic, Queue, ConsumerGroup) shares:
//! where it lives ([`ClusterRef`], [`Placement`]), its deletion policy, the
//! [`BrokerResource`] trait the lifecycle driver runs, the common status,
//! and the annotations and status write every controller uses. A leaf of the
//! crate's module graph: the CRD types depend on it, the lifecycle driver
//! (`lifecycle.rs`) and the controllers on both.

use std::fmt::Debug;
use std::future::Future;

use k8s_openapi::NamespaceResourceScope;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::context::{Context, MANAGER};
use crate::error::Error;
use crate::status::{Condition, Reason};

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

/// The settings a spec asks for that the broker does not have, in words:
/// `name actual -> wanted` (`unset` for a missing value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diffs(pub Vec<String>);

impl Diffs {
    /// Whether `want` is set and `have` differs from it; notes it if so.
    pub fn check<T: PartialEq + std::fmt::Display>(&mut self, name: &str, want: Option<T>, have: Option<T>) -> bool {
        match want {
            Some(w) if have.as_ref() != Some(&w) => {
                let have = have.map_or_else(|| "unset".to_owned(), |h| h.to_string());
                self.0.push(format!("{name} {have} -> {w}"));
                true
            }
            _ => false,
        }
    }
}

/// The common part of every status: conditions and `observedGeneration`.
pub trait CommonStatus: Serialize + Default + Clone + Debug + PartialEq + Send + Sync {
    fn conditions(&self) -> &[Condition];
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
    fn set_observed_generation(&mut self, generation: Option<i64>);
}

/// Implements [`CommonStatus`] for status structs with `conditions` and
/// `observed_generation` fields (every kind's).
macro_rules! common_status {
    ($($status:ty),+ $(,)?) => {$(
        impl $crate::resource::CommonStatus for $status {
            fn conditions(&self) -> &[$crate::status::Condition] {
                &self.conditions
            }
            fn conditions_mut(&mut self) -> &mut Vec<$crate::status::Condition> {
                &mut self.conditions
            }
            fn set_observed_generation(&mut self, generation: Option<i64>) {
                self.observed_generation = generation;
            }
        }
    )+};
}
pub(crate) use common_status;

/// The [`BrokerResource::placement`] and [`BrokerResource::status`] of a kind
/// that belongs to a tenant: `spec.clusterRef`, `spec.tenant`,
/// `spec.deletionPolicy` and the `status` field.
macro_rules! tenant_scoped {
    () => {
        fn placement(&self) -> $crate::resource::Placement<'_> {
            $crate::resource::Placement {
                cluster: &self.spec.cluster_ref,
                tenant: Some(&self.spec.tenant),
                deletion_policy: self.spec.deletion_policy,
            }
        }

        fn status(&self) -> Option<&Self::Status> {
            self.status.as_ref()
        }
    };
}
pub(crate) use tenant_scoped;

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
    /// guard against deleting data, and what the operator made for it in
    /// Kubernetes (a Tenant's token Secrets). Already gone is success.
    fn delete(&self, broker: &strata_client::Client, ctx: &Context)
    -> impl Future<Output = Result<(), Blocked>> + Send;
}

/// Whether the pause annotation is set to `"true"`.
pub fn is_paused<K: Resource>(obj: &K) -> bool {
    obj.meta().annotations.as_ref().and_then(|a| a.get(PAUSED_ANNOTATION)).is_some_and(|v| v == "true")
}

/// Whether `strata.dev/force-delete: "true"` is set.
pub fn force_delete<K: Resource>(obj: &K) -> bool {
    obj.meta().annotations.as_ref().and_then(|a| a.get(FORCE_DELETE_ANNOTATION)).is_some_and(|v| v == "true")
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
