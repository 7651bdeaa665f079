//! The per-message state machine of one queue, in memory and free of I/O:
//! every operation takes the current time, so tests drive time directly.
//!
//! Each message not yet finished (acknowledged, dead-lettered, expired or
//! purged) has an [`Entry`] in exactly one of these places:
//! - `ready[priority]`: visible now, received lowest id first within the
//!   highest non-empty priority;
//! - `delayed`: visible from `visible_at` (delay, nack delay, retry backoff);
//! - `inflight`: leased until `deadline`;
//! - `blocked` (FIFO queues only): behind the head of its message group;
//! - `moving`: being copied to the dead-letter queue (not receivable).
//!
//! What this module decides that needs I/O (dead-lettering, and which
//! finished ids to journal) is returned to the caller, which owns the logs.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::catalog::{QueueSettings, TtlAction};

/// Per-message facts fixed at send time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MessageInfo {
    pub priority: u8,
    pub group: String,
    pub dedup_id: String,
    /// Visible from this time (ms since the epoch).
    pub not_before: i64,
    /// Expires at this time; `i64::MAX` = never.
    pub expires_at: i64,
    pub enqueued_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Ready,
    Delayed(i64),
    InFlight(i64),
    Blocked,
    Moving,
    /// Written but not yet durable: not receivable until [`QueueState::mark_synced`].
    Unsynced,
}

#[derive(Debug, Clone)]
struct Entry {
    priority: u8,
    /// Index into `groups` (FIFO queues).
    group: Option<u32>,
    deliveries: u32,
    expires_at: i64,
    enqueued_at: i64,
    /// When it may first be delivered (delay); used when a FIFO message
    /// becomes its group's head.
    visible_at: i64,
    /// Durable (per the queue's durability): may be delivered.
    synced: bool,
    place: Place,
}

/// Why a message leaves the queue for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    Acked,
    DeadLettered,
    Expired,
    /// Max deliveries reached and no dead-letter queue configured.
    Dropped,
}

/// Work for the caller: copy a message to the dead-letter queue, then call
/// [`QueueState::finish`] (or [`QueueState::dead_letter_failed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadLetter {
    pub id: u64,
    pub deliveries: u32,
    pub reason: String,
}

/// What a tick or a nack decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// Messages to move to the dead-letter queue.
    pub dead_letter: Vec<DeadLetter>,
    /// Messages that left the queue here (expired or dropped): journal them.
    pub finished: Vec<(u64, Finish)>,
    /// Messages given back with a delay: (id, visible at). Journal them.
    pub retry: Vec<(u64, i64)>,
    /// Something became visible: wake receivers.
    pub woke: bool,
}

impl Outcome {
    pub fn merge(&mut self, other: Outcome) {
        self.dead_letter.extend(other.dead_letter);
        self.finished.extend(other.finished);
        self.retry.extend(other.retry);
        self.woke |= other.woke;
    }
}

/// Why an ack, nack or extend was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReceiptError {
    /// The message is no longer in the queue.
    Gone,
    /// The receipt is from an earlier delivery.
    Stale { current: u32 },
    /// The message is not leased (its lease ran out and it was nacked back, or it is being dead-lettered).
    NotLeased,
}

#[derive(Debug, Default)]
struct Group {
    name: String,
    /// Ids behind the head, in order.
    waiting: VecDeque<u64>,
    /// The head: the one message of the group that may be delivered.
    head: Option<u64>,
}

/// Counters shown by describe; persisted in snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub sent: u64,
    pub acked: u64,
    pub dead_lettered: u64,
    pub expired: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
    pub oldest_age_ms: i64,
    pub counters: Counters,
}

/// One delivery handed out by [`QueueState::receive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lease {
    pub id: u64,
    pub deliveries: u32,
    pub deadline: i64,
}

pub(crate) struct QueueState {
    settings: QueueSettings,
    entries: BTreeMap<u64, Entry>,
    ready: Vec<BTreeSet<u64>>,
    delayed: BTreeSet<(i64, u64)>,
    inflight: BTreeSet<(i64, u64)>,
    /// Entries with a TTL, by expiry time.
    expiry: BTreeSet<(i64, u64)>,
    groups: Vec<Group>,
    group_ids: HashMap<String, u32>,
    free_groups: Vec<u32>,
    /// dedup id -> (message id, first seen)
    dedup: HashMap<String, (u64, i64)>,
    dedup_order: VecDeque<(i64, String)>,
    pub counters: Counters,
}

