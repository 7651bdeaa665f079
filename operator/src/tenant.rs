//! `Tenant`: a broker tenant, the Kubernetes namespaces allowed to create
//! Topics, Queues and ConsumerGroups in it (namespace-per-team
//! multi-tenancy), and its principals: each gets a token, written into a
//! Secret `strata-<tenant>-<principal>` in each namespace it may be used
//! from, and exactly the declared ACL bindings. The broker tenant's name is
//! the resource's name.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{CustomResource, KubeSchema, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use strata_proto::v1::{Acl, AclOperation, AclPatternType, AclResourceKind};

use crate::broker_cluster::{self, BrokerCluster, TLS_CA_KEY};
use crate::context::{Context, MANAGER, ServiceDns};
use crate::resource::{Blocked, BrokerResource, ClusterRef, DeletionPolicy, Placement, Report};
use crate::status::{Condition, Reason};

/// Annotation whose new value rotates every principal's token: a new token
/// is issued, the Secrets updated, then the old token revoked.
pub const ROTATE_TOKENS_ANNOTATION: &str = "strata.dev/rotate-tokens";
/// Annotation on a token Secret: the id of the token it holds.
pub const TOKEN_ID_ANNOTATION: &str = "strata.dev/token-id";

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
    /// broker refuses to delete a tenant that still owns topics). `Delete`
    /// also removes the principals and their token Secrets; `Retain` keeps
    /// them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Principals of the tenant. Each gets one token, written into the
    /// Secret `strata-<tenant>-<principal>` (keys `token`, `tenant`,
    /// `principal`, `server`, and `ca.crt` with TLS) in each of its
    /// namespaces; its ACL on the broker is exactly `acls`.
    /// Names are unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub principals: Vec<PrincipalSpec>,
    /// Aggregate limits over all of the tenant's topics, queues and
    /// connections, enforced by the brokers; an unset field is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quotas: Option<TenantQuotasSpec>,
}

/// A tenant's quotas (the broker's `TenantQuotas`). Sizes and rates are
/// bytes: a number, or one with `KiB`, `MiB`, `GiB`, `TiB` (`Ki`... too).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TenantQuotasSpec {
    /// Topics of the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_topics: Option<u32>,
    /// Queues of the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queues: Option<u32>,
    /// Partitions over all its topics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_partitions: Option<u32>,
    /// Hot + cold bytes of its topics and queues (`50GiB`); produce and send
    /// are refused at the limit until retention frees space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stored_bytes: Option<String>,
    /// Bytes produced (and sent to queues) per second, per broker (`10MiB`);
    /// throttled, then refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub produce_bytes_per_second: Option<String>,
    /// Bytes consumed (and received from queues) per second, per broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consume_bytes_per_second: Option<String>,
    /// Requests per second, per broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u32>,
    /// Open connections of the tenant's principals, per broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

impl TenantQuotasSpec {
    /// The broker's form; a size that does not parse names its field.
    pub fn to_proto(&self) -> Result<strata_proto::v1::TenantQuotas, String> {
        let bytes = |field: &str, v: &Option<String>| -> Result<Option<u64>, String> {
            v.as_deref()
                .map(|t| {
                    crate::broker_cluster::parse_bytes(t)
                        .ok_or_else(|| format!("spec.quotas.{field}: {t:?} is not a byte size (e.g. 10MiB)"))
                })
                .transpose()
        };
        Ok(strata_proto::v1::TenantQuotas {
            max_topics: self.max_topics,
            max_queues: self.max_queues,
            max_partitions: self.max_partitions,
            max_stored_bytes: bytes("maxStoredBytes", &self.max_stored_bytes)?,
            produce_bytes_per_second: bytes("produceBytesPerSecond", &self.produce_bytes_per_second)?,
            consume_bytes_per_second: bytes("consumeBytesPerSecond", &self.consume_bytes_per_second)?,
            requests_per_second: self.requests_per_second,
            max_connections: self.max_connections,
        })
    }
}

