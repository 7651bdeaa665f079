//! OpenTelemetry end to end: an in-process OTLP receiver (the
//! `opentelemetry-proto` types over tonic) collects the spans of a real
//! broker process and of `strata` CLI processes, all configured only by the
//! standard `OTEL_*` variables. A message's trace must run from the
//! producer's `send` span through the broker's spans to the consumer's
//! `process` span, which links back to the producer's span.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tonic::{Request, Response, Status};

use crate::process::{BrokerProcess, binary_or_skip};

/// A span as received, with the service that sent it.
#[derive(Debug, Clone)]
pub struct Got {
    pub service: String,
    pub name: String,
    pub kind: i32,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub parent: Vec<u8>,
    pub links: Vec<Vec<u8>>,
    pub attrs: HashMap<String, String>,
}

#[derive(Default, Clone)]
pub struct Collector(Arc<Mutex<Vec<Got>>>);

fn value_string(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.clone()) {
        Some(Value::StringValue(s)) => s,
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut out = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .map(|kv| value_string(&kv.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(Got {
                        service: service.clone(),
                        name: s.name,
                        kind: s.kind,
                        trace_id: s.trace_id,
                        span_id: s.span_id,
                        parent: s.parent_span_id,
                        links: s.links.into_iter().map(|l| l.span_id).collect(),
                        attrs: s.attributes.into_iter().map(|kv| (kv.key, value_string(&kv.value))).collect(),
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    pub async fn start() -> (Collector, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let c = Collector::default();
        let svc = TraceServiceServer::new(c.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (c, addr)
    }

    pub fn spans(&self) -> Vec<Got> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until a span matching `f` arrived.
    pub async fn wait_for(&self, what: &str, f: impl Fn(&Got) -> bool) -> Got {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.spans().into_iter().find(&f) {
                return s;
            }
            assert!(Instant::now() < deadline, "no span {what}; got {:#?}", self.spans());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn otel_env(collector: SocketAddr, service: &str) -> Vec<(String, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), format!("http://{collector}")),
        ("OTEL_TRACES_SAMPLER".into(), "always_on".into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "50".into()),
        ("OTEL_SERVICE_NAME".into(), service.into()),
    ]
}

pub struct TracedBroker {
    pub url: String,
    /// Killed before its folder is removed (fields drop in order).
    _broker: BrokerProcess,
    _dir: tempfile::TempDir,
}

pub fn start_traced_broker(bin: &Path, collector: SocketAddr, env: &[(&str, &str)]) -> TracedBroker {
    let dir = tempfile::tempdir().unwrap();
    let otel = otel_env(collector, "strata-broker");
    let all: Vec<(&str, &str)> =
        otel.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(env.iter().copied()).collect();
    let broker = BrokerProcess::start(bin, dir.path(), "127.0.0.1:0", &[], &all);
    TracedBroker { url: format!("http://{}", broker.grpc), _broker: broker, _dir: dir }
}

/// Runs the CLI with tracing to `collector` as `service`.
pub fn traced_cli(url: &str, collector: SocketAddr, service: &str, args: &[&str], stdin: &str) -> String {
    traced_cli_with(url, collector, service, &[], args, stdin)
}

/// [`traced_cli`] with more environment (e.g. another sampler).
pub fn traced_cli_with(
    url: &str,
    collector: SocketAddr,
    service: &str,
    env: &[(&str, &str)],
    args: &[&str],
    stdin: &str,
) -> String {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .env("STRATA_SERVER", url)
        .envs(otel_env(collector, service))
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "strata {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A collector and a traced broker; `None` (after saying why) when the
/// broker binary is not built.
pub async fn traced_setup() -> Option<(Collector, SocketAddr, TracedBroker)> {
    traced_setup_with(&[]).await
}

pub async fn traced_setup_with(env: &[(&str, &str)]) -> Option<(Collector, SocketAddr, TracedBroker)> {
    let bin = binary_or_skip()?;
    let (collector, caddr) = Collector::start().await;
    let broker = tokio::task::block_in_place(|| start_traced_broker(&bin, caddr, env));
    Some((collector, caddr, broker))
}

pub fn is_kind(s: &Got, kind: SpanKind) -> bool {
    s.kind == kind as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_message_is_traced_from_producer_through_broker_to_consumer() {
    let Some((collector, caddr, broker)) = traced_setup().await else { return };
    let url = broker.url.clone();
    tokio::task::block_in_place(|| {
        traced_cli(&url, caddr, "ops", &["topic", "create", "orders", "--partitions", "1"], "");
        traced_cli(&url, caddr, "producer-app", &["produce", "orders"], "hello\n");
        let out =
            traced_cli(&url, caddr, "consumer-app", &["consume", "orders", "--from", "earliest", "--count", "1"], "");
        assert_eq!(out.trim(), "hello");
    });

    let send = collector.wait_for("send orders", |s| s.name == "send orders").await;
    assert_eq!(send.service, "producer-app");
    assert!(is_kind(&send, SpanKind::Producer));
    assert_eq!(send.attrs["messaging.system"], "strata");
    assert_eq!(send.attrs["messaging.destination.name"], "orders");
    assert_eq!(send.attrs["messaging.operation.type"], "send");
    assert_eq!(send.attrs["messaging.message.id"], "0");
    assert_eq!(send.attrs["messaging.destination.partition.id"], "0");

    let publish = collector.wait_for("publish orders", |s| s.name == "publish orders").await;
    assert_eq!(publish.service, "strata-broker");
    assert_eq!((publish.trace_id.clone(), publish.parent.clone()), (send.trace_id.clone(), send.span_id.clone()));
    assert_eq!(publish.attrs["messaging.message.id"], "0");
    assert_eq!(publish.attrs["messaging.destination.partition.id"], "0");
    let persist = collector.wait_for("persist orders", |s| s.name == "persist orders").await;
    assert_eq!(persist.parent, publish.span_id, "persist is a child of publish");
    let deliver = collector.wait_for("deliver orders", |s| s.name == "deliver orders").await;
    assert_eq!((deliver.trace_id.clone(), deliver.parent.clone()), (send.trace_id.clone(), send.span_id.clone()));

    let process = collector.wait_for("process orders", |s| s.name == "process orders").await;
    assert_eq!(process.service, "consumer-app");
    assert!(is_kind(&process, SpanKind::Consumer));
    assert_eq!(process.trace_id, send.trace_id);
    assert!(process.links.contains(&send.span_id), "process links to the producer's span");
    assert_eq!(process.attrs["messaging.operation.type"], "process");
    assert_eq!(process.attrs["messaging.message.id"], "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_message_is_traced_through_redelivery_and_dead_lettering() {
    let Some((collector, caddr, broker)) = traced_setup().await else { return };
    let url = broker.url.clone();
    tokio::task::block_in_place(|| {
        traced_cli(&url, caddr, "ops", &["queue", "create", "parked"], "");
        traced_cli(
            &url,
            caddr,
            "ops",
            &[
                "queue",
                "create",
                "jobs",
                "--max-deliveries",
                "2",
                "--dead-letter",
                "parked",
                "--visibility-timeout",
                "300ms",
            ],
            "",
        );
        traced_cli(&url, caddr, "producer-app", &["send", "jobs"], "job-1\n");
        // Two deliveries that are never acknowledged: the second lease
        // running out exhausts max-deliveries and parks the message.
        for _ in 0..2 {
            let out = traced_cli(
                &url,
                caddr,
                "worker",
                &["receive", "jobs", "--no-ack", "--count", "1", "--wait", "20s"],
                "",
            );
            assert_eq!(out.trim(), "job-1");
        }
        let out = traced_cli(&url, caddr, "janitor", &["receive", "parked", "--count", "1", "--wait", "20s"], "");
        assert_eq!(out.trim(), "job-1");
    });

    let send = collector.wait_for("send jobs", |s| s.name == "send jobs").await;
    assert_eq!(send.service, "producer-app");
    assert!(is_kind(&send, SpanKind::Producer));
    assert_eq!(send.attrs["messaging.destination.name"], "jobs");
    let child_of_send = |s: &Got| s.trace_id == send.trace_id && s.parent == send.span_id;
    let publish = collector.wait_for("publish jobs", |s| s.name == "publish jobs").await;
    assert!(child_of_send(&publish), "{publish:?}");
    let deliver = collector.wait_for("deliver jobs", |s| s.name == "deliver jobs").await;
    assert!(child_of_send(&deliver));
    assert_eq!(deliver.attrs["messaging.strata.delivery_count"], "1");
    let redeliver = collector.wait_for("redeliver jobs", |s| s.name == "redeliver jobs").await;
    assert!(child_of_send(&redeliver));
    assert_eq!(redeliver.attrs["messaging.strata.delivery_count"], "2");
    let dead = collector.wait_for("dead_letter jobs", |s| s.name == "dead_letter jobs").await;
    assert!(child_of_send(&dead));
    assert!(dead.attrs["messaging.strata.dead_letter_reason"].contains("max_deliveries 2"), "{dead:?}");
    let process = collector.wait_for("process parked", |s| s.name == "process parked").await;
    assert_eq!(process.service, "janitor");
    assert!(is_kind(&process, SpanKind::Consumer));
    assert_eq!(process.trace_id, send.trace_id, "the dead-lettered copy keeps the trace");
    assert!(process.links.contains(&send.span_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_read_back_from_the_cold_tier_keeps_its_trace() {
    // Fast uploads and maintenance; the default cold store (file:// in the data dir).
    let env = [("STRATA_STORAGE_MAINTENANCE_INTERVAL", "50ms"), ("STRATA_TIER_UPLOAD_INTERVAL", "20ms")];
    let Some((collector, caddr, broker)) = traced_setup_with(&env).await else { return };
    let url = broker.url.clone();
    tokio::task::block_in_place(|| {
        traced_cli(
            &url,
            caddr,
            "ops",
            &["topic", "create", "events", "--segment-bytes", "4KiB", "--local-retention", "1ms"],
            "",
        );
        for round in 0..5 {
            let lines: String = (0..200).map(|i| format!("msg-{:05}\n", round * 200 + i)).collect();
            traced_cli(&url, caddr, "producer-app", &["produce", "events"], &lines);
        }
    });
    // Wait until the first records are only in the cold tier.
    let client = strata_client::Client::connect(&url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = client.describe_topic("events").await.unwrap().partition_details[0].clone();
        if p.local_start_offset > 200 && p.remote_start_offset == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "data never moved to the cold tier: {p:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::block_in_place(|| {
        let out =
            traced_cli(&url, caddr, "cold-reader", &["consume", "events", "--from", "earliest", "--count", "1"], "");
        assert_eq!(out.trim(), "msg-00000");
    });

    let send = collector
        .wait_for("send events of message 0", |s| {
            s.name == "send events" && s.attrs.get("messaging.message.id").map(String::as_str) == Some("0")
        })
        .await;
    let upload = collector.wait_for("tier upload events", |s| s.name == "tier upload events").await;
    assert_eq!(upload.service, "strata-broker");
    let deliver = collector
        .wait_for("cold deliver of message 0", |s| {
            s.name == "deliver events" && s.attrs.get("messaging.message.id").map(String::as_str) == Some("0")
        })
        .await;
    assert_eq!(deliver.attrs["messaging.strata.tier"], "cold", "message 0 was served from the cold tier");
    assert_eq!((deliver.trace_id.clone(), deliver.parent.clone()), (send.trace_id.clone(), send.span_id.clone()));
    let process =
        collector.wait_for("process events", |s| s.name == "process events" && s.service == "cold-reader").await;
    assert_eq!(process.trace_id, send.trace_id);
    assert!(process.links.contains(&send.span_id), "the consumer links to the producer's span");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_is_decided_once_by_the_producer_and_kept_downstream() {
    let Some((collector, caddr, broker)) = traced_setup().await else { return };
    let url = broker.url.clone();
    let ratio = [("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0.25")];
    let parent_based = [("OTEL_TRACES_SAMPLER", "parentbased_always_on")];
    let lines: String = (0..400).map(|i| format!("m{i}\n")).collect();
    tokio::task::block_in_place(|| {
        traced_cli(&url, caddr, "ops", &["topic", "create", "sampled", "--partitions", "2"], "");
        traced_cli_with(&url, caddr, "producer-app", &ratio, &["produce", "sampled"], &lines);
        let out = traced_cli_with(
            &url,
            caddr,
            "consumer-app",
            &parent_based,
            &["consume", "sampled", "--from", "earliest", "--count", "400"],
            "",
        );
        assert_eq!(out.lines().count(), 400);
    });
    // Both CLIs have exited, so their spans are flushed.
    let named = |name: &str| -> Vec<Got> { collector.spans().into_iter().filter(|s| s.name == name).collect() };
    let sends = named("send sampled");
    let n = sends.len();
    assert!(n > 0 && n < 400, "about a quarter of 400 messages are sampled, got {n}");
    let send_ids: std::collections::HashSet<Vec<u8>> = sends.iter().map(|s| s.span_id.clone()).collect();
    let message =
        |s: &Got| (s.attrs["messaging.destination.partition.id"].clone(), s.attrs["messaging.message.id"].clone());
    let sampled_messages: std::collections::HashSet<_> = sends.iter().map(message).collect();
    assert_eq!(named("process sampled").len(), n, "the parent-based consumer processes exactly the sampled ones");
    for s in named("process sampled") {
        assert!(s.links.iter().any(|l| send_ids.contains(l)), "process links to a send span: {s:?}");
    }
    // The broker spans arrive on the broker's export schedule.
    let deadline = Instant::now() + Duration::from_secs(30);
    while named("publish sampled").len() < n || named("deliver sampled").len() < n {
        assert!(
            Instant::now() < deadline,
            "broker spans missing: {} publish, {} deliver of {n}",
            named("publish sampled").len(),
            named("deliver sampled").len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for verb in ["publish sampled", "deliver sampled"] {
        let spans = named(verb);
        assert_eq!(spans.len(), n, "{verb}: a span for each sampled message and none for the others");
        assert!(spans.iter().all(|s| send_ids.contains(&s.parent)), "{verb} spans are children of send spans");
        assert_eq!(spans.iter().map(message).collect::<std::collections::HashSet<_>>(), sampled_messages);
    }
}
