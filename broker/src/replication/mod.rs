//! Replicated partitions (DESIGN §4.6; "Partition replication" in
//! ARCHITECTURE.md): a topic with a replication factor above 1 gets one
//! openraft group per partition, its members the partition's replicas.
//!
//! - Each replica keeps a Raft log next to the partition log (the metadata
//!   group's `LogStore`, under `<partition dir>/replication/`), fsynced
//!   before openraft is told; the partition log is the state machine
//!   (`state_machine.rs`).
//! - A produce on the leader validates the batch and proposes it; it is
//!   answered once the entry is committed (durable on a majority) and
//!   applied on the leader, which assigns the offsets. Followers answer
//!   NOT_LEADER naming the leader.
//! - Messages travel over the internal `strata.v1.Raft` service tagged with
//!   the group (`<topic id>/<partition>`); `grpc/raft.rs` routes them here
//!   through the [`Groups`] registry the broker holds.

pub(crate) mod state_machine;

#[cfg(test)]
mod power_loss_tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot};

use bytes::{Buf, Bytes};
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ServerState};
use serde::{Deserialize, Serialize};

use crate::cluster::NodeId;
use crate::cluster::codec::EntryData;
use crate::cluster::log_store::LogStore;
use crate::cluster::network::{GroupNetwork, Network};
use crate::log::SequenceError;
use crate::partition::Partition;

crate::cluster::raft_group_types!(
    /// A replicated partition's group types.
    PartitionTypes,
    PartitionRaft,
    PartitionEntry,
    PartitionResponse
);

/// One Raft entry: the batches producers sent while the previous entries
/// were in flight (see [`ReplicaGroup::propose`]). Binary in the Raft log
/// and on the wire (`[at_ms i64][count u32]` then `[length u32][batch]`
/// each, little-endian; see `cluster/codec.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "EntryWire")]
pub(crate) struct PartitionEntry {
    /// The batches as the producers sent them (validated by the leader), in
    /// the order they were proposed.
    pub batches: Vec<Bytes>,
    /// The leader's clock when it proposed the entry: every replica appends
    /// with this time, so they roll and index alike.
    pub at_ms: i64,
}

/// A partition entry as JSON: `batches` now, or the single base64 `batch`
/// of version 1 Raft logs (read when such a log is upgraded).
#[derive(Deserialize)]
struct EntryWire {
    #[serde(default)]
    batches: Option<Vec<Bytes>>,
    #[serde(default)]
    batch: Option<String>,
    at_ms: i64,
}

impl TryFrom<EntryWire> for PartitionEntry {
    type Error = String;

    fn try_from(w: EntryWire) -> Result<Self, String> {
        use base64::Engine;
        let batches = match (w.batches, w.batch) {
            (Some(batches), None) => batches,
            (None, Some(b64)) => vec![Bytes::from(
                base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| format!("batch: {e}"))?,
            )],
            _ => return Err("a partition entry needs either `batches` or `batch`".into()),
        };
        Ok(PartitionEntry { batches, at_ms: w.at_ms })
    }
}

impl EntryData for PartitionEntry {
    fn encode_to(&self, out: &mut Vec<u8>) -> std::io::Result<()> {
        out.extend_from_slice(&self.at_ms.to_le_bytes());
        out.extend_from_slice(&(self.batches.len() as u32).to_le_bytes());
        for b in &self.batches {
            let len = u32::try_from(b.len()).map_err(|_| std::io::Error::other("a batch over 4 GiB"))?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(b);
        }
        Ok(())
    }

    fn decode_from(mut bytes: Bytes) -> std::io::Result<Self> {
        let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        if bytes.len() < 12 {
            return Err(invalid("a partition entry under 12 bytes"));
        }
        let at_ms = bytes.get_i64_le();
        let count = bytes.get_u32_le() as usize;
        let mut batches = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            if bytes.len() < 4 {
                return Err(invalid("a truncated partition entry"));
            }
            let len = bytes.get_u32_le() as usize;
            if bytes.len() < len {
                return Err(invalid("a truncated partition entry"));
            }
            batches.push(bytes.split_to(len));
        }
        if !bytes.is_empty() {
            return Err(invalid("bytes after a partition entry's batches"));
        }
        Ok(PartitionEntry { batches, at_ms })
    }
}

