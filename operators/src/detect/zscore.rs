//! [`ZScore`]: how many standard deviations a reading lies from the mean of
//! the key's last `window` readings (before it), scored by [`score::normal`].
//! The mean and variance are Welford's running ones with a removal step for
//! the reading that leaves the ring buffer; every `window` readings they are
//! recomputed from the buffer, so rounding errors cannot pile up.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use weir_core::Result;
use weir_core::record::EventTime;

use super::{Detector, Verdict, Why, check, check_threshold, score};

/// Rolling z-score over a key's last `window` readings.
///
/// Parameters (defaults): `window` (100 readings, at least 2), `min_samples`
/// (30: readings before it scores, at most the window, at least 2),
/// `threshold` (0.99999: about 4.4 standard deviations).
#[derive(Clone, Debug)]
pub struct ZScore<F> {
    field: F,
    window: usize,
    min_samples: usize,
    threshold: f64,
}

impl<F> ZScore<F> {
    /// A z-score of the value `field` gives, with the default parameters.
    pub fn new(field: F) -> Self {
        ZScore { field, window: 100, min_samples: 30, threshold: 0.99999 }
    }

    /// Readings the mean and deviation are taken over.
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

/// A key's window: its values, their mean and sum of squared deviations.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Rolling {
    values: VecDeque<f64>,
    mean: f64,
    m2: f64,
    /// Additions since the statistics were last recomputed from the buffer.
    since_exact: usize,
}

impl Rolling {
    /// Values it holds.
    pub(super) fn len(&self) -> usize {
        self.values.len()
    }

    /// The mean (0 when empty).
    pub(super) fn mean(&self) -> f64 {
        self.mean
    }

    /// The sample standard deviation (0 for fewer than two values).
    pub(super) fn sd(&self) -> f64 {
        let n = self.values.len();
        if n < 2 { 0.0 } else { (self.m2 / (n - 1) as f64).sqrt() }
    }

    /// Adds `x`, dropping the oldest value beyond `window`.
    pub(super) fn push(&mut self, x: f64, window: usize) {
        let mut removed = None;
        if self.values.len() >= window
            && let Some(old) = self.values.pop_front()
        {
            removed = Some(old);
            // Welford's removal step.
            let n = self.values.len() as f64;
            if n == 0.0 {
                (self.mean, self.m2) = (0.0, 0.0);
            } else {
                let mean = self.mean - (old - self.mean) / n;
                self.m2 -= (old - self.mean) * (old - mean);
                self.mean = mean;
            }
        }
        self.values.push_back(x);
        let n = self.values.len() as f64;
        let delta = x - self.mean;
        self.mean += delta / n;
        self.m2 += delta * (x - self.mean);
        self.since_exact += 1;
        // After a removal the rounding error is about ε·(old² + x²) per step: when the
        // spread is that small (the window became constant) it would be noise, so recompute.
        let r = removed.unwrap_or(0.0);
        let noise = 1e-9 * (r * r + x * x) * n;
        if self.since_exact >= window || (removed.is_some() && self.m2 <= noise) {
            let n = self.values.len() as f64;
            self.mean = self.values.iter().sum::<f64>() / n;
            self.m2 = self.values.iter().map(|v| (v - self.mean).powi(2)).sum();
            self.since_exact = 0;
        }
        self.m2 = self.m2.max(0.0);
    }
}

/// The verdict on `x` lying `x - center` from `center` with `spread` (a
/// standard deviation or its robust estimate) over `samples` readings. A
/// spread of (nearly) zero: a value equal to the center scores 0, any other 1.
pub(super) fn deviation(x: f64, center: f64, spread: f64, samples: u64, threshold: f64) -> Verdict {
    let tiny = 1e-9 * center.abs().max(1e-12);
    let z = if spread > tiny {
        (x - center) / spread
    } else if (x - center).abs() <= tiny {
        0.0
    } else {
        f64::INFINITY.copysign(x - center)
    };
    Verdict::new(score::normal(z), threshold, Why::Deviation { z, center, spread, samples })
}

/// Checks the parameters shared by windowed detectors.
pub(super) fn check_window(name: &str, window: usize, threshold: f64) -> Result<()> {
    check(&format!("{name}.window"), window as f64, window >= 2, "at least 2")?;
    check_threshold(name, threshold)
}

impl<T, F> Detector<T> for ZScore<F>
where
    F: Fn(&T) -> f64 + 'static,
{
    type State = Rolling;

    one_field!();

    fn name(&self) -> &'static str {
        "zscore"
    }

    fn validate(&self) -> Result<()> {
        check_window("zscore", self.window, self.threshold)
    }

    fn prefetch(&self, s: &Rolling) {
        // The oldest value, which `push` reads (and overwrites) once the window is full.
        weir_core::hint::prefetch(s.values.as_slices().0.as_ptr());
    }

    fn update(&self, s: &mut Rolling, _: EventTime, &x: &f64) -> Verdict {
        let n = s.values.len();
        let verdict = if n >= self.min_samples.min(self.window).max(2) {
            let sd = (s.m2 / (n - 1) as f64).sqrt();
            deviation(x, s.mean, sd, n as u64, self.threshold)
        } else {
            Verdict::NONE
        };
        s.push(x, self.window);
        verdict
    }
}
