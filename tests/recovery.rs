//! Kill-and-restart: the sensor pipeline is killed with SIGKILL at random
//! moments and started again (with changing worker counts) until it
//! completes; the final output and dead letters must equal the reference
//! exactly: every row once, nothing lost. A run after completion changes nothing.
//! Tumbling windows (the workload), sliding windows with percentiles, and
//! sessions, also with allowed lateness on shuffled input: then the output is
//! a change log, which may differ between runs (it depends on when watermarks
//! advance), so its net rows are compared.

mod support;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use weir::connectors::log::{LogConfig, Producer, Topic};
use weir::core::time::parse_duration;
use weir_testkit::sensor::{
    SplitMix, WindowConfig, generate, parse_percentiles, parse_window, reference, reference_with,
};

/// Where the killed pipeline reads from.
#[derive(Clone, Copy)]
enum Feed {
    File,
    Log,
}

/// How the killed pipeline's epochs end.
#[derive(Clone, Copy)]
enum Epochs {
    /// Every 5 ms, a checkpoint every 25 ms (the torture test: a run of 600,000
    /// events takes about 0.1 s here, so it commits several times before its end).
    Fast,
    /// Every 1,500 records, a checkpoint every 2 epochs (deterministic).
    Records,
    /// Every 1 ms of processing time, a checkpoint every 10 ms: epoch numbers
    /// follow the clock, so each worker skips numbers, never checkpoint epochs.
    Timed,
}

const FILE_ARGS: &[&str] = &["--input", "in.jsonl"];
const LOG_ARGS: &[&str] = &["--log-dir", "log", "--topic", "sensors", "--bounded"];

/// The input and the windows of a killed pipeline.
#[derive(Clone, Copy)]
struct Workload {
    events: u64,
    devices: u64,
    /// `--window`, `--percentiles`, `--allowed-lateness` and
    /// `--max-out-of-orderness` options (none: the default tumbling minute).
    options: &'static [&'static str],
    /// Displace readings by up to this many ms (0: the generated order).
    shuffle_ms: u64,
}

/// 200,000 events of 500 devices, tumbling one-minute windows.
const TUMBLING: Workload = Workload { events: 200_000, devices: 500, options: &[], shuffle_ms: 0 };

impl Workload {
    /// The window configuration its options give (parsed as the example parses them).
    fn config(&self) -> anyhow::Result<WindowConfig> {
        let mut config = WindowConfig::default();
        for pair in self.options.chunks(2) {
            match pair {
                ["--window", w] => config.spec = parse_window(w).map_err(anyhow::Error::msg)?,
                ["--percentiles", q] => config.percentiles = parse_percentiles(q).map_err(anyhow::Error::msg)?,
                ["--allowed-lateness", d] => {
                    config.allowed_lateness = parse_duration(d).map_err(anyhow::Error::msg)?;
                }
                ["--max-out-of-orderness", _] => {}
                other => bail!("unknown workload options {other:?}"),
            }
        }
        Ok(config)
    }

    /// The generated input, displaced by up to `shuffle_ms` (each line sorted
    /// by its time plus a random amount; a malformed line keeps the time of
    /// the line before it).
    fn input(&self) -> anyhow::Result<Vec<u8>> {
        let mut input = Vec::new();
        generate(self.events, 11, self.devices, &mut input)?;
        if self.shuffle_ms == 0 {
            return Ok(input);
        }
        let mut rng = SplitMix::new(13);
        let mut ts = 0i64;
        let mut lines: Vec<(i64, &[u8])> = Vec::new();
        for line in input.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(line)
                && let Some(t) = v["ts"].as_i64()
            {
                ts = t;
            }
            lines.push((ts + rng.below(self.shuffle_ms + 1) as i64, line));
        }
        lines.sort_by_key(|l| l.0);
        Ok(lines.iter().flat_map(|(_, line)| [*line, b"\n"].concat()).collect())
    }

    /// The rows in `out`: the net rows of the change log with allowed lateness.
    fn rows(&self, out: &Path) -> anyhow::Result<support::Rows> {
        if self.config()?.has_diff() {
            let (net, retractions) = support::net_rows(&support::read_change_log(out)?)?;
            anyhow::ensure!(retractions > 0, "no late reading corrected a window: the input is not disordered enough");
            Ok(net)
        } else {
            support::read_rows(out)
        }
    }
}

