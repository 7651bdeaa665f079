//! Power loss under a replicated partition: three brokers in this process,
//! a cluster on loopback, each broker on its own runtime and its own
//! fault-injecting filesystem (`FaultFs`). A producer keeps producing to
//! the partition's leader (RF 3) while first a follower, then the leader
//! loses power: its runtime is shut down without waiting (no flush, its
//! threads stop where they are), then its disk keeps only what was fsynced.
//! Each time the disk was made to hold something written but not yet
//! durable when the power went (a held fsync), so the power loss drops
//! data: the follower loses Raft log records of entries the others
//! committed, the leader acknowledged batches of its partition log. Both restart on the
//! same disk and ports. Last, every broker loses power at once, with no
//! partition log holding the latest acknowledged batches durably: they
//! survive because a majority fsynced them in its Raft log.
//!
//! Afterwards every replica holds the same batches up to the same high
//! watermark, without a hole; every acknowledged batch is there exactly
//! once at its acknowledged offset; anything else is a batch that was sent
//! and not acknowledged (its outcome unknown to the producer), at most once.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use strata_proto::batch::{BatchBuilder, BatchIter, Compression, RawBatch};
use strata_proto::v1::admin_client::AdminClient;
use strata_proto::v1::log_client::LogClient;
use strata_proto::v1::{CreateTopicRequest, DescribeTopicRequest, FetchRequest, ProduceRequest, fetch_request};
use strata_testkit::{eventually, free_port};
use tonic::transport::{Channel, Endpoint};

use crate::broker::Broker;
use crate::fs::fault::FaultFs;

const DEADLINE: Duration = Duration::from_secs(60);
const TOPIC: &str = "rep";
/// Records per produced batch.
const RECORDS: u64 = 3;

/// One broker: its address and disk survive its runs.
struct Node {
    id: u64,
    addr: SocketAddr,
    /// The data directory's path (only its lock file is on the real disk).
    dir: tempfile::TempDir,
    disk: FaultFs,
    channel: Channel,
    run: Option<Run>,
}

/// A running broker, on a runtime of its own.
struct Run {
    rt: tokio::runtime::Runtime,
    running: crate::RunningBroker,
}

