//! A durable Raft log and vote in one directory: the metadata group's under
//! `<data>/meta/raft/`, each replicated partition's under its partition
//! directory (`replication/`). Generic over the group's type config.
//!
//! `log`, `log.1`, `log.2`, …: files replayed in that order, each starting
//! with a magic number and a version, then
//! records `[len u32 LE][crc32c u32 LE][record]`, each an appended entry
//! (`[1][entry]`, the entry in `codec.rs`'s binary form), a truncation
//! (`[2][index u64]`) or a purge (`[3][log id]`). Version 1 files (records
//! in JSON) are read and rewritten in the current version on open. Every change is fsynced before openraft is told it
//! is durable. On open the records are replayed; a torn or corrupt tail of
//! the last file (a crash mid-write) is cut off at the last valid record. A
//! new file starts once the newest holds 16 MiB; a purge record makes the
//! older files it covers deletable (nothing is rewritten).
//! `vote.json`: the vote, replaced atomically.
//!
//! Every file operation goes through the filesystem seam ([`Fs`]), the
//! broker's (the one its partition logs and catalog use), so the fault tests
//! can lose power under it.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{mpsc, oneshot};

use bytes::{Buf, Bytes};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::{Deserialize, Serialize};

use super::NodeId;
use super::codec::{self, StoreTypes};
use crate::fs::{FileSystem, Fs, FsFile, OpenOptions};

const MAGIC: &[u8; 8] = b"STRRAFT\0";
/// 2: binary records; 1: JSON records (still read).
const VERSION: u32 = 2;
const HEADER_LEN: u64 = 12;

const APPEND: u8 = 1;
const TRUNCATE: u8 = 2;
const PURGE: u8 = 3;

/// A change to the log. (Serde: version 1 files stored records as JSON.)
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
enum Record<C: StoreTypes> {
    Append(openraft::Entry<C>),
    /// Entries at and after this index are gone.
    TruncateFrom(u64),
    /// Entries up to and including this id are gone (covered by the state machine).
    PurgeUpTo(LogId<NodeId>),
}

/// The log as openraft sees it (quick operations only: never held
/// across file I/O).
struct State<C: StoreTypes> {
    entries: BTreeMap<u64, openraft::Entry<C>>,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
}

/// The log files; touched only by the writer's blocking tasks (and open).
/// Appends go to the newest file, a new one starts past [`ROTATE_BYTES`],
/// and a purge deletes older files whose entries it covers (no rewrite).
struct Disk {
    fs: Fs,
    dir: PathBuf,
    /// The newest file, appended to (at `size`).
    file: Arc<dyn FsFile>,
    size: u64,
    /// Every file, oldest first (the newest last).
    files: Vec<LogFile>,
}

struct LogFile {
    seq: u64,
    /// The highest index an entry written to it had.
    max_index: Option<u64>,
}

/// The newest log file is closed and a new one started once it holds this much.
const ROTATE_BYTES: u64 = 16 * 1024 * 1024;

/// A change for the writer, in the order the state changed.
enum Job<C: StoreTypes> {
    /// Appended entries, framed, and the highest index among them.
    Append(Vec<u8>, u64, Done<C>),
    /// A truncation record, framed.
    Truncate(Vec<u8>, Done<C>),
    /// A purge record, framed, and the index it purges up to.
    Purge(Vec<u8>, u64, Done<C>),
}

/// Who is told once a job is durable.
enum Done<C: StoreTypes> {
    /// openraft (appends).
    Flushed(LogFlushed<C>),
    /// A caller waiting ([`written`]).
    Reply(oneshot::Sender<Result<(), String>>),
}

