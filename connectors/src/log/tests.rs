//! Behaviour of writers and readers together: roundtrips across segment rolls,
//! seeking, index repair, torn tails versus corruption, the writer lock, bounded
//! reads, and a randomized comparison with an in-memory log.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use weir_core::error::{Error, IoContext, Result};
use weir_core::record::{Chunk, Offset, OffsetKind};
use weir_core::source::{PartitionReader, ReadStatus};
use weir_core::storage::LocalFs;

use super::segment::{index_path, list_segments, segment_path};
use super::*;

/// Small segments and a dense-ish index, so a few records exercise rolls and seeks.
fn small(segment_bytes: u64) -> LogConfig {
    LogConfig { segment_bytes, index_interval_bytes: 40, fsync: FsyncPolicy::Never }
}

fn record(i: usize) -> Vec<u8> {
    format!("record-{i}-{}", "x".repeat(i % 17)).into_bytes()
}

fn write_records(dir: &Path, config: LogConfig, n: usize, batch: usize) -> Result<Vec<Vec<u8>>> {
    let all: Vec<Vec<u8>> = (0..n).map(record).collect();
    let mut writer = PartitionWriter::open(dir, config)?;
    for (i, chunk) in all.chunks(batch).enumerate() {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        assert_eq!(writer.append(&refs)?, (i * batch) as Offset);
    }
    Ok(all)
}

/// Reads until the reader returns something other than `Data`.
fn drain(reader: &mut LogReader, max_bytes: usize) -> Result<(Vec<Vec<u8>>, ReadStatus)> {
    let mut out = Vec::new();
    loop {
        let first = reader.next_offset();
        let mut chunk = Chunk::default();
        let status = reader.read(max_bytes, &mut chunk)?;
        if status != ReadStatus::Data {
            assert!(chunk.is_empty());
            return Ok((out, status));
        }
        assert_eq!((chunk.kind, chunk.sep, chunk.first), (OffsetKind::Records, 0, first));
        assert_eq!(chunk.next, first + chunk.len() as Offset);
        out.extend(chunk.records().map(|(_, r)| r.to_vec()));
    }
}

fn corrupt_at(e: &Error) -> Option<(PathBuf, u64)> {
    match e {
        Error::Corrupt { path, offset, .. } => Some((path.clone(), *offset)),
        _ => None,
    }
}

fn tempdir() -> Result<tempfile::TempDir> {
    tempfile::tempdir().ctx("tempdir", std::env::temp_dir())
}

fn flip_byte(path: &Path, at: u64) -> Result<()> {
    let mut bytes = fs::read(path).ctx("read", path)?;
    bytes[at as usize] ^= 0x40;
    fs::write(path, bytes).ctx("write", path)
}

fn file_len(path: &Path) -> Result<u64> {
    Ok(fs::metadata(path).ctx("stat", path)?.len())
}

/// Collects the messages of `warn!` events emitted while `f` runs on this thread.
fn capture_warnings<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    use std::cell::RefCell;

    use tracing::field::{Field, Visit};
    use tracing::{Event, Level, Metadata, span, subscriber::Interest};

    thread_local! {
        static CAPTURED: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
    }
    // One process-wide subscriber, installed once, that keeps the warnings of
    // threads that are capturing: a per-thread default (`with_default`) races
    // with other test threads over tracing's cached callsite interest and
    // missed events now and then.
    struct Capture;
    struct Message(String);
    impl Visit for Message {
        fn record_debug(&mut self, _: &Field, value: &dyn std::fmt::Debug) {
            let _ = write!(self.0, "{value:?}");
        }
    }
    impl tracing::Subscriber for Capture {
        fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
            Interest::sometimes()
        }
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            *metadata.level() <= Level::WARN
        }
        fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
            span::Id::from_u64(1)
        }
        fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
        fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut message = Message(String::new());
            event.record(&mut message);
            CAPTURED.with(|c| {
                if let Some(all) = c.borrow_mut().as_mut() {
                    all.push(message.0);
                }
            });
        }
        fn enter(&self, _: &span::Id) {}
        fn exit(&self, _: &span::Id) {}
    }

    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let _ = tracing::subscriber::set_global_default(Capture);
    });
    CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let result = f();
    let messages = CAPTURED.with(|c| c.borrow_mut().take()).unwrap_or_default();
    (result, messages)
}

