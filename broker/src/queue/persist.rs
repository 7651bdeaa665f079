//! Persistence and recovery: opening every queue (snapshot, then journal
//! replay, then a backlog scan), snapshots that let both logs be trimmed,
//! maintenance, metrics and closing.

use super::delivery::info_of;
use super::*;

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
            cache: recent::CacheBudget::new(broker.config().storage.queue_cache_bytes.0),
        });
        let data = broker.config().storage.data_dir.clone();
        let mut expected = HashSet::new();
        for (tenant, t) in &catalog.tenants {
            for (name, record) in &t.queues {
                let dir = queue_dir(&data, tenant, name, record.id);
                // Its directory stays even while another broker (or, in a
                // cluster grown from this standalone broker, nobody yet)
                // serves it: it may become this broker's.
                expected.insert(dir.clone());
                if broker.cluster().is_some() && !broker.owns(record.owner) {
                    // Cluster mode: another broker serves it (a temporary
                    // one is deleted by its owner when that one restarts).
                    continue;
                }
                if record.temporary {
                    broker
                        .commit_catalog(&CatalogCommand::DeleteQueue { tenant: tenant.clone(), name: name.clone() })
                        .await?;
                    let _ = std::fs::remove_dir_all(&dir);
                    continue;
                }
                let q = mgr.open_queue(tenant, name, record).await?;
                write_lock(&mgr.queues).insert((tenant.clone(), name.clone()), q);
            }
        }
        crate::catalog::remove_orphan_dirs(&data.join("queues"), &expected, "queue");
        for ((tenant, name), q) in read_lock(&mgr.queues).clone() {
            tokio::spawn(mgr.clone().run_timer(q));
            if let Some(record) = catalog.tenants.get(&tenant).and_then(|t| t.queues.get(&name)) {
                for b in &record.bindings {
                    mgr.start_router(&tenant, &name, b.clone());
                }
            }
        }
        if broker.cluster().is_some() {
            tokio::spawn(mgr.clone().follow_ownership());
        }
        // The stored-bytes quota counts the queues' logs too.
        let weak = Arc::downgrade(&mgr);
        broker.set_queue_usage(Box::new(move || weak.upgrade().map(|m| m.stored_bytes()).unwrap_or_default()));
        broker.refresh_stored_usage();
        Ok(mgr)
    }

    /// Bytes of each tenant's queue logs (messages and journal) on this broker.
    pub(crate) fn stored_bytes(&self) -> HashMap<String, u64> {
        let mut out: HashMap<String, u64> = HashMap::new();
        for ((tenant, _), q) in read_lock(&self.queues).iter() {
            *out.entry(tenant.clone()).or_default() += q.messages.stats().size_bytes + q.journal.stats().size_bytes;
        }
        out
    }

    /// Cluster mode: opens the queues that become this broker's (those of a
    /// standalone catalog its broker adopted) as the catalog says so.
    async fn follow_ownership(self: Arc<Self>) {
        let mut owners = self.broker.queue_owners_changed();
        let mut shutdown = self.broker.shutdown_signal();
        loop {
            tokio::select! {
                changed = owners.changed() => if changed.is_err() { return },
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let catalog = self.broker.catalog_snapshot().await;
            for (tenant, t) in &catalog.tenants {
                for (name, record) in &t.queues {
                    let key = (tenant.clone(), name.clone());
                    if record.temporary || !self.broker.owns(record.owner) || read_lock(&self.queues).contains_key(&key)
                    {
                        continue;
                    }
                    let _admin = self.admin.lock().await;
                    if read_lock(&self.queues).contains_key(&key) {
                        continue;
                    }
                    match self.open_queue(tenant, name, record).await {
                        Ok(q) => {
                            write_lock(&self.queues).insert(key, q.clone());
                            tokio::spawn(self.clone().run_timer(q));
                            for b in &record.bindings {
                                self.start_router(tenant, name, b.clone());
                            }
                            tracing::info!(queue = %format!("{tenant}/{name}"), "serving a queue that became this broker's");
                        }
                        Err(e) => tracing::error!(queue = %format!("{tenant}/{name}"), error = %e,
                            "cannot open a queue that became this broker's"),
                    }
                }
            }
        }
    }

    pub(super) async fn open_queue(
        &self,
        tenant: &str,
        name: &str,
        record: &QueueRecord,
    ) -> Result<Arc<Queue>, BrokerError> {
        let cfg = self.broker.config();
        let dir = queue_dir(&cfg.storage.data_dir, tenant, name, record.id);
        let (segment_bytes, interval) = (cfg.topic_defaults.segment_bytes.0, cfg.storage.index_interval_bytes.0);
        let settings = record.settings.clone();
        let label = format!("{tenant}/{name}");
        let d = dir.clone();
        let files = self.broker.segment_files().clone();
        let opened =
            tokio::task::spawn_blocking(move || recover_in(&files, &d, settings, segment_bytes, interval, now_ms()))
                .await
                .map_err(|source| BrokerError::TaskFailed { what: "queue open", source })?
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
            recent: Mutex::new(recent::RecentMessages::new(self.cache.clone())),
        }))
    }

    /// Snapshots queues whose journal grew and trims both logs. Called by the
    /// broker's maintenance loop; `force` snapshots every queue (shutdown).
    pub async fn maintain(&self, force: bool) {
        let queues: Vec<Arc<Queue>> = read_lock(&self.queues).values().cloned().collect();
        let now = self.broker.now_ms();
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
        let now = self.broker.now_ms();
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

pub(super) fn snapshot_and_trim(q: &Queue, force: bool, now: i64) -> Result<(), LogError> {
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
    codec::write_snapshot(&**q.journal.fs(), &path, &snap)
        .map_err(|e| LogError::Io { path: path.clone(), source: e })?;
    q.journal.delete_before(snap.journal_end)?;
    q.messages.delete_before(snap.low_watermark)?;
    Ok(())
}

/// Opens both logs (segment files in `files`) and rebuilds the state at
/// time `now`: snapshot, then the journal after it, then the messages from
/// the low watermark on.
pub(super) fn recover_in(
    files: &Arc<crate::fs::SegmentFiles>,
    dir: &Path,
    settings: QueueSettings,
    segment_bytes: u64,
    interval: u64,
    now: i64,
) -> Result<(Arc<PartitionLog>, Arc<PartitionLog>, QueueState), LogError> {
    let fs = files.fs().clone();
    let cfg = log_config(settings.durability, segment_bytes, interval);
    let (messages, report) = PartitionLog::open_in(files, &dir.join("messages"), cfg, now)?;
    for why in &report.truncated {
        tracing::warn!(queue = %dir.display(), "recovery truncated {why}");
    }
    let (journal, report) = PartitionLog::open_in(files, &dir.join("journal"), cfg, now)?;
    for why in &report.truncated {
        tracing::warn!(queue = %dir.display(), "recovery truncated journal {why}");
    }
    let path = dir.join("state.snap");
    let snap = codec::read_snapshot(&*fs, &path)
        .map_err(|e| LogError::Io { path: path.clone(), source: e })?
        .unwrap_or_default();
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
pub(super) fn for_each_record(log: &PartitionLog, from: u64, mut f: impl FnMut(&Record)) -> Result<(), LogError> {
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use prost::Message as _;
    use strata_proto::batch::{BatchBuilder, BatchHeader, Compression};

    use super::*;
    use crate::fs::SegmentFiles;
    use crate::fs::fault::FaultFs;
    use crate::log::Durability;

    fn append(log: &PartitionLog, value: &[u8]) {
        let mut b = BatchBuilder::new(Compression::None);
        b.push(1_000, None, Some(value), &[]);
        let mut batch = b.finish().unwrap().to_vec();
        let header = BatchHeader::parse(&batch).unwrap();
        log.append(&mut batch, &header, 1_000).unwrap();
    }

    fn pending(q: &mut QueueState) -> Vec<u64> {
        q.receive(100, 1_000, 2_000).0.iter().map(|l| l.id).collect()
    }

    /// Power loss under a queue: acknowledged sends (their fsync returned)
    /// are there after recovery, an acknowledged ack stays acked, and what
    /// was written but not yet fsynced (so never acknowledged) may go —
    /// a message not sent, an ack not done, so the message is delivered
    /// again: at least once.
    #[test]
    fn acknowledged_queue_messages_and_acks_survive_power_loss() {
        let fs = FaultFs::new();
        let dir = Path::new("/data/queues/default/q-1");
        let settings = QueueSettings::defaults(Durability::Fsync);
        let recover = || {
            let files = SegmentFiles::new(fs.fs(), 4);
            recover_in(&files, dir, settings.clone(), 1 << 20, 4096, 1_000).unwrap()
        };
        let (messages, journal, _) = recover();
        for v in [b"m0", b"m1", b"m2"] {
            append(&messages, v);
        }
        messages.flush().unwrap(); // the sends are acknowledged here
        append(&journal, &JournalEntry { acked: vec![0], ..Default::default() }.encode_to_vec());
        journal.flush().unwrap(); // the ack of 0 is acknowledged here
        // Written, never fsynced, never acknowledged.
        append(&messages, b"m3");
        append(&journal, &JournalEntry { acked: vec![1], ..Default::default() }.encode_to_vec());
        messages.close();
        journal.close();

        fs.power_loss();
        let (messages, journal, mut q) = recover();
        assert_eq!(pending(&mut q), [1, 2], "acknowledged messages are there, the acknowledged ack holds");
        assert_eq!(messages.end_offset(), 3, "the unsynced send is gone");
        assert_eq!(journal.end_offset(), 1, "the unsynced ack is gone");

        // A failed fsync of the journal: the ack is refused (the caller
        // answers with the error), and after a power loss the message is
        // still there to be delivered again.
        fs.set_faults(|f| f.fail_sync = Some("/journal/".into()));
        append(&journal, &JournalEntry { acked: vec![2], ..Default::default() }.encode_to_vec());
        assert!(journal.flush().is_err());
        messages.close();
        journal.close();
        fs.clear_faults();
        fs.power_loss();
        let (_, _, mut q) = recover();
        assert_eq!(pending(&mut q), [1, 2]);
    }
}
