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

mod codec;
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
use strata_proto::batch::{BatchBuilder, BatchIter, Compression, Record};
use strata_proto::v1::{MessageHeader, OutgoingMessage, Receipt, ReceivedMessage};
use tokio::sync::Notify;

use crate::broker::{Broker, now_ms, read_lock, write_lock};
use crate::catalog::{Applied, BindingFilter, CatalogCommand, QueueRecord, QueueSettings, TtlAction, queue_dir};
use crate::error::BrokerError;
use crate::log::{Durability, LogConfig, LogError, PartitionLog};
use crate::names::{TenantName, parse_queue_name};
use codec::{JournalEntry, META_HEADER, MessageMeta, Snapshot};
pub(crate) use routing::validate_filter;
use state::{Finish, MessageInfo, Outcome, QueueState, ReceiptError};

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
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
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
        if entry.is_empty() {
            return Ok(0);
        }
        let mut b = BatchBuilder::new(Compression::None);
        b.push(now_ms(), None, Some(&entry.encode_to_vec()), &[]);
        let batch = b.finish().expect("one record");
        let header = strata_proto::batch::BatchHeader::parse(&batch)
            .map_err(|source| BrokerError::Batch { resource: self.label(), source })?;
        let mut owned = batch.to_vec();
        let appended = self.journal.append(&mut owned, &header, now_ms()).map_err(|e| self.log_error(e))?;
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
        index_interval_bytes: interval,
    }
}

/// Owns every queue: files, timers, routers.
pub struct QueueManager {
    broker: Arc<Broker>,
    queues: RwLock<HashMap<(String, String), Arc<Queue>>>,
    /// Serialises administration (create/delete/bind) with file changes.
    admin: tokio::sync::Mutex<()>,
    routers: Mutex<HashMap<u64, tokio::sync::watch::Sender<bool>>>,
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
    /// Opens (recovers) every queue in the catalog, removes temporary queues
    /// left by a previous run, and starts timers and routers.
    pub async fn open(broker: Arc<Broker>) -> Result<Arc<QueueManager>, BrokerError> {
        let catalog = broker.catalog_snapshot().await;
        let mgr = Arc::new(QueueManager {
            broker: broker.clone(),
            queues: RwLock::new(HashMap::new()),
            admin: tokio::sync::Mutex::new(()),
            routers: Mutex::new(HashMap::new()),
        });
        let data = broker.config().storage.data_dir.clone();
        let mut expected = HashSet::new();
        for (tenant, t) in &catalog.tenants {
            for (name, record) in &t.queues {
                let dir = queue_dir(&data, tenant, name, record.id);
                if record.temporary {
                    broker
                        .commit_catalog(&CatalogCommand::DeleteQueue { tenant: tenant.clone(), name: name.clone() })
                        .await?;
                    let _ = std::fs::remove_dir_all(&dir);
                    continue;
                }
                expected.insert(dir.clone());
                let q = mgr.open_queue(tenant, name, record).await?;
                write_lock(&mgr.queues).insert((tenant.clone(), name.clone()), q);
            }
        }
        remove_orphans(&data.join("queues"), &expected);
        for ((tenant, name), q) in read_lock(&mgr.queues).clone() {
            tokio::spawn(mgr.clone().run_timer(q));
            if let Some(record) = catalog.tenants.get(&tenant).and_then(|t| t.queues.get(&name)) {
                for b in &record.bindings {
                    mgr.start_router(&tenant, &name, b.clone());
                }
            }
        }
        Ok(mgr)
    }

    async fn open_queue(&self, tenant: &str, name: &str, record: &QueueRecord) -> Result<Arc<Queue>, BrokerError> {
        let cfg = self.broker.config();
        let dir = queue_dir(&cfg.storage.data_dir, tenant, name, record.id);
        let (segment_bytes, interval) = (cfg.topic_defaults.segment_bytes.0, cfg.storage.index_interval_bytes.0);
        let settings = record.settings.clone();
        let label = format!("{tenant}/{name}");
        let d = dir.clone();
        let opened = tokio::task::spawn_blocking(move || recover(&d, settings, segment_bytes, interval))
            .await
            .map_err(|e| BrokerError::InvalidRequest(format!("queue open task failed: {e}")))?
            .map_err(|source| BrokerError::Log { resource: label, source })?;
        let (messages, journal, q) = opened;
        tokio::spawn(messages.clone().run_syncer());
        tokio::spawn(journal.clone().run_syncer());
        Ok(Arc::new(Queue {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            id: record.id,
            dir,
            created_at_ms: record.created_at_ms,
            temporary: record.temporary,
            inner: Mutex::new(Inner { q, since_snapshot: 0 }),
            messages,
            journal,
            visible: Notify::new(),
            changed: Notify::new(),
            closed: AtomicBool::new(false),
            metrics: self.broker.metrics().clone(),
        }))
    }

    pub(crate) fn queue(&self, tenant: &str, name: &str) -> Result<Arc<Queue>, BrokerError> {
        let tenant = TenantName::resolve(tenant)?;
        let name = parse_queue_name(name)?;
        read_lock(&self.queues)
            .get(&(tenant.to_string(), name.clone()))
            .cloned()
            .ok_or_else(|| crate::catalog::CatalogError::UnknownQueue { tenant: tenant.to_string(), name }.into())
    }

    // ---- administration ------------------------------------------------

    fn defaults(&self) -> QueueSettings {
        QueueSettings {
            visibility_timeout_ms: 30_000,
            max_deliveries: 0,
            dead_letter_queue: None,
            retry_backoff_min_ms: 0,
            retry_backoff_max_ms: 0,
            delay_ms: 0,
            ttl_ms: 0,
            ttl_action: TtlAction::Drop,
            fifo: false,
            dedup_window_ms: 0,
            priorities: 1,
            durability: self.broker.config().topic_defaults.durability,
        }
    }

