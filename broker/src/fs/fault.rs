//! A fault-injecting, in-memory filesystem for tests.
//!
//! Fault model:
//! - every file keeps what was written (`data`) and what was on stable
//!   storage at its last successful fsync (`synced`); the namespace keeps the
//!   live directory entries and the durable ones (as of each directory's
//!   last fsync). Directories themselves are durable once created.
//! - [`FaultFs::power_loss`]: every file goes back to its last fsync and
//!   every directory entry to its directory's last fsync; handles opened
//!   before fail with EIO (the process that held them is gone).
//! - [`FaultFs::process_crash`]: what was written stays (the kernel's page
//!   cache survives a killed process); handles are invalidated.
//! - [`Faults::fail_sync`]: fsync of matching files fails with EIO and
//!   makes nothing durable (the worst case of Linux' behaviour after a
//!   failed writeback) until the fault is cleared.
//! - [`Faults::short_write`]: the next write to a matching file writes
//!   half its bytes and fails (`WriteZero`, as `write_all` reports a write
//!   that stopped short).
//! - [`Faults::fail_write`]: writes and truncations of matching files fail
//!   with EIO.
//! - [`Faults::fail_truncate`]: truncating (`set_len`) matching files
//!   fails with EIO, so a failed write cannot be undone.
//! - [`Faults::capacity`]: the disk holds this many bytes (the live size
//!   of all files); a write that grows past it writes what fits and fails
//!   with ENOSPC. Space returns when files shrink or are removed, or when
//!   the capacity is raised.
//! - [`Faults::hold_sync`]: fsync of matching files waits (writes and reads
//!   go on) until the fault is lifted, then completes, or until the power is
//!   lost or the process crashes, then fails with EIO: a disk that is slow
//!   to make data durable, so a test can lose power with bytes written but
//!   not yet on stable storage at a moment it chooses.
//! - [`FaultFs::process_fs`]: the filesystem as one run of a process sees
//!   it. After a power loss or a crash every call through it fails with
//!   EIO, as its handles do: a thread of the dead process still running (a
//!   blocking task of a runtime shut down without waiting for it) can change
//!   nothing on the disk the next run uses, not even by opening a file anew.
//!
//! Matching is by substring of the path, so a test can aim at one
//! partition's directory or one kind of file (`.log`, `catalog.json`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::{FileSystem, FsFile, OpenOptions};

const EIO: i32 = 5;
const EBADF: i32 = 9;
const ENOSPC: i32 = 28;

/// The faults in force.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub fail_sync: Option<String>,
    pub short_write: Option<String>,
    pub fail_write: Option<String>,
    pub fail_truncate: Option<String>,
    pub capacity: Option<u64>,
    pub hold_sync: Option<String>,
}

/// Counters a test can assert on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    pub syncs: u64,
    pub failed_syncs: u64,
    pub short_writes: u64,
    pub enospc: u64,
}

#[derive(Debug, Default)]
struct Node {
    data: Vec<u8>,
    synced: Vec<u8>,
}

#[derive(Debug, Default)]
struct State {
    generation: u64,
    next_id: u64,
    nodes: HashMap<u64, Node>,
    live: BTreeMap<PathBuf, u64>,
    durable: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    faults: Faults,
    stats: FaultStats,
}

impl State {
    fn used(&self) -> u64 {
        let ids: BTreeSet<u64> = self.live.values().copied().collect();
        ids.iter().filter_map(|id| self.nodes.get(id)).map(|n| n.data.len() as u64).sum()
    }

    fn free(&self) -> u64 {
        self.faults.capacity.map_or(u64::MAX, |c| c.saturating_sub(self.used()))
    }

    fn gc(&mut self) {
        let keep: BTreeSet<u64> = self.live.values().chain(self.durable.values()).copied().collect();
        self.nodes.retain(|id, _| keep.contains(id));
    }
}

