//! Group consumers against a real in-process broker: balanced assignment,
//! cooperative rebalances that move only what must move (and do not pause
//! the rest), hand-over on close, commits that survive members, lag, and
//! the out-of-range fallback.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_client::{
    Client, ConsumedRecord, ConsumerConfig, GroupConsumer, GroupConsumerConfig, Message, ProducerConfig,
    RebalanceListener, StartFrom, TopicOptions,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::TestBroker;

const DEADLINE: Duration = Duration::from_secs(30);

type Tp = (String, u32);

/// What the members of one test have seen, shared with their drivers.
#[derive(Default)]
struct Seen {
    /// Per member: the partitions it owns, as told by its listener.
    owned: BTreeMap<String, BTreeSet<Tp>>,
    /// Per member: every partition it was ever told it lost, in order.
    revoked: BTreeMap<String, Vec<Tp>>,
    /// Per member: every partition it was ever given, in order.
    assigned: BTreeMap<String, Vec<Tp>>,
    /// Per member: records received, as (partition, offset, value).
    records: BTreeMap<String, Vec<(u32, u64, String)>>,
    errors: Vec<String>,
}

/// Shared state plus a counter that wakes waiters on every change.
#[derive(Clone)]
struct Observed {
    seen: Arc<Mutex<Seen>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Observed {
    fn new() -> Observed {
        Observed { seen: Arc::default(), changed: Arc::new(watch::channel(0).0) }
    }

    fn update(&self, f: impl FnOnce(&mut Seen)) {
        f(&mut self.seen.lock().unwrap());
        self.changed.send_modify(|v| *v += 1);
    }

    fn read<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap())
    }

    /// Waits until `cond` holds, re-checking on every change.
    async fn wait_for(&self, what: &str, cond: impl Fn(&Seen) -> bool) {
        let mut rx = self.changed.subscribe();
        let deadline = Instant::now() + DEADLINE;
        loop {
            if self.read(&cond) {
                return;
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                let state = self.read(|s| format!("owned {:?}; errors {:?}", s.owned, s.errors));
                panic!("timed out waiting for {what}: {state}");
            }
        }
    }
}

struct Recorder {
    name: String,
    observed: Observed,
}

impl RebalanceListener for Recorder {
    fn on_assigned(&self, partitions: &[(String, u32)]) {
        self.observed.update(|s| {
            s.owned.entry(self.name.clone()).or_default().extend(partitions.iter().cloned());
            s.assigned.entry(self.name.clone()).or_default().extend(partitions.iter().cloned());
        });
    }

    fn on_revoked(&self, partitions: &[(String, u32)]) {
        self.observed.update(|s| {
            let owned = s.owned.entry(self.name.clone()).or_default();
            for tp in partitions {
                owned.remove(tp);
            }
            s.revoked.entry(self.name.clone()).or_default().extend(partitions.iter().cloned());
        });
    }
}

#[derive(Debug)]
enum Control {
    Pause(oneshot::Sender<()>),
    Resume,
    Close(oneshot::Sender<Result<(), strata_client::Error>>),
    /// Stop driving and hand the consumer back.
    Stop(oneshot::Sender<GroupConsumer>),
}

/// A group member driven by its own task, which calls `next()` unless
/// paused and records everything it sees.
struct Member {
    control: mpsc::UnboundedSender<Control>,
}

impl Member {
    async fn start(client: &Client, group: &str, topic: &str, name: &str, observed: &Observed) -> Member {
        let config = GroupConsumerConfig {
            auto_offset_reset: StartFrom::Earliest,
            max_wait: Duration::from_millis(100),
            client_id: name.to_owned(),
            ..GroupConsumerConfig::default()
        }
        .with_listener(Recorder { name: name.to_owned(), observed: observed.clone() });
        let consumer = client.group_consumer(group, [topic], config).await.expect("joins");
        let (control, rx) = mpsc::unbounded_channel();
        tokio::spawn(drive(consumer, name.to_owned(), observed.clone(), rx));
        Member { control }
    }

    async fn pause(&self) {
        let (tx, rx) = oneshot::channel();
        self.control.send(Control::Pause(tx)).expect("driver alive");
        rx.await.expect("paused");
    }

    fn resume(&self) {
        self.control.send(Control::Resume).expect("driver alive");
    }