/// A principal of the tenant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrincipalSpec {
    /// The principal's name on the broker (unique in the cluster).
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub name: String,
    /// Namespaces that get the token Secret: each must be the Tenant's own
    /// or allowed by `allowedNamespaces`. Empty: the Tenant's own namespace.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// What the principal may do in the tenant (nothing when empty).
    #[serde(default)]
    pub acls: Vec<AclSpec>,
}

/// One ACL rule: `operations` on the resources of `kind` whose name matches
/// `name` as `patternType` says.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AclSpec {
    pub kind: AclKind,
    /// A name (`literal`; `*` matches every name) or the start of names
    /// (`prefixed`).
    pub name: String,
    #[serde(default)]
    pub pattern_type: PatternType,
    #[schemars(length(min = 1))]
    pub operations: Vec<Operation>,
}

/// What an ACL rule applies to.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AclKind {
    Topic,
    Queue,
    Group,
}

/// How an ACL rule's name matches.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum PatternType {
    #[default]
    Literal,
    Prefixed,
}

/// An operation an ACL rule grants (see the broker's `AclOperation`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    All,
    Produce,
    Consume,
    Admin,
    Describe,
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
    /// The principals made on the broker, their current token and Secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<PrincipalStatus>,
    /// The value of `strata.dev/rotate-tokens` the tokens were last rotated for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_rotated_for: Option<String>,
}

/// A principal as made.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PrincipalStatus {
    pub name: String,
    /// The id of the token in its Secrets (what `RevokeToken` takes).
    pub token_id: String,
    /// Its token Secrets, as `namespace/name`.
    #[serde(default)]
    pub secrets: Vec<String>,
}

crate::resource::common_status!(TenantStatus);

/// Whether `namespace` may use `tenant`.
pub fn tenant_allows(tenant: &Tenant, namespace: &str) -> bool {
    let own = tenant.namespace();
    if own.as_deref() == Some(namespace) {
        return true;
    }
    tenant.spec.allowed_namespaces.iter().any(|n| n == "*" || n == namespace)
}

/// The name of a principal's token Secret.
pub fn secret_name(tenant: &str, principal: &str) -> String {
    format!("strata-{tenant}-{principal}")
}

/// The broker bindings `p.acls` declare, in a comparable form.
fn declared_acls(p: &PrincipalSpec) -> BTreeSet<AclKey> {
    let mut out = BTreeSet::new();
    for a in &p.acls {
        let kind = match a.kind {
            AclKind::Topic => AclResourceKind::Topic,
            AclKind::Queue => AclResourceKind::Queue,
            AclKind::Group => AclResourceKind::Group,
        };
        let pattern = match a.pattern_type {
            PatternType::Literal => AclPatternType::Literal,
            PatternType::Prefixed => AclPatternType::Prefixed,
        };
        for op in &a.operations {
            let op = match op {
                Operation::All => AclOperation::All,
                Operation::Produce => AclOperation::Produce,
                Operation::Consume => AclOperation::Consume,
                Operation::Admin => AclOperation::Admin,
                Operation::Describe => AclOperation::Describe,
            };
            out.insert(AclKey { kind: kind as i32, pattern: pattern as i32, name: a.name.clone(), op: op as i32 });
        }
    }
    out
}

/// A binding of one principal, comparable (unspecified pattern = literal).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct AclKey {
    kind: i32,
    pattern: i32,
    name: String,
    op: i32,
}

impl AclKey {
    fn of(a: &Acl) -> AclKey {
        let pattern = if a.pattern_type == AclPatternType::Unspecified as i32 {
            AclPatternType::Literal as i32
        } else {
            a.pattern_type
        };
        AclKey { kind: a.resource_kind, pattern, name: a.resource_name.clone(), op: a.operation }
    }

    fn acl(&self, principal: &str) -> Acl {
        Acl {
            tenant: String::new(),
            principal: principal.to_owned(),
            resource_kind: self.kind,
            pattern_type: self.pattern,
            resource_name: self.name.clone(),
            operation: self.op,
        }
    }
}