fn spawn(dir: &Path, workers: usize, feed: Feed, epochs: Epochs, options: &[&str]) -> anyhow::Result<Child> {
    let input = match feed {
        Feed::File => FILE_ARGS,
        Feed::Log => LOG_ARGS,
    };
    let mut cmd = weir_testkit::sensor::example()?;
    cmd.args(input)
        .args(["--output", "out", "--dead-letter", "dlq", "--state", "state"])
        .args(["--workers", &workers.to_string()])
        .args(options);
    match epochs {
        Epochs::Records => cmd.env("WEIR_EPOCH_RECORDS", "1500"),
        Epochs::Timed => cmd.args(["--epoch-interval", "1ms", "--checkpoint-interval", "10ms"]),
        Epochs::Fast => cmd.args(["--epoch-interval", "5ms", "--checkpoint-interval", "25ms"]),
    };
    cmd.env("RUST_LOG", "error")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning the sensor example")
}

fn wait(child: Child) -> anyhow::Result<()> {
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("run failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn setup(dir: &Path, input: &[u8], feed: Feed) -> anyhow::Result<()> {
    match feed {
        Feed::File => std::fs::write(dir.join("in.jsonl"), input)?,
        Feed::Log => {
            let topic = Topic::create(&dir.join("log"), "sensors", 5)?;
            let mut producer = Producer::new(&topic, LogConfig::default())?;
            for line in input.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let key = line.split(|&b| b == b'"').nth(3);
                producer.send(key, line)?;
            }
            producer.flush()?;
        }
    }
    Ok(())
}

#[test]
fn file_pipeline_killed_at_random_moments_output_is_exact() -> anyhow::Result<()> {
    killed_at_random_moments(Feed::File, 4, Epochs::Records, TUMBLING)
}

#[test]
fn timed_epochs_killed_at_random_moments_output_is_exact() -> anyhow::Result<()> {
    killed_at_random_moments(Feed::File, 2, Epochs::Timed, TUMBLING)
}

#[test]
fn log_pipeline_killed_at_random_moments_output_is_exact() -> anyhow::Result<()> {
    killed_at_random_moments(Feed::Log, 2, Epochs::Records, TUMBLING)
}

/// Sliding windows with percentiles (the sketches are checkpointed): 60,000
/// events of 500 devices, about 150 s of event time, so each reading is in 6
/// windows and windows fire all along the run.
#[test]
fn sliding_windows_killed_at_random_moments_output_is_exact() -> anyhow::Result<()> {
    let workload = Workload {
        events: 60_000,
        devices: 500,
        options: &["--window", "sliding:1m/10s", "--percentiles", "0.5,0.99"],
        shuffle_ms: 0,
    };
    killed_at_random_moments(Feed::File, 2, Epochs::Records, workload)
}

/// Session windows: 60,000 events of 10,000 devices, so a device's readings
/// are about 25 s apart and a 30 s gap ends sessions all along the run.
#[test]
fn session_windows_killed_at_random_moments_output_is_exact() -> anyhow::Result<()> {
    let workload = Workload { events: 60_000, devices: 10_000, options: &["--window", "session:30s"], shuffle_ms: 0 };
    killed_at_random_moments(Feed::Log, 2, Epochs::Records, workload)
}

/// Session windows with allowed lateness: readings displaced by up to 40 s
/// under a bound of 1 s, so late readings correct (and merge) fired
/// sessions; the lateness covers the displacement, so none is late. The
/// fired sessions kept for late readings are checkpointed state.
#[test]
fn session_windows_with_allowed_lateness_killed_at_random_moments_net_rows_are_exact() -> anyhow::Result<()> {
    let workload = Workload {
        events: 60_000,
        devices: 10_000,
        options: &["--window", "session:30s", "--allowed-lateness", "1m", "--max-out-of-orderness", "1s"],
        shuffle_ms: 40_000,
    };
    killed_at_random_moments(Feed::File, 2, Epochs::Records, workload)
}