/// The log store; clones share one state (the log reader is a clone).
///
/// Changes apply to the in-memory state at once and go to one writer task
/// in that order; it writes whatever has queued up in one blocking task
/// with one fsync (group commit), off the async threads, and then tells
/// openraft the appended entries are durable.
pub(crate) struct LogStore<C: StoreTypes> {
    state: Arc<Mutex<State<C>>>,
    disk: Arc<Mutex<Disk>>,
    writer: Arc<OnceLock<mpsc::UnboundedSender<Job<C>>>>,
    /// Where `vote.json` is replaced: outside `disk`, so saving a vote never
    /// waits (on an async thread) for a log write in progress.
    fs: Fs,
    dir: Arc<Path>,
}

impl<C: StoreTypes> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            state: self.state.clone(),
            disk: self.disk.clone(),
            writer: self.writer.clone(),
            fs: self.fs.clone(),
            dir: self.dir.clone(),
        }
    }
}

fn io_err<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageIOError::write_logs(openraft::AnyError::new(&e)).into()
}

/// Appends `record`, framed, to `out`.
fn frame<C: StoreTypes>(record: &Record<C>, out: &mut Vec<u8>) -> std::io::Result<()> {
    let at = out.len();
    out.extend_from_slice(&[0; 8]);
    match record {
        Record::Append(e) => {
            out.push(APPEND);
            codec::encode_entry(e, out)?;
        }
        Record::TruncateFrom(i) => {
            out.push(TRUNCATE);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Record::PurgeUpTo(id) => {
            out.push(PURGE);
            codec::put_log_id(id, out);
        }
    }
    let payload = &out[at + 8..];
    let len = u32::try_from(payload.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a Raft log record over 4 GiB"))?;
    let crc = crc32c::crc32c(payload);
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Decodes a record's payload (`version` of the file).
fn unframe<C: StoreTypes>(version: u32, mut payload: Bytes) -> std::io::Result<Record<C>> {
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    if version == 1 {
        return serde_json::from_slice(&payload).map_err(|e| invalid(&e.to_string()));
    }
    if payload.is_empty() {
        return Err(invalid("an empty Raft log record"));
    }
    match payload.get_u8() {
        APPEND => Ok(Record::Append(codec::decode_entry(payload)?)),
        TRUNCATE if payload.len() == 8 => Ok(Record::TruncateFrom(payload.get_u64_le())),
        PURGE if payload.len() == 24 => Ok(Record::PurgeUpTo(codec::get_log_id(&mut payload))),
        _ => Err(invalid("an unknown Raft log record")),
    }
}

fn header() -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&VERSION.to_le_bytes());
    h
}

/// What replaying one log file found.
struct FileReplay {
    version: u32,
    /// Where the valid records end.
    valid_len: u64,
    /// The highest index an entry in this file had.
    max_index: Option<u64>,
}

/// Applies the records of one log file (`bytes`) to the replayed state.
fn replay_file<C: StoreTypes>(
    path: &Path,
    bytes: Bytes,
    entries: &mut BTreeMap<u64, openraft::Entry<C>>,
    last_purged: &mut Option<LogId<NodeId>>,
) -> std::io::Result<FileReplay> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    if bytes.len() < HEADER_LEN as usize || &bytes[..8] != MAGIC {
        return Err(invalid(format!("{} is not a Strata Raft log", path.display())));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION && version != 1 {
        return Err(invalid(format!("{}: unsupported Raft log version {version}", path.display())));
    }
    let mut pos = HEADER_LEN as usize;
    let mut max_index = None;
    while pos + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().expect("4 bytes"));
        let Some(payload) = bytes.get(pos + 8..pos + 8 + len) else { break };
        if crc32c::crc32c(payload) != crc {
            break;
        }
        // A record whose checksum holds was written whole: one that does not
        // decode is not a torn write but something this version cannot read.
        let record = unframe::<C>(version, bytes.slice(pos + 8..pos + 8 + len))
            .map_err(|e| invalid(format!("{}: the record at byte {pos} cannot be read: {e}", path.display())))?;
        match record {
            Record::Append(e) => {
                max_index = max_index.max(Some(e.log_id.index));
                entries.insert(e.log_id.index, e);
            }
            Record::TruncateFrom(i) => {
                entries.split_off(&i);
            }
            Record::PurgeUpTo(id) => {
                *entries = entries.split_off(&(id.index + 1));
                *last_purged = Some(id);
            }
        }
        pos += 8 + len;
    }
    Ok(FileReplay { version, valid_len: pos as u64, max_index })
}

