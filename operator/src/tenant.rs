//! `Tenant`: a broker tenant, and the Kubernetes namespaces allowed to create
//! Topics, Queues and ConsumerGroups in it (namespace-per-team multi-tenancy).
//! The broker tenant's name is the resource's name.

use kube::{CustomResource, KubeSchema, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::context::Context;
use crate::resource::{Blocked, BrokerResource, ClusterRef, DeletionPolicy, Placement, Report};
use crate::status::{Condition, Reason};

/// A tenant on a `BrokerCluster`. Lives in the cluster's namespace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "strata.dev",
    version = "v1alpha1",
    kind = "Tenant",
    namespaced,
    status = "TenantStatus",
    shortname = "stn",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    validation = Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')").message("tenant names are DNS labels")
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// The cluster hosting the tenant.
    #[x_kube(validation = Rule::new("self == oldSelf").message("clusterRef is immutable"))]
    pub cluster_ref: ClusterRef,
    /// Namespaces whose resources may use this tenant, besides the tenant's
    /// own namespace; `"*"` allows every namespace.
    #[serde(default)]
    pub allowed_namespaces: Vec<String>,
    /// What happens to the broker tenant when this resource is deleted (the
    /// broker refuses to delete a tenant that still owns topics).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// Observed state of a `Tenant`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Topics the broker tenant holds.
    #[serde(default)]
    pub topic_count: u32,
    /// Whether the broker tenant was created (tells a later absence from a new one).
    #[serde(default)]
    pub created: bool,
}

crate::resource::common_status!(TenantStatus);

impl BrokerResource for Tenant {
    const KIND: &'static str = "Tenant";
    type Status = TenantStatus;

    fn placement(&self) -> Placement<'_> {
        Placement { cluster: &self.spec.cluster_ref, tenant: None, deletion_policy: self.spec.deletion_policy }
    }

    fn status(&self) -> Option<&TenantStatus> {
        self.status.as_ref()
    }

    async fn sync(
        &self,
        broker: &strata_client::Client,
        status: &mut TenantStatus,
        _ctx: &Context,
    ) -> Result<Report, Blocked> {
        let name = self.name_any();
        let tenants = broker.list_tenants().await.map_err(|e| Blocked::from_client("list tenants", &e))?;
        let mut report = Report::default();
        match tenants.iter().find(|t| t.name == name) {
            Some(t) => status.topic_count = t.topic_count,
            None => {
                broker
                    .create_tenant(&name)
                    .await
                    .map_err(|e| Blocked::from_client(&format!("create tenant {name}"), &e))?;
                if status.created {
                    report.drift.push(format!("tenant {name} was missing on the broker and was created again"));
                } else {
                    report.changes.push(format!("created tenant {name}"));
                }
                status.topic_count = 0;
            }
        }
        status.created = true;
        Ok(report)
    }

    async fn delete(&self, broker: &strata_client::Client) -> Result<(), Blocked> {
        let name = self.name_any();
        match broker.delete_tenant(&name).await {
            Ok(()) => Ok(()),
            Err(strata_client::Error::Server(s)) if s.error_code == strata_client::ErrorCode::UnknownTenant => Ok(()),
            Err(e) => {
                let mut b = Blocked::from_client(&format!("delete tenant {name}"), &e);
                if b.reason == Reason::DeletionBlocked {
                    b.message = format!("tenant {name} still owns resources; delete them first ({e})");
                }
                Err(b)
            }
        }
    }
}
