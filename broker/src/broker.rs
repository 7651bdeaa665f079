//! The broker domain service: owns the catalog and every partition log, and
//! implements produce, fetch and administration independent of transport.
//!
//! Architecture invariant: the catalog is committed before the files follow
//! it (create: catalog then directories; delete: catalog then removal), so
//! after a crash start-up reconciles the disk to the catalog by creating
//! missing partition directories and removing orphaned ones.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use strata_proto::batch::{self, Limits};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::catalog::{Applied, CatalogCommand, CatalogStore, TopicSettings, topic_dir};
use crate::config::{Config, Limit, MIN_SEGMENT_BYTES};
use crate::error::BrokerError;
use crate::log::{Durability, LogError, LogStats, PartitionLog, ReadResult};
use crate::names::{TenantName, TopicName};
use crate::tier::{RemotePartition, Tier, TierError};

/// Wall-clock time in ms since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

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
    pub partition_stats: Vec<LogStats>,
}

#[derive(Debug, Clone)]
pub struct TenantView {
    pub name: String,
    pub created_at_ms: i64,
    pub topic_count: u32,
}

/// Tenant, topic and, per partition, its stats and bytes waiting for upload.
pub(crate) type TopicStats = (String, String, Vec<(LogStats, u64)>);

/// The outcome of an acknowledged produce.
#[derive(Debug, Clone, Copy)]
pub struct Produced {
    pub base_offset: u64,
    pub last_offset: u64,
    pub append_time_ms: i64,
    /// A retried idempotent batch that was already stored.
    pub duplicate: bool,
}

pub(crate) struct TopicState {
    pub tenant: String,
    pub name: String,
    pub id: u64,
    pub created_at_ms: i64,
    pub settings: RwLock<TopicSettings>,
    pub partitions: RwLock<Vec<Arc<PartitionLog>>>,
}

type TopicKey = (String, String);

pub struct Broker {
    config: Arc<Config>,
    catalog: tokio::sync::Mutex<CatalogStore>,
    topics: RwLock<HashMap<TopicKey, Arc<TopicState>>>,
    produce_budget: Arc<Semaphore>,
    shutdown: watch::Sender<bool>,
    ready: AtomicBool,
    metrics: Arc<crate::metrics::Metrics>,
    /// The cold tier (absent with `tier.cold_store = "none"`).
    tier: Option<Arc<Tier>>,
    /// Issued producer ids and the latest epoch of each named producer.
    producer_ids: Arc<crate::producer_ids::ProducerRegistry>,
    _dir_lock: std::fs::File,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("data_dir", &self.config.storage.data_dir).finish()
    }
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
}

/// A produced batch written to the log, waiting to become durable.
pub struct PendingAppend {
    log: Arc<PartitionLog>,
    produced: Produced,
    resource: String,
    _permit: OwnedSemaphorePermit,
    /// Spans of the batch's sampled messages (tracing on).
    traced: Option<crate::telemetry::Published>,
}

impl PendingAppend {
    /// Resolves once the batch is durable per the topic's durability mode.
    pub async fn wait(self) -> Result<Produced, BrokerError> {
        let result = self.log.wait_durable(self.produced.last_offset + 1).await;
        if let Some(t) = self.traced {
            t.finish(result.as_ref().err().map(|e| e.to_string()).as_deref());
        }
        result.map_err(|source| BrokerError::Log { resource: self.resource.clone(), source })?;
        Ok(self.produced)
    }
}

