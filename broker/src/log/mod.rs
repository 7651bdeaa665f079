//! The durable log of one partition: segments on disk, append with group
//! commit, reads by offset and timestamp, recovery, rolling and retention.
//!
//! Architecture invariants:
//! - Readers never see bytes beyond the *high watermark*: in `fsync` mode the
//!   offset up to which data is known to be on stable storage, in `none` mode
//!   the end of what was written.
//! - Only the active (last) segment is scanned at start-up; sealed segments
//!   are known from their index headers.
//! - Retention deletes whole sealed segments, oldest first, never the active
//!   one.
//! - A failed fsync poisons the partition: the page cache can no longer be
//!   trusted to match the disk, so it stops accepting writes until restart
//!   (which recovers from what is really on disk).
//! - Every wait on durability ends: poisoning (whatever the path — the
//!   group-commit fsync, sealing a segment, a write that could not be
//!   undone) wakes every `wait_durable`, which then answers with the error.
//! - Segment files are opened through the broker's bounded cache
//!   ([`SegmentFiles`]); the active segment holds its file from an append
//!   until those bytes are fsynced, so the cache never closes a file with
//!   writes not yet on disk.

pub(crate) mod index;
mod producers;
pub(crate) mod segment;

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use strata_proto::batch::{BatchHeader, BatchIter, set_base_offset};
use tokio::sync::{Notify, watch};

pub use producers::SequenceError;
use producers::{Check, ProducerTable};
use segment::{ActiveSegment, ReadError, SEGMENT_HEADER_LEN, SealedSegment};

use crate::fs::{Fs, SegmentFiles};

/// Idempotent-producer state is forgotten after this long without a write
/// from that producer (Kafka's default for producer id expiry).
const PRODUCER_EXPIRY_MS: i64 = 7 * 24 * 3600 * 1000;

/// Whether an append waits for fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    Fsync,
    None,
}

/// Per-partition settings (from the topic's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    pub segment_bytes: u64,
    /// Roll the active segment once its first append is this old.
    pub segment_ms: i64,
    /// Delete sealed segments whose newest record is older than this; -1 keeps forever.
    pub retention_ms: i64,
    /// Keep at most about this many bytes; -1 means unlimited.
    pub retention_bytes: i64,
    pub durability: Durability,
    /// A replicated partition's log (appends are made durable by the Raft
    /// log, so it runs in `none` mode):
    /// - a segment is fsynced when it is sealed, so that the sync before the
    ///   applied marker moves ([`PartitionLog::sync_written`]) covers every
    ///   segment, not only the active one;
    /// - segments roll only on appends (by size, or by age as of the
    ///   appended entry's time, which is the leader's), never because the
    ///   local clock says the active one is old: every replica rolls at the
    ///   same offsets, so any of them, once leader, uploads the same
    ///   segments to the cold tier.
    pub replicated: bool,
    pub index_interval_bytes: u64,
    /// Tiered storage: local copies of uploaded segments are kept this long
    /// (-1: as long as the total retention).
    pub local_retention_ms: i64,
    /// ... and up to about this many local bytes (-1: the total retention bytes).
    pub local_retention_bytes: i64,
    /// Sealed segments are uploaded to the cold tier, and a local segment is
    /// deleted by local retention only once uploaded.
    pub tiered: bool,
}