#[test]
fn roundtrip_across_segment_rolls() -> Result<()> {
    let dir = tempdir()?;
    let all = write_records(dir.path(), small(200), 100, 7)?;
    let segments = list_segments(&LocalFs, dir.path())?;
    assert!(segments.len() > 5, "{segments:?}");
    for &base in &segments {
        assert!(file_len(&segment_path(dir.path(), base))? <= 200);
    }
    for max_bytes in [1, 100, 1 << 20] {
        let mut reader = LogReader::open(dir.path(), 0, 0, None)?;
        assert_eq!(drain(&mut reader, max_bytes)?, (all.clone(), ReadStatus::Idle));
    }
    // A reopened writer continues where the last one stopped.
    let mut writer = PartitionWriter::open(dir.path(), small(200))?;
    assert_eq!(writer.end_offset(), 100);
    assert_eq!(writer.tail_repair(), None);
    assert_eq!(writer.append(&[b"more"])?, 100);
    Ok(())
}

#[test]
fn one_batch_is_one_chunk_and_a_big_record_gets_its_own_segment() -> Result<()> {
    let dir = tempdir()?;
    let mut writer = PartitionWriter::open(dir.path(), small(100))?;
    let big = vec![b'b'; 500];
    assert_eq!(writer.append(&[b"a", &big, b"c", b""])?, 0);
    assert_eq!(list_segments(&LocalFs, dir.path())?, vec![0, 1, 2]);
    let mut chunk = Chunk::default();
    let mut reader = LogReader::open(dir.path(), 3, 0, None)?;
    assert_eq!(reader.read(1 << 20, &mut chunk)?, ReadStatus::Data);
    let got: Vec<_> = chunk.records().collect();
    assert_eq!(got, vec![(0, &b"a"[..]), (1, &big[..]), (2, &b"c"[..]), (3, &b""[..])]);
    assert_eq!((chunk.partition, chunk.next), (3, 4));
    Ok(())
}

#[test]
fn seek_uses_the_index() -> Result<()> {
    let dir = tempdir()?;
    let all = write_records(dir.path(), small(1000), 200, 13)?;
    let segments = list_segments(&LocalFs, dir.path())?;
    for from in [0u64, 1, 17, 99, 150, 199, 200] {
        let mut reader = LogReader::open(dir.path(), 0, from, None)?;
        assert_eq!(reader.next_offset(), from);
        let (got, status) = drain(&mut reader, 300)?;
        assert_eq!((&got[..], status), (&all[from as usize..], ReadStatus::Idle));
    }
    // Seeking deep into a segment starts from an index entry, not the segment start.
    let base = segments[1];
    let reader = LogReader::open(dir.path(), 0, base, None)?;
    let entry = reader.seek_entry(base, 15)?;
    assert!(entry.pos > 0 && entry.rel <= 15 && entry.rel > 0, "{entry:?}");
    Ok(())
}

#[test]
fn missing_or_damaged_index_is_rebuilt() -> Result<()> {
    let dir = tempdir()?;
    let all = write_records(dir.path(), small(1000), 120, 10)?;
    let segments = list_segments(&LocalFs, dir.path())?;
    let originals: Vec<Vec<u8>> =
        segments.iter().map(|&b| fs::read(index_path(dir.path(), b)).ctx("read", dir.path())).collect::<Result<_>>()?;
    assert!(originals.iter().any(|ix| !ix.is_empty()));
    for &b in &segments {
        fs::remove_file(index_path(dir.path(), b)).ctx("remove", dir.path())?;
    }
    // Readers scan instead (and write nothing).
    let mut reader = LogReader::open(dir.path(), 0, 77, None)?;
    assert_eq!(drain(&mut reader, 1 << 20)?.0, &all[77..]);
    assert!(!index_path(dir.path(), segments[0]).exists());
    // A damaged index is ignored with a warning.
    let damaged = index_path(dir.path(), segments[0]);
    let mut bytes = originals[0].clone();
    bytes[5] ^= 1;
    fs::write(&damaged, &bytes).ctx("write", &damaged)?;
    let (reader, warnings) = capture_warnings(|| LogReader::open(dir.path(), 0, 30, None));
    assert_eq!(drain(&mut reader?, 1 << 20)?.0, &all[30..]);
    assert!(warnings.iter().any(|w| w.contains("ignoring the index")), "{warnings:?}");
    fs::remove_file(&damaged).ctx("remove", &damaged)?;
    // The writer rebuilds them.
    drop(PartitionWriter::open(dir.path(), small(1000))?);
    for (&b, original) in segments.iter().zip(&originals) {
        let path = index_path(dir.path(), b);
        assert_eq!(&fs::read(&path).ctx("read", &path)?, original, "{}", path.display());
    }
    Ok(())
}

