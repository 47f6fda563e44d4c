//! Crash-point enumeration of the log on a fault-injecting storage
//! ([`FaultFs`]): a writer appends records in several synced batches (small
//! ones, a multi-page one, a record larger than a page, segment rolls, an
//! unsynced multi-page batch at the end); the run is repeated with the storage
//! stopping after each of its calls, and the image a restart sees is checked
//! after a power loss (unsynced data dropped), a power loss in the middle of
//! write-back (unsynced pages torn: holes before pages that reached the disk)
//! and a process kill (everything kept). The recovering writer is crashed
//! after each of its own calls too. Also: injected EIO and ENOSPC on the
//! log's fsyncs and writes, damage before the sync watermark, and the index a
//! recovering writer rewrites.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use weir_core::error::{Error, Result};
use weir_core::record::{Chunk, Offset};
use weir_core::source::{PartitionReader, ReadStatus};
use weir_core::storage::{Crash, Errno, Fault, FaultFs, Inject, OpKind, Storage, StorageFile};

use super::frame::{self, RESYNC_BUDGET, Resync};
use super::segment::segment_path;
use super::*;

const LOG: &str = "/log";
const TOPIC: &str = "t";

fn partition_dir() -> PathBuf {
    Path::new(LOG).join(TOPIC).join(partition_dir_name(0))
}

/// Small segments (a roll within the run) and a dense-ish index.
fn config(fsync: FsyncPolicy) -> LogConfig {
    LogConfig { segment_bytes: 16 << 10, index_interval_bytes: 1 << 10, fsync }
}

/// Record `i`: unique, in order, of a size that depends on where it is in the run.
fn record(i: usize) -> Vec<u8> {
    let len = match i {
        0..5 => 90,
        5..65 => 200,
        65 => 6000,
        66..106 => 150 + i % 50,
        _ => 300,
    };
    let mut r = format!("{i:05}:").into_bytes();
    r.resize(len, b'a' + (i % 26) as u8);
    r
}

/// What the run does, in order.
#[derive(Clone, Debug)]
enum Step {
    Append(Range<usize>),
    Sync,
}

fn script() -> Vec<Step> {
    use Step::{Append, Sync};
    vec![
        Append(0..5),
        Sync,
        // 60 records of 200 bytes: about three pages in one write.
        Append(5..65),
        Sync,
        // One record larger than a page; the segment rolls before it.
        Append(65..66),
        Sync,
        Append(66..106),
        Sync,
        // Never synced by the run (a writer's drop syncs it); rolls again.
        Append(106..136),
    ]
}

const RECORDS: usize = 136;

/// What a run got done before it stopped.
#[derive(Debug, Default)]
struct Run {
    /// Records passed to an `append`, returned or not.
    attempted: usize,
    /// Records whose `append` returned.
    appended: usize,
    /// Records known durable: an `append` with `Always`, or a `sync`, returned.
    synced: usize,
    /// The first error.
    error: Option<Error>,
}

/// Runs the script on `fs` with `fsync` (the topic must exist); returns what it
/// got done and the writer, unless opening it failed.
fn run(fs: &FaultFs, fsync: FsyncPolicy, records: &[Vec<u8>]) -> (Run, Option<PartitionWriter>) {
    let mut out = Run::default();
    let storage: Arc<dyn Storage> = Arc::new(fs.clone());
    let mut writer = match Topic::open_in(storage, Path::new(LOG), TOPIC).and_then(|t| t.writer(0, config(fsync))) {
        Ok(w) => w,
        Err(e) => {
            out.error = Some(e);
            return (out, None);
        }
    };
    for step in script() {
        let result = match step {
            Step::Append(range) => {
                let refs: Vec<&[u8]> = records[range.clone()].iter().map(Vec::as_slice).collect();
                out.attempted = range.end;
                writer.append(&refs).map(|first| {
                    assert_eq!(first, range.start as Offset);
                    out.appended = range.end;
                    if fsync == FsyncPolicy::Always {
                        out.synced = range.end;
                    }
                })
            }
            Step::Sync => writer.sync().map(|()| out.synced = out.appended),
        };
        if let Err(e) = result {
            out.error = Some(e);
            break;
        }
    }
    (out, Some(writer))
}

