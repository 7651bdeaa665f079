//! Sparse offset and time indexes of one segment: kept in memory for the
//! active segment, written to a `.index` file when the segment is sealed, and
//! searched in place (positioned reads, no loading) for sealed segments.
//!
//! `.index` file layout (little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0  | 8 | magic `STRATAIX` |
//! | 8  | 4 | version = 1 |
//! | 12 | 4 | CRC32C of bytes 16..64 |
//! | 16 | 8 | segment base offset |
//! | 24 | 8 | segment next offset (one past its last record) |
//! | 32 | 8 | size of the `.log` file in bytes |
//! | 40 | 8 | max record timestamp (ms) |
//! | 48 | 4 | number of offset entries |
//! | 52 | 4 | number of time entries |
//! | 56 | 8 | reserved (zero) |
//! | 64 | 8·n | offset entries: relative offset u32, byte position u32 |
//! | …  | 12·m | time entries: timestamp i64, relative offset u32 |
//!
//! Entries are hints: a reader that lands on a position that does not hold a
//! batch falls back to scanning from the start of the segment.

use std::io;
use std::path::Path;
use std::sync::Arc;

use crate::fs::{FileSystem, FsFile, OpenOptions};

pub(crate) const INDEX_MAGIC: &[u8; 8] = b"STRATAIX";
pub(crate) const INDEX_VERSION: u32 = 1;
pub(crate) const INDEX_HEADER_LEN: u64 = 64;
const OFFSET_ENTRY_LEN: u64 = 8;
const TIME_ENTRY_LEN: u64 = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub rel_offset: u32,
    pub position: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub timestamp: i64,
    pub rel_offset: u32,
}

/// The in-memory index of the active segment.
#[derive(Debug, Default, Clone)]
pub(crate) struct SegmentIndex {
    pub offsets: Vec<OffsetEntry>,
    pub times: Vec<TimeEntry>,
}

impl SegmentIndex {
    /// Byte position of the last indexed batch starting at or before `rel`.
    pub fn position_for(&self, rel: u32) -> Option<u32> {
        let i = self.offsets.partition_point(|e| e.rel_offset <= rel);
        i.checked_sub(1).map(|i| self.offsets[i].position)
    }

    /// Relative offset of the last time entry whose timestamp is below `ts`:
    /// every batch before it holds only older records.
    pub fn rel_offset_before_time(&self, ts: i64) -> Option<u32> {
        let i = self.times.partition_point(|e| e.timestamp < ts);
        i.checked_sub(1).map(|i| self.times[i].rel_offset)
    }
}

/// Facts about a sealed segment, stored in its index header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexHeader {
    pub base_offset: u64,
    pub next_offset: u64,
    pub log_size: u64,
    pub max_timestamp: i64,
    pub offset_entries: u32,
    pub time_entries: u32,
}

impl IndexHeader {
    fn encode(&self) -> [u8; INDEX_HEADER_LEN as usize] {
        let mut buf = [0u8; INDEX_HEADER_LEN as usize];
        buf[0..8].copy_from_slice(INDEX_MAGIC);
        buf[8..12].copy_from_slice(&INDEX_VERSION.to_le_bytes());
        buf[16..24].copy_from_slice(&self.base_offset.to_le_bytes());
        buf[24..32].copy_from_slice(&self.next_offset.to_le_bytes());
        buf[32..40].copy_from_slice(&self.log_size.to_le_bytes());
        buf[40..48].copy_from_slice(&self.max_timestamp.to_le_bytes());
        buf[48..52].copy_from_slice(&self.offset_entries.to_le_bytes());
        buf[52..56].copy_from_slice(&self.time_entries.to_le_bytes());
        let crc = crc32c::crc32c(&buf[16..]);
        buf[12..16].copy_from_slice(&crc.to_le_bytes());
        buf
    }

