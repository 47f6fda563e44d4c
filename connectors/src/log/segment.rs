//! Segment files: their names, listing them, and [`Scanner`], which walks the
//! frames of one segment with large positional reads (1 MiB, through the
//! partition's [`Storage`]) and parses them from the buffer. A record longer than the scanner's limit is checked with a
//! streaming CRC and handed over as its first KiB ([`Step::Oversize`]), so no
//! frame header, valid or forged, makes a scan allocate more than the limit.
//! Also the one decision about damage ([`check_tail`]): a torn tail or corruption.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use weir_core::error::{Error, IoContext, Result};
use weir_core::record::{Offset, TRUNCATED_PREFIX_BYTES};
use weir_core::storage::{ReadAt, Storage};

use super::frame::{self, Frame, HEADER, MAX_RECORD_BYTES, RESYNC_BUDGET, Resync};
use super::index::{IndexEntry, Indexer};
use super::synced;

/// Bytes asked from the OS per read.
pub(crate) const READ_BLOCK: usize = 1 << 20;

/// File name of the segment whose first record is `base`.
pub(crate) fn segment_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

/// File name of the index of the segment `base`.
pub(crate) fn index_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{base:020}.index"))
}

/// Base offsets of the segments in a partition directory, in order.
pub(crate) fn list_segments(storage: &dyn Storage, dir: &Path) -> Result<Vec<Offset>> {
    let mut bases = Vec::new();
    for entry in storage.list(dir).ctx("list", dir)? {
        let Some(stem) = entry.name.to_str().and_then(|n| n.strip_suffix(".log")) else {
            continue;
        };
        if stem.len() == 20
            && stem.bytes().all(|b| b.is_ascii_digit())
            && let Ok(base) = stem.parse::<Offset>()
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// What [`Scanner::next`] found.
#[derive(Debug)]
pub(crate) enum Step<'a> {
    /// A valid record.
    Record(&'a [u8]),
    /// A valid record longer than the scanner's limit: its first
    /// [`TRUNCATED_PREFIX_BYTES`] and its length.
    Oversize { prefix: &'a [u8], len: usize },
    /// The end of the file; `partial` bytes of an incomplete frame (whose header
    /// claims a payload of `len` bytes, when complete) follow the last record.
    End { partial: usize, len: Option<usize> },
    /// A damaged frame starts at [`Scanner::pos`]: what was expected and found.
    Bad(String),
}

/// Reads the frames of one segment file from a position, in order.
///
/// After [`Step::End`] the scanner can be asked again: it reads whatever was
/// appended since.
#[derive(Debug)]
pub(crate) struct Scanner {
    path: PathBuf,
    file: Box<dyn ReadAt>,
    /// Always fully initialized; `buf[start..end]` holds the file bytes from `pos`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    pos: u64,
    /// File position of `buf[end]`: where the next read starts.
    read_pos: u64,
    /// Records longer than this are [`Step::Oversize`].
    limit: usize,
    /// The prefix of the last oversize record.
    prefix: Vec<u8>,
}

impl Scanner {
    /// Opens the segment at `path` positioned at byte `pos` (a frame start);
    /// records longer than `limit` bytes are returned as [`Step::Oversize`].
    pub(crate) fn open(storage: &dyn Storage, path: PathBuf, pos: u64, limit: usize) -> Result<Scanner> {
        let file = storage.open_read_at(&path).ctx("open", &path)?;
        Ok(Scanner { path, file, buf: Vec::new(), start: 0, end: 0, pos, read_pos: pos, limit, prefix: Vec::new() })
    }

    /// Byte position of the next frame.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Forgets buffered bytes and continues from byte `pos` (a frame start), so
    /// bytes the writer truncated and rewrote are read again.
    pub(crate) fn reset_to(&mut self, pos: u64) {
        self.start = 0;
        self.end = 0;
        self.pos = pos;
        self.read_pos = pos;
    }

    /// The next frame.
    pub(crate) fn next(&mut self) -> Result<Step<'_>> {
        loop {
            let claimed = frame::claimed_len(&self.buf[self.start..self.end]);
            if let Some(len) = claimed
                && len > self.limit
                && len <= MAX_RECORD_BYTES
            {
                return self.stream_oversize(len);
            }
            match frame::parse(&self.buf[self.start..self.end]) {
                Frame::Record(payload) => {
                    let len = payload.len();
                    let at = self.start + HEADER;
                    self.start = at + len;
                    self.pos += frame::frame_len(len);
                    return Ok(Step::Record(&self.buf[at..at + len]));
                }
                Frame::Bad(what) => return Ok(Step::Bad(what)),
                Frame::Incomplete { len } => {
                    if !self.fill(HEADER + len.unwrap_or(0))? {
                        return Ok(Step::End { partial: self.end - self.start, len });
                    }
                }
            }
        }
    }

    /// Checks the frame of a `len`-byte payload at the buffer's start (its header
    /// buffered) with a streaming CRC, reading [`READ_BLOCK`]s, and keeps only its
    /// prefix. On damage or the end of the file the scanner is back at the frame.
    fn stream_oversize(&mut self, len: usize) -> Result<Step<'_>> {
        let frame_pos = self.pos;
        let header = &self.buf[self.start..self.start + HEADER];
        let len_bytes = [header[0], header[1], header[2], header[3]];
        let stored = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&len_bytes);
        self.prefix.clear();
        let mut at = self.start + HEADER;
        let mut remaining = len;
        loop {
            let take = (self.end - at).min(remaining);
            let piece = &self.buf[at..at + take];
            hasher.update(piece);
            let room = TRUNCATED_PREFIX_BYTES.saturating_sub(self.prefix.len()).min(take);
            self.prefix.extend_from_slice(&piece[..room]);
            at += take;
            remaining -= take;
            if remaining == 0 {
                break;
            }
            self.start = at;
            if !self.fill(READ_BLOCK)? {
                let partial = HEADER + len - remaining;
                self.reset_to(frame_pos);
                return Ok(Step::End { partial, len: Some(len) });
            }
            at = self.start;
        }
        self.start = at;
        let computed = hasher.finalize();
        if computed != stored {
            self.reset_to(frame_pos);
            return Ok(Step::Bad(frame::crc_mismatch(stored, len, computed)));
        }
        self.pos += frame::frame_len(len);
        Ok(Step::Oversize { prefix: &self.prefix, len })
    }

    /// Reads more of the file so that at least `need` bytes could be buffered;
    /// false at the end of the file.
    fn fill(&mut self, need: usize) -> Result<bool> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < need.max(READ_BLOCK) {
            self.buf.resize(need.max(READ_BLOCK), 0);
        }
        loop {
            match self.file.read_at(&mut self.buf[self.end..], self.read_pos) {
                Ok(n) => {
                    self.end += n;
                    self.read_pos += n as u64;
                    return Ok(n > 0);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("read", &self.path, e)),
            }
        }
    }

    /// The damage at the scanner's position, as reported by a `Step`.
    pub(crate) fn damage(&self, what: String) -> Damage {
        Damage { path: self.path.clone(), pos: self.pos, what }
    }
}

