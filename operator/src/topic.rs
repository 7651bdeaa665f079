//! `Topic`: a partitioned log on the brokers. The reconcile creates it,
//! grows its partitions (never shrinks them), keeps its retention, segment
//! and durability settings as the spec says and reverts out-of-band changes.

use kube::{CustomResource, KubeSchema, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use strata_client::{ErrorCode, Retention, TopicConfig, TopicOptions};

use crate::broker_cluster::Durability;
use crate::context::Context;
use crate::resource::{Blocked, BrokerResource, ClusterRef, DeletionPolicy, Diffs, Report, force_delete};
use crate::status::{self, Condition, Reason};

/// A topic of a tenant on a `BrokerCluster`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "strata.dev",
    version = "v1alpha1",
    kind = "Topic",
    namespaced,
    status = "TopicStatus",
    shortname = "stp",
    printcolumn = r#"{"name":"Partitions","type":"integer","jsonPath":".spec.partitions"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.localRetentionBytes) || self.localRetentionBytes == -1 || !has(self.retentionBytes) || self.retentionBytes == -1 || self.localRetentionBytes <= self.retentionBytes").message("localRetentionBytes must be at most retentionBytes (the local copy is part of the total)"))]
#[x_kube(validation = Rule::new("!has(self.localRetention) || !has(self.retention) || self.retention == 'infinite' || self.localRetention != 'infinite'").message("localRetention cannot be infinite when retention is not"))]
pub struct TopicSpec {
    /// The cluster hosting the topic.
    #[x_kube(validation = Rule::new("self == oldSelf").message("clusterRef is immutable"))]
    pub cluster_ref: ClusterRef,
    /// The tenant owning the topic (a `Tenant` in the cluster's namespace).
    #[x_kube(validation = Rule::new("self == oldSelf").message("tenant is immutable"))]
    pub tenant: String,
    /// Name on the broker; defaults to the resource's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("topicName is immutable"))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9._-]{1,249}$') && self != '.' && self != '..'").message("topic names are 1-249 of A-Z a-z 0-9 . _ -"))]
    pub topic_name: Option<String>,
    /// Number of partitions: may grow, never shrink.
    #[schemars(range(min = 1, max = 10000))]
    #[x_kube(validation = Rule::new("self >= oldSelf").message("partitions can grow but never shrink"))]
    pub partitions: u32,
    /// Total retention by age (`7d`, `12h`) or `infinite`; unset: the cluster default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
    /// Total retention by size per partition in bytes; `-1` means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1))]
    pub retention_bytes: Option<i64>,
    /// Roll the active segment at this size, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024))]
    pub segment_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability: Option<Durability>,
    /// Tiered storage: how long data stays on the brokers' disks (`1d`);
    /// older data is uploaded to the cluster's cold store (`spec.tier` of the
    /// BrokerCluster) and read back from there. At most `retention`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_retention: Option<String>,
    /// Tiered storage: local bytes kept per partition; `-1`: as many as the
    /// total retention keeps. At most `retentionBytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1))]
    pub local_retention_bytes: Option<i64>,
    /// Copies of each partition on distinct brokers (a produce is
    /// acknowledged once a majority has it durable); unset: the cluster's
    /// default, min(3, brokers). Fixed when the topic is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 7))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("replicationFactor is fixed when the topic is created"))]
    pub replication_factor: Option<u32>,
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// Offsets of one partition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PartitionStatus {
    pub partition: u32,
    pub start_offset: u64,
    pub end_offset: u64,
    /// Local disk holds `[localStartOffset, endOffset)`.
    #[serde(default)]
    pub local_start_offset: u64,
    #[serde(default)]
    pub local_size_bytes: u64,
    /// The cold tier holds `[remoteStartOffset, remoteEndOffset)` (empty
    /// when equal); it overlaps the local range until local copies expire.
    #[serde(default)]
    pub remote_start_offset: u64,
    #[serde(default)]
    pub remote_end_offset: u64,
    #[serde(default)]
    pub remote_size_bytes: u64,
}

/// Observed state of a `Topic`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TopicStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The broker's id of the topic (changes if it is deleted and recreated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_id: Option<String>,
    #[serde(default)]
    pub partitions: u32,
    #[serde(default)]
    pub partition_offsets: Vec<PartitionStatus>,
    /// Messages stored (sum of end - start offsets).
    #[serde(default)]
    pub messages: u64,
}