/// Checks the writer cuts a damaged tail starting at byte `at` of the last
/// segment, which holds records up to `valid` (exclusive).
fn assert_tail_repaired(dir: &Path, all: &[Vec<u8>], valid: usize, at: u64) -> Result<()> {
    let last = segment_path(dir, *list_segments(&LocalFs, dir)?.last().unwrap_or(&0));
    let len_before = file_len(&last)?;
    // Readers stop before the tail and change nothing.
    let mut reader = LogReader::open(dir, 0, 0, None)?;
    assert_eq!(drain(&mut reader, 64)?, (all[..valid].to_vec(), ReadStatus::Idle));
    assert_eq!(drain(&mut reader, 64)?, (vec![], ReadStatus::Idle));
    assert_eq!(super::partition::end_offset(&LocalFs, dir)?, valid as Offset);
    assert_eq!(file_len(&last)?, len_before);

    let (writer, warnings) = capture_warnings(|| PartitionWriter::open(dir, small(100_000)));
    let mut writer = writer?;
    let repair = writer.tail_repair().cloned().ok_or(Error::Pipeline("no repair".into()))?;
    assert_eq!((repair.file.as_path(), repair.offset), (last.as_path(), at));
    assert_eq!(repair.dropped_bytes, len_before - at);
    let name = last.display().to_string();
    assert!(warnings.iter().any(|w| w.contains(&name) && w.contains(&format!("byte {at}"))), "{warnings:?}");
    assert_eq!(file_len(&last)?, at);
    assert_eq!(writer.end_offset(), valid as Offset);
    assert_eq!(writer.append(&[b"after"])?, valid as Offset);
    // The waiting reader sees the rewritten region.
    assert_eq!(drain(&mut reader, 64)?.0, vec![b"after".to_vec()]);
    Ok(())
}

#[test]
fn torn_tail_cut_mid_frame_is_truncated_by_the_writer_only() -> Result<()> {
    let dir = tempdir()?;
    let all = write_records(dir.path(), small(300), 40, 4)?;
    let last = segment_path(dir.path(), *list_segments(&LocalFs, dir.path())?.last().unwrap_or(&0));
    let len = file_len(&last)?;
    let last_frame = (8 + all[39].len()) as u64;
    let f = OpenOptions::new().write(true).open(&last).ctx("open", &last)?;
    f.set_len(len - 3).ctx("truncate", &last)?;
    drop(f);
    assert_tail_repaired(dir.path(), &all, 39, len - last_frame)
}

#[test]
fn torn_tail_with_a_flipped_byte_in_the_last_record_is_truncated() -> Result<()> {
    let dir = tempdir()?;
    let all = write_records(dir.path(), small(300), 40, 4)?;
    let last = segment_path(dir.path(), *list_segments(&LocalFs, dir.path())?.last().unwrap_or(&0));
    let len = file_len(&last)?;
    let last_frame = (8 + all[39].len()) as u64;
    flip_byte(&last, len - 2)?;
    assert_tail_repaired(dir.path(), &all, 39, len - last_frame)
}

#[test]
fn zeroed_tail_is_truncated() -> Result<()> {
    let dir = tempdir()?;
    let all = write_records(dir.path(), small(300), 10, 10)?;
    let last = segment_path(dir.path(), *list_segments(&LocalFs, dir.path())?.last().unwrap_or(&0));
    let len = file_len(&last)?;
    let f = OpenOptions::new().write(true).open(&last).ctx("open", &last)?;
    f.set_len(len + 4096).ctx("extend", &last)?;
    drop(f);
    assert_tail_repaired(dir.path(), &all, 10, len)
}

fn synced(fsync: FsyncPolicy, segment_bytes: u64) -> LogConfig {
    LogConfig { fsync, ..small(segment_bytes) }
}

