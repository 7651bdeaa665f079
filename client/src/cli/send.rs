//! `strata send QUEUE`: one message per line of standard input, sent in
//! batches (up to 500 lines or 1 MiB per request) with a few requests in
//! flight; succeeds only once every message is acknowledged.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use strata_client::{Client, Error, QueueMessage, SendResult};
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

use super::parse;
use super::produce::strip_line_ending;

/// Lines per `Send` request.
const BATCH_LINES: usize = 500;
/// Bytes of bodies per `Send` request.
const BATCH_BYTES: usize = 1 << 20;
/// Requests in flight at once.
const PIPELINE: usize = 4;

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

/// One request in flight: its first line number, its size and its result.
type Pending = (u64, usize, JoinHandle<Result<Vec<SendResult>, Error>>);

pub(crate) async fn run(client: &Client, args: SendArgs) -> anyhow::Result<()> {
    let queue: Arc<str> = args.queue.as_str().into();
    let slots = Arc::new(Semaphore::new(PIPELINE));
    // Results are checked in order by a separate task so reading never waits
    // for the broker beyond the pipeline depth.
    let (pending_tx, mut pending_rx) = mpsc::channel::<Pending>(PIPELINE);
    let checker = tokio::spawn(async move {
        let mut duplicates = 0u64;
        while let Some((first, len, handle)) = pending_rx.recv().await {
            let last = first + len as u64 - 1;
            let results = match handle.await {
                Ok(Ok(results)) => results,
                Ok(Err(e)) => return Err(not_acknowledged(first, last, &e.to_string())),
                Err(e) => return Err(not_acknowledged(first, last, &e.to_string())),
            };
            duplicates += results.iter().filter(|r| r.duplicate).count() as u64;
        }
        Ok::<u64, anyhow::Error>(duplicates)
    });

    let mut stdin = tokio::io::BufReader::with_capacity(256 * 1024, tokio::io::stdin());
    let mut line = Vec::with_capacity(1024);
    let mut batch: Vec<QueueMessage> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut first_line = 1u64;
    let mut next_line = 1u64;
    let mut checker_stopped = false;
    loop {
        line.clear();
        let n = stdin.read_until(b'\n', &mut line).await.context("reading standard input")?;
        let eof = n == 0;
        if !eof {
            let body = Bytes::copy_from_slice(strip_line_ending(&line));
            // A line that would overflow the batch starts the next one.
            if !batch.is_empty() && batch_bytes + body.len() > BATCH_BYTES {
                if !dispatch(client, &queue, &slots, &pending_tx, &mut batch, first_line).await {
                    checker_stopped = true;
                    break;
                }
                batch_bytes = 0;
                first_line = next_line;
            }
            batch_bytes += body.len();
            batch.push(args.message(next_line, body));
            next_line += 1;
        }
        if (eof && !batch.is_empty()) || batch.len() >= BATCH_LINES {
            if !dispatch(client, &queue, &slots, &pending_tx, &mut batch, first_line).await {
                checker_stopped = true;
                break;
            }
            batch_bytes = 0;
            first_line = next_line;
        }
        if eof {
            break;
        }
    }
    drop(pending_tx);
    let duplicates = checker.await.context("acknowledgement checker")??;
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

/// Starts sending `batch` (emptied); false when the checker already stopped
/// (it saw a failure and will report it).
async fn dispatch(
    client: &Client,
    queue: &Arc<str>,
    slots: &Arc<Semaphore>,
    pending: &mpsc::Sender<Pending>,
    batch: &mut Vec<QueueMessage>,
    first_line: u64,
) -> bool {
    let Ok(permit) = slots.clone().acquire_owned().await else { return false };
    let messages = std::mem::take(batch);
    let len = messages.len();
    let client = client.clone();
    let queue = queue.clone();
    let handle = tokio::spawn(async move {
        let result = client.send_batch(&queue, messages).await;
        drop(permit);
        result
    });
    pending.send((first_line, len, handle)).await.is_ok()
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
