//! `BrokerCluster`: the broker pods. Pure builders turn the spec into a
//! StatefulSet, headless and client Services, a ConfigMap holding the
//! broker's own TOML config, a PodDisruptionBudget and a ServiceAccount; the
//! reconcile server-side-applies them with owner references.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, DownwardAPIVolumeFile,
    DownwardAPIVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, Node, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, Pod, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Secret, SecretKeySelector,
    SecretVolumeSource, Service, ServiceAccount, ServicePort, ServiceSpec, Toleration, TopologySpreadConstraint,
    Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{CustomResource, KubeSchema, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::context::{Access, Context, MANAGER, TlsAccess};
use crate::error::Error;
use crate::resource::{apply_status, is_paused};
use crate::status::{self, Condition, Reason};

/// The broker's gRPC port (client Service and container).
pub const GRPC_PORT: u16 = 7070;
/// The broker's HTTP port: `/healthz`, `/readyz`, metrics.
pub const HTTP_PORT: u16 = 7071;
const DATA_DIR: &str = "/var/lib/strata";
const CONFIG_DIR: &str = "/etc/strata";
const CONFIG_FILE: &str = "strata.toml";
/// Where the admin-token Secret is mounted (its key `token`).
const AUTH_DIR: &str = "/etc/strata-auth";
/// Where the TLS Secret is mounted (`tls.crt`, `tls.key`, `ca.crt`).
const TLS_DIR: &str = "/etc/strata-tls";
/// Where the pod's zone annotation is mounted (downward API, file `zone`):
/// the broker's `cluster.zone_file`.
const ZONE_DIR: &str = "/etc/strata-zone";
/// The pod annotation holding its broker's zone, copied by the operator from
/// its node's zone label (a pod cannot read its node's labels itself).
pub const ZONE_ANNOTATION: &str = "strata.dev/zone";
/// Node labels naming a node's zone: the well-known one, then the
/// deprecated one older clusters still set.
const NODE_ZONE_LABELS: [&str; 2] = ["topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone"];
/// The key of the admin-token Secret.
pub const ADMIN_TOKEN_KEY: &str = "token";
/// Keys of a `kubernetes.io/tls` Secret.
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";
pub const TLS_CA_KEY: &str = "ca.crt";

/// A Strata broker cluster: a StatefulSet of broker pods with their storage,
/// Services and configuration.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "strata.dev",
    version = "v1alpha1",
    kind = "BrokerCluster",
    namespaced,
    status = "BrokerClusterStatus",
    shortname = "sbc",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Replicas","type":"string","jsonPath":".status.readyText","description":"ready/desired broker pods"}"#,
    printcolumn = r#"{"name":"Leader","type":"integer","jsonPath":".status.metadataLeader","description":"the metadata leader's broker id"}"#,
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.image"}"#,
    printcolumn = r#"{"name":"Brokers","type":"integer","jsonPath":".status.brokers","description":"brokers the cluster reports as members","priority":1}"#,
    printcolumn = r#"{"name":"Unowned","type":"integer","jsonPath":".status.unownedPartitions","description":"partitions whose broker left the cluster","priority":1}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    validation = Rule::new("self.metadata.name.size() <= 52").message("BrokerCluster names are at most 52 characters (StatefulSet pod names)")
)]
#[serde(rename_all = "camelCase")]
pub struct BrokerClusterSpec {
    /// Number of broker pods.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
    /// Container image of `strata-broker`.
    #[serde(default = "default_image")]
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// The hot tier: one PersistentVolumeClaim per pod.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("storage is immutable (StatefulSet volume claim templates cannot change)"))]
    pub storage: StorageSpec,
    /// CPU and memory of each broker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Broker settings rendered into its TOML config file.
    #[serde(default)]
    pub config: BrokerConfigSpec,
    /// The cold tier: where sealed segments of topics with a local retention
    /// go. Unset: a folder on each pod's own volume (`file://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<TierSpec>,
    /// OTLP trace export of the brokers (the standard `OTEL_*` variables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<TelemetrySpec>,
    /// Prometheus scraping of the brokers' `/metrics`.
    #[serde(default)]
    pub metrics: MetricsSpec,
    /// Where and how the broker pods run.
    #[serde(default)]
    pub pod: PodSpecOverrides,
    /// Authentication of the brokers' callers, and the cluster-admin token
    /// the operator itself uses.
    #[serde(default)]
    pub auth: AuthSpec,
    /// TLS on the brokers' gRPC and HTTP listeners, from a
    /// `kubernetes.io/tls` Secret (cert-manager's layout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// Authentication of the brokers (`[auth]` of their config).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// `required` (default): every call needs a bearer token or a client
    /// certificate naming a principal. `anonymous`: callers without
    /// credentials act as cluster admins.
    #[serde(default)]
    pub mode: AuthMode,
    /// A Secret in the cluster's namespace whose key `token` is the
    /// cluster-admin token (mounted into the pods as `--admin-token-file`;
    /// the operator authenticates with it). Unset: the operator creates
    /// `<cluster>-admin-token` with a random token, owned by the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_secret: Option<String>,
}

/// Whether the brokers' callers must authenticate.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    Required,
    Anonymous,
}

/// TLS of the brokers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A Secret in the cluster's namespace with `tls.crt`, `tls.key` and
    /// (optional unless `clientAuth: require`) `ca.crt`. Mounted as a
    /// volume: a certificate rotated in place reaches the brokers without a
    /// restart. Its certificate must name the client Service
    /// (`<cluster>.<namespace>.svc`) and the pods
    /// (`*.<cluster>-headless.<namespace>.svc`).
    pub secret_name: String,
    /// `none` (default): clients need no certificate (one presented is
    /// verified against `ca.crt` when the Secret has one). `require`: every
    /// gRPC connection presents a certificate signed by `ca.crt` (mTLS); the
    /// operator presents the Secret's own certificate.
    #[serde(default)]
    pub client_auth: ClientAuth,
}

/// Client-certificate verification of the brokers' gRPC listener.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    None,
    Require,
}

/// The cold tier of the brokers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TierSpec {
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`,
    /// `file:///path` (inside each pod), or `none` (no cold tier).
    #[x_kube(validation = Rule::new("self == 'none' || self.matches('^(s3|s3a|gs|az|file)://.+')").message("coldStore is s3://, gs://, az://, file:// or none"))]
    pub cold_store: String,
    /// S3 options (AWS, MinIO, Ceph RGW, R2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Spec>,
    /// Credentials from a Secret in the cluster's namespace, given to the
    /// pods as the standard `AWS_*` environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<CredentialsSecret>,
    /// Upload budget: bytes of tiered topics waiting for upload beyond which
    /// producers to them are refused (`10GiB`; plain numbers are bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_bytes: Option<String>,
    /// Segments uploaded at the same time per broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub upload_concurrency: Option<u32>,
}

/// S3 connection options.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct S3Spec {
    /// Endpoint of an S3-compatible server, e.g. `http://minio.storage:9000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`, what most S3-compatible
    /// servers need); `false`: virtual-hosted style (`bucket.endpoint/key`).
    #[serde(default = "yes")]
    pub path_style: bool,
    /// Allow a plain-HTTP endpoint; default: when the endpoint is `http://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_http: Option<bool>,
}

fn yes() -> bool {
    true
}

/// Keys of a Secret holding S3 credentials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecret {
    /// Name of the Secret (in the BrokerCluster's namespace).
    pub name: String,
    #[serde(default = "default_access_key_key")]
    pub access_key_id_key: String,
    #[serde(default = "default_secret_key_key")]
    pub secret_access_key_key: String,
    /// Optional key of a session token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token_key: Option<String>,
}

