//! Accuracy on generated series with known labels: spikes, level shifts,
//! drifts, stuck values and silences injected into noisy readings (one
//! reading a second per key). Each detector runs through a real pipeline;
//! precision and recall per kind of anomaly are printed (`--nocapture`),
//! and the targets are checked: z-score and MAD find spikes of 6 sigma or
//! more with precision >= 0.95 and recall >= 0.9; flat-line and silence
//! find every stuck value and every silence within their duration.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_core::Pipeline;
use weir_core::record::EventTime;

use super::{Detector, Scored};
use crate::prelude::*;
use crate::testing::{Collect, Memory, Record, Rng};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Reading {
    k: String,
    x: f64,
    y: f64,
}

fn x(r: &Reading) -> f64 {
    r.x
}

fn xy(r: &Reading) -> [f64; 2] {
    [r.x, r.y]
}

/// The kinds of series, each with its one kind of anomaly.
const KINDS: [&str; 5] = ["spike", "shift", "drift", "stuck", "silence"];
/// Keys per kind and readings per key.
const KEYS: usize = 4;
const READINGS: usize = 2000;
const START: EventTime = 1_700_000_000_000;
/// Flat-line's duration and silence's quiet time, ms.
const STUCK_FOR: i64 = 20_000;
const QUIET: i64 = 60_000;

/// What a series holds: its readings (time, x, y, anomalous) and, for
/// stuck values and silences, each case's start (first stuck reading;
/// last reading before the silence).
struct Series {
    readings: Vec<(EventTime, f64, f64, bool)>,
    cases: Vec<EventTime>,
}

/// A series of `kind`: level 20, noise sigma 1, `y = 0.8 x + noise` (a second, correlated field).
fn series(kind: &str, rng: &mut Rng) -> Series {
    let (mut readings, mut cases) = (Vec::new(), Vec::new());
    let mut t = START;
    let mut level = 20.0;
    let mut i = 0;
    while i < READINGS {
        let noise = rng.normal();
        let mut value = level + noise;
        let mut label = false;
        match kind {
            // 0.5% of readings after the first 150, 6 to 10 sigma up or down.
            "spike" if i > 150 && rng.below(200) == 0 => {
                value += (6.0 + 4.0 * rng.unit()) * if rng.below(2) == 0 { 1.0 } else { -1.0 };
                label = true;
            }
            // Every 400 readings the level moves by 8 sigma; the first 5 readings after are anomalous.
            "shift" if i > 0 && i % 400 == 0 => level += if rng.below(2) == 0 { 8.0 } else { -8.0 },
            "shift" => label = i > 400 && i % 400 < 5,
            // From 1000 to 1300, the level rises by 0.05 sigma a reading.
            "drift" if (1000..1300).contains(&i) => {
                level += 0.05;
                value = level + noise;
                label = true;
            }
            // Every 300 readings 40 readings repeat one value; those stuck for STUCK_FOR are anomalous.
            "stuck" if i > 100 && i % 300 == 0 => {
                let stuck = (value * 100.0).round() / 100.0;
                cases.push(t);
                for j in 0..40 {
                    let y = 0.8 * stuck + 0.6 * rng.normal();
                    readings.push((t, stuck, y, j * 1000 >= STUCK_FOR));
                    t += 1000;
                }
                i += 40;
                continue;
            }
            // Every 500 readings nothing for 90 s.
            "silence" if i > 100 && i % 500 == 0 => {
                cases.push(t - 1000);
                t += 89_000;
            }
            _ => {}
        }
        let value = (value * 100.0).round() / 100.0;
        readings.push((t, value, 0.8 * value + 0.6 * rng.normal(), label));
        t += 1000;
        i += 1;
    }
    Series { readings, cases }
}

/// Every series, keyed `kind-n`.
fn corpus() -> BTreeMap<String, Series> {
    let mut rng = Rng::new(2026);
    let mut all = BTreeMap::new();
    for kind in KINDS {
        for n in 0..KEYS {
            all.insert(format!("{kind}-{n}"), series(kind, &mut rng));
        }
    }
    all
}

/// A row: key, time, alert.
type Row = (String, EventTime, bool);

