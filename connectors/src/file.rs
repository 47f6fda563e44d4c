//! A JSON-lines (or any `\n`-separated) file as a partitioned source.
//!
//! The file is split into byte ranges aligned to line starts, so several
//! workers parse one file in parallel. The split layout is fixed by the file
//! (and the split size), not by the worker count, so a checkpoint stays valid
//! when `--workers` changes. Offsets are byte offsets of line starts.
//!
//! Splits are read sequentially (not interleaved) and a worker first reads
//! one small chunk of each split it owns, so an unstarted split's watermark
//! sits at the event time it will start from: with a time-ordered file,
//! windows fire as the earliest splits progress and state stays small.
//!
//! The file's size is taken once, at [`LinesFile::open`]: a run reads exactly
//! that prefix, so lines appended later (a torn last line among them) are
//! never read. A file that shrinks below that size is an error naming it.
//!
//! A line longer than `max_record_bytes` (default 16 MiB) is never held whole:
//! the reader looks for its end with fixed-size reads and hands over its first
//! KiB as a truncated record ([`Chunk::truncated`]) that decoding dead-letters.
//! The read buffer therefore never exceeds `max(max_bytes, max_record_bytes + 1)`,
//! and `max_record_bytes` is at most [`MAX_RECORD_BYTES_LIMIT`] (1 GiB), so a
//! chunk's `u32` record ends cannot overflow whatever the file's line lengths.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use weir_core::error::{Error, IoContext, Result};
use weir_core::record::{Chunk, Offset, OffsetKind, PartitionId, TRUNCATED_PREFIX_BYTES};
use weir_core::source::{PartitionReader, PartitionSpec, ReadOrder, ReadStatus, Source};

use crate::record_limit::check_max_record_bytes;
pub use crate::record_limit::{DEFAULT_MAX_RECORD_BYTES, MAX_RECORD_BYTES_LIMIT};

/// Default split size: 4 MiB.
pub const DEFAULT_SPLIT_BYTES: u64 = 4 << 20;

/// Bytes per read while looking for the end of an oversize line.
const SKIP_BLOCK: usize = 64 << 10;

/// A `\n`-separated file split into byte ranges.
#[derive(Debug, Clone)]
pub struct LinesFile {
    path: PathBuf,
    name: String,
    size: u64,
    mtime_ns: u128,
    split_bytes: u64,
    max_record_bytes: u64,
    /// Split `i` is `bounds[i]..bounds[i + 1]`.
    bounds: Vec<Offset>,
}

impl LinesFile {
    /// Opens `path` with the default split size.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::with_split_bytes(path, DEFAULT_SPLIT_BYTES)
    }

    /// Opens `path`, splitting it every `split_bytes` (moved forward to the next line start).
    pub fn with_split_bytes(path: impl AsRef<Path>, split_bytes: u64) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if split_bytes == 0 {
            return Err(Error::config("split_bytes", "must be positive"));
        }
        let file = File::open(&path).ctx("open", &path)?;
        // The source is identified by its canonical absolute path: `./in.jsonl`
        // and `in.jsonl`, or the same file from another working directory, are one input.
        let path = std::fs::canonicalize(&path).ctx("resolve", &path)?;
        let meta = file.metadata().ctx("stat", &path)?;
        if !meta.is_file() {
            return Err(Error::config("input", format!("{} is not a regular file", path.display())));
        }
        let size = meta.len();
        let mtime_ns = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        let mut bounds = vec![0];
        let mut buf = vec![0u8; 64 * 1024];
        let mut nominal = split_bytes;
        while nominal < size {
            // The split starts at the first line start at or after `nominal`.
            let mut pos = nominal - 1;
            let start = loop {
                let n = file.read_at(&mut buf, pos).ctx("read", &path)?;
                if n == 0 {
                    break size;
                }
                if let Some(i) = memchr::memchr(b'\n', &buf[..n]) {
                    break pos + i as u64 + 1;
                }
                pos += n as u64;
            };
            let last = *bounds.last().unwrap_or(&0);
            bounds.push(start.max(last));
            nominal = start.max(nominal) + split_bytes;
        }
        bounds.push(size);
        bounds.dedup();
        if bounds.len() == 1 {
            bounds.push(size); // an empty file is one empty split
        }
        Ok(LinesFile {
            name: path.display().to_string(),
            path,
            size,
            mtime_ns,
            split_bytes,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            bounds,
        })
    }

    /// Sets the longest line read as a record (1 to [`MAX_RECORD_BYTES_LIMIT`]);
    /// longer lines become truncated dead letters.
    pub fn with_max_record_bytes(mut self, max_record_bytes: u64) -> Result<Self> {
        check_max_record_bytes(max_record_bytes)?;
        self.max_record_bytes = max_record_bytes;
        Ok(self)
    }

    /// The longest line read as a record.
    pub fn max_record_bytes(&self) -> u64 {
        self.max_record_bytes
    }

    /// Number of splits.
    pub fn splits(&self) -> usize {
        self.bounds.len() - 1
    }
}

