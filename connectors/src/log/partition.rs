//! A partition directory seen from outside its writer: its name, its end offset
//! (found from the last segment's index and a short scan) and what
//! `weir topic describe` shows about it.

use std::path::Path;

use weir_core::error::{IoContext, Result};
use weir_core::record::{Offset, PartitionId};
use weir_core::storage::Storage;

use super::index::{self, IndexEntry, Loaded};
use super::segment::{self, Verdict, check_tail, index_path, list_segments, segment_path};
use super::synced;

/// Directory name of partition `p` inside its topic: `p-00000`, `p-00001`, ...
pub fn partition_dir_name(p: PartitionId) -> String {
    format!("p-{p:05}")
}

/// What a partition holds now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionInfo {
    /// The partition.
    pub partition: PartitionId,
    /// Offset of its first stored record (the first segment's base).
    pub start: Offset,
    /// Offset after its last valid record.
    pub end: Offset,
    /// Number of segment files.
    pub segments: usize,
    /// Total bytes of its segment files (frames included, a damaged tail too).
    pub bytes: u64,
}

/// The end offset of the segment `base`, the last of the partition in `dir`:
/// scans from the segment's last index entry at or before the sync watermark to its end. Damage there is a torn
/// tail (the end is before it) or, when valid records follow, an error.
pub(crate) fn last_segment_end(storage: &dyn Storage, dir: &Path, base: Offset) -> Result<Offset> {
    let path = segment_path(dir, base);
    // A live writer can finish the damaged-looking frame meanwhile: then look again.
    loop {
        let seg_len = storage.metadata(&path).ctx("stat", &path)?.len;
        // Everything after the sync watermark may be a torn append with valid
        // frames (and index entries) after a hole, so the scan starts at or before
        // it: the end is then where readers stop.
        let trusted = match synced::load(storage, dir)? {
            Some(w) if w.base == base => Some(w.pos),
            Some(_) => Some(0),
            None => None,
        };
        let start = match index::load(storage, &index_path(dir, base), seg_len)? {
            Loaded::Entries(entries) => entries.iter().rev().find(|e| trusted.is_none_or(|t| e.pos <= t)).copied(),
            Loaded::Missing | Loaded::Damaged(_) => None,
        };
        let origin = IndexEntry { rel: 0, pos: 0 };
        let mut summary = segment::scan_segment(storage, path.clone(), start.unwrap_or(origin), None)?;
        if let (Some(entry), Some(_)) = (start, &summary.damage)
            && summary.end_rel == u64::from(entry.rel)
        {
            // The entry points at no valid frame (an index newer than its data):
            // judge the damage from the segment start instead.
            summary = segment::scan_segment(storage, path.clone(), origin, None)?;
        }
        match &summary.damage {
            Some(damage) if check_tail(storage, damage, base)? == Verdict::Changed => continue,
            _ => return Ok(base + summary.end_rel),
        }
    }
}

/// The end offset of the partition in `dir` (0 when it has no segment yet).
pub(crate) fn end_offset(storage: &dyn Storage, dir: &Path) -> Result<Offset> {
    match list_segments(storage, dir)?.last() {
        Some(&base) => last_segment_end(storage, dir, base),
        None => Ok(0),
    }
}

/// Start, end, segment count and size of the partition in `dir`.
pub(crate) fn info(storage: &dyn Storage, dir: &Path, partition: PartitionId) -> Result<PartitionInfo> {
    let bases = list_segments(storage, dir)?;
    let mut bytes = 0;
    for &base in &bases {
        let path = segment_path(dir, base);
        bytes += storage.metadata(&path).ctx("stat", &path)?.len;
    }
    let end = match bases.last() {
        Some(&base) => last_segment_end(storage, dir, base)?,
        None => 0,
    };
    Ok(PartitionInfo { partition, start: bases.first().copied().unwrap_or(0), end, segments: bases.len(), bytes })
}
