//! The command line the workload examples share (`sensor_aggregation`,
//! `anomaly_alerts`): the options that pick a file or embedded-log input,
//! the output and dead-letter directories, workers, checkpoints and epochs
//! ([`RunArgs`], flattened into each example's own `clap` parser); the
//! no-argument demo ([`Demo`]: a generated feed in an embedded log under
//! `./weir-data/`); and the run summary both print ([`print_summary`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use weir_connectors::log::{LogConfig, Producer, Topic};
use weir_core::partition::Assignor;
use weir_core::time::parse_duration;
use weir_core::{Pipeline, RunSummary};

use crate::sensor::Input;

/// The options every workload example has.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// A JSON-lines input file (bounded: the run ends at end of file).
    #[arg(long, conflicts_with = "log_dir")]
    pub input: Option<PathBuf>,
    /// Parquet output directory (created if missing).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Dead-letter directory (created if missing).
    #[arg(long = "dead-letter")]
    pub dead_letter: Option<PathBuf>,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Checkpoint directory: resume from it after a crash; exactly-once output.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Time between checkpoints (100ms, 1s, ...).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub checkpoint_interval: Duration,
    /// Epoch length (20ms, ...): how often windows can fire; shorter epochs keep less data in flight.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    pub epoch_interval: Duration,
    /// Epochs sources may run ahead of the commit (flow control: bounds memory).
    #[arg(long, default_value_t = 4)]
    pub epochs_in_flight: u64,
    /// Unbounded runs: a partition without data for this long stops holding
    /// windows back until it has data again (`off`: it always holds them).
    #[arg(long, default_value = "10s", value_parser = parse_idle)]
    pub idle_timeout: IdleTimeout,
    /// Unbounded runs: how often to look for partitions added to a Kafka topic
    /// (`off`: never). A new partition is read from its earliest offset.
    #[arg(long, default_value = "30s", value_parser = parse_idle)]
    pub partition_discovery: IdleTimeout,
    /// Read from this embedded-log directory instead of a file.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Topic to read (embedded log or Kafka).
    #[arg(long, default_value = "sensors")]
    pub topic: String,
    /// Consumer group (names the checkpoints; default: the example's name).
    #[arg(long)]
    pub group: Option<String>,
    /// Stop at the end offsets seen at start (files are always bounded).
    #[arg(long)]
    pub bounded: bool,
    /// Partition assignor: range, round-robin or sticky.
    #[arg(long, default_value = "round-robin")]
    pub assignor: Assignor,
    /// Events to generate in the no-argument demo.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
}

/// `--idle-timeout`, `--partition-discovery`: a duration, or `None` for `off`.
#[derive(Clone, Copy, Debug)]
pub struct IdleTimeout(pub Option<Duration>);

/// Parses a duration or `off`.
pub fn parse_idle(s: &str) -> Result<IdleTimeout, String> {
    if s == "off" { Ok(IdleTimeout(None)) } else { parse_duration(s).map(|d| IdleTimeout(Some(d))) }
}

/// Where a run reads and writes, once the options (or the demo) decided.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The input.
    pub input: Input,
    /// The output directory.
    pub output: PathBuf,
    /// The dead-letter directory.
    pub dead_letters: PathBuf,
    /// The checkpoint directory, if any.
    pub state: Option<PathBuf>,
    /// Whether the run stops at the input's end.
    pub bounded: bool,
}

/// The no-argument demo's directory, `./weir-data/`.
pub const DEMO_DIR: &str = "weir-data";

/// The no-argument demo: a fresh `./weir-data/` with a generated feed in an
/// embedded log (topic `sensors`, 5 partitions), read to its end, with
/// output, dead letters and checkpoints beside it.
pub struct Demo {
    /// `./weir-data/`.
    pub dir: PathBuf,
}

impl Demo {
    /// Empties `./weir-data/` and writes `lines` (JSON readings, one a line)
    /// into its log, keyed by device; says so on stderr.
    pub fn create(lines: &[u8]) -> anyhow::Result<Demo> {
        let dir = PathBuf::from(DEMO_DIR);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        let log_dir = dir.join("log");
        let count = lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
        eprintln!("generating {count} synthetic readings into {}/ (topic `sensors`, 5 partitions)", log_dir.display());
        let started = Instant::now();
        produce(&log_dir, "sensors", 5, lines)?;
        eprintln!("  done in {:.2?}", started.elapsed());
        Ok(Demo { dir })
    }

    /// The demo's plan: its log, `out/`, `dead-letters/`, `state/`, bounded.
    pub fn plan(&self) -> Plan {
        Plan {
            input: Input::Log { dir: self.dir.join("log"), topic: "sensors".into() },
            output: self.dir.join("out"),
            dead_letters: self.dir.join("dead-letters"),
            state: Some(self.dir.join("state")),
            bounded: true,
        }
    }
}

impl RunArgs {
    /// Whether no input was given (the example then runs its demo).
    pub fn is_demo(&self) -> bool {
        self.input.is_none() && self.log_dir.is_none()
    }

