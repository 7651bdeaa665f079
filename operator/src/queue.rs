//! `Queue`: a work queue with its delivery settings and its bindings to
//! topics. The pure builders turn the spec into the broker's queue settings
//! and bindings; dead-letter loops between Queue resources are refused before
//! anything reaches the broker. The reconcile creates the queue, reverts
//! out-of-band setting and binding changes, and reports depth in status.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kube::api::{Api, ListParams};
use kube::{CustomResource, KubeSchema, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use strata_client::{BindingFilter, ErrorCode, QueueConfig, QueueOptions};

use crate::context::Context;
use crate::resource::{Blocked, BrokerResource, ClusterRef, DeletionPolicy, Diffs, Report, force_delete};
use crate::status::{Condition, Reason};

/// A work queue of a tenant on a `BrokerCluster`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "strata.dev",
    version = "v1alpha1",
    kind = "Queue",
    namespaced,
    status = "QueueStatus",
    shortname = "sq",
    printcolumn = r#"{"name":"Visible","type":"integer","jsonPath":".status.visible"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    validation = Rule::new("!has(self.spec.deadLetterQueue) || self.spec.deadLetterQueue != (has(self.spec.queueName) ? self.spec.queueName : self.metadata.name)").message("a queue cannot be its own dead-letter queue")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(self.fifo && has(self.priorities) && self.priorities > 1)").message("a FIFO queue cannot also have priorities"))]
pub struct QueueSpec {
    #[x_kube(validation = Rule::new("self == oldSelf").message("clusterRef is immutable"))]
    pub cluster_ref: ClusterRef,
    #[x_kube(validation = Rule::new("self == oldSelf").message("tenant is immutable"))]
    pub tenant: String,
    /// Name on the broker; defaults to the resource's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("queueName is immutable"))]
    pub queue_name: Option<String>,
    /// How long a received message stays invisible to other consumers (`30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility_timeout: Option<String>,
    /// Deliveries after which a message is dead-lettered; 0 = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliveries: Option<u32>,
    /// Queue (same tenant) receiving messages that exhausted their deliveries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_queue: Option<String>,
    /// Backoff of nacks without a delay: `min * 2^(deliveries-1)`, capped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_backoff: Option<RetryBackoff>,
    /// Default delay before a new message becomes visible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    /// Default time to live of a message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// What happens to expired messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_action: Option<TtlAction>,
    /// Per-group ordering, one in-flight message per group. Fixed at creation.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("fifo is immutable"))]
    pub fifo: bool,
    /// Window in which a repeated dedup id is not enqueued again (`5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_window: Option<String>,
    /// Number of priority levels (1 = none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 255))]
    pub priorities: Option<u32>,
    /// Topics whose messages are routed into this queue.
    #[serde(default)]
    pub bindings: Vec<QueueBinding>,
    /// `Delete` is refused while the queue holds messages unless annotated
    /// `strata.dev/force-delete: "true"`.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// Retry backoff bounds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct RetryBackoff {
    pub min: String,
    pub max: String,
}

/// Expired messages are dropped or dead-lettered.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TtlAction {
    Drop,
    DeadLetter,
}

/// Routes a topic's messages into the queue: by exact key, by key pattern
/// (`*` one word, `#` zero or more), by headers, or all of them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.key) && has(self.pattern))").message("a binding has a key or a pattern, not both"))]
pub struct QueueBinding {
    pub topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// Observed state of a `Queue`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub visible: u64,
    #[serde(default)]
    pub in_flight: u64,
    #[serde(default)]
    pub delayed: u64,
    #[serde(default)]
    pub dead_lettered: u64,
}

crate::resource::common_status!(QueueStatus);

impl Queue {
    /// The queue's name on the broker.
    pub fn broker_name(&self) -> String {
        self.spec.queue_name.clone().unwrap_or_else(|| self.name_any())
    }
}

/// The broker-side settings of a queue, field for field `strata.v1.QueueConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueSettings {
    pub visibility_timeout_ms: Option<i64>,
    pub max_deliveries: Option<u32>,
    pub dead_letter_queue: Option<String>,
    pub retry_backoff_min_ms: Option<i64>,
    pub retry_backoff_max_ms: Option<i64>,
    pub delay_ms: Option<i64>,
    pub ttl_ms: Option<i64>,
    pub ttl_action: Option<TtlAction>,
    pub fifo: bool,
    pub dedup_window_ms: Option<i64>,
    pub priorities: Option<u32>,
}

