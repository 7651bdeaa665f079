//! Segment files: the active segment that appends go to, sealed segments that
//! are only read, the scan that recovers or re-indexes a segment, and the
//! positioned read that returns whole batches.
//!
//! A `.log` file starts with a 16-byte header (`STRATASG`, version u32,
//! reserved u32) followed by record batches exactly as the wire carries them,
//! with their base offsets stamped. Its name is the segment's base offset.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use strata_proto::batch::{BatchHeader, HEADER_LEN, LENGTH_PREFIX};

use super::index::{IndexFile, IndexHeader, OffsetEntry, SegmentIndex, TimeEntry, write_index_file};
use crate::fs::{FsFile, OpenOptions, SegmentFiles};

pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"STRATASG";
pub(crate) const SEGMENT_VERSION: u32 = 1;
pub(crate) const SEGMENT_HEADER_LEN: u64 = 16;
/// No batch on disk is larger than this; a length field beyond it is corruption.
pub(crate) const MAX_STORED_BATCH: u64 = 256 * 1024 * 1024;

pub(crate) fn log_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.log"))
}

pub(crate) fn index_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.index"))
}

fn segment_header() -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[0..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h
}

/// What a scan of a segment found.
#[derive(Debug, Default)]
pub(crate) struct ScanOutcome {
    /// Byte length of the valid prefix of the file.
    pub valid_len: u64,
    pub next_offset: u64,
    pub max_timestamp: i64,
    pub index: SegmentIndex,
    pub batches: u64,
    /// Why the scan stopped before the end of the file, if it did.
    pub stopped: Option<String>,
}

/// Reads a segment from the start, checking every batch (length, header,
/// CRC32C, offset continuity) and building its index. Stops at the first
/// batch that fails a check: everything from there is a torn or corrupt tail.
pub(crate) fn scan_segment(
    file: &dyn FsFile,
    base_offset: u64,
    index_interval: u64,
    visit: &mut dyn FnMut(&BatchHeader),
) -> io::Result<ScanOutcome> {
    let file_len = file.len()?;
    let mut out = ScanOutcome { valid_len: 0, next_offset: base_offset, max_timestamp: i64::MIN, ..Default::default() };
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    if file_len < SEGMENT_HEADER_LEN || file.read_exact_at(&mut header, 0).is_err() || header != segment_header() {
        out.stopped = Some("missing or invalid segment header".into());
        return Ok(out);
    }
    out.valid_len = SEGMENT_HEADER_LEN;
    let mut reader = io::BufReader::with_capacity(1 << 20, crate::fs::Reader::new(file, SEGMENT_HEADER_LEN));
    let mut pos = SEGMENT_HEADER_LEN;
    let mut since_offset_entry = u64::MAX;
    let mut since_time_entry = u64::MAX;
    let mut buf = Vec::new();
    while pos < file_len {
        let remaining = file_len - pos;
        if remaining < LENGTH_PREFIX as u64 {
            out.stopped = Some(format!("{remaining} trailing bytes at {pos}"));
            break;
        }
        let mut prefix = [0u8; LENGTH_PREFIX];
        reader.read_exact(&mut prefix)?;
        let batch_len = u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]) as u64;
        let total = LENGTH_PREFIX as u64 + batch_len;
        if total < HEADER_LEN as u64 || total > MAX_STORED_BATCH || total > remaining {
            out.stopped = Some(format!("batch at {pos} claims {total} bytes, {remaining} remain"));
            break;
        }
        buf.clear();
        buf.extend_from_slice(&prefix);
        buf.resize(total as usize, 0);
        reader.read_exact(&mut buf[LENGTH_PREFIX..])?;
        let header = match BatchHeader::parse(&buf) {
            Ok(h) => h,
            Err(e) => {
                out.stopped = Some(format!("batch at {pos}: {e}"));
                break;
            }
        };
        if crc32c::crc32c(&buf[21..]) != header.crc {
            out.stopped = Some(format!("batch at {pos}: CRC mismatch"));
            break;
        }
        if header.base_offset != out.next_offset || header.record_count != header.last_offset_delta + 1 {
            out.stopped =
                Some(format!("batch at {pos}: offset {} where {} was expected", header.base_offset, out.next_offset));
            break;
        }
        let rel = (header.base_offset - base_offset) as u32;
        if since_offset_entry >= index_interval {
            out.index.offsets.push(OffsetEntry { rel_offset: rel, position: pos as u32 });
            since_offset_entry = 0;
        }
        if header.max_timestamp > out.max_timestamp && since_time_entry >= index_interval {
            out.index.times.push(TimeEntry { timestamp: header.max_timestamp, rel_offset: rel });
            since_time_entry = 0;
        }
        since_offset_entry += total;
        since_time_entry += total;
        visit(&header);
        out.max_timestamp = out.max_timestamp.max(header.max_timestamp);
        out.next_offset = header.next_offset();
        out.batches += 1;
        pos += total;
        out.valid_len = pos;
    }
    Ok(out)
}

