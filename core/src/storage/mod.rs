//! The one storage seam: every file operation Weir performs on what it writes
//! (checkpoint parts and manifests, staged and published sink output, lock
//! files) and on the embedded log (topics, segments, indexes, sync
//! watermarks) goes through a [`Storage`].
//!
//! [`LocalFs`] is the production implementation (`std::fs`); [`FaultFs`] is an
//! in-memory test tool that models what is durable (file contents as of their
//! last fsync, directory entries as of their parent's last fsync) and injects
//! crashes, I/O errors and torn writes. The trait is small, object-safe and
//! speaks `std::io`, so other writers (an object store) can move onto it
//! without changing its callers. Besides whole-file writes and reads it has
//! what an append-only log needs: opening an existing file to append to it
//! ([`Storage::open_append`]), positional writes and truncation of an open
//! file ([`StorageFile::write_all_at`], [`StorageFile::set_len`]) and
//! positional reads that see later appends ([`Storage::open_read_at`]). Inputs
//! a pipeline only reads (a JSON-lines file) do not go through it.
//!
//! Durability is the caller's business and follows POSIX: a file's data
//! (its length included: an append, a positional write, a truncation) is
//! durable once [`StorageFile::sync`] (or [`StorageFile::sync_data`]) returns,
//! a create, rename or remove only once the parent directory's
//! [`Storage::sync_dir`] returns. [`create_dir_durable`] creates a directory
//! and makes its entry durable before anything can refer to it.

mod fault;
mod local;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use fault::{Crash, Errno, Fault, FaultFs, Inject, Op, OpKind, PAGE};
pub use local::LocalFs;

use crate::error::{Error, IoContext, Result};

/// A file opened for writing: sequential writes (from the start of a created
/// file, from the end of one opened with [`Storage::open_append`]), positional
/// writes, truncation, then [`StorageFile::sync`].
pub trait StorageFile: Write + Send + fmt::Debug {
    /// Flushes and fsyncs the file's data (not its directory entry). An error
    /// is fatal for the file: the caller must never retry it, since after a
    /// failed fsync the kernel may have dropped the data and a second fsync
    /// can succeed without writing it.
    fn sync(&mut self) -> io::Result<()>;

    /// Like [`StorageFile::sync`], but may skip metadata that is not needed to
    /// read the data back (`fdatasync`: timestamps; never the length). The
    /// same rule holds for an error: never retry it.
    fn sync_data(&mut self) -> io::Result<()> {
        self.sync()
    }

    /// Writes all of `buf` at byte `pos` (extending the file with zeros when
    /// `pos` is past its end), without moving where sequential writes go.
    /// Durable, like any write, once the file is synced.
    fn write_all_at(&mut self, buf: &[u8], pos: u64) -> io::Result<()>;

    /// Cuts the file to `len` bytes (or extends it with zeros); sequential
    /// writes then continue at the new end. A metadata change that, like a
    /// write, is durable once the file is synced.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

/// A file opened for positional reads ([`Storage::open_read_at`]). It reads
/// the file as it is at each call, so it sees what was appended since it was
/// opened.
pub trait ReadAt: Send + fmt::Debug {
    /// Reads up to `buf.len()` bytes at byte `pos` into `buf`; the number read,
    /// 0 at or past the end of the file.
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
}

/// An advisory lock; dropping it releases the lock.
pub trait StorageLock: Send + Sync + fmt::Debug {}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's name (no path).
    pub name: OsString,
    /// Whether it is a directory.
    pub is_dir: bool,
}

/// What [`Storage::metadata`] tells about a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// Whether it is a directory.
    pub is_dir: bool,
    /// Size in bytes (0 for directories).
    pub len: u64,
}

