//! The sensor-window example (workload: per device, event-time windows, by
//! default tumbling one-minute ones, of count/min/max/mean temperature and
//! optional percentiles), as a command line.
//!
//! ```text
//! cargo run --release --example sensor_aggregation            # demo on a generated feed
//! sensor_aggregation --input FILE.jsonl --output OUT --dead-letter DLQ --workers 2 [--state DIR]
//!     [--window tumbling:1m | sliding:1m/10s | session:30s] [--percentiles 0.5,0.99]
//!     [--allowed-lateness 30s]    # late readings correct their windows: a change log with a `diff` column
//! sensor_aggregation --log-dir DIR --topic sensors --group G --bounded --output OUT --dead-letter DLQ
//! ```
//!
//! The pipeline itself is `weir_testkit::sensor::build_with` (the unpublished
//! test kit, shared with the tests and benches, which build it in-process or
//! spawn this binary); this file turns options into its inputs, outputs and
//! pipeline settings, and prints a summary.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use weir::connectors::kafka::{KafkaConfig, KafkaTopic, StartPosition};
use weir::connectors::mqtt::{GatewayTls, MqttTopic, Password};
use weir::core::partition::Assignor;
use weir::core::time::parse_duration;
use weir::prelude::*;
use weir_testkit::sensor::{self, Input, Quantiles, TimeConfig, TimeFrom, WindowConfig};

