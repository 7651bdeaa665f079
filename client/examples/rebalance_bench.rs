//! Benchmark: how long a consumer group of three takes to absorb a fourth
//! member over 12 partitions while a producer keeps writing, and whether the
//! three original members pause on the partitions they keep.
//!
//! Run against a broker: `cargo run --release -p strata-client --example
//! rebalance_bench -- [SERVER_URL]` (default `$STRATA_SERVER` or
//! `http://127.0.0.1:7070`). Prints one JSON object.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_client::{Client, GroupConsumerConfig, Message, ProducerConfig, StartFrom, TopicOptions};

const PARTITIONS: u32 = 12;

#[derive(Default)]
struct MemberStats {
    assignment: Vec<(String, u32)>,
    records: u64,
    /// Last time a record arrived, per partition.
    last_seen: HashMap<u32, Instant>,
    /// Longest gap between two records of one partition.
    max_gap: HashMap<u32, Duration>,
}

fn spawn_member(
    client: Client,
    topic: String,
    group: String,
    stats: Arc<Mutex<MemberStats>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let config = GroupConsumerConfig { auto_offset_reset: StartFrom::Latest, ..GroupConsumerConfig::default() };
        let mut consumer = match client.group_consumer(&group, [topic], config).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: joining: {e}");
                return;
            }
        };
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let next = tokio::time::timeout(Duration::from_millis(50), consumer.next()).await;
            let now = Instant::now();
            let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
            s.assignment = consumer.assignment();
            if let Ok(Some(Ok(r))) = next {
                s.records += 1;
                if let Some(prev) = s.last_seen.insert(r.partition, now) {
                    let gap = now - prev;
                    let e = s.max_gap.entry(r.partition).or_default();
                    *e = (*e).max(gap);
                }
            }
        }
        let _ = consumer.close().await;
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("STRATA_SERVER").ok())
        .unwrap_or_else(|| "http://127.0.0.1:7070".into());
    let client = Client::connect(&url).await?;
    let suffix = std::process::id();
    let topic = format!("rebalance-bench-{suffix}");
    let group = format!("rebalance-bench-{suffix}");
    client.create_topic(&topic, PARTITIONS, TopicOptions::default()).await?;

    // Steady background load: 1 KiB messages as fast as a small in-flight
    // budget allows.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = client
        .producer_with_config(&topic, ProducerConfig { max_in_flight_bytes: 512 * 1024, ..ProducerConfig::default() })
        .await?;
    let load = {
        let stop = stop.clone();
        let producer = producer.clone();
        tokio::spawn(async move {
            let value = vec![b'x'; 1024];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if producer.enqueue(Message::new(value.clone())).await.is_err() {
                    break;
                }
            }
        })
    };

    let stats: Vec<Arc<Mutex<MemberStats>>> = (0..4).map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    for s in &stats[..3] {
        tasks.push(spawn_member(client.clone(), topic.clone(), group.clone(), s.clone(), stop.clone()));
    }
    let counts = |stats: &[Arc<Mutex<MemberStats>>]| -> Vec<usize> {
        stats.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).assignment.len()).collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while counts(&stats[..3]) != vec![4, 4, 4] {
        anyhow::ensure!(Instant::now() < deadline, "the first three members did not settle");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Let the three consume under load for a moment, then reset gap tracking.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kept: Vec<Vec<(String, u32)>> = stats[..3]
        .iter()
        .map(|s| {
            let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
            s.max_gap.clear();
            s.assignment.clone()
        })
        .collect();

    let joined_at = Instant::now();
    tasks.push(spawn_member(client.clone(), topic.clone(), group.clone(), stats[3].clone(), stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let absorbed = loop {
        let c = counts(&stats);
        let fourth_records = stats[3].lock().unwrap_or_else(|p| p.into_inner()).records;
        if c == vec![3, 3, 3, 3] && fourth_records > 0 {
            break joined_at.elapsed();
        }
        anyhow::ensure!(Instant::now() < deadline, "the fourth member was not absorbed: {c:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    // Longest gap on a partition an original member kept throughout.
    let mut max_kept_gap = Duration::ZERO;
    let mut moved = 0;
    for (s, before) in stats[..3].iter().zip(&kept) {
        let s = s.lock().unwrap_or_else(|p| p.into_inner());
        for tp in before {
            if s.assignment.contains(tp) {
                max_kept_gap = max_kept_gap.max(s.max_gap.get(&tp.1).copied().unwrap_or_default());
            } else {
                moved += 1;
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let _ = load.await;
    let _ = producer.close().await;
    let _ = client.delete_topic(&topic).await;
    println!(
        "{{\"benchmark\":\"rebalance\",\"partitions\":{PARTITIONS},\"members_before\":3,\"partitions_moved\":{moved},\"absorb_ms\":{:.1},\"max_gap_on_kept_partitions_ms\":{:.1}}}",
        absorbed.as_secs_f64() * 1000.0,
        max_kept_gap.as_secs_f64() * 1000.0
    );
    Ok(())
}
