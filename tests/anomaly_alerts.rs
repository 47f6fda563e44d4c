//! The `anomaly_alerts` example end to end, through its binary: z-score
//! alerts find the spikes `gen_data.py`-like data injects (recall and
//! precision printed), registry-bound alerts equal a plain reference,
//! site counts equal the alerts counted per site and minute; SIGKILL at
//! random moments and restarts with other worker counts give exactly the
//! uninterrupted run's alerts and site counts; an unknown device and bad
//! lines become dead letters, never a crash.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arrow::array::{Array, Float64Array, Int64Array, LargeStringArray, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use weir_testkit::alerts::{self, AlertRow, Registry, SiteCount};
use weir_testkit::sensor::{Reading, SplitMix, TEMP_RANGE};

/// A Utf8 (or LargeUtf8) column's values.
fn strings(col: &dyn Array) -> anyhow::Result<Vec<String>> {
    if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
        return Ok((0..a.len()).map(|i| a.value(i).to_string()).collect());
    }
    let a = col.as_any().downcast_ref::<LargeStringArray>().context("not a string column")?;
    Ok((0..a.len()).map(|i| a.value(i).to_string()).collect())
}

/// Reads every Parquet file of `dir` as batches, calling `row` with a column getter per batch.
fn for_batches(
    dir: &Path,
    mut f: impl FnMut(&arrow::record_batch::RecordBatch) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for path in support::visible_files(dir)? {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path)?)?.build()?;
        for batch in reader {
            f(&batch?).with_context(|| format!("reading {}", path.display()))?;
        }
    }
    Ok(())
}

fn col<'a>(b: &'a arrow::record_batch::RecordBatch, name: &str) -> anyhow::Result<&'a dyn Array> {
    b.column_by_name(name).map(|c| c.as_ref()).with_context(|| format!("no column {name}"))
}

fn floats(c: &dyn Array) -> anyhow::Result<&Float64Array> {
    c.as_any().downcast_ref::<Float64Array>().context("not Float64")
}

fn ints(c: &dyn Array) -> anyhow::Result<&Int64Array> {
    c.as_any().downcast_ref::<Int64Array>().context("not Int64")
}

fn read_alerts(out: &Path) -> anyhow::Result<Vec<AlertRow>> {
    let mut rows = Vec::new();
    for_batches(&out.join(alerts::ALERTS_DIR), |b| {
        let (device, site) = (strings(col(b, "device")?)?, strings(col(b, "site")?)?);
        let (detector, reason) = (strings(col(b, "detector")?)?, strings(col(b, "reason")?)?);
        let (t, value, score) = (ints(col(b, "event_time")?)?, floats(col(b, "value")?)?, floats(col(b, "score")?)?);
        for i in 0..b.num_rows() {
            rows.push(AlertRow {
                device: device[i].clone(),
                site: site[i].clone(),
                event_time: t.value(i),
                value: value.value(i),
                score: score.value(i),
                detector: detector[i].clone(),
                reason: reason[i].clone(),
            });
        }
        Ok(())
    })?;
    rows.sort_by(|a, b| (&a.device, a.event_time, &a.detector).cmp(&(&b.device, b.event_time, &b.detector)));
    Ok(rows)
}

fn read_site_counts(out: &Path) -> anyhow::Result<BTreeMap<(String, i64), SiteCount>> {
    let mut rows = BTreeMap::new();
    for_batches(&out.join(alerts::SITE_COUNTS_DIR), |b| {
        let site = strings(col(b, "site")?)?;
        let (start, end, count) =
            (ints(col(b, "window_start")?)?, ints(col(b, "window_end")?)?, ints(col(b, "count")?)?);
        for (i, site) in site.into_iter().enumerate() {
            let row = SiteCount {
                site: site.clone(),
                window_start: start.value(i),
                window_end: end.value(i),
                count: count.value(i),
            };
            if rows.insert((site, start.value(i)), row).is_some() {
                bail!("a duplicate site count");
            }
        }
        Ok(())
    })?;
    Ok(rows)
}