#[cfg(test)]
impl LogConfig {
    /// The tests' log: segments of `segment_bytes`, no retention, no
    /// time-based roll, an index entry every 256 bytes, not tiered.
    pub(crate) fn for_tests(segment_bytes: u64, durability: Durability) -> LogConfig {
        LogConfig {
            segment_bytes,
            segment_ms: i64::MAX / 2,
            retention_ms: -1,
            retention_bytes: -1,
            durability,
            replicated: false,
            index_interval_bytes: 256,
            local_retention_ms: -1,
            local_retention_bytes: -1,
            tiered: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("offset {requested} is out of range: the partition holds offsets {start} to {end}")]
    OffsetOutOfRange { requested: u64, start: u64, end: u64 },
    #[error("storage error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt { path: PathBuf, position: u64, reason: String },
    #[error("partition stopped accepting writes after a storage failure: {0}")]
    Poisoned(String),
    #[error("partition is closed")]
    Closed,
    #[error(transparent)]
    Sequence(#[from] SequenceError),
}

impl LogError {
    fn io(path: &Path, source: io::Error) -> LogError {
        LogError::Io { path: path.to_path_buf(), source }
    }
}

/// Result of a successful append (before durability).
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub base_offset: u64,
    pub last_offset: u64,
    pub append_time_ms: i64,
    /// An idempotent producer's retry of a batch already stored: nothing was
    /// written; the offsets are those of the stored copy.
    pub duplicate: bool,
}

/// A chunk read from the log.
#[derive(Debug, Clone)]
pub struct ReadResult {
    pub records: Bytes,
    pub next_offset: u64,
    pub high_watermark: u64,
    pub log_start: u64,
}

/// Per-partition numbers for describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogStats {
    /// First offset stored anywhere (the cold tier's start when it holds
    /// older data than the local disk).
    pub start_offset: u64,
    pub high_watermark: u64,
    /// Bytes stored, local plus remote.
    pub size_bytes: u64,
    /// Segments stored, local plus remote.
    pub segments: u32,
    pub local_start_offset: u64,
    pub local_bytes: u64,
    /// Cold tier: offsets `[remote_start_offset, remote_end_offset)` (equal when empty).
    pub remote_start_offset: u64,
    pub remote_end_offset: u64,
    pub remote_bytes: u64,
    pub remote_segments: u32,
}

/// What the cold tier holds of a partition, as the local log needs to know
/// it for its stats (the tier itself lives in `tier`, which depends on the
/// log's sealed segments, never the other way round).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoteRange {
    /// First offset in the tier (`None` when it holds nothing).
    pub start: Option<u64>,
    /// One past the last uploaded offset.
    pub end: u64,
    pub bytes: u64,
    pub segments: u32,
}

/// What a maintenance pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Maintenance {
    pub rolled: bool,
    pub deleted_segments: Vec<u64>,
}

struct LogState {
    sealed: VecDeque<SealedSegment>,
    active: ActiveSegment,
    config: LogConfig,
    /// First offset still stored.
    log_start: u64,
    /// Offset up to which readers may read.
    visible_end: u64,
    /// Byte position in the active segment matching `visible_end`.
    visible_pos: u64,
    poisoned: Option<String>,
    producers: ProducerTable,
}

pub struct PartitionLog {
    dir: PathBuf,
    /// The filesystem seam every file of this log goes through, with the
    /// broker's cache of open segment files.
    files: Arc<SegmentFiles>,
    state: Mutex<LogState>,
    hw: watch::Sender<u64>,
    sync_needed: Notify,
    closed: AtomicBool,
    /// One past the last offset the cold tier holds durably (its manifest
    /// names the segment): local copies below it may go by local retention.
    /// Raised by the owning `Partition` after each upload; 0 untiered.
    uploaded_end: AtomicU64,
}

impl Drop for PartitionLog {
    fn drop(&mut self) {
        // Also for logs dropped without a close (a create undone half-way).
        self.forget_files();
    }
}

impl std::fmt::Debug for PartitionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionLog").field("dir", &self.dir).finish()
    }
}

