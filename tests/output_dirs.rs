//! Output directories: owned by one pipeline at a time (`_weir.lock`), shared
//! safely by several sinks of one pipeline (file names carry the operator
//! id), never mixed with an earlier run's committed files when no checkpoint
//! is restored, and a read-only one is a clear startup error that touches
//! nothing.

mod fault_support;
mod support;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use fault_support::{ROOT, case, fresh};
use weir::core::storage::{Errno, Fault, FaultFs, Inject, LocalFs, Storage};
use weir::prelude::*;
use weir_testkit::sensor::reference;

fn pipeline(storage: Arc<dyn Storage>, state: &Path) -> Pipeline {
    let mut p = Pipeline::new("output-dirs").storage(storage).state(state).epoch_records(60, 2);
    p.config.read_batch_bytes = 1024;
    p
}

/// The sensor pipeline from `input` into `out` (dead letters into `dlq`).
fn sensor(p: Pipeline, input: &Path, out: &Path, dlq: &Path) -> weir::Result<RunSummary> {
    let (input, out, dlq) = (input.to_path_buf(), out.to_path_buf(), dlq.to_path_buf());
    p.run(move |p| {
        weir_testkit::sensor::aggregate(p.source(LinesFile::open(&input)?)?, Parquet::dir(&out).rows_per_file(40))?;
        p.dead_letters().sink(DeadLetters::dir(&dlq))
    })
}

fn w(sub: &str) -> std::path::PathBuf {
    Path::new(ROOT).join(sub)
}

#[test]
fn two_sinks_of_one_kind_share_a_directory() -> anyhow::Result<()> {
    let case = case()?;
    // A second feed with other device names, into the same output directory.
    let other = std::fs::read(&case.input)?.split(|&b| b == b'\n').fold(Vec::new(), |mut acc, line| {
        if !line.is_empty() {
            acc.extend_from_slice(&String::from_utf8_lossy(line).replace("dev-", "sensor-").into_bytes());
            acc.push(b'\n');
        }
        acc
    });
    let dir = tempfile::tempdir()?;
    let second = dir.path().join("second.jsonl");
    std::fs::write(&second, &other)?;
    let mut expected = case.expected.clone();
    expected.extend(reference(&other).0);

    let fs = fresh();
    let (a, b, out, dlq) = (case.input.clone(), second.clone(), w("out"), w("dlq"));
    pipeline(Arc::new(fs.clone()), &w("state")).workers(2).run(move |p| {
        weir_testkit::sensor::aggregate(p.source(LinesFile::open(&a)?)?, Parquet::dir(&out).rows_per_file(40))?;
        weir_testkit::sensor::aggregate(p.source(LinesFile::open(&b)?)?, Parquet::dir(&out).rows_per_file(40))?;
        p.dead_letters().sink(DeadLetters::dir(&dlq))
    })?;
    let local = tempfile::tempdir()?;
    fs.copy_to_local(w("out"), local.path())?;
    support::compare(&expected, &support::read_rows(local.path())?)?;
    let names: std::collections::BTreeSet<String> = support::visible_files(local.path())?
        .iter()
        .filter_map(|p| p.file_name()?.to_str()?.split("-w").next().map(str::to_string))
        .collect();
    assert_eq!(names.len(), 2, "files of two sinks, each named after its operator: {names:?}");
    Ok(())
}

#[test]
fn a_second_pipeline_on_the_same_output_directory_is_refused() -> anyhow::Result<()> {
    let case = case()?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    std::fs::create_dir(&out)?;
    // Another pipeline (here: this test) owns the directory.
    let lock = out.canonicalize()?.join("_weir.lock");
    let held = LocalFs.try_lock(&lock)?.context("the lock is free")?;
    let run =
        || sensor(pipeline(Arc::new(LocalFs), &dir.path().join("state")), &case.input, &out, &dir.path().join("dlq"));
    match run() {
        Err(weir::Error::Locked { path }) => assert_eq!(path, lock),
        other => panic!("expected Error::Locked naming {}, got {other:?}", lock.display()),
    }
    let touched: Vec<_> = std::fs::read_dir(&out)?.flatten().map(|e| e.file_name()).collect();
    assert_eq!(touched, vec![std::ffi::OsString::from("_weir.lock")], "the refused run touched the directory");
    drop(held);
    run()?;
    assert!(!support::read_rows(&out)?.is_empty());
    Ok(())
}

#[test]
fn a_new_or_wiped_state_directory_refuses_committed_output() -> anyhow::Result<()> {
    let case = case()?;
    let fs = fresh();
    let storage: Arc<dyn Storage> = Arc::new(fs.clone());
    sensor(pipeline(storage.clone(), &w("state")), &case.input, &w("out"), &w("dlq"))?;
    let before = fs.list(&w("out"))?;
    let refused = |state: &str| {
        let err = sensor(pipeline(storage.clone(), &w(state)), &case.input, &w("out"), &w("dlq"))
            .expect_err("a run that restores no checkpoint must refuse committed output");
        let msg = err.to_string();
        assert!(msg.contains("/w/out") && msg.contains("earlier run"), "{msg}");
    };
    refused("new-state");
    fs.remove_dir_all(&w("state"))?;
    refused("state");
    assert_eq!(fs.list(&w("out"))?, before, "a refused run changed the output directory");
    Ok(())
}

/// Every storage call that changed something at or below `dir`.
fn changes_under(fs: &FaultFs, dir: &Path) -> Vec<weir::core::storage::Op> {
    fs.trace().into_iter().filter(|o| !o.failed && o.kind.mutates() && o.path.starts_with(dir)).collect()
}

#[test]
fn a_read_only_output_directory_is_a_clear_error_and_nothing_is_touched() -> anyhow::Result<()> {
    let case = case()?;
    // An existing directory on a read-only file system, and a missing one
    // under a directory we may not write (tests run as root: injected).
    for (errno, protected, out) in [(Errno::Erofs, w("out"), w("out")), (Errno::Eacces, w("ro"), w("ro/out"))] {
        let fs = fresh();
        fs.prepare_dir(&protected);
        fs.inject(Inject::mutations(Fault::Error(errno)).under(&protected));
        let err = sensor(pipeline(Arc::new(fs.clone()), &w("state")), &case.input, &out, &w("dlq"))
            .expect_err("a read-only output directory must fail the run");
        let msg = err.to_string();
        assert!(msg.contains(&*out.to_string_lossy()), "{errno:?}: the error does not name {}: {msg}", out.display());
        assert!(msg.contains("denied") || msg.contains("Read-only"), "{errno:?}: {msg}");
        assert_eq!(changes_under(&fs, &protected), vec![], "{errno:?}: the output directory was touched");
        let checkpoint: Vec<_> = fs.trace().into_iter().filter(|o| o.path.to_string_lossy().contains("chk-")).collect();
        assert_eq!(checkpoint, vec![], "{errno:?}: a checkpoint was written");
    }
    Ok(())
}