    /// The plan of a run with input `input` (from [`file_or_log`](Self::file_or_log)
    /// or the example's own options): `--output` and `--dead-letter` are required.
    pub fn plan(&self, input: Input) -> anyhow::Result<Plan> {
        let Some(output) = self.output.clone() else { bail!("--output OUT_DIR is required") };
        let Some(dead_letters) = self.dead_letter.clone() else { bail!("--dead-letter DLQ_DIR is required") };
        Ok(Plan {
            input,
            output,
            dead_letters,
            state: self.state.clone(),
            bounded: self.bounded || self.input.is_some(),
        })
    }

    /// `--input` as a file, or `--log-dir` with `--topic` as an embedded-log topic.
    pub fn file_or_log(&self) -> Option<Input> {
        match (&self.input, &self.log_dir) {
            (Some(file), _) => Some(Input::File(file.clone())),
            (None, Some(dir)) => Some(Input::Log { dir: dir.clone(), topic: self.topic.clone() }),
            (None, None) => None,
        }
    }

    /// The consumer group: `--group`, else `default`.
    pub fn group(&self, default: &str) -> String {
        self.group.clone().unwrap_or_else(|| default.to_string())
    }

    /// The pipeline these options configure, for `plan` (group `group`).
    /// `WEIR_EPOCH_RECORDS=N` makes epochs deterministic for tests: N records
    /// an epoch, a checkpoint every 2 epochs.
    pub fn pipeline(&self, group: String, plan: &Plan) -> anyhow::Result<Pipeline> {
        let mut pipeline = Pipeline::new(group)
            .workers(self.workers)
            .checkpoint_every(self.checkpoint_interval)
            .epoch_every(self.epoch_interval)
            .epochs_in_flight(self.epochs_in_flight)
            .idle_timeout(self.idle_timeout.0)
            .partition_discovery(self.partition_discovery.0)
            .bounded(plan.bounded)
            .assignor(self.assignor);
        if let Some(state) = &plan.state {
            pipeline = pipeline.state(state);
        }
        if let Ok(n) = std::env::var("WEIR_EPOCH_RECORDS") {
            let n: u64 = n.parse().context("WEIR_EPOCH_RECORDS must be a number")?;
            pipeline = pipeline.epoch_records(n, 2);
        }
        Ok(pipeline)
    }
}

/// Creates log topic `topic` with `partitions` partitions in `log_dir` and
/// appends `lines` (one record a line), keyed by their `device` value.
pub fn produce(log_dir: &Path, topic: &str, partitions: u32, lines: &[u8]) -> anyhow::Result<()> {
    let topic = Topic::create(log_dir, topic, partitions)?;
    let mut producer = Producer::new(&topic, LogConfig::default())?;
    for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        producer.send(key_of(line), line)?;
    }
    producer.flush()?;
    Ok(())
}

/// The `device` value of a line, without a full parse (lines without one are spread round-robin).
pub fn key_of(line: &[u8]) -> Option<&[u8]> {
    let pat = b"\"device\":\"";
    let start = line.windows(pat.len()).position(|w| w == pat)? + pat.len();
    let len = line[start..].iter().position(|&b| b == b'"')?;
    Some(&line[start..start + len])
}

/// Prints a run's summary: events, dead letters, filtered readings, `rows`
/// (name and the counter-name prefix of the sinks whose rows it sums, as
/// `("windows out", "parquet")`), speed, checkpoints and where things are.
pub fn print_summary(s: &RunSummary, plan: &Plan, rows: &[(&str, &str)], outputs: &[String]) {
    if s.already_complete {
        println!(
            "already complete: the checkpoint in {} covers all input; nothing to do",
            plan.state.as_deref().map_or("?".into(), |p| p.display().to_string())
        );
        return;
    }
    let events = s.counter("records_in");
    let dead_letters: u64 = s.counters.iter().filter(|(k, _)| k.starts_with("dead_letters.")).map(|(_, v)| v).sum();
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    if let Some(e) = s.restored_from {
        println!("resumed from checkpoint epoch {e}");
    }
    println!("events in:     {events}");
    println!("dead letters:  {dead_letters}");
    println!("filtered:      {}", s.counter("filtered"));
    // Table updates that came behind their flow's watermark (applied to later readings only).
    let late = s.counters.iter().filter(|(k, _)| k.ends_with(".late_updates")).map(|(_, v)| *v).reduce(|a, b| a + b);
    if let Some(late) = late {
        println!("late updates:  {late}");
    }
    for (name, prefix) in rows {
        let n: u64 =
            s.counters.iter().filter(|(k, _)| k.starts_with(prefix) && k.ends_with(".rows")).map(|(_, v)| v).sum();
        println!("{:<15}{n}", format!("{name}:"));
    }
    println!("elapsed:       {:.3} s", secs);
    println!("events/s:      {:.0}", events as f64 / secs);
    println!(
        "checkpoints:   {} (total {:.1} ms, max {:.1} ms)",
        s.commits.count,
        s.commits.total.as_secs_f64() * 1e3,
        s.commits.max.as_secs_f64() * 1e3
    );
    for line in outputs {
        println!("output:        {line}");
    }
    println!("dead letters:  {}/*.jsonl", plan.dead_letters.display());
    if let Some(state) = &plan.state {
        println!("checkpoints:   {}", state.display());
    }
}