fn kube_blocked(what: &str, e: kube::Error) -> Blocked {
    Blocked::new(Reason::BrokerRejected, format!("{what}: Kubernetes API: {e}"))
}

/// What every token Secret of this tenant shares: where clients connect.
struct SecretBase {
    tenant: String,
    server: String,
    ca_pem: Option<Vec<u8>>,
}

/// A token Secret's data.
fn secret_data(base: &SecretBase, principal: &str, token: &str) -> BTreeMap<String, ByteString> {
    let mut d = BTreeMap::from([
        ("token".to_owned(), ByteString(token.as_bytes().to_vec())),
        ("tenant".to_owned(), ByteString(base.tenant.as_bytes().to_vec())),
        ("principal".to_owned(), ByteString(principal.as_bytes().to_vec())),
        ("server".to_owned(), ByteString(base.server.as_bytes().to_vec())),
    ]);
    if let Some(ca) = &base.ca_pem {
        d.insert(TLS_CA_KEY.to_owned(), ByteString(ca.clone()));
    }
    d
}

fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

/// Deletes the Secret `namespace/name` (already gone is success).
async fn delete_secret(ctx: &Context, key: &str) -> Result<(), Blocked> {
    let (ns, name) = split_key(key);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(kube_blocked(&format!("delete Secret {key}"), e)),
    }
}

impl Tenant {
    /// Where this tenant's clients connect, and the CA they trust.
    async fn secret_base(&self, ctx: &Context) -> Result<SecretBase, Blocked> {
        let own = self.namespace().unwrap_or_default();
        let cluster_ns = self.spec.cluster_ref.namespace.clone().unwrap_or(own);
        let cluster_name = &self.spec.cluster_ref.name;
        let clusters: Api<BrokerCluster> = Api::namespaced(ctx.client.clone(), &cluster_ns);
        let cluster = clusters
            .get_opt(cluster_name)
            .await
            .map_err(|e| kube_blocked("read BrokerCluster", e))?
            .ok_or_else(|| {
                Blocked::new(Reason::ClusterNotFound, format!("BrokerCluster {cluster_ns}/{cluster_name} not found"))
            })?;
        let access = broker_cluster::access(ctx, &cluster)
            .await
            .map_err(|e| Blocked::new(Reason::BrokerRejected, e.to_string()))?
            .map_err(|(reason, message)| Blocked::new(reason, message))?;
        Ok(SecretBase {
            tenant: self.name_any(),
            server: access.url(&ServiceDns.url_for(&cluster_ns, cluster_name)),
            ca_pem: access.tls.and_then(|t| t.ca_pem),
        })
    }

