//! A replicated partition's state machine: its [`PartitionLog`]. Applying a
//! committed entry appends the entry's batch (leader epoch = the entry's
//! term, append time = the leader's clock in the entry), so offsets are
//! assigned in commit order, identically on every replica.
//!
//! Recovery (see "Partition replication" in ARCHITECTURE.md): the applied
//! marker (`applied.json`: last applied log id, membership, next offset) is
//! written when a snapshot is built, for a point the log already has
//! durable. After a restart openraft applies the entries after the marker
//! again; while the expected offset is below the log end found at start-up,
//! an entry is compared with the batch already stored there (CRC, producer
//! id and epoch, base sequence, record count): equal means it was applied
//! before the crash (skipped, the offset advances), different means it was
//! refused then (a duplicate or out-of-order idempotent batch), skipped
//! without an offset. Past that end entries apply normally.

// openraft's trait signatures fix the error type (`StorageError`, large).
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use strata_proto::batch::{self, BatchHeader};

use super::{BatchOutcome, PartitionResponse, PartitionTypes};
use crate::cluster::NodeId;
use crate::cluster::network::Network;
use crate::fs::FileSystem;
use crate::log::LogError;
use crate::partition::Partition;

type Entry = openraft::Entry<PartitionTypes>;

const MARKER: &str = "applied.json";

/// How far the state machine has applied: written as the applied marker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AppliedState {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, BasicNode>,
    /// The partition offset the next applied batch gets.
    pub next_offset: u64,
}

/// A snapshot's content: the applied state and who sent it (a follower
/// installing it fetches the batches it lacks from that broker).
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotData {
    applied: AppliedState,
    sender_addr: String,
}

/// The state machine of one replicated partition.
pub(crate) struct PartitionStateMachine {
    partition: Arc<Partition>,
    /// Where the marker is, on the partition log's filesystem.
    dir: PathBuf,
    applied: AppliedState,
    /// Below this offset the log already holds batches (found at start-up,
    /// or after a snapshot install): re-applied entries are matched.
    recovered_end: u64,
    /// This broker's advertised address (named in snapshots it builds).
    me_addr: String,
    network: Network,
    /// The index of the last marker written: markers are written by the
    /// snapshot builder's own task and by installs, and one taken earlier
    /// must never replace a newer one.
    marker: Marker,
}

/// Serialises marker writes and remembers the newest written.
type Marker = Arc<tokio::sync::Mutex<Option<u64>>>;

fn io_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(openraft::AnyError::error(e.to_string())).into()
}

fn read_marker(fs: &dyn FileSystem, dir: &Path) -> std::io::Result<Option<AppliedState>> {
    match fs.read(&dir.join(MARKER)) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}/{MARKER}: {e}", dir.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `stored` is the batch `entry` carries (the leader epoch and the
/// base offset, outside the CRC, may differ).
fn same_batch(stored: &BatchHeader, entry: &BatchHeader) -> bool {
    stored.crc == entry.crc
        && stored.producer_id == entry.producer_id
        && stored.producer_epoch == entry.producer_epoch
        && stored.base_sequence == entry.base_sequence
        && stored.record_count == entry.record_count
        && stored.last_offset_delta == entry.last_offset_delta
}

impl PartitionStateMachine {
    /// Opens the state machine over `partition`'s (recovered) log, its
    /// marker in `dir` (on the log's filesystem). Blocking.
    pub(crate) fn open(
        partition: Arc<Partition>,
        dir: &Path,
        me_addr: String,
        network: Network,
    ) -> std::io::Result<PartitionStateMachine> {
        let fs = partition.log().fs();
        fs.create_dir_all(dir)?;
        let applied = read_marker(&**fs, dir)?.unwrap_or_default();
        let recovered_end = partition.log().end_offset();
        let marker = Arc::new(tokio::sync::Mutex::new(applied.last_applied.map(|l| l.index)));
        Ok(PartitionStateMachine {
            partition,
            dir: dir.to_path_buf(),
            applied,
            recovered_end,
            me_addr,
            network,
            marker,
        })
    }

    fn snapshot(&self) -> Result<Snapshot<PartitionTypes>, StorageError<NodeId>> {
        let data = SnapshotData { applied: self.applied.clone(), sender_addr: self.me_addr.clone() };
        let bytes = serde_json::to_vec(&data).map_err(io_err)?;
        let snapshot_id = match self.applied.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.applied.next_offset),
            None => "empty".into(),
        };
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id: self.applied.last_applied,
                last_membership: self.applied.membership.clone(),
                snapshot_id,
            },
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }

    /// Makes everything applied durable, then records the marker.
    async fn persist(&self) -> Result<(), StorageError<NodeId>> {
        persist(&self.partition, &self.dir, &self.applied, &self.marker).await
    }
}

