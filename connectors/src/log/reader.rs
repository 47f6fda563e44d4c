//! [`LogReader`]: reads one partition from an offset, following the writer
//! across segment rolls, as a [`PartitionReader`]. It seeks with the segment
//! index, reads 1 MiB at a time and copies many records into one [`Chunk`].
//!
//! Its file I/O goes through the partition's [`Storage`] (the local file
//! system unless [`LogReader::open_in`] is given another): one positional read
//! per 1 MiB block, nothing per record. A reader never changes the log. At damage in the last segment it waits
//! (a torn tail the next writer truncates, or a frame still being written);
//! damage anywhere else is an error.
//!
//! A record longer than the reader's `max_record_bytes` is never read whole: its
//! CRC is checked while streaming it in 1 MiB blocks and the chunk gets its first
//! KiB as a truncated record ([`Chunk::truncated`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use weir_core::error::{Error, IoContext, Result};
use weir_core::record::{Chunk, Offset, OffsetKind, PartitionId};
use weir_core::source::{PartitionReader, ReadStatus};
use weir_core::storage::{self, Storage};

use super::frame::{self, HEADER, MAX_RECORD_BYTES};
use super::index::{self, IndexEntry, Loaded};
use super::segment::{READ_BLOCK, Scanner, Step, Verdict, check_tail, index_path, list_segments, segment_path};
use crate::record_limit::{DEFAULT_MAX_RECORD_BYTES, check_max_record_bytes};

/// Most payload bytes one chunk takes, so its `u32` ends cannot overflow.
const CHUNK_LIMIT: usize = u32::MAX as usize - MAX_RECORD_BYTES;

/// Reads a partition of the log sequentially. See the [module docs](self).
#[derive(Debug)]
pub struct LogReader {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    partition: PartitionId,
    /// Base of the segment being read (meaningless while `scanner` is `None`).
    base: Offset,
    /// The segment being read; `None` until the partition's first segment exists.
    scanner: Option<Scanner>,
    /// Whether a segment after the current one is known to exist.
    sealed: bool,
    next: Offset,
    until: Option<Offset>,
    /// Records longer than this are handed over truncated.
    max_record_bytes: usize,
}

/// Why [`LogReader::pump`] returned.
#[derive(Debug, PartialEq, Eq)]
enum Pump {
    /// It reached the stop offset or the byte budget.
    Stopped,
    /// It reached the current end of the partition (or a torn tail).
    Idle,
}

impl LogReader {
    /// Opens the partition in `dir` on the local file system (the partition
    /// `partition` of its topic) to read from offset `from`, stopping before
    /// `until` when given.
    ///
    /// `from` may be the current end offset (the reader then waits for new
    /// records), but not beyond it: that is an [`Error::Config`] naming `offset`.
    pub fn open(
        dir: impl Into<PathBuf>,
        partition: PartitionId,
        from: Offset,
        until: Option<Offset>,
    ) -> Result<LogReader> {
        Self::open_limited(dir, partition, from, until, DEFAULT_MAX_RECORD_BYTES)
    }

    /// [`LogReader::open`] handing over records longer than `max_record_bytes`
    /// (1 byte to 1 GiB) as truncated chunk entries.
    pub fn open_limited(
        dir: impl Into<PathBuf>,
        partition: PartitionId,
        from: Offset,
        until: Option<Offset>,
        max_record_bytes: u64,
    ) -> Result<LogReader> {
        Self::open_in(storage::local(), dir, partition, from, until, max_record_bytes)
    }

