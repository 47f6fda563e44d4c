//! The sensor-window pipeline on a real Kafka-protocol broker (tansu, started
//! by the test on 127.0.0.1 on a free port): exact output against the
//! reference, the broker group's committed offsets equal to the checkpoint's,
//! SIGKILL and restart with another worker count, the broker stopped and
//! started again mid-run, event time from the message timestamp, the
//! example's bounded run with `weir group describe`, a start timestamp, a
//! sink with a tiny producer queue, and the errors a user meets first.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use weir::connectors::kafka::{KafkaConfig, KafkaSource, KafkaTopic};
use weir::core::source::Source;
use weir::prelude::*;
use weir_testkit::kafka::{consume_all, create_topic, produce, produce_with_timestamps};
use weir_testkit::sensor::{self, Input, TimeFrom};
use weir_testkit::servers::Tansu;

const PARTITIONS: i32 = 4;

fn lines(data: &[u8]) -> Vec<&[u8]> {
    data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect()
}

fn generated(n: u64, seed: u64) -> anyhow::Result<Vec<u8>> {
    let mut data = Vec::new();
    sensor::generate(n, seed, 200, &mut data)?;
    Ok(data)
}

/// The group's committed offsets on the broker, and the topic's end offsets.
fn group_view(brokers: &str, group: &str, topic: &str) -> anyhow::Result<(BTreeMap<i32, i64>, BTreeMap<i32, i64>)> {
    let src = KafkaSource::new(KafkaConfig::new(brokers, group), topic)?;
    let committed = src.broker_committed()?;
    let ends = src.watermarks()?.into_iter().map(|(p, (_, high))| (p, high)).collect();
    Ok((committed, ends))
}

/// The group's committed offsets and the end offsets as kafka-python sees them
/// (`scripts/kafka_group_offsets.py`; the suite's test command installs kafka-python).
fn python_group_view(
    brokers: &str,
    group: &str,
    topic: &str,
) -> anyhow::Result<(BTreeMap<i32, i64>, BTreeMap<i32, i64>)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka_group_offsets.py");
    let out = Command::new("python3").arg(&script).args([brokers, group, topic]).output().context("running python3")?;
    ensure!(out.status.success(), "kafka_group_offsets.py: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let map = |k: &str| -> anyhow::Result<BTreeMap<i32, i64>> {
        let obj = v[k].as_object().context("not an object")?;
        obj.iter().map(|(p, o)| Ok((p.parse()?, o.as_i64().context("not an offset")?))).collect()
    };
    Ok((map("committed")?, map("end")?))
}

#[test]
fn a_kafka_topic_gives_the_reference_result_and_the_group_commits_the_checkpoint() -> anyhow::Result<()> {
    let broker = Tansu::start()?;
    let brokers = broker.brokers();
    create_topic(&brokers, "sensors", PARTITIONS)?;
    let data = generated(20_000, 7)?;
    produce(&brokers, "sensors", &lines(&data))?;
    let (expected, malformed) = sensor::reference(&data);

    let dir = tempfile::tempdir()?;
    let (out, dead, state) = (dir.path().join("out"), dir.path().join("dead"), dir.path().join("state"));
    let input = Input::Kafka { config: KafkaConfig::new(brokers.clone(), "agg"), topic: "sensors".into() };
    let (i, o, d) = (input.clone(), out.clone(), dead.clone());
    let summary = Pipeline::new("agg")
        .workers(2)
        .state(&state)
        .checkpoint_every(Duration::from_millis(100))
        .bounded(true)
        .run(move |p| sensor::build(p, &i, &o, &d))?;
    ensure!(summary.counter("records_in") == lines(&data).len() as u64, "read {}", summary.counter("records_in"));
    support::compare(&expected, &support::read_rows(&out)?)?;
    ensure!(support::read_dead_letters(&dead)?.len() as u64 == malformed, "dead letters");

    // Lag 0 for any Kafka client: the broker's group offsets are the end offsets.
    let (committed, ends) = group_view(&brokers, "agg", "sensors")?;
    ensure!(committed == ends, "group offsets {committed:?}, end offsets {ends:?}");
    // ...also seen by a client that is not librdkafka (kafka-python).
    let (py_committed, py_ends) = python_group_view(&brokers, "agg", "sensors")?;
    ensure!(py_committed == committed && py_ends == ends, "kafka-python sees {py_committed:?} / {py_ends:?}");

    // A rerun is complete and reads nothing; a run with another group is refused
    // by nothing but starts from the group's own (absent) offsets: earliest.
    let (i, o, d) = (input.clone(), out.clone(), dead.clone());
    let again =
        Pipeline::new("agg").workers(3).state(&state).bounded(true).run(move |p| sensor::build(p, &i, &o, &d))?;
    ensure!(again.already_complete, "the rerun was not complete");
    Ok(())
}

