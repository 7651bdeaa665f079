//! Consumer groups: membership, cooperative assignment, session timeouts,
//! fencing, durable committed offsets, lag, resets.
//!
//! Each group is an actor task owning its state (members, offsets); every
//! request is an [`Event`] sent to it, so there are no locks around group
//! state and the order of events is the order of decisions. See
//! `README.md` beside this file for the protocol and its invariants.

mod assign;
mod offsets;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::broker::Broker;
use crate::clock::now_ms;
use crate::error::BrokerError;
use crate::names::{TenantName, parse_group_name};
use assign::{MemberSpec, Tp};
use offsets::{Committed, OffsetStore, group_file};

pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
pub const MIN_SESSION_TIMEOUT: Duration = Duration::from_millis(500);
pub const MAX_SESSION_TIMEOUT: Duration = Duration::from_secs(300);
/// How often a group re-reads partition counts (topics may grow).
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// What the coordinator sends a member over its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    Joined {
        member_id: String,
        generation: u64,
        heartbeat_interval: Duration,
        session_timeout: Duration,
    },
    Assignment {
        generation: u64,
        partitions: BTreeMap<String, Vec<u32>>,
    },
    /// The member was removed (session timeout, forced reset, shutdown).
    Removed {
        reason: String,
    },
}

/// A member's request to join.
#[derive(Debug, Clone)]
pub struct JoinSpec {
    pub topics: Vec<String>,
    pub session_timeout: Duration,
    pub client_id: String,
}

/// One offset to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommit {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub metadata: String,
}

/// Where a reset moves a group's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    Earliest,
    Latest,
    Offset(u64),
    Timestamp(i64),
}

#[derive(Debug, Clone)]
pub struct MemberView {
    pub member_id: String,
    pub client_id: String,
    pub generation: u64,
    pub assigned: Vec<(String, u32)>,
    pub revoking: Vec<(String, u32)>,
}

#[derive(Debug, Clone)]
pub struct PartitionLagView {
    pub topic: String,
    pub partition: u32,
    pub committed: Option<u64>,
    pub end_offset: u64,
    pub lag: u64,
    pub owner: Option<String>,
}

#[derive(Debug, Clone)]
pub struct GroupView {
    pub tenant: String,
    pub group: String,
    pub state: &'static str,
    pub members: Vec<MemberView>,
    pub partitions: Vec<PartitionLagView>,
}

type Reply<T> = oneshot::Sender<Result<T, BrokerError>>;

enum Event {
    Join { spec: JoinSpec, tx: mpsc::Sender<MemberEvent>, reply: Reply<String> },
    Heartbeat { member_id: String },
    RevocationDone { member_id: String, generation: u64 },
    Leave { member_id: String },
    Commit { member_id: String, generation: u64, offsets: Vec<OffsetCommit>, reply: Reply<()> },
    FetchOffsets { reply: Reply<Vec<OffsetCommit>> },
    Describe { reply: Reply<GroupView> },
    Reset { topic: String, partitions: Vec<u32>, to: ResetTo, force: bool, reply: Reply<Vec<OffsetCommit>> },
    Delete { reply: Reply<()> },
}

type GroupKey = (String, String);

/// Owns every group actor of the broker.
pub struct GroupCoordinator {
    broker: Arc<Broker>,
    groups: Mutex<HashMap<GroupKey, mpsc::Sender<Event>>>,
    /// Makes member ids unique across broker restarts.
    incarnation: u64,
}

impl std::fmt::Debug for GroupCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCoordinator").finish()
    }
}

fn closed() -> BrokerError {
    BrokerError::ShuttingDown
}

impl GroupCoordinator {
    pub fn new(broker: Arc<Broker>) -> Arc<GroupCoordinator> {
        Arc::new(GroupCoordinator { broker, groups: Mutex::new(HashMap::new()), incarnation: now_ms() as u64 })
    }

    fn key(tenant: &str, group: &str) -> Result<GroupKey, BrokerError> {
        let tenant = TenantName::resolve(tenant)?;
        let group = parse_group_name(group)?;
        Ok((tenant.to_string(), group))
    }

