//! Effectively-once: the idempotent producer stores every message exactly
//! once (a named producer also fences its own zombies), and the consumer
//! keeps its output *and* the offsets it consumed in one store of its own,
//! updated atomically (here one JSON file replaced by rename). On restart or
//! when a partition is assigned it resumes from the offsets in its store,
//! not from the group's committed offsets, so no record is applied twice or
//! skipped, whatever crashes.
//!
//! Run a broker (`cargo run --bin strata-broker`), then
//! `cargo run -p strata-client --example effectively_once [SERVER] [STORE]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use strata_client::{Client, GroupConsumerConfig, Message, ProducerConfig, RebalanceListener, StartFrom, TopicOptions};

/// The application's state: its output (a balance per account) and, in the
/// same file, the next offset to read of every partition it applied.
#[derive(Default, Serialize, Deserialize)]
struct Store {
    balances: BTreeMap<String, i64>,
    offsets: BTreeMap<String, u64>,
}

impl Store {
    fn load(path: &Path) -> anyhow::Result<Store> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Store::default()),
            Err(e) => Err(e.into()),
        }
    }

    /// Output and offsets change together or not at all: write a temporary
    /// file, flush it to disk, then rename it over the old one.
    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, &serde_json::to_vec_pretty(self)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

fn key(topic: &str, partition: u32) -> String {
    format!("{topic}/{partition}")
}

/// Starts newly assigned partitions where the store says.
struct ResumeFromStore(Arc<Mutex<Store>>);

impl RebalanceListener for ResumeFromStore {
    fn start_offset(&self, topic: &str, partition: u32) -> Option<u64> {
        self.0.lock().ok()?.offsets.get(&key(topic, partition)).copied()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let server = args.next().unwrap_or_else(|| "http://127.0.0.1:7070".into());
    let path = PathBuf::from(args.next().unwrap_or_else(|| "balances.json".into()));
    let client = Client::connect(&server).await?;
    client.ensure_topic("payments", 3, TopicOptions::default()).await?;

    // A named idempotent producer: retries are stored once, and a second
    // instance with the same name fences this one.
    let config = ProducerConfig { producer_name: Some("payments-api".into()), ..ProducerConfig::default() };
    let producer = client.producer_with_config("payments", config).await?;
    for i in 0..10 {
        producer.send(Message::new(format!("{}", 10 * i)).with_key(format!("account-{}", i % 2))).await?;
    }
    producer.close().await?;

    let store = Arc::new(Mutex::new(Store::load(&path)?));
    let config = GroupConsumerConfig {
        auto_commit: false, // our store holds the offsets
        auto_offset_reset: StartFrom::Earliest,
        ..GroupConsumerConfig::default()
    }
    .with_listener(ResumeFromStore(store.clone()));
    let mut consumer = client.group_consumer("ledger", ["payments"], config).await?;
    for _ in 0..10 {
        let Some(record) = consumer.next().await else { break };
        let record = record?;
        let account = String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).into_owned();
        let amount: i64 = String::from_utf8_lossy(&record.value).parse()?;
        let mut state = store.lock().map_err(|_| anyhow::anyhow!("store lock poisoned"))?;
        *state.balances.entry(account).or_default() += amount;
        state.offsets.insert(key(&record.topic, record.partition), record.offset + 1);
        state.save(&path)?; // output and offset in one atomic step
    }
    // Committing to the group as well is optional: it only feeds `strata
    // group describe` (lag); restarts read the store.
    consumer.commit().await?;
    consumer.close().await?;
    let state = store.lock().map_err(|_| anyhow::anyhow!("store lock poisoned"))?;
    println!("balances: {:?}", state.balances);
    Ok(())
}