    /// [`LogReader::open_limited`] on `storage`: every file operation of the
    /// reader goes through it.
    pub fn open_in(
        storage: Arc<dyn Storage>,
        dir: impl Into<PathBuf>,
        partition: PartitionId,
        from: Offset,
        until: Option<Offset>,
        max_record_bytes: u64,
    ) -> Result<LogReader> {
        check_max_record_bytes(max_record_bytes)?;
        let dir = dir.into();
        let bases = list_segments(&*storage, &dir)?;
        let max_record_bytes = usize::try_from(max_record_bytes).unwrap_or(usize::MAX);
        let mut reader = LogReader {
            storage,
            dir,
            partition,
            base: 0,
            scanner: None,
            sealed: false,
            next: 0,
            until,
            max_record_bytes,
        };
        let Some(i) = bases.partition_point(|&b| b <= from).checked_sub(1) else {
            return match bases.first() {
                Some(&first) => Err(reader.bad_offset(from, &format!("its first offset is {first}"))),
                None if from == 0 => Ok(reader),
                None => Err(reader.bad_offset(from, "it is empty")),
            };
        };
        let base = bases[i];
        let entry = reader.seek_entry(base, from - base)?;
        reader.base = base;
        reader.next = base + u64::from(entry.rel);
        let seg = segment_path(&reader.dir, base);
        reader.scanner = Some(Scanner::open(&*reader.storage, seg, entry.pos, max_record_bytes)?);
        if reader.pump(usize::MAX, from, None)? == Pump::Idle {
            let end = format!("its end offset is {}", reader.next);
            return Err(reader.bad_offset(from, &end));
        }
        Ok(reader)
    }

    fn bad_offset(&self, from: Offset, why: &str) -> Error {
        Error::config("offset", format!("cannot read {} from offset {from}: {why}", self.dir.display()))
    }

    /// The index entry to start from to reach relative offset `rel` of segment
    /// `base`, checked to point at a valid frame; the segment start when the
    /// index is missing, damaged or stale (readers never rewrite it).
    pub(crate) fn seek_entry(&self, base: Offset, rel: u64) -> Result<IndexEntry> {
        let origin = IndexEntry { rel: 0, pos: 0 };
        let seg = segment_path(&self.dir, base);
        let seg_len = self.storage.metadata(&seg).ctx("stat", &seg)?.len;
        let ix_path = index_path(&self.dir, base);
        let entries = match index::load(&*self.storage, &ix_path, seg_len)? {
            Loaded::Entries(entries) => entries,
            Loaded::Missing => return Ok(origin),
            Loaded::Damaged(why) => {
                tracing::warn!("ignoring the index {}: {why}", ix_path.display());
                return Ok(origin);
            }
        };
        let entry = index::lookup(&entries, rel);
        if entry.pos > 0 {
            let mut scanner = Scanner::open(&*self.storage, seg, entry.pos, READ_BLOCK)?;
            if !matches!(scanner.next()?, Step::Record(_) | Step::Oversize { .. }) {
                tracing::warn!(
                    "ignoring the index {}: entry for record {} points at no valid frame",
                    ix_path.display(),
                    entry.rel
                );
                return Ok(origin);
            }
        }
        Ok(entry)
    }

    /// Offset of the next record this reader returns.
    pub fn next_offset(&self) -> Offset {
        self.next
    }

