//! The `anomaly_scores` example end to end: a generated CSV with two spikes,
//! a value that is not a number and a silence; one output row per input
//! row, the spikes alerted by the z-score and MAD detectors, the bad row
//! scored 0 and reported, the silence marked by the silence detector, and
//! `--list-detectors`. Build the examples first (`cargo build --workspace --examples`).

use std::fmt::Write as _;
use std::process::Output;

use anyhow::{Context, ensure};

fn run(args: &[&str]) -> anyhow::Result<Output> {
    let out = weir_testkit::example::command("anomaly_scores")?.args(args).env("RUST_LOG", "error").output()?;
    ensure!(out.status.success(), "anomaly_scores {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(out)
}

/// 400 rows five minutes apart from 2014-02-14 14:30:00, two value columns;
/// spikes at rows 200 and 320, `n/a` at row 250, two hours of nothing before row 360.
fn series() -> String {
    let mut csv = String::from("timestamp,value,other\n");
    let mut t = 1_392_388_200i64; // 2014-02-14 14:30:00 UTC
    let mut x = 7u64;
    for i in 0..400 {
        // A small deterministic noise in [-1, 1).
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let noise = (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
        let value = 20.0 + noise + if i == 200 || i == 320 { 15.0 } else { 0.0 };
        if i == 360 {
            t += 7200;
        }
        let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
        // 2014-02-14 is day 16115 since the epoch; the rows stay within February and March.
        let (month, day) =
            if days - 16_115 + 14 <= 28 { (2, days - 16_115 + 14) } else { (3, days - 16_115 + 14 - 28) };
        let v = if i == 250 { "n/a".to_string() } else { format!("{value:.3}") };
        let _ = writeln!(
            csv,
            "2014-{month:02}-{day:02} {:02}:{:02}:{:02},{v},{:.3}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            5.0 + noise / 2.0
        );
        t += 300;
    }
    csv
}

/// The output rows' `alert` column: the indexes of the rows that alert.
fn alerts(csv: &str) -> anyhow::Result<Vec<usize>> {
    let mut out = Vec::new();
    for (i, line) in csv.lines().skip(1).enumerate() {
        let alert = line.rsplit(',').next().context("no alert column")?;
        if alert == "1" {
            out.push(i);
        }
    }
    Ok(out)
}

#[test]
fn scores_a_csv_through_the_streaming_detectors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("series.csv");
    let csv = series();
    std::fs::write(&input, &csv)?;
    let input = input.to_str().context("path")?;
    for detector in ["zscore", "mad", "silence"] {
        let output = dir.path().join(format!("{detector}.csv"));
        let out = run(&["--input", input, "--detector", detector, "--output", output.to_str().context("path")?])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(stderr.contains("400 rows") && stderr.contains("1 rows with a value that is not a number"), "{stderr}");
        let scores = std::fs::read_to_string(&output)?;
        let lines: Vec<&str> = scores.lines().collect();
        ensure!(lines.len() == 401, "{} lines", lines.len());
        ensure!(lines[0] == "timestamp,value,other,anomaly_score,alert", "{}", lines[0]);
        // Every row keeps its timestamp and values, in input order.
        for (got, want) in lines.iter().zip(csv.lines()).skip(1) {
            ensure!(got.starts_with(&format!("{want},")), "{got} is not row {want}");
        }
        ensure!(lines[251].ends_with(",n/a,") || lines[251].contains(",n/a,"), "{}", lines[251]);
        ensure!(lines[251].ends_with(",0,0"), "the bad row: {}", lines[251]);
        let got = alerts(&scores)?;
        let want = if detector == "silence" { vec![360] } else { vec![200, 320] };
        ensure!(got == want, "{detector}: alerts at {got:?}, want {want:?}");
        let scores: Vec<f64> = lines[1..].iter().filter_map(|l| l.rsplit(',').nth(1)?.parse().ok()).collect();
        ensure!(scores.len() == 400 && scores.iter().all(|s| (0.0..=1.0).contains(s)), "scores out of [0, 1]");
    }
    let listed = run(&["--list-detectors"])?;
    let names: Vec<String> = String::from_utf8(listed.stdout)?.lines().map(str::to_string).collect();
    ensure!(names == weir::operators::detect::NAMES, "{names:?}");
    Ok(())
}
