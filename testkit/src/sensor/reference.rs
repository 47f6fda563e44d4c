//! The plain reference of the sensor pipeline: the expected rows computed
//! directly from the input's lines, for tumbling, sliding and session windows
//! and exact percentiles (the value of rank `floor(q · (n - 1))` in sorted
//! order; the pipeline's sketch is within 1 % of it).

use std::collections::BTreeMap;

use weir_operators::prelude::WindowSpec;

use super::{QuantileValues, Reading, TEMP_RANGE, WindowConfig, WindowRow};

/// The plain reference: expected rows keyed by (device, window start), and the
/// number of malformed lines. Same semantics as the workload's `reference.py`
/// (tumbling one-minute windows, no percentiles).
pub fn reference(input: &[u8]) -> (BTreeMap<(String, i64), WindowRow>, u64) {
    reference_with(input, &WindowConfig::default())
}

/// A window's readings so far.
struct Acc {
    end: i64,
    count: i64,
    min: f64,
    max: f64,
    sum: f64,
    temps: Vec<f64>,
}

/// [`reference`] over the windows and with the percentiles `window` says:
/// a sliding window is every window of `size` starting at a multiple of
/// `slide` that holds a reading; a device's session ends where its next
/// reading (in event-time order) is at least `gap` after its last, and spans
/// `[first, last + gap)`.
pub fn reference_with(input: &[u8], window: &WindowConfig) -> (BTreeMap<(String, i64), WindowRow>, u64) {
    let (readings, malformed) = parse(input);
    let mut windows: BTreeMap<(String, i64), Acc> = BTreeMap::new();
    let keep_temps = !window.percentiles.is_empty();
    let mut add = |device: &str, start: i64, end: i64, temp: f64| {
        let acc = windows.entry((device.to_string(), start)).or_insert(Acc {
            end,
            count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum: 0.0,
            temps: Vec::new(),
        });
        acc.end = end;
        acc.count += 1;
        acc.min = acc.min.min(temp);
        acc.max = acc.max.max(temp);
        acc.sum += temp;
        if keep_temps {
            acc.temps.push(temp);
        }
    };
    match window.spec {
        WindowSpec::Tumbling(t) => {
            for r in &readings {
                let start = t.start_of(r.ts);
                add(&r.device, start, t.end_of(start), r.temp);
            }
        }
        WindowSpec::Sliding(s) => {
            for r in &readings {
                let mut start = r.ts.saturating_sub(r.ts.rem_euclid(s.slide));
                while start > r.ts.saturating_sub(s.size) {
                    add(&r.device, start, start.saturating_add(s.size), r.temp);
                    start = start.saturating_sub(s.slide);
                }
            }
        }
        WindowSpec::Session(s) => {
            let mut by_device: BTreeMap<&str, Vec<(i64, f64)>> = BTreeMap::new();
            for r in &readings {
                by_device.entry(r.device.as_str()).or_default().push((r.ts, r.temp));
            }
            for (device, mut events) in by_device {
                events.sort_by_key(|e| e.0);
                let mut i = 0;
                while i < events.len() {
                    let mut j = i + 1;
                    while j < events.len() && events[j].0.saturating_sub(events[j - 1].0) < s.gap {
                        j += 1;
                    }
                    let (first, last) = (events[i].0, events[j - 1].0);
                    for &(_, temp) in &events[i..j] {
                        add(device, first, last.saturating_add(s.gap), temp);
                    }
                    i = j;
                }
            }
        }
        WindowSpec::Count(c) => {
            // Every `size` readings of a device in event-time order, ties in input
            // order (a file's partitions are its byte ranges, in order); the last,
            // incomplete window is not a row.
            let mut by_device: BTreeMap<&str, Vec<(i64, f64)>> = BTreeMap::new();
            for r in &readings {
                by_device.entry(r.device.as_str()).or_default().push((r.ts, r.temp));
            }
            for (device, mut events) in by_device {
                events.sort_by_key(|e| e.0);
                for chunk in events.chunks_exact(c.size as usize) {
                    let (first, last) = (chunk[0].0, chunk[chunk.len() - 1].0);
                    for &(_, temp) in chunk {
                        add(device, first, last.saturating_add(1), temp);
                    }
                }
            }
        }
    }
    let q = &window.percentiles;
    let rows = windows
        .into_iter()
        .map(|((device, start), mut acc)| {
            acc.temps.sort_by(f64::total_cmp);
            let values =
                q.values().iter().map(|&q| acc.temps[(q * (acc.temps.len() - 1) as f64).floor() as usize]).collect();
            let row = WindowRow {
                device: device.as_str().into(),
                window_start: start,
                window_end: acc.end,
                count: acc.count,
                min: acc.min,
                max: acc.max,
                mean: acc.sum / acc.count as f64,
                percentiles: QuantileValues { columns: q.columns(), values },
                diff: None,
            };
            ((device, start), row)
        })
        .collect();
    (rows, malformed)
}

