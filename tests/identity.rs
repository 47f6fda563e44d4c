//! A checkpoint belongs to one pipeline and one input: what every start
//! checks, and what a refused or already-complete start leaves untouched.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use serde::{Deserialize, Serialize, Serializer};
use weir::connectors::log::{LogConfig, Producer, Topic};
use weir::prelude::*;
use weir_testkit::sensor::{generate, reference};

/// Every file under `dir` with its size and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                out.insert(path.clone(), (0, SystemTime::UNIX_EPOCH));
                stack.push(path);
            } else {
                out.insert(path, (meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
            }
        }
    }
    out
}

fn sensor(dir: &Path, args: &[&str]) -> anyhow::Result<Output> {
    weir_testkit::sensor::example()?
        .args(args)
        .env("RUST_LOG", "error")
        .current_dir(dir)
        .output()
        .context("spawning the sensor example")
}

fn ok(out: Output) -> anyhow::Result<String> {
    anyhow::ensure!(out.status.success(), "run failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn input(n: u64, seed: u64) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    generate(n, seed, 50, &mut buf)?;
    Ok(buf)
}

const OUT: &[&str] = &["--output", "out", "--dead-letter", "dlq", "--state", "state"];

#[test]
fn a_path_spelled_differently_is_the_same_input_and_a_complete_rerun_writes_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = input(20_000, 3)?;
    std::fs::write(dir.path().join("in.jsonl"), &data)?;
    ok(sensor(dir.path(), &[&["--input", "in.jsonl", "--workers", "2"], OUT].concat())?)?;
    let (expected, _) = reference(&data);
    support::compare(&expected, &support::read_rows(&dir.path().join("out"))?)?;
    let before = snapshot(dir.path());
    // Another spelling of the path, another worker count: complete, nothing written.
    let stdout = ok(sensor(dir.path(), &[&["--input", "./in.jsonl", "--workers", "3"], OUT].concat())?)?;
    assert!(stdout.contains("already complete"), "{stdout}");
    // From another working directory, with absolute paths.
    let abs = |p: &str| dir.path().join(p).display().to_string();
    let elsewhere = tempfile::tempdir()?;
    let args =
        ["--input", &abs("in.jsonl"), "--output", &abs("out"), "--dead-letter", &abs("dlq"), "--state", &abs("state")];
    let stdout = ok(sensor(elsewhere.path(), &args)?)?;
    assert!(stdout.contains("already complete"), "{stdout}");
    assert_eq!(snapshot(dir.path()), before, "a rerun of a complete run changed files");
    assert!(snapshot(elsewhere.path()).is_empty());
    Ok(())
}

#[test]
fn a_complete_checkpoint_with_another_input_is_refused_and_nothing_is_written() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("a.jsonl"), input(5_000, 1)?)?;
    std::fs::write(dir.path().join("b.jsonl"), input(5_000, 2)?)?;
    ok(sensor(dir.path(), &[&["--input", "a.jsonl"], OUT].concat())?)?;
    let before = snapshot(dir.path());
    let out = sensor(dir.path(), &[&["--input", "b.jsonl"], OUT].concat())?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a.jsonl") && err.contains("b.jsonl"), "the error must name both inputs: {err}");
    assert_eq!(snapshot(dir.path()), before, "a refused run changed files");
    // The same input changed in place is refused too.
    std::fs::write(dir.path().join("a.jsonl"), input(5_001, 1)?)?;
    let out = sensor(dir.path(), &[&["--input", "a.jsonl"], OUT].concat())?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not the input the checkpoint was taken on"));
    // Another group on the same state directory.
    let out = sensor(dir.path(), &[&["--input", "b.jsonl", "--group", "other"], OUT].concat())?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("belongs to pipeline (group) `sensor-aggregation`"));
    Ok(())
}

#[test]
fn a_bounded_log_restore_refuses_a_log_that_lost_records() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = input(10_000, 4)?;
    let topic = Topic::create(&dir.path().join("log"), "sensors", 3)?;
    let mut producer = Producer::new(&topic, LogConfig::default())?;
    for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        producer.send(line.split(|&b| b == b'"').nth(3), line)?;
    }
    producer.flush()?;
    drop(producer);
    let args = [&["--log-dir", "log", "--topic", "sensors", "--bounded"], OUT].concat();
    ok(sensor(dir.path(), &args)?)?;
    // Lose partition 1's records (as an unsynced tail would): empty its segments.
    let p1 = dir.path().join("log/sensors/p-00001");
    for e in std::fs::read_dir(&p1)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".log") || name.ends_with(".index") {
            std::fs::OpenOptions::new().write(true).open(e.path())?.set_len(0)?;
        }
    }
    let started = Instant::now();
    let out = sensor(dir.path(), &args)?;
    assert!(started.elapsed() < Duration::from_secs(60), "the run must not wait for lost records");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("partition 1") && err.contains("records were lost"), "{err}");
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
struct Row {
    id: i64,
    name: String,
}

