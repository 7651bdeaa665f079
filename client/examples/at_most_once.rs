//! At-most-once: a record's position is committed *before* it is
//! processed, so a crash during processing skips it rather than repeating
//! it; the producer does not retry, so a lost acknowledgement never writes
//! a message twice (it may lose it instead).
//!
//! Run a broker (`cargo run --bin strata-broker`), then
//! `cargo run -p strata-client --example at_most_once [SERVER]`.

use strata_client::{Client, GroupConsumerConfig, Message, ProducerConfig, RetryConfig, StartFrom, TopicOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = std::env::args().nth(1).unwrap_or_else(|| "http://127.0.0.1:7070".into());
    let client = Client::connect(&server).await?;
    client.ensure_topic("metrics", 3, TopicOptions::default()).await?;

    // Fire and forget: no retries, no waiting for acknowledgements.
    let config = ProducerConfig { retry: RetryConfig::none(), ..ProducerConfig::default() };
    let producer = client.producer_with_config("metrics", config).await?;
    for i in 0..10 {
        // Not awaiting the delivery future: nobody learns whether it landed.
        drop(producer.enqueue(Message::new(format!("cpu={i}"))).await?);
    }
    producer.close().await?;

    // Commit first, then process.
    let config = GroupConsumerConfig {
        auto_commit: false,
        auto_offset_reset: StartFrom::Earliest,
        ..GroupConsumerConfig::default()
    };
    let mut consumer = client.group_consumer("dashboard", ["metrics"], config).await?;
    for _ in 0..10 {
        let Some(record) = consumer.next().await else { break };
        let record = record?;
        consumer.commit().await?; // the position is past this record now
        println!("{}", String::from_utf8_lossy(&record.value)); // "process" it
    }
    consumer.close().await?;
    Ok(())
}
