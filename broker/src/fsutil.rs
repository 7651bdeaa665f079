//! Small filesystem helpers shared by every module that persists files: the
//! one way to replace a file atomically, on the filesystem seam.

use std::io;
use std::path::{Path, PathBuf};

use crate::fs::{FileSystem, OpenOptions};

/// Whether a replaced file must be on stable storage before the call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sync {
    /// fsync the file before the rename and the directory after it.
    Durable,
    /// Rename only (data the caller can rebuild, or durability `none`).
    Lazy,
}

/// Replaces `path` with `bytes` atomically: a reader (or a restart after a
/// crash) sees the old content or the new, never a mix. Writes a temporary
/// file beside it (`<name>.tmp`), then renames it over `path`; with
/// [`Sync::Durable`] the file is fsynced before the rename and the directory
/// after. A failed replace removes its temporary file and leaves `path` as
/// it was.
/// Goes through the filesystem seam `fs`.
pub(crate) fn replace(fs: &dyn FileSystem, path: &Path, bytes: &[u8], sync: Sync) -> io::Result<()> {
    let tmp = temp_path(path);
    let written = (|| {
        let f = fs.open(&tmp, OpenOptions::CREATE)?;
        f.write_all_at(bytes, 0)?;
        if sync == Sync::Durable {
            f.sync_all()?;
        }
        drop(f);
        fs.rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs.remove_file(&tmp);
        return Err(e);
    }
    if sync == Sync::Durable {
        fs.sync_dir(path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?;
    }
    Ok(())
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        replace(&crate::fs::RealFs, &path, b"one", Sync::Durable).unwrap();
        replace(&crate::fs::RealFs, &path, b"two", Sync::Lazy).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn a_failed_replace_keeps_the_old_file_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cursor");
        replace(&crate::fs::RealFs, &path, b"old", Sync::Durable).unwrap();
        // A directory where the file should go: the rename fails.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("x"), b"").unwrap();
        assert!(replace(&crate::fs::RealFs, &blocked, b"new", Sync::Durable).is_err());
        assert!(!dir.path().join("blocked.tmp").exists(), "temporary file left behind");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }
}
