//! End-to-end throughput suite for the sensor-window workload.
//!
//! `cargo bench --bench throughput` (a few minutes; the first run also generates the inputs):
//!
//! 1. builds the release examples `sensor_aggregation`, `raw_timely`, `generator_windows` and
//!    `anomaly_alerts`;
//! 2. makes each input once under `target/weir-bench/`: `sensor-2m.jsonl` (2,000,000 events)
//!    and, for the long rows, `sensor-10m.jsonl` (10,000,000 events, same generator and
//!    seed 42), with the workload's `gen_data.py --n N --seed 42` when
//!    `<repo>/../shared/workloads/` has it, else with `weir_testkit::sensor::generate`. A file is
//!    reused while its `.source` stamp names the same generator; the expected rows
//!    (`sensor-2m.expected.csv`, `sensor-10m.expected.csv`, from `reference.py`) are
//!    remade when older than their input;
//! 3. runs every configuration `WEIR_BENCH_WARMUP` times untimed (default 1; the warm-up
//!    rounds come first, each configuration in turn), then `WEIR_BENCH_RUNS` timed rounds
//!    (default 3) in which every configuration runs once, each round starting one
//!    configuration later than the one before (so order effects average out). Runs are
//!    interleaved so that a burst of noise on these shared machines (steal time) hits
//!    every configuration alike instead of one configuration's whole block.
//!    Each run is a child process in a fresh scratch directory (output, dead letters,
//!    state); the report gives per configuration the median wall time, events/s (of that
//!    row's own input), the program's self-timed median, the child's peak RSS (from
//!    `wait4`), Weir's checkpoint count and total checkpoint time (parsed from its stdout,
//!    of the run closest to the median) and every run's time;
//! 4. after all timings, checks the last run's output of each configuration with the
//!    workload's `check.py` when it is there, against the expected rows of its own input;
//!
//! The checker reads Parquet with pyarrow, and the DuckDB row needs `duckdb`: when
//! `python3` lacks either, the suite makes (once) a virtual environment with both,
//! `pip install pyarrow duckdb`, under `$WEIR_TOOLS/python` (default
//! `~/.cache/weir-tools/python`, where `scripts/tools.sh` keeps the test suite's tools,
//! outside the clone) and uses its Python for them; if that fails it says why and goes on
//! with `python3` (the checks then fail, and the DuckDB row is left out);
//! 5. prints a table and ratios, and writes them to `target/weir-bench/results.md`.
//!
//! Configurations, in run order: Weir with 1 and 2 workers, checkpoints off and every 1 s,
//! plus 2 workers every 100 ms (all on the 2M input; a 2M-event run is shorter than 1 s,
//! so "every 1s" takes only the final checkpoint); Weir with 2 workers and sliding
//! 1m/10s windows (6x the rows; not checked: the checker knows the tumbling rows only);
//! Weir with 2 workers on the 10M input,
//! checkpoints off and every 1 s, for the checkpoint overhead of a run that lasts several
//! intervals; the raw-timely baseline (`examples/raw_timely.rs`) with 1 and 2 workers; the
//! anomaly pipeline (`examples/anomaly_alerts.rs`, 2 workers, registry of the 10,000 devices);
//! the window operator alone on generated input (`examples/generator_windows.rs`, 2
//! workers, 20M readings each of 100,000 keys: 1 s tumbling windows with count, sum, min,
//! max, mean at 1,000 readings per ms of event time per worker, and 60 s / 1 s sliding
//! windows with mean and p99 at 100 per ms; the z-score detector per key, every reading scored);
//! DuckDB (`SET threads=2`, query timed inside Python) when `import duckdb` works.
//!
//! Environment: `WEIR_BENCH_RUNS` (timed rounds, default 3), `WEIR_BENCH_WARMUP` (warm-up
//! rounds, default 1), `WEIR_BENCH_LONG` (default on; `0`, `false`, `no` or `off` skips
//! the two 10M rows and does not make the 10M input). A quick end-to-end check:
//! `WEIR_BENCH_RUNS=1 WEIR_BENCH_WARMUP=0 cargo bench --bench throughput`.

use std::fmt::Write as _;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Events in the main input file.
const EVENTS: u64 = 2_000_000;
/// Events in the long input file (the checkpoint-overhead rows; `WEIR_BENCH_LONG=0` skips them).
const LONG_EVENTS: u64 = 10_000_000;
/// Seed of the input files.
const SEED: u64 = 42;
/// The workload's window.
const TUMBLING: &str = "tumbling:1m";
/// Readings per worker of the generator rows.
const GENERATED_PER_WORKER: u64 = 20_000_000;

type Result<T> = std::result::Result<T, String>;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs bench targets without it.
    // The suite takes minutes and needs release builds, so under `cargo test` only check the
    // output parsers.
    if !std::env::args().any(|a| a == "--bench") {
        self_test();
        println!("throughput: parsers ok; run the suite with `cargo bench --bench throughput`");
        return;
    }
    if let Err(e) = run() {
        eprintln!("throughput bench failed: {e}");
        std::process::exit(1);
    }
}

