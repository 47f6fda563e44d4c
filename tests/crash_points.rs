//! Crash-point enumeration: the sensor pipeline runs on a fault-injecting
//! storage ([`FaultFs`]); after counting the storage calls of an undisturbed
//! run, it is crashed after every call that changes the file system, once
//! keeping only what was made durable (power loss) and once keeping
//! everything (process kill), and restarted on that image with another
//! worker count until it completes. The output must equal the reference
//! exactly (no row lost or doubled, every dead letter once), and must still do
//! so after a power loss once the run has returned.

mod fault_support;
mod support;

use std::sync::Arc;

use anyhow::{Context, bail};
use fault_support::{Case, ROOT, case, check, fresh, run, run_at};
use weir::core::checkpoint::{CheckpointStore, LocalStore};
use weir::core::storage::{Crash, FaultFs, OpKind, Storage};

/// Restarts on `image` until it completes, then checks the output, and
/// checks it again after a power loss (what the run reported done is durable).
fn finish(image: &FaultFs, case: &Case, workers: usize) -> anyhow::Result<()> {
    run(image, case, workers).context("restart")?;
    check(image, case).context("after the restart")?;
    let lost = image.crash(Crash::DropUnsynced);
    check(&lost, case).context("after a power loss once the restart completed")?;
    // What the run reported complete stays complete: a run on this state would write nothing.
    let store = LocalStore::open_in(Arc::new(lost.clone()), format!("{ROOT}/state"))?;
    anyhow::ensure!(
        store.latest()?.is_some_and(|m| m.complete),
        "after a power loss the newest checkpoint is not the complete one"
    );
    Ok(())
}

#[test]
fn every_crash_point_recovers_exactly_once() -> anyhow::Result<()> {
    let case = case()?;
    let fs = fresh();
    run(&fs, &case, 1)?;
    let trace = fs.trace();
    check(&fs, &case).context("undisturbed run")?;
    let points: Vec<u64> =
        std::iter::once(0).chain(trace.iter().filter(|op| op.kind.mutates()).map(|op| op.seq)).collect();
    let n = trace.len() as u64;
    if std::env::var_os("WEIR_TRACE").is_some() {
        for op in &trace {
            eprintln!("{op:?}");
        }
    }
    assert!(trace.iter().filter(|op| op.kind == OpKind::Rename).count() > 10, "too few commits and publishes");
    let mut enumerated = 0;
    for &k in &points {
        for mode in [Crash::DropUnsynced, Crash::KeepAll] {
            let fs = fresh();
            fs.crash_after(k);
            let crashed = run(&fs, &case, 1);
            if k < n && crashed.is_ok() {
                bail!("crash after call {k} of {n} ({mode:?}): the run did not notice");
            }
            let image = fs.crash(mode);
            let workers = 1 + (k as usize % 3);
            finish(&image, &case, workers).with_context(|| {
                let at = trace.get(k.saturating_sub(1) as usize);
                format!("crash after call {k} of {n} ({mode:?}, {at:?}), restart with {workers} workers")
            })?;
            enumerated += 1;
        }
    }
    eprintln!("{enumerated} crash points enumerated ({} mutating calls of {n})", points.len() - 1);
    Ok(())
}

/// The calls of `trace` after which recovery has the most to repair: right
/// after a manifest rename, after the commit point, and after a publish
/// rename of the same checkpoint (the second one, so an older one exists).
fn commit_points(trace: &[weir::core::storage::Op]) -> Vec<u64> {
    let renames: Vec<usize> = trace
        .iter()
        .enumerate()
        .filter(|(_, o)| o.kind == OpKind::Rename && o.to.as_ref().is_some_and(|t| t.ends_with("MANIFEST")))
        .map(|(i, _)| i)
        .collect();
    let at = renames[1];
    let publish = trace[at..].iter().find(|o| o.kind == OpKind::Rename && !o.path.ends_with("MANIFEST.tmp"));
    let mut points = vec![trace[at].seq, trace[at + 1].seq];
    points.extend(publish.map(|o| o.seq));
    points
}