fn default_access_key_key() -> String {
    "AWS_ACCESS_KEY_ID".into()
}

fn default_secret_key_key() -> String {
    "AWS_SECRET_ACCESS_KEY".into()
}

impl CredentialsSecret {
    /// `(environment variable, key of the Secret)` pairs.
    pub fn env_keys(&self) -> Vec<(&'static str, &str)> {
        let mut out = vec![
            ("AWS_ACCESS_KEY_ID", self.access_key_id_key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_access_key_key.as_str()),
        ];
        if let Some(k) = &self.session_token_key {
            out.push(("AWS_SESSION_TOKEN", k.as_str()));
        }
        out
    }
}

/// OTLP trace export of the brokers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TelemetrySpec {
    /// OTLP/gRPC endpoint of a collector, e.g. `http://otel-collector.observability:4317`.
    #[x_kube(validation = Rule::new("self.matches('^https?://.+')").message("otlpEndpoint is an http:// or https:// URL"))]
    pub otlp_endpoint: String,
    /// `OTEL_TRACES_SAMPLER`; default `parentbased_always_on`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<Sampler>,
    /// `OTEL_TRACES_SAMPLER_ARG`: the ratio (0 to 1) of the `*traceidratio` samplers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler_arg: Option<String>,
    /// `OTEL_SERVICE_NAME`; default `strata-broker`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
}

/// The samplers of the OpenTelemetry specification the brokers support.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    Traceidratio,
    ParentbasedAlwaysOn,
    ParentbasedAlwaysOff,
    ParentbasedTraceidratio,
}

impl Sampler {
    fn as_str(self) -> &'static str {
        match self {
            Sampler::AlwaysOn => "always_on",
            Sampler::AlwaysOff => "always_off",
            Sampler::Traceidratio => "traceidratio",
            Sampler::ParentbasedAlwaysOn => "parentbased_always_on",
            Sampler::ParentbasedAlwaysOff => "parentbased_always_off",
            Sampler::ParentbasedTraceidratio => "parentbased_traceidratio",
        }
    }
}

/// Which Prometheus Operator object scrapes the brokers.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum Monitor {
    /// No monitor object (scrape the `http` port of the headless Service yourself).
    #[default]
    None,
    PodMonitor,
    ServiceMonitor,
}

/// Prometheus scraping of the brokers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSpec {
    /// A `PodMonitor` or `ServiceMonitor` (`monitoring.coreos.com/v1`) for
    /// the brokers; skipped, with a Warning event, where the Prometheus
    /// Operator's CRDs are not installed.
    #[serde(default)]
    pub monitor: Monitor,
    /// Scrape interval (`30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Labels of the monitor object (what your Prometheus selects on).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Scheduling and metadata of the broker pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecOverrides {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Replaces the default spread (topology spread constraints stay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Extra pod labels (the operator's selector labels win on conflict).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn default_replicas() -> i32 {
    1
}

fn default_image() -> String {
    "strata/strata-broker:0.1.0".into()
}

/// Persistent storage of each broker pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Volume size, a Kubernetes quantity such as `10Gi`.
    #[serde(default = "default_size")]
    pub size: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

fn default_size() -> String {
    "10Gi".into()
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec { size: default_size(), storage_class_name: None }
    }
}

/// Durability of acknowledged writes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    Fsync,
    None,
}

/// The subset of the broker configuration the operator manages.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct BrokerConfigSpec {
    /// Log filter, e.g. `info` or `strata_broker=debug,info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Default retention of new topics: a duration (`7d`) or `infinite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_retention: Option<String>,
    /// Default durability of new topics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_durability: Option<Durability>,
    /// Largest record accepted, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_record_bytes: Option<u64>,
    /// Largest number of partitions of one topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_partitions_per_topic: Option<u32>,
}

/// Observed state of a `BrokerCluster`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct BrokerClusterStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    /// The gRPC address clients use inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_url: Option<String>,
    /// `ready/desired` pods, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_text: Option<String>,
    /// Why the requested PodMonitor/ServiceMonitor is not there, if it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor_problem: Option<String>,
    /// Brokers the cluster reports as members (from the brokers' own
    /// `DescribeCluster`; unset while none answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brokers: Option<u32>,
    /// The metadata leader's broker id (the pod ordinal); unset while there
    /// is none or no broker answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_leader: Option<u64>,
    /// Partitions whose owning broker is no longer a member: not served
    /// until moved (data movement is the replication issue's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unowned_partitions: Option<u32>,
}

/// The objects a `BrokerCluster` owns.
#[derive(Debug, Clone)]
pub struct Children {
    pub service_account: ServiceAccount,
    pub config_map: ConfigMap,
    pub headless_service: Service,
    pub client_service: Service,
    pub stateful_set: StatefulSet,
    pub pod_disruption_budget: PodDisruptionBudget,
    /// A `PodMonitor` or `ServiceMonitor` (`spec.metrics.monitor`).
    pub monitor: Option<serde_json::Value>,
}

/// A spec the builders cannot turn into objects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidSpec {
    pub field: &'static str,
    pub message: String,
}

/// Labels selecting the pods of cluster `name`.
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "strata-broker".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), name.to_owned()),
    ])
}

fn labels(name: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(name);
    l.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    l
}

/// The gRPC address broker `ordinal` of cluster `name` is reached at: its
/// pod's name under the headless Service (published for not-ready pods too,
/// so brokers find each other before they are Ready).
pub fn broker_address(name: &str, ns: &str, ordinal: i32) -> String {
    format!("{name}-{ordinal}.{name}-headless.{ns}.svc:{GRPC_PORT}")
}