/// Paths and tools of one bench session.
struct Env {
    repo: PathBuf,
    bench_dir: PathBuf,
    examples: PathBuf,
    workloads: Option<PathBuf>,
    /// The Python with pyarrow and duckdb (or `python3` when none could be made).
    python: PathBuf,
    runs: usize,
    warmup: usize,
}

/// A Python that imports pyarrow and duckdb: `python3` if it does, else the
/// virtual environment under `$WEIR_TOOLS/python`, made and filled once.
fn python_with_tools() -> PathBuf {
    let system = PathBuf::from("python3");
    let imports = |python: &Path| {
        Command::new(python)
            .args(["-c", "import pyarrow, duckdb"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if imports(&system) {
        return system;
    }
    let tools = match std::env::var_os("WEIR_TOOLS") {
        Some(t) => PathBuf::from(t),
        None => match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".cache/weir-tools"),
            None => return system,
        },
    };
    let venv = tools.join("python");
    let python = venv.join("bin/python");
    if imports(&python) {
        return python;
    }
    println!("== python: making {} with pyarrow and duckdb (once)", venv.display());
    let made = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().is_ok_and(|s| s.success())
        && Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "pyarrow", "duckdb"])
            .status()
            .is_ok_and(|s| s.success());
    if made && imports(&python) {
        python
    } else {
        println!(
            "== python: could not make {} (python3 -m venv, pip install pyarrow duckdb); using python3",
            venv.display()
        );
        system
    }
}

/// One configuration to measure.
struct Config {
    name: String,
    kind: Kind,
    /// Events in the input it reads (`EVENTS` or `LONG_EVENTS`).
    events: u64,
}

/// An input file and its expected rows.
struct Input {
    path: PathBuf,
    events: u64,
    source: String,
    expected: Option<PathBuf>,
}

enum Kind {
    /// `checkpoint`: `--checkpoint-interval` with a fresh `--state`, or `None` for no `--state`.
    Weir {
        workers: usize,
        checkpoint: Option<&'static str>,
        /// `--window` (the workload's is `tumbling:1m`; only its rows can be checked).
        window: &'static str,
    },
    /// `examples/generator_windows` (no input file): `--window`, `--workers`,
    /// `--events` per worker.
    Generator {
        window: &'static str,
        workers: usize,
        per_worker: u64,
        /// `--per-ms`: readings per millisecond of event time, per worker.
        per_ms: u64,
    },
    Raw {
        workers: usize,
    },
    /// `examples/anomaly_alerts` with the registry of the generated devices.
    Alerts {
        workers: usize,
    },
    Duck,
}

/// One measured child process.
struct Run {
    wall: Duration,
    /// The program's own timing (Weir's `elapsed:`, raw timely's `in X s`, DuckDB's query time).
    self_timed: Option<f64>,
    maxrss_kib: u64,
    checkpoints: Option<(u64, f64)>,
}

/// A configuration's summary.
struct Row {
    name: String,
    events: u64,
    /// Per run, the time the comparison uses.
    times: Vec<f64>,
    /// Median of the time the comparison uses (wall time; DuckDB: the query time inside Python).
    median_s: f64,
    median_self_s: Option<f64>,
    /// Median wall time of the child process.
    median_wall_s: f64,
    peak_rss_mib: f64,
    checkpoints: Option<(u64, f64)>,
    check: String,
    /// The last run's output, checked after all configurations ran.
    check_target: Option<PathBuf>,
    /// The configuration's scratch directory.
    dir: PathBuf,
}