/// Byte position of record `i` in a single-segment partition of `all`.
fn position(all: &[Vec<u8>], i: usize) -> u64 {
    all[..i].iter().map(|r| 8 + r.len() as u64).sum()
}

fn overwrite(path: &Path, at: u64, bytes: &[u8]) -> Result<()> {
    let mut content = fs::read(path).ctx("read", path)?;
    content[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
    fs::write(path, content).ctx("write", path)
}

#[test]
fn corruption_before_the_tail_is_an_error_naming_file_and_offset() -> Result<()> {
    let dir = tempdir()?;
    // Fsynced: every record is before the sync watermark.
    let all = write_records(dir.path(), synced(FsyncPolicy::Always, 100_000), 30, 30)?;
    let seg = segment_path(dir.path(), 0);
    let at = position(&all, 10);
    flip_byte(&seg, at + 9)?;
    let expected = Some((seg.clone(), at));

    let e = PartitionWriter::open(dir.path(), small(100_000)).unwrap_err();
    assert_eq!(corrupt_at(&e), expected, "{e}");
    assert!(e.to_string().contains(&seg.display().to_string()), "{e}");
    assert!(e.to_string().contains("synced"), "{e}");
    // The end offset comes from the last index entry on (damage before it is
    // found by whoever reads there).
    assert_eq!(super::partition::end_offset(&LocalFs, dir.path())?, 30);
    let mut reader = LogReader::open(dir.path(), 0, 0, None)?;
    let mut chunk = Chunk::default();
    assert_eq!(reader.read(1 << 20, &mut chunk)?, ReadStatus::Data);
    assert_eq!(chunk.len(), 10);
    let e = reader.read(1 << 20, &mut Chunk::default()).unwrap_err();
    assert_eq!(corrupt_at(&e), expected, "{e}");
    // Nothing was truncated.
    assert_eq!(file_len(&seg)?, position(&all, 30));
    Ok(())
}

/// Appends `n` records without fsyncing them (the state a crash mid-append can
/// leave), after `synced_n` fsynced ones, in one segment. Returns all records
/// and the byte where the unsynced append starts.
fn synced_then_unsynced(dir: &Path, synced_n: usize, n: usize) -> Result<(Vec<Vec<u8>>, u64)> {
    let all: Vec<Vec<u8>> = (0..synced_n + n).map(record).collect();
    let refs: Vec<&[u8]> = all.iter().map(Vec::as_slice).collect();
    PartitionWriter::open(dir, synced(FsyncPolicy::Always, 100_000))?.append(&refs[..synced_n])?;
    PartitionWriter::open(dir, small(100_000))?.append(&refs[synced_n..])?;
    let at = position(&all, synced_n);
    Ok((all, at))
}

#[test]
fn a_hole_followed_by_valid_frames_after_the_watermark_is_a_torn_tail() -> Result<()> {
    for filler in [0u8, 0xab] {
        let dir = tempdir()?;
        let (all, at) = synced_then_unsynced(dir.path(), 12, 10)?;
        // The first two frames of the unsynced append never reached the disk;
        // its later pages (valid frames) did.
        let hole = position(&all, 14) - at;
        overwrite(&segment_path(dir.path(), 0), at, &vec![filler; hole as usize])?;
        assert_tail_repaired(dir.path(), &all, 12, at)?;
    }
    Ok(())
}

#[test]
fn damage_in_the_last_segment_after_a_roll_without_fsync_is_a_torn_tail() -> Result<()> {
    let dir = tempdir()?;
    let all: Vec<Vec<u8>> = (0..40).map(record).collect();
    let refs: Vec<&[u8]> = all.iter().map(Vec::as_slice).collect();
    PartitionWriter::open(dir.path(), synced(FsyncPolicy::Always, 300))?.append(&refs[..10])?;
    // Unsynced appends roll into new segments: the watermark stays in an earlier one.
    PartitionWriter::open(dir.path(), small(300))?.append(&refs[10..])?;
    let segments = list_segments(&LocalFs, dir.path())?;
    let last = *segments.last().unwrap_or(&0);
    assert!(segments.len() > 2 && last > 10, "{segments:?}");
    let path = segment_path(dir.path(), last);
    overwrite(&path, 0, &[0u8; 12])?;
    assert_tail_repaired(dir.path(), &all, last as usize, 0)
}

#[test]
fn without_a_watermark_valid_frames_after_damage_mean_corruption() -> Result<()> {
    let dir = tempdir()?;
    let (all, at) = synced_then_unsynced(dir.path(), 12, 10)?;
    fs::remove_file(dir.path().join("synced.pos")).ctx("remove", dir.path())?;
    let seg = segment_path(dir.path(), 0);
    overwrite(&seg, at, &[0u8; 16])?;
    let e = PartitionWriter::open(dir.path(), small(100_000)).unwrap_err();
    assert_eq!(corrupt_at(&e), Some((seg.clone(), at)), "{e}");
    assert!(e.to_string().contains("no sync watermark"), "{e}");
    let mut reader = LogReader::open(dir.path(), 0, 0, None)?;
    let e = drain(&mut reader, 1 << 20).unwrap_err();
    assert_eq!(corrupt_at(&e), Some((seg.clone(), at)), "{e}");
    // A damaged watermark counts as none.
    fs::write(dir.path().join("synced.pos"), [1u8; 24]).ctx("write", dir.path())?;
    assert!(PartitionWriter::open(dir.path(), small(100_000)).is_err());
    // Without valid frames after the damage it is a tail, watermark or not.
    fs::remove_file(dir.path().join("synced.pos")).ctx("remove", dir.path())?;
    let f = OpenOptions::new().write(true).open(&seg).ctx("open", &seg)?;
    f.set_len(at + 20).ctx("truncate", &seg)?;
    drop(f);
    assert_tail_repaired(dir.path(), &all, 12, at)
}

#[test]
fn a_watermark_past_the_last_segment_is_corruption() -> Result<()> {
    let dir = tempdir()?;
    write_records(dir.path(), synced(FsyncPolicy::Always, 200), 30, 5)?;
    let segments = list_segments(&LocalFs, dir.path())?;
    let last = *segments.last().unwrap_or(&0);
    fs::remove_file(segment_path(dir.path(), last)).ctx("remove", dir.path())?;
    // The now-last segment ends in a cut frame so that its damage is judged.
    let prev = segment_path(dir.path(), segments[segments.len() - 2]);
    let len = file_len(&prev)?;
    OpenOptions::new().write(true).open(&prev).ctx("open", &prev)?.set_len(len - 1).ctx("truncate", &prev)?;
    let e = PartitionWriter::open(dir.path(), small(200)).unwrap_err();
    assert!(e.to_string().contains("synced.pos") && e.to_string().contains("missing"), "{e}");
    Ok(())
}

#[test]
fn the_watermark_follows_fsyncs() -> Result<()> {
    let dir = tempdir()?;
    let mut writer = PartitionWriter::open(dir.path(), synced(FsyncPolicy::Always, 300))?;
    assert_eq!(super::synced::load(&LocalFs, dir.path())?, Some(super::synced::Synced { base: 0, pos: 0 }));
    writer.append(&[b"one", b"two"])?;
    assert_eq!(super::synced::load(&LocalFs, dir.path())?, Some(super::synced::Synced { base: 0, pos: 22 }));
    let mut lazy = {
        drop(writer);
        PartitionWriter::open(dir.path(), small(300))?
    };
    lazy.append(&[b"three"])?;
    assert_eq!(super::synced::load(&LocalFs, dir.path())?.map(|w| w.pos), Some(22));
    lazy.sync()?;
    assert_eq!(super::synced::load(&LocalFs, dir.path())?.map(|w| w.pos), Some(35));
    Ok(())
}

#[test]
fn a_failed_fsync_poisons_the_writer() -> Result<()> {
    use weir_core::storage::{Crash, Errno, Fault, FaultFs, Inject, OpKind, Storage};
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Never] {
        for errno in [Errno::Eio, Errno::Enospc] {
            let fs = FaultFs::new();
            let dir = Path::new("/log/p");
            let storage: Arc<dyn Storage> = Arc::new(fs.clone());
            let mut writer = PartitionWriter::open_in(storage.clone(), dir, synced(fsync, 100_000))?;
            writer.append(&[b"durable"])?;
            writer.sync()?;
            let seg = segment_path(dir, 0);
            fs.inject(Inject::op(OpKind::Sync, Fault::Error(errno)).under(&seg).nth(1));
            let first = match fsync {
                FsyncPolicy::Always => writer.append(&[b"lost?"]).unwrap_err(),
                _ => {
                    writer.append(&[b"lost?"])?;
                    writer.sync().unwrap_err()
                }
            };
            let code = if errno == Errno::Eio { "os error 5" } else { "os error 28" };
            assert!(first.to_string().contains(code) && first.to_string().contains("fsync"), "{first}");
            let len = fs.metadata(&seg).map_err(|e| Error::io("stat", &seg, e))?.len;
            let calls = fs.calls();
            // No later call fsyncs again or writes: they all fail, naming the first failure.
            for e in [writer.sync().unwrap_err(), writer.append(&[b"more"]).unwrap_err(), writer.sync().unwrap_err()] {
                let message = e.to_string();
                assert!(message.contains("poisoned") && message.contains(code), "{message}");
            }
            drop(writer);
            assert_eq!(fs.calls(), calls, "a poisoned writer touched the storage");
            assert_eq!(fs.metadata(&seg).map_err(|e| Error::io("stat", &seg, e))?.len, len);
            assert_eq!(super::synced::load(&fs, dir)?.map(|w| w.pos), Some(15));
            // Reopening re-validates what is on disk: after a reboot only the durable
            // record is left, after a process kill the unsynced one may be there too.
            for (mode, end) in [(Crash::DropUnsynced, 1), (Crash::KeepAll, 2)] {
                let image: Arc<dyn Storage> = Arc::new(fs.crash(mode));
                let mut writer = PartitionWriter::open_in(image.clone(), dir, synced(fsync, 100_000))?;
                assert_eq!(writer.append(&[b"again"])?, end, "{mode:?}");
                drop(writer);
                let mut reader = LogReader::open_in(image, dir, 0, 0, None, 1 << 20)?;
                let got = drain(&mut reader, 1 << 20)?.0;
                let expected: &[&[u8]] =
                    if end == 1 { &[b"durable", b"again"] } else { &[b"durable", b"lost?", b"again"] };
                assert_eq!(got, expected, "{mode:?}");
            }
        }
    }
    Ok(())
}

