//! `strata consume TOPIC`: prints message values, one per line, through a
//! buffered writer that is flushed whenever the consumer has nothing ready.
//! With `--group` it consumes as a group member and commits only what it
//! has printed and flushed.

use std::io::{self, Write as _};
use std::time::Duration;

use strata_client::{Client, ConsumedRecord, ConsumerConfig, GroupConsumer, GroupConsumerConfig};
use tokio::sync::watch;

use super::ConsumeArgs;

/// How often a group consumer commits what it printed.
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) async fn run(client: &Client, args: ConsumeArgs) -> anyhow::Result<()> {
    if let Some(group) = args.group.clone() {
        return run_group(client, &group, args).await;
    }
    let config = ConsumerConfig {
        start: args.from,
        partitions: (!args.partitions.is_empty()).then_some(args.partitions),
        max_wait: args.max_wait,
        ..ConsumerConfig::default()
    };
    let mut consumer = client.consumer(&args.topic, config).await?;

    let mut stop = stop_on_ctrl_c();

    let mut out = io::BufWriter::with_capacity(64 * 1024, io::stdout());
    let mut remaining = args.count;
    let result = loop {
        if remaining == Some(0) || *stop.borrow() {
            break Ok(());
        }
        let item = match consumer.try_next() {
            Some(item) => item,
            None => {
                // Idle: show what we have before waiting.
                if let Err(e) = out.flush() {
                    break Err(e.into());
                }
                tokio::select! {
                    item = consumer.next() => match item {
                        Some(item) => item,
                        None => break Ok(()),
                    },
                    _ = stop.changed() => break Ok(()),
                }
            }
        };
        let record = match item {
            Ok(record) => record,
            Err(e) => break Err(e.into()),
        };
        if let Err(e) = write_value(&mut out, &record) {
            break Err(e.into());
        }
        if let Some(n) = remaining.as_mut() {
            *n -= 1;
        }
    };
    let flushed = out.flush();
    result.and(flushed.map_err(anyhow::Error::from)).or_else(quiet_broken_pipe)
}

/// Ctrl-C stops a loop cleanly so buffered output is written out.
pub(crate) fn stop_on_ctrl_c() -> watch::Receiver<bool> {
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = stop_tx.send(true);
        }
    });
    stop
}

/// `consume --group`: the group consumer commits positions (the offset
/// after the last record handed out) every second, before giving up
/// partitions in a rebalance, and on close — and all of that happens only
/// inside `next()` and `close()`. Output is flushed before every call to
/// them, so whatever is committed has been written: at-least-once.
async fn run_group(client: &Client, group: &str, args: ConsumeArgs) -> anyhow::Result<()> {
    let config = GroupConsumerConfig {
        auto_commit: true,
        auto_commit_interval: COMMIT_INTERVAL,
        auto_offset_reset: args.from,
        max_wait: args.max_wait,
        client_id: format!("strata-cli/{}", std::process::id()),
        ..GroupConsumerConfig::default()
    };
    let mut consumer = client.group_consumer(group, [args.topic.as_str()], config).await?;
    let result = print_group(&mut consumer, args.count).await;
    // Leave (and commit what was printed) even after an output error.
    let closed = consumer.close().await;
    result.or_else(quiet_broken_pipe)?;
    closed.map_err(anyhow::Error::from)
}

async fn print_group(consumer: &mut GroupConsumer, count: Option<u64>) -> anyhow::Result<()> {
    let mut stop = stop_on_ctrl_c();
    let mut out = io::BufWriter::with_capacity(64 * 1024, io::stdout());
    let mut remaining = count;
    loop {
        if remaining == Some(0) || *stop.borrow() {
            break;
        }
        let item = match consumer.try_next() {
            Some(item) => item,
            None => {
                // Everything handed out so far is written before `next()`
                // may commit it.
                out.flush()?;
                tokio::select! {
                    item = consumer.next() => match item {
                        Some(item) => item,
                        None => break,
                    },
                    _ = stop.changed() => break,
                }
            }
        };
        write_value(&mut out, &item?)?;
        if let Some(n) = remaining.as_mut() {
            *n -= 1;
        }
    }
    out.flush()?;
    Ok(())
}

fn write_value(out: &mut impl io::Write, record: &ConsumedRecord) -> io::Result<()> {
    // Text stays byte-exact; invalid UTF-8 becomes U+FFFD so the output is
    // always valid text.
    out.write_all(String::from_utf8_lossy(&record.value).as_bytes())?;
    out.write_all(b"\n")
}

/// A closed pipe (`strata consume t | head`) is a normal way to stop.
fn quiet_broken_pipe(e: anyhow::Error) -> anyhow::Result<()> {
    match e.downcast_ref::<io::Error>() {
        Some(io) if io.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_pipe_is_quiet_other_errors_are_not() {
        let pipe = anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(quiet_broken_pipe(pipe).is_ok());
        let other = anyhow::Error::from(io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(quiet_broken_pipe(other).is_err());
    }
}
