//! The anomaly-alerts workload (the example `examples/anomaly_alerts.rs`):
//! sensor-window readings, out-of-range temperatures dropped (counted as
//! `filtered`, as the sensor pipeline does), each reading joined with its
//! device's registry row as of its event time ([`Registry`]: site and
//! temperature bounds, a differential table changed by an updates file,
//! [`UpdatesCsv`]; an unknown device is a dead letter `unknown key`), then three detectors per
//! device: the bounds of its registry row ([`Threshold::bounds`]), a
//! rolling z-score and silence. Alerts go to `OUT/alerts/` and per-site
//! one-minute alert counts to `OUT/site_counts/`, both Parquet.
//!
//! Also a generator of the workload's readings with the spikes `gen_data.py`
//! injects, labelled ([`generate`]), and the registry of its devices
//! ([`registry_for`]).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use weir_connectors::{DeadLetters, LinesFile, Parquet};
use weir_core::record::EventTime;
use weir_core::{Dataflow, Error};
use weir_operators::prelude::*;

use crate::sensor::{self, Input, Reading, SplitMix, TEMP_RANGE};

/// A device's registry row: its site and its normal temperature range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The site the device is at.
    pub site: CompactString,
    /// Lowest normal temperature.
    pub min_temp: f64,
    /// Highest normal temperature.
    pub max_temp: f64,
}

/// The device registry: device → [`DeviceInfo`], read from a CSV file with
/// the header `device,site,min_temp,max_temp`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Registry {
    /// Rows by device.
    pub devices: HashMap<CompactString, DeviceInfo>,
}

impl Registry {
    /// Reads `path` (see [`Registry::parse`]).
    pub fn load(path: &Path) -> weir_core::Result<Registry> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading the registry", path, e))?;
        Registry::parse(&text).map_err(|e| Error::config("registry", format!("{}: {e}", path.display())))
    }

    /// Parses the CSV text of a registry: a header `device,site,min_temp,max_temp`
    /// then one row a line. The error names the line and what was expected.
    pub fn parse(text: &str) -> Result<Registry, String> {
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, header)) if header.trim() == "device,site,min_temp,max_temp" => {}
            other => {
                return Err(format!(
                    "line 1: expected the header `device,site,min_temp,max_temp`, found `{}`",
                    other.map_or("", |l| l.1)
                ));
            }
        }
        let mut devices = HashMap::new();
        for (i, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [device, site, min, max] = fields[..] else {
                return Err(format!(
                    "line {}: expected 4 fields (device,site,min_temp,max_temp), found `{line}`",
                    i + 1
                ));
            };
            let number = |name: &str, v: &str| {
                v.parse::<f64>().map_err(|_| format!("line {}: {name} `{v}` is not a number", i + 1))
            };
            let info = DeviceInfo {
                site: site.into(),
                min_temp: number("min_temp", min)?,
                max_temp: number("max_temp", max)?,
            };
            devices.insert(CompactString::from(device), info);
        }
        Ok(Registry { devices })
    }

    /// The registry as a table's initial rows: every device inserted, valid
    /// from the beginning of (event) time; devices in order.
    pub fn updates(&self) -> Vec<RegistryUpdate> {
        let mut rows: Vec<_> = self.devices.iter().collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        rows.into_iter().map(|(d, info)| TableUpdate::insert(d.clone(), info.clone(), EventTime::MIN)).collect()
    }

    /// The registry as CSV text, devices in order.
    pub fn to_csv(&self) -> String {
        let mut rows: Vec<_> = self.devices.iter().collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        let mut out = String::from("device,site,min_temp,max_temp\n");
        for (device, d) in rows {
            out.push_str(&format!("{device},{},{:?},{:?}\n", d.site, d.min_temp, d.max_temp));
        }
        out
    }
}