#[test]
fn a_crash_during_recovery_recovers_too() -> anyhow::Result<()> {
    let case = case()?;
    let fs = fresh();
    run(&fs, &case, 1)?;
    let first = commit_points(&fs.trace());
    assert_eq!(first.len(), 3);
    let mut enumerated = 0;
    for &k in &first {
        for mode in [Crash::DropUnsynced, Crash::KeepAll] {
            let fs = fresh();
            fs.crash_after(k);
            assert!(run(&fs, &case, 1).is_err());
            let image = fs.crash(mode);
            // The restart's own calls, on a copy of the image.
            let probe = image.crash(Crash::KeepAll);
            run(&probe, &case, 2)?;
            let restart: Vec<u64> = probe.trace().iter().filter(|o| o.kind.mutates()).map(|o| o.seq).take(25).collect();
            for &j in &restart {
                for mode2 in [Crash::DropUnsynced, Crash::KeepAll] {
                    let again = image.crash(Crash::KeepAll);
                    again.crash_after(j);
                    assert!(run(&again, &case, 2).is_err(), "restart crashed after call {j} did not notice");
                    finish(&again.crash(mode2), &case, 3).with_context(|| {
                        format!("crash after call {k} ({mode:?}), then after restart call {j} ({mode2:?})")
                    })?;
                    enumerated += 1;
                }
            }
        }
    }
    eprintln!("{enumerated} crash points during recovery enumerated");
    Ok(())
}

#[test]
fn recovery_works_from_another_working_directory() -> anyhow::Result<()> {
    let case = case()?;
    let probe = fresh();
    run(&probe, &case, 1)?;
    let k = commit_points(&probe.trace())[1];
    // The first run uses paths relative to /w; it stops right after a commit point.
    let fs = fresh();
    fs.set_cwd(ROOT);
    fs.crash_after(k);
    assert!(run_at(&fs, &case, 1, ".").is_err());
    let image = fs.crash(Crash::KeepAll);
    let store = LocalStore::open_in(Arc::new(image.clone()), format!("{ROOT}/state"))?;
    let m = store.latest()?.context("a committed manifest")?;
    drop(store);
    anyhow::ensure!(!m.outputs.is_empty(), "the manifest lists no output to publish");
    for p in &m.outputs {
        anyhow::ensure!(p.staged.is_absolute() && p.target.is_absolute(), "relative path in the manifest: {p:?}");
        anyhow::ensure!(image.exists(&p.staged)?, "{} is not staged", p.staged.display());
    }
    // Recovery from another working directory, the state given by an absolute path.
    image.prepare_dir("/elsewhere");
    image.set_cwd("/elsewhere");
    run(&image, &case, 2).context("recovery from /elsewhere")?;
    check(&image, &case)
}

#[test]
fn io_errors_fail_the_run_and_it_recovers_exactly_once() -> anyhow::Result<()> {
    use weir::core::storage::{Errno, Fault, Inject};
    let case = case()?;
    let faults = [
        (
            "fsync of a staged file",
            Inject::op(OpKind::Sync, Fault::Error(Errno::Eio)).under(format!("{ROOT}/out")).nth(3),
        ),
        (
            "fsync of a checkpoint directory",
            Inject::op(OpKind::SyncDir, Fault::Error(Errno::Eio)).under(format!("{ROOT}/state")).nth(1),
        ),
        (
            "fsync at the commit point",
            Inject::op(OpKind::SyncDir, Fault::Error(Errno::Eio)).under(format!("{ROOT}/state")).nth(6),
        ),
        (
            "full disk writing state",
            Inject::op(OpKind::Write, Fault::Error(Errno::Enospc)).under(format!("{ROOT}/state")).nth(4),
        ),
        (
            "rename while publishing",
            Inject::op(OpKind::Rename, Fault::Error(Errno::Eio)).under(format!("{ROOT}/dlq")).nth(2),
        ),
        ("torn manifest", Inject::op(OpKind::Write, Fault::Torn { keep: 20 }).under(format!("{ROOT}/state")).nth(6)),
    ];
    for (what, fault) in faults {
        for mode in [Crash::DropUnsynced, Crash::KeepAll] {
            let fs = fresh();
            fs.inject(fault.clone());
            let err = run(&fs, &case, 1).err().with_context(|| format!("{what}: the run succeeded"))?;
            let trace = fs.trace();
            let failed = trace.iter().find(|o| o.failed).with_context(|| format!("{what}: nothing failed"))?;
            if !fs.is_down() {
                // Fatal: it names the file, and nothing retries the call on it.
                let msg = err.to_string();
                let named =
                    std::iter::once(&failed.path).chain(&failed.to).any(|p| msg.contains(&*p.to_string_lossy()));
                anyhow::ensure!(named, "{what}: the error does not name {}: {err}", failed.path.display());
                let retried =
                    trace.iter().any(|o| o.seq > failed.seq && o.kind == failed.kind && o.path == failed.path);
                anyhow::ensure!(!retried, "{what}: {:?} on {} was retried", failed.kind, failed.path.display());
            }
            finish(&fs.crash(mode), &case, 2).with_context(|| format!("{what} ({mode:?})"))?;
        }
    }
    Ok(())
}
