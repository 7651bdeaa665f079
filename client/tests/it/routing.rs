//! Client routing in a three-broker cluster of real `strata-broker`
//! processes: a client pointed at one broker reaches every partition's,
//! queue's and group's owner, follows NOT_LEADER without losing or
//! duplicating acknowledged messages, and survives the loss of a broker it
//! does not need.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use strata_client::ErrorCode;
use strata_client::{
    Client, ConsumerConfig, GroupConsumerConfig, Message, ProducerConfig, QueueMessage, QueueOptions,
    RebalanceListener, RetryConfig, StartFrom, TopicOptions,
};
use strata_proto::v1::admin_client::AdminClient;
use strata_proto::v1::groups_client::GroupsClient;
use strata_proto::v1::{DescribeGroupRequest, GetMetadataRequest};
use strata_testkit::{eventually, free_port};
use tokio::sync::{mpsc, watch};

use crate::process::{BrokerProcess, binary_or_skip};

const DEADLINE: Duration = Duration::from_secs(60);

/// Three broker processes forming one cluster on free loopback ports.
pub(crate) struct Trio {
    brokers: Vec<Option<BrokerProcess>>,
    /// `http://127.0.0.1:PORT` of broker 1, 2 and 3.
    pub(crate) urls: Vec<String>,
    dirs: Vec<tempfile::TempDir>,
    bin: std::path::PathBuf,
    peers: Vec<String>,
    /// Extra environment of every broker (`STRATA_*` settings).
    env: Vec<(String, String)>,
}

impl Trio {
    fn spawn(&self, i: usize) -> BrokerProcess {
        let id = (i + 1).to_string();
        let peer_list = self.peers.join(",");
        let args = ["--broker-id", &id, "--advertised-address", &self.peers[i], "--peers", &peer_list];
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        BrokerProcess::start(&self.bin, self.dirs[i].path(), &self.peers[i], &args, &env)
    }

    pub(crate) async fn start(bin: &Path) -> Trio {
        Trio::start_with_env(bin, &[]).await
    }

    /// Starts three brokers with `env` added to each one's environment.
    pub(crate) async fn start_with_env(bin: &Path, env: &[(&str, &str)]) -> Trio {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let dirs = (0..peers.len()).map(|_| tempfile::tempdir().expect("temp dir")).collect();
        let urls: Vec<String> = peers.iter().map(|p| format!("http://{p}")).collect();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut trio = Trio { brokers: Vec::new(), urls, dirs, bin: bin.to_path_buf(), peers, env };
        trio.brokers = (0..trio.peers.len()).map(|i| Some(trio.spawn(i))).collect();
        for url in &trio.urls {
            eventually("every broker sees a leader and three members", DEADLINE, || {
                let url = url.clone();
                async move {
                    let c = Client::connect(&url).await.ok()?;
                    let v = c.describe_cluster().await.ok()?;
                    (v.leader_id.is_some() && v.brokers.len() == 3).then_some(())
                }
            })
            .await;
        }
        trio
    }

    /// The broker id (1-3) behind a URL.
    pub(crate) fn id_of(&self, url: &str) -> u64 {
        self.urls.iter().position(|u| u == url).expect("a broker URL") as u64 + 1
    }

    pub(crate) fn kill9(&mut self, id: u64) {
        if let Some(mut b) = self.brokers[id as usize - 1].take() {
            b.kill9();
        }
    }

    /// Starts broker `id` again on its data directory (after `kill9`).
    pub(crate) fn restart(&mut self, id: u64) {
        let i = id as usize - 1;
        assert!(self.brokers[i].is_none(), "broker {id} is running");
        self.brokers[i] = Some(self.spawn(i));
    }

    /// Creates an unreplicated topic through broker 1 and waits until every
    /// broker knows it with every partition owned; returns each partition's
    /// owner URL.
    async fn topic(&self, name: &str, partitions: u32) -> Vec<String> {
        let c1 = Client::connect(&self.urls[0]).await.expect("connect");
        // Unreplicated: these tests are about owners and NOT_LEADER (a
        // replicated partition's followers serve reads themselves).
        let options = TopicOptions { replication_factor: Some(1), ..TopicOptions::default() };
        c1.create_topic(name, partitions, options).await.expect("topic created");
        let mut owners = Vec::new();
        for url in &self.urls {
            owners = eventually("the topic on every broker, every partition owned", DEADLINE, || {
                let url = url.clone();
                async move {
                    let c = Client::connect(&url).await.ok()?;
                    let m = c.metadata(&[name], false).await.ok()?;
                    let t = m.topics.iter().find(|t| t.name == name)?;
                    let owners: Vec<String> =
                        t.partitions.iter().map(|p| format!("http://{}", p.owner_address)).collect();
                    (owners.len() == partitions as usize && t.partitions.iter().all(|p| p.owner_id.is_some()))
                        .then_some(owners)
                }
            })
            .await;
        }
        owners
    }
}

