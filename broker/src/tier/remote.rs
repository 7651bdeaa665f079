//! One partition's cold tier: its manifest in memory, reads below the local
//! start (range reads through the uploaded index, a bounded block cache,
//! read-ahead), timestamp lookups, total retention and orphan clean-up.
//!
//! Every batch served from here had its CRC checked
//! ([`whole_checked_batches`]), exactly like local reads: a corrupted object
//! is reported as corruption, never served.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use strata_proto::batch::{BatchHeader, HEADER_LEN};

use super::manifest::{Manifest, RemoteSegment, index_key, log_key, manifest_key};
use super::store::ColdStore;
use super::{TierError, store_error};
use crate::log::RemoteRange;
use crate::log::index::{SegmentIndex, decode_index};
use crate::log::segment::{ReadError, SEGMENT_HEADER_LEN, whole_checked_batches};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Block number used for a cached whole `.index` object.
const INDEX_BLOCK: u64 = u64::MAX;

type BlockKey = (String, u64);

/// A bounded LRU cache of remote bytes: aligned blocks of `.log` objects
/// and whole `.index` objects, shared by every partition of the broker.
/// Memory is bounded by `tier.cache_bytes`, not by data size.
#[derive(Debug)]
pub(crate) struct BlockCache {
    capacity: u64,
    block: u64,
    inner: Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    map: HashMap<BlockKey, (Bytes, u64)>,
    /// Use tick → key, oldest first.
    order: BTreeMap<u64, BlockKey>,
    used: u64,
    tick: u64,
    /// Blocks being fetched ahead, so read-ahead does not fetch twice.
    inflight: HashSet<BlockKey>,
}

impl BlockCache {
    pub fn new(capacity: u64, block: u64) -> BlockCache {
        BlockCache { capacity, block, inner: Mutex::new(CacheInner::default()) }
    }

    pub fn block_size(&self) -> u64 {
        self.block
    }

    pub(super) fn get(&self, key: &BlockKey) -> Option<Bytes> {
        let mut c = lock(&self.inner);
        c.tick += 1;
        let tick = c.tick;
        let (bytes, old) = {
            let e = c.map.get_mut(key)?;
            let old = std::mem::replace(&mut e.1, tick);
            (e.0.clone(), old)
        };
        c.order.remove(&old);
        c.order.insert(tick, key.clone());
        Some(bytes)
    }

    pub(super) fn insert(&self, key: BlockKey, bytes: Bytes) {
        let len = bytes.len() as u64;
        if len > self.capacity {
            return;
        }
        let mut c = lock(&self.inner);
        c.tick += 1;
        let tick = c.tick;
        if let Some((old, t)) = c.map.remove(&key) {
            c.used -= old.len() as u64;
            c.order.remove(&t);
        }
        while c.used + len > self.capacity {
            let Some((_, victim)) = c.order.pop_first() else { break };
            if let Some((b, _)) = c.map.remove(&victim) {
                c.used -= b.len() as u64;
            }
        }
        c.used += len;
        c.order.insert(tick, key.clone());
        c.map.insert(key, (bytes, tick));
    }

    /// Drops every cached block of an object (after it was deleted).
    pub(super) fn evict_object(&self, object: &str) {
        let mut c = lock(&self.inner);
        let keys: Vec<BlockKey> = c.map.keys().filter(|(o, _)| o == object).cloned().collect();
        for k in keys {
            if let Some((b, t)) = c.map.remove(&k) {
                c.used -= b.len() as u64;
                c.order.remove(&t);
            }
        }
    }

    #[cfg(test)]
    pub fn used(&self) -> u64 {
        lock(&self.inner).used
    }
}

/// A chunk of whole, CRC-checked batches read from the cold tier.
#[derive(Debug)]
pub(crate) struct RemoteRead {
    pub bytes: Bytes,
    pub next_offset: u64,
}

/// The cold tier of one partition.
#[derive(Debug)]
pub struct RemotePartition {
    pub(crate) store: Arc<ColdStore>,
    cache: Arc<BlockCache>,
    pub(crate) prefix: Path,
    manifest: RwLock<Arc<Manifest>>,
    /// Serialises manifest changes (uploads and retention) of this partition.
    pub(crate) writer: tokio::sync::Mutex<()>,
}

impl RemotePartition {
    /// Loads the partition's manifest (an absent one means an empty tier).
    pub(crate) async fn load(
        store: Arc<ColdStore>,
        cache: Arc<BlockCache>,
        prefix: Path,
    ) -> Result<RemotePartition, TierError> {
        let manifest = read_manifest(&store, &prefix).await?;
        Ok(RemotePartition {
            store,
            cache,
            prefix,
            manifest: RwLock::new(Arc::new(manifest)),
            writer: tokio::sync::Mutex::new(()),
        })
    }

