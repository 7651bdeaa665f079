//! A durable Raft log and vote in one directory: the metadata group's under
//! `<data>/meta/raft/`, each replicated partition's under its partition
//! directory (`replication/`). Generic over the group's type config.
//!
//! `log`: a file that starts with a magic number and a version, then
//! records `[len u32 LE][crc32c u32 LE][JSON]`, each an appended entry, a
//! truncation or a purge. Every change is fsynced before openraft is told it
//! is durable. On open the records are replayed; a torn or corrupt tail (a
//! crash mid-write) is cut off at the last valid record. A purge rewrites the
//! file without the purged entries (temp file, fsync, rename, fsync dir).
//! `vote.json`: the vote, replaced atomically.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::{Deserialize, Serialize};

use openraft::{BasicNode, RaftTypeConfig};

use super::NodeId;

/// The type configs a [`LogStore`] serves: openraft's own entry type, ids
/// and nodes as the brokers use them.
pub(crate) trait StoreTypes:
    RaftTypeConfig<NodeId = NodeId, Node = BasicNode, Entry = openraft::Entry<Self>, D: Clone>
{
}
impl<C: RaftTypeConfig<NodeId = NodeId, Node = BasicNode, Entry = openraft::Entry<C>, D: Clone>> StoreTypes for C {}

const MAGIC: &[u8; 8] = b"STRRAFT\0";
const VERSION: u32 = 1;
const HEADER_LEN: u64 = 12;

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
enum Record<C: StoreTypes> {
    Append(openraft::Entry<C>),
    /// Entries at and after this index are gone.
    TruncateFrom(u64),
    /// Entries up to and including this id are gone (covered by the state machine).
    PurgeUpTo(LogId<NodeId>),
}

struct Inner<C: StoreTypes> {
    dir: PathBuf,
    file: File,
    entries: BTreeMap<u64, openraft::Entry<C>>,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
}

/// The log store; clones share one state (the log reader is a clone).
pub(crate) struct LogStore<C: StoreTypes> {
    inner: Arc<Mutex<Inner<C>>>,
}

impl<C: StoreTypes> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore { inner: self.inner.clone() }
    }
}

fn io_err<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageIOError::write_logs(openraft::AnyError::new(&e)).into()
}

fn frame<C: StoreTypes>(record: &Record<C>) -> std::io::Result<Vec<u8>> {
    let payload = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

fn header() -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&VERSION.to_le_bytes());
    h
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename, fsync dir).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        crate::log::segment::sync_dir(dir)?;
    }
    Ok(())
}