/// Window rows of a Kafka results topic, keyed by (device, window start), with
/// how many times each was delivered (at-least-once: a row may come twice,
/// always the same row).
type Rows = BTreeMap<(String, i64), sensor::WindowRow>;

fn kafka_rows(brokers: &str, topic: &str) -> anyhow::Result<(Rows, usize)> {
    let records = consume_all(brokers, topic)?;
    let mut rows = BTreeMap::new();
    for (key, value) in &records {
        let row: sensor::WindowRow = serde_json::from_slice(value).context("a results record is not a window row")?;
        ensure!(key.as_deref() == Some(row.device.as_bytes()), "record key {key:?} is not the row's device");
        if let Some(old) = rows.insert((row.device.to_string(), row.window_start), row.clone()) {
            ensure!(old == row, "two different rows for one window: {old:?} and {row:?}");
        }
    }
    Ok((rows, records.len()))
}

#[test]
fn results_and_dead_letters_go_to_kafka_topics_after_each_commit() -> anyhow::Result<()> {
    let broker = Tansu::start()?;
    let brokers = broker.brokers();
    create_topic(&brokers, "results", 3)?;
    create_topic(&brokers, "dlq", 1)?;
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.jsonl");
    let data = generated(20_000, 5)?;
    std::fs::write(&input, &data)?;
    let (expected, malformed) = sensor::reference(&data);
    ensure!(malformed > 0, "the generator made no malformed lines");

    let mut outputs = sensor::Outputs::dirs(&dir.path().join("out"), &dir.path().join("dead"));
    let cfg = KafkaConfig::new(brokers.clone(), "agg");
    outputs.kafka_results = Some(KafkaTopic::new(cfg.clone(), "results"));
    outputs.kafka_dead_letters = Some(KafkaTopic::new(cfg, "dlq"));
    let state = dir.path().join("state");
    let run = |workers: usize| {
        let (i, o) = (Input::File(input.clone()), outputs.clone());
        Pipeline::new("agg")
            .workers(workers)
            .state(&state)
            .checkpoint_every(Duration::from_millis(50))
            // About 20 epochs a worker, and sources stay within 2 epochs of
            // the commit: a busy machine cannot fold them into one or two commits.
            .epoch_records(500, 2)
            .epochs_in_flight(2)
            .bounded(true)
            .run(move |p| sensor::build_to(p, &i, &o))
    };
    let summary = run(2)?;
    ensure!(summary.commits.count > 2, "{} commits", summary.commits.count);
    // A crash-free run delivers each row exactly once, keyed by device.
    let (rows, delivered) = kafka_rows(&brokers, "results")?;
    support::compare(&expected, &rows)?;
    ensure!(delivered == expected.len(), "{delivered} records for {} rows", expected.len());
    let dead = consume_all(&brokers, "dlq")?;
    ensure!(dead.len() as u64 == malformed, "{} dead letters on Kafka, expected {malformed}", dead.len());
    for (_, v) in &dead {
        let d: serde_json::Value = serde_json::from_slice(v)?;
        ensure!(d["stage"] == "decode" && d["error"].is_string() && d["payload"].is_string(), "dead letter {d}");
    }
    // Nothing is left in the outboxes, and a rerun of the complete run delivers nothing again.
    let outbox = state.join("outbox");
    for entry in std::fs::read_dir(&outbox)? {
        let left: Vec<_> = std::fs::read_dir(entry?.path())?
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('_'))
            .collect();
        ensure!(left.is_empty(), "undelivered outbox files: {left:?}");
    }
    ensure!(run(3)?.already_complete, "the rerun was not complete");
    ensure!(consume_all(&brokers, "results")?.len() == expected.len(), "the rerun delivered again");

    // A missing topic is an error at startup naming it.
    let mut bad = outputs.clone();
    bad.kafka_results = Some(KafkaTopic::new(KafkaConfig::new(brokers.clone(), "agg"), "no-such-topic"));
    let (i, o) = (Input::File(input.clone()), bad);
    let err = Pipeline::new("other").workers(1).bounded(true).run(move |p| sensor::build_to(p, &i, &o)).err();
    let msg = err.map(|e| e.to_string()).unwrap_or_default();
    ensure!(msg.contains("no-such-topic"), "{msg}");
    Ok(())
}

