//! A group consumer: members of the `billing` group share the partitions of
//! `orders`; each polls batches of records, processes them, and commits the
//! batch's positions afterwards (at-least-once: a crash repeats at most the
//! uncommitted batch). Start it twice to watch the partitions split.
//! Rebalances are handled inside `poll`; a commit refused because one is in
//! progress ([`ErrorKind::RebalanceInProgress`]) only means those records
//! may be read again by the partitions' next owner.
//!
//! Run a broker (`cargo run --bin strata-broker`), produce some records
//! (`strata produce orders`), then
//! `cargo run -p strata-client --example group_consumer [SERVER]`.

use std::time::Duration;

use strata_client::{Client, ErrorKind, GroupConsumerConfig, StartFrom, TopicOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = std::env::args().nth(1).unwrap_or_else(|| "http://127.0.0.1:7070".into());
    let client = Client::connect(&server).await?;
    client.ensure_topic("orders", 3, TopicOptions::default()).await?;

    // A new group reads from the start of each partition (the default,
    // `Latest`, would skip what was produced before it joined); commits are
    // made explicitly after each batch.
    let config = GroupConsumerConfig {
        auto_offset_reset: StartFrom::Earliest,
        auto_commit: false,
        client_id: format!("group_consumer example, pid {}", std::process::id()),
        ..GroupConsumerConfig::default()
    };
    let mut consumer = client.group_consumer("billing", ["orders"], config).await?;

    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    loop {
        let batch = tokio::select! {
            _ = &mut shutdown => break,
            batch = consumer.poll(500, Duration::from_secs(1)) => batch,
        };
        let records = match batch {
            Ok(records) => records,
            Err(e) if e.kind() == ErrorKind::Fatal => return Err(e.into()),
            Err(e) => {
                eprintln!("retrying after: {e}");
                continue;
            }
        };
        if records.is_empty() {
            continue;
        }
        for record in &records {
            println!(
                "{}/{}@{}: {}",
                record.topic,
                record.partition,
                record.offset,
                String::from_utf8_lossy(&record.value)
            );
        }
        match consumer.commit().await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::RebalanceInProgress => eprintln!("not committed (rebalance): {e}"),
            Err(e) => return Err(e.into()),
        }
    }
    // Commits nothing more (auto_commit is off), leaves the group so the
    // other members take over this member's partitions at once.
    consumer.close().await?;
    Ok(())
}
