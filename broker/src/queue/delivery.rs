//! Delivery: send (validation, dedup, durability), receive with leases
//! (long poll), peek, ack/nack/extend, and the per-queue timer that expires
//! leases, delays and TTLs.

use super::*;

impl QueueManager {
    /// Validates messages and appends them to the queue's log (see
    /// [`PendingSend`]); an empty request is a no-op.
    pub async fn send_pending(
        &self,
        tenant: &str,
        queue: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<PendingSend, BrokerError> {
        let q = self.queue(tenant, queue)?;
        self.broker.quotas().check_stored(&q.tenant)?;
        if messages.is_empty() {
            return Ok(PendingSend { q, results: Vec::new(), written: None, clock: self.broker.clock().clone() });
        }
        let now = self.broker.now_ms();
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
        let bytes = batch.iter().map(|m| (m.body.len() + m.key.as_ref().map_or(0, |k| k.len())) as u64).sum();
        let pending = self.append(&q, batch).await?;
        self.broker.quotas().add_stored(&q.tenant, bytes);
        Ok(pending)
    }

    /// Validates and enqueues messages; answers once they are durable.
    pub async fn send(
        &self,
        tenant: &str,
        queue: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<Sent>, BrokerError> {
        self.send_pending(tenant, queue, messages).await?.wait().await
    }

    /// Appends validated messages to the queue's log (deduplicating), then
    /// waits for durability and makes them deliverable.
    pub(super) async fn enqueue(&self, q: &Arc<Queue>, batch: Vec<NewMessage>) -> Result<Vec<Sent>, BrokerError> {
        self.append(q, batch).await?.wait().await
    }

    /// Appends validated messages to the queue's log (deduplicating) and
    /// returns at once: the messages have their ids and their place in the
    /// queue's order, but are neither durable nor deliverable until
    /// [`PendingSend::wait`]. Appends made one after another keep their
    /// order (FIFO groups), while their waits may overlap and share fsyncs.
    async fn append(&self, q: &Arc<Queue>, batch: Vec<NewMessage>) -> Result<PendingSend, BrokerError> {
        if q.closed.load(Ordering::Acquire) {
            return Err(
                crate::catalog::CatalogError::UnknownQueue { tenant: q.tenant.clone(), name: q.name.clone() }.into()
            );
        }
        let limit = self.broker.config().limits.max_queue_messages;
        let max_batch = self.broker.config().limits.max_batch_bytes.0 as usize;
        let q2 = q.clone();
        let clock = self.broker.clock().clone();
        // A small append is a copy into the page cache: done here, it saves
        // two thread hops per send; a large one goes to a blocking thread.
        let inline = batch.iter().map(|m| m.body.len() + m.key.as_ref().map_or(0, |k| k.len())).sum::<usize>()
            <= INLINE_APPEND_BYTES;
        let append = move || -> Result<_, BrokerError> {
            let q = q2;
            let now = clock.now_ms();
            let mut inner = q.lock();
            let depth = inner.q.len() as u64;
            if depth + batch.len() as u64 > limit {
                q.metrics.rejections.get_or_create(&crate::metrics::RejectLabels { reason: "queue_full" }).inc();
                return Err(BrokerError::QueueFull { queue: q.label(), messages: depth, limit });
            }
            let mut results = vec![Sent { id: 0, duplicate: false }; batch.len()];
            let mut builder = BatchBuilder::new(Compression::None);
            let mut fresh = Vec::with_capacity(batch.len());
            let mut metas = Vec::with_capacity(batch.len());
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
                metas.push(meta);
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
            let mut recent = q.recent();
            for (n, (&i, meta)) in fresh.iter().zip(metas).enumerate() {
                let id = appended.base_offset + n as u64;
                let m = &batch[i];
                inner.q.enqueue(id, &info_of(&m.meta, now), 0, 0, synced, now);
                inner.q.dedup_remember(&m.meta.dedup_id, id, now);
                results[i] = Sent { id, duplicate: false };
                ids.push(id);
                // The record as the log will give it back.
                let mut headers: Vec<RecordHeader> =
                    m.headers.iter().map(|(k, v)| RecordHeader { key: k.clone(), value: Some(v.clone()) }).collect();
                headers.push(RecordHeader { key: META_HEADER.to_owned(), value: Some(meta) });
                recent.insert(Record {
                    offset: id,
                    timestamp_ms: now,
                    key: m.key.clone(),
                    value: Some(m.body.clone()),
                    headers,
                });
            }
            drop(recent);
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
            let traced = strata_telemetry::enabled().then(|| {
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
                                strata_telemetry::Attribute::new(strata_telemetry::attr::MESSAGE_ID, id.to_string()),
                                strata_telemetry::Attribute::new(strata_telemetry::attr::OPERATION_NAME, "publish"),
                            ],
                        )
                    })
                    .collect();
                crate::telemetry::Published::new(spans, &q.name)
            });
            Ok((results, Some((ids, appended.last_offset + 1, synced, traced))))
        };
        let (results, written) = if inline {
            append()?
        } else {
            tokio::task::spawn_blocking(append)
                .await
                .map_err(|source| BrokerError::TaskFailed { what: "queue send", source })??
        };
        Ok(PendingSend { q: q.clone(), results, written, clock: self.broker.clock().clone() })
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
                let now = self.broker.now_ms();
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
                    // Delivery counts need not be durable before delivering,
                    // nor on their own (a crash may under-count one
                    // delivery): they ride on the next fsync of the journal.
                    // Acks are made durable.
                    if auto_ack {
                        q.journal(&mut inner, &entry)?;
                    } else {
                        q.journal_lazily(&mut inner, &entry)?;
                    }
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
                if auto_ack {
                    q.recent().remove(ids.iter().copied());
                }
                let mut out = Vec::with_capacity(leases.len());
                for l in leases {
                    let Some(r) = records.get(&l.id) else { continue };
                    if strata_telemetry::enabled() {
                        let verb = if l.deliveries > 1 { "redeliver" } else { "deliver" };
                        // Ends at once: the span marks the hand-over.
                        crate::telemetry::stored_message_event(r, verb, &q.name, l.id, l.deliveries, None);
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
            let now = self.broker.now_ms();
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
            q.recent().remove(entry.acked.iter().copied());
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
            let now = self.broker.now_ms();
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
        let now = self.broker.now_ms();
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
    pub(super) async fn apply_outcome(&self, q: &Arc<Queue>, outcome: Outcome) {
        let Outcome { dead_letter, finished, retry, woke } = outcome;
        let settled: Vec<u64> = finished.iter().map(|(id, _)| *id).collect();
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
        // After the dead letters were copied (they read the cache).
        q.recent().remove(settled);
    }

    pub(super) async fn wait_journal(&self, q: &Queue, end: u64) -> Result<(), BrokerError> {
        if end > 0 && q.durability() == Durability::Fsync {
            q.journal.wait_durable(end).await.map_err(|e| q.log_error(e))?;
        }
        Ok(())
    }

    // ---- bindings --------------------------------------------------------

    /// Applies due timeouts, delays and expiries of one queue until it closes.
    pub(super) async fn run_timer(self: Arc<Self>, q: Arc<Queue>) {
        let mut shutdown = self.broker.shutdown_signal();
        loop {
            if q.closed.load(Ordering::Acquire) || *shutdown.borrow() {
                return;
            }
            let notified = q.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = self.broker.now_ms();
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
}

/// Sends up to this many bytes are appended on the calling task.
const INLINE_APPEND_BYTES: usize = 64 * 1024;

/// Reads the records with these ids (from the recent-message cache, else
/// the message log).
pub(super) async fn read_records(q: &Arc<Queue>, ids: &[u64]) -> Result<HashMap<u64, Record>, BrokerError> {
    let mut out = HashMap::with_capacity(ids.len());
    let mut wanted = Vec::new();
    {
        let recent = q.recent();
        for &id in ids {
            match recent.get(id) {
                Some(r) => {
                    out.insert(id, r);
                }
                None => wanted.push(id),
            }
        }
    }
    if wanted.is_empty() {
        return Ok(out);
    }
    wanted.sort_unstable();
    let log = q.messages.clone();
    let label = q.label();
    tokio::task::spawn_blocking(move || {
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
    .map_err(|source| BrokerError::TaskFailed { what: "queue read", source })?
}

pub(super) fn user_headers(r: &Record) -> Vec<(String, Bytes)> {
    r.headers
        .iter()
        .filter(|h| h.key != META_HEADER)
        .map(|h| (h.key.clone(), h.value.clone().unwrap_or_default()))
        .collect()
}

pub(super) fn to_received(r: &Record) -> ReceivedMessage {
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

pub(super) fn info_of(meta: &MessageMeta, enqueued_at: i64) -> MessageInfo {
    MessageInfo {
        priority: meta.priority.min(255) as u8,
        group: meta.group.clone(),
        dedup_id: meta.dedup_id.clone(),
        not_before: meta.not_before,
        expires_at: if meta.expires_at == 0 { i64::MAX } else { meta.expires_at },
        enqueued_at,
    }
}

pub(super) fn validate_message(
    m: OutgoingMessage,
    s: &QueueSettings,
    now: i64,
    max_record: usize,
) -> Result<NewMessage, String> {
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

pub(super) fn receipt_error(q: &Queue, id: u64, e: ReceiptError) -> BrokerError {
    let reason = match e {
        ReceiptError::Gone => {
            "the message is no longer in the queue (acknowledged, expired, purged or dead-lettered)".into()
        }
        ReceiptError::Stale { current } => format!("the message was delivered again since (delivery {current})"),
        ReceiptError::NotLeased => "the message is not leased any more (its lease ran out or it was given back)".into(),
    };
    BrokerError::StaleReceipt { queue: q.label(), id, reason }
}

/// Messages appended to a queue's log and not yet acknowledged: the second
/// half of a send ([`QueueManager::send_pending`]).
#[must_use = "a pending send is acknowledged only by wait()"]
pub struct PendingSend {
    q: Arc<Queue>,
    results: Vec<Sent>,
    /// Ids appended, the log's end after them, whether already durable
    /// (durability none), and the publish spans; `None` when every message
    /// was a duplicate.
    written: Option<(Vec<u64>, u64, bool, Option<crate::telemetry::Published>)>,
    clock: Arc<dyn crate::clock::Clock>,
}

impl PendingSend {
    /// Waits until the messages are durable (as the queue's durability
    /// says), makes them deliverable and answers their ids.
    pub async fn wait(self) -> Result<Vec<Sent>, BrokerError> {
        let PendingSend { q, results, written, clock } = self;
        if let Some((ids, end, synced, traced)) = written {
            if !synced {
                let durable = q.messages.wait_durable(end).await;
                if let Some(t) = traced {
                    t.finish(durable.as_ref().err().map(|e| e.to_string()).as_deref());
                }
                durable.map_err(|e| q.log_error(e))?;
                let now = clock.now_ms();
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
}
