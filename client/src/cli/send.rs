//! `strata send QUEUE`: one message per line of standard input, each handed
//! to a [`QueueProducer`](strata_client::QueueProducer) (which batches and
//! pipelines them); succeeds only once every message is acknowledged.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use strata_client::{Client, QueueMessage, SendFuture};
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::mpsc;

use super::parse;
use super::produce::strip_line_ending;

#[derive(Debug, clap::Args)]
pub(crate) struct SendArgs {
    /// Queue to send to.
    pub(crate) queue: String,
    /// Priority of every message (0 up to the queue's levels - 1).
    #[arg(long, default_value_t = 0)]
    pub(crate) priority: u32,
    /// Deliver every message only after this delay (overrides the queue's).
    #[arg(long, value_parser = parse::duration_or_zero)]
    pub(crate) delay: Option<Duration>,
    /// Time to live of every message (overrides the queue's), or `forever`.
    #[arg(long, value_parser = parse::ttl)]
    pub(crate) ttl: Option<Duration>,
    /// FIFO message group of every message.
    #[arg(long)]
    pub(crate) group: Option<String>,
    /// Deduplication id. `{n}` in it is replaced by the line number (from
    /// 1), so each line gets its own id and re-running the same input
    /// within the queue's dedup window enqueues nothing twice.
    #[arg(long)]
    pub(crate) dedup_id: Option<String>,
    /// A header `key=value` added to every message; repeatable.
    #[arg(long = "header", value_parser = parse::header)]
    pub(crate) headers: Vec<(String, Bytes)>,
}

impl SendArgs {
    /// The message for line `n` (from 1).
    fn message(&self, n: u64, body: Bytes) -> QueueMessage {
        QueueMessage {
            body,
            headers: self.headers.clone(),
            priority: self.priority,
            delay: self.delay,
            ttl: self.ttl,
            group: self.group.clone(),
            dedup_id: self.dedup_id.as_ref().map(|id| id.replace("{n}", &n.to_string())),
            ..QueueMessage::default()
        }
    }
}

/// Answers not yet checked; the checker sees them in line order.
const CHECK_QUEUE: usize = 64 * 1024;

pub(crate) async fn run(client: &Client, args: SendArgs) -> anyhow::Result<()> {
    // Nothing can be acknowledged without a producer: the error names line 1.
    let producer = client.queue_producer(&args.queue).await.map_err(|e| not_acknowledged(1, 1, &e.to_string()))?;
    // Answers are checked in line order by a separate task, so reading never
    // waits for the broker (the producer's memory limit is the back-pressure).
    let (pending_tx, mut pending_rx) = mpsc::channel::<(u64, SendFuture)>(CHECK_QUEUE);
    let checker = tokio::spawn(async move {
        let mut duplicates = 0u64;
        while let Some((line, ack)) = pending_rx.recv().await {
            match ack.await {
                Ok(result) => duplicates += u64::from(result.duplicate),
                Err(e) => return Err(not_acknowledged(line, line, &e.to_string())),
            }
        }
        Ok::<u64, anyhow::Error>(duplicates)
    });

    let mut stdin = tokio::io::BufReader::with_capacity(256 * 1024, tokio::io::stdin());
    let mut line = Vec::with_capacity(1024);
    let mut next_line = 1u64;
    let mut checker_stopped = false;
    loop {
        line.clear();
        let n = stdin.read_until(b'\n', &mut line).await.context("reading standard input")?;
        if n == 0 {
            break;
        }
        let body = Bytes::copy_from_slice(strip_line_ending(&line));
        let ack = producer
            .enqueue(args.message(next_line, body))
            .await
            .map_err(|e| not_acknowledged(next_line, next_line, &e.to_string()))?;
        if pending_tx.send((next_line, ack)).await.is_err() {
            // The checker saw a failure and will report it.
            checker_stopped = true;
            break;
        }
        next_line += 1;
    }
    drop(pending_tx);
    let checked = checker.await.context("acknowledgement checker")?;
    producer.close().await?;
    let duplicates = checked?;
    if checker_stopped {
        anyhow::bail!("sending stopped without an error report");
    }
    if duplicates > 0 {
        eprintln!(
            "note: {duplicates} messages had a dedup id already seen within the queue's window and were not \
             enqueued again"
        );
    }
    Ok(())
}

fn not_acknowledged(first: u64, last: u64, error: &str) -> anyhow::Error {
    if first == last {
        anyhow::anyhow!("line {first} was not acknowledged: {error}")
    } else {
        anyhow::anyhow!("lines {first} to {last} were not acknowledged: {error}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_gets_the_flags_and_its_own_dedup_id() {
        let args = SendArgs {
            queue: "q".into(),
            priority: 3,
            delay: Some(Duration::from_secs(1)),
            ttl: None,
            group: Some("g".into()),
            dedup_id: Some("job-{n}".into()),
            headers: vec![("a".into(), Bytes::from_static(b"1"))],
        };
        let m = args.message(7, Bytes::from_static(b"x"));
        assert_eq!(m.dedup_id.as_deref(), Some("job-7"));
        assert_eq!((m.priority, m.group.as_deref()), (3, Some("g")));
        assert_eq!(m.delay, Some(Duration::from_secs(1)));
        assert_eq!(m.headers.len(), 1);
        let fixed = SendArgs { dedup_id: Some("once".into()), ..args };
        assert_eq!(fixed.message(9, Bytes::new()).dedup_id.as_deref(), Some("once"));
    }

    #[test]
    fn error_names_the_lines() {
        assert_eq!(not_acknowledged(3, 3, "boom").to_string(), "line 3 was not acknowledged: boom");
        assert_eq!(not_acknowledged(1, 500, "boom").to_string(), "lines 1 to 500 were not acknowledged: boom");
        assert_eq!(strip_line_ending(b"a\r\n"), b"a");
    }
}