/// The registry of [`generate`]'s devices `dev-00000` … : `devices / 10` sites
/// or at least one (`site-000`, …, a device at site `d % sites`), normal
/// range from `-(d % 5)` to `40 + d % 10` °C (the readings' bases are 10 to 30 °C).
pub fn registry_for(devices: u64) -> Registry {
    let sites = (devices / 10).clamp(1, 100);
    let devices = (0..devices)
        .map(|d| {
            let info = DeviceInfo {
                site: format!("site-{:03}", d % sites).into(),
                min_temp: -((d % 5) as f64),
                max_temp: 40.0 + (d % 10) as f64,
            };
            (CompactString::from(format!("dev-{d:05}")), info)
        })
        .collect();
    Registry { devices }
}

/// A reading joined with its device's registry row as of its event time.
pub type Enriched = Joined<Reading, DeviceInfo>;

/// The registry as a table: the initial rows (valid from the beginning of
/// time) and, with [`AlertsConfig::updates`], the updates file's changes,
/// each from its `valid_from`.
fn registry_table<'s>(
    p: &mut Dataflow<'s>,
    config: &AlertsConfig,
) -> weir_core::Result<Table<'s, CompactString, DeviceInfo>> {
    let initial = config.registry.updates();
    let Some(path) = &config.updates else { return Table::load(p.ctx(), REGISTRY, initial) };
    let updates = p
        .source(LinesFile::open(path)?)?
        .decode::<Option<RegistryUpdate>>(UpdatesCsv)
        .filter(Option::is_some)
        .try_map("registry_updates", |u: &Option<RegistryUpdate>| u.clone().ok_or("no update"))
        .event_time(|u| u.valid_from, config.max_out_of_orderness)?;
    Table::from_updates(REGISTRY, updates)?.with_initial(initial)
}

/// The name of the registry table (its join step is `table-registry`).
pub const REGISTRY: &str = "registry";

/// A change to the registry.
pub type RegistryUpdate = TableUpdate<CompactString, DeviceInfo>;

/// The format of a registry updates file: CSV lines
/// `op,device,site,min_temp,max_temp,valid_from` with `op` one of `insert`,
/// `update`, `delete` (a delete may leave site and temperatures empty) and
/// `valid_from` in ms of event time. The header line, if any, decodes to
/// `None` (and is counted as `filtered`); a line that does not parse is a
/// dead letter naming the field.
#[derive(Clone, Copy, Debug)]
pub struct UpdatesCsv;

/// The header of a registry updates file.
pub const UPDATES_HEADER: &str = "op,device,site,min_temp,max_temp,valid_from";

impl Format<Option<RegistryUpdate>> for UpdatesCsv {
    fn decode(&self, bytes: &[u8]) -> Result<Option<RegistryUpdate>, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?.trim_end_matches('\r');
        if text.trim() == UPDATES_HEADER {
            return Ok(None);
        }
        let fields: Vec<&str> = text.split(',').map(str::trim).collect();
        let [op, device, site, min, max, valid_from] = fields[..] else {
            return Err(format!("expected 6 fields ({UPDATES_HEADER}), found `{text}`"));
        };
        let valid_from: i64 =
            valid_from.parse().map_err(|_| format!("valid_from `{valid_from}` is not an integer (ms)"))?;
        let number = |name: &str, v: &str| v.parse::<f64>().map_err(|_| format!("{name} `{v}` is not a number"));
        let info = || -> Result<DeviceInfo, String> {
            Ok(DeviceInfo { site: site.into(), min_temp: number("min_temp", min)?, max_temp: number("max_temp", max)? })
        };
        let device = CompactString::from(device);
        Ok(Some(match op.parse::<Op>()? {
            Op::Insert => TableUpdate::insert(device, info()?, valid_from),
            Op::Update => TableUpdate::update(device, info()?, valid_from),
            Op::Delete => TableUpdate::delete(device, valid_from),
        }))
    }
}

/// One alert row (`OUT/alerts/`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertRow {
    /// Device name.
    pub device: String,
    /// The device's site (for a silence: as of its last reading).
    pub site: String,
    /// The reading's event time (a silence: when it became one), ms.
    pub event_time: i64,
    /// The reading's temperature (a silence: the last one).
    pub value: f64,
    /// The anomaly score, in `[0, 1]`.
    pub score: f64,
    /// The detector's name: `threshold`, `zscore` or `silence`.
    pub detector: String,
    /// Why, in words.
    pub reason: String,
}