    /// Decodes and checks a header; `None` when it is not a valid header.
    fn decode(buf: &[u8]) -> Option<IndexHeader> {
        if buf.len() < INDEX_HEADER_LEN as usize || &buf[0..8] != INDEX_MAGIC {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes(buf[i..i + 4].try_into().unwrap_or_default());
        let u64_at = |i: usize| u64::from_le_bytes(buf[i..i + 8].try_into().unwrap_or_default());
        if u32_at(8) != INDEX_VERSION || u32_at(12) != crc32c::crc32c(&buf[16..INDEX_HEADER_LEN as usize]) {
            return None;
        }
        Some(IndexHeader {
            base_offset: u64_at(16),
            next_offset: u64_at(24),
            log_size: u64_at(32),
            max_timestamp: u64_at(40) as i64,
            offset_entries: u32_at(48),
            time_entries: u32_at(52),
        })
    }

    fn file_len(&self) -> u64 {
        INDEX_HEADER_LEN
            + u64::from(self.offset_entries) * OFFSET_ENTRY_LEN
            + u64::from(self.time_entries) * TIME_ENTRY_LEN
    }
}

/// Writes a sealed segment's index atomically (temp file, fsync, rename).
pub(crate) fn write_index_file(
    fs: &dyn FileSystem,
    path: &Path,
    header: &IndexHeader,
    index: &SegmentIndex,
    sync: bool,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(header.file_len() as usize);
    buf.extend_from_slice(&header.encode());
    for e in &index.offsets {
        buf.extend_from_slice(&e.rel_offset.to_le_bytes());
        buf.extend_from_slice(&e.position.to_le_bytes());
    }
    for e in &index.times {
        buf.extend_from_slice(&e.timestamp.to_le_bytes());
        buf.extend_from_slice(&e.rel_offset.to_le_bytes());
    }
    crate::fsutil::replace(fs, path, &buf, if sync { crate::fsutil::Sync::Durable } else { crate::fsutil::Sync::Lazy })
}

/// Decodes a whole `.index` file held in memory (an object fetched from the
/// cold tier); `None` when it is malformed or truncated.
pub(crate) fn decode_index(buf: &[u8]) -> Option<(IndexHeader, SegmentIndex)> {
    let header = IndexHeader::decode(buf)?;
    if buf.len() as u64 != header.file_len() {
        return None;
    }
    let mut index = SegmentIndex::default();
    let mut pos = INDEX_HEADER_LEN as usize;
    for _ in 0..header.offset_entries {
        let b = &buf[pos..pos + OFFSET_ENTRY_LEN as usize];
        index.offsets.push(OffsetEntry {
            rel_offset: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            position: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        });
        pos += OFFSET_ENTRY_LEN as usize;
    }
    for _ in 0..header.time_entries {
        let b = &buf[pos..pos + TIME_ENTRY_LEN as usize];
        index.times.push(TimeEntry {
            timestamp: i64::from_le_bytes(b[0..8].try_into().unwrap_or_default()),
            rel_offset: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        });
        pos += TIME_ENTRY_LEN as usize;
    }
    Some((header, index))
}

/// An index file opened for in-place lookups.
pub(crate) struct IndexFile {
    file: Arc<dyn FsFile>,
    pub header: IndexHeader,
}

impl IndexFile {
    /// Opens and checks the header; `Ok(None)` when the file is missing,
    /// malformed or does not match `base_offset` and `log_size`.
    pub fn open(fs: &dyn FileSystem, path: &Path, base_offset: u64, log_size: u64) -> io::Result<Option<IndexFile>> {
        let file = match fs.open(path, OpenOptions::READ) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut buf = [0u8; INDEX_HEADER_LEN as usize];
        if file.read_exact_at(&mut buf, 0).is_err() {
            return Ok(None);
        }
        let Some(header) = IndexHeader::decode(&buf) else {
            return Ok(None);
        };
        let len = file.len()?;
        if header.base_offset != base_offset || header.log_size != log_size || len != header.file_len() {
            return Ok(None);
        }
        Ok(Some(IndexFile { file, header }))
    }

