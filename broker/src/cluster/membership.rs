//! Who is in the metadata group: the first formation from the seed list,
//! joining a formed cluster, and removing a broker.
//!
//! - **Formation** (once per cluster): only a broker with no Raft state,
//!   whose id is the lowest of the seed list, that reached every seed and
//!   found none already in a cluster, initializes the group, with every seed
//!   as a voter. A broker holding a standalone catalog forms a cluster of
//!   itself alone instead (its catalog becomes the cluster's), and the
//!   others join it.
//! - **Joining**: every other broker asks the seeds to admit it until it is a
//!   voter. The leader admits one broker at a time: as a learner that
//!   catches up (from a snapshot: the log is compacted first, so a cluster
//!   grown from a standalone catalog never replays a log that does not start
//!   from an empty catalog), then as a voter. A broker that restarts with the
//!   same id and address is already a voter and simply catches up.
//! - **Removal**: a cluster admin removes a broker that is gone for good
//!   (`strata cluster remove-broker`); the partitions it owned are reported
//!   unowned.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Weak;
use std::time::Duration;

use openraft::BasicNode;
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{ClusterNode, NodeId};
use crate::catalog::CatalogCommand;
use crate::error::BrokerError;

/// How long the leader gives a joining broker to catch up and a
/// membership change to commit.
const ADMIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a snapshot or a log purge may take before a join is retried.
const COMPACT_TIMEOUT: Duration = Duration::from_secs(10);

/// A broker's request to become a voter of the metadata group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JoinRequest {
    pub broker_id: NodeId,
    pub address: String,
    /// Already forwarded once by a follower: the receiver answers itself.
    #[serde(default)]
    pub forwarded: bool,
}

/// The answer to a [`JoinRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum JoinReply {
    /// The broker is a voter (now, or already was).
    Joined,
    /// The answering broker is not in a formed cluster (yet).
    NotFormed,
    /// No leader could admit the broker just now: ask again.
    Retry(String),
    /// Refused for good (e.g. the id is a member at another address).
    Refused(String),
}

/// A request about membership, sent to (or forwarded to) the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum MembershipRequest {
    Join(JoinRequest),
    Remove { broker_id: NodeId, forwarded: bool },
}

/// The answer to a removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum RemoveReply {
    Removed,
    NotMember,
    LastVoter,
    /// No leader could make the change in time: it may or may not be made.
    NoQuorum,
}

impl ClusterNode {
    /// Whether this broker is a voter of the metadata group.
    pub(crate) fn is_voter(&self) -> bool {
        self.voters().contains(&self.id)
    }

    /// Serves a join request: admits the broker on the leader, forwards it
    /// to the leader from a follower.
    pub(crate) async fn handle_join(&self, req: JoinRequest) -> JoinReply {
        if !self.has_state() {
            return JoinReply::NotFormed;
        }
        match self.leader() {
            Some(l) if l == self.id => self.admit(&req).await,
            Some(l) if !req.forwarded => {
                let Some(addr) = self.address_of(l) else {
                    return JoinReply::Retry(format!("the address of leader {l} is not known"));
                };
                let fwd = MembershipRequest::Join(JoinRequest { forwarded: true, ..req });
                match tokio::time::timeout(ADMIT_TIMEOUT, self.network.membership(&addr, &fwd)).await {
                    Ok(Ok(reply)) => serde_json::from_value(reply)
                        .unwrap_or_else(|e| JoinReply::Retry(format!("undecodable answer from leader {l}: {e}"))),
                    Ok(Err(e)) => JoinReply::Retry(format!("leader {l} at {addr}: {e}")),
                    Err(_) => JoinReply::Retry(format!("leader {l} at {addr} did not answer in time")),
                }
            }
            Some(l) => JoinReply::Retry(format!("broker {} is not the leader (broker {l} is)", self.id)),
            None => JoinReply::Retry("the cluster has no metadata leader".into()),
        }
    }