/// `data` with every `"ts":N` replaced by `"ts":N+by` (lines without one unchanged).
fn shift_ts(data: &[u8], by: i64) -> Vec<u8> {
    const KEY: &[u8] = b"\"ts\":";
    let mut out = Vec::with_capacity(data.len() + data.len() / 16);
    for line in data.split_inclusive(|&b| b == b'\n') {
        let Some(start) = line.windows(KEY.len()).position(|w| w == KEY).map(|at| at + KEY.len()) else {
            out.extend_from_slice(line);
            continue;
        };
        let len = line[start..].iter().take_while(|b| b.is_ascii_digit()).count();
        match std::str::from_utf8(&line[start..start + len]).ok().and_then(|s| s.parse::<i64>().ok()) {
            Some(ts) => {
                out.extend_from_slice(&line[..start]);
                out.extend_from_slice((ts + by).to_string().as_bytes());
                out.extend_from_slice(&line[start + len..]);
            }
            None => out.extend_from_slice(line),
        }
    }
    out
}

/// With message-timestamp event time the windows follow the messages'
/// timestamps, not the payload: each valid line's message is stamped with its
/// `ts` plus an hour, and the output is exactly the reference's for the same
/// lines with `ts` shifted by that hour (the payload's windows would not match).
#[test]
fn message_timestamps_are_the_event_times_when_asked_for() -> anyhow::Result<()> {
    const SHIFT: i64 = 3_600_000;
    let broker = Tansu::start()?;
    let brokers = broker.brokers();
    create_topic(&brokers, "stamped", PARTITIONS)?;
    let data = generated(20_000, 13)?;
    let all = lines(&data);
    // A malformed line (a decode dead letter whatever its time) gets the previous line's timestamp.
    let mut last = 1_700_000_000_000 + SHIFT;
    let stamps: Vec<i64> = all
        .iter()
        .map(|line| {
            if let Ok(r) = serde_json::from_slice::<sensor::Reading>(line) {
                last = r.ts + SHIFT;
            }
            last
        })
        .collect();
    produce_with_timestamps(&brokers, "stamped", &all, &stamps)?;
    let (expected, malformed) = sensor::reference(&shift_ts(&data, SHIFT));
    let (by_payload, _) = sensor::reference(&data);
    ensure!(expected.keys().all(|k| !by_payload.contains_key(k)), "the shift must move every window");

    let dir = tempfile::tempdir()?;
    let (out, dead) = (dir.path().join("out"), dir.path().join("dead"));
    let input = Input::Kafka { config: KafkaConfig::new(brokers.clone(), "stamped"), topic: "stamped".into() };
    let outputs = sensor::Outputs::dirs(&out, &dead);
    let summary = Pipeline::new("stamped")
        .workers(2)
        .bounded(true)
        .run(move |p| sensor::build_with(p, &input, &outputs, TimeFrom::MessageTimestamp.into()))?;
    ensure!(summary.counter("records_in") == all.len() as u64, "read {}", summary.counter("records_in"));
    support::compare(&expected, &support::read_rows(&out)?)?;
    let dead = support::read_dead_letters(&dead)?;
    ensure!(dead.len() as u64 == malformed, "{} dead letters, expected {malformed}", dead.len());
    Ok(())
}