/// A damaged frame: where, and what was expected and found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Damage {
    /// The segment file.
    pub path: PathBuf,
    /// Byte position of the damaged frame.
    pub pos: u64,
    /// What was expected and found.
    pub what: String,
}

impl Damage {
    /// The damage as an error (damage that is not a tail).
    pub(crate) fn into_error(self, why: &str) -> Error {
        Error::corrupt(self.path, self.pos, format!("{}; {why}", self.what))
    }
}

/// What [`check_tail`] decided about damage in the last segment.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A torn tail: stop (readers) or truncate (the writer) there.
    Tail,
    /// Read again: the frame is valid now (a writer finished it since it was read).
    Changed,
}

/// Decides about damage in the **last** segment `base` of its partition (the rule
/// of the [module docs](super)): with a sync watermark, damage at or after it is a
/// torn tail and damage before it corruption; without one (a partition from before
/// watermarks, or a damaged watermark file), a torn tail when no valid frame
/// starts anywhere between the damage and the end of the file.
///
/// Before calling damage before the watermark corruption, the frame is read again
/// *after* the watermark was: a live writer stores the watermark only once the
/// data it covers is written, so a frame still bad then is really damaged.
pub(crate) fn check_tail(storage: &dyn Storage, damage: &Damage, base: Offset) -> Result<Verdict> {
    let dir = damage.path.parent().unwrap_or(Path::new("."));
    let why = match synced::load(storage, dir)? {
        Some(w) if w.base > base => {
            let path = synced::path(dir);
            let what = format!(
                "the sync watermark is in segment {}, after the last segment {base}: synced segments are missing",
                w.base
            );
            return Err(Error::corrupt(path, 0, what));
        }
        Some(w) if w.base == base && damage.pos < w.pos => {
            let mut again = Scanner::open(storage, damage.path.clone(), damage.pos, READ_BLOCK)?;
            if matches!(again.next()?, Step::Record(_) | Step::Oversize { .. }) {
                return Ok(Verdict::Changed);
            }
            format!("it is before byte {} up to which the segment was synced, so it is not a torn tail", w.pos)
        }
        Some(_) => return Ok(Verdict::Tail),
        None => {
            let region = read_from(storage, &damage.path, damage.pos)?;
            match frame::find_valid_frame(&region, RESYNC_BUDGET) {
                Resync::NotFound => return Ok(Verdict::Tail),
                Resync::Found(at) => format!(
                    "a valid record follows at byte {} and the partition has no sync watermark, so this is not a torn tail",
                    damage.pos + at as u64
                ),
                Resync::GaveUp => {
                    format!("could not tell a torn tail from corruption within {RESYNC_BUDGET} bytes of search")
                }
            }
        }
    };
    Err(damage.clone().into_error(&why))
}