fn killed_at_random_moments(feed: Feed, scenarios: usize, epochs: Epochs, workload: Workload) -> anyhow::Result<()> {
    let input = workload.input()?;
    let (expected, malformed) = reference_with(&input, &workload.config()?);
    let options = workload.options;

    // How long an undisturbed run takes here, to spread kills over it.
    let base = tempfile::tempdir()?;
    setup(base.path(), &input, feed)?;
    let started = Instant::now();
    wait(spawn(base.path(), 2, feed, epochs, options)?)?;
    let full = started.elapsed();
    support::compare(&expected, &workload.rows(&base.path().join("out"))?)?;

    let mut rng = SplitMix::new(7);
    let mut mid_run_kills = 0;
    for scenario in 0..scenarios {
        let mut dir = tempfile::tempdir()?;
        setup(dir.path(), &input, feed)?;
        let mut kills = 0;
        let mut committed_before_kill = 0;
        let mut attempts = 0;
        // Kills aim within `full / scale`: a first run that finished before its
        // kill starts the scenario again, aiming earlier.
        let mut scale = 2u32;
        loop {
            attempts += 1;
            let workers = 1 + rng.below(3) as usize;
            let mut child = spawn(dir.path(), workers, feed, epochs, options)?;
            // Kill the first few runs at a random moment; let the last one finish.
            if kills < 3 && attempts < 8 {
                // Restarts resume from a checkpoint and finish sooner: aim early.
                let delay = Duration::from_micros(rng.below(full.as_micros() as u64 / u64::from(scale) + 1));
                let mut exited = None;
                if matches!(epochs, Epochs::Timed) || kills == 0 {
                    // Checkpoints depend on the machine's speed (timed ones, and the
                    // first one of any run): count the first kill's delay from the first
                    // commit, so every scenario restarts from a checkpoint at least once
                    // however slow or busy the machine; later kills land anywhere.
                    exited = support::watch(&mut child, None, || has_manifest(&dir.path().join("state")))?;
                }
                if exited.is_none() {
                    exited = support::watch(&mut child, Some(Instant::now() + delay), || false)?;
                }
                match exited {
                    Some(status) if status.success() && kills == 0 && scale < 64 => {
                        dir = tempfile::tempdir()?;
                        setup(dir.path(), &input, feed)?;
                        attempts = 0;
                        scale *= 2;
                        continue;
                    }
                    Some(status) if status.success() => break,
                    Some(_) => {
                        let out = child.wait_with_output()?;
                        bail!("scenario {scenario}: run failed: {}", String::from_utf8_lossy(&out.stderr));
                    }
                    None => {
                        child.kill()?;
                        child.wait()?;
                        kills += 1;
                        committed_before_kill += usize::from(has_manifest(&dir.path().join("state")));
                    }
                }
            } else {
                wait(child).with_context(|| format!("scenario {scenario}, final run"))?;
                break;
            }
        }
        eprintln!("scenario {scenario}: {kills} kills, {committed_before_kill} after a commit");
        mid_run_kills += committed_before_kill;
        let got = workload.rows(&dir.path().join("out"))?;
        support::compare(&expected, &got).with_context(|| format!("scenario {scenario} after {kills} kills"))?;
        let dead = support::read_dead_letters(&dir.path().join("dlq"))?;
        let mut offsets: Vec<u64> = dead.iter().filter_map(|d| d["offset"].as_u64()).collect();
        offsets.sort_unstable();
        offsets.dedup();
        assert_eq!(dead.len() as u64, malformed, "scenario {scenario}: dead letters");
        assert_eq!(offsets.len() as u64, malformed, "scenario {scenario}: duplicate dead letters");

        // Run again after completion: nothing changes.
        let before =
            (support::visible_files(&dir.path().join("out"))?, support::visible_files(&dir.path().join("dlq"))?);
        wait(spawn(dir.path(), 2, feed, epochs, options)?)?;
        let after =
            (support::visible_files(&dir.path().join("out"))?, support::visible_files(&dir.path().join("dlq"))?);
        assert_eq!(before, after, "scenario {scenario}: a completed run changed its output");
    }
    assert!(mid_run_kills > 0, "no kill landed after a checkpoint: the test did not exercise recovery");
    Ok(())
}

/// The epoch of the newest committed checkpoint in `state`.
fn newest_manifest(state: &Path) -> Option<u64> {
    std::fs::read_dir(state)
        .ok()?
        .flatten()
        .filter(|e| e.path().join("MANIFEST").exists())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("chk-")?.parse().ok())
        .max()
}

fn has_manifest(state: &Path) -> bool {
    std::fs::read_dir(state).map(|d| d.flatten().any(|e| e.path().join("MANIFEST").exists())).unwrap_or(false)
}