    /// The group's actor, started on demand. Without `create`, a group that
    /// has neither members nor committed offsets is unknown.
    fn actor(&self, key: &GroupKey, create: bool) -> Result<mpsc::Sender<Event>, BrokerError> {
        self.broker.check_group_coordinator(&key.0, &key.1)?;
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = groups.get(key)
            && !tx.is_closed()
        {
            return Ok(tx.clone());
        }
        let path = group_file(&self.broker.config().storage.data_dir, &key.0, &key.1);
        let exists = path.exists();
        if !create && !exists {
            return Err(BrokerError::UnknownGroup { tenant: key.0.clone(), group: key.1.clone() });
        }
        let limit = self.broker.config().limits.max_groups;
        groups.retain(|_, tx| !tx.is_closed());
        if !exists && groups.len() as u64 >= limit {
            return Err(BrokerError::LimitExceeded {
                what: "consumer groups",
                limit_name: "limits.max_groups",
                limit,
                current: groups.len() as u64,
            });
        }
        let store = OffsetStore::load(path).map_err(|source| BrokerError::OffsetStorage {
            group: format!("{}/{}", key.0, key.1),
            action: "loading",
            source,
        })?;
        let (tx, rx) = mpsc::channel(256);
        let actor = GroupActor {
            broker: self.broker.clone(),
            tenant: key.0.clone(),
            group: key.1.clone(),
            members: BTreeMap::new(),
            offsets: store,
            partitions: BTreeMap::new(),
            next_member: 0,
            incarnation: self.incarnation,
        };
        tokio::spawn(actor.run(rx));
        groups.insert(key.clone(), tx.clone());
        Ok(tx)
    }