crate::resource::common_status!(TopicStatus);

impl Topic {
    /// The topic's name on the broker.
    pub fn broker_name(&self) -> String {
        self.spec.topic_name.clone().unwrap_or_else(|| self.name_any())
    }
}

/// Parses a retention: a duration or `infinite`.
pub fn parse_retention(s: &str) -> Result<Retention, String> {
    let s = s.trim();
    if s == "infinite" {
        return Ok(Retention::Infinite);
    }
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(Retention::Time(d)),
        _ => Err(format!("{s:?} is not a positive duration (e.g. 7d, 12h) or \"infinite\"")),
    }
}

/// The settings the spec asks for. Pure; unset fields stay `None` (the
/// broker default, and not checked for drift).
pub fn desired_options(spec: &TopicSpec) -> Result<TopicOptions, Blocked> {
    let retention = match &spec.retention {
        Some(r) => {
            Some(parse_retention(r).map_err(|m| Blocked::new(Reason::InvalidSpec, format!("spec.retention: {m}")))?)
        }
        None => None,
    };
    if spec.retention_bytes.is_some_and(|b| b < -1) {
        return Err(Blocked::new(Reason::InvalidSpec, "spec.retentionBytes: must be -1 (no limit) or positive"));
    }
    let local_retention = match &spec.local_retention {
        Some(r) => Some(
            parse_retention(r).map_err(|m| Blocked::new(Reason::InvalidSpec, format!("spec.localRetention: {m}")))?,
        ),
        None => None,
    };
    if let (Some(Retention::Time(local)), Some(Retention::Time(total))) = (local_retention, retention)
        && local > total
    {
        return Err(Blocked::new(
            Reason::InvalidSpec,
            format!(
                "spec.localRetention ({}) is longer than spec.retention ({}); the local copy is part of the total",
                spec.local_retention.as_deref().unwrap_or_default().trim(),
                spec.retention.as_deref().unwrap_or_default().trim()
            ),
        ));
    }
    if let (Some(Retention::Infinite), Some(Retention::Time(_))) = (local_retention, retention) {
        return Err(Blocked::new(Reason::InvalidSpec, "spec.localRetention: infinite, but spec.retention is not"));
    }
    if spec.local_retention_bytes.is_some_and(|b| b < -1) {
        return Err(Blocked::new(Reason::InvalidSpec, "spec.localRetentionBytes: must be -1 (no limit) or positive"));
    }
    if let (Some(local), Some(total)) = (spec.local_retention_bytes, spec.retention_bytes)
        && local > total
        && total != -1
    {
        return Err(Blocked::new(
            Reason::InvalidSpec,
            format!("spec.localRetentionBytes ({local}) is larger than spec.retentionBytes ({total})"),
        ));
    }
    Ok(TopicOptions {
        retention,
        retention_bytes: spec.retention_bytes,
        segment_bytes: spec.segment_bytes,
        durability: spec.durability.map(|d| match d {
            Durability::Fsync => strata_client::Durability::Fsync,
            Durability::None => strata_client::Durability::None,
        }),
        local_retention,
        local_retention_bytes: spec.local_retention_bytes,
        replication_factor: spec.replication_factor,
    })
}

/// The settings in `want` that `actual` does not match, as
/// `(description, correction)`. Pure.
pub fn differences(want: &TopicOptions, actual: &TopicConfig) -> (Vec<String>, TopicOptions) {
    let mut diffs = Diffs::default();
    let mut fix = TopicOptions::default();
    if diffs.check("retention_ms", want.retention.map(retention_ms), actual.retention_ms) {
        fix.retention = want.retention;
    }
    if diffs.check("retention_bytes", want.retention_bytes, actual.retention_bytes) {
        fix.retention_bytes = want.retention_bytes;
    }
    if diffs.check("segment_bytes", want.segment_bytes, actual.segment_bytes) {
        fix.segment_bytes = want.segment_bytes;
    }
    if diffs.check("local_retention_ms", want.local_retention.map(retention_ms), actual.local_retention_ms) {
        fix.local_retention = want.local_retention;
    }
    if diffs.check("local_retention_bytes", want.local_retention_bytes, actual.local_retention_bytes) {
        fix.local_retention_bytes = want.local_retention_bytes;
    }
    if let Some(d) = want.durability
        && actual.durability != d as i32
    {
        diffs.0.push(format!("durability {} -> {}", actual.durability, d.as_str_name()));
        fix.durability = Some(d);
    }
    (diffs.0, fix)
}