impl QueueState {
    pub fn new(settings: QueueSettings) -> QueueState {
        let levels = settings.priorities.max(1) as usize;
        QueueState {
            settings,
            entries: BTreeMap::new(),
            ready: vec![BTreeSet::new(); levels],
            delayed: BTreeSet::new(),
            inflight: BTreeSet::new(),
            expiry: BTreeSet::new(),
            groups: Vec::new(),
            group_ids: HashMap::new(),
            free_groups: Vec::new(),
            dedup: HashMap::new(),
            dedup_order: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    /// New settings apply to messages from now on (and to priority levels
    /// that still exist: a message above the new top level keeps its place
    /// in the top level).
    pub fn set_settings(&mut self, settings: QueueSettings) {
        let levels = settings.priorities.max(1) as usize;
        if levels != self.ready.len() {
            let mut ready = vec![BTreeSet::new(); levels];
            for (p, set) in self.ready.drain(..).enumerate() {
                ready[p.min(levels - 1)].extend(set);
            }
            for e in self.entries.values_mut() {
                e.priority = e.priority.min((levels - 1) as u8);
            }
            self.ready = ready;
        }
        self.settings = settings;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The lowest id not yet finished (every id below it is finished).
    pub fn low_watermark(&self, next_id: u64) -> u64 {
        self.entries.keys().next().copied().unwrap_or(next_id)
    }

    /// Ids below `next_id` (and at or above the low watermark) that are finished.
    pub fn finished_ranges(&self, next_id: u64) -> Vec<(u64, u64)> {
        let mut ranges = Vec::new();
        let mut prev: Option<u64> = None;
        for &id in self.entries.keys() {
            if let Some(p) = prev
                && id > p + 1
            {
                ranges.push((p + 1, id));
            }
            prev = Some(id);
        }
        if let Some(p) = prev
            && next_id > p + 1
        {
            ranges.push((p + 1, next_id));
        }
        ranges
    }

    /// Delivery counts and visibility of unfinished messages that differ from
    /// a fresh message (for snapshots).
    pub fn delivery_state(&self) -> Vec<(u64, u32, i64)> {
        self.entries
            .iter()
            .filter(|(_, e)| e.deliveries > 0 || matches!(e.place, Place::Delayed(_)))
            .map(|(&id, e)| (id, e.deliveries, if let Place::Delayed(t) = e.place { t } else { 0 }))
            .collect()
    }

    // ---- dedup -----------------------------------------------------------

    /// The id of a message sent with `dedup_id` within the window, if any.
    pub fn dedup_lookup(&mut self, dedup_id: &str, now: i64) -> Option<u64> {
        self.prune_dedup(now);
        self.dedup.get(dedup_id).map(|&(id, _)| id)
    }

    /// Records a dedup id (at send time, before the message is durable, so
    /// that a concurrent duplicate is caught).
    pub fn dedup_remember(&mut self, dedup_id: &str, id: u64, seen_at: i64) {
        if self.settings.dedup_window_ms <= 0 || dedup_id.is_empty() {
            return;
        }
        if self.dedup.insert(dedup_id.to_owned(), (id, seen_at)).is_none() {
            self.dedup_order.push_back((seen_at, dedup_id.to_owned()));
        }
    }

    fn prune_dedup(&mut self, now: i64) {
        let window = self.settings.dedup_window_ms;
        while let Some((seen, _)) = self.dedup_order.front() {
            if window > 0 && *seen > now - window {
                break;
            }
            let (seen, key) = self.dedup_order.pop_front().expect("front exists");
            if self.dedup.get(&key).is_some_and(|&(_, s)| s == seen) {
                self.dedup.remove(&key);
            }
        }
    }

    // ---- enqueue ---------------------------------------------------------

    /// Adds a message. `deliveries` and `retry_at` restore state at
    /// recovery (0 and 0 for a new message). An unsynced message is held back
    /// until [`QueueState::mark_synced`]. Returns whether it is visible now.
    pub fn enqueue(
        &mut self,
        id: u64,
        info: &MessageInfo,
        deliveries: u32,
        retry_at: i64,
        synced: bool,
        now: i64,
    ) -> bool {
        if self.entries.contains_key(&id) {
            return false;
        }
        let priority = info.priority.min((self.ready.len() - 1) as u8);
        let group = if self.settings.fifo { Some(self.group_index(&info.group)) } else { None };
        let visible_at = info.not_before.max(retry_at);
        let entry = Entry {
            priority,
            group,
            deliveries,
            expires_at: info.expires_at,
            enqueued_at: info.enqueued_at,
            visible_at,
            synced,
            place: Place::Blocked,
        };
        self.entries.insert(id, entry);
        if info.expires_at != i64::MAX {
            self.expiry.insert((info.expires_at, id));
        }
        match group {
            Some(g) => {
                let grp = &mut self.groups[g as usize];
                if grp.head.is_none() {
                    grp.head = Some(id);
                    self.schedule(id, visible_at, now)
                } else {
                    // Keep id order inside the group (sends complete in any order).
                    let pos = grp.waiting.partition_point(|&w| w < id);
                    grp.waiting.insert(pos, id);
                    false
                }
            }
            None => self.schedule(id, visible_at, now),
        }
    }

    fn group_index(&mut self, name: &str) -> u32 {
        if let Some(&g) = self.group_ids.get(name) {
            return g;
        }
        let g = match self.free_groups.pop() {
            Some(g) => {
                self.groups[g as usize].name = name.to_owned();
                g
            }
            None => {
                self.groups.push(Group { name: name.to_owned(), ..Group::default() });
                (self.groups.len() - 1) as u32
            }
        };
        self.group_ids.insert(name.to_owned(), g);
        g
    }

    /// The write of `id` is durable: it may be delivered (once visible).
    pub fn mark_synced(&mut self, id: u64, now: i64) -> bool {
        let Some(e) = self.entries.get_mut(&id) else { return false };
        e.synced = true;
        if e.place != Place::Unsynced {
            return false;
        }
        let visible_at = e.visible_at;
        self.schedule(id, visible_at, now)
    }

    /// Puts an entry in `ready` or `delayed`. True if it is visible now.
    fn schedule(&mut self, id: u64, visible_at: i64, now: i64) -> bool {
        let Some(e) = self.entries.get_mut(&id) else { return false };
        if !e.synced {
            e.place = Place::Unsynced;
            e.visible_at = visible_at;
            false
        } else if visible_at > now {
            e.place = Place::Delayed(visible_at);
            self.delayed.insert((visible_at, id));
            false
        } else {
            e.place = Place::Ready;
            self.ready[e.priority as usize].insert(id);
            true
        }
    }

    /// Takes an entry out of whatever index holds it.
    fn unplace(&mut self, id: u64) {
        let Some(e) = self.entries.get(&id) else { return };
        match e.place {
            Place::Ready => {
                self.ready[e.priority as usize].remove(&id);
            }
            Place::Delayed(t) => {
                self.delayed.remove(&(t, id));
            }
            Place::InFlight(t) => {
                self.inflight.remove(&(t, id));
            }
            Place::Blocked | Place::Moving | Place::Unsynced => {}
        }
    }

    // ---- receive ---------------------------------------------------------

    /// Leases up to `max` visible messages, highest priority first, oldest
    /// first within a priority. Expired messages met on the way are left for
    /// [`QueueState::tick`] (they are removed from `ready` first).
    pub fn receive(&mut self, max: usize, visibility_ms: i64, now: i64) -> (Vec<Lease>, Outcome) {
        let outcome = self.tick(now);
        let mut leases = Vec::new();
        let deadline = now.saturating_add(visibility_ms);
        for p in (0..self.ready.len()).rev() {
            while leases.len() < max {
                let Some(id) = self.ready[p].pop_first() else { break };
                let e = self.entries.get_mut(&id).expect("ready entries exist");
                e.deliveries += 1;
                e.place = Place::InFlight(deadline);
                self.inflight.insert((deadline, id));
                leases.push(Lease { id, deliveries: e.deliveries, deadline });
            }
        }
        (leases, outcome)
    }

    /// Visible messages in delivery order, without leasing them.
    pub fn peek(&self, max: usize) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        for p in (0..self.ready.len()).rev() {
            for &id in self.ready[p].iter().take(max - out.len()) {
                out.push((id, self.entries[&id].deliveries));
            }
            if out.len() >= max {
                break;
            }
        }
        out
    }

    fn check_lease(&self, id: u64, deliveries: u32) -> Result<&Entry, ReceiptError> {
        let e = self.entries.get(&id).ok_or(ReceiptError::Gone)?;
        if e.deliveries != deliveries {
            return Err(ReceiptError::Stale { current: e.deliveries });
        }
        Ok(e)
    }

    /// Acknowledges a delivery. Accepted while leased, and also after the
    /// lease ran out as long as nobody received the message again (SQS).
    /// Returns whether another message became visible (FIFO: the next of the group).
    pub fn ack(&mut self, id: u64, deliveries: u32, now: i64) -> Result<bool, ReceiptError> {
        let e = self.check_lease(id, deliveries)?;
        if e.place == Place::Moving {
            return Err(ReceiptError::NotLeased);
        }
        Ok(self.finish(id, Finish::Acked, now))
    }

    /// Gives a delivery back: visible again after `delay_ms`, or the retry
    /// backoff when `None`. After the last allowed delivery the message is
    /// dead-lettered (or dropped) instead.
    pub fn nack(&mut self, id: u64, deliveries: u32, delay_ms: Option<i64>, now: i64) -> Result<Outcome, ReceiptError> {
        let e = self.check_lease(id, deliveries)?;
        if !matches!(e.place, Place::InFlight(_)) {
            return Err(ReceiptError::NotLeased);
        }
        let mut out = Outcome::default();
        self.redeliver_or_dead_letter(id, delay_ms, "nacked", now, &mut out);
        Ok(out)
    }

    /// Moves the lease deadline of a delivery to `now + visibility_ms`.
    pub fn extend(&mut self, id: u64, deliveries: u32, visibility_ms: i64, now: i64) -> Result<i64, ReceiptError> {
        let e = self.check_lease(id, deliveries)?;
        let Place::InFlight(old) = e.place else { return Err(ReceiptError::NotLeased) };
        let deadline = now.saturating_add(visibility_ms);
        self.inflight.remove(&(old, id));
        self.inflight.insert((deadline, id));
        self.entries.get_mut(&id).expect("checked").place = Place::InFlight(deadline);
        Ok(deadline)
    }

    /// The retry delay after `deliveries` failed deliveries:
    /// min * 2^(deliveries-1), capped at max.
    pub fn backoff_ms(&self, deliveries: u32) -> i64 {
        let (min, max) = (self.settings.retry_backoff_min_ms, self.settings.retry_backoff_max_ms);
        if min <= 0 {
            return 0;
        }
        let shift = deliveries.saturating_sub(1).min(40);
        min.saturating_mul(1i64 << shift).min(max.max(min))
    }

    fn redeliver_or_dead_letter(&mut self, id: u64, delay_ms: Option<i64>, why: &str, now: i64, out: &mut Outcome) {
        let Some(e) = self.entries.get(&id) else { return };
        let deliveries = e.deliveries;
        let max = self.settings.max_deliveries;
        self.unplace(id);
        if max > 0 && deliveries >= max {
            let reason = format!("delivered {deliveries} times (max_deliveries {max}); last delivery {why}");
            if self.settings.dead_letter_queue.is_some() {
                self.entries.get_mut(&id).expect("exists").place = Place::Moving;
                out.dead_letter.push(DeadLetter { id, deliveries, reason });
            } else {
                out.woke |= self.finish(id, Finish::Dropped, now);
                out.finished.push((id, Finish::Dropped));
            }
            return;
        }
        let delay = delay_ms.unwrap_or_else(|| self.backoff_ms(deliveries)).max(0);
        let at = now.saturating_add(delay);
        if delay > 0 {
            out.retry.push((id, at));
        }
        out.woke |= self.schedule(id, at, now);
    }

    // ---- time ------------------------------------------------------------

    /// Applies everything due at `now`: leases that ran out (a failed
    /// delivery: retry backoff applies), delays that ended, TTLs that expired.
    pub fn tick(&mut self, now: i64) -> Outcome {
        let mut out = Outcome::default();
        while let Some(&(deadline, id)) = self.inflight.first() {
            if deadline > now {
                break;
            }
            self.redeliver_or_dead_letter(id, None, "timed out (visibility timeout)", now, &mut out);
        }
        while let Some(&(at, id)) = self.delayed.first() {
            if at > now {
                break;
            }
            self.delayed.pop_first();
            let e = self.entries.get_mut(&id).expect("delayed entries exist");
            e.place = Place::Ready;
            self.ready[e.priority as usize].insert(id);
            out.woke = true;
        }
        let expired: Vec<u64> = self.expiry.iter().take_while(|(t, _)| *t <= now).map(|&(_, id)| id).collect();
        for id in expired {
            let Some(e) = self.entries.get(&id) else {
                self.expiry.retain(|&(_, i)| i != id);
                continue;
            };
            // A leased message finishes its lease first; it expires when it
            // comes back. A blocked FIFO message expires in place.
            if matches!(e.place, Place::InFlight(_) | Place::Moving) {
                continue;
            }
            let (deliveries, expires_at) = (e.deliveries, e.expires_at);
            match (self.settings.ttl_action, &self.settings.dead_letter_queue) {
                (TtlAction::DeadLetter, Some(_)) => {
                    self.unplace(id);
                    self.expiry.remove(&(expires_at, id));
                    self.entries.get_mut(&id).expect("exists").place = Place::Moving;
                    out.dead_letter.push(DeadLetter { id, deliveries, reason: "expired (time to live)".into() });
                }
                _ => {
                    out.woke |= self.finish(id, Finish::Expired, now);
                    out.finished.push((id, Finish::Expired));
                }
            }
        }
        out
    }

    /// The next time something is due, if anything is.
    pub fn next_due(&self) -> Option<i64> {
        let leased = self.inflight.first().map(|&(t, _)| t);
        let delayed = self.delayed.first().map(|&(t, _)| t);
        // Expiry of in-flight entries is handled when their lease ends.
        let expiry = self
            .expiry
            .iter()
            .find(|(_, id)| !matches!(self.entries.get(id).map(|e| e.place), Some(Place::InFlight(_) | Place::Moving)))
            .map(|&(t, _)| t);
        [leased, delayed, expiry].into_iter().flatten().min()
    }

    // ---- leaving ---------------------------------------------------------

    /// Removes a message for good; in a FIFO queue the next message of its
    /// group becomes the head. Returns whether something became visible.
    pub fn finish(&mut self, id: u64, why: Finish, now: i64) -> bool {
        self.unplace(id);
        let Some(e) = self.entries.remove(&id) else { return false };
        if e.expires_at != i64::MAX {
            self.expiry.remove(&(e.expires_at, id));
        }
        match why {
            Finish::Acked => self.counters.acked += 1,
            Finish::DeadLettered => self.counters.dead_lettered += 1,
            Finish::Expired => self.counters.expired += 1,
            Finish::Dropped => {}
        }
        let Some(g) = e.group else { return false };
        let grp = &mut self.groups[g as usize];
        if grp.head != Some(id) {
            if let Some(pos) = grp.waiting.iter().position(|&w| w == id) {
                grp.waiting.remove(pos);
            }
            return false;
        }
        grp.head = grp.waiting.pop_front();
        match grp.head {
            Some(next) => {
                let visible_at = self.entries.get(&next).map_or(0, |e| e.visible_at);
                self.schedule(next, visible_at, now)
            }
            None => {
                let name = std::mem::take(&mut self.groups[g as usize].name);
                self.group_ids.remove(&name);
                self.free_groups.push(g);
                false
            }
        }
    }

    /// The dead-letter copy failed (e.g. the dead-letter queue was removed):
    /// keep the message, visible again after `retry_ms`.
    pub fn dead_letter_failed(&mut self, id: u64, retry_ms: i64, now: i64) {
        if self.entries.get(&id).is_some_and(|e| e.place == Place::Moving) {
            self.schedule(id, now + retry_ms, now);
        }
    }

    /// Removes every message; returns how many there were.
    pub fn purge(&mut self) -> u64 {
        let n = self.entries.len() as u64;
        self.entries.clear();
        for r in &mut self.ready {
            r.clear();
        }
        self.delayed.clear();
        self.inflight.clear();
        self.expiry.clear();
        self.groups.clear();
        self.group_ids.clear();
        self.free_groups.clear();
        n
    }

    pub fn stats(&self, now: i64) -> Stats {
        let mut s = Stats { counters: self.counters, ..Stats::default() };
        s.visible = self.ready.iter().map(|r| r.len() as u64).sum();
        s.in_flight = self.inflight.len() as u64;
        s.delayed = self.delayed.len() as u64;
        // Ids follow append order, so the first entry is the oldest.
        s.oldest_age_ms = self.entries.values().next().map_or(0, |e| (now - e.enqueued_at).max(0));
        s
    }

    /// The state of one message, for tests and diagnostics.
    #[cfg(test)]
    pub fn deliveries(&self, id: u64) -> Option<u32> {
        self.entries.get(&id).map(|e| e.deliveries)
    }
}
