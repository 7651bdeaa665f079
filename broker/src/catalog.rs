//! The catalog: which tenants and topics exist, with their settings.
//!
//! Changes are expressed as [`CatalogCommand`]s applied by a pure function
//! ([`Catalog::apply`]), so that a replicated state machine (Raft, DESIGN
//! §4.6) can later apply the same commands from its log. Standalone, the
//! [`CatalogStore`] persists the whole catalog atomically after each command
//! (write to a temp file, fsync, rename, fsync the directory); it is small.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::log::{Durability, LogConfig};
use crate::names::DEFAULT_TENANT;

const CATALOG_VERSION: u32 = 1;

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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRecord {
    pub created_at_ms: i64,
    pub topics: BTreeMap<String, TopicRecord>,
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
}

/// A change to the catalog. Names are already validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogCommand {
    CreateTenant {
        name: String,
        at_ms: i64,
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
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("tenant {0:?} does not exist")]
    UnknownTenant(String),
    #[error("tenant {0:?} already exists")]
    TenantExists(String),
    #[error("tenant {name:?} still has {topics} topic(s); delete them first")]
    TenantNotEmpty { name: String, topics: usize },
    #[error("the {DEFAULT_TENANT:?} tenant cannot be deleted")]
    DefaultTenant,
    #[error("topic {tenant}/{name} does not exist")]
    UnknownTopic { tenant: String, name: String },
    #[error("topic {tenant}/{name} already exists")]
    TopicExists { tenant: String, name: String },
    #[error("topic {tenant}/{name} has {current} partitions; partitions can only grow (asked for {requested})")]
    PartitionsCannotShrink { tenant: String, name: String, current: u32, requested: u32 },
}

/// What applying a command changed, for the broker to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Tenant,
    Topic { id: u64 },
    PartitionsAdded { id: u64, from: u32, to: u32 },
    TopicDeleted { id: u64 },
    Producer { id: i64, epoch: i16 },
}

impl Default for Catalog {
    fn default() -> Self {
        let mut tenants = BTreeMap::new();
        tenants.insert(DEFAULT_TENANT.to_owned(), TenantRecord { created_at_ms: 0, topics: BTreeMap::new() });
        Catalog {
            version: CATALOG_VERSION,
            next_topic_id: 1,
            tenants,
            next_producer_id: 0,
            named_producers: BTreeMap::new(),
        }
    }
}

impl Catalog {
    /// Applies one command; on error the catalog is unchanged.
    pub fn apply(&mut self, cmd: &CatalogCommand) -> Result<Applied, CatalogError> {
        match cmd {
            CatalogCommand::CreateTenant { name, at_ms } => {
                if self.tenants.contains_key(name) {
                    return Err(CatalogError::TenantExists(name.clone()));
                }
                self.tenants.insert(name.clone(), TenantRecord { created_at_ms: *at_ms, topics: BTreeMap::new() });
                Ok(Applied::Tenant)
            }
            CatalogCommand::DeleteTenant { name } => {
                if name == DEFAULT_TENANT {
                    return Err(CatalogError::DefaultTenant);
                }
                let tenant = self.tenants.get(name).ok_or_else(|| CatalogError::UnknownTenant(name.clone()))?;
                if !tenant.topics.is_empty() {
                    return Err(CatalogError::TenantNotEmpty { name: name.clone(), topics: tenant.topics.len() });
                }
                self.tenants.remove(name);
                Ok(Applied::Tenant)
            }
            CatalogCommand::CreateTopic { tenant, name, partitions, settings, at_ms } => {
                let id = self.next_topic_id;
                let t = self.tenant_mut(tenant)?;
                if t.topics.contains_key(name) {
                    return Err(CatalogError::TopicExists { tenant: tenant.clone(), name: name.clone() });
                }
                t.topics.insert(
                    name.clone(),
                    TopicRecord { id, partitions: *partitions, settings: *settings, created_at_ms: *at_ms },
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
                let from = topic.partitions;
                topic.partitions = *partitions;
                Ok(Applied::PartitionsAdded { id: topic.id, from, to: *partitions })
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
        }
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

/// Directory of a topic's partitions: `<data>/topics/<tenant>/<name>.<id>`.
pub(crate) fn topic_dir(data_dir: &Path, tenant: &str, name: &str, id: u64) -> PathBuf {
    data_dir.join("topics").join(tenant).join(format!("{name}.{id}"))
}

/// The catalog persisted as one JSON file, replaced atomically.
#[derive(Debug)]
pub struct CatalogStore {
    path: PathBuf,
    catalog: Catalog,
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
    pub fn open(data_dir: &Path) -> Result<CatalogStore, StoreError> {
        let dir = data_dir.join("meta");
        let io = |source| StoreError::Io { path: dir.clone(), source };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let path = dir.join("catalog.json");
        let catalog = match std::fs::read(&path) {
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
        let store = CatalogStore { path, catalog };
        store.persist(&store.catalog)?;
        Ok(store)
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Applies `cmd` and makes the result durable before returning.
    pub fn commit(&mut self, cmd: &CatalogCommand) -> Result<Applied, StoreError> {
        let mut next = self.catalog.clone();
        let applied = next.apply(cmd)?;
        self.persist(&next)?;
        self.catalog = next;
        Ok(applied)
    }

    fn persist(&self, catalog: &Catalog) -> Result<(), StoreError> {
        let io = |source| StoreError::Io { path: self.path.clone(), source };
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(catalog)
            .map_err(|e| StoreError::Invalid { path: self.path.clone(), message: e.to_string() })?;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            crate::log::segment::sync_dir(dir).map_err(io)?;
        }
        Ok(())
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
        c.apply(&CatalogCommand::CreateTenant { name: "team".into(), at_ms: 1 }).unwrap();
        c.apply(&CatalogCommand::CreateTopic {
            tenant: "team".into(),
            name: "t".into(),
            partitions: 1,
            settings: settings(),
            at_ms: 1,
        })
        .unwrap();
        assert!(matches!(
            c.apply(&CatalogCommand::DeleteTenant { name: "team".into() }),
            Err(CatalogError::TenantNotEmpty { topics: 1, .. })
        ));
    }

    #[test]
    fn store_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = CatalogStore::open(dir.path()).unwrap();
            s.commit(&create("a", 2)).unwrap();
            assert!(s.commit(&create("a", 2)).is_err());
        }
        let s = CatalogStore::open(dir.path()).unwrap();
        assert_eq!(s.catalog().tenants["default"].topics["a"].partitions, 2);
        std::fs::write(dir.path().join("meta/catalog.json"), b"{not json").unwrap();
        assert!(matches!(CatalogStore::open(dir.path()), Err(StoreError::Invalid { .. })));
    }
}
