//! Principals and their bearer tokens: catalog commands, like tenants and
//! topics, so every broker of a cluster accepts the same credentials. The
//! token is generated here, before its command, and only its hash enters
//! the catalog.

use super::Broker;
use crate::catalog::{Applied, CatalogCommand};
use crate::error::BrokerError;
use crate::names::TenantName;
use crate::security::{Token, check_principal_name};

/// A principal as admins see it (token ids, never tokens).
#[derive(Debug, Clone)]
pub struct PrincipalView {
    pub tenant: String,
    pub name: String,
    pub created_at_ms: i64,
    /// (token id, issued at ms)
    pub tokens: Vec<(String, i64)>,
}

/// A newly issued token (shown once).
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub id: String,
}

impl Broker {
    pub(crate) async fn create_principal(
        &self,
        tenant: &str,
        name: &str,
        if_not_exists: bool,
    ) -> Result<PrincipalView, BrokerError> {
        let tenant = TenantName::resolve(tenant)?.to_string();
        check_principal_name(name)?;
        let cmd =
            CatalogCommand::CreatePrincipal { tenant: tenant.clone(), name: name.to_owned(), at_ms: self.now_ms() };
        match self.commit_catalog(&cmd).await {
            Ok(_) => {}
            Err(BrokerError::Catalog(crate::catalog::CatalogError::PrincipalExists { .. })) if if_not_exists => {
                // Idempotent only for the same tenant.
                let existing = self.list_principals(&tenant).await?;
                if !existing.iter().any(|p| p.name == name) {
                    return Err(crate::catalog::CatalogError::PrincipalExists { name: name.to_owned() }.into());
                }
            }
            Err(e) => return Err(e),
        }
        self.list_principals(&tenant).await?.into_iter().find(|p| p.name == name).ok_or_else(|| {
            crate::catalog::CatalogError::UnknownPrincipal { tenant: tenant.clone(), name: name.to_owned() }.into()
        })
    }

    /// The principals of `tenant` (empty: all tenants), by name.
    pub(crate) async fn list_principals(&self, tenant: &str) -> Result<Vec<PrincipalView>, BrokerError> {
        let only = if tenant.is_empty() { None } else { Some(TenantName::parse(tenant)?.to_string()) };
        let catalog = self.catalog_snapshot().await;
        Ok(catalog
            .principals
            .iter()
            .filter(|(_, p)| only.as_ref().is_none_or(|t| *t == p.tenant))
            .map(|(name, p)| PrincipalView {
                tenant: p.tenant.clone(),
                name: name.clone(),
                created_at_ms: p.created_at_ms,
                tokens: p.tokens.iter().map(|(id, t)| (id.clone(), t.issued_at_ms)).collect(),
            })
            .collect())
    }

    pub(crate) async fn delete_principal(&self, tenant: &str, name: &str) -> Result<(), BrokerError> {
        let tenant = TenantName::resolve(tenant)?.to_string();
        check_principal_name(name)?;
        self.commit_catalog(&CatalogCommand::DeletePrincipal { tenant, name: name.to_owned() }).await?;
        Ok(())
    }

    pub(crate) async fn issue_token(&self, tenant: &str, principal: &str) -> Result<IssuedToken, BrokerError> {
        let tenant = TenantName::resolve(tenant)?.to_string();
        check_principal_name(principal)?;
        let token =
            Token::generate().map_err(|e| BrokerError::Internal(format!("no random bytes for a token: {e}")))?;
        let cmd = CatalogCommand::IssueToken {
            tenant,
            principal: principal.to_owned(),
            hash: token.hash().to_hex(),
            at_ms: self.now_ms(),
        };
        let id = match self.commit_catalog(&cmd).await? {
            Applied::Token { id } => id,
            _ => token.id(),
        };
        Ok(IssuedToken { token: token.as_str().to_owned(), id })
    }

    /// Revokes by token id, or by the token itself.
    pub(crate) async fn revoke_token(&self, tenant: &str, principal: &str, token: &str) -> Result<(), BrokerError> {
        let tenant = TenantName::resolve(tenant)?.to_string();
        check_principal_name(principal)?;
        let id = match Token::parse(token) {
            Ok(t) => t.id(),
            Err(_) => token.to_owned(),
        };
        self.commit_catalog(&CatalogCommand::RevokeToken { tenant, principal: principal.to_owned(), id }).await?;
        Ok(())
    }
}
