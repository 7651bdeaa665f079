//! Tenant and topic administration: catalog commands first, then the
//! partitions' files follow (see the invariant in `broker/mod.rs`).

use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, RwLock};

use super::{Broker, Topic};
use crate::catalog::{Applied, CatalogCommand, CatalogError, TopicRecord, TopicSettings, topic_dir};
use crate::config::{Limit, MIN_SEGMENT_BYTES};
use crate::error::BrokerError;
use crate::locks::{read_lock, write_lock};
use crate::log::{Durability, LogStats};
use crate::names::{TenantName, TopicName};
use crate::partition::{Partition, PartitionId, TopicRef};
use crate::tier::RemotePartition;

/// Settings a client asked for; `None` means the broker default (create)
/// or unchanged (update).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicOverrides {
    pub retention_ms: Option<i64>,
    pub retention_bytes: Option<i64>,
    pub segment_bytes: Option<u64>,
    pub segment_ms: Option<i64>,
    pub durability: Option<Durability>,
    pub local_retention_ms: Option<i64>,
    pub local_retention_bytes: Option<i64>,
    /// Copies of each partition (create only; `None`: the default, 1).
    pub replication_factor: Option<u32>,
}

/// A replicated partition's replicas as this broker sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaView {
    /// The current leader, when this broker holds a replica and knows one.
    pub leader: Option<u64>,
    pub replicas: Vec<u64>,
    /// In-sync replicas (see `ReplicaGroup::in_sync`).
    pub in_sync: Vec<u64>,
}

/// A topic as clients see it.
#[derive(Debug, Clone)]
pub struct TopicView {
    pub tenant: String,
    pub name: String,
    pub id: u64,
    pub partitions: u32,
    pub settings: TopicSettings,
    pub created_at_ms: i64,
    /// Per partition; `None` where another broker owns it (not known here).
    pub partition_stats: Vec<Option<LogStats>>,
    /// Per partition, the owning broker (cluster mode; `None` standalone).
    pub owners: Vec<Option<u64>>,
    pub replication_factor: u32,
    /// Per partition of a replicated topic (empty otherwise).
    pub replicas: Vec<ReplicaView>,
}

#[derive(Debug, Clone)]
pub struct TenantView {
    pub name: String,
    pub created_at_ms: i64,
    pub topic_count: u32,
    pub quotas: crate::quota::TenantQuotas,
    pub usage: TenantUsage,
}

/// What a tenant uses: counts from the catalog; stored bytes and
/// connections as this broker sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantUsage {
    pub topics: u32,
    pub queues: u32,
    pub partitions: u32,
    pub stored_bytes: u64,
    pub connections: u32,
}

impl Broker {
    fn tenant_view(&self, name: &str, t: &crate::catalog::TenantRecord) -> TenantView {
        let usage = TenantUsage {
            topics: t.topics.len() as u32,
            queues: t.queues.len() as u32,
            partitions: t.partition_count().min(u64::from(u32::MAX)) as u32,
            stored_bytes: self.quotas.stored(name),
            connections: self.quotas.connections(name),
        };
        for (resource, v) in [
            ("topics", u64::from(usage.topics)),
            ("queues", u64::from(usage.queues)),
            ("partitions", u64::from(usage.partitions)),
        ] {
            self.metrics
                .tenant_usage
                .get_or_create(&crate::metrics::UsageLabels { tenant: name.to_owned(), resource })
                .set(v as i64);
        }
        TenantView {
            name: name.to_owned(),
            created_at_ms: t.created_at_ms,
            topic_count: t.topics.len() as u32,
            quotas: t.quotas,
            usage,
        }
    }

    pub async fn create_tenant(
        &self,
        name: &str,
        if_not_exists: bool,
        quotas: crate::quota::TenantQuotas,
    ) -> Result<TenantView, BrokerError> {
        self.check_running()?;
        let name = TenantName::parse(name)?;
        quotas.validate().map_err(BrokerError::InvalidRequest)?;
        let cmd = CatalogCommand::CreateTenant { name: name.to_string(), at_ms: self.now_ms(), quotas };
        if let Some(c) = self.cluster() {
            match c.write(&cmd).await {
                Ok(_) => {}
                Err(BrokerError::Catalog(CatalogError::TenantExists(_))) if if_not_exists => {}
                Err(e) => return Err(e),
            }
            return self.describe_tenant(name.as_str()).await;
        }
        let mut store = self.catalog.lock().await;
        let res = store.commit(&cmd);
        match res {
            Ok(_) => {}
            Err(crate::catalog::StoreError::Catalog(crate::catalog::CatalogError::TenantExists(_)))
                if if_not_exists => {}
            Err(e) => return Err(e.into()),
        }
        Ok(self.tenant_view(name.as_str(), &store.catalog().tenants[name.as_str()]))
    }

