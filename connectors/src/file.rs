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

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use weir_core::error::{Error, IoContext, Result};
use weir_core::record::{Chunk, Offset, OffsetKind, PartitionId};
use weir_core::source::{PartitionReader, PartitionSpec, ReadOrder, ReadStatus, Source};

/// Default split size: 4 MiB.
pub const DEFAULT_SPLIT_BYTES: u64 = 4 << 20;

/// A `\n`-separated file split into byte ranges.
#[derive(Debug, Clone)]
pub struct LinesFile {
    path: PathBuf,
    name: String,
    size: u64,
    mtime_ns: u128,
    split_bytes: u64,
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
        Ok(LinesFile { name: path.display().to_string(), path, size, mtime_ns, split_bytes, bounds })
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
        Ok(Box::new(SplitReader { file, path: self.path.clone(), partition, pos: from, end }))
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
}

struct SplitReader {
    file: File,
    path: PathBuf,
    partition: PartitionId,
    pos: Offset,
    end: Offset,
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
        let mut want = (max_bytes as u64).min(self.end - self.pos) as usize;
        // Read whole lines; grow the read when one line is longer than the buffer.
        let len = loop {
            out.data.resize(want, 0);
            let mut filled = 0;
            while filled < want {
                let n = self.file.read_at(&mut out.data[filled..], self.pos + filled as u64).ctx("read", &self.path)?;
                if n == 0 {
                    return Err(Error::Checkpoint {
                        path: self.path.clone(),
                        message: format!("file shrank: expected data at byte {}", self.pos + filled as u64),
                    });
                }
                filled += n;
            }
            let at_end = self.pos + want as u64 >= self.end;
            if at_end {
                break want;
            }
            match memchr::memrchr(b'\n', &out.data) {
                Some(i) => break i + 1,
                None => want = (want * 2).min((self.end - self.pos) as usize),
            }
        };
        out.data.truncate(len);
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', &out.data) {
            out.ends.push(nl as u32);
            start = nl + 1;
        }
        if start < len {
            // A last line without `\n` (only at the end of the file) still counts.
            out.ends.push(len as u32);
        }
        self.pos += len as u64;
        out.next = self.pos;
        Ok(if self.pos >= self.end { ReadStatus::End } else { ReadStatus::Data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read_all(src: &LinesFile, batch: usize) -> Vec<(PartitionId, Offset, Vec<u8>)> {
        let mut out = Vec::new();
        for spec in src.partitions().unwrap() {
            let mut r = src.open(spec.id, spec.start, None).unwrap();
            loop {
                let mut chunk = Chunk::default();
                let status = r.read(batch, &mut chunk).unwrap();
                for (off, line) in chunk.records() {
                    out.push((spec.id, off, line.to_vec()));
                }
                if status == ReadStatus::End {
                    break;
                }
            }
        }
        out
    }

    proptest! {
        /// Every line is read exactly once, with its byte offset, whatever the
        /// split size and read size; only `\n` ends a line; a last line without
        /// `\n` counts; empty lines are records.
        #[test]
        fn splits_cover_every_line_once(
            lines in proptest::collection::vec("[a-z{}\":,\r ]{0,40}", 0..60),
            trailing_newline in any::<bool>(),
            split in 1u64..200,
            batch in 1usize..300,
        ) {
            let mut text = lines.join("\n");
            if trailing_newline && !lines.is_empty() {
                text.push('\n');
            }
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("in.jsonl");
            std::fs::write(&path, &text).unwrap();
            let src = LinesFile::with_split_bytes(&path, split).unwrap();
            let got = read_all(&src, batch.max(1));
            // Reference: split the text on '\n' with offsets.
            let mut expected = Vec::new();
            let mut off = 0usize;
            if !text.is_empty() {
                for line in text.split('\n') {
                    if off == text.len() { break; }
                    expected.push((off as u64, line.as_bytes().to_vec()));
                    off += line.len() + 1;
                }
            }
            let got_lines: Vec<_> = got.iter().map(|(_, o, l)| (*o, l.clone())).collect();
            prop_assert_eq!(got_lines, expected);
            // Resuming from any line start of a split gives the rest of that split.
            for (p, off, _) in got.iter().take(5) {
                let rest = {
                    let mut r = src.open(*p, *off, None).unwrap();
                    let mut c = Chunk::default();
                    let _ = r.read(1 << 20, &mut c).unwrap();
                    c.records().next().map(|(o, _)| o)
                };
                prop_assert_eq!(rest, Some(*off));
            }
        }
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
