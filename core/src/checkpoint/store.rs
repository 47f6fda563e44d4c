//! Where checkpoints live. [`LocalStore`] is a local (or shared) directory:
//!
//! ```text
//! state/
//!   LOCK                          one process per state directory
//!   chk-00000000000000000012/     one directory per checkpoint epoch
//!     window-0.w0.part            part files (written and fsynced by each worker)
//!     MANIFEST                    the commit point (written as MANIFEST.tmp, fsynced, renamed)
//! ```
//!
//! Durability rules: a part is fsynced before its descriptor is emitted; the
//! commit fsyncs the checkpoint directory (so every part's entry is durable),
//! writes `MANIFEST.tmp`, fsyncs it, renames it to `MANIFEST` and fsyncs the
//! directory and the state directory. The return of the last fsync is the
//! commit point. Any fsync or rename error is returned, never retried.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::checkpoint::manifest::{FileEntry, Manifest};
use crate::error::{Error, IoContext, Result};
use crate::time::Epoch;

/// Storage for checkpoint parts and manifests.
pub trait CheckpointStore: Send + Sync {
    /// Writes a part file for `epoch` durably and returns its entry.
    fn write_part(&self, epoch: Epoch, name: &str, bytes: &[u8]) -> Result<FileEntry>;
    /// Reads a part file and verifies its size and checksum.
    fn read_part(&self, entry: &FileEntry) -> Result<Vec<u8>>;
    /// Commits `manifest` (the commit point).
    fn commit(&self, manifest: &Manifest) -> Result<()>;
    /// The newest committed manifest; an error if it is damaged (never an older one instead).
    fn latest(&self) -> Result<Option<Manifest>>;
    /// Deletes checkpoints older than the `keep` newest committed ones (keeping
    /// part files a kept manifest still lists).
    fn retain(&self, keep: usize) -> Result<()>;
    /// Deletes the (uncommitted) checkpoint directories of epochs after `epoch`.
    fn discard_after(&self, epoch: Option<Epoch>) -> Result<()>;
}

/// A checkpoint store in a local directory, locked for one process.
#[derive(Debug)]
pub struct LocalStore {
    dir: PathBuf,
    _lock: Option<File>,
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).ctx("open", dir)?.sync_all().ctx("fsync", dir)
}

/// Reads the newest committed manifest of a state directory without locking it
/// (for tools such as `weir group describe` while a pipeline runs).
pub fn read_latest(dir: &Path) -> Result<Option<Manifest>> {
    let store = LocalStore { dir: dir.to_path_buf(), _lock: None };
    store.latest()
}

impl LocalStore {
    /// Opens (creating) the state directory and takes its lock.
    pub fn open(dir: impl Into<PathBuf>) -> Result<LocalStore> {
        let dir = dir.into();
        fs::create_dir_all(&dir).ctx("create directory", &dir)?;
        let lock_path = dir.join("LOCK");
        let lock =
            OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).ctx("open", &lock_path)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(Error::Locked { path: lock_path }),
            Err(fs::TryLockError::Error(e)) => return Err(Error::io("lock", lock_path, e)),
        }
        Ok(LocalStore { dir, _lock: Some(lock) })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn chk_name(epoch: Epoch) -> String {
        format!("chk-{epoch:020}")
    }

    /// Checkpoint epochs that have a directory, newest first, with whether they are committed.
    fn checkpoints(&self) -> Result<Vec<(Epoch, bool)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).ctx("list", &self.dir)? {
            let entry = entry.ctx("list", &self.dir)?;
            let name = entry.file_name();
            let Some(epoch) = name.to_str().and_then(|n| n.strip_prefix("chk-")).and_then(|n| n.parse::<Epoch>().ok())
            else {
                continue;
            };
            out.push((epoch, entry.path().join("MANIFEST").exists()));
        }
        out.sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
        Ok(out)
    }

    fn read_manifest(&self, epoch: Epoch) -> Result<Manifest> {
        let path = self.dir.join(Self::chk_name(epoch)).join("MANIFEST");
        let bytes = fs::read(&path).ctx("read", &path)?;
        let m = Manifest::decode(&bytes, &path)?;
        if m.epoch != epoch {
            return Err(Error::corrupt(
                &path,
                0,
                format!("manifest says epoch {} in the directory of epoch {epoch}", m.epoch),
            ));
        }
        Ok(m)
    }

    fn ensure_chk_dir(&self, epoch: Epoch) -> Result<PathBuf> {
        let dir = self.dir.join(Self::chk_name(epoch));
        if !dir.exists() {
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io("create directory", dir, e)),
            }
        }
        Ok(dir)
    }
}

impl CheckpointStore for LocalStore {
    fn write_part(&self, epoch: Epoch, name: &str, bytes: &[u8]) -> Result<FileEntry> {
        let dir = self.ensure_chk_dir(epoch)?;
        let path = dir.join(name);
        let mut f = File::create(&path).ctx("create", &path)?;
        f.write_all(bytes).ctx("write", &path)?;
        f.sync_all().ctx("fsync", &path)?;
        Ok(FileEntry {
            path: format!("{}/{name}", Self::chk_name(epoch)),
            size: bytes.len() as u64,
            crc32: crc32fast::hash(bytes),
        })
    }

    fn read_part(&self, entry: &FileEntry) -> Result<Vec<u8>> {
        let path = self.dir.join(&entry.path);
        let bytes = fs::read(&path).ctx("read", &path)?;
        if bytes.len() as u64 != entry.size {
            return Err(Error::corrupt(
                &path,
                bytes.len() as u64,
                format!("size {} but the manifest lists {}", bytes.len(), entry.size),
            ));
        }
        let crc = crc32fast::hash(&bytes);
        if crc != entry.crc32 {
            return Err(Error::corrupt(
                &path,
                0,
                format!("checksum {crc:08x} but the manifest lists {:08x}", entry.crc32),
            ));
        }
        Ok(bytes)
    }

