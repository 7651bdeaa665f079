//! Identities: a tenant-qualified topic name, a partition of it, an offset.
//! Names are validated once (`names`) and then travel as types, never as
//! strings split apart again.

use std::fmt;

use crate::names::{TenantName, TopicName};

/// A topic named within its tenant (`tenant/topic`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicRef {
    pub tenant: TenantName,
    pub topic: TopicName,
}

impl TopicRef {
    pub fn new(tenant: TenantName, topic: TopicName) -> TopicRef {
        TopicRef { tenant, topic }
    }
}

impl fmt::Display for TopicRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.topic)
    }
}

/// One partition of one incarnation of a topic: the topic id tells a
/// re-created topic of the same name from the deleted one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartitionId {
    topic: TopicRef,
    topic_id: u64,
    index: u32,
}

impl PartitionId {
    pub fn new(topic: TopicRef, topic_id: u64, index: u32) -> PartitionId {
        PartitionId { topic, topic_id, index }
    }

    pub fn tenant(&self) -> &TenantName {
        &self.topic.tenant
    }

    pub fn topic(&self) -> &TopicName {
        &self.topic.topic
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// The name of the partition's Raft group when it is replicated
    /// (`<topic id>/<partition>`, unique over the catalog's lifetime).
    pub(crate) fn group_key(&self) -> String {
        group_key(self.topic_id, self.index)
    }

    /// The cold-tier key prefix: the remote layout mirrors the local one.
    pub(crate) fn remote_prefix(&self) -> object_store::path::Path {
        crate::tier::manifest::partition_prefix(
            self.tenant().as_str(),
            self.topic().as_str(),
            self.topic_id,
            self.index,
        )
    }
}

/// The Raft group name of partition `index` of topic `topic_id`.
pub(crate) fn group_key(topic_id: u64, index: u32) -> String {
    format!("{topic_id}/{index}")
}

/// `tenant/topic/partition`: the resource name in errors and logs.
impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.index)
    }
}

/// A position in a partition's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub u64);

impl Offset {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u64> for Offset {
    fn from(o: u64) -> Offset {
        Offset(o)
    }
}
