//! [`Threshold`]: static bounds. Inside `[min, max]` a reading scores 0;
//! outside by `d` it scores `0.5 + 0.5 · d / (d + scale)` (0.5 just outside,
//! towards 1 far outside; `scale` is the width of the bounds, or the bound's
//! magnitude when only one is set), so by default every reading outside alerts.

use serde::{Deserialize, Serialize};
use weir_core::Result;
use weir_core::record::EventTime;

use super::{Detector, Verdict, Why, check};

/// Static bounds.
///
/// Parameters (defaults): `min` and `max` (unbounded; set at least one),
/// `min_samples` (0), `threshold` (0.5: any reading outside).
#[derive(Clone, Debug)]
pub struct Threshold<F> {
    field: F,
    min: f64,
    max: f64,
    min_samples: u64,
    threshold: f64,
}

impl<F> Threshold<F> {
    /// Bounds on the value `field` gives (none until [`min`](Self::min) or [`max`](Self::max)).
    pub fn new(field: F) -> Self {
        Threshold { field, min: f64::NEG_INFINITY, max: f64::INFINITY, min_samples: 0, threshold: 0.5 }
    }

    /// The smallest normal value.
    pub fn min(mut self, min: f64) -> Self {
        self.min = min;
        self
    }

    /// The largest normal value.
    pub fn max(mut self, max: f64) -> Self {
        self.max = max;
        self
    }

    /// Readings before it scores.
    pub fn min_samples(mut self, readings: u64) -> Self {
        self.min_samples = readings;
        self
    }

    /// The score at which it alerts, in `(0, 1]` (0.5: just outside).
    pub fn threshold(mut self, score: f64) -> Self {
        self.threshold = score;
        self
    }

    fn scale(&self) -> f64 {
        let width = self.max - self.min;
        let s = if width.is_finite() {
            width
        } else if self.max.is_finite() {
            self.max.abs()
        } else {
            self.min.abs()
        };
        if s > 0.0 { s } else { 1.0 }
    }
}

/// A key's reading count (for the warm-up).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Seen {
    n: u64,
}

impl<T, F> Detector<T> for Threshold<F>
where
    F: Fn(&T) -> f64 + 'static,
{
    type Value = f64;
    type State = Seen;
    type Out = f64;

    fn name(&self) -> &'static str {
        "threshold"
    }

    fn validate(&self) -> Result<()> {
        check("threshold.min", self.min, self.min <= self.max, "at most max")?;
        check("threshold.max", self.max, self.min.is_finite() || self.max.is_finite(), "set (or min)")?;
        check("threshold.threshold", self.threshold, self.threshold > 0.0 && self.threshold <= 1.0, "in (0, 1]")
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

    fn update(&self, s: &mut Seen, _: EventTime, &x: &f64) -> Verdict {
        s.n += 1;
        if s.n <= self.min_samples {
            return Verdict::NONE;
        }
        let d = if x < self.min {
            self.min - x
        } else if x > self.max {
            x - self.max
        } else {
            return Verdict::NONE;
        };
        let score = 0.5 + 0.5 * d / (d + self.scale());
        Verdict::new(score, self.threshold, Why::Bounds { low: self.min, high: self.max })
    }
}
