//! Work queues: per-message acknowledgement, visibility timeouts, retries,
//! dead-letter queues, delay, TTL, priorities, FIFO groups, deduplication,
//! bindings from topics, and temporary reply queues.
//!
//! Each queue is two partition logs plus a snapshot (see `README.md` beside
//! this file for the state machine and why it is durable):
//! - `messages/`: the messages, one record each, id = offset;
//! - `journal/`: what happened to them (acked, dead-lettered, expired,
//!   delivery counts, retry times);
//! - `state.snap`: the journal folded up to some offset, so that both logs
//!   can be trimmed.
//!
//! [`state::QueueState`] decides (pure, time injected); [`QueueManager`]
//! owns the files, the timers and the routers.

mod admin;
mod codec;
mod dead_letter;
mod delivery;
mod persist;
mod recent;
mod routing;
mod state;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use strata_proto::batch::{BatchBuilder, BatchIter, Compression, Record, RecordHeader};
use strata_proto::v1::{MessageHeader, OutgoingMessage, Receipt, ReceivedMessage};
use tokio::sync::Notify;

use crate::broker::Broker;
use crate::catalog::{Applied, BindingFilter, CatalogCommand, QueueRecord, QueueSettings, TtlAction, queue_dir};
use crate::clock::now_ms;
use crate::error::BrokerError;
use crate::locks::{read_lock, write_lock};
use crate::log::{Durability, LogConfig, LogError, PartitionLog};
use crate::names::{TenantName, parse_queue_name};
pub use codec::fuzzing as codec_fuzzing;
use codec::{JournalEntry, META_HEADER, MessageMeta, Snapshot};
pub(crate) use routing::validate_filter;
use state::{Finish, MessageInfo, Outcome, QueueState, ReceiptError};

/// Reply queues (`OpenReplyQueue`) are named this plus 16 hex digits.
pub(crate) const REPLY_PREFIX: &str = "reply-";

/// Longest delay, TTL, visibility timeout or backoff accepted.
pub(crate) const MAX_DURATION_MS: i64 = 365 * 24 * 3600 * 1000;
/// Longest lease (SQS's limit).
const MAX_VISIBILITY_MS: i64 = 12 * 3600 * 1000;
const MAX_RECEIVE: usize = 1000;
const MAX_PRIORITIES: u32 = 255;
/// Headers the broker adds to dead-lettered messages.
pub(crate) const H_REASON: &str = "x-strata-dead-letter-reason";
pub(crate) const H_SOURCE: &str = "x-strata-dead-letter-source";
pub(crate) const H_ORIGINAL_ID: &str = "x-strata-original-message-id";
pub(crate) const H_DELIVERIES: &str = "x-strata-delivery-count";
pub(crate) const H_ENQUEUED: &str = "x-strata-original-enqueued-at";

/// Settings a client asked for; `None` = default (create) or unchanged (update).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueOverrides {
    pub visibility_timeout_ms: Option<i64>,
    pub max_deliveries: Option<u32>,
    /// `Some("")` removes the dead-letter queue.
    pub dead_letter_queue: Option<String>,
    pub retry_backoff_min_ms: Option<i64>,
    pub retry_backoff_max_ms: Option<i64>,
    pub delay_ms: Option<i64>,
    pub ttl_ms: Option<i64>,
    pub ttl_action: Option<TtlAction>,
    pub fifo: Option<bool>,
    pub dedup_window_ms: Option<i64>,
    pub priorities: Option<u32>,
    pub durability: Option<Durability>,
}

/// A queue as clients see it.
#[derive(Debug, Clone)]
pub struct QueueView {
    pub tenant: String,
    pub name: String,
    pub id: u64,
    pub settings: QueueSettings,
    pub created_at_ms: i64,
    pub stats: state::Stats,
    pub bindings: Vec<crate::catalog::BindingRecord>,
    pub temporary: bool,
}

/// A message to enqueue, already validated.
#[derive(Debug, Clone)]
struct NewMessage {
    key: Option<Bytes>,
    body: Bytes,
    headers: Vec<(String, Bytes)>,
    meta: MessageMeta,
}

/// The result of one sent message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub id: u64,
    pub duplicate: bool,
}

struct Inner {
    q: QueueState,
    /// Journal entries appended since the last snapshot.
    since_snapshot: u64,
}