/// Rows with a negative id serialize their id as a string: not what the
/// Parquet schema (traced from `Deserialize`: Int64) accepts.
impl Serialize for Row {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Row", 2)?;
        if self.id < 0 {
            st.serialize_field("id", &format!("bad{}", self.id))?;
        } else {
            st.serialize_field("id", &self.id)?;
        }
        st.serialize_field("name", &self.name)?;
        st.end()
    }
}

#[test]
fn rows_a_sink_cannot_encode_are_dead_letters_not_a_poison_pill() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut text = String::new();
    for i in 0..2_000i64 {
        let id = if i % 97 == 5 { -i } else { i };
        text.push_str(&format!("{{\"id\":{id},\"name\":\"n{i}\"}}\n"));
    }
    // One row with a string longer than a Parquet value may be.
    text.push_str(&format!("{{\"id\":7777,\"name\":\"{}\"}}\n", "x".repeat(65 << 20)));
    let path = dir.path().join("in.jsonl");
    std::fs::write(&path, &text)?;
    let run = |workers: usize| {
        let (path, out, dlq) = (path.clone(), dir.path().join("out"), dir.path().join("dlq"));
        Pipeline::new("rows").workers(workers).state(dir.path().join("state")).epoch_records(300, 2).run(move |p| {
            p.source(LinesFile::with_split_bytes(&path, 8192)?.with_max_record_bytes(128 << 20)?)?
                .decode::<Row>(Json)
                .sink(Parquet::dir(&out))?;
            p.dead_letters().sink(DeadLetters::dir(&dlq))
        })
    };
    let summary = run(2)?;
    let bad = (0..2_000i64).filter(|i| i % 97 == 5).count() as u64 + 1;
    assert_eq!(summary.counter("dead_letters.sink"), bad);
    let dead = support::read_dead_letters(&dir.path().join("dlq"))?;
    assert_eq!(dead.len() as u64, bad);
    for d in &dead {
        assert_eq!(d["stage"], "sink");
        assert!(d["error"].as_str().is_some_and(|e| e.contains("Parquet")), "{d}");
    }
    let mut good = 0;
    for f in support::visible_files(&dir.path().join("out"))? {
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f)?)?.build()?;
        for b in reader {
            good += b?.num_rows();
        }
    }
    assert_eq!(good as u64, 2_001 - bad);
    // The restart of the complete run does not hit the rows again.
    assert!(run(1)?.already_complete);
    Ok(())
}

#[test]
fn a_checkpoint_with_a_step_the_pipeline_lacks_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = input(3_000, 9)?;
    let path = dir.path().join("in.jsonl");
    std::fs::write(&path, &data)?;
    let (p, out, dlq) = (path.clone(), dir.path().join("out"), dir.path().join("dlq"));
    Pipeline::new("steps").state(dir.path().join("state")).epoch_records(500, 2).run(move |pf| {
        weir_testkit::sensor::aggregate(pf.source(LinesFile::open(&p)?)?, Parquet::dir(&out))?;
        pf.dead_letters().sink(DeadLetters::dir(&dlq))
    })?;
    // The same input, without the window: the checkpoint's window state has no step.
    let (p, out2, dlq) = (path.clone(), dir.path().join("out2"), dir.path().join("dlq"));
    let err = Pipeline::new("steps")
        .state(dir.path().join("state"))
        .epoch_records(500, 2)
        .run(move |pf| {
            pf.source(LinesFile::open(&p)?)?.decode::<weir_testkit::sensor::Reading>(Json).sink(Parquet::dir(&out2))?;
            pf.dead_letters().sink(DeadLetters::dir(&dlq))
        })
        .expect_err("a pipeline without the checkpoint's window must be refused");
    assert!(err.to_string().contains("`window`"), "{err}");
    assert!(!dir.path().join("out2").exists(), "a refused run created its output directory");
    Ok(())
}

