//! Prometheus metrics of the operator: reconciles and their failures per
//! kind (with a bounded `error` label), reconcile duration histograms and
//! whether this replica leads.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::Error;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    kind: String,
    error: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// The operator's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("strata_operator");
        let reconciles = Family::<KindLabels, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let duration = Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciles run, per kind", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciles that failed with an error, per kind and error",
            failures.clone(),
        );
        registry.register("reconcile_duration_seconds", "Duration of reconciles, per kind", duration.clone());
        registry.register("leader", "1 while this replica holds the leader lease", leader.clone());
        Metrics { registry, reconciles, failures, duration, leader }
    }

    /// Records one reconcile of `kind`.
    pub fn observe(&self, kind: &str, took: Duration, error: Option<&Error>) {
        let labels = KindLabels { kind: kind.to_owned() };
        self.reconciles.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(took.as_secs_f64());
        if let Some(e) = error {
            self.failures.get_or_create(&FailureLabels { kind: kind.to_owned(), error: e.label().to_owned() }).inc();
        }
    }

    /// Sets the leader gauge.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_and_failures_are_counted_with_labels() {
        let m = Metrics::new();
        m.observe("Topic", Duration::from_millis(20), None);
        m.observe("Topic", Duration::from_millis(20), Some(&Error::Lease("x".into())));
        m.set_leader(true);
        let text = m.encode();
        assert!(text.contains("strata_operator_reconciles_total{kind=\"Topic\"} 2"), "{text}");
        assert!(text.contains("strata_operator_reconcile_failures_total{kind=\"Topic\",error=\"lease\"} 1"), "{text}");
        assert!(text.contains("strata_operator_reconcile_duration_seconds_count{kind=\"Topic\"} 2"), "{text}");
        assert!(text.contains("strata_operator_leader 1"), "{text}");
    }
}
