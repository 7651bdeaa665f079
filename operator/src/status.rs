//! Status conditions shared by every kind: `Ready`, `Drifted` and `Paused`,
//! their reasons, and the rule that `lastTransitionTime` moves only when a
//! condition's status changes.

use k8s_openapi::jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The condition types the operator sets.
pub const READY: &str = "Ready";
pub const DRIFTED: &str = "Drifted";
pub const PAUSED: &str = "Paused";
/// A BrokerCluster's `spec.replicas` change that was refused.
pub const SCALING_BLOCKED: &str = "ScalingBlocked";

/// Why a resource is (not) ready. These strings are an API: alerts and
/// scripts match on them, so they never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Reconciled,
    Paused,
    ClusterNotFound,
    TenantNotFound,
    NamespaceNotAllowed,
    BrokerUnavailable,
    InvalidSpec,
    PartitionDecreaseRefused,
    DeadLetterLoop,
    DeadLetterQueueNotReady,
    DeletionBlocked,
    SecretNotFound,
    SecretKeyNotFound,
    GroupNotEmpty,
    BrokerRejected,
    Unsupported,
    Progressing,
    Drifted,
    InSync,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Reconciled => "Reconciled",
            Reason::Paused => "Paused",
            Reason::ClusterNotFound => "ClusterNotFound",
            Reason::TenantNotFound => "TenantNotFound",
            Reason::NamespaceNotAllowed => "NamespaceNotAllowed",
            Reason::BrokerUnavailable => "BrokerUnavailable",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::PartitionDecreaseRefused => "PartitionDecreaseRefused",
            Reason::DeadLetterLoop => "DeadLetterLoop",
            Reason::DeadLetterQueueNotReady => "DeadLetterQueueNotReady",
            Reason::DeletionBlocked => "DeletionBlocked",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::SecretKeyNotFound => "SecretKeyNotFound",
            Reason::GroupNotEmpty => "GroupNotEmpty",
            Reason::BrokerRejected => "BrokerRejected",
            Reason::Unsupported => "Unsupported",
            Reason::Progressing => "Progressing",
            Reason::Drifted => "Drifted",
            Reason::InSync => "InSync",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Kubernetes-style status condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    #[serde(default)]
    pub message: String,
    /// RFC 3339 time of the last change of `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Finds a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of this type has status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Sets a condition, keeping `lastTransitionTime` unless the status changes.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: Reason,
    message: impl Into<String>,
    generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" }.to_owned();
    let message = message.into();
    let now = Timestamp::now().to_string();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Some(now);
            }
            c.status = status;
            c.reason = reason.as_str().to_owned();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_owned(),
            status,
            reason: reason.as_str().to_owned(),
            message,
            last_transition_time: Some(now),
            observed_generation: generation,
        }),
    }
}

/// Removes a condition by type.
pub fn remove(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut cs = Vec::new();
        set(&mut cs, READY, false, Reason::ClusterNotFound, "no cluster", Some(1));
        let first = cs[0].last_transition_time.clone();
        cs[0].last_transition_time = Some("2000-01-01T00:00:00Z".into());
        set(&mut cs, READY, false, Reason::TenantNotFound, "no tenant", Some(2));
        assert_eq!(cs[0].last_transition_time.as_deref(), Some("2000-01-01T00:00:00Z"));
        assert_eq!(cs[0].reason, "TenantNotFound");
        assert_eq!(cs[0].observed_generation, Some(2));
        set(&mut cs, READY, true, Reason::Reconciled, "", Some(2));
        assert_ne!(cs[0].last_transition_time.as_deref(), Some("2000-01-01T00:00:00Z"));
        assert!(first.is_some());
        assert!(is_true(&cs, READY));
        remove(&mut cs, READY);
        assert!(cs.is_empty());
    }
}
