//! Consumer groups: the [`GroupConsumer`], which shares the partitions of
//! one or more topics with the other members of its group under the
//! broker's cooperative protocol (see `proto/strata/v1/groups.proto`), and
//! group administration on [`Client`] (in `admin`).
//!
//! How the protocol is followed (the background task in `membership` owns
//! the stream; everything else happens in the application's task):
//! - Every `assignment` is the complete owned set. Partitions no longer in
//!   it stop at once (fetcher stopped, buffered records dropped), their
//!   positions are committed (with `auto_commit`), `on_revoked` is called,
//!   and `revoked { generation }` is answered — for every assignment, even
//!   one that takes nothing away. Partitions still owned are not touched:
//!   their fetchers keep running through the rebalance.
//! - New partitions start at the group's committed offset (or the
//!   listener's [`RebalanceListener::start_offset`]), else per
//!   `auto_offset_reset`; a committed offset that is out of range (the log
//!   was truncated by retention) falls back to earliest (latest when
//!   `auto_offset_reset` is latest).
//! - Commits carry the member id and generation. A commit refused because
//!   the member was fenced is logged during rebalances, returned to callers
//!   of [`GroupConsumer::commit`] — like a commit while the consumer is
//!   rejoining ([`Error::NotGroupMember`]) — as an error whose
//!   [`Error::kind`] is `RebalanceInProgress`: nothing to handle but the
//!   records being read again by the partition's next owner.
//! - When the stream ends (removed from the group, broker unavailable, …)
//!   every partition is dropped (`on_revoked`) and the consumer rejoins with
//!   backoff as a new member.

mod admin;
mod membership;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use strata_proto::v1::{CommitOffsetsRequest, PartitionOffset, StartPosition, fetch_request};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub use admin::CommittedOffset;

use crate::client::{Client, Groups};
use crate::consumer::{ConsumedRecord, FetchFailure, FetchSet, FetchSettings, StartFrom, TopicPartition};
use crate::error::Error;
use crate::retry::RetryConfig;
use crate::routing::Target;
use membership::{JoinParams, MemberCommand, MemberEvent};

/// Told about partitions as the group moves them. Called from the task that
/// calls [`GroupConsumer::next`] (or `commit`/`close`), never concurrently.
pub trait RebalanceListener: Send + Sync {
    /// Partitions newly assigned to this member; their fetchers have just
    /// started.
    fn on_assigned(&self, partitions: &[(String, u32)]) {
        let _ = partitions;
    }

    /// Partitions taken from this member (by a rebalance, by `close`, or
    /// because the membership was lost); their fetchers have stopped and
    /// their buffered records are dropped. With `auto_commit` their
    /// positions were committed just before (except when the membership
    /// was lost: the broker refuses commits from a former member).
    fn on_revoked(&self, partitions: &[(String, u32)]) {
        let _ = partitions;
    }

    /// Where to start reading a newly assigned partition. `None` (the
    /// default) means the group's committed offset, or `auto_offset_reset`
    /// when there is none. An application that stores its consumed offsets
    /// with its own output (effectively-once) answers from its store here.
    fn start_offset(&self, topic: &str, partition: u32) -> Option<u64> {
        let _ = (topic, partition);
        None
    }
}