/// The bytes of the file at `path` from byte `pos` to its end.
fn read_from(storage: &dyn Storage, path: &Path, pos: u64) -> Result<Vec<u8>> {
    let file = storage.open_read_at(path).ctx("open", path)?;
    let mut out = Vec::new();
    let mut at = pos;
    loop {
        let start = out.len();
        out.resize(start + READ_BLOCK, 0);
        let n = loop {
            match file.read_at(&mut out[start..], at) {
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("read", path, e)),
            }
        };
        out.truncate(start + n);
        if n == 0 {
            return Ok(out);
        }
        at += n as u64;
    }
}

/// What [`scan_segment`] found.
#[derive(Debug)]
pub(crate) struct Summary {
    /// Relative offset after the last valid record.
    pub end_rel: u64,
    /// Byte position after the last valid record.
    pub valid_len: u64,
    /// Index entries of the scanned records (when an indexer was given).
    pub entries: Vec<IndexEntry>,
    /// The damaged frame where the scan stopped, if it did not reach a clean end.
    pub damage: Option<Damage>,
}

/// Scans a segment from `from` (an index entry, or `(0, 0)`) to its end or its
/// first damaged frame, counting records and, with an indexer, collecting the
/// index entries of the records it passes.
pub(crate) fn scan_segment(
    storage: &dyn Storage,
    path: PathBuf,
    from: IndexEntry,
    mut indexer: Option<&mut Indexer>,
) -> Result<Summary> {
    // Payloads are not needed: larger ones are only checksummed, with bounded buffers.
    let mut scanner = Scanner::open(storage, path, from.pos, READ_BLOCK)?;
    let mut rel = u64::from(from.rel);
    let mut entries = Vec::new();
    let damage = loop {
        let pos = scanner.pos();
        match scanner.next()? {
            Step::Record(_) | Step::Oversize { .. } => {
                if let Some(ix) = indexer.as_deref_mut() {
                    entries.extend(ix.observe(rel as u32, pos));
                }
                rel += 1;
            }
            Step::End { partial: 0, .. } => break None,
            Step::End { partial, len } => {
                break Some(scanner.damage(frame::describe_incomplete(len, partial)));
            }
            Step::Bad(what) => break Some(scanner.damage(what)),
        }
    };
    Ok(Summary { end_rel: rel, valid_len: scanner.pos(), entries, damage })
}

#[cfg(test)]
mod tests {
    use std::fs;

    use weir_core::storage::LocalFs;

    use super::*;

    fn write_frames(path: &Path, records: &[&[u8]]) -> Result<Vec<u64>> {
        let mut buf = Vec::new();
        let mut starts = Vec::new();
        for r in records {
            starts.push(buf.len() as u64);
            frame::encode(&mut buf, r);
        }
        fs::write(path, &buf).ctx("write", path)?;
        Ok(starts)
    }