impl Source for LinesFile {
    fn name(&self) -> &str {
        &self.name
    }

    fn partitions(&self) -> Result<Vec<PartitionSpec>> {
        Ok(self
            .bounds
            .windows(2)
            .enumerate()
            .map(|(i, w)| PartitionSpec { id: i as PartitionId, start: w[0], end: w[1] })
            .collect())
    }

    fn open(&self, partition: PartitionId, from: Offset, until: Option<Offset>) -> Result<Box<dyn PartitionReader>> {
        let i = partition as usize;
        let (Some(&start), Some(&end)) = (self.bounds.get(i), self.bounds.get(i + 1)) else {
            return Err(Error::config("partition", format!("{} has no split {partition}", self.name)));
        };
        let end = until.unwrap_or(end).min(end);
        if from < start || from > end {
            return Err(Error::Checkpoint {
                path: self.path.clone(),
                message: format!("offset {from} is outside split {partition} ({start}..{end})"),
            });
        }
        let file = File::open(&self.path).ctx("open", &self.path)?;
        let now = file.metadata().ctx("stat", &self.path)?.len();
        if now < end {
            return Err(shrank(&self.path, self.size, now));
        }
        Ok(Box::new(SplitReader {
            file,
            path: self.path.clone(),
            size: self.size,
            partition,
            pos: from,
            end,
            max_record_bytes: self.max_record_bytes,
            scratch: Vec::new(),
        }))
    }

    fn fingerprint(&self) -> Result<serde_json::Value> {
        Ok(serde_json::json!({
            "path": self.name,
            "size": self.size,
            "mtime_ns": self.mtime_ns.to_string(),
            "split_bytes": self.split_bytes,
            "splits": self.bounds,
        }))
    }

    fn read_order(&self) -> ReadOrder {
        ReadOrder::Sequential
    }

    /// The line starting at byte `offset` (without its `\n`), read again from the
    /// file; only its first KiB when it is longer than `max_record_bytes`.
    fn record_at(&self, partition: PartitionId, offset: Offset) -> Result<Option<Vec<u8>>> {
        let i = partition as usize;
        let (Some(&start), Some(&end)) = (self.bounds.get(i), self.bounds.get(i + 1)) else {
            return Err(Error::config("partition", format!("{} has no split {partition}", self.name)));
        };
        if offset < start || offset >= end {
            return Err(Error::config(
                "offset",
                format!("{}: byte {offset} is outside split {partition} ({start}..{end})", self.name),
            ));
        }
        let file = File::open(&self.path).ctx("open", &self.path)?;
        let read = |buf: &mut [u8], at: u64| read_exact_at(&file, &self.path, self.size, buf, at);
        let mut byte = [0u8];
        if offset > 0 {
            read(&mut byte, offset - 1)?;
            if byte[0] != b'\n' {
                return Err(Error::config("offset", format!("{}: byte {offset} is not a line start", self.name)));
            }
        }
        // Read at most max_record_bytes + 1 bytes (and the prefix of an oversize
        // line): enough to find the `\n` of any record, or to know the line is oversize.
        let most = (self.max_record_bytes + 1).max(TRUNCATED_PREFIX_BYTES as u64);
        let stop = (offset + most).min(self.size);
        let mut line = Vec::new();
        let mut at = offset;
        while at < stop {
            let n = (stop - at).min(SKIP_BLOCK as u64) as usize;
            let from = line.len();
            line.resize(from + n, 0);
            read(&mut line[from..], at)?;
            if let Some(nl) = memchr::memchr(b'\n', &line[from..]) {
                line.truncate(from + nl);
                break;
            }
            at += n as u64;
        }
        if line.len() as u64 > self.max_record_bytes {
            line.truncate(TRUNCATED_PREFIX_BYTES);
        }
        Ok(Some(line))
    }
}