impl Node {
    fn new(id: u64) -> Node {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(20))
            .connect_lazy();
        Node { id, addr, dir: tempfile::tempdir().unwrap(), disk: FaultFs::new(), channel, run: None }
    }

    fn config(&self, peers: &[String]) -> crate::Config {
        let mut c = crate::Config::default();
        c.storage.data_dir = self.dir.path().to_path_buf();
        c.server.listen = self.addr;
        c.server.http_listen = "127.0.0.1:0".parse().unwrap();
        c.tier.cold_store = "none".into();
        c.cluster.broker_id = Some(self.id as i64);
        c.cluster.advertised_address = self.addr.to_string();
        c.cluster.peers = peers.to_vec();
        c.validate().unwrap();
        c
    }

    /// Starts the broker on its disk (as a new process: a new `process_fs`)
    /// and its port, once the port is free again.
    async fn start(&mut self, peers: &[String]) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("broker-{}", self.id))
            .enable_all()
            .build()
            .unwrap();
        let config = self.config(peers);
        let fs = self.disk.process_fs();
        let id = self.id;
        let running = eventually(&format!("broker {id} to start"), DEADLINE, || {
            let task = rt.spawn(crate::start_on(config.clone(), Arc::new(crate::clock::SystemClock), fs.clone()));
            async move {
                match task.await.expect("the start task") {
                    Ok(r) => Some(r),
                    // The previous run's listener is not closed yet.
                    Err(crate::StartError::Bind { .. }) => None,
                    Err(e) => panic!("broker {id} did not start: {e}"),
                }
            }
        })
        .await;
        self.run = Some(Run { rt, running });
    }

    /// The power goes: the broker's threads stop where they are (its
    /// runtime is shut down without waiting for anything; blocking tasks
    /// still running can no longer touch the disk, as their `process_fs`
    /// is dead), and its disk keeps only what was fsynced. Returns once the
    /// old broker is gone (its listener closed, its data-dir lock released).
    async fn power_loss(&mut self) {
        let halted = self.halt();
        self.lose_power();
        halted.gone().await;
    }

    /// Stops the broker's threads where they are.
    fn halt(&mut self) -> Halted {
        let Run { rt, running } = self.run.take().expect("a running broker");
        rt.shutdown_background();
        Halted { id: self.id, broker: Arc::downgrade(running.broker()), running }
    }

    /// The disk keeps only what was fsynced (faults lifted: a held fsync
    /// fails, the next run has a healthy disk).
    fn lose_power(&self) {
        self.disk.power_loss();
        self.disk.clear_faults();
    }

    /// The replicated partition's directory on this broker's disk.
    fn partition_dir(&self) -> PathBuf {
        let tenant = self.dir.path().join("topics").join("default");
        let topic = self
            .disk
            .fs()
            .read_dir(&tenant)
            .unwrap()
            .into_iter()
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{TOPIC}."))))
            .expect("the topic's directory");
        topic.join("0")
    }

    /// Bytes of the partition log's own files (segments, indexes) that are
    /// not durable.
    fn unsynced_partition_log_bytes(&self) -> u64 {
        let dir = self.partition_dir();
        let files = self.disk.fs().read_dir(&dir).unwrap();
        files.iter().filter(|p| !p.ends_with("replication")).map(|p| self.disk.unsynced_bytes(p)).sum()
    }

    /// The partition's leader as this broker sees it, and this replica's
    /// high watermark.
    async fn leader(&self) -> Option<(u64, u64)> {
        partition_state(&self.channel).await
    }

    /// Every batch of this replica below `end`, in order; panics on a hole.
    async fn read(&self, end: u64) -> Vec<RawBatch> {
        let mut client = LogClient::new(self.channel.clone()).max_decoding_message_size(64 << 20);
        let mut out: Vec<RawBatch> = Vec::new();
        let mut next = 0;
        while next < end {
            let req = FetchRequest {
                tenant: String::new(),
                topic: TOPIC.into(),
                partition: 0,
                start: Some(fetch_request::Start::Offset(next)),
                max_bytes: 1 << 20,
                max_wait_ms: 0,
                follow: false,
            };
            let mut stream = client.fetch(req).await.unwrap().into_inner();
            let before = next;
            while let Some(resp) = stream.message().await.unwrap() {
                for b in BatchIter::new(resp.records) {
                    let b = b.unwrap();
                    if b.header.next_offset() <= next {
                        continue;
                    }
                    assert_eq!(b.header.base_offset, next, "broker {}: a hole or an overlap", self.id);
                    next = b.header.next_offset();
                    out.push(b);
                }
            }
            assert!(next > before, "broker {}: nothing at offset {next}, below its end {end}", self.id);
        }
        assert_eq!(next, end, "broker {}: batches end at the high watermark", self.id);
        out
    }
}

/// A broker whose runtime was shut down.
struct Halted {
    id: u64,
    broker: Weak<Broker>,
    running: crate::RunningBroker,
}

impl Halted {
    /// Waits until the old broker is dropped (its tasks were dropped with
    /// its runtime; blocking tasks may hold parts of it a while longer).
    async fn gone(self) {
        let Halted { id, broker, running } = self;
        drop(running);
        eventually(&format!("broker {id}'s old run to be dropped"), DEADLINE, || {
            let gone = broker.strong_count() == 0;
            async move { gone.then_some(()) }
        })
        .await;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(run) = self.run.take() {
            run.rt.shutdown_background();
        }
    }
}

/// What the producer sent and what it was told.
#[derive(Default)]
struct Ledger {
    /// Acknowledged batches: base offset → values.
    acked: BTreeMap<u64, Vec<String>>,
    /// Every value sent, acknowledged or not.
    sent: HashSet<String>,
}