// Pipelines allocate on one worker thread and free on another; mimalloc
// handles that far better than the system allocator (about 1.5x end to end).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run the sensor-window pipeline: per device, event-time windows (one-minute
/// tumbling ones by default) of count/min/max/mean temperature and optional
/// percentiles, written as Parquet; malformed lines go to
/// the dead-letter directory. With no input options, generates a synthetic
/// feed into an embedded log under ./weir-data/ and runs on it.
#[derive(Parser, Debug)]
#[command(name = "sensor_aggregation", version)]
struct Args {
    /// A JSON-lines input file (bounded: the run ends at end of file).
    #[arg(long, conflicts_with = "log_dir")]
    input: Option<PathBuf>,
    /// Parquet output directory (created if missing).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Dead-letter directory (created if missing).
    #[arg(long = "dead-letter")]
    dead_letter: Option<PathBuf>,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Checkpoint directory: resume from it after a crash; exactly-once output.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Time between checkpoints (100ms, 1s, ...).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    checkpoint_interval: Duration,
    /// Epoch length (20ms, ...): how often windows can fire; shorter epochs keep less data in flight.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    epoch_interval: Duration,
    /// Epochs sources may run ahead of the commit (flow control: bounds memory).
    #[arg(long, default_value_t = 4)]
    epochs_in_flight: u64,
    /// Unbounded runs: a partition without data for this long stops holding
    /// windows back until it has data again (`off`: it always holds them).
    #[arg(long, default_value = "10s", value_parser = parse_idle)]
    idle_timeout: IdleTimeout,
    /// Unbounded runs: how often to look for partitions added to a Kafka topic
    /// (`off`: never). A new partition is read from its earliest offset.
    #[arg(long, default_value = "30s", value_parser = parse_idle)]
    partition_discovery: IdleTimeout,
    /// Read from this embedded-log directory instead of a file.
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Read from this Kafka cluster (`host:port[,host:port...]`) instead of a file.
    #[arg(long, conflicts_with_all = ["input", "log_dir"])]
    brokers: Option<String>,
    /// A librdkafka client setting, `key=value` (repeatable): TLS, SASL, timeouts.
    #[arg(long = "kafka-option", value_parser = KafkaConfig::parse_option)]
    kafka_options: Vec<(String, String)>,
    /// A properties file of librdkafka client settings (`key=value` lines).
    #[arg(long)]
    kafka_properties: Option<PathBuf>,
    /// Also produce every window row (JSON, keyed by device) to this Kafka
    /// topic, after its checkpoint commits (at-least-once).
    #[arg(long)]
    kafka_results: Option<String>,
    /// Also produce every dead letter (JSON) to this Kafka topic, after its
    /// checkpoint commits (at-least-once).
    #[arg(long)]
    kafka_dead_letters: Option<String>,
    /// The Kafka cluster of `--kafka-results` and `--kafka-dead-letters`
    /// (default: `--brokers`).
    #[arg(long)]
    sink_brokers: Option<String>,
    /// Also publish every window row (JSON, QoS 1) to this MQTT topic, at
    /// `TOPIC/DEVICE`, after its checkpoint commits (at-least-once).
    #[arg(long, requires = "mqtt_broker")]
    mqtt_results: Option<String>,
    /// The MQTT broker (`host:port`) of `--mqtt-results`.
    #[arg(long, requires = "mqtt_results")]
    mqtt_broker: Option<String>,
    /// The MQTT client id of `--mqtt-results` (default `weir-GROUP-results`).
    #[arg(long, requires = "mqtt_results")]
    mqtt_client_id: Option<String>,
    /// `--mqtt-results` over TLS, trusting this PEM file of CA certificates.
    #[arg(long, value_name = "FILE", requires = "mqtt_results")]
    mqtt_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with `--mqtt-key`, `--mqtt-ca`).
    #[arg(long, value_name = "FILE", requires = "mqtt_results")]
    mqtt_cert: Option<PathBuf>,
    /// PEM private key of `--mqtt-cert`.
    #[arg(long, value_name = "FILE", requires = "mqtt_results")]
    mqtt_key: Option<PathBuf>,
    /// User name for `--mqtt-results`; the password comes from
    /// `--mqtt-password-file` or WEIR_MQTT_PASSWORD.
    #[arg(long, requires = "mqtt_results")]
    mqtt_username: Option<String>,
    /// File holding the password of `--mqtt-username`.
    #[arg(long, value_name = "FILE", requires = "mqtt_username")]
    mqtt_password_file: Option<PathBuf>,
    /// Where a partition without a checkpointed offset starts: committed (the
    /// group's broker offset, else earliest), earliest, latest or timestamp:MS.
    #[arg(long, default_value = "committed", requires = "brokers")]
    start_from: StartPosition,
    /// Records of `--log-dir`: `json` (one reading a record) or `mqtt`
    /// (written by `weir ingest mqtt`: MQTT topic, NUL, the reading).
    #[arg(long, default_value = "json", value_parser = ["json", "mqtt"])]
    record_format: String,
    /// Where a reading's event time comes from: `ts` (the payload field) or
    /// `message-timestamp` (the Kafka message timestamp; needs `--brokers`).
    #[arg(long, value_enum, default_value_t = EventTimeArg::Ts)]
    event_time: EventTimeArg,
    /// How far (500ms, 2s, 1m, ...) a reading's event time may be behind the
    /// largest one its partition has shown and still count: the watermark's
    /// delay. A reading whose window has already fired is a dead letter (`late`).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    max_out_of_orderness: Duration,
    /// How long (30s, 1m, ...; 0 = off) after a window fired a late reading
    /// still corrects it. The output is then a change log with an Int64 column
    /// `diff`, last: a corrected window's old row again with -1, then its new
    /// row with +1 (a late reading that bridges two sessions retracts both).
    /// Session windows take a reading at most this far behind the watermark.
    /// A reading later than that is a dead letter (`late`). Without it: no
    /// `diff` column, one final row per window.
    #[arg(long, value_name = "DURATION", default_value = "0ms", value_parser = parse_duration)]
    allowed_lateness: Duration,
    /// The windows: `tumbling:SIZE`, `sliding:SIZE/SLIDE` (a window of SIZE
    /// starting every SLIDE) or `session:GAP` (a device's session ends after
    /// GAP without readings); durations as for `--max-out-of-orderness`.
    #[arg(long, value_name = "KIND:DURATION", default_value = "tumbling:1m", value_parser = sensor::parse_window)]
    window: WindowSpec,
    /// Also write these quantiles of the temperature (`0.5,0.99`), one Float64
    /// column each named `p` + the percent (`p50`, `p99`, `p99.9`); estimated
    /// within 1 % (DDSketch).
    #[arg(long, value_name = "Q,Q,...", allow_negative_numbers = true, value_parser = sensor::parse_percentiles)]
    percentiles: Option<Quantiles>,
    /// Topic to read (embedded log or Kafka).
    #[arg(long, default_value = "sensors")]
    topic: String,
    /// Consumer group (names the checkpoints).
    #[arg(long, default_value = "sensor-aggregation")]
    group: String,
    /// Stop at the end offsets seen at start (files are always bounded).
    #[arg(long)]
    bounded: bool,
    /// Partition assignor: range, round-robin or sticky.
    #[arg(long, default_value = "round-robin")]
    assignor: Assignor,
    /// Events to generate in the no-argument demo.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
}

/// `--event-time`: where a reading's event time comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum EventTimeArg {
    /// The payload's `ts` field.
    Ts,
    /// The Kafka message timestamp.
    MessageTimestamp,
}