pub(crate) struct Queue {
    tenant: String,
    name: String,
    id: u64,
    dir: PathBuf,
    created_at_ms: i64,
    temporary: bool,
    inner: Mutex<Inner>,
    messages: Arc<PartitionLog>,
    journal: Arc<PartitionLog>,
    /// Receivers wait here for visible messages.
    visible: Notify,
    /// The timer waits here for earlier deadlines.
    changed: Notify,
    closed: AtomicBool,
    metrics: Arc<crate::metrics::Metrics>,
    /// Recently sent messages (a cache in front of `messages`).
    recent: Mutex<recent::RecentMessages>,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn recent(&self) -> MutexGuard<'_, recent::RecentMessages> {
        lock(&self.recent)
    }

    fn label(&self) -> String {
        format!("{}/{}", self.tenant, self.name)
    }

    fn log_error(&self, source: LogError) -> BrokerError {
        BrokerError::Log { resource: self.label(), source }
    }

    /// Appends a journal entry (with the state lock held, so that snapshots
    /// taken under the lock match the journal exactly). Returns the offset
    /// after it, to wait for durability.
    fn journal(&self, inner: &mut Inner, entry: &JournalEntry) -> Result<u64, BrokerError> {
        self.journal_with(inner, entry, true)
    }

    /// Journals an entry without asking for an fsync of its own: it becomes
    /// durable with the next journal write that asks (an ack, a nack, a
    /// timer's outcome) or at a flush. For delivery counts only: a crash may
    /// under-count a delivery, never lose an ack.
    fn journal_lazily(&self, inner: &mut Inner, entry: &JournalEntry) -> Result<u64, BrokerError> {
        self.journal_with(inner, entry, false)
    }

    fn journal_with(&self, inner: &mut Inner, entry: &JournalEntry, sync: bool) -> Result<u64, BrokerError> {
        if entry.is_empty() {
            return Ok(0);
        }
        let mut b = BatchBuilder::new(Compression::None);
        b.push(now_ms(), None, Some(&entry.encode_to_vec()), &[]);
        let batch = b.finish().expect("one record");
        let header = strata_proto::batch::BatchHeader::parse(&batch)
            .map_err(|source| BrokerError::Batch { resource: self.label(), source })?;
        let mut owned = batch.to_vec();
        let appended = if sync {
            self.journal.append(&mut owned, &header, now_ms())
        } else {
            self.journal.append_lazily(&mut owned, &header, now_ms())
        }
        .map_err(|e| self.log_error(e))?;
        inner.since_snapshot += 1;
        Ok(appended.last_offset + 1)
    }

    fn wake(&self, woke: bool) {
        if woke {
            self.visible.notify_waiters();
        }
        self.changed.notify_one();
    }

    fn durability(&self) -> Durability {
        self.lock().q.settings().durability
    }
}

fn log_config(durability: Durability, segment_bytes: u64, interval: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        // Idle segments roll so that finished ones can be removed.
        segment_ms: 10 * 60 * 1000,
        retention_ms: -1,
        retention_bytes: -1,
        durability,
        replicated: false,
        index_interval_bytes: interval,
        // Queue logs stay local: finished segments are trimmed instead.
        local_retention_ms: -1,
        local_retention_bytes: -1,
        tiered: false,
    }
}

/// Owns every queue: files, timers, routers.
pub struct QueueManager {
    broker: Arc<Broker>,
    queues: RwLock<HashMap<(String, String), Arc<Queue>>>,
    /// Serialises administration (create/delete/bind) with file changes.
    admin: tokio::sync::Mutex<()>,
    routers: Mutex<HashMap<u64, tokio::sync::watch::Sender<bool>>>,
    /// What the queues' recent-message caches share.
    cache: Arc<recent::CacheBudget>,
}

impl std::fmt::Debug for QueueManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueManager").finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl QueueManager {
    pub(crate) fn queue(&self, tenant: &str, name: &str) -> Result<Arc<Queue>, BrokerError> {
        let tenant = TenantName::resolve(tenant)?;
        let name = parse_queue_name(name)?;
        self.broker.check_queue_owner(tenant.as_str(), &name)?;
        read_lock(&self.queues)
            .get(&(tenant.to_string(), name.clone()))
            .cloned()
            .ok_or_else(|| crate::catalog::CatalogError::UnknownQueue { tenant: tenant.to_string(), name }.into())
    }

    // ---- administration ------------------------------------------------

    pub(crate) fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    // ---- send --------------------------------------------------------------
}

pub(super) fn check_duration(field: &str, v: i64) -> Result<(), BrokerError> {
    if !(0..=MAX_DURATION_MS).contains(&v) {
        return Err(BrokerError::InvalidQueueConfig(format!(
            "{field} must be between 0 and {MAX_DURATION_MS} ms (365 days), got {v}"
        )));
    }
    Ok(())
}

/// A random 64-bit value for temporary names (no need for a crypto RNG).
pub(super) fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(now_ms());
    h.finish()
}