    /// Makes the principals, their ACLs, tokens and Secrets match the spec,
    /// and removes what was made for principals and namespaces no longer
    /// listed. Namespaces the tenant does not allow get nothing and block
    /// `Ready` with `NamespaceNotAllowed`.
    async fn sync_principals(
        &self,
        broker: &strata_client::Client,
        status: &mut TenantStatus,
        ctx: &Context,
        report: &mut Report,
    ) -> Result<(), Blocked> {
        let tenant = self.name_any();
        let own_ns = self.namespace().unwrap_or_default();
        let rotate_to = self.annotations().get(ROTATE_TOKENS_ANNOTATION).cloned();
        let rotate = rotate_to.is_some() && rotate_to != status.tokens_rotated_for;
        let previous: BTreeMap<String, PrincipalStatus> =
            status.principals.iter().map(|p| (p.name.clone(), p.clone())).collect();
        if self.spec.principals.is_empty() && previous.is_empty() {
            return Ok(());
        }
        let base = self.secret_base(ctx).await?;
        let on_broker: BTreeMap<String, strata_proto::v1::Principal> = broker
            .list_principals(&tenant)
            .await
            .map_err(|e| Blocked::from_client("list principals", &e))?
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect();
        let mut made = Vec::new();
        let mut refused = Vec::new();
        for p in &self.spec.principals {
            let prev = previous.get(&p.name);
            let mut namespaces: Vec<String> =
                if p.namespaces.is_empty() { vec![own_ns.clone()] } else { p.namespaces.clone() };
            namespaces.sort();
            namespaces.dedup();
            let (allowed, denied): (Vec<String>, Vec<String>) =
                namespaces.into_iter().partition(|n| tenant_allows(self, n));
            if !denied.is_empty() {
                refused.push(format!("principal {}: {}", p.name, denied.join(", ")));
            }

            // The principal and its ACL.
            let broker_ids: BTreeSet<String> = match on_broker.get(&p.name) {
                Some(bp) => bp.tokens.iter().map(|t| t.id.clone()).collect(),
                None => {
                    broker
                        .create_principal(&tenant, &p.name)
                        .await
                        .map_err(|e| Blocked::from_client(&format!("create principal {}", p.name), &e))?;
                    if prev.is_some() {
                        report
                            .drift
                            .push(format!("principal {} was missing on the broker and was created again", p.name));
                    } else {
                        report.changes.push(format!("created principal {}", p.name));
                    }
                    BTreeSet::new()
                }
            };
            self.sync_acls(broker, p, report).await?;

            // The token: the one the Secrets hold while the broker still
            // knows it, else (or when rotating) a new one.
            let secret_key = |ns: &str| format!("{ns}/{}", secret_name(&tenant, &p.name));
            let mut existing = BTreeMap::new();
            for ns in &allowed {
                let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
                let name = secret_name(&tenant, &p.name);
                let found =
                    api.get_opt(&name).await.map_err(|e| kube_blocked(&format!("read Secret {ns}/{name}"), e))?;
                if let Some(s) = found {
                    existing.insert(ns.clone(), s);
                }
            }
            let held = |s: &Secret| -> Option<(String, String)> {
                let id = s.annotations().get(TOKEN_ID_ANNOTATION)?.clone();
                let token = String::from_utf8(s.data.as_ref()?.get("token")?.0.clone()).ok()?;
                broker_ids.contains(&id).then_some((token, id))
            };
            let mut current: Option<(String, String)> = None;
            for s in existing.values() {
                if let Some((token, id)) = held(s)
                    && (current.is_none() || prev.is_some_and(|pr| pr.token_id == id))
                {
                    current = Some((token, id));
                }
            }
            let (token, token_id) = match current {
                Some(c) if !rotate => c,
                _ => {
                    let (token, id) = broker
                        .issue_token(&tenant, &p.name)
                        .await
                        .map_err(|e| Blocked::from_client(&format!("issue a token for {}", p.name), &e))?;
                    report.changes.push(if rotate {
                        format!("rotated the token of principal {} (new id {id})", p.name)
                    } else {
                        format!("issued a token for principal {} (id {id})", p.name)
                    });
                    (token, id)
                }
            };
            let data = secret_data(&base, &p.name, &token);
            for ns in &allowed {
                let up_to_date = existing.get(ns).is_some_and(|s| {
                    s.data.as_ref() == Some(&data)
                        && s.annotations().get(TOKEN_ID_ANNOTATION).map(String::as_str) == Some(token_id.as_str())
                });
                if !up_to_date {
                    self.apply_secret(ctx, ns, &p.name, &token_id, data.clone()).await?;
                }
            }
            // Only once every Secret holds the new token: revoke the old ones
            // (the status' and any other the Secrets held), exactly by id.
            let mut old: BTreeSet<String> = existing.values().filter_map(|s| held(s).map(|(_, id)| id)).collect();
            if let Some(pr) = prev {
                old.insert(pr.token_id.clone());
            }
            for id in old.into_iter().filter(|id| *id != token_id && broker_ids.contains(id)) {
                match broker.revoke_token(&tenant, &p.name, &id).await {
                    Ok(()) => report.changes.push(format!("revoked token {id} of principal {}", p.name)),
                    Err(strata_client::Error::Server(s)) if s.error_code == strata_client::ErrorCode::UnknownToken => {}
                    Err(e) => return Err(Blocked::from_client(&format!("revoke token {id} of {}", p.name), &e)),
                }
            }
            // Secrets of namespaces no longer listed (or no longer allowed).
            let keep: Vec<String> = allowed.iter().map(|ns| secret_key(ns)).collect();
            for gone in prev.map(|pr| pr.secrets.as_slice()).unwrap_or_default().iter().filter(|k| !keep.contains(k)) {
                delete_secret(ctx, gone).await?;
                report.changes.push(format!("deleted Secret {gone} of principal {}", p.name));
            }
            made.push(PrincipalStatus { name: p.name.clone(), token_id, secrets: keep });
        }
        // Principals no longer listed: their Secrets, then the principal
        // (which revokes its tokens).
        for (name, pr) in &previous {
            if self.spec.principals.iter().any(|p| &p.name == name) {
                continue;
            }
            for key in &pr.secrets {
                delete_secret(ctx, key).await?;
            }
            match broker.delete_principal(&tenant, name).await {
                Ok(()) => {}
                Err(strata_client::Error::Server(s)) if s.error_code == strata_client::ErrorCode::UnknownPrincipal => {}
                Err(e) => return Err(Blocked::from_client(&format!("delete principal {name}"), &e)),
            }
            report.changes.push(format!("deleted principal {name} and its Secrets"));
        }
        status.principals = made;
        if rotate {
            status.tokens_rotated_for = rotate_to;
        }
        if !refused.is_empty() {
            return Err(Blocked::new(
                Reason::NamespaceNotAllowed,
                format!(
                    "no token Secret made in namespaces the Tenant does not allow (its own or spec.allowedNamespaces): {}",
                    refused.join("; ")
                ),
            ));
        }
        Ok(())
    }

