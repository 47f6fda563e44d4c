//! [`Mad`]: the robust z-score `(x - median) / (1.4826 · MAD)` over a key's
//! last `window` readings (before it), where MAD is the median absolute
//! deviation from the median: outliers in the window barely move it, so a
//! burst of spikes does not hide the next one. When more than half of the
//! window is one value (MAD 0) the spread is the mean absolute deviation
//! times 1.2533 instead (both estimate the standard deviation of a normal).
//!
//! A key keeps its window twice: in arrival order (the ring that is
//! checkpointed) and sorted (rebuilt from the ring after a restore). A
//! reading moves one value out of the sorted copy and one in (a binary
//! search and a shift of at most `window` values), the median is read off
//! it, and the MAD is the middle of the deviations, which come in ascending
//! order by merging the values below the median (walked down) with those
//! above it (walked up): half a window's steps, no sort.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use weir_core::Result;
use weir_core::record::EventTime;

use super::zscore::{check_window, deviation};
use super::{Detector, Verdict};

/// Median absolute deviation over a bounded window.
///
/// Parameters (defaults): `window` (100 readings, at least 2; a reading
/// costs O(window) moves and comparisons), `min_samples` (30, at most the window),
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

    gate_setters!(
        usize,
        "Readings before it scores (at most the window counts).",
        "The score at which it alerts, in `(0, 1]`."
    );
}

/// A key's window of values.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Window {
    /// In arrival order, oldest first.
    values: VecDeque<f64>,
    /// The same values sorted by [`f64::total_cmp`]; rebuilt from `values`
    /// when their lengths differ (after a restore).
    #[serde(skip)]
    sorted: Vec<f64>,
}

impl Window {
    /// Makes `sorted` hold the values of `values`.
    fn sync(&mut self) {
        if self.sorted.len() != self.values.len() {
            self.sorted.clear();
            self.sorted.extend(self.values.iter().copied());
            self.sorted.sort_unstable_by(f64::total_cmp);
        }
    }

    /// Appends `x`, dropping the oldest value beyond `window`.
    fn push(&mut self, x: f64, window: usize) {
        self.sync();
        if self.values.len() >= window
            && let Some(old) = self.values.pop_front()
            && let Ok(i) = self.sorted.binary_search_by(|p| p.total_cmp(&old))
        {
            self.sorted.remove(i);
        }
        let at = self.sorted.partition_point(|p| p.total_cmp(&x).is_lt());
        self.sorted.insert(at, x);
        self.values.push_back(x);
    }
}

/// The median of sorted `v` (not empty).
fn median(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// The robust spread of `dev`, the absolute deviations from the median in
/// ascending order (not empty): 1.4826 · their median, or 1.2533 · their
/// mean when the median is 0.
fn spread_of(dev: impl Iterator<Item = f64>, n: usize) -> f64 {
    // Only the middle one or two are needed, unless the MAD is 0.
    let mut dev = dev.enumerate();
    let (mut lo, mut hi, mut sum) = (0.0, 0.0, 0.0);
    for (i, d) in dev.by_ref() {
        sum += d;
        if i + 1 == n.div_ceil(2) {
            lo = d;
        }
        if i == n / 2 {
            hi = d;
            break;
        }
    }
    let mad = if n % 2 == 1 { hi } else { (lo + hi) / 2.0 };
    if mad > 0.0 {
        return 1.4826 * mad;
    }
    let sum = dev.fold(sum, |s, (_, d)| s + d);
    1.2533 * sum / n as f64
}

/// The median and the robust spread of sorted `v` (not empty), with no sort:
/// the deviations below the median grow walking down, those above it walking
/// up, and merging the two gives them in ascending order.
fn sorted_median_spread(v: &[f64]) -> (f64, f64) {
    let med = median(v);
    let split = v.partition_point(|&x| x < med);
    let (mut down, mut up) = (v[..split].iter().rev().peekable(), v[split..].iter().peekable());
    let dev = std::iter::from_fn(move || {
        let below = down.peek().map(|&&x| (x - med).abs());
        let above = up.peek().map(|&&x| (x - med).abs());
        match (below, above) {
            (Some(b), Some(a)) if b < a => down.next().map(|_| b),
            (_, Some(a)) => up.next().map(|_| a),
            (Some(b), None) => down.next().map(|_| b),
            (None, None) => None,
        }
    });
    (med, spread_of(dev, v.len()))
}

/// The median and the robust spread of `values` (not empty), by sorting
/// them and their deviations: the plain definition the detector is tested against.
#[cfg(test)]
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
    type State = Window;

    one_field!();

    fn name(&self) -> &'static str {
        "mad"
    }

    fn validate(&self) -> Result<()> {
        check_window("mad", self.window, self.threshold)
    }

    fn update(&self, s: &mut Window, _: EventTime, &x: &f64) -> Verdict {
        let n = s.values.len();
        let verdict = if n >= self.min_samples.min(self.window).max(2) {
            s.sync();
            let (med, spread) = sorted_median_spread(&s.sorted);
            deviation(x, med, spread, n as u64, self.threshold)
        } else {
            Verdict::NONE
        };
        s.push(x, self.window);
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The sorted copy gives the sort-based median and spread bit for bit,
        /// as values come and go, with many duplicates (MAD 0) and after a
        /// checkpoint round trip (which drops the sorted copy).
        #[test]
        fn order_statistics_equal_sorting_the_window(
            xs in prop::collection::vec(prop_oneof![(-6i32..6).prop_map(f64::from), -1e6f64..1e6, Just(-0.0)], 1..300),
            window in 2usize..40,
            restore_at in 0usize..300,
        ) {
            let mut w = Window::default();
            for (i, &x) in xs.iter().enumerate() {
                if i == restore_at {
                    let bytes = serde_json::to_vec(&w).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    w = serde_json::from_slice(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
                w.push(x, window);
                w.sync();
                let want = median_spread(w.values.iter().copied());
                let got = sorted_median_spread(&w.sorted);
                prop_assert_eq!((got.0.to_bits(), got.1.to_bits()), (want.0.to_bits(), want.1.to_bits()));
                prop_assert_eq!(w.values.len(), xs[..=i].len().min(window));
            }
        }
    }
}
