//! The pipeline against a plain reference on randomized inputs: disorder
//! within the allowed delay, malformed and empty lines, bytes that are not
//! UTF-8, a last line without `\n`, any split size, worker count, epoch
//! length and checkpoint schedule. Output must equal the reference exactly.

mod support;

use std::path::Path;
use std::time::Duration;

use weir::prelude::*;
use weir_testkit::sensor::{Reading, SplitMix, WindowRow, reference};

fn random_input(rng: &mut SplitMix, lines: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let devices = 1 + rng.below(40);
    let mut ts: i64 = 1_700_000_000_000 + rng.below(100_000) as i64;
    for i in 0..lines {
        ts += rng.below(300) as i64;
        // Disorder within the 2 s allowed delay: never late.
        let jitter = rng.below(1_900) as i64;
        let t = ts - jitter;
        let temp = match rng.below(50) {
            0 => 999.0,
            1 => -50.0,
            2 => 150.0,
            _ => (rng.unit() * 8000.0).round() / 100.0 - 20.0,
        };
        let line: Vec<u8> = match rng.below(40) {
            0 => b"{\"device\":\"dev-1\",\"ts\":".to_vec(),
            1 => Vec::new(),
            2 => vec![0xff, 0xfe, b'{', 0x80],
            3 => format!("{{\"device\":\"dev-{}\",\"ts\":1.5,\"temp\":3}}", rng.below(devices)).into_bytes(),
            4 => format!("[{t}]").into_bytes(),
            _ => format!("{{\"device\":\"dev-{}\",\"ts\":{t},\"temp\":{temp:?},\"hum\":1}}", rng.below(devices))
                .into_bytes(),
        };
        out.extend_from_slice(&line);
        if i + 1 < lines || rng.below(2) == 0 {
            out.push(b'\n');
        }
    }
    out
}

fn run(
    dir: &Path,
    input: &Path,
    split: u64,
    workers: usize,
    epoch_records: u64,
    ckpt: u64,
    combine: Combine,
) -> weir::Result<RunSummary> {
    let (input, out, dlq) = (input.to_path_buf(), dir.join("out"), dir.join("dlq"));
    Pipeline::new("randomized").workers(workers).state(dir.join("state")).epoch_records(epoch_records, ckpt).run(
        move |p| {
            weir_testkit::sensor::aggregate_with(
                p.source(LinesFile::with_split_bytes(&input, split)?)?,
                Parquet::dir(&out).rows_per_file(500),
                combine,
            )?;
            p.dead_letters().sink(DeadLetters::dir(&dlq))
        },
    )
}

#[test]
fn randomized_inputs_match_the_reference() -> anyhow::Result<()> {
    let mut rng = SplitMix::new(2024);
    for case in 0..24 {
        let lines = rng.below(4000) as usize;
        let input = random_input(&mut rng, lines);
        let (expected, malformed) = reference(&input);
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, &input)?;
        let split = 1 + rng.below(input.len() as u64 / 3 + 64);
        let workers = 1 + rng.below(4) as usize;
        let epoch = 1 + rng.below(500);
        let ckpt = 1 + rng.below(4);
        // Both ways of pre-aggregating must give the reference's rows.
        let combine = [Combine::Adaptive, Combine::Always, Combine::Never][case % 3];
        let what = format!(
            "case {case}: {lines} lines, split {split}, {workers} workers, epoch {epoch}, ckpt {ckpt}, {combine:?}"
        );
        let summary =
            run(dir.path(), &path, split, workers, epoch, ckpt, combine).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        let got = support::read_rows(&dir.path().join("out"))?;
        support::compare(&expected, &got).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        let dead = support::read_dead_letters(&dir.path().join("dlq"))?;
        assert_eq!(dead.len() as u64, malformed, "{what}: dead letters");
        assert_eq!(summary.counter("dead_letters.late"), 0, "{what}: late events");
        for d in &dead {
            let payload = d["payload"].as_str().unwrap_or_default();
            match d["payload_encoding"].as_str() {
                Some("utf8") => {
                    let off = d["offset"].as_u64().unwrap_or(u64::MAX) as usize;
                    assert!(input[off..].starts_with(payload.as_bytes()), "{what}: payload at {off}");
                }
                Some("base64") => assert!(!payload.is_empty()),
                other => panic!("{what}: encoding {other:?}"),
            }
            assert_eq!(d["stage"], "decode");
        }
    }
    Ok(())
}