    fn offset_entry(&self, i: u32) -> io::Result<OffsetEntry> {
        let mut b = [0u8; OFFSET_ENTRY_LEN as usize];
        self.file.read_exact_at(&mut b, INDEX_HEADER_LEN + u64::from(i) * OFFSET_ENTRY_LEN)?;
        Ok(OffsetEntry {
            rel_offset: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            position: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        })
    }

    fn time_entry(&self, i: u32) -> io::Result<TimeEntry> {
        let mut b = [0u8; TIME_ENTRY_LEN as usize];
        let base = INDEX_HEADER_LEN + u64::from(self.header.offset_entries) * OFFSET_ENTRY_LEN;
        self.file.read_exact_at(&mut b, base + u64::from(i) * TIME_ENTRY_LEN)?;
        Ok(TimeEntry {
            timestamp: i64::from_le_bytes(b[0..8].try_into().unwrap_or_default()),
            rel_offset: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        })
    }

    /// Byte position of the last indexed batch starting at or before `rel`.
    pub fn position_for(&self, rel: u32) -> io::Result<Option<u32>> {
        let last = last_where(self.header.offset_entries, |i| Ok(self.offset_entry(i)?.rel_offset <= rel))?;
        last.map(|i| Ok(self.offset_entry(i)?.position)).transpose()
    }

    /// Relative offset of the last time entry with a timestamp below `ts`.
    pub fn rel_offset_before_time(&self, ts: i64) -> io::Result<Option<u32>> {
        let last = last_where(self.header.time_entries, |i| Ok(self.time_entry(i)?.timestamp < ts))?;
        last.map(|i| Ok(self.time_entry(i)?.rel_offset)).transpose()
    }
}

/// Binary search over entries `0..len` ordered so that `holds` is true up
/// to some entry and false after it: the last entry where it holds.
fn last_where(len: u32, holds: impl Fn(u32) -> io::Result<bool>) -> io::Result<Option<u32>> {
    let (mut lo, mut hi) = (0u32, len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if holds(mid)? {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo.checked_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_file_roundtrip_and_lookups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000100.index");
        let index = SegmentIndex {
            offsets: (0..50).map(|i| OffsetEntry { rel_offset: i * 10, position: 16 + i * 1000 }).collect(),
            times: (0..20).map(|i| TimeEntry { timestamp: 1000 + i64::from(i) * 100, rel_offset: i * 25 }).collect(),
        };
        let header = IndexHeader {
            base_offset: 100,
            next_offset: 600,
            log_size: 50_016,
            max_timestamp: 2900,
            offset_entries: 50,
            time_entries: 20,
        };
        write_index_file(&crate::fs::RealFs, &path, &header, &index, true).unwrap();
        let f = IndexFile::open(&crate::fs::RealFs, &path, 100, 50_016).unwrap().unwrap();
        assert_eq!(f.header, header);
        for rel in [0u32, 5, 10, 11, 489, 499, 10_000] {
            assert_eq!(f.position_for(rel).unwrap(), index.position_for(rel), "rel {rel}");
        }
        for ts in [0i64, 1000, 1001, 1950, 2900, 5000] {
            assert_eq!(f.rel_offset_before_time(ts).unwrap(), index.rel_offset_before_time(ts), "ts {ts}");
        }
        // A mismatching log size or base offset means the index is stale.
        assert!(IndexFile::open(&crate::fs::RealFs, &path, 100, 50_017).unwrap().is_none());
        assert!(IndexFile::open(&crate::fs::RealFs, &path, 101, 50_016).unwrap().is_none());
        // The same bytes decoded in memory (the cold tier's path).
        let (h, decoded) = decode_index(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(h, header);
        assert_eq!(decoded.offsets, index.offsets);
        assert_eq!(decoded.times, index.times);
        assert!(decode_index(&std::fs::read(&path).unwrap()[..100]).is_none(), "truncated");
        // A flipped header byte is detected by the header CRC.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[30] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(IndexFile::open(&crate::fs::RealFs, &path, 100, 50_016).unwrap().is_none());
    }
}
