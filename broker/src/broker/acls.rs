//! ACL bindings (`crate::acl`): catalog commands like principals, so every
//! broker of a cluster decides alike and a restart keeps them.

use super::Broker;
use crate::acl::{ANY_NAME, ANY_PRINCIPAL, AclBinding, PatternType};
use crate::catalog::CatalogCommand;
use crate::error::BrokerError;
use crate::names::{InvalidName, TenantName, TopicName};
use crate::security::check_principal_name;

/// Checks a binding's principal (a name or `*`) and resource name (a valid
/// topic/queue/group name, or `*` for a literal wildcard; a prefix follows
/// the same rule).
fn check_binding(b: &AclBinding) -> Result<(), BrokerError> {
    if b.principal != ANY_PRINCIPAL {
        check_principal_name(&b.principal)?;
    }
    if b.pattern == PatternType::Literal && b.name == ANY_NAME {
        return Ok(());
    }
    TopicName::parse(&b.name).map_err(|e| InvalidName { kind: b.kind.as_str(), ..e })?;
    Ok(())
}

impl Broker {
    pub(crate) async fn add_acl(&self, tenant: &str, binding: AclBinding) -> Result<(), BrokerError> {
        let tenant = TenantName::resolve(tenant)?.to_string();
        check_binding(&binding)?;
        self.commit_catalog(&CatalogCommand::AddAcl { tenant, binding }).await?;
        Ok(())
    }

    pub(crate) async fn remove_acl(&self, tenant: &str, binding: AclBinding) -> Result<(), BrokerError> {
        let tenant = TenantName::resolve(tenant)?.to_string();
        check_binding(&binding)?;
        self.commit_catalog(&CatalogCommand::RemoveAcl { tenant, binding }).await?;
        Ok(())
    }

    /// (tenant, binding) of `tenant` (empty: every tenant), of `principal`
    /// when not empty (a principal's list includes the `*` bindings that
    /// apply to it), in a stable order.
    pub(crate) async fn list_acls(
        &self,
        tenant: &str,
        principal: &str,
    ) -> Result<Vec<(String, AclBinding)>, BrokerError> {
        let only = if tenant.is_empty() { None } else { Some(TenantName::parse(tenant)?.to_string()) };
        if !principal.is_empty() && principal != ANY_PRINCIPAL {
            check_principal_name(principal)?;
        }
        let catalog = self.catalog_snapshot().await;
        Ok(catalog
            .acls
            .iter()
            .filter(|(t, _)| only.as_ref().is_none_or(|o| o == *t))
            .flat_map(|(t, set)| set.iter().map(move |b| (t.clone(), b.clone())))
            .filter(|(_, b)| principal.is_empty() || b.principal == principal || b.principal == ANY_PRINCIPAL)
            .collect())
    }
}
