//! Partition discovery, through the source's metadata seam
//! (`Source::discover`): the Kafka broker the tests run (tansu) cannot add
//! partitions to a topic, so a source over an embedded-log topic shows the
//! pipeline only partition 0 at start and partition 1 when it next looks.
//! The unbounded run picks it up without a restart (on the worker that owned
//! nothing), its records reach the output exactly, and its offsets enter the
//! checkpoint.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, ensure};
use weir::connectors::log::{LogConfig, LogSource, Topic};
use weir::core::record::{Chunk, Offset, PartitionId};
use weir::core::source::{PartitionReader, PartitionSpec, ReadStatus, Source, Waker};
use weir::prelude::*;
use weir_testkit::sensor::{self, reference};

/// A log topic whose partition 1 appears only through discovery.
struct Growing {
    inner: LogSource,
    /// Set when partition 1 was read to its end: partition 0 ends only after
    /// that, so the run can neither finish before it discovered partition 1
    /// nor see partition 0 end (its watermark jumping to the end of time)
    /// before partition 1 reported its own.
    done: Arc<AtomicBool>,
    ends: Vec<Offset>,
}

impl Source for Growing {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn partitions(&self) -> weir::Result<Vec<PartitionSpec>> {
        Ok(self.inner.partitions()?.into_iter().filter(|s| s.id == 0).collect())
    }
    fn open(&self, p: PartitionId, from: Offset, until: Option<Offset>) -> weir::Result<Box<dyn PartitionReader>> {
        let inner = self.inner.open(p, from, until)?;
        let gate = (p == 0).then(|| self.done.clone());
        let signal = (p == 1).then(|| self.done.clone());
        Ok(Box::new(Ending { inner, next: from, end: self.ends[p as usize], gate, signal }))
    }
    fn fingerprint(&self) -> weir::Result<serde_json::Value> {
        self.inner.fingerprint()
    }
    fn record_at(&self, p: PartitionId, offset: Offset) -> weir::Result<Option<Vec<u8>>> {
        self.inner.record_at(p, offset)
    }
    fn discovers_partitions(&self) -> bool {
        true
    }
    fn discover(&self, known: &[PartitionId]) -> weir::Result<Vec<PartitionSpec>> {
        Ok(self.inner.partitions()?.into_iter().filter(|s| !known.contains(&s.id)).collect())
    }
}

/// Ends an (unbounded) log partition at its current end, so the run finishes.
struct Ending {
    inner: Box<dyn PartitionReader>,
    next: Offset,
    end: Offset,
    gate: Option<Arc<AtomicBool>>,
    signal: Option<Arc<AtomicBool>>,
}

impl PartitionReader for Ending {
    fn read(&mut self, max_bytes: usize, out: &mut Chunk) -> weir::Result<ReadStatus> {
        if self.next >= self.end
            && let Some(s) = &self.signal
        {
            s.store(true, Ordering::SeqCst);
        }
        let open = self.gate.as_ref().is_none_or(|g| g.load(Ordering::SeqCst));
        if self.next >= self.end {
            return Ok(if open { ReadStatus::End } else { ReadStatus::Idle });
        }
        let status = self.inner.read(max_bytes, out)?;
        if !out.is_empty() {
            self.next = out.next;
        }
        if self.next >= self.end
            && let Some(s) = &self.signal
        {
            s.store(true, Ordering::SeqCst);
        }
        Ok(if self.next >= self.end && open { ReadStatus::End } else { status })
    }
    fn set_waker(&mut self, waker: Waker) -> bool {
        self.inner.set_waker(waker)
    }
}

fn run(discovery: Option<Duration>) -> anyhow::Result<(usize, usize, weir::core::checkpoint::Manifest)> {
    let dir = tempfile::tempdir()?;
    let mut data = Vec::new();
    sensor::generate(20_000, 5, 100, &mut data)?;
    let topic = Topic::create(&dir.path().join("log"), "sensors", 2)?;
    let mut writers: Vec<_> = (0..2).map(|p| topic.writer(p, LogConfig::default())).collect::<Result<_, _>>()?;
    // Partition 1 holds the newer half: records of a partition found later are
    // late if they are older than what the watermark passed meanwhile.
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    for (i, line) in lines.iter().enumerate() {
        writers[usize::from(i >= lines.len() / 2)].append(&[line])?;
    }
    for w in &mut writers {
        w.sync()?;
    }
    drop(writers);
    let ends = topic.end_offsets()?;
    let (log, out, dead, state) =
        (dir.path().join("log"), dir.path().join("out"), dir.path().join("dead"), dir.path().join("state"));
    let done = Arc::new(AtomicBool::new(discovery.is_none()));
    let (o, d) = (out.clone(), dead.clone());
    Pipeline::new("grow").workers(2).state(&state).bounded(false).partition_discovery(discovery).run(move |p| {
        let src = Growing { inner: LogSource::open(&log, "sensors")?, done: done.clone(), ends: ends.clone() };
        sensor::aggregate(p.source(src)?, Parquet::dir(&o))?;
        p.dead_letters().sink(DeadLetters::dir(&d))
    })?;
    let (expected, _) = reference(&data);
    let rows = support::read_rows(&out)?;
    if discovery.is_some() {
        support::compare(&expected, &rows)?;
    }
    let manifest = weir::core::checkpoint::store::read_latest(&state)?.context("no checkpoint")?;
    Ok((rows.len(), expected.len(), manifest))
}

#[test]
fn a_partition_added_while_running_is_read_without_a_restart() -> anyhow::Result<()> {
    // Twice: a window watermark that depended on how an epoch's updates were
    // batched once fired a window early on one worker in about a third of the runs.
    for _ in 0..2 {
        let (rows, expected, manifest) = run(Some(Duration::from_millis(50)))?;
        ensure!(rows == expected);
        let offsets = &manifest.offsets["sensors"];
        ensure!(offsets.len() == 2 && offsets[&1] > 0, "the checkpoint lacks the new partition: {offsets:?}");
    }
    // Without discovery the same run never sees partition 1: the test can fail.
    let (rows, expected, manifest) = run(None)?;
    ensure!(rows < expected, "without discovery partition 1 must be missing");
    ensure!(!manifest.offsets["sensors"].contains_key(&1));
    Ok(())
}