/// The log files in `dir` by sequence number: `log` is 0, `log.<n>` is n.
fn log_files(fs: &dyn FileSystem, dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for path in fs.read_dir(dir)? {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if name == "log" {
            seqs.push(0);
        } else if let Some(n) = name.strip_prefix("log.").and_then(|n| n.parse::<u64>().ok()) {
            seqs.push(n);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

fn log_path(dir: &Path, seq: u64) -> PathBuf {
    if seq == 0 { dir.join("log") } else { dir.join(format!("log.{seq}")) }
}

/// Creates log file `seq` holding only the header, durably.
fn create_log_file(fs: &dyn FileSystem, dir: &Path, seq: u64) -> std::io::Result<Arc<dyn FsFile>> {
    let file = fs.open(&log_path(dir, seq), OpenOptions::CREATE_NEW)?;
    file.write_all_at(&header(), 0)?;
    file.sync_all()?;
    fs.sync_dir(dir)?;
    Ok(file)
}

impl<C: StoreTypes> LogStore<C> {
    /// Opens (or creates) the log under `dir` on `fs`, replaying its files
    /// in order. A torn or corrupt tail of the last file (a crash mid-write)
    /// is cut off; anywhere else it is an error. Blocking.
    pub(crate) fn open(fs: &Fs, dir: &Path) -> std::io::Result<LogStore<C>> {
        fs.create_dir_all(dir)?;
        let mut seqs = log_files(&**fs, dir)?;
        if seqs.is_empty() {
            create_log_file(&**fs, dir, 0)?;
            seqs.push(0);
        }
        let mut entries = BTreeMap::new();
        let mut last_purged = None;
        let mut old_version = false;
        let mut files = Vec::with_capacity(seqs.len());
        for (i, seq) in seqs.iter().enumerate() {
            let path = log_path(dir, *seq);
            let bytes = Bytes::from(fs.read(&path)?);
            if i + 1 == seqs.len()
                && bytes.len() < HEADER_LEN as usize
                && (header().starts_with(&bytes) || bytes.iter().all(|b| *b == 0))
            {
                // The newest file's creation was cut short (a crash between
                // creating it and syncing its header): it holds nothing.
                tracing::warn!(log = %path.display(), "Raft log file without its header; writing it");
                let f = fs.open(&path, OpenOptions::WRITE)?;
                f.set_len(0)?;
                f.write_all_at(&header(), 0)?;
                f.sync_all()?;
                files.push(LogFile { seq: *seq, max_index: None });
                continue;
            }
            let replay = replay_file(&path, bytes.clone(), &mut entries, &mut last_purged)?;
            if replay.valid_len < bytes.len() as u64 {
                if i + 1 < seqs.len() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "{} is corrupt at byte {} and is not the last log file",
                            path.display(),
                            replay.valid_len
                        ),
                    ));
                }
                tracing::warn!(log = %path.display(), at = replay.valid_len, "Raft log has a torn or corrupt tail; truncating it");
                let f = fs.open(&path, OpenOptions::WRITE)?;
                f.set_len(replay.valid_len)?;
                f.sync_all()?;
            }
            old_version |= replay.version != VERSION;
            files.push(LogFile { seq: *seq, max_index: replay.max_index });
        }
        let last = *seqs.last().expect("at least one file");
        let file = fs.open(&log_path(dir, last), OpenOptions::WRITE)?;
        let size = file.len()?;
        let vote = match fs.read(&dir.join("vote.json")) {
            Ok(b) => Some(serde_json::from_slice(&b).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}/vote.json: {e}", dir.display()))
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let mut disk = Disk { fs: fs.clone(), dir: dir.to_path_buf(), file, size, files };
        if old_version {
            // Rewritten in the current version (the same records).
            disk.rewrite(last_purged, entries.values())?;
        }
        Ok(LogStore {
            state: Arc::new(Mutex::new(State { entries, last_purged, vote })),
            disk: Arc::new(Mutex::new(disk)),
            writer: Arc::default(),
            fs: fs.clone(),
            dir: Arc::from(dir),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<C>> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a vote or any log exists (the broker is or was in a cluster).
    pub(crate) fn has_state(&self) -> bool {
        let st = self.lock();
        st.vote.is_some() || !st.entries.is_empty() || st.last_purged.is_some()
    }

    /// The writer's queue (the writer starts with the first change).
    fn writer(&self) -> &mpsc::UnboundedSender<Job<C>> {
        self.writer.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run_writer(self.disk.clone(), rx));
            tx
        })
    }

    /// Queues `job` (built under the state lock, so the file sees changes
    /// in the order the state did).
    #[allow(clippy::result_large_err)] // openraft's error type
    fn submit(&self, job: Job<C>) -> Result<(), StorageError<NodeId>> {
        self.writer().send(job).map_err(|_| io_err(std::io::Error::other("the Raft log writer stopped")))
    }
}