fn matches(pattern: &Option<String>, path: &Path) -> bool {
    pattern.as_deref().is_some_and(|p| path.to_string_lossy().contains(p))
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file or directory", path.display()))
}

#[derive(Debug, Default)]
struct Disk {
    state: Mutex<State>,
    /// Signalled when the faults change or the generation does (held
    /// fsyncs look again).
    changed: Condvar,
}

/// The fault-injecting filesystem. Clones share the same disk.
#[derive(Debug, Clone, Default)]
pub struct FaultFs {
    disk: Arc<Disk>,
    /// Set on a [`FaultFs::process_fs`]: the generation it belongs to.
    generation: Option<u64>,
}

impl FaultFs {
    pub fn new() -> FaultFs {
        FaultFs::default()
    }

    /// This filesystem as the broker's `Fs` (it outlives power losses and
    /// crashes: for a test that reopens on it from the same thread).
    pub fn fs(&self) -> super::Fs {
        Arc::new(FaultFs { disk: self.disk.clone(), generation: None })
    }

    /// This filesystem for one run of a process: every call fails with EIO
    /// once the power is lost or the process crashes (see the module
    /// comment). The next run takes a new one.
    pub fn process_fs(&self) -> super::Fs {
        let generation = self.lock().generation;
        Arc::new(FaultFs { disk: self.disk.clone(), generation: Some(generation) })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.disk.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The state for an operation through this handle on the filesystem:
    /// EIO if it belongs to a process that is gone.
    fn lock_alive(&self) -> io::Result<MutexGuard<'_, State>> {
        let st = self.lock();
        match self.generation {
            Some(g) if g != st.generation => Err(io::Error::from_raw_os_error(EIO)),
            _ => Ok(st),
        }
    }

    /// Changes the faults in force. The closure runs on a copy, without the
    /// filesystem's lock, so it may ask the filesystem (`fs.used()`) for the
    /// values it sets: calling back while locked would deadlock.
    pub fn set_faults(&self, f: impl FnOnce(&mut Faults)) {
        let mut faults = self.lock().faults.clone();
        f(&mut faults);
        self.lock().faults = faults;
        self.disk.changed.notify_all();
    }

    /// Clears every fault (the disk works again, space returns, held
    /// fsyncs complete).
    pub fn clear_faults(&self) {
        self.lock().faults = Faults::default();
        self.disk.changed.notify_all();
    }

    /// Bytes of the live files under `under` that a power loss now would
    /// drop: what a file grew by since its last fsync, or all of it when
    /// its directory entry is not durable. (Bytes rewritten in place are
    /// not counted.)
    pub fn unsynced_bytes(&self, under: &Path) -> u64 {
        let st = self.lock();
        st.live
            .iter()
            .filter(|(p, _)| p.starts_with(under))
            .filter_map(|(p, id)| {
                let n = st.nodes.get(id)?;
                let durable = st.durable.get(p) == Some(id);
                Some(if durable { n.data.len().saturating_sub(n.synced.len()) as u64 } else { n.data.len() as u64 })
            })
            .sum()
    }

    pub fn stats(&self) -> FaultStats {
        self.lock().stats
    }

    /// Bytes the live files hold.
    pub fn used(&self) -> u64 {
        self.lock().used()
    }

    /// Power loss: everything not fsynced is gone; open handles are dead.
    pub fn power_loss(&self) {
        self.restart(false);
    }

    /// A killed process: what was written stays; open handles are dead.
    pub fn process_crash(&self) {
        self.restart(true);
    }

    /// Open handles die; what was written but not fsynced becomes durable
    /// (`written_stays`) or is lost.
    fn restart(&self, written_stays: bool) {
        let mut st = self.lock();
        st.generation += 1;
        self.disk.changed.notify_all();
        if written_stays {
            st.durable = st.live.clone();
        } else {
            st.live = st.durable.clone();
        }
        for node in st.nodes.values_mut() {
            if written_stays {
                node.synced = node.data.clone();
            } else {
                node.data = node.synced.clone();
            }
        }
        st.gc();
    }