/// A `FaultFs` holding the (durable) topic, with no call counted yet.
fn fresh() -> Result<FaultFs> {
    let fs = FaultFs::new();
    Topic::create_in(Arc::new(fs.clone()), Path::new(LOG), TOPIC, 1)?;
    Ok(fs.crash(Crash::DropUnsynced))
}

/// Every record of the partition on `storage`, read from `from` until the
/// reader is idle.
fn read_from(storage: &Arc<dyn Storage>, from: Offset) -> Result<Vec<Vec<u8>>> {
    let mut reader = LogReader::open_in(storage.clone(), partition_dir(), 0, from, None, 1 << 20)?;
    let mut out = Vec::new();
    loop {
        let mut chunk = Chunk::default();
        if reader.read(5000, &mut chunk)? != ReadStatus::Data {
            return Ok(out);
        }
        out.extend(chunk.records().map(|(_, r)| r.to_vec()));
    }
}

/// Checks that the partition on `storage` holds exactly `expected`: read from
/// the start and from a few offsets in (through the index), and as the end offset.
fn check_holds(storage: &Arc<dyn Storage>, expected: &[Vec<u8>]) -> anyhow::Result<()> {
    let got = read_from(storage, 0)?;
    anyhow::ensure!(got == expected, "read {} records, expected {}", got.len(), expected.len());
    for from in (1..expected.len()).step_by(13) {
        let got = read_from(storage, from as Offset)?;
        anyhow::ensure!(got == expected[from..], "read from {from}: {} records", got.len());
    }
    let topic = Topic::open_in(storage.clone(), Path::new(LOG), TOPIC)?;
    anyhow::ensure!(topic.end_offsets()? == vec![expected.len() as Offset], "end offsets {:?}", topic.end_offsets()?);
    Ok(())
}

/// What [`recover`] saw.
#[derive(Debug, Default)]
struct Recovered {
    /// A torn tail was truncated.
    repaired: bool,
    /// ... and a valid frame followed the damage (a hole in an unsynced append).
    hole: bool,
}

/// Restarts on `image` after a crash of a run that got `done` done: the
/// partition opens (a torn tail is cut, never an error), holds a prefix of
/// the records that has every synced one (every appended one when every crash
/// since was a process kill: `killed`), takes new records, and keeps all of it
/// through another power loss.
fn recover(
    image: &FaultFs,
    killed: bool,
    fsync: FsyncPolicy,
    done: &Run,
    records: &[Vec<u8>],
) -> anyhow::Result<Recovered> {
    let storage: Arc<dyn Storage> = Arc::new(image.clone());
    let snapshot = image.crash(Crash::KeepAll);
    // Before any writer: readers and the end offset stop at the tail.
    let before = read_from(&storage, 0)?;
    let topic = Topic::open_in(storage.clone(), Path::new(LOG), TOPIC)?;
    let end_before = topic.end_offsets()?[0];
    anyhow::ensure!(before.len() as Offset == end_before, "{} records readable, end offset {end_before}", before.len());

    let mut writer = topic.writer(0, config(fsync)).map_err(|e| anyhow::anyhow!("the writer does not open: {e}"))?;
    let end = writer.end_offset() as usize;
    anyhow::ensure!(end == before.len(), "the writer's end {end}, readers saw {}", before.len());
    anyhow::ensure!(end >= done.synced, "{end} records left, {} were synced", done.synced);
    anyhow::ensure!(end <= done.attempted, "{end} records, only {} were ever written", done.attempted);
    if killed {
        anyhow::ensure!(end >= done.appended, "{end} records after a kill, {} were appended", done.appended);
    }
    let mut seen = Recovered::default();
    if let Some(repair) = writer.tail_repair() {
        seen.repaired = true;
        let bytes = snapshot.read(&repair.file)?;
        let tail = bytes.get(repair.offset as usize..).unwrap_or_default();
        seen.hole = matches!(frame::find_valid_frame(tail, RESYNC_BUDGET), Resync::Found(_));
    }
    let mut expected = records[..end].to_vec();
    check_holds(&storage, &expected).map_err(|e| e.context("after the writer opened"))?;

    // Appending after recovery works, and readers see all of it.
    let after: Vec<Vec<u8>> = vec![b"after-1".to_vec(), vec![b'z'; 5000], b"after-3".to_vec()];
    let refs: Vec<&[u8]> = after.iter().map(Vec::as_slice).collect();
    writer.append(&refs)?;
    writer.sync()?;
    drop(writer);
    expected.extend(after);
    check_holds(&storage, &expected).map_err(|e| e.context("after appending"))?;
    // What recovery kept and appended is durable.
    for lost in [Crash::DropUnsynced, Crash::TornPages { seed: end as u64 }] {
        let again: Arc<dyn Storage> = Arc::new(image.crash(lost));
        check_holds(&again, &expected).map_err(|e| e.context(format!("after a later {lost:?}")))?;
        let mut writer = PartitionWriter::open_in(again.clone(), partition_dir(), config(fsync))?;
        anyhow::ensure!(writer.tail_repair().is_none(), "a tail to repair after a later {lost:?}");
        writer.append(&[b"last"])?;
    }
    Ok(seen)
}

