//! [`RateOfChange`]: how fast a value moves between a key's consecutive
//! readings, per second of event time. A rate `r` scores `r / (r + max)`:
//! 0.5 at the largest rate allowed, so by default a faster change alerts.
//! Two readings at the same time with different values change infinitely fast.

use serde::{Deserialize, Serialize};
use weir_core::Result;
use weir_core::record::EventTime;

use super::{Detector, Verdict, Why, check, check_threshold};

/// Rate of change between consecutive readings.
///
/// Parameters (defaults): `max_per_second` (given: the largest normal rate,
/// positive), `min_samples` (1: the first reading has nothing to compare
/// with), `threshold` (0.5: faster than `max_per_second`).
#[derive(Clone, Debug)]
pub struct RateOfChange<F> {
    field: F,
    max: f64,
    min_samples: u64,
    threshold: f64,
}

impl<F> RateOfChange<F> {
    /// Rates of the value `field` gives, normal up to `max_per_second`.
    pub fn new(field: F, max_per_second: f64) -> Self {
        RateOfChange { field, max: max_per_second, min_samples: 1, threshold: 0.5 }
    }

    gate_setters!(u64, "Readings before it scores (at least 1).", "The score at which it alerts, in `(0, 1]`.");
}

/// A key's previous reading and reading count.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Previous {
    n: u64,
    last: Option<(EventTime, f64)>,
}

impl<T, F> Detector<T> for RateOfChange<F>
where
    F: Fn(&T) -> f64 + 'static,
{
    type State = Previous;

    one_field!();

    fn name(&self) -> &'static str {
        "rate"
    }

    fn validate(&self) -> Result<()> {
        check("rate.max_per_second", self.max, self.max > 0.0 && self.max.is_finite(), "a positive number")?;
        check_threshold("rate", self.threshold)
    }

    fn update(&self, s: &mut Previous, t: EventTime, &x: &f64) -> Verdict {
        let verdict = match s.last {
            Some((t0, x0)) if s.n >= self.min_samples.max(1) => {
                let dx = x - x0;
                let dt = (t - t0) as f64 / 1000.0;
                let per_second = if dx == 0.0 {
                    0.0
                } else if dt > 0.0 {
                    dx / dt
                } else {
                    f64::INFINITY.copysign(dx)
                };
                let r = per_second.abs();
                let score = if r.is_infinite() { 1.0 } else { r / (r + self.max) };
                Verdict::new(score, self.threshold, Why::Rate { per_second, max: self.max })
            }
            _ => Verdict::NONE,
        };
        s.last = Some((t, x));
        s.n += 1;
        verdict
    }
}
