//! Broker-side message spans: `publish` and `persist` when a message is
//! stored, `deliver` / `redeliver` when it is handed to a consumer,
//! `dead_letter` when a queue gives up on it. Each is a child of the
//! message's own trace context (W3C `traceparent` in its headers), so a
//! trace runs producer → broker → consumer.
//!
//! Only messages whose context is *sampled* get spans, and callers check
//! [`telemetry::enabled`] first: with tracing off nothing here runs. With it
//! on, a topic batch's headers are decoded only for the records its producer
//! marked `RECORD_TRACED` (batches without the `TRACED` flag are skipped
//! whole), and a queue message's `traceparent` is parsed without allocating.

use bytes::Bytes;
use strata_proto::batch::{BatchIter, Record};
use strata_telemetry::{self as telemetry, Attribute, BoxedSpan, Kind, Span, attr};

fn record_context(r: &Record) -> strata_telemetry::TraceContext {
    telemetry::extract(r.headers.iter().map(|h| (h.key.as_str(), h.value.as_deref().unwrap_or_default())))
}

/// Spans for the sampled records of a batch: `(offset delta, span)`. Every
/// sampled record gets one: the producer's sampler decided, and a trace
/// with holes would mislead (the cost follows the sampling ratio chosen).
pub(crate) fn batch_spans(batch: &Bytes, verb: &str, destination: &str, partition: u32) -> Vec<(u64, BoxedSpan)> {
    let mut out = Vec::new();
    for raw in BatchIter::new(batch.clone()) {
        let Ok(raw) = raw else { break };
        // Only the records the producer marked as carrying a sampled context
        // are decoded (none at all for a batch without the TRACED flag).
        let Ok(records) = raw.traced_records() else { break };
        for r in records {
            let cx = record_context(&r);
            if !telemetry::is_sampled(&cx) {
                continue;
            }
            let mut a = telemetry::base_attributes(destination);
            a.push(Attribute::new(attr::PARTITION, partition.to_string()));
            a.push(Attribute::new(attr::MESSAGE_ID, r.offset.to_string()));
            a.push(Attribute::new(attr::OPERATION_NAME, verb.to_owned()));
            out.push((
                r.offset - raw.header.base_offset,
                telemetry::start(format!("{verb} {destination}"), Kind::Server, &cx, a),
            ));
        }
    }
    out
}

/// A span for one message given its headers, if its context is sampled.
pub(crate) fn message_span<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    name: String,
    destination: &str,
    mut attributes: Vec<Attribute>,
) -> Option<BoxedSpan> {
    let cx = telemetry::extract(headers);
    if !telemetry::is_sampled(&cx) {
        return None;
    }
    let mut a = telemetry::base_attributes(destination);
    a.append(&mut attributes);
    Some(telemetry::start(name, Kind::Server, &cx, a))
}

/// Marks what happened to a stored queue message, `operation` (`deliver`,
/// `redeliver`, `dead_letter`) of its `deliveries`-th delivery: a span
/// that starts and ends at once, when the message's context is sampled.
/// `detail` goes between the delivery count and the operation name.
pub(crate) fn stored_message_event(
    record: &Record,
    operation: &'static str,
    queue: &str,
    id: u64,
    deliveries: u32,
    detail: Option<Attribute>,
) {
    let mut attributes = vec![
        Attribute::new(attr::MESSAGE_ID, id.to_string()),
        Attribute::new(attr::DELIVERY_COUNT, i64::from(deliveries)),
    ];
    attributes.extend(detail);
    attributes.push(Attribute::new(attr::OPERATION_NAME, operation));
    let headers = record.headers.iter().map(|h| (h.key.as_str(), h.value.as_deref().unwrap_or_default()));
    drop(message_span(headers, format!("{operation} {queue}"), queue, attributes));
}

/// Ends `publish` spans after durability, with a `persist` child covering
/// the wait for fsync.
pub(crate) struct Published {
    spans: Vec<BoxedSpan>,
    persist: Vec<BoxedSpan>,
}

impl Published {
    /// Starts `persist` children now (the wait for durability begins).
    pub(crate) fn new(spans: Vec<BoxedSpan>, destination: &str) -> Published {
        let persist = spans
            .iter()
            .map(|s| {
                let cx = telemetry::child_of(s);
                telemetry::start(
                    format!("persist {destination}"),
                    Kind::Internal,
                    &cx,
                    telemetry::base_attributes(destination),
                )
            })
            .collect();
        Published { spans, persist }
    }

    pub(crate) fn finish(self, error: Option<&str>) {
        for mut s in self.persist.into_iter().chain(self.spans) {
            if let Some(e) = error {
                s.set_status(strata_telemetry::SpanStatus::error(e.to_owned()));
            }
            s.end();
        }
    }
}