/// The site counts the alerts give: per site and minute.
fn counts_of(alerts: &[AlertRow]) -> BTreeMap<(String, i64), SiteCount> {
    let mut counts: BTreeMap<(String, i64), SiteCount> = BTreeMap::new();
    for a in alerts {
        let start = a.event_time - a.event_time.rem_euclid(60_000);
        counts
            .entry((a.site.clone(), start))
            .or_insert(SiteCount { site: a.site.clone(), window_start: start, window_end: start + 60_000, count: 0 })
            .count += 1;
    }
    counts
}

/// The example on `dir/in.jsonl` and `dir/devices.csv`, writing `dir/out`,
/// `dir/dlq` and checkpoints in `dir/state`.
fn command(dir: &Path, workers: usize, extra: &[&str]) -> anyhow::Result<Command> {
    let mut cmd = alerts::example()?;
    cmd.args(["--input", "in.jsonl", "--registry", "devices.csv", "--output", "out", "--dead-letter", "dlq"])
        .args(["--state", "state", "--workers", &workers.to_string()])
        .args(extra)
        .env("RUST_LOG", "error")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    Ok(cmd)
}

fn spawn(dir: &Path, workers: usize, extra: &[&str]) -> anyhow::Result<Child> {
    command(dir, workers, extra)?.env("WEIR_EPOCH_RECORDS", "1500").spawn().context("spawning anomaly_alerts")
}