    /// Makes the principal's bindings on the broker exactly the declared ones.
    async fn sync_acls(
        &self,
        broker: &strata_client::Client,
        p: &PrincipalSpec,
        report: &mut Report,
    ) -> Result<(), Blocked> {
        let tenant = self.name_any();
        let want = declared_acls(p);
        let have: BTreeSet<AclKey> = broker
            .list_acls(&tenant, &p.name)
            .await
            .map_err(|e| Blocked::from_client(&format!("list ACLs of {}", p.name), &e))?
            .iter()
            .filter(|a| a.principal == p.name)
            .map(AclKey::of)
            .collect();
        for k in want.difference(&have) {
            broker
                .add_acl(&tenant, k.acl(&p.name))
                .await
                .map_err(|e| Blocked::from_client(&format!("add an ACL of {}", p.name), &e))?;
        }
        for k in have.difference(&want) {
            match broker.remove_acl(&tenant, k.acl(&p.name)).await {
                Ok(()) => {}
                Err(strata_client::Error::Server(s)) if s.error_code == strata_client::ErrorCode::UnknownAcl => {}
                Err(e) => return Err(Blocked::from_client(&format!("remove an ACL of {}", p.name), &e)),
            }
        }
        let (added, removed) = (want.difference(&have).count(), have.difference(&want).count());
        if added + removed > 0 {
            report.changes.push(format!("ACL of principal {}: {added} bindings added, {removed} removed", p.name));
        }
        Ok(())
    }