    async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        self.control.send(Control::Close(tx)).expect("driver alive");
        rx.await.expect("closed").expect("close commits");
    }

    async fn stop(&self) -> GroupConsumer {
        let (tx, rx) = oneshot::channel();
        self.control.send(Control::Stop(tx)).expect("driver alive");
        rx.await.expect("stopped")
    }
}

async fn drive(
    mut consumer: GroupConsumer,
    name: String,
    observed: Observed,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let mut paused = false;
    loop {
        let command = if paused {
            control.recv().await
        } else {
            tokio::select! {
                c = control.recv() => c,
                item = consumer.next() => {
                    match item {
                        Some(Ok(r)) => record(&observed, &name, &r),
                        Some(Err(e)) => observed.update(|s| s.errors.push(format!("{name}: {e}"))),
                        None => return,
                    }
                    continue;
                }
            }
        };
        match command {
            Some(Control::Pause(ack)) => {
                paused = true;
                let _ = ack.send(());
            }
            Some(Control::Resume) => paused = false,
            Some(Control::Close(done)) => {
                let _ = done.send(consumer.close().await);
                return;
            }
            Some(Control::Stop(done)) => {
                let _ = done.send(consumer);
                return;
            }
            None => return,
        }
    }
}

fn record(observed: &Observed, name: &str, r: &ConsumedRecord) {
    let value = String::from_utf8_lossy(&r.value).into_owned();
    observed.update(|s| s.records.entry(name.to_owned()).or_default().push((r.partition, r.offset, value)));
}

/// Produces `values` to one partition.
async fn produce_to(client: &Client, topic: &str, partition: u32, values: impl IntoIterator<Item = String>) {
    let producer = client.producer_with_config(topic, ProducerConfig::default()).await.expect("producer");
    let mut acks = Vec::new();
    for v in values {
        acks.push(producer.enqueue(Message::new(v).with_partition(partition)).await.expect("enqueue"));
    }
    producer.flush().await.expect("flush");
    for ack in acks {
        ack.await.expect("stored");
    }
    producer.close().await.expect("close");
}

fn owned_counts(s: &Seen, names: &[&str]) -> Vec<usize> {
    names.iter().map(|n| s.owned.get(*n).map_or(0, BTreeSet::len)).collect()
}

fn union(s: &Seen, names: &[&str]) -> BTreeSet<Tp> {
    names.iter().flat_map(|n| s.owned.get(*n).cloned().unwrap_or_default()).collect()
}

fn all(topic: &str, n: u32) -> BTreeSet<Tp> {
    (0..n).map(|p| (topic.to_owned(), p)).collect()
}