/// A retention as the broker states it: milliseconds, `-1` for infinite.
fn retention_ms(r: Retention) -> i64 {
    match r {
        Retention::Infinite => -1,
        Retention::Time(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
    }
}

fn unknown_topic(e: &strata_client::Error) -> bool {
    matches!(e, strata_client::Error::Server(s) if s.error_code == ErrorCode::UnknownTopic)
}

/// Whether the last successful reconcile already saw this generation: then a
/// difference on the broker is drift, not a spec change.
fn in_sync_before(status: &TopicStatus, generation: Option<i64>) -> bool {
    status.observed_generation == generation && status::is_true(&status.conditions, status::READY)
}

impl BrokerResource for Topic {
    const KIND: &'static str = "Topic";
    type Status = TopicStatus;

    crate::resource::tenant_scoped!();

    async fn sync(
        &self,
        broker: &strata_client::Client,
        status: &mut TopicStatus,
        _ctx: &Context,
    ) -> Result<Report, Blocked> {
        let name = self.broker_name();
        let want = desired_options(&self.spec)?;
        let was_in_sync = in_sync_before(status, self.metadata.generation);
        let mut report = Report::default();
        let desc = match broker.describe_topic(&name).await {
            Ok(d) => d,
            Err(e) if unknown_topic(&e) => {
                let d = broker
                    .create_topic(&name, self.spec.partitions, want.clone())
                    .await
                    .map_err(|e| Blocked::from_client(&format!("create topic {name}"), &e))?;
                if status.topic_id.is_some() && was_in_sync {
                    report.drift.push(format!("topic {name} was deleted on the broker and was created again"));
                } else {
                    report.changes.push(format!("created topic {name} with {} partitions", self.spec.partitions));
                }
                d
            }
            Err(e) => return Err(Blocked::from_client(&format!("describe topic {name}"), &e)),
        };
        let mut desc = desc;
        if self.spec.partitions < desc.partitions {
            return Err(Blocked::new(
                Reason::PartitionDecreaseRefused,
                format!(
                    "spec.partitions is {} but topic {name} has {} partitions; partitions never shrink (set it to {} or more)",
                    self.spec.partitions, desc.partitions, desc.partitions
                ),
            ));
        }
        if self.spec.partitions > desc.partitions {
            let from = desc.partitions;
            desc = broker
                .add_partitions(&name, self.spec.partitions)
                .await
                .map_err(|e| Blocked::from_client(&format!("add partitions to {name}"), &e))?;
            report.changes.push(format!("partitions {from} -> {}", self.spec.partitions));
        }
        let actual = desc.config.unwrap_or_default();
        let (diffs, fix) = differences(&want, &actual);
        if !diffs.is_empty() {
            desc = broker
                .update_topic(&name, fix)
                .await
                .map_err(|e| Blocked::from_client(&format!("update topic {name}"), &e))?;
            let what = format!("topic {name}: {}", diffs.join(", "));
            if was_in_sync { report.drift.push(what) } else { report.changes.push(what) }
        }
        status.topic_id = Some(desc.topic_id.clone());
        status.partitions = desc.partitions;
        status.partition_offsets = desc
            .partition_details
            .iter()
            .map(|p| PartitionStatus {
                partition: p.partition,
                start_offset: p.start_offset,
                end_offset: p.end_offset,
                local_start_offset: p.local_start_offset,
                local_size_bytes: p.local_size_bytes,
                remote_start_offset: p.remote_start_offset,
                remote_end_offset: p.remote_end_offset,
                remote_size_bytes: p.remote_size_bytes,
            })
            .collect();
        status.messages = desc.partition_details.iter().map(|p| p.end_offset.saturating_sub(p.start_offset)).sum();
        Ok(report)
    }

    async fn delete(&self, broker: &strata_client::Client, _ctx: &Context) -> Result<(), Blocked> {
        let name = self.broker_name();
        let desc = match broker.describe_topic(&name).await {
            Ok(d) => d,
            Err(e) if unknown_topic(&e) => return Ok(()),
            Err(e) => return Err(Blocked::from_client(&format!("describe topic {name}"), &e)),
        };
        let messages: u64 = desc.partition_details.iter().map(|p| p.end_offset.saturating_sub(p.start_offset)).sum();
        if messages > 0 && !force_delete(self) {
            return Err(Blocked::new(
                Reason::DeletionBlocked,
                format!(
                    "topic {name} still holds {messages} messages; annotate strata.dev/force-delete=\"true\" to delete it anyway, or set deletionPolicy: Retain"
                ),
            ));
        }
        match broker.delete_topic(&name).await {
            Ok(()) => Ok(()),
            Err(e) if unknown_topic(&e) => Ok(()),
            Err(e) => Err(Blocked::from_client(&format!("delete topic {name}"), &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn spec() -> TopicSpec {
        TopicSpec {
            cluster_ref: ClusterRef { name: "main".into(), namespace: None },
            tenant: "default".into(),
            topic_name: None,
            partitions: 3,
            retention: Some("7d".into()),
            retention_bytes: None,
            segment_bytes: Some(1 << 20),
            durability: Some(Durability::Fsync),
            local_retention: None,
            local_retention_bytes: None,
            replication_factor: None,
            deletion_policy: DeletionPolicy::Delete,
        }
    }

    #[test]
    fn local_retention_is_tiered_and_at_most_the_total() {
        let mut s = spec();
        s.local_retention = Some("1d".into());
        s.retention_bytes = Some(1 << 30);
        s.local_retention_bytes = Some(1 << 20);
        let o = desired_options(&s).unwrap();
        assert_eq!(o.local_retention, Some(Retention::Time(DAY)));
        assert_eq!(o.local_retention_bytes, Some(1 << 20));
        let (diffs, fix) = differences(&o, &TopicConfig { local_retention_ms: Some(-1), ..TopicConfig::default() });
        assert!(diffs.contains(&"local_retention_ms -1 -> 86400000".to_owned()), "{diffs:?}");
        assert_eq!(fix.local_retention, Some(Retention::Time(DAY)));

        s.local_retention = Some("30d".into());
        let b = desired_options(&s).unwrap_err();
        assert_eq!(b.reason, Reason::InvalidSpec);
        assert!(b.message.contains("spec.localRetention (30d) is longer than spec.retention (7d)"), "{}", b.message);
        s.local_retention = Some("infinite".into());
        assert_eq!(desired_options(&s).unwrap_err().reason, Reason::InvalidSpec);
        s.local_retention = None;
        s.local_retention_bytes = Some(2 << 30);
        assert!(desired_options(&s).unwrap_err().message.contains("spec.localRetentionBytes"));
    }

    #[test]
    fn desired_options_follow_the_spec() {
        let o = desired_options(&spec()).unwrap();
        assert_eq!(o.retention, Some(Retention::Time(7 * DAY)));
        assert_eq!(o.segment_bytes, Some(1 << 20));
        assert_eq!(o.durability, Some(strata_client::Durability::Fsync));
        let mut s = spec();
        s.retention = Some("infinite".into());
        assert_eq!(desired_options(&s).unwrap().retention, Some(Retention::Infinite));
    }

    #[test]
    fn invalid_retention_is_a_precise_invalid_spec() {
        let mut s = spec();
        s.retention = Some("a fortnight".into());
        let b = desired_options(&s).unwrap_err();
        assert_eq!(b.reason, Reason::InvalidSpec);
        assert!(b.message.contains("spec.retention") && b.message.contains("a fortnight"), "{}", b.message);
        s.retention = Some("0s".into());
        assert_eq!(desired_options(&s).unwrap_err().reason, Reason::InvalidSpec);
    }

    #[test]
    fn differences_name_only_the_fields_that_differ() {
        let want = desired_options(&spec()).unwrap();
        let actual = TopicConfig {
            retention_ms: Some(3_600_000),
            segment_bytes: Some(1 << 20),
            durability: strata_client::Durability::Fsync as i32,
            ..TopicConfig::default()
        };
        let (diffs, fix) = differences(&want, &actual);
        assert_eq!(diffs, vec!["retention_ms 3600000 -> 604800000".to_owned()]);
        assert_eq!(fix, TopicOptions { retention: Some(Retention::Time(7 * DAY)), ..TopicOptions::default() });
        let matching = TopicConfig { retention_ms: Some(604_800_000), ..actual };
        assert!(differences(&want, &matching).0.is_empty());
    }
}
