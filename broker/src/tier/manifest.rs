//! The per-partition manifest: which segments the cold tier holds, and the
//! deterministic object keys of a partition's objects.
//!
//! Remote layout, under the store's prefix:
//!
//! ```text
//! <tenant>/<topic>.<topic-id>/<partition>/manifest.json
//! <tenant>/<topic>.<topic-id>/<partition>/<base:020>.log     segment bytes, as on disk
//! <tenant>/<topic>.<topic-id>/<partition>/<base:020>.index   its .index file, as on disk
//! ```
//!
//! `manifest.json` is a JSON object `{"format": "strata-tier-manifest",
//! "version": 1, "segments": [...]}`; each segment names its offsets, sizes
//! and max timestamp. It is replaced whole by one put (atomic in every
//! backend), so a reader sees the old or the new manifest, never a mix.
//!
//! Invariant: an object is *part of the tier* only once the manifest names
//! it. Segment objects are written before the manifest that names them and
//! deleted only after a manifest that no longer names them is durable;
//! anything else under the partition's prefix is an orphan of an interrupted
//! upload or deletion, removed at start-up.

use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

pub(crate) const MANIFEST_FORMAT: &str = "strata-tier-manifest";
pub(crate) const MANIFEST_VERSION: u32 = 1;
pub(crate) const MANIFEST_NAME: &str = "manifest.json";

/// One uploaded segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RemoteSegment {
    pub base_offset: u64,
    /// One past the segment's last offset.
    pub next_offset: u64,
    /// Bytes of the `.log` object (segment header included).
    pub log_size: u64,
    pub index_size: u64,
    pub max_timestamp: i64,
    pub uploaded_at_ms: i64,
}

/// The segments of one partition in the cold tier, in offset order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Manifest {
    pub format: String,
    pub version: u32,
    pub segments: Vec<RemoteSegment>,
}

impl Manifest {
    pub fn empty() -> Manifest {
        Manifest { format: MANIFEST_FORMAT.into(), version: MANIFEST_VERSION, segments: Vec::new() }
    }

    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec_pretty(self).unwrap_or_default())
    }

    /// Decodes and checks a manifest: format, version, and segments in
    /// strictly increasing, non-overlapping offset order.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, String> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if m.format != MANIFEST_FORMAT {
            return Err(format!("format {:?} is not {MANIFEST_FORMAT:?}", m.format));
        }
        if m.version != MANIFEST_VERSION {
            return Err(format!("version {} is not supported (this broker reads {MANIFEST_VERSION})", m.version));
        }
        let mut end = 0u64;
        for (i, s) in m.segments.iter().enumerate() {
            if s.next_offset <= s.base_offset || (i > 0 && s.base_offset < end) {
                return Err(format!("segment {} overlaps or is empty", s.base_offset));
            }
            end = s.next_offset;
        }
        Ok(m)
    }

    pub fn start(&self) -> Option<u64> {
        self.segments.first().map(|s| s.base_offset)
    }

    /// One past the last uploaded offset (0 when nothing is uploaded).
    pub fn end(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.next_offset)
    }

    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.log_size + s.index_size).sum()
    }

    /// The segment holding `offset`, or the first one after it when
    /// `offset` falls in a gap; `None` past the end.
    pub fn segment_at_or_after(&self, offset: u64) -> Option<&RemoteSegment> {
        let i = self.segments.partition_point(|s| s.next_offset <= offset);
        self.segments.get(i)
    }
}

/// The key prefix of one partition's objects.
pub(crate) fn partition_prefix(tenant: &str, topic: &str, topic_id: u64, partition: u32) -> Path {
    Path::from_iter([tenant.to_owned(), format!("{topic}.{topic_id}"), partition.to_string()])
}

pub(crate) fn manifest_key(prefix: &Path) -> Path {
    prefix.clone().join(MANIFEST_NAME)
}

pub(crate) fn log_key(prefix: &Path, base_offset: u64) -> Path {
    prefix.clone().join(format!("{base_offset:020}.log"))
}

pub(crate) fn index_key(prefix: &Path, base_offset: u64) -> Path {
    prefix.clone().join(format!("{base_offset:020}.index"))
}
