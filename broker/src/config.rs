//! Broker configuration: embedded defaults, then a TOML file, then
//! `STRATA_<SECTION>_<FIELD>` environment overrides, then flags (applied by
//! the binary), then validation into an immutable [`Config`].
//!
//! Unknown keys are errors everywhere. `strata-broker --print-config` prints
//! the effective configuration in the same format the file uses; the
//! operator renders the same format into a ConfigMap.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::log::Durability;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A byte size: `1048576`, `"1MiB"`, `"64 MiB"`, `"10GB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn kib(n: u64) -> ByteSize {
        ByteSize(n * 1024)
    }
    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n * 1024 * 1024)
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| format!("{s:?} is not a size (examples: 1048576, 512KiB, 64MiB, 10GiB)"))
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec())
    }
}

/// A config value as TOML or an environment variable gives it.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawValue {
    Int(u64),
    Str(String),
}

/// A value that can also be "unlimited" inside a [`Limit`].
pub trait LimitValue: Sized + Serialize {
    const UNLIMITED: &'static str;
    #[doc(hidden)]
    fn from_raw_str(s: &str) -> Result<Self, String>;
    #[doc(hidden)]
    fn from_raw_int(n: u64) -> Result<Self, String>;
}

fn from_raw<T: LimitValue>(raw: RawValue) -> Result<T, String> {
    match raw {
        RawValue::Int(n) => T::from_raw_int(n),
        RawValue::Str(s) => T::from_raw_str(&s),
    }
}

impl LimitValue for ByteSize {
    const UNLIMITED: &'static str = "unlimited";
    fn from_raw_str(s: &str) -> Result<Self, String> {
        parse_size(s).map(ByteSize)
    }
    fn from_raw_int(n: u64) -> Result<Self, String> {
        Ok(ByteSize(n))
    }
}

impl LimitValue for HumanDuration {
    const UNLIMITED: &'static str = "infinite";
    fn from_raw_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(HumanDuration)
    }
    fn from_raw_int(n: u64) -> Result<Self, String> {
        Err(format!("{n} is not a duration; write a unit (examples: 500ms, 30s, 7d)"))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_raw(RawValue::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A duration written like `"500ms"`, `"30s"`, `"7d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|_| format!("{s:?} is not a duration (examples: 500ms, 30s, 10m, 7d)"))
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_raw(RawValue::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A retention limit: a value, or none (`"infinite"` / `"unlimited"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit<T> {
    Unlimited,
    Max(T),
}

impl<T: LimitValue> Serialize for Limit<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Limit::Unlimited => s.serialize_str(T::UNLIMITED),
            Limit::Max(v) => v.serialize(s),
        }
    }
}

impl<'de, T: LimitValue> Deserialize<'de> for Limit<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawValue::deserialize(d)?;
        if let RawValue::Str(s) = &raw
            && matches!(s.trim(), "infinite" | "unlimited")
        {
            return Ok(Limit::Unlimited);
        }
        from_raw(raw).map(Limit::Max).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub limits: LimitsConfig,
    pub topic_defaults: TopicDefaults,
    pub log: LogConfig,
    pub tier: TierConfig,
    pub cluster: ClusterConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub quotas: QuotasConfig,
}

/// Tenant rate quotas (`[quotas]`; the quotas themselves are per tenant in
/// the catalog). A request over a rate is delayed until the rate allows it,
/// up to `max_throttle`; one that would need longer is refused with
/// RESOURCE_EXHAUSTED / QUOTA_EXCEEDED and a `retry_after_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotasConfig {
    pub max_throttle: HumanDuration,
}

impl Default for QuotasConfig {
    fn default() -> Self {
        QuotasConfig { max_throttle: HumanDuration(Duration::from_secs(1)) }
    }
}

/// TLS on the gRPC and HTTP listeners (DESIGN §4.5). Off while `cert` is
/// empty. The certificate and key are re-read when either file changes
/// (cert-manager rotates Secrets in place), checked every `reload_interval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain of this broker (leaf first).
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that sign client certificates (mTLS). A client
    /// certificate, when presented, must chain to one of them; its subject
    /// CN (or first DNS name) names the principal. Brokers also trust this
    /// CA for each other's certificates (Raft traffic).
    pub client_ca: PathBuf,
    /// Refuse TLS connections without a client certificate (needs `client_ca`).
    pub require_client_cert: bool,
    /// How often the certificate and key files are checked for changes.
    pub reload_interval: HumanDuration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            client_ca: PathBuf::new(),
            require_client_cert: false,
            reload_interval: HumanDuration(Duration::from_secs(10)),
        }
    }
}

