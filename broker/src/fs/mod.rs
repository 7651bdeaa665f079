//! The filesystem seam: every byte the broker persists for the partition
//! logs (segments, indexes, producer snapshots), the queue journal and
//! snapshots, the catalog, the consumer offsets and the Raft groups (logs,
//! votes, applied markers) goes through [`FileSystem`] and the file handles
//! it opens ([`FsFile`]).
//!
//! - [`RealFs`] is `std::fs` with positional I/O (`pread`/`pwrite`),
//!   `fdatasync`/`fsync` and directory fsync: the same system calls the
//!   broker made before the seam, one dynamic call per operation, no copies.
//! - [`fault::FaultFs`] (tests, or the `fault-injection` feature) is an
//!   in-memory filesystem that remembers, per file, what has been fsynced,
//!   and can fail fsync (EIO), hold it, cut a write short, run out of space
//!   (ENOSPC) and lose power (every byte and directory entry not yet made
//!   durable is dropped).
//! - [`handles::SegmentFiles`] bounds the segment files held open at once
//!   (`limits.max_open_segments`).

#[cfg(any(test, feature = "fault-injection"))]
pub mod fault;
pub mod handles;

pub use handles::SegmentFiles;

use std::fmt::Debug;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

/// The filesystem a component persists through.
pub type Fs = Arc<dyn FileSystem>;

/// The real filesystem (shared; cloning it is a reference count).
pub fn real() -> Fs {
    static REAL: LazyLock<Fs> = LazyLock::new(|| Arc::new(RealFs));
    REAL.clone()
}

/// How [`FileSystem::open`] opens a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenOptions {
    pub write: bool,
    /// Create the file if it does not exist.
    pub create: bool,
    /// Create the file; fail if it exists.
    pub create_new: bool,
    /// Truncate an existing file to zero bytes.
    pub truncate: bool,
}

impl OpenOptions {
    /// Read only.
    pub const READ: OpenOptions = OpenOptions { write: false, create: false, create_new: false, truncate: false };
    /// Read and write an existing file.
    pub const WRITE: OpenOptions = OpenOptions { write: true, create: false, create_new: false, truncate: false };
    /// Read and write a file that must not exist yet.
    pub const CREATE_NEW: OpenOptions = OpenOptions { write: true, create: false, create_new: true, truncate: false };
    /// Create or truncate (like `File::create`).
    pub const CREATE: OpenOptions = OpenOptions { write: true, create: true, create_new: false, truncate: true };
}

/// Directory-level operations and opening files.
pub trait FileSystem: Send + Sync + Debug {
    fn open(&self, path: &Path, opts: OpenOptions) -> io::Result<Arc<dyn FsFile>>;
    /// The whole content of a file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Paths of the entries of a directory (any order).
    fn read_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes created, renamed and removed entries of `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Length of a file in bytes.
    fn len(&self, path: &Path) -> io::Result<u64>;
    fn exists(&self, path: &Path) -> bool {
        self.len(path).is_ok()
    }
}

/// An open file: positional reads and writes, no cursor.
pub trait FsFile: Send + Sync + Debug {
    /// Reads up to `buf.len()` bytes at `offset`; 0 at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, or fails (a write that stops short
    /// fails with `WriteZero` or the error that stopped it).
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// fdatasync: the file's data (and length) on stable storage.
    fn sync_data(&self) -> io::Result<()>;
    /// fsync: data and metadata.
    fn sync_all(&self) -> io::Result<()>;

    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "failed to fill whole buffer")),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A sequential reader over a positional file (for scans behind a `BufReader`).
pub struct Reader<'a> {
    file: &'a dyn FsFile,
    pos: u64,
}

impl<'a> Reader<'a> {
    pub fn new(file: &'a dyn FsFile, pos: u64) -> Reader<'a> {
        Reader { file, pos }
    }
}

impl io::Read for Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// `std::fs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealFs;

impl FileSystem for RealFs {
    fn open(&self, path: &Path, opts: OpenOptions) -> io::Result<Arc<dyn FsFile>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(opts.write)
            .create(opts.create)
            .create_new(opts.create_new)
            .truncate(opts.truncate)
            .open(path)?;
        Ok(Arc::new(RealFile(file)))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        std::fs::read_dir(path)?.map(|e| e.map(|e| e.path())).collect()
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }
}

/// A `std::fs::File` behind the seam.
#[derive(Debug)]
pub struct RealFile(pub std::fs::File);

impl FsFile for RealFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
}
