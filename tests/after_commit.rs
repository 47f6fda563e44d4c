//! A source's after-commit action (`Source::on_committed`, Kafka's group
//! offsets) that fails is logged, never fatal: the run finishes with the
//! reference's output, and the next commit calls it again with newer offsets.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context, ensure};
use weir::core::record::{Offset, PartitionId};
use weir::core::source::{PartitionReader, PartitionSpec, ReadOrder, Source};
use weir::prelude::*;
use weir_testkit::sensor::{self, reference};

/// The offsets of each `on_committed` call, and whether it was the last.
type Calls = Arc<Mutex<Vec<(BTreeMap<PartitionId, Offset>, bool)>>>;

/// A file's lines whose first `on_committed` fails (the broker away, say).
struct FailsOnce {
    inner: LinesFile,
    calls: Calls,
}

impl Source for FailsOnce {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn partitions(&self) -> weir::Result<Vec<PartitionSpec>> {
        self.inner.partitions()
    }
    fn open(&self, p: PartitionId, from: Offset, until: Option<Offset>) -> weir::Result<Box<dyn PartitionReader>> {
        self.inner.open(p, from, until)
    }
    fn fingerprint(&self) -> weir::Result<serde_json::Value> {
        self.inner.fingerprint()
    }
    fn record_at(&self, p: PartitionId, offset: Offset) -> weir::Result<Option<Vec<u8>>> {
        self.inner.record_at(p, offset)
    }
    fn read_order(&self) -> ReadOrder {
        self.inner.read_order()
    }
    fn on_committed(&self, offsets: &BTreeMap<PartitionId, Offset>, last: bool) -> weir::Result<()> {
        let mut calls = self.calls.lock().map_err(|_| weir::Error::Pipeline("a poisoned lock".into()))?;
        calls.push((offsets.clone(), last));
        if calls.len() == 1 {
            return Err(weir::Error::config("on_committed", "the broker is away (a test's first call)"));
        }
        Ok(())
    }
}

#[test]
fn a_failing_after_commit_action_is_retried_by_the_next_commit() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.jsonl");
    let mut data = Vec::new();
    sensor::generate(20_000, 29, 50, &mut data)?;
    std::fs::write(&input, &data)?;
    let ends: BTreeMap<PartitionId, Offset> =
        LinesFile::with_split_bytes(&input, 64 << 10)?.partitions()?.iter().map(|s| (s.id, s.end)).collect();
    ensure!(ends.len() > 1, "one split only");

    let calls = Calls::default();
    let (out, dead) = (dir.path().join("out"), dir.path().join("dead"));
    let (c, i, o, d) = (calls.clone(), input.clone(), out.clone(), dead.clone());
    let summary = Pipeline::new("after-commit")
        .workers(2)
        .state(dir.path().join("state"))
        // A checkpoint every 500 records a worker (about 20 each), and at most
        // 2 epochs ahead of the last commit, so a fast or a busy machine cannot
        // fold the run's checkpoints into one commit.
        .epoch_records(500, 1)
        .epochs_in_flight(2)
        .bounded(true)
        .run(move |p| {
            let src = FailsOnce { inner: LinesFile::with_split_bytes(&i, 64 << 10)?, calls: c.clone() };
            sensor::aggregate(p.source(src)?, Parquet::dir(&o))?;
            p.dead_letters().sink(DeadLetters::dir(&d))
        })?;
    support::compare(&reference(&data).0, &support::read_rows(&out)?)?;

    let calls = calls.lock().map_err(|_| anyhow::anyhow!("a poisoned lock"))?.clone();
    ensure!(calls.len() >= 2, "{} calls of on_committed", calls.len());
    ensure!(calls.len() as u64 == summary.commits.count, "{} calls for {} commits", calls.len(), summary.commits.count);
    // The call after the failed one carries newer offsets, never older ones.
    let (first, second) = (&calls[0].0, &calls[1].0);
    ensure!(!calls[0].1, "the failed call was the last: nothing retried it");
    ensure!(
        ends.keys().all(|p| first.get(p).unwrap_or(&0) <= second.get(p).unwrap_or(&0)) && first != second,
        "first call {first:?}, second {second:?}"
    );
    let (last, is_last) = calls.last().context("no call")?;
    ensure!(*is_last && *last == ends, "the last call has {last:?} (last: {is_last}), the ends are {ends:?}");
    Ok(())
}