/// Renders the broker's TOML configuration file (the format its `--config`
/// loader reads; unknown keys would be errors there). With more than one
/// replica the pods form one cluster: every pod gets the same seed list
/// (each broker's address under the headless Service) and takes its id
/// from its pod name's ordinal; its own address comes from the container's
/// `--advertised-address $(POD_NAME)…` argument.
///
/// `tls_has_ca`: whether the TLS Secret holds `ca.crt` (then the brokers
/// verify client certificates against it, and trust it for each other).
pub fn render_config(name: &str, ns: &str, spec: &BrokerClusterSpec, tls_has_ca: bool) -> Result<String, InvalidSpec> {
    let mut root = toml::Table::new();
    let mut server = toml::Table::new();
    server.insert("listen".into(), format!("0.0.0.0:{GRPC_PORT}").into());
    server.insert("http_listen".into(), format!("0.0.0.0:{HTTP_PORT}").into());
    root.insert("server".into(), server.into());
    let mut storage = toml::Table::new();
    storage.insert("data_dir".into(), DATA_DIR.into());
    root.insert("storage".into(), storage.into());

    let c = &spec.config;
    let mut topic_defaults = toml::Table::new();
    if let Some(r) = &c.default_retention {
        let r = r.trim();
        if r != "infinite" && humantime::parse_duration(r).is_err() {
            return Err(InvalidSpec {
                field: "spec.config.defaultRetention",
                message: format!("{r:?} is not a duration (e.g. 7d, 12h) or \"infinite\""),
            });
        }
        topic_defaults.insert("retention".into(), r.into());
    }
    if let Some(d) = c.default_durability {
        topic_defaults.insert("durability".into(), if d == Durability::Fsync { "fsync" } else { "none" }.into());
    }
    if !topic_defaults.is_empty() {
        root.insert("topic_defaults".into(), topic_defaults.into());
    }
    let mut limits = toml::Table::new();
    if let Some(b) = c.max_record_bytes {
        let b = i64::try_from(b)
            .map_err(|_| InvalidSpec { field: "spec.config.maxRecordBytes", message: "too large".into() })?;
        limits.insert("max_record_bytes".into(), b.into());
    }
    if let Some(p) = c.max_partitions_per_topic {
        limits.insert("max_partitions_per_topic".into(), i64::from(p).into());
    }
    if !limits.is_empty() {
        root.insert("limits".into(), limits.into());
    }
    if let Some(t) = &spec.tier {
        root.insert("tier".into(), render_tier(t)?.into());
    }
    // Always a cluster (of one, at one replica), so it can grow: new pods
    // join it.
    {
        let mut cluster = toml::Table::new();
        cluster.insert("broker_id_from_hostname".into(), true.into());
        cluster.insert("zone_file".into(), format!("{ZONE_DIR}/zone").into());
        let peers: Vec<toml::Value> = (0..spec.replicas).map(|i| broker_address(name, ns, i).into()).collect();
        cluster.insert("peers".into(), peers.into());
        root.insert("cluster".into(), cluster.into());
    }
    // The admin token is always mounted: it is how the operator (and the
    // brokers, to each other) authenticate, in either mode.
    let mut auth = toml::Table::new();
    let mode = match spec.auth.mode {
        AuthMode::Required => "required",
        AuthMode::Anonymous => "anonymous",
    };
    auth.insert("mode".into(), mode.into());
    auth.insert("admin_token_file".into(), format!("{AUTH_DIR}/{ADMIN_TOKEN_KEY}").into());
    root.insert("auth".into(), auth.into());
    if let Some(t) = &spec.tls {
        if t.secret_name.trim().is_empty() {
            return Err(InvalidSpec { field: "spec.tls.secretName", message: "must name a Secret".into() });
        }
        let mut tls = toml::Table::new();
        tls.insert("cert".into(), format!("{TLS_DIR}/{TLS_CERT_KEY}").into());
        tls.insert("key".into(), format!("{TLS_DIR}/{TLS_KEY_KEY}").into());
        if tls_has_ca || t.client_auth == ClientAuth::Require {
            tls.insert("client_ca".into(), format!("{TLS_DIR}/{TLS_CA_KEY}").into());
        }
        if t.client_auth == ClientAuth::Require {
            tls.insert("require_client_cert".into(), true.into());
        }
        root.insert("tls".into(), tls.into());
    }
    let mut log = toml::Table::new();
    log.insert("format".into(), "json".into());
    log.insert("level".into(), c.log_level.clone().unwrap_or_else(|| "info".into()).into());
    root.insert("log".into(), log.into());
    Ok(toml::to_string(&root).unwrap_or_default())
}

/// Parses a byte size: a number of bytes, or a number with `KiB`, `MiB`,
/// `GiB`, `TiB` (or `Ki`, `Mi`, `Gi`, `Ti` as in Kubernetes quantities).
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" | "Ki" => 10,
        "MiB" | "Mi" => 20,
        "GiB" | "Gi" => 30,
        "TiB" | "Ti" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

/// Checks a cold-store URL the way the broker will read it: a scheme it
/// supports and a bucket (or an absolute path). `memory://` is refused: a
/// pod's memory is no place for data meant to outlive it.
pub fn check_cold_store(url: &str) -> Result<(), InvalidSpec> {
    let url = url.trim();
    let bad = |m: String| Err(InvalidSpec { field: "spec.tier.coldStore", message: m });
    if url == "none" {
        return Ok(());
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return bad(format!("{url:?} is not a URL (s3://bucket/prefix, gs://, az://, file:///path or none)"));
    };
    match scheme {
        "s3" | "s3a" | "gs" | "az" => {
            let bucket = rest.split('/').next().unwrap_or_default();
            if bucket.is_empty() || bucket.contains(|c: char| c.is_whitespace() || c == '?' || c == '#') {
                return bad(format!("{url:?} names no valid bucket ({scheme}://bucket/prefix)"));
            }
            Ok(())
        }
        "file" if rest.starts_with('/') && rest.len() > 1 => Ok(()),
        "file" => bad(format!("{url:?} is not an absolute path (file:///path)")),
        "memory" => bad("memory:// keeps data in the pod's memory only; use s3://, gs://, az:// or file://".into()),
        other => bad(format!("unsupported scheme {other:?} (s3, gs, az, file, or none)")),
    }
}

/// The `[tier]` section of the broker's config. Credentials are not in it:
/// they reach the pods as `AWS_*` variables from the Secret.
fn render_tier(t: &TierSpec) -> Result<toml::Table, InvalidSpec> {
    check_cold_store(&t.cold_store)?;
    let mut tier = toml::Table::new();
    tier.insert("cold_store".into(), t.cold_store.trim().into());
    if let Some(b) = &t.max_pending_bytes {
        let n = parse_bytes(b).filter(|n| *n > 0).ok_or_else(|| InvalidSpec {
            field: "spec.tier.maxPendingBytes",
            message: format!("{b:?} is not a positive byte size (e.g. 10GiB)"),
        })?;
        let n = i64::try_from(n)
            .map_err(|_| InvalidSpec { field: "spec.tier.maxPendingBytes", message: "too large".into() })?;
        tier.insert("max_pending_bytes".into(), n.into());
    }
    if let Some(c) = t.upload_concurrency {
        if !(1..=256).contains(&c) {
            return Err(InvalidSpec {
                field: "spec.tier.uploadConcurrency",
                message: format!("{c} is not in 1..=256"),
            });
        }
        tier.insert("upload_concurrency".into(), i64::from(c).into());
    }
    if let Some(s3) = &t.s3 {
        let mut table = toml::Table::new();
        if let Some(e) = &s3.endpoint {
            let e = e.trim();
            if !(e.starts_with("http://") || e.starts_with("https://")) || e.len() <= "https://".len() {
                return Err(InvalidSpec {
                    field: "spec.tier.s3.endpoint",
                    message: format!("{e:?} is not an http:// or https:// URL"),
                });
            }
            table.insert("endpoint".into(), e.into());
            table.insert("allow_http".into(), s3.allow_http.unwrap_or(e.starts_with("http://")).into());
        } else if let Some(a) = s3.allow_http {
            table.insert("allow_http".into(), a.into());
        }
        if let Some(r) = &s3.region {
            table.insert("region".into(), r.trim().into());
        }
        table.insert("virtual_hosted_style".into(), (!s3.path_style).into());
        tier.insert("s3".into(), table.into());
    }
    Ok(tier)
}

