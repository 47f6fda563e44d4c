//! The one two-phase-commit shape every transactional file sink shares:
//! write into `<dir>/_staging/` (readers skip names starting with `_`), make
//! the file durable when its checkpoint closes, and let the commit operator
//! rename it into `<dir>/` after the manifest commits.
//!
//! All file I/O goes through the run's [`Storage`]. An output directory is
//! owned by one pipeline at a time: the run holds an advisory lock on
//! `<dir>/_weir.lock` (created once, never written) while it runs. `<dir>` and
//! `<dir>/_staging` are fsynced into their parents before any file in them is
//! listed in a manifest, and the paths handed to the manifest are canonical
//! and absolute, so recovery works from any working directory.
//!
//! Staged names are `<operator>-w<worker>-<epoch>-<seq>-<run id>.<ext>`: the
//! operator id keeps two sinks sharing a directory apart, and the run id lets
//! worker 0 discard its operator's staged files of an earlier run when it
//! opens (recovery already published the committed ones).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use weir_core::checkpoint::Publish;
use weir_core::error::{Error, IoContext, Result};
use weir_core::sink::SinkContext;
use weir_core::storage::{Storage, StorageFile, create_dir_durable};
use weir_core::time::Epoch;

/// The lock file that makes a pipeline the owner of an output directory.
pub const LOCK_FILE: &str = "_weir.lock";

/// A file writer that counts bytes and computes the CRC32 of what it writes.
pub struct CrcFile {
    file: io::BufWriter<Box<dyn StorageFile>>,
    hasher: crc32fast::Hasher,
    size: u64,
}

impl std::fmt::Debug for CrcFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrcFile").field("size", &self.size).finish()
    }
}

impl Write for CrcFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// One sink instance's staging area.
#[derive(Debug)]
pub struct Staging {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    staging: PathBuf,
    prefix: String,
    run_id: String,
    seq: u64,
    transient: bool,
}

/// A staged file being written.
#[derive(Debug)]
pub struct StagedFile {
    /// Where it is written.
    pub staged: PathBuf,
    /// Where it is published.
    pub target: PathBuf,
}

fn visible(name: &str) -> bool {
    !(name.starts_with('.') || name.starts_with('_'))
}

impl Staging {
    /// Prepares `<dir>/_staging` for this worker's instance of the sink
    /// `ctx.operator`, and makes the run the owner of `dir` ([`Error::Locked`]
    /// if another pipeline is). Worker 0 refuses to mix the output of a run
    /// that restored no checkpoint with committed files already in `dir`, and
    /// discards its operator's staged files of earlier runs.
    pub fn open(dir: &Path, ctx: &SinkContext) -> Result<Staging> {
        let storage = ctx.storage.clone();
        create_dir_durable(&*storage, dir)?;
        let dir = storage.canonicalize(dir).ctx("canonicalize", dir)?;
        // Ownership first: a refused run must not touch the owner's files.
        ctx.dir_locks.acquire(&*storage, &dir.join(LOCK_FILE))?;
        let staging = dir.join("_staging");
        create_dir_durable(&*storage, &staging)?;
        let prefix = format!("{}-", ctx.operator);
        if ctx.worker == 0 {
            if !ctx.restored {
                for entry in storage.list(&dir).ctx("list", &dir)? {
                    let name = entry.name.to_string_lossy();
                    if !entry.is_dir && visible(&name) {
                        return Err(Error::config(
                            "output",
                            format!(
                                "{} already holds output of an earlier run ({name}) and this run restores \
                                 no checkpoint; remove it, or run with the state directory of the run that wrote it",
                                dir.display()
                            ),
                        ));
                    }
                }
            }
            // Removals need no fsync: a discarded file that reappears after a
            // crash carries an old run id and is discarded again.
            for entry in storage.list(&staging).ctx("list", &staging)? {
                let name = entry.name.to_string_lossy();
                if name.starts_with(&prefix) && !name.contains(&ctx.run_id) {
                    let path = staging.join(&entry.name);
                    storage.remove_file(&path).ctx("remove", &path)?;
                }
            }
        }
        Ok(Staging {
            storage,
            dir,
            staging,
            prefix: format!("{prefix}w{:03}", ctx.worker),
            run_id: ctx.run_id.clone(),
            seq: 0,
            transient: false,
        })
    }

    /// Like [`Staging::open`], for an outbox: `dir` holds committed files
    /// waiting to be delivered elsewhere, which the sink removes once they are
    /// (the manifest marks them transient).
    pub fn outbox(dir: &Path, ctx: &SinkContext) -> Result<Staging> {
        Ok(Staging { transient: true, ..Staging::open(dir, ctx)? })
    }

    /// Creates the next staged file (named after `epoch`).
    pub fn create(&mut self, epoch: Epoch, ext: &str) -> Result<(StagedFile, CrcFile)> {
        let name = format!("{}-{epoch:010}-{:04}-{}.{ext}", self.prefix, self.seq, self.run_id);
        self.seq += 1;
        let staged = self.staging.join(&name);
        let file = self.storage.create(&staged).ctx("create", &staged)?;
        let writer =
            CrcFile { file: io::BufWriter::with_capacity(1 << 20, file), hasher: crc32fast::Hasher::new(), size: 0 };
        Ok((StagedFile { staged, target: self.dir.join(name) }, writer))
    }

    /// Makes a finished file durable and describes it for the manifest.
    pub fn finish(&self, file: StagedFile, writer: CrcFile) -> Result<Publish> {
        let CrcFile { file: buffered, hasher, size } = writer;
        let mut inner = buffered.into_inner().map_err(|e| Error::io("write", &file.staged, e.into_error()))?;
        inner.sync().ctx("fsync", &file.staged)?;
        Ok(Publish {
            staged: file.staged,
            target: file.target,
            size,
            crc32: hasher.finalize(),
            transient: self.transient,
        })
    }

    /// Makes the staging directory's entries durable (call after finishing files).
    pub fn sync(&self) -> Result<()> {
        self.storage.sync_dir(&self.staging).ctx("fsync", &self.staging)
    }

    /// The output directory (canonical: where committed files are published).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// One staged file per checkpoint interval, created at its first row: the
/// shape of the sinks that append rows to one file (dead letters, outboxes).
#[derive(Debug)]
pub struct IntervalFile {
    staging: Staging,
    ext: &'static str,
    current: Option<(StagedFile, CrcFile)>,
    staged: Vec<Publish>,
    epoch: Epoch,
}

impl IntervalFile {
    /// Files named `*.<ext>` in `staging`.
    pub fn new(staging: Staging, ext: &'static str) -> Self {
        IntervalFile { staging, ext, current: None, staged: Vec::new(), epoch: 0 }
    }

    /// The interval's file (created on first use): its staged path and writer.
    pub fn writer(&mut self) -> Result<(&Path, &mut CrcFile)> {
        if self.current.is_none() {
            self.current = Some(self.staging.create(self.epoch, self.ext)?);
        }
        match self.current.as_mut() {
            Some((file, out)) => Ok((file.staged.as_path(), out)),
            None => Err(Error::Pipeline("no staged file".into())),
        }
    }

    /// Closes the interval's file (if any) at checkpoint `epoch`, makes it
    /// durable in the staging area and returns what to publish.
    pub fn stage(&mut self, epoch: Epoch) -> Result<Vec<Publish>> {
        if let Some((file, out)) = self.current.take() {
            self.staged.push(self.staging.finish(file, out)?);
            self.staging.sync()?;
        }
        self.epoch = epoch + 1;
        Ok(std::mem::take(&mut self.staged))
    }
}
