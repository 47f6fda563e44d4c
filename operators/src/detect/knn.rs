//! [`Knn`]: novelty of the recent pattern. Each reading ends a vector of the
//! key's last `lag` values; its distance to the nearest vector among the
//! previous `history` ones (not overlapping it), in units of the values'
//! standard deviation over `window` readings, is compared with the
//! distribution of past nearest distances (their mean and standard deviation
//! over `window`): a distance `z` standard deviations above their mean scores
//! `-log10(P(N(0, 1) > z)) / scale`, capped at 1, so the score spreads over
//! `[0, 1]` instead of crowding near 1. A pattern like one seen before scores
//! low, whatever its level; a spike, a level shift or a new shape scores
//! high. After a reading scores high the key stays quiet: a reading scores
//! only when its raw score is above every raw score of the `suppress`
//! readings before it, else 0, so a burst alerts once, at its start.
//!
//! This is the nearest-neighbour anomaly measure of KNN-CAD (Burnaev and
//! Ishimtsev, 2016) on lagged vectors, with the conformal p-value replaced by
//! a normal tail of the distance, and with the repeats of an alert held back.
//! A reading costs `history · lag` operations; a key keeps
//! `history + lag + suppress` values and two windows of `window` values.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use weir_core::Result;
use weir_core::record::EventTime;

use super::zscore::Rolling;
use super::{Detector, Verdict, Why, check, check_threshold, score};

/// Nearest-neighbour novelty of the last `lag` readings.
///
/// Parameters (defaults): `lag` (4 readings, at least 1: the pattern's
/// length), `history` (2000 past patterns searched, at least 1), `window`
/// (5000 readings, at least 2: the values' and the distances' statistics),
/// `min_samples` (30 distances before it scores, at least 2; at most the window counts), `scale` (5:
/// the score is 1 when the distance's normal tail is 1e-5 or less, about
/// 4.3 standard deviations), `suppress` (100 readings: a reading scores only
/// above every raw score of that many readings before it; 0 keeps every
/// score), `threshold` (0.99: a tail of about 1e-5, 4.2 standard deviations;
/// the threshold NAB's optimizer picks for these scores is 0.998).
#[derive(Clone, Debug)]
pub struct Knn<F> {
    field: F,
    lag: usize,
    history: usize,
    window: usize,
    min_samples: usize,
    scale: f64,
    suppress: usize,
    threshold: f64,
}

impl<F> Knn<F> {
    /// A nearest-neighbour detector of the value `field` gives, with the default parameters.
    pub fn new(field: F) -> Self {
        Knn { field, lag: 4, history: 2000, window: 5000, min_samples: 30, scale: 5.0, suppress: 100, threshold: 0.99 }
    }

    /// Readings in a pattern.
    pub fn lag(mut self, readings: usize) -> Self {
        self.lag = readings;
        self
    }

    /// Past patterns searched for the nearest one.
    pub fn history(mut self, patterns: usize) -> Self {
        self.history = patterns;
        self
    }

    /// Readings (and distances) the statistics are taken over.
    pub fn window(mut self, readings: usize) -> Self {
        self.window = readings;
        self
    }

    /// The `-log10` of the tail probability that scores 1.
    pub fn scale(mut self, decades: f64) -> Self {
        self.scale = decades;
        self
    }

    /// Readings after a high raw score during which only a higher one scores (0: none).
    pub fn suppress(mut self, readings: usize) -> Self {
        self.suppress = readings;
        self
    }

    gate_setters!(
        usize,
        "Distances before it scores (at most the window counts).",
        "The score at which it alerts, in `(0, 1]`."
    );
}

/// How much a raw score must exceed the held-back ones to count as a new high.
pub(super) const BEATS: f64 = 1e-9;

/// A key's state: its recent values, the statistics of its values and of
/// the nearest distances, and its last raw scores.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Patterns {
    recent: VecDeque<f64>,
    values: Rolling,
    distances: Rolling,
    raw: VecDeque<f64>,
}

