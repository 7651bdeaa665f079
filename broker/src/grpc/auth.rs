//! The authorisation seam. Every handler says who calls ([`Caller`], from
//! the request's metadata, peer address and verified client certificate),
//! what it does ([`Operation`]) and on which tenant's resource, before it
//! calls the domain; the answer is the call's status when refused.
//!
//! [`CredentialAuthorizer`] (DESIGN §4.5) identifies the caller — the admin
//! token, an issued bearer token, or a client certificate whose CN names a
//! principal — and applies the basic tenant rule: a principal may touch only
//! its own tenant's resources, and tenant-level and cluster-level
//! administration is for the cluster admin. Without credentials a caller is
//! refused UNAUTHENTICATED when `auth.mode = required`, and acts as an
//! anonymous admin otherwise (the standalone default). Per-principal ACLs
//! (pattern × operation) plug in at [`CredentialAuthorizer::decide`].

use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use strata_proto::v1::{ErrorCode, ErrorInfo};
use tonic::{Code, Request, Status};

use crate::security::{Credentials, Identity};

/// What a call does, as ACLs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    /// Write messages: produce, send.
    Produce,
    /// Read messages or move a consumer's position: fetch, receive, ack,
    /// group membership and offsets.
    Consume,
    /// Create, change or delete resources. With an empty resource: the
    /// tenant itself (create/delete tenant), a cluster-admin operation.
    Admin,
    /// Read metadata: list, describe, offsets.
    Describe,
    /// Cluster administration: principals, tokens, broker-to-broker traffic.
    Cluster,
}

/// Who calls.
#[derive(Debug, Clone, Default)]
pub(crate) struct Caller {
    /// The `authorization: Bearer …` token, when the client sent one.
    pub bearer: Option<String>,
    pub peer: Option<SocketAddr>,
    /// The client's certificate chain, verified by the TLS handshake against
    /// `tls.client_ca` (only present with mTLS).
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// Who the credentials named when the stream they came with opened
    /// ([`Authorizer::session`]); `None` until then.
    resolved: Option<Resolved>,
}

/// The outcome of authentication, kept for the life of a stream.
#[derive(Debug, Clone)]
enum Resolved {
    Anonymous,
    As(Identity),
}

impl Caller {
    pub fn of<T>(request: &Request<T>) -> Caller {
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_owned());
        Caller {
            bearer,
            peer: request.remote_addr(),
            certs: request.peer_certs().filter(|c| !c.is_empty()),
            resolved: None,
        }
    }

    fn has_credentials(&self) -> bool {
        self.bearer.is_some() || self.certs.is_some()
    }
}

/// Decides whether `caller` may do `op` on `resource` (a topic, queue or
/// group name; empty for the tenant itself) of `tenant` (empty: the caller's
/// own, as `common.proto` says).
pub(crate) trait Authorizer: Send + Sync + 'static {
    fn authorize(&self, caller: &Caller, op: Operation, tenant: &str, resource: &str) -> Result<(), Status>;

    /// Authenticates once for a stream: the returned caller keeps who it
    /// is, so each message of the stream is only checked against the
    /// tenant rule (a token revoked meanwhile is refused from the next call
    /// or stream on; the open stream ends with its connection).
    fn session(&self, caller: Caller) -> Result<Caller, Status> {
        Ok(caller)
    }

    /// The only tenant whose entries a listing may show this caller
    /// (`None`: every tenant).
    fn visible_tenant(&self, _caller: &Caller) -> Result<Option<String>, Status> {
        Ok(None)
    }
}

/// Everyone may do everything: anonymous access (tests of the handlers).
#[derive(Debug, Default)]
#[allow(dead_code)]
pub(crate) struct AllowAll;

impl Authorizer for AllowAll {
    fn authorize(&self, caller: &Caller, op: Operation, tenant: &str, resource: &str) -> Result<(), Status> {
        tracing::trace!(peer = ?caller.peer, token = caller.bearer.is_some(), ?op, tenant, resource, "allowed");
        Ok(())
    }
}

fn unauthenticated(message: impl Into<String>) -> Status {
    let info = ErrorInfo { code: ErrorCode::Unauthenticated as i32, ..Default::default() };
    strata_proto::status_with_info(Code::Unauthenticated, message, info)
}

fn denied(message: impl Into<String>, resource: String) -> Status {
    let info = ErrorInfo { code: ErrorCode::PermissionDenied as i32, resource, ..Default::default() };
    strata_proto::status_with_info(Code::PermissionDenied, message, info)
}

/// Tokens, client certificates and the tenant rule.
#[derive(Debug)]
pub(crate) struct CredentialAuthorizer {
    credentials: Arc<Credentials>,
    /// Callers without credentials are refused (`auth.mode = required`).
    required: bool,
}

impl CredentialAuthorizer {
    pub(crate) fn new(credentials: Arc<Credentials>, required: bool) -> CredentialAuthorizer {
        CredentialAuthorizer { credentials, required }
    }