#[test]
fn without_a_checkpoint_the_group_offsets_are_the_start() -> anyhow::Result<()> {
    let broker = Tansu::start()?;
    let brokers = broker.brokers();
    create_topic(&brokers, "s", 2)?;
    let data = generated(2_000, 3)?;
    let all = lines(&data);
    produce(&brokers, "s", &all)?;
    // The group has committed offsets; `committed` (the default) starts there, `earliest` at 0.
    let src = KafkaSource::new(KafkaConfig::new(brokers.clone(), "g"), "s")?;
    let ends: BTreeMap<u32, u64> = src.partitions()?.iter().map(|s| (s.id, s.end)).collect();
    let half: BTreeMap<u32, u64> = ends.iter().map(|(&p, &e)| (p, e / 2)).collect();
    src.on_committed(&half, true)?;
    let starts: BTreeMap<u32, u64> = src.partitions()?.iter().map(|s| (s.id, s.start)).collect();
    ensure!(starts == half, "committed start {starts:?}, expected {half:?}");
    let earliest = KafkaSource::new(
        KafkaConfig::new(brokers.clone(), "g").start(weir::connectors::kafka::StartPosition::Earliest),
        "s",
    )?;
    ensure!(earliest.partitions()?.iter().all(|s| s.start == 0), "earliest");
    let latest = KafkaSource::new(
        KafkaConfig::new(brokers.clone(), "g").start(weir::connectors::kafka::StartPosition::Latest),
        "s",
    )?;
    ensure!(latest.partitions()?.iter().all(|s| s.start == ends[&s.id]), "latest");
    let fresh = KafkaSource::new(KafkaConfig::new(brokers.clone(), "never-committed"), "s")?;
    ensure!(fresh.partitions()?.iter().all(|s| s.start == 0), "a group that never committed starts at earliest");
    Ok(())
}

/// Discovery through the source's metadata seam (the broker cannot add
/// partitions, so the pipeline-level test is `tests/discovery.rs`): what the
/// broker has beyond the known partitions, each from its earliest offset.
#[test]
fn discovery_reports_partitions_the_run_does_not_know() -> anyhow::Result<()> {
    let broker = Tansu::start()?;
    let brokers = broker.brokers();
    create_topic(&brokers, "d", 3)?;
    let src = KafkaSource::new(KafkaConfig::new(brokers.clone(), "g"), "d")?;
    ensure!(src.discovers_partitions());
    let found: Vec<u32> = src.discover(&[0])?.iter().map(|s| s.id).collect();
    ensure!(found == vec![1, 2], "{found:?}");
    ensure!(src.discover(&[0, 1, 2])?.is_empty());
    Ok(())
}

#[test]
fn a_missing_topic_and_an_offset_the_broker_lacks_are_clear_errors() -> anyhow::Result<()> {
    let broker = Tansu::start()?;
    let brokers = broker.brokers();
    let err = KafkaSource::new(KafkaConfig::new(brokers.clone(), "g"), "nope")?.partitions().err();
    let msg = err.map(|e| e.to_string()).unwrap_or_default();
    ensure!(msg.contains("`nope`") && msg.contains("does not exist"), "{msg}");

    create_topic(&brokers, "t", 1)?;
    produce(&brokers, "t", &[b"{}".as_slice(); 3])?;
    let src = KafkaSource::new(KafkaConfig::new(brokers.clone(), "g"), "t")?;
    let msg = src.open(0, 10, None).err().map(|e| e.to_string()).unwrap_or_default();
    ensure!(msg.contains("offset 10") && msg.contains("`t`") && msg.contains("0 to 3"), "{msg}");
    Ok(())
}

fn spawn(brokers: &str, dir: &Path, workers: usize) -> anyhow::Result<Child> {
    let child = weir_testkit::sensor::example()?
        .args(["--brokers", brokers, "--topic", "sensors", "--group", "live"])
        .arg("--output")
        .arg(dir.join("out"))
        .arg("--dead-letter")
        .arg(dir.join("dead"))
        .arg("--state")
        .arg(dir.join("state"))
        .args(["--workers", &workers.to_string(), "--checkpoint-interval", "100ms"])
        .args(["--kafka-option", "reconnect.backoff.max.ms=200", "--kafka-results", "results"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("stderr-{workers}.log")))?)
        .spawn()?;
    Ok(child)
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out waiting for {what}")
}