fn run() -> Result<()> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo.join("target"), PathBuf::from);
    let target = if target.is_absolute() { target } else { repo.join(target) };
    let bench_dir = target.join("weir-bench");
    std::fs::create_dir_all(&bench_dir).map_err(|e| format!("create {}: {e}", bench_dir.display()))?;
    let workloads = repo.join("../shared/workloads");
    let workloads = workloads.join("gen_data.py").is_file().then_some(workloads);
    let runs = match std::env::var("WEIR_BENCH_RUNS") {
        Ok(v) => v.trim().parse::<usize>().map_err(|_| format!("WEIR_BENCH_RUNS={v:?} is not a number"))?.max(1),
        Err(_) => 3,
    };
    let warmup = match std::env::var("WEIR_BENCH_WARMUP") {
        Ok(v) => v.trim().parse::<usize>().map_err(|_| format!("WEIR_BENCH_WARMUP={v:?} is not a number"))?,
        Err(_) => 1,
    };
    let python = python_with_tools();
    let env = Env { examples: target.join("release/examples"), repo, bench_dir, workloads, python, runs, warmup };
    let mut commands = Vec::new();

    // 1. The release examples.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build = [
        "build",
        "--release",
        "--example",
        "sensor_aggregation",
        "--example",
        "raw_timely",
        "--example",
        "generator_windows",
        "--example",
        "anomaly_alerts",
    ];
    commands.push(format!("cargo {}", build.join(" ")));
    println!("== building: cargo {}", build.join(" "));
    let status = Command::new(&cargo)
        .args(build)
        .current_dir(&env.repo)
        .status()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build failed ({status})"));
    }

    // 2. The input (and the expected rows, when the workload's checker is there).
    let long = std::env::var("WEIR_BENCH_LONG").map_or(true, |v| flag_on(&v));
    let mut inputs = vec![make_input(&env, EVENTS, &mut commands)?];
    if long {
        inputs.push(make_input(&env, LONG_EVENTS, &mut commands)?);
    }
    let hardware = hardware();
    for i in &inputs {
        println!("== input: {} ({} events, {})", i.path.display(), i.events, i.source);
    }
    println!("== hardware: {hardware}");
    println!(
        "== {} warm-up + {} timed round(s), interleaved: each round runs every configuration once \
         (WEIR_BENCH_WARMUP, WEIR_BENCH_RUNS); {} rows {} (WEIR_BENCH_LONG)",
        env.warmup,
        env.runs,
        count_label(LONG_EVENTS),
        if long { "on" } else { "skipped" }
    );

    // 3. The configurations.
    let mut configs = Vec::new();
    for workers in [1, 2] {
        for checkpoint in [None, Some("1s")] {
            let name =
                format!("weir {workers}w, {}", checkpoint.map_or("ckpt off".into(), |i| format!("ckpt every {i}")));
            configs.push(Config { name, kind: Kind::Weir { workers, checkpoint, window: TUMBLING }, events: EVENTS });
        }
    }
    // Sliding windows (six per reading, six times the rows) against the tumbling row above.
    configs.push(Config {
        name: "weir 2w, sliding 1m/10s, ckpt off".into(),
        kind: Kind::Weir { workers: 2, checkpoint: None, window: "sliding:1m/10s" },
        events: EVENTS,
    });
    // Extra: at 2M events a run is shorter than 1 s, so `--checkpoint-interval 1s`
    // takes only the final checkpoint; 100ms (the default epoch length) shows the cost
    // of checkpoints taken while the data flows.
    configs.push(Config {
        name: "weir 2w, ckpt every 100ms".into(),
        kind: Kind::Weir { workers: 2, checkpoint: Some("100ms"), window: TUMBLING },
        events: EVENTS,
    });
    // The checkpoint overhead needs a run of several checkpoint intervals: the 10M input.
    if long {
        for checkpoint in [None, Some("1s")] {
            let ckpt = checkpoint.map_or("ckpt off".into(), |i| format!("ckpt every {i}"));
            let name = format!("weir 2w, {ckpt}, {}", count_label(LONG_EVENTS));
            let kind = Kind::Weir { workers: 2, checkpoint, window: TUMBLING };
            configs.push(Config { name, kind, events: LONG_EVENTS });
        }
    }
    for workers in [1, 2] {
        configs.push(Config { name: format!("raw timely {workers}w"), kind: Kind::Raw { workers }, events: EVENTS });
    }
    // The anomaly pipeline (registry join, z-score, bounds and silence per device) on the same file.
    configs.push(Config { name: "anomaly_alerts 2w".into(), kind: Kind::Alerts { workers: 2 }, events: EVENTS });
    // The window operator without parsing: generated readings of 100,000 keys.
    // Tumbling: 1,000 readings per ms per worker (10 per key and window and worker).
    // Sliding: 100 per ms (2 per key and second in all, 120 per window), as a fleet
    // of 100,000 sensors reporting twice a second would.
    // Z-score: the anomaly detector per key, each reading scored.
    for (window, per_ms) in [("tumbling", 1000), ("sliding", 100), ("zscore", 1000)] {
        let (workers, per_worker) = (2, GENERATED_PER_WORKER);
        configs.push(Config {
            name: format!("generator 2w, {window}"),
            kind: Kind::Generator { window, workers, per_worker, per_ms },
            events: EVENTS,
        });
    }
    let duck = Command::new(&env.python)
        .args(["-c", "import duckdb"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if duck {
        configs.push(Config { name: "duckdb threads=2".into(), kind: Kind::Duck, events: EVENTS });
    } else {
        println!("== duckdb: `{} -c 'import duckdb'` failed; skipping it", env.python.display());
    }

    // Each configuration's input, resolved before any run.
    let config_inputs = configs
        .iter()
        .map(|c| {
            inputs
                .iter()
                .find(|i| i.events == c.events)
                .ok_or_else(|| format!("{}: no input of {} events", c.name, c.events))
        })
        .collect::<Result<Vec<&Input>>>()?;
    // Interleaved: all warm-ups (config order), then `runs` rounds of every configuration once.
    let mut runs: Vec<Vec<Run>> = configs.iter().map(|_| Vec::new()).collect();
    let mut shown: Vec<String> = vec![String::new(); configs.len()];
    for w in 0..env.warmup {
        println!("== warm-up round {}/{}", w + 1, env.warmup);
        for (c, (config, input)) in configs.iter().zip(&config_inputs).enumerate() {
            let (_, command) = run_once(&env, config, &input.path, &format!("warm-up {}", w + 1))?;
            shown[c] = command;
        }
    }
    for r in 0..env.runs {
        println!("== round {}/{}", r + 1, env.runs);
        // Each round starts one configuration later, so no configuration always
        // runs right after the same other one (a run can leave the page cache,
        // the allocator's arenas or the disk's write-back in a state that helps
        // or hurts the next).
        for k in 0..configs.len() {
            let c = (r + k) % configs.len();
            let (config, input) = (&configs[c], config_inputs[c]);
            let (run, command) = run_once(&env, config, &input.path, &format!("round {}", r + 1))?;
            shown[c] = command;
            runs[c].push(run);
        }
    }
    let mut rows = Vec::new();
    for (((config, input), runs), command) in configs.iter().zip(&config_inputs).zip(runs).zip(shown) {
        commands.push(command);
        rows.push(summarize(&env, config, input, runs));
    }
    // Checks run after all timings: a Python process reading 760,000 rows disturbs the next run.
    for row in &mut rows {
        let expected = inputs.iter().find(|i| i.events == row.events).and_then(|i| i.expected.as_ref());
        if let (Some(expected), Some(w), Some(target)) = (expected, &env.workloads, &row.check_target) {
            row.check = run_check(&env.python, &w.join("check.py"), expected, target);
            println!("== check {}: {}", row.name, row.check);
        }
        let _ = std::fs::remove_dir_all(&row.dir);
    }

    // 4. Report.
    let report = report(&rows, &hardware, &inputs, &env, &commands);
    println!();
    print!("{report}");
    let md = env.bench_dir.join("results.md");
    std::fs::write(&md, &report).map_err(|e| format!("write {}: {e}", md.display()))?;
    println!("\n(written to {})", md.display());
    if rows.iter().any(|r| r.check.starts_with("FAIL")) {
        return Err("some outputs failed the workload check (see the table)".into());
    }
    Ok(())
}

/// Makes an input of `events` events once (and its expected rows, when the workload's
/// checker is there).
fn make_input(env: &Env, events: u64, commands: &mut Vec<String>) -> Result<Input> {
    let (path, source) = make_file(env, events, commands)?;
    let expected = expected_rows(env, &path, events, commands)?;
    Ok(Input { path, events, source, expected })
}

/// Makes the input file once; returns its path and how it was made.
fn make_file(env: &Env, events: u64, commands: &mut Vec<String>) -> Result<(PathBuf, String)> {
    let stem = input_stem(events);
    let path = env.bench_dir.join(format!("{stem}.jsonl"));
    let stamp = env.bench_dir.join(format!("{stem}.jsonl.source"));
    let source = match &env.workloads {
        Some(w) => format!("gen_data.py --n {events} --seed {SEED} ({})", w.join("gen_data.py").display()),
        None => {
            format!("weir_testkit::sensor::generate({events}, {SEED}, 10_000, ..) (no ../shared/workloads/gen_data.py)")
        }
    };
    let fresh = path.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == source);
    if let Some(w) = &env.workloads {
        commands.push(format!(
            "python3 {} --n {events} --seed {SEED} --out {}",
            w.join("gen_data.py").display(),
            path.display()
        ));
    }
    if fresh {
        println!("== input: reusing {}", path.display());
        return Ok((path, source));
    }
    let _ = std::fs::remove_file(&stamp);
    println!("== generating {} with {source}", path.display());
    let started = Instant::now();
    match &env.workloads {
        Some(w) => {
            let status = Command::new("python3")
                .arg(w.join("gen_data.py"))
                .args(["--n", &events.to_string(), "--seed", &SEED.to_string(), "--out"])
                .arg(&path)
                .status()
                .map_err(|e| format!("python3 gen_data.py: {e}"))?;
            if !status.success() {
                return Err(format!("gen_data.py failed ({status})"));
            }
        }
        None => {
            let file = std::fs::File::create(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
            let mut out = BufWriter::with_capacity(1 << 20, file);
            weir_testkit::sensor::generate(events, SEED, 10_000, &mut out).map_err(|e| format!("generate: {e}"))?;
            out.flush().map_err(|e| format!("write {}: {e}", path.display()))?;
        }
    }
    std::fs::write(&stamp, &source).map_err(|e| format!("write {}: {e}", stamp.display()))?;
    println!("   done in {:.1?}", started.elapsed());
    Ok((path, source))
}

/// The expected rows (CSV from the workload's `reference.py`), made once; `None` without the workload scripts.
fn expected_rows(env: &Env, input: &Path, events: u64, commands: &mut Vec<String>) -> Result<Option<PathBuf>> {
    let Some(w) = &env.workloads else { return Ok(None) };
    if !w.join("reference.py").is_file() || !w.join("check.py").is_file() {
        return Ok(None);
    }
    let csv = env.bench_dir.join(format!("{}.expected.csv", input_stem(events)));
    commands.push(format!(
        "python3 {} --input {} --output {}",
        w.join("reference.py").display(),
        input.display(),
        csv.display()
    ));
    let input_time = std::fs::metadata(input).and_then(|m| m.modified()).ok();
    let csv_time = std::fs::metadata(&csv).and_then(|m| m.modified()).ok();
    if let (Some(i), Some(c)) = (input_time, csv_time)
        && c >= i
    {
        return Ok(Some(csv));
    }
    println!("== expected rows: reference.py -> {}", csv.display());
    let status = Command::new("python3")
        .arg(w.join("reference.py"))
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(&csv)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("python3 reference.py: {e}"))?;
    if !status.success() {
        let _ = std::fs::remove_file(&csv);
        return Err(format!("reference.py failed ({status})"));
    }
    Ok(Some(csv))
}