fn batch(values: &[String]) -> Bytes {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let mut b = BatchBuilder::new(Compression::None);
    for v in values {
        b.push(now, None, Some(v.as_bytes()), &[]);
    }
    b.finish().unwrap()
}

/// The partition's leader as the broker behind `ch` sees it, and that
/// broker's replica's high watermark.
async fn partition_state(ch: &Channel) -> Option<(u64, u64)> {
    let mut c = AdminClient::new(ch.clone());
    let req = DescribeTopicRequest { name: TOPIC.into(), ..Default::default() };
    let d = tokio::time::timeout(Duration::from_secs(5), c.describe_topic(req)).await.ok()?.ok()?.into_inner();
    let p = d.partition_details.into_iter().find(|p| p.partition == 0)?;
    Some((p.leader?, p.end_offset))
}

/// A leader of the partition that also says so itself (so it runs).
async fn find_leader(nodes: &[(u64, Channel)]) -> u64 {
    eventually("a partition leader that answers", DEADLINE, || async {
        for (_, ch) in nodes {
            let Some((leader, _)) = partition_state(ch).await else { continue };
            let Some((_, ch)) = nodes.iter().find(|(id, _)| *id == leader) else { continue };
            if partition_state(ch).await.map(|s| s.0) == Some(leader) {
                return Some(leader);
            }
        }
        None
    })
    .await
}

/// Produces new batches, one at a time, to whichever broker leads, until
/// stopped. A batch that is not acknowledged is never sent again (its
/// outcome is unknown: it may or may not be in the log, at most once).
async fn produce(nodes: Vec<(u64, Channel)>, ledger: Arc<Mutex<Ledger>>, stop: Arc<AtomicBool>) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let leader = find_leader(&nodes).await;
        let values: Vec<String> = (0..RECORDS).map(|i| format!("b{n}.{i}")).collect();
        n += 1;
        ledger.lock().unwrap().sent.extend(values.iter().cloned());
        let channel = nodes.iter().find(|(id, _)| *id == leader).expect("a member").1.clone();
        let req = ProduceRequest { topic: TOPIC.into(), partition: 0, batch: batch(&values), ..Default::default() };
        if let Ok(r) = LogClient::new(channel).produce(req).await {
            let r = r.into_inner();
            assert_eq!(r.last_offset + 1 - r.base_offset, RECORDS);
            assert!(!r.duplicate, "a new batch answered as a duplicate");
            let before = ledger.lock().unwrap().acked.insert(r.base_offset, values);
            assert!(before.is_none(), "two batches acknowledged at offset {}", r.base_offset);
        }
    }
}

/// Waits until `more` batches were acknowledged after `since` of them.
async fn acked_after(ledger: &Arc<Mutex<Ledger>>, producer: &tokio::task::JoinHandle<()>, since: usize, more: usize) {
    eventually(&format!("{more} acknowledged batches after the first {since}"), DEADLINE, || {
        assert!(!producer.is_finished(), "the producer stopped");
        let n = ledger.lock().unwrap().acked.len();
        async move { (n >= since + more).then_some(n) }
    })
    .await;
}

fn acked(ledger: &Arc<Mutex<Ledger>>) -> usize {
    ledger.lock().unwrap().acked.len()
}

/// The end offset of everything acknowledged so far.
fn acked_end(ledger: &Arc<Mutex<Ledger>>) -> u64 {
    ledger.lock().unwrap().acked.keys().next_back().map_or(0, |b| b + RECORDS)
}