/// Settings of a [`GroupConsumer`].
#[derive(Clone)]
pub struct GroupConsumerConfig {
    /// A member that sends no heartbeat for this long (or does not release
    /// revoked partitions within it) is removed from the group. Between
    /// 500 ms and 5 min.
    pub session_timeout: Duration,
    /// Commit positions automatically: every `auto_commit_interval` (from
    /// inside `next()`), before partitions are given up, and on `close`.
    /// A record returned by `next()` counts as processed once `next()` is
    /// called again (at-least-once).
    pub auto_commit: bool,
    /// How often `auto_commit` commits.
    pub auto_commit_interval: Duration,
    /// Where to start a partition that has **no committed offset** — every
    /// partition of a new group (Kafka's `auto.offset.reset`). The default
    /// is [`StartFrom::Latest`]: a new group reads only records produced
    /// after its member got the partition (assignments arrive while
    /// `next()`/`poll()` runs), so records produced before that are *not*
    /// read. Use [`StartFrom::Earliest`] to read a topic's history with a
    /// new group. Once the group has committed offsets they win (the CLI
    /// passes its `--from` here).
    pub auto_offset_reset: StartFrom,
    /// Soft limit on the bytes of one fetch response.
    pub max_bytes: u32,
    /// How long the broker holds a fetch at the end of the log.
    pub max_wait: Duration,
    /// Free text shown by `strata group describe` (host, process, …).
    pub client_id: String,
    /// Retries of transient failures (fetches, offset look-ups, rejoins; a
    /// rejoin never gives up).
    pub retry: RetryConfig,
    /// Deadline of unary calls and of opening streams.
    pub request_timeout: Duration,
    /// Told about assignments and revocations.
    pub listener: Option<Arc<dyn RebalanceListener>>,
}

impl Default for GroupConsumerConfig {
    fn default() -> Self {
        GroupConsumerConfig {
            session_timeout: Duration::from_secs(10),
            auto_commit: true,
            auto_commit_interval: Duration::from_secs(5),
            auto_offset_reset: StartFrom::Latest,
            max_bytes: 1024 * 1024,
            max_wait: Duration::from_millis(500),
            client_id: String::new(),
            retry: RetryConfig::default(),
            request_timeout: Duration::from_secs(30),
            listener: None,
        }
    }
}

impl std::fmt::Debug for GroupConsumerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumerConfig")
            .field("session_timeout", &self.session_timeout)
            .field("auto_commit", &self.auto_commit)
            .field("auto_commit_interval", &self.auto_commit_interval)
            .field("auto_offset_reset", &self.auto_offset_reset)
            .field("max_bytes", &self.max_bytes)
            .field("max_wait", &self.max_wait)
            .field("client_id", &self.client_id)
            .field("retry", &self.retry)
            .field("request_timeout", &self.request_timeout)
            .field("listener", &self.listener.as_ref().map(|_| "..."))
            .finish()
    }
}

impl GroupConsumerConfig {
    /// The same settings with `listener` told about rebalances.
    pub fn with_listener(mut self, listener: impl RebalanceListener + 'static) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    fn validate(&self) -> Result<(), Error> {
        if self.auto_commit && self.auto_commit_interval.is_zero() {
            return Err(Error::InvalidArgument("auto_commit_interval must be positive".into()));
        }
        if self.session_timeout.is_zero() {
            return Err(Error::InvalidArgument("session_timeout must be positive".into()));
        }
        Ok(())
    }
}

/// Positions to commit for partitions a rebalance took away, and the
/// answer still owed for it. Kept until done, so a `next()` cancelled
/// half-way finishes the job on the next call.
#[derive(Debug)]
struct PendingRevoke {
    session: u64,
    generation: u64,
    offsets: Vec<(TopicPartition, u64)>,
    removed: Vec<(String, u32)>,
}