/// A chunk of whole batches read from one segment.
#[derive(Debug)]
pub(crate) struct SegmentRead {
    pub bytes: Bytes,
    /// Offset after the last batch returned (or `from` when nothing was).
    pub next_offset: u64,
}

/// Why a positioned read could not return data.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("corrupt batch at byte {position}: {reason}")]
    Corrupt { position: u64, reason: String },
}

/// Reads whole batches from `file` between byte `start` and `end`, skipping
/// batches that end before offset `from`, returning at most about `max_bytes`
/// (but always at least one whole batch when one is available). Every batch
/// returned has had its CRC checked.
pub(crate) fn read_batches(
    file: &dyn FsFile,
    mut start: u64,
    end: u64,
    from: u64,
    max_bytes: usize,
) -> Result<SegmentRead, ReadError> {
    // Skip batches before `from` using their headers only.
    let mut hdr = [0u8; HEADER_LEN];
    let first_total = loop {
        if start >= end {
            return Ok(SegmentRead { bytes: Bytes::new(), next_offset: from });
        }
        if end - start < HEADER_LEN as u64 {
            return Err(ReadError::Corrupt { position: start, reason: "batch header cut short".into() });
        }
        file.read_exact_at(&mut hdr, start)?;
        let h = BatchHeader::parse(&hdr).map_err(|e| ReadError::Corrupt { position: start, reason: e.to_string() })?;
        let total = h.total_len() as u64;
        if start + total > end {
            return Err(ReadError::Corrupt { position: start, reason: "batch runs past the readable end".into() });
        }
        if h.next_offset() > from {
            break total;
        }
        start += total;
    };
    let len = (end - start).min((max_bytes as u64).max(first_total));
    let mut buf = BytesMut::zeroed(len as usize);
    file.read_exact_at(&mut buf, start)?;
    let (keep, next_offset) = whole_checked_batches(&buf, start, from)?;
    buf.truncate(keep);
    Ok(SegmentRead { bytes: buf.freeze(), next_offset })
}

/// The length of the prefix of `buf` (read from segment position `start`)
/// that holds whole batches, each CRC-checked, and the offset after them.
/// A bad first batch is an error; a bad later one ends the prefix (served
/// what is good; the next read reports the bad batch). Shared by local and
/// cold-tier reads, so no byte leaves the broker unchecked.
pub(crate) fn whole_checked_batches(buf: &[u8], start: u64, from: u64) -> Result<(usize, u64), ReadError> {
    let mut pos = 0usize;
    let mut next_offset = from;
    while pos + HEADER_LEN <= buf.len() {
        let h = BatchHeader::parse(&buf[pos..])
            .map_err(|e| ReadError::Corrupt { position: start + pos as u64, reason: e.to_string() })?;
        let total = h.total_len();
        if pos + total > buf.len() {
            break;
        }
        if total <= 21 || crc32c::crc32c(&buf[pos + 21..pos + total]) != h.crc {
            if pos == 0 {
                return Err(ReadError::Corrupt { position: start, reason: "CRC mismatch".into() });
            }
            break;
        }
        next_offset = h.next_offset();
        pos += total;
    }
    Ok((pos, next_offset))
}