/// Tracks how many partitions each group member owns.
struct Owned {
    name: usize,
    counts: Arc<Mutex<BTreeMap<usize, usize>>>,
    changed: watch::Sender<u64>,
}

impl RebalanceListener for Owned {
    fn on_assigned(&self, partitions: &[(String, u32)]) {
        *self.counts.lock().unwrap().entry(self.name).or_default() += partitions.len();
        self.changed.send_modify(|v| *v += 1);
    }

    fn on_revoked(&self, partitions: &[(String, u32)]) {
        *self.counts.lock().unwrap().entry(self.name).or_default() -= partitions.len();
        self.changed.send_modify(|v| *v += 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_and_a_group_pointed_at_broker_3_reach_every_owner() {
    let Some(bin) = binary_or_skip() else { return };
    let trio = Trio::start(&bin).await;
    let owners = trio.topic("orders", 6).await;
    // Placement spreads the six partitions 2/2/2.
    let mut per_broker: BTreeMap<&str, usize> = BTreeMap::new();
    for o in &owners {
        *per_broker.entry(o.as_str()).or_default() += 1;
    }
    assert_eq!(per_broker.values().copied().collect::<Vec<_>>(), [2, 2, 2], "{owners:?}");

    // Everything below goes through a client given broker 3's address only.
    let client = Client::connect(&trio.urls[2]).await.expect("connect to broker 3");

    // Two members, both joined with three partitions each before anything is
    // produced, so no rebalance can hand a partition over mid-stream.
    let counts = Arc::new(Mutex::new(BTreeMap::new()));
    let (changed, mut watch_rx) = watch::channel(0u64);
    let (records_tx, mut records_rx) = mpsc::unbounded_channel();
    let mut members = Vec::new();
    for name in 0..2 {
        let config = GroupConsumerConfig {
            auto_offset_reset: StartFrom::Earliest,
            max_wait: Duration::from_millis(100),
            ..GroupConsumerConfig::default()
        }
        .with_listener(Owned { name, counts: counts.clone(), changed: changed.clone() });
        let mut member = client.group_consumer("readers", ["orders"], config).await.expect("member joins");
        let tx = records_tx.clone();
        members.push(tokio::spawn(async move {
            while let Some(r) = member.next().await {
                match r {
                    Ok(r) => {
                        if tx.send(Ok((name, r.partition, r.offset, r.value))).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            }
            member.close().await
        }));
    }
    drop(records_tx);
    let settled = async {
        loop {
            let c = counts.lock().unwrap().clone();
            if c.get(&0) == Some(&3) && c.get(&1) == Some(&3) {
                return;
            }
            watch_rx.changed().await.expect("listeners alive");
        }
    };
    tokio::time::timeout(DEADLINE, settled).await.expect("both members own three partitions");

    const N: usize = 100_000;
    let producer = client.producer("orders").await.expect("producer");
    let mut acks = FuturesUnordered::new();
    for i in 0..N {
        let msg = Message::new(i.to_string()).with_key(format!("customer-{}", i % 997));
        acks.push(producer.enqueue(msg).await.expect("enqueued"));
    }
    let mut acked: HashMap<u32, BTreeSet<u64>> = HashMap::new();
    while let Some(ack) = tokio::time::timeout(DEADLINE, acks.next()).await.expect("acks keep coming") {
        let meta = ack.expect("every message acknowledged");
        assert!(acked.entry(meta.partition).or_default().insert(meta.offset), "one offset, one message");
    }
    producer.close().await.expect("producer closes");
    assert_eq!(acked.values().map(BTreeSet::len).sum::<usize>(), N);

    // The client's routes are the owners GetMetadata names, through any broker.
    for (p, owner) in owners.iter().enumerate() {
        assert_eq!(client.partition_route("orders", p as u32).as_deref(), Some(owner.as_str()), "partition {p}");
    }
    // Each owner holds exactly what was acknowledged for its partitions.
    let ends = client.list_offsets("orders", Vec::new()).await.expect("offsets");
    for e in &ends {
        let expected = acked.get(&e.partition).map_or(0, |s| s.len() as u64);
        assert_eq!(e.high_watermark, expected, "partition {}", e.partition);
    }

    // The group reads all of it: per-partition order, no loss, no duplicate.
    let mut next_offset: HashMap<u32, u64> = HashMap::new();
    let mut values = vec![false; N];
    let mut reader_of: HashMap<u32, usize> = HashMap::new();
    let mut seen = 0;
    while seen < N {
        let item = tokio::time::timeout(DEADLINE, records_rx.recv())
            .await
            .expect("records keep coming")
            .expect("members still running");
        let (member, partition, offset, value) = item.expect("no error reaches the application");
        let expected = next_offset.entry(partition).or_default();
        assert_eq!(offset, *expected, "partition {partition} in order without gaps or repeats");
        *expected += 1;
        assert_eq!(*reader_of.entry(partition).or_insert(member), member, "one reader per partition");
        let i: usize = std::str::from_utf8(&value).unwrap().parse().unwrap();
        assert!(!values[i], "message {i} read twice");
        values[i] = true;
        seen += 1;
    }
    assert!(values.iter().all(|v| *v));
    for m in members {
        m.abort();
    }

    // Every broker names the same coordinator for the group: the one whose
    // Groups calls answer, while the others refuse with NOT_LEADER.
    let mut coordinators = BTreeSet::new();
    for url in &trio.urls {
        let mut admin = AdminClient::connect(url.clone()).await.expect("raw admin client");
        let req = GetMetadataRequest { groups: vec!["readers".into()], ..Default::default() };
        let m = admin.get_metadata(req).await.expect("metadata").into_inner();
        assert_eq!(m.groups.len(), 1);
        coordinators.insert((m.groups[0].coordinator_id, m.groups[0].coordinator_address.clone()));
    }
    assert_eq!(coordinators.len(), 1, "{coordinators:?}");
    let (id, address) = coordinators.pop_first().unwrap();
    assert_eq!(trio.id_of(&format!("http://{address}")), id.expect("a coordinator"));
    for url in &trio.urls {
        let mut groups = GroupsClient::connect(url.clone()).await.expect("raw groups client");
        let req = DescribeGroupRequest { group: "readers".into(), ..Default::default() };
        let answer = groups.describe_group(req).await.map_err(strata_client::Error::from);
        if url.ends_with(&address) {
            // The members were aborted: the group may be gone (UNKNOWN_GROUP)
            // or still there, but the coordinator itself answers.
            match answer {
                Ok(d) => assert_eq!(d.into_inner().group, "readers"),
                Err(e) => assert_eq!(e.error_code(), ErrorCode::UnknownGroup, "{e}"),
            }
        } else {
            assert_eq!(answer.expect_err("not the coordinator").error_code(), ErrorCode::NotLeader);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_leader_answers_move_a_stale_client_without_loss_or_duplicates() {
    let Some(bin) = binary_or_skip() else { return };
    let trio = Trio::start(&bin).await;
    let owners = trio.topic("stale", 6).await;
    let client = Client::connect(&trio.urls[0]).await.expect("connect to broker 1");
    let producer = client.producer("stale").await.expect("idempotent producer");
    assert!(producer.producer_id().is_some(), "idempotence is on by default");
    // Every route now points at a broker that does not own the partition.
    let wrong = |p: usize| trio.urls[(trio.id_of(&owners[p]) as usize) % 3].clone();
    for (p, owner) in owners.iter().enumerate() {
        assert_ne!(&wrong(p), owner);
        client.set_partition_route("stale", p as u32, &wrong(p));
    }
    const N: usize = 3_000;
    let mut acks = Vec::with_capacity(N);
    for i in 0..N {
        let msg = Message::new(i.to_string()).with_partition((i % 6) as u32);
        acks.push(producer.enqueue(msg).await.expect("enqueued"));
    }
    let mut stored: HashMap<u32, Vec<(u64, usize)>> = HashMap::new();
    for (i, ack) in acks.into_iter().enumerate() {
        let meta = tokio::time::timeout(DEADLINE, ack).await.expect("acknowledged in time").expect("no error");
        stored.entry(meta.partition).or_default().push((meta.offset, i));
    }
    producer.close().await.expect("producer closes");
    for p in 0..6u32 {
        assert_eq!(client.partition_route("stale", p).as_deref(), Some(owners[p as usize].as_str()), "moved");
        // Acknowledged in send order at consecutive offsets from 0.
        let list = &stored[&p];
        assert!(list.iter().enumerate().all(|(k, (offset, _))| *offset == k as u64), "partition {p}: {list:?}");
    }
    // Each message exactly once: the end offsets count them all.
    let ends = client.list_offsets("stale", Vec::new()).await.expect("offsets");
    assert_eq!(ends.len(), 12, "earliest and latest of each partition: {ends:?}");
    assert!(ends.iter().all(|e| e.high_watermark == (N / 6) as u64), "{ends:?}");

    // A consumer with stale routes too reads each message once, in order.
    for p in 0..6 {
        client.set_partition_route("stale", p as u32, &wrong(p));
    }
    let config = ConsumerConfig { start: StartFrom::Earliest, ..ConsumerConfig::default() };
    let mut consumer = client.consumer("stale", config).await.expect("consumer");
    let mut next: HashMap<u32, u64> = HashMap::new();
    for _ in 0..N {
        let r = tokio::time::timeout(DEADLINE, consumer.next()).await.expect("a record").expect("open").expect("ok");
        let expected = next.entry(r.partition).or_default();
        assert_eq!(r.offset, *expected);
        let i: usize = std::str::from_utf8(&r.value).unwrap().parse().unwrap();
        assert_eq!(stored[&r.partition][r.offset as usize].1, i, "the acknowledged message at its offset");
        *expected += 1;
    }
    for p in 0..6u32 {
        assert_eq!(client.partition_route("stale", p).as_deref(), Some(owners[p as usize].as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_owned_by_broker_2_works_through_broker_1() {
    let Some(bin) = binary_or_skip() else { return };
    let trio = Trio::start(&bin).await;
    // A queue stays on the broker it was created through.
    let queue = "jobs".to_owned();
    let c2 = Client::connect(&trio.urls[1]).await.expect("connect to broker 2");
    c2.create_queue(&queue, QueueOptions::default()).await.expect("queue created");
    let client = Client::connect(&trio.urls[0]).await.expect("connect to broker 1");
    let m = client.metadata(&[], true).await.expect("metadata");
    let owner = m.queues.iter().find(|q| q.name == queue).and_then(|q| q.owner_id);
    assert_eq!(owner, Some(2), "{:?}", m.queues);
    // Broker 2 must have applied the queue before it serves it.
    let url2 = trio.urls[1].clone();
    eventually("the queue on its owner", DEADLINE, || {
        let (url2, queue) = (url2.clone(), queue.clone());
        async move { Client::connect(&url2).await.ok()?.describe_queue(&queue).await.ok() }
    })
    .await;

    let sent = client
        .send_batch(&queue, (0..50).map(|i| QueueMessage::new(format!("job {i}"))))
        .await
        .expect("send through broker 1");
    assert_eq!(sent.len(), 50);
    let qp = client.queue_producer(&queue).await.expect("queue producer");
    for i in 50..100 {
        qp.send(QueueMessage::new(format!("job {i}"))).await.expect("streamed send");
    }
    let receiver = client.receiver(&queue);
    let mut bodies = BTreeSet::new();
    while bodies.len() < 100 {
        let got = receiver.poll(100, Duration::from_secs(5)).await.expect("receive through broker 1");
        assert!(!got.is_empty(), "messages remain to receive");
        receiver.ack_all(&got).await.expect("ack through broker 1");
        for d in got {
            assert!(bodies.insert(String::from_utf8(d.body.to_vec()).unwrap()), "delivered once");
        }
    }
    assert_eq!(bodies, (0..100).map(|i| format!("job {i}")).collect());
    let d = client.describe_queue(&queue).await.expect("describe through broker 1");
    let stats = d.stats.expect("stats");
    assert_eq!(stats.visible + stats.in_flight, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_broker_the_client_does_not_need_changes_nothing_and_losing_the_owner_fails_clearly() {
    let Some(bin) = binary_or_skip() else { return };
    let mut trio = Trio::start(&bin).await;
    let owners = trio.topic("solo", 1).await;
    let owner = trio.id_of(&owners[0]);
    // Bootstrap from a broker that does not own the partition: the one lost.
    let lost = if owner == 1 { 2 } else { 1 };
    let client = Client::connect(&trio.urls[lost as usize - 1]).await.expect("connect");
    let config = ProducerConfig {
        retry: RetryConfig {
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
            max_retries: 6,
        },
        request_timeout: Duration::from_secs(5),
        ..ProducerConfig::default()
    };
    let producer = client.producer_with_config("solo", config.clone()).await.expect("producer");
    for i in 0..100 {
        producer.send(Message::new(format!("before {i}"))).await.expect("sent");
    }
    trio.kill9(lost);
    for i in 0..100 {
        producer.send(Message::new(format!("after {i}"))).await.expect("sent with the bootstrap broker gone");
    }
    // New calls need metadata: it comes from the brokers still up.
    let other = client.producer_with_config("solo", config).await.expect("a new producer after the loss");
    other.send(Message::new("late")).await.expect("sent");
    let consumer_config = ConsumerConfig { start: StartFrom::Earliest, ..ConsumerConfig::default() };
    let mut consumer = client.consumer("solo", consumer_config).await.expect("consumer after the loss");
    for i in 0..201 {
        let r = tokio::time::timeout(DEADLINE, consumer.next()).await.expect("a record").expect("open").expect("ok");
        assert_eq!(r.offset, i);
    }

    // The owner goes too: a clear error within the retry budget, no hang.
    trio.kill9(owner);
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(DEADLINE, producer.send(Message::new("orphan"))).await.expect("no hang");
    let error = result.expect_err("nobody serves the partition");
    assert!(error.is_retryable(), "{error}");
    assert!(error.to_string().contains(&owners[0]["http://".len()..]), "names the lost owner: {error}");
    assert!(started.elapsed() < DEADLINE);
    eprintln!("the owner's loss reads: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_bootstraps_from_a_list_and_reaches_every_owner() {
    let Some(bin) = binary_or_skip() else { return };
    let trio = Trio::start(&bin).await;
    trio.topic("lines", 3).await;
    // The first address is dead: the next one bootstraps the CLI.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let servers = format!("{dead},{}", trio.urls[2]);
    let input: String = (0..300).map(|i| format!("line {i}\n")).collect();
    let (code, _, err) = crate::strata(&servers, &["produce", "lines"], input.as_bytes()).await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) =
        crate::strata(&servers, &["consume", "lines", "--from", "earliest", "--count", "300"], b"").await;
    assert_eq!(code, 0, "{err}");
    let got: BTreeSet<&str> = out.lines().collect();
    assert_eq!(got, input.lines().collect::<BTreeSet<_>>());
    let (code, out, err) = crate::strata(&servers, &["group", "describe", "nobody"], b"").await;
    // A group that never existed: its coordinator answers (not NOT_LEADER).
    assert_ne!(code, 0);
    assert!(!err.contains("served by broker") && !out.contains("served by broker"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_whose_advertised_name_does_not_resolve_here_is_reached_at_the_bootstrap_url() {
    // A cluster of one advertising a name only its own network resolves (a
    // pod's DNS name seen from outside the cluster): clients given its IP
    // reach it there for every partition, queue and group it owns.
    let Some(bin) = binary_or_skip() else { return };
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let advertised = format!("broker-0.nowhere.invalid:{port}");
    let dir = tempfile::tempdir().expect("temp dir");
    let args = ["--broker-id", "0", "--advertised-address", &advertised, "--peers", &advertised];
    let _broker = BrokerProcess::start(&bin, dir.path(), &listen, &args, &[]);
    let url = format!("http://{listen}");
    eventually("the cluster of one to have a leader", DEADLINE, || {
        let url = url.clone();
        async move { Client::connect(&url).await.ok()?.describe_cluster().await.ok()?.leader_id }
    })
    .await;
    let c = Client::connect(&url).await.expect("connect");
    let m = c.metadata(&[], false).await.expect("metadata");
    assert!(m.clustered);
    assert_eq!(m.brokers.first().map(|b| b.address.as_str()), Some(advertised.as_str()));

    c.create_topic("far", 2, TopicOptions::default()).await.expect("topic");
    let input: String = (0..200).map(|i| format!("far {i}\n")).collect();
    let (code, _, err) = crate::strata(&url, &["produce", "far"], input.as_bytes()).await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = crate::strata(&url, &["consume", "far", "--from", "earliest", "--count", "200"], b"").await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().collect::<BTreeSet<_>>(), input.lines().collect::<BTreeSet<_>>());
    let (code, _, err) = crate::strata(&url, &["queue", "create", "jobs"], b"").await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = crate::strata(&url, &["send", "jobs"], b"job one\n").await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = crate::strata(&url, &["receive", "jobs", "--count", "1"], b"").await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("job one"), "{out}");
}