/// The torture test: SIGKILL at random moments, many times over, each restart
/// with a random worker count from 1 to 4, checkpoints every 100 ms; half the
/// kills aim at moments when a checkpoint commits or publishes (measured on an
/// undisturbed run from its debug log). The final output and dead letters must
/// equal the reference exactly. `WEIR_TORTURE_KILLS` (default 50) and
/// `WEIR_TORTURE_SEED` set the size and the seed (`scripts/soak.sh` runs long ones);
/// a failure names the seed.
#[test]
fn torture_many_kills_random_worker_counts_output_is_exact() -> anyhow::Result<()> {
    let kills_wanted: usize = std::env::var("WEIR_TORTURE_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let seed: u64 = std::env::var("WEIR_TORTURE_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("torture: seed {seed} (replay with WEIR_TORTURE_SEED={seed}), {kills_wanted} kills");
    torture(seed, kills_wanted).with_context(|| format!("torture failed with WEIR_TORTURE_SEED={seed}"))
}

fn torture(seed: u64, kills_wanted: usize) -> anyhow::Result<()> {
    let mut input = Vec::new();
    generate(600_000, seed % 1000, 300, &mut input)?;
    let (expected, malformed) = reference(&input);

    // An undisturbed run: its length, and when its commits happened.
    let base = tempfile::tempdir()?;
    setup(base.path(), &input, Feed::File)?;
    let started = Instant::now();
    let wall = std::time::SystemTime::now();
    let child = spawn(base.path(), 2, Feed::File, Epochs::Fast, &[])?;
    let out = child.wait_with_output()?;
    let full = started.elapsed();
    anyhow::ensure!(out.status.success(), "undisturbed run failed: {}", String::from_utf8_lossy(&out.stderr));
    support::compare(&expected, &support::read_rows(&base.path().join("out"))?)?;
    let commits = commit_offsets(base.path(), wall)?;

    let dir = tempfile::tempdir()?;
    setup(dir.path(), &input, Feed::File)?;
    let mut rng = SplitMix::new(seed);
    let (mut kills, mut runs, mut after_commit) = (0usize, 0usize, 0usize);
    let budget = Instant::now();
    loop {
        runs += 1;
        let workers = 1 + rng.below(4) as usize;
        let mut child = spawn(dir.path(), workers, Feed::File, Epochs::Fast, &[])?;
        if kills >= kills_wanted || budget.elapsed() > Duration::from_secs(300) {
            wait(child).context("final run")?;
            break;
        }
        // A third of the kills aim at a measured commit moment (give or take 3 ms);
        // half wait for this run's own next commit, then land within 20 ms of it
        // (while it publishes, or in the next interval's work);
        // the others land anywhere early, start-up included.
        let mut exited = None;
        let delay = match rng.below(6) {
            0 | 1 if !commits.is_empty() => {
                let at = commits[rng.below(commits.len() as u64) as usize];
                (at + Duration::from_micros(rng.below(6_000))).saturating_sub(Duration::from_millis(3))
            }
            0..=4 => {
                let before = newest_manifest(&dir.path().join("state"));
                exited = support::watch(&mut child, None, || newest_manifest(&dir.path().join("state")) != before)?;
                Duration::from_micros(rng.below(20_000))
            }
            _ => Duration::from_micros(rng.below(full.as_micros() as u64 / 2 + 1)),
        };
        if exited.is_none() {
            exited = support::watch(&mut child, Some(Instant::now() + delay), || false)?;
        }
        match exited {
            Some(status) if status.success() => {
                // Finished before the kill: start over on a fresh state (the run counts).
                let got = support::read_rows(&dir.path().join("out"))?;
                support::compare(&expected, &got).context("a run that finished between kills")?;
                for sub in ["out", "dlq", "state"] {
                    std::fs::remove_dir_all(dir.path().join(sub))?;
                }
            }
            Some(_) => {
                let out = child.wait_with_output()?;
                bail!("run {runs} failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            None => {
                child.kill()?;
                child.wait()?;
                kills += 1;
                after_commit += usize::from(has_manifest(&dir.path().join("state")));
            }
        }
    }
    eprintln!("torture: {kills} kills in {runs} runs, {after_commit} after a commit (seed {seed})");
    anyhow::ensure!(kills >= kills_wanted, "only {kills} kills landed");
    anyhow::ensure!(after_commit * 3 >= kills, "too few kills after a commit: {after_commit} of {kills}");
    support::compare(&expected, &support::read_rows(&dir.path().join("out"))?)?;
    let dead = support::read_dead_letters(&dir.path().join("dlq"))?;
    let mut offsets: Vec<u64> = dead.iter().filter_map(|d| d["offset"].as_u64()).collect();
    offsets.sort_unstable();
    offsets.dedup();
    anyhow::ensure!(dead.len() as u64 == malformed, "{} dead letters, expected {malformed}", dead.len());
    anyhow::ensure!(offsets.len() as u64 == malformed, "duplicate dead letters");
    Ok(())
}

/// When an undisturbed run (started at `start`) staged its output: each output
/// file is closed and fsynced just before the commit that publishes it.
fn commit_offsets(dir: &Path, start: std::time::SystemTime) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::new();
    for sub in ["out", "dlq"] {
        for f in support::visible_files(&dir.join(sub))? {
            if let Ok(d) = std::fs::metadata(&f)?.modified()?.duration_since(start) {
                times.push(d);
            }
        }
    }
    times.sort();
    Ok(times)
}