fn by_id(nodes: &[Node], id: u64) -> usize {
    nodes.iter().position(|n| n.id == id).expect("a member")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_batches_survive_a_power_loss_of_a_follower_and_of_the_leader() {
    let started = Instant::now();
    let mut nodes: Vec<Node> = (1..=3).map(Node::new).collect();
    let peers: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    for n in &mut nodes {
        n.start(&peers).await;
    }
    let admin = nodes[0].channel.clone();
    eventually("the replicated topic to be created", DEADLINE, || {
        let mut c = AdminClient::new(admin.clone());
        async move {
            let req =
                CreateTopicRequest { name: TOPIC.into(), partitions: 1, replication_factor: 3, ..Default::default() };
            match c.create_topic(req).await {
                Ok(_) => Some(()),
                Err(s) if s.code() == tonic::Code::AlreadyExists => Some(()),
                Err(_) => None,
            }
        }
    })
    .await;
    let channels: Vec<(u64, Channel)> = nodes.iter().map(|n| (n.id, n.channel.clone())).collect();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = tokio::spawn(produce(channels.clone(), ledger.clone(), stop.clone()));
    acked_after(&ledger, &producer, 0, 30).await;

    // ---- a follower loses power --------------------------------------
    let leader = find_leader(&channels).await;
    let f = nodes.iter().position(|n| n.id != leader).expect("a follower");
    let raft_dir = nodes[f].partition_dir().join("replication");
    // Its disk is slow to make Raft log appends durable: the follower
    // stalls with records written and not durable; the leader and the
    // other follower go on committing those entries and the next.
    nodes[f].disk.set_faults(|x| x.hold_sync = Some("/replication/log".into()));
    let since = acked(&ledger);
    acked_after(&ledger, &producer, since, 10).await;
    let follower = &nodes[f];
    eventually("a Raft log append written on the follower, its fsync held", DEADLINE, || {
        let pending = follower.disk.unsynced_bytes(&raft_dir);
        async move { (pending > 0).then_some(()) }
    })
    .await;
    let frontier = acked_end(&ledger);
    let dropped = nodes[f].disk.unsynced_bytes(&raft_dir);
    assert!(dropped > 0);
    nodes[f].power_loss().await;
    println!("{:?}: follower {} lost power, {dropped} bytes of its Raft log dropped", started.elapsed(), nodes[f].id);
    nodes[f].start(&peers).await;
    let since = acked(&ledger);
    acked_after(&ledger, &producer, since, 10).await;
    let follower = &nodes[f];
    eventually("the restarted follower to catch up", DEADLINE, || async move {
        follower.leader().await.filter(|(_, end)| *end >= frontier)
    })
    .await;

    // ---- the leader loses power while the producer goes on -------------
    let leader = find_leader(&channels).await;
    let l = by_id(&nodes, leader);
    let segments = format!("{}/0", nodes[l].partition_dir().display());
    // A replicated partition log is fsynced only before an applied marker
    // is written; with its fsyncs held, the batches the leader applies and
    // acknowledges now are durable only in the Raft logs of a majority.
    nodes[l].disk.set_faults(|x| x.hold_sync = Some(segments));
    let since = acked(&ledger);
    acked_after(&ledger, &producer, since, 10).await;
    let old_leader = &nodes[l];
    eventually("acknowledged batches not durable in the leader's partition log", DEADLINE, || {
        let pending = old_leader.unsynced_partition_log_bytes();
        async move { (pending > 0).then_some(()) }
    })
    .await;
    let dropped = nodes[l].unsynced_partition_log_bytes();
    assert!(dropped > 0);
    nodes[l].power_loss().await;
    println!("{:?}: leader {leader} lost power, {dropped} bytes of its partition log dropped", started.elapsed());
    let others: Vec<Channel> = nodes.iter().filter(|n| n.id != leader).map(|n| n.channel.clone()).collect();
    let new_leader = eventually("a new leader", DEADLINE, || {
        let others = others.clone();
        async move {
            for ch in &others {
                if let Some((l, _)) = partition_state(ch).await
                    && l != leader
                {
                    return Some(l);
                }
            }
            None
        }
    })
    .await;
    println!("{:?}: broker {new_leader} leads", started.elapsed());
    let since = acked(&ledger);
    acked_after(&ledger, &producer, since, 10).await;
    nodes[l].start(&peers).await;
    let since = acked(&ledger);
    acked_after(&ledger, &producer, since, 10).await;

    // ---- every broker loses power at once --------------------------------
    // Once every replica has an applied marker (recovery starts from it,
    // not from the start of the Raft log), no replica's partition log makes
    // anything durable any more: the batches acknowledged since survive
    // only in the Raft logs, which a majority fsynced.
    let all = &nodes;
    eventually("an applied marker on every replica", DEADLINE, || {
        let marked = all.iter().all(|n| n.disk.contents(&n.partition_dir().join("replication/applied.json")).is_some());
        async move { marked.then_some(()) }
    })
    .await;
    for n in &nodes {
        let segments = format!("{}/0", n.partition_dir().display());
        n.disk.set_faults(|x| x.hold_sync = Some(segments));
    }
    let since = acked(&ledger);
    acked_after(&ledger, &producer, since, 10).await;
    eventually("acknowledged batches not durable in any partition log", DEADLINE, || {
        let pending = all.iter().all(|n| n.unsynced_partition_log_bytes() > 0);
        async move { pending.then_some(()) }
    })
    .await;
    let halted: Vec<Halted> = nodes.iter_mut().map(Node::halt).collect();
    let dropped: Vec<u64> = nodes.iter().map(Node::unsynced_partition_log_bytes).collect();
    assert!(dropped.iter().all(|d| *d > 0));
    for n in &nodes {
        n.lose_power();
    }
    println!("{:?}: every broker lost power, partition log bytes dropped: {dropped:?}", started.elapsed());
    for h in halted {
        h.gone().await;
    }
    for n in &mut nodes {
        n.start(&peers).await;
    }
    let since = acked(&ledger);
    acked_after(&ledger, &producer, since, 10).await;
    println!("{:?}: acknowledging again", started.elapsed());
    stop.store(true, Ordering::Relaxed);
    producer.await.expect("the producer");

    // ---- every replica holds the same log --------------------------------
    let end = acked_end(&ledger);
    let nodes_ref = &nodes;
    let (leader, hw) =
        eventually("every replica at the same high watermark, past every acknowledgement", DEADLINE, || async move {
            let mut seen = None;
            for n in nodes_ref {
                let (leader, hw) = n.leader().await?;
                if hw < end || seen.is_some_and(|s| s != (leader, hw)) {
                    return None;
                }
                seen = Some((leader, hw));
            }
            seen
        })
        .await;
    let mut logs = Vec::new();
    for n in &nodes {
        logs.push(n.read(hw).await);
    }
    for (n, log) in nodes.iter().zip(&logs).skip(1) {
        assert_eq!(log.len(), logs[0].len(), "broker {}: as many batches as broker {}", n.id, nodes[0].id);
        for (a, b) in log.iter().zip(&logs[0]) {
            assert_eq!(a.bytes, b.bytes, "broker {}: the batch at offset {} differs", n.id, a.header.base_offset);
        }
    }
    let ledger = ledger.lock().unwrap();
    let mut values: BTreeMap<u64, String> = BTreeMap::new();
    for b in &logs[0] {
        for r in b.records().unwrap() {
            let v = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
            assert!(ledger.sent.contains(&v), "{v} at offset {} was never sent", r.offset);
            values.insert(r.offset, v);
        }
    }
    assert_eq!(values.len() as u64, hw, "one record per offset, no hole");
    let distinct: HashSet<&String> = values.values().collect();
    assert_eq!(distinct.len(), values.len(), "no batch stored twice");
    for (base, batch) in &ledger.acked {
        for (i, v) in batch.iter().enumerate() {
            assert_eq!(values.get(&(base + i as u64)), Some(v), "the acknowledged batch at offset {base}");
        }
    }
    println!(
        "{} batches acknowledged, {} records on every replica (leader {leader}), in {:?}",
        ledger.acked.len(),
        hw,
        started.elapsed()
    );
}