impl TlsConfig {
    /// True when the listeners serve TLS.
    pub fn enabled(&self) -> bool {
        !self.cert.as_os_str().is_empty()
    }

    fn validate(&self) -> Result<(), String> {
        let set = |p: &PathBuf| !p.as_os_str().is_empty();
        if set(&self.cert) != set(&self.key) {
            return Err("tls.cert (--tls-cert) and tls.key (--tls-key) go together".into());
        }
        if set(&self.client_ca) && !self.enabled() {
            return Err("tls.client_ca (--tls-client-ca) needs tls.cert and tls.key".into());
        }
        if self.require_client_cert && !set(&self.client_ca) {
            return Err("tls.require_client_cert needs tls.client_ca (--tls-client-ca)".into());
        }
        if self.reload_interval.0.is_zero() {
            return Err("tls.reload_interval must be positive".into());
        }
        Ok(())
    }
}

/// Whether callers must authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Callers without credentials act as the cluster's anonymous admin
    /// (the standalone default); credentials, when sent, are still checked.
    #[default]
    Anonymous,
    /// Every call needs a valid bearer token or a mapped client certificate.
    Required,
}

impl std::str::FromStr for AuthMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "anonymous" => Ok(AuthMode::Anonymous),
            "required" => Ok(AuthMode::Required),
            _ => Err(format!("{s:?} is not an auth mode (anonymous, required)")),
        }
    }
}

/// Authentication (DESIGN §4.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// A file holding the cluster-admin token (one line; how the operator
    /// and a person bootstrap). Read at start.
    pub admin_token_file: PathBuf,
    /// Serve `/metrics` without credentials (the probes are always open).
    /// When false, `/metrics` needs `authorization: Bearer <admin token>`.
    pub open_metrics: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { mode: AuthMode::Anonymous, admin_token_file: PathBuf::new(), open_metrics: true }
    }
}

/// Clustered brokers (DESIGN §4.6): the broker's id, the gRPC address its
/// peers reach it at, and the seed list. No peers: standalone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This broker's stable id (the StatefulSet ordinal), 0..=65535.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_id: Option<i64>,
    /// Take the id from the host name's trailing `-N` when `broker_id` is
    /// not set: a StatefulSet pod `main-2` is broker 2. How the operator
    /// gives every pod of one ConfigMap its own id.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub broker_id_from_hostname: bool,
    /// `HOST:PORT` other brokers and clients reach this broker's gRPC port at.
    pub advertised_address: String,
    /// The brokers' advertised `HOST:PORT`s (this broker's may be included);
    /// a TOML array or one comma-separated string.
    #[serde(deserialize_with = "peer_list")]
    pub peers: Vec<String>,
    /// How long a metadata write waits for a leader and a majority before
    /// failing with UNAVAILABLE.
    pub write_timeout: HumanDuration,
    /// Snapshot the catalog and purge the Raft log every this many entries
    /// (a lagging broker then catches up from the snapshot).
    pub snapshot_every: u64,
    /// This broker's failure zone; placement spreads partitions over zones.
    pub zone: String,
    /// A file holding this broker's zone, read at start and every few
    /// seconds after (a change is registered in the catalog). The operator
    /// mounts the pod's `strata.dev/zone` annotation here, which it copies
    /// from the node's `topology.kubernetes.io/zone` label. Instead of `zone`.
    pub zone_file: PathBuf,
    /// Replication factor of topics created without one; 0 means min(3,
    /// the cluster's brokers when the topic is created).
    pub default_replication_factor: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            broker_id: None,
            broker_id_from_hostname: false,
            advertised_address: String::new(),
            peers: Vec::new(),
            write_timeout: HumanDuration(Duration::from_secs(5)),
            snapshot_every: 5000,
            zone: String::new(),
            zone_file: PathBuf::new(),
            default_replication_factor: 0,
        }
    }
}

/// Largest broker id accepted.
pub const MAX_BROKER_ID: i64 = 65_535;

/// The trailing `-N` of a StatefulSet pod's name.
fn ordinal_of(host: &str) -> Option<i64> {
    let first_label = host.split('.').next()?;
    let (_, n) = first_label.rsplit_once('-')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// Splits a comma-separated peer list (flags and environment variables).
pub fn split_peers(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned).collect()
}

fn peer_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::One(s) => split_peers(&s),
        Raw::Many(v) => v.iter().map(|p| p.trim().to_owned()).collect(),
    })
}

