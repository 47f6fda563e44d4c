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
//! All file I/O goes through a [`Storage`] (the local file system by default).
//!
//! Durability rules: the state directory is fsynced into its parent when it
//! is opened; a part is fsynced before its descriptor is emitted; the commit
//! fsyncs every checkpoint directory the manifest lists parts in and the
//! state directory (so every entry the manifest names is durable), writes
//! `MANIFEST.tmp`, fsyncs it, renames it to `MANIFEST` and fsyncs the
//! checkpoint directory. The return of that last fsync is the commit point.
//! Recovery fsyncs the newest checkpoint's directories again before acting on
//! it ([`CheckpointStore::ensure_durable`]).
//! Any fsync or rename error is returned and fails the run, never retried.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::checkpoint::manifest::{FileEntry, Manifest};
use crate::error::{Error, IoContext, Result};
use crate::storage::{self, Storage, StorageLock, create_dir_durable};
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
    /// Makes the committed checkpoint of `epoch` durable. Recovery calls it
    /// before it acts on the newest manifest (publishes its output, resumes
    /// after it): a killed process may have renamed the manifest without the
    /// fsync that makes the rename durable, and a later power loss would then
    /// bring back an older checkpoint under output already published.
    fn ensure_durable(&self, epoch: Epoch) -> Result<()>;
    /// Deletes checkpoints older than the `keep` newest committed ones (keeping
    /// part files a kept manifest still lists).
    fn retain(&self, keep: usize) -> Result<()>;
    /// Deletes the (uncommitted) checkpoint directories of epochs after `epoch`.
    fn discard_after(&self, epoch: Option<Epoch>) -> Result<()>;
}

/// A checkpoint store in a directory of a [`Storage`], locked for one process.
#[derive(Debug)]
pub struct LocalStore {
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    _lock: Option<Box<dyn StorageLock>>,
}

/// Creates `path` with `bytes` and fsyncs it (its directory entry is the caller's business).
pub(crate) fn write_durable(storage: &dyn Storage, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = storage.create(path).ctx("create", path)?;
    f.write_all(bytes).ctx("write", path)?;
    f.sync().ctx("fsync", path)
}

/// Reads the newest committed manifest of a state directory without locking it
/// (for tools such as `weir group describe` while a pipeline runs).
pub fn read_latest(dir: &Path) -> Result<Option<Manifest>> {
    let store = LocalStore { dir: dir.to_path_buf(), storage: storage::local(), _lock: None };
    store.latest()
}

impl LocalStore {
    /// Opens (creating) the state directory on the local file system and takes its lock.
    pub fn open(dir: impl Into<PathBuf>) -> Result<LocalStore> {
        LocalStore::open_in(storage::local(), dir)
    }

    /// Opens (creating, durably) the state directory on `storage` and takes its lock.
    pub fn open_in(storage: Arc<dyn Storage>, dir: impl Into<PathBuf>) -> Result<LocalStore> {
        let dir = dir.into();
        // The state directory's entry is durable before any checkpoint in it can commit:
        // a lost state directory next to published output would replay that output.
        create_dir_durable(&*storage, &dir)?;
        let lock_path = dir.join("LOCK");
        let Some(lock) = storage.try_lock(&lock_path).ctx("lock", &lock_path)? else {
            return Err(Error::Locked { path: lock_path });
        };
        Ok(LocalStore { dir, storage, _lock: Some(lock) })
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
        for entry in self.storage.list(&self.dir).ctx("list", &self.dir)? {
            let Some(epoch) =
                entry.name.to_str().and_then(|n| n.strip_prefix("chk-")).and_then(|n| n.parse::<Epoch>().ok())
            else {
                continue;
            };
            let manifest = self.dir.join(&entry.name).join("MANIFEST");
            out.push((epoch, self.storage.exists(&manifest).ctx("stat", &manifest)?));
        }
        out.sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
        Ok(out)
    }

    fn read_manifest(&self, epoch: Epoch) -> Result<Manifest> {
        let path = self.dir.join(Self::chk_name(epoch)).join("MANIFEST");
        let bytes = self.storage.read(&path).ctx("read", &path)?;
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
        if !self.storage.exists(&dir).ctx("stat", &dir)? {
            match self.storage.create_dir(&dir) {
                Ok(()) => {}
                // Another worker's part of the same epoch got there first.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io("create directory", dir, e)),
            }
        }
        Ok(dir)
    }

    fn sync_dir(&self, dir: &Path) -> Result<()> {
        self.storage.sync_dir(dir).ctx("fsync", dir)
    }
}

impl CheckpointStore for LocalStore {
    fn write_part(&self, epoch: Epoch, name: &str, bytes: &[u8]) -> Result<FileEntry> {
        let dir = self.ensure_chk_dir(epoch)?;
        write_durable(&*self.storage, &dir.join(name), bytes)?;
        Ok(FileEntry {
            path: format!("{}/{name}", Self::chk_name(epoch)),
            size: bytes.len() as u64,
            crc32: crc32fast::hash(bytes),
        })
    }

