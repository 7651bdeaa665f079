//! Recently sent messages, kept in memory so that a receive that follows
//! its send closely — a queue whose consumers keep up — is answered without
//! a disk read and without a blocking task (one thread hop and one log scan
//! less per receive).
//!
//! The message log stays the truth: a miss (evicted, never cached, after a
//! restart) reads the log as before. Records are immutable once written, so
//! a cached copy is never stale. Memory is bounded twice: each queue keeps
//! at most a quarter of the broker-wide budget (oldest ids evicted first),
//! and all queues together at most `storage.queue_cache_bytes`; a message
//! that does not fit is simply not cached. Entries leave when their message
//! is settled (acknowledged, expired, dropped, dead-lettered, purged) or
//! when the queue closes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use strata_proto::batch::Record;

/// What every queue's cache draws from (one per broker).
#[derive(Debug)]
pub(crate) struct CacheBudget {
    used: AtomicU64,
    limit: u64,
}

impl CacheBudget {
    pub(crate) fn new(limit: u64) -> Arc<CacheBudget> {
        Arc::new(CacheBudget { used: AtomicU64::new(0), limit })
    }

    /// Takes `n` bytes if they fit.
    fn reserve(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let next = used.checked_add(n)?;
                (next <= self.limit).then_some(next)
            })
            .is_ok()
    }

    fn release(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    #[cfg(test)]
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

/// One queue's recent messages, by id.
#[derive(Debug)]
pub(super) struct RecentMessages {
    records: BTreeMap<u64, (Record, u64)>,
    bytes: u64,
    budget: Arc<CacheBudget>,
}

/// Bytes a cached record is charged: its payload plus bookkeeping.
fn charge(r: &Record) -> u64 {
    let payload = r.key.as_ref().map_or(0, |k| k.len())
        + r.value.as_ref().map_or(0, |v| v.len())
        + r.headers.iter().map(|h| h.key.len() + h.value.as_ref().map_or(0, |v| v.len()) + 32).sum::<usize>();
    payload as u64 + 96
}

impl RecentMessages {
    pub(super) fn new(budget: Arc<CacheBudget>) -> RecentMessages {
        RecentMessages { records: BTreeMap::new(), bytes: 0, budget }
    }

    fn queue_cap(&self) -> u64 {
        self.budget.limit / 4
    }

    /// Keeps a copy of a message just appended (ids grow, so the oldest
    /// are evicted first when the queue is over its share).
    pub(super) fn insert(&mut self, record: Record) {
        let size = charge(&record);
        if size > self.queue_cap() {
            return;
        }
        while self.bytes + size > self.queue_cap() {
            let Some((_, (_, n))) = self.records.pop_first() else { break };
            self.bytes -= n;
            self.budget.release(n);
        }
        if !self.budget.reserve(size) {
            return;
        }
        if let Some((_, old)) = self.records.insert(record.offset, (record, size)) {
            self.bytes -= old;
            self.budget.release(old);
        }
        self.bytes += size;
    }

    /// A copy of the message (cheap: the payload is reference-counted).
    pub(super) fn get(&self, id: u64) -> Option<Record> {
        self.records.get(&id).map(|(r, _)| r.clone())
    }

    /// Forgets settled messages.
    pub(super) fn remove(&mut self, ids: impl IntoIterator<Item = u64>) {
        for id in ids {
            if let Some((_, n)) = self.records.remove(&id) {
                self.bytes -= n;
                self.budget.release(n);
            }
        }
    }

    pub(super) fn clear(&mut self) {
        self.budget.release(self.bytes);
        self.records.clear();
        self.bytes = 0;
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.records.len()
    }
}

impl Drop for RecentMessages {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn record(id: u64, len: usize) -> Record {
        Record { offset: id, timestamp_ms: 1, key: None, value: Some(Bytes::from(vec![7u8; len])), headers: vec![] }
    }

    #[test]
    fn hits_misses_and_settling() {
        let budget = CacheBudget::new(1 << 20);
        let mut cache = RecentMessages::new(budget.clone());
        cache.insert(record(1, 100));
        cache.insert(record(2, 100));
        assert_eq!(cache.get(1).unwrap().value.unwrap().len(), 100);
        assert!(cache.get(3).is_none());
        cache.remove([1, 3]);
        assert!(cache.get(1).is_none());
        assert_eq!(budget.used(), charge(&record(2, 100)));
        drop(cache);
        assert_eq!(budget.used(), 0, "a closed queue gives its share back");
    }

    #[test]
    fn a_queue_keeps_at_most_its_share_evicting_the_oldest() {
        let budget = CacheBudget::new(40_000);
        let mut cache = RecentMessages::new(budget.clone());
        for id in 0..100 {
            cache.insert(record(id, 1_000));
        }
        assert!(cache.bytes <= 10_000, "{}", cache.bytes);
        assert!(cache.get(99).is_some(), "the newest stays");
        assert!(cache.get(0).is_none(), "the oldest went");
        assert_eq!(budget.used(), cache.bytes);
        // Too big for a share: not cached at all.
        cache.insert(record(1_000, 20_000));
        assert!(cache.get(1_000).is_none());
    }

    #[test]
    fn the_broker_wide_budget_bounds_every_queue_together() {
        let budget = CacheBudget::new(40_000);
        let mut queues: Vec<_> = (0..8).map(|_| RecentMessages::new(budget.clone())).collect();
        for (i, q) in queues.iter_mut().enumerate() {
            for id in 0..20 {
                q.insert(record(id + 100 * i as u64, 1_000));
            }
        }
        assert!(budget.used() <= 40_000, "{}", budget.used());
        assert!(queues[7].len() < 20, "later queues found the budget spent");
        queues[0].clear();
        queues[7].insert(record(999, 1_000));
        assert!(queues[7].get(999).is_some(), "freed budget is used again");
    }
}
