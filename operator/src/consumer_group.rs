//! `ConsumerGroup`: a consumer group's committed offsets and lag, and a
//! declarative `offsetReset` that is applied once per change of its value
//! (the applied value's hash is kept in status).

use kube::{CustomResource, KubeSchema, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use strata_client::{ErrorCode, StartFrom};

use crate::context::Context;
use crate::resource::{Blocked, BrokerResource, ClusterRef, DeletionPolicy, Report};
use crate::status::{Condition, Reason};

/// A consumer group of a tenant on a `BrokerCluster`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "strata.dev",
    version = "v1alpha1",
    kind = "ConsumerGroup",
    namespaced,
    status = "ConsumerGroupStatus",
    shortname = "scg",
    printcolumn = r#"{"name":"Lag","type":"integer","jsonPath":".status.totalLag"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerGroupSpec {
    #[x_kube(validation = Rule::new("self == oldSelf").message("clusterRef is immutable"))]
    pub cluster_ref: ClusterRef,
    #[x_kube(validation = Rule::new("self == oldSelf").message("tenant is immutable"))]
    pub tenant: String,
    /// Group name on the broker; defaults to the resource's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("groupName is immutable"))]
    pub group_name: Option<String>,
    /// Topics the group reads (the default topics of `offsetReset`).
    #[serde(default)]
    pub topics: Vec<String>,
    /// Moves the committed offsets, once per change of this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset_reset: Option<OffsetReset>,
    /// `Delete` removes the group's committed offsets on deletion.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// Where a reset moves the offsets.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ResetTarget {
    Earliest,
    Latest,
    Timestamp,
    Offset,
}

/// A declarative offset reset.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.to != 'Timestamp' || has(self.timestampMs)").message("to: Timestamp needs timestampMs"))]
#[x_kube(validation = Rule::new("self.to != 'Offset' || has(self.offset)").message("to: Offset needs offset"))]
pub struct OffsetReset {
    pub to: ResetTarget,
    /// Milliseconds since the epoch (with `to: Timestamp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_ms: Option<i64>,
    /// The offset (with `to: Offset`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Topics to reset; empty: `spec.topics`.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Remove the group's members first (they rejoin at the new offsets);
    /// without it the reset waits until the group is empty.
    #[serde(default)]
    pub force: bool,
    /// Change this to apply the same reset again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// Lag of one partition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PartitionLagStatus {
    pub topic: String,
    pub partition: u32,
    /// -1 when nothing was committed.
    pub committed_offset: i64,
    pub end_offset: u64,
    pub lag: u64,
}

/// Observed state of a `ConsumerGroup`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerGroupStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Empty`, `Stable` or `Rebalancing`.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub members: u32,
    #[serde(default)]
    pub total_lag: u64,
    #[serde(default)]
    pub lag: Vec<PartitionLagStatus>,
    /// Hash of the `offsetReset` last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_reset_hash: Option<String>,
    /// Generation of the spec whose reset was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_reset_generation: Option<i64>,
}

crate::resource::common_status!(ConsumerGroupStatus);

impl ConsumerGroup {
    /// The group's name on the broker.
    pub fn broker_name(&self) -> String {
        self.spec.group_name.clone().unwrap_or_else(|| self.name_any())
    }
}

