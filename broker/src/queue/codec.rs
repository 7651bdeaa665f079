//! How queue messages, journal entries and state snapshots are encoded.
//!
//! - A queue message is one record of the queue's message log (the same
//!   batch format as topics): key = routing key, value = body, the user's
//!   headers, plus one reserved header `:meta` holding [`MessageMeta`]
//!   (priority, group, dedup id, delay, expiry, reply-to, correlation id).
//!   User header keys may not start with `:`.
//! - A journal entry is one record of the queue's journal log holding a
//!   [`JournalEntry`]: finished ids, delivery counts, retry times.
//! - A snapshot (`state.snap`) is `STRATAQS` + version + CRC32C + length +
//!   [`Snapshot`], replaced atomically.

use std::path::Path;

use bytes::Bytes;
use prost::Message;
use strata_proto::batch::Record;

pub(crate) const META_HEADER: &str = ":meta";

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MessageMeta {
    #[prost(uint32, tag = "1")]
    pub priority: u32,
    #[prost(string, tag = "2")]
    pub group: String,
    #[prost(string, tag = "3")]
    pub dedup_id: String,
    #[prost(int64, tag = "4")]
    pub not_before: i64,
    /// 0 = never.
    #[prost(int64, tag = "5")]
    pub expires_at: i64,
    #[prost(string, tag = "6")]
    pub reply_to: String,
    #[prost(string, tag = "7")]
    pub correlation_id: String,
}