#[test]
fn every_crash_point_of_log_appends_recovers() -> anyhow::Result<()> {
    let records: Vec<Vec<u8>> = (0..RECORDS).map(record).collect();
    let mut enumerated = 0;
    let (mut repaired, mut holes) = (0, 0);
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Interval(Duration::from_secs(3600))] {
        let fs = fresh()?;
        let (done, writer) = run(&fs, fsync, &records);
        drop(writer);
        let synced = if fsync == FsyncPolicy::Always { RECORDS } else { 106 };
        anyhow::ensure!(done.error.is_none() && done.synced == synced, "undisturbed run: {done:?}");
        let trace = fs.trace();
        let kinds: Vec<OpKind> = trace.iter().map(|o| o.kind).collect();
        for kind in [OpKind::WriteAt, OpKind::OpenAppend, OpKind::ReadAt, OpKind::Lock, OpKind::Sync, OpKind::SyncDir] {
            anyhow::ensure!(kinds.contains(&kind), "{kind:?} not in the trace");
        }
        let segments = trace.iter().filter(|o| o.kind == OpKind::Create && o.path.extension() == Some("log".as_ref()));
        anyhow::ensure!(segments.count() >= 3, "too few segment rolls");
        let n = trace.len() as u64;
        for k in 0..=n {
            let torn = [k, k + 7919, k + 104_729].map(|seed| Crash::TornPages { seed });
            let modes = [Crash::DropUnsynced, Crash::KeepAll].into_iter().chain(torn);
            for mode in modes {
                let fs = fresh()?;
                fs.crash_after(k);
                let (done, writer) = run(&fs, fsync, &records);
                drop(writer);
                if k < n {
                    anyhow::ensure!(fs.is_down(), "crash after call {k} of {n}: the run did not notice");
                }
                let at = k.checked_sub(1).and_then(|i| trace.get(i as usize));
                let seen = recover(&fs.crash(mode), mode == Crash::KeepAll, fsync, &done, &records).map_err(|e| {
                    e.context(format!("{fsync:?}, crash after call {k} of {n} ({mode:?}, {at:?}), {done:?}"))
                })?;
                repaired += usize::from(seen.repaired);
                holes += usize::from(seen.hole);
                enumerated += 1;
            }
        }
    }
    // The torn-page crashes did leave holes before valid frames, and they were tails.
    anyhow::ensure!(holes >= 5, "only {holes} torn appends with a hole before valid frames");
    eprintln!(
        "{enumerated} log crash points enumerated ({repaired} torn tails cut, {holes} of them a hole before valid frames)"
    );
    Ok(())
}