    /// Reads the manifest again (a replicated partition's: another replica,
    /// its leader, publishes it): before this replica uploads as the new
    /// leader, and as a follower to learn how far the tier reaches.
    pub(crate) async fn reload(&self) -> Result<(), TierError> {
        let _w = self.writer.lock().await;
        let manifest = read_manifest(&self.store, &self.prefix).await?;
        *self.manifest.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(manifest);
        Ok(())
    }

    pub(crate) fn manifest(&self) -> Arc<Manifest> {
        self.manifest.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn range(&self) -> RemoteRange {
        let m = self.manifest();
        RemoteRange { start: m.start(), end: m.end(), bytes: m.bytes(), segments: m.segments.len() as u32 }
    }

    /// The first offset in the tier, if it holds any (cheap: no sums).
    pub fn start(&self) -> Option<u64> {
        self.manifest.read().unwrap_or_else(|p| p.into_inner()).start()
    }

    /// One past the last uploaded offset: local segments that end at or
    /// below it are in the tier (the manifest naming them is durable).
    pub fn uploaded_end(&self) -> u64 {
        self.manifest().end()
    }

    /// Writes `next` as the manifest (one atomic put, made durable) and
    /// only then makes it the one readers see. Call with `writer` held.
    pub(crate) async fn publish(&self, next: Manifest) -> Result<(), TierError> {
        let key = manifest_key(&self.prefix);
        self.store.upload_store.put(&key, PutPayload::from(next.encode())).await.map_err(|e| store_error(&key, e))?;
        self.store.make_durable(&key).await?;
        *self.manifest.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(())
    }

    // ---- reads ----------------------------------------------------------

    /// Reads whole batches from `from` (or, in a gap, from the next segment),
    /// at most about `max_bytes` but at least one batch. `None` when the
    /// tier holds nothing at or after `from`.
    pub(crate) async fn read(&self, from: u64, max_bytes: usize) -> Result<Option<RemoteRead>, TierError> {
        let manifest = self.manifest();
        let mut from = from;
        loop {
            let Some(seg) = manifest.segment_at_or_after(from).copied() else { return Ok(None) };
            from = from.max(seg.base_offset);
            let read = self.read_segment(&seg, from, max_bytes).await?;
            // Read-ahead: sequential consumers find the next block cached.
            self.prefetch_after(&manifest, &seg, read.end_position);
            if read.bytes.is_empty() {
                // Nothing at or after `from` in this segment: the next one.
                from = seg.next_offset;
                continue;
            }
            return Ok(Some(RemoteRead { bytes: read.bytes, next_offset: read.next_offset }));
        }
    }

    async fn read_segment(&self, seg: &RemoteSegment, from: u64, max_bytes: usize) -> Result<SegRead, TierError> {
        let index = self.index(seg).await?;
        let rel = from.saturating_sub(seg.base_offset).min(u64::from(u32::MAX)) as u32;
        let hint = index.position_for(rel).map_or(SEGMENT_HEADER_LEN, u64::from);
        match self.read_from(seg, hint, from, max_bytes).await {
            // A wrong index hint must not make data unreadable: rescan.
            Err(TierError::Corrupt { .. }) if hint != SEGMENT_HEADER_LEN => {
                self.read_from(seg, SEGMENT_HEADER_LEN, from, max_bytes).await
            }
            other => other,
        }
    }

    async fn read_from(
        &self,
        seg: &RemoteSegment,
        mut pos: u64,
        from: u64,
        max_bytes: usize,
    ) -> Result<SegRead, TierError> {
        let key = log_key(&self.prefix, seg.base_offset);
        let end = seg.log_size;
        let corrupt = |position: u64, reason: String| TierError::Corrupt { key: key.to_string(), position, reason };
        let first_total = loop {
            if pos >= end {
                return Ok(SegRead { bytes: Bytes::new(), next_offset: from, end_position: pos });
            }
            if end - pos < HEADER_LEN as u64 {
                return Err(corrupt(pos, "batch header cut short".into()));
            }
            let hdr = self.read_at(&key, end, pos, HEADER_LEN as u64).await?;
            let h = BatchHeader::parse(&hdr).map_err(|e| corrupt(pos, e.to_string()))?;
            let total = h.total_len() as u64;
            if pos + total > end {
                return Err(corrupt(pos, "batch runs past the end of the object".into()));
            }
            if h.next_offset() > from {
                break total;
            }
            pos += total;
        };
        let len = (end - pos).min((max_bytes as u64).max(first_total));
        let buf = self.read_at(&key, end, pos, len).await?;
        let (keep, next_offset) = whole_checked_batches(&buf, pos, from).map_err(|e| match e {
            ReadError::Corrupt { position, reason } => corrupt(position, reason),
            ReadError::Io(e) => corrupt(pos, e.to_string()),
        })?;
        Ok(SegRead { bytes: buf.slice(..keep), next_offset, end_position: pos + keep as u64 })
    }

    /// The parsed `.index` object of a segment (fetched once, then cached).
    async fn index(&self, seg: &RemoteSegment) -> Result<SegmentIndex, TierError> {
        let key = index_key(&self.prefix, seg.base_offset);
        let ck = (key.to_string(), INDEX_BLOCK);
        let bytes = match self.cache.get(&ck) {
            Some(b) => b,
            None => {
                let b = self.store.store.get_range(&key, 0..seg.index_size).await.map_err(|e| store_error(&key, e))?;
                self.cache.insert(ck, b.clone());
                b
            }
        };
        match decode_index(&bytes) {
            Some((h, index)) if h.base_offset == seg.base_offset && h.log_size == seg.log_size => Ok(index),
            // A bad index only costs speed: scan from the segment start.
            _ => Ok(SegmentIndex::default()),
        }
    }

    /// `len` bytes at `pos` of object `key` (of size `size`), assembled from
    /// cached blocks, fetching the missing ones with range reads.
    async fn read_at(&self, key: &Path, size: u64, pos: u64, len: u64) -> Result<Bytes, TierError> {
        let b = self.cache.block_size();
        let (first, last) = (pos / b, (pos + len - 1) / b);
        if first == last {
            let block = self.block(key, size, first).await?;
            let off = (pos - first * b) as usize;
            return Ok(block.slice(off..off + len as usize));
        }
        let mut out = BytesMut::with_capacity(len as usize);
        for i in first..=last {
            let block = self.block(key, size, i).await?;
            let lo = if i == first { (pos - i * b) as usize } else { 0 };
            let hi = if i == last { (pos + len - i * b) as usize } else { block.len() };
            out.extend_from_slice(&block[lo..hi]);
        }
        Ok(out.freeze())
    }

    async fn block(&self, key: &Path, size: u64, i: u64) -> Result<Bytes, TierError> {
        let ck = (key.to_string(), i);
        if let Some(b) = self.cache.get(&ck) {
            return Ok(b);
        }
        let fetched = fetch_block(&self.store, key, size, i, self.cache.block_size()).await?;
        self.cache.insert(ck, fetched.clone());
        Ok(fetched)
    }

    /// Starts fetching the block after `position` (or the next segment's
    /// first block) in the background, unless it is cached or on its way.
    fn prefetch_after(&self, manifest: &Manifest, seg: &RemoteSegment, position: u64) {
        let b = self.cache.block_size();
        let (key, size, i) = if position < seg.log_size {
            (log_key(&self.prefix, seg.base_offset), seg.log_size, position / b + 1)
        } else {
            match manifest.segment_at_or_after(seg.next_offset) {
                Some(next) => (log_key(&self.prefix, next.base_offset), next.log_size, 0),
                None => return,
            }
        };
        if i * b >= size {
            return;
        }
        let ck = (key.to_string(), i);
        {
            let mut c = lock(&self.cache.inner);
            if c.map.contains_key(&ck) || !c.inflight.insert(ck.clone()) {
                return;
            }
        }
        let (store, cache) = (self.store.clone(), self.cache.clone());
        tokio::spawn(async move {
            if let Ok(bytes) = fetch_block(&store, &key, size, i, b).await {
                cache.insert(ck.clone(), bytes);
            }
            lock(&cache.inner).inflight.remove(&ck);
        });
    }

    /// The first batch (whole, CRC-checked) holding a record with timestamp
    /// >= `ts` among segments that start below `below`.
    pub(crate) async fn find_by_time(&self, ts: i64, below: u64) -> Result<Option<Bytes>, TierError> {
        let manifest = self.manifest();
        for seg in manifest.segments.iter().filter(|s| s.base_offset < below && s.max_timestamp >= ts) {
            let index = self.index(seg).await?;
            let mut pos = match index.rel_offset_before_time(ts) {
                Some(rel) => index.position_for(rel).map_or(SEGMENT_HEADER_LEN, u64::from),
                None => SEGMENT_HEADER_LEN,
            };
            let key = log_key(&self.prefix, seg.base_offset);
            while pos + HEADER_LEN as u64 <= seg.log_size {
                let hdr = self.read_at(&key, seg.log_size, pos, HEADER_LEN as u64).await?;
                let h = BatchHeader::parse(&hdr).map_err(|e| TierError::Corrupt {
                    key: key.to_string(),
                    position: pos,
                    reason: e.to_string(),
                })?;
                if h.max_timestamp >= ts {
                    let read = self.read_from(seg, pos, h.base_offset, 1).await?;
                    return Ok(Some(read.bytes));
                }
                pos += h.total_len() as u64;
            }
        }
        Ok(None)
    }

    // ---- retention and clean-up ------------------------------------------

    /// Total retention: drops the oldest segments whose newest record is
    /// older than `retention_ms`, or while the partition (tier plus the
    /// `local_only_bytes` not yet uploaded) is over `retention_bytes`. The
    /// manifest goes first; objects are deleted only once it is durable
    /// (a crash in between leaves orphans, removed at start-up).
    pub(crate) async fn apply_retention(
        &self,
        now_ms: i64,
        retention_ms: i64,
        retention_bytes: i64,
        local_only_bytes: u64,
    ) -> Result<Vec<u64>, TierError> {
        let _w = self.writer.lock().await;
        let current = self.manifest();
        let mut total = current.bytes() + local_only_bytes;
        let mut keep = current.segments.clone();
        let mut doomed = Vec::new();
        while let Some(front) = keep.first().copied() {
            let size = front.log_size + front.index_size;
            let expired = retention_ms >= 0 && front.max_timestamp < now_ms.saturating_sub(retention_ms);
            let oversize = retention_bytes >= 0 && total - size >= retention_bytes as u64;
            if !(expired || oversize) {
                break;
            }
            total -= size;
            doomed.push(keep.remove(0));
        }
        if doomed.is_empty() {
            return Ok(Vec::new());
        }
        self.publish(Manifest { segments: keep, ..Manifest::empty() }).await?;
        let mut deleted = Vec::with_capacity(doomed.len());
        for seg in doomed {
            self.delete_segment_objects(seg.base_offset).await?;
            deleted.push(seg.base_offset);
        }
        Ok(deleted)
    }

    async fn delete_segment_objects(&self, base: u64) -> Result<(), TierError> {
        for key in [log_key(&self.prefix, base), index_key(&self.prefix, base)] {
            match self.store.store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_error(&key, e)),
            }
            self.cache.evict_object(key.as_ref());
        }
        Ok(())
    }

    /// Deletes every object under the partition's prefix that the manifest
    /// does not name (left by an upload or deletion a crash interrupted).
    /// Only safe while nothing uploads to this partition (start-up).
    pub(crate) async fn remove_orphans(&self) -> Result<Vec<Path>, TierError> {
        let _w = self.writer.lock().await;
        let manifest = self.manifest();
        let mut named: HashSet<Path> = HashSet::from([manifest_key(&self.prefix)]);
        for s in &manifest.segments {
            named.insert(log_key(&self.prefix, s.base_offset));
            named.insert(index_key(&self.prefix, s.base_offset));
        }
        let listed: Vec<object_store::ObjectMeta> =
            self.store.store.list(Some(&self.prefix)).try_collect().await.map_err(|e| store_error(&self.prefix, e))?;
        let mut removed = Vec::new();
        for meta in listed {
            if !named.contains(&meta.location) {
                match self.store.store.delete(&meta.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => removed.push(meta.location),
                    Err(e) => return Err(store_error(&meta.location, e)),
                }
            }
        }
        Ok(removed)
    }
}