/// Makes everything `applied` names durable, then records it as the marker.
/// (The log appends without fsync and fsyncs segments as it seals them: a
/// sync of the active segment covers the rest. It does not hold the log's
/// lock, so appends go on meanwhile.)
/// A marker older than the newest written is not written (a snapshot
/// install overtook the build that took it).
async fn persist(
    partition: &Partition,
    dir: &Path,
    applied: &AppliedState,
    marker: &Marker,
) -> Result<(), StorageError<NodeId>> {
    let mut newest = marker.lock().await;
    let index = applied.last_applied.map(|l| l.index);
    if index < *newest {
        return Ok(());
    }
    let log = partition.log().clone();
    tokio::task::spawn_blocking(move || log.sync_written()).await.map_err(io_err)?.map_err(io_err)?;
    let bytes = serde_json::to_vec(applied).map_err(io_err)?;
    let path = dir.join(MARKER);
    let fs = partition.log().fs().clone();
    tokio::task::spawn_blocking(move || crate::fsutil::replace(&*fs, &path, &bytes, crate::fsutil::Sync::Durable))
        .await
        .map_err(io_err)?
        .map_err(io_err)?;
    *newest = index;
    Ok(())
}

/// Applies `entries` to the log (blocking file I/O). Returns the responses
/// and the new applied state, or the storage error that stops this replica
/// (its log could no longer follow the others').
fn apply_blocking(
    partition: &Partition,
    mut applied: AppliedState,
    recovered_end: u64,
    entries: Vec<Entry>,
) -> Result<(Vec<PartitionResponse>, AppliedState), StorageError<NodeId>> {
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let log_id = entry.log_id;
        let response = match entry.payload {
            EntryPayload::Blank => PartitionResponse::default(),
            EntryPayload::Membership(m) => {
                applied.membership = StoredMembership::new(Some(log_id), m);
                PartitionResponse::default()
            }
            EntryPayload::Normal(req) => {
                let apply_err = |e: String| -> StorageError<NodeId> {
                    StorageIOError::apply(log_id, openraft::AnyError::error(e)).into()
                };
                let mut outcomes = Vec::with_capacity(req.batches.len());
                for batch in &req.batches {
                    let outcome =
                        apply_batch(partition, &mut applied, recovered_end, batch, req.at_ms, log_id.leader_id.term)
                            .map_err(apply_err)?;
                    outcomes.push(outcome);
                }
                PartitionResponse(outcomes)
            }
        };
        applied.last_applied = Some(log_id);
        out.push(response);
    }
    Ok((out, applied))
}

/// Builds a snapshot of the state applied when it was made: makes it
/// durable and records the marker (in its own task, while entries go on
/// being applied).
/// Applies one batch of an entry: appended at the next offset (with the
/// entry's term as leader epoch), or, below the log end found at start-up,
/// matched with the batch already stored there.
fn apply_batch(
    partition: &Partition,
    applied: &mut AppliedState,
    recovered_end: u64,
    batch: &bytes::Bytes,
    at_ms: i64,
    term: u64,
) -> Result<BatchOutcome, String> {
    let log = partition.log();
    let header = BatchHeader::parse(batch).map_err(|e| e.to_string())?;
    let expected = applied.next_offset;
    if expected < recovered_end {
        // Applied before a crash (or installed): match it.
        let stored = log.read(expected, 1).map_err(|e| e.to_string())?;
        return Ok(match BatchHeader::parse(&stored.records) {
            Ok(h) if h.base_offset == expected && same_batch(&h, &header) => {
                applied.next_offset = h.next_offset();
                BatchOutcome::Appended {
                    base_offset: expected,
                    last_offset: h.last_offset(),
                    append_time_ms: at_ms,
                    duplicate: false,
                }
            }
            _ => BatchOutcome::Nothing,
        });
    }
    let mut bytes = batch.to_vec();
    batch::set_leader_epoch(&mut bytes, term as u32);
    match log.append(&mut bytes, &header, at_ms) {
        Ok(a) => {
            applied.next_offset = log.end_offset();
            Ok(BatchOutcome::Appended {
                base_offset: a.base_offset,
                last_offset: a.last_offset,
                append_time_ms: a.append_time_ms,
                duplicate: a.duplicate,
            })
        }
        Err(LogError::Sequence(e)) => Ok(BatchOutcome::Refused(e)),
        Err(e) => Err(format!("{}: {e}", partition.id())),
    }
}