/// Checks a `HOST:PORT` address (port 1..=65535, a host before it).
fn check_host_port(what: &str, addr: &str) -> Result<(), String> {
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("{what} {addr:?} is not HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{what} {addr:?} has no host (expected HOST:PORT)"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{what} {addr:?} has no valid port (expected HOST:PORT, port 1-65535)")),
    }
}

impl ClusterConfig {
    /// True when a seed list is configured (the broker runs metadata Raft).
    pub fn is_clustered(&self) -> bool {
        !self.peers.is_empty()
    }

    /// The seed list with this broker's own address included exactly once.
    pub fn members(&self) -> Vec<String> {
        let mut all = self.peers.clone();
        if !all.iter().any(|p| p.eq_ignore_ascii_case(&self.advertised_address)) {
            all.push(self.advertised_address.clone());
        }
        all
    }

    /// Sets `broker_id` from the host name (`HOSTNAME` in `env`, else the
    /// kernel's) when `broker_id_from_hostname` asks for it and no id is set.
    pub fn resolve_broker_id(&mut self, env: &HashMap<String, String>) -> Result<(), String> {
        if self.broker_id.is_some() || !self.broker_id_from_hostname {
            return Ok(());
        }
        let host = match env.get("HOSTNAME").filter(|h| !h.trim().is_empty()) {
            Some(h) => h.trim().to_owned(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .map_err(|e| format!("cluster.broker_id_from_hostname: cannot read the host name: {e}"))?,
        };
        self.broker_id = Some(ordinal_of(&host).ok_or_else(|| {
            format!("cluster.broker_id_from_hostname: host name {host:?} does not end in -N (a StatefulSet ordinal)")
        })?);
        Ok(())
    }

    /// This broker's zone now: the trimmed content of `zone_file` when one
    /// is set (empty while the file is missing or unreadable: the zone is
    /// not known yet), else `zone`.
    pub fn current_zone(&self) -> String {
        if self.zone_file.as_os_str().is_empty() {
            return self.zone.clone();
        }
        std::fs::read_to_string(&self.zone_file).map(|z| z.trim().to_owned()).unwrap_or_default()
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(id) = self.broker_id
            && !(0..=MAX_BROKER_ID).contains(&id)
        {
            return Err(format!("cluster.broker_id (--broker-id) must be between 0 and {MAX_BROKER_ID}, got {id}"));
        }
        if !self.advertised_address.is_empty() {
            check_host_port("cluster.advertised_address (--advertised-address)", &self.advertised_address)?;
        }
        if self.write_timeout.0.is_zero() {
            return Err("cluster.write_timeout must be positive".into());
        }
        if self.snapshot_every == 0 {
            return Err("cluster.snapshot_every must be positive".into());
        }
        if !self.zone.is_empty() && !self.zone_file.as_os_str().is_empty() {
            return Err("cluster.zone and cluster.zone_file: set one of them".into());
        }
        if self.peers.is_empty() {
            return Ok(());
        }
        if self.broker_id.is_none() && !self.broker_id_from_hostname {
            return Err("cluster.peers (--peers) needs cluster.broker_id (--broker-id)".into());
        }
        if self.advertised_address.is_empty() {
            return Err("cluster.peers (--peers) needs cluster.advertised_address (--advertised-address)".into());
        }
        let mut seen: Vec<&str> = Vec::new();
        for p in &self.peers {
            check_host_port("peer", p)?;
            if seen.iter().any(|s| s.eq_ignore_ascii_case(p)) {
                if p.eq_ignore_ascii_case(&self.advertised_address) {
                    return Err(format!("cluster.peers (--peers) names this broker's own address {p} twice"));
                }
                return Err(format!("cluster.peers (--peers) names {p} twice"));
            }
            seen.push(p);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC listener.
    pub listen: SocketAddr,
    /// HTTP listener for `/healthz`, `/readyz` (and metrics).
    pub http_listen: SocketAddr,
    /// How long SIGTERM waits for in-flight requests before closing.
    pub shutdown_timeout: HumanDuration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    /// Bytes of log between two sparse index entries.
    pub index_interval_bytes: ByteSize,
    /// How often segments are rolled by age and retention is applied.
    pub maintenance_interval: HumanDuration,
    /// Memory for recently sent queue messages, shared by every queue (each
    /// uses at most a quarter): a receive that finds its messages there
    /// needs no disk read. 0 turns the cache off.
    pub queue_cache_bytes: ByteSize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest record (key + value + headers) accepted.
    pub max_record_bytes: ByteSize,
    /// Largest record batch accepted in one produce request.
    pub max_batch_bytes: ByteSize,
    /// Largest decompressed size of a compressed batch (bounds the memory a
    /// small compressed request can make the broker allocate).
    pub max_uncompressed_batch_bytes: ByteSize,
    /// Upper bound on one fetch response (clients may ask for less).
    pub max_fetch_bytes: ByteSize,
    /// Longest long-poll a fetch may ask for.
    pub max_fetch_wait: HumanDuration,
    /// Produce bytes held in memory awaiting durability, across all clients;
    /// beyond it, produce streams stop reading (back-pressure).
    pub max_inflight_produce_bytes: ByteSize,
    pub max_partitions_per_topic: u32,
    /// Unfinished messages one queue may hold (each costs ~100 bytes of
    /// memory for its state); beyond it, sends get RESOURCE_EXHAUSTED.
    pub max_queue_messages: u64,
    /// gRPC connections served at once; further ones are closed as soon as
    /// they are accepted (clients see UNAVAILABLE). Keep it below the
    /// process's open-file limit, which the broker raises to its hard limit.
    pub max_connections: u32,
    /// Concurrent calls (HTTP/2 streams) on one connection.
    pub max_streams_per_connection: u32,
    /// Topics, partitions (over all topics), queues, topic-to-queue bindings
    /// and consumer groups one broker holds; creating more answers
    /// RESOURCE_EXHAUSTED (LIMIT_EXCEEDED) naming the limit.
    pub max_topics: u64,
    pub max_partitions: u64,
    pub max_queues: u64,
    pub max_bindings: u64,
    pub max_groups: u64,
    /// Segment files (of partitions and queues) held open at once; the
    /// least recently used idle ones are closed and reopened on demand, so
    /// descriptors do not grow with the number of partitions. 0 derives it
    /// from the open-file limit: half of it, at most 1024.
    pub max_open_segments: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicDefaults {
    pub retention: Limit<HumanDuration>,
    pub retention_bytes: Limit<ByteSize>,
    pub segment_bytes: ByteSize,
    pub segment_age: HumanDuration,
    pub durability: Durability,
}

/// Tiered storage: where sealed segments of topics with a local retention
/// go, and how the broker talks to that object store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TierConfig {
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`,
    /// `file:///path`, `memory://`, or `none` (no cold tier). Empty means the
    /// standalone default `file://<data_dir>/cold`.
    pub cold_store: String,
    /// Bytes of tiered topics' data waiting for upload beyond which produce
    /// requests to those topics are refused (RESOURCE_EXHAUSTED).
    pub max_pending_bytes: ByteSize,
    /// Segments uploaded at the same time, across all partitions.
    pub upload_concurrency: u32,
    /// Segments larger than this are uploaded in parts (multipart upload).
    pub multipart_threshold: ByteSize,
    /// Size of one part of a multipart upload (S3 needs at least 5 MiB).
    pub multipart_part_bytes: ByteSize,
    /// Local cache of remote segment bytes (read path), in bytes.
    pub cache_bytes: ByteSize,
    /// Remote reads fetch and cache aligned blocks of this size; the next
    /// block is fetched ahead for sequential consumers.
    pub read_block_bytes: ByteSize,
    /// How often the uploader looks for sealed segments to upload.
    pub upload_interval: HumanDuration,
    /// Longest wait between two upload attempts while the store fails.
    pub max_retry_backoff: HumanDuration,
    /// Timeout of one request to the object store.
    pub request_timeout: HumanDuration,
    /// Timeout of connecting to the object store.
    pub connect_timeout: HumanDuration,
    /// Fault injection for tests: extra latency added to every put (`0s`: none).
    pub inject_put_latency: HumanDuration,
    pub s3: S3Config,
}

/// S3 options (AWS, MinIO, Ceph RGW, R2, moto). Unset values come from the
/// standard `AWS_*` environment variables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Endpoint URL for S3-compatible servers, e.g. `http://127.0.0.1:9000`.
    pub endpoint: String,
    pub region: String,
    /// Virtual-hosted-style addressing (`bucket.endpoint/key`); the default
    /// is path style (`endpoint/bucket/key`), which local servers need.
    pub virtual_hosted_style: bool,
    /// Allow plain-HTTP endpoints (local servers).
    pub allow_http: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
}

impl TierConfig {
    /// The cold-store URL with the standalone default filled in.
    pub fn cold_store_url(&self, data_dir: &Path) -> String {
        if self.cold_store.trim().is_empty() {
            let dir = std::path::absolute(data_dir.join("cold")).unwrap_or_else(|_| data_dir.join("cold"));
            url::Url::from_file_path(&dir).map_or_else(|()| format!("file://{}", dir.display()), String::from)
        } else {
            self.cold_store.trim().to_owned()
        }
    }

    /// False when the cold tier is switched off (`none`).
    pub fn enabled(&self) -> bool {
        self.cold_store.trim() != "none"
    }
}

impl Default for TierConfig {
    fn default() -> Self {
        TierConfig {
            cold_store: String::new(),
            max_pending_bytes: ByteSize::mib(10 * 1024),
            upload_concurrency: 4,
            multipart_threshold: ByteSize::mib(32),
            multipart_part_bytes: ByteSize::mib(8),
            cache_bytes: ByteSize::mib(256),
            read_block_bytes: ByteSize::mib(1),
            upload_interval: HumanDuration(Duration::from_millis(500)),
            max_retry_backoff: HumanDuration(Duration::from_secs(30)),
            request_timeout: HumanDuration(Duration::from_secs(30)),
            connect_timeout: HumanDuration(Duration::from_secs(5)),
            inject_put_latency: HumanDuration(Duration::ZERO),
            s3: S3Config::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `strata_broker=debug,info`.
    pub level: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 7071)),
            shutdown_timeout: HumanDuration(Duration::from_secs(10)),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("./strata-data"),
            index_interval_bytes: ByteSize::kib(4),
            maintenance_interval: HumanDuration(Duration::from_secs(30)),
            queue_cache_bytes: ByteSize::mib(128),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_record_bytes: ByteSize::mib(1),
            max_batch_bytes: ByteSize::mib(16),
            max_uncompressed_batch_bytes: ByteSize::mib(64),
            max_fetch_bytes: ByteSize::mib(8),
            max_fetch_wait: HumanDuration(Duration::from_secs(30)),
            max_inflight_produce_bytes: ByteSize::mib(256),
            max_partitions_per_topic: 10_000,
            max_queue_messages: 2_000_000,
            max_connections: 10_000,
            max_streams_per_connection: 1_000,
            max_topics: 10_000,
            max_partitions: 100_000,
            max_queues: 10_000,
            max_bindings: 10_000,
            max_groups: 10_000,
            max_open_segments: 0,
        }
    }
}

