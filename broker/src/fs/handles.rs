//! The bounded cache of open segment files: every partition log and queue
//! log of a broker opens its segment files through one [`SegmentFiles`], so
//! the descriptors the broker holds for data no longer grow with the number
//! of partitions (`limits.max_open_segments`).
//!
//! - Handles are `Arc`s. Eviction only drops the cache's reference: a
//!   handle somebody holds (an append or fsync in progress, a read, an
//!   active segment with bytes not yet fsynced) stays open until they let
//!   go, and is never chosen for eviction while held.
//! - Least recently used idle handles go first; an evicted file is simply
//!   reopened on its next use.
//! - When every cached handle is in use, the cache holds more than its
//!   capacity until some are released (those handles are bounded by the
//!   requests in flight, which have their own limits): refusing an open
//!   would fail a write whose bytes are already in memory for no gain.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;

use super::{Fs, FsFile, OpenOptions};

/// The most segment files a derived `limits.max_open_segments` keeps
/// open, and the capacity of logs opened outside a broker.
pub const DEFAULT_MAX_OPEN_SEGMENTS: usize = 1024;

/// The cache's capacity for `limits.max_open_segments = configured`: as
/// configured, or (0) half the process's open-file limit, at most
/// [`DEFAULT_MAX_OPEN_SEGMENTS`] and at least 16.
pub fn capacity_for(configured: u32) -> usize {
    if configured > 0 {
        return configured as usize;
    }
    let limit = rlimit::Resource::NOFILE.get().map_or(1024, |(soft, _)| soft);
    usize::try_from(limit / 2).unwrap_or(usize::MAX).clamp(16, DEFAULT_MAX_OPEN_SEGMENTS)
}

#[derive(Debug)]
struct Entry {
    file: Arc<dyn FsFile>,
    writable: bool,
}

impl Entry {
    /// Nobody but the cache holds the handle.
    fn idle(&self) -> bool {
        Arc::strong_count(&self.file) == 1
    }
}

/// Open segment files, at most about `capacity` of them.
#[derive(Debug)]
pub struct SegmentFiles {
    fs: Fs,
    capacity: usize,
    open: Mutex<LruCache<PathBuf, Entry>>,
}

impl SegmentFiles {
    /// A cache of at most `capacity` idle handles on `fs` (at least one).
    pub fn new(fs: Fs, capacity: usize) -> Arc<SegmentFiles> {
        Arc::new(SegmentFiles { fs, capacity: capacity.max(1), open: Mutex::new(LruCache::unbounded()) })
    }