    /// Who the caller is: `None` for anonymous (allowed only when not
    /// required). Presented credentials are always checked.
    fn identify(&self, caller: &Caller) -> Result<Option<Identity>, Status> {
        if let Some(token) = &caller.bearer {
            return match self.credentials.by_token(token) {
                Some(id) => Ok(Some(id)),
                None => Err(unauthenticated("the bearer token is not valid (unknown, revoked or malformed)")),
            };
        }
        if let Some(certs) = &caller.certs {
            let name = certs.first().and_then(crate::tls::certificate_identity);
            if let Some(id) = name.as_deref().and_then(|n| self.credentials.by_certificate_name(n)) {
                return Ok(Some(id));
            }
            if self.required {
                return Err(unauthenticated(format!(
                    "the client certificate names no principal ({})",
                    name.as_deref().unwrap_or("no CN or DNS name")
                )));
            }
            return Ok(None);
        }
        if self.required {
            return Err(unauthenticated(
                "authentication required: send `authorization: Bearer <token>` or a client certificate",
            ));
        }
        Ok(None)
    }

    /// The rule for an identified caller.
    fn decide(identity: &Identity, op: Operation, tenant: &str, resource: &str) -> Result<(), Status> {
        let Identity::Principal { tenant: own, name } = identity else { return Ok(()) };
        if op == Operation::Cluster || (op == Operation::Admin && resource.is_empty()) {
            return Err(denied(format!("principal {name:?} is not a cluster admin"), tenant.to_owned()));
        }
        let asked = if tenant.is_empty() { crate::names::DEFAULT_TENANT } else { tenant };
        if asked != own {
            // Not found and forbidden look alike across tenants: the answer
            // never says whether the other tenant or resource exists.
            let hint =
                if tenant.is_empty() { format!(" (name your tenant, {own:?}, in the request)") } else { String::new() };
            return Err(denied(
                format!("principal {name:?} of tenant {own:?} may not access tenant {asked:?}{hint}"),
                asked.to_owned(),
            ));
        }
        Ok(())
    }
}

impl Authorizer for CredentialAuthorizer {
    fn authorize(&self, caller: &Caller, op: Operation, tenant: &str, resource: &str) -> Result<(), Status> {
        // The standalone default: anonymous, nothing presented — one branch.
        if !self.required && !caller.has_credentials() {
            return Ok(());
        }
        match &caller.resolved {
            Some(Resolved::Anonymous) => return Ok(()),
            Some(Resolved::As(identity)) => return Self::decide(identity, op, tenant, resource),
            None => {}
        }
        match self.identify(caller)? {
            Some(identity) => Self::decide(&identity, op, tenant, resource),
            None => Ok(()),
        }
    }

    fn session(&self, mut caller: Caller) -> Result<Caller, Status> {
        if !self.required && !caller.has_credentials() {
            caller.resolved = Some(Resolved::Anonymous);
            return Ok(caller);
        }
        caller.resolved = Some(match self.identify(&caller)? {
            Some(identity) => Resolved::As(identity),
            None => Resolved::Anonymous,
        });
        Ok(caller)
    }

    fn visible_tenant(&self, caller: &Caller) -> Result<Option<String>, Status> {
        if !self.required && !caller.has_credentials() {
            return Ok(None);
        }
        Ok(match self.identify(caller)? {
            Some(Identity::Principal { tenant, .. }) => Some(tenant),
            _ => None,
        })
    }
}

/// The authoriser every service shares.
pub(crate) type Auth = Arc<dyn Authorizer>;

/// Checks one request: the handlers' first line.
pub(crate) fn check<T>(
    auth: &Auth,
    request: &Request<T>,
    op: Operation,
    tenant: &str,
    resource: &str,
) -> Result<(), Status> {
    auth.authorize(&Caller::of(request), op, tenant, resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(tenant: &str) -> Identity {
        Identity::Principal { tenant: tenant.into(), name: "p".into() }
    }

    #[test]
    fn principals_stay_in_their_tenant_and_admins_go_anywhere() {
        let a = principal("a");
        assert!(CredentialAuthorizer::decide(&a, Operation::Produce, "a", "orders").is_ok());
        assert!(CredentialAuthorizer::decide(&a, Operation::Admin, "a", "orders").is_ok());
        let e = CredentialAuthorizer::decide(&a, Operation::Produce, "b", "orders").unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        assert_eq!(strata_proto::error_code(&e), ErrorCode::PermissionDenied);
        assert!(CredentialAuthorizer::decide(&a, Operation::Admin, "a", "").is_err(), "tenant admin");
        assert!(CredentialAuthorizer::decide(&a, Operation::Cluster, "", "").is_err());
        assert!(CredentialAuthorizer::decide(&a, Operation::Describe, "", "t").is_err(), "empty = default");
        assert!(CredentialAuthorizer::decide(&principal("default"), Operation::Describe, "", "t").is_ok());
        assert!(CredentialAuthorizer::decide(&Identity::ClusterAdmin, Operation::Cluster, "b", "").is_ok());
    }

    #[test]
    fn credentials_are_required_only_when_configured() {
        let creds = Arc::new(Credentials::default());
        let open = CredentialAuthorizer::new(creds.clone(), false);
        let closed = CredentialAuthorizer::new(creds, true);
        let nobody = Caller::default();
        assert!(open.authorize(&nobody, Operation::Admin, "x", "").is_ok());
        assert_eq!(closed.authorize(&nobody, Operation::Describe, "", "").unwrap_err().code(), Code::Unauthenticated);
        let garbage = Caller { bearer: Some("garbage".into()), ..Caller::default() };
        assert_eq!(open.authorize(&garbage, Operation::Describe, "", "").unwrap_err().code(), Code::Unauthenticated);
        let e = closed.authorize(&garbage, Operation::Describe, "", "").unwrap_err();
        assert_eq!(strata_proto::error_code(&e), ErrorCode::Unauthenticated);
    }
}