#[test]
fn a_crash_while_the_writer_cuts_a_torn_tail_recovers_too() -> anyhow::Result<()> {
    let records: Vec<Vec<u8>> = (0..RECORDS).map(record).collect();
    let mut enumerated = 0;
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Interval(Duration::from_secs(3600))] {
        let fs = fresh()?;
        drop(run(&fs, fsync, &records));
        let n = fs.calls();
        // The first crash images whose recovery cuts a tail.
        let mut images = Vec::new();
        for k in 0..=n {
            for mode in [Crash::TornPages { seed: k }, Crash::DropUnsynced] {
                let fs = fresh()?;
                fs.crash_after(k);
                let (done, writer) = run(&fs, fsync, &records);
                drop(writer);
                let image = fs.crash(mode);
                let probe = image.crash(Crash::KeepAll);
                let writer = PartitionWriter::open_in(Arc::new(probe.clone()), partition_dir(), config(fsync))?;
                if writer.tail_repair().is_some() && images.len() < 8 {
                    drop(writer);
                    images.push((k, mode, done, image, probe.calls()));
                }
            }
        }
        anyhow::ensure!(images.len() >= 4, "{fsync:?}: only {} crash images with a torn tail", images.len());
        // Crash the recovering writer after each of its calls, then recover again.
        for (k, mode, done, image, calls) in &images {
            for j in 0..=*calls {
                for mode2 in [Crash::DropUnsynced, Crash::KeepAll, Crash::TornPages { seed: j }] {
                    let again = image.crash(Crash::KeepAll);
                    again.crash_after(j);
                    let opened = PartitionWriter::open_in(Arc::new(again.clone()), partition_dir(), config(fsync));
                    anyhow::ensure!(j == *calls || opened.is_err(), "recovery crashed after call {j} did not notice");
                    drop(opened);
                    recover(&again.crash(mode2), false, fsync, done, &records).map_err(|e| {
                        e.context(format!(
                            "{fsync:?}: crash after call {k} ({mode:?}), then after recovery call {j} ({mode2:?})"
                        ))
                    })?;
                    enumerated += 1;
                }
            }
        }
    }
    eprintln!("{enumerated} crash points during tail repair enumerated");
    Ok(())
}

#[test]
fn a_process_kill_loses_nothing_appended_even_without_fsyncs() -> anyhow::Result<()> {
    let records: Vec<Vec<u8>> = (0..RECORDS).map(record).collect();
    let fs = fresh()?;
    drop(run(&fs, FsyncPolicy::Never, &records));
    let n = fs.calls();
    for k in 0..=n {
        let fs = fresh()?;
        fs.crash_after(k);
        let (done, writer) = run(&fs, FsyncPolicy::Never, &records);
        drop(writer);
        let storage: Arc<dyn Storage> = Arc::new(fs.crash(Crash::KeepAll));
        let writer = PartitionWriter::open_in(storage.clone(), partition_dir(), config(FsyncPolicy::Never))?;
        let end = writer.end_offset() as usize;
        drop(writer);
        anyhow::ensure!(
            (done.appended..=done.attempted).contains(&end),
            "crash after call {k}: {end} records, {done:?}"
        );
        check_holds(&storage, &records[..end]).map_err(|e| e.context(format!("crash after call {k}")))?;
    }
    eprintln!("{} process kills of an unsynced log enumerated", n + 1);
    Ok(())
}

/// The fsyncs and writes of the undisturbed run (with `Always`) in the partition.
fn log_calls(kind: OpKind) -> Result<Vec<PathBuf>> {
    let records: Vec<Vec<u8>> = (0..RECORDS).map(record).collect();
    let fs = fresh()?;
    drop(run(&fs, FsyncPolicy::Always, &records));
    Ok(fs
        .trace()
        .into_iter()
        .filter(|o| o.kind == kind && o.path.starts_with(partition_dir()))
        .map(|o| o.path)
        .collect())
}