fn wait(child: Child) -> anyhow::Result<()> {
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("run failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn setup(dir: &Path, input: &[u8], registry: &Registry) -> anyhow::Result<()> {
    std::fs::write(dir.join("in.jsonl"), input)?;
    std::fs::write(dir.join("devices.csv"), registry.to_csv())?;
    Ok(())
}

/// The in-range readings of `input`.
fn readings(input: &[u8]) -> Vec<Reading> {
    input
        .split(|&b| b == b'\n')
        .filter_map(|l| serde_json::from_slice::<Reading>(l).ok())
        .filter(|r| TEMP_RANGE.contains(&r.temp))
        .collect()
}

/// 120,000 readings of 100 devices (1,200 each, so the z-score's warm-up of
/// 30 readings covers 2.5 % of them): z-score recall and precision on the
/// injected spikes at least 0.9; threshold alerts exactly the in-range
/// readings outside their device's registry bounds; site counts the alerts
/// counted per site and minute; no silence (readings are about 0.25 s apart).
#[test]
fn zscore_alerts_find_the_injected_spikes_and_bounds_come_from_the_registry() -> anyhow::Result<()> {
    let (devices, events) = (100, 120_000);
    let mut input = Vec::new();
    let spikes = alerts::generate(events, 5, devices, &mut input)?;
    let registry = alerts::registry_for(devices);
    let dir = tempfile::tempdir()?;
    setup(dir.path(), &input, &registry)?;
    let started = Instant::now();
    wait(command(dir.path(), 2, &[])?.spawn()?)?;
    eprintln!("run: {:.2?}", started.elapsed());
    let got = read_alerts(&dir.path().join("out"))?;

    let injected: BTreeSet<(String, i64)> = spikes.iter().map(|s| (s.device.clone(), s.ts)).collect();
    let zscore: BTreeSet<(String, i64)> =
        got.iter().filter(|a| a.detector == "zscore").map(|a| (a.device.clone(), a.event_time)).collect();
    let found = zscore.intersection(&injected).count();
    let (recall, precision) = (found as f64 / injected.len() as f64, found as f64 / zscore.len().max(1) as f64);
    eprintln!(
        "zscore: {} spikes injected, {} alerts, {found} on spikes: recall {recall:.4}, precision {precision:.4}",
        injected.len(),
        zscore.len()
    );
    anyhow::ensure!(recall >= 0.9 && precision >= 0.9, "recall {recall:.4}, precision {precision:.4}");

    let outside: BTreeSet<(String, i64)> = readings(&input)
        .into_iter()
        .filter(|r| {
            let d = &registry.devices[&r.device];
            r.temp < d.min_temp || r.temp > d.max_temp
        })
        .map(|r| (r.device.to_string(), r.ts))
        .collect();
    let threshold: BTreeSet<(String, i64)> =
        got.iter().filter(|a| a.detector == "threshold").map(|a| (a.device.clone(), a.event_time)).collect();
    anyhow::ensure!(!outside.is_empty(), "no reading outside its bounds: the test sees nothing");
    anyhow::ensure!(
        threshold == outside,
        "{} threshold alerts, {} readings outside bounds",
        threshold.len(),
        outside.len()
    );
    anyhow::ensure!(got.iter().all(|a| a.detector != "silence"), "a silence alert on a busy feed");
    for a in &got {
        anyhow::ensure!(a.site == registry.devices[a.device.as_str()].site.as_str(), "{a:?}: wrong site");
        anyhow::ensure!(a.score > 0.0 && a.score <= 1.0 && !a.reason.is_empty(), "{a:?}");
    }
    anyhow::ensure!(
        read_site_counts(&dir.path().join("out"))? == counts_of(&got),
        "site counts differ from the alerts"
    );
    Ok(())
}

/// 60,000 readings of 300 devices (about 200 s of event time); five devices
/// stop reporting half-way and `--silence-after 20s` makes their silences
/// alerts; an updates file moves 20 devices to another site with other
/// bounds at 100 s. Two scenarios of up to three SIGKILLs each at random moments,
/// restarts with 1 to 3 workers: the final alerts, site counts and dead
/// letters equal an uninterrupted run's exactly.
#[test]
fn killed_at_random_moments_alerts_and_site_counts_are_exact() -> anyhow::Result<()> {
    let mut generated = Vec::new();
    alerts::generate(60_000, 9, 300, &mut generated)?;
    let half = 1_700_000_000_000 + 75_000;
    let silent =
        |l: &[u8]| serde_json::from_slice::<Reading>(l).is_ok_and(|r| r.ts > half && r.device.as_str() < "dev-00005");
    let input: Vec<u8> = generated
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty() && !silent(l))
        .flat_map(|l| [l, b"\n"].concat())
        .collect();
    let registry = alerts::registry_for(300);
    // From 100 s on, 20 devices move to another site with a lower bound of 30 °C.
    let mut updates = format!("{}\n", alerts::UPDATES_HEADER);
    for d in 10..30 {
        updates.push_str(&format!("update,dev-{d:05},site-moved,-5,30,{}\n", 1_700_000_000_000i64 + 100_000));
    }
    let setup = |dir: &Path| -> anyhow::Result<()> {
        setup(dir, &input, &registry)?;
        Ok(std::fs::write(dir.join("updates.csv"), &updates)?)
    };
    let extra = ["--silence-after", "20s", "--registry-updates", "updates.csv"];

    let base = tempfile::tempdir()?;
    setup(base.path())?;
    let started = Instant::now();
    wait(spawn(base.path(), 2, &extra)?)?;
    let full = started.elapsed();
    let expected = read_alerts(&base.path().join("out"))?;
    let expected_counts = read_site_counts(&base.path().join("out"))?;
    let expected_dead = support::read_dead_letters(&base.path().join("dlq"))?.len();
    let silences = expected.iter().filter(|a| a.detector == "silence").count();
    eprintln!("uninterrupted: {full:.2?}, {} alerts ({silences} silences)", expected.len());
    anyhow::ensure!(silences >= 5, "only {silences} silence alerts");
    let moved = expected.iter().filter(|a| a.site == "site-moved").count();
    anyhow::ensure!(moved > 0, "no alert of a moved device");
    anyhow::ensure!(expected_counts == counts_of(&expected), "site counts differ from the alerts");

    let mut rng = SplitMix::new(17);
    let mut after_commit = 0;
    for scenario in 0..2 {
        let dir = tempfile::tempdir()?;
        setup(dir.path())?;
        let mut kills = 0;
        for attempt in 0.. {
            let workers = 1 + rng.below(3) as usize;
            let mut child = spawn(dir.path(), workers, &extra)?;
            if kills >= 3 || attempt >= 8 {
                wait(child).with_context(|| format!("scenario {scenario}, final run"))?;
                break;
            }
            // The first kill lands after the first commit, so a restart resumes from a checkpoint.
            let mut exited = None;
            if kills == 0 {
                exited = support::watch(&mut child, None, || has_manifest(&dir.path().join("state")))?;
            }
            let deadline = Instant::now() + Duration::from_micros(rng.below(full.as_micros() as u64 / 2 + 1));
            if exited.is_none() {
                exited = support::watch(&mut child, Some(deadline), || false)?;
            }
            match exited {
                Some(status) if status.success() => break,
                Some(_) => {
                    let out = child.wait_with_output()?;
                    bail!("scenario {scenario}: run failed: {}", String::from_utf8_lossy(&out.stderr));
                }
                None => {
                    child.kill()?;
                    child.wait()?;
                    kills += 1;
                    after_commit += usize::from(has_manifest(&dir.path().join("state")));
                }
            }
        }
        eprintln!("scenario {scenario}: {kills} kills");
        let out = dir.path().join("out");
        let got = read_alerts(&out)?;
        anyhow::ensure!(got == expected, "scenario {scenario}: {} alerts, expected {}", got.len(), expected.len());
        anyhow::ensure!(read_site_counts(&out)? == expected_counts, "scenario {scenario}: site counts differ");
        let dead = support::read_dead_letters(&dir.path().join("dlq"))?.len();
        anyhow::ensure!(dead == expected_dead, "scenario {scenario}: {dead} dead letters, expected {expected_dead}");
    }
    anyhow::ensure!(after_commit > 0, "no kill landed after a checkpoint: recovery was not exercised");
    Ok(())
}