/// The standard `OTEL_*` variables of the brokers, and the credentials'
/// `AWS_*` variables from their Secret.
fn pod_env(spec: &BrokerClusterSpec) -> Result<Vec<EnvVar>, InvalidSpec> {
    let mut env = Vec::new();
    let plain = |name: &str, value: String| EnvVar { name: name.into(), value: Some(value), ..EnvVar::default() };
    if let Some(t) = &spec.telemetry {
        env.push(plain("OTEL_EXPORTER_OTLP_ENDPOINT", t.otlp_endpoint.trim().to_owned()));
        env.push(plain("OTEL_SERVICE_NAME", t.service_name.clone().unwrap_or_else(|| "strata-broker".into())));
        if let Some(s) = t.sampler {
            env.push(plain("OTEL_TRACES_SAMPLER", s.as_str().into()));
        }
        if let Some(a) = &t.sampler_arg {
            let ratio_sampler = matches!(t.sampler, Some(Sampler::Traceidratio | Sampler::ParentbasedTraceidratio));
            if !ratio_sampler {
                return Err(InvalidSpec {
                    field: "spec.telemetry.samplerArg",
                    message: "only the traceidratio samplers take an argument".into(),
                });
            }
            if !a.trim().parse::<f64>().is_ok_and(|r| (0.0..=1.0).contains(&r)) {
                return Err(InvalidSpec {
                    field: "spec.telemetry.samplerArg",
                    message: format!("{a:?} is not a ratio between 0 and 1"),
                });
            }
            env.push(plain("OTEL_TRACES_SAMPLER_ARG", a.trim().to_owned()));
        }
    }
    if let Some(c) = spec.tier.as_ref().and_then(|t| t.credentials_secret.as_ref()) {
        for (var, key) in c.env_keys() {
            env.push(EnvVar {
                name: var.into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: c.name.clone(),
                        key: key.to_owned(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            });
        }
    }
    Ok(env)
}

/// The Prometheus Operator object scraping the brokers, as JSON (its kind
/// is a CRD the operator has no Rust type for).
fn monitor_object(
    cluster_name: &str,
    ns: &str,
    owner: &OwnerReference,
    metrics: &MetricsSpec,
    tls: Option<(&TlsSpec, bool)>,
) -> Result<Option<serde_json::Value>, InvalidSpec> {
    let interval = metrics.interval.clone().unwrap_or_else(|| "30s".into());
    if humantime::parse_duration(interval.trim()).is_err() {
        return Err(InvalidSpec { field: "spec.metrics.interval", message: format!("{interval:?} is not a duration") });
    }
    let mut labels = metrics.labels.clone();
    labels.extend(self::labels(cluster_name));
    let mut endpoint = serde_json::json!({ "port": "http", "path": "/metrics", "interval": interval.trim() });
    // With TLS `/metrics` is HTTPS: trust the Secret's CA for the client
    // Service's name (or, without a CA, skip verification).
    if let Some((t, has_ca)) = tls {
        endpoint["scheme"] = "https".into();
        endpoint["tlsConfig"] = if has_ca {
            serde_json::json!({
                "ca": { "secret": { "name": t.secret_name.trim(), "key": TLS_CA_KEY } },
                "serverName": format!("{cluster_name}.{ns}.svc"),
            })
        } else {
            serde_json::json!({ "insecureSkipVerify": true })
        };
    }
    let (kind, spec) = match metrics.monitor {
        Monitor::None => return Ok(None),
        Monitor::PodMonitor => (
            "PodMonitor",
            serde_json::json!({
                "selector": { "matchLabels": selector_labels(cluster_name) },
                "podMetricsEndpoints": [endpoint],
            }),
        ),
        Monitor::ServiceMonitor => {
            let mut sel = selector_labels(cluster_name);
            sel.insert(SERVICE_ROLE_LABEL.into(), "headless".into());
            ("ServiceMonitor", serde_json::json!({ "selector": { "matchLabels": sel }, "endpoints": [endpoint] }))
        }
    };
    Ok(Some(serde_json::json!({
        "apiVersion": MONITORING_API_VERSION,
        "kind": kind,
        "metadata": { "name": cluster_name, "namespace": ns, "labels": labels, "ownerReferences": [owner] },
        "spec": spec,
    })))
}

/// The Prometheus Operator's API group/version.
pub const MONITORING_API_VERSION: &str = "monitoring.coreos.com/v1";
/// Tells the headless Service (scraped by a ServiceMonitor) from the client one.
const SERVICE_ROLE_LABEL: &str = "strata.dev/service";

fn meta(name: String, ns: &str, cluster: &str, owner: &OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(ns.to_owned()),
        labels: Some(labels(cluster)),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    }
}

fn port(name: &str, port: u16) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: i32::from(port),
        target_port: Some(IntOrString::String(name.into())),
        ..ServicePort::default()
    }
}