impl Default for TopicDefaults {
    fn default() -> Self {
        TopicDefaults {
            retention: Limit::Max(HumanDuration(Duration::from_secs(7 * 24 * 3600))),
            retention_bytes: Limit::Unlimited,
            segment_bytes: ByteSize::mib(64),
            segment_age: HumanDuration(Duration::from_secs(7 * 24 * 3600)),
            durability: Durability::Fsync,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, level: "info".into() }
    }
}

// Longer names first: `tier_s3_endpoint` must match `tier_s3`, not `tier`.
const SECTIONS: &[&str] =
    &["topic_defaults", "tier_s3", "server", "storage", "limits", "log", "tier", "cluster", "tls", "auth", "quotas"];

/// Environment variables of the `strata` CLI that look like broker settings.
const CLIENT_ONLY_ENV: &[&str] = &["STRATA_TLS_CA"];

/// Smallest segment we accept: a segment must hold at least one batch of the
/// maximum size, and tiny segments only make sense in tests.
pub const MIN_SEGMENT_BYTES: u64 = 1024;

impl Config {
    /// Defaults, overlaid by `file` (if any), overlaid by `STRATA_*` entries of
    /// `env`, validated.
    pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.message().to_owned() })?
            }
            None => toml::Table::new(),
        };
        let origin = file.map_or_else(|| PathBuf::from("<environment>"), Path::to_path_buf);
        apply_env(&mut table, env)?;
        let mut config: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse { path: origin, message: e.message().to_owned() })?;
        config.cluster.resolve_broker_id(env).map_err(ConfigError::Invalid)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a config file's text (as `load` would read it, without
    /// environment overrides) and validates it. The operator's tests use it
    /// to check the ConfigMap they render.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let origin = PathBuf::from("<string>");
        let table = text
            .parse::<toml::Table>()
            .map_err(|e| ConfigError::Parse { path: origin.clone(), message: e.message().to_owned() })?;
        let config: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse { path: origin, message: e.message().to_owned() })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks cross-field rules. Called by `load`; call again after flags.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let l = &self.limits;
        if l.max_record_bytes.0 == 0 {
            return bad("limits.max_record_bytes must be positive".into());
        }
        if l.max_batch_bytes < l.max_record_bytes {
            return bad(format!(
                "limits.max_batch_bytes ({}) must be at least limits.max_record_bytes ({})",
                l.max_batch_bytes, l.max_record_bytes
            ));
        }
        if l.max_uncompressed_batch_bytes.0 > 256 * 1024 * 1024 {
            return bad("limits.max_uncompressed_batch_bytes may be at most 256MiB".into());
        }
        if l.max_batch_bytes.0 > 128 * 1024 * 1024 {
            return bad("limits.max_batch_bytes may be at most 128MiB".into());
        }
        if l.max_inflight_produce_bytes < l.max_batch_bytes {
            return bad("limits.max_inflight_produce_bytes must be at least limits.max_batch_bytes".into());
        }
        if l.max_fetch_bytes.0 < 1024 {
            return bad("limits.max_fetch_bytes must be at least 1KiB".into());
        }
        if l.max_partitions_per_topic == 0 {
            return bad("limits.max_partitions_per_topic must be positive".into());
        }
        if l.max_connections == 0 || l.max_streams_per_connection == 0 {
            return bad("limits.max_connections and limits.max_streams_per_connection must be positive".into());
        }
        if [l.max_topics, l.max_partitions, l.max_queues, l.max_bindings, l.max_groups].contains(&0) {
            return bad(
                "limits.max_topics, max_partitions, max_queues, max_bindings and max_groups must be positive".into()
            );
        }
        let t = &self.topic_defaults;
        if t.segment_bytes.0 < MIN_SEGMENT_BYTES || t.segment_bytes.0 > u64::from(u32::MAX) {
            return bad(format!("topic_defaults.segment_bytes must be between 1KiB and 4GiB, got {}", t.segment_bytes));
        }
        if t.segment_age.0.is_zero() {
            return bad("topic_defaults.segment_age must be positive".into());
        }
        if self.storage.index_interval_bytes.0 == 0 {
            return bad("storage.index_interval_bytes must be positive".into());
        }
        if self.storage.maintenance_interval.0.is_zero() {
            return bad("storage.maintenance_interval must be positive".into());
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            return bad("storage.data_dir must not be empty".into());
        }
        let t = &self.tier;
        if t.upload_concurrency == 0 || t.upload_concurrency > 256 {
            return bad(format!("tier.upload_concurrency must be between 1 and 256, got {}", t.upload_concurrency));
        }
        if t.multipart_part_bytes.0 < 5 * 1024 * 1024 || t.multipart_part_bytes.0 > 1024 * 1024 * 1024 {
            return bad("tier.multipart_part_bytes must be between 5MiB (the S3 minimum) and 1GiB".into());
        }
        if t.read_block_bytes.0 < 4096 || t.read_block_bytes.0 > 64 * 1024 * 1024 {
            return bad("tier.read_block_bytes must be between 4KiB and 64MiB".into());
        }
        if t.cache_bytes < t.read_block_bytes {
            return bad("tier.cache_bytes must be at least tier.read_block_bytes".into());
        }
        if t.upload_interval.0.is_zero() || t.request_timeout.0.is_zero() || t.connect_timeout.0.is_zero() {
            return bad("tier.upload_interval, tier.request_timeout and tier.connect_timeout must be positive".into());
        }
        self.cluster.validate().map_err(ConfigError::Invalid)?;
        self.tls.validate().map_err(ConfigError::Invalid)?;
        if self.cluster.is_clustered()
            && self.auth.mode == AuthMode::Required
            && self.auth.admin_token_file.as_os_str().is_empty()
        {
            return bad("auth.mode = required in a cluster needs auth.admin_token_file: brokers authenticate to each other with it".into());
        }
        if !self.auth.open_metrics && self.auth.admin_token_file.as_os_str().is_empty() {
            return bad("auth.open_metrics = false needs auth.admin_token_file (--admin-token-file)".into());
        }
        Ok(())
    }

    /// The configuration as TOML, in the format `load` reads.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// Applies `STRATA_<SECTION>_<FIELD>=value` entries. Values are read as TOML