    /// The leader's side of a join: learner, catch up, voter.
    async fn admit(&self, req: &JoinRequest) -> JoinReply {
        let _one_at_a_time = self.membership_lock.lock().await;
        let membership = self.raft.metrics().borrow().membership_config.membership().clone();
        if let Some(node) = membership.get_node(&req.broker_id) {
            if !node.addr.eq_ignore_ascii_case(&req.address) {
                return JoinReply::Refused(format!(
                    "broker id {} is already a member at {}; broker ids must be unique (remove the old broker first)",
                    req.broker_id, node.addr
                ));
            }
            if membership.voter_ids().any(|v| v == req.broker_id) {
                return JoinReply::Joined;
            }
        }
        if let Some((id, _)) =
            membership.nodes().find(|(id, n)| **id != req.broker_id && n.addr.eq_ignore_ascii_case(&req.address))
        {
            return JoinReply::Refused(format!("address {} is already member {id}", req.address));
        }
        if let Err(e) = self.adopt_if_alone().await {
            return JoinReply::Retry(format!("adopting the standalone catalog: {e}"));
        }
        if let Err(why) = self.compact_log().await {
            return JoinReply::Retry(why);
        }
        let node = BasicNode { addr: req.address.clone() };
        tracing::info!(broker = req.broker_id, address = %req.address, "admitting a broker: catching up as a learner");
        match tokio::time::timeout(ADMIT_TIMEOUT, self.raft.add_learner(req.broker_id, node, true)).await {
            Err(_) => return JoinReply::Retry(format!("broker {} did not catch up in time", req.broker_id)),
            Ok(Err(e)) => return JoinReply::Retry(format!("adding broker {} as a learner: {e}", req.broker_id)),
            Ok(Ok(_)) => {}
        }
        let voters = ChangeMembers::AddVoterIds(BTreeSet::from([req.broker_id]));
        match tokio::time::timeout(ADMIT_TIMEOUT, self.raft.change_membership(voters, false)).await {
            Err(_) => JoinReply::Retry("the membership change did not commit in time".into()),
            Ok(Err(e)) => JoinReply::Retry(format!("making broker {} a voter: {e}", req.broker_id)),
            Ok(Ok(_)) => {
                tracing::info!(broker = req.broker_id, address = %req.address, "broker joined the metadata group");
                JoinReply::Joined
            }
        }
    }

    /// Makes the log start at a snapshot (once), so a new member is sent
    /// the catalog as a snapshot rather than a log replay: replay from the
    /// start is only right when the catalog started empty, which a cluster
    /// grown from a standalone broker did not.
    async fn compact_log(&self) -> Result<(), String> {
        let (purged, applied) = {
            let m = self.raft.metrics().borrow().clone();
            (m.purged, m.last_applied)
        };
        let Some(applied) = applied else { return Ok(()) };
        if purged.is_some() {
            return Ok(());
        }
        let deadline = Instant::now() + COMPACT_TIMEOUT;
        self.raft.trigger().snapshot().await.map_err(|e| format!("cannot snapshot the catalog: {e}"))?;
        let snap = self
            .wait_metric(deadline, |m| m.snapshot.filter(|s| s.index >= applied.index))
            .await
            .ok_or("the catalog snapshot was not ready in time")?;
        self.raft.trigger().purge_log(snap.index).await.map_err(|e| format!("cannot compact the log: {e}"))?;
        self.wait_metric(deadline, |m| m.purged.filter(|p| p.index >= snap.index))
            .await
            .ok_or("the metadata log was not compacted in time")?;
        Ok(())
    }