    fn resolve(base: &QueueSettings, o: &QueueOverrides) -> Result<QueueSettings, BrokerError> {
        let dead_letter_queue = match &o.dead_letter_queue {
            None => base.dead_letter_queue.clone(),
            Some(q) if q.is_empty() => None,
            Some(q) => Some(parse_queue_name(q)?),
        };
        let max_deliveries = match (o.max_deliveries, &dead_letter_queue, &base.dead_letter_queue) {
            (Some(m), _, _) => m,
            // A dead-letter queue without a limit would never be used: SQS's usual 5.
            (None, Some(_), None) if base.max_deliveries == 0 => 5,
            (None, _, _) => base.max_deliveries,
        };
        let s = QueueSettings {
            visibility_timeout_ms: o.visibility_timeout_ms.unwrap_or(base.visibility_timeout_ms),
            max_deliveries,
            dead_letter_queue,
            retry_backoff_min_ms: o.retry_backoff_min_ms.unwrap_or(base.retry_backoff_min_ms),
            retry_backoff_max_ms: o.retry_backoff_max_ms.unwrap_or(base.retry_backoff_max_ms),
            delay_ms: o.delay_ms.unwrap_or(base.delay_ms),
            ttl_ms: o.ttl_ms.unwrap_or(base.ttl_ms),
            ttl_action: o.ttl_action.unwrap_or(base.ttl_action),
            fifo: o.fifo.unwrap_or(base.fifo),
            dedup_window_ms: o.dedup_window_ms.unwrap_or(base.dedup_window_ms),
            priorities: o.priorities.unwrap_or(base.priorities),
            durability: o.durability.unwrap_or(base.durability),
        };
        let bad = |m: String| Err(BrokerError::InvalidQueueConfig(m));
        if !(1..=MAX_VISIBILITY_MS).contains(&s.visibility_timeout_ms) {
            return bad(format!(
                "visibility_timeout_ms must be between 1 and {MAX_VISIBILITY_MS} (12 h), got {}",
                s.visibility_timeout_ms
            ));
        }
        for (field, v) in [
            ("retry_backoff_min_ms", s.retry_backoff_min_ms),
            ("retry_backoff_max_ms", s.retry_backoff_max_ms),
            ("delay_ms", s.delay_ms),
            ("ttl_ms", s.ttl_ms),
            ("dedup_window_ms", s.dedup_window_ms),
        ] {
            check_duration(field, v)?;
        }
        if s.retry_backoff_max_ms < s.retry_backoff_min_ms {
            return bad(format!(
                "retry_backoff_max_ms ({}) must be at least retry_backoff_min_ms ({})",
                s.retry_backoff_max_ms, s.retry_backoff_min_ms
            ));
        }
        if !(1..=MAX_PRIORITIES).contains(&s.priorities) {
            return bad(format!("priorities must be between 1 and {MAX_PRIORITIES}, got {}", s.priorities));
        }
        if s.fifo && s.priorities > 1 {
            return bad("a FIFO queue keeps order per group and cannot also have priorities".into());
        }
        if s.ttl_action == TtlAction::DeadLetter && s.dead_letter_queue.is_none() {
            return bad("ttl_action dead_letter needs a dead_letter_queue".into());
        }
        Ok(s)
    }

    pub async fn create_queue(
        self: &Arc<Self>,
        tenant: &str,
        name: &str,
        overrides: QueueOverrides,
        if_not_exists: bool,
    ) -> Result<QueueView, BrokerError> {
        let tenant = TenantName::resolve(tenant)?;
        let name = parse_queue_name(name)?;
        let settings = Self::resolve(&self.defaults(), &overrides)?;
        self.create(tenant.as_str(), &name, settings, false, if_not_exists).await
    }

    async fn create(
        self: &Arc<Self>,
        tenant: &str,
        name: &str,
        settings: QueueSettings,
        temporary: bool,
        if_not_exists: bool,
    ) -> Result<QueueView, BrokerError> {
        let _admin = self.admin.lock().await;
        let cmd = CatalogCommand::CreateQueue {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            settings,
            temporary,
            at_ms: now_ms(),
        };
        match self.broker.commit_catalog(&cmd).await {
            Ok(Applied::Queue { .. }) => {}
            Ok(other) => return Err(BrokerError::InvalidRequest(format!("unexpected catalog result {other:?}"))),
            Err(BrokerError::Catalog(crate::catalog::CatalogError::QueueExists { .. })) if if_not_exists => {
                drop(_admin);
                return self.describe_queue(tenant, name);
            }
            Err(e) => return Err(e),
        }
        let catalog = self.broker.catalog_snapshot().await;
        let record = catalog.tenants[tenant].queues[name].clone();
        let q = self.open_queue(tenant, name, &record).await?;
        write_lock(&self.queues).insert((tenant.to_owned(), name.to_owned()), q.clone());
        tokio::spawn(self.clone().run_timer(q));
        drop(_admin);
        self.describe_queue(tenant, name)
    }

    pub async fn update_queue(
        &self,
        tenant: &str,
        name: &str,
        overrides: QueueOverrides,
    ) -> Result<QueueView, BrokerError> {
        let q = self.queue(tenant, name)?;
        let _admin = self.admin.lock().await;
        let current = q.lock().q.settings().clone();
        let settings = Self::resolve(&current, &overrides)?;
        self.broker
            .commit_catalog(&CatalogCommand::UpdateQueue {
                tenant: q.tenant.clone(),
                name: q.name.clone(),
                settings: settings.clone(),
            })
            .await?;
        let (segment_bytes, interval) =
            (self.broker.config().topic_defaults.segment_bytes.0, self.broker.config().storage.index_interval_bytes.0);
        q.messages.set_config(log_config(settings.durability, segment_bytes, interval));
        q.journal.set_config(log_config(settings.durability, segment_bytes, interval));
        q.lock().q.set_settings(settings);
        q.wake(true);
        drop(_admin);
        self.describe_queue(&q.tenant, &q.name)
    }

    pub fn describe_queue(&self, tenant: &str, name: &str) -> Result<QueueView, BrokerError> {
        let q = self.queue(tenant, name)?;
        Ok(self.view(&q, Vec::new()))
    }

    fn view(&self, q: &Queue, bindings: Vec<crate::catalog::BindingRecord>) -> QueueView {
        let inner = q.lock();
        QueueView {
            tenant: q.tenant.clone(),
            name: q.name.clone(),
            id: q.id,
            settings: inner.q.settings().clone(),
            created_at_ms: q.created_at_ms,
            stats: inner.q.stats(now_ms()),
            bindings,
            temporary: q.temporary,
        }
    }

    /// Describe with the bindings (which live in the catalog).
    pub async fn describe_queue_full(&self, tenant: &str, name: &str) -> Result<QueueView, BrokerError> {
        let q = self.queue(tenant, name)?;
        let catalog = self.broker.catalog_snapshot().await;
        let bindings = catalog
            .tenants
            .get(&q.tenant)
            .and_then(|t| t.queues.get(&q.name))
            .map(|r| r.bindings.clone())
            .unwrap_or_default();
        Ok(self.view(&q, bindings))
    }

    pub async fn list_queues(&self, tenant: &str) -> Result<Vec<QueueView>, BrokerError> {
        let tenant = TenantName::resolve(tenant)?;
        let catalog = self.broker.catalog_snapshot().await;
        let t = catalog
            .tenants
            .get(tenant.as_str())
            .ok_or_else(|| crate::catalog::CatalogError::UnknownTenant(tenant.to_string()))?;
        let mut out = Vec::new();
        for (name, record) in &t.queues {
            if let Ok(q) = self.queue(tenant.as_str(), name) {
                out.push(self.view(&q, record.bindings.clone()));
            }
        }
        Ok(out)
    }

