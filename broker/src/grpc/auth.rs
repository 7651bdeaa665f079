//! The authorisation seam. Every handler says who calls ([`Caller`], from
//! the request's metadata, peer address and verified client certificate),
//! what it does ([`Operation`]) and on which of a tenant's resources
//! ([`Resource`]), before it calls the domain; the answer is the call's
//! status when refused.
//!
//! [`CredentialAuthorizer`] (DESIGN §4.5) identifies the caller — the admin
//! token, an issued bearer token, or a client certificate whose CN names a
//! principal — and decides:
//! - the cluster admin may do everything, anywhere;
//! - a principal acts in its own tenant only (an empty tenant field *is* its
//!   tenant: [`Authorizer::authorize`] fills it in), and there only what its
//!   tenant's ACL grants it (`crate::acl`; deny by default). Creating and
//!   deleting tenants, principals, tokens and ACLs is the cluster admin's.
//!   Across tenants the refusal never says whether the other tenant or its
//!   resource exists.
//!
//! Without credentials a caller is refused UNAUTHENTICATED when
//! `auth.mode = required`, and acts as an anonymous admin otherwise (the
//! standalone default; its empty tenant stays the `default` tenant).

use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use strata_proto::v1::{ErrorCode, ErrorInfo};
use tonic::{Code, Request, Status};

use super::status::quota_status;
use crate::acl::{AclOperation, ResourceKind};
use crate::quota::{Quota, Quotas};
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

impl Operation {
    /// The ACL operation this is, `None` for cluster administration.
    fn acl(self) -> Option<AclOperation> {
        match self {
            Operation::Produce => Some(AclOperation::Produce),
            Operation::Consume => Some(AclOperation::Consume),
            Operation::Admin => Some(AclOperation::Admin),
            Operation::Describe => Some(AclOperation::Describe),
            Operation::Cluster => None,
        }
    }
}

