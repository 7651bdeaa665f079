//! `strata receive QUEUE`: prints message bodies, one per line, and acks
//! each batch only after it was written and flushed (at-least-once), unless
//! `--no-ack`. Stops after `--count` messages, or when a receive waited
//! `--wait` and got nothing.

use std::io::{self, Write as _};
use std::time::Duration;

use strata_client::{Client, Delivery, MAX_RECEIVE_MESSAGES};

use super::consume::stop_on_ctrl_c;
use super::parse;

#[derive(Debug, clap::Args)]
pub(crate) struct ReceiveArgs {
    /// Queue to receive from.
    pub(crate) queue: String,
    /// Exit after this many messages (default: when the queue stays empty
    /// for --wait).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: Option<u64>,
    /// How long to wait for a message before exiting (0s: do not wait).
    #[arg(long, default_value = "10s", value_parser = parse::duration_or_zero)]
    pub(crate) wait: Duration,
    /// Lease received messages for this long instead of the queue's
    /// visibility timeout.
    #[arg(long, value_parser = parse::duration)]
    pub(crate) visibility_timeout: Option<Duration>,
    /// Do not acknowledge: the messages become visible again after the
    /// visibility timeout.
    #[arg(long)]
    pub(crate) no_ack: bool,
    /// Most messages leased per receive call (1 to 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_RECEIVE_MESSAGES)))]
    pub(crate) batch: u32,
}

pub(crate) async fn run(client: &Client, args: ReceiveArgs) -> anyhow::Result<()> {
    let mut receiver = client.receiver(&args.queue).wait(args.wait);
    if let Some(v) = args.visibility_timeout {
        receiver = receiver.visibility_timeout(v);
    }
    let mut stop = stop_on_ctrl_c();
    let mut out = io::BufWriter::with_capacity(64 * 1024, io::stdout());
    let mut remaining = args.count;
    loop {
        if remaining == Some(0) || *stop.borrow() {
            break;
        }
        // Never lease more than will be printed: leftovers would stay
        // invisible to other consumers until their lease expired.
        let max = match remaining {
            Some(n) => u32::try_from(n).unwrap_or(u32::MAX).min(args.batch),
            None => args.batch,
        };
        let deliveries = tokio::select! {
            received = receiver.receive_up_to(max) => received?,
            _ = stop.changed() => break,
        };
        if deliveries.is_empty() {
            break; // waited --wait for nothing
        }
        match print(&mut out, &deliveries) {
            Ok(()) => {}
            // A closed pipe (`strata receive q | head`) is a normal way to
            // stop; what was not printed is not acked and comes back.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        if !args.no_ack
            && let Err(e) = receiver.ack_all(&deliveries).await
        {
            if !e.is_stale_receipt() {
                return Err(e.into());
            }
            // Printed, but the lease ran out first: another consumer may get
            // these messages again (at-least-once). Not a failure of ours.
            eprintln!("warning: {e}; those messages will be delivered again (raise --visibility-timeout)");
        }
        if let Some(n) = remaining.as_mut() {
            *n = n.saturating_sub(deliveries.len() as u64);
        }
    }
    match out.flush() {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Writes the bodies, one per line, and flushes.
fn print(out: &mut impl io::Write, deliveries: &[Delivery]) -> io::Result<()> {
    for d in deliveries {
        // Text stays byte-exact; invalid UTF-8 becomes U+FFFD so the output
        // is always valid text.
        out.write_all(String::from_utf8_lossy(&d.body).as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;
    use strata_client::Receipt;

    #[test]
    fn bodies_print_one_per_line() {
        let d = |body: &'static [u8]| Delivery {
            queue: "q".into(),
            receipt: Receipt { message_id: 1, delivery_count: 1 },
            body: bytes::Bytes::from_static(body),
            headers: Vec::new(),
            priority: 0,
            group: None,
            dedup_id: None,
            key: None,
            reply_to: None,
            correlation_id: None,
            enqueued_at: UNIX_EPOCH,
            visible_until: None,
        };
        let mut out = Vec::new();
        print(&mut out, &[d(b"one"), d(b"two \xff")]).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "one\ntwo \u{fffd}\n");
    }
}
