//! The catalog: which tenants, topics and queues exist, with their settings
//! and the queues' bindings to topics.
//!
//! Changes are expressed as [`CatalogCommand`]s applied by a pure function
//! ([`Catalog::apply`]), so that a replicated state machine (Raft, DESIGN
//! §4.6) can later apply the same commands from its log. Standalone, the
//! [`CatalogStore`] persists the whole catalog atomically after each command
//! (write to a temp file, fsync, rename, fsync the directory); it is small.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::log::{Durability, LogConfig};
use crate::names::DEFAULT_TENANT;
use crate::quota::{Quota, TenantQuotas};

/// Where the catalog stands in the metadata Raft log (cluster mode): the
/// last entry applied and the membership. The catalog is the replicated
/// state machine, so these facts are persisted with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftApplied {
    pub last_applied: Option<openraft::LogId<u64>>,
    pub membership: openraft::StoredMembership<u64, openraft::BasicNode>,
}

/// Hex characters of a token hash that make its public id.
pub(crate) const TOKEN_ID_CHARS: usize = 16;

/// SHA-256 of a bearer token: all the catalog keeps of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub(crate) fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(crate) fn from_hex(s: &str) -> Option<TokenHash> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(TokenHash(out))
    }

    /// The token's public id: the start of its hash, in hex.
    pub(crate) fn id(self) -> String {
        self.to_hex()[..TOKEN_ID_CHARS].to_owned()
    }
}

/// An index derived from the catalog's principals and ACLs (the broker's
/// credentials), rebuilt by the store whenever they change.
pub(crate) trait PrincipalIndex: Send + Sync + std::fmt::Debug {
    fn rebuild(&self, catalog: &Catalog);
}

const CATALOG_VERSION: u32 = 1;

/// Removes `<root>/<tenant>/<dir>` directories the catalog no longer names
/// (a delete that crashed after committing the catalog): the disk follows
/// the catalog at start-up. `what` names them in the log.
pub(crate) fn remove_orphan_dirs(root: &Path, expected: &std::collections::HashSet<PathBuf>, what: &str) {
    let Ok(tenants) = std::fs::read_dir(root) else { return };
    for tenant in tenants.flatten() {
        let Ok(dirs) = std::fs::read_dir(tenant.path()) else { continue };
        for dir in dirs.flatten() {
            let path = dir.path();
            if !expected.contains(&path) {
                tracing::info!(dir = %path.display(), "removing orphaned {what} directory");
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }
}

/// Effective settings of a topic (all fields resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    /// -1 keeps data forever.
    pub retention_ms: i64,
    /// -1 means no size limit.
    pub retention_bytes: i64,
    pub segment_bytes: u64,
    pub segment_ms: i64,
    pub durability: Durability,
    /// Tiered storage: retention of the local copy (-1: same as total).
    pub local_retention_ms: i64,
    pub local_retention_bytes: i64,
}

impl TopicSettings {
    /// The log settings; `tier_enabled` says whether the broker has a cold
    /// tier (a topic is tiered when it has a local retention and there is one).
    pub(crate) fn log_config(&self, index_interval_bytes: u64, tier_enabled: bool) -> LogConfig {
        LogConfig {
            segment_bytes: self.segment_bytes,
            segment_ms: self.segment_ms,
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
            durability: self.durability,
            replicated: false,
            index_interval_bytes,
            local_retention_ms: self.local_retention_ms,
            local_retention_bytes: self.local_retention_bytes,
            tiered: tier_enabled && self.is_tiered(),
        }
    }

    /// Whether the topic keeps only recent data locally (a local retention is set).
    pub(crate) fn is_tiered(&self) -> bool {
        self.local_retention_ms >= 0 || self.local_retention_bytes >= 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRecord {
    /// Unique over the catalog's lifetime; names the topic's directory, so a
    /// topic deleted and created again never sees old files.
    pub id: u64,
    pub partitions: u32,
    pub settings: TopicSettings,
    pub created_at_ms: i64,
    /// Cluster mode: the broker that owns each partition (index = partition),
    /// chosen when the partition is created. Standalone catalogs (and ones
    /// written before placement) have none: a missing owner is the
    /// standalone broker itself, and "unowned" in cluster mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<u64>,
    /// Replicated topics (replication factor > 1): each partition's replicas
    /// (index = partition), the first being its owner in `owners`. Empty for
    /// unreplicated topics.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<Vec<u64>>,
}

impl TopicRecord {
    /// The owner of `partition`, if placement assigned one.
    pub fn owner(&self, partition: u32) -> Option<u64> {
        self.owners.get(partition as usize).copied()
    }

    /// Copies of each partition (1: unreplicated).
    pub fn replication_factor(&self) -> u32 {
        self.replicas.first().map_or(1, |r| r.len() as u32)
    }

    /// The log settings of this topic's partitions. A replicated topic's
    /// batches are durable in the replica's Raft log before they are
    /// applied, so its partition logs append without fsync and are flushed
    /// (sealed segments included) before the applied marker names their
    /// data: one fsync per batch, not two.
    pub(crate) fn log_config(&self, index_interval_bytes: u64, tier_enabled: bool) -> LogConfig {
        let mut config = self.settings.log_config(index_interval_bytes, tier_enabled);
        if !self.replicas.is_empty() {
            config.durability = crate::log::Durability::None;
            config.replicated = true;
        }
        config
    }

    /// The replicas of a replicated topic's `partition` (`None` when the
    /// topic is unreplicated).
    pub fn replicas_of(&self, partition: u32) -> Option<&[u64]> {
        self.replicas.get(partition as usize).map(Vec::as_slice)
    }
}

/// A broker as the replicated catalog knows it (registered by the broker
/// itself once it is a member): where clients reach it and its zone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerRecord {
    pub address: String,
    #[serde(default)]
    pub zone: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRecord {
    pub created_at_ms: i64,
    pub topics: BTreeMap<String, TopicRecord>,
    #[serde(default)]
    pub queues: BTreeMap<String, QueueRecord>,
    /// Aggregate limits (`crate::quota`); absent in older catalogs: none.
    #[serde(default, skip_serializing_if = "TenantQuotas::is_unlimited")]
    pub quotas: TenantQuotas,
}

impl TenantRecord {
    /// Partitions over all the tenant's topics.
    pub fn partition_count(&self) -> u64 {
        self.topics.values().map(|t| u64::from(t.partitions)).sum()
    }

    /// Refuses adding `adding` to `usage` when that would exceed `quota`.
    fn check_quota(&self, tenant: &str, quota: Quota, usage: u64, adding: u64) -> Result<(), CatalogError> {
        let limit = self.quotas.entries().into_iter().find(|(q, _)| *q == quota).and_then(|(_, l)| l);
        match limit {
            Some(limit) if adding > 0 && usage + adding > limit => Err(CatalogError::QuotaExceeded {
                tenant: tenant.to_owned(),
                quota: quota.name().to_owned(),
                limit,
                usage,
            }),
            _ => Ok(()),
        }
    }
}

/// What happens to a message whose time to live ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TtlAction {
    Drop,
    DeadLetter,
}

/// Effective settings of a queue (all fields resolved and validated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    pub visibility_timeout_ms: i64,
    /// 0 = unlimited.
    pub max_deliveries: u32,
    pub dead_letter_queue: Option<String>,
    pub retry_backoff_min_ms: i64,
    pub retry_backoff_max_ms: i64,
    pub delay_ms: i64,
    /// 0 = forever.
    pub ttl_ms: i64,
    pub ttl_action: TtlAction,
    pub fifo: bool,
    /// 0 = no deduplication.
    pub dedup_window_ms: i64,
    /// Number of priority levels (1..=255).
    pub priorities: u32,
    pub durability: Durability,
}

impl QueueSettings {
    /// The defaults of a new queue (SQS's 30 s visibility timeout; no DLQ,
    /// retries, delay, TTL, FIFO or dedup; one priority level).
    pub(crate) fn defaults(durability: Durability) -> QueueSettings {
        QueueSettings {
            visibility_timeout_ms: 30_000,
            max_deliveries: 0,
            dead_letter_queue: None,
            retry_backoff_min_ms: 0,
            retry_backoff_max_ms: 0,
            delay_ms: 0,
            ttl_ms: 0,
            ttl_action: TtlAction::Drop,
            fifo: false,
            dedup_window_ms: 0,
            priorities: 1,
            durability,
        }
    }
}

/// Which topic messages a binding routes into its queue. No field set:
/// every message (fan-out).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingFilter {
    pub key: Option<String>,
    pub pattern: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingRecord {
    /// Unique over the catalog's lifetime; names the binding's cursor file.
    pub id: u64,
    pub topic: String,
    pub filter: BindingFilter,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueRecord {
    /// Unique over the catalog's lifetime (shared counter with topics).
    pub id: u64,
    pub settings: QueueSettings,
    pub created_at_ms: i64,
    #[serde(default)]
    pub bindings: Vec<BindingRecord>,
    /// A reply queue owned by one client stream; removed at start-up.
    #[serde(default)]
    pub temporary: bool,
    /// Cluster mode: the broker that serves the queue (see `TopicRecord::owners`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub version: u32,
    pub next_topic_id: u64,
    pub tenants: BTreeMap<String, TenantRecord>,
    /// Next idempotent producer id to hand out.
    #[serde(default)]
    pub next_producer_id: i64,
    /// Named producers: "tenant/name" -> (producer id, current epoch).
    #[serde(default)]
    pub named_producers: BTreeMap<String, (i64, i16)>,
    /// Cluster mode: the last Raft entry applied and the membership (the
    /// catalog is the replicated state machine). Absent standalone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft: Option<RaftApplied>,
    /// Cluster mode: each registered broker's address and zone (placement
    /// spreads over zones; the Metadata RPC reports them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub brokers: BTreeMap<u64, BrokerRecord>,
    /// Principals by name (unique in the cluster: a client certificate's
    /// CN names one), each with its tenant and token hashes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub principals: BTreeMap<String, PrincipalRecord>,
    /// Each tenant's ACL: the grants of its principals (`crate::acl`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) acls: BTreeMap<String, std::collections::BTreeSet<crate::acl::AclBinding>>,
}

/// Someone who may authenticate: a member of one tenant. What it may do is
/// its tenant's ACL (`Catalog::acls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalRecord {
    pub tenant: String,
    pub created_at_ms: i64,
    /// Token id (the start of its hash) → the token's record.
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenRecord>,
}

/// An issued bearer token: only its SHA-256 is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// Hex SHA-256 of the token.
    pub hash: String,
    pub issued_at_ms: i64,
}

