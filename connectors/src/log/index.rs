//! The sparse offset index of a segment: entries `(record offset relative to the
//! segment base, byte position of its frame)`, 16 bytes each with their own
//! CRC-32, so a reader seeks without scanning the segment from its start.
//!
//! The index is a cache of the segment: [`Indexer`] applies the same rule when
//! the writer appends and when the index is rebuilt from the segment, and a
//! missing or damaged index ([`load`]) only costs a scan.

use std::io::{ErrorKind, Write};
use std::path::Path;

use weir_core::error::{IoContext, Result};
use weir_core::storage::Storage;

use super::frame::HEADER;

/// Bytes per entry: `u32 LE rel`, `u64 LE pos`, `u32 LE CRC-32 of the first 12 bytes`.
pub(crate) const ENTRY: usize = 16;

/// One index entry: the record `base + rel` starts at byte `pos` of the segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    /// Record offset relative to the segment base.
    pub rel: u32,
    /// Byte position of the record's frame in the segment.
    pub pos: u64,
}

impl IndexEntry {
    /// Appends the 16-byte encoding.
    pub(crate) fn encode(self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.rel.to_le_bytes());
        out.extend_from_slice(&self.pos.to_le_bytes());
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    /// Decodes one entry; `None` when its CRC does not match.
    fn decode(b: &[u8]) -> Option<IndexEntry> {
        let b: &[u8; ENTRY] = b.try_into().ok()?;
        let crc = u32::from_le_bytes([b[12], b[13], b[14], b[15]]);
        if crc32fast::hash(&b[..12]) != crc {
            return None;
        }
        let rel = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let pos = u64::from_le_bytes([b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11]]);
        Some(IndexEntry { rel, pos })
    }
}

/// The rule that picks indexed records: a record gets an entry when its frame
/// starts at least `interval` bytes after the previous entry (or the segment start).
#[derive(Clone, Debug)]
pub(crate) struct Indexer {
    interval: u64,
    next_at: u64,
}

impl Indexer {
    /// An indexer at the start of a segment.
    pub(crate) fn new(interval: u64) -> Self {
        Indexer { interval, next_at: interval }
    }

    /// Called for every record in order; returns the entry to store, if any.
    pub(crate) fn observe(&mut self, rel: u32, pos: u64) -> Option<IndexEntry> {
        if pos == 0 || pos < self.next_at {
            return None;
        }
        self.next_at = pos.saturating_add(self.interval);
        Some(IndexEntry { rel, pos })
    }
}

/// What [`load`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Loaded {
    /// A valid index.
    Entries(Vec<IndexEntry>),
    /// No index file.
    Missing,
    /// An index that cannot be trusted, and why.
    Damaged(String),
}

/// Reads the index at `path` of a segment that is `seg_len` bytes long and checks
/// every entry (CRC, strictly increasing, pointing at a frame inside the segment).
pub(crate) fn load(storage: &dyn Storage, path: &Path, seg_len: u64) -> Result<Loaded> {
    let bytes = match storage.read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Loaded::Missing),
        Err(e) => return Err(e).ctx("read", path),
    };
    if bytes.len() % ENTRY != 0 {
        return Ok(Loaded::Damaged(format!("its length {} is not a multiple of {ENTRY}", bytes.len())));
    }
    let mut entries: Vec<IndexEntry> = Vec::with_capacity(bytes.len() / ENTRY);
    for (i, chunk) in bytes.chunks_exact(ENTRY).enumerate() {
        let Some(e) = IndexEntry::decode(chunk) else {
            return Ok(Loaded::Damaged(format!("entry {i} fails its CRC-32")));
        };
        let increasing = entries.last().is_none_or(|p| e.rel > p.rel && e.pos > p.pos);
        if !increasing || e.pos == 0 || e.pos + HEADER as u64 > seg_len {
            return Ok(Loaded::Damaged(format!(
                "entry {i} (record {}, byte {}) is out of order or past the segment's {seg_len} bytes",
                e.rel, e.pos
            )));
        }
        entries.push(e);
    }
    Ok(Loaded::Entries(entries))
}

/// The entry to start scanning from to reach relative offset `rel`: the last one
/// at or before it, or the segment start `(0, 0)`.
pub(crate) fn lookup(entries: &[IndexEntry], rel: u64) -> IndexEntry {
    let i = entries.partition_point(|e| u64::from(e.rel) <= rel);
    match i.checked_sub(1) {
        Some(i) => entries[i],
        None => IndexEntry { rel: 0, pos: 0 },
    }
}

/// Writes (replacing) the index file at `path`; not fsynced (a damaged index
/// only costs a scan).
pub(crate) fn write(storage: &dyn Storage, path: &Path, entries: &[IndexEntry]) -> Result<()> {
    let mut bytes = Vec::with_capacity(entries.len() * ENTRY);
    for e in entries {
        e.encode(&mut bytes);
    }
    storage.create(path).ctx("create", path)?.write_all(&bytes).ctx("write", path)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use weir_core::storage::LocalFs;

    use super::*;

    #[test]
    fn indexer_is_sparse_and_skips_record_zero() {
        let mut ix = Indexer::new(100);
        let picked: Vec<_> = (0..10u32).filter_map(|i| ix.observe(i, u64::from(i) * 40)).collect();
        assert_eq!(
            picked,
            vec![IndexEntry { rel: 3, pos: 120 }, IndexEntry { rel: 6, pos: 240 }, IndexEntry { rel: 9, pos: 360 }]
        );
        let mut dense = Indexer::new(0);
        assert_eq!(dense.observe(0, 0), None);
        assert_eq!(dense.observe(1, 9), Some(IndexEntry { rel: 1, pos: 9 }));
        assert_eq!(dense.observe(2, 18), Some(IndexEntry { rel: 2, pos: 18 }));
    }

    #[test]
    fn load_checks_entries_and_lookup_finds_the_floor() -> Result<()> {
        let dir = tempfile::tempdir().ctx("tempdir", "/tmp")?;
        let path = dir.path().join("x.index");
        assert_eq!(load(&LocalFs, &path, 1000)?, Loaded::Missing);
        let entries = vec![IndexEntry { rel: 5, pos: 100 }, IndexEntry { rel: 9, pos: 200 }];
        write(&LocalFs, &path, &entries)?;
        assert_eq!(load(&LocalFs, &path, 1000)?, Loaded::Entries(entries.clone()));
        assert!(matches!(load(&LocalFs, &path, 150)?, Loaded::Damaged(_)), "entry past the segment");
        assert_eq!(lookup(&entries, 4), IndexEntry { rel: 0, pos: 0 });
        assert_eq!(lookup(&entries, 5), entries[0]);
        assert_eq!(lookup(&entries, 8), entries[0]);
        assert_eq!(lookup(&entries, 1 << 40), entries[1]);

        let mut bytes = fs::read(&path).ctx("read", &path)?;
        bytes[20] ^= 1;
        fs::write(&path, &bytes).ctx("write", &path)?;
        assert!(matches!(load(&LocalFs, &path, 1000)?, Loaded::Damaged(m) if m.contains("entry 1")));
        fs::write(&path, &bytes[..20]).ctx("write", &path)?;
        assert!(matches!(load(&LocalFs, &path, 1000)?, Loaded::Damaged(m) if m.contains("multiple")));
        Ok(())
    }
}