/// Longest duration any queue setting accepts (a year): beyond it a value is
/// a mistake, not a plan.
const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

fn millis(field: &str, value: Option<&String>) -> Result<Option<i64>, Blocked> {
    let Some(v) = value else { return Ok(None) };
    let d = humantime::parse_duration(v.trim())
        .map_err(|_| Blocked::new(Reason::InvalidSpec, format!("{field}: {v:?} is not a duration (e.g. 30s, 5m)")))?;
    if d > MAX_DURATION {
        return Err(Blocked::new(Reason::InvalidSpec, format!("{field}: {v:?} is longer than a year")));
    }
    Ok(Some(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
}

/// Builds the broker-side settings from the spec. Pure.
pub fn desired_settings(spec: &QueueSpec) -> Result<QueueSettings, Blocked> {
    let (min, max) = match &spec.retry_backoff {
        Some(b) => (millis("spec.retryBackoff.min", Some(&b.min))?, millis("spec.retryBackoff.max", Some(&b.max))?),
        None => (None, None),
    };
    if let (Some(a), Some(b)) = (min, max)
        && a > b
    {
        return Err(Blocked::new(Reason::InvalidSpec, "spec.retryBackoff: min is larger than max"));
    }
    if spec.fifo && spec.priorities.is_some_and(|p| p > 1) {
        return Err(Blocked::new(
            Reason::InvalidSpec,
            "spec.priorities: a FIFO queue keeps order per group and cannot also have priorities",
        ));
    }
    if spec.ttl_action == Some(TtlAction::DeadLetter) && spec.dead_letter_queue.is_none() {
        return Err(Blocked::new(Reason::InvalidSpec, "spec.ttlAction DeadLetter needs spec.deadLetterQueue"));
    }
    if let Some(p) = spec.priorities
        && !(1..=255).contains(&p)
    {
        return Err(Blocked::new(Reason::InvalidSpec, format!("spec.priorities: {p} is not in 1..=255")));
    }
    for (i, b) in spec.bindings.iter().enumerate() {
        if b.key.is_some() && b.pattern.is_some() {
            return Err(Blocked::new(
                Reason::InvalidSpec,
                format!("spec.bindings[{i}]: key and pattern are exclusive"),
            ));
        }
        if let Some(p) = &b.pattern
            && p.split('.').any(|w| w.is_empty() || (w.len() > 1 && (w.contains('*') || w.contains('#'))))
        {
            return Err(Blocked::new(
                Reason::InvalidSpec,
                format!("spec.bindings[{i}].pattern {p:?}: words are dot-separated; `*` and `#` stand alone"),
            ));
        }
    }
    Ok(QueueSettings {
        visibility_timeout_ms: millis("spec.visibilityTimeout", spec.visibility_timeout.as_ref())?,
        max_deliveries: spec.max_deliveries,
        dead_letter_queue: spec.dead_letter_queue.clone(),
        retry_backoff_min_ms: min,
        retry_backoff_max_ms: max,
        delay_ms: millis("spec.delay", spec.delay.as_ref())?,
        ttl_ms: millis("spec.ttl", spec.ttl.as_ref())?,
        ttl_action: spec.ttl_action,
        fifo: spec.fifo,
        dedup_window_ms: millis("spec.dedupWindow", spec.dedup_window.as_ref())?,
        priorities: spec.priorities,
    })
}

fn unknown_queue(e: &strata_client::Error) -> bool {
    matches!(e, strata_client::Error::Server(s) if s.error_code == ErrorCode::UnknownQueue)
}

fn duration(ms: Option<i64>) -> Option<Duration> {
    ms.map(|m| Duration::from_millis(u64::try_from(m).unwrap_or(0)))
}

/// The client's queue options for the spec. Pure.
pub fn desired_options(spec: &QueueSpec) -> Result<QueueOptions, Blocked> {
    let s = desired_settings(spec)?;
    Ok(QueueOptions {
        visibility_timeout: duration(s.visibility_timeout_ms),
        max_deliveries: s.max_deliveries,
        dead_letter_queue: s.dead_letter_queue,
        retry_backoff: match (s.retry_backoff_min_ms, s.retry_backoff_max_ms) {
            (Some(a), Some(b)) => Some((duration(Some(a)).unwrap_or_default(), duration(Some(b)).unwrap_or_default())),
            _ => None,
        },
        delay: duration(s.delay_ms),
        ttl: duration(s.ttl_ms),
        ttl_action: s.ttl_action.map(|a| match a {
            TtlAction::Drop => strata_client::TtlAction::Drop,
            TtlAction::DeadLetter => strata_client::TtlAction::DeadLetter,
        }),
        fifo: Some(s.fifo),
        dedup_window: duration(s.dedup_window_ms),
        priorities: s.priorities,
        durability: None,
    })
}

/// The bindings the spec asks for, as `(topic, filter)`. Pure.
pub fn desired_bindings(spec: &QueueSpec) -> Vec<(String, BindingFilter)> {
    spec.bindings
        .iter()
        .map(|b| {
            (
                b.topic.clone(),
                BindingFilter { key: b.key.clone(), pattern: b.pattern.clone(), headers: b.headers.clone() },
            )
        })
        .collect()
}

/// The settings in `want` that `actual` does not match, and the update that
/// corrects them. `fifo` is not here: it cannot change. Pure.
pub fn differences(want: &QueueOptions, actual: &QueueConfig) -> (Vec<String>, QueueOptions) {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let mut diffs = Diffs::default();
    let mut fix = QueueOptions::default();
    let mut check = |name: &str, want: Option<i64>, have: Option<i64>| diffs.check(name, want, have);
    if check("visibility_timeout_ms", want.visibility_timeout.map(ms), actual.visibility_timeout_ms) {
        fix.visibility_timeout = want.visibility_timeout;
    }
    if check("max_deliveries", want.max_deliveries.map(i64::from), actual.max_deliveries.map(i64::from)) {
        fix.max_deliveries = want.max_deliveries;
    }
    let min_differs =
        check("retry_backoff_min_ms", want.retry_backoff.map(|(a, _)| ms(a)), actual.retry_backoff_min_ms);
    let max_differs =
        check("retry_backoff_max_ms", want.retry_backoff.map(|(_, b)| ms(b)), actual.retry_backoff_max_ms);
    if min_differs || max_differs {
        fix.retry_backoff = want.retry_backoff;
    }
    if check("delay_ms", want.delay.map(ms), actual.delay_ms) {
        fix.delay = want.delay;
    }
    if check("ttl_ms", want.ttl.map(ms), actual.ttl_ms) {
        fix.ttl = want.ttl;
    }
    if check("ttl_action", want.ttl_action.map(|a| i64::from(a as i32)), Some(i64::from(actual.ttl_action))) {
        fix.ttl_action = want.ttl_action;
    }
    if check("dedup_window_ms", want.dedup_window.map(ms), actual.dedup_window_ms) {
        fix.dedup_window = want.dedup_window;
    }
    if check("priorities", want.priorities.map(i64::from), actual.priorities.map(i64::from)) {
        fix.priorities = want.priorities;
    }
    let have_dlq = actual.dead_letter_queue.clone().unwrap_or_default();
    if let Some(dlq) = &want.dead_letter_queue
        && *dlq != have_dlq
    {
        diffs.0.push(format!("dead_letter_queue {have_dlq:?} -> {dlq:?}"));
        fix.dead_letter_queue = Some(dlq.clone());
    }
    (diffs.0, fix)
}

/// Follows dead-letter links from `start` through `links` (queue → its
/// dead-letter queue); returns the loop when one is reached. Pure.
pub fn dead_letter_loop(start: &str, links: &HashMap<String, String>) -> Option<Vec<String>> {
    let mut path = vec![start.to_owned()];
    let mut current = start;
    while let Some(next) = links.get(current) {
        if let Some(pos) = path.iter().position(|p| p == next) {
            let mut cycle = path[pos..].to_vec();
            cycle.push(next.clone());
            return Some(cycle);
        }
        path.push(next.clone());
        current = next;
    }
    None
}

impl BrokerResource for Queue {
    const KIND: &'static str = "Queue";
    type Status = QueueStatus;

    crate::resource::tenant_scoped!();

    async fn sync(
        &self,
        broker: &strata_client::Client,
        status: &mut QueueStatus,
        ctx: &Context,
    ) -> Result<Report, Blocked> {
        let want = desired_options(&self.spec)?;
        // Dead-letter loops across Queue resources of the same tenant.
        let ns = self.namespace().unwrap_or_default();
        let api: Api<Queue> = Api::namespaced(ctx.client.clone(), &ns);
        let queues = api
            .list(&ListParams::default())
            .await
            .map_err(|e| Blocked::new(Reason::BrokerUnavailable, format!("cannot list Queues in {ns}: {e}")))?;
        let links: HashMap<String, String> = queues
            .items
            .iter()
            .filter(|q| q.spec.tenant == self.spec.tenant && q.spec.cluster_ref == self.spec.cluster_ref)
            .filter_map(|q| q.spec.dead_letter_queue.clone().map(|d| (q.broker_name(), d)))
            .collect();
        if let Some(cycle) = dead_letter_loop(&self.broker_name(), &links) {
            return Err(Blocked::new(
                Reason::DeadLetterLoop,
                format!("dead-letter queues form a loop: {}", cycle.join(" -> ")),
            ));
        }

        let name = self.broker_name();
        let was_in_sync = status.observed_generation == self.metadata.generation
            && crate::status::is_true(&status.conditions, crate::status::READY);
        let mut report = Report::default();
        // A dead-letter queue applied later is something to wait for, not
        // an invalid spec (the broker answers both with INVALID_CONFIG).
        if let Some(dlq) = &self.spec.dead_letter_queue {
            match broker.describe_queue(dlq).await {
                Ok(_) => {}
                Err(e) if unknown_queue(&e) => {
                    return Err(Blocked::new(
                        Reason::DeadLetterQueueNotReady,
                        format!("dead-letter queue {dlq} does not exist yet; waiting for it"),
                    ));
                }
                Err(e) => return Err(Blocked::from_client(&format!("describe dead-letter queue {dlq}"), &e)),
            }
        }
        let desc = match broker.describe_queue(&name).await {
            Ok(d) => d,
            Err(e) if unknown_queue(&e) => {
                let d = broker
                    .create_queue(&name, want.clone())
                    .await
                    .map_err(|e| Blocked::from_client(&format!("create queue {name}"), &e))?;
                report.changes.push(format!("created queue {name}"));
                d
            }
            Err(e) => return Err(Blocked::from_client(&format!("describe queue {name}"), &e)),
        };
        let actual = desc.config.clone().unwrap_or_default();
        if actual.fifo.is_some_and(|f| f != self.spec.fifo) {
            return Err(Blocked::new(
                Reason::InvalidSpec,
                format!("queue {name} has fifo={} on the broker; fifo is fixed at creation", !self.spec.fifo),
            ));
        }
        let bindings = desc.bindings.clone();
        let (diffs, fix) = differences(&want, &actual);
        if !diffs.is_empty() {
            broker
                .update_queue(&name, fix)
                .await
                .map_err(|e| Blocked::from_client(&format!("update queue {name}"), &e))?;
            let what = format!("queue {name}: {}", diffs.join(", "));
            if was_in_sync { report.drift.push(what) } else { report.changes.push(what) }
        }
        // Bindings: the spec's list is the whole truth.
        let wanted = desired_bindings(&self.spec);
        let present: Vec<(String, BindingFilter)> = bindings
            .iter()
            .map(|b| (b.topic.clone(), b.filter.clone().map(BindingFilter::from).unwrap_or_default()))
            .collect();
        // Missing bindings are added first, then stray ones removed.
        let added = wanted.iter().filter(|w| !present.contains(w)).map(|b| (b, true));
        let removed = present.iter().filter(|p| !wanted.contains(p)).map(|b| (b, false));
        for ((topic, filter), add) in added.chain(removed) {
            let (result, doing, done) = if add {
                let r = broker.bind(&name, topic, filter.clone()).await.map(drop);
                (r, format!("bind queue {name} to topic {topic}"), "added")
            } else {
                let r = broker.unbind(&name, topic, filter.clone()).await;
                (r, format!("unbind queue {name} from topic {topic}"), "removed")
            };
            result.map_err(|e| Blocked::from_client(&doing, &e))?;
            let what = format!("queue {name}: binding to {topic} ({filter}) {done}");
            if was_in_sync { report.drift.push(what) } else { report.changes.push(what) }
        }
        let stats = desc.stats.unwrap_or_default();
        status.visible = stats.visible;
        status.in_flight = stats.in_flight;
        status.delayed = stats.delayed;
        status.dead_lettered = stats.dead_lettered;
        Ok(report)
    }

    async fn delete(&self, broker: &strata_client::Client, _ctx: &Context) -> Result<(), Blocked> {
        let name = self.broker_name();
        match broker.delete_queue(&name, !force_delete(self)).await {
            Ok(()) => Ok(()),
            Err(e) if unknown_queue(&e) => Ok(()),
            Err(strata_client::Error::Server(s)) if s.error_code == ErrorCode::QueueNotEmpty => Err(Blocked::new(
                Reason::DeletionBlocked,
                format!(
                    "queue {name} still holds messages ({}); annotate strata.dev/force-delete=\"true\" to delete it anyway, or set deletionPolicy: Retain",
                    s.message
                ),
            )),
            Err(e) => Err(Blocked::from_client(&format!("delete queue {name}"), &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn spec() -> QueueSpec {
        QueueSpec {
            cluster_ref: ClusterRef { name: "main".into(), namespace: None },
            tenant: "default".into(),
            queue_name: None,
            visibility_timeout: Some("30s".into()),
            max_deliveries: Some(5),
            dead_letter_queue: Some("jobs-dlq".into()),
            retry_backoff: Some(RetryBackoff { min: "1s".into(), max: "60s".into() }),
            delay: None,
            ttl: Some("1d".into()),
            ttl_action: Some(TtlAction::DeadLetter),
            fifo: true,
            dedup_window: Some("5m".into()),
            priorities: None,
            bindings: vec![QueueBinding {
                topic: "orders".into(),
                key: None,
                pattern: Some("eu.*.#".into()),
                headers: BTreeMap::new(),
            }],
            deletion_policy: DeletionPolicy::Delete,
        }
    }

    #[test]
    fn settings_follow_the_spec() {
        let s = desired_settings(&spec()).unwrap();
        assert_eq!(s.visibility_timeout_ms, Some(30_000));
        assert_eq!((s.retry_backoff_min_ms, s.retry_backoff_max_ms), (Some(1_000), Some(60_000)));
        assert_eq!(s.ttl_ms, Some(86_400_000));
        assert_eq!(s.dedup_window_ms, Some(300_000));
        assert!(s.fifo);
        assert_eq!(s.priorities, None);
    }

    #[test]
    fn bad_settings_are_precise() {
        let mut s = spec();
        s.visibility_timeout = Some("soon".into());
        assert!(desired_settings(&s).unwrap_err().message.contains("spec.visibilityTimeout"));
        let mut s = spec();
        s.retry_backoff = Some(RetryBackoff { min: "10s".into(), max: "1s".into() });
        assert!(desired_settings(&s).unwrap_err().message.contains("min is larger"));
        let mut s = spec();
        s.dead_letter_queue = None;
        assert!(desired_settings(&s).unwrap_err().message.contains("ttlAction"));
        let mut s = spec();
        s.bindings[0].pattern = Some("eu.a*".into());
        assert!(desired_settings(&s).unwrap_err().message.contains("bindings[0]"));
        let mut s = spec();
        s.ttl = Some("100years".into());
        assert!(desired_settings(&s).unwrap_err().message.contains("longer than a year"));
        let mut s = spec();
        s.priorities = Some(10);
        assert!(desired_settings(&s).unwrap_err().message.contains("cannot also have priorities"));
    }

    #[test]
    fn queue_differences_name_the_changed_settings() {
        let want = desired_options(&spec()).unwrap();
        let actual = QueueConfig {
            visibility_timeout_ms: Some(5000),
            max_deliveries: Some(5),
            dead_letter_queue: Some("jobs-dlq".into()),
            retry_backoff_min_ms: Some(1000),
            retry_backoff_max_ms: Some(60_000),
            delay_ms: Some(0),
            ttl_ms: Some(86_400_000),
            ttl_action: strata_client::TtlAction::DeadLetter as i32,
            fifo: Some(true),
            dedup_window_ms: Some(300_000),
            priorities: Some(1),
            durability: 0,
        };
        let (diffs, fix) = differences(&want, &actual);
        assert_eq!(diffs, vec!["visibility_timeout_ms 5000 -> 30000".to_owned()]);
        assert_eq!(fix, QueueOptions { visibility_timeout: Some(Duration::from_secs(30)), ..QueueOptions::default() });
        let (none, _) = differences(&want, &QueueConfig { visibility_timeout_ms: Some(30_000), ..actual });
        assert!(none.is_empty(), "{none:?}");
    }

    #[test]
    fn dead_letter_loops_are_found() {
        let links: HashMap<String, String> = [("a", "b"), ("b", "c"), ("c", "a"), ("x", "y")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(dead_letter_loop("a", &links), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
        assert_eq!(dead_letter_loop("x", &links), None);
        let selfie: HashMap<String, String> = [("q".to_owned(), "q".to_owned())].into();
        assert_eq!(dead_letter_loop("q", &selfie), Some(vec!["q".into(), "q".into()]));
    }
}