/// Adaptive pre-aggregation switches on the key distribution, and its
/// results are exact either way: with thousands of devices and big epochs it
/// passes most records through; with three devices it combines them all.
#[test]
fn adaptive_combining_follows_the_keys_and_stays_exact() -> anyhow::Result<()> {
    for (devices, passes) in [(5000, true), (3, false)] {
        let mut input = Vec::new();
        weir_testkit::sensor::generate(40_000, 3, devices, &mut input)?;
        let (expected, _) = reference(&input);
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, &input)?;
        let summary = run(dir.path(), &path, 1 << 20, 2, 4000, 3, Combine::Adaptive)?;
        support::compare(&expected, &support::read_rows(&dir.path().join("out"))?)?;
        let passed = summary.counter("window.passed_through");
        assert_eq!(passed > 0, passes, "{devices} devices: {passed} records passed through");
    }
    Ok(())
}

#[test]
fn rescaled_restart_reads_state_by_key_group() -> anyhow::Result<()> {
    // A run stopped after its first checkpoints (simulated by a bounded
    // prefix is not possible with one file, so restart a complete run with
    // another worker count): it must change nothing and report completion.
    let mut rng = SplitMix::new(5);
    let input = random_input(&mut rng, 3000);
    let (expected, _) = reference(&input);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("in.jsonl");
    std::fs::write(&path, &input)?;
    run(dir.path(), &path, 4096, 3, 100, 2, Combine::Adaptive)?;
    // The checkpoint records who read what (the previous assignment for `sticky`).
    let m = weir::core::checkpoint::store::read_latest(&dir.path().join("state"))?.expect("a manifest");
    let assignment = &m.assignments[&path.display().to_string()];
    assert_eq!(assignment.len(), 3);
    assert_eq!(assignment.iter().map(Vec::len).sum::<usize>(), m.inputs[&path.display().to_string()].ends.len());
    let again = run(dir.path(), &path, 4096, 1, 100, 2, Combine::Adaptive)?;
    assert!(again.already_complete);
    support::compare(&expected, &support::read_rows(&dir.path().join("out"))?)?;
    // A different input with the same state directory is refused.
    std::fs::write(&path, b"{}\n")?;
    let err = run(dir.path(), &path, 4096, 1, 100, 2, Combine::Adaptive).expect_err("a changed input must be refused");
    assert!(err.to_string().contains("not the input the checkpoint was taken on"), "{err}");
    Ok(())
}

#[test]
fn without_state_output_is_not_mixed_with_an_earlier_run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("in.jsonl");
    std::fs::write(&path, b"{\"device\":\"a\",\"ts\":1,\"temp\":1.0}\n")?;
    let go = || {
        let (input, out, dlq) = (path.clone(), dir.path().join("out"), dir.path().join("dlq"));
        Pipeline::new("nostate").workers(2).run(move |p| {
            p.source(LinesFile::open(&input)?)?
                .decode::<Reading>(Json)
                .event_time(|r| r.ts, Duration::ZERO)?
                .key_by(|r| r.device.clone())
                .window(Tumbling::seconds(10))
                .aggregate(Count)?
                .map(|w| WindowRow {
                    device: w.key,
                    window_start: w.start,
                    window_end: w.end,
                    count: w.value as i64,
                    min: 0.0,
                    max: 0.0,
                    mean: 0.0,
                    percentiles: Default::default(),
                    diff: None,
                })
                .sink(Parquet::dir(&out))?;
            p.dead_letters().sink(DeadLetters::dir(&dlq))
        })
    };
    go()?;
    assert_eq!(support::read_rows(&dir.path().join("out"))?.len(), 1);
    let err = go().expect_err("second run into the same directory must be refused");
    assert!(err.to_string().contains("earlier run"), "{err}");
    Ok(())
}

