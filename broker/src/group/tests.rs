//! Coordinator tests against a real broker (in-process, no gRPC). Membership
//! and timeouts run on paused tokio time; commits (file I/O) on real time.

use super::*;
use crate::broker::TopicOverrides;

struct Fixture {
    _dir: tempfile::TempDir,
    broker: Arc<Broker>,
    coord: Arc<GroupCoordinator>,
}

async fn fixture(topic_partitions: &[(&str, u32)]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::Config::default();
    config.storage.data_dir = dir.path().to_path_buf();
    let broker = Broker::open(config).await.unwrap();
    for (t, n) in topic_partitions {
        broker.create_topic("", t, *n, TopicOverrides::default(), false).await.unwrap();
    }
    let coord = GroupCoordinator::new(broker.clone());
    Fixture { _dir: dir, broker, coord }
}

struct TestMember {
    key: GroupKey,
    id: String,
    rx: mpsc::Receiver<MemberEvent>,
    generation: u64,
    owned: BTreeSet<Tp>,
}

impl TestMember {
    async fn join(f: &Fixture, topics: &[&str], session: Duration) -> TestMember {
        let (tx, mut rx) = mpsc::channel(64);
        let spec = JoinSpec {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            session_timeout: session,
            client_id: "test".into(),
        };
        let (key, id) = f.coord.join("", "g", spec, tx).await.unwrap();
        match rx.recv().await.unwrap() {
            MemberEvent::Joined { member_id, .. } => assert_eq!(member_id, id),
            other => panic!("expected Joined, got {other:?}"),
        }
        TestMember { key, id, rx, generation: 0, owned: BTreeSet::new() }
    }

    /// Applies pending assignments (confirming revocations) until none is queued.
    async fn drain(&mut self, f: &Fixture) -> bool {
        let mut any = false;
        while let Ok(ev) = self.rx.try_recv() {
            any |= self.apply(f, ev).await;
        }
        any
    }

    async fn apply(&mut self, f: &Fixture, ev: MemberEvent) -> bool {
        match ev {
            MemberEvent::Assignment { generation, partitions } => {
                let new: BTreeSet<Tp> =
                    partitions.into_iter().flat_map(|(t, ps)| ps.into_iter().map(move |p| (t.clone(), p))).collect();
                let revoked = self.owned.difference(&new).count() > 0;
                self.generation = generation;
                self.owned = new;
                if revoked {
                    f.coord.revocation_done(&self.key, &self.id, generation).await;
                }
                true
            }
            MemberEvent::Removed { .. } => {
                self.owned.clear();
                true
            }
            MemberEvent::Joined { .. } => false,
        }
    }

    /// Commits `offset` for partition `partition` of topic `t` as this member.
    async fn commit(&self, f: &Fixture, partition: u32, offset: u64) -> Result<(), BrokerError> {
        let o = OffsetCommit { topic: "t".into(), partition, offset, metadata: String::new() };
        f.coord.commit("", "g", &self.id, self.generation, vec![o]).await
    }

    async fn next(&mut self, f: &Fixture) -> MemberEvent {
        let ev = self.rx.recv().await.expect("stream open");
        self.apply(f, ev.clone()).await;
        ev
    }
}

/// Lets the actor run, then drains every member until the group is quiet.
async fn settle(f: &Fixture, members: &mut [&mut TestMember]) {
    for _ in 0..50 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        let mut any = false;
        for m in members.iter_mut() {
            any |= m.drain(f).await;
        }
        if !any {
            let v = f.coord.describe("", "g").await.unwrap();
            if v.state == "Stable" {
                return;
            }
        }
    }
    panic!("group did not settle");
}

fn assert_partitioned(members: &[&TestMember], total: usize) {
    let mut all = BTreeSet::new();
    for m in members {
        for tp in &m.owned {
            assert!(all.insert(tp.clone()), "{tp:?} owned twice");
        }
    }
    assert_eq!(all.len(), total);
}

const SESSION: Duration = Duration::from_secs(10);

/// Three members of group `g` on topic `t`, joined one after the other
/// and settled.
async fn three_settled_members(f: &Fixture) -> [TestMember; 3] {
    let mut a = TestMember::join(f, &["t"], SESSION).await;
    let mut b = TestMember::join(f, &["t"], SESSION).await;
    let mut c = TestMember::join(f, &["t"], SESSION).await;
    settle(f, &mut [&mut a, &mut b, &mut c]).await;
    [a, b, c]
}