/// A member of a consumer group: reads the partitions the group assigns it,
/// from where the group left off.
///
/// Records of one partition come in offset order. Call [`next`] regularly:
/// rebalances, auto-commits and callbacks happen inside it (heartbeats do
/// not depend on it), and a member that does not release revoked
/// partitions within its session timeout is removed from the group (like
/// Kafka's `max.poll.interval.ms`). [`close`] leaves the group cleanly;
/// dropping the consumer leaves it too, without a final commit.
///
/// [`next`]: GroupConsumer::next
/// [`close`]: GroupConsumer::close
#[derive(Debug)]
pub struct GroupConsumer {
    client: Client,
    group: String,
    config: GroupConsumerConfig,
    fetch: FetchSet,
    events: mpsc::UnboundedReceiver<MemberEvent>,
    commands: mpsc::UnboundedSender<MemberCommand>,
    /// The current membership (session number and member id).
    session: u64,
    member_id: Option<String>,
    generation: u64,
    /// Every partition of the latest assignment taken in.
    owned: BTreeSet<TopicPartition>,
    /// Owned partitions whose fetchers have not started yet.
    to_start: BTreeSet<TopicPartition>,
    revoke: Option<PendingRevoke>,
    /// The offsets this member committed (or found committed), so unchanged
    /// positions are not committed again.
    committed: HashMap<TopicPartition, u64>,
    next_auto_commit: Instant,
    topics: HashMap<String, Arc<str>>,
    closed: bool,
    /// An error `poll` met after it already had records; the next `poll` returns it.
    deferred: Option<Error>,
    /// The `process` span of the record last returned (tracing on).
    processing: Option<strata_telemetry::BoxedSpan>,
}

impl Client {
    /// Joins consumer group `group` as a member reading `topics`. Fails when
    /// the group name is invalid or a topic does not exist. The consumer
    /// starts with no partitions; they arrive from the group's coordinator
    /// as [`GroupConsumer::next`] is called.
    pub async fn group_consumer<I, S>(
        &self,
        group: &str,
        topics: I,
        config: GroupConsumerConfig,
    ) -> Result<GroupConsumer, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        GroupConsumer::start(self, group, topics.into_iter().map(Into::into).collect(), config).await
    }
}