/// `WEIR_BENCH_LONG`'s value: on unless `0`, `false`, `no` or `off` (any case).
fn flag_on(value: &str) -> bool {
    !matches!(value.trim().to_ascii_lowercase().as_str(), "0" | "false" | "no" | "off")
}

/// `2M` for 2,000,000 events; the exact count when it is not whole millions.
fn count_label(events: u64) -> String {
    if events >= 1_000_000 && events.is_multiple_of(1_000_000) {
        format!("{}M", events / 1_000_000)
    } else {
        events.to_string()
    }
}

/// The input's file stem under the bench directory: `sensor-2m`, `sensor-10m`.
fn input_stem(events: u64) -> String {
    format!("sensor-{}", count_label(events).to_ascii_lowercase())
}

/// The device registry of the generated inputs (`dev-00000` .. `dev-09999`,
/// `weir_testkit::alerts::registry_for`), written once into the bench directory.
fn registry(env: &Env) -> Result<PathBuf> {
    let path = env.bench_dir.join("devices-10000.csv");
    if !path.is_file() {
        let csv = weir_testkit::alerts::registry_for(10_000).to_csv();
        std::fs::write(&path, csv).map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    Ok(path)
}

/// The scratch directory of a configuration.
fn scratch(env: &Env, config: &Config) -> PathBuf {
    let slug: String = config.name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    env.bench_dir.join("runs").join(slug)
}

/// Where a configuration's run writes its rows (checked after all timings).
fn output_of(env: &Env, config: &Config) -> PathBuf {
    let out = scratch(env, config).join("out");
    if matches!(config.kind, Kind::Duck) { out.join("duck.parquet") } else { out }
}

/// Runs a configuration once in a fresh scratch directory (its output stays for the
/// check); returns the run and the command line.
fn run_once(env: &Env, config: &Config, input: &Path, label: &str) -> Result<(Run, String)> {
    let dir = scratch(env, config);
    let (out, dlq, state) = (dir.join("out"), dir.join("dlq"), dir.join("state"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("remove {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let mut cmd = match config.kind {
        Kind::Weir { workers, checkpoint, window } => {
            let mut c = Command::new(env.examples.join("sensor_aggregation"));
            c.arg("--input").arg(input).arg("--output").arg(&out).arg("--dead-letter").arg(&dlq);
            c.args(["--workers", &workers.to_string(), "--window", window]);
            if let Some(interval) = checkpoint {
                c.arg("--state").arg(&state).args(["--checkpoint-interval", interval]);
            }
            c
        }
        Kind::Generator { window, workers, per_worker, per_ms } => {
            let mut c = Command::new(env.examples.join("generator_windows"));
            c.args(["--window", window, "--workers", &workers.to_string(), "--events", &per_worker.to_string()]);
            c.args(["--per-ms", &per_ms.to_string()]);
            c
        }
        Kind::Alerts { workers } => {
            let registry = registry(env)?;
            let mut c = Command::new(env.examples.join("anomaly_alerts"));
            c.arg("--input").arg(input).arg("--registry").arg(registry).arg("--output").arg(&out);
            c.arg("--dead-letter").arg(&dlq).args(["--workers", &workers.to_string()]);
            c
        }
        Kind::Raw { workers } => {
            let mut c = Command::new(env.examples.join("raw_timely"));
            c.arg("--input").arg(input).arg("--output").arg(&out).args(["--workers", &workers.to_string()]);
            c
        }
        Kind::Duck => {
            std::fs::create_dir_all(&out).map_err(|e| format!("create {}: {e}", out.display()))?;
            let mut c = Command::new(&env.python);
            c.args(["-c", DUCK_SCRIPT]).arg(input).arg(output_of(env, config));
            c
        }
    };
    let command = display_command(&cmd);
    let (run, stdout) = run_child(&mut cmd, &dir.join("stderr.log"))?;
    let run = Run { self_timed: self_timed(&config.kind, &stdout), checkpoints: parse_checkpoints(&stdout), ..run };
    println!(
        "   {label} {}: {:.3} s wall{}, peak RSS {:.0} MiB{}",
        config.name,
        run.wall.as_secs_f64(),
        run.self_timed.map_or(String::new(), |s| format!(" ({s:.3} s self-timed)")),
        run.maxrss_kib as f64 / 1024.0,
        run.checkpoints.map_or(String::new(), |(n, ms)| format!(", {n} checkpoints ({ms:.1} ms)"))
    );
    Ok((run, command))
}

/// A configuration's row from its timed runs.
fn summarize(env: &Env, config: &Config, input: &Input, runs: Vec<Run>) -> Row {
    let is_duck = matches!(config.kind, Kind::Duck);
    let times: Vec<f64> = runs
        .iter()
        .map(|r| if is_duck { r.self_timed.unwrap_or(r.wall.as_secs_f64()) } else { r.wall.as_secs_f64() })
        .collect();
    let median_s = median(&times);
    let selfs: Vec<f64> = runs.iter().filter_map(|r| r.self_timed).collect();
    let median_self_s = (!selfs.is_empty()).then(|| median(&selfs));
    // Checkpoint figures of the run closest to the median time.
    let mid = times
        .iter()
        .enumerate()
        .min_by(|a, b| (a.1 - median_s).abs().total_cmp(&(b.1 - median_s).abs()))
        .map(|(i, _)| i);
    let (events, checkable) = match config.kind {
        Kind::Generator { workers, per_worker, .. } => (per_worker * workers as u64, false),
        Kind::Weir { window, .. } => (input.events, window == TUMBLING),
        Kind::Raw { .. } | Kind::Duck => (input.events, true),
        Kind::Alerts { .. } => (input.events, false),
    };
    Row {
        name: config.name.clone(),
        events,
        median_s,
        median_self_s,
        median_wall_s: median(&runs.iter().map(|r| r.wall.as_secs_f64()).collect::<Vec<_>>()),
        peak_rss_mib: runs.iter().map(|r| r.maxrss_kib).max().unwrap_or(0) as f64 / 1024.0,
        checkpoints: mid.and_then(|i| runs[i].checkpoints),
        times,
        check: "-".into(),
        check_target: checkable.then(|| output_of(env, config)),
        dir: scratch(env, config),
    }
}

/// DuckDB's run: argv[1] = input, argv[2] = output file; prints the query time.
const DUCK_SCRIPT: &str = r#"
import sys, time, duckdb
inp, out = sys.argv[1], sys.argv[2]
q = ("COPY (SELECT device, ts - ts % 60000 AS window_start, count(*) AS count, min(temp) AS min, "
     "max(temp) AS max, avg(temp) AS mean FROM read_json('" + inp + "', format='newline_delimited', "
     "ignore_errors=true, columns={'device':'VARCHAR','ts':'BIGINT','temp':'DOUBLE'}) "
     "WHERE device IS NOT NULL AND ts IS NOT NULL AND temp BETWEEN -50 AND 150 GROUP BY ALL) "
     "TO '" + out + "' (FORMAT parquet)")
con = duckdb.connect()
con.execute("SET threads=2")
t = time.perf_counter()
con.execute(q)
print("duckdb: %.6f s" % (time.perf_counter() - t))
"#;

/// Spawns `cmd` with stdout captured to memory (via a file) and stderr to `stderr_log`;
/// waits with `wait4` for the wall time and the peak RSS.
fn run_child(cmd: &mut Command, stderr_log: &Path) -> Result<(Run, String)> {
    let stdout_log = stderr_log.with_file_name("stdout.log");
    let out = std::fs::File::create(&stdout_log).map_err(|e| format!("create {}: {e}", stdout_log.display()))?;
    let err = std::fs::File::create(stderr_log).map_err(|e| format!("create {}: {e}", stderr_log.display()))?;
    let started = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", display_command(cmd)))?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero `rusage` is a valid value; `wait4` fills it in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our child (not yet reaped: `child` is never waited on), and
        // `status`/`usage` are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("wait4: {e}"));
        }
    }
    let wall = started.elapsed();
    drop(child); // already reaped; dropping a `Child` neither waits nor kills
    let stdout = std::fs::read_to_string(&stdout_log).unwrap_or_default();
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let stderr = std::fs::read_to_string(stderr_log).unwrap_or_default();
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "{} failed (wait status {status:#x})\nstdout:\n{stdout}\nstderr (tail):\n{}",
            display_command(cmd),
            tail.join("\n")
        ));
    }
    // Linux reports ru_maxrss in KiB.
    let maxrss_kib = usage.ru_maxrss.max(0) as u64;
    Ok((Run { wall, self_timed: None, maxrss_kib, checkpoints: None }, stdout))
}