/// An unbounded pipeline process survives the broker going away for seconds
/// and a SIGKILL with a restart on another worker count; the output is exactly
/// the reference's, and the group's broker offsets follow the checkpoints.
#[test]
fn an_unbounded_run_survives_a_broker_outage_and_a_kill() -> anyhow::Result<()> {
    let mut broker = Tansu::start()?;
    let brokers = broker.brokers();
    create_topic(&brokers, "sensors", PARTITIONS)?;
    create_topic(&brokers, "results", 2)?;
    let data = generated(30_000, 11)?;
    let all = lines(&data);
    let (first, second) = all.split_at(all.len() / 2);
    produce(&brokers, "sensors", first)?;

    let dir = tempfile::tempdir()?;
    let mut child = spawn(&brokers, dir.path(), 2)?;
    let consumed = |brokers: &str| -> anyhow::Result<i64> {
        let (committed, _) = group_view(brokers, "live", "sensors")?;
        Ok(committed.values().sum())
    };
    wait_until("the first half in a broker commit", Duration::from_secs(60), || {
        Ok(consumed(&brokers)? as usize >= first.len())
    })?;

    // The broker goes away for three seconds; the pipeline waits and reconnects.
    broker.stop();
    std::thread::sleep(Duration::from_secs(3));
    ensure!(child.try_wait()?.is_none(), "the pipeline exited while the broker was away");
    broker.resume()?;
    produce(&brokers, "sensors", &second[..second.len() / 2])?;

    // SIGKILL mid-stream (once a checkpoint holds some of the new records), restart with 3 workers.
    wait_until("new records in a broker commit", Duration::from_secs(60), || {
        Ok(consumed(&brokers)? as usize > first.len())
    })?;
    child.kill()?;
    child.wait()?;
    let mut child = spawn(&brokers, dir.path(), 3)?;
    produce(&brokers, "sensors", &second[second.len() / 2..])?;
    // One far-future reading per partition closes every real window.
    let flush: Vec<Vec<u8>> = (0..PARTITIONS)
        .map(|p| format!(r#"{{"device":"zz-flush-{p}","ts":1800000000000,"temp":20.0}}"#).into_bytes())
        .collect();
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create()?;
    for (p, line) in flush.iter().enumerate() {
        producer.send(BaseRecord::<(), [u8]>::to("sensors").payload(line).partition(p as i32)).map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(10))?;

    let (expected, malformed) = sensor::reference(&data);
    let total = all.len() as i64 + i64::from(PARTITIONS);
    wait_until("every record in a broker commit", Duration::from_secs(90), || Ok(consumed(&brokers)? >= total))?;
    // Committed offsets are the checkpoint's: its output is published.
    let out = dir.path().join("out");
    wait_until("the reference's rows", Duration::from_secs(30), || {
        Ok(support::read_rows(&out).map(|r| r.len()).unwrap_or(0) >= expected.len())
    })?;
    // Every row reaches the results topic too, after its checkpoint (at-least-once
    // across the kill: a row may come twice, never two different rows for a window).
    wait_until("the reference's rows on Kafka", Duration::from_secs(60), || {
        Ok(kafka_rows(&brokers, "results")?.0.len() >= expected.len())
    })?;
    child.kill()?;
    child.wait()?;
    support::compare(&expected, &support::read_rows(&out)?)?;
    let (on_kafka, delivered) = kafka_rows(&brokers, "results")?;
    support::compare(&expected, &on_kafka)?;
    eprintln!("results topic: {delivered} records for {} rows", expected.len());
    let dead = support::read_dead_letters(&dir.path().join("dead"))?;
    ensure!(dead.len() as u64 == malformed, "{} dead letters, expected {malformed}", dead.len());
    let (committed, ends) = group_view(&brokers, "live", "sensors")?;
    ensure!(committed == ends, "group offsets {committed:?}, end offsets {ends:?}");
    // ...and the checkpoint's, partition by partition.
    let manifest = weir::core::checkpoint::store::read_latest(&dir.path().join("state"))?.context("no checkpoint")?;
    let checkpoint: BTreeMap<i32, i64> =
        manifest.offsets["sensors"].iter().map(|(&p, &o)| (p as i32, o as i64)).collect();
    ensure!(checkpoint == committed, "checkpoint offsets {checkpoint:?}, group offsets {committed:?}");
    Ok(())
}

/// A row of `weir group describe` for a Kafka topic: checkpoint offset, the
/// broker group's committed offset (`-` when never committed), end offset, lag.
type DescribeRow = (u64, String, u64, u64);

/// `weir group describe G --brokers ... --topic T`: its output, and its rows by partition.
fn describe_kafka_group(
    group: &str,
    state: &Path,
    brokers: &str,
    topic: &str,
) -> anyhow::Result<(String, BTreeMap<i32, DescribeRow>)> {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["group", "describe", group, "--brokers", brokers, "--topic", topic, "--state"])
        .arg(state)
        .output()
        .context("running weir group describe")?;
    let text = String::from_utf8(out.stdout)?;
    ensure!(out.status.success(), "weir group describe: {}", String::from_utf8_lossy(&out.stderr));
    let mut rows = BTreeMap::new();
    // A title line, a header line, then `TOPIC PARTITION CHECKPOINT BROKER END LAG`.
    for line in text.lines().skip(2) {
        let f: Vec<&str> = line.split_whitespace().collect();
        ensure!(f.len() == 6 && f[0] == topic, "not a partition row: {line:?} in\n{text}");
        rows.insert(f[1].parse()?, (f[2].parse()?, f[3].to_string(), f[4].parse()?, f[5].parse()?));
    }
    Ok((text, rows))
}

/// The example's bounded Kafka path, as a user runs it: the output is the
/// reference's, the broker's group offsets are the end offsets (lag 0), and
/// `weir group describe` shows per partition the checkpoint's offset, the
/// broker's committed offset and the end offset, all equal, and lag 0.
#[test]
fn the_example_reads_a_kafka_topic_to_its_end_and_group_describe_shows_lag_0() -> anyhow::Result<()> {
    let broker = Tansu::start()?;
    let brokers = broker.brokers();
    create_topic(&brokers, "sensors", PARTITIONS)?;
    let data = generated(20_000, 17)?;
    produce(&brokers, "sensors", &lines(&data))?;
    let (expected, malformed) = sensor::reference(&data);

    let dir = tempfile::tempdir()?;
    let (out, dead, state) = (dir.path().join("out"), dir.path().join("dead"), dir.path().join("state"));
    let run = weir_testkit::sensor::example()?
        .args(["--brokers", &brokers, "--topic", "sensors", "--group", "bounded-g", "--bounded"])
        .arg("--output")
        .arg(&out)
        .arg("--dead-letter")
        .arg(&dead)
        .arg("--state")
        .arg(&state)
        .args(["--workers", "2", "--checkpoint-interval", "100ms"])
        .env("RUST_LOG", "warn")
        .output()?;
    ensure!(run.status.success(), "the example failed: {}", String::from_utf8_lossy(&run.stderr));
    support::compare(&expected, &support::read_rows(&out)?)?;
    ensure!(support::read_dead_letters(&dead)?.len() as u64 == malformed, "dead letters");
    let (committed, ends) = group_view(&brokers, "bounded-g", "sensors")?;
    ensure!(committed == ends, "group offsets {committed:?}, end offsets {ends:?}");
    ensure!(ends.len() == PARTITIONS as usize && ends.values().sum::<i64>() == lines(&data).len() as i64);

    let (text, rows) = describe_kafka_group("bounded-g", &state, &brokers, "sensors")?;
    ensure!(text.lines().next().is_some_and(|l| l.contains("(complete)")), "{text}");
    ensure!(rows.len() == ends.len(), "{} partition rows for {} partitions:\n{text}", rows.len(), ends.len());
    for (p, &end) in &ends {
        let end = end as u64;
        let row = rows.get(p).with_context(|| format!("no row for partition {p}:\n{text}"))?;
        ensure!(*row == (end, end.to_string(), end, 0), "partition {p}: {row:?}, end offset {end}:\n{text}");
    }
    // Another group's name is refused, naming the group the state belongs to.
    let other = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["group", "describe", "other", "--brokers", &brokers, "--topic", "sensors", "--state"])
        .arg(&state)
        .output()?;
    let msg = String::from_utf8_lossy(&other.stderr);
    ensure!(!other.status.success() && msg.contains("`bounded-g`"), "{msg}");
    Ok(())
}

