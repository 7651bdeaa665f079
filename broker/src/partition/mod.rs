//! A partition: its identity, its local log and its cold half. Everything a
//! topic partition does — append, read (hot or cold), timestamp lookup,
//! stats, fetch bounds, upload of sealed segments, retention on both tiers —
//! goes through [`Partition`]; the broker's services and the gRPC layer never
//! reach into `log` or `tier` for a topic partition themselves.
//!
//! Architecture invariants:
//! - `log` knows nothing of `tier`: the partition tells its log how far the
//!   cold tier durably reaches (`PartitionLog::set_uploaded_end`) after each
//!   upload, and local retention deletes only below that.
//! - A read below the local start is served from the cold tier; a consumer
//!   cannot tell which tier answered.
//! - Replication (DESIGN §4.6) extends this type: a leader epoch, replicas
//!   and a commit point belong here, next to the log they guard.

mod id;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use strata_proto::batch::BatchHeader;

pub(crate) use id::group_key;
pub use id::{Offset, PartitionId, TopicRef};

use crate::error::BrokerError;
use crate::fs::SegmentFiles;
use crate::log::{Appended, LogConfig, LogError, LogStats, Maintenance, PartitionLog, ReadResult, RecoveryReport};
use crate::metrics::{Metrics, TopicLabels};
use crate::tier::{RemotePartition, TierError, UploadLimits};

/// One partition of a topic.
pub struct Partition {
    id: PartitionId,
    log: Arc<PartitionLog>,
    /// The cold tier, when the broker has one (every partition gets it, so a
    /// topic that stopped being tiered still reads its remote data).
    remote: OnceLock<Arc<RemotePartition>>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition").field("id", &self.id.to_string()).finish()
    }
}

impl Partition {
    /// Wraps an open log.
    pub fn new(id: PartitionId, log: Arc<PartitionLog>) -> Arc<Partition> {
        Arc::new(Partition { id, log, remote: OnceLock::new() })
    }

    /// Opens (or creates) the partition's log in `dir`, recovering its
    /// active segment, with its segment files in the broker's cache `files`.
    /// Blocking.
    pub fn open(
        files: &Arc<SegmentFiles>,
        dir: &Path,
        id: PartitionId,
        config: LogConfig,
        now_ms: i64,
    ) -> Result<(Arc<Partition>, RecoveryReport), LogError> {
        let (log, report) = PartitionLog::open_in(files, dir, config, now_ms)?;
        Ok((Partition::new(id, log), report))
    }

    pub fn id(&self) -> &PartitionId {
        &self.id
    }

    pub fn log(&self) -> &Arc<PartitionLog> {
        &self.log
    }

    pub fn dir(&self) -> &Path {
        self.log.dir()
    }

    /// Metric labels of the partition's topic.
    pub(crate) fn labels(&self) -> TopicLabels {
        TopicLabels { tenant: self.id.tenant().to_string(), topic: self.id.topic().to_string() }
    }

    /// Attaches the cold tier (once, when the broker opens the partition).
    pub(crate) fn attach_remote(&self, remote: Arc<RemotePartition>) {
        self.log.set_uploaded_end(remote.uploaded_end());
        let _ = self.remote.set(remote);
    }

    pub(crate) fn remote(&self) -> Option<&Arc<RemotePartition>> {
        self.remote.get()
    }

    pub fn config(&self) -> LogConfig {
        self.log.config()
    }

    pub fn set_config(&self, config: LogConfig) {
        self.log.set_config(config);
    }

    pub fn high_watermark(&self) -> u64 {
        self.log.high_watermark()
    }

    /// First offset on the local disk.
    pub fn local_start(&self) -> u64 {
        self.log.local_start()
    }

    /// Offsets a fetch may start from: `[start, high watermark]`, the start
    /// counting the cold tier.
    pub fn bounds(&self) -> (Offset, Offset) {
        let hw = self.high_watermark();
        let start =
            self.remote().and_then(|r| r.start()).map_or(self.log.start_offset(), |r| r.min(self.log.start_offset()));
        (Offset(start), Offset(hw))
    }

    /// Whether a read from `offset` is served by the cold tier.
    pub fn is_cold(&self, offset: u64) -> bool {
        self.remote().is_some() && offset < self.local_start()
    }

    /// Stats over both tiers.
    pub fn stats(&self) -> LogStats {
        self.log.stats_with(self.remote().map(|r| r.range()).unwrap_or_default())
    }

    /// Local bytes the cold tier does not hold yet (0 untiered).
    pub fn pending_upload_bytes(&self) -> u64 {
        self.log.pending_upload_bytes()
    }