impl From<EventTimeArg> for TimeFrom {
    fn from(arg: EventTimeArg) -> Self {
        match arg {
            EventTimeArg::Ts => TimeFrom::Payload,
            EventTimeArg::MessageTimestamp => TimeFrom::MessageTimestamp,
        }
    }
}

/// `--idle-timeout`, `--partition-discovery`: a duration or `off`.
#[derive(Clone, Copy, Debug)]
struct IdleTimeout(Option<Duration>);

fn parse_idle(s: &str) -> Result<IdleTimeout, String> {
    if s == "off" { Ok(IdleTimeout(None)) } else { parse_duration(s).map(|d| IdleTimeout(Some(d))) }
}

fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    run(Args::parse())
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.event_time == EventTimeArg::MessageTimestamp && args.brokers.is_none() {
        bail!(
            "--event-time message-timestamp needs a Kafka input (--brokers HOST:PORT): files and the embedded log \
             have no message timestamps"
        );
    }
    let demo = args.input.is_none() && args.log_dir.is_none() && args.brokers.is_none();
    let data = PathBuf::from("weir-data");
    let (input, output, dead, state, bounded) = if demo {
        if data.exists() {
            std::fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))?;
        }
        let log_dir = data.join("log");
        eprintln!(
            "generating {} synthetic readings into {}/ (topic `sensors`, 5 partitions)",
            args.events,
            log_dir.display()
        );
        let started = Instant::now();
        produce_demo(&log_dir, args.events)?;
        eprintln!("  done in {:.2?}", started.elapsed());
        (
            Input::Log { dir: log_dir, topic: "sensors".into() },
            data.join("out"),
            data.join("dead-letters"),
            Some(data.join("state")),
            true,
        )
    } else {
        let Some(output) = args.output.clone() else { bail!("--output OUT_DIR is required") };
        let Some(dead) = args.dead_letter.clone() else { bail!("--dead-letter DLQ_DIR is required") };
        let input = match (&args.input, &args.log_dir, &args.brokers) {
            (Some(file), _, _) => Input::File(file.clone()),
            (None, Some(dir), _) if args.record_format == "mqtt" => {
                Input::MqttLog { dir: dir.clone(), topic: args.topic.clone() }
            }
            (None, Some(dir), _) => Input::Log { dir: dir.clone(), topic: args.topic.clone() },
            (None, None, Some(brokers)) => {
                Input::Kafka { config: kafka_config(&args, brokers)?, topic: args.topic.clone() }
            }
            (None, None, None) => unreachable!("demo mode handled above"),
        };
        if args.record_format != "json" && args.log_dir.is_none() {
            bail!("--record-format {} applies to --log-dir only", args.record_format);
        }
        let bounded = args.bounded || args.input.is_some();
        (input, output, dead, args.state.clone(), bounded)
    };
    let mut outputs = sensor::Outputs::dirs(&output, &dead);
    if args.kafka_results.is_some() || args.kafka_dead_letters.is_some() {
        let Some(brokers) = args.sink_brokers.as_ref().or(args.brokers.as_ref()) else {
            bail!("--kafka-results and --kafka-dead-letters need --sink-brokers HOST:PORT (or --brokers)")
        };
        let config = kafka_config(&args, brokers)?;
        outputs.kafka_results = args.kafka_results.as_ref().map(|t| KafkaTopic::new(config.clone(), t));
        outputs.kafka_dead_letters = args.kafka_dead_letters.as_ref().map(|t| KafkaTopic::new(config.clone(), t));
    }
    if let (Some(topic), Some(broker)) = (&args.mqtt_results, &args.mqtt_broker) {
        let id = args.mqtt_client_id.clone().unwrap_or_else(|| format!("weir-{}-results", args.group));
        let mut dest = MqttTopic::new(broker, topic.clone(), id)?;
        dest.tls = GatewayTls { ca: args.mqtt_ca.clone(), cert: args.mqtt_cert.clone(), key: args.mqtt_key.clone() };
        dest.username = args.mqtt_username.clone();
        if dest.username.is_some() {
            dest.password = Password::from_file_or_env(args.mqtt_password_file.as_deref())?;
        }
        dest.tls.validate()?;
        outputs.mqtt_results = Some(dest);
    }
    if args.brokers.is_none()
        && args.kafka_results.is_none()
        && args.kafka_dead_letters.is_none()
        && (!args.kafka_options.is_empty() || args.kafka_properties.is_some())
    {
        bail!("--kafka-option and --kafka-properties need --brokers or a Kafka sink (--kafka-results)");
    }

    let mut pipeline = Pipeline::new(args.group.clone())
        .workers(args.workers)
        .checkpoint_every(args.checkpoint_interval)
        .epoch_every(args.epoch_interval)
        .epochs_in_flight(args.epochs_in_flight)
        .idle_timeout(args.idle_timeout.0)
        .partition_discovery(args.partition_discovery.0)
        .bounded(bounded)
        .assignor(args.assignor);
    if let Some(state) = &state {
        pipeline = pipeline.state(state);
    }
    if let Ok(n) = std::env::var("WEIR_EPOCH_RECORDS") {
        // Deterministic epochs for tests: N records per epoch, a checkpoint every 2 epochs.
        let n: u64 = n.parse().context("WEIR_EPOCH_RECORDS must be a number")?;
        pipeline = pipeline.epoch_records(n, 2);
    }
    let time = TimeConfig { from: args.event_time.into(), max_out_of_orderness: args.max_out_of_orderness };
    let window = WindowConfig::new(args.window)
        .percentiles(args.percentiles.clone().unwrap_or_default())
        .allowed_lateness(args.allowed_lateness);
    let i = input.clone();
    let summary = pipeline
        .run(move |p| sensor::build_windowed(p, &i, &outputs, time, &window))
        .context("the sensor-aggregation pipeline failed")?;
    print_summary(&summary, &output, &dead, state.as_deref());
    Ok(())
}