/// `checkpoints:   N (total X ms, max Y ms)` → (N, X).
fn parse_checkpoints(stdout: &str) -> Option<(u64, f64)> {
    stdout.lines().find_map(|line| {
        let rest = line.strip_prefix("checkpoints:")?.trim();
        let (n, rest) = rest.split_once(" (total ")?;
        let (ms, _) = rest.split_once(" ms")?;
        Some((n.trim().parse().ok()?, ms.trim().parse().ok()?))
    })
}

/// The program's own timing from its stdout.
fn self_timed(kind: &Kind, stdout: &str) -> Option<f64> {
    let number_before_s = |s: &str| s.trim().strip_suffix(" s").and_then(|n| n.trim().parse::<f64>().ok());
    stdout.lines().find_map(|line| match kind {
        Kind::Weir { .. } | Kind::Generator { .. } | Kind::Alerts { .. } => {
            number_before_s(line.strip_prefix("elapsed:")?)
        }
        Kind::Raw { .. } => {
            let rest = line.strip_prefix("raw-timely: ")?;
            let (_, rest) = rest.split_once(" events in ")?;
            let (secs, _) = rest.split_once(" s")?;
            secs.trim().parse().ok()
        }
        Kind::Duck => number_before_s(line.strip_prefix("duckdb:")?),
    })
}

