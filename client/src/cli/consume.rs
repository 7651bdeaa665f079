//! `strata consume TOPIC`: prints message values, one per line, through a
//! buffered writer that is flushed whenever the consumer has nothing ready.

use std::io::{self, Write as _};

use strata_client::{Client, ConsumedRecord, ConsumerConfig};
use tokio::sync::watch;

use super::ConsumeArgs;

pub(crate) async fn run(client: &Client, args: ConsumeArgs) -> anyhow::Result<()> {
    let config = ConsumerConfig {
        start: args.from,
        partitions: (!args.partitions.is_empty()).then_some(args.partitions),
        max_wait: args.max_wait,
        ..ConsumerConfig::default()
    };
    let mut consumer = client.consumer(&args.topic, config).await?;

    // Ctrl-C stops the loop cleanly so buffered output is written out.
    let (stop_tx, mut stop) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = stop_tx.send(true);
        }
    });

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