fn probe(path: &str, period: i32, failures: i32, https: bool) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            // With TLS the HTTP listener serves HTTPS too; kubelets do not
            // verify a probe's certificate, and it never needs a client one.
            scheme: https.then(|| "HTTPS".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// A short, stable hash of the config file: a pod-template annotation, so a
/// config change rolls the pods (one at a time, each waiting for readiness).
fn config_hash(text: &str) -> String {
    // FNV-1a: stable across builds and platforms, unlike DefaultHasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The name of the Secret holding the cluster-admin token (key `token`):
/// `spec.auth.adminTokenSecret`, else `<cluster>-admin-token` (made by the
/// operator).
pub fn admin_token_secret(cluster: &BrokerCluster) -> String {
    match &cluster.spec.auth.admin_token_secret {
        Some(s) => s.clone(),
        None => format!("{}-admin-token", cluster.name_any()),
    }
}

/// Builds every child object of `cluster`. Pure: no I/O. `tls_has_ca`:
/// whether the TLS Secret holds `ca.crt` (see [`render_config`]).
pub fn build(cluster: &BrokerCluster, tls_has_ca: bool) -> Result<Children, InvalidSpec> {
    let name = cluster.name_any();
    let ns = cluster.namespace().unwrap_or_else(|| "default".into());
    let owner =
        cluster.controller_owner_ref(&()).ok_or(InvalidSpec { field: "metadata.uid", message: "missing".into() })?;
    let spec = &cluster.spec;
    if spec.replicas < 1 {
        return Err(InvalidSpec {
            field: "spec.replicas",
            message: format!("must be at least 1, got {}", spec.replicas),
        });
    }
    let config = render_config(&name, &ns, spec, tls_has_ca)?;
    let mut env = pod_env(spec)?;
    let mut args = vec!["--config".to_owned(), format!("{CONFIG_DIR}/{CONFIG_FILE}")];
    {
        env.insert(
            0,
            EnvVar {
                name: "POD_NAME".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector { field_path: "metadata.name".into(), ..Default::default() }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
        );
        // `$(POD_NAME)` is expanded by the kubelet.
        args.extend(["--advertised-address".to_owned(), format!("$(POD_NAME).{name}-headless.{ns}.svc:{GRPC_PORT}")]);
    }
    let monitor = monitor_object(&name, &ns, &owner, &spec.metrics, spec.tls.as_ref().map(|t| (t, tls_has_ca)))?;
    let sel = selector_labels(&name);
    let headless = format!("{name}-headless");
    let config_name = format!("{name}-config");

    let service_account = ServiceAccount {
        metadata: meta(name.clone(), &ns, &name, &owner),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    };
    let config_map = ConfigMap {
        metadata: meta(config_name.clone(), &ns, &name, &owner),
        data: Some(BTreeMap::from([(CONFIG_FILE.to_owned(), config.clone())])),
        ..ConfigMap::default()
    };
    let mut headless_meta = meta(headless.clone(), &ns, &name, &owner);
    headless_meta.labels.get_or_insert_with(BTreeMap::new).insert(SERVICE_ROLE_LABEL.into(), "headless".into());
    let headless_service = Service {
        metadata: headless_meta,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(sel.clone()),
            ports: Some(vec![port("grpc", GRPC_PORT), port("http", HTTP_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let client_service = Service {
        metadata: meta(name.clone(), &ns, &name, &owner),
        spec: Some(ServiceSpec {
            selector: Some(sel.clone()),
            ports: Some(vec![port("grpc", GRPC_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    // The admin token and the TLS Secret, as Secret volumes: the kubelet
    // updates their files in place when the Secret changes (what the
    // broker's certificate reload watches).
    let https = spec.tls.is_some();
    let secret_volume = |volume: &str, secret: String| Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource { secret_name: Some(secret), ..SecretVolumeSource::default() }),
        ..Volume::default()
    };
    let mut secret_volumes = vec![(secret_volume("admin-token", admin_token_secret(cluster)), AUTH_DIR)];
    if let Some(t) = &spec.tls {
        secret_volumes.push((secret_volume("tls", t.secret_name.trim().to_owned()), TLS_DIR));
    }
    let container = Container {
        name: "broker".into(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.clone(),
        args: Some(args),
        env: (!env.is_empty()).then_some(env),
        ports: Some(vec![
            ContainerPort {
                name: Some("grpc".into()),
                container_port: i32::from(GRPC_PORT),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("http".into()),
                container_port: i32::from(HTTP_PORT),
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(probe("/readyz", 5, 3, https)),
        liveness_probe: Some(probe("/healthz", 10, 6, https)),
        resources: spec.resources.clone(),
        volume_mounts: Some(
            vec![
                VolumeMount { name: "data".into(), mount_path: DATA_DIR.into(), ..VolumeMount::default() },
                VolumeMount {
                    name: "config".into(),
                    mount_path: CONFIG_DIR.into(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                },
                VolumeMount {
                    name: "zone".into(),
                    mount_path: ZONE_DIR.into(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                },
            ]
            .into_iter()
            .chain(secret_volumes.iter().map(|(v, dir)| VolumeMount {
                name: v.name.clone(),
                mount_path: (*dir).into(),
                read_only: Some(true),
                ..VolumeMount::default()
            }))
            .collect(),
        ),
        ..Container::default()
    };
    let pod = &spec.pod;
    let mut pod_labels = pod.labels.clone();
    pod_labels.extend(labels(&name));
    let mut pod_annotations = pod.annotations.clone();
    pod_annotations.insert("strata.dev/config-hash".to_owned(), config_hash(&config));
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(pod_annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(name.clone()),
            node_selector: (!pod.node_selector.is_empty()).then(|| pod.node_selector.clone()),
            tolerations: (!pod.tolerations.is_empty()).then(|| pod.tolerations.clone()),
            affinity: pod.affinity.clone(),
            priority_class_name: pod.priority_class_name.clone(),
            // SIGTERM drains and flushes; give it time.
            termination_grace_period_seconds: Some(60),
            containers: vec![container],
            volumes: Some(
                [
                    Volume {
                        name: "config".into(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: config_name,
                            ..ConfigMapVolumeSource::default()
                        }),
                        ..Volume::default()
                    },
                    // The zone annotation as a file the kubelet keeps up to
                    // date (empty until the operator has set it).
                    Volume {
                        name: "zone".into(),
                        downward_api: Some(DownwardAPIVolumeSource {
                            items: Some(vec![DownwardAPIVolumeFile {
                                path: "zone".into(),
                                field_ref: Some(ObjectFieldSelector {
                                    field_path: format!("metadata.annotations['{ZONE_ANNOTATION}']"),
                                    ..ObjectFieldSelector::default()
                                }),
                                ..DownwardAPIVolumeFile::default()
                            }]),
                            ..DownwardAPIVolumeSource::default()
                        }),
                        ..Volume::default()
                    },
                ]
                .into_iter()
                .chain(secret_volumes.into_iter().map(|(v, _)| v))
                .collect(),
            ),
            topology_spread_constraints: Some(vec![
                TopologySpreadConstraint {
                    max_skew: 1,
                    topology_key: "kubernetes.io/hostname".into(),
                    when_unsatisfiable: "ScheduleAnyway".into(),
                    label_selector: Some(LabelSelector { match_labels: Some(sel.clone()), ..LabelSelector::default() }),
                    ..TopologySpreadConstraint::default()
                },
                TopologySpreadConstraint {
                    max_skew: 1,
                    topology_key: "topology.kubernetes.io/zone".into(),
                    when_unsatisfiable: "ScheduleAnyway".into(),
                    label_selector: Some(LabelSelector { match_labels: Some(sel.clone()), ..LabelSelector::default() }),
                    ..TopologySpreadConstraint::default()
                },
            ]),
            ..PodSpec::default()
        }),
    };
    let mut claim_resources = BTreeMap::new();
    claim_resources.insert("storage".to_owned(), Quantity(spec.storage.size.clone()));
    let stateful_set = StatefulSet {
        metadata: meta(name.clone(), &ns, &name, &owner),
        spec: StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(headless),
            // Pods start together: a clustered broker is Ready only once a
            // majority has formed, so pod 0 cannot wait for its own
            // readiness before pod 1 exists. Rolling updates still go one
            // pod at a time, each waiting for readiness.
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector { match_labels: Some(sel.clone()), ..LabelSelector::default() },
            template,
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta { name: Some("data".into()), ..ObjectMeta::default() },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: spec.storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(claim_resources),
                        ..Default::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }]),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    };
    let pod_disruption_budget = PodDisruptionBudget {
        metadata: meta(name.clone(), &ns, &name, &owner),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(sel), ..LabelSelector::default() }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    };
    Ok(Children {
        service_account,
        config_map,
        headless_service,
        client_service,
        stateful_set,
        pod_disruption_budget,
        monitor,
    })
}

async fn apply<K>(ctx: &Context, ns: &str, obj: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let mut value = serde_json::to_value(obj).map_err(|source| Error::Serialize { what: "child object", source })?;
    // Server-side apply needs apiVersion and kind in the body.
    value["apiVersion"] = K::api_version(&()).into();
    value["kind"] = K::kind(&()).into();
    api.patch(&obj.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&value)).await?;
    Ok(())
}

/// A node's zone from its labels (empty when it has none).
pub fn node_zone(node: &Node) -> &str {
    let labels = node.metadata.labels.as_ref();
    NODE_ZONE_LABELS.iter().find_map(|k| labels?.get(*k)).map_or("", String::as_str)
}

/// Copies each scheduled broker pod's node zone into the pod's
/// `strata.dev/zone` annotation, which the kubelet mounts as the broker's
/// zone file (the broker re-registers when it changes): placement then
/// spreads partitions over zones. Pods on nodes without a zone label are
/// left alone.
async fn annotate_zones(ctx: &Context, ns: &str, name: &str) -> Result<(), Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let selector = selector_labels(name).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let mut zones: BTreeMap<String, String> = BTreeMap::new();
    for pod in pods.list(&kube::api::ListParams::default().labels(&selector)).await? {
        let ours = selector_labels(name).iter().all(|(k, v)| pod.labels().get(k) == Some(v));
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|_| ours) else { continue };
        let zone = match zones.get(&node) {
            Some(z) => z.clone(),
            None => {
                let z = nodes.get_opt(&node).await?.as_ref().map(node_zone).unwrap_or_default().to_owned();
                zones.insert(node, z.clone());
                z
            }
        };
        if zone.is_empty() || pod.annotations().get(ZONE_ANNOTATION) == Some(&zone) {
            continue;
        }
        let patch = serde_json::json!({"metadata": {"annotations": {ZONE_ANNOTATION: zone}}});
        pods.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    }
    Ok(())
}

/// One reconcile of a `BrokerCluster`.
pub async fn reconcile(cluster: Arc<BrokerCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&cluster, &ctx).await;
    ctx.metrics.observe("BrokerCluster", started.elapsed(), result.as_ref().err());
    result
}

/// Requeue with the object's backoff after an error.
pub fn error_policy(cluster: Arc<BrokerCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(name = %cluster.name_any(), %error, "BrokerCluster reconcile failed");
    Action::requeue(ctx.backoff.failure(&format!("BrokerCluster/{}", cluster.name_any())))
}

/// `Ready=False` for a spec that cannot be realised yet: a Warning event when
/// the reason or text changed, status written when it changed, backoff.
async fn not_ready(
    cluster: &BrokerCluster,
    ctx: &Context,
    api: &Api<BrokerCluster>,
    previous: &BrokerClusterStatus,
    mut st: BrokerClusterStatus,
    reason: Reason,
    message: String,
) -> Result<Action, Error> {
    let name = cluster.name_any();
    let generation = cluster.meta().generation;
    status::set(&mut st.conditions, status::READY, false, reason, message.clone(), generation);
    if status::find(&previous.conditions, status::READY)
        .is_none_or(|c| c.reason != reason.as_str() || c.message != message)
    {
        ctx.event(cluster, true, reason.as_str(), "Reconcile", message).await;
    }
    st.observed_generation = generation;
    if st != *previous {
        apply_status(api, &name, &st).await?;
    }
    Ok(Action::requeue(ctx.backoff.failure(&format!("BrokerCluster/{name}"))))
}

/// The cluster as its brokers describe it; `None` when none answers (the
/// reason is logged, not fatal: pods may still be starting).
async fn cluster_view(
    ctx: &Context,
    ns: &str,
    name: &str,
    access: &Access,
) -> Option<strata_proto::v1::DescribeClusterResponse> {
    let described = match ctx.broker(ns, name, access).await {
        Ok(client) => client.describe_cluster().await,
        Err(e) => Err(e),
    };
    described.map_err(|e| tracing::debug!(cluster = %name, namespace = %ns, error = %e, "cluster not described")).ok()
}

/// A Secret's data when it exists with every key in `keys`; else the reason
/// and a message naming `field`, the Secret and what is missing. The one
/// check of every Secret a BrokerCluster names (cold-store credentials,
/// admin token, TLS): a Secret that is not there would leave pods failing
/// to start (CreateContainerConfigError) or the operator locked out.
pub async fn read_secret(
    ctx: &Context,
    ns: &str,
    field: &str,
    name: &str,
    keys: &[&str],
) -> Result<Result<BTreeMap<String, ByteString>, (Reason, String)>, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let Some(secret) = secrets.get_opt(name).await? else {
        return Ok(Err((Reason::SecretNotFound, format!("{field}: Secret {ns}/{name} not found; waiting for it"))));
    };
    let data = secret.data.unwrap_or_default();
    let missing: Vec<&str> = keys.iter().copied().filter(|k| !data.contains_key(*k)).collect();
    if missing.is_empty() {
        return Ok(Ok(data));
    }
    Ok(Err((Reason::SecretKeyNotFound, format!("{field}: Secret {ns}/{name} has no key {}", missing.join(", ")))))
}

async fn check_secret(ctx: &Context, ns: &str, c: &CredentialsSecret) -> Result<Option<(Reason, String)>, Error> {
    let keys: Vec<&str> = c.env_keys().into_iter().map(|(_, k)| k).collect();
    Ok(read_secret(ctx, ns, "spec.tier.credentialsSecret", &c.name, &keys).await?.err())
}

/// A new token in the broker's format: `strata_` and 43 base64url
/// characters of 32 random bytes (what the broker's `Token::generate`
/// makes, so the admin token is as strong as any issued one).
pub fn generate_token() -> Result<String, getrandom::Error> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("strata_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
}

/// Without `spec.auth.adminTokenSecret`: creates `<cluster>-admin-token`
/// with a random token, owned by the cluster, unless it exists (an existing
/// token is never replaced: the running brokers read it at start).
async fn ensure_admin_token(ctx: &Context, cluster: &BrokerCluster, ns: &str) -> Result<(), Error> {
    if cluster.spec.auth.admin_token_secret.is_some() {
        return Ok(());
    }
    let name = admin_token_secret(cluster);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    if secrets.get_opt(&name).await?.is_some() {
        return Ok(());
    }
    let Some(owner) = cluster.controller_owner_ref(&()) else { return Ok(()) };
    let token = generate_token().map_err(|e| Error::Random(e.to_string()))?;
    let secret = Secret {
        metadata: meta(name.clone(), ns, &cluster.name_any(), &owner),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(ADMIN_TOKEN_KEY.to_owned(), ByteString(token.into_bytes()))])),
        ..Secret::default()
    };
    match secrets.create(&kube::api::PostParams::default(), &secret).await {
        Ok(_) => {
            ctx.event(
                cluster,
                false,
                "AdminTokenCreated",
                "Reconcile",
                format!("created Secret {ns}/{name} with a new cluster-admin token"),
            )
            .await;
            Ok(())
        }
        // Made by a concurrent reconcile: use that one.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// How the operator reaches `cluster`: its admin token and, with TLS, the
/// CA of the TLS Secret (and its certificate as the operator's client
/// certificate under `clientAuth: require`). `Err` inside: the Secret or key
/// that is missing.
pub async fn access(ctx: &Context, cluster: &BrokerCluster) -> Result<Result<Access, (Reason, String)>, Error> {
    let ns = cluster.namespace().unwrap_or_else(|| "default".into());
    let field = if cluster.spec.auth.admin_token_secret.is_some() {
        "spec.auth.adminTokenSecret"
    } else {
        "the generated admin token"
    };
    let data = match read_secret(ctx, &ns, field, &admin_token_secret(cluster), &[ADMIN_TOKEN_KEY]).await? {
        Ok(d) => d,
        Err(why) => return Ok(Err(why)),
    };
    let token = String::from_utf8_lossy(&data[ADMIN_TOKEN_KEY].0).trim().to_owned();
    if token.is_empty() {
        return Ok(Err((
            Reason::SecretKeyNotFound,
            format!("{field}: Secret {ns}/{} has an empty key {ADMIN_TOKEN_KEY}", admin_token_secret(cluster)),
        )));
    }
    let tls = match &cluster.spec.tls {
        None => None,
        Some(t) => {
            let require = t.client_auth == ClientAuth::Require;
            let mut keys = vec![TLS_CERT_KEY, TLS_KEY_KEY];
            if require {
                keys.push(TLS_CA_KEY);
            }
            let mut data = match read_secret(ctx, &ns, "spec.tls.secretName", t.secret_name.trim(), &keys).await? {
                Ok(d) => d,
                Err(why) => return Ok(Err(why)),
            };
            let mut take = |k: &str| data.remove(k).map(|b| b.0);
            let ca_pem = take(TLS_CA_KEY);
            let identity = if require { take(TLS_CERT_KEY).zip(take(TLS_KEY_KEY)) } else { None };
            Some(TlsAccess { ca_pem, identity })
        }
    };
    Ok(Ok(Access { token: Some(token), tls }))
}

/// Applies the PodMonitor/ServiceMonitor. A cluster without the Prometheus
/// Operator's CRDs answers 404: that is reported, not an error (the
/// brokers run fine without it).
async fn apply_monitor(ctx: &Context, ns: &str, monitor: &serde_json::Value) -> Result<Option<String>, Error> {
    let kind = monitor["kind"].as_str().unwrap_or_default();
    let gvk = kube::api::GroupVersionKind::gvk("monitoring.coreos.com", "v1", kind);
    let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, &format!("{}s", kind.to_ascii_lowercase()));
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &resource);
    let name = monitor["metadata"]["name"].as_str().unwrap_or_default();
    match api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(monitor)).await {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Some(format!(
            "spec.metrics.monitor: {kind} not applied: {MONITORING_API_VERSION} is not served here (install the Prometheus Operator's CRDs)"
        ))),
        Err(e) => Err(e.into()),
    }
}

