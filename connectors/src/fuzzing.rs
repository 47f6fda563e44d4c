//! Entry point of the `log_segment` fuzz target (and of the test that replays
//! its corpus): lay untrusted bytes out as a partition directory (one or two
//! segments, maybe a sync watermark and an index), then read it, compute its end
//! offset and open its writer. Nothing may panic, and no read may allocate more
//! than a few buffers (records over 64 bytes are streamed). Not part of the API.

use std::path::Path;

use weir_core::record::Chunk;
use weir_core::source::{PartitionReader, ReadStatus};

use crate::log::{FsyncPolicy, LogConfig, LogReader, PartitionWriter};

/// Lays `data` out in the (empty or reused) directory `dir` and exercises readers
/// and the writer on it.
pub fn log_segment(dir: &Path, data: &[u8]) {
    let _ = std::fs::remove_dir_all(dir);
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let Some((&flags, rest)) = data.split_first() else { return };
    let (second_base, split) = (1 + u64::from(flags >> 4), rest.first().map_or(0, |&b| b as usize * 4));
    let seg = |base: u64| dir.join(format!("{base:020}.log"));
    let write = |path: std::path::PathBuf, bytes: &[u8]| std::fs::write(path, bytes).is_ok();
    let ok = if flags & 1 == 1 && split <= rest.len() {
        write(seg(0), &rest[..split]) && write(seg(second_base), &rest[split..])
    } else {
        write(seg(0), rest)
    };
    if !ok {
        return;
    }
    let last = if flags & 1 == 1 && split <= rest.len() { second_base } else { 0 };
    if flags & 2 == 2 {
        // A watermark at a position taken from the data.
        let pos = rest.get(1..3).map_or(0, |b| u64::from(u16::from_le_bytes([b[0], b[1]])));
        let mut w = b"WSYN".to_vec();
        w.extend_from_slice(&last.to_le_bytes());
        w.extend_from_slice(&pos.to_le_bytes());
        let crc = crc32fast::hash(&w);
        w.extend_from_slice(&crc.to_le_bytes());
        let _ = std::fs::write(dir.join("synced.pos"), w);
    }
    if flags & 4 == 4 {
        // The data's tail as an index (mostly garbage, sometimes valid entries).
        let n = rest.len().min(64) / 16 * 16;
        let _ = std::fs::write(dir.join(format!("{last:020}.index")), &rest[rest.len() - n..]);
    }
    read_all(dir, 0, None);
    read_all(dir, 1, Some(4));
    let _ = crate::log::partition_end_offset(&weir_core::storage::LocalFs, dir);
    let config = LogConfig { segment_bytes: 256, index_interval_bytes: 32, fsync: FsyncPolicy::Never };
    if let Ok(mut writer) = PartitionWriter::open(dir, config) {
        let end = writer.end_offset();
        let appended = writer.append(&[b"after", &[7u8; 300]]);
        drop(writer);
        if appended.is_ok() {
            // After the writer's repair a bounded read to its end reads everything
            // or fails (damage before the tail): it never stalls.
            let n = read_all(dir, 0, Some(end + 2));
            assert!(n.is_none_or(|n| n == end + 2), "{n:?} records of {}", end + 2);
        }
    }
}

/// Reads the partition from `from`; the number of records read, `None` on an error.
fn read_all(dir: &Path, from: u64, until: Option<u64>) -> Option<u64> {
    let reader = LogReader::open_limited(dir, 0, from, until, 64).ok()?;
    drain(reader)
}

fn drain(mut reader: LogReader) -> Option<u64> {
    let mut n = 0;
    let mut chunk = Chunk::default();
    loop {
        chunk.clear();
        match reader.read(1 << 16, &mut chunk) {
            Ok(ReadStatus::Data) => {
                assert!(chunk.data.len() <= (1 << 16) + 1024, "chunk of {} bytes", chunk.data.len());
                n += chunk.len() as u64;
            }
            Ok(_) => return Some(n),
            Err(_) => return None,
        }
    }
}
