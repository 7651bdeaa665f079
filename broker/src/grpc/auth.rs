//! The authorisation seam. Every handler says who calls ([`Caller`], from
//! the request's metadata and peer address), what it does ([`Operation`]) and
//! on which tenant's resource, before it calls the domain; the answer is the
//! call's status when refused.
//!
//! Today the broker runs with [`AllowAll`]: anonymous access, the standalone
//! default (DESIGN §4.5). Authentication (tokens, mTLS principals) and ACLs
//! plug in behind [`Authorizer`] without changing a handler.

use std::net::SocketAddr;
use std::sync::Arc;

use tonic::{Request, Status};

/// What a call does, as ACLs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    /// Write messages: produce, send.
    Produce,
    /// Read messages or move a consumer's position: fetch, receive, ack,
    /// group membership and offsets.
    Consume,
    /// Create, change or delete resources.
    Admin,
    /// Read metadata: list, describe, offsets.
    Describe,
}

/// Who calls.
#[derive(Debug, Clone, Default)]
pub(crate) struct Caller {
    /// The `authorization: Bearer …` token, when the client sent one.
    pub bearer: Option<String>,
    pub peer: Option<SocketAddr>,
}

impl Caller {
    pub fn of<T>(request: &Request<T>) -> Caller {
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        Caller { bearer, peer: request.remote_addr() }
    }
}

/// Decides whether `caller` may do `op` on `resource` (a topic, queue or
/// group name; empty for the tenant itself) of `tenant` (empty: the caller's
/// own, as `common.proto` says).
pub(crate) trait Authorizer: Send + Sync + 'static {
    fn authorize(&self, caller: &Caller, op: Operation, tenant: &str, resource: &str) -> Result<(), Status>;
}

/// Everyone may do everything: anonymous access.
#[derive(Debug, Default)]
pub(crate) struct AllowAll;

impl Authorizer for AllowAll {
    fn authorize(&self, caller: &Caller, op: Operation, tenant: &str, resource: &str) -> Result<(), Status> {
        tracing::trace!(peer = ?caller.peer, token = caller.bearer.is_some(), ?op, tenant, resource, "allowed");
        Ok(())
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