#[test]
fn a_failed_fsync_or_write_poisons_the_writer_and_a_reopen_recovers() -> anyhow::Result<()> {
    let records: Vec<Vec<u8>> = (0..RECORDS).map(record).collect();
    let mut cases = 0;
    for (kind, errno) in [(OpKind::Sync, Errno::Eio), (OpKind::Sync, Errno::Enospc), (OpKind::Write, Errno::Enospc)] {
        let paths = log_calls(kind)?;
        anyhow::ensure!(paths.len() > 5, "{kind:?}: {paths:?}");
        for (i, path) in paths.iter().enumerate() {
            // The i-th such call of the run fails, however many calls it made on that path before.
            let nth = paths[..=i].iter().filter(|p| *p == path).count() as u64;
            let fs = fresh()?;
            fs.inject(Inject::op(kind, Fault::Error(errno)).under(path).nth(nth));
            let (done, writer) = run(&fs, FsyncPolicy::Always, &records);
            let what = format!("{kind:?} {errno:?} on call {nth} on {}", path.display());
            let err = done.error.as_ref().ok_or_else(|| anyhow::anyhow!("{what}: the run succeeded"))?;
            anyhow::ensure!(err.to_string().contains(&*path.to_string_lossy()), "{what}: {err}");
            let trace = fs.trace();
            let failed = trace.iter().find(|o| o.failed).ok_or_else(|| anyhow::anyhow!("{what}: nothing failed"))?;
            if let Some(mut writer) = writer {
                // Poisoned: every later call fails, and none touches the storage.
                let calls = fs.calls();
                for e in [writer.append(&[b"more"]).unwrap_err(), writer.sync().unwrap_err()] {
                    anyhow::ensure!(e.to_string().contains("poisoned"), "{what}: {e}");
                }
                drop(writer);
                anyhow::ensure!(fs.calls() == calls, "{what}: a poisoned writer made storage calls");
            }
            let retried = trace.iter().any(|o| o.seq > failed.seq && o.kind == OpKind::Sync && o.path == failed.path);
            anyhow::ensure!(!retried, "{what}: fsynced {} again", failed.path.display());
            for mode in [Crash::DropUnsynced, Crash::KeepAll, Crash::TornPages { seed: i as u64 }] {
                let image = fs.crash(mode);
                // After a failed fsync and a process kill the kernel keeps the
                // poisoned file: what is appended after recovery may never reach
                // the disk, so the later power losses are only checked after a reboot.
                if mode == Crash::KeepAll && kind == OpKind::Sync {
                    let storage: Arc<dyn Storage> = Arc::new(image.clone());
                    let mut w =
                        PartitionWriter::open_in(storage.clone(), partition_dir(), config(FsyncPolicy::Always))?;
                    let end = w.end_offset() as usize;
                    anyhow::ensure!(
                        (done.synced..=done.attempted).contains(&end),
                        "{what} ({mode:?}): {end}, {done:?}"
                    );
                    w.append(&[b"after"])?;
                    drop(w);
                    let mut expected = records[..end].to_vec();
                    expected.push(b"after".to_vec());
                    check_holds(&storage, &expected).map_err(|e| e.context(format!("{what} ({mode:?})")))?;
                } else {
                    recover(&image, mode == Crash::KeepAll, FsyncPolicy::Always, &done, &records)
                        .map_err(|e| e.context(format!("{what} ({mode:?}), {done:?}")))?;
                }
                cases += 1;
            }
        }
    }
    eprintln!("{cases} injected log fsync and write failures recovered");
    Ok(())
}

/// Damages byte `at` of `path` on `fs` (a test that breaks a file on purpose).
fn flip(fs: &FaultFs, path: &Path, at: u64) -> Result<()> {
    let bytes = fs.read(path).map_err(|e| Error::io("read", path, e))?;
    let mut file: Box<dyn StorageFile> = fs.open_append(path).map_err(|e| Error::io("open", path, e))?;
    file.write_all_at(&[bytes[at as usize] ^ 0x40], at).map_err(|e| Error::io("write", path, e))
}