/// A change to the catalog. Names are already validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogCommand {
    CreatePrincipal {
        tenant: String,
        name: String,
        at_ms: i64,
    },
    /// Deletes the principal with all its tokens.
    DeletePrincipal {
        tenant: String,
        name: String,
    },
    /// Records a token's hash (the token was generated before the command,
    /// so applying it is deterministic on every broker).
    IssueToken {
        tenant: String,
        principal: String,
        hash: String,
        at_ms: i64,
    },
    RevokeToken {
        tenant: String,
        principal: String,
        id: String,
    },
    /// Grants a principal of `tenant` (or every one, `*`) an operation on a
    /// resource pattern; adding an existing binding changes nothing.
    AddAcl {
        tenant: String,
        binding: crate::acl::AclBinding,
    },
    RemoveAcl {
        tenant: String,
        binding: crate::acl::AclBinding,
    },
    CreateTenant {
        name: String,
        at_ms: i64,
        #[serde(default)]
        quotas: TenantQuotas,
    },
    /// Replaces the tenant's quotas.
    UpdateTenant {
        name: String,
        quotas: TenantQuotas,
    },
    DeleteTenant {
        name: String,
    },
    CreateTopic {
        tenant: String,
        name: String,
        partitions: u32,
        settings: TopicSettings,
        at_ms: i64,
        /// Copies of each partition; 0 and 1 mean unreplicated.
        #[serde(default, skip_serializing_if = "is_unreplicated")]
        replication_factor: u32,
    },
    AddPartitions {
        tenant: String,
        name: String,
        partitions: u32,
    },
    UpdateTopic {
        tenant: String,
        name: String,
        settings: TopicSettings,
    },
    DeleteTopic {
        tenant: String,
        name: String,
    },
    /// Allocates a producer id; a named producer keeps its id and gets the next epoch.
    InitProducer {
        tenant: String,
        name: Option<String>,
    },
    CreateQueue {
        tenant: String,
        name: String,
        settings: QueueSettings,
        temporary: bool,
        at_ms: i64,
        /// Cluster mode: the broker that serves the queue (the one that
        /// creates it opens it); absent: placed by load.
        #[serde(default)]
        owner: Option<u64>,
    },
    UpdateQueue {
        tenant: String,
        name: String,
        settings: QueueSettings,
    },
    DeleteQueue {
        tenant: String,
        name: String,
    },
    Bind {
        tenant: String,
        queue: String,
        topic: String,
        filter: BindingFilter,
        at_ms: i64,
    },
    Unbind {
        tenant: String,
        queue: String,
        topic: String,
        filter: BindingFilter,
    },
    /// Cluster mode: a broker records its advertised address and zone.
    RegisterBroker {
        id: u64,
        address: String,
        zone: String,
    },
    /// A cluster grown from a standalone broker: `owner` (that broker, on
    /// whose disk the data is) owns every partition and queue recorded
    /// without an owner.
    AdoptUnowned {
        owner: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum CatalogError {
    #[error("tenant {0:?} does not exist")]
    UnknownTenant(String),
    #[error("tenant {0:?} already exists")]
    TenantExists(String),
    #[error("tenant {name:?} still has {topics} topic(s) and {queues} queue(s); delete them first")]
    TenantNotEmpty { name: String, topics: usize, queues: usize },
    #[error("the {DEFAULT_TENANT:?} tenant cannot be deleted")]
    DefaultTenant,
    #[error("topic {tenant}/{name} does not exist")]
    UnknownTopic { tenant: String, name: String },
    #[error("topic {tenant}/{name} already exists")]
    TopicExists { tenant: String, name: String },
    #[error("topic {tenant}/{name} has {current} partitions; partitions can only grow (asked for {requested})")]
    PartitionsCannotShrink { tenant: String, name: String, current: u32, requested: u32 },
    #[error(
        "replication factor {requested} for topic {tenant}/{name} needs {requested} brokers; the cluster has {brokers}"
    )]
    ReplicationFactorTooLarge { tenant: String, name: String, requested: u32, brokers: u32 },
    #[error("queue {tenant}/{name} does not exist")]
    UnknownQueue { tenant: String, name: String },
    #[error("queue {tenant}/{name} already exists")]
    QueueExists { tenant: String, name: String },
    #[error("dead-letter queue {tenant}/{name} does not exist; create it first")]
    UnknownDeadLetterQueue { tenant: String, name: String },
    #[error("dead-letter queues of {tenant}/{name} form a loop: {path}")]
    DeadLetterLoop { tenant: String, name: String, path: String },
    #[error("queue {tenant}/{name} is the dead-letter queue of {users}; change their dead_letter_queue first")]
    QueueInUse { tenant: String, name: String, users: String },
    #[error("queue {tenant}/{queue} is already bound to topic {topic} with this filter")]
    BindingExists { tenant: String, queue: String, topic: String },
    #[error("queue {tenant}/{queue} has no binding to topic {topic} with this filter")]
    UnknownBinding { tenant: String, queue: String, topic: String },
    #[error("fifo cannot change on existing queue {tenant}/{name}; create a new queue")]
    FifoImmutable { tenant: String, name: String },
    #[error("principal {name:?} does not exist in tenant {tenant:?}")]
    UnknownPrincipal { tenant: String, name: String },
    #[error("principal {name:?} already exists")]
    PrincipalExists { name: String },
    #[error("principal {principal:?} has no token {id:?}")]
    UnknownToken { principal: String, id: String },
    #[error("tenant {tenant:?} has no ACL granting {}", .binding.describe())]
    UnknownAcl { tenant: String, binding: Box<crate::acl::AclBinding> },
    #[error("tenant {tenant:?} is at its {quota} quota: {usage} used, limit {limit}")]
    QuotaExceeded { tenant: String, quota: String, limit: u64, usage: u64 },
}

