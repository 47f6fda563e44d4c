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

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use weir::connectors::kafka::{KafkaConfig, KafkaTopic, StartPosition};
use weir::connectors::mqtt::{GatewayTls, MqttTopic, Password};
use weir::core::time::parse_duration;
use weir::prelude::*;
use weir_testkit::cli::{self, Demo, RunArgs};
use weir_testkit::sensor::{self, Input, Quantiles, TimeConfig, TimeFrom, WindowConfig};

/// The default consumer group (`--group`).
const GROUP: &str = "sensor-aggregation";

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
    #[command(flatten)]
    run: RunArgs,
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

fn main() -> anyhow::Result<()> {
    weir::init_logging();
    run(Args::parse())
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.event_time == EventTimeArg::MessageTimestamp && args.brokers.is_none() {
        bail!(
            "--event-time message-timestamp needs a Kafka input (--brokers HOST:PORT): files and the embedded log \
             have no message timestamps"
        );
    }
    let group = args.run.group(GROUP);
    let plan = if args.run.is_demo() && args.brokers.is_none() {
        let mut lines = Vec::with_capacity(64 << 20);
        sensor::generate(args.run.events, 42, 10_000, &mut lines)?;
        Demo::create(&lines)?.plan()
    } else {
        let input = match (&args.run.log_dir, &args.brokers) {
            (Some(dir), _) if args.record_format == "mqtt" && args.run.input.is_none() => {
                Input::MqttLog { dir: dir.clone(), topic: args.run.topic.clone() }
            }
            (None, Some(brokers)) if args.run.input.is_none() => {
                Input::Kafka { config: kafka_config(&args, &group, brokers)?, topic: args.run.topic.clone() }
            }
            _ => args.run.file_or_log().context("an input is needed: --input, --log-dir or --brokers")?,
        };
        if args.record_format != "json" && args.run.log_dir.is_none() {
            bail!("--record-format {} applies to --log-dir only", args.record_format);
        }
        args.run.plan(input)?
    };
    let mut outputs = sensor::Outputs::dirs(&plan.output, &plan.dead_letters);
    if args.kafka_results.is_some() || args.kafka_dead_letters.is_some() {
        let Some(brokers) = args.sink_brokers.as_ref().or(args.brokers.as_ref()) else {
            bail!("--kafka-results and --kafka-dead-letters need --sink-brokers HOST:PORT (or --brokers)")
        };
        let config = kafka_config(&args, &group, brokers)?;
        outputs.kafka_results = args.kafka_results.as_ref().map(|t| KafkaTopic::new(config.clone(), t));
        outputs.kafka_dead_letters = args.kafka_dead_letters.as_ref().map(|t| KafkaTopic::new(config.clone(), t));
    }
    if let (Some(topic), Some(broker)) = (&args.mqtt_results, &args.mqtt_broker) {
        let id = args.mqtt_client_id.clone().unwrap_or_else(|| format!("weir-{group}-results"));
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

    let pipeline = args.run.pipeline(group, &plan)?;
    let time = TimeConfig { from: args.event_time.into(), max_out_of_orderness: args.max_out_of_orderness };
    let window = WindowConfig::new(args.window)
        .percentiles(args.percentiles.clone().unwrap_or_default())
        .allowed_lateness(args.allowed_lateness);
    let i = plan.input.clone();
    let summary = pipeline
        .run(move |p| sensor::build_windowed(p, &i, &outputs, time, &window))
        .context("the sensor-aggregation pipeline failed")?;
    let output = format!("{}/*.parquet", plan.output.display());
    cli::print_summary(&summary, &plan, &[("windows out", "parquet")], &[output]);
    Ok(())
}

/// The Kafka client settings of the command line for the cluster at `brokers`.
fn kafka_config(args: &Args, group: &str, brokers: &str) -> anyhow::Result<KafkaConfig> {
    let mut config = KafkaConfig::new(brokers, group.to_string()).start(args.start_from);
    if let Some(file) = &args.kafka_properties {
        config = config.properties_file(file)?;
    }
    for (k, v) in &args.kafka_options {
        config = config.option(k.clone(), v.clone());
    }
    Ok(config)
}
