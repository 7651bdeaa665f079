//! Cluster mode: applying replicated catalog entries and making this
//! broker's local view (the open topics and their partition directories)
//! follow the catalog — on every broker, the one that took the request
//! included.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use super::{Broker, Topic};
use crate::catalog::RaftApplied;
use crate::catalog::{Applied, Catalog, CatalogCommand, CatalogError, StoreError, topic_dir};
use crate::error::BrokerError;
use crate::locks::{read_lock, write_lock};
use crate::names::{TenantName, TopicName};
use crate::partition::TopicRef;
use futures::future::BoxFuture;

impl Broker {
    /// Applies one committed entry (`cmd` is `None` for Raft's own entries)
    /// durably, then reconciles the local view if the catalog changed.
    pub(crate) async fn apply_replicated(
        &self,
        cmd: Option<&CatalogCommand>,
        raft: RaftApplied,
    ) -> Result<Option<Result<Applied, CatalogError>>, StoreError> {
        let mut store = self.catalog.lock().await;
        let outcome = store.commit_replicated(cmd, raft)?;
        self.producer_ids.sync(store.catalog());
        if matches!(outcome, Some(Ok(_))) {
            let catalog = store.catalog().clone();
            self.reconcile(&catalog).await;
        }
        Ok(outcome)
    }

    /// Replaces the catalog with an installed snapshot and reconciles.
    pub(crate) async fn install_replicated(&self, catalog: Catalog) -> Result<(), StoreError> {
        let mut store = self.catalog.lock().await;
        store.install(catalog)?;
        self.metrics.metadata_snapshots_installed.inc();
        self.producer_ids.sync(store.catalog());
        let catalog = store.catalog().clone();
        self.reconcile(&catalog).await;
        Ok(())
    }

    /// Opens topics and partitions the catalog names and this broker lacks,
    /// applies changed settings, and closes and removes topics it no longer
    /// names. Called with the catalog lock held (entries apply in order).
    async fn reconcile(&self, catalog: &Catalog) {
        let remote = super::remote_queues(&self.config, catalog);
        let changed = {
            let mut current = crate::locks::write_lock(&self.remote_queues);
            let changed = *current != remote;
            *current = remote;
            changed
        };
        if changed {
            self.queue_owners.send_modify(|v| *v += 1);
        }
        let interval = self.config.storage.index_interval_bytes.0;
        let tiered = self.tier.is_some();
        let mut wanted = HashSet::new();
        for (tenant, t) in &catalog.tenants {
            for (name, record) in &t.topics {
                let (Ok(tn), Ok(name_ok)) = (TenantName::parse(tenant), TopicName::parse(name)) else {
                    tracing::error!(tenant, topic = name, "the replicated catalog names an invalid topic");
                    continue;
                };
                let key = TopicRef::new(tn, name_ok);
                wanted.insert((key.clone(), record.id));
                let existing = read_lock(&self.topics).get(&key).cloned();
                let dir = topic_dir(&self.config.storage.data_dir, tenant, name, record.id);
                match existing {
                    Some(topic) if topic.id == record.id => {
                        let have = read_lock(&topic.partitions).len() as u32;
                        *write_lock(&topic.owners) = record.owners.clone();
                        *write_lock(&topic.replicas) = record.replicas.clone();
                        // Partitions that became this broker's (a standalone
                        // catalog's, adopted by its broker) open now.
                        let gained: Vec<u32> = {
                            let slots = read_lock(&topic.partitions);
                            (0..have)
                                .filter(|p| {
                                    slots[*p as usize].is_none()
                                        && super::holds(&self.config, &record.owners, &record.replicas, *p)
                                })
                                .collect()
                        };
                        for p in gained {
                            let opened = self.open_partitions(&key, record, &dir, p..p + 1).await;
                            match opened {
                                Ok(mut logs) => {
                                    if let Some(Some(log)) = logs.pop() {
                                        write_lock(&topic.partitions)[p as usize] = Some(log);
                                    }
                                }
                                Err(e) => log_open_failure(&key, &e),
                            }
                        }
                        if record.partitions > have {
                            match self.open_partitions(&key, record, &dir, have..record.partitions).await {
                                Ok(logs) => write_lock(&topic.partitions).extend(logs),
                                Err(e) => log_open_failure(&key, &e),
                            }
                        }
                        let changed = *read_lock(&topic.settings) != record.settings;
                        if changed {
                            *write_lock(&topic.settings) = record.settings;
                            for log in read_lock(&topic.partitions).iter().flatten() {
                                log.set_config(record.log_config(interval, tiered));
                            }
                        }
                    }
                    _ => {
                        let opened = self.open_partitions(&key, record, &dir, 0..record.partitions).await;
                        match opened {
                            Ok(logs) => {
                                let topic = Arc::new(Topic {
                                    name: key.clone(),
                                    id: record.id,
                                    created_at_ms: record.created_at_ms,
                                    settings: RwLock::new(record.settings),
                                    partitions: RwLock::new(logs),
                                    owners: RwLock::new(record.owners.clone()),
                                    replicas: RwLock::new(record.replicas.clone()),
                                });
                                // A same-named topic with another id was
                                // deleted and created again: discard the old one.
                                let old = write_lock(&self.topics).insert(key.clone(), topic);
                                if let Some(old) = old {
                                    self.discard_topic(&old).await;
                                }
                            }
                            Err(e) => log_open_failure(&key, &e),
                        }
                    }
                }
            }
        }
        let gone: Vec<Arc<Topic>> = {
            let mut topics = write_lock(&self.topics);
            let keys: Vec<TopicRef> =
                topics.values().filter(|t| !wanted.contains(&(t.name.clone(), t.id))).map(|t| t.name.clone()).collect();
            keys.iter().filter_map(|k| topics.remove(k)).collect()
        };
        for t in gone {
            self.discard_topic(&t).await;
        }
    }
}

fn log_open_failure(key: &TopicRef, e: &BrokerError) {
    tracing::error!(topic = %format!("{}/{}", key.tenant, key.topic), error = %e,
        "cannot open a replicated topic's partitions on this broker");
}

impl crate::cluster::CatalogHost for Broker {
    fn catalog(&self) -> BoxFuture<'_, Catalog> {
        Box::pin(self.catalog_snapshot())
    }

    fn apply<'a>(
        &'a self,
        cmd: Option<&'a CatalogCommand>,
        raft: RaftApplied,
    ) -> BoxFuture<'a, crate::cluster::ApplyOutcome> {
        Box::pin(self.apply_replicated(cmd, raft))
    }

    fn install(&self, catalog: Catalog) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.install_replicated(catalog))
    }
}
