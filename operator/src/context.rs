//! What every reconcile shares: the Kubernetes client, the event publisher,
//! the injectable broker address book, metrics, the resync and status
//! refresh periods, the per-object error backoff and the drift memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::{Resource, ResourceExt};
use tokio::time::Instant;

use crate::events::{Note, Publisher};
use crate::metrics::Metrics;

/// Field manager of every server-side apply, and the events' reporter.
pub const MANAGER: &str = "strata-operator";

/// Finds the gRPC address of a `BrokerCluster`. Injectable so that tests
/// can point the operator at a broker on loopback.
pub trait BrokerDirectory: Send + Sync {
    /// The URL `strata-client` connects to for cluster `name` in `namespace`.
    fn url(&self, namespace: &str, name: &str) -> String;
}

/// In a Kubernetes cluster: the client Service's DNS name.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServiceDns;

impl BrokerDirectory for ServiceDns {
    fn url(&self, namespace: &str, name: &str) -> String {
        format!("http://{name}.{namespace}.svc:{}", crate::broker_cluster::GRPC_PORT)
    }
}

impl ServiceDns {
    /// The URL, without going through the trait object.
    pub fn url_for(&self, namespace: &str, name: &str) -> String {
        self.url(namespace, name)
    }
}

/// Every cluster at one address (tests, or an operator run outside the cluster).
#[derive(Debug, Clone)]
pub struct FixedAddress(pub String);

impl BrokerDirectory for FixedAddress {
    fn url(&self, _namespace: &str, _name: &str) -> String {
        self.0.clone()
    }
}

/// How the operator authenticates to one cluster: the cluster-admin token
/// and, with TLS, the CA it trusts and the certificate it presents (mTLS).
/// Read from the cluster's Secrets on each reconcile (`broker_cluster::access`).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Access {
    pub token: Option<String>,
    /// `Some`: the cluster serves TLS (`https://`).
    pub tls: Option<TlsAccess>,
}

/// The TLS side of [`Access`].
#[derive(Clone, PartialEq, Eq, Default)]
pub struct TlsAccess {
    /// PEM CA certificates (the Secret's `ca.crt`); `None`: system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and key (PEM), when the brokers require one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.as_ref().map(|t| (t.ca_pem.is_some(), t.identity.is_some())))
            .finish()
    }
}

impl Access {
    /// `url` with the scheme this access needs (`https://` with TLS).
    pub fn url(&self, url: &str) -> String {
        match (&self.tls, url.strip_prefix("http://")) {
            (Some(_), Some(rest)) => format!("https://{rest}"),
            _ => url.to_owned(),
        }
    }

    fn options(&self) -> strata_client::ConnectOptions {
        let mut o = strata_client::ConnectOptions::new();
        if let Some(t) = &self.token {
            o = o.token(t.clone());
        }
        if let Some(tls) = &self.tls {
            if let Some(ca) = &tls.ca_pem {
                o = o.ca_pem(ca.clone());
            }
            if let Some((cert, key)) = &tls.identity {
                o = o.identity_pem(cert.clone(), key.clone());
            }
        }
        o
    }
}

/// Exponential backoff per object: 1 s, 2 s, 4 s ... capped at `max`,
/// reset by a successful reconcile.
///
/// A failure counts once: a reconcile that fails again before the retry it
/// was given is due (typically the one the operator's own status write
/// triggers) gets the rest of that wait, not a doubled one.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<String, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    retry_at: Instant,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max, failures: Mutex::default() }
    }

    /// Records a failure of `key` and returns how long to wait before retrying.
    pub fn failure(&self, key: &str) -> Duration {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = failures.get(key)
            && f.retry_at > now
        {
            return f.retry_at - now;
        }
        let count = failures.get(key).map_or(0, |f| f.count);
        let delay = self.base.saturating_mul(2u32.saturating_pow(count.min(20))).min(self.max);
        failures.insert(key.to_owned(), Failures { count: count.saturating_add(1), retry_at: now + delay });
        delay
    }

    /// Forgets the failures of `key`.
    pub fn success(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

/// When drift was last reverted, per object: `Drifted` stays `True` for a
/// whole resync period after it, so the reconciles that follow at once (the
/// one the status write triggers, status refreshes, a parent becoming ready)
/// do not clear what the next resync is meant to confirm.
#[derive(Debug, Default)]
pub struct DriftMemory {
    seen: Mutex<HashMap<String, Instant>>,
}

impl DriftMemory {
    /// Drift of `key` was reverted now.
    pub fn record(&self, key: &str) {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).insert(key.to_owned(), Instant::now());
    }

    /// Whether `Drifted` of `key` must stay `True` (drift reverted less than
    /// `hold` ago). Forgets the drift once the hold is over.
    pub fn holds(&self, key: &str, hold: Duration) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get(key) {
            Some(t) if t.elapsed() < hold => true,
            Some(_) => {
                seen.remove(key);
                false
            }
            None => false,
        }
    }
}