#[test]
fn a_panic_on_one_worker_of_three_stops_the_run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("in.jsonl");
    std::fs::write(&path, input(50_000, 5)?)?;
    let started = Instant::now();
    let (p, out, dlq) = (path.clone(), dir.path().join("out"), dir.path().join("dlq"));
    let result = Pipeline::new("panics").workers(3).run(move |pf| {
        let worker = pf.ctx().worker();
        pf.source(LinesFile::with_split_bytes(&p, 64 << 10)?)?
            .decode::<weir_testkit::sensor::Reading>(Json)
            .map(move |r| {
                if worker == 1 && r.temp > 20.0 {
                    panic!("boom on worker 1");
                }
                r
            })
            .sink(Parquet::dir(&out))?;
        pf.dead_letters().sink(DeadLetters::dir(&dlq))
    });
    let err = result.expect_err("a panic must fail the run");
    assert!(err.to_string().contains("boom on worker 1"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    Ok(())
}

/// An unbounded run on a log with an empty partition: after `idle_timeout` the
/// empty partition stops holding the watermark, so windows fire and commit;
/// with record-counted epochs, the worker that owns only the empty partition
/// still closes epochs, so checkpoints go on. Every row written is exact.
#[test]
fn an_empty_partition_does_not_stop_windows_forever() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = input(30_000, 8)?;
    let topic = Topic::create(&dir.path().join("log"), "sensors", 3)?;
    let mut writers: Vec<_> = (0..2).map(|p| topic.writer(p, LogConfig::default())).collect::<Result<_, _>>()?;
    let mut newest = [i64::MIN; 2];
    for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        // Partition by device; partition 2 stays empty.
        let key = line.split(|&b| b == b'"').nth(3).unwrap_or_default();
        let p = (weir::core::keygroup::stable_hash(key) % 2) as usize;
        writers[p].append(&[line])?;
        if let Ok(r) = serde_json::from_slice::<weir_testkit::sensor::Reading>(line) {
            newest[p] = newest[p].max(r.ts);
        }
    }
    for w in &mut writers {
        w.sync()?;
    }
    drop(writers);
    let mut child = weir_testkit::sensor::example()?
        .args(["--log-dir", "log", "--topic", "sensors", "--workers", "2", "--assignor", "range"])
        .args(["--idle-timeout", "300ms"])
        .args(OUT)
        .env("WEIR_EPOCH_RECORDS", "1000")
        .env("RUST_LOG", "error")
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let (expected, _) = reference(&data);
    // An unbounded run fires the windows that end at or below the watermark
    // (the least newest event time of the partitions with data, minus 2 s).
    let watermark = newest[0].min(newest[1]) - 2_000;
    let fireable = expected.keys().filter(|(_, start)| start + 60_000 <= watermark).count();
    assert!(fireable > 0);
    let started = Instant::now();
    let mut rows = BTreeMap::new();
    while started.elapsed() < Duration::from_secs(60) {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the unbounded run exited: {status}");
        }
        rows = support::read_rows(&dir.path().join("out")).unwrap_or_default();
        if rows.len() >= fireable {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill()?;
    child.wait()?;
    assert_eq!(rows.len(), fireable, "windows fired");
    for (k, row) in &rows {
        let e = expected.get(k).with_context(|| format!("unexpected row {k:?}"))?;
        assert_eq!((e.count, e.min.to_bits(), e.max.to_bits()), (row.count, row.min.to_bits(), row.max.to_bits()));
    }
    Ok(())
}

/// Dead letters of later stages carry the record's original input bytes, not
/// the value written out again (`21.50` stays `21.50`, key order and spaces stay).
#[test]
fn late_and_try_map_dead_letters_carry_the_original_bytes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut lines = Vec::new();
    for i in 0..400i64 {
        lines.push(format!("{{\"device\":\"d{}\",\"ts\":{},\"temp\":21.50}}", i % 3, 1_700_000_000_000 + i * 1000));
    }
    // Late: far behind the watermark once the lines before it were read (inside
    // the last split, past the part read first to learn where each split starts).
    lines.insert(380, "{ \"temp\": 1.250, \"ts\": 1699999000000, \"device\": \"d1\" }".to_string());
    // Rejected by the try_map stage below.
    lines.insert(381, "{\"device\":\"reject-me\",\"ts\":1700000400000,\"temp\":3.10}".to_string());
    let text = lines.join("\n") + "\n";
    let path = dir.path().join("in.jsonl");
    std::fs::write(&path, &text)?;
    let (p, out, dlq) = (path.clone(), dir.path().join("out"), dir.path().join("dlq"));
    let summary =
        Pipeline::new("bytes").epoch_records(50, 2).state(dir.path().join("state")).run(move |pf| {
            pf.source(LinesFile::with_split_bytes(&p, 4000)?)?
                .decode::<weir_testkit::sensor::Reading>(Json)
                .try_map("validate", |r: &weir_testkit::sensor::Reading| {
                    if r.device.as_str() == "reject-me" { Err("rejected device") } else { Ok(r.clone()) }
                })
                .event_time(|r| r.ts, Duration::from_secs(2))?
                .key_by(|r| r.device.clone())
                .window(Tumbling::minutes(1))
                .aggregate(Count)?
                .map(|w| (w.key.to_string(), w.start, w.value))
                .sink(Parquet::dir(&out))?;
            pf.dead_letters().sink(DeadLetters::dir(&dlq))
        })?;
    assert_eq!(summary.counter("dead_letters.late"), 1);
    let dead = support::read_dead_letters(&dir.path().join("dlq"))?;
    let by_stage: BTreeMap<String, String> = dead
        .iter()
        .map(|d| (d["stage"].as_str().unwrap_or("").to_string(), d["payload"].as_str().unwrap_or("").to_string()))
        .collect();
    assert_eq!(by_stage.get("late"), Some(&lines[380]), "{dead:?}");
    assert_eq!(by_stage.get("validate"), Some(&lines[381]), "{dead:?}");
    Ok(())
}