/// What recovery found, for logging.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    pub truncated: Vec<String>,
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, recovering the active segment.
    pub fn open(dir: &Path, config: LogConfig, now_ms: i64) -> Result<(Arc<PartitionLog>, RecoveryReport), LogError> {
        let files = SegmentFiles::new(crate::fs::real(), crate::fs::handles::DEFAULT_MAX_OPEN_SEGMENTS);
        PartitionLog::open_in(&files, dir, config, now_ms)
    }

    /// [`PartitionLog::open`] with the segment files (and the filesystem
    /// under them) of `files`.
    pub fn open_in(
        files: &Arc<SegmentFiles>,
        dir: &Path,
        config: LogConfig,
        now_ms: i64,
    ) -> Result<(Arc<PartitionLog>, RecoveryReport), LogError> {
        let fs = files.fs().clone();
        fs.create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
        let mut bases = Vec::new();
        for entry in fs.read_dir(dir).map_err(|e| LogError::io(dir, e))? {
            let Some(name) = entry.file_name() else { continue };
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                // An index write interrupted by a crash.
                fs.remove_file(&entry).map_err(|e| LogError::io(&entry, e))?;
            } else if let Some(base) = name.strip_suffix(".log").and_then(|b| b.parse::<u64>().ok()) {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        let mut report = RecoveryReport::default();
        let interval = config.index_interval_bytes;
        let mut sealed = VecDeque::new();
        let mut producers = ProducerTable::default();
        let active = match bases.split_last() {
            None => ActiveSegment::create(files, dir, 0).map_err(|e| LogError::io(dir, e))?,
            Some((&last, rest)) => {
                for &base in rest {
                    let (seg, stopped) =
                        SealedSegment::open(files, dir, base, interval).map_err(|e| LogError::io(dir, e))?;
                    if let Some(why) = stopped {
                        report.truncated.push(format!("sealed segment {base}: {why}"));
                    }
                    sealed.push_back(seg);
                }
                // Producer state: the snapshot taken when the active segment
                // was created, plus the active segment's own batches.
                producers = producers::load_snapshot(&*fs, dir, last);
                let mut replay = |h: &BatchHeader| producers.record(h, now_ms);
                let (active, stopped) = ActiveSegment::recover(files, dir, last, interval, now_ms, &mut replay)
                    .map_err(|e| LogError::io(dir, e))?;
                if let Some(why) = stopped {
                    report.truncated.push(format!("active segment {last}: {why}"));
                }
                active
            }
        };
        // Index files whose segment is gone (deleted by retention mid-way).
        for path in fs.read_dir(dir).map_err(|e| LogError::io(dir, e))? {
            if path.extension().is_some_and(|e| e == "index") && !fs.exists(&path.with_extension("log")) {
                let _ = fs.remove_file(&path);
            }
        }
        // Created or recovered, the file is fsynced: the cache may close it
        // until the first append (a broker opening thousands of partitions
        // must not hold a file for each).
        let mut active = active;
        active.release();
        let log_start = sealed.front().map_or(active.base_offset, |s| s.base_offset);
        let visible_end = active.next_offset;
        let visible_pos = active.size;
        let (hw, _) = watch::channel(visible_end);
        let log = PartitionLog {
            dir: dir.to_path_buf(),
            files: files.clone(),
            state: Mutex::new(LogState {
                sealed,
                active,
                config,
                log_start,
                visible_end,
                visible_pos,
                poisoned: None,
                producers,
            }),
            hw,
            sync_needed: Notify::new(),
            closed: AtomicBool::new(false),
            uploaded_end: AtomicU64::new(0),
        };
        Ok((Arc::new(log), report))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The filesystem this log persists through.
    pub(crate) fn fs(&self) -> &Fs {
        self.files.fs()
    }

    /// Stops accepting writes and wakes every durability wait, which then
    /// answers with this error (never waits on).
    fn poison(&self, st: &mut LogState, why: String) -> LogError {
        tracing::error!(partition = %self.dir.display(), "{why}");
        st.poisoned = Some(why.clone());
        self.hw.send_modify(|_| {});
        LogError::Poisoned(why)
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        // A panic while holding the lock cannot leave the files inconsistent
        // (appends are all-or-nothing), so a poisoned mutex is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_config(&self, config: LogConfig) {
        self.lock().config = config;
    }

    pub fn config(&self) -> LogConfig {
        self.lock().config
    }

    /// Records that the cold tier durably holds every offset below `end`
    /// (never lowers it).
    pub(crate) fn set_uploaded_end(&self, end: u64) {
        self.uploaded_end.fetch_max(end, Ordering::AcqRel);
    }

    pub(crate) fn uploaded_end(&self) -> u64 {
        self.uploaded_end.load(Ordering::Acquire)
    }

    /// First offset on the local disk.
    pub fn local_start(&self) -> u64 {
        self.lock().log_start
    }

    /// The oldest sealed segment at or after offset `after` that the cold
    /// tier does not hold yet (segments with no record are skipped).
    pub(crate) fn next_to_upload(&self, after: u64) -> Option<SealedSegment> {
        let end = self.uploaded_end().max(after);
        let st = self.lock();
        let next = st.sealed.iter().find(|s| s.next_offset > end && s.next_offset > s.base_offset)?;
        if next.base_offset < end {
            // The tier ends inside this segment (another replica, leader
            // before, rolled elsewhere): uploading the next one would leave
            // a gap. Nothing more is uploaded (and local retention keeps
            // everything above the tier's end) until an operator acts.
            tracing::error!(dir = %self.dir.display(), segment = next.base_offset, tier_end = end,
                "a local segment straddles the end of the cold tier; uploads of this partition stop");
            return None;
        }
        Some(next.clone())
    }

    /// Local bytes of a tiered partition that the cold tier does not hold
    /// yet (sealed segments waiting for upload plus the active segment).
    pub fn pending_upload_bytes(&self) -> u64 {
        let end = self.uploaded_end();
        let st = self.lock();
        if !st.config.tiered {
            return 0;
        }
        st.sealed.iter().filter(|s| s.next_offset > end).map(|s| s.size).sum::<u64>() + st.active.size
    }

    /// Subscribes to high-watermark changes (for long polls and durability waits).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.hw.subscribe()
    }

    pub fn high_watermark(&self) -> u64 {
        *self.hw.borrow()
    }

    /// Appends one validated batch: stamps its base offset and writes it.
    /// Blocking (file I/O). In `fsync` mode the caller must then wait with
    /// [`PartitionLog::wait_durable`] before acknowledging.
    pub fn append(&self, batch: &mut [u8], header: &BatchHeader, now_ms: i64) -> Result<Appended, LogError> {
        self.append_with(batch, header, now_ms, true)
    }

    /// Appends like [`PartitionLog::append`], but does not ask the group
    /// commit to run: the bytes become durable with the next append that
    /// does (or at a flush, a roll or shutdown). For records a crash may
    /// lose without breaking a promise (a queue's delivery counts); nobody
    /// may wait for them to become durable on their own.
    pub fn append_lazily(&self, batch: &mut [u8], header: &BatchHeader, now_ms: i64) -> Result<Appended, LogError> {
        self.append_with(batch, header, now_ms, false)
    }

    fn append_with(
        &self,
        batch: &mut [u8],
        header: &BatchHeader,
        now_ms: i64,
        sync: bool,
    ) -> Result<Appended, LogError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        let mut st = self.lock();
        if let Some(why) = &st.poisoned {
            return Err(LogError::Poisoned(why.clone()));
        }
        if header.has_producer_id()
            && let Check::Duplicate(m) = st.producers.check(header)?
        {
            return Ok(Appended {
                base_offset: m.base_offset,
                last_offset: m.last_offset,
                append_time_ms: now_ms,
                duplicate: true,
            });
        }
        let cfg = st.config;
        let too_big = st.active.size + batch.len() as u64 > cfg.segment_bytes;
        let too_old = st.active.first_append_ms.is_some_and(|t| now_ms - t >= cfg.segment_ms);
        if !st.active.is_empty() && (too_big || too_old) {
            self.roll(&mut st)?;
        }
        let base = st.active.next_offset;
        set_base_offset(batch, base);
        let mut stamped = *header;
        stamped.base_offset = base;
        if let Err(e) = st.active.append(batch, &stamped, cfg.index_interval_bytes, now_ms) {
            // A failed write (short, ENOSPC, EIO) was cut back; if the cut
            // failed too, the file holds bytes nobody accounts for: stop
            // writing until a reopen recovers (truncates the torn tail).
            // (When even opening the file failed — out of descriptors —
            // nothing was written: the segment holds its file from the
            // moment a write is attempted, so this asks no new open.)
            if let Ok(len) = st.active.file().and_then(|f| f.len())
                && len != st.active.size
            {
                self.poison(&mut st, format!("a failed write could not be undone: {e}"));
            }
            return Err(LogError::io(&segment::log_path(&self.dir, st.active.base_offset), e));
        }
        st.producers.record(&stamped, now_ms);
        match cfg.durability {
            Durability::None => {
                st.visible_end = st.active.next_offset;
                st.visible_pos = st.active.size;
                // Page cache only: nothing to fsync, the file need not stay open.
                st.active.release();
                self.hw.send_replace(st.visible_end);
            }
            Durability::Fsync if sync => self.sync_needed.notify_one(),
            Durability::Fsync => {}
        }
        Ok(Appended { base_offset: base, last_offset: stamped.last_offset(), append_time_ms: now_ms, duplicate: false })
    }

    /// Seals the active segment and starts a new one. Called with the lock held.
    fn roll(&self, st: &mut LogState) -> Result<(), LogError> {
        let next = st.active.next_offset;
        let sync = st.config.durability == Durability::Fsync || st.config.replicated;
        // The snapshot must exist before the segment it belongs to, so that
        // recovery never finds an active segment without its snapshot.
        producers::write_snapshot(&**self.fs(), &self.dir, next, &st.producers, sync)
            .map_err(|e| LogError::io(&self.dir, e))?;
        let new_active = ActiveSegment::create(&self.files, &self.dir, next).map_err(|e| LogError::io(&self.dir, e))?;
        let old = std::mem::replace(&mut st.active, new_active);
        let sealed = match old.seal(sync) {
            Ok(s) => s,
            // Waiters on the old segment's bytes are woken with the error.
            Err(e) => return Err(self.poison(st, format!("sealing segment failed: {e}"))),
        };
        st.sealed.push_back(sealed);
        // Everything in the sealed segment is now on disk (or, in `none`
        // mode, already visible).
        st.visible_end = next;
        st.visible_pos = SEGMENT_HEADER_LEN;
        self.hw.send_replace(next);
        Ok(())
    }

    /// Waits until `offset` (exclusive end) is below the high watermark.
    pub async fn wait_durable(&self, end: u64) -> Result<(), LogError> {
        let mut rx = self.hw.subscribe();
        loop {
            if *rx.borrow_and_update() >= end {
                return Ok(());
            }
            if let Some(why) = self.lock().poisoned.clone() {
                return Err(LogError::Poisoned(why));
            }
            if self.closed.load(Ordering::Acquire) {
                return Err(LogError::Closed);
            }
            if rx.changed().await.is_err() {
                return Err(LogError::Closed);
            }
        }
    }

    /// The group-commit loop: one fsync covers every append made before it
    /// started, so concurrent producers share fsyncs. Runs until closed.
    pub async fn run_syncer(self: Arc<Self>) {
        loop {
            self.sync_needed.notified().await;
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            let (file, base, target_end, target_pos) = {
                let mut st = self.lock();
                if st.poisoned.is_some() || st.visible_end >= st.active.next_offset {
                    continue;
                }
                let file = match st.active.file() {
                    Ok(f) => f,
                    Err(e) => {
                        self.poison(&mut st, format!("cannot open the segment to fsync it: {e}"));
                        continue;
                    }
                };
                (file, st.active.base_offset, st.active.next_offset, st.active.size)
            };
            let result = tokio::task::spawn_blocking(move || file.sync_data()).await;
            let mut st = self.lock();
            match result {
                Ok(Ok(())) => {
                    if target_end > st.visible_end {
                        st.visible_end = target_end;
                        if st.active.base_offset == base {
                            st.visible_pos = target_pos;
                        }
                        self.hw.send_replace(target_end);
                    }
                    if st.visible_end >= st.active.next_offset {
                        // All on disk: the cache may close the file.
                        st.active.release();
                    }
                }
                Ok(Err(e)) => {
                    self.poison(&mut st, format!("fsync failed: {e}"));
                }
                Err(e) => {
                    self.poison(&mut st, format!("fsync task failed: {e}"));
                }
            }
        }
    }

    /// fsyncs whatever was written and publishes it (clean shutdown).
    pub fn flush(&self) -> Result<(), LogError> {
        let mut st = self.lock();
        if st.poisoned.is_some() {
            return Ok(());
        }
        if let Err(e) = st.active.file().and_then(|f| f.sync_data()) {
            // As in the group commit: a failed fsync poisons.
            let path = segment::log_path(&self.dir, st.active.base_offset);
            self.poison(&mut st, format!("fsync of {} failed: {e}", path.display()));
            return Err(LogError::io(&path, e));
        }
        st.visible_end = st.active.next_offset;
        st.visible_pos = st.active.size;
        st.active.release();
        self.hw.send_replace(st.visible_end);
        Ok(())
    }

    /// fsyncs what was written to the active segment without publishing
    /// anything or holding the log's lock meanwhile (appends go on). For a
    /// log whose sealed segments were synced as they were sealed
    /// (`fsync` mode or `replicated`), everything appended before the call
    /// is on disk when it returns.
    pub fn sync_written(&self) -> Result<(), LogError> {
        let (file, path) = {
            let mut st = self.lock();
            if let Some(why) = &st.poisoned {
                return Err(LogError::Poisoned(why.clone()));
            }
            let path = segment::log_path(&self.dir, st.active.base_offset);
            (st.active.file().map_err(|e| LogError::io(&path, e))?, path)
        };
        file.sync_data().map_err(|e| {
            let mut st = self.lock();
            self.poison(&mut st, format!("fsync of {} failed: {e}", path.display()));
            LogError::io(&path, e)
        })
    }

    /// Stops the log: pending waits fail with `Closed`, the syncer exits.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.sync_needed.notify_one();
        self.hw.send_modify(|_| {});
        self.forget_files();
    }

    /// Drops the cache's handles on this log's segments: a closed log's
    /// files are usually about to be removed, and an open handle would keep
    /// their space.
    fn forget_files(&self) {
        let mut st = self.lock();
        st.active.release();
        self.files.forget(&segment::log_path(&self.dir, st.active.base_offset));
        for seg in &st.sealed {
            self.files.forget(&seg.log_path());
        }
    }

    /// Reads whole batches from offset `from`. Blocking (file I/O).
    pub fn read(&self, from: u64, max_bytes: usize) -> Result<ReadResult, LogError> {
        let mut from = from;
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(LogError::Closed);
            }
            let (target, start, hw) = {
                let st = self.lock();
                let (start, hw) = (st.log_start, st.visible_end);
                if from < start || from > hw {
                    return Err(LogError::OffsetOutOfRange { requested: from, start, end: hw });
                }
                if from == hw {
                    return Ok(ReadResult {
                        records: Bytes::new(),
                        next_offset: from,
                        high_watermark: hw,
                        log_start: start,
                    });
                }
                let target = if from >= st.active.base_offset {
                    ReadTarget::Active {
                        file: st.active.reader().map_err(|e| LogError::io(&self.dir, e))?,
                        start: st.active.position_for(from),
                        end: st.visible_pos,
                    }
                } else {
                    let i = st.sealed.partition_point(|s| s.base_offset <= from);
                    match i.checked_sub(1).map(|i| &st.sealed[i]) {
                        Some(seg) if from < seg.next_offset => ReadTarget::Sealed(seg.clone()),
                        // In a gap between segments (a corrupt tail was cut):
                        // continue at the next segment.
                        _ => ReadTarget::Skip(st.sealed.get(i).map_or(st.active.base_offset, |s| s.base_offset)),
                    }
                };
                (target, start, hw)
            };
            let result = match &target {
                ReadTarget::Skip(next) => {
                    from = *next;
                    continue;
                }
                ReadTarget::Active { file, start, end } => {
                    segment::read_batches(&**file, *start, *end, from, max_bytes)
                }
                ReadTarget::Sealed(seg) => match seg.read(from, max_bytes) {
                    Err(ReadError::Io(e))
                        if e.kind() == io::ErrorKind::NotFound
                            && !self.lock().sealed.iter().any(|s| s.base_offset == seg.base_offset) =>
                    {
                        // Deleted by retention after we looked: re-check the range.
                        continue;
                    }
                    other => other,
                },
            };
            let read = result.map_err(|e| self.read_error(&target, e))?;
            if read.bytes.is_empty()
                && let ReadTarget::Sealed(seg) = &target
            {
                // Nothing left in this segment at or after `from`.
                from = seg.next_offset;
                continue;
            }
            return Ok(ReadResult {
                records: read.bytes,
                next_offset: read.next_offset,
                high_watermark: hw,
                log_start: start,
            });
        }
    }

    fn read_error(&self, target: &ReadTarget, e: ReadError) -> LogError {
        let path = match target {
            ReadTarget::Sealed(seg) => seg.log_path(),
            _ => self.dir.clone(),
        };
        match e {
            ReadError::Io(source) => LogError::Io { path, source },
            ReadError::Corrupt { position, reason } => LogError::Corrupt { path, position, reason },
        }
    }

    /// The first offset whose record timestamp is >= `ts`, with that
    /// record's timestamp; the high watermark (and -1) when there is none.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<(u64, i64), LogError> {
        let candidates: Vec<ReadTarget>;
        let hw;
        {
            let st = self.lock();
            hw = st.visible_end;
            let mut c: Vec<ReadTarget> = st
                .sealed
                .iter()
                .filter(|s| s.max_timestamp >= ts)
                .take(1)
                .map(|s| ReadTarget::Sealed(s.clone()))
                .collect();
            if c.is_empty() && st.active.max_timestamp >= ts {
                c.push(ReadTarget::Active {
                    file: st.active.reader().map_err(|e| LogError::io(&self.dir, e))?,
                    start: st.active.position_for_time(ts),
                    end: st.visible_pos,
                });
            }
            candidates = c;
        }
        for target in candidates {
            let batch = match &target {
                ReadTarget::Sealed(seg) => seg.find_by_time(ts),
                ReadTarget::Active { file, start, end } => segment::find_batch_by_time(&**file, *start, *end, ts),
                ReadTarget::Skip(_) => Ok(None),
            }
            .map_err(|e| self.read_error(&target, e))?;
            if let Some(bytes) = batch
                && let Some(Ok(raw)) = BatchIter::new(bytes).next()
            {
                let records = raw.records().map_err(|e| LogError::Corrupt {
                    path: self.dir.clone(),
                    position: 0,
                    reason: e.to_string(),
                })?;
                if let Some(r) = records.iter().find(|r| r.timestamp_ms >= ts && r.offset < hw) {
                    return Ok((r.offset, r.timestamp_ms));
                }
            }
        }
        Ok((hw, -1))
    }

    /// Stats of the local log alone.
    pub fn stats(&self) -> LogStats {
        self.stats_with(RemoteRange::default())
    }

    /// Stats of the local log together with what the cold tier holds.
    pub fn stats_with(&self, remote: RemoteRange) -> LogStats {
        let st = self.lock();
        let local_bytes = st.sealed.iter().map(|s| s.size).sum::<u64>() + st.active.size;
        let local_segments = st.sealed.len() as u32 + 1;
        // Segments both local and uploaded count once.
        let both = st.sealed.iter().filter(|s| s.next_offset <= remote.end).count() as u32;
        let both_bytes: u64 = st.sealed.iter().filter(|s| s.next_offset <= remote.end).map(|s| s.size).sum();
        let start = remote.start.map_or(st.log_start, |r| r.min(st.log_start));
        LogStats {
            start_offset: start,
            high_watermark: st.visible_end,
            size_bytes: local_bytes + remote.bytes - both_bytes.min(remote.bytes),
            segments: local_segments + remote.segments - both.min(remote.segments),
            local_start_offset: st.log_start,
            local_bytes,
            remote_start_offset: remote.start.unwrap_or(remote.end),
            remote_end_offset: remote.end,
            remote_bytes: remote.bytes,
            remote_segments: remote.segments,
        }
    }

    /// Rolls an expired active segment and applies retention. Deletes whole
    /// sealed segments only, never the active one. `now_ms` is injected so
    /// that tests control time.
    pub fn maintain(&self, now_ms: i64) -> Result<Maintenance, LogError> {
        let mut report = Maintenance::default();
        let doomed: Vec<SealedSegment> = {
            let mut st = self.lock();
            if st.poisoned.is_some() {
                return Ok(report);
            }
            let cfg = st.config;
            if cfg.durability == Durability::None || st.visible_end >= st.active.next_offset {
                // Nothing waits for an fsync: the cache may close the file.
                st.active.release();
            }
            st.producers.expire(now_ms, PRODUCER_EXPIRY_MS);
            if !cfg.replicated
                && !st.active.is_empty()
                && st.active.first_append_ms.is_some_and(|t| now_ms - t >= cfg.segment_ms)
            {
                self.roll(&mut st)?;
                report.rolled = true;
            }
            let mut doomed = Vec::new();
            let mut total: u64 = st.sealed.iter().map(|s| s.size).sum::<u64>() + st.active.size;
            // Tiered: local copies follow the local retention (defaulting to
            // the total one), and only once the cold tier holds them.
            let uploaded_end = self.uploaded_end();
            let (keep_ms, keep_bytes) = if cfg.tiered {
                (
                    if cfg.local_retention_ms >= 0 { cfg.local_retention_ms } else { cfg.retention_ms },
                    if cfg.local_retention_bytes >= 0 { cfg.local_retention_bytes } else { cfg.retention_bytes },
                )
            } else {
                (cfg.retention_ms, cfg.retention_bytes)
            };
            while let Some(front) = st.sealed.front() {
                let total_expired =
                    cfg.retention_ms >= 0 && front.max_timestamp < now_ms.saturating_sub(cfg.retention_ms);
                let expired = keep_ms >= 0 && front.max_timestamp < now_ms.saturating_sub(keep_ms);
                let oversize = keep_bytes >= 0 && total - front.size >= keep_bytes as u64;
                let may_go = !cfg.tiered || front.next_offset <= uploaded_end;
                // An expired segment goes even if never uploaded: its data is
                // past the total retention anyway.
                if !(total_expired || (may_go && (expired || oversize))) {
                    break;
                }
                let Some(seg) = st.sealed.pop_front() else { break };
                total -= seg.size;
                doomed.push(seg);
            }
            st.log_start = st.sealed.front().map_or(st.active.base_offset, |s| s.base_offset);
            doomed
        };
        for seg in doomed {
            seg.delete().map_err(|e| LogError::io(&seg.log_path(), e))?;
            report.deleted_segments.push(seg.base_offset);
        }
        Ok(report)
    }
}