    /// Reads records until offset `stop_at` or until their frames take
    /// `max_bytes` (at least one record), appending them to `out` when given.
    fn pump(&mut self, max_bytes: usize, stop_at: Offset, mut out: Option<&mut Chunk>) -> Result<Pump> {
        let mut taken = 0usize;
        loop {
            if self.next >= stop_at || (taken > 0 && taken >= max_bytes) {
                return Ok(Pump::Stopped);
            }
            let next_path = segment_path(&self.dir, self.next);
            let storage = &*self.storage;
            let Some(scanner) = self.scanner.as_mut() else {
                if !exists(storage, &next_path)? {
                    let later = list_segments(storage, &self.dir)?.into_iter().find(|&b| b > self.next);
                    if let Some(later) = later {
                        return Err(Error::corrupt(
                            &self.dir,
                            0,
                            format!(
                                "segment {} ends at offset {}, but the next segment starts at {later}: records are missing",
                                self.base, self.next
                            ),
                        ));
                    }
                    return Ok(Pump::Idle);
                }
                self.scanner = Some(Scanner::open(storage, next_path, 0, self.max_record_bytes)?);
                self.base = self.next;
                self.sealed = false;
                continue;
            };
            // Damage is corruption, not a tail, when any later segment exists.
            let base = self.base;
            let dir = &self.dir;
            let later_segment = |sealed: bool| -> Result<bool> {
                Ok(sealed || list_segments(storage, dir)?.last().is_some_and(|&b| b > base))
            };
            match scanner.next()? {
                Step::Record(payload) => {
                    if let Some(out) = out.as_deref_mut() {
                        out.data.extend_from_slice(payload);
                        out.ends.push(out.data.len() as u32);
                    }
                    taken = taken.saturating_add(HEADER + payload.len());
                    self.next += 1;
                }
                Step::Oversize { prefix, len } => {
                    if let Some(out) = out.as_deref_mut() {
                        out.truncated.push((out.ends.len() as u32, len as u64));
                        out.max_record_bytes = self.max_record_bytes as u64;
                        out.data.extend_from_slice(prefix);
                        out.ends.push(out.data.len() as u32);
                    }
                    taken = taken.saturating_add(HEADER + len);
                    self.next += 1;
                }
                Step::End { partial, len } => {
                    if partial > 0 && taken > 0 {
                        // Hand over the records read so far; the next call looks again.
                        let pos = scanner.pos();
                        scanner.reset_to(pos);
                        return Ok(Pump::Stopped);
                    }
                    // The writer creates the next segment only after its last write to
                    // this one, so once that file exists, one more read finds all of it.
                    let rolled = self.next > self.base && exists(storage, &next_path)?;
                    if !self.sealed && (rolled || (partial > 0 && later_segment(false)?)) {
                        self.sealed = true;
                        continue;
                    }
                    // A bounded read must not wait forever at a gap between segments: a
                    // later segment means this one is complete (checked by listing the
                    // directory, which only bounded reads pay for at an idle end).
                    let bounded = self.until.is_some_and(|u| self.next < u);
                    if !self.sealed && !rolled && partial == 0 && bounded && later_segment(false)? {
                        if self.next == self.base {
                            // The writer never leaves an empty segment behind a later one
                            // (and reopening it would loop).
                            let damage = scanner.damage("an empty segment".to_owned());
                            return Err(damage.into_error("later segments exist, so records are missing"));
                        }
                        self.sealed = true;
                        continue;
                    }
                    if self.sealed {
                        if partial > 0 {
                            let what = frame::describe_incomplete(len, partial);
                            let damage = scanner.damage(what);
                            return Err(damage.into_error("the segment is not the last one"));
                        }
                        self.scanner = None;
                        continue;
                    }
                    if partial > 0 {
                        let damage = scanner.damage(frame::describe_incomplete(len, partial));
                        let verdict = check_tail(storage, &damage, base)?;
                        // Drop the partial frame: it is re-read once complete (or rewritten).
                        let pos = scanner.pos();
                        scanner.reset_to(pos);
                        if verdict == Verdict::Changed {
                            continue;
                        }
                    }
                    return Ok(Pump::Idle);
                }
                Step::Bad(what) => {
                    if taken > 0 {
                        return Ok(Pump::Stopped);
                    }
                    let damage = scanner.damage(what);
                    if later_segment(self.sealed)? {
                        return Err(damage.into_error("the segment is not the last one"));
                    }
                    let verdict = check_tail(storage, &damage, base)?;
                    scanner.reset_to(damage.pos);
                    if verdict == Verdict::Changed {
                        continue;
                    }
                    return Ok(Pump::Idle);
                }
            }
        }
    }
}

fn exists(storage: &dyn Storage, path: &Path) -> Result<bool> {
    storage.exists(path).ctx("stat", path)
}

impl PartitionReader for LogReader {
    fn read(&mut self, max_bytes: usize, out: &mut Chunk) -> Result<ReadStatus> {
        let stop_at = self.until.unwrap_or(Offset::MAX);
        if self.next >= stop_at {
            return Ok(ReadStatus::End);
        }
        if out.is_empty() {
            out.partition = self.partition;
            out.first = self.next;
            out.kind = OffsetKind::Records;
            out.sep = 0;
            out.data.clear();
            out.truncated.clear();
            out.times.clear();
        }
        let before = out.len();
        let budget = max_bytes.min(CHUNK_LIMIT.saturating_sub(out.data.len()));
        self.pump(budget, stop_at, Some(out))?;
        out.next = self.next;
        Ok(if out.len() > before {
            ReadStatus::Data
        } else if self.next >= stop_at {
            ReadStatus::End
        } else {
            ReadStatus::Idle
        })
    }
}