#[test]
fn dead_letters_need_a_sink() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("in.jsonl");
    std::fs::write(&path, b"x\n").expect("write");
    let err = Pipeline::new("nodlq")
        .run(move |p| {
            p.source(LinesFile::open(&path)?)?.decode::<Reading>(Json).map(|r| r.ts);
            Ok(())
        })
        .expect_err("dead letters without a sink must be refused");
    assert!(err.to_string().contains("dead_letters"), "{err}");
}

/// With disorder beyond the allowed delay some events are late: each becomes
/// exactly one `late` dead letter, and the output equals the reference over
/// every other valid reading (nothing lost, nothing counted twice).
#[test]
fn late_events_become_dead_letters_and_the_rest_is_exact() -> anyhow::Result<()> {
    let mut rng = SplitMix::new(99);
    let mut total_late = 0;
    for case in 0..8 {
        let mut input = Vec::new();
        let mut ts: i64 = 1_700_000_000_000;
        for _ in 0..6000 {
            ts += rng.below(200) as i64;
            // Up to 3 minutes of disorder against a 2 s delay.
            let t = if rng.below(10) == 0 { ts - rng.below(180_000) as i64 } else { ts };
            let line =
                format!("{{\"device\":\"dev-{}\",\"ts\":{t},\"temp\":{:?}}}\n", rng.below(20), rng.below(100) as f64);
            input.extend_from_slice(line.as_bytes());
        }
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, &input)?;
        let workers = 1 + rng.below(3) as usize;
        let summary = run(dir.path(), &path, 16 * 1024, workers, 1 + rng.below(300), 2, Combine::Adaptive)?;
        let dead = support::read_dead_letters(&dir.path().join("dlq"))?;
        let late: std::collections::BTreeSet<u64> =
            dead.iter().filter(|d| d["stage"] == "late").filter_map(|d| d["offset"].as_u64()).collect();
        assert_eq!(late.len(), dead.len(), "case {case}: only late dead letters expected");
        assert_eq!(late.len() as u64, summary.counter("dead_letters.late"), "case {case}");
        total_late += late.len();
        // The reference over every line that was not dead-lettered.
        let (expected, _) = reference(&without_lines_at(&input, &late));
        support::compare(&expected, &support::read_rows(&dir.path().join("out"))?)
            .map_err(|e| anyhow::anyhow!("case {case} ({workers} workers): {e}"))?;
    }
    assert!(total_late > 0, "the inputs produced no late events");
    Ok(())
}

/// Event times at the ends of the `i64` range neither panic nor overflow: the
/// run completes, and what is not dead-lettered equals the reference.
#[test]
fn extreme_event_times_do_not_break_the_pipeline() -> anyhow::Result<()> {
    let mut input = Vec::new();
    for (i, ts) in [1_700_000_000_000i64, i64::MIN, 1_700_000_001_000, i64::MAX, 1_700_000_002_000].iter().enumerate() {
        input.extend_from_slice(format!("{{\"device\":\"d{}\",\"ts\":{ts},\"temp\":1.5}}\n", i % 2).as_bytes());
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("in.jsonl");
    std::fs::write(&path, &input)?;
    run(dir.path(), &path, 1 << 20, 2, 1, 1, Combine::Adaptive)?;
    let dead = support::read_dead_letters(&dir.path().join("dlq"))?;
    let late: std::collections::BTreeSet<u64> = dead.iter().filter_map(|d| d["offset"].as_u64()).collect();
    let (expected, _) = reference(&without_lines_at(&input, &late));
    support::compare(&expected, &support::read_rows(&dir.path().join("out"))?)?;
    assert!(!expected.is_empty());
    Ok(())
}

/// `input` without the lines that start at the byte offsets in `dropped`.
fn without_lines_at(input: &[u8], dropped: &std::collections::BTreeSet<u64>) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut offset = 0u64;
    for line in input.split_inclusive(|&b| b == b'\n') {
        if !dropped.contains(&offset) {
            kept.extend_from_slice(line);
        }
        offset += line.len() as u64;
    }
    kept
}