impl GroupConsumer {
    async fn start(
        client: &Client,
        group: &str,
        topics: Vec<String>,
        config: GroupConsumerConfig,
    ) -> Result<GroupConsumer, Error> {
        config.validate()?;
        if topics.is_empty() {
            return Err(Error::InvalidArgument("a group consumer needs at least one topic".into()));
        }
        let params = JoinParams {
            client: client.clone(),
            group: group.to_owned(),
            topics,
            session_timeout: config.session_timeout,
            client_id: config.client_id.clone(),
            retry: config.retry,
            request_timeout: config.request_timeout,
        };
        let session = membership::join(&params).await?;
        let member_id = Some(session.member_id.clone());
        let (events_tx, events) = mpsc::unbounded_channel();
        let (commands, commands_rx) = mpsc::unbounded_channel();
        tokio::spawn(membership::run(params, session, events_tx, commands_rx));
        let settings = FetchSettings {
            max_bytes: config.max_bytes,
            max_wait: config.max_wait,
            retry: config.retry,
            request_timeout: config.request_timeout,
        };
        Ok(GroupConsumer {
            client: client.clone(),
            group: group.to_owned(),
            fetch: FetchSet::new(client.clone(), settings, 64),
            next_auto_commit: Instant::now() + config.auto_commit_interval,
            config,
            events,
            commands,
            // The membership task numbers the first membership 1.
            session: 1,
            member_id,
            generation: 0,
            owned: BTreeSet::new(),
            to_start: BTreeSet::new(),
            revoke: None,
            committed: HashMap::new(),
            topics: HashMap::new(),
            closed: false,
            processing: None,
            deferred: None,
        })
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// This member's id; `None` while rejoining after the membership was
    /// lost (the new id is taken in by `next()`).
    pub fn member_id(&self) -> Option<&str> {
        self.member_id.as_deref()
    }

    /// The generation of the latest assignment taken in (0 before the first).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The partitions this member owns, in topic and partition order.
    pub fn assignment(&self) -> Vec<(String, u32)> {
        self.owned.iter().map(|(t, p)| (t.to_string(), *p)).collect()
    }

    /// The position of an owned partition: the offset after the last record
    /// `next()` returned from it (or further, past offsets known to hold no
    /// record). `None` before its first fetch response.
    pub fn position(&self, topic: &str, partition: u32) -> Option<u64> {
        self.fetch.progress().find(|((t, p), _)| &**t == topic && *p == partition).and_then(|(_, p)| p.position)
    }

    /// The next record, waiting for one if needed (also while the member
    /// owns no partition). Rebalances are handled in here. Errors are items
    /// too (a partition whose fetch failed, a failed rejoin); the consumer
    /// keeps going after them. `None` once closed.
    ///
    /// Cancel-safe: work interrupted by dropping the future is finished on
    /// the next call.
    pub async fn next(&mut self) -> Option<Result<ConsumedRecord, Error>> {
        self.processing = None;
        let next = self.next_record().await;
        if let Some(Ok(r)) = &next {
            self.processing = r.process_span(Some(&self.group));
        }
        next
    }

    async fn next_record(&mut self) -> Option<Result<ConsumedRecord, Error>> {
        loop {
            if self.closed {
                return None;
            }
            while let Ok(event) = self.events.try_recv() {
                if let Some(error) = self.on_member_event(event) {
                    return Some(Err(error));
                }
            }
            if let Err(error) = self.settle().await {
                return Some(Err(error));
            }
            if self.config.auto_commit && Instant::now() >= self.next_auto_commit {
                self.next_auto_commit = Instant::now() + self.config.auto_commit_interval;
                if let Err(error) = self.commit().await {
                    tracing::warn!(group = %self.group, %error, "auto-commit failed");
                }
            }
            if let Some(record) = self.fetch.take_buffered() {
                return Some(Ok(record));
            }
            let auto_commit = self.config.auto_commit.then_some(self.next_auto_commit);
            tokio::select! {
                biased;
                event = self.events.recv() => match event {
                    Some(event) => {
                        if let Some(error) = self.on_member_event(event) {
                            return Some(Err(error));
                        }
                    }
                    None => {
                        // The membership task is gone (it only stops when
                        // asked to): nothing more will come.
                        self.closed = true;
                        return None;
                    }
                },
                event = self.fetch.recv() => {
                    if let Some(failure) = event.and_then(|e| self.fetch.load(e))
                        && let Some(error) = self.on_fetch_failure(failure)
                    {
                        return Some(Err(error));
                    }
                }
                () = sleep_until(auto_commit) => {}
            }
        }
    }

    /// Up to `max` records: waits up to `timeout` for the first one, then
    /// takes whatever else is already here (no further waiting). An empty
    /// list when nothing arrived in time. Each record carries its
    /// `partition` and `offset`. An error that comes after some records is
    /// returned by the next call.
    ///
    /// ```no_run
    /// # async fn demo(mut consumer: strata_client::GroupConsumer) -> Result<(), strata_client::Error> {
    /// use std::time::Duration;
    ///
    /// for record in consumer.poll(500, Duration::from_millis(100)).await? {
    ///     println!("{}@{}: {:?}", record.partition, record.offset, record.value);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn poll(&mut self, max: usize, timeout: std::time::Duration) -> Result<Vec<ConsumedRecord>, Error> {
        crate::consumer::poll_batch(self, max, timeout).await
    }

    /// The next record if one is already here, without waiting and without
    /// handling rebalances (only `next()` does that). Lets an application
    /// finish what it has (e.g. flush its output) before `next()` commits.
    pub fn try_next(&mut self) -> Option<Result<ConsumedRecord, Error>> {
        let next = self.try_next_record()?;
        // Like `next`: the previous record's `process` span ends, this one's starts.
        self.processing = None;
        if let Ok(r) = &next {
            self.processing = r.process_span(Some(&self.group));
        }
        Some(next)
    }

    fn try_next_record(&mut self) -> Option<Result<ConsumedRecord, Error>> {
        if self.closed {
            return None;
        }
        loop {
            if let Some(record) = self.fetch.take_buffered() {
                return Some(Ok(record));
            }
            let event = self.fetch.try_recv()?;
            if let Some(failure) = self.fetch.load(event)
                && let Some(error) = self.on_fetch_failure(failure)
            {
                return Some(Err(error));
            }
        }
    }