/// The Kafka client settings of the command line for the cluster at `brokers`.
fn kafka_config(args: &Args, brokers: &str) -> anyhow::Result<KafkaConfig> {
    let mut config = KafkaConfig::new(brokers, args.group.clone()).start(args.start_from);
    if let Some(file) = &args.kafka_properties {
        config = config.properties_file(file)?;
    }
    for (k, v) in &args.kafka_options {
        config = config.option(k.clone(), v.clone());
    }
    Ok(config)
}

fn produce_demo(log_dir: &Path, events: u64) -> anyhow::Result<()> {
    let topic = LogTopic::create(log_dir, "sensors", 5)?;
    let mut producer = weir::connectors::log::Producer::new(&topic, weir::connectors::log::LogConfig::default())?;
    let mut buf = Vec::with_capacity(64 << 20);
    sensor::generate(events, 42, 10_000, &mut buf)?;
    for line in buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let key = key_of(line);
        producer.send(key, line)?;
    }
    producer.flush()?;
    Ok(())
}

/// The `device` value of a line, without a full parse (lines without one are spread round-robin).
fn key_of(line: &[u8]) -> Option<&[u8]> {
    let pat = b"\"device\":\"";
    let start = memchr_find(line, pat)? + pat.len();
    let len = line[start..].iter().position(|&b| b == b'"')?;
    Some(&line[start..start + len])
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

type LogTopic = weir::connectors::log::Topic;

fn print_summary(s: &RunSummary, output: &Path, dead: &Path, state: Option<&Path>) {
    if s.already_complete {
        println!(
            "already complete: the checkpoint in {} covers all input; nothing to do",
            state.map_or("?".into(), |p| p.display().to_string())
        );
        return;
    }
    let events = s.counter("records_in");
    let dead_letters: u64 = s.counters.iter().filter(|(k, _)| k.starts_with("dead_letters.")).map(|(_, v)| v).sum();
    let rows: u64 =
        s.counters.iter().filter(|(k, _)| k.starts_with("parquet") && k.ends_with(".rows")).map(|(_, v)| v).sum();
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    if let Some(e) = s.restored_from {
        println!("resumed from checkpoint epoch {e}");
    }
    println!("events in:     {events}");
    println!("dead letters:  {dead_letters}");
    println!("filtered:      {}", s.counter("filtered"));
    println!("windows out:   {rows}");
    println!("elapsed:       {:.3} s", secs);
    println!("events/s:      {:.0}", events as f64 / secs);
    println!(
        "checkpoints:   {} (total {:.1} ms, max {:.1} ms)",
        s.commits.count,
        s.commits.total.as_secs_f64() * 1e3,
        s.commits.max.as_secs_f64() * 1e3
    );
    println!("output:        {}/*.parquet", output.display());
    println!("dead letters:  {}/*.jsonl", dead.display());
    if let Some(state) = state {
        println!("checkpoints:   {}", state.display());
    }
}