/// What applying a command changed, for the broker to act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    Tenant,
    Topic { id: u64 },
    PartitionsAdded { id: u64, from: u32, to: u32 },
    TopicDeleted { id: u64 },
    Producer { id: i64, epoch: i16 },
    Queue { id: u64 },
    QueueDeleted { id: u64 },
    Binding { id: u64 },
    Unbound { id: u64 },
    Principal,
    Token { id: String },
    Acl,
    Broker,
}

impl Default for Catalog {
    fn default() -> Self {
        let mut tenants = BTreeMap::new();
        tenants.insert(
            DEFAULT_TENANT.to_owned(),
            TenantRecord {
                created_at_ms: 0,
                topics: BTreeMap::new(),
                queues: BTreeMap::new(),
                quotas: TenantQuotas::default(),
            },
        );
        Catalog {
            version: CATALOG_VERSION,
            next_topic_id: 1,
            tenants,
            next_producer_id: 0,
            named_producers: BTreeMap::new(),
            raft: None,
            principals: BTreeMap::new(),
            acls: BTreeMap::new(),
            brokers: BTreeMap::new(),
        }
    }
}

impl Catalog {
    /// Applies one command; on error the catalog is unchanged.
    pub fn apply(&mut self, cmd: &CatalogCommand) -> Result<Applied, CatalogError> {
        match cmd {
            CatalogCommand::CreatePrincipal { tenant, name, at_ms } => {
                if !self.tenants.contains_key(tenant) {
                    return Err(CatalogError::UnknownTenant(tenant.clone()));
                }
                if self.principals.contains_key(name) {
                    return Err(CatalogError::PrincipalExists { name: name.clone() });
                }
                let record = PrincipalRecord { tenant: tenant.clone(), created_at_ms: *at_ms, tokens: BTreeMap::new() };
                self.principals.insert(name.clone(), record);
                Ok(Applied::Principal)
            }
            CatalogCommand::DeletePrincipal { tenant, name } => {
                self.principal_mut(tenant, name)?;
                self.principals.remove(name);
                // Its grants go with it (a principal created again later
                // starts with none).
                if let Some(acl) = self.acls.get_mut(tenant) {
                    acl.retain(|b| b.principal != *name);
                    if acl.is_empty() {
                        self.acls.remove(tenant);
                    }
                }
                Ok(Applied::Principal)
            }
            CatalogCommand::AddAcl { tenant, binding } => {
                if !self.tenants.contains_key(tenant) {
                    return Err(CatalogError::UnknownTenant(tenant.clone()));
                }
                if binding.principal != crate::acl::ANY_PRINCIPAL {
                    self.principal_mut(tenant, &binding.principal)?;
                }
                self.acls.entry(tenant.clone()).or_default().insert(binding.clone());
                Ok(Applied::Acl)
            }
            CatalogCommand::RemoveAcl { tenant, binding } => {
                let removed = self.acls.get_mut(tenant).is_some_and(|acl| acl.remove(binding));
                if !removed {
                    return Err(CatalogError::UnknownAcl {
                        tenant: tenant.clone(),
                        binding: Box::new(binding.clone()),
                    });
                }
                if self.acls.get(tenant).is_some_and(|acl| acl.is_empty()) {
                    self.acls.remove(tenant);
                }
                Ok(Applied::Acl)
            }
            CatalogCommand::IssueToken { tenant, principal, hash, at_ms } => {
                let id = TokenHash::from_hex(hash)
                    .map(|h| h.id())
                    .ok_or_else(|| CatalogError::UnknownToken { principal: principal.clone(), id: hash.clone() })?;
                let p = self.principal_mut(tenant, principal)?;
                p.tokens.insert(id.clone(), TokenRecord { hash: hash.clone(), issued_at_ms: *at_ms });
                Ok(Applied::Token { id })
            }
            CatalogCommand::RevokeToken { tenant, principal, id } => {
                let p = self.principal_mut(tenant, principal)?;
                if p.tokens.remove(id).is_none() {
                    return Err(CatalogError::UnknownToken { principal: principal.clone(), id: id.clone() });
                }
                Ok(Applied::Token { id: id.clone() })
            }
            CatalogCommand::CreateTenant { name, at_ms, quotas } => {
                if self.tenants.contains_key(name) {
                    return Err(CatalogError::TenantExists(name.clone()));
                }
                self.tenants.insert(
                    name.clone(),
                    TenantRecord {
                        created_at_ms: *at_ms,
                        topics: BTreeMap::new(),
                        queues: BTreeMap::new(),
                        quotas: *quotas,
                    },
                );
                Ok(Applied::Tenant)
            }
            CatalogCommand::UpdateTenant { name, quotas } => {
                self.tenant_mut(name)?.quotas = *quotas;
                Ok(Applied::Tenant)
            }
            CatalogCommand::DeleteTenant { name } => {
                if name == DEFAULT_TENANT {
                    return Err(CatalogError::DefaultTenant);
                }
                let tenant = self.tenants.get(name).ok_or_else(|| CatalogError::UnknownTenant(name.clone()))?;
                if !tenant.topics.is_empty() || !tenant.queues.is_empty() {
                    return Err(CatalogError::TenantNotEmpty {
                        name: name.clone(),
                        topics: tenant.topics.len(),
                        queues: tenant.queues.len(),
                    });
                }
                self.tenants.remove(name);
                // Its principals (and their tokens) and its ACL go with it.
                self.principals.retain(|_, p| p.tenant != *name);
                self.acls.remove(name);
                Ok(Applied::Tenant)
            }
            CatalogCommand::CreateTopic { tenant, name, partitions, settings, at_ms, replication_factor } => {
                let id = self.next_topic_id;
                let t = self.tenant_mut(tenant)?;
                if t.topics.contains_key(name) {
                    return Err(CatalogError::TopicExists { tenant: tenant.clone(), name: name.clone() });
                }
                t.check_quota(tenant, Quota::MaxTopics, t.topics.len() as u64, 1)?;
                t.check_quota(tenant, Quota::MaxPartitions, t.partition_count(), u64::from(*partitions))?;
                let rf = (*replication_factor).max(1);
                let brokers = self.members().len().max(1) as u32;
                if rf > brokers {
                    return Err(CatalogError::ReplicationFactorTooLarge {
                        tenant: tenant.clone(),
                        name: name.clone(),
                        requested: rf,
                        brokers,
                    });
                }
                let (owners, replicas) = if rf > 1 {
                    let replicas = self.place_replicas(*partitions as usize, rf as usize);
                    (replicas.iter().map(|r| r[0]).collect(), replicas)
                } else {
                    (self.place(&[], *partitions as usize), Vec::new())
                };
                let t = self.tenant_mut(tenant)?;
                t.topics.insert(
                    name.clone(),
                    TopicRecord {
                        id,
                        partitions: *partitions,
                        settings: *settings,
                        created_at_ms: *at_ms,
                        owners,
                        replicas,
                    },
                );
                self.next_topic_id += 1;
                Ok(Applied::Topic { id })
            }
            CatalogCommand::AddPartitions { tenant, name, partitions } => {
                let topic = self.topic_mut(tenant, name)?;
                if *partitions < topic.partitions {
                    return Err(CatalogError::PartitionsCannotShrink {
                        tenant: tenant.clone(),
                        name: name.clone(),
                        current: topic.partitions,
                        requested: *partitions,
                    });
                }
                let mut owners = topic.owners.clone();
                let mut replicas = topic.replicas.clone();
                let rf = topic.replication_factor() as usize;
                let (from, id) = (topic.partitions, topic.id);
                let t = &self.tenants[tenant];
                t.check_quota(tenant, Quota::MaxPartitions, t.partition_count(), u64::from(*partitions - from))?;
                if rf > 1 {
                    let more = self.place_replicas(*partitions as usize - replicas.len(), rf);
                    owners.extend(more.iter().map(|r| r[0]));
                    replicas.extend(more);
                } else if self.raft.is_some() && (owners.len() as u32) < *partitions {
                    let more = self.place(&owners, *partitions as usize - owners.len());
                    owners.extend(more);
                }
                let topic = self.topic_mut(tenant, name)?;
                topic.partitions = *partitions;
                topic.owners = owners;
                topic.replicas = replicas;
                Ok(Applied::PartitionsAdded { id, from, to: *partitions })
            }
            CatalogCommand::UpdateTopic { tenant, name, settings } => {
                let topic = self.topic_mut(tenant, name)?;
                topic.settings = *settings;
                Ok(Applied::Topic { id: topic.id })
            }
            CatalogCommand::DeleteTopic { tenant, name } => {
                let t = self.tenant_mut(tenant)?;
                let topic = t
                    .topics
                    .remove(name)
                    .ok_or_else(|| CatalogError::UnknownTopic { tenant: tenant.clone(), name: name.clone() })?;
                // Bindings go with their topic (like RabbitMQ's exchange delete).
                for q in t.queues.values_mut() {
                    q.bindings.retain(|b| &b.topic != name);
                }
                Ok(Applied::TopicDeleted { id: topic.id })
            }
            CatalogCommand::InitProducer { tenant, name } => {
                self.tenant_mut(tenant)?;
                if let Some(name) = name {
                    let key = format!("{tenant}/{name}");
                    if let Some((id, epoch)) = self.named_producers.get_mut(&key) {
                        // Epochs wrap like Kafka's: a new id once exhausted.
                        if *epoch < i16::MAX {
                            *epoch += 1;
                            return Ok(Applied::Producer { id: *id, epoch: *epoch });
                        }
                    }
                    let id = self.next_producer_id;
                    self.next_producer_id += 1;
                    self.named_producers.insert(key, (id, 0));
                    return Ok(Applied::Producer { id, epoch: 0 });
                }
                let id = self.next_producer_id;
                self.next_producer_id += 1;
                Ok(Applied::Producer { id, epoch: 0 })
            }
            CatalogCommand::CreateQueue { tenant, name, settings, temporary, at_ms, owner } => {
                let id = self.next_topic_id;
                let t = self.tenant_mut(tenant)?;
                if t.queues.contains_key(name) {
                    return Err(CatalogError::QueueExists { tenant: tenant.clone(), name: name.clone() });
                }
                t.check_quota(tenant, Quota::MaxQueues, t.queues.len() as u64, 1)?;
                check_dead_letter(t, tenant, name, settings)?;
                let owner =
                    if self.raft.is_some() { owner.or_else(|| self.place(&[], 1).first().copied()) } else { None };
                let t = self.tenant_mut(tenant)?;
                t.queues.insert(
                    name.clone(),
                    QueueRecord {
                        id,
                        settings: settings.clone(),
                        created_at_ms: *at_ms,
                        bindings: Vec::new(),
                        temporary: *temporary,
                        owner,
                    },
                );
                self.next_topic_id += 1;
                Ok(Applied::Queue { id })
            }
            CatalogCommand::UpdateQueue { tenant, name, settings } => {
                let t = self.tenant_mut(tenant)?;
                let q = t
                    .queues
                    .get(name)
                    .ok_or_else(|| CatalogError::UnknownQueue { tenant: tenant.clone(), name: name.clone() })?;
                if q.settings.fifo != settings.fifo {
                    return Err(CatalogError::FifoImmutable { tenant: tenant.clone(), name: name.clone() });
                }
                check_dead_letter(t, tenant, name, settings)?;
                let q = t.queues.get_mut(name).expect("checked above");
                q.settings = settings.clone();
                Ok(Applied::Queue { id: q.id })
            }
            CatalogCommand::DeleteQueue { tenant, name } => {
                let t = self.tenant_mut(tenant)?;
                if !t.queues.contains_key(name) {
                    return Err(CatalogError::UnknownQueue { tenant: tenant.clone(), name: name.clone() });
                }
                let users: Vec<&str> = t
                    .queues
                    .iter()
                    .filter(|(n, q)| *n != name && q.settings.dead_letter_queue.as_deref() == Some(name))
                    .map(|(n, _)| n.as_str())
                    .collect();
                if !users.is_empty() {
                    return Err(CatalogError::QueueInUse {
                        tenant: tenant.clone(),
                        name: name.clone(),
                        users: users.join(", "),
                    });
                }
                let q = t.queues.remove(name).expect("checked above");
                Ok(Applied::QueueDeleted { id: q.id })
            }
            CatalogCommand::Bind { tenant, queue, topic, filter, at_ms } => {
                let id = self.next_topic_id;
                let t = self.tenant_mut(tenant)?;
                if !t.topics.contains_key(topic) {
                    return Err(CatalogError::UnknownTopic { tenant: tenant.clone(), name: topic.clone() });
                }
                let q = t
                    .queues
                    .get_mut(queue)
                    .ok_or_else(|| CatalogError::UnknownQueue { tenant: tenant.clone(), name: queue.clone() })?;
                if q.bindings.iter().any(|b| &b.topic == topic && &b.filter == filter) {
                    return Err(CatalogError::BindingExists {
                        tenant: tenant.clone(),
                        queue: queue.clone(),
                        topic: topic.clone(),
                    });
                }
                q.bindings.push(BindingRecord {
                    id,
                    topic: topic.clone(),
                    filter: filter.clone(),
                    created_at_ms: *at_ms,
                });
                self.next_topic_id += 1;
                Ok(Applied::Binding { id })
            }
            CatalogCommand::Unbind { tenant, queue, topic, filter } => {
                let t = self.tenant_mut(tenant)?;
                let q = t
                    .queues
                    .get_mut(queue)
                    .ok_or_else(|| CatalogError::UnknownQueue { tenant: tenant.clone(), name: queue.clone() })?;
                let i = q.bindings.iter().position(|b| &b.topic == topic && &b.filter == filter).ok_or_else(|| {
                    CatalogError::UnknownBinding { tenant: tenant.clone(), queue: queue.clone(), topic: topic.clone() }
                })?;
                let b = q.bindings.remove(i);
                Ok(Applied::Unbound { id: b.id })
            }
            CatalogCommand::RegisterBroker { id, address, zone } => {
                self.brokers.insert(*id, BrokerRecord { address: address.clone(), zone: zone.clone() });
                Ok(Applied::Broker)
            }
            CatalogCommand::AdoptUnowned { owner } => {
                for t in self.tenants.values_mut() {
                    for r in t.topics.values_mut() {
                        r.owners.resize(r.partitions as usize, *owner);
                    }
                    for q in t.queues.values_mut() {
                        q.owner.get_or_insert(*owner);
                    }
                }
                Ok(Applied::Broker)
            }
        }
    }