/// What applying an entry gave: one outcome per batch, in order (none for
/// a blank or membership entry).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct PartitionResponse(pub Vec<BatchOutcome>);

/// What applying one batch gave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum BatchOutcome {
    /// Re-applied after a restart, and it had been refused before.
    Nothing,
    Appended {
        base_offset: u64,
        last_offset: u64,
        append_time_ms: i64,
        duplicate: bool,
    },
    /// An idempotent producer's batch refused (the same on every replica).
    Refused(SequenceError),
}

/// Raft timing for partition groups: a heartbeat every 250 ms and an
/// election 1–2 s after the leader's lease (2 s) ran out — a new leader
/// about 3–4 s after the old one dies — and snapshots (the applied marker)
/// every 256 entries.
fn raft_config() -> Result<openraft::Config, String> {
    openraft::Config {
        cluster_name: "strata-partition".into(),
        heartbeat_interval: 250,
        election_timeout_min: 1000,
        election_timeout_max: 2000,
        install_snapshot_timeout: 30_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(256),
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        max_in_snapshot_log_to_keep: 64,
        ..Default::default()
    }
    .validate()
    .map_err(|e| e.to_string())
}

/// A replica other than the first initializes a new group itself when no
/// leader appeared within this long.
const INITIALIZE_FALLBACK: std::time::Duration = std::time::Duration::from_secs(5);

/// A follower whose matched entry is this far behind the leader's last
/// entry is out of sync.
const IN_SYNC_MAX_LAG: u64 = 128;

/// Entries proposed by a leader and not yet applied, at most: batches
/// produced meanwhile wait and go together in the next entry.
const MAX_ENTRIES_IN_FLIGHT: usize = 4;

/// An entry carries at most about this many bytes of batches (a larger
/// single batch goes alone).
const MAX_ENTRY_BYTES: usize = 4 * 1024 * 1024;

/// Entries in one AppendEntries at most (openraft's `max_payload_entries`):
/// a message stays within [`max_append_bytes`].
const MAX_PAYLOAD_ENTRIES: u64 = 4;

/// The largest AppendEntries a partition group sends, for batches of at
/// most `max_batch_bytes` (framing included).
pub(crate) fn max_append_bytes(max_batch_bytes: usize) -> usize {
    (MAX_PAYLOAD_ENTRIES as usize) * (max_batch_bytes.max(MAX_ENTRY_BYTES) + 1024 * 1024) + 1024 * 1024
}

/// This broker's replica of one partition: its Raft node.
pub(crate) struct ReplicaGroup {
    key: Arc<str>,
    id: crate::partition::PartitionId,
    me: NodeId,
    raft: PartitionRaft,
    /// The proposer's queue (see [`ReplicaGroup::propose`]).
    proposals: mpsc::UnboundedSender<Submitted>,
}

/// A batch waiting to be proposed.
struct Submitted {
    batch: Bytes,
    at_ms: i64,
    reply: oneshot::Sender<Result<BatchOutcome, WriteError>>,
}

impl std::fmt::Debug for ReplicaGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaGroup").field("key", &self.key).field("me", &self.me).finish()
    }
}

/// Why a proposal was not applied.
#[derive(Debug, Clone)]
pub(crate) enum WriteError {
    /// Another replica leads (if known).
    NotLeader(Option<NodeId>),
    /// The node stopped (shutdown or a storage failure).
    Stopped(String),
}

