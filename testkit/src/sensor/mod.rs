//! The sensor-window workload: its pipeline (decode readings, drop
//! out-of-range temperatures, aggregate per device over one-minute event-time
//! windows with event times from the `ts` field or the Kafka message timestamp,
//! [`TimeConfig`], write Parquet and dead letters), a synthetic feed generator
//! ([`generate`]) and a plain reference implementation ([`reference`]). The
//! example `examples/sensor_aggregation.rs` is its command line; tests and
//! benches build the same pipeline in-process.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use weir_connectors::log::LogSource;
use weir_connectors::{DeadLetters, LinesFile, Parquet};
use weir_core::{Dataflow, Flow, Raw};
use weir_operators::prelude::*;

mod reference;
mod windows;

pub use reference::{reference, reference_with};
pub use windows::{
    PERCENTILES_FORM, Quantiles, WINDOW_FORMS, WindowConfig, column_name, parse_percentiles, parse_window,
};

/// One input line.
///
/// `device` is a [`CompactString`]: names up to 24 bytes live inline, so
/// decoding and keying a reading allocate nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Device name, `dev-NNNNN`.
    pub device: CompactString,
    /// Event time, ms since the Unix epoch.
    pub ts: i64,
    /// Temperature (°C); out-of-range values are filtered.
    pub temp: f64,
}

/// One output row: the workload's columns, the window's end and, with
/// [`Quantiles`], a column per quantile (serialized as a struct with those
/// field names; Parquet columns in [`WindowConfig::parquet_fields`]).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct WindowRow {
    /// Device name (written as Utf8, like a `String`).
    pub device: CompactString,
    /// Window start, ms since the Unix epoch (a session's first event time).
    pub window_start: i64,
    /// Window end (exclusive), ms since the Unix epoch (a session's last event time + gap).
    #[serde(default)]
    pub window_end: i64,
    /// Readings in the window.
    pub count: i64,
    /// Smallest temperature.
    pub min: f64,
    /// Largest temperature.
    pub max: f64,
    /// Mean temperature.
    pub mean: f64,
    /// The temperature's quantiles (none unless configured).
    #[serde(skip)]
    pub percentiles: QuantileValues,
    /// With allowed lateness ([`WindowConfig::allowed_lateness`]), the
    /// change log's diff, written as the last column: +1 for a row, -1 for a
    /// row that a late reading's correction retracts (the same values as the
    /// row it retracts). `None` without allowed lateness: no `diff` column,
    /// every window's one final row. Skipped by `Deserialize` like the
    /// quantiles: a Parquet schema traced from the type (no
    /// [`WindowConfig::parquet_fields`]) has no `diff` column.
    #[serde(skip)]
    pub diff: Option<i64>,
}

/// A row's quantiles: the values, and their column names.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QuantileValues {
    /// Column names ([`Quantiles::columns`]), one per value.
    pub columns: &'static [&'static str],
    /// The values, estimated by a DDSketch (within 1 %).
    pub values: Vec<f64>,
}

impl Serialize for WindowRow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let p = &self.percentiles;
        let mut st = s.serialize_struct("WindowRow", 7 + p.values.len() + usize::from(self.diff.is_some()))?;
        st.serialize_field("device", self.device.as_str())?;
        st.serialize_field("window_start", &self.window_start)?;
        st.serialize_field("window_end", &self.window_end)?;
        st.serialize_field("count", &self.count)?;
        st.serialize_field("min", &self.min)?;
        st.serialize_field("max", &self.max)?;
        st.serialize_field("mean", &self.mean)?;
        for (name, v) in p.columns.iter().zip(&p.values) {
            st.serialize_field(name, v)?;
        }
        if let Some(diff) = &self.diff {
            st.serialize_field("diff", diff)?;
        }
        st.end()
    }
}

/// Valid temperature range (inclusive).
pub const TEMP_RANGE: std::ops::RangeInclusive<f64> = -50.0..=150.0;
/// Window size in ms.
pub const WINDOW_MS: i64 = 60_000;

