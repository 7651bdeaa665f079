//! Aggregate per-tenant quotas (issue 16): what a tenant may hold (topics,
//! queues, partitions, stored bytes) and how fast it may go (produce and
//! consume bytes/s, requests/s, connections).
//!
//! - Count quotas live in the catalog with the tenant ([`TenantQuotas`]) and
//!   are checked by [`crate::catalog::Catalog::apply`] itself, so every
//!   broker of a cluster decides the same from the replicated log and a
//!   refused create leaves nothing behind.
//! - Stored bytes: each broker keeps, per tenant, the bytes of the
//!   partitions and queue logs it serves ([`Quotas::set_stored`], recomputed
//!   from their stats on every maintenance tick, so retention frees it) plus
//!   the bytes appended since ([`Quotas::add_stored`]). Produce and send are
//!   refused while that sum is at or over `max_stored_bytes`.
//! - Rates are enforced per broker, like Kafka's quotas, with `governor`'s
//!   GCRA limiters (a burst of one second of the rate). A request over a
//!   rate waits until the limiter lets it through, up to
//!   `quotas.max_throttle`; one that would wait longer is refused with a
//!   `retry_after`. A request is charged at most one second of the rate at
//!   once; the rest, and consumed bytes (known only after a read), are owed
//!   and paid first by the tenant's next request (Kafka delays the next
//!   response the same way), so large batches cannot exceed the rate.
//! - Connections: the first call of a connection authenticated as one of the
//!   tenant's principals registers the connection with the tenant (the
//!   anonymous caller counts for `default`, the cluster admin never); the
//!   (n+1)th is refused at its first call. The connection leaves the count
//!   when it closes.
//!
//! Transport-free: refusals are [`QuotaExceeded`] values, mapped to gRPC
//! statuses in `grpc/status.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use governor::clock::Clock as _;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use serde::{Deserialize, Serialize};

use crate::locks::{read_lock, write_lock};
use crate::metrics::{Metrics, QuotaLabels};
use crate::names::DEFAULT_TENANT;

/// A tenant's limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantQuotas {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_topics: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queues: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_partitions: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stored_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub produce_bytes_per_second: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consume_bytes_per_second: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

impl TenantQuotas {
    pub fn is_unlimited(&self) -> bool {
        *self == TenantQuotas::default()
    }

    /// Every quota with its name and limit (unset ones included, as `None`).
    pub fn entries(&self) -> [(Quota, Option<u64>); 8] {
        [
            (Quota::MaxTopics, self.max_topics.map(u64::from)),
            (Quota::MaxQueues, self.max_queues.map(u64::from)),
            (Quota::MaxPartitions, self.max_partitions.map(u64::from)),
            (Quota::MaxStoredBytes, self.max_stored_bytes),
            (Quota::ProduceBytesPerSecond, self.produce_bytes_per_second),
            (Quota::ConsumeBytesPerSecond, self.consume_bytes_per_second),
            (Quota::RequestsPerSecond, self.requests_per_second.map(u64::from)),
            (Quota::MaxConnections, self.max_connections.map(u64::from)),
        ]
    }

    /// Rejects zero limits of the rate quotas (a rate of 0 would refuse
    /// everything forever; a count of 0 is a valid "none allowed").
    pub fn validate(&self) -> Result<(), String> {
        for q in [Quota::ProduceBytesPerSecond, Quota::ConsumeBytesPerSecond, Quota::RequestsPerSecond] {
            if self.entries().iter().any(|(k, v)| *k == q && *v == Some(0)) {
                return Err(format!("{} must be at least 1 (leave it unset for unlimited)", q.name()));
            }
        }
        Ok(())
    }
}

/// One quota, named as `TenantQuotas` in `admin.proto` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quota {
    MaxTopics,
    MaxQueues,
    MaxPartitions,
    MaxStoredBytes,
    ProduceBytesPerSecond,
    ConsumeBytesPerSecond,
    RequestsPerSecond,
    MaxConnections,
}