impl MessageMeta {
    pub fn of(record: &Record) -> MessageMeta {
        record.header(META_HEADER).and_then(|b| MessageMeta::decode(b.as_ref()).ok()).unwrap_or_default()
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct JournalEntry {
    #[prost(uint64, repeated, tag = "1")]
    pub acked: Vec<u64>,
    #[prost(uint64, repeated, tag = "2")]
    pub dead_lettered: Vec<u64>,
    #[prost(uint64, repeated, tag = "3")]
    pub expired: Vec<u64>,
    /// Dropped after max deliveries without a dead-letter queue.
    #[prost(uint64, repeated, tag = "4")]
    pub dropped: Vec<u64>,
    #[prost(uint64, repeated, tag = "5")]
    pub delivered_ids: Vec<u64>,
    #[prost(uint32, repeated, tag = "6")]
    pub delivered_counts: Vec<u32>,
    #[prost(uint64, repeated, tag = "7")]
    pub retry_ids: Vec<u64>,
    #[prost(int64, repeated, tag = "8")]
    pub retry_at: Vec<i64>,
    /// Every id below this is finished (purge).
    #[prost(uint64, tag = "9")]
    pub purged_below: u64,
}

impl JournalEntry {
    pub fn is_empty(&self) -> bool {
        self.acked.is_empty()
            && self.dead_lettered.is_empty()
            && self.expired.is_empty()
            && self.dropped.is_empty()
            && self.delivered_ids.is_empty()
            && self.retry_ids.is_empty()
            && self.purged_below == 0
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Snapshot {
    /// Journal entries below this offset are reflected here.
    #[prost(uint64, tag = "1")]
    pub journal_end: u64,
    /// Message ids below this were all known when the snapshot was taken.
    #[prost(uint64, tag = "2")]
    pub next_id: u64,
    /// Every id below this is finished.
    #[prost(uint64, tag = "3")]
    pub low_watermark: u64,
    /// Finished ranges [start, end) between the low watermark and `next_id`.
    #[prost(uint64, repeated, tag = "4")]
    pub finished_starts: Vec<u64>,
    #[prost(uint64, repeated, tag = "5")]
    pub finished_ends: Vec<u64>,
    #[prost(uint64, repeated, tag = "6")]
    pub state_ids: Vec<u64>,
    #[prost(uint32, repeated, tag = "7")]
    pub state_deliveries: Vec<u32>,
    #[prost(int64, repeated, tag = "8")]
    pub state_retry_at: Vec<i64>,
    #[prost(uint64, tag = "9")]
    pub acked: u64,
    #[prost(uint64, tag = "10")]
    pub dead_lettered: u64,
    #[prost(uint64, tag = "11")]
    pub expired: u64,
}

const SNAPSHOT_MAGIC: &[u8; 8] = b"STRATAQS";
const SNAPSHOT_VERSION: u32 = 1;

/// Writes `snap` to `path` atomically (temp file, fsync, rename, fsync dir).
pub(crate) fn write_snapshot(fs: &dyn crate::fs::FileSystem, path: &Path, snap: &Snapshot) -> std::io::Result<()> {
    crate::fsutil::replace(fs, path, &encode_snapshot(snap), crate::fsutil::Sync::Durable)
}

/// Reads a snapshot; `Ok(None)` when there is none.
pub(crate) fn read_snapshot(fs: &dyn crate::fs::FileSystem, path: &Path) -> std::io::Result<Option<Snapshot>> {
    let buf = match fs.read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    decode_snapshot(&buf)
        .map(Some)
        .map_err(|why| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {why}", path.display())))
}

/// Decodes the bytes of a snapshot file: header, checksum, payload.
pub(crate) fn decode_snapshot(buf: &[u8]) -> Result<Snapshot, String> {
    if buf.len() < 20 || &buf[..8] != SNAPSHOT_MAGIC {
        return Err("not a queue snapshot".into());
    }
    let word = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let version = word(8);
    if version != SNAPSHOT_VERSION {
        return Err(format!("unsupported snapshot version {version}"));
    }
    let crc = word(12);
    let len = word(16) as usize;
    let payload = buf.get(20..20 + len).ok_or("truncated")?;
    if crc32c::crc32c(payload) != crc {
        return Err("checksum mismatch".into());
    }
    Snapshot::decode(payload).map_err(|e| e.to_string())
}

/// Encodes a snapshot file's bytes (what [`decode_snapshot`] reads).
pub(crate) fn encode_snapshot(snap: &Snapshot) -> Vec<u8> {
    let payload = snap.encode_to_vec();
    let mut buf = Vec::with_capacity(payload.len() + 20);
    buf.extend_from_slice(SNAPSHOT_MAGIC);
    buf.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    buf.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&payload);
    buf
}

/// Encodes `meta` for the `:meta` header.
pub(crate) fn encode_meta(meta: &MessageMeta) -> Bytes {
    Bytes::from(meta.encode_to_vec())
}

/// Entry points of the fuzz targets (`fuzz/fuzz_targets/queue_codecs.rs`):
/// whatever the bytes, decoding never panics, and what decodes re-encodes
/// to something that decodes to the same value.
pub mod fuzzing {
    use super::*;

    pub fn snapshot(bytes: &[u8]) {
        if let Ok(snap) = decode_snapshot(bytes) {
            assert_eq!(decode_snapshot(&encode_snapshot(&snap)).as_ref(), Ok(&snap));
        }
    }

    pub fn journal_entry(bytes: &[u8]) {
        if let Ok(e) = JournalEntry::decode(bytes) {
            assert_eq!(JournalEntry::decode(e.encode_to_vec().as_slice()).as_ref(), Ok(&e));
        }
    }

    pub fn message_meta(bytes: &[u8]) {
        if let Ok(m) = MessageMeta::decode(bytes) {
            assert_eq!(MessageMeta::decode(encode_meta(&m).as_ref()).as_ref(), Ok(&m));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// The fuzz targets' properties on random bytes (the fuzzer goes
        /// further; this keeps them checked in every test run).
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            fuzzing::snapshot(&bytes);
            fuzzing::journal_entry(&bytes);
            fuzzing::message_meta(&bytes);
        }

        #[test]
        fn snapshots_round_trip_and_any_flipped_byte_is_refused(
            ids in proptest::collection::vec(any::<u64>(), 0..16),
            flip in any::<prop::sample::Index>(),
        ) {
            let snap = Snapshot {
                journal_end: 7,
                next_id: 99,
                state_deliveries: ids.iter().map(|&i| i as u32).collect(),
                state_retry_at: ids.iter().map(|&i| i as i64).collect(),
                state_ids: ids,
                ..Snapshot::default()
            };
            let mut bytes = encode_snapshot(&snap);
            prop_assert_eq!(decode_snapshot(&bytes), Ok(snap.clone()));
            let i = flip.index(bytes.len());
            bytes[i] ^= 0x40;
            prop_assert!(decode_snapshot(&bytes).is_err(), "a flipped byte at {} was accepted", i);
        }
    }
}
