//! The outbox shape every delivering sink (Kafka, MQTT) is built on, with a
//! destination that records what it is given and fails on demand: rows go out
//! once in a run without failures, a delivery that fails after its checkpoint
//! committed stops the run and the next run delivers what was left (nothing
//! lost), rows too large for the destination become dead letters, and records
//! the destination refuses for good are kept with the reason.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::ensure;
use serde::{Deserialize, Serialize};
use weir::connectors::outbox::{Deliver, Destination, OutRecord, OutboxSink};
use weir::prelude::*;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Row {
    n: u64,
    s: String,
}

/// What the destination received, and when it fails.
#[derive(Default)]
struct Shared {
    got: Mutex<Vec<Row>>,
    /// Deliveries (files) left before one fails; `usize::MAX`: never.
    fail_in: AtomicUsize,
}

#[derive(Clone)]
struct Recorder(Arc<Shared>);

impl Destination for Recorder {
    fn kind(&self) -> &str {
        "recorder"
    }
    fn max_record_bytes(&self) -> usize {
        200
    }
    fn connect(&self) -> weir::Result<Box<dyn Deliver>> {
        Ok(Box::new(self.clone()))
    }
}

impl Deliver for Recorder {
    fn deliver(&mut self, records: &[OutRecord<'_>], refused: &mut Vec<(usize, String)>) -> weir::Result<()> {
        if self.0.fail_in.fetch_sub(1, Ordering::SeqCst) == 0 {
            return Err(weir::Error::Pipeline("the destination is away".into()));
        }
        let mut got = self.0.got.lock().map_err(|_| weir::Error::Pipeline("poisoned".into()))?;
        for (i, r) in records.iter().enumerate() {
            let row: Row = serde_json::from_slice(r.value).map_err(|e| weir::Error::Pipeline(e.to_string()))?;
            if row.s == "refuse" {
                refused.push((i, "refused by the destination".into()));
            } else {
                got.push(row);
            }
        }
        Ok(())
    }
}

fn input(dir: &Path, n: u64) -> anyhow::Result<std::path::PathBuf> {
    let mut text = String::new();
    for i in 0..n {
        let s = match i {
            7 => "x".repeat(300),
            11 => "refuse".to_string(),
            _ => format!("row {i}"),
        };
        text.push_str(&serde_json::to_string(&Row { n: i, s })?);
        text.push('\n');
    }
    let path = dir.join("in.jsonl");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn run(dir: &Path, input: &Path, dest: &Recorder) -> weir::Result<RunSummary> {
    let (input, dest, dead) = (input.to_path_buf(), dest.clone(), dir.join("dead"));
    Pipeline::new("outbox")
        .workers(2)
        .state(dir.join("state"))
        .epoch_records(50, 2)
        .epochs_in_flight(2)
        .bounded(true)
        .run(move |p| {
            p.source(LinesFile::with_split_bytes(&input, 1000)?)?
                .decode::<Row>(Json)
                .sink(OutboxSink::new(dest.clone()))?;
            p.dead_letters().sink(DeadLetters::dir(&dead))
        })
}

fn counts(rows: &[Row]) -> BTreeMap<u64, usize> {
    let mut m = BTreeMap::new();
    for r in rows {
        *m.entry(r.n).or_default() += 1;
    }
    m
}

fn outbox_files(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for d in std::fs::read_dir(dir.join("state/outbox"))? {
        for f in std::fs::read_dir(d?.path())? {
            let name = f?.file_name().to_string_lossy().into_owned();
            if !name.starts_with('_') {
                names.push(name);
            }
        }
    }
    Ok(names)
}

#[test]
fn every_committed_row_is_delivered_once_without_failures() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = input(dir.path(), 2_000)?;
    let dest = Recorder(Arc::new(Shared { fail_in: AtomicUsize::new(usize::MAX), ..Default::default() }));
    let summary = run(dir.path(), &path, &dest)?;
    ensure!(summary.commits.count > 5, "{} commits", summary.commits.count);
    let got = dest.0.got.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    let c = counts(&got);
    ensure!(c.len() == 1998 && c.values().all(|&k| k == 1), "{} distinct rows", c.len());
    ensure!(!c.contains_key(&7) && !c.contains_key(&11));
    // The oversize row is a dead letter of stage `sink`; the refused one is kept with its reason.
    let dead = std::fs::read_to_string(
        std::fs::read_dir(dir.path().join("dead"))?
            .find_map(|e| {
                let p = e.ok()?.path();
                p.extension().is_some_and(|x| x == "jsonl").then_some(p)
            })
            .ok_or_else(|| anyhow::anyhow!("no dead letters"))?,
    )?;
    ensure!(dead.lines().count() == 1 && dead.contains("\"stage\":\"sink\"") && dead.contains("larger"), "{dead}");
    let refused_dir = std::fs::read_dir(dir.path().join("state/outbox"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("no outbox"))??
        .path()
        .join("_refused");
    let mut refused = String::new();
    for f in std::fs::read_dir(&refused_dir)? {
        refused.push_str(&std::fs::read_to_string(f?.path())?);
    }
    ensure!(refused.lines().count() == 1 && refused.contains("refused by the destination"), "{refused}");
    ensure!(outbox_files(dir.path())?.is_empty(), "undelivered files left");
    Ok(())
}

#[test]
fn output_committed_but_not_delivered_goes_out_on_the_next_run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = input(dir.path(), 2_000)?;
    // The fourth delivery fails: the run stops with the error, its checkpoints
    // committed, and their files wait in the outbox.
    let dest = Recorder(Arc::new(Shared { fail_in: AtomicUsize::new(3), ..Default::default() }));
    let err = run(dir.path(), &path, &dest).err().map(|e| e.to_string()).unwrap_or_default();
    ensure!(err.contains("the destination is away"), "{err}");
    ensure!(!outbox_files(dir.path())?.is_empty(), "nothing left to deliver");
    dest.0.fail_in.store(usize::MAX, Ordering::SeqCst);
    run(dir.path(), &path, &dest)?;
    let got = dest.0.got.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    let c = counts(&got);
    // Nothing lost; a file delivered before the failure is not delivered again.
    ensure!(c.len() == 1998, "{} distinct rows delivered", c.len());
    ensure!(c.values().all(|&k| k == 1), "a row was delivered twice");
    ensure!(outbox_files(dir.path())?.is_empty(), "undelivered files left");
    // A complete run with nothing left delivers nothing.
    let before = got.len();
    ensure!(run(dir.path(), &path, &dest)?.already_complete);
    ensure!(dest.0.got.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.len() == before);
    Ok(())
}