#[test]
fn oversize_records_are_streamed_and_damage_in_them_is_found() -> Result<()> {
    let dir = tempdir()?;
    let big = vec![b'z'; 2_500_000];
    PartitionWriter::open(dir.path(), synced(FsyncPolicy::Always, 100 << 20))?.append(&[b"a", &big, b"c"])?;
    let mut reader = LogReader::open_limited(dir.path(), 0, 0, None, 4096)?;
    let mut chunk = Chunk::default();
    assert_eq!(reader.read(1 << 30, &mut chunk)?, ReadStatus::Data);
    assert_eq!(chunk.truncated, vec![(1, big.len() as u64)]);
    assert_eq!(chunk.records().map(|(_, r)| r.len()).collect::<Vec<_>>(), vec![1, 1024, 1]);
    // A flipped byte deep inside the (synced) big record is corruption at its frame.
    let seg = segment_path(dir.path(), 0);
    flip_byte(&seg, 9 + 8 + 2_000_000)?;
    let mut reader = LogReader::open_limited(dir.path(), 0, 0, None, 4096)?;
    let e = drain(&mut reader, 1 << 30).unwrap_err();
    assert_eq!(corrupt_at(&e), Some((seg, 9)), "{e}");
    Ok(())
}

#[test]
fn damage_in_a_sealed_segment_is_an_error_even_at_its_end() -> Result<()> {
    let dir = tempdir()?;
    write_records(dir.path(), small(200), 30, 30)?;
    let segments = list_segments(&LocalFs, dir.path())?;
    let first = segment_path(dir.path(), segments[0]);
    let len = file_len(&first)?;
    flip_byte(&first, len - 1)?;
    let mut reader = LogReader::open(dir.path(), 0, 0, None)?;
    let e = drain(&mut reader, 1 << 20).unwrap_err();
    let (path, offset) = corrupt_at(&e).ok_or(Error::Pipeline(e.to_string()))?;
    assert_eq!(path, first);
    assert!(offset < len);
    assert!(e.to_string().contains("not the last one"), "{e}");
    Ok(())
}