/// A stable hash of a reset's value (FNV-1a over its JSON form).
pub fn reset_hash(reset: &OffsetReset) -> String {
    let text = serde_json::to_string(reset).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The start position and topics of a reset. Pure.
pub fn reset_plan(spec: &ConsumerGroupSpec, reset: &OffsetReset) -> Result<(StartFrom, Vec<String>), Blocked> {
    let to =
        match reset.to {
            ResetTarget::Earliest => StartFrom::Earliest,
            ResetTarget::Latest => StartFrom::Latest,
            ResetTarget::Timestamp => StartFrom::Timestamp(reset.timestamp_ms.ok_or_else(|| {
                Blocked::new(Reason::InvalidSpec, "spec.offsetReset: to Timestamp needs timestampMs")
            })?),
            ResetTarget::Offset => StartFrom::Offset(
                reset
                    .offset
                    .ok_or_else(|| Blocked::new(Reason::InvalidSpec, "spec.offsetReset: to Offset needs offset"))?,
            ),
        };
    let topics = if reset.topics.is_empty() { spec.topics.clone() } else { reset.topics.clone() };
    if topics.is_empty() {
        return Err(Blocked::new(
            Reason::InvalidSpec,
            "spec.offsetReset: no topics (set offsetReset.topics or spec.topics)",
        ));
    }
    Ok((to, topics))
}

impl BrokerResource for ConsumerGroup {
    const KIND: &'static str = "ConsumerGroup";
    type Status = ConsumerGroupStatus;

    crate::resource::tenant_scoped!();

    async fn sync(
        &self,
        broker: &strata_client::Client,
        status: &mut ConsumerGroupStatus,
        _ctx: &Context,
    ) -> Result<Report, Blocked> {
        let group = self.broker_name();
        let mut report = Report::default();
        if let Some(reset) = &self.spec.offset_reset {
            let hash = reset_hash(reset);
            if status.applied_reset_hash.as_deref() != Some(hash.as_str()) {
                let (to, topics) = reset_plan(&self.spec, reset)?;
                for topic in &topics {
                    broker.reset_group_offsets(&group, topic, to, &[], reset.force).await.map_err(|e| {
                        let mut b = Blocked::from_client(&format!("reset offsets of group {group} on {topic}"), &e);
                        if b.reason == Reason::GroupNotEmpty {
                            b.message = format!(
                                "group {group} has active members; the offset reset waits until it is empty (or set offsetReset.force: true)"
                            );
                        }
                        b
                    })?;
                }
                status.applied_reset_hash = Some(hash);
                status.applied_reset_generation = self.metadata.generation;
                report.changes.push(format!(
                    "reset offsets of group {group} on {} to {:?}",
                    topics.join(","),
                    reset.to
                ));
            }
        }
        match broker.describe_group(&group).await {
            Ok(d) => {
                status.state = d.state;
                status.members = u32::try_from(d.members.len()).unwrap_or(u32::MAX);
                status.lag = d
                    .partitions
                    .iter()
                    .map(|p| PartitionLagStatus {
                        topic: p.topic.clone(),
                        partition: p.partition,
                        committed_offset: p.committed_offset,
                        end_offset: p.end_offset,
                        lag: p.lag,
                    })
                    .collect();
                status.total_lag = d.partitions.iter().map(|p| p.lag).sum();
            }
            Err(strata_client::Error::Server(s)) if s.error_code == ErrorCode::UnknownGroup => {
                status.state = "Empty".into();
                status.members = 0;
                status.lag.clear();
                status.total_lag = 0;
            }
            Err(e) => return Err(Blocked::from_client(&format!("describe group {group}"), &e)),
        }
        Ok(report)
    }

    async fn delete(&self, broker: &strata_client::Client, _ctx: &Context) -> Result<(), Blocked> {
        let group = self.broker_name();
        match broker.delete_group(&group).await {
            Ok(()) => Ok(()),
            Err(strata_client::Error::Server(s)) if s.error_code == ErrorCode::UnknownGroup => Ok(()),
            Err(e) => Err(Blocked::from_client(&format!("delete group {group}"), &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ConsumerGroupSpec {
        ConsumerGroupSpec {
            cluster_ref: ClusterRef { name: "main".into(), namespace: None },
            tenant: "default".into(),
            group_name: None,
            topics: vec!["orders".into()],
            offset_reset: None,
            deletion_policy: DeletionPolicy::Delete,
        }
    }

    fn reset(to: ResetTarget) -> OffsetReset {
        OffsetReset { to, timestamp_ms: None, offset: None, topics: vec![], force: false, nonce: None }
    }

    #[test]
    fn reset_plan_resolves_targets_and_topics() {
        let (to, topics) = reset_plan(&spec(), &reset(ResetTarget::Earliest)).unwrap();
        assert_eq!(to, StartFrom::Earliest);
        assert_eq!(topics, vec!["orders".to_owned()]);
        let r = OffsetReset { offset: Some(42), topics: vec!["a".into()], ..reset(ResetTarget::Offset) };
        assert_eq!(reset_plan(&spec(), &r).unwrap(), (StartFrom::Offset(42), vec!["a".to_owned()]));
        assert_eq!(reset_plan(&spec(), &reset(ResetTarget::Timestamp)).unwrap_err().reason, Reason::InvalidSpec);
        let no_topics = ConsumerGroupSpec { topics: vec![], ..spec() };
        assert_eq!(reset_plan(&no_topics, &reset(ResetTarget::Latest)).unwrap_err().reason, Reason::InvalidSpec);
    }

    #[test]
    fn reset_hash_changes_with_the_value_only() {
        let a = reset(ResetTarget::Earliest);
        assert_eq!(reset_hash(&a), reset_hash(&a.clone()));
        assert_ne!(reset_hash(&a), reset_hash(&reset(ResetTarget::Latest)));
        let again = OffsetReset { nonce: Some("2".into()), ..a.clone() };
        assert_ne!(reset_hash(&a), reset_hash(&again));
    }
}