/// values when they parse as one (numbers, booleans) and as strings otherwise.
/// Variables that name no known section (such as the CLI's `STRATA_SERVER`)
/// are ignored; an unknown field of a known section is an error.
fn apply_env(table: &mut toml::Table, env: &HashMap<String, String>) -> Result<(), ConfigError> {
    let mut keys: Vec<&String> = env.keys().collect();
    keys.sort();
    for key in keys {
        let Some(rest) = key.strip_prefix("STRATA_") else { continue };
        // The CLI's trust anchor shares the `STRATA_TLS_` prefix; the broker
        // has no such setting (it is `tls.client_ca`).
        if CLIENT_ONLY_ENV.contains(&key.as_str()) {
            continue;
        }
        let rest = rest.to_ascii_lowercase();
        let Some((section, field)) = SECTIONS.iter().find_map(|s| {
            rest.strip_prefix(s).and_then(|f| f.strip_prefix('_')).filter(|f| !f.is_empty()).map(|f| (*s, f))
        }) else {
            continue;
        };
        let raw = &env[key];
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        // `tier_s3` is the nested table `[tier.s3]`.
        let path: &[&str] = if section == "tier_s3" { &["tier", "s3"] } else { std::slice::from_ref(&section) };
        let mut current = &mut *table;
        for name in path {
            let entry = current.entry((*name).to_owned()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(t) = entry.as_table_mut() else {
                return Err(ConfigError::Invalid(format!("[{}] must be a table", path.join("."))));
            };
            current = t;
        }
        current.insert(field.to_owned(), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Loading the defaults with this one environment variable set fails
    /// with an error that mentions `expected`.
    #[track_caller]
    fn assert_env_error(key: &str, value: &str, expected: &str) {
        let err = Config::load(None, &env(&[(key, value)])).unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    }

    #[test]
    fn defaults_match_the_documented_standalone_setup() {
        let c = Config::load(None, &HashMap::new()).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(c.server.http_listen.to_string(), "127.0.0.1:7071");
        assert_eq!(c.storage.data_dir, PathBuf::from("./strata-data"));
        assert_eq!(c.limits.max_record_bytes, ByteSize::mib(1));
        assert_eq!(c.topic_defaults.durability, Durability::Fsync);
    }

    #[test]
    fn file_then_env_override() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strata.toml");
        std::fs::write(
            &path,
            "[storage]\ndata_dir = \"/var/lib/strata\"\n[limits]\nmax_record_bytes = \"2MiB\"\n[topic_defaults]\nretention = \"infinite\"\ndurability = \"none\"\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&path),
            &env(&[
                ("STRATA_LIMITS_MAX_RECORD_BYTES", "4096"),
                ("STRATA_SERVER_LISTEN", "0.0.0.0:9000"),
                ("STRATA_TOPIC_DEFAULTS_SEGMENT_BYTES", "1MiB"),
                ("STRATA_SERVER", "http://ignored:1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.storage.data_dir, PathBuf::from("/var/lib/strata"));
        assert_eq!(c.limits.max_record_bytes, ByteSize(4096));
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(c.topic_defaults.segment_bytes, ByteSize::mib(1));
        assert_eq!(c.topic_defaults.retention, Limit::Unlimited);
        assert_eq!(c.topic_defaults.durability, Durability::None);
    }

    #[test]
    fn tier_settings_from_env_including_nested_s3() {
        let c = Config::load(
            None,
            &env(&[
                ("STRATA_TIER_COLD_STORE", "s3://bucket/prefix"),
                ("STRATA_TIER_MAX_PENDING_BYTES", "1GiB"),
                ("STRATA_TIER_S3_ENDPOINT", "http://127.0.0.1:9000"),
                ("STRATA_TIER_S3_ALLOW_HTTP", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(c.tier.cold_store, "s3://bucket/prefix");
        assert_eq!(c.tier.max_pending_bytes, ByteSize::mib(1024));
        assert_eq!(c.tier.s3.endpoint, "http://127.0.0.1:9000");
        assert!(c.tier.s3.allow_http);
        let d = Config::default();
        assert!(d.tier.cold_store_url(Path::new("/var/lib/strata")).starts_with("file:///var/lib/strata/cold"));
        assert_env_error("STRATA_TIER_S3_NOPE", "1", "nope");
        assert_env_error("STRATA_TIER_UPLOAD_CONCURRENCY", "0", "upload_concurrency");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strata.toml");
        std::fs::write(&path, "[storage]\ndata_dri = \"x\"\n").unwrap();
        let err = Config::load(Some(&path), &HashMap::new()).unwrap_err().to_string();
        assert!(err.contains("data_dri"), "{err}");
        std::fs::write(&path, "[stroage]\n").unwrap();
        assert!(Config::load(Some(&path), &HashMap::new()).is_err());
        assert_env_error("STRATA_STORAGE_NOPE", "1", "nope");
    }

    #[test]
    fn bad_values_are_explained() {
        assert_env_error("STRATA_LIMITS_MAX_RECORD_BYTES", "lots", "not a size");
        assert_env_error("STRATA_TOPIC_DEFAULTS_SEGMENT_BYTES", "10", "segment_bytes");
        assert_env_error("STRATA_LIMITS_MAX_BATCH_BYTES", "1KiB", "max_batch_bytes");
    }

    #[test]
    fn config_text_parses_like_a_file() {
        let c = Config::from_toml_str("[log]\nlevel = \"debug\"\n").unwrap();
        assert_eq!(c.log.level, "debug");
        assert!(Config::from_toml_str("[log]\nlevle = 1\n").unwrap_err().to_string().contains("levle"));
    }

    #[test]
    fn cluster_settings_from_file_env_and_their_errors() {
        let c = Config::load(
            None,
            &env(&[
                ("STRATA_CLUSTER_BROKER_ID", "2"),
                ("STRATA_CLUSTER_ADVERTISED_ADDRESS", "b2.strata:7070"),
                ("STRATA_CLUSTER_PEERS", "b1.strata:7070, b2.strata:7070,b3.strata:7070"),
            ]),
        )
        .unwrap();
        assert_eq!(c.cluster.broker_id, Some(2));
        assert_eq!(c.cluster.peers, ["b1.strata:7070", "b2.strata:7070", "b3.strata:7070"]);
        assert_eq!(c.cluster.members().len(), 3);
        assert!(c.cluster.is_clustered());
        let c = Config::from_toml_str(
            "[cluster]\nbroker_id = 0\nadvertised_address = \"a:1\"\npeers = [\"b:2\", \"c:3\"]\n",
        )
        .unwrap();
        assert_eq!(c.cluster.members(), ["b:2", "c:3", "a:1"]);
        assert!(!Config::default().cluster.is_clustered());
        let err = |pairs: &[(&str, &str)]| Config::load(None, &env(pairs)).unwrap_err().to_string();
        // Broker 1 at a:1 with these peers.
        let peers_err = |peers: &str| {
            err(&[
                ("STRATA_CLUSTER_BROKER_ID", "1"),
                ("STRATA_CLUSTER_ADVERTISED_ADDRESS", "a:1"),
                ("STRATA_CLUSTER_PEERS", peers),
            ])
        };
        let e = peers_err("a:1,b:2,a:1");
        assert!(e.contains("own address a:1 twice"), "{e}");
        let e = peers_err("b:2,b:2");
        assert!(e.contains("names b:2 twice"), "{e}");
        let e = err(&[("STRATA_CLUSTER_ZONE", "a"), ("STRATA_CLUSTER_ZONE_FILE", "/etc/strata/zone/zone")]);
        assert!(e.contains("cluster.zone and cluster.zone_file"), "{e}");
        let e = err(&[("STRATA_CLUSTER_BROKER_ID", "70000")]);
        assert!(e.contains("between 0 and 65535"), "{e}");
        let from_host = |host: &str| {
            Config::load(
                None,
                &env(&[
                    ("STRATA_CLUSTER_BROKER_ID_FROM_HOSTNAME", "true"),
                    ("STRATA_CLUSTER_ADVERTISED_ADDRESS", "a:1"),
                    ("STRATA_CLUSTER_PEERS", "a:1,b:2"),
                    ("HOSTNAME", host),
                ]),
            )
        };
        assert_eq!(from_host("main-2").unwrap().cluster.broker_id, Some(2));
        assert_eq!(from_host("my-strata-10.main-headless.ns.svc").unwrap().cluster.broker_id, Some(10));
        for bad in ["main", "main-", "main-x1", "main-99999"] {
            let e = from_host(bad).unwrap_err().to_string();
            assert!(e.contains("-N") || e.contains("between 0 and"), "{bad}: {e}");
        }
        assert!(e.contains("between 0 and 65535"), "{e}");
        let e = err(&[("STRATA_CLUSTER_BROKER_ID", "1"), ("STRATA_CLUSTER_PEERS", "b:2")]);
        assert!(e.contains("needs cluster.advertised_address"), "{e}");
        let e = err(&[("STRATA_CLUSTER_ADVERTISED_ADDRESS", "a:1"), ("STRATA_CLUSTER_PEERS", "b:2")]);
        assert!(e.contains("needs cluster.broker_id"), "{e}");
        let e = peers_err("b");
        assert!(e.contains("not HOST:PORT"), "{e}");
    }

    #[test]
    fn printed_config_loads_back_identically() {
        let mut c = Config::default();
        c.topic_defaults.retention_bytes = Limit::Max(ByteSize::mib(10));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strata.toml");
        std::fs::write(&path, c.to_toml()).unwrap();
        assert_eq!(Config::load(Some(&path), &HashMap::new()).unwrap(), c);
    }
}