fn has_manifest(state: &Path) -> bool {
    std::fs::read_dir(state).map(|d| d.flatten().any(|e| e.path().join("MANIFEST").exists())).unwrap_or(false)
}

/// Readings of a device the registry lacks are dead letters `unknown key`
/// (their original lines), and raise no alert; the others are alerted on.
#[test]
fn an_unknown_device_is_a_dead_letter_unknown_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut input = String::new();
    for i in 0..40 {
        let t = 1_700_000_000_000i64 + i * 1000;
        input.push_str(&format!("{{\"device\":\"dev-00001\",\"ts\":{t},\"temp\":20.0}}\n"));
        input.push_str(&format!("{{\"device\":\"dev-77777\",\"ts\":{t},\"temp\":99.0}}\n"));
    }
    input.push_str("{\"device\":\"dev-00001\",\"ts\":1700000041000,\"temp\":99.5}\n");
    setup(dir.path(), input.as_bytes(), &alerts::registry_for(10))?;
    wait(command(dir.path(), 2, &[])?.spawn()?)?;
    let dead = support::read_dead_letters(&dir.path().join("dlq"))?;
    anyhow::ensure!(dead.len() == 40, "{} dead letters", dead.len());
    for d in &dead {
        anyhow::ensure!(d["error"] == alerts::UNKNOWN_KEY, "{d}");
        anyhow::ensure!(d["payload"].as_str().is_some_and(|p| p.contains("dev-77777")), "{d}");
    }
    let got = read_alerts(&dir.path().join("out"))?;
    anyhow::ensure!(got.iter().all(|a| a.device == "dev-00001"), "{got:?}");
    let detectors: BTreeSet<&str> = got.iter().map(|a| a.detector.as_str()).collect();
    anyhow::ensure!(detectors == BTreeSet::from(["threshold", "zscore"]), "{got:?}");
    Ok(())
}