/// Reads batch headers from `start` until one has `max_timestamp >= ts`;
/// returns that batch whole.
pub(crate) fn find_batch_by_time(
    file: &dyn FsFile,
    mut start: u64,
    end: u64,
    ts: i64,
) -> Result<Option<Bytes>, ReadError> {
    let mut hdr = [0u8; HEADER_LEN];
    while start + HEADER_LEN as u64 <= end {
        file.read_exact_at(&mut hdr, start)?;
        let h = BatchHeader::parse(&hdr).map_err(|e| ReadError::Corrupt { position: start, reason: e.to_string() })?;
        let total = h.total_len() as u64;
        if start + total > end {
            return Err(ReadError::Corrupt { position: start, reason: "batch runs past the readable end".into() });
        }
        if h.max_timestamp >= ts {
            let mut buf = BytesMut::zeroed(total as usize);
            file.read_exact_at(&mut buf, start)?;
            return Ok(Some(buf.freeze()));
        }
        start += total;
    }
    Ok(None)
}

/// The segment appends go to. Its index lives in memory until it is sealed.
#[derive(Debug)]
pub(crate) struct ActiveSegment {
    pub base_offset: u64,
    pub next_offset: u64,
    /// The segment file while this segment holds it: from an append until
    /// the bytes are fsynced (so that the cache never closes a file with
    /// writes not yet on disk), or while recovery works on it. Otherwise
    /// the file comes from (and may be evicted from) `files`.
    held: Option<Arc<dyn FsFile>>,
    /// Bytes written, header included.
    pub size: u64,
    pub max_timestamp: i64,
    pub index: SegmentIndex,
    since_offset_entry: u64,
    since_time_entry: u64,
    /// Broker time of the first append, for rolling by age.
    pub first_append_ms: Option<i64>,
    dir: PathBuf,
    files: Arc<SegmentFiles>,
}

impl ActiveSegment {
    /// Creates an empty segment file (and makes its directory entry durable).
    /// A failed create removes the file again, so that it can be retried.
    pub fn create(files: &Arc<SegmentFiles>, dir: &Path, base_offset: u64) -> io::Result<ActiveSegment> {
        let fs = files.fs();
        let path = log_path(dir, base_offset);
        let file = fs.open(&path, OpenOptions::CREATE_NEW)?;
        let made = (|| {
            file.write_all_at(&segment_header(), 0)?;
            file.sync_all()?;
            fs.sync_dir(dir)
        })();
        if let Err(e) = made {
            let _ = fs.remove_file(&path);
            return Err(e);
        }
        let file = files.insert(&path, file, true);
        Ok(ActiveSegment {
            base_offset,
            next_offset: base_offset,
            held: Some(file),
            size: SEGMENT_HEADER_LEN,
            max_timestamp: i64::MIN,
            index: SegmentIndex::default(),
            since_offset_entry: u64::MAX,
            since_time_entry: u64::MAX,
            first_append_ms: None,
            dir: dir.to_path_buf(),
            files: files.clone(),
        })
    }