    fn principal_mut(&mut self, tenant: &str, name: &str) -> Result<&mut PrincipalRecord, CatalogError> {
        let unknown = || CatalogError::UnknownPrincipal { tenant: tenant.to_owned(), name: name.to_owned() };
        match self.principals.get_mut(name) {
            Some(p) if p.tenant == tenant => Ok(p),
            _ => Err(unknown()),
        }
    }

    /// Whether anything was ever created in it (a standalone broker's
    /// catalog that is more than the empty default).
    pub fn holds_data(&self) -> bool {
        self.tenants.len() > 1 || self.next_topic_id > 1 || self.next_producer_id > 0 || !self.principals.is_empty()
    }

    /// Partitions or queues recorded without an owner (only a standalone
    /// catalog has them; placement gives every new one an owner).
    pub fn has_ownerless(&self) -> bool {
        self.tenants.values().any(|t| {
            t.topics.values().any(|r| (r.owners.len() as u32) < r.partitions)
                || t.queues.values().any(|q| q.owner.is_none())
        })
    }

    /// How many partitions each broker owns.
    pub fn owned_partitions(&self) -> BTreeMap<u64, u32> {
        let mut owned = BTreeMap::new();
        for o in self.tenants.values().flat_map(|t| t.topics.values()).flat_map(|r| r.owners.iter()) {
            *owned.entry(*o).or_default() += 1;
        }
        owned
    }