    #[test]
    fn names_sort_and_foreign_files_are_ignored() -> Result<()> {
        let dir = tempfile::tempdir().ctx("tempdir", "/tmp")?;
        for base in [1000u64, 0, 20] {
            fs::write(segment_path(dir.path(), base), b"").ctx("write", dir.path())?;
        }
        fs::write(dir.path().join("12.log"), b"").ctx("write", dir.path())?;
        fs::write(index_path(dir.path(), 0), b"").ctx("write", dir.path())?;
        assert_eq!(list_segments(&LocalFs, dir.path())?, vec![0, 20, 1000]);
        assert!(segment_path(dir.path(), 7).ends_with("00000000000000000007.log"));
        Ok(())
    }

    #[test]
    fn scanner_reads_records_across_buffer_refills() -> Result<()> {
        let dir = tempfile::tempdir().ctx("tempdir", "/tmp")?;
        let path = dir.path().join("s.log");
        let big = vec![7u8; READ_BLOCK + 10];
        write_frames(&path, &[b"a", &big, b"c"])?;
        let mut s = Scanner::open(&LocalFs, path.clone(), 0, usize::MAX)?;
        assert!(matches!(s.next()?, Step::Record(b"a")));
        assert!(matches!(s.next()?, Step::Record(r) if r == &big[..]));
        assert!(matches!(s.next()?, Step::Record(b"c")));
        assert!(matches!(s.next()?, Step::End { partial: 0, len: None }));
        // With a limit, the big record is checked by streaming and only its prefix kept.
        let mut s = Scanner::open(&LocalFs, path.clone(), 0, 100)?;
        assert!(matches!(s.next()?, Step::Record(b"a")));
        assert!(
            matches!(s.next()?, Step::Oversize { prefix, len } if prefix == &big[..TRUNCATED_PREFIX_BYTES] && len == big.len())
        );
        assert!(s.buf.len() <= READ_BLOCK, "buffer {}", s.buf.len());
        assert!(matches!(s.next()?, Step::Record(b"c")));
        // A damaged or cut big record is reported like any other, at its frame.
        let start = 9;
        flip(&path, start + 8 + 500_000)?;
        let mut s = Scanner::open(&LocalFs, path.clone(), 0, 100)?;
        assert!(matches!(s.next()?, Step::Record(b"a")));
        assert!(matches!(s.next()?, Step::Bad(m) if m.contains("CRC-32")));
        assert_eq!(s.pos(), start);
        let f = fs::OpenOptions::new().write(true).open(&path).ctx("open", &path)?;
        f.set_len(start + 600_000).ctx("truncate", &path)?;
        let mut s = Scanner::open(&LocalFs, path, start, 100)?;
        assert!(matches!(s.next()?, Step::End { partial: 600_000, len: Some(n) } if n == big.len()));
        assert_eq!(s.pos(), start);
        Ok(())
    }

    fn flip(path: &Path, at: u64) -> Result<()> {
        let mut bytes = fs::read(path).ctx("read", path)?;
        bytes[at as usize] ^= 1;
        fs::write(path, bytes).ctx("write", path)
    }

    #[test]
    fn scan_counts_and_reports_a_torn_frame() -> Result<()> {
        let dir = tempfile::tempdir().ctx("tempdir", "/tmp")?;
        let path = dir.path().join("s.log");
        let starts = write_frames(&path, &[b"one", b"two", b"three"])?;
        let full = fs::metadata(&path).ctx("stat", &path)?.len();
        let f = fs::OpenOptions::new().write(true).open(&path).ctx("open", &path)?;
        f.set_len(full - 2).ctx("truncate", &path)?;
        let summary = scan_segment(&LocalFs, path.clone(), IndexEntry { rel: 0, pos: 0 }, None)?;
        assert_eq!(summary.end_rel, 2);
        assert_eq!(summary.valid_len, starts[2]);
        let damage = summary.damage.ok_or_else(|| Error::Pipeline("no damage".into()))?;
        assert_eq!(damage.pos, starts[2]);
        assert_eq!(check_tail(&LocalFs, &damage, 0)?, Verdict::Tail);
        Ok(())
    }
}