/// Writes queued changes in order: everything queued at once in one
/// blocking task, one fsync for all of it.
async fn run_writer<C: StoreTypes>(disk: Arc<Mutex<Disk>>, mut rx: mpsc::UnboundedReceiver<Job<C>>) {
    let mut jobs = Vec::new();
    while rx.recv_many(&mut jobs, 1024).await > 0 {
        let disk = disk.clone();
        let batch = std::mem::take(&mut jobs);
        let done = tokio::task::spawn_blocking(move || {
            let mut disk = disk.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let result = disk.run(&batch).map_err(|e| std::io::Error::new(e.kind(), e.to_string()));
            (batch, result)
        })
        .await;
        let Ok((batch, result)) = done else {
            tracing::error!("the Raft log writer's task failed");
            return;
        };
        for job in batch {
            let result = result.as_ref().map(|_| ()).map_err(|e| std::io::Error::new(e.kind(), e.to_string()));
            let (Job::Append(_, _, done) | Job::Truncate(_, done) | Job::Purge(_, _, done)) = job;
            match done {
                Done::Flushed(flushed) => flushed.log_io_completed(result),
                Done::Reply(tx) => {
                    let _ = tx.send(result.map_err(|e| e.to_string()));
                }
            }
        }
    }
}

impl Disk {
    /// Writes `jobs` in order with one fsync, then deletes the files a
    /// purge covers and starts a new file if this one is full.
    fn run<C: StoreTypes>(&mut self, jobs: &[Job<C>]) -> std::io::Result<()> {
        let mut pending: Vec<u8> = Vec::new();
        let mut purged = None;
        let newest = self.files.last_mut().expect("a log file");
        for job in jobs {
            match job {
                Job::Append(bytes, max, _) => {
                    pending.extend_from_slice(bytes);
                    newest.max_index = newest.max_index.max(Some(*max));
                }
                Job::Truncate(bytes, _) => pending.extend_from_slice(bytes),
                Job::Purge(bytes, upto, _) => {
                    pending.extend_from_slice(bytes);
                    purged = Some(*upto);
                }
            }
        }
        if !pending.is_empty() {
            self.file.write_all_at(&pending, self.size)?;
            self.file.sync_data()?;
            self.size += pending.len() as u64;
        }
        if let Some(upto) = purged {
            // The purge record is durable in the newest file: older files
            // holding only purged entries are no longer needed.
            let newest = self.files.len() - 1;
            let gone = self.files[..newest].iter().take_while(|f| f.max_index.is_none_or(|m| m <= upto)).count();
            for f in self.files.drain(..gone) {
                self.fs.remove_file(&log_path(&self.dir, f.seq))?;
            }
            if gone > 0 {
                self.fs.sync_dir(&self.dir)?;
            }
        }
        if self.size >= ROTATE_BYTES {
            let seq = self.files.last().expect("a log file").seq + 1;
            self.file = create_log_file(&*self.fs, &self.dir, seq)?;
            self.size = HEADER_LEN;
            self.files.push(LogFile { seq, max_index: None });
        }
        Ok(())
    }