    /// Replaces a tenant's quotas (through the catalog, so every broker of a
    /// cluster enforces them).
    pub async fn update_tenant(
        &self,
        name: &str,
        quotas: crate::quota::TenantQuotas,
    ) -> Result<TenantView, BrokerError> {
        let name = TenantName::parse(name)?;
        quotas.validate().map_err(BrokerError::InvalidRequest)?;
        self.commit_catalog(&CatalogCommand::UpdateTenant { name: name.to_string(), quotas }).await?;
        self.describe_tenant(name.as_str()).await
    }

    /// One tenant with its quotas and usage.
    pub async fn describe_tenant(&self, name: &str) -> Result<TenantView, BrokerError> {
        let name = TenantName::resolve(name)?;
        let store = self.catalog.lock().await;
        let t =
            store.catalog().tenants.get(name.as_str()).ok_or_else(|| CatalogError::UnknownTenant(name.to_string()))?;
        Ok(self.tenant_view(name.as_str(), t))
    }

    pub async fn list_tenants(&self) -> Vec<TenantView> {
        let store = self.catalog.lock().await;
        store.catalog().tenants.iter().map(|(name, t)| self.tenant_view(name, t)).collect()
    }

    pub async fn delete_tenant(&self, name: &str) -> Result<(), BrokerError> {
        self.check_running()?;
        let name = TenantName::parse(name)?;
        if let Some(c) = self.cluster() {
            c.write(&CatalogCommand::DeleteTenant { name: name.to_string() }).await?;
            return Ok(());
        }
        let mut store = self.catalog.lock().await;
        store.commit(&CatalogCommand::DeleteTenant { name: name.to_string() })?;
        let dir = self.config.storage.data_dir.join("topics").join(name.as_str());
        let _ = std::fs::remove_dir_all(dir);
        Ok(())
    }

    fn resolve_settings(&self, base: TopicSettings, o: &TopicOverrides) -> Result<TopicSettings, BrokerError> {
        let s = TopicSettings {
            retention_ms: o.retention_ms.unwrap_or(base.retention_ms),
            retention_bytes: o.retention_bytes.unwrap_or(base.retention_bytes),
            segment_bytes: o.segment_bytes.unwrap_or(base.segment_bytes),
            segment_ms: o.segment_ms.unwrap_or(base.segment_ms),
            durability: o.durability.unwrap_or(base.durability),
            local_retention_ms: o.local_retention_ms.unwrap_or(base.local_retention_ms),
            local_retention_bytes: o.local_retention_bytes.unwrap_or(base.local_retention_bytes),
        };
        let bad = |m: String| Err(BrokerError::InvalidConfig(m));
        const MAX_MS: i64 = 100 * 365 * 24 * 3600 * 1000;
        for (field, v) in [("retention_ms", s.retention_ms), ("local_retention_ms", s.local_retention_ms)] {
            if v != -1 && !(1..=MAX_MS).contains(&v) {
                return bad(format!("{field} must be -1 (forever) or between 1 and {MAX_MS} ms, got {v}"));
            }
        }
        for (field, v) in [("retention_bytes", s.retention_bytes), ("local_retention_bytes", s.local_retention_bytes)] {
            if v != -1 && v <= 0 {
                return bad(format!("{field} must be -1 (unlimited) or positive, got {v}"));
            }
        }
        if s.local_retention_ms >= 0 && s.retention_ms >= 0 && s.local_retention_ms > s.retention_ms {
            return bad(format!(
                "local_retention_ms ({}) must not exceed retention_ms ({})",
                s.local_retention_ms, s.retention_ms
            ));
        }
        if s.local_retention_bytes >= 0 && s.retention_bytes >= 0 && s.local_retention_bytes > s.retention_bytes {
            return bad(format!(
                "local_retention_bytes ({}) must not exceed retention_bytes ({})",
                s.local_retention_bytes, s.retention_bytes
            ));
        }
        if !(MIN_SEGMENT_BYTES..=(1 << 31)).contains(&s.segment_bytes) {
            return bad(format!(
                "segment_bytes must be between {MIN_SEGMENT_BYTES} and {} bytes, got {}",
                1u64 << 31,
                s.segment_bytes
            ));
        }
        if !(1..=MAX_MS).contains(&s.segment_ms) {
            return bad(format!("segment_ms must be between 1 and {MAX_MS} ms, got {}", s.segment_ms));
        }
        Ok(s)
    }