/// `--start-from timestamp:MS` is resolved on the broker to each partition's
/// first record stamped at or after MS: with message timestamps increasing
/// along the topic, a run reads exactly the records from a cut in the middle.
#[test]
fn a_start_timestamp_reads_only_the_records_stamped_at_or_after_it() -> anyhow::Result<()> {
    let broker = Tansu::start()?;
    let brokers = broker.brokers();
    create_topic(&brokers, "stamped", PARTITIONS)?;
    let data = generated(10_000, 19)?;
    let all = lines(&data);
    // Each message stamped with its payload's `ts` (increasing along the
    // input), a malformed line with the previous one's.
    let mut last = 1_700_000_000_000;
    let stamps: Vec<i64> = all
        .iter()
        .map(|line| {
            if let Ok(r) = serde_json::from_slice::<sensor::Reading>(line) {
                last = r.ts;
            }
            last
        })
        .collect();
    produce_with_timestamps(&brokers, "stamped", &all, &stamps)?;
    // The cut: a line in the middle with a stamp of its own.
    let cut = (all.len() / 2..all.len()).find(|&i| stamps[i] > stamps[i - 1]).context("no cut")?;
    let from = stamps[cut];
    let tail: Vec<u8> = all[cut..].iter().flat_map(|l| l.iter().copied().chain([b'\n'])).collect();
    let (expected, malformed) = sensor::reference(&tail);

    let config =
        KafkaConfig::new(brokers.clone(), "from-ts").start(weir::connectors::kafka::StartPosition::Timestamp(from));
    let starts: u64 = KafkaSource::new(config.clone(), "stamped")?.partitions()?.iter().map(|s| s.end - s.start).sum();
    ensure!(
        starts == (all.len() - cut) as u64,
        "{starts} records after the start offsets, expected {}",
        all.len() - cut
    );

    let dir = tempfile::tempdir()?;
    let (out, dead) = (dir.path().join("out"), dir.path().join("dead"));
    let input = Input::Kafka { config, topic: "stamped".into() };
    let summary =
        Pipeline::new("from-ts").workers(2).bounded(true).run(move |p| sensor::build(p, &input, &out, &dead))?;
    ensure!(summary.counter("records_in") == (all.len() - cut) as u64, "read {}", summary.counter("records_in"));
    support::compare(&expected, &support::read_rows(&dir.path().join("out"))?)?;
    let dead = support::read_dead_letters(&dir.path().join("dead"))?;
    ensure!(dead.len() as u64 == malformed, "{} dead letters, expected {malformed}", dead.len());
    Ok(())
}