impl Broker {
    /// Opens the data directory, recovering every partition (only active
    /// segments are scanned), and starts their group-commit tasks.
    pub async fn open(config: Config) -> Result<Arc<Broker>, OpenError> {
        let config = Arc::new(config);
        let cfg = config.clone();
        let (lock, store, topics) = tokio::task::spawn_blocking(move || open_blocking(&cfg)).await.map_err(|e| {
            OpenError::DataDir { path: config.storage.data_dir.clone(), source: std::io::Error::other(e) }
        })??;
        let tier = Tier::open(&config.tier, &config.storage.data_dir).await?.map(Arc::new);
        if let Some(tier) = &tier {
            attach_tiers(tier, &topics).await?;
        }
        for topic in topics.values() {
            for log in read_lock(&topic.partitions).iter() {
                tokio::spawn(log.clone().run_syncer());
            }
        }
        let (shutdown, _) = watch::channel(false);
        let budget = config.limits.max_inflight_produce_bytes.0.min(u64::from(u32::MAX)) as usize;
        let producer_ids = Arc::new(crate::producer_ids::ProducerRegistry::from_catalog(store.catalog()));
        Ok(Arc::new(Broker {
            producer_ids,
            produce_budget: Arc::new(Semaphore::new(budget)),
            config,
            catalog: tokio::sync::Mutex::new(store),
            topics: RwLock::new(topics),
            shutdown,
            ready: AtomicBool::new(true),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            tier,
            _dir_lock: lock,
        }))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// Every topic's partitions with their stats and bytes waiting for
    /// upload (for metrics).
    pub(crate) fn partition_stats(&self) -> Vec<TopicStats> {
        read_lock(&self.topics)
            .values()
            .map(|t| {
                let parts = read_lock(&t.partitions)
                    .iter()
                    .map(|l| (l.stats(), if l.config().tiered { l.pending_upload_bytes() } else { 0 }))
                    .collect();
                (t.tenant.clone(), t.name.clone(), parts)
            })
            .collect()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// A receiver that turns true when the broker starts shutting down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Resolves once shutdown has begun.
    pub(crate) async fn until_shutdown(&self) {
        let mut rx = self.shutdown.subscribe();
        if rx.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    fn check_running(&self) -> Result<(), BrokerError> {
        if *self.shutdown.borrow() { Err(BrokerError::ShuttingDown) } else { Ok(()) }
    }

    /// Stops accepting new work: not ready, new appends refused, fetch and
    /// produce streams end. In-flight appends still complete.
    pub fn shutdown(&self) {
        self.ready.store(false, Ordering::Release);
        self.shutdown.send_replace(true);
    }

    /// Flushes every partition to disk and closes it (after `shutdown`).
    pub async fn close(&self) {
        let logs: Vec<Arc<PartitionLog>> = self.all_logs();
        let _ = tokio::task::spawn_blocking(move || {
            for log in logs {
                if let Err(e) = log.flush() {
                    tracing::error!(dir = %log.dir().display(), error = %e, "flush on shutdown failed");
                }
                log.close();
            }
        })
        .await;
    }

    fn all_logs(&self) -> Vec<Arc<PartitionLog>> {
        read_lock(&self.topics).values().flat_map(|t| read_lock(&t.partitions).clone()).collect()
    }

    /// Runs retention and age-based rolling on every partition. `now_ms` is
    /// injected so tests control time.
    pub async fn run_maintenance(&self, now_ms: i64) {
        let logs = self.all_logs();
        // Total retention of the cold tier first (manifest, then objects).
        for log in &logs {
            let Some(remote) = log.remote() else { continue };
            if remote.range().segments == 0 {
                continue;
            }
            let cfg = log.config();
            match remote
                .apply_retention(now_ms, cfg.retention_ms, cfg.retention_bytes, log.pending_upload_bytes())
                .await
            {
                Ok(deleted) if !deleted.is_empty() => {
                    tracing::info!(dir = %log.dir().display(), segments = ?deleted, "retention deleted remote segments");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(dir = %log.dir().display(), error = %e, "remote retention failed"),
            }
        }
        let _ = tokio::task::spawn_blocking(move || {
            for log in logs {
                match log.maintain(now_ms) {
                    Ok(m) if !m.deleted_segments.is_empty() => {
                        tracing::info!(dir = %log.dir().display(), segments = ?m.deleted_segments, "retention deleted segments");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(dir = %log.dir().display(), error = %e, "maintenance failed"),
                }
            }
        })
        .await;
    }

    /// Periodic maintenance until shutdown.
    pub async fn maintenance_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.storage.maintenance_interval.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.run_maintenance(now_ms()).await,
                _ = self.until_shutdown() => return,
            }
        }
    }

    /// Uploads sealed segments of tiered partitions until shutdown, at most
    /// `tier.upload_concurrency` partitions at a time, each partition's
    /// segments in order. A partition whose upload failed waits an
    /// exponentially growing delay (capped by `tier.max_retry_backoff`)
    /// before it is tried again, so an outage costs little and uploads
    /// catch up by themselves once the store is back. Also keeps the upload
    /// backlog that produce requests are checked against.
    pub async fn upload_loop(self: Arc<Self>) {
        use backon::BackoffBuilder;
        let Some(tier) = self.tier.clone() else { return };
        let mut tick = tokio::time::interval(tier.config.upload_interval.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut running: tokio::task::JoinSet<(PathBuf, Result<(), TierError>)> = tokio::task::JoinSet::new();
        let mut busy: std::collections::HashSet<PathBuf> = Default::default();
        let mut retry: HashMap<PathBuf, (tokio::time::Instant, backon::ExponentialBackoff)> = HashMap::new();
        let backoff = || {
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(tier.config.max_retry_backoff.0)
                .with_jitter()
                .without_max_times()
                .build()
        };
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(done) = running.join_next(), if !running.is_empty() => match done {
                    Ok((dir, Ok(()))) => {
                        busy.remove(&dir);
                        retry.remove(&dir);
                        tier.set_last_error(None);
                    }
                    Ok((dir, Err(e))) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "cold-tier upload failed; will retry");
                        busy.remove(&dir);
                        tier.set_last_error(Some(e.to_string()));
                        let entry = retry.entry(dir).or_insert_with(|| (tokio::time::Instant::now(), backoff()));
                        let delay = entry.1.next().unwrap_or(tier.config.max_retry_backoff.0);
                        entry.0 = tokio::time::Instant::now() + delay;
                    }
                    Err(e) => {
                        // Which partition is unknown; the per-partition writer
                        // lock keeps a second upload of it safe.
                        tracing::error!(error = %e, "upload task failed");
                        busy.clear();
                    }
                },
                _ = self.until_shutdown() => return,
            }
            let logs: Vec<Arc<PartitionLog>> =
                self.all_logs().into_iter().filter(|l| l.config().tiered && l.remote().is_some()).collect();
            tier.set_backlog(logs.iter().map(|l| l.pending_upload_bytes()).sum());
            let now = tokio::time::Instant::now();
            for log in logs {
                if running.len() >= tier.config.upload_concurrency as usize {
                    break;
                }
                let dir = log.dir().to_path_buf();
                if busy.contains(&dir) || retry.get(&dir).is_some_and(|(at, _)| *at > now) {
                    continue;
                }
                if log.next_to_upload(0).is_none() {
                    continue;
                }
                busy.insert(dir.clone());
                let limits = tier.limits();
                let metrics = self.metrics.clone();
                running.spawn(async move {
                    let result = upload_pending(&log, limits, &metrics).await;
                    (dir, result)
                });
            }
        }
    }

    // ---- lookup -------------------------------------------------------

    fn topic(&self, tenant: &str, topic: &str) -> Result<Arc<TopicState>, BrokerError> {
        let tenant = TenantName::resolve(tenant)?;
        let name = TopicName::parse(topic)?;
        let topics = read_lock(&self.topics);
        if let Some(t) = topics.get(&(tenant.as_str().to_owned(), name.as_str().to_owned())) {
            return Ok(t.clone());
        }
        drop(topics);
        // Distinguish an unknown tenant from an unknown topic.
        let catalog = self.catalog.try_lock();
        if let Ok(c) = catalog
            && !c.catalog().tenants.contains_key(tenant.as_str())
        {
            return Err(crate::catalog::CatalogError::UnknownTenant(tenant.to_string()).into());
        }
        Err(crate::catalog::CatalogError::UnknownTopic { tenant: tenant.to_string(), name: name.to_string() }.into())
    }

    /// How many partitions a topic has.
    pub fn partition_count(&self, tenant: &str, topic: &str) -> Result<u32, BrokerError> {
        Ok(read_lock(&self.topic(tenant, topic)?.partitions).len() as u32)
    }

    /// The log of one partition, with a `tenant/topic/partition` label.
    pub(crate) fn partition(
        &self,
        tenant: &str,
        topic: &str,
        partition: u32,
    ) -> Result<(Arc<PartitionLog>, String), BrokerError> {
        let t = self.topic(tenant, topic)?;
        let parts = read_lock(&t.partitions);
        let log = parts.get(partition as usize).cloned().ok_or_else(|| BrokerError::UnknownPartition {
            tenant: t.tenant.clone(),
            topic: t.name.clone(),
            partition,
            partitions: parts.len() as u32,
        })?;
        Ok((log, format!("{}/{}/{}", t.tenant, t.name, partition)))
    }

    // ---- produce and fetch --------------------------------------------

    /// Validates and appends one batch; the returned handle resolves once it
    /// is durable. Appends to one partition happen in call order.
    pub async fn append(
        &self,
        tenant: &str,
        topic: &str,
        partition: u32,
        batch: Bytes,
    ) -> Result<PendingAppend, BrokerError> {
        self.check_running()?;
        let (log, resource) = self.partition(tenant, topic, partition)?;
        if let Some(tier) = &self.tier
            && tier.backlog() > tier.budget()
            && log.config().tiered
        {
            self.metrics.rejections.get_or_create(&crate::metrics::RejectLabels { reason: "cold_tier_backlog" }).inc();
            return Err(BrokerError::ColdTierBacklog {
                resource,
                waiting: tier.backlog(),
                budget: tier.budget(),
                reason: tier.last_error().unwrap_or_else(|| "uploads are behind".into()),
            });
        }
        let limit = self.config.limits.max_batch_bytes.0;
        if batch.len() as u64 > limit {
            return Err(BrokerError::BatchTooLarge { resource, size: batch.len(), limit });
        }
        let permit = self
            .produce_budget
            .clone()
            .acquire_many_owned(batch.len().max(1) as u32)
            .await
            .map_err(|_| BrokerError::ShuttingDown)?;
        let labels = crate::metrics::TopicLabels::from_resource(&resource);
        let limits = Limits {
            max_record_bytes: self.config.limits.max_record_bytes.0 as usize,
            max_uncompressed_bytes: self.config.limits.max_uncompressed_batch_bytes.0 as usize,
        };
        let log2 = log.clone();
        let res = resource.clone();
        let bytes_len = batch.len() as u64;
        let topic_label = labels.topic.clone();
        let producer_ids = self.producer_ids.clone();
        let (appended, traced) = tokio::task::spawn_blocking(move || {
            let header = batch::validate(&batch, limits)
                .map_err(|source| BrokerError::Batch { resource: res.clone(), source })?;
            if header.has_producer_id() {
                producer_ids
                    .check(header.producer_id, header.producer_epoch)
                    .map_err(|source| BrokerError::Producer { resource: res.clone(), source })?;
            }
            // `publish` spans for the records that carry a sampled context,
            // once the batch is known to be well-formed.
            let traced = (strata_proto::telemetry::enabled() && header.is_traced())
                .then(|| crate::telemetry::batch_spans(&batch, "publish", &topic_label, partition));
            let mut owned = batch.to_vec();
            log2.append(&mut owned, &header, now_ms())
                .map(|appended| (appended, traced))
                .map_err(|source| BrokerError::Log { resource: res, source })
        })
        .await
        .map_err(|e| BrokerError::InvalidRequest(format!("append task failed: {e}")))??;
        let traced = traced.filter(|s| !s.is_empty()).map(|mut spans| {
            use strata_proto::telemetry::{Attribute, Span, attr};
            for (delta, span) in &mut spans {
                span.set_attribute(Attribute::new(attr::MESSAGE_ID, (appended.base_offset + *delta).to_string()));
            }
            crate::telemetry::Published::new(spans.into_iter().map(|(_, s)| s).collect(), &labels.topic)
        });
        if !appended.duplicate {
            let n = appended.last_offset - appended.base_offset + 1;
            self.metrics.messages_in.get_or_create(&labels).inc_by(n);
            self.metrics.bytes_in.get_or_create(&labels).inc_by(bytes_len);
        }
        Ok(PendingAppend {
            log,
            produced: Produced {
                base_offset: appended.base_offset,
                last_offset: appended.last_offset,
                append_time_ms: appended.append_time_ms,
                duplicate: appended.duplicate,
            },
            resource,
            _permit: permit,
            traced,
        })
    }

    /// Appends and waits for durability.
    pub async fn produce(
        &self,
        tenant: &str,
        topic: &str,
        partition: u32,
        batch: Bytes,
    ) -> Result<Produced, BrokerError> {
        self.append(tenant, topic, partition, batch).await?.wait().await
    }

    /// Reads whole batches from `from`: from the local disk, or from the
    /// cold tier below the local start. Consumers cannot tell which.
    pub(crate) async fn read(
        log: &Arc<PartitionLog>,
        resource: &str,
        from: u64,
        max_bytes: usize,
    ) -> Result<ReadResult, BrokerError> {
        let log_err = |source| BrokerError::Log { resource: resource.to_owned(), source };
        let mut from = from;
        // A segment may move from local to remote-only between our look and
        // the local read (local retention); a few rounds settle it.
        for _ in 0..3 {
            if let Some(remote) = log.remote() {
                let local_start = log.local_start();
                if from < local_start {
                    let stats = log.stats();
                    if from < stats.start_offset {
                        return Err(log_err(LogError::OffsetOutOfRange {
                            requested: from,
                            start: stats.start_offset,
                            end: stats.high_watermark,
                        }));
                    }
                    match remote.read(from, max_bytes).await {
                        Ok(Some(r)) => {
                            return Ok(ReadResult {
                                records: r.bytes,
                                next_offset: r.next_offset,
                                high_watermark: stats.high_watermark,
                                log_start: stats.start_offset,
                            });
                        }
                        // In a gap between the tier and the local disk.
                        Ok(None) => from = local_start,
                        Err(e) => return Err(log_err(tier_to_log_error(e))),
                    }
                }
            }
            let l = log.clone();
            let result = tokio::task::spawn_blocking(move || l.read(from, max_bytes))
                .await
                .map_err(|e| BrokerError::InvalidRequest(format!("read task failed: {e}")))?;
            match result {
                Err(LogError::OffsetOutOfRange { requested, .. })
                    if log.remote().is_some() && requested < log.local_start() =>
                {
                    continue;
                }
                Ok(mut r) => {
                    // The hot path: only the tier's start, not full stats.
                    if let Some(start) = log.remote().and_then(|t| t.start()) {
                        r.log_start = r.log_start.min(start);
                    }
                    return Ok(r);
                }
                Err(e) => return Err(log_err(e)),
            }
        }
        Err(log_err(LogError::Io {
            path: log.dir().to_path_buf(),
            source: std::io::Error::other("the partition changed under three reads in a row; retry"),
        }))
    }

    /// First offset with a timestamp >= `ts` (the high watermark if none).
    pub(crate) async fn offset_for_timestamp(
        log: &Arc<PartitionLog>,
        resource: &str,
        ts: i64,
    ) -> Result<(u64, i64), BrokerError> {
        let log_err = |source| BrokerError::Log { resource: resource.to_owned(), source };
        if let Some(remote) = log.remote() {
            // Data older than the local disk is in the tier: look there first.
            let batch = remote.find_by_time(ts, log.local_start()).await.map_err(|e| log_err(tier_to_log_error(e)))?;
            if let Some(bytes) = batch
                && let Some(Ok(raw)) = strata_proto::batch::BatchIter::new(bytes).next()
            {
                let records = raw.records().map_err(|e| {
                    log_err(LogError::Corrupt { path: log.dir().to_path_buf(), position: 0, reason: e.to_string() })
                })?;
                if let Some(r) = records.iter().find(|r| r.timestamp_ms >= ts) {
                    return Ok((r.offset, r.timestamp_ms));
                }
            }
        }
        let log = log.clone();
        tokio::task::spawn_blocking(move || log.offset_for_timestamp(ts))
            .await
            .map_err(|e| BrokerError::InvalidRequest(format!("lookup task failed: {e}")))?
            .map_err(|source| BrokerError::Log { resource: resource.to_owned(), source })
    }

    /// Registers an idempotent producer (see `InitProducer` in log.proto).
    pub async fn init_producer(&self, tenant: &str, name: &str) -> Result<(i64, i16), BrokerError> {
        self.check_running()?;
        let tenant = TenantName::resolve(tenant)?;
        let name = if name.is_empty() { None } else { Some(crate::names::parse_group_name(name)?) };
        let mut store = self.catalog.lock().await;
        match store.commit(&CatalogCommand::InitProducer { tenant: tenant.to_string(), name })? {
            Applied::Producer { id, epoch } => {
                self.producer_ids.sync(store.catalog());
                Ok((id, epoch))
            }
            other => Err(BrokerError::InvalidRequest(format!("unexpected catalog result {other:?}"))),
        }
    }

    // ---- administration -----------------------------------------------

    /// Commits a catalog command for another domain module (queues).
    pub(crate) async fn commit_catalog(&self, cmd: &CatalogCommand) -> Result<Applied, BrokerError> {
        self.check_running()?;
        let mut store = self.catalog.lock().await;
        Ok(store.commit(cmd)?)
    }

    /// A copy of the catalog (it is small).
    pub(crate) async fn catalog_snapshot(&self) -> crate::catalog::Catalog {
        self.catalog.lock().await.catalog().clone()
    }

    pub async fn create_tenant(&self, name: &str, if_not_exists: bool) -> Result<TenantView, BrokerError> {
        self.check_running()?;
        let name = TenantName::parse(name)?;
        let mut store = self.catalog.lock().await;
        let res = store.commit(&CatalogCommand::CreateTenant { name: name.to_string(), at_ms: now_ms() });
        match res {
            Ok(_) => {}
            Err(crate::catalog::StoreError::Catalog(crate::catalog::CatalogError::TenantExists(_)))
                if if_not_exists => {}
            Err(e) => return Err(e.into()),
        }
        let t = &store.catalog().tenants[name.as_str()];
        Ok(TenantView { name: name.to_string(), created_at_ms: t.created_at_ms, topic_count: t.topics.len() as u32 })
    }

    pub async fn list_tenants(&self) -> Vec<TenantView> {
        let store = self.catalog.lock().await;
        store
            .catalog()
            .tenants
            .iter()
            .map(|(name, t)| TenantView {
                name: name.clone(),
                created_at_ms: t.created_at_ms,
                topic_count: t.topics.len() as u32,
            })
            .collect()
    }

    pub async fn delete_tenant(&self, name: &str) -> Result<(), BrokerError> {
        self.check_running()?;
        let name = TenantName::parse(name)?;
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
        let mut store = self.catalog.lock().await;
        let cmd = CatalogCommand::CreateTopic {
            tenant: tenant.to_string(),
            name: name.to_string(),
            partitions,
            settings,
            at_ms: now_ms(),
        };
        let id = match store.commit(&cmd) {
            Ok(Applied::Topic { id }) => id,
            Ok(other) => return Err(BrokerError::InvalidRequest(format!("unexpected catalog result {other:?}"))),
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
        let logs = self.open_partitions(&dir, 0..partitions, settings).await?;
        let state = Arc::new(TopicState {
            tenant: tenant.to_string(),
            name: name.to_string(),
            id,
            created_at_ms: record.created_at_ms,
            settings: RwLock::new(settings),
            partitions: RwLock::new(logs),
        });
        write_lock(&self.topics).insert((tenant.to_string(), name.to_string()), state);
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

    async fn open_partitions(
        &self,
        dir: &Path,
        range: std::ops::Range<u32>,
        settings: TopicSettings,
    ) -> Result<Vec<Arc<PartitionLog>>, BrokerError> {
        let dir = dir.to_path_buf();
        let interval = self.config.storage.index_interval_bytes.0;
        let tiered = self.tier.is_some();
        let first = range.start;
        let logs = tokio::task::spawn_blocking(move || {
            range
                .map(|p| {
                    let path = dir.join(p.to_string());
                    PartitionLog::open(&path, settings.log_config(interval, tiered), now_ms())
                        .map(|(log, _)| log)
                        .map_err(|source| BrokerError::Log { resource: path.display().to_string(), source })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| BrokerError::InvalidRequest(format!("open task failed: {e}")))??;
        if let Some(tier) = &self.tier {
            for (i, log) in logs.iter().enumerate() {
                let prefix = remote_prefix(log, first + i as u32);
                let remote =
                    RemotePartition::load(tier.store.clone(), tier.cache.clone(), prefix).await.map_err(|e| {
                        BrokerError::Log { resource: log.dir().display().to_string(), source: tier_to_log_error(e) }
                    })?;
                log.set_remote(Arc::new(remote));
            }
        }
        for log in &logs {
            tokio::spawn(log.clone().run_syncer());
        }
        Ok(logs)
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
            })
            .collect())
    }

    pub fn describe_topic(&self, tenant: &str, name: &str) -> Result<TopicView, BrokerError> {
        let t = self.topic(tenant, name)?;
        let stats = read_lock(&t.partitions).iter().map(|l| l.stats()).collect::<Vec<_>>();
        Ok(TopicView {
            tenant: t.tenant.clone(),
            name: t.name.clone(),
            id: t.id,
            partitions: stats.len() as u32,
            settings: *read_lock(&t.settings),
            created_at_ms: t.created_at_ms,
            partition_stats: stats,
        })
    }

    pub async fn add_partitions(&self, tenant: &str, name: &str, partitions: u32) -> Result<TopicView, BrokerError> {
        self.check_running()?;
        let t = self.topic(tenant, name)?;
        self.check_partitions(partitions)?;
        let mut store = self.catalog.lock().await;
        let applied = store.commit(&CatalogCommand::AddPartitions {
            tenant: t.tenant.clone(),
            name: t.name.clone(),
            partitions,
        })?;
        if let Applied::PartitionsAdded { from, to, .. } = applied
            && to > from
        {
            let dir = topic_dir(&self.config.storage.data_dir, &t.tenant, &t.name, t.id);
            let settings = *read_lock(&t.settings);
            let logs = self.open_partitions(&dir, from..to, settings).await?;
            write_lock(&t.partitions).extend(logs);
        }
        drop(store);
        self.describe_topic(&t.tenant, &t.name)
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
        let mut store = self.catalog.lock().await;
        store.commit(&CatalogCommand::UpdateTopic { tenant: t.tenant.clone(), name: t.name.clone(), settings })?;
        *write_lock(&t.settings) = settings;
        let interval = self.config.storage.index_interval_bytes.0;
        for log in read_lock(&t.partitions).iter() {
            log.set_config(settings.log_config(interval, self.tier.is_some()));
        }
        drop(store);
        self.describe_topic(&t.tenant, &t.name)
    }

    pub async fn delete_topic(&self, tenant: &str, name: &str) -> Result<(), BrokerError> {
        self.check_running()?;
        let t = self.topic(tenant, name)?;
        let mut store = self.catalog.lock().await;
        store.commit(&CatalogCommand::DeleteTopic { tenant: t.tenant.clone(), name: t.name.clone() })?;
        write_lock(&self.topics).remove(&(t.tenant.clone(), t.name.clone()));
        drop(store);
        for log in read_lock(&t.partitions).iter() {
            log.close();
        }
        let dir = topic_dir(&self.config.storage.data_dir, &t.tenant, &t.name, t.id);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        if let Some(tier) = &self.tier {
            // Best effort: the catalog no longer names the topic, so its
            // objects are garbage; a failure leaves them to an operator's
            // bucket lifecycle rule (logged).
            let store = tier.store.store.clone();
            let prefix = object_store::path::Path::from_iter([t.tenant.clone(), format!("{}.{}", t.name, t.id)]);
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
        Ok(())
    }

    /// Waits up to `timeout` for the partition's high watermark to pass
    /// `offset`, for shutdown, or for the log to close. Returns the watermark.
    pub(crate) async fn wait_for_data(&self, log: &PartitionLog, offset: u64, timeout: Duration) -> u64 {
        let mut hw = log.subscribe();
        let _ = tokio::time::timeout(timeout, async {
            tokio::select! {
                _ = async { let _ = hw.wait_for(|h| *h > offset).await; } => {}
                _ = self.until_shutdown() => {}
            }
        })
        .await;
        log.high_watermark()
    }
}

pub(crate) fn read_lock<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn write_lock<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

type Opened = (std::fs::File, CatalogStore, HashMap<TopicKey, Arc<TopicState>>);

fn open_blocking(config: &Config) -> Result<Opened, OpenError> {
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
    let store = CatalogStore::open(data)?;
    let interval = config.storage.index_interval_bytes.0;
    let mut topics = HashMap::new();
    let mut expected_dirs = std::collections::HashSet::new();
    for (tenant, t) in &store.catalog().tenants {
        for (name, record) in &t.topics {
            let dir = topic_dir(data, tenant, name, record.id);
            expected_dirs.insert(dir.clone());
            let mut logs = Vec::with_capacity(record.partitions as usize);
            for p in 0..record.partitions {
                let pdir = dir.join(p.to_string());
                let (log, report) =
                    PartitionLog::open(&pdir, record.settings.log_config(interval, config.tier.enabled()), now_ms())
                        .map_err(|source| OpenError::Recovery { path: pdir.clone(), source })?;
                for why in &report.truncated {
                    tracing::warn!(partition = %pdir.display(), "recovery truncated {why}");
                }
                logs.push(log);
            }
            topics.insert(
                (tenant.clone(), name.clone()),
                Arc::new(TopicState {
                    tenant: tenant.clone(),
                    name: name.clone(),
                    id: record.id,
                    created_at_ms: record.created_at_ms,
                    settings: RwLock::new(record.settings),
                    partitions: RwLock::new(logs),
                }),
            );
        }
    }
    remove_orphans(&data.join("topics"), &expected_dirs);
    Ok((lock, store, topics))
}

/// Removes topic directories the catalog no longer names (a delete that
/// crashed after committing the catalog).
fn remove_orphans(root: &Path, expected: &std::collections::HashSet<PathBuf>) {
    let Ok(tenants) = std::fs::read_dir(root) else { return };
    for tenant in tenants.flatten() {
        let Ok(dirs) = std::fs::read_dir(tenant.path()) else { continue };
        for dir in dirs.flatten() {
            let path = dir.path();
            if !expected.contains(&path) {
                tracing::info!(dir = %path.display(), "removing orphaned topic directory");
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }
}

/// Tenant, topic, topic id and partition of a partition log, from its
/// directory (`topics/<tenant>/<topic>.<id>/<partition>`).
fn partition_names(log: &PartitionLog) -> (String, String, u64, u32) {
    let name =
        |p: Option<&Path>| p.and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let topic_dir = name(log.dir().parent());
    let tenant = name(log.dir().parent().and_then(Path::parent));
    let partition = name(Some(log.dir())).parse().unwrap_or(0);
    let (topic, id) = topic_dir.rsplit_once('.').unwrap_or((&topic_dir, "0"));
    (tenant, topic.to_owned(), id.parse().unwrap_or(0), partition)
}

/// The cold-tier key prefix of a partition: the remote layout mirrors the
/// local one.
fn remote_prefix(log: &PartitionLog, partition: u32) -> object_store::path::Path {
    let (tenant, topic, id, _) = partition_names(log);
    crate::tier::manifest::partition_prefix(&tenant, &topic, id, partition)
}

/// A cold-tier failure as the log error a read reports: corruption stays
/// corruption (DATA_LOSS), everything else is a storage failure.
fn tier_to_log_error(e: TierError) -> LogError {
    match e {
        TierError::Corrupt { key, position, reason } => {
            LogError::Corrupt { path: PathBuf::from(key), position, reason }
        }
        TierError::Manifest { key, reason } => LogError::Corrupt { path: PathBuf::from(key), position: 0, reason },
        TierError::Local { path, source } => LogError::Io { path, source },
        other => LogError::Io { path: PathBuf::from("cold tier"), source: std::io::Error::other(other.to_string()) },
    }
}

/// Loads every partition's manifest, attaches it to its log and removes
/// orphaned objects (start-up: nothing uploads yet).
async fn attach_tiers(tier: &Arc<Tier>, topics: &HashMap<TopicKey, Arc<TopicState>>) -> Result<(), OpenError> {
    use futures::StreamExt;
    let logs: Vec<(Arc<PartitionLog>, u32)> = topics
        .values()
        .flat_map(|t| {
            read_lock(&t.partitions).iter().enumerate().map(|(p, l)| (l.clone(), p as u32)).collect::<Vec<_>>()
        })
        .collect();
    let mut loads = futures::stream::iter(logs.into_iter().map(|(log, p)| {
        let tier = tier.clone();
        async move {
            let remote = RemotePartition::load(tier.store.clone(), tier.cache.clone(), remote_prefix(&log, p)).await?;
            let removed = remote.remove_orphans().await?;
            if !removed.is_empty() {
                tracing::info!(dir = %log.dir().display(), objects = removed.len(), "removed orphaned cold-tier objects");
            }
            log.set_remote(Arc::new(remote));
            Ok::<(), TierError>(())
        }
    }))
    .buffer_unordered(16);
    while let Some(r) = loads.next().await {
        r?;
    }
    Ok(())
}

/// Uploads a partition's sealed segments that the tier lacks, oldest first,
/// then applies local retention so uploaded copies past it go at once.
async fn upload_pending(
    log: &Arc<PartitionLog>,
    limits: crate::tier::UploadLimits,
    metrics: &crate::metrics::Metrics,
) -> Result<(), TierError> {
    let Some(remote) = log.remote() else { return Ok(()) };
    let (tenant, topic, _, partition) = partition_names(log);
    let labels = crate::metrics::TopicLabels { tenant, topic };
    let mut after = 0;
    while let Some(seg) = log.next_to_upload(after) {
        after = seg.next_offset;
        let mut span = strata_proto::telemetry::enabled().then(|| {
            use strata_proto::telemetry::{self as t, Attribute, attr};
            let mut a = t::base_attributes(&labels.topic);
            a.push(Attribute::new(attr::PARTITION, partition.to_string()));
            a.push(Attribute::new("strata.segment.base_offset", seg.base_offset as i64));
            a.push(Attribute::new("strata.segment.bytes", seg.size as i64));
            t::start(format!("tier upload {}", labels.topic), t::Kind::Internal, &t::TraceContext::new(), a)
        });
        match crate::tier::upload_segment(remote, &seg, limits, now_ms()).await {
            Ok(true) => {
                tracing::debug!(dir = %log.dir().display(), base = seg.base_offset, "segment uploaded");
                metrics.tier_uploaded_segments.get_or_create(&labels).inc();
                metrics.tier_uploaded_bytes.get_or_create(&labels).inc_by(seg.size);
            }
            Ok(false) => {}
            Err(e) => {
                metrics.tier_upload_failures.get_or_create(&labels).inc();
                if let Some(s) = &mut span {
                    use strata_proto::telemetry::Span as _;
                    s.set_status(strata_proto::telemetry::SpanStatus::error(e.to_string()));
                }
                return Err(e);
            }
        }
    }
    let l = log.clone();
    let _ = tokio::task::spawn_blocking(move || l.maintain(now_ms())).await;
    Ok(())
}