/// Where the pipeline reads from.
#[derive(Clone, Debug)]
pub enum Input {
    /// A JSON-lines file, split into byte ranges.
    File(PathBuf),
    /// A topic of the embedded log.
    Log {
        /// Log directory.
        dir: PathBuf,
        /// Topic name.
        topic: String,
    },
    /// A topic of the embedded log written by the MQTT gateway (`weir ingest
    /// mqtt`): each record is the MQTT topic, NUL, the reading.
    MqttLog {
        /// Log directory.
        dir: PathBuf,
        /// Topic name.
        topic: String,
    },
    /// A Kafka topic, read as the consumer group the config names.
    Kafka {
        /// Brokers, group, start position and client settings.
        config: weir_connectors::kafka::KafkaConfig,
        /// Topic name.
        topic: String,
    },
}

/// Where the pipeline's results and dead letters go.
#[derive(Clone, Debug)]
pub struct Outputs {
    /// Parquet output directory.
    pub parquet: PathBuf,
    /// Dead-letter directory.
    pub dead_letters: PathBuf,
    /// Also produce each window row, keyed by device, to this Kafka topic (after its checkpoint commits).
    pub kafka_results: Option<weir_connectors::kafka::KafkaTopic>,
    /// Also produce each dead letter to this Kafka topic (after its checkpoint commits).
    pub kafka_dead_letters: Option<weir_connectors::kafka::KafkaTopic>,
    /// Also publish each window row to this MQTT topic, at `TOPIC/DEVICE` (after its checkpoint commits).
    pub mqtt_results: Option<weir_connectors::mqtt::MqttTopic>,
}

impl Outputs {
    /// Parquet and dead-letter directories only.
    pub fn dirs(parquet: &Path, dead_letters: &Path) -> Self {
        Outputs {
            parquet: parquet.to_path_buf(),
            dead_letters: dead_letters.to_path_buf(),
            kafka_results: None,
            kafka_dead_letters: None,
            mqtt_results: None,
        }
    }
}

/// Where a reading's event time comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimeFrom {
    /// The reading's `ts` field.
    #[default]
    Payload,
    /// The Kafka message's timestamp (CreateTime or LogAppendTime, whichever
    /// the topic keeps); a message without one is a dead letter. Only for
    /// [`Input::Kafka`].
    MessageTimestamp,
}

/// The name of the example that is this workload's command line
/// (`examples/sensor_aggregation.rs`).
pub const EXAMPLE: &str = "sensor_aggregation";

/// A [`Command`](std::process::Command) running the example's binary (see
/// [`crate::example::path`]: an error saying how to build it if it is missing).
pub fn example() -> anyhow::Result<std::process::Command> {
    crate::example::command(EXAMPLE)
}

/// The default allowed out-of-orderness of event times (the watermark's delay).
pub const MAX_OUT_OF_ORDERNESS: Duration = Duration::from_secs(2);

/// How the pipeline assigns event times and watermarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeConfig {
    /// Where a reading's event time comes from.
    pub from: TimeFrom,
    /// How far behind the largest event time seen (per partition) a reading may
    /// be and still count: the watermark is that largest time minus this.
    pub max_out_of_orderness: Duration,
}

impl Default for TimeConfig {
    /// Times from the `ts` field, [`MAX_OUT_OF_ORDERNESS`] of disorder.
    fn default() -> Self {
        TimeConfig { from: TimeFrom::Payload, max_out_of_orderness: MAX_OUT_OF_ORDERNESS }
    }
}

impl From<TimeFrom> for TimeConfig {
    /// Times from `from`, [`MAX_OUT_OF_ORDERNESS`] of disorder.
    fn from(from: TimeFrom) -> Self {
        TimeConfig { from, ..TimeConfig::default() }
    }
}

/// Builds the sensor-window pipeline on one worker.
pub fn build(p: &mut Dataflow<'_>, input: &Input, output: &Path, dead_letters: &Path) -> weir_core::Result<()> {
    build_to(p, input, &Outputs::dirs(output, dead_letters))
}

/// [`build`] with every kind of output.
pub fn build_to(p: &mut Dataflow<'_>, input: &Input, out: &Outputs) -> weir_core::Result<()> {
    build_with(p, input, out, TimeConfig::default())
}

/// [`build_to`] with event times as `time` says: [`TimeFrom::MessageTimestamp`]
/// needs a Kafka input (an error naming `event_time` otherwise).
pub fn build_with(p: &mut Dataflow<'_>, input: &Input, out: &Outputs, time: TimeConfig) -> weir_core::Result<()> {
    build_windowed(p, input, out, time, &WindowConfig::default())
}

