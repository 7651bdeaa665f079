//! `strata produce TOPIC`: one message per line of standard input, pipelined;
//! succeeds only once every message is acknowledged.

use anyhow::Context as _;
use bytes::Bytes;
use strata_client::{Client, DeliveryFuture, Error, Message};
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::mpsc;

use super::ProduceArgs;

pub(crate) async fn run(client: &Client, args: ProduceArgs) -> anyhow::Result<()> {
    let producer = client.producer(&args.topic).await?;
    let key = args.key.map(Bytes::from);

    // Acknowledgements are checked in order by a separate task, so reading
    // and sending never wait for the broker (the producer's memory limit is
    // the only brake). The channel is bounded so the queue of futures is too.
    let (acks_tx, mut acks_rx) = mpsc::channel::<DeliveryFuture>(8192);
    let checker = tokio::spawn(async move {
        let mut acknowledged = 0u64;
        while let Some(ack) = acks_rx.recv().await {
            if let Err(e) = ack.await {
                return Err((acknowledged + 1, e));
            }
            acknowledged += 1;
        }
        Ok::<u64, (u64, Error)>(acknowledged)
    });

    let mut stdin = tokio::io::BufReader::with_capacity(256 * 1024, tokio::io::stdin());
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        let n = stdin.read_until(b'\n', &mut line).await.context("reading standard input")?;
        if n == 0 {
            break;
        }
        let value = strip_line_ending(&line);
        let message = Message {
            key: key.clone(),
            value: Bytes::copy_from_slice(value),
            headers: args.headers.clone(),
            timestamp: None,
            partition: args.partition,
        };
        let ack = producer.enqueue(message).await?;
        if acks_tx.send(ack).await.is_err() {
            // The checker saw a failure; stop reading and report it.
            break;
        }
    }
    drop(acks_tx);
    producer.close().await?;
    match checker.await.context("acknowledgement checker")? {
        Ok(_) => Ok(()),
        Err((n, e)) => Err(anyhow::anyhow!("line {n} was not acknowledged: {e}")),
    }
}

/// The line without its `\n` (or `\r\n`).
pub(crate) fn strip_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_endings_are_stripped_once() {
        assert_eq!(strip_line_ending(b"a\n"), b"a");
        assert_eq!(strip_line_ending(b"a\r\n"), b"a");
        assert_eq!(strip_line_ending(b"a"), b"a");
        assert_eq!(strip_line_ending(b"\n"), b"");
        assert_eq!(strip_line_ending(b"a\n\n"), b"a\n");
    }
}