/// Settings of the controllers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often a healthy resource is reconciled again to catch drift.
    pub resync: Duration,
    /// How often a ready broker-side resource's observed status (message
    /// counts, lag, depth) is refreshed; at most `resync`.
    pub status_refresh: Duration,
    /// Backoff of failed reconciles.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            resync: Duration::from_secs(300),
            status_refresh: Duration::from_secs(30),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// Shared state of every controller.
pub struct Context {
    pub client: kube::Client,
    pub events: Publisher,
    pub brokers: Arc<dyn BrokerDirectory>,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    pub backoff: Backoff,
    pub drift: DriftMemory,
    /// Per URL: the credentials a client was made with, and the client.
    connections: tokio::sync::Mutex<HashMap<String, (Access, strata_client::Client)>>,
}

impl Context {
    pub fn new(
        client: kube::Client,
        brokers: Arc<dyn BrokerDirectory>,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Self {
        let events = Publisher::new(client.clone(), MANAGER);
        let backoff = Backoff::new(settings.backoff_base, settings.backoff_max);
        Context {
            client,
            events,
            brokers,
            metrics,
            settings,
            backoff,
            drift: DriftMemory::default(),
            connections: Default::default(),
        }
    }

    /// A client for the broker cluster `name` in `namespace`, authenticated
    /// with `access`. Cached per address and credentials (a client is an
    /// HTTP/2 channel that reconnects by itself); changed credentials (a
    /// rotated admin token or CA) replace the cached client.
    pub async fn broker(
        &self,
        namespace: &str,
        name: &str,
        access: &Access,
    ) -> Result<strata_client::Client, strata_client::Error> {
        let url = access.url(&self.brokers.url(namespace, name));
        let mut connections = self.connections.lock().await;
        if let Some((a, c)) = connections.get(&url)
            && a == access
        {
            return Ok(c.clone());
        }
        let client =
            strata_client::Client::connect_with(&url, access.options()).await?.with_timeout(Duration::from_secs(15));
        connections.insert(url, (access.clone(), client.clone()));
        Ok(client)
    }

    /// Publishes an event about `obj`. A failure to publish is logged, never
    /// fatal: events are a report, not state.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let n = Note { warning, reason, action, note };
        if let Err(e) = self.events.publish(&obj.object_ref(&()), n).await {
            tracing::warn!(object = %obj.name_any(), reason, error = %e, "cannot publish event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_once_per_due_retry_caps_and_resets() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        assert_eq!(b.failure("a"), Duration::from_secs(1));
        // Failing again before the retry is due (the reconcile our own status
        // write triggers) is the same failure: the rest of the wait.
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(b.failure("a"), Duration::from_millis(600));
        for want in [2, 4, 5, 5] {
            tokio::time::advance(Duration::from_secs(5)).await;
            assert_eq!(b.failure("a"), Duration::from_secs(want));
        }
        assert_eq!(b.failure("b"), Duration::from_secs(1));
        b.success("a");
        assert_eq!(b.failure("a"), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn drift_is_held_for_a_resync_period() {
        let d = DriftMemory::default();
        let hold = Duration::from_secs(300);
        assert!(!d.holds("t", hold));
        d.record("t");
        tokio::time::advance(Duration::from_secs(299)).await;
        assert!(d.holds("t", hold));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!d.holds("t", hold));
        assert!(!d.holds("t", hold));
    }

    #[test]
    fn service_dns_names_the_client_service() {
        assert_eq!(ServiceDns.url("data", "main"), "http://main.data.svc:7070");
    }
}