/// Runs `d` over the corpus (two partitions, 2 workers).
fn run<D>(all: &BTreeMap<String, Series>, d: D) -> anyhow::Result<Vec<Row>>
where
    D: Detector<Reading> + Clone + Send + Sync,
{
    let mut parts: Vec<Vec<Record>> = vec![Vec::new(), Vec::new()];
    for (n, (k, s)) in all.iter().enumerate() {
        for &(t, x, y, _) in &s.readings {
            parts[n % 2].push((Some(t), format!(r#"{{"k":"{k}","x":{x:?},"y":{y:?}}}"#).into_bytes()));
        }
    }
    for p in &mut parts {
        p.sort_by_key(|r| r.0);
    }
    let rows = Arc::new(Mutex::new(Vec::new()));
    let r = rows.clone();
    let source = Memory::new(parts, 256);
    Pipeline::new("accuracy").workers(2).bounded(true).epoch_records(2000, 4).run(move |p| {
        p.source(source.clone())?
            .decode::<Reading>(Json)
            .source_time(Duration::from_secs(2))?
            .key_by(|r| r.k.clone())
            .detect(d.clone())?
            .map(|s: Scored<String, D::Out>| (s.key, s.event_time, s.alert.is_some()))
            .sink(Collect(r.clone()))?;
        p.dead_letters().sink(Collect(Arc::new(Mutex::new(Vec::new()))))
    })?;
    let rows = std::mem::take(&mut *rows.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    Ok(rows)
}

/// Precision and recall of `rows` per kind of series: an alert on a
/// labelled reading is a true positive; an alert at no reading (a silence)
/// is one when it is due exactly `QUIET` after a case.
fn score(all: &BTreeMap<String, Series>, rows: &[Row]) -> BTreeMap<&'static str, (f64, f64)> {
    let alerts: BTreeSet<(&str, EventTime)> = rows.iter().filter(|r| r.2).map(|r| (r.0.as_str(), r.1)).collect();
    let mut out = BTreeMap::new();
    for kind in KINDS {
        let (mut tp, mut fp, mut positives) = (0usize, 0usize, 0usize);
        for (k, s) in all.iter().filter(|(k, _)| k.starts_with(kind)) {
            let labels: BTreeMap<EventTime, bool> = s.readings.iter().map(|r| (r.0, r.3)).collect();
            let silences: BTreeSet<EventTime> =
                if kind == "silence" { s.cases.iter().map(|c| c + QUIET).collect() } else { BTreeSet::new() };
            positives += labels.values().filter(|l| **l).count() + silences.len();
            for &(_, t) in alerts.range((k.as_str(), EventTime::MIN)..=(k.as_str(), EventTime::MAX)) {
                if labels.get(&t).copied().unwrap_or(false) || silences.contains(&t) {
                    tp += 1;
                } else {
                    fp += 1;
                }
            }
        }
        let precision = if tp + fp == 0 { 1.0 } else { tp as f64 / (tp + fp) as f64 };
        let recall = if positives == 0 { 1.0 } else { tp as f64 / positives as f64 };
        out.insert(kind, (precision, recall));
    }
    out
}

/// Whether every stuck run has an alert at exactly `STUCK_FOR` after its start.
fn every_stuck_case_found(all: &BTreeMap<String, Series>, rows: &[Row]) -> bool {
    let alerts: BTreeSet<(&str, EventTime)> = rows.iter().filter(|r| r.2).map(|r| (r.0.as_str(), r.1)).collect();
    all.iter()
        .filter(|(k, _)| k.starts_with("stuck"))
        .all(|(k, s)| s.cases.iter().all(|c| alerts.contains(&(k.as_str(), c + STUCK_FOR))))
}

#[test]
fn precision_and_recall_on_generated_series() -> anyhow::Result<()> {
    let all = corpus();
    let q = Duration::from_millis(QUIET as u64);
    let results: Vec<(&str, Vec<Row>)> = vec![
        ("threshold", run(&all, Threshold::new(x).min(15.0).max(25.0))?),
        ("rate", run(&all, RateOfChange::new(x, 4.0))?),
        ("zscore", run(&all, ZScore::new(x))?),
        ("ewma", run(&all, Ewma::new(x))?),
        ("mad", run(&all, Mad::new(x))?),
        ("flatline", run(&all, FlatLine::new(x, Duration::from_millis(STUCK_FOR as u64)))?),
        ("silence", run(&all, Silence::new(x, q))?),
        ("mahalanobis", run(&all, Mahalanobis::new(xy))?),
        ("ensemble", run(&all, Ensemble::max((ZScore::new(x), Mad::new(x))))?),
    ];
    let mut table = BTreeMap::new();
    for (name, rows) in &results {
        let s = score(&all, rows);
        let cells: Vec<String> = KINDS.iter().map(|k| format!("{k} P {:.3} R {:.3}", s[k].0, s[k].1)).collect();
        eprintln!("{name:>11}: {}", cells.join(" | "));
        table.insert(*name, (s, rows));
    }
    for name in ["zscore", "mad"] {
        let (p, r) = table[name].0["spike"];
        anyhow::ensure!(p >= 0.95 && r >= 0.9, "{name} on spikes: precision {p:.3}, recall {r:.3}");
    }
    anyhow::ensure!(every_stuck_case_found(&all, table["flatline"].1), "flat-line missed a stuck run");
    let (p, r) = table["silence"].0["silence"];
    anyhow::ensure!(p == 1.0 && r == 1.0, "silence: precision {p:.3}, recall {r:.3}");
    Ok(())
}