    async fn ask<T>(
        &self,
        key: &GroupKey,
        create: bool,
        make: impl FnOnce(Reply<T>) -> Event,
    ) -> Result<T, BrokerError> {
        let tx = self.actor(key, create)?;
        let (reply, rx) = oneshot::channel();
        tx.send(make(reply)).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Adds a member; events for it arrive on `tx`. Returns the member id.
    pub async fn join(
        &self,
        tenant: &str,
        group: &str,
        spec: JoinSpec,
        tx: mpsc::Sender<MemberEvent>,
    ) -> Result<(GroupKey, String), BrokerError> {
        let key = Self::key(tenant, group)?;
        if spec.topics.is_empty() {
            return Err(BrokerError::InvalidRequest("join needs at least one topic".into()));
        }
        for t in &spec.topics {
            self.broker.partition_count(&key.0, t)?;
        }
        if !(MIN_SESSION_TIMEOUT..=MAX_SESSION_TIMEOUT).contains(&spec.session_timeout) {
            return Err(BrokerError::InvalidRequest(format!(
                "session timeout must be between {MIN_SESSION_TIMEOUT:?} and {MAX_SESSION_TIMEOUT:?}, got {:?}",
                spec.session_timeout
            )));
        }
        let id = self.ask(&key, true, |reply| Event::Join { spec, tx, reply }).await?;
        Ok((key, id))
    }

    async fn tell(&self, key: &GroupKey, event: Event) {
        if let Ok(tx) = self.actor(key, false) {
            let _ = tx.send(event).await;
        }
    }

    pub async fn heartbeat(&self, key: &GroupKey, member_id: &str) {
        self.tell(key, Event::Heartbeat { member_id: member_id.to_owned() }).await;
    }

    pub async fn revocation_done(&self, key: &GroupKey, member_id: &str, generation: u64) {
        self.tell(key, Event::RevocationDone { member_id: member_id.to_owned(), generation }).await;
    }

    pub async fn leave(&self, key: &GroupKey, member_id: &str) {
        self.tell(key, Event::Leave { member_id: member_id.to_owned() }).await;
    }

    pub async fn commit(
        &self,
        tenant: &str,
        group: &str,
        member_id: &str,
        generation: u64,
        offsets: Vec<OffsetCommit>,
    ) -> Result<(), BrokerError> {
        let key = Self::key(tenant, group)?;
        let member_id = member_id.to_owned();
        self.ask(&key, true, |reply| Event::Commit { member_id, generation, offsets, reply }).await
    }

    pub async fn fetch_offsets(&self, tenant: &str, group: &str) -> Result<Vec<OffsetCommit>, BrokerError> {
        let key = Self::key(tenant, group)?;
        match self.ask(&key, false, |reply| Event::FetchOffsets { reply }).await {
            Err(BrokerError::UnknownGroup { .. }) => Ok(Vec::new()),
            other => other,
        }
    }

    pub async fn describe(&self, tenant: &str, group: &str) -> Result<GroupView, BrokerError> {
        let key = Self::key(tenant, group)?;
        self.ask(&key, false, |reply| Event::Describe { reply }).await
    }

    pub async fn reset(
        &self,
        tenant: &str,
        group: &str,
        topic: &str,
        partitions: Vec<u32>,
        to: ResetTo,
        force: bool,
    ) -> Result<Vec<OffsetCommit>, BrokerError> {
        let key = Self::key(tenant, group)?;
        self.broker.partition_count(&key.0, topic)?;
        let topic = topic.to_owned();
        self.ask(&key, true, |reply| Event::Reset { topic, partitions, to, force, reply }).await
    }

    pub async fn delete(&self, tenant: &str, group: &str) -> Result<(), BrokerError> {
        let key = Self::key(tenant, group)?;
        self.ask(&key, false, |reply| Event::Delete { reply }).await?;
        self.groups.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        Ok(())
    }

    /// Every group of the tenant with its member count and state.
    pub async fn list(&self, tenant: &str) -> Result<Vec<(String, usize, &'static str)>, BrokerError> {
        let tenant = TenantName::resolve(tenant)?.to_string();
        let mut names: BTreeSet<String> = BTreeSet::new();
        let dir = self.broker.config().storage.data_dir.join("groups").join(&tenant);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if let Some(name) = e.file_name().to_str().and_then(|n| n.strip_suffix(".json")) {
                    names.insert(name.to_owned());
                }
            }
        }
        {
            let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
            names.extend(groups.keys().filter(|(t, _)| *t == tenant).map(|(_, g)| g.clone()));
        }
        let mut out = Vec::new();
        for name in names {
            match self.describe(&tenant, &name).await {
                Ok(v) => out.push((name, v.members.len(), v.state)),
                Err(BrokerError::UnknownGroup { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

struct Member {
    client_id: String,
    topics: BTreeSet<String>,
    session_timeout: Duration,
    deadline: Instant,
    generation: u64,
    owned: BTreeSet<Tp>,
    /// Partitions taken away, with the generation that took them.
    revoking: BTreeMap<Tp, u64>,
    revoke_deadline: Option<Instant>,
    tx: mpsc::Sender<MemberEvent>,
}

impl Member {
    fn holds(&self, tp: &Tp) -> bool {
        self.owned.contains(tp) || self.revoking.contains_key(tp)
    }
}

struct GroupActor {
    broker: Arc<Broker>,
    tenant: String,
    group: String,
    members: BTreeMap<String, Member>,
    offsets: OffsetStore,
    partitions: BTreeMap<String, u32>,
    next_member: u64,
    incarnation: u64,
}

fn grouped(set: &BTreeSet<Tp>) -> BTreeMap<String, Vec<u32>> {
    let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for (t, p) in set {
        out.entry(t.clone()).or_default().push(*p);
    }
    out
}

impl GroupActor {
    async fn run(mut self, mut rx: mpsc::Receiver<Event>) {
        let broker = self.broker.clone();
        let mut refresh = tokio::time::interval(REFRESH_INTERVAL);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => {
                        if self.handle(ev).await {
                            return;
                        }
                    }
                    None => return,
                },
                _ = sleep_until(deadline) => self.expire(),
                _ = refresh.tick() => {
                    if !self.members.is_empty() && self.partition_counts() != self.partitions {
                        self.rebalance();
                    }
                }
                _ = broker.until_shutdown() => {
                    let ids: Vec<String> = self.members.keys().cloned().collect();
                    for id in ids {
                        self.remove(&id, "the broker is shutting down");
                    }
                    return;
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.members.values().flat_map(|m| [Some(m.deadline), m.revoke_deadline]).flatten().min()
    }

    /// Handles one event; returns true when the actor should stop.
    async fn handle(&mut self, ev: Event) -> bool {
        match ev {
            Event::Join { spec, tx, reply } => {
                let id = self.add_member(spec, tx);
                let _ = reply.send(Ok(id));
                self.rebalance();
            }
            Event::Heartbeat { member_id } => self.touch(&member_id),
            Event::RevocationDone { member_id, generation } => {
                self.touch(&member_id);
                if let Some(m) = self.members.get_mut(&member_id) {
                    m.revoking.retain(|_, g| *g > generation);
                    if m.revoking.is_empty() {
                        m.revoke_deadline = None;
                    }
                    self.rebalance();
                }
            }
            Event::Leave { member_id } => {
                if self.members.contains_key(&member_id) {
                    self.remove(&member_id, "left the group");
                    self.rebalance();
                }
            }
            Event::Commit { member_id, generation, offsets, reply } => {
                let r = self.commit(&member_id, generation, offsets).await;
                let _ = reply.send(r);
            }
            Event::FetchOffsets { reply } => {
                let all = self
                    .offsets
                    .all()
                    .map(|(t, p, c)| OffsetCommit {
                        topic: t.clone(),
                        partition: p,
                        offset: c.offset,
                        metadata: c.metadata.clone(),
                    })
                    .collect();
                let _ = reply.send(Ok(all));
            }
            Event::Describe { reply } => {
                let r = self.describe();
                let _ = reply.send(r);
            }
            Event::Reset { topic, partitions, to, force, reply } => {
                let r = self.reset(&topic, partitions, to, force).await;
                let _ = reply.send(r);
            }
            Event::Delete { reply } => {
                if !self.members.is_empty() {
                    let _ = reply.send(Err(BrokerError::GroupNotEmpty {
                        group: self.group.clone(),
                        members: self.members.len(),
                    }));
                    return false;
                }
                let r = self.offsets.delete().map_err(|source| BrokerError::OffsetStorage {
                    group: self.group.clone(),
                    action: "deleting",
                    source,
                });
                let ok = r.is_ok();
                let _ = reply.send(r);
                return ok;
            }
        }
        false
    }

    fn add_member(&mut self, spec: JoinSpec, tx: mpsc::Sender<MemberEvent>) -> String {
        self.next_member += 1;
        let id = format!(
            "{}-{:x}-{}",
            if spec.client_id.is_empty() { "member" } else { "m" },
            self.incarnation,
            self.next_member
        );
        let heartbeat_interval = spec.session_timeout / 3;
        let _ = tx.try_send(MemberEvent::Joined {
            member_id: id.clone(),
            generation: 0,
            heartbeat_interval,
            session_timeout: spec.session_timeout,
        });
        tracing::info!(tenant = %self.tenant, group = %self.group, member = %id, client = %spec.client_id, "member joined");
        self.members.insert(
            id.clone(),
            Member {
                client_id: spec.client_id,
                topics: spec.topics.into_iter().collect(),
                session_timeout: spec.session_timeout,
                deadline: Instant::now() + spec.session_timeout,
                generation: 0,
                owned: BTreeSet::new(),
                revoking: BTreeMap::new(),
                revoke_deadline: None,
                tx,
            },
        );
        id
    }

    fn touch(&mut self, member_id: &str) {
        if let Some(m) = self.members.get_mut(member_id) {
            m.deadline = Instant::now() + m.session_timeout;
        }
    }

    fn remove(&mut self, member_id: &str, reason: &str) {
        if let Some(m) = self.members.remove(member_id) {
            tracing::info!(tenant = %self.tenant, group = %self.group, member = %member_id, reason, "member removed");
            let _ = m.tx.try_send(MemberEvent::Removed { reason: reason.to_owned() });
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let expired: Vec<(String, &'static str)> = self
            .members
            .iter()
            .filter_map(|(id, m)| {
                if m.deadline <= now {
                    Some((id.clone(), "session timed out"))
                } else if m.revoke_deadline.is_some_and(|d| d <= now) {
                    Some((id.clone(), "did not release revoked partitions within the session timeout"))
                } else {
                    None
                }
            })
            .collect();
        if expired.is_empty() {
            return;
        }
        for (id, why) in expired {
            self.remove(&id, why);
        }
        self.rebalance();
    }

    fn partition_counts(&self) -> BTreeMap<String, u32> {
        let topics: BTreeSet<&String> = self.members.values().flat_map(|m| m.topics.iter()).collect();
        topics.into_iter().map(|t| (t.clone(), self.broker.partition_count(&self.tenant, t).unwrap_or(0))).collect()
    }

    /// Recomputes the target assignment and moves members towards it:
    /// revoke first; give a partition to its new owner only once no one else
    /// holds it.
    fn rebalance(&mut self) {
        self.partitions = self.partition_counts();
        let specs: BTreeMap<String, MemberSpec> = self
            .members
            .iter()
            .map(|(id, m)| {
                let mut current = m.owned.clone();
                current.extend(m.revoking.keys().cloned());
                (id.clone(), MemberSpec { topics: m.topics.clone(), current })
            })
            .collect();
        let target = assign::assign(&specs, &self.partitions);
        let mut changed: BTreeSet<String> = BTreeSet::new();
        let mut revoked_now: BTreeSet<String> = BTreeSet::new();
        for (id, m) in self.members.iter_mut() {
            let goal = &target[id];
            let gone: Vec<Tp> = m.owned.iter().filter(|tp| !goal.contains(*tp)).cloned().collect();
            if !gone.is_empty() {
                for tp in gone {
                    m.owned.remove(&tp);
                    m.revoking.insert(tp, m.generation + 1);
                }
                changed.insert(id.clone());
                revoked_now.insert(id.clone());
            }
        }
        let mut held: BTreeSet<Tp> = BTreeSet::new();
        for m in self.members.values() {
            held.extend(m.owned.iter().cloned());
            held.extend(m.revoking.keys().cloned());
        }
        for (id, m) in self.members.iter_mut() {
            for tp in &target[id] {
                if !held.contains(tp) {
                    m.owned.insert(tp.clone());
                    held.insert(tp.clone());
                    changed.insert(id.clone());
                }
            }
        }
        let now = Instant::now();
        let mut dead = Vec::new();
        for id in changed {
            let Some(m) = self.members.get_mut(&id) else { continue };
            m.generation += 1;
            if revoked_now.contains(&id) {
                m.revoke_deadline = Some(now + m.session_timeout);
            }
            let ev = MemberEvent::Assignment { generation: m.generation, partitions: grouped(&m.owned) };
            if m.tx.try_send(ev).is_err() {
                dead.push(id);
            }
        }
        if !dead.is_empty() {
            for id in dead {
                self.remove(&id, "its stream is gone");
            }
            self.rebalance();
        }
    }

    fn partition_range(&self, topic: &str, partition: u32) -> Result<(String, u64, u64), BrokerError> {
        let p = self.broker.partition(&self.tenant, topic, partition)?;
        let stats = p.stats();
        Ok((p.id().to_string(), stats.start_offset, stats.high_watermark))
    }

    async fn commit(
        &mut self,
        member_id: &str,
        generation: u64,
        offsets: Vec<OffsetCommit>,
    ) -> Result<(), BrokerError> {
        let fenced = |reason: String| BrokerError::FencedMember {
            group: self.group.clone(),
            member: member_id.to_owned(),
            reason,
        };
        if member_id.is_empty() {
            if !self.members.is_empty() {
                return Err(BrokerError::GroupNotEmpty { group: self.group.clone(), members: self.members.len() });
            }
        } else {
            let m = self.members.get(member_id).ok_or_else(|| BrokerError::UnknownMember {
                group: self.group.clone(),
                member: member_id.to_owned(),
            })?;
            if generation > m.generation {
                return Err(fenced(format!("generation {generation} is newer than its current {}", m.generation)));
            }
            for o in &offsets {
                if !m.holds(&(o.topic.clone(), o.partition)) {
                    return Err(fenced(format!(
                        "partition {}/{} is not assigned to it (generation {})",
                        o.topic, o.partition, m.generation
                    )));
                }
            }
        }
        let mut entries = Vec::with_capacity(offsets.len());
        for o in offsets {
            match self.partition_range(&o.topic, o.partition) {
                Ok((resource, _, end)) if o.offset > end => {
                    return Err(BrokerError::OffsetBeyondEnd { resource, offset: o.offset, end });
                }
                Ok(_) => {}
                // Cluster mode: another broker owns the partition, so its end
                // is not known here; the offset is taken as the member read it.
                Err(BrokerError::NotLeader { .. }) => {}
                Err(e) => return Err(e),
            }
            entries.push((
                o.topic,
                o.partition,
                Committed { offset: o.offset, metadata: o.metadata, committed_at_ms: now_ms() },
            ));
        }
        self.touch(member_id);
        self.offsets.commit(entries).await.map_err(|source| BrokerError::OffsetStorage {
            group: self.group.clone(),
            action: "committing",
            source,
        })
    }

    fn describe(&self) -> Result<GroupView, BrokerError> {
        if self.members.is_empty() && !self.offsets.exists() {
            return Err(BrokerError::UnknownGroup { tenant: self.tenant.clone(), group: self.group.clone() });
        }
        let mut owners: BTreeMap<Tp, String> = BTreeMap::new();
        let mut members = Vec::new();
        for (id, m) in &self.members {
            for tp in &m.owned {
                owners.insert(tp.clone(), id.clone());
            }
            members.push(MemberView {
                member_id: id.clone(),
                client_id: m.client_id.clone(),
                generation: m.generation,
                assigned: m.owned.iter().cloned().collect(),
                revoking: m.revoking.keys().cloned().collect(),
            });
        }
        // Every partition of every topic the group reads or has committed
        // for, so lag shows for partitions it never committed too.
        let mut topics: BTreeSet<String> = self.offsets.all().map(|(t, _, _)| t.clone()).collect();
        topics.extend(self.members.values().flat_map(|m| m.topics.iter().cloned()));
        let mut tps: BTreeSet<Tp> = self.offsets.all().map(|(t, p, _)| (t.clone(), p)).collect();
        for t in &topics {
            let n = self.broker.partition_count(&self.tenant, t).unwrap_or(0);
            tps.extend((0..n).map(|p| (t.clone(), p)));
        }
        let mut partitions = Vec::new();
        for (topic, partition) in tps {
            let Ok((_, start, end)) = self.partition_range(&topic, partition) else { continue };
            let committed = self.offsets.get(&topic, partition).map(|c| c.offset);
            let lag = end.saturating_sub(committed.unwrap_or(start));
            let owner = owners.get(&(topic.clone(), partition)).cloned();
            partitions.push(PartitionLagView { topic, partition, committed, end_offset: end, lag, owner });
        }
        let rebalancing = self.members.values().any(|m| !m.revoking.is_empty());
        let state = if self.members.is_empty() {
            "Empty"
        } else if rebalancing {
            "Rebalancing"
        } else {
            "Stable"
        };
        Ok(GroupView { tenant: self.tenant.clone(), group: self.group.clone(), state, members, partitions })
    }

    async fn reset(
        &mut self,
        topic: &str,
        partitions: Vec<u32>,
        to: ResetTo,
        force: bool,
    ) -> Result<Vec<OffsetCommit>, BrokerError> {
        if !self.members.is_empty() {
            if !force {
                return Err(BrokerError::GroupNotEmpty { group: self.group.clone(), members: self.members.len() });
            }
            // Members would overwrite the reset with their positions: remove
            // them (their later commits are refused); they rejoin and start
            // from the reset offsets.
            let ids: Vec<String> = self.members.keys().cloned().collect();
            for id in ids {
                self.remove(&id, "the group's offsets were reset by an administrator; rejoin");
            }
        }
        let count = self.broker.partition_count(&self.tenant, topic)?;
        let targets: Vec<u32> = if partitions.is_empty() { (0..count).collect() } else { partitions };
        let mut out = Vec::new();
        let mut entries = Vec::new();
        for p in targets {
            let part = self.broker.partition(&self.tenant, topic, p)?;
            let stats = part.stats();
            let offset = match to {
                ResetTo::Earliest => stats.start_offset,
                ResetTo::Latest => stats.high_watermark,
                ResetTo::Offset(o) => {
                    if o < stats.start_offset || o > stats.high_watermark {
                        return Err(BrokerError::OffsetOutOfRange {
                            resource: part.id().to_string(),
                            offset: o,
                            start: stats.start_offset,
                            end: stats.high_watermark,
                        });
                    }
                    o
                }
                ResetTo::Timestamp(ts) => part.offset_for_timestamp(ts).await?.0,
            };
            out.push(OffsetCommit { topic: topic.to_owned(), partition: p, offset, metadata: String::new() });
            entries.push((
                topic.to_owned(),
                p,
                Committed { offset, metadata: String::new(), committed_at_ms: now_ms() },
            ));
        }
        self.offsets.commit(entries).await.map_err(|source| BrokerError::OffsetStorage {
            group: self.group.clone(),
            action: "resetting",
            source,
        })?;
        tracing::info!(tenant = %self.tenant, group = %self.group, topic, ?to, "offsets reset");
        Ok(out)
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