/// Every file operation checkpoints, staging, publishing and the embedded log perform.
///
/// Errors are plain `std::io` errors; callers add the operation and path
/// ([`IoContext::ctx`]). Listings are sorted by name, so a run's sequence of
/// calls does not depend on the file system's order.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Creates (or truncates) a file for writing. Its parent must exist.
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    /// Opens an existing file for writing without truncating it; sequential
    /// writes continue at its end (`NotFound` if it does not exist). Only one
    /// handle should write a file's end at a time.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    /// Opens a file for sequential reading.
    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + Send>>;
    /// Opens a file for positional reads ([`ReadAt`]).
    fn open_read_at(&self, path: &Path) -> io::Result<Box<dyn ReadAt>>;
    /// Fsyncs a directory: its entries (creates, renames, removes) become durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Renames a file or directory, replacing a file at `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything in it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Creates one directory (its parent must exist); `AlreadyExists` if it does.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// The entries of a directory, sorted by name.
    fn list(&self, path: &Path) -> io::Result<Vec<DirEntry>>;
    /// Whether `path` is a file or a directory and its size; `NotFound` if absent.
    fn metadata(&self, path: &Path) -> io::Result<Metadata>;
    /// The canonical absolute form of an existing path.
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf>;
    /// Takes an exclusive advisory lock on `path`, creating the (empty) file if
    /// missing and never writing it. `Ok(None)` if someone else holds it.
    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn StorageLock>>>;

    /// Reads a whole file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open(path)?.read_to_end(&mut out)?;
        Ok(out)
    }

    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> io::Result<bool> {
        match self.metadata(path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The storage a pipeline uses when none is configured.
pub fn local() -> Arc<dyn Storage> {
    Arc::new(LocalFs)
}

/// Creates `dir` and any missing parents, and fsyncs the parent of every
/// directory it creates and of `dir` itself, so that `dir` survives a crash
/// before anything inside it is referred to. Fsyncing the parent of an
/// existing `dir` too covers a directory an earlier, killed run created
/// without making it durable. Safe to call concurrently for the same path.
pub fn create_dir_durable(storage: &dyn Storage, dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(p) = at {
        if p.as_os_str().is_empty() || storage.exists(p).ctx("stat", p)? {
            break;
        }
        missing.push(p);
        at = p.parent();
    }
    for p in missing.iter().rev() {
        match storage.create_dir(p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("create directory", *p, e)),
        }
        sync_parent(storage, p)?;
    }
    if missing.is_empty() {
        sync_parent(storage, dir)?;
    }
    Ok(())
}

fn sync_parent(storage: &dyn Storage, p: &Path) -> Result<()> {
    match p.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => storage.sync_dir(parent).ctx("fsync", parent),
        // A relative single component: its parent is the working directory.
        _ => storage.sync_dir(Path::new(".")).ctx("fsync", "."),
    }
}

/// The advisory locks a run holds on directories it owns (output directories),
/// one per directory however many workers and sinks use it, released when the
/// run ends.
#[derive(Clone, Default)]
pub struct DirLocks(Arc<Mutex<BTreeMap<PathBuf, Box<dyn StorageLock>>>>);

impl fmt::Debug for DirLocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held: Vec<PathBuf> = self.0.lock().map(|m| m.keys().cloned().collect()).unwrap_or_default();
        f.debug_tuple("DirLocks").field(&held).finish()
    }
}

impl DirLocks {
    /// Takes the lock file `lock` for this run unless the run already holds
    /// it; [`Error::Locked`] naming it if another pipeline does.
    pub fn acquire(&self, storage: &dyn Storage, lock: &Path) -> Result<()> {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if held.contains_key(lock) {
            return Ok(());
        }
        match storage.try_lock(lock).ctx("lock", lock)? {
            Some(guard) => {
                held.insert(lock.to_path_buf(), guard);
                Ok(())
            }
            None => Err(Error::Locked { path: lock.to_path_buf() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_dir_durable_survives_a_crash() {
        let fs = FaultFs::new();
        create_dir_durable(&fs, Path::new("/a/b/c")).unwrap();
        let after = fs.crash(Crash::DropUnsynced);
        assert!(after.metadata(Path::new("/a/b/c")).unwrap().is_dir);
        // Without the parent fsyncs the directory is gone after a crash.
        let fs = FaultFs::new();
        fs.create_dir(Path::new("/x")).unwrap();
        assert!(!fs.crash(Crash::DropUnsynced).exists(Path::new("/x")).unwrap());
    }

    #[test]
    fn dir_locks_are_shared_within_a_run_and_exclusive_between_runs() {
        let fs = FaultFs::new();
        let run = DirLocks::default();
        run.acquire(&fs, Path::new("/l")).unwrap();
        run.acquire(&fs, Path::new("/l")).unwrap();
        let other = DirLocks::default();
        assert!(matches!(other.acquire(&fs, Path::new("/l")), Err(Error::Locked { .. })));
        drop(run);
        other.acquire(&fs, Path::new("/l")).unwrap();
    }
}