/// What a call touches, within its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resource<'a> {
    /// The tenant as a whole: with [`Operation::Describe`] listings (which
    /// the handler then filters by [`Authorizer::permits`]) and cluster
    /// information; with any other operation, tenant administration (the
    /// cluster admin's).
    Tenant,
    Topic(&'a str),
    Queue(&'a str),
    Group(&'a str),
    /// Some topic of the tenant, any one (an idempotent producer's
    /// `InitProducer`, as Kafka allows it with WRITE on any topic).
    AnyTopic,
}

impl Resource<'_> {
    fn describe(&self, tenant: &str) -> String {
        match self {
            Resource::Tenant => format!("tenant {tenant:?}"),
            Resource::Topic(n) => format!("topic {tenant}/{n}"),
            Resource::Queue(n) => format!("queue {tenant}/{n}"),
            Resource::Group(n) => format!("group {tenant}/{n}"),
            Resource::AnyTopic => format!("any topic of tenant {tenant:?}"),
        }
    }

    fn path(&self, tenant: &str) -> String {
        match self {
            Resource::Tenant | Resource::AnyTopic => tenant.to_owned(),
            Resource::Topic(n) | Resource::Queue(n) | Resource::Group(n) => format!("{tenant}/{n}"),
        }
    }
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

/// Decides whether `caller` may do `op` on `resource` of `tenant`.
pub(crate) trait Authorizer: Send + Sync + 'static {
    /// Refuses or allows. An empty `tenant` means the caller's own (as
    /// `common.proto` says): for a principal it is set to the principal's
    /// tenant, so the handler goes on with the tenant that was checked;
    /// anonymous callers and the cluster admin keep it empty (`default`).
    fn authorize(
        &self,
        caller: &Caller,
        op: Operation,
        tenant: &mut String,
        resource: Resource<'_>,
    ) -> Result<(), Status>;

    /// Authenticates once for a stream: the returned caller keeps who it
    /// is, so each message of the stream is only checked against the
    /// rules (a token revoked meanwhile is refused from the next call or
    /// stream on; the open stream ends with its connection; an ACL removed
    /// meanwhile is refused from the next message on).
    fn session(&self, caller: Caller) -> Result<Caller, Status> {
        Ok(caller)
    }

    /// Whether `caller`, already allowed into the tenant, may do `op` on
    /// `resource`: listings show only what this allows (Kafka shows only
    /// the topics one may describe).
    fn permits(&self, _caller: &Caller, _op: Operation, _resource: Resource<'_>) -> bool {
        true
    }

    /// The only tenant whose entries a listing may show this caller
    /// (`None`: every tenant).
    fn visible_tenant(&self, _caller: &Caller) -> Result<Option<String>, Status> {
        Ok(None)
    }

    /// The tenant whose `max_connections` the caller's connection counts
    /// for: its principal's, `default` for anonymous callers, `None` for the
    /// cluster admin (never counted).
    fn connection_tenant(&self, _caller: &Caller) -> Option<String> {
        None
    }
}

/// Everyone may do everything: anonymous access (tests of the handlers).
#[derive(Debug, Default)]
#[allow(dead_code)]
pub(crate) struct AllowAll;

impl Authorizer for AllowAll {
    fn authorize(
        &self,
        caller: &Caller,
        op: Operation,
        tenant: &mut String,
        resource: Resource<'_>,
    ) -> Result<(), Status> {
        tracing::trace!(peer = ?caller.peer, token = caller.bearer.is_some(), ?op, tenant, ?resource, "allowed");
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
    fn decide(
        &self,
        identity: &Identity,
        op: Operation,
        tenant: &mut String,
        resource: Resource<'_>,
    ) -> Result<(), Status> {
        let Identity::Principal { tenant: own, name } = identity else { return Ok(()) };
        if tenant.is_empty() {
            tenant.clone_from(own);
        }
        let Some(acl_op) = op.acl() else {
            return Err(denied(format!("principal {name:?} is not a cluster admin"), tenant.clone()));
        };
        if tenant != own {
            // Not found and forbidden look alike across tenants: the answer
            // never says whether the other tenant or resource exists.
            return Err(denied(
                format!("principal {name:?} of tenant {own:?} may not access tenant {tenant:?}"),
                tenant.clone(),
            ));
        }
        let allowed = match resource {
            Resource::Tenant => op == Operation::Describe,
            Resource::Topic(n) => self.credentials.allows(name, ResourceKind::Topic, n, acl_op),
            Resource::Queue(n) => self.credentials.allows(name, ResourceKind::Queue, n, acl_op),
            Resource::Group(n) => self.credentials.allows(name, ResourceKind::Group, n, acl_op),
            Resource::AnyTopic => self.credentials.allows_any(name, ResourceKind::Topic, acl_op),
        };
        if allowed {
            return Ok(());
        }
        let message = match resource {
            Resource::Tenant => format!("principal {name:?} is not a cluster admin (tenant administration)"),
            _ => format!("principal {name:?} has no ACL allowing {} on {}", acl_op.as_str(), resource.describe(tenant)),
        };
        Err(denied(message, resource.path(tenant)))
    }

    /// Who the caller is, resolved or identified now: `None` for anonymous.
    fn who(&self, caller: &Caller) -> Result<Option<Identity>, Status> {
        if !self.required && !caller.has_credentials() {
            return Ok(None);
        }
        match &caller.resolved {
            Some(Resolved::Anonymous) => Ok(None),
            Some(Resolved::As(identity)) => Ok(Some(identity.clone())),
            None => self.identify(caller),
        }
    }
}

impl Authorizer for CredentialAuthorizer {
    fn authorize(
        &self,
        caller: &Caller,
        op: Operation,
        tenant: &mut String,
        resource: Resource<'_>,
    ) -> Result<(), Status> {
        // The standalone default: anonymous, nothing presented — one branch.
        if !self.required && !caller.has_credentials() {
            return Ok(());
        }
        match &caller.resolved {
            Some(Resolved::Anonymous) => Ok(()),
            // A stream's messages: no clone of the identity.
            Some(Resolved::As(identity)) => self.decide(identity, op, tenant, resource),
            None => match self.identify(caller)? {
                Some(identity) => self.decide(&identity, op, tenant, resource),
                None => Ok(()),
            },
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

    fn permits(&self, caller: &Caller, op: Operation, resource: Resource<'_>) -> bool {
        match self.who(caller) {
            Ok(None) => true,
            // The caller's own tenant (an empty one is filled in).
            Ok(Some(identity)) => self.decide(&identity, op, &mut String::new(), resource).is_ok(),
            Err(_) => false,
        }
    }

    fn visible_tenant(&self, caller: &Caller) -> Result<Option<String>, Status> {
        Ok(match self.who(caller)? {
            Some(Identity::Principal { tenant, .. }) => Some(tenant),
            _ => None,
        })
    }

    fn connection_tenant(&self, caller: &Caller) -> Option<String> {
        match self.who(caller) {
            Ok(None) => Some(crate::names::DEFAULT_TENANT.to_owned()),
            Ok(Some(Identity::Principal { tenant, .. })) => Some(tenant),
            Ok(Some(Identity::ClusterAdmin)) | Err(_) => None,
        }
    }
}

/// The authoriser with the tenant quotas every call meets after it: the
/// connection count, requests/s (throttled, then refused) and, called by
/// the data-plane handlers, the byte rates (`crate::quota`).
pub(crate) struct Gate {
    authz: Arc<dyn Authorizer>,
    quotas: Option<Arc<Quotas>>,
}

/// The gate every service shares.
pub(crate) type Auth = Arc<Gate>;

impl Gate {
    pub(crate) fn new(authz: Arc<dyn Authorizer>, quotas: Option<Arc<Quotas>>) -> Auth {
        Arc::new(Gate { authz, quotas })
    }

    /// [`Authorizer::authorize`], then the quotas of the call: the caller's
    /// connection (its first call registers it with its tenant) and the
    /// requests/s of the tenant acted on (the call waits up to
    /// `quotas.max_throttle`, or is refused). Cluster administration is
    /// never charged.
    pub(crate) async fn authorize(
        &self,
        caller: &Caller,
        op: Operation,
        tenant: &mut String,
        resource: Resource<'_>,
    ) -> Result<(), Status> {
        self.authz.authorize(caller, op, tenant, resource)?;
        if op == Operation::Cluster {
            return Ok(());
        }
        let Some(q) = &self.quotas else { return Ok(()) };
        self.connection(q, caller)?;
        q.admit(Self::tenant(tenant), Quota::RequestsPerSecond, 1).await.map_err(quota_status)?;
        Ok(())
    }

    fn connection(&self, q: &Quotas, caller: &Caller) -> Result<(), Status> {
        if let Some(peer) = caller.peer
            && !q.is_registered(peer)
        {
            q.connection(Some(peer), self.authz.connection_tenant(caller).as_deref()).map_err(quota_status)?;
        }
        Ok(())
    }

    fn tenant(tenant: &str) -> &str {
        if tenant.is_empty() { crate::names::DEFAULT_TENANT } else { tenant }
    }

    /// [`Authorizer::session`], then the connection quota.
    pub(crate) fn session(&self, caller: Caller) -> Result<Caller, Status> {
        let caller = self.authz.session(caller)?;
        if let Some(q) = &self.quotas {
            self.connection(q, &caller)?;
        }
        Ok(caller)
    }

    pub(crate) fn permits(&self, caller: &Caller, op: Operation, resource: Resource<'_>) -> bool {
        self.authz.permits(caller, op, resource)
    }

    pub(crate) fn visible_tenant(&self, caller: &Caller) -> Result<Option<String>, Status> {
        self.authz.visible_tenant(caller)
    }

    /// Produced (or sent) bytes of `tenant`: the delay they waited.
    pub(crate) async fn produce_bytes(&self, tenant: &str, bytes: u64) -> Result<u32, Status> {
        let Some(q) = &self.quotas else { return Ok(0) };
        let waited = q.admit(Self::tenant(tenant), Quota::ProduceBytesPerSecond, bytes).await.map_err(quota_status)?;
        Ok(waited.as_millis().min(u128::from(u32::MAX)) as u32)
    }

    /// Before a fetch or receive of `tenant`: pays for the bytes earlier
    /// reads returned (the delay waited).
    pub(crate) async fn before_consume(&self, tenant: &str) -> Result<u32, Status> {
        let Some(q) = &self.quotas else { return Ok(0) };
        let waited = q.admit_consume(Self::tenant(tenant)).await.map_err(quota_status)?;
        Ok(waited.as_millis().min(u128::from(u32::MAX)) as u32)
    }

    /// After a fetch or receive: the bytes it returned.
    pub(crate) fn consumed(&self, tenant: &str, bytes: u64) {
        if let Some(q) = &self.quotas {
            q.consumed(Self::tenant(tenant), bytes);
        }
    }
}

/// The caller and the message of a unary request: the handlers' first
/// line, before [`Authorizer::authorize`] (which may fill in the tenant).
pub(crate) fn split<T>(request: Request<T>) -> (Caller, T) {
    (Caller::of(&request), request.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{AclBinding, PatternType};
    use crate::catalog::{Catalog, CatalogCommand as C};

    /// An authoriser knowing principal `p` of tenant `a` (produce on topics
    /// `orders.*`, describe on group `g`) and `q` of tenant `b` (nothing).
    fn authorizer() -> CredentialAuthorizer {
        let mut catalog = Catalog::default();
        for t in ["a", "b"] {
            catalog.apply(&C::CreateTenant { name: t.into(), at_ms: 0, quotas: Default::default() }).unwrap();
        }
        catalog.apply(&C::CreatePrincipal { tenant: "a".into(), name: "p".into(), at_ms: 0 }).unwrap();
        catalog.apply(&C::CreatePrincipal { tenant: "b".into(), name: "q".into(), at_ms: 0 }).unwrap();
        let grant = |kind, pattern, name: &str, operation| C::AddAcl {
            tenant: "a".into(),
            binding: AclBinding { principal: "p".into(), kind, pattern, name: name.into(), operation },
        };
        catalog.apply(&grant(ResourceKind::Topic, PatternType::Prefixed, "orders.", AclOperation::Produce)).unwrap();
        catalog.apply(&grant(ResourceKind::Group, PatternType::Literal, "g", AclOperation::Describe)).unwrap();
        let creds = Arc::new(Credentials::load(std::path::Path::new(""), &catalog).unwrap());
        CredentialAuthorizer::new(creds, true)
    }

    fn principal(tenant: &str, name: &str) -> Identity {
        Identity::Principal { tenant: tenant.into(), name: name.into() }
    }

    #[test]
    fn principals_get_what_their_acl_grants_in_their_tenant_only() {
        let z = authorizer();
        let p = principal("a", "p");
        let decide = |id: &Identity, op, tenant: &str, r| z.decide(id, op, &mut tenant.to_owned(), r);
        assert!(decide(&p, Operation::Produce, "a", Resource::Topic("orders.eu")).is_ok());
        assert!(decide(&p, Operation::Describe, "a", Resource::Topic("orders.eu")).is_ok(), "implied");
        assert!(decide(&p, Operation::Consume, "a", Resource::Topic("orders.eu")).is_err());
        assert!(decide(&p, Operation::Produce, "a", Resource::Topic("payments")).is_err());
        assert!(decide(&p, Operation::Admin, "a", Resource::Topic("orders.eu")).is_err());
        assert!(decide(&p, Operation::Produce, "a", Resource::AnyTopic).is_ok());
        assert!(decide(&p, Operation::Describe, "a", Resource::Group("g")).is_ok());
        assert!(decide(&p, Operation::Consume, "a", Resource::Group("g")).is_err());
        assert!(decide(&p, Operation::Describe, "a", Resource::Tenant).is_ok(), "listing, filtered later");
        let e = decide(&p, Operation::Produce, "b", Resource::Topic("orders.eu")).unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        assert_eq!(strata_proto::error_code(&e), ErrorCode::PermissionDenied);
        assert!(decide(&p, Operation::Admin, "a", Resource::Tenant).is_err(), "tenant admin");
        assert!(decide(&p, Operation::Cluster, "", Resource::Tenant).is_err());
        // No ACL at all: deny by default, even to describe.
        let q = principal("b", "q");
        assert!(decide(&q, Operation::Describe, "b", Resource::Topic("orders.eu")).is_err());
        assert!(decide(&Identity::ClusterAdmin, Operation::Cluster, "b", Resource::Tenant).is_ok());
    }

    #[test]
    fn an_empty_tenant_is_the_principals_own() {
        let z = authorizer();
        let mut tenant = String::new();
        z.decide(&principal("a", "p"), Operation::Produce, &mut tenant, Resource::Topic("orders.x")).unwrap();
        assert_eq!(tenant, "a");
        // Refused: still names the tenant it was checked against.
        let mut tenant = String::new();
        assert!(z.decide(&principal("b", "q"), Operation::Produce, &mut tenant, Resource::Topic("o")).is_err());
        assert_eq!(tenant, "b");
        // The admin keeps the empty (default) tenant.
        let mut tenant = String::new();
        z.decide(&Identity::ClusterAdmin, Operation::Produce, &mut tenant, Resource::Topic("o")).unwrap();
        assert_eq!(tenant, "");
    }

    #[test]
    fn credentials_are_required_only_when_configured() {
        let creds = Arc::new(Credentials::default());
        let open = CredentialAuthorizer::new(creds.clone(), false);
        let closed = CredentialAuthorizer::new(creds, true);
        let nobody = Caller::default();
        let mut t = String::new();
        assert!(open.authorize(&nobody, Operation::Admin, &mut "x".into(), Resource::Tenant).is_ok());
        let e = closed.authorize(&nobody, Operation::Describe, &mut t, Resource::Tenant).unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(open.permits(&nobody, Operation::Admin, Resource::Topic("x")));
        assert!(!closed.permits(&nobody, Operation::Describe, Resource::Topic("x")));
        let garbage = Caller { bearer: Some("garbage".into()), ..Caller::default() };
        let e = open.authorize(&garbage, Operation::Describe, &mut t, Resource::Tenant).unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        let e = closed.authorize(&garbage, Operation::Describe, &mut t, Resource::Tenant).unwrap_err();
        assert_eq!(strata_proto::error_code(&e), ErrorCode::Unauthenticated);
    }
}
