//! The anomaly-alerts workload (the example `examples/anomaly_alerts.rs`):
//! sensor-window readings, out-of-range temperatures dropped (counted as
//! `filtered`, as the sensor pipeline does), each reading joined with its
//! device's registry row ([`Registry`]: site and temperature bounds; an
//! unknown device is a dead letter `unknown key`), then three detectors per
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
use weir_connectors::{DeadLetters, Parquet};
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

/// A reading joined with its device's registry row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Enriched {
    /// Device name.
    pub device: CompactString,
    /// Event time, ms.
    pub ts: i64,
    /// Temperature.
    pub temp: f64,
    /// The device's registry row as of the reading.
    pub info: DeviceInfo,
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
    /// The registry every reading is joined with.
    pub registry: Arc<Registry>,
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
    let registry = config.registry.clone();
    // The initial registry, looked up as it was at start (no updates yet).
    let enriched = readings.try_map("registry", move |r: &Reading| match registry.devices.get(&r.device) {
        Some(info) => Ok(Enriched { device: r.device.clone(), ts: r.ts, temp: r.temp, info: info.clone() }),
        None => Err(UNKNOWN_KEY),
    });
    let temp = |e: &Enriched| e.temp;
    let site = |e: &Enriched| e.info.site.clone();
    let by_device = |e: &Enriched| e.device.clone();
    let zscore = ZScore::new(temp).window(config.zscore_window).threshold(config.zscore_threshold);
    let zscore = enriched.clone().key_by(by_device).detect(Carry::new(zscore, site))?.alerts();
    let bounds = Threshold::new(temp).bounds(|e: &Enriched| (e.info.min_temp, e.info.max_temp));
    let threshold = enriched.clone().key_by(by_device).detect(Carry::new(bounds, site))?.alerts();
    let silence = enriched.key_by(by_device).detect(Carry::new(Silence::new(temp, config.silence), site))?.alerts();
    let alerts = zscore.concat(threshold).concat(silence).map(alert_row);
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
        line.clear();
        use std::fmt::Write as _;
        let _ = write!(line, "{{\"device\":\"dev-{d:05}\",\"ts\":{ts},\"temp\":{temp:?},\"hum\":{hum:?}}}");
        if r < 0.001 {
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
        out.write_all(line.as_bytes())?;
    }
    Ok(spikes)
}

/// The paths a run of the example reads and writes, for tests: `dir/in.jsonl`,
/// `dir/devices.csv`, `dir/out/`, `dir/dlq/`, `dir/state/`.
pub fn paths(dir: &Path) -> [PathBuf; 5] {
    ["in.jsonl", "devices.csv", "out", "dlq", "state"].map(|p| dir.join(p))
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