#[tokio::test(start_paused = true)]
async fn three_members_share_six_partitions_two_each() {
    let f = fixture(&[("t", 6)]).await;
    let [a, b, c] = three_settled_members(&f).await;
    assert_eq!((a.owned.len(), b.owned.len(), c.owned.len()), (2, 2, 2));
    assert_partitioned(&[&a, &b, &c], 6);
}

#[tokio::test(start_paused = true)]
async fn a_joining_member_moves_only_what_it_takes_and_nothing_is_held_twice() {
    let f = fixture(&[("t", 12)]).await;
    let [mut a, mut b, mut c] = three_settled_members(&f).await;
    let before: Vec<BTreeSet<Tp>> = vec![a.owned.clone(), b.owned.clone(), c.owned.clone()];
    let mut d = TestMember::join(&f, &["t"], SESSION).await;
    // First the old members are asked to give one each; d gets nothing yet.
    for (m, prev) in [&mut a, &mut b, &mut c].into_iter().zip(&before) {
        match m.rx.recv().await.unwrap() {
            MemberEvent::Assignment { generation, partitions } => {
                let now: BTreeSet<Tp> =
                    partitions.into_iter().flat_map(|(t, ps)| ps.into_iter().map(move |p| (t.clone(), p))).collect();
                assert!(now.is_subset(prev), "an old member only loses partitions");
                assert_eq!(now.len(), 3);
                m.owned = now;
                m.generation = generation;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(d.rx.try_recv().is_err(), "the new member waits for the revocations");
    for m in [&a, &b, &c] {
        f.coord.revocation_done(&m.key, &m.id, m.generation).await;
    }
    settle(&f, &mut [&mut a, &mut b, &mut c, &mut d]).await;
    assert_eq!(d.owned.len(), 3);
    assert_partitioned(&[&a, &b, &c, &d], 12);
    for (m, prev) in [&a, &b, &c].into_iter().zip(&before) {
        assert!(m.owned.is_subset(prev), "old members kept 3 of their own 4");
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_member_is_removed_after_the_session_timeout() {
    let f = fixture(&[("t", 4)]).await;
    let session = Duration::from_secs(3);
    let mut a = TestMember::join(&f, &["t"], session).await;
    let start = Instant::now();
    let mut b = TestMember::join(&f, &["t"], session).await;
    settle(&f, &mut [&mut a, &mut b]).await;
    assert_eq!(a.owned.len(), 2);
    // a keeps heartbeating; b goes silent.
    let coord = f.coord.clone();
    let (key, id) = (a.key.clone(), a.id.clone());
    let beat = tokio::spawn(async move {
        loop {
            coord.heartbeat(&key, &id).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    loop {
        if let MemberEvent::Assignment { .. } = a.next(&f).await
            && a.owned.len() == 4
        {
            break;
        }
    }
    let waited = start.elapsed();
    assert!(waited >= session && waited < session * 2, "reassigned after {waited:?}");
    assert!(matches!(b.rx.recv().await, Some(MemberEvent::Removed { .. })));
    beat.abort();
    let v = f.coord.describe("", "g").await.unwrap();
    assert_eq!(v.members.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_member_that_never_confirms_a_revocation_is_removed() {
    let f = fixture(&[("t", 2)]).await;
    let session = Duration::from_secs(2);
    let mut a = TestMember::join(&f, &["t"], session).await;
    settle(&f, &mut [&mut a]).await;
    assert_eq!(a.owned.len(), 2);
    let mut b = TestMember::join(&f, &["t"], session).await;
    // a is asked to give one up but never answers; both keep heartbeating.
    let coord = f.coord.clone();
    let ids = vec![(a.key.clone(), a.id.clone()), (b.key.clone(), b.id.clone())];
    let beat = tokio::spawn(async move {
        loop {
            for (k, id) in &ids {
                coord.heartbeat(k, id).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    loop {
        match b.rx.recv().await.unwrap() {
            MemberEvent::Assignment { partitions, .. } if partitions.values().map(Vec::len).sum::<usize>() == 2 => {
                break;
            }
            _ => {}
        }
    }
    let mut removed = false;
    while let Ok(ev) = a.rx.try_recv() {
        removed |= matches!(ev, MemberEvent::Removed { .. });
    }
    assert!(removed, "the stuck member was removed");
    beat.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_are_fenced_and_validated() {
    let f = fixture(&[("t", 2)]).await;
    let log = f.broker.partition("", "t", 0).unwrap();
    let _ = log; // partition 0 exists but is empty: end offset 0
    let mut a = TestMember::join(&f, &["t"], SESSION).await;
    settle(&f, &mut [&mut a]).await;
    let ok = OffsetCommit { topic: "t".into(), partition: 0, offset: 0, metadata: "m".into() };
    f.coord.commit("", "g", &a.id, a.generation, vec![ok.clone()]).await.unwrap();
    // Beyond the log end.
    let far = OffsetCommit { offset: 10, ..ok.clone() };
    let err = f.coord.commit("", "g", &a.id, a.generation, vec![far]).await.unwrap_err();
    assert!(matches!(err, BrokerError::OffsetBeyondEnd { offset: 10, end: 0, .. }), "{err}");
    // Unknown member (a zombie that was removed).
    let err = f.coord.commit("", "g", "ghost-1", 1, vec![ok.clone()]).await.unwrap_err();
    assert!(matches!(err, BrokerError::UnknownMember { .. }), "{err}");
    // A second member takes partition 1; a commit for it from a is fenced.
    let mut b = TestMember::join(&f, &["t"], SESSION).await;
    settle(&f, &mut [&mut a, &mut b]).await;
    let theirs = b.owned.iter().next().unwrap().clone();
    let err = f
        .coord
        .commit(
            "",
            "g",
            &a.id,
            a.generation,
            vec![OffsetCommit { topic: theirs.0, partition: theirs.1, offset: 0, metadata: String::new() }],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, BrokerError::FencedMember { .. }), "{err}");
    // An outside commit while members are active is refused.
    let err = f.coord.commit("", "g", "", 0, vec![ok]).await.unwrap_err();
    assert!(matches!(err, BrokerError::GroupNotEmpty { members: 2, .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_survive_a_restart_and_resets_are_refused_while_members_are_active() {
    let f = fixture(&[("t", 1)]).await;
    // Put 10 records in the partition.
    let mut b = strata_proto::batch::BatchBuilder::new(strata_proto::batch::Compression::None);
    for i in 0..10i64 {
        b.push(1_000 * i, None, Some(b"x"), &[]);
    }
    f.broker.produce("", "t", 0, b.finish().unwrap()).await.unwrap();
    let mut a = TestMember::join(&f, &["t"], SESSION).await;
    settle(&f, &mut [&mut a]).await;
    a.commit(&f, 0, 7).await.unwrap();
    let err = f.coord.reset("", "g", "t", vec![], ResetTo::Earliest, false).await.unwrap_err();
    assert!(matches!(err, BrokerError::GroupNotEmpty { .. }), "{err}");
    let v = f.coord.describe("", "g").await.unwrap();
    assert_eq!((v.partitions[0].committed, v.partitions[0].lag), (Some(7), 3));
    f.coord.leave(&a.key, &a.id).await;
    // A new coordinator (as after a broker restart) reads the offsets back.
    let coord = GroupCoordinator::new(f.broker.clone());
    assert_eq!(coord.fetch_offsets("", "g").await.unwrap()[0].offset, 7);
    for (to, want) in
        [(ResetTo::Earliest, 0), (ResetTo::Latest, 10), (ResetTo::Offset(4), 4), (ResetTo::Timestamp(5_500), 6)]
    {
        let r = coord.reset("", "g", "t", vec![], to, false).await.unwrap();
        assert_eq!(r[0].offset, want, "{to:?}");
        assert_eq!(coord.fetch_offsets("", "g").await.unwrap()[0].offset, want);
    }
    let err = coord.reset("", "g", "t", vec![], ResetTo::Offset(11), false).await.unwrap_err();
    assert!(matches!(err, BrokerError::OffsetOutOfRange { .. }), "{err}");
    let err = coord.describe("", "nope").await.unwrap_err();
    assert!(matches!(err, BrokerError::UnknownGroup { .. }), "{err}");
    let err = coord.reset("", "g", "missing", vec![], ResetTo::Earliest, false).await.unwrap_err();
    assert!(matches!(err, BrokerError::Catalog(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_reset_removes_members_and_fences_their_commits() {
    let f = fixture(&[("t", 1)]).await;
    let mut a = TestMember::join(&f, &["t"], SESSION).await;
    settle(&f, &mut [&mut a]).await;
    f.coord.reset("", "g", "t", vec![], ResetTo::Earliest, true).await.unwrap();
    assert!(matches!(a.rx.recv().await, Some(MemberEvent::Removed { .. })));
    let err = a.commit(&f, 0, 0).await.unwrap_err();
    assert!(matches!(err, BrokerError::UnknownMember { .. }), "{err}");
}