    /// Writes the whole log (`purged`, then `entries`) into a new file and
    /// deletes the others (an old version's files are upgraded so).
    fn rewrite<'a, C: StoreTypes>(
        &mut self,
        purged: Option<LogId<NodeId>>,
        entries: impl Iterator<Item = &'a openraft::Entry<C>>,
    ) -> std::io::Result<()> {
        let mut buf = Vec::new();
        if let Some(p) = purged {
            frame(&Record::<C>::PurgeUpTo(p), &mut buf)?;
        }
        let mut max_index = None;
        for e in entries {
            max_index = max_index.max(Some(e.log_id.index));
            frame(&Record::Append(e.clone()), &mut buf)?;
        }
        let seq = self.files.last().map_or(0, |f| f.seq + 1);
        let file = create_log_file(&*self.fs, &self.dir, seq)?;
        file.write_all_at(&buf, HEADER_LEN)?;
        file.sync_all()?;
        for f in self.files.drain(..) {
            self.fs.remove_file(&log_path(&self.dir, f.seq))?;
        }
        self.fs.sync_dir(&self.dir)?;
        self.file = file;
        self.size = HEADER_LEN + buf.len() as u64;
        self.files.push(LogFile { seq, max_index });
        Ok(())
    }
}

/// A writer's answer to a truncation or purge.
async fn written(rx: oneshot::Receiver<Result<(), String>>) -> Result<(), StorageError<NodeId>> {
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(io_err(std::io::Error::other(e))),
        Err(_) => Err(io_err(std::io::Error::other("the Raft log writer stopped"))),
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
        let bytes = serde_json::to_vec(vote).map_err(|e| StorageIOError::write_vote(openraft::AnyError::new(&e)))?;
        let path = self.dir.join("vote.json");
        let fs = self.fs.clone();
        tokio::task::spawn_blocking(move || crate::fsutil::replace(&*fs, &path, &bytes, crate::fsutil::Sync::Durable))
            .await
            .map_err(|e| StorageIOError::write_vote(openraft::AnyError::new(&e)))?
            .map_err(|e| StorageIOError::write_vote(openraft::AnyError::new(&e)))?;
        self.lock().vote = Some(*vote);
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
        let mut bytes = Vec::new();
        let mut max = 0;
        let mut st = self.lock();
        for e in entries {
            frame(&Record::Append(e.clone()), &mut bytes).map_err(io_err)?;
            max = max.max(e.log_id.index);
            st.entries.insert(e.log_id.index, e);
        }
        self.submit(Job::Append(bytes, max, Done::Flushed(callback)))
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let (tx, rx) = oneshot::channel();
        {
            let mut bytes = Vec::new();
            frame(&Record::<C>::TruncateFrom(log_id.index), &mut bytes).map_err(io_err)?;
            let mut st = self.lock();
            st.entries.split_off(&log_id.index);
            self.submit(Job::Truncate(bytes, Done::Reply(tx)))?;
        }
        written(rx).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let (tx, rx) = oneshot::channel();
        {
            let mut bytes = Vec::new();
            frame(&Record::<C>::PurgeUpTo(log_id), &mut bytes).map_err(io_err)?;
            let mut st = self.lock();
            st.entries = st.entries.split_off(&(log_id.index + 1));
            st.last_purged = Some(log_id);
            self.submit(Job::Purge(bytes, log_id.index, Done::Reply(tx)))?;
        }
        written(rx).await
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use std::io::{Seek, SeekFrom, Write};
    use std::time::Duration;

    use super::*;
    use crate::catalog::CatalogCommand;
    use crate::cluster::{MetaRequest, TypeConfig};
    use crate::fs::fault::FaultFs;

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
        let mut bytes = Vec::new();
        for r in records {
            frame(r, &mut bytes).unwrap();
        }
        let mut disk = store.disk.lock().unwrap();
        disk.file.write_all_at(&bytes, disk.size).unwrap();
        disk.file.sync_data().unwrap();
        disk.size += bytes.len() as u64;
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
            let mut s = LogStore::open(&crate::fs::real(), dir.path()).unwrap();
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
        let mut s = LogStore::open(&crate::fs::real(), dir.path()).unwrap();
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
        let mut s = LogStore::open(&crate::fs::real(), dir.path()).unwrap();
        assert_eq!(s.get_log_state().await.unwrap().last_log_id.map(|l| l.index), Some(5));
        std::fs::write(dir.path().join("log"), b"garbage!!!!!!!").unwrap();
        assert!(LogStore::open(&crate::fs::real(), dir.path()).is_err());
    }

    #[tokio::test]
    async fn a_version_1_log_is_read_and_rewritten_and_changes_go_through_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = MAGIC.to_vec();
        old.extend_from_slice(&1u32.to_le_bytes());
        for r in [Record::Append(entry(1, 1)), Record::Append(entry(1, 2)), Record::Append(entry(1, 3))] {
            let json = serde_json::to_vec(&r).unwrap();
            old.extend_from_slice(&(json.len() as u32).to_le_bytes());
            old.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
            old.extend_from_slice(&json);
        }
        std::fs::write(dir.path().join("log"), &old).unwrap();
        let mut s = LogStore::open(&crate::fs::real(), dir.path()).unwrap();
        assert_eq!(log_files(&crate::fs::RealFs, dir.path()).unwrap(), [1], "rewritten into a new file");
        let bytes = std::fs::read(dir.path().join("log.1")).unwrap();
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), VERSION, "rewritten in the current version");
        let got = s.try_get_log_entries(0..100).await.unwrap();
        assert_eq!(format!("{got:?}"), format!("{:?}", [entry(1, 1), entry(1, 2), entry(1, 3)]));
        // A truncation and a purge are durable once they return.
        s.truncate(entry(1, 3).log_id).await.unwrap();
        s.purge(entry(1, 1).log_id).await.unwrap();
        drop(s);
        let mut s = LogStore::open(&crate::fs::real(), dir.path()).unwrap();
        let state = s.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(entry(1, 1).log_id));
        assert_eq!(state.last_log_id, Some(entry(1, 2).log_id));
        let got = s.try_get_log_entries(0..100).await.unwrap();
        assert_eq!(got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), [2]);
    }

    /// Appends `entries` through the writer's own path (as openraft's
    /// appends go, with a reply instead of openraft's callback).
    async fn append_via_writer(s: &LogStore, entries: Vec<Entry>) {
        try_append(s, entries).await.unwrap();
    }

    async fn try_append(s: &LogStore, entries: Vec<Entry>) -> Result<(), StorageError<NodeId>> {
        let (tx, rx) = oneshot::channel();
        let mut bytes = Vec::new();
        let mut max = 0;
        {
            let mut st = s.lock();
            for e in entries {
                frame(&Record::Append(e.clone()), &mut bytes).unwrap();
                max = max.max(e.log_id.index);
                st.entries.insert(e.log_id.index, e);
            }
        }
        s.submit(Job::Append(bytes, max, Done::Reply(tx)))?;
        written(rx).await
    }

    async fn indexes(s: &mut LogStore) -> Vec<u64> {
        s.try_get_log_entries(0..100).await.unwrap().iter().map(|e| e.log_id.index).collect()
    }

    /// Appends entry 3 after entries 1 and 2, loses power and reopens: the
    /// acknowledged append survived.
    async fn append_then_lose_power(disk: &FaultFs, dir: &Path, s: &LogStore, third: Entry) {
        append_via_writer(s, vec![third]).await;
        disk.power_loss();
        let mut s = LogStore::open(&disk.process_fs(), dir).unwrap();
        assert_eq!(indexes(&mut s).await, [1, 2, 3]);
    }

    #[tokio::test]
    async fn a_power_loss_drops_an_append_whose_fsync_had_not_completed_and_keeps_the_vote() {
        let disk = FaultFs::new();
        let dir = Path::new("/data/meta/raft");
        let s = LogStore::open(&disk.process_fs(), dir).unwrap();
        append_via_writer(&s, vec![entry(1, 1), entry(1, 2)]).await;
        // The disk is slow to make the next append durable: it is written,
        // not acknowledged.
        disk.set_faults(|f| f.hold_sync = Some("/raft/log".into()));
        let pending = tokio::spawn({
            let s = s.clone();
            async move { try_append(&s, vec![entry(2, 3)]).await }
        });
        strata_testkit::eventually("the append written, its fsync held", Duration::from_secs(10), || async {
            (disk.unsynced_bytes(dir) > 0).then_some(())
        })
        .await;
        // A vote does not wait for the log's writer.
        let mut voter = s.clone();
        tokio::time::timeout(Duration::from_secs(10), voter.save_vote(&Vote::new(2, 1))).await.unwrap().unwrap();
        disk.power_loss();
        assert!(pending.await.unwrap().is_err(), "the held append is never acknowledged");
        disk.clear_faults();
        let mut s = LogStore::open(&disk.process_fs(), dir).unwrap();
        assert_eq!(indexes(&mut s).await, [1, 2], "the un-fsynced append is gone");
        assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
        // The log goes on from there and survives the next power loss.
        append_then_lose_power(&disk, dir, &s, entry(2, 3)).await;
    }

    #[tokio::test]
    async fn a_torn_last_file_is_cut_durably() {
        let disk = FaultFs::new();
        let dir = Path::new("/data/topics/t/0/replication");
        let s = LogStore::open(&disk.process_fs(), dir).unwrap();
        append_via_writer(&s, vec![entry(1, 1), entry(1, 2)]).await;
        let intact = disk.contents(&dir.join("log")).unwrap();
        // A write cut short, then the process dies (what it wrote stays).
        disk.set_faults(|f| f.short_write = Some("/replication/log".into()));
        assert!(try_append(&s, vec![entry(1, 3)]).await.is_err());
        disk.process_crash();
        let torn = disk.contents(&dir.join("log")).unwrap();
        assert!(torn.len() > intact.len() && torn.starts_with(&intact), "a torn record at the tail");
        let mut s = LogStore::open(&disk.process_fs(), dir).unwrap();
        assert_eq!(indexes(&mut s).await, [1, 2]);
        assert_eq!(disk.contents(&dir.join("log")).unwrap(), intact, "the tail was cut");
        // The cut is durable, and appends after it replay.
        append_then_lose_power(&disk, dir, &s, entry(1, 3)).await;
    }

    #[tokio::test]
    async fn full_files_rotate_and_a_purge_deletes_the_files_it_covers() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(&crate::fs::real(), dir.path()).unwrap();
        let big = |index: u64| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(MetaRequest::Catalog(CatalogCommand::CreateTenant {
                name: "x".repeat(3 * 1024 * 1024),
                at_ms: 1,
                quotas: Default::default(),
            })),
        };
        // 3 MiB entries: a new file after every sixth.
        for i in 1..=14 {
            append_via_writer(&s, vec![big(i)]).await;
        }
        assert_eq!(log_files(&crate::fs::RealFs, dir.path()).unwrap(), [0, 1, 2]);
        // Purging up to 6 covers the first file only; up to 12 the second too.
        s.purge(big(6).log_id).await.unwrap();
        assert_eq!(log_files(&crate::fs::RealFs, dir.path()).unwrap(), [1, 2]);
        s.purge(big(11).log_id).await.unwrap();
        assert_eq!(log_files(&crate::fs::RealFs, dir.path()).unwrap(), [1, 2], "file 1 still holds entry 12");
        s.purge(big(12).log_id).await.unwrap();
        assert_eq!(log_files(&crate::fs::RealFs, dir.path()).unwrap(), [2]);
        s.truncate(big(14).log_id).await.unwrap();
        drop(s);
        let mut s = LogStore::open(&crate::fs::real(), dir.path()).unwrap();
        let state = s.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(big(12).log_id));
        assert_eq!(state.last_log_id, Some(big(13).log_id));
        let got = s.try_get_log_entries(0..100).await.unwrap();
        assert_eq!(got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), [13]);
        // A corrupt file that is not the last one is an error, not a silent cut.
        append_via_writer(&s, (15..=20).map(big).collect()).await;
        drop(s);
        assert_eq!(log_files(&crate::fs::RealFs, dir.path()).unwrap(), [2, 3]);
        let mut f = std::fs::OpenOptions::new().write(true).open(dir.path().join("log.2")).unwrap();
        f.seek(SeekFrom::Start(HEADER_LEN + 10)).unwrap();
        f.write_all(b"garbage").unwrap();
        drop(f);
        assert!(LogStore::open(&crate::fs::real(), dir.path()).is_err());
    }

    /// A version 1 partition log (each entry one batch, base64 in JSON) is
    /// read as entries of one batch, and a record that checksums but does
    /// not decode is an error, not a torn tail to cut.
    #[test]
    fn a_version_1_partition_log_is_upgraded_and_an_unreadable_record_is_an_error() {
        use crate::replication::{PartitionEntry, PartitionTypes};
        let dir = tempfile::tempdir().unwrap();
        let frame_json = |out: &mut Vec<u8>, json: &[u8]| {
            out.extend_from_slice(&(json.len() as u32).to_le_bytes());
            out.extend_from_slice(&crc32c::crc32c(json).to_le_bytes());
            out.extend_from_slice(json);
        };
        let mut old = MAGIC.to_vec();
        old.extend_from_slice(&1u32.to_le_bytes());
        let v1 = br#"{"Append":{"log_id":{"leader_id":{"term":1,"node_id":1},"index":1},"payload":{"Normal":{"batch":"YmF0Y2g=","at_ms":5}}}}"#;
        frame_json(&mut old, v1);
        std::fs::write(dir.path().join("log"), &old).unwrap();
        let s = super::LogStore::<PartitionTypes>::open(&crate::fs::real(), dir.path()).unwrap();
        let got: Vec<PartitionEntry> = s
            .lock()
            .entries
            .values()
            .filter_map(|e| match &e.payload {
                EntryPayload::Normal(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].batches.clone(), got[0].at_ms), (vec![bytes::Bytes::from_static(b"batch")], 5));
        drop(s);
        // Reopened in the current version: the same entry.
        let s = super::LogStore::<PartitionTypes>::open(&crate::fs::real(), dir.path()).unwrap();
        assert_eq!(s.lock().entries.len(), 1);
        drop(s);

        let dir = tempfile::tempdir().unwrap();
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(&1u32.to_le_bytes());
        frame_json(&mut bad, br#"{"Append":{"nonsense":true}}"#);
        std::fs::write(dir.path().join("log"), &bad).unwrap();
        let e = super::LogStore::<PartitionTypes>::open(&crate::fs::real(), dir.path()).err().expect("an error");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
        assert_eq!(std::fs::read(dir.path().join("log")).unwrap(), bad, "nothing was cut");
    }

    #[test]
    fn a_newest_file_without_its_header_is_taken_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        drop(LogStore::open(&crate::fs::real(), dir.path()).unwrap());
        // A crash right after creating the next file, before its header.
        std::fs::write(dir.path().join("log.1"), b"").unwrap();
        let s = LogStore::open(&crate::fs::real(), dir.path()).unwrap();
        assert!(!s.has_state());
        assert_eq!(std::fs::read(dir.path().join("log.1")).unwrap(), header());
    }
}