impl<C: StoreTypes> LogStore<C> {
    /// Opens (or creates) the log under `dir`, replaying it.
    pub(crate) fn open(dir: &Path) -> std::io::Result<LogStore<C>> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("log");
        let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut entries = BTreeMap::new();
        let mut last_purged = None;
        if bytes.is_empty() {
            file.write_all(&header())?;
            file.sync_all()?;
            crate::log::segment::sync_dir(dir)?;
        } else {
            if bytes.len() < HEADER_LEN as usize || &bytes[..8] != MAGIC {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not a Strata Raft log", path.display()),
                ));
            }
            let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
            if version != VERSION {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: unsupported Raft log version {version}", path.display()),
                ));
            }
            let mut pos = HEADER_LEN as usize;
            while pos + 8 <= bytes.len() {
                let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
                let crc = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().expect("4 bytes"));
                let Some(payload) = bytes.get(pos + 8..pos + 8 + len) else { break };
                if crc32c::crc32c(payload) != crc {
                    break;
                }
                let Ok(record) = serde_json::from_slice::<Record<C>>(payload) else { break };
                match record {
                    Record::Append(e) => {
                        entries.insert(e.log_id.index, e);
                    }
                    Record::TruncateFrom(i) => {
                        entries.split_off(&i);
                    }
                    Record::PurgeUpTo(id) => {
                        entries = entries.split_off(&(id.index + 1));
                        last_purged = Some(id);
                    }
                }
                pos += 8 + len;
            }
            if pos < bytes.len() {
                tracing::warn!(log = %path.display(), at = pos, "Raft log has a torn or corrupt tail; truncating it");
                file.set_len(pos as u64)?;
                file.sync_all()?;
            }
        }
        file.seek(SeekFrom::End(0))?;
        let vote = match std::fs::read(dir.join("vote.json")) {
            Ok(b) => Some(serde_json::from_slice(&b).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}/vote.json: {e}", dir.display()))
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(LogStore { inner: Arc::new(Mutex::new(Inner { dir: dir.to_path_buf(), file, entries, last_purged, vote })) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<C>> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a vote or any log exists (the broker is or was in a cluster).
    pub(crate) fn has_state(&self) -> bool {
        let inner = self.lock();
        inner.vote.is_some() || !inner.entries.is_empty() || inner.last_purged.is_some()
    }
}

impl<C: StoreTypes> Inner<C> {
    fn write(&mut self, records: &[Record<C>]) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for r in records {
            buf.extend(frame(r)?);
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()
    }

    /// Rewrites the file with only the live entries.
    fn compact(&mut self) -> std::io::Result<()> {
        let path = self.dir.join("log");
        let tmp = self.dir.join("log.tmp");
        let mut buf = header();
        if let Some(p) = self.last_purged {
            buf.extend(frame(&Record::<C>::PurgeUpTo(p))?);
        }
        for e in self.entries.values() {
            buf.extend(frame(&Record::Append(e.clone()))?);
        }
        let mut f = File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        crate::log::segment::sync_dir(&self.dir)?;
        let mut file = std::fs::OpenOptions::new().read(true).write(true).open(&path)?;
        file.seek(SeekFrom::End(0))?;
        self.file = file;
        Ok(())
    }
}

impl<C: StoreTypes> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<openraft::Entry<C>>, StorageError<NodeId>> {
        Ok(self.lock().entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl<C: StoreTypes> RaftLogStorage<C> for LogStore<C> {
    type LogReader = LogStore<C>;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<NodeId>> {
        let inner = self.lock();
        let last = inner.entries.values().next_back().map(|e| e.log_id).or(inner.last_purged);
        Ok(LogState { last_purged_log_id: inner.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        let bytes = serde_json::to_vec(vote).map_err(|e| StorageIOError::write_vote(openraft::AnyError::new(&e)))?;
        write_atomic(&inner.dir.join("vote.json"), &bytes)
            .map_err(|e| StorageIOError::write_vote(openraft::AnyError::new(&e)))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().vote)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<openraft::Entry<C>> = entries.into_iter().collect();
        let mut inner = self.lock();
        let records: Vec<Record<C>> = entries.iter().cloned().map(Record::Append).collect();
        let res = inner.write(&records);
        if res.is_ok() {
            for e in entries {
                inner.entries.insert(e.log_id.index, e);
            }
        }
        let out = res.as_ref().map(|_| ()).map_err(|e| io_err(std::io::Error::new(e.kind(), e.to_string())));
        callback.log_io_completed(res);
        out
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        inner.write(&[Record::<C>::TruncateFrom(log_id.index)]).map_err(io_err)?;
        inner.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        inner.write(&[Record::<C>::PurgeUpTo(log_id)]).map_err(io_err)?;
        inner.entries = inner.entries.split_off(&(log_id.index + 1));
        inner.last_purged = Some(log_id);
        inner.compact().map_err(io_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::catalog::CatalogCommand;
    use crate::cluster::{MetaRequest, TypeConfig};

    type Entry = openraft::Entry<TypeConfig>;
    type LogStore = super::LogStore<TypeConfig>;

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(MetaRequest::Catalog(CatalogCommand::CreateTenant {
                name: format!("t{index}"),
                at_ms: 1,
                quotas: Default::default(),
            })),
        }
    }

    fn write_raw(store: &LogStore, records: &[Record<TypeConfig>]) {
        store.lock().write(records).unwrap();
        let mut inner = store.lock();
        for r in records {
            match r {
                Record::Append(e) => {
                    inner.entries.insert(e.log_id.index, e.clone());
                }
                Record::TruncateFrom(i) => {
                    inner.entries.split_off(i);
                }
                Record::PurgeUpTo(_) => unreachable!(),
            }
        }
    }

    #[tokio::test]
    async fn log_and_vote_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = LogStore::open(dir.path()).unwrap();
            assert!(!s.has_state());
            write_raw(&s, &(1..=5).map(|i| Record::Append(entry(1, i))).collect::<Vec<_>>());
            write_raw(&s, &[Record::TruncateFrom(4), Record::Append(entry(2, 4))]);
            s.save_vote(&Vote::new(2, 1)).await.unwrap();
            s.purge(LogId::new(CommittedLeaderId::new(1, 1), 2)).await.unwrap();
        }
        // A torn record at the tail.
        let mut f = std::fs::OpenOptions::new().append(true).open(dir.path().join("log")).unwrap();
        f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let mut s = LogStore::open(dir.path()).unwrap();
        assert!(s.has_state());
        assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
        let state = s.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(2));
        assert_eq!(state.last_log_id, Some(entry(2, 4).log_id));
        let got = s.try_get_log_entries(0..100).await.unwrap();
        assert_eq!(got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), [3, 4]);
        // The tail was cut: new records append cleanly and replay.
        write_raw(&s, &[Record::Append(entry(2, 5))]);
        drop(s);
        let mut s = LogStore::open(dir.path()).unwrap();
        assert_eq!(s.get_log_state().await.unwrap().last_log_id.map(|l| l.index), Some(5));
        std::fs::write(dir.path().join("log"), b"garbage!!!!!!!").unwrap();
        assert!(LogStore::open(dir.path()).is_err());
    }
}