/// The error for a file shorter than it was when the run started.
fn shrank(path: &Path, size: u64, now: u64) -> Error {
    Error::io(
        "read",
        path,
        std::io::Error::new(
            ErrorKind::UnexpectedEof,
            format!("the file was truncated while being read: it had {size} bytes when the run started, {now} now"),
        ),
    )
}

/// Fills `buf` from byte `at` of `file`; a file that ends early has shrunk
/// since the run started with `size` bytes.
fn read_exact_at(file: &File, path: &Path, size: u64, buf: &mut [u8], at: u64) -> Result<()> {
    match file.read_exact_at(buf, at) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
            let now = file.metadata().ctx("stat", path)?.len();
            Err(shrank(path, size, now))
        }
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// How many bytes a read takes at once: the caller's budget, at most the rest
/// of the split, and at most `max(max_record_bytes + 1, 1 MiB)` (a window that
/// finds the end of any record that is not oversize; with `max_record_bytes`
/// at most 1 GiB, always a valid `u32` chunk position).
fn read_window(max_bytes: usize, remaining: u64, max_record_bytes: u64) -> usize {
    let cap = (max_record_bytes + 1).max(1 << 20);
    (max_bytes.max(1) as u64).min(remaining).min(cap) as usize
}

struct SplitReader {
    file: File,
    path: PathBuf,
    /// The file's size when the run started (for messages).
    size: u64,
    partition: PartitionId,
    pos: Offset,
    end: Offset,
    max_record_bytes: u64,
    /// Buffer of the oversize-line scan.
    scratch: Vec<u8>,
}

impl SplitReader {
    fn read_at(&self, buf: &mut [u8], at: u64) -> Result<()> {
        read_exact_at(&self.file, &self.path, self.size, buf, at)
    }

    /// Position of the first `\n` at or after `from`, or the split end: reads
    /// [`SKIP_BLOCK`] bytes at a time, whatever the line's length.
    fn find_line_end(&mut self, from: u64) -> Result<u64> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.resize(SKIP_BLOCK, 0);
        let mut at = from;
        let found = loop {
            if at >= self.end {
                break Ok(self.end);
            }
            let n = (self.end - at).min(SKIP_BLOCK as u64) as usize;
            if let Err(e) = self.read_at(&mut scratch[..n], at) {
                break Err(e);
            }
            if let Some(i) = memchr::memchr(b'\n', &scratch[..n]) {
                break Ok(at + i as u64);
            }
            at += n as u64;
        };
        self.scratch = scratch;
        found
    }
}