    /// Partitions whose owner is not a member of the metadata group (its
    /// broker left the cluster; moving them is replication's work). None
    /// standalone, where the one broker owns everything.
    pub fn unowned_partitions(&self) -> u32 {
        let members = self.members();
        if members.is_empty() {
            return 0;
        }
        self.owned_partitions().iter().filter(|(id, _)| !members.contains(id)).map(|(_, n)| n).sum()
    }

    /// The metadata group's voters (cluster mode; empty standalone).
    pub fn members(&self) -> Vec<u64> {
        self.raft.as_ref().map(|r| r.membership.membership().voter_ids().collect()).unwrap_or_default()
    }

    /// Owners for `n` new partitions (or one queue), placed next to
    /// `siblings` (the topic's existing owners): each goes to the
    /// least-loaded member (partitions and queues owned), ties broken by the
    /// zone holding fewest of the siblings, then by the lowest id. Pure and
    /// deterministic, so every broker applying the entry places alike.
    /// Standalone (no members) places nothing: the one broker owns all.
    fn place(&self, siblings: &[u64], n: usize) -> Vec<u64> {
        let members = self.members();
        if members.is_empty() || n == 0 {
            return Vec::new();
        }
        let mut load = self.load(&members);
        let zone = |b: u64| self.brokers.get(&b).map(|r| r.zone.as_str()).unwrap_or("");
        let mut in_zone: BTreeMap<&str, usize> = BTreeMap::new();
        for s in siblings {
            *in_zone.entry(zone(*s)).or_default() += 1;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let best = *members
                .iter()
                .min_by_key(|b| (load[*b], in_zone.get(zone(**b)).copied().unwrap_or(0), **b))
                .expect("members is not empty");
            *load.get_mut(&best).expect("a member") += 1;
            *in_zone.entry(zone(best)).or_default() += 1;
            out.push(best);
        }
        out
    }

    /// Partitions (every replica counts) and queues each member holds.
    fn load(&self, members: &[u64]) -> BTreeMap<u64, usize> {
        let mut load: BTreeMap<u64, usize> = members.iter().map(|m| (*m, 0)).collect();
        for t in self.tenants.values() {
            let held = t
                .topics
                .values()
                .flat_map(|r| if r.replicas.is_empty() { r.owners.clone() } else { r.replicas.concat() })
                .chain(t.queues.values().filter_map(|q| q.owner));
            for o in held {
                if let Some(l) = load.get_mut(&o) {
                    *l += 1;
                }
            }
        }
        load
    }

    /// Replicas for `n` new partitions, `rf` distinct members each: every
    /// replica goes to the least-loaded member not yet holding the
    /// partition, ties broken by the zone holding fewest of its replicas,
    /// then by the lowest id. The first replica is the partition's owner
    /// (its preferred leader); owners rotate with the load, so leaders
    /// spread. Pure and deterministic, like `place`. The caller checked
    /// that `rf` members exist.
    fn place_replicas(&self, n: usize, rf: usize) -> Vec<Vec<u64>> {
        let members = self.members();
        let mut load = self.load(&members);
        // Leaders (owners) are spread on their own count.
        let owned = self.owned_partitions();
        let mut leading: BTreeMap<u64, usize> =
            members.iter().map(|m| (*m, owned.get(m).copied().unwrap_or(0) as usize)).collect();
        let zone = |b: u64| self.brokers.get(&b).map(|r| r.zone.as_str()).unwrap_or("");
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let mut replicas: Vec<u64> = Vec::with_capacity(rf);
            let mut in_zone: BTreeMap<&str, usize> = BTreeMap::new();
            for _ in 0..rf.min(members.len()) {
                let first = replicas.is_empty();
                let Some(best) = members
                    .iter()
                    .filter(|b| !replicas.contains(b))
                    .min_by_key(|b| {
                        let lead = if first { leading[*b] } else { 0 };
                        (lead, in_zone.get(zone(**b)).copied().unwrap_or(0), load[*b], **b)
                    })
                    .copied()
                else {
                    break;
                };
                if first {
                    *leading.get_mut(&best).expect("a member") += 1;
                }
                *load.get_mut(&best).expect("a member") += 1;
                *in_zone.entry(zone(best)).or_default() += 1;
                replicas.push(best);
            }
            out.push(replicas);
        }
        out
    }

    fn tenant_mut(&mut self, tenant: &str) -> Result<&mut TenantRecord, CatalogError> {
        self.tenants.get_mut(tenant).ok_or_else(|| CatalogError::UnknownTenant(tenant.to_owned()))
    }

    fn topic_mut(&mut self, tenant: &str, name: &str) -> Result<&mut TopicRecord, CatalogError> {
        self.tenant_mut(tenant)?
            .topics
            .get_mut(name)
            .ok_or_else(|| CatalogError::UnknownTopic { tenant: tenant.to_owned(), name: name.to_owned() })
    }
}

/// The broker that coordinates a consumer group (cluster mode): groups
/// are made by their first join, not by a catalog entry, so the
/// coordinator is a pure function of the name and the membership
/// (CRC32C of "tenant/group" over the sorted voter ids), the same on
/// every broker. `None` standalone (no members).
fn is_unreplicated(replication_factor: &u32) -> bool {
    *replication_factor <= 1
}

