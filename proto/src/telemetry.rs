//! OpenTelemetry tracing shared by the broker, the client and the CLI:
//! set-up from the standard `OTEL_*` environment variables, and W3C trace
//! context (`traceparent`, `tracestate`) carried in message headers — part of
//! the wire contract (see `common.proto`).
//!
//! Tracing is off unless an OTLP endpoint is configured
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`);
//! every instrumentation point first checks [`enabled`], so when it is off
//! the cost is one relaxed atomic load. The sampler comes from
//! `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default: parent-based,
//! always on), the service name from `OTEL_SERVICE_NAME`.
//!
//! Span names and attributes follow the OpenTelemetry messaging semantic
//! conventions (`send orders`, `process orders`; `messaging.system`, ...).

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;

pub use opentelemetry::trace::{Link, Span, SpanContext, Status as SpanStatus};
pub use opentelemetry::{Context as TraceContext, KeyValue as Attribute, global::BoxedSpan};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are recorded and exported (an OTLP endpoint is configured).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Semantic-convention attribute names.
pub mod attr {
    pub const SYSTEM: &str = "messaging.system";
    pub const DESTINATION: &str = "messaging.destination.name";
    pub const OPERATION_TYPE: &str = "messaging.operation.type";
    pub const OPERATION_NAME: &str = "messaging.operation.name";
    pub const MESSAGE_ID: &str = "messaging.message.id";
    pub const PARTITION: &str = "messaging.destination.partition.id";
    pub const GROUP: &str = "messaging.consumer.group.name";
    pub const BODY_SIZE: &str = "messaging.message.body.size";
    pub const CONVERSATION_ID: &str = "messaging.message.conversation_id";
    pub const DELIVERY_COUNT: &str = "messaging.strata.delivery_count";
    pub const DEAD_LETTER_REASON: &str = "messaging.strata.dead_letter_reason";
    /// The value of `messaging.system`.
    pub const STRATA: &str = "strata";
}

/// Where to export, read from the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TelemetryConfig {
    pub endpoint: Option<String>,
    pub service_name: Option<String>,
}

impl TelemetryConfig {
    /// From `OTEL_*` variables in `env` (pass `std::env::vars()`): off when no
    /// endpoint is set, or `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`.
    pub fn from_env(env: impl IntoIterator<Item = (String, String)>) -> TelemetryConfig {
        let env: std::collections::HashMap<String, String> = env.into_iter().collect();
        let get = |k: &str| env.get(k).filter(|v| !v.trim().is_empty()).cloned();
        let disabled = get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || get("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
        let endpoint = if disabled {
            None
        } else {
            get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        };
        TelemetryConfig { endpoint, service_name: get("OTEL_SERVICE_NAME") }
    }
}

/// Keeps the exporter alive; dropping it flushes and shuts it down.
#[must_use = "dropping the guard stops exporting"]
pub struct TelemetryGuard(Option<SdkTracerProvider>);

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TelemetryGuard").field(&self.0.is_some()).finish()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            ENABLED.store(false, Ordering::Relaxed);
            let _ = p.force_flush();
            let _ = p.shutdown();
        }
    }
}

/// Installs the global OTLP (gRPC) exporter when `config` names an endpoint.
/// Must be called inside a Tokio runtime.
pub fn init(config: &TelemetryConfig, default_service: &str) -> Result<TelemetryGuard, String> {
    let Some(endpoint) = &config.endpoint else { return Ok(TelemetryGuard(None)) };
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|e| format!("cannot set up OTLP export to {endpoint}: {e}"))?;
    let service = config.service_name.clone().unwrap_or_else(|| default_service.to_owned());
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service).build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    global::set_tracer_provider(provider.clone());
    global::set_text_map_propagator(TraceContextPropagator::new());
    ENABLED.store(true, Ordering::Relaxed);
    Ok(TelemetryGuard(Some(provider)))
}

struct HeaderInjector<'a>(&'a mut Vec<(String, Bytes)>);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.retain(|(k, _)| k != key);
        self.0.push((key.to_owned(), Bytes::from(value)));
    }
}

struct HeaderExtractor<'a>(Vec<(&'a str, &'a [u8])>);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| *k == key).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| *k).collect()
    }
}

/// Writes `cx`'s span context into headers as `traceparent`/`tracestate`.
pub fn inject(cx: &Context, headers: &mut Vec<(String, Bytes)>) {
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

/// The trace context carried in headers (an empty context when there is none).
pub fn extract<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Context {
    let carrier = HeaderExtractor(headers.into_iter().collect());
    if carrier.get("traceparent").is_none() {
        return Context::new();
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// Whether headers carry a sampled trace context (cheap: no span created).
pub fn is_sampled(cx: &Context) -> bool {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid() && sc.is_sampled()
}

/// Starts a span named `name` of `kind` as a child of `parent` (or a root).
pub fn start(name: String, kind: SpanKind, parent: &Context, attributes: Vec<KeyValue>) -> BoxedSpan {
    let tracer = global::tracer("strata");
    tracer.span_builder(name).with_kind(kind).with_attributes(attributes).start_with_context(&tracer, parent)
}

/// Starts a span that is a child of `parent` and also links to it (the
/// messaging conventions' "process" span: the link survives batching).
pub fn start_linked(name: String, kind: SpanKind, parent: &Context, attributes: Vec<KeyValue>) -> BoxedSpan {
    let tracer = global::tracer("strata");
    let link = parent.span().span_context().clone();
    let mut b = tracer.span_builder(name).with_kind(kind).with_attributes(attributes);
    if link.is_valid() {
        b = b.with_links(vec![Link::with_context(link)]);
    }
    b.start_with_context(&tracer, parent)
}

/// A context whose current span is `span` (to inject, or to parent children).
pub fn context_of(span: BoxedSpan) -> Context {
    Context::current_with_span(span)
}

/// A context for children of `span` that leaves `span` with its owner.
pub fn child_of(span: &impl Span) -> Context {
    Context::new().with_remote_span_context(span.span_context().clone())
}

pub use opentelemetry::trace::SpanKind as Kind;

/// The attributes every Strata messaging span carries.
pub fn base_attributes(destination: &str) -> Vec<KeyValue> {
    vec![KeyValue::new(attr::SYSTEM, attr::STRATA), KeyValue::new(attr::DESTINATION, destination.to_owned())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_off_without_an_endpoint() {
        let env =
            |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        assert_eq!(TelemetryConfig::from_env(env(&[])).endpoint, None);
        let on = TelemetryConfig::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_SERVICE_NAME", "x"),
        ]));
        assert_eq!(on.endpoint.as_deref(), Some("http://c:4317"));
        assert_eq!(on.service_name.as_deref(), Some("x"));
        let specific = TelemetryConfig::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4317"),
        ]));
        assert_eq!(specific.endpoint.as_deref(), Some("http://t:4317"));
        let off = TelemetryConfig::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_SDK_DISABLED", "true"),
        ]));
        assert_eq!(off.endpoint, None);
    }

    #[test]
    fn trace_context_round_trips_through_headers() {
        use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = Context::new().with_remote_span_context(sc.clone());
        let mut headers = vec![("app".to_string(), Bytes::from_static(b"1"))];
        inject(&cx, &mut headers);
        let tp = headers.iter().find(|(k, _)| k == "traceparent").unwrap();
        assert_eq!(&tp.1[..], b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let back = extract(headers.iter().map(|(k, v)| (k.as_str(), v.as_ref())));
        assert_eq!(back.span().span_context().trace_id(), sc.trace_id());
        assert!(is_sampled(&back));
        assert!(!is_sampled(&extract([("other", &b"x"[..])])));
    }
}
