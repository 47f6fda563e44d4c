//! Bad configuration is a clear error at startup that names what is wrong,
//! and nothing is touched: unknown topics, missing inputs, an output path
//! that is a file, topic names that would escape the log directory, a state
//! directory written by a newer format, message timestamps without Kafka, a
//! malformed duration (`--max-out-of-orderness`, `--allowed-lateness`, ...),
//! window or list of percentiles. `sensor ...` runs the sensor example,
//! anything else the `weir` binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::Context;

fn weir(dir: &Path, args: &[&str]) -> anyhow::Result<Output> {
    let mut cmd = match args.split_first() {
        Some((&"sensor", options)) => {
            let mut cmd = weir_testkit::sensor::example()?;
            cmd.args(options);
            cmd
        }
        _ => {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
            cmd.args(args);
            cmd
        }
    };
    cmd.env("RUST_LOG", "error").current_dir(dir).output().with_context(|| format!("spawning {args:?}"))
}

/// Every path under `dir` with its size.
fn tree(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let meta = e.metadata().map(|m| (m.is_dir(), m.len())).unwrap_or((false, 0));
            if meta.0 {
                stack.push(e.path());
            }
            out.insert(e.path(), meta.1);
        }
    }
    out
}

/// Runs `args` in `dir`: it must fail, say `expected`, and leave `dir` as it was.
fn refused(dir: &Path, args: &[&str], expected: &[&str]) -> anyhow::Result<()> {
    let before = tree(dir);
    let out = weir(dir, args)?;
    let err = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(!out.status.success(), "{args:?} succeeded");
    for e in expected {
        anyhow::ensure!(err.contains(e), "{args:?}: the error does not say `{e}`:\n{err}");
    }
    anyhow::ensure!(tree(dir) == before, "{args:?} changed files in {}", dir.display());
    Ok(())
}

const SINKS: &[&str] = &["--output", "out", "--dead-letter", "dlq"];

#[test]
fn bad_inputs_and_outputs_are_startup_errors_that_touch_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::write(d.join("in.jsonl"), "{\"device\":\"a\",\"ts\":1,\"temp\":2.0}\n")?;
    // A missing input.
    refused(d, &[&["sensor", "--input", "missing.jsonl"], SINKS].concat(), &["missing.jsonl"])?;
    // An input that is a directory.
    std::fs::create_dir(d.join("adir"))?;
    refused(d, &[&["sensor", "--input", "adir"], SINKS].concat(), &["adir"])?;
    // An output path that is a file.
    std::fs::write(d.join("file-out"), b"x")?;
    refused(d, &["sensor", "--input", "in.jsonl", "--output", "file-out", "--dead-letter", "dlq"], &["file-out"])?;
    // An unknown topic of an existing log.
    assert!(weir(d, &["topic", "create", "sensors", "--partitions", "2", "--log-dir", "log"])?.status.success());
    refused(d, &[&["sensor", "--log-dir", "log", "--topic", "nope", "--bounded"], SINKS].concat(), &["nope", "log"])?;
    // Message timestamps without a Kafka input (a file, the log, the demo).
    let wanted = ["--event-time message-timestamp", "--brokers"];
    let ts = ["--event-time", "message-timestamp"];
    refused(d, &[&["sensor", "--input", "in.jsonl"], &ts[..], SINKS].concat(), &wanted)?;
    refused(d, &[&["sensor", "--log-dir", "log", "--bounded"], &ts[..], SINKS].concat(), &wanted)?;
    refused(d, &[&["sensor"], &ts[..]].concat(), &wanted)?;
    Ok(())
}

#[test]
fn a_malformed_duration_is_a_startup_error_naming_the_option_and_the_forms() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::write(d.join("in.jsonl"), "{\"device\":\"a\",\"ts\":1,\"temp\":2.0}\n")?;
    for (option, value, forms) in [
        ("--max-out-of-orderness", "soon", &["100ms", "1s", "2m"][..]),
        ("--max-out-of-orderness", "2 weeks", &["ms, s, m or h"][..]),
        ("--max-out-of-orderness", "", &["100ms", "1s", "2m"][..]),
        ("--checkpoint-interval", "1x", &["ms, s, m or h"][..]),
        ("--allowed-lateness", "later", &["100ms", "1s", "2m"][..]),
        ("--allowed-lateness", "5 days", &["ms, s, m or h"][..]),
    ] {
        let args = [&["sensor", "--input", "in.jsonl", option, value], SINKS].concat();
        refused(d, &args, &[&[option, value][..], forms].concat())?;
    }
    // The demo (no input options) refuses it too, before generating anything.
    refused(d, &["sensor", "--max-out-of-orderness", "2sec"], &["--max-out-of-orderness", "2sec"])?;
    Ok(())
}