#[test]
fn lock_prevents_a_second_writer() -> Result<()> {
    let dir = tempdir()?;
    let writer = PartitionWriter::open(dir.path(), LogConfig::default())?;
    let e = PartitionWriter::open(dir.path(), LogConfig::default()).unwrap_err();
    assert!(matches!(&e, Error::Locked { path } if path.ends_with("writer.lock")), "{e}");
    drop(writer);
    PartitionWriter::open(dir.path(), LogConfig::default())?;
    Ok(())
}

#[test]
fn reader_honours_until() -> Result<()> {
    let dir = tempdir()?;
    let all = write_records(dir.path(), small(200), 50, 5)?;
    let mut reader = LogReader::open(dir.path(), 0, 5, Some(33))?;
    let mut got = Vec::new();
    loop {
        let mut chunk = Chunk::default();
        match reader.read(50, &mut chunk)? {
            ReadStatus::Data => got.extend(chunk.records().map(|(o, r)| (o, r.to_vec()))),
            ReadStatus::End => break,
            ReadStatus::Idle => panic!("idle before until"),
        }
        assert!(chunk.next <= 33);
    }
    let expected: Vec<_> = (5..33).map(|i| (i as Offset, all[i].clone())).collect();
    assert_eq!(got, expected);
    assert_eq!(reader.read(50, &mut Chunk::default())?, ReadStatus::End);
    let mut empty = LogReader::open(dir.path(), 0, 7, Some(7))?;
    assert_eq!(empty.read(50, &mut Chunk::default())?, ReadStatus::End);
    // A bound past the end waits for the records.
    let mut ahead = LogReader::open(dir.path(), 0, 48, Some(52))?;
    assert_eq!(drain(&mut ahead, 1 << 20)?.1, ReadStatus::Idle);
    Ok(())
}

