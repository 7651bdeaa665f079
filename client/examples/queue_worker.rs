//! A queue worker: leases messages in batches, processes each one, acks it
//! when processing succeeded and nacks it (the queue redelivers it after its
//! retry backoff, and dead-letters it after `max_deliveries`) when it
//! failed. Ctrl-C stops taking new work; what was received is finished
//! first, so nothing leased is left waiting for its visibility timeout.
//!
//! Run a broker (`cargo run --bin strata-broker`), send some work
//! (`strata send jobs` reads one message per line from stdin), then
//! `cargo run -p strata-client --example queue_worker [SERVER]`.

use std::time::Duration;

use strata_client::{Client, Delivery, QueueOptions, Receiver};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = std::env::args().nth(1).unwrap_or_else(|| "http://127.0.0.1:7070".into());
    let client = Client::connect(&server).await?;
    client.ensure_queue("jobs-dlq", QueueOptions::new()).await?;
    let options =
        QueueOptions::new().visibility_timeout(Duration::from_secs(30)).max_deliveries(5).dead_letter_queue("jobs-dlq");
    client.ensure_queue("jobs", options).await?;
    let receiver = client.receiver("jobs");

    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    loop {
        // Long-poll for up to 32 messages; a Ctrl-C while waiting ends the
        // loop at once (nothing was leased yet).
        let batch = tokio::select! {
            _ = &mut shutdown => break,
            batch = receiver.poll(32, Duration::from_secs(5)) => batch?,
        };
        // A Ctrl-C from here on is noticed at the next poll: the batch is
        // finished first.
        for delivery in &batch {
            settle(&receiver, delivery, process(delivery).await).await;
        }
    }
    println!("stopped; every received message was acked or nacked");
    Ok(())
}

/// The work itself: here, a body that is not UTF-8 counts as a failure.
async fn process(delivery: &Delivery) -> Result<(), String> {
    let text = std::str::from_utf8(&delivery.body).map_err(|e| format!("not text: {e}"))?;
    println!("job {} (delivery {}): {text}", delivery.receipt.message_id, delivery.delivery_count());
    Ok(())
}

/// Acks a processed message, nacks a failed one. A stale receipt means the
/// lease ran out and the message was handed to someone else: nothing to do.
async fn settle(receiver: &Receiver, delivery: &Delivery, outcome: Result<(), String>) {
    let settled = match outcome {
        Ok(()) => receiver.ack(delivery).await,
        Err(reason) => {
            eprintln!("job {} failed: {reason}; returning it", delivery.receipt.message_id);
            receiver.nack(delivery, None).await
        }
    };
    match settled {
        Ok(()) => {}
        Err(e) if e.is_stale_receipt() => eprintln!("job {}: lease expired meanwhile", delivery.receipt.message_id),
        Err(e) => eprintln!("job {}: could not settle: {e}", delivery.receipt.message_id),
    }
}