#[test]
fn a_malformed_window_or_percentiles_is_a_startup_error_naming_the_option_and_the_forms() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::write(d.join("in.jsonl"), "{\"device\":\"a\",\"ts\":1,\"temp\":2.0}\n")?;
    let windows = ["tumbling:SIZE", "sliding:SIZE/SLIDE", "session:GAP"];
    for (value, why) in [
        ("hopping:1m", "unknown window kind `hopping`"),
        ("tumbling", "no `:` between the kind and its duration"),
        ("tumbling:", "missing size"),
        ("sliding:1m", "missing /SLIDE"),
        ("sliding:1m/", "missing slide"),
        ("sliding:10s/1m", "must not exceed the size"),
        ("sliding:1m/7ms", "60000 panes"),
        ("session:0s", "at least 1ms"),
        ("tumbling:0", "at least 1ms"),
        ("session:30 parsecs", "ms, s, m or h"),
    ] {
        let args = [&["sensor", "--input", "in.jsonl", "--window", value], SINKS].concat();
        refused(d, &args, &[&["--window", value, why][..], &windows[..]].concat())?;
    }
    let form = "distinct quantiles in [0, 1]";
    for (value, why) in [
        ("", "no quantile given"),
        ("0.5,", "an empty entry"),
        ("1.5", "quantile 1.5 is not in [0, 1]"),
        ("-0.1", "not in [0, 1]"),
        ("0.5,0.99,0.5", "quantile 0.5 is given twice"),
        ("median", "`median` is not a number"),
    ] {
        let args = [&["sensor", "--input", "in.jsonl", "--percentiles", value], SINKS].concat();
        refused(d, &args, &["--percentiles", why, form])?;
    }
    // The demo (no input options) refuses them too, before generating anything.
    refused(d, &["sensor", "--window", "sliding:1m/2m"], &["--window", "sliding:1m/2m"])?;
    refused(d, &["sensor", "--percentiles", "2"], &["--percentiles", "2"])?;
    Ok(())
}

#[test]
fn a_checkpoint_resumes_only_with_the_windows_it_was_taken_with() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::write(d.join("in.jsonl"), "{\"device\":\"a\",\"ts\":1,\"temp\":2.0}\n")?;
    let run =
        |window: &[&'static str]| [&["sensor", "--input", "in.jsonl", "--state", "state"], SINKS, window].concat();
    assert!(weir(d, &run(&["--window", "sliding:1m/10s"]))?.status.success());
    for (other, step) in [
        (&["--window", "tumbling:1m"][..], "sliding-60000ms-10000ms"),
        (&["--window", "sliding:1m/20s"][..], "sliding-60000ms-10000ms"),
        (&["--window", "sliding:1m/10s", "--percentiles", "0.5"][..], "sliding-60000ms-10000ms"),
    ] {
        refused(d, &run(other), &["the checkpoint has state of step", step])?;
    }
    Ok(())
}

#[test]
fn topic_names_that_escape_the_log_directory_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::create_dir(d.join("log"))?;
    for name in ["../escape", "a/b", "..", ".", "", "a\\b", "_hidden", ".dot"] {
        refused(d, &["topic", "create", name, "--partitions", "1", "--log-dir", "log"], &["topic"])?;
        refused(d, &[&["sensor", "--log-dir", "log", "--topic", name, "--bounded"], SINKS].concat(), &["topic"])?;
    }
    // NUL cannot be passed in an argument; the library refuses it.
    let err = weir::connectors::log::Topic::create(&d.join("log"), "a\0b", 1).expect_err("NUL in a topic name");
    assert!(err.to_string().contains("topic"), "{err}");
    Ok(())
}

#[test]
fn a_state_directory_of_a_newer_format_is_refused_untouched() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::write(d.join("in.jsonl"), "{\"device\":\"a\",\"ts\":1,\"temp\":2.0}\n")?;
    let args = [&["sensor", "--input", "in.jsonl", "--state", "state"], SINKS].concat();
    assert!(weir(d, &args)?.status.success());
    // Rewrite the newest manifest as format 99 (its checksum covers only the body).
    let chk = std::fs::read_dir(d.join("state"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("MANIFEST").exists())
        .max()
        .context("a checkpoint")?;
    let manifest = chk.join("MANIFEST");
    let text = std::fs::read_to_string(&manifest)?;
    let (header, body) = text.split_once('\n').context("header")?;
    let crc = header.rsplit(' ').next().context("crc")?;
    std::fs::write(&manifest, format!("WEIR-MANIFEST 99 {crc}\n{body}"))?;
    refused(d, &args, &["newer Weir", "format 99"])?;
    Ok(())
}
