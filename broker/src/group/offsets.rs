//! Committed offsets of one consumer group, durable on disk.
//!
//! One small JSON file per group (`groups/<tenant>/<group>.json`), replaced
//! atomically on every commit (temp file, fsync, rename, fsync directory), so
//! a commit that was acknowledged survives kill -9 and power loss.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Committed {
    pub offset: u64,
    #[serde(default)]
    pub metadata: String,
    pub committed_at_ms: i64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct OffsetsFile {
    version: u32,
    /// topic -> partition -> committed
    offsets: BTreeMap<String, BTreeMap<u32, Committed>>,
}

#[derive(Debug)]
pub(crate) struct OffsetStore {
    path: PathBuf,
    fs: crate::fs::Fs,
    data: OffsetsFile,
}

pub(crate) fn group_file(data_dir: &Path, tenant: &str, group: &str) -> PathBuf {
    data_dir.join("groups").join(tenant).join(format!("{group}.json"))
}

impl OffsetStore {
    /// Loads the group's offsets; a missing file is an empty group.
    pub fn load(path: PathBuf) -> std::io::Result<OffsetStore> {
        OffsetStore::load_in(crate::fs::real(), path)
    }

    /// [`OffsetStore::load`] on the filesystem `fs`.
    pub fn load_in(fs: crate::fs::Fs, path: PathBuf) -> std::io::Result<OffsetStore> {
        let data = match fs.read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => OffsetsFile { version: 1, ..Default::default() },
            Err(e) => return Err(e),
        };
        Ok(OffsetStore { path, data, fs })
    }

    pub fn exists(&self) -> bool {
        self.fs.exists(&self.path)
    }

    pub fn get(&self, topic: &str, partition: u32) -> Option<&Committed> {
        self.data.offsets.get(topic).and_then(|p| p.get(&partition))
    }

    pub fn all(&self) -> impl Iterator<Item = (&String, u32, &Committed)> {
        self.data.offsets.iter().flat_map(|(t, ps)| ps.iter().map(move |(p, c)| (t, *p, c)))
    }

    /// Stores `entries` durably; on error nothing changes in memory.
    pub async fn commit(&mut self, entries: Vec<(String, u32, Committed)>) -> std::io::Result<()> {
        let mut next = self.data.clone();
        for (topic, partition, c) in entries {
            next.offsets.entry(topic).or_default().insert(partition, c);
        }
        let bytes = serde_json::to_vec_pretty(&next).map_err(std::io::Error::other)?;
        let (fs, path) = (self.fs.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || write_atomic(&*fs, &path, &bytes))
            .await
            .map_err(std::io::Error::other)??;
        self.data = next;
        Ok(())
    }

    pub fn delete(&mut self) -> std::io::Result<()> {
        match self.fs.remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.data.offsets.clear();
        Ok(())
    }
}

fn write_atomic(fs: &dyn crate::fs::FileSystem, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs.create_dir_all(dir)?;
    crate::fsutil::replace(fs, path, bytes, crate::fsutil::Sync::Durable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commits_survive_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = group_file(dir.path(), "default", "g");
        let mut s = OffsetStore::load(path.clone()).unwrap();
        assert!(!s.exists());
        s.commit(vec![("t".into(), 0, Committed { offset: 5, metadata: String::new(), committed_at_ms: 1 })])
            .await
            .unwrap();
        s.commit(vec![("t".into(), 1, Committed { offset: 7, metadata: "m".into(), committed_at_ms: 2 })])
            .await
            .unwrap();
        let s = OffsetStore::load(path).unwrap();
        assert_eq!(s.get("t", 0).unwrap().offset, 5);
        assert_eq!(s.get("t", 1).unwrap().metadata, "m");
        assert_eq!(s.all().count(), 2);
    }

    /// Through the fault-injecting filesystem: a committed offset survives a
    /// power loss; a commit whose fsync fails is refused and changes nothing,
    /// in memory or on disk.
    #[tokio::test]
    async fn committed_offsets_survive_power_loss_and_a_failed_fsync_commits_nothing() {
        use crate::fs::fault::FaultFs;
        let fs = FaultFs::new();
        let path = group_file(Path::new("/data"), "default", "g");
        let at = |offset| vec![("t".to_string(), 0, Committed { offset, metadata: String::new(), committed_at_ms: 1 })];
        let mut s = OffsetStore::load_in(fs.fs(), path.clone()).unwrap();
        s.commit(at(5)).await.unwrap();
        fs.power_loss();
        let mut s = OffsetStore::load_in(fs.fs(), path.clone()).unwrap();
        assert_eq!(s.get("t", 0).unwrap().offset, 5);
        fs.set_faults(|f| f.fail_sync = Some("g.json".into()));
        assert!(s.commit(at(9)).await.is_err());
        assert_eq!(s.get("t", 0).unwrap().offset, 5, "nothing changed in memory");
        fs.clear_faults();
        fs.power_loss();
        let s = OffsetStore::load_in(fs.fs(), path).unwrap();
        assert_eq!(s.get("t", 0).unwrap().offset, 5);
    }
}