/// Runs the workload's checker; a one-word verdict.
fn run_check(python: &Path, check_py: &Path, expected: &Path, output: &Path) -> String {
    let result = Command::new(python)
        .arg(check_py)
        .arg("--expected")
        .arg(expected)
        .arg("--output")
        .arg(output)
        .stdin(Stdio::null())
        .output();
    match result {
        Ok(o) if o.status.success() => "ok".into(),
        Ok(o) => {
            // The checker's verdict is on stdout; a checker that could not run (no pyarrow,
            // say) says why on stderr.
            let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            let first = out.lines().map(str::trim).find(|l| !l.is_empty());
            let why = first.or_else(|| err.lines().map(str::trim).rfind(|l| !l.is_empty())).unwrap_or("");
            format!("FAIL: {why}")
        }
        Err(e) => format!("FAIL: cannot run check.py: {e}"),
    }
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn display_command(cmd: &Command) -> String {
    let quote = |s: &str| {
        if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c)) {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    let program = cmd.get_program().to_string_lossy();
    let mut parts = vec![quote(&program)];
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        // Keep the table readable: the DuckDB script is shown in the source, not inline.
        if a.contains('\n') {
            parts.push("<DUCK_SCRIPT in benches/throughput.rs>".into())
        } else {
            parts.push(quote(&a))
        }
    }
    parts.join(" ")
}

