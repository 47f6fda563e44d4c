//! [`PartitionWriter`]: the one process that appends to a partition. It holds the
//! partition's lock file, repairs a torn tail when it opens (the only code that
//! ever truncates the log), appends batches with one `write` per segment
//! touched, rolls segments, keeps the index and fsyncs per [`FsyncPolicy`].
//!
//! All its file I/O goes through the partition's [`Storage`] (the local file
//! system unless [`PartitionWriter::open_in`] is given another). When it opens
//! with a policy that fsyncs, it fsyncs the segment, the partition directory
//! and the sync watermark once, so that what an earlier writer (or a killed
//! process) left is durable, and a valid watermark with it, before anything is
//! appended after it.
//!
//! After each successful fsync it stores the sync watermark ([`super::synced`]).
//! A failed fsync poisons the writer: every later `append` and `sync` fails,
//! because after an fsync error the kernel may have dropped the dirty pages and
//! marked them clean, so a second fsync can "succeed" without the data being on
//! disk. Reopening the partition (which re-validates what is on disk) is the only
//! way on.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use weir_core::error::{Error, IoContext, Result};
use weir_core::record::Offset;
use weir_core::storage::{self, Storage, StorageFile, StorageLock, create_dir_durable};

use super::config::{FsyncPolicy, LogConfig};
use super::frame::{self, MAX_RECORD_BYTES};
use super::index::{self, IndexEntry, Indexer, Loaded};
use super::segment::{self, Summary, Verdict, check_tail, index_path, list_segments, segment_path};
use super::synced::{self, Synced};

/// Name of the lock file in a partition directory.
const LOCK_FILE: &str = "writer.lock";

/// A torn tail the writer cut off when it opened the partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailRepair {
    /// The (last) segment file.
    pub file: PathBuf,
    /// Byte position where the file was truncated: the start of the damaged frame.
    pub offset: u64,
    /// How many bytes were cut off.
    pub dropped_bytes: u64,
    /// What was expected and found at `offset`.
    pub what: String,
}

/// Appends records to one partition. At most one exists per partition at a time,
/// across processes: [`PartitionWriter::open`] takes the partition's lock file
/// and the lock is released when the writer is dropped.
///
/// ```
/// # fn main() -> weir_core::Result<()> {
/// use weir_connectors::log::{LogConfig, PartitionWriter};
/// let dir = tempfile::tempdir().map_err(|e| weir_core::Error::io("tempdir", "/tmp", e))?;
/// let mut writer = PartitionWriter::open(dir.path(), LogConfig::default())?;
/// assert_eq!(writer.append(&[b"first", b"second"])?, 0);
/// assert_eq!(writer.append(&[b"third"])?, 2);
/// assert_eq!(writer.end_offset(), 3);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PartitionWriter {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    config: LogConfig,
    _lock: Box<dyn StorageLock>,
    /// The active (last) segment.
    base: Offset,
    segment: Box<dyn StorageFile>,
    index: Box<dyn StorageFile>,
    seg_len: u64,
    next: Offset,
    indexer: Indexer,
    /// The frames and index entries of the batch being appended (reused).
    frames: Vec<u8>,
    entries: Vec<u8>,
    last_sync: Instant,
    unsynced: bool,
    /// Whether the active segment's directory entry is known durable.
    dir_synced: bool,
    /// The sync watermark file.
    synced: Box<dyn StorageFile>,
    /// Whether this writer fsynced the watermark file once (see [`super::synced`]).
    synced_durable: bool,
    /// An earlier write or fsync failed: the files may not match the writer's
    /// state, or synced data may be lost. Poisons the writer.
    failed: Option<String>,
    repair: Option<TailRepair>,
}

fn fsync_dir(storage: &dyn Storage, dir: &Path) -> Result<()> {
    storage.sync_dir(dir).ctx("fsync", dir)
}

