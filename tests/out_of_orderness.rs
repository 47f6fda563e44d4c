//! `--max-out-of-orderness` of the sensor example: readings out of order by at
//! most the bound give exactly the rows of the sorted input (the reference),
//! from a file and from the embedded log, on 1, 2 and 3 workers; readings
//! further out of order than the bound are late (dead letters of stage
//! `late`), so the option is what decides. With `--allowed-lateness`,
//! readings behind the watermark by up to it correct their windows: the
//! output is a change log (a `diff` column) whose net rows are the
//! reference's, for tumbling and session windows; beyond it they are late.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail, ensure};
use weir_testkit::sensor::{self, SplitMix, reference};

/// Records per epoch (`WEIR_EPOCH_RECORDS`): an epoch closes after each read
/// (64 KiB of a partition: 1,000 short readings or 260 padded ones, 30 or 8 s
/// of event time), so watermarks advance many times in a run and a bound that
/// is too small shows.
const EPOCH_RECORDS: &str = "100";

/// `n` readings in time order: 50 devices, steps of 1 to 60 ms (about 20
/// minutes for 40,000), temperatures in range, each line padded to about
/// `line_bytes` with a field decode ignores.
fn sorted_readings(n: usize, seed: u64, line_bytes: usize) -> Vec<(i64, String)> {
    let mut rng = SplitMix::new(seed);
    let mut ts = 1_700_000_000_000i64;
    (0..n)
        .map(|_| {
            ts += 1 + rng.below(60) as i64;
            let temp = (1000.0 + 2000.0 * rng.unit()).round() / 100.0;
            let mut line = format!(r#"{{"device":"dev-{:03}","ts":{ts},"temp":{temp:?}"#, rng.below(50));
            let pad = line_bytes.saturating_sub(line.len() + 12);
            line.push_str(&format!(r#","note":"{}"}}"#, "x".repeat(pad)));
            (ts, line)
        })
        .collect()
}

/// `sorted` reordered at random so that no reading comes after one more than
/// `bound_ms` later than itself: sorted by `ts + u`, `u` uniform in `0..=bound_ms`.
fn shuffled_within(sorted: &[(i64, String)], bound_ms: i64, seed: u64) -> Vec<(i64, String)> {
    let mut rng = SplitMix::new(seed);
    let mut keyed: Vec<(i64, &(i64, String))> =
        sorted.iter().map(|r| (r.0 + rng.below(bound_ms as u64 + 1) as i64, r)).collect();
    keyed.sort_by_key(|(key, _)| *key);
    keyed.into_iter().map(|(_, r)| r.clone()).collect()
}

/// The largest amount by which a reading's time is behind a reading before it.
fn displacement(readings: &[(i64, String)]) -> i64 {
    let mut newest = i64::MIN;
    let mut most = 0;
    for (ts, _) in readings {
        most = most.max(newest.saturating_sub(*ts));
        newest = newest.max(*ts);
    }
    most
}

fn jsonl(readings: &[(i64, String)]) -> Vec<u8> {
    readings.iter().flat_map(|(_, line)| [line.as_bytes(), b"\n"].concat()).collect()
}

/// Runs `cmd` with `args` in `dir`, feeding it `stdin`; an error with its
/// standard error if it fails.
fn run(mut cmd: Command, dir: &Path, args: &[&str], stdin: &[u8]) -> anyhow::Result<()> {
    let mut child = cmd
        .args(args)
        .env("WEIR_EPOCH_RECORDS", EPOCH_RECORDS)
        .env("RUST_LOG", "error")
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {:?}", cmd.get_program()))?;
    child.stdin.take().context("stdin")?.write_all(stdin)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{:?} {args:?} failed: {}", cmd.get_program(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The sensor example with `args` plus `--output NAME/out --dead-letter NAME/dlq`:
/// the output directory and the payloads of its dead letters, which must all be late.
fn aggregate(dir: &Path, name: &str, args: &[&str]) -> anyhow::Result<(std::path::PathBuf, Vec<String>)> {
    let (out, dlq) = (format!("{name}/out"), format!("{name}/dlq"));
    run(sensor::example()?, dir, &[args, &["--output", &out, "--dead-letter", &dlq]].concat(), b"")?;
    let mut late = Vec::new();
    for d in support::read_dead_letters(&dir.join(&dlq))? {
        ensure!(d["stage"] == "late", "{name}: a dead letter that is not late: {d}");
        late.push(d["payload"].as_str().context("payload")?.to_owned());
    }
    Ok((dir.join(out), late))
}

#[test]
fn disorder_within_the_bound_gives_the_rows_of_sorted_input() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    // About 10 MB: the file is read as 3 byte ranges (4 MiB each).
    let sorted = sorted_readings(40_000, 7, 250);
    let shuffled = shuffled_within(&sorted, 60_000, 8);
    let moved = displacement(&shuffled);
    ensure!((55_000..=60_000).contains(&moved), "readings are displaced by up to {moved} ms, not about 1 minute");
    let (expected, malformed) = reference(&jsonl(&sorted));
    ensure!(malformed == 0 && expected.len() > 800, "{} rows, {malformed} malformed", expected.len());

    std::fs::write(d.join("in.jsonl"), jsonl(&shuffled))?;
    let weir = || Command::new(env!("CARGO_BIN_EXE_weir"));
    run(weir(), d, &["topic", "create", "sensors", "--partitions", "4", "--log-dir", "log"], b"")?;
    run(weir(), d, &["produce", "sensors", "--log-dir", "log", "--key-field", "device"], &jsonl(&shuffled))?;
    let bound = ["--max-out-of-orderness", "1m"];
    for workers in ["1", "2", "3"] {
        for (input, from) in [("file", &["--input", "in.jsonl"][..]), ("log", &["--log-dir", "log", "--bounded"])] {
            let name = format!("{input}-{workers}");
            let (out, late) = aggregate(d, &name, &[from, &bound, &["--workers", workers]].concat())?;
            ensure!(late.is_empty(), "{name}: {} late readings, e.g. {}", late.len(), late[0]);
            support::compare(&expected, &support::read_rows(&out)?).with_context(|| name.clone())?;
        }
    }
    Ok(())
}

#[test]
fn disorder_beyond_the_bound_is_late() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let sorted = sorted_readings(16_000, 11, 0);

    // Displaced by up to a minute, under a bound of 500 ms: some readings are
    // late, and the rows are exactly those of the others.
    let shuffled = shuffled_within(&sorted, 60_000, 12);
    std::fs::write(d.join("shuffled.jsonl"), jsonl(&shuffled))?;
    let args = ["--input", "shuffled.jsonl", "--workers", "1", "--max-out-of-orderness", "500ms"];
    let (out, late) = aggregate(d, "500ms", &args)?;
    ensure!(late.len() > 100, "{} readings displaced by up to a minute were late under 500 ms", late.len());
    let kept: Vec<_> = shuffled.iter().filter(|(_, line)| !late.contains(line)).cloned().collect();
    ensure!(kept.len() + late.len() == shuffled.len(), "a late payload is no input line");
    support::compare(&reference(&jsonl(&kept)).0, &support::read_rows(&out)?)?;

    // Five readings moved three minutes later: late under the default bound
    // (their windows have fired), counted under a bound of four minutes.
    let mut moved = sorted.clone();
    let mut taken = Vec::new();
    for i in [1_000, 2_500, 4_000, 5_500, 8_000] {
        taken.push(moved.remove(i - taken.len()));
    }
    for reading in &taken {
        let at = moved.iter().position(|(ts, _)| *ts > reading.0 + 180_000).context("a later reading")?;
        moved.insert(at, reading.clone());
    }
    std::fs::write(d.join("moved.jsonl"), jsonl(&moved))?;
    let (expected, _) = reference(&jsonl(&moved));
    for workers in ["1", "2"] {
        let name = format!("moved-{workers}");
        let (out, mut late) = aggregate(d, &name, &["--input", "moved.jsonl", "--workers", workers])?;
        late.sort();
        let mut wanted: Vec<String> = taken.iter().map(|(_, line)| line.clone()).collect();
        wanted.sort();
        ensure!(late == wanted, "{name}: late {late:?}, expected the moved readings {wanted:?}");
        let kept: Vec<_> = moved.iter().filter(|r| !taken.contains(r)).cloned().collect();
        support::compare(&reference(&jsonl(&kept)).0, &support::read_rows(&out)?).with_context(|| name.clone())?;

        let name = format!("moved-4m-{workers}");
        let args = ["--input", "moved.jsonl", "--workers", workers, "--max-out-of-orderness", "4m"];
        let (out, late) = aggregate(d, &name, &args)?;
        ensure!(late.is_empty(), "{name}: {late:?}");
        support::compare(&expected, &support::read_rows(&out)?).with_context(|| name.clone())?;
    }
    Ok(())
}

/// The net rows of a change log in `out` (every row has a diff), with the number of retractions.
fn net_of(out: &Path) -> anyhow::Result<(support::Rows, usize)> {
    let log = support::read_change_log(out)?;
    ensure!(!log.is_empty() && log.iter().all(|r| r.diff.is_some()), "rows without a diff column");
    support::net_rows(&log)
}

#[test]
fn allowed_lateness_corrects_windows_with_a_change_log_whose_net_is_the_reference() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    // Displaced by up to a minute under a bound of 500 ms: many readings come
    // after their window (or session) fired.
    let sorted = sorted_readings(16_000, 21, 0);
    let shuffled = shuffled_within(&sorted, 60_000, 22);
    std::fs::write(d.join("in.jsonl"), jsonl(&shuffled))?;
    let input = ["--input", "in.jsonl", "--max-out-of-orderness", "500ms"];
    for window in ["tumbling:1m", "session:3s"] {
        let config = sensor::WindowConfig::new(sensor::parse_window(window).map_err(anyhow::Error::msg)?);
        let (expected, _) = sensor::reference_with(&jsonl(&sorted), &config);
        let kind = &window[..window.find(':').context("kind")?];
        // No lateness: late readings are dead letters, the schema has no diff column.
        let name = format!("{kind}-off");
        let (out, late) = aggregate(d, &name, &[&input[..], &["--window", window, "--workers", "2"]].concat())?;
        ensure!(late.len() > 100, "{name}: only {} late readings", late.len());
        support::read_rows(&out).with_context(|| name.clone())?;
        // Lateness beyond the displacement: nothing is late, and late readings correct their windows.
        for workers in ["1", "2", "3"] {
            let name = format!("{kind}-2m-{workers}");
            let args = [&input[..], &["--window", window, "--workers", workers, "--allowed-lateness", "2m"]].concat();
            let (out, late) = aggregate(d, &name, &args)?;
            ensure!(late.is_empty(), "{name}: {} late readings, e.g. {}", late.len(), late[0]);
            let (net, retractions) = net_of(&out).with_context(|| name.clone())?;
            ensure!(retractions > 100, "{name}: only {retractions} corrections");
            support::compare(&expected, &net).with_context(|| name.clone())?;
        }
        // A shorter lateness: readings beyond it are late, the others all count.
        let name = format!("{kind}-10s");
        let args = [&input[..], &["--window", window, "--workers", "2", "--allowed-lateness", "10s"]].concat();
        let (out, late) = aggregate(d, &name, &args)?;
        ensure!(late.len() > 10, "{name}: only {} late readings", late.len());
        let kept: Vec<_> = shuffled.iter().filter(|(_, line)| !late.contains(line)).cloned().collect();
        ensure!(kept.len() + late.len() == shuffled.len(), "a late payload is no input line");
        let (net, _) = net_of(&out).with_context(|| name.clone())?;
        support::compare(&sensor::reference_with(&jsonl(&kept), &config).0, &net).with_context(|| name.clone())?;
    }
    Ok(())
}