/// Every kind of bad line is a dead letter with its reason; the sentinel
/// 999.0 is filtered (counted, not a dead letter, never alerted on); the run
/// succeeds. A bad registry is a startup error naming its line.
#[test]
fn bad_lines_are_dead_letters_and_a_bad_registry_is_an_error_naming_its_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut input: Vec<u8> = Vec::new();
    for i in 0..40 {
        let t = 1_700_000_000_000i64 + i * 1000;
        input.extend(format!("{{\"device\":\"dev-00002\",\"ts\":{t},\"temp\":21.0}}\n").bytes());
    }
    let bad: [&[u8]; 8] = [
        b"{\"device\":\"dev-00002\",\"ts\":1700000040000,\"te",
        b"{device:dev-00002,ts:1700000040000,temp:21.0}",
        b"#corrupt# dev-00002 1700000040000 ?? temp=21.0",
        b"",
        b"[1,2,3]",
        b"{\"device\":\"dev-00002\",\"ts\":\"soon\",\"temp\":21.0}",
        b"{\"device\":\"dev-00002\",\"ts\":1700000040000}",
        b"\xff\xfe{\"device\":\"dev-00002\"}",
    ];
    for line in bad {
        input.extend_from_slice(line);
        input.push(b'\n');
    }
    input.extend(b"{\"device\":\"dev-00002\",\"ts\":1700000041000,\"temp\":999.0}\n");
    setup(dir.path(), &input, &alerts::registry_for(10))?;
    let out = command(dir.path(), 2, &[])?.stdout(Stdio::piped()).output()?;
    anyhow::ensure!(out.status.success(), "run failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(stdout.contains("filtered:      1"), "{stdout}");
    let dead = support::read_dead_letters(&dir.path().join("dlq"))?;
    anyhow::ensure!(dead.len() == bad.len(), "{} dead letters: {dead:?}", dead.len());
    anyhow::ensure!(dead.iter().all(|d| d["stage"] == "decode"), "{dead:?}");
    anyhow::ensure!(read_alerts(&dir.path().join("out"))?.is_empty(), "alerts on a steady feed");

    std::fs::write(dir.path().join("devices.csv"), "device,site,min_temp,max_temp\ndev-00002,a,0,hot\n")?;
    let out = command(dir.path(), 1, &[])?.arg("--group").arg("other").output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(!out.status.success() && stderr.contains("line 2") && stderr.contains("max_temp"), "{stderr}");
    anyhow::ensure!(!stderr.contains("panicked"), "{stderr}");
    Ok(())
}

/// `--registry-updates`: a device's bounds and site change at 20 s and 30 s
/// of event time and it is deleted at 40 s; each reading is judged by the
/// registry as of its own time: the threshold alerts of 0-29 s carry the
/// site and bounds of their time, none after, and readings from 40 s on are
/// dead letters `unknown key`. A bad update line is a dead letter too.
#[test]
fn registry_updates_apply_from_their_valid_from() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let t0 = 1_700_000_000_000i64;
    let input: String =
        (0..60).map(|i| format!("{{\"device\":\"dev-00001\",\"ts\":{},\"temp\":45.0}}\n", t0 + i * 1000)).collect();
    setup(dir.path(), input.as_bytes(), &alerts::registry_for(10))?;
    let updates = format!(
        "{}\nupdate,dev-00001,site-new,0,44,{}\nupdate,dev-00001,site-new,0,50,{}\ndelete,dev-00001,,,,{}\nupsert,dev-00001,x,0,1,{}\n",
        alerts::UPDATES_HEADER,
        t0 + 20_000,
        t0 + 30_000,
        t0 + 40_000,
        t0 + 50_000
    );
    std::fs::write(dir.path().join("updates.csv"), updates)?;
    wait(command(dir.path(), 2, &["--registry-updates", "updates.csv"])?.spawn()?)?;
    let got = read_alerts(&dir.path().join("out"))?;
    let threshold: Vec<(i64, &str)> = got
        .iter()
        .filter(|a| a.detector == "threshold")
        .map(|a| ((a.event_time - t0) / 1000, a.site.as_str()))
        .collect();
    let expected: Vec<(i64, &str)> = (0..30).map(|s| (s, if s < 20 { "site-000" } else { "site-new" })).collect();
    anyhow::ensure!(threshold == expected, "threshold alerts (s, site): {threshold:?}");
    anyhow::ensure!(got.iter().filter(|a| a.event_time - t0 >= 20_000).all(|a| a.reason.contains("44")), "{got:?}");
    let dead = support::read_dead_letters(&dir.path().join("dlq"))?;
    let unknown = dead.iter().filter(|d| d["error"] == alerts::UNKNOWN_KEY).count();
    anyhow::ensure!(unknown == 20, "{unknown} unknown-key dead letters: {dead:?}");
    anyhow::ensure!(
        dead.len() == 21 && dead.iter().any(|d| d["payload"].as_str().is_some_and(|p| p.starts_with("upsert")))
    );
    Ok(())
}