/// [`build_with`] over the windows and with the percentiles `window` says.
pub fn build_windowed(
    p: &mut Dataflow<'_>,
    input: &Input,
    out: &Outputs,
    time: TimeConfig,
    window: &WindowConfig,
) -> weir_core::Result<()> {
    if time.from == TimeFrom::MessageTimestamp && !matches!(input, Input::Kafka { .. }) {
        return Err(weir_core::Error::config(
            "event_time",
            "message timestamps need a Kafka input: files and the embedded log have none",
        ));
    }
    let readings = readings(p, input)?;
    let rows = readings_to_rows_in(readings, Combine::Adaptive, time, window)?;
    if let Some(topic) = &out.kafka_results {
        rows.clone().sink(topic.clone().sink::<WindowRow>().keyed(|r: &WindowRow| r.device.clone()))?;
    }
    if let Some(topic) = &out.mqtt_results {
        rows.clone().sink(topic.clone().sink::<WindowRow>().keyed(|r: &WindowRow| r.device.clone()))?;
    }
    rows.sink(Parquet::dir(&out.parquet).fields(window.parquet_fields()))?;
    let dead = p.dead_letters();
    if let Some(topic) = &out.kafka_dead_letters {
        dead.clone().sink(weir_connectors::outbox::OutboxSink::dead_letters(topic.clone()))?;
    }
    dead.sink(DeadLetters::dir(&out.dead_letters))
}

/// The decoded readings of `input` (malformed lines become dead letters,
/// registered with the dataflow).
pub fn readings<'s>(p: &mut Dataflow<'s>, input: &Input) -> weir_core::Result<Flow<'s, Reading>> {
    Ok(match input {
        Input::File(path) => p.source(LinesFile::open(path)?)?.decode::<Reading>(Json),
        Input::Log { dir, topic } => p.source(LogSource::open_in(p.ctx().storage(), dir, topic)?)?.decode(Json),
        Input::MqttLog { dir, topic } => {
            p.source(LogSource::open_in(p.ctx().storage(), dir, topic)?)?.decode(MqttPayload(Json))
        }
        Input::Kafka { config, topic } => {
            p.source(weir_connectors::kafka::KafkaSource::new(config.clone(), topic)?)?.decode(Json)
        }
    })
}

/// The sensor-window stages from raw lines to Parquet rows (dead letters are
/// registered with the dataflow; send them to a sink with `p.dead_letters()`).
pub fn aggregate(raw: Raw<'_>, output: Parquet) -> weir_core::Result<()> {
    aggregate_with(raw, output, Combine::Adaptive)
}

/// [`aggregate`] with a choice of pre-aggregation (the results are the same).
pub fn aggregate_with(raw: Raw<'_>, output: Parquet, combine: Combine) -> weir_core::Result<()> {
    window_rows(raw, combine, TimeConfig::default())?.sink(output)
}

/// The sensor-window stages from raw lines to window rows, with event times as `time` says.
pub fn window_rows<'s>(raw: Raw<'s>, combine: Combine, time: TimeConfig) -> weir_core::Result<Flow<'s, WindowRow>> {
    readings_to_rows(raw.decode::<Reading>(Json), combine, time)
}

/// The sensor-window stages from decoded readings to window rows.
pub fn readings_to_rows<'s>(
    readings: Flow<'s, Reading>,
    combine: Combine,
    time: TimeConfig,
) -> weir_core::Result<Flow<'s, WindowRow>> {
    readings_to_rows_in(readings, combine, time, &WindowConfig::default())
}

