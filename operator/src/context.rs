//! What every reconcile shares: the Kubernetes client, the event recorder,
//! the injectable broker address book, metrics, the resync period and the
//! per-object error backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};

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

/// Exponential backoff per object: 1 s, 2 s, 4 s ... capped at `max`,
/// reset by a successful reconcile.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max, failures: Mutex::default() }
    }

    /// Records a failure of `key` and returns how long to wait before retrying.
    pub fn failure(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key.to_owned()).or_insert(0);
        let delay = self.base.saturating_mul(2u32.saturating_pow((*n).min(20))).min(self.max);
        *n = n.saturating_add(1);
        delay
    }

    /// Forgets the failures of `key`.
    pub fn success(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

/// Settings of the controllers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often a healthy resource is reconciled again to catch drift.
    pub resync: Duration,
    /// Backoff of failed reconciles.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            resync: Duration::from_secs(300),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// Shared state of every controller.
pub struct Context {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub brokers: Arc<dyn BrokerDirectory>,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    pub backoff: Backoff,
    connections: tokio::sync::Mutex<HashMap<String, strata_client::Client>>,
}

impl Context {
    pub fn new(
        client: kube::Client,
        brokers: Arc<dyn BrokerDirectory>,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Self {
        let recorder = Recorder::new(client.clone(), Reporter { controller: MANAGER.into(), instance: None });
        let backoff = Backoff::new(settings.backoff_base, settings.backoff_max);
        Context { client, recorder, brokers, metrics, settings, backoff, connections: Default::default() }
    }

    /// A client for the broker cluster `name` in `namespace`; connections
    /// are cached per address (a client is an HTTP/2 channel that reconnects
    /// by itself).
    pub async fn broker(&self, namespace: &str, name: &str) -> Result<strata_client::Client, strata_client::Error> {
        let url = self.brokers.url(namespace, name);
        let mut connections = self.connections.lock().await;
        if let Some(c) = connections.get(&url) {
            return Ok(c.clone());
        }
        let client = strata_client::Client::connect(&url).await?.with_timeout(Duration::from_secs(15));
        connections.insert(url, client.clone());
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
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(object = %obj.name_any(), reason, error = %e, "cannot publish event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        assert_eq!(b.failure("a"), Duration::from_secs(1));
        assert_eq!(b.failure("a"), Duration::from_secs(2));
        assert_eq!(b.failure("a"), Duration::from_secs(4));
        assert_eq!(b.failure("a"), Duration::from_secs(5));
        assert_eq!(b.failure("b"), Duration::from_secs(1));
        b.success("a");
        assert_eq!(b.failure("a"), Duration::from_secs(1));
    }

    #[test]
    fn service_dns_names_the_client_service() {
        assert_eq!(ServiceDns.url("data", "main"), "http://main.data.svc:7070");
    }
}