pub fn group_coordinator(tenant: &str, group: &str, members: &[u64]) -> Option<u64> {
    let mut members = members.to_vec();
    members.sort_unstable();
    let h = crc32c::crc32c(format!("{tenant}/{group}").as_bytes()) as usize;
    (!members.is_empty()).then(|| members[h % members.len()])
}

/// A queue's dead-letter queue must exist in the same tenant and the chain
/// of dead-letter queues starting at it must not come back to `name`.
fn check_dead_letter(t: &TenantRecord, tenant: &str, name: &str, settings: &QueueSettings) -> Result<(), CatalogError> {
    let Some(first) = &settings.dead_letter_queue else { return Ok(()) };
    let mut path = vec![name.to_owned()];
    let mut next = Some(first.clone());
    while let Some(q) = next {
        path.push(q.clone());
        if q == name {
            return Err(CatalogError::DeadLetterLoop {
                tenant: tenant.to_owned(),
                name: name.to_owned(),
                path: path.join(" -> "),
            });
        }
        let record = t
            .queues
            .get(&q)
            .ok_or_else(|| CatalogError::UnknownDeadLetterQueue { tenant: tenant.to_owned(), name: q.clone() })?;
        if path.len() > t.queues.len() + 1 {
            break;
        }
        next = record.settings.dead_letter_queue.clone();
    }
    Ok(())
}

/// Directory of a queue: `<data>/queues/<tenant>/<name>.<id>`.
pub(crate) fn queue_dir(data_dir: &Path, tenant: &str, name: &str, id: u64) -> PathBuf {
    data_dir.join("queues").join(tenant).join(format!("{name}.{id}"))
}

/// Directory of a topic's partitions: `<data>/topics/<tenant>/<name>.<id>`.
pub(crate) fn topic_dir(data_dir: &Path, tenant: &str, name: &str, id: u64) -> PathBuf {
    data_dir.join("topics").join(tenant).join(format!("{name}.{id}"))
}