/// The base offset of a segment from its file name (0 when it is not a segment name).
fn segment_base(path: &Path) -> Offset {
    path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn open_append(storage: &dyn Storage, path: &Path) -> Result<Box<dyn StorageFile>> {
    storage.open_append(path).ctx("open", path)
}

fn lock(storage: &dyn Storage, dir: &Path) -> Result<Box<dyn StorageLock>> {
    let path = dir.join(LOCK_FILE);
    match storage.try_lock(&path).ctx("lock", &path)? {
        Some(lock) => Ok(lock),
        None => Err(Error::Locked { path }),
    }
}

/// Rewrites the index of a sealed segment when it is missing or has a broken
/// length; entry-level damage is left to readers, which fall back to a scan.
fn repair_sealed_index(storage: &dyn Storage, dir: &Path, base: Offset, config: &LogConfig) -> Result<()> {
    let path = index_path(dir, base);
    let intact = match storage.metadata(&path) {
        Ok(m) => m.len % index::ENTRY as u64 == 0,
        Err(e) if e.kind() == ErrorKind::NotFound => false,
        Err(e) => return Err(Error::io("stat", path, e)),
    };
    if intact {
        return Ok(());
    }
    let mut indexer = Indexer::new(config.index_interval_bytes);
    let seg = segment_path(dir, base);
    let summary = segment::scan_segment(storage, seg, IndexEntry { rel: 0, pos: 0 }, Some(&mut indexer))?;
    if let Some(d) = &summary.damage {
        tracing::warn!(
            "indexing {} stopped at damage at byte {}: {} (readers will fail there)",
            d.path.display(),
            d.pos,
            d.what
        );
    }
    index::write(storage, &path, &summary.entries)
}

impl PartitionWriter {
    /// Opens the partition in `dir` on the local file system (creating the
    /// directory and its first segment when needed) for appending, after taking
    /// its lock ([`Error::Locked`] when another writer holds it).
    ///
    /// The last segment is scanned: a damaged tail is truncated (see
    /// [`PartitionWriter::tail_repair`]), damage followed by valid records is an
    /// [`Error::Corrupt`], and its index is rewritten if it does not match.
    /// Missing indexes of earlier segments are rebuilt.
    pub fn open(dir: impl Into<PathBuf>, config: LogConfig) -> Result<PartitionWriter> {
        Self::open_in(storage::local(), dir, config)
    }

    /// [`PartitionWriter::open`] on `storage`: every file operation of the
    /// writer goes through it.
    pub fn open_in(storage: Arc<dyn Storage>, dir: impl Into<PathBuf>, config: LogConfig) -> Result<PartitionWriter> {
        config.validate()?;
        let dir = dir.into();
        let fsyncs = config.fsync != FsyncPolicy::Never;
        // With fsyncs, an existing directory's entry is made durable too (an
        // earlier writer may have created it without).
        if fsyncs || !storage.exists(&dir).ctx("stat", &dir)? {
            create_dir_durable(&*storage, &dir)?;
        }
        let lock = lock(&*storage, &dir)?;
        let bases = list_segments(&*storage, &dir)?;
        // Opened (created) before any segment: a partition with a segment always
        // has the file.
        let mut synced_file = synced::open(&*storage, &dir)?;
        let base = match bases.split_last() {
            Some((&last, sealed)) => {
                for &b in sealed {
                    repair_sealed_index(&*storage, &dir, b, &config)?;
                }
                last
            }
            None => {
                // Nothing is synced yet. (Made durable, with the directory
                // entries, by the sync at the end of `open`.)
                synced::store(&mut *synced_file, &dir, Synced { base: 0, pos: 0 })?;
                let path = segment_path(&dir, 0);
                storage.create(&path).ctx("create", &path)?;
                0
            }
        };

        let seg_path = segment_path(&dir, base);
        let mut indexer = Indexer::new(config.index_interval_bytes);
        let origin = IndexEntry { rel: 0, pos: 0 };
        let summary = segment::scan_segment(&*storage, seg_path.clone(), origin, Some(&mut indexer))?;
        let mut segment = open_append(&*storage, &seg_path)?;
        let repair = Self::repair_tail(&*storage, &mut *segment, &seg_path, &summary, &config)?;
        let ix_path = index_path(&dir, base);
        let rewrite = index::load(&*storage, &ix_path, summary.valid_len)? != Loaded::Entries(summary.entries.clone());
        if rewrite {
            index::write(&*storage, &ix_path, &summary.entries)?;
        }
        let mut index = open_append(&*storage, &ix_path)?;
        if rewrite && fsyncs {
            // Durable before anything is appended: after a power loss the old
            // index could otherwise come back, its entries for frames of a cut
            // tail pointing into the records written since.
            index.sync_data().ctx("fsync", &ix_path)?;
        }

        let mut writer = PartitionWriter {
            segment,
            index,
            storage,
            dir,
            config,
            _lock: lock,
            base,
            seg_len: summary.valid_len,
            next: base + summary.end_rel,
            indexer,
            frames: Vec::new(),
            entries: Vec::new(),
            last_sync: Instant::now(),
            // What an earlier writer left may still be only in the page cache,
            // its segment's directory entry too (a process killed between
            // creating a segment and fsyncing the directory): one fsync of each
            // makes it (and the watermark saying so) durable.
            unsynced: fsyncs,
            dir_synced: false,
            synced: synced_file,
            synced_durable: false,
            failed: None,
            repair,
        };
        if fsyncs {
            writer.sync()?;
        } else if synced::load(&*writer.storage, &writer.dir)?.is_none_or(|w| w.base < base) {
            // Nothing of the last segment is known synced (a partition from before
            // watermarks gets one here, so its tail is judged by the watermark rule).
            synced::store(&mut *writer.synced, &writer.dir, Synced { base, pos: 0 })?;
        }
        Ok(writer)
    }

    /// Truncates the damaged tail the scan of the last segment found, if any,
    /// through `segment` (the last segment, open to append).
    fn repair_tail(
        storage: &dyn Storage,
        segment: &mut dyn StorageFile,
        path: &Path,
        summary: &Summary,
        config: &LogConfig,
    ) -> Result<Option<TailRepair>> {
        let Some(damage) = &summary.damage else {
            return Ok(None);
        };
        if check_tail(storage, damage, segment_base(path))? == Verdict::Changed {
            // Only this writer (holding the lock) writes the partition.
            return Err(damage.clone().into_error("the segment changed while its writer held the lock"));
        }
        let len = storage.metadata(path).ctx("stat", path)?.len;
        segment.set_len(damage.pos).ctx("truncate", path)?;
        if config.fsync != FsyncPolicy::Never {
            segment.sync().ctx("fsync", path)?;
        }
        let repair = TailRepair {
            file: path.to_path_buf(),
            offset: damage.pos,
            dropped_bytes: len.saturating_sub(damage.pos),
            what: damage.what.clone(),
        };
        tracing::warn!(
            "torn tail in {}: truncated at byte {}, dropping {} bytes ({})",
            repair.file.display(),
            repair.offset,
            repair.dropped_bytes,
            repair.what
        );
        Ok(Some(repair))
    }

    /// Appends `records` in order and returns the offset of the first (the end
    /// offset when `records` is empty). The frames are built in one buffer and
    /// written with one `write` per segment they go to, then fsynced per policy.
    ///
    /// A record over [`MAX_RECORD_BYTES`] rejects the whole batch before anything
    /// is written. After an I/O error the writer refuses further appends: reopen
    /// it, which repairs whatever part of the batch reached the disk.
    pub fn append(&mut self, records: &[&[u8]]) -> Result<Offset> {
        self.check_poisoned("append to")?;
        if let Some((i, r)) = records.iter().enumerate().find(|(_, r)| r.len() > MAX_RECORD_BYTES) {
            return Err(Error::Encoding {
                what: format!("record {i} of a batch for {}", self.dir.display()),
                message: format!("{} bytes, expected at most {MAX_RECORD_BYTES} bytes per record", r.len()),
            });
        }
        let first = self.next;
        let result = self.append_frames(records).and_then(|()| self.sync_per_policy());
        if let Err(e) = &result
            && self.failed.is_none()
        {
            self.failed = Some(e.to_string());
        }
        result.map(|()| first)
    }

    /// The error of a poisoned writer (see the [module docs](self)).
    fn check_poisoned(&self, op: &'static str) -> Result<()> {
        match &self.failed {
            None => Ok(()),
            Some(first) => Err(Error::io(
                op,
                segment_path(&self.dir, self.base),
                std::io::Error::other(format!(
                    "the writer is poisoned by an earlier failure ({first}); \
                     an fsync is never retried: reopen the partition"
                )),
            )),
        }
    }

    fn append_frames(&mut self, records: &[&[u8]]) -> Result<()> {
        self.frames.clear();
        self.entries.clear();
        for record in records {
            let buffered = self.seg_len + self.frames.len() as u64;
            let full = buffered + frame::frame_len(record.len()) > self.config.segment_bytes;
            if buffered > 0 && (full || self.next - self.base >= u64::from(u32::MAX)) {
                self.write_buffered()?;
                self.roll()?;
            }
            let pos = self.seg_len + self.frames.len() as u64;
            if let Some(entry) = self.indexer.observe((self.next - self.base) as u32, pos) {
                entry.encode(&mut self.entries);
            }
            frame::encode(&mut self.frames, record);
            self.next += 1;
        }
        self.write_buffered()
    }

    /// Writes the buffered frames, then their index entries.
    fn write_buffered(&mut self) -> Result<()> {
        if !self.frames.is_empty() {
            let path = || segment_path(&self.dir, self.base);
            self.segment.write_all(&self.frames).ctx("write", path())?;
            self.seg_len += self.frames.len() as u64;
            self.frames.clear();
            self.unsynced = true;
        }
        if !self.entries.is_empty() {
            let path = index_path(&self.dir, self.base);
            self.index.write_all(&self.entries).ctx("write", path)?;
            self.entries.clear();
        }
        Ok(())
    }

    /// Seals the active segment (durably, unless the policy is `Never`) and
    /// starts the next one at the end offset.
    fn roll(&mut self) -> Result<()> {
        if self.config.fsync != FsyncPolicy::Never {
            self.sync()?;
            let ix = index_path(&self.dir, self.base);
            self.index.sync_data().ctx("fsync", ix)?;
        }
        let seg_path = segment_path(&self.dir, self.next);
        // The next segment cannot exist (it would be the last one, and this
        // writer's): never overwrite one.
        if self.storage.exists(&seg_path).ctx("stat", &seg_path)? {
            return Err(Error::io("create", seg_path, std::io::Error::from(ErrorKind::AlreadyExists)));
        }
        self.segment = self.storage.create(&seg_path).ctx("create", &seg_path)?;
        let ix_path = index_path(&self.dir, self.next);
        self.index = self.storage.create(&ix_path).ctx("create", &ix_path)?;
        self.dir_synced = false;
        if self.config.fsync != FsyncPolicy::Never {
            fsync_dir(&*self.storage, &self.dir)?;
            self.dir_synced = true;
        }
        self.base = self.next;
        self.seg_len = 0;
        self.indexer = Indexer::new(self.config.index_interval_bytes);
        Ok(())
    }

    fn sync_per_policy(&mut self) -> Result<()> {
        match self.config.fsync {
            FsyncPolicy::Always => self.sync(),
            FsyncPolicy::Interval(every) if self.last_sync.elapsed() >= every => self.sync(),
            FsyncPolicy::Interval(_) | FsyncPolicy::Never => Ok(()),
        }
    }

    /// Forces the appended records of the active segment to stable storage now,
    /// whatever the policy, and records the sync watermark.
    ///
    /// A failure poisons the writer: this and every later `append` and `sync`
    /// return an error (see the [module docs](self)).
    pub fn sync(&mut self) -> Result<()> {
        self.check_poisoned("fsync")?;
        let result = self.sync_segment();
        if let Err(e) = &result {
            self.failed = Some(e.to_string());
        }
        result
    }

    fn sync_segment(&mut self) -> Result<()> {
        if self.unsynced {
            let path = segment_path(&self.dir, self.base);
            self.segment.sync_data().ctx("fsync", &path)?;
            if !self.dir_synced {
                fsync_dir(&*self.storage, &self.dir)?;
                self.dir_synced = true;
            }
            synced::store(&mut *self.synced, &self.dir, Synced { base: self.base, pos: self.seg_len })?;
            if !self.synced_durable {
                // Without a durable watermark, a torn append (a hole, then valid
                // frames) would be judged corruption by the older rule.
                self.synced.sync().ctx("fsync", synced::path(&self.dir))?;
                self.synced_durable = true;
            }
            self.unsynced = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Offset the next appended record gets.
    pub fn end_offset(&self) -> Offset {
        self.next
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The torn tail cut off when this writer opened, if there was one.
    pub fn tail_repair(&self) -> Option<&TailRepair> {
        self.repair.as_ref()
    }
}

impl Drop for PartitionWriter {
    fn drop(&mut self) {
        if self.unsynced
            && self.failed.is_none()
            && self.config.fsync != FsyncPolicy::Never
            && let Err(e) = self.sync()
        {
            tracing::warn!("closing the writer of {}: {e}", self.dir.display());
        }
    }
}