#[test]
fn reader_follows_a_live_writer_across_rolls() -> Result<()> {
    let dir = tempdir()?;
    let mut reader = LogReader::open(dir.path(), 0, 0, None)?;
    assert_eq!(drain(&mut reader, 100)?, (vec![], ReadStatus::Idle));
    let mut writer = PartitionWriter::open(dir.path(), small(120))?;
    let mut expected = Vec::new();
    for round in 0..10 {
        let batch: Vec<Vec<u8>> = (0..round).map(|i| record(round * 10 + i)).collect();
        let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        writer.append(&refs)?;
        expected.extend(batch);
        assert_eq!(drain(&mut reader, 100)?.1, ReadStatus::Idle);
    }
    let mut fresh = LogReader::open(dir.path(), 0, 0, None)?;
    assert_eq!(drain(&mut fresh, 100)?.0, expected);
    assert!(list_segments(&LocalFs, dir.path())?.len() > 3);
    Ok(())
}

#[test]
fn reading_past_the_end_is_an_error() -> Result<()> {
    let dir = tempdir()?;
    write_records(dir.path(), small(200), 20, 20)?;
    let e = LogReader::open(dir.path(), 0, 21, None).unwrap_err();
    assert!(e.to_string().contains("end offset is 20"), "{e}");
    let mut at_end = LogReader::open(dir.path(), 0, 20, None)?;
    assert_eq!(at_end.read(10, &mut Chunk::default())?, ReadStatus::Idle);
    let empty = tempdir()?;
    assert!(LogReader::open(empty.path(), 0, 1, None).is_err());
    Ok(())
}

#[test]
fn every_fsync_policy_stores_the_records() -> Result<()> {
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Interval(Duration::from_millis(1)), FsyncPolicy::Never] {
        let dir = tempdir()?;
        let config = LogConfig { fsync, ..small(150) };
        let all = write_records(dir.path(), config, 30, 4)?;
        let mut reader = LogReader::open(dir.path(), 0, 0, None)?;
        assert_eq!(drain(&mut reader, 1 << 20)?.0, all);
    }
    Ok(())
}

#[test]
fn oversized_record_rejects_the_batch() -> Result<()> {
    let dir = tempdir()?;
    let mut writer = PartitionWriter::open(dir.path(), LogConfig::default())?;
    let big = vec![0u8; MAX_RECORD_BYTES + 1];
    let e = writer.append(&[b"ok", &big]).unwrap_err();
    assert!(e.to_string().contains("record 1"), "{e}");
    assert_eq!(writer.append(&[b"ok"])?, 0);
    Ok(())
}