pub(crate) struct SnapshotBuilder {
    partition: Arc<Partition>,
    dir: PathBuf,
    marker: Marker,
    snapshot: Option<Result<Snapshot<PartitionTypes>, String>>,
    applied: AppliedState,
}

impl RaftSnapshotBuilder<PartitionTypes> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<PartitionTypes>, StorageError<NodeId>> {
        let snapshot = self.snapshot.take().unwrap_or_else(|| Err("the snapshot was taken".into())).map_err(io_err)?;
        // The marker is written before openraft may purge the entries it
        // covers (it purges once this returns).
        persist(&self.partition, &self.dir, &self.applied, &self.marker).await?;
        Ok(snapshot)
    }
}

impl RaftStateMachine<PartitionTypes> for PartitionStateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<PartitionResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let partition = self.partition.clone();
        let applied = self.applied.clone();
        let recovered_end = self.recovered_end;
        let (out, applied) =
            tokio::task::spawn_blocking(move || apply_blocking(&partition, applied, recovered_end, entries))
                .await
                .map_err(io_err)??;
        self.applied = applied;
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // The applied state is taken here; the builder makes it durable.
        SnapshotBuilder {
            partition: self.partition.clone(),
            dir: self.dir.clone(),
            marker: self.marker.clone(),
            snapshot: Some(self.snapshot().map_err(|e| e.to_string())),
            applied: self.applied.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let read_err = |e: String| -> StorageError<NodeId> {
            StorageIOError::read_snapshot(Some(meta.signature()), openraft::AnyError::error(e)).into()
        };
        let data: SnapshotData = serde_json::from_slice(snapshot.get_ref()).map_err(|e| read_err(e.to_string()))?;
        let target = data.applied.next_offset;
        let id = self.partition.id().clone();
        let mut end = self.partition.log().end_offset();
        tracing::info!(partition = %id, from = end, to = target, sender = %data.sender_addr,
            "installing a snapshot: fetching the batches this replica lacks");
        // Fetch the committed batches this replica lacks from the sender
        // and append them unchanged (their offsets must follow on).
        while end < target {
            let batches = self
                .network
                .fetch_batches(&data.sender_addr, &id, end, target)
                .await
                .map_err(|e| read_err(format!("fetching {id} from {}: {e}", data.sender_addr)))?;
            if batches.is_empty() {
                return Err(read_err(format!("{} had nothing for {id} from offset {end}", data.sender_addr)));
            }
            let log = self.partition.log().clone();
            end = tokio::task::spawn_blocking(move || -> Result<u64, String> {
                for b in batches {
                    let header = BatchHeader::parse(&b).map_err(|e| e.to_string())?;
                    if header.base_offset != log.end_offset() {
                        return Err(format!(
                            "fetched batch at offset {} does not follow the log end {}",
                            header.base_offset,
                            log.end_offset()
                        ));
                    }
                    if header.base_offset >= target {
                        break;
                    }
                    let mut bytes = b.to_vec();
                    log.append(&mut bytes, &header, header.max_timestamp).map_err(|e| e.to_string())?;
                }
                Ok(log.end_offset())
            })
            .await
            .map_err(|e| read_err(e.to_string()))?
            .map_err(read_err)?;
        }
        self.recovered_end = self.recovered_end.max(end);
        self.applied = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            next_offset: target,
        };
        self.persist().await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<PartitionTypes>>, StorageError<NodeId>> {
        match read_marker(&**self.partition.log().fs(), &self.dir).map_err(io_err)? {
            Some(marker) if marker.last_applied.is_some() => {
                let data = SnapshotData { applied: marker.clone(), sender_addr: self.me_addr.clone() };
                let bytes = serde_json::to_vec(&data).map_err(io_err)?;
                let l = marker.last_applied.expect("checked");
                Ok(Some(Snapshot {
                    meta: SnapshotMeta {
                        last_log_id: marker.last_applied,
                        last_membership: marker.membership,
                        snapshot_id: format!("{}-{}-{}", l.leader_id.term, l.index, marker.next_offset),
                    },
                    snapshot: Box::new(Cursor::new(bytes)),
                }))
            }
            _ => Ok(None),
        }
    }
}
