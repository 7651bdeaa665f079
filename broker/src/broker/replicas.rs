//! Cluster mode: the Raft groups of replicated partitions on this broker —
//! starting a replica's node when its partition opens (or, at start-up,
//! once the metadata node exists), stopping them with their topic or the
//! broker, and what `describe` reports about them.

use std::sync::Arc;

use super::{Broker, Topic};
use crate::locks::read_lock;
use crate::partition::Partition;
use crate::replication::{GroupSetup, ReplicaGroup};

use super::topics::ReplicaView;

impl Broker {
    /// Starts the Raft node of this broker's replica of `partition` (whose
    /// replicas are `replicas`), unless it runs already. Without the
    /// metadata node yet (start-up), `start_replica_groups` does it later.
    pub(super) async fn start_replica_group(&self, partition: &Arc<Partition>, replicas: &[u64]) {
        let Some(c) = self.cluster() else { return };
        let _one_at_a_time = self.groups.start_lock().await;
        if self.groups.get(&partition.id().group_key()).is_some() {
            return;
        }
        // Replicas are placed on members, whose addresses the metadata
        // membership has. (No catalog lock here: this runs inside catalog
        // applies.)
        let replicas = replicas.iter().map(|id| (*id, c.address_of(*id).unwrap_or_default())).collect();
        let setup = GroupSetup {
            partition: partition.clone(),
            replicas,
            me: c.id(),
            me_addr: c.address().to_owned(),
            network: c.network().clone(),
            metrics: self.metrics.clone(),
        };
        match ReplicaGroup::start(setup).await {
            Ok(g) => {
                self.groups.insert(g);
            }
            Err(e) => tracing::error!(partition = %partition.id(), error = %e, "cannot start the partition's replica"),
        }
    }

    /// Starts the groups of every replicated partition opened before the
    /// metadata node existed (called once it is set).
    pub(crate) async fn start_replica_groups(&self) {
        let topics: Vec<Arc<Topic>> = read_lock(&self.topics).values().cloned().collect();
        for t in topics {
            let replicas = read_lock(&t.replicas).clone();
            let partitions = read_lock(&t.partitions).clone();
            for (p, r) in partitions.iter().zip(&replicas) {
                if let Some(p) = p {
                    self.start_replica_group(p, r).await;
                }
            }
        }
    }

    /// Stops the groups of `topic`'s partitions (it is being discarded).
    pub(super) async fn stop_topic_groups(&self, topic: &Topic) {
        let partitions = read_lock(&topic.partitions).clone();
        for p in partitions.iter().flatten() {
            if let Some(g) = self.groups.remove(&p.id().group_key()) {
                g.shutdown().await;
            }
        }
    }

    /// Stops every group (broker shutdown), before the logs close.
    pub(super) async fn stop_replica_groups(&self) {
        for g in self.groups.all() {
            self.groups.remove(g.key());
            g.shutdown().await;
        }
    }

    /// The group of `partition` if it is replicated and this broker holds a
    /// replica.
    pub(crate) fn replica_group(&self, partition: &Partition) -> Option<Arc<ReplicaGroup>> {
        // On every produce: standalone brokers skip the key and the lookup.
        self.cluster()?;
        self.groups.get(&partition.id().group_key())
    }

    /// The replication factor of a topic created without one: the
    /// configured default, else min(3, the cluster's voters); 1 standalone.
    pub(super) fn default_replication_factor(&self) -> u32 {
        match self.cluster() {
            None => 1,
            Some(_) if self.config.cluster.default_replication_factor > 0 => {
                self.config.cluster.default_replication_factor
            }
            Some(c) => (c.voters().len() as u32).clamp(1, 3),
        }
    }

    /// Where clients send partition `p` of `record`: a replicated
    /// partition's current leader when this broker holds a replica (none
    /// while leaderless: clients wait and ask again), else the catalog's
    /// owner.
    pub(super) fn partition_leader(&self, record: &crate::catalog::TopicRecord, p: u32) -> Option<u64> {
        if record.replicas_of(p).is_some()
            && let Some(g) = self.groups.get(&crate::partition::group_key(record.id, p))
        {
            return g.leader();
        }
        record.owner(p)
    }

    /// The replicated partitions' groups on this broker.
    pub(crate) fn replica_groups(&self) -> &Arc<crate::replication::Groups> {
        &self.groups
    }

    /// What `describe` shows about partition `p` of topic `topic_id`.
    pub(super) fn replica_view(&self, topic_id: u64, p: u32, replicas: &[u64]) -> ReplicaView {
        let group = self.groups.get(&crate::partition::group_key(topic_id, p));
        ReplicaView {
            leader: group.as_ref().and_then(|g| g.leader()),
            replicas: replicas.to_vec(),
            in_sync: group.map(|g| g.in_sync()).unwrap_or_default(),
        }
    }
}