/// The catalog persisted as one JSON file, replaced atomically.
#[derive(Debug)]
pub struct CatalogStore {
    path: PathBuf,
    catalog: Catalog,
    /// Rebuilt whenever the principals change (every apply path goes
    /// through this store: commits, replicated entries, snapshots).
    credentials: Option<std::sync::Arc<dyn PrincipalIndex>>,
    /// The broker's quota state, kept in step with the tenants' quotas.
    quotas: Option<std::sync::Arc<crate::quota::Quotas>>,
    fs: crate::fs::Fs,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("catalog file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("catalog file {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

impl CatalogStore {
    /// Opens (or creates) `<data_dir>/meta/catalog.json` on the filesystem
    /// `fs` (the broker's: real, or fault-injecting in tests).
    pub fn open_in(fs: crate::fs::Fs, data_dir: &Path) -> Result<CatalogStore, StoreError> {
        let dir = data_dir.join("meta");
        let io = |source| StoreError::Io { path: dir.clone(), source };
        fs.create_dir_all(&dir).map_err(io)?;
        let path = dir.join("catalog.json");
        let catalog = match fs.read(&path) {
            Ok(bytes) => {
                let c: Catalog = serde_json::from_slice(&bytes)
                    .map_err(|e| StoreError::Invalid { path: path.clone(), message: e.to_string() })?;
                if c.version != CATALOG_VERSION {
                    return Err(StoreError::Invalid {
                        path,
                        message: format!("unsupported catalog version {}", c.version),
                    });
                }
                c
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Catalog::default(),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let store = CatalogStore { path, catalog, credentials: None, quotas: None, fs };
        store.persist(&store.catalog)?;
        Ok(store)
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Keeps `credentials` in step with the catalog's principals from now on.
    pub(crate) fn follow_credentials(&mut self, credentials: std::sync::Arc<dyn PrincipalIndex>) {
        credentials.rebuild(&self.catalog);
        self.credentials = Some(credentials);
    }

    /// Keeps the broker's quota state in step with the tenants' quotas.
    pub(crate) fn follow_quotas(&mut self, quotas: std::sync::Arc<crate::quota::Quotas>) {
        quotas.set_limits(self.catalog.tenants.iter().map(|(n, t)| (n, &t.quotas)));
        self.quotas = Some(quotas);
    }

    /// Makes `next` the catalog, refreshing the credentials if principals
    /// changed and the quota state if tenants did.
    fn replace_catalog(&mut self, next: Catalog) {
        let changed = next.principals != self.catalog.principals || next.acls != self.catalog.acls;
        let tenants_changed = next.tenants.len() != self.catalog.tenants.len()
            || next
                .tenants
                .iter()
                .zip(self.catalog.tenants.iter())
                .any(|((a, x), (b, y))| a != b || x.quotas != y.quotas);
        self.catalog = next;
        if changed && let Some(c) = &self.credentials {
            c.rebuild(&self.catalog);
        }
        if tenants_changed && let Some(q) = &self.quotas {
            q.set_limits(self.catalog.tenants.iter().map(|(n, t)| (n, &t.quotas)));
        }
    }

    /// Applies `cmd` and makes the result durable before returning.
    pub fn commit(&mut self, cmd: &CatalogCommand) -> Result<Applied, StoreError> {
        let mut next = self.catalog.clone();
        let applied = next.apply(cmd)?;
        self.persist(&next)?;
        self.replace_catalog(next);
        Ok(applied)
    }

    /// Cluster mode: applies a replicated entry (`cmd` is `None` for Raft's
    /// own entries) and records `raft` with it in one durable write. A
    /// command the catalog refuses still advances `raft` (the refusal is the
    /// entry's outcome, the same on every broker).
    pub fn commit_replicated(
        &mut self,
        cmd: Option<&CatalogCommand>,
        raft: RaftApplied,
    ) -> Result<Option<Result<Applied, CatalogError>>, StoreError> {
        let mut next = self.catalog.clone();
        let outcome = cmd.map(|c| {
            let mut attempt = next.clone();
            let r = attempt.apply(c);
            if r.is_ok() {
                next = attempt;
            }
            r
        });
        next.raft = Some(raft);
        self.persist(&next)?;
        self.replace_catalog(next);
        Ok(outcome)
    }

    /// Cluster mode: replaces the whole catalog (an installed snapshot).
    pub fn install(&mut self, catalog: Catalog) -> Result<(), StoreError> {
        if catalog.version != CATALOG_VERSION {
            return Err(StoreError::Invalid {
                path: self.path.clone(),
                message: format!("snapshot has unsupported catalog version {}", catalog.version),
            });
        }
        self.persist(&catalog)?;
        self.replace_catalog(catalog);
        Ok(())
    }

    fn persist(&self, catalog: &Catalog) -> Result<(), StoreError> {
        let io = |source| StoreError::Io { path: self.path.clone(), source };
        let bytes = serde_json::to_vec_pretty(catalog)
            .map_err(|e| StoreError::Invalid { path: self.path.clone(), message: e.to_string() })?;
        crate::fsutil::replace(&*self.fs, &self.path, &bytes, crate::fsutil::Sync::Durable).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> TopicSettings {
        TopicSettings {
            retention_ms: 1000,
            retention_bytes: -1,
            segment_bytes: 4096,
            segment_ms: 1000,
            durability: Durability::Fsync,
            local_retention_ms: -1,
            local_retention_bytes: -1,
        }
    }

    fn create(name: &str, partitions: u32) -> CatalogCommand {
        CatalogCommand::CreateTopic {
            tenant: "default".into(),
            name: name.into(),
            partitions,
            settings: settings(),
            at_ms: 5,
            replication_factor: 1,
        }
    }

    #[test]
    fn commands_apply_and_errors_leave_the_catalog_unchanged() {
        let mut c = Catalog::default();
        assert_eq!(c.apply(&create("orders", 3)).unwrap(), Applied::Topic { id: 1 });
        let before = c.clone();
        assert!(matches!(c.apply(&create("orders", 1)), Err(CatalogError::TopicExists { .. })));
        let shrink = CatalogCommand::AddPartitions { tenant: "default".into(), name: "orders".into(), partitions: 2 };
        assert!(matches!(c.apply(&shrink), Err(CatalogError::PartitionsCannotShrink { current: 3, .. })));
        assert!(matches!(
            c.apply(&CatalogCommand::DeleteTenant { name: "default".into() }),
            Err(CatalogError::DefaultTenant)
        ));
        assert_eq!(c, before);
        let grow = CatalogCommand::AddPartitions { tenant: "default".into(), name: "orders".into(), partitions: 5 };
        assert_eq!(c.apply(&grow).unwrap(), Applied::PartitionsAdded { id: 1, from: 3, to: 5 });
        // Ids are never reused.
        c.apply(&CatalogCommand::DeleteTopic { tenant: "default".into(), name: "orders".into() }).unwrap();
        assert_eq!(c.apply(&create("orders", 1)).unwrap(), Applied::Topic { id: 2 });
    }

    #[test]
    fn tenants_must_be_empty_to_delete() {
        let mut c = Catalog::default();
        c.apply(&CatalogCommand::CreateTenant { quotas: Default::default(), name: "team".into(), at_ms: 1 }).unwrap();
        c.apply(&CatalogCommand::CreateTopic {
            tenant: "team".into(),
            name: "t".into(),
            partitions: 1,
            settings: settings(),
            at_ms: 1,
            replication_factor: 1,
        })
        .unwrap();
        assert!(matches!(
            c.apply(&CatalogCommand::DeleteTenant { name: "team".into() }),
            Err(CatalogError::TenantNotEmpty { topics: 1, .. })
        ));
    }

    fn clustered(members: &[(u64, &str)]) -> Catalog {
        let mut c = Catalog::default();
        let nodes: BTreeMap<u64, openraft::BasicNode> =
            members.iter().map(|(id, _)| (*id, openraft::BasicNode { addr: format!("b{id}:1") })).collect();
        let ids: std::collections::BTreeSet<u64> = nodes.keys().copied().collect();
        let m = openraft::Membership::new(vec![ids], nodes);
        c.raft = Some(RaftApplied { last_applied: None, membership: openraft::StoredMembership::new(None, m) });
        for (id, zone) in members {
            c.apply(&CatalogCommand::RegisterBroker { id: *id, address: format!("b{id}:1"), zone: (*zone).into() })
                .unwrap();
        }
        c
    }

    fn owned(c: &Catalog) -> BTreeMap<u64, u32> {
        c.owned_partitions()
    }

    #[test]
    fn placement_spreads_by_load_then_zone_and_standalone_places_nothing() {
        let mut c = clustered(&[(1, "a"), (2, "b"), (3, "c")]);
        c.apply(&create("six", 6)).unwrap();
        assert_eq!(owned(&c), [(1, 2), (2, 2), (3, 2)].into());
        // Least-loaded first across topics: a 1-partition topic then a
        // 2-partition one keep the load even (3/3/3).
        c.apply(&create("one", 1)).unwrap();
        let grow = CatalogCommand::AddPartitions { tenant: "default".into(), name: "one".into(), partitions: 3 };
        c.apply(&grow).unwrap();
        assert_eq!(owned(&c), [(1, 3), (2, 3), (3, 3)].into());
        let one = &c.tenants["default"].topics["one"];
        assert_eq!(one.owners.iter().collect::<std::collections::BTreeSet<_>>().len(), 3, "{:?}", one.owners);
        // Zones break ties: brokers 1 and 2 share zone "a"; 2 partitions go
        // to 1 (lowest id) and then 3 (the other zone), not 2.
        let mut z = clustered(&[(1, "a"), (2, "a"), (3, "b")]);
        z.apply(&create("t", 2)).unwrap();
        assert_eq!(z.tenants["default"].topics["t"].owners, vec![1, 3]);
        // Queues count as load and are placed too (or kept on the creator).
        let q = |name: &str, owner| CatalogCommand::CreateQueue {
            tenant: "default".into(),
            name: name.into(),
            settings: QueueSettings::defaults(Durability::Fsync),
            temporary: false,
            at_ms: 1,
            owner,
        };
        z.apply(&q("q1", None)).unwrap();
        assert_eq!(z.tenants["default"].queues["q1"].owner, Some(2));
        z.apply(&q("q2", Some(3))).unwrap();
        assert_eq!(z.tenants["default"].queues["q2"].owner, Some(3));
        // Standalone: no owners recorded, the catalog file is as before.
        let mut s = Catalog::default();
        s.apply(&create("t", 3)).unwrap();
        s.apply(&q("q", Some(0))).unwrap();
        assert!(s.tenants["default"].topics["t"].owners.is_empty());
        assert_eq!(s.tenants["default"].queues["q"].owner, None);
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("owner"), "{json}");
        // A catalog written before placement reads back (owners missing).
        let old: Catalog = serde_json::from_str(&json).unwrap();
        assert_eq!(old, s);
        // Group coordinators: deterministic, spread, none standalone.
        let members = [3, 1, 2];
        let picks: std::collections::BTreeSet<u64> =
            (0..30).filter_map(|i| group_coordinator("default", &format!("g{i}"), &members)).collect();
        assert_eq!(picks, [1, 2, 3].into());
        assert_eq!(group_coordinator("default", "g", &members), group_coordinator("default", "g", &[1, 2, 3]));
        assert_eq!(group_coordinator("default", "g", &[]), None);
    }

    fn queue(name: &str) -> CatalogCommand {
        CatalogCommand::CreateQueue {
            tenant: "t".into(),
            name: name.into(),
            settings: QueueSettings::defaults(Durability::Fsync),
            temporary: false,
            at_ms: 1,
            owner: None,
        }
    }

    #[test]
    fn count_quotas_refuse_creates_with_the_quota_named_and_leave_nothing() {
        let mut c = Catalog::default();
        let quotas =
            TenantQuotas { max_topics: Some(2), max_partitions: Some(4), max_queues: Some(1), ..Default::default() };
        c.apply(&CatalogCommand::CreateTenant { name: "t".into(), at_ms: 1, quotas }).unwrap();
        let topic = |name: &str, partitions| CatalogCommand::CreateTopic {
            tenant: "t".into(),
            name: name.into(),
            partitions,
            settings: settings(),
            at_ms: 1,
            replication_factor: 1,
        };
        c.apply(&topic("a", 3)).unwrap();
        // Partitions: 3 + 2 > 4.
        let before = c.clone();
        let e = c.apply(&topic("b", 2)).unwrap_err();
        assert_eq!(
            e,
            CatalogError::QuotaExceeded { tenant: "t".into(), quota: "max_partitions".into(), limit: 4, usage: 3 }
        );
        assert_eq!(c, before, "nothing half-made");
        c.apply(&topic("b", 1)).unwrap();
        // Topics: 2 of 2.
        let e = c.apply(&topic("c", 1)).unwrap_err();
        assert!(
            matches!(e, CatalogError::QuotaExceeded { ref quota, limit: 2, usage: 2, .. } if quota == "max_topics")
        );
        // AddPartitions counts the partitions added.
        let grow = |partitions| CatalogCommand::AddPartitions { tenant: "t".into(), name: "a".into(), partitions };
        let e = c.apply(&grow(5)).unwrap_err();
        assert!(matches!(e, CatalogError::QuotaExceeded { ref quota, usage: 4, .. } if quota == "max_partitions"));
        assert_eq!(c.tenants["t"].topics["a"].partitions, 3);
        c.apply(&grow(3)).unwrap(); // no change, no refusal
        c.apply(&queue("q1")).unwrap();
        let e = c.apply(&queue("q2")).unwrap_err();
        assert!(matches!(e, CatalogError::QuotaExceeded { ref quota, .. } if quota == "max_queues"));
        // Raising the quota (UpdateTenant replaces the set) lets it through;
        // clearing one makes it unlimited.
        let raised = TenantQuotas { max_topics: Some(3), max_queues: Some(2), ..Default::default() };
        c.apply(&CatalogCommand::UpdateTenant { name: "t".into(), quotas: raised }).unwrap();
        c.apply(&queue("q2")).unwrap();
        c.apply(&topic("c", 10)).unwrap(); // max_partitions cleared
        assert!(c.apply(&CatalogCommand::UpdateTenant { name: "nope".into(), quotas: raised }).is_err());
        // Other tenants are not limited.
        c.apply(&create("x", 100)).unwrap();
    }

    #[test]
    fn quotas_survive_reopen_and_old_catalogs_load_without_them() {
        let dir = tempfile::tempdir().unwrap();
        let quotas =
            TenantQuotas { max_stored_bytes: Some(1 << 30), requests_per_second: Some(10), ..Default::default() };
        {
            let mut s = CatalogStore::open_in(crate::fs::real(), dir.path()).unwrap();
            s.commit(&CatalogCommand::CreateTenant { name: "t".into(), at_ms: 1, quotas }).unwrap();
        }
        let s = CatalogStore::open_in(crate::fs::real(), dir.path()).unwrap();
        assert_eq!(s.catalog().tenants["t"].quotas, quotas);
        assert_eq!(s.catalog().tenants["default"].quotas, TenantQuotas::default());
        // A catalog written before quotas existed: no `quotas` key anywhere,
        // and a replicated CreateTenant entry without one.
        let old = r#"{"version":1,"next_topic_id":1,"tenants":{"default":{"created_at_ms":0,"topics":{}},
            "t":{"created_at_ms":5,"topics":{},"queues":{}}}}"#;
        std::fs::write(dir.path().join("meta/catalog.json"), old).unwrap();
        let s = CatalogStore::open_in(crate::fs::real(), dir.path()).unwrap();
        assert!(s.catalog().tenants["t"].quotas.is_unlimited());
        let cmd: CatalogCommand = serde_json::from_str(r#"{"CreateTenant":{"name":"n","at_ms":3}}"#).unwrap();
        assert_eq!(cmd, CatalogCommand::CreateTenant { name: "n".into(), at_ms: 3, quotas: TenantQuotas::default() });
        // Unlimited tenants write no `quotas` key (old brokers read new files).
        let json = serde_json::to_string(&Catalog::default()).unwrap();
        assert!(!json.contains("quotas"), "{json}");
    }

    #[test]
    fn store_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = CatalogStore::open_in(crate::fs::real(), dir.path()).unwrap();
            s.commit(&create("a", 2)).unwrap();
            assert!(s.commit(&create("a", 2)).is_err());
        }
        let s = CatalogStore::open_in(crate::fs::real(), dir.path()).unwrap();
        assert_eq!(s.catalog().tenants["default"].topics["a"].partitions, 2);
        std::fs::write(dir.path().join("meta/catalog.json"), b"{not json").unwrap();
        assert!(matches!(CatalogStore::open_in(crate::fs::real(), dir.path()), Err(StoreError::Invalid { .. })));
    }

    /// Through the fault-injecting filesystem: every committed change
    /// survives a power loss (which drops whatever was not fsynced), and a
    /// change whose fsync failed is refused, is not applied in memory, and
    /// leaves the last committed catalog on disk.
    #[test]
    fn committed_changes_survive_power_loss_and_a_failed_fsync_commits_nothing() {
        use crate::fs::fault::FaultFs;
        let fs = FaultFs::new();
        let data = Path::new("/data");
        let mut s = CatalogStore::open_in(fs.fs(), data).unwrap();
        s.commit(&create("a", 2)).unwrap();
        s.commit(&create("b", 3)).unwrap();
        fs.power_loss();
        let mut s = CatalogStore::open_in(fs.fs(), data).unwrap();
        let topics = |s: &CatalogStore| s.catalog().tenants["default"].topics.keys().cloned().collect::<Vec<_>>();
        assert_eq!(topics(&s), ["a", "b"]);

        fs.set_faults(|f| f.fail_sync = Some("catalog.json".into()));
        assert!(matches!(s.commit(&create("c", 1)), Err(StoreError::Io { .. })));
        assert_eq!(topics(&s), ["a", "b"], "a refused change is not applied in memory");
        fs.clear_faults();
        fs.power_loss();
        let mut s = CatalogStore::open_in(fs.fs(), data).unwrap();
        assert_eq!(topics(&s), ["a", "b"]);
        // The store works again once the disk does.
        s.commit(&create("c", 1)).unwrap();
        fs.power_loss();
        let s = CatalogStore::open_in(fs.fs(), data).unwrap();
        assert_eq!(topics(&s), ["a", "b", "c"]);
    }

    #[test]
    fn acls_need_their_principal_survive_reopen_and_go_with_principal_and_tenant() {
        use crate::acl::{AclBinding, AclOperation, PatternType, ResourceKind};
        let binding = |principal: &str| AclBinding {
            principal: principal.into(),
            kind: ResourceKind::Topic,
            pattern: PatternType::Prefixed,
            name: "orders.".into(),
            operation: AclOperation::Produce,
        };
        let add = |p: &str| CatalogCommand::AddAcl { tenant: "t".into(), binding: binding(p) };
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = CatalogStore::open_in(crate::fs::real(), dir.path()).unwrap();
            s.commit(&CatalogCommand::CreateTenant { quotas: Default::default(), name: "t".into(), at_ms: 0 }).unwrap();
            let e = s.commit(&add("alice")).unwrap_err();
            assert!(matches!(e, StoreError::Catalog(CatalogError::UnknownPrincipal { .. })), "{e}");
            s.commit(&CatalogCommand::CreatePrincipal { tenant: "t".into(), name: "alice".into(), at_ms: 0 }).unwrap();
            s.commit(&add("alice")).unwrap();
            s.commit(&add("alice")).unwrap();
            s.commit(&add("*")).unwrap();
            assert_eq!(s.catalog().acls["t"].len(), 2, "adding twice keeps one binding");
        }
        let mut s = CatalogStore::open_in(crate::fs::real(), dir.path()).unwrap();
        assert_eq!(s.catalog().acls["t"].len(), 2);
        s.commit(&CatalogCommand::RemoveAcl { tenant: "t".into(), binding: binding("*") }).unwrap();
        let e = s.commit(&CatalogCommand::RemoveAcl { tenant: "t".into(), binding: binding("*") }).unwrap_err();
        assert!(matches!(e, StoreError::Catalog(CatalogError::UnknownAcl { .. })), "{e}");
        s.commit(&CatalogCommand::DeletePrincipal { tenant: "t".into(), name: "alice".into() }).unwrap();
        assert!(!s.catalog().acls.contains_key("t"), "the principal's bindings went with it");
        s.commit(&add("*")).unwrap();
        s.commit(&CatalogCommand::DeleteTenant { name: "t".into() }).unwrap();
        assert!(s.catalog().acls.is_empty(), "the tenant's ACL went with it");
    }
}