    /// The filesystem the files live on.
    pub fn fs(&self) -> &Fs {
        &self.fs
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Handles the cache holds right now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, LruCache<PathBuf, Entry>> {
        // Nothing in the cache can be left half-changed by a panic.
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An open handle on the existing file `path` (read-write when `write`),
    /// from the cache or opened now.
    pub fn get(&self, path: &Path, write: bool) -> io::Result<Arc<dyn FsFile>> {
        if let Some(e) = self.lock().get(path)
            && (e.writable || !write)
        {
            return Ok(e.file.clone());
        }
        // Opened outside the lock: an open is a system call, and other
        // partitions' appends must not wait for it.
        let file = self.fs.open(path, if write { OpenOptions::WRITE } else { OpenOptions::READ })?;
        Ok(self.insert(path, file, write))
    }

    /// Caches a handle just opened (a segment file just created); returns
    /// the handle to use (a writable one opened meanwhile by someone else
    /// wins over a read-only one).
    pub fn insert(&self, path: &Path, file: Arc<dyn FsFile>, writable: bool) -> Arc<dyn FsFile> {
        let mut open = self.lock();
        if let Some(e) = open.get(path)
            && e.writable
            && !writable
        {
            return e.file.clone();
        }
        open.put(path.to_path_buf(), Entry { file: file.clone(), writable });
        let evicted = self.evict(&mut open);
        drop(open);
        // Closed (if nobody else holds them) outside the lock.
        drop(evicted);
        file
    }

    /// Takes least recently used idle handles out until the cache is back
    /// within its capacity (or only handles in use are left).
    fn evict(&self, open: &mut LruCache<PathBuf, Entry>) -> Vec<Entry> {
        let mut evicted = Vec::new();
        while open.len() > self.capacity {
            // `iter` runs from most to least recently used.
            let Some(victim) = open.iter().rev().find(|(_, e)| e.idle()).map(|(p, _)| p.clone()) else {
                break;
            };
            evicted.extend(open.pop(&victim));
        }
        evicted
    }

    /// Drops the cache's handle on `path` (the file is being removed).
    pub fn forget(&self, path: &Path) {
        let gone = self.lock().pop(path);
        drop(gone);
    }

    /// Drops the cache's handles on every file under `dir` (a log closed or
    /// removed: its handles must not keep deleted files' space).
    pub fn forget_under(&self, dir: &Path) {
        let mut open = self.lock();
        let doomed: Vec<PathBuf> = open.iter().map(|(p, _)| p).filter(|p| p.starts_with(dir)).cloned().collect();
        let gone: Vec<Entry> = doomed.iter().filter_map(|p| open.pop(p)).collect();
        drop(open);
        drop(gone);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::FileSystem;
    use crate::fs::fault::FaultFs;

    fn files(n: usize) -> (FaultFs, Vec<PathBuf>) {
        let fs = FaultFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let paths: Vec<PathBuf> = (0..n).map(|i| PathBuf::from(format!("/d/{i}.log"))).collect();
        for p in &paths {
            fs.open(p, OpenOptions::CREATE).unwrap().write_all_at(p.to_str().unwrap().as_bytes(), 0).unwrap();
        }
        (fs, paths)
    }

    #[test]
    fn holds_at_most_capacity_idle_handles_evicting_the_least_recently_used() {
        let (fs, paths) = files(5);
        let cache = SegmentFiles::new(fs.fs(), 3);
        for p in &paths[..3] {
            cache.get(p, false).unwrap();
        }
        // Touch 0: 1 is now the least recently used.
        cache.get(&paths[0], false).unwrap();
        cache.get(&paths[3], false).unwrap();
        assert_eq!(cache.len(), 3);
        let cached: Vec<PathBuf> = cache.lock().iter().map(|(p, _)| p.clone()).collect();
        assert!(!cached.contains(&paths[1]), "{cached:?}");
        assert!(cached.contains(&paths[0]));
        // An evicted file is reopened on demand and reads the same bytes.
        let f = cache.get(&paths[1], false).unwrap();
        let mut buf = vec![0u8; 8];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(buf, b"/d/1.log");
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn a_handle_in_use_is_never_evicted() {
        let (fs, paths) = files(4);
        let cache = SegmentFiles::new(fs.fs(), 2);
        let held = cache.get(&paths[0], true).unwrap();
        let also_held = cache.get(&paths[1], true).unwrap();
        // Both cached handles are in use: the cache goes over its capacity
        // rather than close them.
        let _third = cache.get(&paths[2], false).unwrap();
        assert_eq!(cache.len(), 3);
        // The held handles work, and are the cached ones.
        held.write_all_at(b"!", 0).unwrap();
        assert!(Arc::ptr_eq(&held, &cache.get(&paths[0], true).unwrap()));
        drop(also_held);
        drop(_third);
        // Released: the next insert brings the cache back to its capacity,
        // evicting idle handles only.
        cache.get(&paths[3], false).unwrap();
        assert_eq!(cache.len(), 2);
        assert!(Arc::ptr_eq(&held, &cache.get(&paths[0], true).unwrap()), "the held handle stayed");
    }

    #[test]
    fn a_write_request_upgrades_a_read_only_handle_and_forget_drops_handles() {
        let (fs, paths) = files(3);
        let cache = SegmentFiles::new(fs.fs(), 8);
        let ro = cache.get(&paths[0], false).unwrap();
        assert!(ro.write_all_at(b"x", 0).is_err(), "read-only");
        let rw = cache.get(&paths[0], true).unwrap();
        rw.write_all_at(b"x", 0).unwrap();
        // A later read gets the writable handle.
        assert!(Arc::ptr_eq(&rw, &cache.get(&paths[0], false).unwrap()));
        cache.get(&paths[1], false).unwrap();
        cache.forget(&paths[1]);
        assert_eq!(cache.len(), 1);
        fs.create_dir_all(Path::new("/e")).unwrap();
        fs.open(Path::new("/e/1.log"), OpenOptions::CREATE).unwrap();
        cache.get(Path::new("/e/1.log"), false).unwrap();
        cache.get(&paths[2], false).unwrap();
        cache.forget_under(Path::new("/d"));
        let cached: Vec<PathBuf> = cache.lock().iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(cached, [PathBuf::from("/e/1.log")]);
    }
}