/// [`readings_to_rows`] over the windows and with the percentiles `window` says.
///
/// The window step is named by [`WindowConfig::step_name`], so a checkpoint
/// taken with other windows or without percentiles is refused at start
/// rather than misread.
pub fn readings_to_rows_in<'s>(
    readings: Flow<'s, Reading>,
    combine: Combine,
    time: TimeConfig,
    window: &WindowConfig,
) -> weir_core::Result<Flow<'s, WindowRow>> {
    let readings = readings.filter(|r| TEMP_RANGE.contains(&r.temp));
    let timed = match time.from {
        TimeFrom::Payload => readings.event_time(|r| r.ts, time.max_out_of_orderness)?,
        TimeFrom::MessageTimestamp => readings.source_time(time.max_out_of_orderness)?,
    };
    let timed = match window.step_name() {
        Some(name) => timed.named(&name),
        None => timed,
    };
    let stats = (Count, Min(|r: &Reading| r.temp), Max(|r: &Reading| r.temp), Mean(|r: &Reading| r.temp));
    let q = &window.percentiles;
    let has_diff = window.has_diff();
    let windowed = timed.key_by(|r| r.device.clone()).window(window.spec).combine(combine);
    let windowed = if has_diff { windowed.allowed_lateness(window.allowed_lateness) } else { windowed };
    let diff = move |d: i64| has_diff.then_some(d);
    if q.is_empty() {
        return Ok(windowed.aggregate(stats)?.map(move |w| WindowRow {
            device: w.key,
            window_start: w.start,
            window_end: w.end,
            count: w.value.0 as i64,
            min: w.value.1,
            max: w.value.2,
            mean: w.value.3,
            percentiles: QuantileValues::default(),
            diff: diff(w.diff),
        }));
    }
    let sketch = Percentiles::try_new(|r: &Reading| r.temp, q.values())?;
    let columns = q.columns();
    Ok(windowed.aggregate((stats, sketch))?.map(move |w| {
        let ((count, min, max, mean), values) = w.value;
        WindowRow {
            device: w.key,
            window_start: w.start,
            window_end: w.end,
            count: count as i64,
            min,
            max,
            mean,
            percentiles: QuantileValues { columns, values },
            diff: diff(w.diff),
        }
    }))
}

/// A small deterministic PRNG (SplitMix64) for the synthetic feed.
#[derive(Clone, Debug)]
pub struct SplitMix(u64);

impl SplitMix {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Writes `n` synthetic readings in the workload's format: 10,000 devices,
/// `ts` strictly increasing by 1–4 ms, about 0.1% malformed lines, 0.9%
/// out-of-range sentinels (`temp = 999.0`) and 0.2% spikes. Deterministic for a seed.
pub fn generate(n: u64, seed: u64, devices: u64, out: &mut impl Write) -> std::io::Result<()> {
    let mut rng = SplitMix::new(seed);
    let devices = devices.max(1);
    let base: Vec<f64> = (0..devices).map(|_| 10.0 + 20.0 * rng.unit()).collect();
    let mut ts: i64 = 1_700_000_000_000;
    let mut line = String::with_capacity(96);
    for i in 0..n {
        if i > 0 {
            ts += 1 + rng.below(4) as i64;
        }
        let d = rng.below(devices);
        let r = rng.unit();
        let temp = if (0.001..0.010).contains(&r) {
            999.0
        } else if (0.010..0.012).contains(&r) {
            base[d as usize] + 30.0 + 50.0 * rng.unit()
        } else {
            // A rough normal: the sum of four uniforms, centred.
            let noise = (rng.unit() + rng.unit() + rng.unit() + rng.unit() - 2.0) * 2.6;
            base[d as usize] + noise
        };
        let temp = (temp * 100.0).round() / 100.0;
        let hum = (400.0 + 200.0 * rng.unit()).round() / 10.0;
        reading_line(&mut line, &mut rng, d, ts, temp, hum, r < 0.001);
        out.write_all(line.as_bytes())?;
    }
    Ok(())
}

/// Writes one generated reading into `line` (cleared first) as a JSON line
/// with its newline; when `malformed`, spoiled one of three ways drawn from
/// `rng` (a truncated record, unquoted keys, garbage text).
pub(crate) fn reading_line(
    line: &mut String,
    rng: &mut SplitMix,
    d: u64,
    ts: i64,
    temp: f64,
    hum: f64,
    malformed: bool,
) {
    use std::fmt::Write as _;
    line.clear();
    let _ = write!(line, "{{\"device\":\"dev-{d:05}\",\"ts\":{ts},\"temp\":{temp:?},\"hum\":{hum:?}}}");
    if malformed {
        match rng.below(3) {
            0 => {
                let cut = 5 + rng.below(line.len() as u64 - 7) as usize;
                line.truncate(cut);
            }
            1 => {
                line.clear();
                let _ = write!(line, "{{device:dev-{d:05},ts:{ts},temp:{temp:?}}}");
            }
            _ => {
                line.clear();
                let _ = write!(line, "#corrupt# dev-{d:05} {ts} ?? temp={temp:?}");
            }
        }
    }
    line.push('\n');
}
