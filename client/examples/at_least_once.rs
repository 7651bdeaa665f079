//! At-least-once: the producer waits for each acknowledgement (and retries;
//! being idempotent, a retry never stores a message twice), and the
//! consumer commits a record's position only *after* processing it, so a
//! crash repeats the records processed since the last commit rather than
//! skipping any.
//!
//! Run a broker (`cargo run --bin strata-broker`), then
//! `cargo run -p strata-client --example at_least_once [SERVER]`.

use strata_client::{Client, GroupConsumerConfig, Message, StartFrom, TopicOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = std::env::args().nth(1).unwrap_or_else(|| "http://127.0.0.1:7070".into());
    let client = Client::connect(&server).await?;
    client.ensure_topic("orders", 3, TopicOptions::default()).await?;

    // Idempotent by default: retried batches are stored once.
    let producer = client.producer("orders").await?;
    for i in 0..10 {
        let meta = producer.send(Message::new(format!("order {i}")).with_key(format!("customer-{}", i % 3))).await?;
        println!("stored at partition {} offset {}", meta.partition, meta.offset);
    }
    producer.close().await?;

    // Process, then commit. (`auto_commit`, the default, does the same: a
    // record counts as processed once `next()` is called again.)
    let config = GroupConsumerConfig { auto_offset_reset: StartFrom::Earliest, ..GroupConsumerConfig::default() };
    let mut consumer = client.group_consumer("shipping", ["orders"], config).await?;
    for _ in 0..10 {
        let Some(record) = consumer.next().await else { break };
        let record = record?;
        println!("shipping {}", String::from_utf8_lossy(&record.value)); // process it...
        consumer.commit().await?; // ...then commit
    }
    consumer.close().await?;
    Ok(())
}