    /// Commits the position of every owned partition (the offset after the
    /// last record `next()` returned from it), skipping positions already
    /// committed.
    pub async fn commit(&mut self) -> Result<(), Error> {
        if self.closed {
            return Err(Error::ConsumerClosed);
        }
        let offsets: Vec<(TopicPartition, u64)> = self
            .fetch
            .progress()
            .filter(|(tp, _)| self.owned.contains(*tp))
            .filter_map(|(tp, p)| Some((tp.clone(), p.position?)))
            .filter(|(tp, pos)| self.committed.get(tp) != Some(pos))
            .collect();
        self.commit_raw(offsets).await
    }

    /// Commits the given `(topic, partition, offset)` triples (the offset is
    /// the next one to read). The partitions must be owned by this member.
    pub async fn commit_offsets(&mut self, offsets: Vec<(String, u32, u64)>) -> Result<(), Error> {
        if self.closed {
            return Err(Error::ConsumerClosed);
        }
        let offsets = offsets.into_iter().map(|(t, p, o)| ((self.intern(&t), p), o)).collect();
        self.commit_raw(offsets).await
    }

    /// Reads an owned partition from `offset` next; records of it already
    /// buffered are dropped.
    pub fn seek(&mut self, topic: &str, partition: u32, offset: u64) -> Result<(), Error> {
        let tp = (self.intern(topic), partition);
        if !self.owned.contains(&tp) {
            return Err(Error::InvalidArgument(format!(
                "partition {topic}/{partition} is not assigned to this member"
            )));
        }
        self.to_start.remove(&tp);
        self.fetch.assign(tp, fetch_request::Start::Offset(offset), Some(offset));
        Ok(())
    }

    /// Leaves the group: commits positions (with `auto_commit`), stops
    /// every fetcher, tells the listener, sends `leave` and waits until the
    /// broker has ended the membership, so the other members take over
    /// right away. `next()` returns `None` afterwards. Returns the commit's
    /// error, if any (the group is left either way).
    pub async fn close(&mut self) -> Result<(), Error> {
        if self.closed {
            return Ok(());
        }
        let mut result = Ok(());
        if let Some(revoke) = self.revoke.take() {
            if self.config.auto_commit
                && let Err(error) = self.commit_raw(revoke.offsets).await
            {
                result = Err(error);
            }
            self.notify_revoked(&revoke.removed);
        }
        if self.config.auto_commit
            && let Err(error) = self.commit().await
            && result.is_ok()
        {
            result = Err(error);
        }
        let owned = self.release_all();
        self.notify_revoked(&owned);
        let (done, left) = oneshot::channel();
        if self.commands.send(MemberCommand::Leave(done)).is_ok() {
            // Bounded by the membership task (it waits at most one session
            // timeout for the broker).
            let _ = left.await;
        }
        self.closed = true;
        self.member_id = None;
        result
    }

    // ---- protocol ------------------------------------------------------------

    fn intern(&mut self, topic: &str) -> Arc<str> {
        if let Some(t) = self.topics.get(topic) {
            return t.clone();
        }
        let t: Arc<str> = topic.into();
        self.topics.insert(topic.to_owned(), t.clone());
        t
    }

