//! The embedded-log path end to end through the `weir` CLI: create a topic,
//! produce keyed JSON lines, run the sensor example from the log as a
//! consumer group (5 partitions over 3 workers), compare with the reference,
//! and check the group's committed offsets and lag; and the sensor pipeline
//! reading a topic on its own (fault-injecting) storage.

mod fault_support;
mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use weir_testkit::sensor::{generate, reference};

fn weir(dir: &std::path::Path, args: &[&str], stdin: Option<&[u8]>) -> anyhow::Result<String> {
    run(Command::new(env!("CARGO_BIN_EXE_weir")), dir, args, stdin)
}

fn sensor(dir: &std::path::Path, args: &[&str]) -> anyhow::Result<String> {
    run(weir_testkit::sensor::example()?, dir, args, None)
}

/// Runs `cmd` with `args` in `dir`, feeding it `stdin`: its standard output, or an error if it fails.
fn run(mut cmd: Command, dir: &std::path::Path, args: &[&str], stdin: Option<&[u8]>) -> anyhow::Result<String> {
    let mut child = cmd
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(input) = stdin {
        child.stdin.take().context("stdin")?.write_all(input)?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{:?} {args:?} failed: {}", cmd.get_program(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn log_topic_to_parquet_through_the_cli() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mut input = Vec::new();
    generate(30_000, 3, 300, &mut input)?;
    let (expected, malformed) = reference(&input);

    weir(d, &["topic", "create", "sensors", "--partitions", "5", "--log-dir", "log"], None)?;
    let produced = weir(d, &["produce", "sensors", "--log-dir", "log", "--key-field", "device"], Some(&input))?;
    assert!(produced.contains("30000 records"), "{produced}");
    let described = weir(d, &["topic", "describe", "sensors", "--log-dir", "log"], None)?;
    assert!(described.contains("5 partitions, 30000 records"), "{described}");

    let run = [
        "--log-dir",
        "log",
        "--topic",
        "sensors",
        "--group",
        "g1",
        "--bounded",
        "--workers",
        "3",
        "--output",
        "out",
        "--dead-letter",
        "dlq",
        "--state",
        "state",
    ];
    sensor(d, &run)?;
    support::compare(&expected, &support::read_rows(&d.join("out"))?)?;
    assert_eq!(support::read_dead_letters(&d.join("dlq"))?.len() as u64, malformed);

    let lag = weir(d, &["group", "describe", "g1", "--state", "state", "--log-dir", "log"], None)?;
    let rows: Vec<Vec<&str>> = lag.lines().skip(2).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 5, "{lag}");
    for r in &rows {
        assert_eq!(r[2], r[3], "committed == end: {lag}");
        assert_eq!(r[4], "0", "{lag}");
    }
    assert!(weir(d, &["group", "describe", "other", "--state", "state", "--log-dir", "log"], None).is_err());

    // Records appended after the bounded run are not part of it: the completed
    // group's checkpoint stays complete, and the lag shows the new records.
    weir(
        d,
        &["produce", "sensors", "--log-dir", "log", "--key-field", "device"],
        Some(b"{\"device\":\"dev-1\",\"ts\":1,\"temp\":1.0}\n"),
    )?;
    let lag = weir(d, &["group", "describe", "g1", "--state", "state", "--log-dir", "log"], None)?;
    let total_lag: u64 = lag.lines().skip(2).filter_map(|l| l.split_whitespace().nth(4)?.parse::<u64>().ok()).sum();
    assert_eq!(total_lag, 1, "{lag}");
    Ok(())
}

#[test]
fn the_pipeline_reads_its_log_through_its_storage() -> anyhow::Result<()> {
    use std::path::Path;
    use std::sync::Arc;

    use weir::connectors::log::{LogConfig, Producer, Topic};
    use weir::core::storage::{FaultFs, OpKind, Storage};
    use weir::prelude::*;
    use weir_testkit::sensor::Input;

    // The topic exists only on the FaultFs: the run can only read it through
    // the pipeline's storage.
    let fs = FaultFs::new();
    let storage: Arc<dyn Storage> = Arc::new(fs.clone());
    let input = fault_support::input();
    let (expected, malformed) = reference(&input);
    let topic = Topic::create_in(storage.clone(), Path::new("/w/log"), "sensors", 1)?;
    let mut producer = Producer::new(&topic, LogConfig::default())?.with_batch_bytes(4096);
    for line in input.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        producer.send(None, line)?;
    }
    producer.flush()?;
    drop(producer);
    let reads_before = fs.trace().iter().filter(|o| o.kind == OpKind::ReadAt).count();

    let log = Input::Log { dir: "/w/log".into(), topic: "sensors".into() };
    Pipeline::new("log-on-storage")
        .workers(2)
        .storage(storage)
        .state("/w/state")
        .bounded(true)
        .epoch_records(60, 2)
        .run(move |p| weir_testkit::sensor::build(p, &log, Path::new("/w/out"), Path::new("/w/dlq")))?;
    let reads = fs.trace().iter().filter(|o| o.kind == OpKind::ReadAt && o.path.starts_with("/w/log")).count();
    anyhow::ensure!(reads > reads_before, "the run read no segment through its storage");

    let local = tempfile::tempdir()?;
    for sub in ["out", "dlq"] {
        fs.copy_to_local(Path::new("/w").join(sub), local.path().join(sub))?;
    }
    support::compare(&expected, &support::read_rows(&local.path().join("out"))?)?;
    assert_eq!(support::read_dead_letters(&local.path().join("dlq"))?.len() as u64, malformed);
    Ok(())
}