    fn read_part(&self, entry: &FileEntry) -> Result<Vec<u8>> {
        let path = self.dir.join(&entry.path);
        let bytes = self.storage.read(&path).ctx("read", &path)?;
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
        // Every part's directory entry, and the entry of every checkpoint
        // directory holding one, is durable before the manifest names it.
        let mut dirs = BTreeSet::new();
        for file in manifest.state.values().flatten() {
            if let Some((sub, _)) = file.path.split_once('/')
                && sub != Self::chk_name(manifest.epoch)
            {
                dirs.insert(sub.to_string());
            }
        }
        for sub in dirs {
            let other = self.dir.join(sub);
            if self.storage.exists(&other).ctx("stat", &other)? {
                self.sync_dir(&other)?;
            }
        }
        self.sync_dir(&dir)?;
        self.sync_dir(&self.dir)?;
        let tmp = dir.join("MANIFEST.tmp");
        let fin = dir.join("MANIFEST");
        write_durable(&*self.storage, &tmp, &manifest.encode()?)?;
        self.storage.rename(&tmp, &fin).ctx("rename", &fin)?;
        // The commit point: the return of this fsync.
        self.sync_dir(&dir)
    }

    fn latest(&self) -> Result<Option<Manifest>> {
        let Some((epoch, _)) = self.checkpoints()?.into_iter().find(|c| c.1) else {
            return Ok(None);
        };
        self.read_manifest(epoch).map(Some)
    }

    fn ensure_durable(&self, epoch: Epoch) -> Result<()> {
        let dir = self.dir.join(Self::chk_name(epoch));
        self.sync_dir(&dir)?;
        self.sync_dir(&self.dir)
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
        // Removals need no directory fsync: an old checkpoint that reappears
        // after a crash is older than the newest and removed again.
        for (epoch, _) in all.into_iter().filter(|c| c.0 < oldest_kept) {
            if referenced.contains(&Self::chk_name(epoch)) {
                continue;
            }
            let dir = self.dir.join(Self::chk_name(epoch));
            self.storage.remove_dir_all(&dir).ctx("remove", &dir)?;
        }
        Ok(())
    }

    fn discard_after(&self, epoch: Option<Epoch>) -> Result<()> {
        for (e, _) in self.checkpoints()? {
            if epoch.is_none_or(|x| e > x) {
                let dir = self.dir.join(Self::chk_name(e));
                self.storage.remove_dir_all(&dir).ctx("remove", &dir)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    use crate::checkpoint::manifest::FORMAT_VERSION;
    use crate::storage::{Crash, Errno, Fault, FaultFs, Inject, OpKind};

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

    fn fault_store(fs: &FaultFs) -> LocalStore {
        LocalStore::open_in(Arc::new(fs.clone()), "/s/state").unwrap()
    }

    #[test]
    fn the_state_directory_survives_a_power_loss() {
        let fs = FaultFs::new();
        fs.prepare_dir("/s");
        let store = fault_store(&fs);
        store.write_part(1, "p", b"x").unwrap();
        store.commit(&manifest(1)).unwrap();
        drop(store);
        // Before the state directory was fsynced into its parent, a power loss
        // after the commit lost the whole directory.
        let after = fs.crash(Crash::DropUnsynced);
        assert_eq!(fault_store(&after).latest().unwrap().map(|m| m.epoch), Some(1));
    }

    #[test]
    fn recovery_makes_a_manifest_a_killed_commit_renamed_durable() {
        // Find the rename of a commit's call sequence, then crash right after it.
        let probe = FaultFs::new();
        probe.prepare_dir("/s");
        let store = fault_store(&probe);
        let before = probe.calls();
        store.commit(&manifest(4)).unwrap();
        let rename = probe.trace().iter().find(|o| o.kind == OpKind::Rename).map(|o| o.seq).unwrap();
        assert!(rename > before);
        drop(store);

        let fs = FaultFs::new();
        fs.prepare_dir("/s");
        let store = fault_store(&fs);
        fs.crash_after(rename);
        assert!(store.commit(&manifest(4)).is_err());
        drop(store);
        let killed = fs.crash(Crash::KeepAll);
        // Recovery acts on epoch 4 (publishes its output) ...
        let store = fault_store(&killed);
        assert_eq!(store.latest().unwrap().map(|m| m.epoch), Some(4));
        store.ensure_durable(4).unwrap();
        drop(store);
        // ... so a later power loss must not bring back an older state.
        let lost = killed.crash(Crash::DropUnsynced);
        assert_eq!(fault_store(&lost).latest().unwrap().map(|m| m.epoch), Some(4));
    }

    #[test]
    fn a_failed_fsync_fails_the_commit_and_is_not_retried() {
        let fs = FaultFs::new();
        fs.prepare_dir("/s");
        let store = fault_store(&fs);
        fs.inject(Inject::op(OpKind::Sync, Fault::Error(Errno::Eio)).under("/s/state/chk-00000000000000000002"));
        let err = store.commit(&manifest(2)).unwrap_err().to_string();
        assert!(err.contains("fsync") && err.contains("MANIFEST.tmp"), "{err}");
        let syncs = fs.trace().iter().filter(|o| o.kind == OpKind::Sync).count();
        assert_eq!(syncs, 1, "the failed fsync was retried");
        assert!(fs.trace().iter().all(|o| o.kind != OpKind::Rename), "renamed after a failed fsync");
        assert!(store.latest().unwrap().is_none());
    }

    #[test]
    fn one_process_per_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _a = LocalStore::open(dir.path()).unwrap();
        assert!(matches!(LocalStore::open(dir.path()), Err(Error::Locked { .. })));
    }
}