impl Quota {
    pub fn name(self) -> &'static str {
        match self {
            Quota::MaxTopics => "max_topics",
            Quota::MaxQueues => "max_queues",
            Quota::MaxPartitions => "max_partitions",
            Quota::MaxStoredBytes => "max_stored_bytes",
            Quota::ProduceBytesPerSecond => "produce_bytes_per_second",
            Quota::ConsumeBytesPerSecond => "consume_bytes_per_second",
            Quota::RequestsPerSecond => "requests_per_second",
            Quota::MaxConnections => "max_connections",
        }
    }
}

/// A refusal: the tenant is at a quota.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant {tenant:?} is over its {} quota: {usage} used, limit {limit}{}", quota.name(),
    retry_after.map(|d| format!("; retry after {} ms", d.as_millis())).unwrap_or_default())]
pub struct QuotaExceeded {
    pub tenant: String,
    pub quota: Quota,
    pub limit: u64,
    pub usage: u64,
    /// Rate quotas: when a retry may pass.
    pub retry_after: Option<Duration>,
}

/// Governor's clock over tokio's time, so paused-time tests drive it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokioClock {
    start: tokio::time::Instant,
}

impl governor::clock::Clock for TokioClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

type Limiter = governor::RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// A rate in cells of `unit` bytes (governor counts in u32 cells).
struct Rate {
    limiter: Limiter,
    /// Bytes (or requests) per cell.
    unit: u64,
    /// Cells per second (also the burst).
    burst: u32,
    limit: u64,
    /// Admitted but not charged yet: the part of a request beyond one
    /// second of the rate, and consumed bytes (known only after the read).
    /// The tenant's next request pays it first.
    owed: AtomicU64,
}

impl Rate {
    fn new(per_second: u64, clock: TokioClock) -> Rate {
        let unit = per_second.div_ceil(1_000_000).max(1);
        let burst = u32::try_from((per_second / unit).max(1)).unwrap_or(u32::MAX);
        let burst_nz = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = governor::Quota::per_second(burst_nz);
        Rate {
            limiter: governor::RateLimiter::direct_with_clock(quota, clock),
            unit,
            burst,
            limit: per_second,
            owed: AtomicU64::new(0),
        }
    }

    /// Cells for `amount`: at least one, at most a burst (the rest is owed).
    fn cells(&self, amount: u64) -> NonZeroU32 {
        let cells = amount.div_ceil(self.unit).clamp(1, u64::from(self.burst));
        NonZeroU32::new(cells as u32).unwrap_or(NonZeroU32::MIN)
    }

    /// Takes the cells now, or says how long until they would conform.
    fn try_take(&self, cells: NonZeroU32, clock: &TokioClock) -> Result<(), Duration> {
        match self.limiter.check_n(cells) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(clock.now()).max(Duration::from_millis(1))),
            // `cells` never exceeds the burst.
            Err(_) => Err(Duration::from_secs(1)),
        }
    }
}

/// The limiters of one tenant, made from its quotas.
struct TenantRates {
    quotas: TenantQuotas,
    produce: Option<Rate>,
    consume: Option<Rate>,
    requests: Option<Rate>,
}

impl TenantRates {
    fn new(quotas: TenantQuotas, clock: TokioClock) -> TenantRates {
        TenantRates {
            quotas,
            produce: quotas.produce_bytes_per_second.map(|r| Rate::new(r, clock)),
            consume: quotas.consume_bytes_per_second.map(|r| Rate::new(r, clock)),
            requests: quotas.requests_per_second.map(|r| Rate::new(u64::from(r), clock)),
        }
    }

    fn rate(&self, quota: Quota) -> Option<&Rate> {
        match quota {
            Quota::ProduceBytesPerSecond => self.produce.as_ref(),
            Quota::ConsumeBytesPerSecond => self.consume.as_ref(),
            Quota::RequestsPerSecond => self.requests.as_ref(),
            _ => None,
        }
    }
}

/// Stored bytes of one tenant on this broker.
#[derive(Debug, Default)]
struct Stored {
    /// From the partitions' and queues' stats at the last tick.
    base: AtomicU64,
    /// Appended since that tick.
    since: AtomicU64,
}

impl Stored {
    fn get(&self) -> u64 {
        self.base.load(Ordering::Acquire).saturating_add(self.since.load(Ordering::Acquire))
    }
}

