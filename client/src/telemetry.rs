//! Client-side message spans (OpenTelemetry messaging conventions):
//! `send <destination>` (PRODUCER) when a message is produced or sent, whose
//! context is injected into the message's headers as W3C `traceparent`; and
//! `process <destination>` (CONSUMER) when the application gets a message,
//! a child of — and linked to — the message's creation context. Every
//! function returns at once when tracing is off.

use bytes::Bytes;
use strata_proto::telemetry::{self, Attribute, BoxedSpan, Kind, attr};

/// Starts a `send` span and writes its context into `headers`.
pub(crate) fn send_span(destination: &str, headers: &mut Vec<(String, Bytes)>, body_size: usize) -> Option<BoxedSpan> {
    if !telemetry::enabled() {
        return None;
    }
    // The parent is whatever span the application is in (none: a new trace).
    let mut a = telemetry::base_attributes(destination);
    a.push(Attribute::new(attr::OPERATION_TYPE, "send"));
    a.push(Attribute::new(attr::BODY_SIZE, body_size as i64));
    let span = telemetry::start(format!("send {destination}"), Kind::Producer, &telemetry::TraceContext::current(), a);
    telemetry::inject(&telemetry::child_of(&span), headers);
    Some(span)
}

/// Starts a `process` span for a received message.
pub(crate) fn process_span<'a>(
    destination: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    mut attributes: Vec<Attribute>,
) -> Option<BoxedSpan> {
    if !telemetry::enabled() {
        return None;
    }
    let cx = telemetry::extract(headers);
    let mut a = telemetry::base_attributes(destination);
    a.push(Attribute::new(attr::OPERATION_TYPE, "process"));
    a.append(&mut attributes);
    Some(telemetry::start_linked(format!("process {destination}"), Kind::Consumer, &cx, a))
}
