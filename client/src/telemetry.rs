//! Client-side message spans (OpenTelemetry messaging conventions):
//! `send <destination>` (PRODUCER) when a message is produced or sent, whose
//! context is injected into the message's headers as W3C `traceparent`; and
//! `process <destination>` (CONSUMER) when the application gets a message,
//! a child of — and linked to — the message's creation context.
//!
//! Every function returns at once when tracing is off. When it is on, the
//! sampler decides first and names and attributes are built only for
//! messages that are sampled: an unsampled message costs a sampling decision
//! and its `traceparent` header.

use strata_telemetry::{self as telemetry, Attribute, BoxedSpan, Kind, MessageTrace, attr};

/// The trace context an outgoing message must carry (sampled or not) and,
/// when it is sampled, its `send` span. `None` when tracing is off.
pub(crate) fn send_span(destination: &str, body_size: usize) -> Option<(MessageTrace, Option<BoxedSpan>)> {
    if !telemetry::enabled() {
        return None;
    }
    // The parent is whatever span the application is in (none: a new trace).
    Some(telemetry::start_send(
        || format!("send {destination}"),
        || {
            let mut a = telemetry::base_attributes(destination);
            a.push(Attribute::new(attr::OPERATION_TYPE, "send"));
            a.push(Attribute::new(attr::BODY_SIZE, body_size as i64));
            a
        },
    ))
}

/// Starts a `process` span for a received message whose context is sampled.
pub(crate) fn process_span<'a>(
    destination: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    attributes: impl FnOnce() -> Vec<Attribute>,
) -> Option<BoxedSpan> {
    if !telemetry::enabled() {
        return None;
    }
    let cx = telemetry::extract(headers);
    if !telemetry::would_record(&cx) {
        return None;
    }
    let mut a = telemetry::base_attributes(destination);
    a.push(Attribute::new(attr::OPERATION_TYPE, "process"));
    a.append(&mut attributes());
    Some(telemetry::start_linked(format!("process {destination}"), Kind::Consumer, &cx, a))
}