    /// Takes in one event of the membership task. Only bookkeeping and
    /// fetcher changes happen here (no waiting); what needs the broker is
    /// left to `settle`.
    fn on_member_event(&mut self, event: MemberEvent) -> Option<Error> {
        match event {
            MemberEvent::Joined { session, member_id } => {
                tracing::debug!(group = %self.group, member = %member_id, "joined the group");
                self.session = session;
                self.member_id = Some(member_id);
                self.generation = 0;
                None
            }
            MemberEvent::Assignment { session, generation, partitions } => {
                if session != self.session {
                    return None;
                }
                let new: BTreeSet<TopicPartition> = partitions.into_iter().map(|(t, p)| (self.intern(&t), p)).collect();
                let removed: Vec<TopicPartition> = self.owned.difference(&new).cloned().collect();
                let added: Vec<TopicPartition> = new.difference(&self.owned).cloned().collect();
                let mut offsets = Vec::new();
                let mut released = Vec::new();
                for tp in &removed {
                    if self.to_start.remove(tp) {
                        // Never started, so the listener never heard of it.
                        continue;
                    }
                    released.push((tp.0.to_string(), tp.1));
                    if let Some(position) = self.fetch.unassign(tp).and_then(|p| p.position)
                        && self.committed.get(tp) != Some(&position)
                    {
                        offsets.push((tp.clone(), position));
                    }
                }
                self.to_start.extend(added);
                self.owned = new;
                self.generation = generation;
                let removed = released;
                match self.revoke.as_mut() {
                    // Not answered yet: one answer with the newer generation
                    // releases both.
                    Some(pending) => {
                        pending.generation = generation;
                        pending.offsets.extend(offsets);
                        pending.removed.extend(removed);
                    }
                    None => self.revoke = Some(PendingRevoke { session, generation, offsets, removed }),
                }
                None
            }
            MemberEvent::Lost { session, error } => {
                if session != self.session {
                    return None;
                }
                tracing::warn!(group = %self.group, %error, "lost the group membership; dropping every partition and rejoining");
                let owned = self.release_all();
                self.revoke = None;
                self.committed.clear();
                self.member_id = None;
                self.generation = 0;
                self.notify_revoked(&owned);
                None
            }
            MemberEvent::JoinFailed(error) => Some(error),
        }
    }

    /// Finishes what assignments left to do: commit and release revoked
    /// partitions, then start new ones.
    async fn settle(&mut self) -> Result<(), Error> {
        if let Some(revoke) = &self.revoke {
            if self.config.auto_commit && !revoke.offsets.is_empty() {
                let offsets = revoke.offsets.clone();
                match self.commit_raw(offsets).await {
                    Ok(()) => {}
                    Err(error) if error.is_fenced_member() => {
                        tracing::info!(group = %self.group, %error, "commit of revoked partitions refused");
                    }
                    Err(error) => {
                        tracing::warn!(group = %self.group, %error, "commit of revoked partitions failed");
                    }
                }
            }
            if let Some(revoke) = self.revoke.take() {
                self.notify_revoked(&revoke.removed);
                let answer = MemberCommand::Revoked { session: revoke.session, generation: revoke.generation };
                let _ = self.commands.send(answer);
            }
        }
        if !self.to_start.is_empty() {
            self.start_partitions().await?;
        }
        Ok(())
    }

    /// Starts fetchers for newly assigned partitions.
    async fn start_partitions(&mut self) -> Result<(), Error> {
        let tps: Vec<TopicPartition> = self.to_start.iter().cloned().collect();
        let pairs: Vec<(&str, u32)> = tps.iter().map(|(t, p)| (&**t, *p)).collect();
        let mut backoff = self.config.retry.backoff();
        let committed = loop {
            match self.client.group_offsets(&self.group, &pairs).await {
                Ok(offsets) => break offsets,
                Err(error) if error.is_retryable() => match backoff.next() {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => return Err(error),
                },
                Err(error) => return Err(error),
            }
        };
        let committed: HashMap<(&str, u32), u64> =
            committed.iter().map(|o| ((o.topic.as_str(), o.partition), o.offset)).collect();
        let mut starts: Vec<(TopicPartition, fetch_request::Start, Option<u64>)> = Vec::new();
        let mut unresolved: Vec<TopicPartition> = Vec::new();
        for tp in &tps {
            let own = self.config.listener.as_ref().and_then(|l| l.start_offset(&tp.0, tp.1));
            match own.or_else(|| committed.get(&(&*tp.0, tp.1)).copied()) {
                Some(offset) => {
                    if committed.get(&(&*tp.0, tp.1)) == Some(&offset) {
                        self.committed.insert(tp.clone(), offset);
                    }
                    starts.push((tp.clone(), fetch_request::Start::Offset(offset), Some(offset)));
                }
                None => unresolved.push(tp.clone()),
            }
        }
        // No committed offset: auto_offset_reset, resolved per topic.
        let mut by_topic: HashMap<Arc<str>, Vec<u32>> = HashMap::new();
        for (topic, partition) in unresolved {
            by_topic.entry(topic).or_default().push(partition);
        }
        for (topic, partitions) in by_topic {
            let resolved =
                crate::consumer::resolve_starts(&self.client, &topic, &partitions, self.config.auto_offset_reset)
                    .await?;
            for (partition, (start, position)) in partitions.into_iter().zip(resolved) {
                starts.push(((topic.clone(), partition), start, position));
            }
        }
        let mut started = Vec::with_capacity(starts.len());
        for (tp, start, position) in starts {
            // Only what is still waiting: nothing changed while we waited
            // (this runs in `&mut self`), but stay exact.
            if self.to_start.remove(&tp) {
                started.push((tp.0.to_string(), tp.1));
                self.fetch.assign(tp, start, position);
            }
        }
        started.sort();
        if !started.is_empty()
            && let Some(listener) = &self.config.listener
        {
            listener.on_assigned(&started);
        }
        Ok(())
    }