/// What starting a replica takes.
pub(crate) struct GroupSetup {
    pub partition: Arc<Partition>,
    /// The replicas and their advertised addresses.
    pub replicas: Vec<(NodeId, String)>,
    pub me: NodeId,
    pub me_addr: String,
    pub network: Network,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl ReplicaGroup {
    /// Opens the replica's Raft log and state machine and starts its node.
    /// A group with no Raft state yet (the partition was just created) is
    /// initialized with all replicas by the first replica at once, and by
    /// the others only if no leader appeared within [`INITIALIZE_FALLBACK`].
    pub(crate) async fn start(setup: GroupSetup) -> Result<Arc<ReplicaGroup>, String> {
        let GroupSetup { partition, replicas, me, me_addr, network, metrics } = setup;
        let key: Arc<str> = Arc::from(partition.id().group_key());
        let dir = partition.dir().join("replication");
        let part = partition.clone();
        let net = network.clone();
        let (log, sm) = tokio::task::spawn_blocking(move || {
            // On the partition log's filesystem (the broker's).
            let log = LogStore::<PartitionTypes>::open(part.log().fs(), &dir)?;
            let sm = state_machine::PartitionStateMachine::open(part, &dir, me_addr, net)?;
            Ok::<_, std::io::Error>((log, sm))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot open the replication state of {}: {e}", partition.id()))?;
        let fresh = !log.has_state();
        let config = Arc::new(raft_config()?);
        let raft = PartitionRaft::new(me, config, GroupNetwork { network, group: key.clone() }, log, sm)
            .await
            .map_err(|e| format!("cannot start the Raft node of {}: {e}", partition.id()))?;
        if fresh {
            // The first replica (the preferred leader, placement spreads
            // them) initializes the group at once and so usually leads;
            // the others only if no leader showed up within a while (the
            // first replica's broker is down), which openraft allows as the
            // membership is the same.
            let members: BTreeMap<NodeId, BasicNode> =
                replicas.iter().map(|(id, addr)| (*id, BasicNode { addr: addr.clone() })).collect();
            let preferred = replicas.first().map(|(id, _)| *id) == Some(me);
            let raft = raft.clone();
            let id = partition.id().to_string();
            let init = async move {
                if !preferred {
                    let mut metrics = raft.metrics();
                    let led = metrics.wait_for(|m| m.current_leader.is_some() || m.last_log_index.is_some());
                    if tokio::time::timeout(INITIALIZE_FALLBACK, led).await.is_ok() {
                        return;
                    }
                }
                match raft.initialize(members).await {
                    Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                    Err(e) => {
                        tracing::error!(partition = %id, error = %e, "cannot initialize the partition's Raft group")
                    }
                }
            };
            if preferred {
                init.await;
            } else {
                tokio::spawn(init);
            }
        }
        tokio::spawn(count_leader_changes(raft.metrics(), metrics, partition.id().clone()));
        let (proposals, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_proposer(raft.clone(), rx));
        Ok(Arc::new(ReplicaGroup { key, id: partition.id().clone(), me, raft, proposals }))
    }

    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    pub(crate) fn partition_id(&self) -> &crate::partition::PartitionId {
        &self.id
    }

    /// The number of voting replicas.
    pub(crate) fn replica_count(&self) -> usize {
        self.raft.metrics().borrow().membership_config.membership().voter_ids().count()
    }

    /// On the leader: how many entries the slowest follower is behind.
    pub(crate) fn max_lag(&self) -> Option<u64> {
        let m = self.raft.metrics().borrow().clone();
        let last = m.last_log_index.unwrap_or(0);
        let followers = m.replication?;
        Some(
            followers
                .iter()
                .filter(|(id, _)| **id != self.me)
                .map(|(_, matched)| last.saturating_sub(matched.map_or(0, |l| l.index)))
                .max()
                .unwrap_or(0),
        )
    }

    pub(crate) fn raft(&self) -> &PartitionRaft {
        &self.raft
    }

    /// The current leader, if known.
    /// (Not this broker while it is still becoming leader: a NOT_LEADER
    /// answer naming itself would send the client straight back.)
    pub(crate) fn leader(&self) -> Option<NodeId> {
        let m = self.raft.metrics();
        let m = m.borrow();
        match m.current_leader {
            Some(l) if l == self.me && m.state != ServerState::Leader => None,
            other => other,
        }
    }

    /// The Raft term this replica is in.
    pub(crate) fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    pub(crate) fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.me)
    }

    /// In-sync replicas: on the leader, itself and every follower whose
    /// matched entry is within [`IN_SYNC_MAX_LAG`] of its last entry; a
    /// follower knows only that it follows a leader (itself and that
    /// leader), nothing while there is none.
    pub(crate) fn in_sync(&self) -> Vec<NodeId> {
        let m = self.raft.metrics().borrow().clone();
        match (&m.replication, m.current_leader) {
            (Some(followers), _) => {
                let last = m.last_log_index.unwrap_or(0);
                let mut isr = vec![self.me];
                for (id, matched) in followers.iter() {
                    let at = matched.map_or(0, |l| l.index);
                    if *id != self.me && at + IN_SYNC_MAX_LAG >= last {
                        isr.push(*id);
                    }
                }
                isr.sort_unstable();
                isr
            }
            (None, Some(leader)) => {
                let mut isr = vec![leader, self.me];
                isr.sort_unstable();
                isr.dedup();
                isr
            }
            (None, None) => Vec::new(),
        }
    }

    /// Proposes `batch` (validated, appended with the time `at_ms` or
    /// later), in call order with other proposals; the receiver resolves
    /// once it is committed and applied here. While
    /// [`MAX_ENTRIES_IN_FLIGHT`] entries are in flight, batches wait and
    /// then go in one entry: under load, few large entries instead of many
    /// small ones (each costs fsyncs and messages on every replica).
    pub(crate) fn propose(&self, batch: Bytes, at_ms: i64) -> Proposal {
        let (reply, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(s)) = self.proposals.send(Submitted { batch, at_ms, reply }) {
            let _ = s.reply.send(Err(WriteError::Stopped("the partition's Raft node stopped".into())));
        }
        rx
    }

    /// Stops the node (the partition closes or the broker shuts down).
    pub(crate) async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

/// Counts the leader changes this replica sees, until its node stops.
async fn count_leader_changes(
    mut raft_metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>>,
    metrics: Arc<crate::metrics::Metrics>,
    id: crate::partition::PartitionId,
) {
    let labels = crate::metrics::PartitionLabels {
        tenant: id.tenant().to_string(),
        topic: id.topic().to_string(),
        partition: id.index(),
    };
    let mut last = None;
    loop {
        let leader = raft_metrics.borrow_and_update().current_leader;
        if leader.is_some() && leader != last {
            if last.is_some() {
                metrics.partition_leader_changes.get_or_create(&labels).inc();
            }
            last = leader;
        }
        if raft_metrics.changed().await.is_err() {
            return;
        }
    }
}

/// The replicated partitions this broker holds a replica of, by group
/// (the broker keeps it; `grpc/raft.rs` routes messages through it).
#[derive(Default)]
pub(crate) struct Groups {
    groups: RwLock<HashMap<Arc<str>, Arc<ReplicaGroup>>>,
    /// Group starts one at a time (a catalog apply and the start-up pass
    /// may both find a partition without its group).
    starts: tokio::sync::Mutex<()>,
}

impl Groups {
    /// Held while a partition's group starts.
    pub(crate) async fn start_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.starts.lock().await
    }

    pub(crate) fn get(&self, key: &str) -> Option<Arc<ReplicaGroup>> {
        crate::locks::read_lock(&self.groups).get(key).cloned()
    }

    pub(crate) fn insert(&self, group: Arc<ReplicaGroup>) -> Option<Arc<ReplicaGroup>> {
        crate::locks::write_lock(&self.groups).insert(group.key.clone(), group)
    }

    pub(crate) fn remove(&self, key: &str) -> Option<Arc<ReplicaGroup>> {
        crate::locks::write_lock(&self.groups).remove(key)
    }

    pub(crate) fn all(&self) -> Vec<Arc<ReplicaGroup>> {
        crate::locks::read_lock(&self.groups).values().cloned().collect()
    }
}

/// A proposed batch's outcome, once committed and applied (or refused).
pub(crate) type Proposal = oneshot::Receiver<Result<BatchOutcome, WriteError>>;

/// Waits for a proposal's outcome.
pub(crate) async fn outcome(proposal: Proposal) -> Result<BatchOutcome, WriteError> {
    proposal.await.unwrap_or_else(|_| Err(WriteError::Stopped("the partition's Raft node stopped".into())))
}

/// Proposes the queued batches in order, as entries of several batches,
/// with at most [`MAX_ENTRIES_IN_FLIGHT`] entries proposed and not yet
/// applied; runs until the group stops.
async fn run_proposer(raft: PartitionRaft, mut rx: mpsc::UnboundedReceiver<Submitted>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ENTRIES_IN_FLIGHT));
    let mut queued: std::collections::VecDeque<Submitted> = std::collections::VecDeque::new();
    loop {
        if queued.is_empty() {
            match rx.recv().await {
                Some(s) => queued.push_back(s),
                None => return,
            }
        }
        // Wait for a slot; batches arriving meanwhile queue up. A batch
        // whose producer stopped waiting (its produce timed out, e.g. while
        // the group had no quorum) is dropped, not proposed later: the queue
        // holds only batches someone waits for.
        // (Pruned whenever the queue doubled, so pruning costs O(1) per
        // batch however long the wait.)
        let mut pruned_at = queued.len();
        let slot = loop {
            tokio::select! {
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => break slot,
                    Err(_) => return,
                },
                s = rx.recv() => match s {
                    Some(s) => {
                        queued.push_back(s);
                        if queued.len() >= 2 * pruned_at.max(64) {
                            queued.retain(|q| !q.reply.is_closed());
                            pruned_at = queued.len();
                        }
                    }
                    None => return,
                },
            }
        };
        while let Ok(s) = rx.try_recv() {
            queued.push_back(s);
        }
        queued.retain(|q| !q.reply.is_closed());
        if queued.is_empty() {
            continue;
        }
        let mut bytes = 0;
        let mut batches = Vec::new();
        let mut replies = Vec::new();
        let mut at_ms = i64::MIN;
        while let Some(s) = queued.front() {
            if !batches.is_empty() && bytes + s.batch.len() > MAX_ENTRY_BYTES {
                break;
            }
            let s = queued.pop_front().expect("checked");
            bytes += s.batch.len();
            at_ms = at_ms.max(s.at_ms);
            batches.push(s.batch);
            replies.push(s.reply);
        }
        let count = replies.len();
        let answered = match raft.client_write_ff(PartitionEntry { batches, at_ms }).await {
            Ok(proposal) => proposal,
            Err(e) => {
                let why = e.to_string();
                for r in replies {
                    let _ = r.send(Err(WriteError::Stopped(why.clone())));
                }
                continue;
            }
        };
        tokio::spawn(async move {
            let result = match answered.await {
                Ok(Ok(resp)) => Ok(resp.data.0),
                Ok(Err(e)) => Err(write_error(e)),
                Err(_) => Err(WriteError::Stopped("the partition's Raft node stopped".into())),
            };
            drop(slot);
            match result {
                Ok(outcomes) if outcomes.len() == count => {
                    for (r, o) in replies.into_iter().zip(outcomes) {
                        let _ = r.send(Ok(o));
                    }
                }
                Ok(outcomes) => {
                    let why = format!("an entry of {count} batches applied as {} outcomes", outcomes.len());
                    for r in replies {
                        let _ = r.send(Err(WriteError::Stopped(why.clone())));
                    }
                }
                Err(e) => {
                    for r in replies {
                        let _ = r.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

/// A client write that failed: not the leader, or stopped.
fn write_error(e: ClientWriteError<NodeId, BasicNode>) -> WriteError {
    match e {
        ClientWriteError::ForwardToLeader(f) => WriteError::NotLeader(f.leader_id),
        ClientWriteError::ChangeMembershipError(e) => WriteError::Stopped(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_of_several_batches_round_trip_and_truncation_is_refused() {
        let entry = PartitionEntry {
            batches: vec![Bytes::from_static(b"first"), Bytes::new(), Bytes::from_static(b"third batch")],
            at_ms: -5,
        };
        let mut out = Vec::new();
        entry.encode_to(&mut out).unwrap();
        let back = PartitionEntry::decode_from(Bytes::from(out.clone())).unwrap();
        assert_eq!((back.batches, back.at_ms), (entry.batches, entry.at_ms));
        for cut in [0, 11, 13, out.len() - 1] {
            assert!(PartitionEntry::decode_from(Bytes::copy_from_slice(&out[..cut])).is_err(), "cut at {cut}");
        }
        out.push(0);
        assert!(PartitionEntry::decode_from(Bytes::from(out)).is_err(), "trailing bytes");
    }
}
