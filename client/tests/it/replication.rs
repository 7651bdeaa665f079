//! Replicated partitions (RF 3) across three real `strata-broker` processes:
//! SIGKILL the leader of a partition under load, and an independent check
//! of every acknowledgement against what a consumer reads back afterwards.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use futures::stream::FuturesOrdered;
use strata_client::{Client, ConsumerConfig, Message, StartFrom, TopicOptions};
use strata_testkit::eventually;

use crate::process::binary_or_skip;
use crate::routing::Trio;
use crate::tier::count_segments;

const DEADLINE: Duration = Duration::from_secs(60);
const PARTITIONS: u32 = 3;

/// Each partition's leader as broker `url` reports it (all known).
async fn leaders(url: &str, topic: &str) -> Option<Vec<u64>> {
    let c = Client::connect(url).await.ok()?;
    let d = c.describe_topic(topic).await.ok()?;
    let mut parts = d.partition_details.clone();
    parts.sort_by_key(|p| p.partition);
    parts.iter().map(|p| p.leader).collect()
}

/// Sends messages `from..to` (partition = i % 3), `window` in flight, and
/// returns each acknowledged one's (partition, offset) by message number.
async fn produce(
    producer: &strata_client::Producer,
    from: usize,
    to: usize,
    window: usize,
) -> BTreeMap<usize, (u32, u64)> {
    let mut acked = BTreeMap::new();
    let mut in_flight = FuturesOrdered::new();
    for i in from..to {
        let msg = Message::new(i.to_string()).with_partition(i as u32 % PARTITIONS);
        let ack = producer.enqueue(msg).await.expect("enqueued");
        in_flight.push_back(async move { (i, ack.await) });
        if in_flight.len() >= window
            && let Some((i, r)) = in_flight.next().await
        {
            let meta = r.unwrap_or_else(|e| panic!("message {i} not acknowledged: {e}"));
            acked.insert(i, (meta.partition, meta.offset));
        }
    }
    while let Some((i, r)) = in_flight.next().await {
        let meta = r.unwrap_or_else(|e| panic!("message {i} not acknowledged: {e}"));
        acked.insert(i, (meta.partition, meta.offset));
    }
    acked
}

/// Creates the RF 3 topic through broker 1 and waits for its leaders.
async fn replicated_topic(trio: &Trio) -> Vec<u64> {
    replicated_topic_with(trio, TopicOptions::default()).await
}

/// [`replicated_topic`] with more `options`.
async fn replicated_topic_with(trio: &Trio, options: TopicOptions) -> Vec<u64> {
    let c1 = Client::connect(&trio.urls[0]).await.expect("connect");
    let options = TopicOptions { replication_factor: Some(3), ..options };
    let d = c1.create_topic("replicated", PARTITIONS, options).await.expect("topic created");
    assert_eq!(d.replication_factor, 3);
    for p in &d.partition_details {
        assert_eq!(p.replicas.len(), 3, "three replicas on distinct brokers: {p:?}");
        assert_eq!(p.replicas.iter().collect::<HashSet<_>>().len(), 3, "{p:?}");
    }
    eventually("every partition has a leader", DEADLINE, || leaders(&trio.urls[0], "replicated")).await
}

/// Waits until broker `url` reports a leader for every partition, none of
/// them `dead`; returns how long that took from `since`.
async fn new_leaders(url: &str, dead: u64, since: Instant) -> (Vec<u64>, Duration) {
    let after = eventually("a new leader for every partition", DEADLINE, || {
        let url = url.to_owned();
        async move { leaders(&url, "replicated").await.filter(|l| !l.contains(&dead)) }
    })
    .await;
    (after, since.elapsed())
}