    /// Opens the last segment after a restart: scans it, truncates any torn
    /// or corrupt tail, rebuilds its in-memory index and drops a stale index
    /// file. Returns the segment and why the scan stopped early, if it did.
    pub fn recover(
        files: &Arc<SegmentFiles>,
        dir: &Path,
        base_offset: u64,
        index_interval: u64,
        now_ms: i64,
        visit: &mut dyn FnMut(&BatchHeader),
    ) -> io::Result<(ActiveSegment, Option<String>)> {
        let path = log_path(dir, base_offset);
        let file = files.get(&path, true)?;
        let scan = scan_segment(&*file, base_offset, index_interval, visit)?;
        let mut valid_len = scan.valid_len;
        if valid_len < SEGMENT_HEADER_LEN {
            file.set_len(0)?;
            file.write_all_at(&segment_header(), 0)?;
            valid_len = SEGMENT_HEADER_LEN;
        }
        if file.len()? != valid_len {
            file.set_len(valid_len)?;
        }
        file.sync_all()?;
        match files.fs().remove_file(&index_path(dir, base_offset)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let last_off = scan.index.offsets.last().map(|e| e.position as u64);
        Ok((
            ActiveSegment {
                base_offset,
                next_offset: scan.next_offset,
                held: Some(file),
                size: valid_len,
                max_timestamp: scan.max_timestamp,
                // Conservative: the next batch starts new index entries only
                // after another interval of bytes.
                since_offset_entry: last_off.map_or(u64::MAX, |p| valid_len - p),
                since_time_entry: 0,
                index: scan.index,
                first_append_ms: (scan.batches > 0).then_some(now_ms),
                dir: dir.to_path_buf(),
                files: files.clone(),
            },
            scan.stopped,
        ))
    }

    pub fn is_empty(&self) -> bool {
        self.next_offset == self.base_offset
    }

    /// The segment file, held from now until [`ActiveSegment::release`].
    pub fn file(&mut self) -> io::Result<Arc<dyn FsFile>> {
        if let Some(f) = &self.held {
            return Ok(f.clone());
        }
        let f = self.files.get(&log_path(&self.dir, self.base_offset), true)?;
        self.held = Some(f.clone());
        Ok(f)
    }

    /// The segment file for a read (not held: the cache may close it once
    /// the reader is done).
    pub fn reader(&self) -> io::Result<Arc<dyn FsFile>> {
        match &self.held {
            Some(f) => Ok(f.clone()),
            None => self.files.get(&log_path(&self.dir, self.base_offset), true),
        }
    }

    /// Lets the cache close the file when it needs room. Only once every
    /// byte written is on disk (or durability is `none`).
    pub fn release(&mut self) {
        self.held = None;
    }

    /// Writes one stamped batch at the end of the segment. On failure the
    /// file is cut back to its previous length, so no partial batch remains.
    pub fn append(&mut self, batch: &[u8], header: &BatchHeader, index_interval: u64, now_ms: i64) -> io::Result<()> {
        let file = self.file()?;
        if let Err(e) = file.write_all_at(batch, self.size) {
            let _ = file.set_len(self.size);
            return Err(e);
        }
        let rel = (header.base_offset - self.base_offset) as u32;
        let total = batch.len() as u64;
        if self.since_offset_entry >= index_interval {
            self.index.offsets.push(OffsetEntry { rel_offset: rel, position: self.size as u32 });
            self.since_offset_entry = 0;
        }
        if header.max_timestamp > self.max_timestamp && self.since_time_entry >= index_interval {
            self.index.times.push(TimeEntry { timestamp: header.max_timestamp, rel_offset: rel });
            self.since_time_entry = 0;
        }
        self.since_offset_entry += total;
        self.since_time_entry += total;
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
        self.size += total;
        self.next_offset = header.next_offset();
        self.first_append_ms.get_or_insert(now_ms);
        Ok(())
    }

    /// Byte position to start reading offset `from` (at or before its batch).
    pub fn position_for(&self, from: u64) -> u64 {
        let rel = from.saturating_sub(self.base_offset).min(u64::from(u32::MAX)) as u32;
        self.index.position_for(rel).map_or(SEGMENT_HEADER_LEN, u64::from)
    }

    /// Byte position from which a search for timestamp `ts` may start.
    pub fn position_for_time(&self, ts: i64) -> u64 {
        match self.index.rel_offset_before_time(ts) {
            Some(rel) => self.position_for(self.base_offset + u64::from(rel)),
            None => SEGMENT_HEADER_LEN,
        }
    }

    /// Seals the segment: optionally fsyncs it, writes its index file.
    pub fn seal(mut self, sync: bool) -> io::Result<SealedSegment> {
        if sync {
            self.file()?.sync_data()?;
        }
        let header = IndexHeader {
            base_offset: self.base_offset,
            next_offset: self.next_offset,
            log_size: self.size,
            max_timestamp: self.max_timestamp,
            offset_entries: self.index.offsets.len() as u32,
            time_entries: self.index.times.len() as u32,
        };
        write_index_file(&**self.files.fs(), &index_path(&self.dir, self.base_offset), &header, &self.index, sync)?;
        Ok(SealedSegment {
            base_offset: self.base_offset,
            next_offset: self.next_offset,
            size: self.size,
            max_timestamp: self.max_timestamp,
            dir: self.dir,
            files: self.files,
        })
    }
}

/// A segment that no longer changes. Only its summary stays in memory; its
/// file and index are opened for each read.
#[derive(Debug, Clone)]
pub(crate) struct SealedSegment {
    pub base_offset: u64,
    pub next_offset: u64,
    pub size: u64,
    pub max_timestamp: i64,
    pub dir: PathBuf,
    pub files: Arc<SegmentFiles>,
}

impl SealedSegment {
    /// Loads a sealed segment's summary from its index header, rebuilding the
    /// index by scanning the segment only when the index is missing or stale.
    /// Returns the segment and, when the scan found a bad tail, why.
    pub fn open(
        files: &Arc<SegmentFiles>,
        dir: &Path,
        base_offset: u64,
        index_interval: u64,
    ) -> io::Result<(SealedSegment, Option<String>)> {
        let fs = files.fs();
        let log = log_path(dir, base_offset);
        let size = fs.len(&log)?;
        if let Some(idx) = IndexFile::open(&**fs, &index_path(dir, base_offset), base_offset, size)? {
            return Ok((
                SealedSegment {
                    base_offset,
                    next_offset: idx.header.next_offset,
                    size,
                    max_timestamp: idx.header.max_timestamp,
                    dir: dir.to_path_buf(),
                    files: files.clone(),
                },
                None,
            ));
        }
        let file = fs.open(&log, OpenOptions::WRITE)?;
        let scan = scan_segment(&*file, base_offset, index_interval, &mut |_| {})?;
        if scan.valid_len < size {
            file.set_len(scan.valid_len.max(SEGMENT_HEADER_LEN))?;
            if scan.valid_len < SEGMENT_HEADER_LEN {
                file.write_all_at(&segment_header(), 0)?;
            }
            file.sync_all()?;
        }
        let size = scan.valid_len.max(SEGMENT_HEADER_LEN);
        let header = IndexHeader {
            base_offset,
            next_offset: scan.next_offset,
            log_size: size,
            max_timestamp: scan.max_timestamp,
            offset_entries: scan.index.offsets.len() as u32,
            time_entries: scan.index.times.len() as u32,
        };
        write_index_file(&**fs, &index_path(dir, base_offset), &header, &scan.index, true)?;
        Ok((
            SealedSegment {
                base_offset,
                next_offset: scan.next_offset,
                size,
                max_timestamp: scan.max_timestamp,
                dir: dir.to_path_buf(),
                files: files.clone(),
            },
            scan.stopped,
        ))
    }