/// The connections counted per tenant.
#[derive(Debug, Default)]
struct Connections {
    /// Peer address → tenant of the connection's principal.
    by_peer: HashMap<SocketAddr, String>,
    per_tenant: HashMap<String, u32>,
}

/// The broker's quota state: each tenant's limits and rates, its stored
/// bytes and connections on this broker.
pub(crate) struct Quotas {
    max_throttle: Duration,
    clock: TokioClock,
    tenants: RwLock<HashMap<String, Arc<TenantRates>>>,
    stored: RwLock<HashMap<String, Arc<Stored>>>,
    connections: Mutex<Connections>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Quotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quotas").field("max_throttle", &self.max_throttle).finish()
    }
}

impl Quotas {
    pub(crate) fn new(max_throttle: Duration, metrics: Arc<Metrics>) -> Quotas {
        Quotas {
            max_throttle,
            clock: TokioClock { start: tokio::time::Instant::now() },
            tenants: RwLock::new(HashMap::new()),
            stored: RwLock::new(HashMap::new()),
            connections: Mutex::new(Connections::default()),
            metrics,
        }
    }

    /// Follows the catalog: a tenant whose quotas changed gets new limiters
    /// (a full burst), unchanged ones keep theirs; deleted tenants go.
    pub(crate) fn set_limits<'a>(&self, tenants: impl Iterator<Item = (&'a String, &'a TenantQuotas)>) {
        let mut map = write_lock(&self.tenants);
        let mut next = HashMap::new();
        for (name, quotas) in tenants {
            let rates = match map.remove(name) {
                Some(r) if r.quotas == *quotas => r,
                _ => Arc::new(TenantRates::new(*quotas, self.clock)),
            };
            for (q, limit) in quotas.entries() {
                let labels = QuotaLabels { tenant: name.clone(), quota: q.name() };
                match limit {
                    Some(l) => {
                        self.metrics.tenant_quota.get_or_create(&labels).set(l as i64);
                    }
                    None => {
                        self.metrics.tenant_quota.remove(&labels);
                    }
                }
            }
            next.insert(name.clone(), rates);
        }
        for gone in map.keys() {
            for (q, _) in TenantQuotas::default().entries() {
                self.metrics.tenant_quota.remove(&QuotaLabels { tenant: gone.clone(), quota: q.name() });
            }
        }
        *map = next;
    }

    fn rates(&self, tenant: &str) -> Option<Arc<TenantRates>> {
        read_lock(&self.tenants).get(tenant).cloned()
    }

    /// The quotas of `tenant` (unlimited when unknown).
    pub(crate) fn limits(&self, tenant: &str) -> TenantQuotas {
        self.rates(tenant).map(|r| r.quotas).unwrap_or_default()
    }

    fn reject(&self, e: QuotaExceeded) -> QuotaExceeded {
        self.metrics
            .quota_rejections
            .get_or_create(&QuotaLabels { tenant: e.tenant.clone(), quota: e.quota.name() })
            .inc();
        tracing::debug!(tenant = %e.tenant, quota = e.quota.name(), "quota exceeded");
        e
    }

    /// Admits `amount` (bytes, or requests) of a rate quota of `tenant`:
    /// at once, or after a delay of at most `quotas.max_throttle` (the
    /// delay is returned, and counted in the throttle metric); refused when
    /// the rate would need a longer wait.
    pub(crate) async fn admit(&self, tenant: &str, quota: Quota, amount: u64) -> Result<Duration, QuotaExceeded> {
        let Some(rates) = self.rates(tenant) else { return Ok(Duration::ZERO) };
        let Some(rate) = rates.rate(quota) else { return Ok(Duration::ZERO) };
        // What earlier requests left unpaid comes first.
        let owed = rate.owed.load(Ordering::Acquire);
        let total = amount.saturating_add(owed);
        if total == 0 {
            return Ok(Duration::ZERO);
        }
        let cells = rate.cells(total);
        let charged = u64::from(cells.get()).saturating_mul(rate.unit).min(total);
        let mut waited = Duration::ZERO;
        loop {
            match rate.try_take(cells, &self.clock) {
                Ok(()) => {
                    // Paid what was owed (up to the burst); the rest of this
                    // request beyond one second of the rate is owed now.
                    let left = total - charged;
                    let _ = rate.owed.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                        Some(now.saturating_sub(owed).saturating_add(left))
                    });
                    break;
                }
                Err(wait) if waited + wait <= self.max_throttle => {
                    tokio::time::sleep(wait).await;
                    waited += wait;
                }
                Err(wait) => {
                    self.throttled(tenant, quota, waited);
                    return Err(self.reject(QuotaExceeded {
                        tenant: tenant.to_owned(),
                        quota,
                        limit: rate.limit,
                        usage: amount,
                        retry_after: Some(wait),
                    }));
                }
            }
        }
        self.throttled(tenant, quota, waited);
        Ok(waited)
    }

    fn throttled(&self, tenant: &str, quota: Quota, waited: Duration) {
        if !waited.is_zero() {
            self.metrics
                .quota_throttle
                .get_or_create(&QuotaLabels { tenant: tenant.to_owned(), quota: quota.name() })
                .inc_by(waited.as_secs_f64());
        }
    }

    /// Before a consume request: pays the bytes earlier reads of the tenant
    /// owe (throttled or refused like [`Quotas::admit`]).
    pub(crate) async fn admit_consume(&self, tenant: &str) -> Result<Duration, QuotaExceeded> {
        self.admit(tenant, Quota::ConsumeBytesPerSecond, 0).await
    }

    /// After a consume request: records the bytes it returned.
    pub(crate) fn consumed(&self, tenant: &str, bytes: u64) {
        if bytes == 0 {
            return;
        }
        if let Some(rates) = self.rates(tenant)
            && let Some(rate) = &rates.consume
        {
            rate.owed.fetch_add(bytes, Ordering::AcqRel);
        }
    }

    fn stored_of(&self, tenant: &str) -> Arc<Stored> {
        if let Some(s) = read_lock(&self.stored).get(tenant) {
            return s.clone();
        }
        write_lock(&self.stored).entry(tenant.to_owned()).or_default().clone()
    }

    /// Refuses a write while the tenant's stored bytes are at or over its
    /// `max_stored_bytes`.
    pub(crate) fn check_stored(&self, tenant: &str) -> Result<(), QuotaExceeded> {
        let Some(limit) = self.limits(tenant).max_stored_bytes else { return Ok(()) };
        let usage = self.stored_of(tenant).get();
        if usage >= limit {
            return Err(self.reject(QuotaExceeded {
                tenant: tenant.to_owned(),
                quota: Quota::MaxStoredBytes,
                limit,
                usage,
                retry_after: None,
            }));
        }
        Ok(())
    }

    /// Bytes just appended for `tenant`.
    pub(crate) fn add_stored(&self, tenant: &str, bytes: u64) {
        self.stored_of(tenant).since.fetch_add(bytes, Ordering::AcqRel);
    }

    /// The bytes the tenants store on this broker, recomputed from the
    /// partitions' and queues' stats (the maintenance tick).
    pub(crate) fn set_stored(&self, usage: &HashMap<String, u64>) {
        let stored = read_lock(&self.stored).clone();
        for (tenant, s) in &stored {
            s.base.store(usage.get(tenant).copied().unwrap_or(0), Ordering::Release);
            s.since.store(0, Ordering::Release);
        }
        for (tenant, bytes) in usage {
            if !stored.contains_key(tenant) {
                self.stored_of(tenant).base.store(*bytes, Ordering::Release);
            }
        }
        for (tenant, s) in read_lock(&self.stored).iter() {
            self.metrics
                .tenant_usage
                .get_or_create(&crate::metrics::UsageLabels { tenant: tenant.clone(), resource: "stored_bytes" })
                .set(s.get() as i64);
        }
    }

    /// Stored bytes of `tenant` on this broker.
    pub(crate) fn stored(&self, tenant: &str) -> u64 {
        read_lock(&self.stored).get(tenant).map_or(0, |s| s.get())
    }

    /// Whether the connection from `peer` is counted already.
    pub(crate) fn is_registered(&self, peer: SocketAddr) -> bool {
        self.lock_connections().by_peer.contains_key(&peer)
    }

    /// Open connections counted for `tenant` on this broker.
    pub(crate) fn connections(&self, tenant: &str) -> u32 {
        self.lock_connections().per_tenant.get(tenant).copied().unwrap_or(0)
    }

    fn lock_connections(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A call on the connection from `peer`, authenticated for `tenant`
    /// (`None`: the cluster admin, never counted): the connection's first
    /// call registers it, refused when the tenant has `max_connections`
    /// open already.
    pub(crate) fn connection(&self, peer: Option<SocketAddr>, tenant: Option<&str>) -> Result<(), QuotaExceeded> {
        let (Some(peer), Some(tenant)) = (peer, tenant) else { return Ok(()) };
        let tenant = if tenant.is_empty() { DEFAULT_TENANT } else { tenant };
        let mut c = self.lock_connections();
        if c.by_peer.contains_key(&peer) {
            return Ok(());
        }
        let open = c.per_tenant.get(tenant).copied().unwrap_or(0);
        if let Some(limit) = self.limits(tenant).max_connections
            && open >= limit
        {
            drop(c);
            return Err(self.reject(QuotaExceeded {
                tenant: tenant.to_owned(),
                quota: Quota::MaxConnections,
                limit: u64::from(limit),
                usage: u64::from(open),
                retry_after: None,
            }));
        }
        c.by_peer.insert(peer, tenant.to_owned());
        *c.per_tenant.entry(tenant.to_owned()).or_default() += 1;
        self.set_connection_gauge(tenant, open + 1);
        Ok(())
    }

    /// The connection from `peer` closed.
    pub(crate) fn disconnected(&self, peer: SocketAddr) {
        let mut c = self.lock_connections();
        if let Some(tenant) = c.by_peer.remove(&peer) {
            let n = c.per_tenant.entry(tenant.clone()).or_default();
            *n = n.saturating_sub(1);
            let n = *n;
            if n == 0 {
                c.per_tenant.remove(&tenant);
            }
            drop(c);
            self.set_connection_gauge(&tenant, n);
        }
    }

    fn set_connection_gauge(&self, tenant: &str, n: u32) {
        self.metrics
            .tenant_usage
            .get_or_create(&crate::metrics::UsageLabels { tenant: tenant.to_owned(), resource: "connections" })
            .set(i64::from(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(max_throttle_ms: u64, q: TenantQuotas) -> Quotas {
        let quotas = Quotas::new(Duration::from_millis(max_throttle_ms), Arc::new(Metrics::new()));
        let name = "a".to_owned();
        quotas.set_limits([(&name, &q)].into_iter());
        quotas
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_throttles_within_the_max_then_refuses_with_retry_after() {
        let q = quotas(500, TenantQuotas { produce_bytes_per_second: Some(1000), ..Default::default() });
        // One second of burst passes at once.
        assert_eq!(q.admit("a", Quota::ProduceBytesPerSecond, 1000).await.unwrap(), Duration::ZERO);
        // 250 bytes more need 250 ms: delayed, not refused.
        let start = tokio::time::Instant::now();
        let waited = q.admit("a", Quota::ProduceBytesPerSecond, 250).await.unwrap();
        assert!(waited >= Duration::from_millis(249) && waited <= Duration::from_millis(251), "{waited:?}");
        assert_eq!(start.elapsed(), waited, "the delay is real (paused) time");
        // 800 bytes at once now need 800 ms > 500 ms: refused, naming the quota.
        let e = q.admit("a", Quota::ProduceBytesPerSecond, 800).await.unwrap_err();
        assert_eq!(e.quota, Quota::ProduceBytesPerSecond);
        assert_eq!(e.limit, 1000);
        let retry = e.retry_after.unwrap();
        assert!(retry > Duration::from_millis(500) && retry <= Duration::from_millis(800), "{retry:?}");
        // After the advertised wait it passes.
        tokio::time::advance(retry + Duration::from_millis(1)).await;
        assert_eq!(q.admit("a", Quota::ProduceBytesPerSecond, 800).await.unwrap(), Duration::ZERO);
        // Other tenants and other quotas are not limited.
        assert_eq!(q.admit("b", Quota::ProduceBytesPerSecond, 1 << 30).await.unwrap(), Duration::ZERO);
        assert_eq!(q.admit("a", Quota::RequestsPerSecond, 1 << 20).await.unwrap(), Duration::ZERO);
        let m = q.metrics.encode();
        assert!(m.contains(r#"strata_quota_rejections_total{tenant="a",quota="produce_bytes_per_second"} 1"#), "{m}");
        assert!(m.contains(r#"strata_quota_throttle_seconds_total{tenant="a",quota="produce_bytes_per_second"} 0.2"#));
        assert!(m.contains(r#"strata_tenant_quota{tenant="a",quota="produce_bytes_per_second"} 1000"#));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_over_one_second_of_the_rate_is_owed_by_the_next() {
        let q = quotas(1500, TenantQuotas { produce_bytes_per_second: Some(1000), ..Default::default() });
        // 3 s worth at once: one second charged now, two owed.
        assert_eq!(q.admit("a", Quota::ProduceBytesPerSecond, 3000).await.unwrap(), Duration::ZERO);
        // The next tiny request pays 1 s of the debt (and waits for it).
        let waited = q.admit("a", Quota::ProduceBytesPerSecond, 1).await.unwrap();
        assert!(waited >= Duration::from_millis(999), "{waited:?}");
        let waited = q.admit("a", Quota::ProduceBytesPerSecond, 1).await.unwrap();
        assert!(waited >= Duration::from_millis(999), "{waited:?}");
        // Debt paid: 1 byte waits only its own share.
        let waited = q.admit("a", Quota::ProduceBytesPerSecond, 1).await.unwrap();
        assert!(waited <= Duration::from_millis(3), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn consumed_bytes_are_charged_to_the_next_consume_request() {
        let q = quotas(1000, TenantQuotas { consume_bytes_per_second: Some(100), ..Default::default() });
        assert_eq!(q.admit_consume("a").await.unwrap(), Duration::ZERO);
        q.consumed("a", 100); // one full burst
        assert_eq!(q.admit_consume("a").await.unwrap(), Duration::ZERO);
        q.consumed("a", 50);
        let waited = q.admit_consume("a").await.unwrap();
        assert!(waited >= Duration::from_millis(499), "{waited:?}");
        // Owing nothing: no wait.
        assert_eq!(q.admit_consume("a").await.unwrap(), Duration::ZERO);
    }

    #[test]
    fn stored_bytes_refuse_at_the_limit_and_free_when_recomputed() {
        let q = quotas(1000, TenantQuotas { max_stored_bytes: Some(100), ..Default::default() });
        q.check_stored("a").unwrap();
        q.add_stored("a", 60);
        q.check_stored("a").unwrap();
        q.add_stored("a", 40);
        let e = q.check_stored("a").unwrap_err();
        assert_eq!((e.quota, e.limit, e.usage), (Quota::MaxStoredBytes, 100, 100));
        // Retention deleted data: the tick recomputes from the stats.
        q.set_stored(&HashMap::from([("a".to_owned(), 30)]));
        q.check_stored("a").unwrap();
        assert_eq!(q.stored("a"), 30);
    }

    #[test]
    fn connections_are_counted_per_tenant_and_released_on_close() {
        let q = quotas(1000, TenantQuotas { max_connections: Some(1), ..Default::default() });
        let p1: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let p2: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        q.connection(Some(p1), Some("a")).unwrap();
        q.connection(Some(p1), Some("a")).unwrap(); // same connection, later call
        let e = q.connection(Some(p2), Some("a")).unwrap_err();
        assert_eq!((e.quota, e.limit, e.usage), (Quota::MaxConnections, 1, 1));
        q.connection(Some(p2), None).unwrap(); // the cluster admin is never counted
        q.disconnected(p1);
        q.connection(Some(p2), Some("a")).unwrap();
        assert_eq!(q.connections("a"), 1);
    }

    #[test]
    fn quotas_serialize_only_what_is_set_and_zero_rates_are_refused() {
        let q = TenantQuotas { max_topics: Some(3), ..Default::default() };
        assert_eq!(serde_json::to_string(&q).unwrap(), r#"{"max_topics":3}"#);
        assert_eq!(serde_json::from_str::<TenantQuotas>("{}").unwrap(), TenantQuotas::default());
        assert!(TenantQuotas { requests_per_second: Some(0), ..Default::default() }.validate().is_err());
        assert!(TenantQuotas { max_topics: Some(0), ..Default::default() }.validate().is_ok());
    }
}