impl PartitionLog {
    /// The offset the next append will get (written, not necessarily durable).
    pub fn end_offset(&self) -> u64 {
        self.lock().active.next_offset
    }

    /// The first offset still stored.
    pub fn start_offset(&self) -> u64 {
        self.lock().log_start
    }

    /// Deletes sealed segments whose every offset is below `offset` (for
    /// logs whose consumers track completion themselves, like queues).
    /// Never the active segment. Returns the deleted segments' base offsets.
    pub fn delete_before(&self, offset: u64) -> Result<Vec<u64>, LogError> {
        let doomed: Vec<SealedSegment> = {
            let mut st = self.lock();
            let mut doomed = Vec::new();
            while st.sealed.front().is_some_and(|s| s.next_offset <= offset) {
                doomed.extend(st.sealed.pop_front());
            }
            st.log_start = st.sealed.front().map_or(st.active.base_offset, |s| s.base_offset);
            doomed
        };
        let mut deleted = Vec::with_capacity(doomed.len());
        for seg in doomed {
            seg.delete().map_err(|e| LogError::io(&seg.log_path(), e))?;
            deleted.push(seg.base_offset);
        }
        Ok(deleted)
    }
}

enum ReadTarget {
    Active { file: Arc<dyn crate::fs::FsFile>, start: u64, end: u64 },
    Sealed(SealedSegment),
    Skip(u64),
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fault_tests;