    pub fn log_path(&self) -> PathBuf {
        log_path(&self.dir, self.base_offset)
    }

    pub fn index_path(&self) -> PathBuf {
        index_path(&self.dir, self.base_offset)
    }

    fn index(&self) -> io::Result<Option<IndexFile>> {
        IndexFile::open(&**self.files.fs(), &self.index_path(), self.base_offset, self.size)
    }

    /// Reads whole batches starting at offset `from`.
    pub fn read(&self, from: u64, max_bytes: usize) -> Result<SegmentRead, ReadError> {
        let file = self.files.get(&self.log_path(), false)?;
        let rel = from.saturating_sub(self.base_offset).min(u64::from(u32::MAX)) as u32;
        let hint = match self.index()? {
            Some(idx) => idx.position_for(rel)?.map_or(SEGMENT_HEADER_LEN, u64::from),
            None => SEGMENT_HEADER_LEN,
        };
        match read_batches(&*file, hint, self.size, from, max_bytes) {
            // A wrong index hint must not make data unreadable: rescan from the start.
            Err(ReadError::Corrupt { .. }) if hint != SEGMENT_HEADER_LEN => {
                read_batches(&*file, SEGMENT_HEADER_LEN, self.size, from, max_bytes)
            }
            other => other,
        }
    }

    /// The first batch holding a record with timestamp >= `ts`.
    pub fn find_by_time(&self, ts: i64) -> Result<Option<Bytes>, ReadError> {
        let file = self.files.get(&self.log_path(), false)?;
        let mut start = SEGMENT_HEADER_LEN;
        if let Some(idx) = self.index()?
            && let Some(rel) = idx.rel_offset_before_time(ts)?
        {
            start = idx.position_for(rel)?.map_or(SEGMENT_HEADER_LEN, u64::from);
        }
        match find_batch_by_time(&*file, start, self.size, ts) {
            Err(ReadError::Corrupt { .. }) if start != SEGMENT_HEADER_LEN => {
                find_batch_by_time(&*file, SEGMENT_HEADER_LEN, self.size, ts)
            }
            other => other,
        }
    }

    /// Deletes the segment's files.
    pub fn delete(&self) -> io::Result<()> {
        self.files.forget(&self.log_path());
        for path in [self.log_path(), self.index_path()] {
            match self.files.fs().remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
