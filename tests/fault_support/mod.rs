//! Shared fixtures of the tests on a fault-injecting storage: a small sensor
//! feed with dead letters spread over many checkpoints, the pipeline run on a
//! `FaultFs`, and the exact comparison of what the storage holds with the
//! reference.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::bail;
use weir::core::storage::{FaultFs, Storage};
use weir::prelude::*;
use weir_testkit::sensor::{SplitMix, WindowRow, reference};

use crate::support;

/// Where the tests' pipelines write on the `FaultFs`.
pub const ROOT: &str = "/w";

/// A feed that spans many one-minute windows (so output is published at many
/// checkpoints), with malformed lines (dead letters) and filtered readings.
/// The feed.
pub fn input() -> Vec<u8> {
    let mut rng = SplitMix::new(99);
    let mut out = Vec::new();
    let mut ts: i64 = 1_700_000_000_000;
    for i in 0..600 {
        ts += 200 + rng.below(800) as i64;
        let line = if i % 97 == 13 {
            format!("{{\"device\":\"dev-{}\",\"ts\":", i % 7)
        } else {
            let temp = if i % 53 == 0 { 999.0 } else { (rng.unit() * 4000.0).round() / 100.0 };
            format!("{{\"device\":\"dev-{}\",\"ts\":{ts},\"temp\":{temp:?}}}", rng.below(12))
        };
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out
}

/// Byte offsets of the lines the reference counts as malformed.
pub fn malformed_offsets(input: &[u8]) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    let mut at = 0u64;
    for line in input.split_inclusive(|&b| b == b'\n') {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        if serde_json::from_slice::<weir_testkit::sensor::Reading>(body).is_err() {
            out.insert(at);
        }
        at += line.len() as u64;
    }
    out
}

/// One input with its expected output.
pub struct Case {
    /// The JSON-lines input (on the local file system: inputs are read through std::fs).
    pub input: PathBuf,
    /// Expected rows.
    pub expected: std::collections::BTreeMap<(String, i64), WindowRow>,
    /// Byte offsets of the lines that must become dead letters.
    pub dead: BTreeSet<u64>,
    _dir: tempfile::TempDir,
}

/// The feed written to a temporary file, with its reference output.
pub fn case() -> anyhow::Result<Case> {
    let bytes = input();
    let (expected, malformed) = reference(&bytes);
    let dead = malformed_offsets(&bytes);
    assert_eq!(dead.len() as u64, malformed);
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, &bytes)?;
    Ok(Case { input, expected, dead, _dir: dir })
}

/// Runs the sensor pipeline on `fs`, writing under `root` (state, out, dlq).
pub fn run_at(fs: &FaultFs, case: &Case, workers: usize, root: &str) -> weir::Result<RunSummary> {
    let input = case.input.clone();
    let split = std::fs::metadata(&input).map(|m| m.len() / 3 + 1).unwrap_or(4096);
    let (out, dlq) = (format!("{root}/out"), format!("{root}/dlq"));
    let mut pipeline = Pipeline::new("crash-points")
        .workers(workers)
        .storage(Arc::new(fs.clone()))
        .state(format!("{root}/state"))
        .epoch_records(60, 2);
    // Small reads, so that epochs (which close between reads) are short.
    pipeline.config.read_batch_bytes = 1024;
    pipeline.run(move |p| {
        weir_testkit::sensor::aggregate(
            p.source(LinesFile::with_split_bytes(&input, split)?)?,
            Parquet::dir(&out).rows_per_file(40),
        )?;
        p.dead_letters().sink(DeadLetters::dir(&dlq))
    })
}

/// [`run_at`] under [`ROOT`].
pub fn run(fs: &FaultFs, case: &Case, workers: usize) -> weir::Result<RunSummary> {
    run_at(fs, case, workers, ROOT)
}

/// Compares what `fs` holds under `root` with the reference.
pub fn check_at(fs: &FaultFs, case: &Case, root: &str) -> anyhow::Result<()> {
    let local = tempfile::tempdir()?;
    for sub in ["out", "dlq"] {
        let from = Path::new(root).join(sub);
        if fs.exists(&from)? {
            fs.copy_to_local(&from, local.path().join(sub))?;
        }
    }
    support::compare(&case.expected, &support::read_rows(&local.path().join("out"))?)?;
    let dead = support::read_dead_letters(&local.path().join("dlq"))?;
    let offsets: BTreeSet<u64> = dead.iter().filter_map(|d| d["offset"].as_u64()).collect();
    if dead.len() != case.dead.len() || offsets != case.dead {
        bail!("{} dead letters at {:?}, expected {} at {:?}", dead.len(), offsets, case.dead.len(), case.dead);
    }
    Ok(())
}

/// [`check_at`] under [`ROOT`].
pub fn check(fs: &FaultFs, case: &Case) -> anyhow::Result<()> {
    check_at(fs, case, ROOT)
}

/// A `FaultFs` holding just [`ROOT`] (durable).
pub fn fresh() -> FaultFs {
    let fs = FaultFs::new();
    fs.prepare_dir(ROOT);
    fs
}
