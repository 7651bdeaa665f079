//! Opening the data directory: the directory lock, the catalog, every
//! partition's recovery (only active segments are scanned), orphaned topic
//! directories, and the cold tier's manifests.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};

use tokio::sync::{Semaphore, watch};

use super::{Broker, Topic};
use crate::catalog::{CatalogStore, remove_orphan_dirs, topic_dir};
use crate::clock::Clock;
use crate::config::Config;
use crate::fs::SegmentFiles;
use crate::locks::read_lock;
use crate::log::LogError;
use crate::names::{TenantName, TopicName};
use crate::partition::{Partition, PartitionId, TopicRef};
use crate::tier::{Tier, TierError};

type Opened = (std::fs::File, CatalogStore, HashMap<TopicRef, Arc<Topic>>);

impl Broker {
    /// Opens the data directory, recovering every partition (only active
    /// segments are scanned), attaches the cold tier and starts each
    /// partition's group-commit task.
    pub async fn open_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Arc<Broker>, OpenError> {
        Broker::open_on(config, clock, crate::fs::real()).await
    }

    /// [`Broker::open_with_clock`] with the catalog and every partition log
    /// on the filesystem `fs` (tests inject faults through it; the data
    /// directory's lock stays a real file).
    pub(crate) async fn open_on(
        config: Config,
        clock: Arc<dyn Clock>,
        fs: crate::fs::Fs,
    ) -> Result<Arc<Broker>, OpenError> {
        let config = Arc::new(config);
        let cfg = config.clone();
        let now = clock.now_ms();
        let capacity = crate::fs::handles::capacity_for(config.limits.max_open_segments);
        let segment_files = SegmentFiles::new(fs, capacity);
        let files = segment_files.clone();
        let (lock, store, topics) =
            tokio::task::spawn_blocking(move || open_blocking(&cfg, &files, now)).await.map_err(|e| {
                OpenError::DataDir { path: config.storage.data_dir.clone(), source: std::io::Error::other(e) }
            })??;
        let tier = Tier::open(&config.tier, &config.storage.data_dir).await?.map(Arc::new);
        let partitions: Vec<Arc<Partition>> = topics
            .values()
            .flat_map(|t| read_lock(&t.partitions).iter().flatten().cloned().collect::<Vec<_>>())
            .collect();
        if let Some(tier) = &tier {
            crate::partition::attach_tiers(tier, &partitions).await?;
        }
        for p in &partitions {
            tokio::spawn(p.log().clone().run_syncer());
        }
        let (shutdown, _) = watch::channel(false);
        let budget = config.limits.max_inflight_produce_bytes.0.min(u64::from(u32::MAX)) as usize;
        let producer_ids = Arc::new(crate::producer_ids::ProducerRegistry::from_catalog(store.catalog()));
        let mut store = store;
        let credentials = Arc::new(crate::security::Credentials::load(&config.auth.admin_token_file, store.catalog())?);
        store.follow_credentials(credentials.clone());
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let quotas = Arc::new(crate::quota::Quotas::new(config.quotas.max_throttle.0, metrics.clone()));
        store.follow_quotas(quotas.clone());
        let remote_queues = RwLock::new(super::remote_queues(&config, store.catalog()));
        Ok(Arc::new(Broker {
            remote_queues,
            queue_owners: watch::channel(0).0,
            groups: Default::default(),
            producer_ids,
            spare_fds: crate::fds::SpareFds::new(),
            segment_files,
            credentials,
            produce_budget: Arc::new(Semaphore::new(budget)),
            config,
            clock,
            catalog: tokio::sync::Mutex::new(store),
            topics: RwLock::new(topics),
            shutdown,
            ready: AtomicBool::new(true),
            metrics,
            quotas,
            queue_usage: std::sync::OnceLock::new(),
            tier,
            cluster: std::sync::OnceLock::new(),
            _dir_lock: lock,
        }))
    }
}

fn open_blocking(config: &Config, files: &Arc<SegmentFiles>, now_ms: i64) -> Result<Opened, OpenError> {
    let data = &config.storage.data_dir;
    let io = |source| OpenError::DataDir { path: data.clone(), source };
    std::fs::create_dir_all(data).map_err(io)?;
    let lock =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(data.join(".lock")).map_err(io)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Err(OpenError::Locked(data.clone())),
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    let store = CatalogStore::open_in(files.fs().clone(), data)?;
    let interval = config.storage.index_interval_bytes.0;
    let mut topics = HashMap::new();
    let mut expected_dirs = std::collections::HashSet::new();
    for (tenant, t) in &store.catalog().tenants {
        for (name, record) in &t.topics {
            let key = TopicRef::new(TenantName::parse(tenant)?, TopicName::parse(name)?);
            let dir = topic_dir(data, tenant, name, record.id);
            expected_dirs.insert(dir.clone());
            let mut partitions = Vec::with_capacity(record.partitions as usize);
            for p in 0..record.partitions {
                if !super::holds(config, &record.owners, &record.replicas, p) {
                    partitions.push(None);
                    continue;
                }
                let pdir = dir.join(p.to_string());
                let id = PartitionId::new(key.clone(), record.id, p);
                let config = record.log_config(interval, config.tier.enabled());
                let (partition, report) = Partition::open(files, &pdir, id, config, now_ms)
                    .map_err(|source| OpenError::Recovery { path: pdir.clone(), source })?;
                for why in &report.truncated {
                    tracing::warn!(partition = %pdir.display(), "recovery truncated {why}");
                }
                partitions.push(Some(partition));
            }
            topics.insert(
                key.clone(),
                Arc::new(Topic {
                    name: key,
                    id: record.id,
                    created_at_ms: record.created_at_ms,
                    settings: RwLock::new(record.settings),
                    partitions: RwLock::new(partitions),
                    owners: RwLock::new(record.owners.clone()),
                    replicas: RwLock::new(record.replicas.clone()),
                }),
            );
        }
    }
    remove_orphan_dirs(&data.join("topics"), &expected_dirs, "topic");
    Ok((lock, store, topics))
}

/// Why the broker could not open its data directory.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("data directory {0} is in use by another strata-broker process")]
    Locked(PathBuf),
    #[error(transparent)]
    Catalog(#[from] crate::catalog::StoreError),
    #[error("cannot recover partition in {path}: {source}")]
    Recovery { path: PathBuf, source: LogError },
    #[error(transparent)]
    ColdStore(#[from] TierError),
    #[error(transparent)]
    AdminToken(#[from] crate::security::AdminTokenError),
    #[error("the catalog names an invalid tenant or topic: {0}")]
    InvalidName(#[from] crate::names::InvalidName),
}