    pub async fn delete_queue(&self, tenant: &str, name: &str, if_empty: bool) -> Result<(), BrokerError> {
        let q = self.queue(tenant, name)?;
        let _admin = self.admin.lock().await;
        if if_empty {
            let n = q.lock().q.len() as u64;
            if n > 0 {
                return Err(BrokerError::QueueNotEmpty { queue: q.label(), messages: n });
            }
        }
        let catalog = self.broker.catalog_snapshot().await;
        let bindings: Vec<u64> = catalog
            .tenants
            .get(&q.tenant)
            .and_then(|t| t.queues.get(&q.name))
            .map(|r| r.bindings.iter().map(|b| b.id).collect())
            .unwrap_or_default();
        self.broker
            .commit_catalog(&CatalogCommand::DeleteQueue { tenant: q.tenant.clone(), name: q.name.clone() })
            .await?;
        write_lock(&self.queues).remove(&(q.tenant.clone(), q.name.clone()));
        for id in bindings {
            self.stop_router(id);
        }
        self.close_queue(&q);
        let dir = q.dir.clone();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        Ok(())
    }

    fn close_queue(&self, q: &Queue) {
        q.closed.store(true, Ordering::Release);
        q.messages.close();
        q.journal.close();
        q.visible.notify_waiters();
        q.changed.notify_one();
    }

    /// Removes every message of the queue.
    pub async fn purge(&self, tenant: &str, name: &str) -> Result<u64, BrokerError> {
        let q = self.queue(tenant, name)?;
        let end = {
            let mut inner = q.lock();
            let n = inner.q.purge();
            let below = q.messages.end_offset();
            let end = q.journal(&mut inner, &JournalEntry { purged_below: below, ..Default::default() })?;
            (n, end)
        };
        self.wait_journal(&q, end.1).await?;
        Ok(end.0)
    }

    async fn wait_journal(&self, q: &Queue, end: u64) -> Result<(), BrokerError> {
        if end > 0 && q.durability() == Durability::Fsync {
            q.journal.wait_durable(end).await.map_err(|e| q.log_error(e))?;
        }
        Ok(())
    }

    // ---- bindings --------------------------------------------------------

    pub async fn bind(
        self: &Arc<Self>,
        tenant: &str,
        queue: &str,
        topic: &str,
        filter: BindingFilter,
    ) -> Result<crate::catalog::BindingRecord, BrokerError> {
        let q = self.queue(tenant, queue)?;
        let topic = crate::names::TopicName::parse(topic)?.to_string();
        validate_filter(&filter)?;
        let _admin = self.admin.lock().await;
        // New bindings route what is produced from now on (RabbitMQ's
        // semantics): the cursor starts at each partition's end.
        let n = self.broker.partition_count(&q.tenant, &topic)?;
        let mut start = Vec::with_capacity(n as usize);
        for p in 0..n {
            start.push(self.broker.partition(&q.tenant, &topic, p)?.0.high_watermark());
        }
        let cmd = CatalogCommand::Bind {
            tenant: q.tenant.clone(),
            queue: q.name.clone(),
            topic: topic.clone(),
            filter: filter.clone(),
            at_ms: now_ms(),
        };
        let Applied::Binding { id } = self.broker.commit_catalog(&cmd).await? else {
            return Err(BrokerError::InvalidRequest("unexpected catalog result".into()));
        };
        let record = crate::catalog::BindingRecord { id, topic, filter, created_at_ms: now_ms() };
        routing::write_cursor(&q.dir, id, &start)
            .map_err(|e| q.log_error(LogError::Io { path: q.dir.clone(), source: e }))?;
        self.start_router(&q.tenant, &q.name, record.clone());
        Ok(record)
    }

    pub async fn unbind(
        &self,
        tenant: &str,
        queue: &str,
        topic: &str,
        filter: BindingFilter,
    ) -> Result<(), BrokerError> {
        let q = self.queue(tenant, queue)?;
        let topic = crate::names::TopicName::parse(topic)?.to_string();
        let _admin = self.admin.lock().await;
        let cmd = CatalogCommand::Unbind { tenant: q.tenant.clone(), queue: q.name.clone(), topic, filter };
        if let Applied::Unbound { id } = self.broker.commit_catalog(&cmd).await? {
            self.stop_router(id);
            let _ = std::fs::remove_file(routing::cursor_path(&q.dir, id));
        }
        Ok(())
    }

    fn start_router(self: &Arc<Self>, tenant: &str, queue: &str, binding: crate::catalog::BindingRecord) {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        lock(&self.routers).insert(binding.id, stop);
        tokio::spawn(routing::run(self.clone(), tenant.to_owned(), queue.to_owned(), binding, stopped));
    }

    fn stop_router(&self, id: u64) {
        if let Some(stop) = lock(&self.routers).remove(&id) {
            stop.send_replace(true);
        }
    }

    pub(crate) fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    // ---- send --------------------------------------------------------------