/// The partition's manifest in the store (an absent one: an empty tier).
async fn read_manifest(store: &ColdStore, prefix: &Path) -> Result<Manifest, TierError> {
    let key = manifest_key(prefix);
    match store.store.head(&key).await {
        Ok(meta) => {
            let bytes = store.store.get_range(&key, 0..meta.size).await.map_err(|e| store_error(&key, e))?;
            Manifest::decode(&bytes).map_err(|reason| TierError::Manifest { key: key.to_string(), reason })
        }
        Err(object_store::Error::NotFound { .. }) => Ok(Manifest::empty()),
        Err(e) => Err(store_error(&key, e)),
    }
}

struct SegRead {
    bytes: Bytes,
    next_offset: u64,
    /// Object position after the bytes returned (where a sequential reader continues).
    end_position: u64,
}

async fn fetch_block(store: &ColdStore, key: &Path, size: u64, i: u64, block: u64) -> Result<Bytes, TierError> {
    let start = i * block;
    let end = (start + block).min(size);
    let bytes = store.store.get_range(key, start..end).await.map_err(|e| store_error(key, e))?;
    if bytes.len() as u64 != end - start {
        return Err(TierError::Corrupt {
            key: key.to_string(),
            position: start,
            reason: format!(
                "range read returned {} bytes, {} expected (object shorter than the manifest says)",
                bytes.len(),
                end - start
            ),
        });
    }
    Ok(bytes)
}
