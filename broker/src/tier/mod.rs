//! Tiered storage: sealed segments of tiered topics (those with a local
//! retention) are uploaded to an object store, and reads below the local
//! start offset are served from there transparently.
//!
//! Parts: `store` (URL → `Arc<dyn ObjectStore>`, start-up probe),
//! `manifest` (per-partition manifest and remote layout), `upload` (one
//! segment up, then the manifest), `remote` (one partition's tier: reads,
//! cache, read-ahead, total retention, orphan clean-up). The upload loop that
//! drives them lives in `broker/maintenance.rs` and `partition/`; `tier`
//! depends on the log's sealed segments only, never on the partition.
//!
//! Architecture invariants:
//! - A local segment is deleted only after a durable manifest names it (and
//!   once local retention says so); total retention may delete an expired
//!   segment that never made it up.
//! - Remote objects are written before the manifest names them and deleted
//!   after a manifest without them is durable; anything else is an orphan,
//!   removed at start-up.
//! - Every remote batch is CRC-checked before it is served.
//! - Memory is bounded by `tier.cache_bytes` (read path) and by
//!   `tier.upload_concurrency` × part size (uploads), not by data size.

pub(crate) mod manifest;
pub(crate) mod remote;
pub(crate) mod store;
pub(crate) mod upload;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use object_store::path::Path;

use crate::config::TierConfig;
pub(crate) use remote::{BlockCache, RemotePartition};
pub(crate) use store::ColdStore;
pub(crate) use upload::{UploadLimits, upload_segment};

/// Failures of the cold tier.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    #[error("invalid cold-store URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cold store {url} is not usable (check the bucket, endpoint and credentials): {reason}")]
    Unusable { url: String, reason: String },
    #[error("object store request for {key} failed: {reason}")]
    Store { key: String, reason: String, not_found: bool },
    #[error("corrupt remote object {key} at byte {position}: {reason}")]
    Corrupt { key: String, position: u64, reason: String },
    #[error("invalid manifest {key}: {reason}")]
    Manifest { key: String, reason: String },
    #[error("local file {path}: {source}")]
    Local { path: PathBuf, source: std::io::Error },
}

pub(crate) fn store_error(key: &Path, e: object_store::Error) -> TierError {
    let not_found = matches!(e, object_store::Error::NotFound { .. });
    TierError::Store { key: key.to_string(), reason: store::one_line(&e), not_found }
}

/// The broker's cold tier: the store, the shared read cache, and the upload
/// backlog that produce requests are checked against.
#[derive(Debug)]
pub(crate) struct Tier {
    pub store: Arc<ColdStore>,
    pub cache: Arc<BlockCache>,
    pub config: TierConfig,
    /// Bytes of tiered partitions not yet uploaded (recomputed by the upload loop).
    backlog: AtomicU64,
    /// The last upload failure, cleared by the next success.
    last_error: Mutex<Option<String>>,
}

impl Tier {
    /// Opens the store named by the configuration and probes it; `None`
    /// when the cold tier is switched off.
    pub async fn open(config: &TierConfig, data_dir: &std::path::Path) -> Result<Option<Tier>, TierError> {
        if !config.enabled() {
            return Ok(None);
        }
        let url = config.cold_store_url(data_dir);
        let store = ColdStore::open(&url, config)?;
        store.probe().await?;
        Ok(Some(Tier {
            store: Arc::new(store),
            cache: Arc::new(BlockCache::new(config.cache_bytes.0, config.read_block_bytes.0)),
            config: config.clone(),
            backlog: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }))
    }

    pub fn limits(&self) -> UploadLimits {
        UploadLimits {
            multipart_threshold: self.config.multipart_threshold.0,
            part_bytes: self.config.multipart_part_bytes.0,
            part_concurrency: 2,
        }
    }

    pub fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Acquire)
    }

    pub fn set_backlog(&self, bytes: u64) {
        self.backlog.store(bytes, Ordering::Release);
    }

    pub fn budget(&self) -> u64 {
        self.config.max_pending_bytes.0
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_last_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }
}