    /// Whether a sealed segment waits for upload (the caller knows the
    /// partition is tiered and has a cold tier).
    pub fn has_upload_pending(&self) -> bool {
        self.log.next_to_upload(0).is_some()
    }

    fn log_error(&self, source: LogError) -> BrokerError {
        BrokerError::Log { resource: self.id.to_string(), source }
    }

    /// Appends one validated batch (blocking file I/O); durability is waited
    /// for separately (`PartitionLog::wait_durable`).
    pub fn append(&self, batch: &mut [u8], header: &BatchHeader, now_ms: i64) -> Result<Appended, BrokerError> {
        self.log.append(batch, header, now_ms).map_err(|e| self.log_error(e))
    }

    /// Resolves once everything below `end` is durable per the durability mode.
    pub async fn wait_durable(&self, end: u64) -> Result<(), BrokerError> {
        self.log.wait_durable(end).await.map_err(|e| self.log_error(e))
    }

    /// Reads whole batches from `from`: from the local disk, or from the
    /// cold tier below the local start. Consumers cannot tell which.
    pub async fn read(self: &Arc<Self>, from: u64, max_bytes: usize) -> Result<ReadResult, BrokerError> {
        let mut from = from;
        // A segment may move from local to remote-only between our look and
        // the local read (local retention); a few rounds settle it.
        for _ in 0..3 {
            if let Some(remote) = self.remote() {
                let local_start = self.local_start();
                if from < local_start {
                    let stats = self.stats();
                    if from < stats.start_offset {
                        return Err(self.log_error(LogError::OffsetOutOfRange {
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
                        Err(e) => return Err(self.log_error(tier_to_log_error(e))),
                    }
                }
            }
            let log = self.log.clone();
            let result = tokio::task::spawn_blocking(move || log.read(from, max_bytes))
                .await
                .map_err(|source| BrokerError::TaskFailed { what: "read", source })?;
            match result {
                Err(LogError::OffsetOutOfRange { requested, .. })
                    if self.remote().is_some() && requested < self.local_start() =>
                {
                    continue;
                }
                Ok(mut r) => {
                    // The hot path: only the tier's start, not full stats.
                    if let Some(start) = self.remote().and_then(|t| t.start()) {
                        r.log_start = r.log_start.min(start);
                    }
                    return Ok(r);
                }
                Err(e) => return Err(self.log_error(e)),
            }
        }
        Err(self.log_error(LogError::Io {
            path: self.dir().to_path_buf(),
            source: std::io::Error::other("the partition changed under three reads in a row; retry"),
        }))
    }

    /// First offset with a timestamp >= `ts` and its timestamp (the high
    /// watermark and -1 if none), looking in the cold tier first.
    pub async fn offset_for_timestamp(self: &Arc<Self>, ts: i64) -> Result<(u64, i64), BrokerError> {
        if let Some(remote) = self.remote() {
            // Data older than the local disk is in the tier: look there first.
            let batch =
                remote.find_by_time(ts, self.local_start()).await.map_err(|e| self.log_error(tier_to_log_error(e)))?;
            if let Some(bytes) = batch
                && let Some(Ok(raw)) = strata_proto::batch::BatchIter::new(bytes).next()
            {
                let records = raw.records().map_err(|e| {
                    self.log_error(LogError::Corrupt {
                        path: self.dir().to_path_buf(),
                        position: 0,
                        reason: e.to_string(),
                    })
                })?;
                if let Some(r) = records.iter().find(|r| r.timestamp_ms >= ts) {
                    return Ok((r.offset, r.timestamp_ms));
                }
            }
        }
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || log.offset_for_timestamp(ts))
            .await
            .map_err(|source| BrokerError::TaskFailed { what: "timestamp lookup", source })?
            .map_err(|e| self.log_error(e))
    }

    /// Rolls an expired active segment and applies local retention (only
    /// below what the cold tier holds, for a tiered topic). Blocking.
    pub fn maintain(&self, now_ms: i64) -> Result<Maintenance, LogError> {
        self.log.maintain(now_ms)
    }

    /// Total retention of the cold tier (manifest first, then objects).
    pub async fn apply_remote_retention(&self, now_ms: i64) {
        let Some(remote) = self.remote() else { return };
        if remote.range().segments == 0 {
            return;
        }
        let cfg = self.config();
        match remote.apply_retention(now_ms, cfg.retention_ms, cfg.retention_bytes, self.pending_upload_bytes()).await {
            Ok(deleted) if !deleted.is_empty() => {
                tracing::info!(dir = %self.dir().display(), segments = ?deleted, "retention deleted remote segments");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(dir = %self.dir().display(), error = %e, "remote retention failed"),
        }
    }

    /// Uploads the sealed segments the tier lacks, oldest first, then
    /// applies local retention so uploaded copies past it go at once. Each
    /// segment only while `may_upload` says so (a replicated partition's:
    /// while this replica leads).
    pub async fn upload_pending(
        self: &Arc<Self>,
        limits: UploadLimits,
        metrics: &Metrics,
        clock: &dyn crate::clock::Clock,
        may_upload: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<(), TierError> {
        let Some(remote) = self.remote() else { return Ok(()) };
        let labels = self.labels();
        let partition = self.id.index();
        let mut after = 0;
        while let Some(seg) = self.log.next_to_upload(after) {
            if !may_upload() {
                break;
            }
            after = seg.next_offset;
            let mut span = strata_telemetry::enabled().then(|| {
                use strata_telemetry::{self as t, Attribute, attr};
                let mut a = t::base_attributes(&labels.topic);
                a.push(Attribute::new(attr::PARTITION, partition.to_string()));
                a.push(Attribute::new("strata.segment.base_offset", seg.base_offset as i64));
                a.push(Attribute::new("strata.segment.bytes", seg.size as i64));
                t::start(format!("tier upload {}", labels.topic), t::Kind::Internal, &t::TraceContext::new(), a)
            });
            match crate::tier::upload_segment(remote, &seg, limits, clock.now_ms()).await {
                Ok(true) => {
                    tracing::debug!(dir = %self.dir().display(), base = seg.base_offset, "segment uploaded");
                    metrics.tier_uploaded_segments.get_or_create(&labels).inc();
                    metrics.tier_uploaded_bytes.get_or_create(&labels).inc_by(seg.size);
                }
                Ok(false) => {}
                Err(e) => {
                    metrics.tier_upload_failures.get_or_create(&labels).inc();
                    if let Some(s) = &mut span {
                        use strata_telemetry::Span as _;
                        s.set_status(strata_telemetry::SpanStatus::error(e.to_string()));
                    }
                    return Err(e);
                }
            }
            // The manifest naming the segment is durable: local retention
            // may now delete the local copy.
            self.log.set_uploaded_end(remote.uploaded_end());
        }
        let this = self.clone();
        let now = clock.now_ms();
        let _ = tokio::task::spawn_blocking(move || this.maintain(now)).await;
        Ok(())
    }

    /// Reads the partition's manifest again (another replica publishes it)
    /// and tells the log how far the tier reaches.
    pub async fn reload_tier(&self) -> Result<(), TierError> {
        let Some(remote) = self.remote() else { return Ok(()) };
        remote.reload().await?;
        self.log.set_uploaded_end(remote.uploaded_end());
        Ok(())
    }

    /// A follower of a replicated partition: learns from the manifest its
    /// leader publishes how far the tier reaches, then applies local
    /// retention (which deletes local copies only below that).
    pub async fn follow_tier(self: &Arc<Self>, clock: &dyn crate::clock::Clock) -> Result<(), TierError> {
        self.reload_tier().await?;
        let this = self.clone();
        let now = clock.now_ms();
        let _ = tokio::task::spawn_blocking(move || this.maintain(now)).await;
        Ok(())
    }

    /// Flushes and closes the log (shutdown, topic deletion).
    pub fn close(&self) {
        self.log.close();
    }

    pub fn flush(&self) -> Result<(), LogError> {
        self.log.flush()
    }
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

/// Loads every partition's manifest, attaches it and removes orphaned
/// objects (start-up: nothing uploads yet).
/// A replicated partition's orphans are left alone: its leader, on another
/// broker, may be between uploading a segment and publishing the manifest
/// that names it.
pub(crate) async fn attach_tiers(tier: &crate::tier::Tier, partitions: &[Arc<Partition>]) -> Result<(), TierError> {
    use futures::StreamExt;
    // Owned partitions: a closure over `&Arc<Partition>` returning a future
    // makes the caller's future not provably `Send` (so `start` could not
    // be spawned).
    let mut loads = futures::stream::iter(partitions.iter().cloned().map(|p| async move {
        let remote = RemotePartition::load(tier.store.clone(), tier.cache.clone(), p.id.remote_prefix()).await?;
        let removed = if p.config().replicated { Vec::new() } else { remote.remove_orphans().await? };
        if !removed.is_empty() {
            tracing::info!(dir = %p.dir().display(), objects = removed.len(), "removed orphaned cold-tier objects");
        }
        p.attach_remote(Arc::new(remote));
        Ok::<(), TierError>(())
    }))
    .buffer_unordered(16);
    while let Some(r) = loads.next().await {
        r?;
    }
    Ok(())
}
