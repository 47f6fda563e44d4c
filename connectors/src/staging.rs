//! The one two-phase-commit shape every transactional file sink shares:
//! write into `<dir>/_staging/` (readers skip names starting with `_`), make
//! the file durable when its checkpoint closes, and let the commit operator
//! rename it into `<dir>/` after the manifest commits.
//!
//! Staged names carry the run id, so when worker 0 opens a sink it can discard
//! every staged file of an earlier run (recovery already published the
//! committed ones).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use weir_core::checkpoint::Publish;
use weir_core::error::{Error, IoContext, Result};
use weir_core::sink::SinkContext;
use weir_core::time::Epoch;

/// A file writer that counts bytes and computes the CRC32 of what it writes.
#[derive(Debug)]
pub struct CrcFile {
    file: io::BufWriter<File>,
    hasher: crc32fast::Hasher,
    size: u64,
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
    dir: PathBuf,
    staging: PathBuf,
    prefix: String,
    run_id: String,
    seq: u64,
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
    /// Prepares `<dir>/_staging` for this worker. Worker 0 discards earlier
    /// runs' staged files and, when the pipeline keeps no checkpoints, refuses
    /// to mix its output with committed files already in `dir`.
    pub fn open(dir: &Path, prefix: &str, ctx: &SinkContext) -> Result<Staging> {
        let staging = dir.join("_staging");
        fs::create_dir_all(&staging).ctx("create directory", &staging)?;
        if ctx.worker == 0 {
            for entry in fs::read_dir(&staging).ctx("list", &staging)? {
                let entry = entry.ctx("list", &staging)?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(prefix) && !name.contains(&ctx.run_id) {
                    let path = entry.path();
                    fs::remove_file(&path).ctx("remove", &path)?;
                }
            }
            if !ctx.checkpointed {
                for entry in fs::read_dir(dir).ctx("list", dir)? {
                    let entry = entry.ctx("list", dir)?;
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    if visible(&name) && name.starts_with(prefix) {
                        return Err(Error::config(
                            "output",
                            format!(
                                "{} already holds output of an earlier run ({name}); remove it, \
                                 or run with a state directory to resume that run",
                                dir.display()
                            ),
                        ));
                    }
                }
            }
            // The staging directory's own entry must be durable before files in it are listed.
            File::open(dir).ctx("open", dir)?.sync_all().ctx("fsync", dir)?;
        }
        Ok(Staging {
            dir: dir.to_path_buf(),
            staging,
            prefix: format!("{prefix}-w{:03}", ctx.worker),
            run_id: ctx.run_id.clone(),
            seq: 0,
        })
    }

    /// Creates the next staged file (named after `epoch`).
    pub fn create(&mut self, epoch: Epoch, ext: &str) -> Result<(StagedFile, CrcFile)> {
        let name = format!("{}-{epoch:010}-{:04}-{}.{ext}", self.prefix, self.seq, self.run_id);
        self.seq += 1;
        let staged = self.staging.join(&name);
        let file = File::create(&staged).ctx("create", &staged)?;
        let writer =
            CrcFile { file: io::BufWriter::with_capacity(1 << 20, file), hasher: crc32fast::Hasher::new(), size: 0 };
        Ok((StagedFile { staged, target: self.dir.join(name) }, writer))
    }

    /// Makes a finished file durable and describes it for the manifest.
    pub fn finish(&self, file: StagedFile, mut writer: CrcFile) -> Result<Publish> {
        writer.flush().ctx("write", &file.staged)?;
        let inner = writer.file.into_inner().map_err(|e| Error::io("write", &file.staged, e.into_error()))?;
        inner.sync_all().ctx("fsync", &file.staged)?;
        Ok(Publish { staged: file.staged, target: file.target, size: writer.size, crc32: writer.hasher.finalize() })
    }

    /// Makes the staging directory's entries durable (call after finishing files).
    pub fn sync(&self) -> Result<()> {
        File::open(&self.staging).ctx("open", &self.staging)?.sync_all().ctx("fsync", &self.staging)
    }

    /// The output directory (where committed files are published).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
