//! [`Mad`]: the robust z-score `(x - median) / (1.4826 · MAD)` over a key's
//! last `window` readings (before it), where MAD is the median absolute
//! deviation from the median: outliers in the window barely move it, so a
//! burst of spikes does not hide the next one. When more than half of the
//! window is one value (MAD 0) the spread is the mean absolute deviation
//! times 1.2533 instead (both estimate the standard deviation of a normal).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use weir_core::Result;
use weir_core::record::EventTime;

use super::zscore::{check_window, deviation};
use super::{Detector, Verdict};

/// Median absolute deviation over a bounded window.
///
/// Parameters (defaults): `window` (100 readings, at least 2; a reading
/// costs a sort of the window), `min_samples` (30, at most the window),
/// `threshold` (0.99999: about 4.4 standard deviations).
#[derive(Clone, Debug)]
pub struct Mad<F> {
    field: F,
    window: usize,
    min_samples: usize,
    threshold: f64,
}

impl<F> Mad<F> {
    /// A MAD detector of the value `field` gives, with the default parameters.
    pub fn new(field: F) -> Self {
        Mad { field, window: 100, min_samples: 30, threshold: 0.99999 }
    }

    /// Readings the median and MAD are taken over.
    pub fn window(mut self, readings: usize) -> Self {
        self.window = readings;
        self
    }

    /// Readings before it scores (at most the window counts).
    pub fn min_samples(mut self, readings: usize) -> Self {
        self.min_samples = readings;
        self
    }

    /// The score at which it alerts, in `(0, 1]`.
    pub fn threshold(mut self, score: f64) -> Self {
        self.threshold = score;
        self
    }
}

/// A key's window of values.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Window {
    values: VecDeque<f64>,
}

/// The median of sorted `v` (not empty).
fn median(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// The median and the robust spread of `values` (not empty).
pub(super) fn median_spread(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let mut v: Vec<f64> = values.collect();
    v.sort_unstable_by(f64::total_cmp);
    let med = median(&v);
    let mut dev: Vec<f64> = v.iter().map(|x| (x - med).abs()).collect();
    dev.sort_unstable_by(f64::total_cmp);
    let mad = median(&dev);
    let spread = if mad > 0.0 { 1.4826 * mad } else { 1.2533 * dev.iter().sum::<f64>() / dev.len() as f64 };
    (med, spread)
}

impl<T, F> Detector<T> for Mad<F>
where
    F: Fn(&T) -> f64 + 'static,
{
    type Value = f64;
    type State = Window;
    type Out = f64;

    fn name(&self) -> &'static str {
        "mad"
    }

    fn validate(&self) -> Result<()> {
        check_window("mad", self.window, self.threshold)
    }

    fn value(&self, record: &T) -> f64 {
        (self.field)(record)
    }

    fn valid(&self, value: &f64) -> bool {
        value.is_finite()
    }

    fn out(&self, value: &f64) -> f64 {
        *value
    }

    fn update(&self, s: &mut Window, _: EventTime, &x: &f64) -> Verdict {
        let n = s.values.len();
        let verdict = if n >= self.min_samples.min(self.window).max(2) {
            let (med, spread) = median_spread(s.values.iter().copied());
            deviation(x, med, spread, n as u64, self.threshold)
        } else {
            Verdict::NONE
        };
        if n >= self.window {
            s.values.pop_front();
        }
        s.values.push_back(x);
        verdict
    }
}