/// One site's alerts in one minute of event time (`OUT/site_counts/`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiteCount {
    /// The site.
    pub site: String,
    /// Window start, ms.
    pub window_start: i64,
    /// Window end (exclusive), ms.
    pub window_end: i64,
    /// Alerts in the window.
    pub count: i64,
}

/// The detectors' settings.
#[derive(Clone, Debug)]
pub struct AlertsConfig {
    /// The registry every reading is joined with, at start.
    pub registry: Arc<Registry>,
    /// A file of changes to the registry ([`UpdatesCsv`]), if any.
    pub updates: Option<PathBuf>,
    /// A device silent for this long (event time) alerts.
    pub silence: Duration,
    /// Readings the z-score's mean and deviation are taken over.
    pub zscore_window: usize,
    /// The z-score's alert threshold (a score in `(0, 1]`).
    pub zscore_threshold: f64,
    /// The watermark's delay: how far a reading may be behind its partition's latest.
    pub max_out_of_orderness: Duration,
}

impl AlertsConfig {
    /// `registry` with the defaults: silence after 5 minutes, a z-score over
    /// 100 readings alerting at 0.99999 (about 4.4 standard deviations), 2 s of disorder.
    pub fn new(registry: Registry) -> Self {
        AlertsConfig {
            registry: Arc::new(registry),
            updates: None,
            silence: Duration::from_secs(300),
            zscore_window: 100,
            zscore_threshold: 0.99999,
            max_out_of_orderness: sensor::MAX_OUT_OF_ORDERNESS,
        }
    }
}

/// The subdirectory of the output directory that holds the alerts.
pub const ALERTS_DIR: &str = "alerts";
/// The subdirectory of the output directory that holds the per-site counts.
pub const SITE_COUNTS_DIR: &str = "site_counts";
/// The dead-letter error of a reading whose device the registry does not have.
pub const UNKNOWN_KEY: &str = "unknown key";
/// The name of the example that is this workload's command line.
pub const EXAMPLE: &str = "anomaly_alerts";

/// A [`Command`](std::process::Command) running the example's binary.
pub fn example() -> anyhow::Result<std::process::Command> {
    crate::example::command(EXAMPLE)
}

/// The rows of an alert of a detector run through [`Carry`] with the site.
fn alert_row(a: Alert<CompactString, (f64, CompactString)>) -> AlertRow {
    AlertRow {
        device: a.key.to_string(),
        site: a.value.1.to_string(),
        event_time: a.event_time,
        value: a.value.0,
        score: a.score,
        detector: a.detector,
        reason: a.reason,
    }
}

/// Builds the anomaly-alerts pipeline on one worker: alerts and site counts
/// under `output`, dead letters in `dead_letters`.
pub fn build(
    p: &mut Dataflow<'_>,
    input: &Input,
    output: &Path,
    dead_letters: &Path,
    config: &AlertsConfig,
) -> weir_core::Result<()> {
    let readings = sensor::readings(p, input)?
        .filter(|r| TEMP_RANGE.contains(&r.temp))
        .event_time(|r| r.ts, config.max_out_of_orderness)?;
    let table = registry_table(p, config)?;
    // Keyed by device, as the join routed them: the detectors score each reading where it is.
    let enriched = readings.join_table_keyed(&table, |r: &Reading| r.device.clone())?;
    let temp = |e: &Enriched| e.record.temp;
    let site = |e: &Enriched| e.value.site.clone();
    let zscore = ZScore::new(temp).window(config.zscore_window).threshold(config.zscore_threshold);
    let bounds = Threshold::new(temp).bounds(|e: &Enriched| (e.value.min_temp, e.value.max_temp));
    // The three detectors in one step: one wait and state look-up per reading.
    let panel = Panel::new((zscore, bounds, Silence::new(temp, config.silence)));
    let alerts = enriched.detect_alerts(Carry::new(panel, site))?.map(alert_row);
    alerts.clone().named("alerts").sink(Parquet::dir(output.join(ALERTS_DIR)))?;
    alerts
        .key_by(|a: &AlertRow| a.site.clone())
        .window(Tumbling::minutes(1))
        .aggregate(Count)?
        .map(|w| SiteCount { site: w.key, window_start: w.start, window_end: w.end, count: w.value as i64 })
        .named("site_counts")
        .sink(Parquet::dir(output.join(SITE_COUNTS_DIR)))?;
    p.dead_letters().sink(DeadLetters::dir(dead_letters))
}