    fn default_settings(&self) -> TopicSettings {
        let d = &self.config.topic_defaults;
        TopicSettings {
            retention_ms: match d.retention {
                Limit::Unlimited => -1,
                Limit::Max(h) => h.0.as_millis() as i64,
            },
            retention_bytes: match d.retention_bytes {
                Limit::Unlimited => -1,
                Limit::Max(b) => b.0 as i64,
            },
            segment_bytes: d.segment_bytes.0,
            segment_ms: d.segment_age.0.as_millis() as i64,
            durability: d.durability,
            local_retention_ms: -1,
            local_retention_bytes: -1,
        }
    }

    pub async fn create_topic(
        &self,
        tenant: &str,
        name: &str,
        partitions: u32,
        overrides: TopicOverrides,
        if_not_exists: bool,
    ) -> Result<TopicView, BrokerError> {
        self.check_running()?;
        let tenant = TenantName::resolve(tenant)?;
        let name = TopicName::parse(name)?;
        self.check_partitions(partitions)?;
        let settings = self.resolve_settings(self.default_settings(), &overrides)?;
        let cmd = CatalogCommand::CreateTopic {
            tenant: tenant.to_string(),
            name: name.to_string(),
            partitions,
            settings,
            at_ms: self.now_ms(),
            replication_factor: overrides.replication_factor.unwrap_or_else(|| self.default_replication_factor()),
        };
        if let Some(c) = self.cluster() {
            self.check_limits(&self.catalog_snapshot().await, &cmd)?;
            // Every broker (this one included) opens the partitions when it
            // applies the entry; `write` returns once this one has.
            match c.write(&cmd).await {
                Ok(_) => {}
                Err(BrokerError::Catalog(CatalogError::TopicExists { .. })) if if_not_exists => {}
                Err(e) => return Err(e),
            }
            return self.describe_topic(tenant.as_str(), name.as_str());
        }
        let mut store = self.catalog.lock().await;
        self.check_limits(store.catalog(), &cmd)?;
        let id = match store.commit(&cmd) {
            Ok(Applied::Topic { id }) => id,
            Ok(other) => return Err(BrokerError::Internal(format!("CreateTopic committed as {other:?}"))),
            Err(crate::catalog::StoreError::Catalog(crate::catalog::CatalogError::TopicExists { .. }))
                if if_not_exists =>
            {
                drop(store);
                return self.describe_topic(tenant.as_str(), name.as_str());
            }
            Err(e) => return Err(e.into()),
        };
        let record = store.catalog().tenants[tenant.as_str()].topics[name.as_str()].clone();
        let dir = topic_dir(&self.config.storage.data_dir, tenant.as_str(), name.as_str(), id);
        let key = TopicRef::new(tenant.clone(), name.clone());
        let logs = match self.open_partitions(&key, &record, &dir, 0..partitions).await {
            Ok(logs) => logs,
            Err(e) => {
                // All or nothing: a create refused here (out of file
                // descriptors, disk full) leaves no topic behind, in the
                // catalog or on disk. The partitions opened so far are closed
                // already; the reserve of descriptors frees what the undo
                // needs when none were left.
                let _spare = self.release_spare_fds();
                let undo = CatalogCommand::DeleteTopic { tenant: tenant.to_string(), name: name.to_string() };
                if let Err(undo) = store.commit(&undo) {
                    // The catalog keeps the topic: the next start opens
                    // (creates) its missing partitions, so it is whole then.
                    tracing::error!(topic = %key, error = %undo, "cannot undo a failed topic creation");
                }
                let removed = tokio::task::spawn_blocking({
                    let dir = dir.clone();
                    move || std::fs::remove_dir_all(dir)
                })
                .await;
                if let Ok(Err(io)) = removed
                    && io.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(topic = %key, error = %io, "cannot remove a failed topic's files (removed at the next start)");
                }
                tracing::warn!(topic = %key, error = %e, "topic creation failed and was undone");
                return Err(e);
            }
        };
        let state = Arc::new(Topic {
            name: key.clone(),
            id,
            created_at_ms: record.created_at_ms,
            settings: RwLock::new(settings),
            partitions: RwLock::new(logs),
            owners: RwLock::new(record.owners.clone()),
            replicas: RwLock::new(record.replicas.clone()),
        });
        write_lock(&self.topics).insert(key, state);
        drop(store);
        self.describe_topic(tenant.as_str(), name.as_str())
    }

    fn check_partitions(&self, partitions: u32) -> Result<(), BrokerError> {
        let max = self.config.limits.max_partitions_per_topic;
        if partitions == 0 || partitions > max {
            return Err(BrokerError::InvalidConfig(format!(
                "partitions must be between 1 and {max}, got {partitions}"
            )));
        }
        Ok(())
    }

    /// Opens partitions `range` of the topic `record` describes, those this
    /// broker holds (standalone: all of them); a replicated partition's
    /// replica also starts its Raft node (cluster mode).
    pub(super) async fn open_partitions(
        &self,
        topic: &TopicRef,
        record: &TopicRecord,
        dir: &Path,
        range: Range<u32>,
    ) -> Result<Vec<Option<Arc<Partition>>>, BrokerError> {
        let mine: Vec<bool> =
            range.clone().map(|p| super::holds(&self.config, &record.owners, &record.replicas, p)).collect();
        let mine2 = mine.clone();
        let dir = dir.to_path_buf();
        let interval = self.config.storage.index_interval_bytes.0;
        let tiered = self.tier.is_some();
        let now = self.now_ms();
        let topic2 = topic.clone();
        let files = self.segment_files.clone();
        let topic_id = record.id;
        let log_config = record.log_config(interval, tiered);
        let partitions = tokio::task::spawn_blocking(move || {
            range
                .zip(mine2)
                .filter(|(_, mine)| *mine)
                .map(|(p, _)| {
                    let id = PartitionId::new(topic2.clone(), topic_id, p);
                    let resource = id.to_string();
                    Partition::open(&files, &dir.join(p.to_string()), id, log_config, now)
                        .map(|(partition, _)| partition)
                        .map_err(|source| BrokerError::Log { resource, source })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|source| BrokerError::TaskFailed { what: "open partitions", source })??;
        if let Some(tier) = &self.tier {
            for p in &partitions {
                let remote = RemotePartition::load(tier.store.clone(), tier.cache.clone(), p.id().remote_prefix())
                    .await
                    .map_err(|e| BrokerError::ColdTier { resource: p.id().to_string(), source: e })?;
                p.attach_remote(Arc::new(remote));
            }
        }
        for p in &partitions {
            tokio::spawn(p.log().clone().run_syncer());
        }
        for p in &partitions {
            if let Some(replicas) = record.replicas_of(p.id().index()) {
                self.start_replica_group(p, replicas).await;
            }
        }
        let mut opened = partitions.into_iter();
        Ok(mine.iter().map(|m| if *m { opened.next() } else { None }).collect())
    }

    pub async fn list_topics(&self, tenant: &str) -> Result<Vec<TopicView>, BrokerError> {
        let tenant = TenantName::resolve(tenant)?;
        let store = self.catalog.lock().await;
        let t = store
            .catalog()
            .tenants
            .get(tenant.as_str())
            .ok_or_else(|| crate::catalog::CatalogError::UnknownTenant(tenant.to_string()))?;
        Ok(t.topics
            .iter()
            .map(|(name, r)| TopicView {
                tenant: tenant.to_string(),
                name: name.clone(),
                id: r.id,
                partitions: r.partitions,
                settings: r.settings,
                created_at_ms: r.created_at_ms,
                partition_stats: Vec::new(),
                owners: Vec::new(),
                replication_factor: r.replication_factor(),
                replicas: Vec::new(),
            })
            .collect())
    }

    pub fn describe_topic(&self, tenant: &str, name: &str) -> Result<TopicView, BrokerError> {
        let t = self.topic(tenant, name)?;
        let stats = read_lock(&t.partitions).iter().map(|l| l.as_ref().map(|l| l.stats())).collect::<Vec<_>>();
        let owners = read_lock(&t.owners).clone();
        let replicas = read_lock(&t.replicas).clone();
        let replication_factor = replicas.first().map_or(1, |r| r.len() as u32);
        let replicas = replicas.iter().enumerate().map(|(p, r)| self.replica_view(t.id, p as u32, r)).collect();
        Ok(TopicView {
            replication_factor,
            replicas,
            tenant: t.name.tenant.to_string(),
            name: t.name.topic.to_string(),
            id: t.id,
            partitions: stats.len() as u32,
            // Standalone, this broker owns every partition.
            owners: (0..stats.len())
                .map(|p| {
                    if self.config.cluster.is_clustered() {
                        owners.get(p).copied()
                    } else {
                        Some(self.config.cluster.broker_id.unwrap_or(0) as u64)
                    }
                })
                .collect(),
            settings: *read_lock(&t.settings),
            created_at_ms: t.created_at_ms,
            partition_stats: stats,
        })
    }

    pub async fn add_partitions(&self, tenant: &str, name: &str, partitions: u32) -> Result<TopicView, BrokerError> {
        self.check_running()?;
        let t = self.topic(tenant, name)?;
        self.check_partitions(partitions)?;
        let cmd = CatalogCommand::AddPartitions {
            tenant: t.name.tenant.to_string(),
            name: t.name.topic.to_string(),
            partitions,
        };
        if let Some(c) = self.cluster() {
            self.check_limits(&self.catalog_snapshot().await, &cmd)?;
            c.write(&cmd).await?;
            return self.describe_topic(t.name.tenant.as_str(), t.name.topic.as_str());
        }
        let mut store = self.catalog.lock().await;
        self.check_limits(store.catalog(), &cmd)?;
        let applied = store.commit(&cmd)?;
        if let Applied::PartitionsAdded { from, to, .. } = applied
            && to > from
        {
            let dir = topic_dir(&self.config.storage.data_dir, t.name.tenant.as_str(), t.name.topic.as_str(), t.id);
            let record = store.catalog().tenants[t.name.tenant.as_str()].topics[t.name.topic.as_str()].clone();
            let logs = self.open_partitions(&t.name, &record, &dir, from..to).await?;
            write_lock(&t.partitions).extend(logs);
        }
        drop(store);
        self.describe_topic(t.name.tenant.as_str(), t.name.topic.as_str())
    }

    pub async fn update_topic(
        &self,
        tenant: &str,
        name: &str,
        overrides: TopicOverrides,
    ) -> Result<TopicView, BrokerError> {
        self.check_running()?;
        let t = self.topic(tenant, name)?;
        let current = *read_lock(&t.settings);
        let settings = self.resolve_settings(current, &overrides)?;
        let cmd =
            CatalogCommand::UpdateTopic { tenant: t.name.tenant.to_string(), name: t.name.topic.to_string(), settings };
        if let Some(c) = self.cluster() {
            c.write(&cmd).await?;
            return self.describe_topic(t.name.tenant.as_str(), t.name.topic.as_str());
        }
        let mut store = self.catalog.lock().await;
        store.commit(&cmd)?;
        *write_lock(&t.settings) = settings;
        let interval = self.config.storage.index_interval_bytes.0;
        for log in read_lock(&t.partitions).iter().flatten() {
            log.set_config(settings.log_config(interval, self.tier.is_some()));
        }
        drop(store);
        self.describe_topic(t.name.tenant.as_str(), t.name.topic.as_str())
    }

    pub async fn delete_topic(&self, tenant: &str, name: &str) -> Result<(), BrokerError> {
        self.check_running()?;
        let t = self.topic(tenant, name)?;
        let cmd = CatalogCommand::DeleteTopic { tenant: t.name.tenant.to_string(), name: t.name.topic.to_string() };
        if let Some(c) = self.cluster() {
            c.write(&cmd).await?;
            return Ok(());
        }
        let mut store = self.catalog.lock().await;
        store.commit(&cmd)?;
        write_lock(&self.topics).remove(&t.name);
        drop(store);
        self.discard_topic(&t).await;
        Ok(())
    }

    /// Closes a topic the catalog no longer names and removes its files
    /// (local and, best effort, remote).
    pub(super) async fn discard_topic(&self, t: &Topic) {
        self.stop_topic_groups(t).await;
        for log in read_lock(&t.partitions).iter().flatten() {
            log.close();
        }
        let dir = topic_dir(&self.config.storage.data_dir, t.name.tenant.as_str(), t.name.topic.as_str(), t.id);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        if let Some(tier) = &self.tier {
            // Best effort: the catalog no longer names the topic, so its
            // objects are garbage; a failure leaves them to an operator's
            // bucket lifecycle rule (logged).
            let store = tier.store.store.clone();
            let prefix =
                object_store::path::Path::from_iter([t.name.tenant.to_string(), format!("{}.{}", t.name.topic, t.id)]);
            tokio::spawn(async move {
                use futures::StreamExt;
                let locations = store.list(Some(&prefix)).map(|m| m.map(|m| m.location)).boxed();
                let mut results = store.delete_stream(locations);
                while let Some(r) = results.next().await {
                    if let Err(e) = r {
                        tracing::warn!(prefix = %prefix, error = %e, "could not delete a deleted topic's remote object");
                    }
                }
            });
        }
    }
}