async fn reconcile_inner(cluster: &BrokerCluster, ctx: &Context) -> Result<Action, Error> {
    let name = cluster.name_any();
    let ns =
        cluster.namespace().ok_or_else(|| Error::MissingNamespace { kind: "BrokerCluster", name: name.clone() })?;
    let api: Api<BrokerCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let generation = cluster.meta().generation;
    let previous = cluster.status.clone().unwrap_or_default();
    let mut st = previous.clone();
    if cluster.meta().deletion_timestamp.is_some() {
        // Children go with their owner (garbage collection); nothing to do.
        return Ok(Action::await_change());
    }
    if is_paused(cluster) {
        status::set(
            &mut st.conditions,
            status::PAUSED,
            true,
            Reason::Paused,
            "strata.dev/paused is \"true\"",
            generation,
        );
        status::set(&mut st.conditions, status::READY, false, Reason::Paused, "reconciliation is paused", generation);
        if !status::is_true(&previous.conditions, status::PAUSED) {
            ctx.event(cluster, false, "Paused", "Reconcile", "reconciliation paused by annotation".into()).await;
        }
        if st != previous {
            apply_status(&api, &name, &st).await?;
        }
        return Ok(Action::requeue(ctx.settings.resync));
    }
    status::remove(&mut st.conditions, status::PAUSED);

    // Brokers join a formed cluster (scale-up: the new pods ask the cluster
    // to admit them); they cannot leave it yet, since replicas are not moved
    // off a broker (and an unreplicated partition's only copy is on its
    // owner): a smaller `spec.replicas` is refused and the cluster kept at
    // its size.
    let formed = previous.replicas;
    let mut sized;
    let cluster = if formed > 0 && cluster.spec.replicas < formed && cluster.spec.replicas >= 1 {
        let message = format!(
            "spec.replicas {} refused: this cluster has {formed} brokers, and removing brokers is not supported until replicas can be moved off a broker (its partitions would lose a copy, or their only one); kept at {formed}",
            cluster.spec.replicas
        );
        if !status::is_true(&previous.conditions, status::SCALING_BLOCKED) {
            ctx.event(cluster, true, "ScalingBlocked", "Reconcile", message.clone()).await;
        }
        status::set(&mut st.conditions, status::SCALING_BLOCKED, true, Reason::Unsupported, message, generation);
        sized = cluster.clone();
        sized.spec.replicas = formed;
        &sized
    } else {
        status::remove(&mut st.conditions, status::SCALING_BLOCKED);
        cluster
    };

    // Secrets the pods mount or read that are not there would leave every
    // pod failing to start (CreateContainerConfigError): check first, and
    // apply nothing until they are there.
    if let Some(c) = cluster.spec.tier.as_ref().and_then(|t| t.credentials_secret.as_ref())
        && let Some((reason, message)) = check_secret(ctx, &ns, c).await?
    {
        return not_ready(cluster, ctx, &api, &previous, st, reason, message).await;
    }
    ensure_admin_token(ctx, cluster, &ns).await?;
    let access = match access(ctx, cluster).await? {
        Ok(a) => a,
        Err((reason, message)) => return not_ready(cluster, ctx, &api, &previous, st, reason, message).await,
    };
    let tls_has_ca = access.tls.as_ref().is_some_and(|t| t.ca_pem.is_some());
    let children = match build(cluster, tls_has_ca) {
        Ok(c) => c,
        Err(e) => return not_ready(cluster, ctx, &api, &previous, st, Reason::InvalidSpec, e.to_string()).await,
    };
    // Applying every child on each resync is what corrects drift: server-side
    // apply with force takes back the fields this manager owns.
    apply(ctx, &ns, &children.service_account).await?;
    apply(ctx, &ns, &children.config_map).await?;
    apply(ctx, &ns, &children.headless_service).await?;
    apply(ctx, &ns, &children.client_service).await?;
    apply(ctx, &ns, &children.stateful_set).await?;
    apply(ctx, &ns, &children.pod_disruption_budget).await?;
    annotate_zones(ctx, &ns, &name).await?;
    st.monitor_problem = match &children.monitor {
        Some(m) => apply_monitor(ctx, &ns, m).await?,
        None => None,
    };
    if let Some(problem) = &st.monitor_problem
        && previous.monitor_problem.as_ref() != Some(problem)
    {
        ctx.event(cluster, true, "MonitorUnavailable", "Reconcile", problem.clone()).await;
    }

    let sts: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let ready = sts.get_opt(&name).await?.and_then(|s| s.status).and_then(|s| s.ready_replicas).unwrap_or(0);
    st.replicas = cluster.spec.replicas;
    st.ready_replicas = ready;
    st.client_url = Some(access.url(&crate::context::ServiceDns.url_for(&ns, &name)));
    st.ready_text = Some(format!("{ready}/{}", cluster.spec.replicas));
    st.observed_generation = generation;
    // What the brokers themselves say: members, metadata leader, partitions
    // left without an owner. Unknown (unset) while no broker answers.
    let view = if ready > 0 { cluster_view(ctx, &ns, &name, &access).await } else { None };
    st.brokers = view.as_ref().map(|v| v.brokers.len() as u32);
    st.metadata_leader = view.as_ref().and_then(|v| v.leader_id);
    st.unowned_partitions = view.as_ref().map(|v| v.unowned_partitions);
    let all_ready = ready >= cluster.spec.replicas;
    if all_ready {
        status::set(
            &mut st.conditions,
            status::READY,
            true,
            Reason::Reconciled,
            format!("{ready}/{} brokers ready", cluster.spec.replicas),
            generation,
        );
    } else {
        status::set(
            &mut st.conditions,
            status::READY,
            false,
            Reason::Progressing,
            format!("{ready}/{} brokers ready", cluster.spec.replicas),
            generation,
        );
    }
    if all_ready && !status::is_true(&previous.conditions, status::READY) {
        ctx.event(cluster, false, "Ready", "Reconcile", format!("{ready} brokers ready")).await;
    }
    if st != previous {
        apply_status(&api, &name, &st).await?;
    }
    ctx.backoff.success(&format!("BrokerCluster/{name}"));
    // Until every pod is ready, look again soon; the owned StatefulSet's
    // changes also trigger reconciles through `.owns()`.
    Ok(Action::requeue(if all_ready { ctx.settings.resync } else { Duration::from_secs(15).min(ctx.settings.resync) }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn cluster() -> BrokerCluster {
        let mut c = BrokerCluster::new(
            "main",
            BrokerClusterSpec {
                replicas: 3,
                image: "strata/strata-broker:test".into(),
                image_pull_policy: None,
                storage: StorageSpec { size: "20Gi".into(), storage_class_name: Some("fast".into()) },
                resources: None,
                config: BrokerConfigSpec {
                    log_level: Some("debug".into()),
                    default_retention: Some("3d".into()),
                    default_durability: Some(Durability::Fsync),
                    max_record_bytes: Some(2 << 20),
                    max_partitions_per_topic: Some(64),
                },
                tier: None,
                telemetry: None,
                metrics: MetricsSpec::default(),
                pod: PodSpecOverrides::default(),
                auth: AuthSpec::default(),
                tls: None,
            },
        );
        c.metadata.namespace = Some("strata".into());
        c.metadata.uid = Some("uid-1".into());
        c
    }

    fn pod(ch: &Children) -> (PodSpec, Container) {
        let pod = ch.stateful_set.spec.template.spec.clone().unwrap();
        let c = pod.containers[0].clone();
        (pod, c)
    }

    fn config(ch: &Children) -> toml::Table {
        ch.config_map.data.as_ref().unwrap()[CONFIG_FILE].parse().unwrap()
    }

    fn mount(c: &Container, volume: &str) -> Option<String> {
        c.volume_mounts.as_ref()?.iter().find(|m| m.name == volume).map(|m| m.mount_path.clone())
    }

    fn secret_of(pod: &PodSpec, volume: &str) -> Option<String> {
        pod.volumes.as_ref()?.iter().find(|v| v.name == volume)?.secret.as_ref()?.secret_name.clone()
    }

    #[test]
    fn auth_is_required_by_default_with_the_generated_admin_token_mounted() {
        let c = cluster();
        let ch = build(&c, false).unwrap();
        let (pod, container) = pod(&ch);
        assert_eq!(secret_of(&pod, "admin-token").as_deref(), Some("main-admin-token"));
        assert_eq!(mount(&container, "admin-token").as_deref(), Some(AUTH_DIR));
        let conf = config(&ch);
        assert_eq!(conf["auth"]["mode"].as_str(), Some("required"));
        assert_eq!(conf["auth"]["admin_token_file"].as_str(), Some("/etc/strata-auth/token"));
        assert!(conf.get("tls").is_none());
        assert!(secret_of(&pod, "tls").is_none());
        // Probes stay plain HTTP without TLS.
        assert_eq!(container.readiness_probe.unwrap().http_get.unwrap().scheme, None);

        // A named Secret, and anonymous mode.
        let mut c = cluster();
        c.spec.auth = AuthSpec { mode: AuthMode::Anonymous, admin_token_secret: Some("ops-token".into()) };
        let ch = build(&c, false).unwrap();
        assert_eq!(secret_of(&pod_of(&ch), "admin-token").as_deref(), Some("ops-token"));
        assert_eq!(config(&ch)["auth"]["mode"].as_str(), Some("anonymous"));
        assert_eq!(admin_token_secret(&c), "ops-token");
    }

    fn pod_of(ch: &Children) -> PodSpec {
        pod(ch).0
    }

    #[test]
    fn tls_mounts_the_secret_configures_the_broker_and_probes_https() {
        let mut c = cluster();
        c.spec.tls = Some(TlsSpec { secret_name: "main-tls".into(), client_auth: ClientAuth::None });
        // Without ca.crt: server TLS only.
        let ch = build(&c, false).unwrap();
        let (pod, container) = pod(&ch);
        assert_eq!(secret_of(&pod, "tls").as_deref(), Some("main-tls"));
        assert_eq!(mount(&container, "tls").as_deref(), Some(TLS_DIR));
        let conf = config(&ch);
        assert_eq!(conf["tls"]["cert"].as_str(), Some("/etc/strata-tls/tls.crt"));
        assert_eq!(conf["tls"]["key"].as_str(), Some("/etc/strata-tls/tls.key"));
        assert!(conf["tls"].get("client_ca").is_none());
        assert!(conf["tls"].get("require_client_cert").is_none());
        for probe in [container.readiness_probe.unwrap(), container.liveness_probe.unwrap()] {
            assert_eq!(probe.http_get.unwrap().scheme.as_deref(), Some("HTTPS"));
        }
        // With ca.crt: client certificates are verified when presented.
        let conf = config(&build(&c, true).unwrap());
        assert_eq!(conf["tls"]["client_ca"].as_str(), Some("/etc/strata-tls/ca.crt"));
        assert!(conf["tls"].get("require_client_cert").is_none());
        // mTLS required.
        c.spec.tls.as_mut().unwrap().client_auth = ClientAuth::Require;
        let ch = build(&c, true).unwrap();
        let conf = config(&ch);
        assert_eq!(conf["tls"]["client_ca"].as_str(), Some("/etc/strata-tls/ca.crt"));
        assert_eq!(conf["tls"]["require_client_cert"].as_bool(), Some(true));
        // The config hash rolls the pods when TLS changes.
        let hash = |ch: &Children| ch.stateful_set.spec.template.metadata.as_ref().unwrap().annotations.clone();
        assert_ne!(hash(&ch), hash(&build(&cluster(), false).unwrap()));
        // An empty Secret name is refused.
        c.spec.tls.as_mut().unwrap().secret_name = " ".into();
        assert_eq!(build(&c, false).unwrap_err().field, "spec.tls.secretName");
    }

    #[test]
    fn tls_makes_the_monitor_scrape_https_with_the_secrets_ca() {
        let mut c = cluster();
        c.spec.metrics.monitor = Monitor::PodMonitor;
        c.spec.tls = Some(TlsSpec { secret_name: "main-tls".into(), client_auth: ClientAuth::None });
        let m = build(&c, true).unwrap().monitor.unwrap();
        let ep = &m["spec"]["podMetricsEndpoints"][0];
        assert_eq!(ep["scheme"], "https");
        assert_eq!(ep["tlsConfig"]["ca"]["secret"]["name"], "main-tls");
        assert_eq!(ep["tlsConfig"]["serverName"], "main.strata.svc");
    }

    #[test]
    fn generated_tokens_have_the_brokers_format() {
        use base64::Engine as _;
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert_ne!(a, b);
        let body = a.strip_prefix("strata_").unwrap();
        assert_eq!(body.len(), 43);
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).unwrap();
        assert_eq!(bytes.len(), 32);
    }

    #[test]
    fn statefulset_has_storage_probes_spread_and_owner() {
        let ch = build(&cluster(), false).unwrap();
        let sts = ch.stateful_set;
        let owner = &sts.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("BrokerCluster", "main", Some(true)));
        let spec = sts.spec;
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("main-headless"));
        let claim = &spec.volume_claim_templates.as_ref().unwrap()[0];
        let claim_spec = claim.spec.as_ref().unwrap();
        assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(claim_spec.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0, "20Gi");
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/readyz"));
        assert_eq!(c.liveness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/healthz"));
        assert_eq!(pod.topology_spread_constraints.as_ref().unwrap().len(), 2);
        assert_eq!(pod.service_account_name.as_deref(), Some("main"));
        assert_eq!(spec.selector.match_labels.unwrap(), selector_labels("main"));
    }

    #[test]
    fn services_pdb_and_config_map() {
        let ch = build(&cluster(), false).unwrap();
        let headless = ch.headless_service.spec.unwrap();
        assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
        assert_eq!(headless.ports.unwrap().len(), 2);
        let client = ch.client_service.spec.unwrap();
        assert_eq!(client.ports.unwrap()[0].port, 7070);
        assert_eq!(ch.client_service.metadata.name.as_deref(), Some("main"));
        assert_eq!(ch.pod_disruption_budget.spec.unwrap().max_unavailable, Some(IntOrString::Int(1)));
        let toml = &ch.config_map.data.unwrap()[CONFIG_FILE];
        assert!(toml.contains("retention = \"3d\""), "{toml}");
    }

    #[test]
    fn config_changes_change_the_pod_template() {
        let a = build(&cluster(), false).unwrap().stateful_set;
        let mut c = cluster();
        c.spec.config.log_level = Some("info".into());
        let b = build(&c, false).unwrap().stateful_set;
        let hash = |s: &StatefulSet| s.spec.template.metadata.as_ref().unwrap().annotations.clone();
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn bad_spec_is_an_error_not_a_panic() {
        let mut c = cluster();
        c.spec.config.default_retention = Some("forever-ish".into());
        let e = build(&c, false).unwrap_err();
        assert_eq!(e.field, "spec.config.defaultRetention");
        let mut c = cluster();
        c.spec.replicas = 0;
        assert_eq!(build(&c, false).unwrap_err().field, "spec.replicas");
    }
}