impl PartitionReader for SplitReader {
    fn read(&mut self, max_bytes: usize, out: &mut Chunk) -> Result<ReadStatus> {
        if self.pos >= self.end {
            return Ok(ReadStatus::End);
        }
        out.partition = self.partition;
        out.first = self.pos;
        out.kind = OffsetKind::Bytes;
        out.sep = 1;
        out.data.clear();
        out.ends.clear();
        out.truncated.clear();
        out.times.clear();
        let limit = self.max_record_bytes;
        let remaining = self.end - self.pos;
        // The window that must hold a whole line (with its `\n`) unless it is oversize.
        let line_window = (limit + 1).min(remaining) as usize;
        let mut want = read_window(max_bytes, remaining, limit);
        // Where an oversize line starts in `out.data`, and its length when known.
        let mut oversize: Option<(usize, Option<u64>)> = None;
        let mut start;
        loop {
            out.data.resize(want, 0);
            self.read_at(&mut out.data, self.pos)?;
            start = 0;
            for nl in memchr::memchr_iter(b'\n', &out.data) {
                if (nl - start) as u64 > limit {
                    oversize = Some((start, Some((nl - start) as u64)));
                    break;
                }
                out.ends.push(nl as u32);
                start = nl + 1;
            }
            if oversize.is_some() || start == want {
                break;
            }
            let rest = (want - start) as u64;
            if want as u64 == remaining {
                // A last line without `\n` (only at the end of the file) still counts.
                if rest > limit {
                    oversize = Some((start, Some(rest)));
                } else {
                    out.ends.push(want as u32);
                    start = want;
                }
            } else if rest > limit {
                oversize = Some((start, None));
            } else if out.ends.is_empty() && want < line_window {
                // The first line is longer than the window: look further, up to a
                // whole line of max_record_bytes.
                want = want.saturating_mul(2).min(line_window);
                continue;
            }
            break;
        }
        let consumed = match oversize {
            None => {
                out.data.truncate(start);
                start as u64
            }
            Some((at, length)) => {
                let length = match length {
                    Some(length) => length,
                    None => self.find_line_end(self.pos + want as u64)? - (self.pos + at as u64),
                };
                let keep = at + (length as usize).min(TRUNCATED_PREFIX_BYTES);
                let have = out.data.len();
                if have < keep {
                    // The window ended before the prefix (max_record_bytes < 1 KiB).
                    out.data.resize(keep, 0);
                    self.read_at(&mut out.data[have..], self.pos + have as u64)?;
                }
                out.data.truncate(keep);
                out.truncated.push((out.ends.len() as u32, length));
                out.max_record_bytes = limit;
                out.ends.push(keep as u32);
                // The line and its `\n` (absent only at the end of the file).
                (at as u64 + length + 1).min(remaining)
            }
        };
        self.pos += consumed;
        out.next = self.pos;
        Ok(if self.pos >= self.end { ReadStatus::End } else { ReadStatus::Data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use weir_core::error::IoContext;

    /// Every record of every split: `(split, offset, payload, full length when truncated)`.
    type Line = (PartitionId, Offset, Vec<u8>, Option<u64>);

    fn read_all(src: &LinesFile, batch: usize) -> Result<Vec<Line>> {
        let mut out = Vec::new();
        for spec in src.partitions()? {
            let mut r = src.open(spec.id, spec.start, None)?;
            let mut chunk = Chunk::default();
            loop {
                chunk.clear();
                let status = r.read(batch, &mut chunk)?;
                // The buffer never grows past the window (plus Vec's rounding up).
                let window = read_window(batch, u64::MAX, src.max_record_bytes());
                let most = window.max(src.max_record_bytes() as usize + 1) + TRUNCATED_PREFIX_BYTES;
                assert!(chunk.data.capacity() <= 2 * most, "{} > 2 * {most}", chunk.data.capacity());
                let mut truncated = chunk.truncated.iter().peekable();
                for (i, (off, line)) in chunk.records().enumerate() {
                    let full = truncated.next_if(|t| t.0 as usize == i).map(|t| t.1);
                    out.push((spec.id, off, line.to_vec(), full));
                }
                if chunk.kind == OffsetKind::Bytes && !chunk.truncated.is_empty() {
                    assert_eq!(chunk.truncated[0].0 as usize, chunk.len() - 1, "a truncated line ends its chunk");
                }
                if status == ReadStatus::End {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The expected records of `text`: `(offset, payload, full length when oversize)`.
    fn reference(text: &[u8], max_record_bytes: usize) -> Vec<(Offset, Vec<u8>, Option<u64>)> {
        let mut expected = Vec::new();
        let mut off = 0usize;
        while off < text.len() {
            let len = memchr::memchr(b'\n', &text[off..]).unwrap_or(text.len() - off);
            let line = &text[off..off + len];
            if len > max_record_bytes {
                expected.push((off as u64, line[..len.min(TRUNCATED_PREFIX_BYTES)].to_vec(), Some(len as u64)));
            } else {
                expected.push((off as u64, line.to_vec(), None));
            }
            off += len + 1;
        }
        expected
    }

    fn write(text: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    proptest! {
        /// Every line is read exactly once, with its byte offset, whatever the
        /// split size and read size; only `\n` ends a line; a last line without
        /// `\n` counts; empty lines are records; lines over max_record_bytes are
        /// truncated records holding their first KiB and their full length.
        #[test]
        fn splits_cover_every_line_once(
            lines in proptest::collection::vec("[a-z{}\":,\r ]{0,40}", 0..60),
            trailing_newline in any::<bool>(),
            split in 1u64..200,
            batch in 1usize..300,
            max_record in 1u64..60,
        ) {
            let mut text = lines.join("\n");
            if trailing_newline && !lines.is_empty() {
                text.push('\n');
            }
            let (_dir, path) = write(text.as_bytes());
            let src = LinesFile::with_split_bytes(&path, split).unwrap().with_max_record_bytes(max_record).unwrap();
            let got = read_all(&src, batch.max(1)).unwrap();
            let got_lines: Vec<_> = got.iter().map(|(_, o, l, t)| (*o, l.clone(), *t)).collect();
            prop_assert_eq!(got_lines, reference(text.as_bytes(), max_record as usize));
            // Resuming from any line start of a split gives the rest of that split,
            // and record_at re-reads the line.
            for (p, off, line, full) in got.iter().take(5) {
                let rest = {
                    let mut r = src.open(*p, *off, None).unwrap();
                    let mut c = Chunk::default();
                    let _ = r.read(1 << 20, &mut c).unwrap();
                    c.records().next().map(|(o, _)| o)
                };
                prop_assert_eq!(rest, Some(*off));
                let again = src.record_at(*p, *off).unwrap();
                prop_assert_eq!(again.as_ref(), Some(line), "full length {:?}", full);
            }
        }
    }

    #[test]
    fn long_lines_are_found_with_bounded_reads() -> Result<()> {
        let long = vec![b'y'; 300_000];
        let mut text = b"short\n".to_vec();
        text.extend_from_slice(&long);
        text.extend_from_slice(b"\nok\n");
        text.extend_from_slice(&long[..5000]); // a last line without `\n`, oversize too
        let (_dir, path) = write(&text);
        for (max_record, batch) in [(10, 1), (10, 64), (10, 1 << 20), (4096, 100), (DEFAULT_MAX_RECORD_BYTES, 7)] {
            let src = LinesFile::open(&path)?.with_max_record_bytes(max_record)?;
            let got: Vec<_> = read_all(&src, batch)?.into_iter().map(|(_, o, l, t)| (o, l, t)).collect();
            assert_eq!(got, reference(&text, max_record as usize), "max_record {max_record}, batch {batch}");
        }
        let src = LinesFile::open(&path)?.with_max_record_bytes(10)?;
        assert_eq!(src.record_at(0, 6)?, Some(long[..TRUNCATED_PREFIX_BYTES].to_vec()));
        assert_eq!(src.record_at(0, 300_007)?, Some(b"ok".to_vec()));
        Ok(())
    }

    #[test]
    fn max_record_bytes_is_validated_and_windows_fit_chunk_offsets() -> Result<()> {
        let (_dir, path) = write(b"a\n");
        for bad in [0, MAX_RECORD_BYTES_LIMIT + 1, u64::MAX] {
            let e = LinesFile::open(&path)?.with_max_record_bytes(bad).unwrap_err();
            assert!(e.to_string().contains("max_record_bytes"), "{e}");
        }
        LinesFile::open(&path)?.with_max_record_bytes(MAX_RECORD_BYTES_LIMIT)?;
        // Whatever the budget and the split, a read window (and so every record end
        // in a chunk) stays a valid u32, and is never empty.
        for (budget, remaining) in [(usize::MAX, 5u64 << 30), (usize::MAX, u64::MAX), (0, 1), (1 << 20, 3)] {
            let w = read_window(budget, remaining, MAX_RECORD_BYTES_LIMIT);
            assert!(w >= 1 && w as u64 <= remaining && w as u64 <= u64::from(u32::MAX), "{budget} {remaining}: {w}");
        }
        assert_eq!(read_window(usize::MAX, 5 << 30, 100), 1 << 20);
        assert_eq!(read_window(usize::MAX, 5 << 30, MAX_RECORD_BYTES_LIMIT), (MAX_RECORD_BYTES_LIMIT + 1) as usize);
        Ok(())
    }

    #[test]
    fn a_file_truncated_during_the_run_is_an_error_naming_it() -> Result<()> {
        let (_dir, path) = write(&b"{\"a\":1}\n".repeat(1000));
        let src = LinesFile::open(&path)?;
        let mut reader = src.open(0, 0, None)?;
        std::fs::OpenOptions::new().write(true).open(&path).ctx("open", &path)?.set_len(100).ctx("truncate", &path)?;
        let e = reader.read(1 << 20, &mut Chunk::default()).unwrap_err();
        let message = e.to_string();
        assert!(message.contains(&path.display().to_string()) && message.contains("truncated"), "{message}");
        assert!(message.contains("8000 bytes when the run started, 100 now"), "{message}");
        let e = src.open(0, 0, None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("truncated"), "{e}");
        Ok(())
    }

    #[test]
    fn a_file_that_grows_is_read_up_to_its_size_at_start() -> Result<()> {
        let (_dir, path) = write(b"one\ntwo\nthr");
        let src = LinesFile::with_split_bytes(&path, 4)?;
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).ctx("open", &path)?;
        std::io::Write::write_all(&mut file, b"ee\nfour\nfi").ctx("write", &path)?;
        let got: Vec<_> = read_all(&src, 1 << 20)?.into_iter().map(|(_, o, l, _)| (o, l)).collect();
        // The last line at start is cut ("thr"): it is read as it was, nothing after it.
        assert_eq!(got, vec![(0, b"one".to_vec()), (4, b"two".to_vec()), (8, b"thr".to_vec())]);
        assert_eq!(src.record_at(2, 8)?, Some(b"thr".to_vec()));
        Ok(())
    }

    #[test]
    fn record_at_checks_its_position() -> Result<()> {
        let (_dir, path) = write(b"alpha\nbeta\n\ngamma");
        let src = LinesFile::with_split_bytes(&path, 8)?;
        assert_eq!(src.splits(), 2);
        assert_eq!(src.record_at(0, 0)?, Some(b"alpha".to_vec()));
        assert_eq!(src.record_at(1, 11)?, Some(b"".to_vec()));
        assert_eq!(src.record_at(1, 12)?, Some(b"gamma".to_vec()));
        for (p, off, what) in [(0, 2, "not a line start"), (0, 11, "outside split 0"), (5, 0, "no split 5")] {
            let e = src.record_at(p, off).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
        Ok(())
    }

    #[test]
    fn fingerprint_changes_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, "a\nb\n").unwrap();
        let a = LinesFile::open(&path).unwrap().fingerprint().unwrap();
        std::fs::write(&path, "a\nbc\n").unwrap();
        let b = LinesFile::open(&path).unwrap().fingerprint().unwrap();
        assert_ne!(a, b);
    }
}