#[test]
fn damage_before_the_watermark_is_corruption_naming_file_and_offset() -> anyhow::Result<()> {
    let records: Vec<Vec<u8>> = (0..RECORDS).map(record).collect();
    let fs = fresh()?;
    let (done, writer) = run(&fs, FsyncPolicy::Always, &records);
    drop(writer);
    anyhow::ensure!(done.error.is_none());
    // In the last segment, well before its synced end.
    let storage: Arc<dyn Storage> = Arc::new(fs.clone());
    let segments = super::segment::list_segments(&*storage, &partition_dir())?;
    let last = *segments.last().ok_or_else(|| anyhow::anyhow!("no segment"))?;
    let seg = segment_path(&partition_dir(), last);
    let at = 8 + records[last as usize].len() as u64;
    flip(&fs, &seg, at + 20)?;
    let corrupt_at = |e: &Error| match e {
        Error::Corrupt { path, offset, .. } => Some((path.clone(), *offset)),
        _ => None,
    };
    let e = PartitionWriter::open_in(storage.clone(), partition_dir(), config(FsyncPolicy::Always)).unwrap_err();
    anyhow::ensure!(corrupt_at(&e) == Some((seg.clone(), at)), "{e}");
    anyhow::ensure!(e.to_string().contains(&*seg.to_string_lossy()) && e.to_string().contains("synced"), "{e}");
    let e = read_from(&storage, last).unwrap_err();
    anyhow::ensure!(corrupt_at(&e) == Some((seg.clone(), at)), "{e}");
    // The same after a process kill.
    let image: Arc<dyn Storage> = Arc::new(fs.crash(Crash::KeepAll));
    let e = PartitionWriter::open_in(image, partition_dir(), config(FsyncPolicy::Always)).unwrap_err();
    anyhow::ensure!(corrupt_at(&e) == Some((seg.clone(), at)), "{e}");
    Ok(())
}

#[test]
fn the_index_a_recovering_writer_rewrites_is_durable_before_it_appends() -> anyhow::Result<()> {
    // Life 1: A is synced; B (three 300-byte records, an index entry each) is
    // appended, its index entries reach the disk and its first frame does not.
    let dense = |fsync| LogConfig { index_interval_bytes: 0, ..config(fsync) };
    let fs = fresh()?;
    let storage: Arc<dyn Storage> = Arc::new(fs.clone());
    let a: Vec<Vec<u8>> = (0..4).map(|i| format!("a{i}").into_bytes()).collect();
    let refs: Vec<&[u8]> = a.iter().map(Vec::as_slice).collect();
    PartitionWriter::open_in(storage.clone(), partition_dir(), dense(FsyncPolicy::Always))?.append(&refs)?;
    let mut writer =
        PartitionWriter::open_in(storage, partition_dir(), dense(FsyncPolicy::Interval(Duration::from_secs(3600))))?;
    let b = [vec![b'b'; 300], vec![b'b'; 300], vec![b'b'; 300]];
    writer.append(&[&b[0], &b[1], &b[2]])?;
    fs.crash_after(fs.calls());
    drop(writer);
    let image = fs.crash(Crash::KeepAll);
    let (seg, ix) = (segment_path(&partition_dir(), 0), super::segment::index_path(&partition_dir(), 0));
    let hole = a.iter().map(|r| 8 + r.len() as u64).sum::<u64>();
    let io = |e: std::io::Error| anyhow::anyhow!("{e}");
    image.open_append(&ix).map_err(io)?.sync().map_err(io)?;
    let mut damaged = image.open_append(&seg).map_err(io)?;
    damaged.write_all_at(&[0; 8], hole).map_err(io)?;
    damaged.sync().map_err(io)?;
    drop(damaged);
    // Life 2 cuts B and appends C, whose second frame starts where B's third did.
    let storage: Arc<dyn Storage> = Arc::new(image.clone());
    let mut writer = PartitionWriter::open_in(storage, partition_dir(), dense(FsyncPolicy::Always))?;
    anyhow::ensure!(writer.tail_repair().is_some_and(|r| r.offset == hole), "{:?}", writer.tail_repair());
    let c = [vec![b'c'; 608], b"c1".to_vec(), b"c2".to_vec(), b"c3".to_vec()];
    writer.append(&[&c[0], &c[1], &c[2], &c[3]])?;
    drop(writer);
    // Life 3, after a power loss: B's index entries must not come back.
    let lost: Arc<dyn Storage> = Arc::new(image.crash(Crash::DropUnsynced));
    let mut expected = a.clone();
    expected.extend(c.iter().cloned());
    check_holds(&lost, &expected)?;
    let got = read_from(&lost, 6)?;
    anyhow::ensure!(got == expected[6..], "read from 6: {:?}", got.iter().map(|r| r.len()).collect::<Vec<_>>());
    Ok(())
}
