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
//! With tracing on, the per-message cost of an *unsampled* message is kept
//! to a sampling decision and a 55-byte `traceparent`: [`start_send`] asks
//! the sampler before building a span, and [`extract`] parses headers
//! without allocating. Record batches say which of their records carry a
//! sampled context (`batch::RECORD_TRACED`), so the broker decodes only those.
//!
//! Span names and attributes follow the OpenTelemetry messaging semantic
//! conventions (`send orders`, `process orders`; `messaging.system`, ...).
//!
//! Without features the crate builds everything but [`init`]-time export, which
//! needs feature `telemetry` (the OTLP exporter stack); without it the
//! exporter-only helpers are unused.
#![cfg_attr(not(feature = "telemetry"), allow(dead_code, unused_imports))]

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{OnceLock, RwLock};

use bytes::Bytes;
use opentelemetry::trace::{SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, Sampler, SdkTracerProvider};

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

/// The `traceparent` header (W3C Trace Context).
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` header (W3C Trace Context).
pub const TRACESTATE: &str = "tracestate";

/// Where to export and what to sample, read from the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TelemetryConfig {
    pub endpoint: Option<String>,
    pub service_name: Option<String>,
    /// `OTEL_TRACES_SAMPLER` (default `parentbased_always_on`).
    pub sampler: Option<String>,
    /// `OTEL_TRACES_SAMPLER_ARG`: the ratio of the `*traceidratio` samplers.
    pub sampler_arg: Option<String>,
}

impl TelemetryConfig {
    /// From `OTEL_*` variables in `env` (pass `std::env::vars()`): off when no
    /// endpoint is set, or `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`.
    pub fn from_env(env: impl IntoIterator<Item = (String, String)>) -> TelemetryConfig {
        let env: std::collections::HashMap<String, String> = env.into_iter().collect();
        let get = |k: &str| env.get(k).map(|v| v.trim()).filter(|v| !v.is_empty()).map(str::to_owned);
        let disabled = get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || get("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
        let endpoint = if disabled {
            None
        } else {
            get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        };
        TelemetryConfig {
            endpoint,
            service_name: get("OTEL_SERVICE_NAME"),
            sampler: get("OTEL_TRACES_SAMPLER"),
            sampler_arg: get("OTEL_TRACES_SAMPLER_ARG"),
        }
    }

    /// The sampler `OTEL_TRACES_SAMPLER` names (the specification's values),
    /// or why it can't be used: an unknown name or a ratio outside 0..=1 is
    /// refused rather than guessed.
    pub fn sampler(&self) -> Result<SamplerChoice, String> {
        let ratio = || -> Result<f64, String> {
            let Some(arg) = &self.sampler_arg else { return Ok(1.0) };
            match arg.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(format!("OTEL_TRACES_SAMPLER_ARG must be a ratio between 0 and 1, got {arg:?}")),
            }
        };
        let name = self.sampler.as_deref().unwrap_or("parentbased_always_on");
        let (parent_based, root) = match name.to_ascii_lowercase().as_str() {
            "always_on" => (false, RootSampler::AlwaysOn),
            "always_off" => (false, RootSampler::AlwaysOff),
            "traceidratio" => (false, RootSampler::Ratio(ratio()?)),
            "parentbased_always_on" => (true, RootSampler::AlwaysOn),
            "parentbased_always_off" => (true, RootSampler::AlwaysOff),
            "parentbased_traceidratio" => (true, RootSampler::Ratio(ratio()?)),
            other => {
                return Err(format!(
                    "OTEL_TRACES_SAMPLER {other:?} is not supported (use always_on, always_off, traceidratio, \
                     parentbased_always_on, parentbased_always_off or parentbased_traceidratio)"
                ));
            }
        };
        Ok(SamplerChoice { parent_based, root })
    }
}

/// How spans without a parent (or, without `parent_based`, all spans) are
/// sampled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RootSampler {
    AlwaysOn,
    AlwaysOff,
    /// A fraction of trace ids, decided on the trace id (the SDK's rule).
    Ratio(f64),
}

/// A sampler of the specification: the same decision the SDK's [`Sampler`]
/// makes, evaluated without a lock or an allocation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerChoice {
    /// A valid parent's sampled flag decides; `root` decides for roots.
    pub parent_based: bool,
    pub root: RootSampler,
}

impl SamplerChoice {
    /// The SDK sampler making the same decisions.
    pub fn to_sdk(self) -> Sampler {
        let root = match self.root {
            RootSampler::AlwaysOn => Sampler::AlwaysOn,
            RootSampler::AlwaysOff => Sampler::AlwaysOff,
            RootSampler::Ratio(r) => Sampler::TraceIdRatioBased(r),
        };
        if self.parent_based { Sampler::ParentBased(Box::new(root)) } else { root }
    }

    /// Whether a span in `trace_id` whose parent is `parent` (if valid) is
    /// sampled.
    pub fn decide(self, parent: Option<&SpanContext>, trace_id: TraceId) -> bool {
        let (mode, bound) = self.encode();
        decide(mode, bound, parent, trace_id)
    }

    /// As [`SAMPLER_MODE`] and [`SAMPLER_BOUND`] hold it.
    fn encode(self) -> (u8, u64) {
        let (kind, bound) = match self.root {
            RootSampler::AlwaysOn => (MODE_ON, 0),
            RootSampler::AlwaysOff => (MODE_OFF, 0),
            RootSampler::Ratio(r) => (MODE_RATIO, ratio_bound(r)),
        };
        (kind | if self.parent_based { MODE_PARENT_BASED } else { 0 }, bound)
    }
}

fn decide(mode: u8, bound: u64, parent: Option<&SpanContext>, trace_id: TraceId) -> bool {
    if mode & MODE_PARENT_BASED != 0
        && let Some(p) = parent.filter(|p| p.is_valid())
    {
        return p.is_sampled();
    }
    match mode & !MODE_PARENT_BASED {
        MODE_ON => true,
        MODE_RATIO => ratio_admits(bound, trace_id),
        _ => false,
    }
}

/// The SDK's `TraceIdRatioBased` rule: the low 63 bits of the trace id's
/// last 8 bytes below `ratio * 2^63` (`u64::MAX`: everything).
fn ratio_bound(ratio: f64) -> u64 {
    if ratio >= 1.0 { u64::MAX } else { (ratio.max(0.0) * (1u64 << 63) as f64) as u64 }
}

fn ratio_admits(bound: u64, trace_id: TraceId) -> bool {
    let low = u64::from_be_bytes(trace_id.to_bytes()[8..].try_into().unwrap_or_default());
    bound == u64::MAX || (low >> 1) < bound
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
            *INSTALLED.write().unwrap_or_else(|e| e.into_inner()) = None;
            SAMPLER_MODE.store(MODE_OFF, Ordering::Relaxed);
            let _ = p.force_flush();
            let _ = p.shutdown();
        }
    }
}

/// What [`init`] installed.
struct Installed {
    tracer: global::BoxedTracer,
}

static INSTALLED: RwLock<Option<Installed>> = RwLock::new(None);

/// The installed sampler, readable without a lock: [`SAMPLER_MODE`] bits
/// (parent-based, root kind) and, for a ratio root, its bound.
static SAMPLER_MODE: AtomicU8 = AtomicU8::new(MODE_OFF);
static SAMPLER_BOUND: AtomicU64 = AtomicU64::new(0);
const MODE_PARENT_BASED: u8 = 0b100;
const MODE_ON: u8 = 0;
const MODE_OFF: u8 = 1;
const MODE_RATIO: u8 = 2;

fn install_sampler(choice: SamplerChoice) {
    let (mode, bound) = choice.encode();
    SAMPLER_BOUND.store(bound, Ordering::Relaxed);
    SAMPLER_MODE.store(mode, Ordering::Relaxed);
}

thread_local! {
    /// The trace id the next root span of this thread must get: set by
    /// [`start_send`] around building a span it has decided to sample.
    static NEXT_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// Random ids, except that a root span built by [`start_send`] gets the trace
/// id its sampling decision was made on, so that the SDK's sampler, asked
/// again about the same id, agrees (ratio samplers decide on the trace id).
#[derive(Debug, Default)]
struct DecidedIds(RandomIdGenerator);

impl IdGenerator for DecidedIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE_ID.with(Cell::take).unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.0.new_span_id()
    }
}

fn random_ids() -> &'static RandomIdGenerator {
    static IDS: OnceLock<RandomIdGenerator> = OnceLock::new();
    IDS.get_or_init(RandomIdGenerator::default)
}

/// Installs the global OTLP (gRPC) exporter when `config` names an endpoint.
/// Must be called inside a Tokio runtime. Needs the `telemetry` feature (the
/// exporter); without it the crate only carries and samples contexts.
#[cfg(feature = "telemetry")]
pub fn init(config: &TelemetryConfig, default_service: &str) -> Result<TelemetryGuard, String> {
    let Some(endpoint) = &config.endpoint else { return Ok(TelemetryGuard(None)) };
    let choice = config.sampler()?;
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|e| format!("cannot set up OTLP export to {endpoint}: {e}"))?;
    let service = config.service_name.clone().unwrap_or_else(|| default_service.to_owned());
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service).build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .with_sampler(choice.to_sdk())
        .with_id_generator(DecidedIds::default())
        .build();
    global::set_tracer_provider(provider.clone());
    global::set_text_map_propagator(TraceContextPropagator::new());
    *INSTALLED.write().unwrap_or_else(|e| e.into_inner()) = Some(Installed { tracer: global::tracer("strata") });
    install_sampler(choice);
    ENABLED.store(true, Ordering::Relaxed);
    Ok(TelemetryGuard(Some(provider)))
}

/// Runs `f` with what [`init`] installed (`None` before it or after the guard
/// is dropped).
fn with_installed<R>(f: impl FnOnce(Option<&Installed>) -> R) -> R {
    let guard = INSTALLED.read().unwrap_or_else(|e| e.into_inner());
    f(guard.as_ref())
}

/// The trace id a span under `parent` belongs to: the parent's, or a new one
/// for a root.
fn trace_id_under(parent: &Context) -> (Option<SpanContext>, TraceId) {
    let span = parent.span();
    let sc = span.span_context();
    if sc.is_valid() { (Some(sc.clone()), sc.trace_id()) } else { (None, random_ids().new_trace_id()) }
}

/// Whether the installed sampler samples a span in `trace_id` whose parent
/// is `parent` (never before [`init`]). The same decision as the SDK's.
fn would_sample(parent: Option<&SpanContext>, trace_id: TraceId) -> bool {
    decide(SAMPLER_MODE.load(Ordering::Relaxed), SAMPLER_BOUND.load(Ordering::Relaxed), parent, trace_id)
}

/// Whether a span of `kind` under `parent` would be recorded: lets callers
/// skip building the names and attributes of spans that would be dropped.
pub fn would_record(parent: &Context) -> bool {
    let (sc, trace_id) = trace_id_under(parent);
    would_sample(sc.as_ref(), trace_id)
}

/// The W3C trace context one outgoing message carries, ready to encode
/// without allocating (see [`MessageTrace::headers`]).
#[derive(Debug, Clone)]
pub struct MessageTrace {
    traceparent: [u8; 55],
    tracestate: Option<Bytes>,
    sampled: bool,
}

impl MessageTrace {
    fn new(trace_id: TraceId, span_id: SpanId, flags: TraceFlags, state: Option<&TraceState>) -> MessageTrace {
        let state = state.map(TraceState::header).filter(|s| !s.is_empty());
        MessageTrace {
            traceparent: traceparent_bytes(trace_id, span_id, flags),
            tracestate: state.map(Bytes::from),
            sampled: flags.is_sampled(),
        }
    }

    /// Whether the message's trace is sampled (it has a `send` span and the
    /// broker records spans for it).
    pub fn is_sampled(&self) -> bool {
        self.sampled
    }

    /// The headers to write: `traceparent`, and `tracestate` when not empty.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, &[u8])> + Clone {
        std::iter::once((TRACEPARENT, &self.traceparent[..])).chain(self.tracestate.as_deref().map(|s| (TRACESTATE, s)))
    }

    /// Whether `key` is a header this context replaces.
    pub fn replaces(key: &str) -> bool {
        key == TRACEPARENT || key == TRACESTATE
    }

    /// Writes the headers into `headers`, replacing any trace context there.
    pub fn write_into(&self, headers: &mut Vec<(String, Bytes)>) {
        headers.retain(|(k, _)| !Self::replaces(k));
        headers.extend(self.headers().map(|(k, v)| (k.to_owned(), Bytes::copy_from_slice(v))));
    }
}

/// Starts the PRODUCER span of one outgoing message under the current
/// context, deciding on sampling *first*: an unsampled message gets only its
/// trace context (flags `00`, so consumers keep the decision) and no span,
/// name or attribute is built for it. Returns the context the message must
/// carry, and the span when it is sampled.
pub fn start_send(
    name: impl FnOnce() -> String,
    attributes: impl FnOnce() -> Vec<KeyValue>,
) -> (MessageTrace, Option<BoxedSpan>) {
    let parent = Context::current();
    let (parent_sc, trace_id) = trace_id_under(&parent);
    if !would_sample(parent_sc.as_ref(), trace_id) {
        let state = parent_sc.as_ref().map(SpanContext::trace_state);
        return (MessageTrace::new(trace_id, random_ids().new_span_id(), TraceFlags::default(), state), None);
    }
    if parent_sc.is_none() {
        NEXT_TRACE_ID.with(|c| c.set(Some(trace_id)));
    }
    let span = start(name(), SpanKind::Producer, &parent, attributes());
    NEXT_TRACE_ID.with(|c| c.set(None));
    let sc = span.span_context();
    let trace = MessageTrace::new(sc.trace_id(), sc.span_id(), sc.trace_flags(), Some(sc.trace_state()));
    (trace, Some(span))
}

/// Two lower-case hex digits per byte value.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    t
};

/// A version-00 `traceparent` value, formatted without `fmt`.
fn traceparent_bytes(trace_id: TraceId, span_id: SpanId, flags: TraceFlags) -> [u8; 55] {
    fn hex(out: &mut [u8], bytes: &[u8]) {
        for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
            pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
        }
    }
    let mut out = [b'-'; 55];
    out[0..2].copy_from_slice(b"00");
    hex(&mut out[3..35], &trace_id.to_bytes());
    hex(&mut out[36..52], &span_id.to_bytes());
    hex(&mut out[53..55], &[flags.to_u8()]);
    out
}

/// Parses a `traceparent` value (W3C Trace Context: version 00 exactly;
/// later versions by their version-00 prefix; version `ff` is invalid).
fn parse_traceparent(v: &[u8]) -> Option<(TraceId, SpanId, TraceFlags)> {
    fn hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut out = [0u8; N];
        for (i, o) in out.iter_mut().enumerate() {
            *o = (digit(s[2 * i])? << 4) | digit(s[2 * i + 1])?;
        }
        Some(out)
    }
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let [version] = hex::<1>(&v[0..2])?;
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace_id = TraceId::from_bytes(hex::<16>(&v[3..35])?);
    let span_id = SpanId::from_bytes(hex::<8>(&v[36..52])?);
    let [flags] = hex::<1>(&v[53..55])?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    Some((trace_id, span_id, TraceFlags::new(flags) & TraceFlags::SAMPLED))
}

/// Writes `cx`'s span context into headers as `traceparent` (and
/// `tracestate`, when it is not empty).
pub fn inject(cx: &Context, headers: &mut Vec<(String, Bytes)>) {
    let span = cx.span();
    let sc = span.span_context();
    if sc.is_valid() {
        MessageTrace::new(sc.trace_id(), sc.span_id(), sc.trace_flags(), Some(sc.trace_state())).write_into(headers);
    }
}

/// The trace context carried in headers (an empty context when there is
/// none or it is malformed). Allocates only for a non-empty `tracestate`.
pub fn extract<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Context {
    let mut parent = None;
    let mut state = None;
    for (k, v) in headers {
        if k.eq_ignore_ascii_case(TRACEPARENT) {
            parent = Some(v);
        } else if k.eq_ignore_ascii_case(TRACESTATE) {
            state = Some(v);
        }
    }
    let Some((trace_id, span_id, flags)) = parent.and_then(parse_traceparent) else { return Context::new() };
    let state = state
        .filter(|s| !s.is_empty())
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    Context::new().with_remote_span_context(SpanContext::new(trace_id, span_id, flags, true, state))
}

/// Whether headers carry a sampled trace context (cheap: no span created).
pub fn is_sampled(cx: &Context) -> bool {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid() && sc.is_sampled()
}

/// Starts a span named `name` of `kind` as a child of `parent` (or a root).
pub fn start(name: String, kind: SpanKind, parent: &Context, attributes: Vec<KeyValue>) -> BoxedSpan {
    start_with(name, kind, parent, attributes, None)
}

fn start_with(
    name: String,
    kind: SpanKind,
    parent: &Context,
    attributes: Vec<KeyValue>,
    link: Option<SpanContext>,
) -> BoxedSpan {
    with_installed(|i| {
        let fallback;
        let tracer = match i {
            Some(i) => &i.tracer,
            None => {
                fallback = global::tracer("strata");
                &fallback
            }
        };
        let mut b = tracer.span_builder(name).with_kind(kind).with_attributes(attributes);
        if let Some(link) = link {
            b = b.with_links(vec![Link::with_context(link)]);
        }
        b.start_with_context(tracer, parent)
    })
}

/// Starts a span that is a child of `parent` and also links to it (the
/// messaging conventions' "process" span: the link survives batching).
pub fn start_linked(name: String, kind: SpanKind, parent: &Context, attributes: Vec<KeyValue>) -> BoxedSpan {
    let link = Some(parent.span().span_context().clone()).filter(SpanContext::is_valid);
    start_with(name, kind, parent, attributes, link)
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
        assert_eq!(headers.len(), 2, "an empty tracestate is not written");

        let with_state = Context::new().with_remote_span_context(SpanContext::new(
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags(),
            true,
            "vendor=v1".parse::<TraceState>().unwrap(),
        ));
        inject(&with_state, &mut headers);
        let back = extract(headers.iter().map(|(k, v)| (k.as_str(), v.as_ref())));
        assert_eq!(back.span().span_context().trace_state().header(), "vendor=v1");
        assert_eq!(headers.iter().filter(|(k, _)| k == "traceparent").count(), 1, "injecting replaces");
    }

    #[test]
    fn traceparent_parsing_follows_the_w3c_rules() {
        let ok = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (t, s, f) = parse_traceparent(ok).unwrap();
        assert_eq!(&traceparent_bytes(t, s, f)[..], &ok[..], "format and parse agree");
        let unsampled = parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.2.is_sampled());
        // Unknown flag bits are dropped; a later version is read by its prefix.
        assert!(parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03").unwrap().2.is_sampled());
        assert!(parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
        for bad in [
            &b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..], // version ff
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",    // v00 with a suffix
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",      // upper-case hex
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",      // invalid trace id
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",      // invalid span id
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",         // short
            b"00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",      // separators
            b"00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",      // not hex
            b"",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{}", String::from_utf8_lossy(bad));
            let cx = extract([("traceparent", bad)]);
            assert!(!cx.span().span_context().is_valid());
        }
    }

    #[test]
    fn sampler_settings_are_the_specifications_and_bad_ones_are_refused() {
        let cfg = |name: Option<&str>, arg: Option<&str>| TelemetryConfig {
            sampler: name.map(str::to_owned),
            sampler_arg: arg.map(str::to_owned),
            ..TelemetryConfig::default()
        };
        let show = |c: TelemetryConfig| format!("{:?}", c.sampler().unwrap().to_sdk());
        assert_eq!(show(cfg(None, None)), "ParentBased(AlwaysOn)");
        assert_eq!(show(cfg(Some("parentbased_traceidratio"), Some("0.01"))), "ParentBased(TraceIdRatioBased(0.01))");
        assert_eq!(show(cfg(Some("traceidratio"), None)), "TraceIdRatioBased(1.0)");
        assert_eq!(show(cfg(Some("always_off"), None)), "AlwaysOff");
        let err = cfg(Some("traceidratio"), Some("2")).sampler().unwrap_err();
        assert!(err.contains("between 0 and 1"), "{err}");
        assert!(cfg(Some("parentbased_traceidratio"), Some("lots")).sampler().is_err());
        let err = cfg(Some("jaeger_remote"), None).sampler().unwrap_err();
        assert!(err.contains("not supported"), "{err}");
    }

    #[test]
    fn the_lock_free_sampler_decides_as_the_sdk_does() {
        use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};
        let ids = RandomIdGenerator::default();
        let parents = [None, Some(TraceFlags::SAMPLED), Some(TraceFlags::default())];
        for parent_based in [false, true] {
            for root in [
                RootSampler::AlwaysOn,
                RootSampler::AlwaysOff,
                RootSampler::Ratio(0.0),
                RootSampler::Ratio(0.01),
                RootSampler::Ratio(0.5),
                RootSampler::Ratio(1.0),
            ] {
                let choice = SamplerChoice { parent_based, root };
                let sdk = choice.to_sdk();
                for _ in 0..500 {
                    let trace_id = ids.new_trace_id();
                    for flags in parents {
                        let parent = flags
                            .map(|f| SpanContext::new(trace_id, ids.new_span_id(), f, true, TraceState::default()));
                        let cx = parent.clone().map(|p| Context::new().with_remote_span_context(p));
                        let sdk_says =
                            sdk.should_sample(cx.as_ref(), trace_id, "send", &SpanKind::Producer, &[], &[]).decision
                                == SamplingDecision::RecordAndSample;
                        assert_eq!(choice.decide(parent.as_ref(), trace_id), sdk_says, "{choice:?} {flags:?}");
                    }
                }
            }
        }
    }

    /// The one test that installs the global provider (the sampler is
    /// process-wide state).
    #[tokio::test]
    async fn a_send_is_sampled_by_the_ratio_of_its_trace_id_and_unsampled_ones_still_propagate() {
        let config = TelemetryConfig {
            // A port that was free a moment ago: nothing listens, spans are
            // dropped on export, which is fine.
            endpoint: Some(format!(
                "http://{}",
                std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
            )),
            sampler: Some("parentbased_traceidratio".into()),
            sampler_arg: Some("0.25".into()),
            ..TelemetryConfig::default()
        };
        // Not dropped: a shutdown would wait out the export timeout against
        // the dead endpoint; the test binary's exit ends the exporter.
        std::mem::forget(init(&config, "test").unwrap());
        let ratio = SamplerChoice { parent_based: false, root: RootSampler::Ratio(0.25) };
        let mut sampled = 0;
        for _ in 0..2000 {
            let mut headers = Vec::new();
            let (trace, span) = start_send(|| "send t".into(), Vec::new);
            assert_eq!(trace.is_sampled(), span.is_some());
            trace.write_into(&mut headers);
            let cx = extract(headers.iter().map(|(k, v)| (k.as_str(), v.as_ref())));
            let sc = cx.span().span_context().clone();
            assert!(sc.is_valid(), "every message carries a context");
            assert_eq!(span.is_some(), sc.is_sampled(), "a span exactly for the sampled ones");
            // The decision is the ratio sampler's on the trace id that travels.
            let expected = ratio.decide(None, sc.trace_id());
            assert_eq!(sc.is_sampled(), expected);
            if let Some(span) = span {
                assert_eq!(span.span_context().trace_id(), sc.trace_id());
                assert_eq!(span.span_context().span_id(), sc.span_id(), "the header names the send span");
                sampled += 1;
            }
        }
        assert!((350..650).contains(&sampled), "about a quarter sampled, got {sampled}");

        // Under a parent, the parent's decision and trace id hold.
        for parent_sampled in [false, true] {
            let flags = if parent_sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
            let parent = SpanContext::new(
                TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
                SpanId::from_hex("00f067aa0ba902b7").unwrap(),
                flags,
                true,
                "k=v".parse().unwrap(),
            );
            let _attached = Context::new().with_remote_span_context(parent.clone()).attach();
            for _ in 0..50 {
                let mut headers = vec![("traceparent".to_string(), Bytes::from_static(b"stale"))];
                let (trace, span) = start_send(|| "send t".into(), Vec::new);
                trace.write_into(&mut headers);
                assert_eq!(headers.len(), 2, "traceparent replaced, tracestate added");
                assert_eq!(span.is_some(), parent_sampled);
                let cx = extract(headers.iter().map(|(k, v)| (k.as_str(), v.as_ref())));
                let sc = cx.span().span_context().clone();
                assert_eq!((sc.trace_id(), sc.is_sampled()), (parent.trace_id(), parent_sampled));
                assert_ne!(sc.span_id(), parent.span_id(), "a new span id per message");
                assert_eq!(sc.trace_state().header(), "k=v");
            }
        }
    }
}
