//! Idempotent-producer state of one partition: per producer id, its epoch,
//! its last sequence and its most recent batches, so that a retried batch is
//! stored once and a zombie with an older epoch is fenced.
//!
//! The state is rebuilt at start-up from a snapshot taken when the active
//! segment was created (`<base>.producers`) plus the batches of the active
//! segment, so it survives restarts without scanning sealed segments.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use strata_proto::batch::BatchHeader;

/// How many recent batches per producer are remembered for duplicate
/// detection (Kafka uses 5, matching its max in-flight requests).
pub(crate) const RECENT_BATCHES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BatchMeta {
    pub base_seq: i32,
    pub last_seq: i32,
    pub base_offset: u64,
    pub last_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProducerState {
    pub epoch: i16,
    pub last_seq: i32,
    pub recent: VecDeque<BatchMeta>,
    pub last_append_ms: i64,
}

/// What to do with an incoming idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    Append,
    Duplicate(BatchMeta),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum SequenceError {
    #[error("producer {producer_id} is fenced: epoch {epoch} is older than the current epoch {current}")]
    Fenced { producer_id: i64, epoch: i16, current: i16 },
    #[error("producer {producer_id} sent sequence {got} where {expected} was expected (a batch is missing)")]
    OutOfOrder { producer_id: i64, expected: i32, got: i32 },
}

fn last_seq_of(h: &BatchHeader) -> i32 {
    h.base_sequence.wrapping_add(h.record_count as i32 - 1)
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProducerTable {
    producers: HashMap<i64, ProducerState>,
}

impl ProducerTable {
    /// Decides whether a batch is new, a duplicate, or refused.
    pub fn check(&self, h: &BatchHeader) -> Result<Check, SequenceError> {
        let pid = h.producer_id;
        let Some(s) = self.producers.get(&pid) else {
            // A producer we know nothing about (new, or its state expired):
            // accept whatever sequence it starts with.
            return Ok(Check::Append);
        };
        if h.producer_epoch < s.epoch {
            return Err(SequenceError::Fenced { producer_id: pid, epoch: h.producer_epoch, current: s.epoch });
        }
        if h.producer_epoch > s.epoch {
            return if h.base_sequence == 0 {
                Ok(Check::Append)
            } else {
                Err(SequenceError::OutOfOrder { producer_id: pid, expected: 0, got: h.base_sequence })
            };
        }
        let last = last_seq_of(h);
        if let Some(m) = s.recent.iter().find(|m| m.base_seq == h.base_sequence && m.last_seq == last) {
            return Ok(Check::Duplicate(*m));
        }
        let expected = s.last_seq.wrapping_add(1);
        if h.base_sequence == expected {
            Ok(Check::Append)
        } else {
            Err(SequenceError::OutOfOrder { producer_id: pid, expected, got: h.base_sequence })
        }
    }

    /// Records a stored batch (its header carries the assigned base offset).
    pub fn record(&mut self, h: &BatchHeader, append_ms: i64) {
        if !h.has_producer_id() {
            return;
        }
        let meta = BatchMeta {
            base_seq: h.base_sequence,
            last_seq: last_seq_of(h),
            base_offset: h.base_offset,
            last_offset: h.last_offset(),
        };
        let s = self.producers.entry(h.producer_id).or_insert_with(|| ProducerState {
            epoch: h.producer_epoch,
            last_seq: -1,
            recent: VecDeque::new(),
            last_append_ms: append_ms,
        });
        if h.producer_epoch != s.epoch {
            s.epoch = h.producer_epoch;
            s.recent.clear();
        }
        s.last_seq = meta.last_seq;
        s.last_append_ms = append_ms;
        s.recent.push_back(meta);
        while s.recent.len() > RECENT_BATCHES {
            s.recent.pop_front();
        }
    }

    /// Forgets producers idle for longer than `max_idle_ms`.
    pub fn expire(&mut self, now_ms: i64, max_idle_ms: i64) {
        self.producers.retain(|_, s| now_ms - s.last_append_ms <= max_idle_ms);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.producers.len()
    }
}

pub(crate) fn snapshot_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.producers"))
}

/// Writes the table as of `base_offset` atomically, and removes older snapshots.
pub(crate) fn write_snapshot(
    fs: &dyn crate::fs::FileSystem,
    dir: &Path,
    base_offset: u64,
    table: &ProducerTable,
    sync: bool,
) -> std::io::Result<()> {
    let path = snapshot_path(dir, base_offset);
    let bytes = serde_json::to_vec(table).map_err(std::io::Error::other)?;
    crate::fsutil::replace(
        fs,
        &path,
        &bytes,
        if sync { crate::fsutil::Sync::Durable } else { crate::fsutil::Sync::Lazy },
    )?;
    for entry in fs.read_dir(dir)? {
        let Some(name) = entry.file_name() else { continue };
        let Some(base) = name.to_str().and_then(|n| n.strip_suffix(".producers")).and_then(|b| b.parse::<u64>().ok())
        else {
            continue;
        };
        if base < base_offset {
            let _ = fs.remove_file(&entry);
        }
    }
    Ok(())
}

/// Loads the snapshot taken at `base_offset`; empty when there is none or it
/// is unreadable (the state is then rebuilt from the active segment only,
/// which can only make the broker more accepting, never lose data).
pub(crate) fn load_snapshot(fs: &dyn crate::fs::FileSystem, dir: &Path, base_offset: u64) -> ProducerTable {
    fs.read(&snapshot_path(dir, base_offset)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: i64, epoch: i16, base_seq: i32, count: u32, base_offset: u64) -> BatchHeader {
        BatchHeader {
            base_offset,
            batch_len: 0,
            leader_epoch: 0,
            magic: 1,
            crc: 0,
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: base_seq,
            record_count: count,
        }
    }

    #[test]
    fn duplicates_gaps_and_fencing() {
        let mut t = ProducerTable::default();
        assert_eq!(t.check(&header(7, 0, 0, 3, 0)).unwrap(), Check::Append);
        t.record(&header(7, 0, 0, 3, 0), 1);
        t.record(&header(7, 0, 3, 2, 3), 1);
        // A retry of either recent batch is a duplicate with its offsets.
        assert_eq!(
            t.check(&header(7, 0, 0, 3, 99)).unwrap(),
            Check::Duplicate(BatchMeta { base_seq: 0, last_seq: 2, base_offset: 0, last_offset: 2 })
        );
        assert!(matches!(t.check(&header(7, 0, 3, 2, 99)).unwrap(), Check::Duplicate(_)));
        assert_eq!(t.check(&header(7, 0, 5, 1, 99)).unwrap(), Check::Append);
        assert_eq!(
            t.check(&header(7, 0, 9, 1, 99)).unwrap_err(),
            SequenceError::OutOfOrder { producer_id: 7, expected: 5, got: 9 }
        );
        // A new epoch starts at 0 and fences the old one.
        t.record(&header(7, 1, 0, 1, 5), 2);
        assert!(matches!(t.check(&header(7, 0, 5, 1, 99)).unwrap_err(), SequenceError::Fenced { current: 1, .. }));
        assert!(matches!(t.check(&header(7, 2, 4, 1, 99)).unwrap_err(), SequenceError::OutOfOrder { expected: 0, .. }));
        // Only the last five batches are remembered.
        for i in 1..=6 {
            t.record(&header(7, 1, i, 1, 5 + i as u64), 3);
        }
        assert!(matches!(t.check(&header(7, 1, 1, 1, 0)).unwrap_err(), SequenceError::OutOfOrder { .. }));
        assert!(matches!(t.check(&header(7, 1, 6, 1, 0)).unwrap(), Check::Duplicate(_)));
        t.expire(1_000, 10);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn snapshots_roundtrip_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = ProducerTable::default();
        t.record(&header(1, 0, 0, 2, 0), 5);
        write_snapshot(&crate::fs::RealFs, dir.path(), 10, &t, true).unwrap();
        write_snapshot(&crate::fs::RealFs, dir.path(), 20, &t, true).unwrap();
        assert!(!snapshot_path(dir.path(), 10).exists());
        assert_eq!(load_snapshot(&crate::fs::RealFs, dir.path(), 20), t);
        assert_eq!(load_snapshot(&crate::fs::RealFs, dir.path(), 30), ProducerTable::default());
    }
}