    /// A partition's fetcher reported a failure: an offset out of range
    /// restarts it per `auto_offset_reset`; anything else is the caller's.
    fn on_fetch_failure(&mut self, failure: FetchFailure) -> Option<Error> {
        let FetchFailure { tp, error, fatal } = failure;
        let out_of_range = error.code() == Some(tonic::Code::OutOfRange)
            || error.error_code() == strata_proto::v1::ErrorCode::OffsetOutOfRange;
        if fatal && out_of_range && self.owned.contains(&tp) {
            let position = if self.config.auto_offset_reset == StartFrom::Latest {
                StartPosition::Latest
            } else {
                StartPosition::Earliest
            };
            tracing::warn!(
                group = %self.group,
                topic = %tp.0,
                partition = tp.1,
                %error,
                ?position,
                "offset out of range; restarting the partition"
            );
            self.fetch.assign(tp, fetch_request::Start::Position(position as i32), None);
            return None;
        }
        Some(error)
    }

    async fn commit_raw(&mut self, offsets: Vec<(TopicPartition, u64)>) -> Result<(), Error> {
        if offsets.is_empty() {
            return Ok(());
        }
        let Some(member_id) = self.member_id.clone() else {
            return Err(Error::NotGroupMember { group: self.group.clone() });
        };
        let request = CommitOffsetsRequest {
            tenant: self.client.tenant().to_owned(),
            group: self.group.clone(),
            member_id,
            generation: self.generation,
            offsets: offsets
                .iter()
                .map(|((topic, partition), offset)| PartitionOffset {
                    topic: topic.to_string(),
                    partition: *partition,
                    offset: *offset,
                    metadata: String::new(),
                })
                .collect(),
        };
        self.client
            .rpc(Target::Group(&self.group), request, |mut c: Groups, r| async move { c.commit_offsets(r).await })
            .await?;
        for (tp, offset) in offsets {
            self.committed.insert(tp, offset);
        }
        Ok(())
    }

    /// Drops every partition; returns those that had started (the ones the
    /// listener was told about).
    fn release_all(&mut self) -> Vec<(String, u32)> {
        let owned = std::mem::take(&mut self.owned);
        let mut started = Vec::new();
        for tp in owned {
            self.fetch.unassign(&tp);
            if !self.to_start.remove(&tp) {
                started.push((tp.0.to_string(), tp.1));
            }
        }
        self.to_start.clear();
        started
    }

    fn notify_revoked(&self, partitions: &[(String, u32)]) {
        if !partitions.is_empty()
            && let Some(listener) = &self.config.listener
        {
            listener.on_revoked(partitions);
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

crate::consumer::record_source!(GroupConsumer);