/// The distance from the pattern ending at the last value of `recent` to
/// the nearest earlier pattern of `lag` values that does not overlap it,
/// among those ending at most `history` values back; None without one.
pub(super) fn nearest(recent: &VecDeque<f64>, lag: usize, history: usize) -> Option<f64> {
    let j = recent.len().checked_sub(1)?;
    // Candidate patterns end at e in [max(lag - 1, j - history), j - lag - 1].
    let last = j.checked_sub(lag + 1)?;
    let first = j.saturating_sub(history).max(lag - 1);
    if first > last {
        return None;
    }
    let current = j + 1 - lag;
    let mut best = f64::INFINITY;
    for e in first..=last {
        let start = e + 1 - lag;
        let mut d2 = 0.0;
        for i in 0..lag {
            let diff = recent[start + i] - recent[current + i];
            d2 += diff * diff;
            if d2 >= best {
                break;
            }
        }
        best = best.min(d2);
    }
    Some(best.sqrt())
}

/// The raw score of distance `d` against past distances of `mean` and
/// standard deviation `sd`: `-log10` of the normal tail above it, over `scale`.
pub(super) fn tail_score(d: f64, mean: f64, sd: f64, scale: f64) -> (f64, f64) {
    let tiny = 1e-9 * mean.abs().max(1e-12);
    let z = if sd > tiny {
        (d - mean) / sd
    } else if d - mean > tiny {
        f64::INFINITY
    } else {
        0.0
    };
    if z <= 0.0 {
        return (0.0, z);
    }
    let tail = score::erfc(z / std::f64::consts::SQRT_2) / 2.0;
    ((-tail.log10() / scale).min(1.0), z)
}

impl<T, F> Detector<T> for Knn<F>
where
    F: Fn(&T) -> f64 + 'static,
{
    type State = Patterns;

    one_field!();

    fn name(&self) -> &'static str {
        "knn"
    }

    fn validate(&self) -> Result<()> {
        check("knn.lag", self.lag as f64, self.lag >= 1, "at least 1")?;
        check("knn.history", self.history as f64, self.history >= 1, "at least 1")?;
        check("knn.window", self.window as f64, self.window >= 2, "at least 2")?;
        check("knn.min_samples", self.min_samples as f64, self.min_samples >= 2, "at least 2")?;
        check("knn.scale", self.scale, self.scale > 0.0 && self.scale.is_finite(), "positive")?;
        check_threshold("knn", self.threshold)
    }

    fn update(&self, s: &mut Patterns, _: EventTime, &x: &f64) -> Verdict {
        s.values.push(x, self.window);
        s.recent.push_back(x);
        if s.recent.len() > self.history + self.lag {
            s.recent.pop_front();
        }
        let sd = s.values.sd();
        let tiny = 1e-9 * s.values.mean().abs().max(1e-12);
        let (mut raw, mut why) = (0.0, Why::Nothing);
        if sd > tiny
            && let Some(d) = nearest(&s.recent, self.lag, self.history)
        {
            let d = d / (sd * (self.lag as f64).sqrt());
            let n = s.distances.len();
            // The ring holds at most `window` distances: a larger `min_samples` would never score.
            if n >= self.min_samples.min(self.window) {
                let (r, z) = tail_score(d, s.distances.mean(), s.distances.sd(), self.scale);
                raw = r;
                why = Why::Novel { distance: d, z, samples: n as u64 };
            }
            s.distances.push(d, self.window);
        }
        let before = s.raw.iter().copied().fold(0.0, f64::max);
        if self.suppress > 0 {
            if s.raw.len() >= self.suppress {
                s.raw.pop_front();
            }
            s.raw.push_back(raw);
        }
        // A new high by more than rounding: equal patterns give equal raw scores, and one
        // computed a little differently must not count as beating its twin.
        let kept = if raw > before + BEATS { raw } else { 0.0 };
        Verdict::new(kept, self.threshold, why)
    }
}