    fn commit(&self, manifest: &Manifest) -> Result<()> {
        let dir = self.ensure_chk_dir(manifest.epoch)?;
        // Every part's directory entry is durable before the manifest names it.
        for file in manifest.state.values().flatten() {
            if let Some((sub, _)) = file.path.split_once('/')
                && sub != Self::chk_name(manifest.epoch)
            {
                let other = self.dir.join(sub);
                if other.exists() {
                    fsync_dir(&other)?;
                }
            }
        }
        fsync_dir(&dir)?;
        let tmp = dir.join("MANIFEST.tmp");
        let fin = dir.join("MANIFEST");
        let bytes = manifest.encode()?;
        let mut f = File::create(&tmp).ctx("create", &tmp)?;
        f.write_all(&bytes).ctx("write", &tmp)?;
        f.sync_all().ctx("fsync", &tmp)?;
        drop(f);
        fs::rename(&tmp, &fin).ctx("rename", &fin)?;
        fsync_dir(&dir)?;
        fsync_dir(&self.dir)
    }

    fn latest(&self) -> Result<Option<Manifest>> {
        match self.checkpoints()?.into_iter().find(|c| c.1) {
            Some((epoch, _)) => self.read_manifest(epoch).map(Some),
            None => Ok(None),
        }
    }

    fn retain(&self, keep: usize) -> Result<()> {
        let all = self.checkpoints()?;
        let committed: Vec<Epoch> = all.iter().filter(|c| c.1).map(|c| c.0).collect();
        let Some(&oldest_kept) = committed.get(keep.max(1) - 1).or(committed.last()) else {
            return Ok(());
        };
        // A kept manifest may list part files written in an older directory.
        let mut referenced = BTreeSet::new();
        for &epoch in committed.iter().filter(|&&e| e >= oldest_kept) {
            for file in self.read_manifest(epoch)?.state.values().flatten() {
                if let Some((dir, _)) = file.path.split_once('/') {
                    referenced.insert(dir.to_string());
                }
            }
        }
        for (epoch, _) in all.into_iter().filter(|c| c.0 < oldest_kept) {
            if referenced.contains(&Self::chk_name(epoch)) {
                continue;
            }
            let dir = self.dir.join(Self::chk_name(epoch));
            fs::remove_dir_all(&dir).ctx("remove", &dir)?;
        }
        Ok(())
    }

    fn discard_after(&self, epoch: Option<Epoch>) -> Result<()> {
        for (e, _) in self.checkpoints()? {
            if epoch.is_none_or(|x| e > x) {
                let dir = self.dir.join(Self::chk_name(e));
                fs::remove_dir_all(&dir).ctx("remove", &dir)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::manifest::FORMAT_VERSION;

    fn manifest(epoch: Epoch) -> Manifest {
        Manifest { version: FORMAT_VERSION, epoch, ..Default::default() }
    }

    #[test]
    fn commit_latest_retain() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        assert!(store.latest().unwrap().is_none());
        let e = store.write_part(3, "a.part", b"hello").unwrap();
        assert_eq!(store.read_part(&e).unwrap(), b"hello");
        store.commit(&manifest(3)).unwrap();
        store.write_part(6, "a.part", b"x").unwrap();
        // 6 has parts but no manifest: not committed.
        assert_eq!(store.latest().unwrap().unwrap().epoch, 3);
        store.commit(&manifest(6)).unwrap();
        store.commit(&manifest(9)).unwrap();
        store.retain(2).unwrap();
        let left: Vec<_> = store.checkpoints().unwrap();
        assert_eq!(left, vec![(9, true), (6, true)]);
        store.write_part(12, "b.part", b"y").unwrap();
        store.discard_after(Some(9)).unwrap();
        assert_eq!(store.checkpoints().unwrap().len(), 2);
    }

    #[test]
    fn retention_keeps_referenced_parts() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let old = store.write_part(2, "w.part", b"state").unwrap();
        store.commit(&manifest(2)).unwrap();
        let mut m = manifest(5);
        m.state.insert("w".into(), vec![old.clone()]);
        store.commit(&m).unwrap();
        store
            .commit(&{
                let mut m = manifest(8);
                m.state.insert("w".into(), vec![old.clone()]);
                m
            })
            .unwrap();
        store.retain(1).unwrap();
        assert_eq!(store.read_part(&old).unwrap(), b"state");
    }

    #[test]
    fn damaged_part_and_manifest_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let e = store.write_part(1, "p", b"abc").unwrap();
        fs::write(dir.path().join(&e.path), b"abd").unwrap();
        assert!(matches!(store.read_part(&e), Err(Error::Corrupt { .. })));
        store.commit(&manifest(1)).unwrap();
        // A torn temporary manifest is ignored.
        fs::write(dir.path().join("chk-00000000000000000001/MANIFEST.tmp"), b"WEIR").unwrap();
        assert_eq!(store.latest().unwrap().unwrap().epoch, 1);
        store.commit(&manifest(2)).unwrap();
        let m = dir.path().join("chk-00000000000000000002/MANIFEST");
        let mut bytes = fs::read(&m).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 1;
        fs::write(&m, bytes).unwrap();
        // Never falls back to epoch 1.
        let err = store.latest().unwrap_err().to_string();
        assert!(err.contains("chk-00000000000000000002"), "{err}");
    }

    #[test]
    fn one_process_per_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _a = LocalStore::open(dir.path()).unwrap();
        assert!(matches!(LocalStore::open(dir.path()), Err(Error::Locked { .. })));
    }
}