/// A producer queue far smaller than a checkpoint's rows
/// (`queue.buffering.max.messages=5`): the sink waits for room on every
/// `QueueFull` instead of failing or dropping rows, and each row arrives
/// exactly once, as with the default queue.
#[test]
fn a_tiny_producer_queue_delays_the_kafka_sink_but_loses_no_row() -> anyhow::Result<()> {
    let broker = Tansu::start()?;
    let brokers = broker.brokers();
    create_topic(&brokers, "results", 3)?;
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.jsonl");
    let data = generated(20_000, 23)?;
    std::fs::write(&input, &data)?;
    let (expected, _) = sensor::reference(&data);
    ensure!(expected.len() > 50, "only {} rows: the queue would not fill", expected.len());

    let mut outputs = sensor::Outputs::dirs(&dir.path().join("out"), &dir.path().join("dead"));
    let cfg = KafkaConfig::new(brokers.clone(), "tiny-queue").option("queue.buffering.max.messages", "5");
    outputs.kafka_results = Some(KafkaTopic::new(cfg, "results"));
    let (i, o) = (Input::File(input), outputs);
    Pipeline::new("tiny-queue")
        .workers(2)
        .state(dir.path().join("state"))
        .bounded(true)
        .run(move |p| sensor::build_to(p, &i, &o))?;
    let (rows, delivered) = kafka_rows(&brokers, "results")?;
    support::compare(&expected, &rows)?;
    ensure!(delivered == expected.len(), "{delivered} records for {} rows", expected.len());
    Ok(())
}