/// Polls the group's description until `cond` holds (the broker's view has
/// no push channel).
async fn wait_for_group(
    client: &Client,
    group: &str,
    what: &str,
    cond: impl Fn(&strata_client::GroupDescription) -> bool,
) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let d = client.describe_group(group).await.expect("describe");
        if cond(&d) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {d:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_share_six_partitions_two_each() {
    let (broker, client) = TestBroker::with_client().await;
    client.create_topic("six", 6, TopicOptions::default()).await.unwrap();
    let observed = Observed::new();
    let names = ["a", "b", "c"];
    let mut members = Vec::new();
    for name in names {
        members.push(Member::start(&client, "g6", "six", name, &observed).await);
    }
    observed
        .wait_for("2 partitions each", |s| owned_counts(s, &names) == [2, 2, 2] && union(s, &names) == all("six", 6))
        .await;
    // The consumers' own view agrees with their callbacks. (Each is kept
    // until the end: dropping one leaves the group and moves partitions.)
    let mut stopped = Vec::new();
    for member in &members {
        stopped.push(member.stop().await);
    }
    for (consumer, name) in stopped.iter().zip(names) {
        let owned: BTreeSet<Tp> = consumer.assignment().into_iter().collect();
        assert_eq!(Some(&owned), observed.read(|s| s.owned.get(name).cloned()).as_ref(), "{name}");
        assert!(consumer.member_id().is_some());
        assert!(consumer.generation() > 0);
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_member_takes_one_partition_from_each_and_the_rest_keep_flowing() {
    let (broker, client) = TestBroker::with_client().await;
    client.create_topic("twelve", 12, TopicOptions::default()).await.unwrap();
    let observed = Observed::new();
    let old = ["a", "b", "c"];
    let mut members = BTreeMap::new();
    for name in old {
        members.insert(name, Member::start(&client, "g12", "twelve", name, &observed).await);
    }
    observed
        .wait_for("4 partitions each", |s| owned_counts(s, &old) == [4, 4, 4] && union(s, &old) == all("twelve", 12))
        .await;
    let before: BTreeMap<String, BTreeSet<Tp>> = observed.read(|s| s.owned.clone());
    // Forming the group of three moved partitions too; count from here.
    let revoked_before: BTreeMap<String, usize> =
        observed.read(|s| s.revoked.iter().map(|(k, v)| (k.clone(), v.len())).collect());
    let assigned_before: BTreeMap<String, usize> =
        observed.read(|s| s.assigned.iter().map(|(k, v)| (k.clone(), v.len())).collect());

    // `a` stops calling next(): the rebalance cannot finish while it holds
    // the partition it must give up.
    members["a"].pause().await;
    members.insert("d", Member::start(&client, "g12", "twelve", "d", &observed).await);
    wait_for_group(&client, "g12", "b and c to release one partition each, a to hold its one", |d| {
        let revoking = |id: &str| {
            d.members
                .iter()
                .find(|m| m.client_id == id)
                .map_or(0, |m| m.revoking.iter().map(|tp| tp.partitions.len()).sum())
        };
        d.state == "Rebalancing" && revoking("a") == 1 && revoking("b") == 0 && revoking("c") == 0
    })
    .await;
    observed
        .wait_for("b and c to own 3 each, d to get theirs", |s| owned_counts(s, &["b", "c", "d"]) == [3, 3, 2])
        .await;

    // Mid-rebalance, records of the partitions b and c kept still flow.
    let kept: Vec<(String, u32)> =
        observed.read(|s| ["b", "c"].iter().flat_map(|n| s.owned[*n].iter().cloned()).collect());
    for (topic, partition) in &kept {
        produce_to(&client, topic, *partition, (0..5).map(|i| format!("mid-{partition}-{i}"))).await;
    }
    observed
        .wait_for("b and c to read the records of their kept partitions", |s| {
            kept.iter().all(|(_, p)| {
                let count = ["b", "c"]
                    .iter()
                    .flat_map(|n| s.records.get(*n).cloned().unwrap_or_default())
                    .filter(|(rp, _, v)| rp == p && v.starts_with("mid-"))
                    .count();
                count == 5
            })
        })
        .await;
    let state = client.describe_group("g12").await.unwrap().state;
    assert_eq!(state, "Rebalancing", "the records arrived while the rebalance was still in progress");

    members["a"].resume();
    let everyone = ["a", "b", "c", "d"];
    observed
        .wait_for("3 partitions each", |s| {
            owned_counts(s, &everyone) == [3, 3, 3, 3] && union(s, &everyone) == all("twelve", 12)
        })
        .await;
    observed.read(|s| {
        for name in old {
            let after = &s.owned[name];
            assert!(after.is_subset(&before[name]), "{name} kept only its own partitions");
            let revoked =
                &s.revoked.get(name).cloned().unwrap_or_default()[revoked_before.get(name).copied().unwrap_or(0)..];
            assert_eq!(revoked.len(), 1, "{name} lost exactly one partition: {revoked:?}");
            assert!(before[name].contains(&revoked[0]));
            assert_eq!(s.assigned[name].len(), assigned_before[name], "{name} was given nothing new");
        }
        assert!(s.errors.is_empty(), "{:?}", s.errors);
    });

    // Closing a member hands its partitions to the others.
    members["d"].close().await;
    observed
        .wait_for("d's partitions spread over a, b and c", |s| {
            owned_counts(s, &old) == [4, 4, 4] && union(s, &old) == all("twelve", 12) && owned_counts(s, &["d"]) == [0]
        })
        .await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_survive_members_and_describe_shows_no_lag_once_all_is_consumed() {
    let (broker, client) = TestBroker::with_client().await;
    client.create_topic("ledger", 3, TopicOptions::default()).await.unwrap();
    for p in 0..3 {
        produce_to(&client, "ledger", p, (0..10).map(|i| format!("old-{p}-{i}"))).await;
    }
    let config = || GroupConsumerConfig {
        auto_offset_reset: StartFrom::Earliest,
        max_wait: Duration::from_millis(100),
        ..GroupConsumerConfig::default()
    };
    let mut first = client.group_consumer("ledger-readers", ["ledger"], config()).await.unwrap();
    let mut seen = BTreeSet::new();
    while seen.len() < 30 {
        let r = tokio::time::timeout(DEADLINE, first.next()).await.expect("a record").expect("open").expect("ok");
        assert!(seen.insert((r.partition, r.offset)), "no record twice");
        assert_eq!(&*r.topic, "ledger");
    }
    assert_eq!(first.assignment().len(), 3);
    assert_eq!(first.position("ledger", 0), Some(10));
    first.commit().await.unwrap();
    first.close().await.unwrap();
    assert!(first.next().await.is_none(), "closed");

    // A new member resumes after the committed offsets: only new records.
    for p in 0..3 {
        produce_to(&client, "ledger", p, (0..2).map(|i| format!("new-{p}-{i}"))).await;
    }
    let mut second = client.group_consumer("ledger-readers", ["ledger"], config()).await.unwrap();
    let mut values = Vec::new();
    while values.len() < 6 {
        let r = tokio::time::timeout(DEADLINE, second.next()).await.expect("a record").expect("open").expect("ok");
        assert!(r.offset >= 10, "resumed after the commit: {r:?}");
        values.push(String::from_utf8_lossy(&r.value).into_owned());
    }
    assert!(values.iter().all(|v| v.starts_with("new-")), "{values:?}");
    second.commit().await.unwrap();
    let d = client.describe_group("ledger-readers").await.unwrap();
    assert_eq!(d.partitions.len(), 3);
    for p in &d.partitions {
        assert_eq!((p.committed_offset, p.end_offset, p.lag), (12, 12, 0), "{p:?}");
        assert_eq!(Some(p.member_id.as_str()), second.member_id());
    }
    // Explicit commits name the partition and the next offset to read.
    second.commit_offsets(vec![("ledger".into(), 0, 11)]).await.unwrap();
    let offsets = client.group_offsets("ledger-readers", &[("ledger", 0)]).await.unwrap();
    assert_eq!(offsets.iter().map(|o| o.offset).collect::<Vec<_>>(), vec![11]);
    // Committing a partition it does not own is refused (fenced).
    let err = second.commit_offsets(vec![("ledger".into(), 7, 0)]).await.unwrap_err();
    assert!(err.is_fenced_member() || err.is_not_found(), "{err}");
    second.close().await.unwrap();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_offset_out_of_range_falls_back_to_auto_offset_reset() {
    let (broker, client) = TestBroker::with_client().await;
    client.create_topic("phoenix", 1, TopicOptions::default()).await.unwrap();
    produce_to(&client, "phoenix", 0, (0..10).map(|i| format!("v{i}"))).await;
    client
        .commit_group_offsets(
            "risers",
            &[strata_client::CommittedOffset { topic: "phoenix".into(), partition: 0, offset: 10 }],
        )
        .await
        .unwrap();
    // The topic comes back empty: offset 10 is beyond its end.
    client.delete_topic("phoenix").await.unwrap();
    client.create_topic("phoenix", 1, TopicOptions::default()).await.unwrap();
    produce_to(&client, "phoenix", 0, (0..3).map(|i| format!("reborn{i}"))).await;
    let config = GroupConsumerConfig {
        auto_offset_reset: StartFrom::Earliest,
        max_wait: Duration::from_millis(100),
        ..GroupConsumerConfig::default()
    };
    let mut consumer = client.group_consumer("risers", ["phoenix"], config).await.unwrap();
    let r = tokio::time::timeout(DEADLINE, consumer.next()).await.expect("a record").expect("open").expect("no error");
    assert_eq!((r.offset, String::from_utf8_lossy(&r.value).into_owned()), (0, "reborn0".to_owned()));
    consumer.close().await.unwrap();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_with_an_unknown_topic_or_a_bad_group_name_fails() {
    let (broker, client) = TestBroker::with_client().await;
    let err = client.group_consumer("g", ["missing"], GroupConsumerConfig::default()).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    client.create_topic("t", 1, TopicOptions::default()).await.unwrap();
    let err = client.group_consumer("bad name!", ["t"], GroupConsumerConfig::default()).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
    let err = client.group_consumer("g", Vec::<String>::new(), GroupConsumerConfig::default()).await.unwrap_err();
    assert!(matches!(err, strata_client::Error::InvalidArgument(_)), "{err}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_by_a_forced_reset_rejoins_and_reads_from_the_new_offsets() {
    let (broker, client) = TestBroker::with_client().await;
    client.create_topic("rewind", 1, TopicOptions::default()).await.unwrap();
    produce_to(&client, "rewind", 0, (0..5).map(|i| format!("v{i}"))).await;
    let observed = Observed::new();
    let config = GroupConsumerConfig {
        auto_offset_reset: StartFrom::Earliest,
        max_wait: Duration::from_millis(100),
        ..GroupConsumerConfig::default()
    }
    .with_listener(Recorder { name: "m".into(), observed: observed.clone() });
    let mut consumer = client.group_consumer("rewinders", ["rewind"], config).await.unwrap();
    for expected in 0..5 {
        let r = tokio::time::timeout(DEADLINE, consumer.next()).await.expect("a record").expect("open").expect("ok");
        assert_eq!(r.offset, expected);
    }
    consumer.commit().await.unwrap();
    let first_member = consumer.member_id().map(str::to_owned);

    let reset = client.reset_group_offsets("rewinders", "rewind", StartFrom::Offset(2), &[], true).await.unwrap();
    assert_eq!(reset.iter().map(|o| o.offset).collect::<Vec<_>>(), vec![2]);
    // Removed by the reset, the member drops its partition, rejoins as a new
    // member and reads from the reset offset; its stale commits are refused.
    let r = tokio::time::timeout(DEADLINE, consumer.next()).await.expect("a record").expect("open").expect("ok");
    assert_eq!(r.offset, 2);
    assert_ne!(consumer.member_id().map(str::to_owned), first_member);
    observed.read(|s| {
        assert_eq!(s.revoked["m"], vec![("rewind".to_owned(), 0)], "lost with the membership");
        assert_eq!(s.assigned["m"], vec![("rewind".to_owned(), 0), ("rewind".to_owned(), 0)]);
    });
    consumer.close().await.unwrap();
    broker.stop().await;
}

/// `poll` on a plain consumer and on a group member: a batch holds at most
/// `max` records in order within each partition, every record comes once,
/// and an empty topic answers an empty batch once the timeout passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_returns_batches_up_to_max_and_an_empty_one_after_its_timeout() {
    let (broker, client) = TestBroker::with_client().await;
    client.create_topic("polled", 2, TopicOptions::default()).await.unwrap();
    for p in 0..2 {
        produce_to(&client, "polled", p, (0..25).map(|i| format!("{p}-{i}"))).await;
    }
    // Polls `$c` in batches of at most 7 until all 50 records came.
    macro_rules! drain {
        ($c:expr) => {{
            let mut seen = Vec::new();
            while seen.len() < 50 {
                let batch = tokio::time::timeout(DEADLINE, $c.poll(7, Duration::from_secs(5)))
                    .await
                    .expect("poll answers")
                    .expect("ok");
                assert!(batch.len() <= 7, "at most max records: {}", batch.len());
                seen.extend(batch.iter().map(|r: &ConsumedRecord| (r.partition, r.offset)));
            }
            seen
        }};
    }
    let check = |seen: Vec<(u32, u64)>| {
        for p in 0..2 {
            let offsets: Vec<u64> = seen.iter().filter(|(q, _)| *q == p).map(|(_, o)| *o).collect();
            assert_eq!(offsets, (0..25).collect::<Vec<_>>(), "partition {p} once each, in order");
        }
    };
    let config = ConsumerConfig { start: StartFrom::Earliest, ..ConsumerConfig::default() };
    let mut consumer = client.consumer("polled", config).await.unwrap();
    check(drain!(consumer));
    let empty = consumer.poll(7, Duration::from_millis(50)).await.unwrap();
    assert!(empty.is_empty(), "nothing more: {empty:?}");
    assert!(consumer.poll(0, Duration::from_secs(5)).await.unwrap().is_empty(), "max 0 answers at once");

    let config = GroupConsumerConfig { auto_offset_reset: StartFrom::Earliest, ..GroupConsumerConfig::default() };
    let mut member = client.group_consumer("pollers", ["polled"], config).await.unwrap();
    check(drain!(member));
    assert!(member.poll(7, Duration::from_millis(50)).await.unwrap().is_empty());
    member.close().await.unwrap();
    broker.stop().await;
}