/// One step of the randomized test.
#[derive(Clone, Debug)]
enum Op {
    Append(Vec<Vec<u8>>),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let record = proptest::collection::vec(any::<u8>(), 0..120);
    prop_oneof![
        8 => proptest::collection::vec(record, 0..12).prop_map(Op::Append),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn matches_an_in_memory_log(
        ops in proptest::collection::vec(op(), 1..25),
        segment_bytes in 16u64..600,
        interval in 0u64..300,
        from_frac in 0.0f64..=1.0,
        until_frac in proptest::option::of(0.0f64..=1.0),
        max_bytes in 1usize..400,
    ) {
        let run = || -> Result<()> {
            let dir = tempdir()?;
            let config = LogConfig { segment_bytes, index_interval_bytes: interval, fsync: FsyncPolicy::Never };
            let mut reference: Vec<Vec<u8>> = Vec::new();
            let mut writer = PartitionWriter::open(dir.path(), config)?;
            for op in &ops {
                match op {
                    Op::Append(batch) => {
                        let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
                        assert_eq!(writer.append(&refs)?, reference.len() as Offset);
                        reference.extend(batch.iter().cloned());
                    }
                    Op::Reopen => {
                        drop(writer);
                        writer = PartitionWriter::open(dir.path(), config)?;
                        assert_eq!(writer.tail_repair(), None);
                    }
                }
            }
            let n = reference.len();
            assert_eq!(writer.end_offset(), n as Offset);
            assert_eq!(super::partition::end_offset(&LocalFs, dir.path())?, n as Offset);
            let from = (from_frac * n as f64) as usize;
            let until = until_frac.map(|f| from + (f * (n - from) as f64) as usize);
            let mut reader = LogReader::open(dir.path(), 7, from as Offset, until.map(|u| u as Offset))?;
            let mut got = Vec::new();
            let status = loop {
                let mut chunk = Chunk::default();
                let status = reader.read(max_bytes, &mut chunk)?;
                if status != ReadStatus::Data {
                    break status;
                }
                assert_eq!((chunk.partition, chunk.first), (7, (from + got.len()) as Offset));
                got.extend(chunk.records().map(|(_, r)| r.to_vec()));
            };
            let end = until.unwrap_or(n);
            assert_eq!(&got[..], &reference[from..end]);
            assert_eq!(status, if until.is_some() { ReadStatus::End } else { ReadStatus::Idle });
            Ok(())
        };
        let result = run();
        prop_assert!(result.is_ok(), "{:?}", result.err());
    }
}

#[test]
fn a_gap_between_segments_fails_a_bounded_read_instead_of_stalling() -> Result<()> {
    let dir = tempdir()?;
    write_records(dir.path(), synced(FsyncPolicy::Always, 200), 40, 4)?;
    let segments = list_segments(&LocalFs, dir.path())?;
    assert!(segments.len() > 3, "{segments:?}");
    fs::remove_file(segment_path(dir.path(), segments[1])).ctx("remove", dir.path())?;
    let mut reader = LogReader::open(dir.path(), 0, 0, Some(40))?;
    let e = drain(&mut reader, 1 << 20).unwrap_err();
    assert!(e.to_string().contains(&format!("the next segment starts at {}", segments[2])), "{e}");
    Ok(())
}

#[test]
fn an_empty_segment_before_a_later_one_fails_a_bounded_read() -> Result<()> {
    let dir = tempdir()?;
    write_records(dir.path(), synced(FsyncPolicy::Always, 200), 20, 4)?;
    let segments = list_segments(&LocalFs, dir.path())?;
    let last = *segments.last().unwrap_or(&0);
    // An empty segment where the last one was, the last one moved further.
    fs::rename(segment_path(dir.path(), last), segment_path(dir.path(), last + 100)).ctx("rename", dir.path())?;
    fs::write(segment_path(dir.path(), last), b"").ctx("write", dir.path())?;
    let mut reader = LogReader::open(dir.path(), 0, 0, Some(last + 101))?;
    let e = drain(&mut reader, 1 << 20).unwrap_err();
    assert!(e.to_string().contains("records are missing"), "{e}");
    Ok(())
}