/// The in-range readings of `input`, in input order, and the number of malformed lines.
fn parse(input: &[u8]) -> (Vec<Reading>, u64) {
    let mut readings = Vec::new();
    let mut malformed = 0;
    let mut lines: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
    if input.ends_with(b"\n") || input.is_empty() {
        lines.pop();
    }
    for line in lines {
        // A record is a JSON object in UTF-8 (as the pipeline's `Json` decodes it).
        let parsed = std::str::from_utf8(line)
            .ok()
            .filter(|text| text.trim_start().starts_with('{'))
            .and_then(|text| serde_json::from_str::<Reading>(text).ok());
        let Some(r) = parsed else {
            malformed += 1;
            continue;
        };
        if TEMP_RANGE.contains(&r.temp) {
            readings.push(r);
        }
    }
    (readings, malformed)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use weir_operators::prelude::{Session, Sliding};

    use super::*;
    use crate::sensor::Quantiles;

    fn input(events: &[(&str, i64, f64)]) -> Vec<u8> {
        let mut out = String::new();
        for (d, ts, t) in events {
            out.push_str(&format!("{{\"device\":\"{d}\",\"ts\":{ts},\"temp\":{t:?}}}\n"));
        }
        out.into_bytes()
    }

    #[test]
    fn sliding_windows_hold_each_reading_size_over_slide_times() {
        let w = WindowConfig::new(Sliding::new(Duration::from_secs(60), Duration::from_secs(10)));
        let (rows, _) = reference_with(&input(&[("a", 65_000, 1.0)]), &w);
        let starts: Vec<i64> = rows.values().map(|r| r.window_start).collect();
        assert_eq!(starts, vec![10_000, 20_000, 30_000, 40_000, 50_000, 60_000]);
        assert!(rows.values().all(|r| r.window_end == r.window_start + 60_000 && r.count == 1));
    }

    #[test]
    fn sessions_split_at_the_gap_and_end_a_gap_after_their_last_reading() {
        let w = WindowConfig::new(Session::new(Duration::from_secs(30)));
        // 29.999 s apart: one session; exactly 30 s apart: a new one.
        let events = [("a", 0, 1.0), ("a", 29_999, 3.0), ("a", 59_999, 5.0), ("b", 10, 2.0)];
        let (rows, _) = reference_with(&input(&events), &w);
        let got: Vec<(&str, i64, i64, i64)> =
            rows.values().map(|r| (r.device.as_str(), r.window_start, r.window_end, r.count)).collect();
        assert_eq!(got, vec![("a", 0, 59_999, 2), ("a", 59_999, 89_999, 1), ("b", 10, 30_010, 1)]);
    }

    #[test]
    fn exact_percentiles_are_the_value_of_rank_floor_q_n_minus_1() {
        let w = WindowConfig::default().percentiles(Quantiles::new(&[0.0, 0.5, 0.99, 1.0]).expect("valid"));
        let events: Vec<(&str, i64, f64)> = (0..10).map(|i| ("a", i, (10 - i) as f64)).collect();
        let (rows, _) = reference_with(&input(&events), &w);
        let row = rows.values().next().expect("one row");
        // Sorted 1..=10: ranks 0, 4 (floor 4.5), 8 (floor 8.91), 9.
        assert_eq!(row.percentiles.values, vec![1.0, 5.0, 9.0, 10.0]);
        assert_eq!(row.percentiles.columns, &["p0", "p50", "p99", "p100"]);
    }
}