    /// Server-side applies the token Secret of `principal` in `ns`.
    async fn apply_secret(
        &self,
        ctx: &Context,
        ns: &str,
        principal: &str,
        token_id: &str,
        data: BTreeMap<String, ByteString>,
    ) -> Result<(), Blocked> {
        let tenant = self.name_any();
        let name = secret_name(&tenant, principal);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.to_owned()),
                labels: Some(BTreeMap::from([
                    ("app.kubernetes.io/managed-by".to_owned(), MANAGER.to_owned()),
                    ("strata.dev/tenant".to_owned(), tenant.clone()),
                    ("strata.dev/principal".to_owned(), principal.to_owned()),
                ])),
                annotations: Some(BTreeMap::from([(TOKEN_ID_ANNOTATION.to_owned(), token_id.to_owned())])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(data),
            ..Secret::default()
        };
        let mut value = serde_json::to_value(&secret)
            .map_err(|e| Blocked::new(Reason::InvalidSpec, format!("Secret {ns}/{name}: {e}")))?;
        value["apiVersion"] = "v1".into();
        value["kind"] = "Secret".into();
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
        api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&value))
            .await
            .map_err(|e| kube_blocked(&format!("write Secret {ns}/{name}"), e))?;
        Ok(())
    }

    /// Every token Secret this Tenant made or would make.
    fn all_secret_keys(&self) -> BTreeSet<String> {
        let tenant = self.name_any();
        let own = self.namespace().unwrap_or_default();
        let mut keys: BTreeSet<String> =
            self.status.iter().flat_map(|s| s.principals.iter().flat_map(|p| p.secrets.iter().cloned())).collect();
        for p in &self.spec.principals {
            if p.namespaces.is_empty() {
                keys.insert(format!("{own}/{}", secret_name(&tenant, &p.name)));
            }
            for ns in p.namespaces.iter().filter(|n| tenant_allows(self, n)) {
                keys.insert(format!("{ns}/{}", secret_name(&tenant, &p.name)));
            }
        }
        keys
    }
}

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
        ctx: &Context,
    ) -> Result<Report, Blocked> {
        let name = self.name_any();
        let quotas = self
            .spec
            .quotas
            .as_ref()
            .map(TenantQuotasSpec::to_proto)
            .transpose()
            .map_err(|m| Blocked::new(Reason::InvalidSpec, m))?
            .unwrap_or_default();
        let tenants = broker.list_tenants().await.map_err(|e| Blocked::from_client("list tenants", &e))?;
        let mut report = Report::default();
        match tenants.iter().find(|t| t.name == name) {
            Some(t) => {
                status.topic_count = t.topic_count;
                if t.quotas.unwrap_or_default() != quotas {
                    broker
                        .update_tenant(&name, quotas)
                        .await
                        .map_err(|e| Blocked::from_client(&format!("set the quotas of tenant {name}"), &e))?;
                    report.changes.push(format!("set the quotas of tenant {name}"));
                }
            }
            None => {
                broker
                    .create_tenant_with_quotas(&name, quotas)
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
        self.sync_principals(broker, status, ctx, &mut report).await?;
        Ok(report)
    }

    /// Deletes the broker tenant (with it go its principals, tokens and
    /// ACL), then the token Secrets.
    async fn delete(&self, broker: &strata_client::Client, ctx: &Context) -> Result<(), Blocked> {
        let name = self.name_any();
        match broker.delete_tenant(&name).await {
            Ok(()) => {}
            Err(strata_client::Error::Server(s)) if s.error_code == strata_client::ErrorCode::UnknownTenant => {}
            Err(e) => {
                let mut b = Blocked::from_client(&format!("delete tenant {name}"), &e);
                if b.reason == Reason::DeletionBlocked {
                    b.message = format!("tenant {name} still owns resources; delete them first ({e})");
                }
                return Err(b);
            }
        }
        for key in self.all_secret_keys() {
            delete_secret(ctx, &key).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tenant of cluster `main` in namespace `strata` (policy `Retain`,
    /// no principals, no quotas) allowing the `allowed` namespaces.
    pub(crate) fn tenant(name: &str, allowed: &[&str]) -> Tenant {
        let mut t = Tenant::new(
            name,
            TenantSpec {
                cluster_ref: ClusterRef { name: "main".into(), namespace: None },
                allowed_namespaces: allowed.iter().map(|n| (*n).to_owned()).collect(),
                deletion_policy: DeletionPolicy::Retain,
                principals: Vec::new(),
                quotas: None,
            },
        );
        t.metadata.namespace = Some("strata".into());
        t
    }
}