    /// The live content of a file (for assertions).
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.lock();
        st.live.get(path).and_then(|id| st.nodes.get(id)).map(|n| n.data.clone())
    }

    /// Overwrites a file's live and durable content (to plant damage).
    pub fn plant(&self, path: &Path, bytes: &[u8]) {
        let mut st = self.lock();
        if let Some(&id) = st.live.get(path)
            && let Some(n) = st.nodes.get_mut(&id)
        {
            n.data = bytes.to_vec();
            n.synced = bytes.to_vec();
        }
    }
}

impl FileSystem for FaultFs {
    fn open(&self, path: &Path, opts: OpenOptions) -> io::Result<Arc<dyn FsFile>> {
        let mut st = self.lock_alive()?;
        let parent = path.parent().unwrap_or(Path::new(""));
        if !st.dirs.contains(parent) {
            return Err(not_found(parent));
        }
        let id = match st.live.get(path).copied() {
            Some(_) if opts.create_new => {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{}: file exists", path.display())));
            }
            Some(id) => {
                if opts.truncate {
                    if matches(&st.faults.fail_write, path) {
                        return Err(io::Error::from_raw_os_error(EIO));
                    }
                    if let Some(n) = st.nodes.get_mut(&id) {
                        n.data.clear();
                    }
                }
                id
            }
            None if opts.create || opts.create_new => {
                let id = st.next_id;
                st.next_id += 1;
                st.nodes.insert(id, Node::default());
                st.live.insert(path.to_path_buf(), id);
                id
            }
            None => return Err(not_found(path)),
        };
        Ok(Arc::new(FaultFile {
            fs: FaultFs { disk: self.disk.clone(), generation: None },
            id,
            path: path.to_path_buf(),
            generation: st.generation,
            writable: opts.write,
        }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let st = self.lock_alive()?;
        st.live.get(path).and_then(|id| st.nodes.get(id)).map(|n| n.data.clone()).ok_or_else(|| not_found(path))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock_alive()?;
        for p in path.ancestors() {
            if st.live.contains_key(p) {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{}: a file", p.display())));
            }
            st.dirs.insert(p.to_path_buf());
        }
        Ok(())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let st = self.lock_alive()?;
        if !st.dirs.contains(path) {
            return Err(not_found(path));
        }
        let files = st.live.keys().filter(|p| p.parent() == Some(path));
        let dirs = st.dirs.iter().filter(|p| p.parent() == Some(path));
        Ok(files.chain(dirs).cloned().collect())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock_alive()?;
        if st.live.remove(path).is_none() {
            return Err(not_found(path));
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock_alive()?;
        if !st.dirs.contains(to.parent().unwrap_or(Path::new(""))) {
            return Err(not_found(to));
        }
        let id = st.live.remove(from).ok_or_else(|| not_found(from))?;
        st.live.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock_alive()?;
        if !st.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        if matches(&st.faults.fail_sync, dir) {
            st.stats.failed_syncs += 1;
            return Err(io::Error::from_raw_os_error(EIO));
        }
        st.durable.retain(|p, _| p.parent() != Some(dir));
        let entries: Vec<(PathBuf, u64)> =
            st.live.iter().filter(|(p, _)| p.parent() == Some(dir)).map(|(p, id)| (p.clone(), *id)).collect();
        st.durable.extend(entries);
        st.stats.syncs += 1;
        Ok(())
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        let st = self.lock_alive()?;
        if st.dirs.contains(path) {
            return Ok(0);
        }
        st.live.get(path).and_then(|id| st.nodes.get(id)).map(|n| n.data.len() as u64).ok_or_else(|| not_found(path))
    }
}

/// A handle on a [`FaultFs`] file.
#[derive(Debug)]
pub struct FaultFile {
    fs: FaultFs,
    id: u64,
    path: PathBuf,
    generation: u64,
    writable: bool,
}

impl FaultFile {
    /// The state, if this handle is still valid.
    fn state(&self) -> io::Result<MutexGuard<'_, State>> {
        let st = self.fs.lock();
        if st.generation != self.generation || !st.nodes.contains_key(&self.id) {
            return Err(io::Error::from_raw_os_error(EIO));
        }
        Ok(st)
    }

    fn sync(&self) -> io::Result<()> {
        let mut st = self.state()?;
        while matches(&st.faults.hold_sync, &self.path) {
            st = self.fs.disk.changed.wait(st).unwrap_or_else(std::sync::PoisonError::into_inner);
            if st.generation != self.generation {
                return Err(io::Error::from_raw_os_error(EIO));
            }
        }
        if matches(&st.faults.fail_sync, &self.path) {
            st.stats.failed_syncs += 1;
            return Err(io::Error::from_raw_os_error(EIO));
        }
        st.stats.syncs += 1;
        let n = st.nodes.get_mut(&self.id).ok_or_else(|| io::Error::from_raw_os_error(EIO))?;
        n.synced = n.data.clone();
        Ok(())
    }
}

impl FsFile for FaultFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let st = self.state()?;
        let data = &st.nodes[&self.id].data;
        let start = (offset.min(data.len() as u64)) as usize;
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::from_raw_os_error(EBADF));
        }
        let mut st = self.state()?;
        if matches(&st.faults.fail_write, &self.path) {
            return Err(io::Error::from_raw_os_error(EIO));
        }
        let mut take = buf.len();
        let mut err = None;
        if matches(&st.faults.short_write, &self.path) {
            st.faults.short_write = None;
            st.stats.short_writes += 1;
            take = buf.len() / 2;
            err = Some(io::Error::new(io::ErrorKind::WriteZero, "failed to write whole buffer"));
        }
        let len = st.nodes[&self.id].data.len() as u64;
        let free = st.free();
        let room = (len.saturating_add(free)).saturating_sub(offset);
        if (take as u64) > room {
            take = room as usize;
            st.stats.enospc += 1;
            err = Some(io::Error::from_raw_os_error(ENOSPC));
        }
        let data = &mut st.nodes.get_mut(&self.id).ok_or_else(|| io::Error::from_raw_os_error(EIO))?.data;
        let end = offset as usize + take;
        if take > 0 || err.is_none() {
            if data.len() < end {
                data.resize(end, 0);
            }
            data[offset as usize..end].copy_from_slice(&buf[..take]);
        }
        err.map_or(Ok(()), Err)
    }

    fn set_len(&self, new_len: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::from_raw_os_error(EBADF));
        }
        let mut st = self.state()?;
        if matches(&st.faults.fail_write, &self.path) || matches(&st.faults.fail_truncate, &self.path) {
            return Err(io::Error::from_raw_os_error(EIO));
        }
        let len = st.nodes[&self.id].data.len() as u64;
        if new_len > len && new_len - len > st.free() {
            st.stats.enospc += 1;
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        st.nodes.get_mut(&self.id).ok_or_else(|| io::Error::from_raw_os_error(EIO))?.data.resize(new_len as usize, 0);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.state()?.nodes[&self.id].data.len() as u64)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Creates `dir/name` holding `bytes`, durably (data and entry synced).
    fn durable_file(fs: &dyn FileSystem, dir: &Path, name: &str, bytes: &[u8]) -> Arc<dyn FsFile> {
        fs.create_dir_all(dir).unwrap();
        let f = fs.open(&dir.join(name), OpenOptions::CREATE).unwrap();
        f.write_all_at(bytes, 0).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(dir).unwrap();
        f
    }

    #[test]
    fn power_loss_keeps_only_what_was_fsynced_and_dir_synced() {
        let fs = FaultFs::new();
        let dir = Path::new("/d");
        let a = durable_file(&fs, dir, "a", b"hello");
        a.write_all_at(b" world", 5).unwrap();
        // Synced data but no directory sync: the entry is lost.
        let b = fs.open(&dir.join("b"), OpenOptions::CREATE).unwrap();
        b.write_all_at(b"x", 0).unwrap();
        b.sync_data().unwrap();
        fs.power_loss();
        assert_eq!(fs.read(&dir.join("a")).unwrap(), b"hello");
        assert!(!fs.exists(&dir.join("b")));
        assert_eq!(a.read_at(&mut [0u8; 4], 0).unwrap_err().raw_os_error(), Some(EIO), "stale handle");
    }

    #[test]
    fn faults_fail_sync_cut_writes_and_fill_the_disk() {
        let fs = FaultFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let f = fs.open(Path::new("/d/f.log"), OpenOptions::CREATE).unwrap();
        fs.set_faults(|f| f.fail_sync = Some(".log".into()));
        f.write_all_at(b"abcd", 0).unwrap();
        assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(EIO));
        fs.set_faults(|f| f.short_write = Some("f.log".into()));
        let e = f.write_all_at(b"123456", 4).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
        assert_eq!(fs.read(Path::new("/d/f.log")).unwrap(), b"abcd123");
        f.write_all_at(b"z", 7).unwrap();
        fs.clear_faults();
        fs.set_faults(|f| f.capacity = Some(10));
        let e = f.write_all_at(b"0123456789", 8).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert_eq!(fs.used(), 10, "wrote what fits");
        f.set_len(4).unwrap();
        f.write_all_at(b"efgh", 4).unwrap();
        assert_eq!(fs.stats().enospc, 1);
        assert_eq!(fs.stats().short_writes, 1);
        assert_eq!(fs.stats().failed_syncs, 1);
    }
    #[test]
    fn a_process_fs_is_dead_after_a_power_loss_and_a_held_fsync_waits_for_the_fault() {
        let disk = FaultFs::new();
        let old = disk.process_fs();
        let dir = Path::new("/d");
        let f = durable_file(&*old, dir, "raft.log", b"durable");
        assert_eq!(disk.unsynced_bytes(dir), 0);

        // A held fsync waits, in its own thread, until the fault is lifted.
        disk.set_faults(|f| f.hold_sync = Some("raft".into()));
        f.write_all_at(b"+held", 7).unwrap();
        assert_eq!(disk.unsynced_bytes(dir), 5);
        let held = std::thread::spawn({
            let f = f.clone();
            move || f.sync_data()
        });
        disk.clear_faults();
        held.join().unwrap().unwrap();
        assert_eq!(disk.unsynced_bytes(dir), 0);

        // Held again, then the power goes: the fsync fails, the bytes are
        // gone, and the old run can neither open nor create anything.
        disk.set_faults(|f| f.hold_sync = Some("raft".into()));
        f.write_all_at(b"+lost", 12).unwrap();
        let held = std::thread::spawn({
            let f = f.clone();
            move || f.sync_data()
        });
        disk.power_loss();
        assert_eq!(held.join().unwrap().unwrap_err().raw_os_error(), Some(EIO));
        assert_eq!(disk.fs().read(&dir.join("raft.log")).unwrap(), b"durable+held");
        for e in [
            old.open(&dir.join("raft.log"), OpenOptions::WRITE).unwrap_err(),
            old.open(&dir.join("new"), OpenOptions::CREATE).unwrap_err(),
            old.read(&dir.join("raft.log")).unwrap_err(),
            old.remove_file(&dir.join("raft.log")).unwrap_err(),
        ] {
            assert_eq!(e.raw_os_error(), Some(EIO), "{e}");
        }
        // The next run works.
        disk.clear_faults();
        let new = disk.process_fs();
        let f = new.open(&dir.join("raft.log"), OpenOptions::WRITE).unwrap();
        f.write_all_at(b"!", 12).unwrap();
        f.sync_data().unwrap();
        assert_eq!(new.read(&dir.join("raft.log")).unwrap(), b"durable+held!");
    }
}