/// `CPU model, N cores (M available), X GiB RAM`.
fn hardware() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let logical = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let available = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(String::new(), |kb| format!(", {:.1} GiB RAM", kb / 1024.0 / 1024.0));
    format!("{model}, {logical} logical CPUs in /proc/cpuinfo ({available} available to this process){mem_gib}")
}

fn report(rows: &[Row], hardware: &str, inputs: &[Input], env: &Env, commands: &[String]) -> String {
    let mut s = String::new();
    let counts: Vec<String> = inputs.iter().map(|i| i.events.to_string()).collect();
    let _ = writeln!(s, "# Weir throughput: sensor-window, {} events\n", counts.join(" and "));
    let _ = writeln!(s, "- hardware: {hardware}");
    for input in inputs {
        let size_mb = std::fs::metadata(&input.path).map_or(0.0, |m| m.len() as f64 / 1e6);
        let _ = writeln!(s, "- input: `{}` ({size_mb:.0} MB; {})", input.path.display(), input.source);
    }
    let _ = writeln!(
        s,
        "- {} untimed warm-up + {} timed run(s) per configuration, interleaved (each round runs every \
         configuration once, starting one configuration later than the round before); time = median wall time of the child process \
         (DuckDB: median query time measured inside Python); peak RSS = largest `ru_maxrss` over the runs",
        env.warmup, env.runs
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| configuration | median s | events/s | self-timed s | peak RSS MiB | checkpoints | ckpt total ms | all runs s | check |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---|---|");
    for r in rows {
        let all: Vec<String> = r.times.iter().map(|t| format!("{t:.3}")).collect();
        let (n, ms) = r.checkpoints.map_or(("-".into(), "-".into()), |(n, ms)| (n.to_string(), format!("{ms:.1}")));
        let _ = writeln!(
            s,
            "| {} | {:.3} | {:.0} | {} | {:.0} | {} | {} | {} | {} |",
            r.name,
            r.median_s,
            r.events as f64 / r.median_s,
            r.median_self_s.map_or("-".into(), |x| format!("{x:.3}")),
            r.peak_rss_mib,
            n,
            ms,
            all.join(", "),
            r.check
        );
    }
    if let Some(d) = rows.iter().find(|r| r.name == "duckdb threads=2") {
        let _ = writeln!(
            s,
            "\nDuckDB's process (Python start, `import duckdb`, query): median wall {:.3} s.",
            d.median_wall_s
        );
    }
    let _ = writeln!(s);
    let find = |name: &str| rows.iter().find(|r| r.name == name).map(|r| r.median_s);
    let _ = writeln!(s, "Ratios (by median time):\n");
    if let (Some(w), Some(raw)) = (find("weir 2w, ckpt off"), find("raw timely 2w")) {
        let _ = writeln!(
            s,
            "- Weir 2 workers (ckpt off) vs raw timely 2 workers: {:.2}x the time ({:.0}% of raw timely's throughput)",
            w / raw,
            100.0 * raw / w
        );
    }
    if let (Some(w), Some(raw)) = (find("weir 1w, ckpt off"), find("raw timely 1w")) {
        let _ = writeln!(s, "- Weir 1 worker (ckpt off) vs raw timely 1 worker: {:.2}x the time", w / raw);
    }
    for (workers, interval) in [(1, "1s"), (2, "1s"), (2, "100ms")] {
        let off = find(&format!("weir {workers}w, ckpt off"));
        let on = find(&format!("weir {workers}w, ckpt every {interval}"));
        if let (Some(off), Some(on)) = (off, on) {
            let _ = writeln!(
                s,
                "- Weir {workers} worker{}: checkpoints every {interval} vs off: {:+.1}% time",
                if workers == 1 { "" } else { "s" },
                100.0 * (on / off - 1.0)
            );
        }
    }
    let long = count_label(LONG_EVENTS);
    if let (Some(off), Some(on)) =
        (find(&format!("weir 2w, ckpt off, {long}")), find(&format!("weir 2w, ckpt every 1s, {long}")))
    {
        let _ = writeln!(
            s,
            "- Weir 2 workers, {long} events: checkpoints every 1s vs off: {:+.1}% time",
            100.0 * (on / off - 1.0)
        );
    }
    if let (Some(alerts), Some(tumbling)) = (find("anomaly_alerts 2w"), find("weir 2w, ckpt off")) {
        let _ = writeln!(
            s,
            "- anomaly_alerts 2 workers vs sensor_aggregation 2 workers (ckpt off): {:.2}x the time",
            alerts / tumbling
        );
    }
    if let (Some(sliding), Some(tumbling)) = (find("weir 2w, sliding 1m/10s, ckpt off"), find("weir 2w, ckpt off")) {
        let _ = writeln!(
            s,
            "- Weir 2 workers: sliding 1m/10s vs tumbling 1m (both ckpt off): {:.2}x the time",
            sliding / tumbling
        );
    }
    for r in rows.iter().filter(|r| r.name.starts_with("generator")) {
        let _ = writeln!(
            s,
            "- {}: {:.2} M events/s, {:.2} M per worker (wall time of the process)",
            r.name,
            r.events as f64 / r.median_s / 1e6,
            r.events as f64 / r.median_s / 2e6
        );
    }
    if let Some(duck) = find("duckdb threads=2") {
        for ckpt in ["ckpt off", "ckpt every 1s"] {
            if let Some(w) = find(&format!("weir 2w, {ckpt}")) {
                let _ = writeln!(
                    s,
                    "- Weir 2 workers ({ckpt}) vs DuckDB (threads=2): {:.2}x the time (DuckDB {:.3} s)",
                    w / duck,
                    duck
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "\n`checkpoints` is Weir's own `checkpoints:` line; with no `--state` it still counts the final \
         commit of the output. A run shorter than the interval checkpoints only at the end."
    );
    let _ = writeln!(s, "\nCommands:\n");
    for c in commands {
        let _ = writeln!(s, "    {c}");
    }
    let _ = writeln!(s, "\nDuckDB script (argv: input, output file):\n");
    for line in DUCK_SCRIPT.trim().lines() {
        let _ = writeln!(s, "    {line}");
    }
    s
}

/// What `cargo test` checks: the stdout parsers, the median, the flag and the input names.
fn self_test() {
    let weir = "events in:     2000000\nelapsed:       0.602 s\nevents/s:      3322259\n\
                checkpoints:   7 (total 12.5 ms, max 3.1 ms)\ncheckpoints:   /tmp/state\n";
    assert_eq!(parse_checkpoints(weir), Some((7, 12.5)));
    assert_eq!(self_timed(&Kind::Weir { workers: 2, checkpoint: None, window: TUMBLING }, weir), Some(0.602));
    let raw = "windows out:   760000\nraw-timely: 2000000 events in 0.284 s (7042253 events/s)\n";
    assert_eq!(self_timed(&Kind::Raw { workers: 2 }, raw), Some(0.284));
    assert_eq!(parse_checkpoints(raw), None);
    assert_eq!(self_timed(&Kind::Duck, "duckdb: 0.383000 s\n"), Some(0.383));
    assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    for on in ["1", "", "yes", "true", " 1 "] {
        assert!(flag_on(on), "{on:?}");
    }
    for off in ["0", " 0\n", "false", "No", "OFF"] {
        assert!(!flag_on(off), "{off:?}");
    }
    assert_eq!(count_label(EVENTS), "2M");
    assert_eq!(count_label(LONG_EVENTS), "10M");
    assert_eq!(count_label(2_500_000), "2500000");
    assert_eq!(count_label(1000), "1000");
    assert_eq!(input_stem(EVENTS), "sensor-2m");
    assert_eq!(input_stem(LONG_EVENTS), "sensor-10m");
}