    async fn wait_metric<T>(
        &self,
        deadline: Instant,
        f: impl Fn(&openraft::RaftMetrics<NodeId, BasicNode>) -> Option<T>,
    ) -> Option<T> {
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(v) = f(&metrics.borrow_and_update()) {
                return Some(v);
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// Removes broker `id` from the metadata group (a cluster admin's call,
    /// for a broker gone for good): on the leader, or forwarded to it.
    pub(crate) async fn remove(&self, id: NodeId) -> Result<(), BrokerError> {
        match self.handle_remove(id, false).await {
            RemoveReply::Removed => Ok(()),
            RemoveReply::NotMember => Err(BrokerError::UnknownBroker { id }),
            RemoveReply::LastVoter => Err(BrokerError::LastBroker { id }),
            RemoveReply::NoQuorum => {
                Err(BrokerError::NoMetadataQuorum { waited_ms: self.config.write_timeout.0.as_millis() as u64 })
            }
        }
    }

    pub(crate) async fn handle_remove(&self, id: NodeId, forwarded: bool) -> RemoveReply {
        let deadline = Instant::now() + self.config.write_timeout.0;
        match self.leader() {
            Some(l) if l == self.id => {}
            Some(l) if !forwarded => {
                let Some(addr) = self.address_of(l) else { return RemoveReply::NoQuorum };
                let req = MembershipRequest::Remove { broker_id: id, forwarded: true };
                return match tokio::time::timeout_at(deadline, self.network.membership(&addr, &req)).await {
                    Ok(Ok(reply)) => serde_json::from_value(reply).unwrap_or(RemoveReply::NoQuorum),
                    _ => RemoveReply::NoQuorum,
                };
            }
            _ => return RemoveReply::NoQuorum,
        }
        let _one_at_a_time = self.membership_lock.lock().await;
        let membership = self.raft.metrics().borrow().membership_config.membership().clone();
        if membership.get_node(&id).is_none() {
            return RemoveReply::NotMember;
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let change = if voters.contains(&id) {
            if voters.len() == 1 {
                return RemoveReply::LastVoter;
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        match tokio::time::timeout_at(deadline, self.raft.change_membership(change, false)).await {
            Ok(Ok(_)) => {
                tracing::info!(broker = id, "broker removed from the metadata group");
                RemoveReply::Removed
            }
            Ok(Err(e)) => {
                tracing::warn!(broker = id, error = %e, "removing a broker failed");
                RemoveReply::NoQuorum
            }
            Err(_) => RemoveReply::NoQuorum,
        }
    }
}

/// Formation, then joining: runs at start until this broker is a voter.
pub(super) async fn form_or_join(node: Weak<ClusterNode>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut backoff = Backoff(Duration::from_millis(100));
    loop {
        let Some(n) = node.upgrade() else { return };
        if n.is_voter() {
            return;
        }
        if n.has_state() {
            break;
        }
        let why = match n.try_bootstrap().await {
            Bootstrap::Done => return,
            Bootstrap::Join(why) => {
                n.set_formation(format!("waiting: {why}"));
                break;
            }
            Bootstrap::Stuck(why) => {
                tracing::error!(reason = %why, "cluster formation: this broker cannot join");
                n.set_formation(format!("refused: {why}"));
                return;
            }
            Bootstrap::Wait(why) => why,
        };
        tracing::info!(reason = %why, "cluster formation: waiting");
        n.set_formation(format!("waiting: {why}"));
        drop(n);
        if !backoff.wait(&mut shutdown).await {
            return;
        }
    }
    join(node, shutdown).await;
}

/// Asks the seeds to admit this broker until it is a voter.
async fn join(node: Weak<ClusterNode>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut backoff = Backoff(Duration::from_millis(200));
    loop {
        let Some(n) = node.upgrade() else { return };
        if n.is_voter() {
            return;
        }
        match n.try_join().await {
            Ok(()) => return,
            Err(JoinFailure::Refused(why)) => {
                tracing::error!(reason = %why, "the cluster refused this broker");
                n.set_formation(format!("refused: {why}"));
            }
            Err(JoinFailure::Later(why)) => {
                tracing::info!(reason = %why, "joining the cluster: waiting");
                if !n.is_voter() {
                    n.set_formation(format!("waiting: {why}"));
                }
            }
        }
        drop(n);
        if !backoff.wait(&mut shutdown).await {
            return;
        }
    }
}

/// Retry pacing of the cluster's background loops (membership, broker
/// registration): doubling up to 2 s.
pub(crate) struct Backoff(pub(crate) Duration);

impl Backoff {
    /// Waits out the current step; false once the broker is shutting down.
    pub(crate) async fn wait(&mut self, shutdown: &mut tokio::sync::watch::Receiver<bool>) -> bool {
        let step = self.0;
        self.0 = (step * 2).min(Duration::from_secs(2));
        tokio::select! {
            _ = tokio::time::sleep(step) => true,
            _ = shutdown.wait_for(|s| *s) => false,
        }
    }
}

enum Bootstrap {
    Done,
    /// Another broker forms the cluster, or one exists: join it.
    Join(String),
    /// This broker must not take part (it would diverge).
    Stuck(String),
    Wait(String),
}

enum JoinFailure {
    Refused(String),
    Later(String),
}

impl ClusterNode {
    async fn try_join(&self) -> Result<(), JoinFailure> {
        let req = JoinRequest { broker_id: self.id, address: self.address.clone(), forwarded: false };
        let mut last = "no seed besides this broker".to_owned();
        for addr in self.config.members() {
            if addr.eq_ignore_ascii_case(&self.address) {
                continue;
            }
            let reply = self
                .network
                .membership(&addr, &MembershipRequest::Join(req.clone()))
                .await
                .and_then(|v| Ok(serde_json::from_value::<JoinReply>(v)?));
            match reply {
                Ok(JoinReply::Joined) => {
                    tracing::info!(via = %addr, "this broker is a voter of the metadata group");
                    return Ok(());
                }
                Ok(JoinReply::Refused(why)) => return Err(JoinFailure::Refused(why)),
                Ok(JoinReply::NotFormed) => last = format!("{addr} is not in a cluster yet"),
                Ok(JoinReply::Retry(why)) => last = format!("{addr}: {why}"),
                Err(e) => last = format!("seed {addr} is not reachable: {e}"),
            }
        }
        Err(JoinFailure::Later(last))
    }

    async fn try_bootstrap(&self) -> Bootstrap {
        let seeds = self.config.members();
        let mut found: BTreeMap<u64, String> = BTreeMap::new();
        for addr in &seeds {
            if addr.eq_ignore_ascii_case(&self.address) {
                found.insert(self.id, self.address.clone());
                continue;
            }
            match self.network.hello(addr, self.id, &self.address).await {
                Ok(h) => {
                    if h.initialized {
                        if self.standalone_data {
                            return Bootstrap::Stuck(format!(
                                "{addr} is in a cluster, and this broker's data directory holds a standalone catalog, which would be lost on joining; start it with an empty data directory"
                            ));
                        }
                        return Bootstrap::Join(format!(
                            "{addr} is in a cluster; asking its leader to admit this broker"
                        ));
                    }
                    if let Some(other) = found.insert(h.broker_id, addr.clone()) {
                        return Bootstrap::Wait(format!(
                            "brokers {other} and {addr} both have id {}; ids must be unique",
                            h.broker_id
                        ));
                    }
                }
                Err(e) => return Bootstrap::Wait(format!("seed {addr} is not reachable yet: {e}")),
            }
        }
        let lowest = *found.keys().next().expect("contains this broker");
        if lowest != self.id {
            if self.standalone_data {
                return Bootstrap::Stuck(format!(
                    "this broker's data directory holds a standalone catalog, so it can only form a new cluster, and broker {lowest} (the lowest id) forms it"
                ));
            }
            return Bootstrap::Join(format!("broker {lowest} (the lowest id) forms the cluster"));
        }
        if self.has_state() {
            return Bootstrap::Join("this broker already has Raft state".into());
        }
        // A standalone catalog becomes the cluster's: this broker forms a
        // cluster of itself, and the others join (catching up from a
        // snapshot of it). Otherwise every seed is a founding voter.
        let members: BTreeMap<NodeId, BasicNode> = if self.standalone_data {
            BTreeMap::from([(self.id, BasicNode { addr: self.address.clone() })])
        } else {
            found.into_iter().map(|(id, addr)| (id, BasicNode { addr })).collect()
        };
        match self.raft.initialize(members.clone()).await {
            Ok(()) => {
                tracing::info!(?members, standalone_catalog = self.standalone_data, "formed the metadata cluster");
                Bootstrap::Done
            }
            Err(e) => {
                tracing::info!(error = %e, "not initializing the metadata cluster");
                Bootstrap::Join(format!("initialize refused: {e}"))
            }
        }
    }
}

/// A cluster grown from a standalone broker: the partitions and queues its
/// standalone catalog holds (recorded without owners) become the founding
/// broker's, through the log, so every broker agrees. Runs at start until
/// there is a leader; the leader also adopts before admitting anyone.
pub(super) async fn adopt_standalone_catalog(
    node: Weak<ClusterNode>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Backoff(Duration::from_millis(100));
    loop {
        let Some(n) = node.upgrade() else { return };
        if n.leader().is_some() {
            match n.adopt_if_alone().await {
                Ok(()) => return,
                Err(e) => tracing::info!(error = %e, "adopting the standalone catalog's partitions; retrying"),
            }
        }
        drop(n);
        if !backoff.wait(&mut shutdown).await {
            return;
        }
    }
}

impl ClusterNode {
    /// On the leader of a one-voter cluster: records this broker as the
    /// owner of every partition and queue without one. Only a standalone
    /// catalog has such entries (placement gives every new one an owner),
    /// and its data is on this broker's disk.
    async fn adopt_if_alone(&self) -> Result<(), BrokerError> {
        if self.voters() != [self.id] || self.leader() != Some(self.id) {
            return Ok(());
        }
        let Some(host) = self.host.upgrade() else { return Ok(()) };
        if !host.catalog().await.has_ownerless() {
            return Ok(());
        }
        self.write(&CatalogCommand::AdoptUnowned { owner: self.id }).await.map(|_| ())
    }
}
