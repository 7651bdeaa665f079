//! Prometheus metrics: counters updated on the hot paths (a label lookup per
//! batch or per call, never per record), gauges computed at scrape time from
//! the live state (log end offsets, queue depths, group lag), and an RPC
//! latency histogram per method recorded by a tower layer on the gRPC server.
//! `/metrics` on the HTTP port serves the text exposition format.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TopicLabels {
    pub tenant: String,
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PartitionLabels {
    pub tenant: String,
    pub topic: String,
    pub partition: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct QueueLabels {
    pub tenant: String,
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GroupLabels {
    pub tenant: String,
    pub group: String,
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RpcLabels {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RejectLabels {
    pub reason: &'static str,
}

/// A tenant quota (`crate::quota::Quota::name`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct QuotaLabels {
    pub tenant: String,
    pub quota: &'static str,
}

/// What a tenant uses: topics, queues, partitions, stored_bytes, connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct UsageLabels {
    pub tenant: String,
    pub resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BuildInfoLabels {
    pub version: &'static str,
    pub target: &'static str,
}

/// The broker's release version (also served by `Admin.GetServerInfo`).
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The CPU architecture and OS the broker runs on, e.g. `x86_64-linux`.
pub(crate) fn build_target() -> &'static str {
    static TARGET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TARGET.get_or_init(|| format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS))
}

type HistogramFamily = Family<RpcLabels, Histogram, fn() -> Histogram>;

fn rpc_histogram() -> Histogram {
    // 50 µs .. ~26 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

pub(crate) struct Metrics {
    registry: Registry,
    pub messages_in: Family<TopicLabels, Counter>,
    pub bytes_in: Family<TopicLabels, Counter>,
    pub messages_out: Family<TopicLabels, Counter>,
    pub bytes_out: Family<TopicLabels, Counter>,
    pub log_end_offset: Family<PartitionLabels, Gauge>,
    pub log_start_offset: Family<PartitionLabels, Gauge>,
    pub log_size: Family<PartitionLabels, Gauge>,
    pub queue_sent: Family<QueueLabels, Counter>,
    pub queue_sent_bytes: Family<QueueLabels, Counter>,
    pub queue_delivered: Family<QueueLabels, Counter>,
    pub queue_redelivered: Family<QueueLabels, Counter>,
    pub queue_acked: Family<QueueLabels, Counter>,
    pub queue_dead_lettered: Family<QueueLabels, Counter>,
    pub queue_visible: Family<QueueLabels, Gauge>,
    pub queue_in_flight: Family<QueueLabels, Gauge>,
    pub queue_delayed: Family<QueueLabels, Gauge>,
    pub queue_oldest_age: Family<QueueLabels, Gauge>,
    pub group_lag: Family<GroupLabels, Gauge>,
    pub rpc_duration: HistogramFamily,
    pub rejections: Family<RejectLabels, Counter>,
    /// Tenant quotas: refusals, time spent throttled, usage and limits.
    pub quota_rejections: Family<QuotaLabels, Counter>,
    pub quota_throttle: Family<QuotaLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub tenant_usage: Family<UsageLabels, Gauge>,
    pub tenant_quota: Family<QuotaLabels, Gauge>,
    pub tier_uploaded_segments: Family<TopicLabels, Counter>,
    pub tier_uploaded_bytes: Family<TopicLabels, Counter>,
    pub tier_upload_failures: Family<TopicLabels, Counter>,
    pub tier_upload_lag: Family<PartitionLabels, Gauge>,
    pub tier_remote_bytes: Family<PartitionLabels, Gauge>,
    pub tier_remote_end_offset: Family<PartitionLabels, Gauge>,
    /// Replicated partitions (reported by each replica; the lag and the
    /// under-replication by the leader only).
    pub partition_leader: Family<PartitionLabels, Gauge>,
    pub partition_under_replicated: Family<PartitionLabels, Gauge>,
    pub partition_replication_lag: Family<PartitionLabels, Gauge>,
    pub partition_leader_changes: Family<PartitionLabels, Counter>,
    /// Snapshots of the cluster metadata this broker installed (it lagged
    /// behind what the leader's log still held).
    pub metadata_snapshots_installed: Counter,
    /// Always 1; the labels carry the version (Prometheus' build-info idiom).
    pub build_info: Family<BuildInfoLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("strata");
        let m = Metrics {
            messages_in: Family::default(),
            bytes_in: Family::default(),
            messages_out: Family::default(),
            bytes_out: Family::default(),
            log_end_offset: Family::default(),
            log_start_offset: Family::default(),
            log_size: Family::default(),
            queue_sent: Family::default(),
            queue_sent_bytes: Family::default(),
            queue_delivered: Family::default(),
            queue_redelivered: Family::default(),
            queue_acked: Family::default(),
            queue_dead_lettered: Family::default(),
            queue_visible: Family::default(),
            queue_in_flight: Family::default(),
            queue_delayed: Family::default(),
            queue_oldest_age: Family::default(),
            group_lag: Family::default(),
            rpc_duration: Family::new_with_constructor(rpc_histogram),
            rejections: Family::default(),
            quota_rejections: Family::default(),
            quota_throttle: Family::default(),
            tenant_usage: Family::default(),
            tenant_quota: Family::default(),
            tier_uploaded_segments: Family::default(),
            tier_uploaded_bytes: Family::default(),
            tier_upload_failures: Family::default(),
            tier_upload_lag: Family::default(),
            tier_remote_bytes: Family::default(),
            tier_remote_end_offset: Family::default(),
            partition_leader: Family::default(),
            partition_under_replicated: Family::default(),
            partition_replication_lag: Family::default(),
            partition_leader_changes: Family::default(),
            metadata_snapshots_installed: Counter::default(),
            build_info: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        m.build_info.get_or_create(&BuildInfoLabels { version: VERSION, target: build_target() }).set(1);
        r.register("build_info", "The broker's version (value is always 1)", m.build_info.clone());
        r.register("topic_messages_in", "Records appended to topic partitions", m.messages_in.clone());
        r.register_with_unit("topic_in", "Record batch bytes appended", Unit::Bytes, m.bytes_in.clone());
        r.register("topic_messages_out", "Records sent to consumers by fetches", m.messages_out.clone());
        r.register_with_unit("topic_out", "Record batch bytes sent by fetches", Unit::Bytes, m.bytes_out.clone());
        r.register("log_end_offset", "High watermark of a partition", m.log_end_offset.clone());
        r.register("log_start_offset", "First offset still stored in a partition", m.log_start_offset.clone());
        r.register_with_unit("log_size", "Bytes stored for a partition", Unit::Bytes, m.log_size.clone());
        r.register("queue_messages_sent", "Messages enqueued", m.queue_sent.clone());
        r.register_with_unit("queue_sent", "Message body bytes enqueued", Unit::Bytes, m.queue_sent_bytes.clone());
        r.register("queue_deliveries", "Messages handed to consumers", m.queue_delivered.clone());
        r.register("queue_redeliveries", "Deliveries of messages delivered before", m.queue_redelivered.clone());
        r.register("queue_messages_acked", "Messages acknowledged", m.queue_acked.clone());
        r.register(
            "queue_messages_dead_lettered",
            "Messages moved to a dead-letter queue",
            m.queue_dead_lettered.clone(),
        );
        r.register("queue_visible_messages", "Messages that can be received now", m.queue_visible.clone());
        r.register("queue_in_flight_messages", "Messages leased and not yet acknowledged", m.queue_in_flight.clone());
        r.register("queue_delayed_messages", "Messages waiting for a delay or retry backoff", m.queue_delayed.clone());
        r.register_with_unit(
            "queue_oldest_message_age",
            "Age of the oldest unacknowledged message",
            Unit::Seconds,
            m.queue_oldest_age.clone(),
        );
        r.register(
            "consumer_group_lag",
            "Records between a group's committed offsets and the log end",
            m.group_lag.clone(),
        );
        r.register_with_unit(
            "rpc_duration",
            "gRPC call latency (streams: until the response starts)",
            Unit::Seconds,
            m.rpc_duration.clone(),
        );
        r.register("limit_rejections", "Requests refused for a broker limit ([limits])", m.rejections.clone());
        r.register("quota_rejections", "Requests refused for a tenant quota", m.quota_rejections.clone());
        r.register_with_unit(
            "quota_throttle",
            "Time requests were delayed for a tenant rate quota",
            Unit::Seconds,
            m.quota_throttle.clone(),
        );
        r.register(
            "tenant_usage",
            "What a tenant uses (catalog counts; bytes and connections of this broker)",
            m.tenant_usage.clone(),
        );
        r.register("tenant_quota", "A tenant's quota limits (unset quotas are absent)", m.tenant_quota.clone());
        r.register(
            "tier_uploaded_segments",
            "Sealed segments uploaded to the cold tier",
            m.tier_uploaded_segments.clone(),
        );
        r.register_with_unit(
            "tier_uploaded",
            "Bytes uploaded to the cold tier",
            Unit::Bytes,
            m.tier_uploaded_bytes.clone(),
        );
        r.register("tier_upload_failures", "Failed cold-tier upload attempts", m.tier_upload_failures.clone());
        r.register_with_unit(
            "tier_upload_lag",
            "Bytes of sealed segments waiting for upload",
            Unit::Bytes,
            m.tier_upload_lag.clone(),
        );
        r.register_with_unit("tier_remote", "Bytes stored in the cold tier", Unit::Bytes, m.tier_remote_bytes.clone());
        r.register(
            "tier_remote_end_offset",
            "End of the offsets held in the cold tier",
            m.tier_remote_end_offset.clone(),
        );
        for (name, help, family) in [
            ("partition_leader", "1 where this broker leads the replicated partition, else 0", &m.partition_leader),
            (
                "partition_under_replicated",
                "1 where fewer replicas are in sync than the partition has (reported by its leader)",
                &m.partition_under_replicated,
            ),
            (
                "partition_replication_lag",
                "Raft entries the slowest follower is behind the leader (reported by the leader)",
                &m.partition_replication_lag,
            ),
        ] {
            r.register(name, help, family.clone());
        }
        r.register(
            "partition_leader_changes",
            "Times this replica saw the partition's leader change",
            m.partition_leader_changes.clone(),
        );
        r.register(
            "metadata_snapshots_installed",
            "Snapshots of the cluster metadata this broker installed from the leader",
            m.metadata_snapshots_installed.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn queue(tenant: &str, queue: &str) -> QueueLabels {
        QueueLabels { tenant: tenant.to_owned(), queue: queue.to_owned() }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Records the latency of every gRPC call by method path.
#[derive(Clone)]
pub(crate) struct RpcMetricsLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;
    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics { inner, metrics: self.0.clone() }
    }
}

#[derive(Clone)]
pub(crate) struct RpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B> tower::Service<tonic::codegen::http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<tonic::codegen::http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        // Only known services get their own label: paths come from clients.
        let method = if path.len() < 100 && (path.starts_with("/strata.v1.") || path.starts_with("/grpc.")) {
            path.to_owned()
        } else {
            "other".to_owned()
        };
        let start = Instant::now();
        let fut = self.inner.call(req);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let res = fut.await;
            metrics.rpc_duration.get_or_create(&RpcLabels { method }).observe(start.elapsed().as_secs_f64());
            res
        })
    }
}