/// An injected spike of [`generate`]'s output: its line (0-based), device and time.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Spike {
    /// Line number, from 0.
    pub line: u64,
    /// Device name.
    pub device: String,
    /// Event time, ms.
    pub ts: i64,
}

/// Writes `n` readings as `gen_data.py` makes them (its distributions, not
/// its random numbers): `devices` devices with base temperatures in U(10,
/// 30), `ts` from 1700000000000 growing by 1–4 ms, 0.1% malformed lines (a
/// truncated record, unquoted keys, garbage text), 0.9% sentinels (`temp =
/// 999.0`), 0.2% spikes (80% base + U(30, 80), 20% base − U(30, 55)) and
/// otherwise base + N(0, 1.5), rounded to 2 decimals. Returns the spikes.
pub fn generate(n: u64, seed: u64, devices: u64, out: &mut impl Write) -> std::io::Result<Vec<Spike>> {
    let mut rng = SplitMix::new(seed);
    let devices = devices.max(1);
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    let base: Vec<f64> = (0..devices).map(|_| round2(10.0 + 20.0 * rng.unit())).collect();
    let mut ts: i64 = 1_700_000_000_000;
    let mut spikes = Vec::new();
    let mut line = String::with_capacity(96);
    for i in 0..n {
        if i > 0 {
            ts += 1 + rng.below(4) as i64;
        }
        let d = rng.below(devices) as usize;
        let r = rng.unit();
        let hum = (10.0 * (30.0 + 30.0 * rng.unit())).round() / 10.0;
        let temp = if (0.001..0.010).contains(&r) {
            999.0
        } else if (0.010..0.012).contains(&r) {
            spikes.push(Spike { line: i, device: format!("dev-{d:05}"), ts });
            if rng.unit() < 0.8 { base[d] + 30.0 + 50.0 * rng.unit() } else { base[d] - 30.0 - 25.0 * rng.unit() }
        } else {
            // Box-Muller: a standard normal from two uniforms.
            let (u1, u2) = (rng.unit().max(f64::MIN_POSITIVE), rng.unit());
            base[d] + 1.5 * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        };
        let temp = round2(temp);
        sensor::reading_line(&mut line, &mut rng, d as u64, ts, temp, hum, r < 0.001);
        out.write_all(line.as_bytes())?;
    }
    Ok(spikes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_round_trips_through_csv_and_bad_rows_name_their_line() {
        let r = registry_for(25);
        assert_eq!(Registry::parse(&r.to_csv()), Ok(r));
        let err = Registry::parse("device,site,min_temp,max_temp\ndev-1,a,0,x\n").err().unwrap_or_default();
        assert!(err.contains("line 2") && err.contains("max_temp"), "{err}");
        let err = Registry::parse("device,site\n").err().unwrap_or_default();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn the_generator_injects_spikes_up_and_down_and_sentinels() -> anyhow::Result<()> {
        let mut out = Vec::new();
        let spikes = generate(100_000, 3, 50, &mut out)?;
        let lines: Vec<&[u8]> = out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 100_000);
        assert!((150..260).contains(&spikes.len()), "{} spikes", spikes.len());
        let temp = |l: &[u8]| serde_json::from_slice::<Reading>(l).map(|r| r.temp).ok();
        let spike_temps: Vec<f64> = spikes.iter().filter_map(|s| temp(lines[s.line as usize])).collect();
        assert!(spike_temps.iter().any(|&t| t < 0.0) && spike_temps.iter().any(|&t| t > 40.0));
        let sentinels = lines.iter().filter(|l| temp(l) == Some(999.0)).count();
        assert!((700..1100).contains(&sentinels), "{sentinels} sentinels");
        Ok(())
    }
}