    /// Validates and enqueues messages; answers once they are durable.
    pub async fn send(
        &self,
        tenant: &str,
        queue: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<Sent>, BrokerError> {
        let q = self.queue(tenant, queue)?;
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let settings = q.lock().q.settings().clone();
        let max_record = self.broker.config().limits.max_record_bytes.0 as usize;
        let mut batch = Vec::with_capacity(messages.len());
        for (i, m) in messages.into_iter().enumerate() {
            batch.push(
                validate_message(m, &settings, now, max_record).map_err(|why| {
                    BrokerError::InvalidRequest(format!("message {i} for queue {}: {why}", q.label()))
                })?,
            );
        }
        self.enqueue(&q, batch).await
    }

    /// Appends validated messages to the queue's log (deduplicating), then
    /// waits for durability and makes them deliverable.
    async fn enqueue(&self, q: &Arc<Queue>, batch: Vec<NewMessage>) -> Result<Vec<Sent>, BrokerError> {
        if q.closed.load(Ordering::Acquire) {
            return Err(
                crate::catalog::CatalogError::UnknownQueue { tenant: q.tenant.clone(), name: q.name.clone() }.into()
            );
        }
        let limit = self.broker.config().limits.max_queue_messages;
        let max_batch = self.broker.config().limits.max_batch_bytes.0 as usize;
        let q2 = q.clone();
        let (results, written) = tokio::task::spawn_blocking(move || -> Result<_, BrokerError> {
            let q = q2;
            let now = now_ms();
            let mut inner = q.lock();
            let depth = inner.q.len() as u64;
            if depth + batch.len() as u64 > limit {
                q.metrics.rejections.get_or_create(&crate::metrics::RejectLabels { reason: "queue_full" }).inc();
                return Err(BrokerError::QueueFull { queue: q.label(), messages: depth, limit });
            }
            let mut results = vec![Sent { id: 0, duplicate: false }; batch.len()];
            let mut builder = BatchBuilder::new(Compression::None);
            let mut fresh = Vec::with_capacity(batch.len());
            let mut in_request: HashMap<&str, usize> = HashMap::new();
            for (i, m) in batch.iter().enumerate() {
                let dedup = m.meta.dedup_id.as_str();
                if !dedup.is_empty() && inner.q.settings().dedup_window_ms > 0 {
                    if let Some(id) = inner.q.dedup_lookup(dedup, now) {
                        results[i] = Sent { id, duplicate: true };
                        continue;
                    }
                    if let Some(&first) = in_request.get(dedup) {
                        // Resolved to the first copy's id below.
                        results[i] = Sent { id: first as u64, duplicate: true };
                        continue;
                    }
                    in_request.insert(dedup, i);
                }
                let meta = codec::encode_meta(&m.meta);
                let mut headers: Vec<(&str, Option<&[u8]>)> =
                    m.headers.iter().map(|(k, v)| (k.as_str(), Some(v.as_ref()))).collect();
                headers.push((META_HEADER, Some(meta.as_ref())));
                builder.push(now, m.key.as_deref(), Some(m.body.as_ref()), &headers);
                fresh.push(i);
            }
            if fresh.is_empty() {
                return Ok((results, None));
            }
            if builder.size() > max_batch {
                return Err(BrokerError::BatchTooLarge {
                    resource: q.label(),
                    size: builder.size(),
                    limit: max_batch as u64,
                });
            }
            let bytes = builder.finish().expect("non-empty");
            let header = strata_proto::batch::BatchHeader::parse(&bytes)
                .map_err(|source| BrokerError::Batch { resource: q.label(), source })?;
            let mut owned = bytes.to_vec();
            let appended = q.messages.append(&mut owned, &header, now).map_err(|e| q.log_error(e))?;
            let synced = inner.q.settings().durability == Durability::None;
            let mut ids = Vec::with_capacity(fresh.len());
            for (n, &i) in fresh.iter().enumerate() {
                let id = appended.base_offset + n as u64;
                let m = &batch[i];
                inner.q.enqueue(id, &info_of(&m.meta, now), 0, 0, synced, now);
                inner.q.dedup_remember(&m.meta.dedup_id, id, now);
                results[i] = Sent { id, duplicate: false };
                ids.push(id);
            }
            inner.q.counters.sent += ids.len() as u64;
            let labels = crate::metrics::Metrics::queue(&q.tenant, &q.name);
            q.metrics.queue_sent.get_or_create(&labels).inc_by(ids.len() as u64);
            let bytes: usize = fresh.iter().map(|&i| batch[i].body.len()).sum();
            q.metrics.queue_sent_bytes.get_or_create(&labels).inc_by(bytes as u64);
            // Duplicates inside this request point at their first copy.
            for (i, m) in batch.iter().enumerate() {
                if results[i].duplicate
                    && let Some(&first) = in_request.get(m.meta.dedup_id.as_str())
                    && first != i
                {
                    results[i].id = results[first].id;
                }
            }
            let traced = strata_proto::telemetry::enabled().then(|| {
                let spans: Vec<_> = fresh
                    .iter()
                    .zip(&ids)
                    .filter_map(|(&i, id)| {
                        let m = &batch[i];
                        crate::telemetry::message_span(
                            m.headers.iter().map(|(k, v)| (k.as_str(), v.as_ref())),
                            format!("publish {}", q.name),
                            &q.name,
                            vec![
                                strata_proto::telemetry::Attribute::new(
                                    strata_proto::telemetry::attr::MESSAGE_ID,
                                    id.to_string(),
                                ),
                                strata_proto::telemetry::Attribute::new(
                                    strata_proto::telemetry::attr::OPERATION_NAME,
                                    "publish",
                                ),
                            ],
                        )
                    })
                    .collect();
                crate::telemetry::Published::new(spans, &q.name)
            });
            Ok((results, Some((ids, appended.last_offset + 1, synced, traced))))
        })
        .await
        .map_err(|e| BrokerError::InvalidRequest(format!("send task failed: {e}")))??;
        if let Some((ids, end, synced, traced)) = written {
            if !synced {
                let durable = q.messages.wait_durable(end).await;
                if let Some(t) = traced {
                    t.finish(durable.as_ref().err().map(|e| e.to_string()).as_deref());
                }
                durable.map_err(|e| q.log_error(e))?;
                let now = now_ms();
                let mut inner = q.lock();
                let mut woke = false;
                for id in ids {
                    woke |= inner.q.mark_synced(id, now);
                }
                drop(inner);
                q.wake(woke);
            } else {
                if let Some(t) = traced {
                    t.finish(None);
                }
                q.wake(true);
            }
        }
        Ok(results)
    }

    // ---- receive and settle ----------------------------------------------

    /// Leases up to `max` messages, waiting up to `wait` for the first.
    pub async fn receive(
        self: &Arc<Self>,
        tenant: &str,
        queue: &str,
        max: usize,
        wait: Duration,
        visibility_ms: Option<i64>,
        auto_ack: bool,
    ) -> Result<Vec<ReceivedMessage>, BrokerError> {
        let q = self.queue(tenant, queue)?;
        if let Some(v) = visibility_ms
            && !(1..=MAX_VISIBILITY_MS).contains(&v)
        {
            return Err(BrokerError::InvalidRequest(format!(
                "visibility_timeout_ms must be between 1 and {MAX_VISIBILITY_MS} (12 h), got {v}"
            )));
        }
        let max = max.clamp(1, MAX_RECEIVE);
        let deadline = tokio::time::Instant::now() + wait;
        let mut shutdown = self.broker.shutdown_signal();
        loop {
            let notified = q.visible.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (leases, outcome) = {
                let mut inner = q.lock();
                let now = now_ms();
                let vis = visibility_ms.unwrap_or(inner.q.settings().visibility_timeout_ms);
                let (leases, outcome) = inner.q.receive(max, vis, now);
                if !leases.is_empty() {
                    let mut entry = JournalEntry::default();
                    if auto_ack {
                        for l in &leases {
                            let _ = inner.q.ack(l.id, l.deliveries, now);
                            entry.acked.push(l.id);
                        }
                    } else {
                        for l in &leases {
                            entry.delivered_ids.push(l.id);
                            entry.delivered_counts.push(l.deliveries);
                        }
                    }
                    // Delivery counts need not be durable before delivering
                    // (a crash may under-count one delivery); acks are.
                    q.journal(&mut inner, &entry)?;
                }
                (leases, outcome)
            };
            if !outcome.dead_letter.is_empty() || !outcome.finished.is_empty() || !outcome.retry.is_empty() {
                self.apply_outcome(&q, outcome).await;
            }
            if !leases.is_empty() {
                q.changed.notify_one();
                let labels = crate::metrics::Metrics::queue(&q.tenant, &q.name);
                q.metrics.queue_delivered.get_or_create(&labels).inc_by(leases.len() as u64);
                let again = leases.iter().filter(|l| l.deliveries > 1).count() as u64;
                if again > 0 {
                    q.metrics.queue_redelivered.get_or_create(&labels).inc_by(again);
                }
                if auto_ack {
                    q.metrics.queue_acked.get_or_create(&labels).inc_by(leases.len() as u64);
                }
                let ids: Vec<u64> = leases.iter().map(|l| l.id).collect();
                let records = read_records(&q, &ids).await?;
                let mut out = Vec::with_capacity(leases.len());
                for l in leases {
                    let Some(r) = records.get(&l.id) else { continue };
                    if strata_proto::telemetry::enabled() {
                        use strata_proto::telemetry::{Attribute, attr};
                        let verb = if l.deliveries > 1 { "redeliver" } else { "deliver" };
                        // Ends at once: the span marks the hand-over.
                        drop(crate::telemetry::message_span(
                            r.headers.iter().map(|h| (h.key.as_str(), h.value.as_deref().unwrap_or_default())),
                            format!("{verb} {}", q.name),
                            &q.name,
                            vec![
                                Attribute::new(attr::MESSAGE_ID, l.id.to_string()),
                                Attribute::new(attr::DELIVERY_COUNT, i64::from(l.deliveries)),
                                Attribute::new(attr::OPERATION_NAME, verb),
                            ],
                        ));
                    }
                    let mut m = to_received(r);
                    m.receipt = Some(Receipt { message_id: l.id, delivery_count: l.deliveries });
                    m.visible_until_ms = if auto_ack { 0 } else { l.deadline };
                    out.push(m);
                }
                return Ok(out);
            }
            if q.closed.load(Ordering::Acquire) {
                return Err(crate::catalog::CatalogError::UnknownQueue {
                    tenant: q.tenant.clone(),
                    name: q.name.clone(),
                }
                .into());
            }
            if tokio::time::Instant::now() >= deadline || *shutdown.borrow() {
                return Ok(Vec::new());
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Visible messages in delivery order, not leased.
    pub async fn peek(&self, tenant: &str, queue: &str, max: usize) -> Result<Vec<ReceivedMessage>, BrokerError> {
        let q = self.queue(tenant, queue)?;
        let items = q.lock().q.peek(max.clamp(1, MAX_RECEIVE));
        let ids: Vec<u64> = items.iter().map(|(id, _)| *id).collect();
        let records = read_records(&q, &ids).await?;
        Ok(items
            .into_iter()
            .filter_map(|(id, deliveries)| {
                records.get(&id).map(|r| {
                    let mut m = to_received(r);
                    m.receipt = Some(Receipt { message_id: id, delivery_count: deliveries });
                    m
                })
            })
            .collect())
    }

    /// Acknowledges deliveries; answers once the acknowledgement is durable.
    pub async fn ack(
        &self,
        tenant: &str,
        queue: &str,
        receipts: &[Receipt],
    ) -> Result<Vec<(Receipt, BrokerError)>, BrokerError> {
        let q = self.queue(tenant, queue)?;
        let (failed, end) = {
            let mut inner = q.lock();
            let now = now_ms();
            let mut entry = JournalEntry::default();
            let mut failed = Vec::new();
            let mut woke = false;
            for r in receipts {
                match inner.q.ack(r.message_id, r.delivery_count, now) {
                    Ok(w) => {
                        woke |= w;
                        entry.acked.push(r.message_id);
                    }
                    Err(e) => failed.push((*r, receipt_error(&q, r.message_id, e))),
                }
            }
            let end = q.journal(&mut inner, &entry)?;
            drop(inner);
            if woke {
                q.wake(true);
            }
            let labels = crate::metrics::Metrics::queue(&q.tenant, &q.name);
            q.metrics.queue_acked.get_or_create(&labels).inc_by(entry.acked.len() as u64);
            (failed, end)
        };
        self.wait_journal(&q, end).await?;
        Ok(failed)
    }

    /// Gives deliveries back (visible after `delay_ms`, or the retry backoff).
    pub async fn nack(
        self: &Arc<Self>,
        tenant: &str,
        queue: &str,
        receipts: &[Receipt],
        delay_ms: Option<i64>,
    ) -> Result<Vec<(Receipt, BrokerError)>, BrokerError> {
        let q = self.queue(tenant, queue)?;
        if let Some(d) = delay_ms {
            check_duration("delay_ms", d)?;
        }
        let mut outcome = Outcome::default();
        let mut failed = Vec::new();
        {
            let mut inner = q.lock();
            let now = now_ms();
            for r in receipts {
                match inner.q.nack(r.message_id, r.delivery_count, delay_ms, now) {
                    Ok(o) => outcome.merge(o),
                    Err(e) => failed.push((*r, receipt_error(&q, r.message_id, e))),
                }
            }
        }
        self.apply_outcome(&q, outcome).await;
        Ok(failed)
    }

    /// Moves lease deadlines to now + `visibility_ms`.
    pub fn extend(
        &self,
        tenant: &str,
        queue: &str,
        receipts: &[Receipt],
        visibility_ms: i64,
    ) -> Result<Vec<(Receipt, BrokerError)>, BrokerError> {
        let q = self.queue(tenant, queue)?;
        if !(1..=MAX_VISIBILITY_MS).contains(&visibility_ms) {
            return Err(BrokerError::InvalidRequest(format!(
                "visibility_timeout_ms must be between 1 and {MAX_VISIBILITY_MS} (12 h), got {visibility_ms}"
            )));
        }
        let mut inner = q.lock();
        let now = now_ms();
        let mut failed = Vec::new();
        for r in receipts {
            if let Err(e) = inner.q.extend(r.message_id, r.delivery_count, visibility_ms, now) {
                failed.push((*r, receipt_error(&q, r.message_id, e)));
            }
        }
        drop(inner);
        q.changed.notify_one();
        Ok(failed)
    }

    /// Journals what a tick or nack decided and moves dead letters.
    async fn apply_outcome(&self, q: &Arc<Queue>, outcome: Outcome) {
        let Outcome { dead_letter, finished, retry, woke } = outcome;
        if !finished.is_empty() || !retry.is_empty() {
            let mut entry = JournalEntry::default();
            for (id, why) in finished {
                match why {
                    Finish::Expired => entry.expired.push(id),
                    Finish::Dropped => entry.dropped.push(id),
                    Finish::Acked => entry.acked.push(id),
                    Finish::DeadLettered => entry.dead_lettered.push(id),
                }
            }
            for (id, at) in retry {
                entry.retry_ids.push(id);
                entry.retry_at.push(at);
            }
            let mut inner = q.lock();
            if let Err(e) = q.journal(&mut inner, &entry) {
                tracing::warn!(queue = %q.label(), error = %e, "journal write failed");
            }
        }
        q.wake(woke);
        if !dead_letter.is_empty() {
            self.dead_letter(q, dead_letter).await;
        }
    }

    /// Copies messages to the dead-letter queue (durably), then finishes them here.
    async fn dead_letter(&self, q: &Arc<Queue>, items: Vec<state::DeadLetter>) {
        let dlq_name = q.lock().q.settings().dead_letter_queue.clone();
        let now = now_ms();
        let result: Result<(), BrokerError> = async {
            let dlq_name = dlq_name.ok_or_else(|| BrokerError::InvalidQueueConfig("no dead-letter queue".into()))?;
            let dlq = self.queue(&q.tenant, &dlq_name)?;
            let ids: Vec<u64> = items.iter().map(|d| d.id).collect();
            let records = read_records(q, &ids).await?;
            let mut batch = Vec::with_capacity(items.len());
            for d in &items {
                let Some(r) = records.get(&d.id) else { continue };
                let mut meta = MessageMeta::of(r);
                meta.not_before = 0;
                meta.expires_at = 0;
                meta.dedup_id.clear();
                if strata_proto::telemetry::enabled() {
                    use strata_proto::telemetry::{Attribute, attr};
                    drop(crate::telemetry::message_span(
                        r.headers.iter().map(|h| (h.key.as_str(), h.value.as_deref().unwrap_or_default())),
                        format!("dead_letter {}", q.name),
                        &q.name,
                        vec![
                            Attribute::new(attr::MESSAGE_ID, d.id.to_string()),
                            Attribute::new(attr::DELIVERY_COUNT, i64::from(d.deliveries)),
                            Attribute::new(attr::DEAD_LETTER_REASON, d.reason.clone()),
                            Attribute::new(attr::OPERATION_NAME, "dead_letter"),
                        ],
                    ));
                }
                let mut headers = user_headers(r);
                headers.retain(|(k, _)| {
                    !k.starts_with("x-strata-dead-letter-") && !k.starts_with("x-strata-original-") && k != H_DELIVERIES
                });
                headers.push((H_REASON.into(), Bytes::from(d.reason.clone())));
                headers.push((H_SOURCE.into(), Bytes::from(q.name.clone())));
                headers.push((H_ORIGINAL_ID.into(), Bytes::from(d.id.to_string())));
                headers.push((H_DELIVERIES.into(), Bytes::from(d.deliveries.to_string())));
                headers.push((H_ENQUEUED.into(), Bytes::from(r.timestamp_ms.to_string())));
                batch.push(NewMessage { key: r.key.clone(), body: r.value.clone().unwrap_or_default(), headers, meta });
            }
            Box::pin(self.enqueue(&dlq, batch)).await?;
            let mut inner = q.lock();
            let mut entry = JournalEntry::default();
            let mut woke = false;
            for d in &items {
                woke |= inner.q.finish(d.id, Finish::DeadLettered, now);
                entry.dead_lettered.push(d.id);
            }
            q.journal(&mut inner, &entry)?;
            drop(inner);
            q.wake(woke);
            let labels = crate::metrics::Metrics::queue(&q.tenant, &q.name);
            q.metrics.queue_dead_lettered.get_or_create(&labels).inc_by(items.len() as u64);
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(queue = %q.label(), error = %e, "dead-lettering failed; retrying in 5 s");
            let mut inner = q.lock();
            for d in &items {
                inner.q.dead_letter_failed(d.id, 5000, now);
            }
            drop(inner);
            q.changed.notify_one();
        }
    }

    /// Moves messages of a dead-letter queue back to their source queues.
    pub async fn redrive(self: &Arc<Self>, tenant: &str, dlq: &str, max: u64) -> Result<u64, BrokerError> {
        let q = self.queue(tenant, dlq)?;
        let mut moved = 0u64;
        let mut stuck: Vec<Receipt> = Vec::new();
        let limit = if max == 0 { u64::MAX } else { max };
        while moved < limit {
            let want = (limit - moved).min(500) as usize;
            let got = self.receive(&q.tenant, &q.name, want, Duration::ZERO, Some(300_000), false).await?;
            if got.is_empty() {
                break;
            }
            let mut by_source: HashMap<String, (Vec<NewMessage>, Vec<Receipt>)> = HashMap::new();
            for m in got {
                let receipt = m.receipt.expect("received messages carry receipts");
                let source = m
                    .headers
                    .iter()
                    .find(|h| h.key == H_SOURCE)
                    .map(|h| String::from_utf8_lossy(&h.value).into_owned());
                match source.filter(|s| self.queue(&q.tenant, s).is_ok()) {
                    Some(s) => {
                        let headers = m
                            .headers
                            .into_iter()
                            .filter(|h| {
                                !h.key.starts_with("x-strata-dead-letter-")
                                    && !h.key.starts_with("x-strata-original-")
                                    && h.key != H_DELIVERIES
                            })
                            .map(|h| (h.key, h.value))
                            .collect();
                        let meta = MessageMeta {
                            priority: m.priority,
                            group: m.group,
                            reply_to: m.reply_to,
                            correlation_id: m.correlation_id,
                            ..Default::default()
                        };
                        let key = if m.key.is_empty() { None } else { Some(m.key) };
                        let e = by_source.entry(s).or_default();
                        e.0.push(NewMessage { key, body: m.body, headers, meta });
                        e.1.push(receipt);
                    }
                    None => stuck.push(receipt),
                }
            }
            if by_source.is_empty() {
                break;
            }
            for (source, (batch, receipts)) in by_source {
                let target = self.queue(&q.tenant, &source)?;
                let n = batch.len() as u64;
                self.enqueue(&target, batch).await?;
                self.ack(&q.tenant, &q.name, &receipts).await?;
                moved += n;
            }
        }
        if !stuck.is_empty() {
            self.nack(&q.tenant, &q.name, &stuck, Some(0)).await?;
        }
        Ok(moved)
    }

    // ---- temporary reply queues -----------------------------------------

    /// Creates a temporary queue for request-reply; the caller deletes it
    /// (with [`QueueManager::delete_queue`]) when its stream ends.
    pub async fn create_reply_queue(self: &Arc<Self>, tenant: &str) -> Result<String, BrokerError> {
        let tenant = TenantName::resolve(tenant)?;
        let name = format!("reply-{:016x}", rand_u64());
        let mut settings = self.defaults();
        // Replies are answered to a live caller: no need to fsync them.
        settings.durability = Durability::None;
        self.create(tenant.as_str(), &name, settings, true, false).await?;
        Ok(name)
    }

    // ---- time, snapshots, shutdown ----------------------------------------

    /// Applies due timeouts, delays and expiries of one queue until it closes.
    async fn run_timer(self: Arc<Self>, q: Arc<Queue>) {
        let mut shutdown = self.broker.shutdown_signal();
        loop {
            if q.closed.load(Ordering::Acquire) || *shutdown.borrow() {
                return;
            }
            let notified = q.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = now_ms();
            let due = q.lock().q.next_due();
            if let Some(t) = due
                && t <= now
            {
                let outcome = q.lock().q.tick(now);
                self.apply_outcome(&q, outcome).await;
                continue;
            }
            let wait = due.map_or(Duration::from_secs(3600), |t| Duration::from_millis((t - now) as u64));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut notified => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Snapshots queues whose journal grew and trims both logs. Called by the
    /// broker's maintenance loop; `force` snapshots every queue (shutdown).
    pub async fn maintain(&self, force: bool) {
        let queues: Vec<Arc<Queue>> = read_lock(&self.queues).values().cloned().collect();
        let now = now_ms();
        for q in queues {
            let q2 = q.clone();
            let res = tokio::task::spawn_blocking(move || snapshot_and_trim(&q2, force, now)).await;
            match res {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(queue = %q.label(), error = %e, "queue snapshot failed"),
                Err(e) => tracing::warn!(queue = %q.label(), error = %e, "queue snapshot task failed"),
            }
        }
    }

    /// Sets the queue gauges from the live state (at scrape time).
    pub(crate) fn refresh_metrics(&self) {
        let m = self.broker.metrics();
        for g in [&m.queue_visible, &m.queue_in_flight, &m.queue_delayed, &m.queue_oldest_age] {
            g.clear();
        }
        let now = now_ms();
        for q in read_lock(&self.queues).values() {
            let s = q.lock().q.stats(now);
            let labels = crate::metrics::Metrics::queue(&q.tenant, &q.name);
            m.queue_visible.get_or_create(&labels).set(s.visible as i64);
            m.queue_in_flight.get_or_create(&labels).set(s.in_flight as i64);
            m.queue_delayed.get_or_create(&labels).set(s.delayed as i64);
            m.queue_oldest_age.get_or_create(&labels).set(s.oldest_age_ms / 1000);
        }
    }

    /// Periodic snapshots and trimming until shutdown.
    pub async fn maintenance_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.broker.config().storage.maintenance_interval.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = self.broker.shutdown_signal();
        loop {
            tokio::select! {
                _ = tick.tick() => self.maintain(false).await,
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Flushes and closes every queue (after the broker stopped serving).
    pub async fn close(&self) {
        self.maintain(true).await;
        let queues: Vec<Arc<Queue>> = read_lock(&self.queues).values().cloned().collect();
        for stop in lock(&self.routers).values() {
            stop.send_replace(true);
        }
        let _ = tokio::task::spawn_blocking(move || {
            for q in queues {
                for log in [&q.messages, &q.journal] {
                    if let Err(e) = log.flush() {
                        tracing::error!(queue = %q.label(), error = %e, "flush on shutdown failed");
                    }
                    log.close();
                }
                q.closed.store(true, Ordering::Release);
            }
        })
        .await;
    }
}

fn snapshot_and_trim(q: &Queue, force: bool, now: i64) -> Result<(), LogError> {
    for log in [&q.messages, &q.journal] {
        log.maintain(now)?;
    }
    let snap = {
        let mut inner = q.lock();
        if inner.since_snapshot == 0 && !force {
            return Ok(());
        }
        inner.since_snapshot = 0;
        let next_id = q.messages.end_offset();
        let mut snap = Snapshot {
            journal_end: q.journal.end_offset(),
            next_id,
            low_watermark: inner.q.low_watermark(next_id),
            acked: inner.q.counters.acked,
            dead_lettered: inner.q.counters.dead_lettered,
            expired: inner.q.counters.expired,
            ..Default::default()
        };
        for (s, e) in inner.q.finished_ranges(next_id) {
            snap.finished_starts.push(s);
            snap.finished_ends.push(e);
        }
        for (id, deliveries, retry_at) in inner.q.delivery_state() {
            snap.state_ids.push(id);
            snap.state_deliveries.push(deliveries);
            snap.state_retry_at.push(retry_at);
        }
        snap
    };
    let path = q.dir.join("state.snap");
    codec::write_snapshot(&path, &snap).map_err(|e| LogError::Io { path: path.clone(), source: e })?;
    q.journal.delete_before(snap.journal_end)?;
    q.messages.delete_before(snap.low_watermark)?;
    Ok(())
}

/// Opens both logs and rebuilds the state: snapshot, then the journal after
/// it, then the messages from the low watermark on.
fn recover(
    dir: &Path,
    settings: QueueSettings,
    segment_bytes: u64,
    interval: u64,
) -> Result<(Arc<PartitionLog>, Arc<PartitionLog>, QueueState), LogError> {
    let now = now_ms();
    let cfg = log_config(settings.durability, segment_bytes, interval);
    let (messages, report) = PartitionLog::open(&dir.join("messages"), cfg, now)?;
    for why in &report.truncated {
        tracing::warn!(queue = %dir.display(), "recovery truncated {why}");
    }
    let (journal, report) = PartitionLog::open(&dir.join("journal"), cfg, now)?;
    for why in &report.truncated {
        tracing::warn!(queue = %dir.display(), "recovery truncated journal {why}");
    }
    let path = dir.join("state.snap");
    let snap =
        codec::read_snapshot(&path).map_err(|e| LogError::Io { path: path.clone(), source: e })?.unwrap_or_default();
    let mut below = snap.low_watermark;
    let mut ranges: Vec<(u64, u64)> =
        snap.finished_starts.iter().copied().zip(snap.finished_ends.iter().copied()).collect();
    let mut finished: HashSet<u64> = HashSet::new();
    let mut deliveries: HashMap<u64, (u32, i64)> = HashMap::new();
    for ((&id, &d), &at) in snap.state_ids.iter().zip(&snap.state_deliveries).zip(&snap.state_retry_at) {
        deliveries.insert(id, (d, at));
    }
    let mut q = QueueState::new(settings);
    q.counters.acked = snap.acked;
    q.counters.dead_lettered = snap.dead_lettered;
    q.counters.expired = snap.expired;
    q.counters.sent = messages.end_offset();
    // The journal after the snapshot.
    for_each_record(&journal, snap.journal_end.max(journal.start_offset()), |r| {
        let Some(v) = &r.value else { return };
        let Ok(e) = JournalEntry::decode(v.as_ref()) else { return };
        q.counters.acked += e.acked.len() as u64;
        q.counters.dead_lettered += e.dead_lettered.len() as u64;
        q.counters.expired += e.expired.len() as u64;
        finished.extend(e.acked.iter().chain(&e.dead_lettered).chain(&e.expired).chain(&e.dropped));
        for (&id, &d) in e.delivered_ids.iter().zip(&e.delivered_counts) {
            let s = deliveries.entry(id).or_default();
            s.0 = s.0.max(d);
        }
        for (&id, &at) in e.retry_ids.iter().zip(&e.retry_at) {
            deliveries.entry(id).or_default().1 = at;
        }
        if e.purged_below > below {
            below = e.purged_below;
            ranges.clear();
        }
    })?;
    ranges.sort_unstable();
    let is_finished = |id: u64| {
        id < below || finished.contains(&id) || {
            let i = ranges.partition_point(|&(s, _)| s <= id);
            i > 0 && id < ranges[i - 1].1
        }
    };
    let window = q.settings().dedup_window_ms;
    for_each_record(&messages, below.max(messages.start_offset()), |r| {
        let meta = MessageMeta::of(r);
        let id = r.offset;
        if window > 0 && !meta.dedup_id.is_empty() && r.timestamp_ms > now - window {
            q.dedup_remember(&meta.dedup_id, id, r.timestamp_ms);
        }
        if is_finished(id) {
            return;
        }
        let (d, retry_at) = deliveries.get(&id).copied().unwrap_or_default();
        q.enqueue(id, &info_of(&meta, r.timestamp_ms), d, retry_at, true, now);
    })?;
    Ok((messages, journal, q))
}

/// Calls `f` for every record of `log` from `from` to its end.
fn for_each_record(log: &PartitionLog, from: u64, mut f: impl FnMut(&Record)) -> Result<(), LogError> {
    let mut pos = from;
    let end = log.high_watermark();
    while pos < end {
        let read = log.read(pos, 4 << 20)?;
        if read.records.is_empty() {
            break;
        }
        for batch in BatchIter::new(read.records) {
            let batch = batch.map_err(|e| LogError::Corrupt {
                path: log.dir().to_path_buf(),
                position: 0,
                reason: e.to_string(),
            })?;
            let records = batch.records().map_err(|e| LogError::Corrupt {
                path: log.dir().to_path_buf(),
                position: 0,
                reason: e.to_string(),
            })?;
            for r in records.iter().filter(|r| r.offset >= pos) {
                f(r);
            }
        }
        pos = read.next_offset;
    }
    Ok(())
}

/// Reads the records with these ids from the message log.
async fn read_records(q: &Arc<Queue>, ids: &[u64]) -> Result<HashMap<u64, Record>, BrokerError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut wanted: Vec<u64> = ids.to_vec();
    wanted.sort_unstable();
    let log = q.messages.clone();
    let label = q.label();
    tokio::task::spawn_blocking(move || {
        let mut out = HashMap::with_capacity(wanted.len());
        let mut i = 0;
        while i < wanted.len() {
            let read =
                log.read(wanted[i], 1 << 20).map_err(|source| BrokerError::Log { resource: label.clone(), source })?;
            if read.records.is_empty() {
                i += 1;
                continue;
            }
            for batch in BatchIter::new(read.records) {
                let batch = batch.map_err(|source| BrokerError::Batch { resource: label.clone(), source })?;
                if batch.header.base_offset > *wanted.last().expect("non-empty") {
                    break;
                }
                let records =
                    batch.records().map_err(|source| BrokerError::Batch { resource: label.clone(), source })?;
                for r in records {
                    if wanted[i..].binary_search(&r.offset).is_ok() {
                        out.insert(r.offset, r);
                    }
                }
            }
            while i < wanted.len() && (wanted[i] < read.next_offset || out.contains_key(&wanted[i])) {
                i += 1;
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| BrokerError::InvalidRequest(format!("read task failed: {e}")))?
}

fn user_headers(r: &Record) -> Vec<(String, Bytes)> {
    r.headers
        .iter()
        .filter(|h| h.key != META_HEADER)
        .map(|h| (h.key.clone(), h.value.clone().unwrap_or_default()))
        .collect()
}

fn to_received(r: &Record) -> ReceivedMessage {
    let meta = MessageMeta::of(r);
    ReceivedMessage {
        receipt: None,
        body: r.value.clone().unwrap_or_default(),
        headers: user_headers(r).into_iter().map(|(key, value)| MessageHeader { key, value }).collect(),
        priority: meta.priority,
        group: meta.group,
        dedup_id: meta.dedup_id,
        reply_to: meta.reply_to,
        correlation_id: meta.correlation_id,
        key: r.key.clone().unwrap_or_default(),
        enqueued_at_ms: r.timestamp_ms,
        visible_until_ms: 0,
    }
}

fn info_of(meta: &MessageMeta, enqueued_at: i64) -> MessageInfo {
    MessageInfo {
        priority: meta.priority.min(255) as u8,
        group: meta.group.clone(),
        dedup_id: meta.dedup_id.clone(),
        not_before: meta.not_before,
        expires_at: if meta.expires_at == 0 { i64::MAX } else { meta.expires_at },
        enqueued_at,
    }
}

fn check_duration(field: &str, v: i64) -> Result<(), BrokerError> {
    if !(0..=MAX_DURATION_MS).contains(&v) {
        return Err(BrokerError::InvalidQueueConfig(format!(
            "{field} must be between 0 and {MAX_DURATION_MS} ms (365 days), got {v}"
        )));
    }
    Ok(())
}

fn validate_message(m: OutgoingMessage, s: &QueueSettings, now: i64, max_record: usize) -> Result<NewMessage, String> {
    if m.priority >= s.priorities {
        return Err(format!(
            "priority {} is out of range: the queue has {} level(s) (0 to {})",
            m.priority,
            s.priorities,
            s.priorities - 1
        ));
    }
    let delay = m.delay_ms.unwrap_or(s.delay_ms);
    let ttl = m.ttl_ms.unwrap_or(s.ttl_ms);
    for (field, v) in [("delay_ms", delay), ("ttl_ms", ttl)] {
        if !(0..=MAX_DURATION_MS).contains(&v) {
            return Err(format!("{field} must be between 0 and {MAX_DURATION_MS} ms (365 days), got {v}"));
        }
    }
    if !s.fifo && !m.group.is_empty() {
        return Err("a message group needs a FIFO queue".into());
    }
    let mut size = m.body.len() + m.key.len();
    let mut headers = Vec::with_capacity(m.headers.len());
    for h in m.headers {
        if h.key.is_empty() || h.key.starts_with(':') {
            return Err(format!("header key {:?} is reserved or empty", h.key));
        }
        size += h.key.len() + h.value.len();
        headers.push((h.key, h.value));
    }
    for (field, v) in [
        ("group", &m.group),
        ("dedup_id", &m.dedup_id),
        ("reply_to", &m.reply_to),
        ("correlation_id", &m.correlation_id),
    ] {
        if v.len() > 512 {
            return Err(format!("{field} is {} bytes, at most 512", v.len()));
        }
    }
    if size > max_record {
        return Err(format!("message is {size} bytes, over the {max_record}-byte limit (limits.max_record_bytes)"));
    }
    let meta = MessageMeta {
        priority: m.priority,
        group: m.group,
        dedup_id: m.dedup_id,
        not_before: if delay > 0 { now + delay } else { 0 },
        expires_at: if ttl > 0 { now + ttl } else { 0 },
        reply_to: m.reply_to,
        correlation_id: m.correlation_id,
    };
    let key = if m.key.is_empty() { None } else { Some(m.key) };
    Ok(NewMessage { key, body: m.body, headers, meta })
}

fn receipt_error(q: &Queue, id: u64, e: ReceiptError) -> BrokerError {
    let reason = match e {
        ReceiptError::Gone => {
            "the message is no longer in the queue (acknowledged, expired, purged or dead-lettered)".into()
        }
        ReceiptError::Stale { current } => format!("the message was delivered again since (delivery {current})"),
        ReceiptError::NotLeased => "the message is not leased any more (its lease ran out or it was given back)".into(),
    };
    BrokerError::StaleReceipt { queue: q.label(), id, reason }
}

/// A random 64-bit value for temporary names (no need for a crypto RNG).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(now_ms());
    h.finish()
}

/// Removes queue directories the catalog no longer names.
fn remove_orphans(root: &Path, expected: &HashSet<PathBuf>) {
    let Ok(tenants) = std::fs::read_dir(root) else { return };
    for tenant in tenants.flatten() {
        let Ok(dirs) = std::fs::read_dir(tenant.path()) else { continue };
        for dir in dirs.flatten() {
            let path = dir.path();
            if !expected.contains(&path) {
                tracing::info!(dir = %path.display(), "removing orphaned queue directory");
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }
}