/// The independent check: reads every partition from the start through
/// `url` (each batch CRC-checked by the client) and compares with every
/// acknowledgement: each acknowledged message at its offset, none twice,
/// nothing else stored.
async fn check_everything_acknowledged_is_stored_once(url: &str, acked: &BTreeMap<usize, (u32, u64)>) {
    let reader = Client::connect(url).await.expect("connect");
    let config = ConsumerConfig { start: StartFrom::Earliest, ..ConsumerConfig::default() };
    let mut consumer = reader.consumer("replicated", config).await.expect("consumer");
    let mut seen: HashMap<(u32, u64), usize> = HashMap::new();
    let mut numbers = HashSet::new();
    while seen.len() < acked.len() {
        let r = tokio::time::timeout(DEADLINE, consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {} records read back", seen.len(), acked.len()))
            .expect("open")
            .expect("ok");
        let i: usize = std::str::from_utf8(&r.value).expect("utf-8").parse().expect("a number");
        assert!(numbers.insert(i), "message {i} stored twice (at {}/{})", r.partition, r.offset);
        seen.insert((r.partition, r.offset), i);
    }
    for (i, at) in acked {
        assert_eq!(seen.get(at), Some(i), "message {i} acknowledged at {at:?}");
    }
    // Each partition holds exactly its acknowledged messages: offsets 0..n.
    let ends = reader.list_offsets("replicated", Vec::new()).await.expect("offsets");
    for p in 0..PARTITIONS {
        let n = acked.values().filter(|(q, _)| *q == p).count() as u64;
        assert!(ends.iter().any(|e| e.partition == p && e.high_watermark == n), "partition {p}: {ends:?}");
    }
}

/// Waits until broker `url` reports every partition's end offset as the
/// acknowledged count (a restarted replica caught up).
async fn caught_up(url: &str, acked: &BTreeMap<usize, (u32, u64)>) {
    eventually("the restarted replica caught up", DEADLINE, || async move {
        let c = Client::connect(url).await.ok()?;
        let d = c.describe_topic("replicated").await.ok()?;
        d.partition_details
            .iter()
            .all(|p| p.end_offset == acked.values().filter(|(q, _)| *q == p.partition).count() as u64)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_partition_leader_under_load_loses_and_duplicates_nothing() {
    let Some(bin) = binary_or_skip() else { return };
    let mut trio = Trio::start(&bin).await;
    let before = replicated_topic(&trio).await;

    // Load through a client that knows every broker.
    let client = Client::connect(&trio.urls.join(",")).await.expect("connect");
    let producer = client.producer("replicated").await.expect("idempotent producer");
    assert!(producer.producer_id().is_some(), "idempotence is on by default");
    let mut acked = produce(&producer, 0, 3_000, 64).await;

    // SIGKILL partition 0's leader while a second run is in flight.
    let victim = before[0];
    let survivor = trio.urls[(victim as usize) % 3].clone();
    let load = {
        let producer = producer.clone();
        tokio::spawn(async move { produce(&producer, 3_000, 9_000, 64).await })
    };
    trio.kill9(victim);
    let (after, failover) = new_leaders(&survivor, victim, Instant::now()).await;
    println!("partition leaders {before:?} -> {after:?}: new leaders {failover:?} after the SIGKILL");
    assert!(failover < Duration::from_secs(5), "failover took {failover:?}");
    acked.extend(tokio::time::timeout(DEADLINE, load).await.expect("load ends").expect("load task"));
    acked.extend(produce(&producer, 9_000, 10_000, 64).await);
    producer.close().await.expect("producer closes");
    assert_eq!(acked.len(), 10_000, "every message acknowledged");

    // The killed broker comes back and catches up; everything is read back
    // through the broker that was never killed.
    trio.restart(victim);
    check_everything_acknowledged_is_stored_once(&survivor, &acked).await;
    caught_up(&trio.urls[victim as usize - 1], &acked).await;
}

/// Waits until broker `url` reports, for every partition, local data only
/// from where the cold tier ends (its disk freed of everything uploaded),
/// the tier starting at 0 and reaching at least `min_end`; returns the
/// tier's segment count over all partitions.
async fn tiered_everywhere(url: &str, min_end: u64) -> u32 {
    eventually("the cold tier holds the older data and the disk only the rest", DEADLINE, || async move {
        let c = Client::connect(url).await.ok()?;
        let d = c.describe_topic("replicated").await.ok()?;
        d.partition_details
            .iter()
            .all(|p| {
                p.remote_start_offset == 0
                    && p.remote_end_offset >= min_end
                    && p.local_start_offset == p.remote_end_offset
            })
            .then(|| d.partition_details.iter().map(|p| p.remote_segment_count).sum())
    })
    .await
}

/// Tiered storage on a replicated topic, the three brokers sharing one cold
/// store: only the leader uploads, and the followers, reading the manifest
/// it publishes, free their disks as well. After the leader is SIGKILLed
/// the new leader goes on with the same manifest: no gap, no second copy of
/// a segment, and everything reads back from offset 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiered_replicated_topic_keeps_one_manifest_across_a_failover_and_frees_every_replica() {
    let Some(bin) = binary_or_skip() else { return };
    let cold = tempfile::tempdir().expect("cold dir");
    let store = format!("file://{}", cold.path().display());
    let env = [
        ("STRATA_TIER_COLD_STORE", store.as_str()),
        ("STRATA_TIER_UPLOAD_INTERVAL", "20ms"),
        ("STRATA_STORAGE_MAINTENANCE_INTERVAL", "50ms"),
    ];
    let mut trio = Trio::start_with_env(&bin, &env).await;
    let options = TopicOptions {
        segment_bytes: Some(4096),
        local_retention: Some(strata_client::Retention::Time(Duration::from_millis(1))),
        ..TopicOptions::default()
    };
    let before = replicated_topic_with(&trio, options).await;
    let client = Client::connect(&trio.urls.join(",")).await.expect("connect");
    let producer = client.producer("replicated").await.expect("producer");
    let mut acked = produce(&producer, 0, 3_000, 16).await;
    // Every replica, followers included, keeps only what the tier lacks.
    for url in &trio.urls {
        tiered_everywhere(url, 1).await;
    }
    let victim = before[0];
    let survivor = trio.urls[(victim as usize) % 3].clone();
    let tiered_before: Vec<u64> = {
        let c = Client::connect(&survivor).await.expect("connect");
        let d = c.describe_topic("replicated").await.expect("describe");
        let mut p = d.partition_details.clone();
        p.sort_by_key(|p| p.partition);
        p.iter().map(|p| p.remote_end_offset).collect()
    };
    trio.kill9(victim);
    new_leaders(&survivor, victim, Instant::now()).await;
    acked.extend(produce(&producer, 3_000, 6_000, 16).await);
    producer.close().await.expect("producer closes");
    // The new leaders upload past where the old one stopped, on the same
    // manifest, and the tier holds exactly the segments it names.
    let min_end = tiered_before.iter().copied().max().unwrap_or(0) + 1;
    tiered_everywhere(&survivor, min_end).await;
    eventually("the store holds exactly the segments the manifests name", DEADLINE, || async {
        let segments = tiered_everywhere(&survivor, min_end).await;
        (count_segments(cold.path()) as u32 == segments).then_some(())
    })
    .await;
    check_everything_acknowledged_is_stored_once(&survivor, &acked).await;
}

/// Many SIGKILLs of random brokers under load (`STRATA_KILL_ROUNDS`, default
/// 100; several minutes, so not in the default run:
/// `cargo test -p strata-client --test it -- --ignored random_sigkills`).
/// Each round kills a random broker, waits for leaders among the others,
/// produces, restarts it. At the end every acknowledged message is read back
/// once, at its offset, from every broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "several minutes: run with --ignored"]
async fn random_sigkills_under_load_lose_and_duplicate_nothing() {
    let Some(bin) = binary_or_skip() else { return };
    let rounds: usize = std::env::var("STRATA_KILL_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(100);
    let seed = std::env::var("STRATA_KILL_SEED").ok().and_then(|r| r.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    println!("{rounds} rounds, seed {seed} (STRATA_KILL_SEED to repeat)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut trio = Trio::start(&bin).await;
    replicated_topic(&trio).await;
    let client = Client::connect(&trio.urls.join(",")).await.expect("connect");
    let producer = client.producer("replicated").await.expect("idempotent producer");
    let mut acked = BTreeMap::new();
    let mut next = 0;
    let mut failovers = Vec::new();
    for round in 0..rounds {
        let victim = rng.u64(1..=3);
        let survivor = trio.urls[(victim as usize) % 3].clone();
        let load = {
            let producer = producer.clone();
            tokio::spawn(async move { produce(&producer, next, next + 500, 32).await })
        };
        // Kill at a random point of the run.
        tokio::time::sleep(Duration::from_millis(rng.u64(0..200))).await;
        trio.kill9(victim);
        let (_, failover) = new_leaders(&survivor, victim, Instant::now()).await;
        failovers.push(failover);
        acked.extend(tokio::time::timeout(DEADLINE, load).await.expect("load ends").expect("load task"));
        next += 500;
        trio.restart(victim);
        println!(
            "round {round}: killed broker {victim}, leaders again after {failover:?}, {} acknowledged",
            acked.len()
        );
    }
    producer.close().await.expect("producer closes");
    failovers.sort();
    println!(
        "failover: median {:?}, max {:?} over {rounds} kills",
        failovers[failovers.len() / 2],
        failovers.last().expect("a round")
    );
    for url in &trio.urls {
        caught_up(url, &acked).await;
        check_everything_acknowledged_is_stored_once(url, &acked).await;
    }
}
