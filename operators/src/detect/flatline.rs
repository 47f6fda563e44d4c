//! [`FlatLine`]: a stuck sensor. A key's run is its readings since the value
//! last changed (by more than `tolerance` from the run's first value); a
//! reading scores how long the run has lasted as a share of `duration` of
//! event time (capped at 1), and alerts once the run lasts `duration` or more.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_core::Result;
use weir_core::record::EventTime;

use super::{Detector, Verdict, Why, check, check_threshold};

/// No change for a duration of event time.
///
/// Parameters (defaults): `duration` (given, positive), `tolerance` (0: any
/// change ends a run), `min_samples` (2), `threshold` (1: stuck for the whole duration).
#[derive(Clone, Debug)]
pub struct FlatLine<F> {
    field: F,
    duration: i64,
    tolerance: f64,
    min_samples: u64,
    threshold: f64,
}

impl<F> FlatLine<F> {
    /// Alerts when the value `field` gives stays the same for `duration`.
    pub fn new(field: F, duration: Duration) -> Self {
        let duration = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        FlatLine { field, duration, tolerance: 0.0, min_samples: 2, threshold: 1.0 }
    }

    /// How far from the run's first value a reading may be and still not change it.
    pub fn tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = tolerance;
        self
    }

    gate_setters!(
        u64,
        "Readings before it scores.",
        "The score at which it alerts, in `(0, 1]` (the share of the duration)."
    );
}

/// A key's current run: its value and first time, and the reading count.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Run {
    n: u64,
    run: Option<(f64, EventTime)>,
}

impl<T, F> Detector<T> for FlatLine<F>
where
    F: Fn(&T) -> f64 + 'static,
{
    type State = Run;

    one_field!();

    fn name(&self) -> &'static str {
        "flatline"
    }

    fn validate(&self) -> Result<()> {
        check("flatline.duration", self.duration as f64, self.duration > 0, "positive (ms)")?;
        check("flatline.tolerance", self.tolerance, self.tolerance >= 0.0, "at least 0")?;
        check_threshold("flatline", self.threshold)
    }

    fn update(&self, s: &mut Run, t: EventTime, &x: &f64) -> Verdict {
        s.n += 1;
        let since = match s.run {
            Some((v, since)) if (x - v).abs() <= self.tolerance => since,
            _ => {
                s.run = Some((x, t));
                t
            }
        };
        if s.n < self.min_samples || since == t {
            return Verdict::NONE;
        }
        let for_ms = t.saturating_sub(since);
        Verdict::new(for_ms as f64 / self.duration as f64, self.threshold, Why::Stuck { since, for_ms })
    }
}
