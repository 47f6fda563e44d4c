//! [`Threshold`]: bounds, static or taken from each record. Inside `[min,
//! max]` a reading scores 0; outside by `d` it scores `0.5 + 0.5 · d / (d +
//! scale)` (0.5 just outside, towards 1 far outside; `scale` is the width of
//! the bounds, or the bound's magnitude when only one is set), so by default
//! every reading outside alerts.
//!
//! Bounds from the record ([`Threshold::bounds`]) serve per-key limits that
//! live in reference data: a reading enriched with its device's registry row
//! carries its own `min` and `max`. Either way a reading's value travels with
//! the bounds it is judged by, so one detector covers both.

use serde::{Deserialize, Serialize};
use weir_core::Result;
use weir_core::record::EventTime;

use super::{Detector, Verdict, Why, check, check_threshold};

/// Static bounds, or bounds each record gives.
///
/// Parameters (defaults): `min` and `max` (unbounded; set at least one), or
/// [`bounds`](Self::bounds) (a function of the record), `min_samples` (0),
/// `threshold` (0.5: any reading outside).
#[derive(Clone, Debug)]
pub struct Threshold<F, B = Static> {
    field: F,
    bounds: B,
    min_samples: u64,
    threshold: f64,
}

/// The bounds of a [`Threshold`] that has the same ones for every record.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Static {
    min: f64,
    max: f64,
}

/// Where a [`Threshold`] finds a record's bounds: [`Static`] ones, or a
/// function of the record returning `(min, max)`.
pub trait Bounds<T>: 'static {
    /// `(min, max)` for `record`.
    fn of(&self, record: &T) -> (f64, f64);
    /// Checks static bounds when the step is built (bounds from records are
    /// checked per reading: one with `min > max` or NaN scores 0).
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

impl<T> Bounds<T> for Static {
    fn of(&self, _: &T) -> (f64, f64) {
        (self.min, self.max)
    }

    fn validate(&self) -> Result<()> {
        check("threshold.min", self.min, self.min <= self.max, "at most max")?;
        check("threshold.max", self.max, self.min.is_finite() || self.max.is_finite(), "set (or min)")
    }
}

impl<T, G: Fn(&T) -> (f64, f64) + 'static> Bounds<T> for G {
    fn of(&self, record: &T) -> (f64, f64) {
        self(record)
    }
}

impl<F> Threshold<F> {
    /// Bounds on the value `field` gives (none until [`min`](Self::min),
    /// [`max`](Self::max) or [`bounds`](Self::bounds)).
    pub fn new(field: F) -> Self {
        Threshold {
            field,
            bounds: Static { min: f64::NEG_INFINITY, max: f64::INFINITY },
            min_samples: 0,
            threshold: 0.5,
        }
    }

    /// The smallest normal value.
    pub fn min(mut self, min: f64) -> Self {
        self.bounds.min = min;
        self
    }

    /// The largest normal value.
    pub fn max(mut self, max: f64) -> Self {
        self.bounds.max = max;
        self
    }

    /// Takes each record's bounds from `bounds` (`(min, max)`, either may be
    /// infinite) instead of static ones:
    /// `Threshold::new(|r: &R| r.temp).bounds(|r: &R| (r.min_temp, r.max_temp))`.
    pub fn bounds<T, G: Fn(&T) -> (f64, f64) + 'static>(self, bounds: G) -> Threshold<F, G> {
        Threshold { field: self.field, bounds, min_samples: self.min_samples, threshold: self.threshold }
    }
}

impl<F, B> Threshold<F, B> {
    gate_setters!(u64, "Readings before it scores.", "The score at which it alerts, in `(0, 1]` (0.5: just outside).");
}

/// The scale of the score outside `[min, max]`: their distance, else the finite one's magnitude.
fn scale(min: f64, max: f64) -> f64 {
    let width = max - min;
    let s = if width.is_finite() {
        width
    } else if max.is_finite() {
        max.abs()
    } else {
        min.abs()
    };
    if s > 0.0 { s } else { 1.0 }
}

/// A key's reading count (for the warm-up).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Seen {
    n: u64,
}

impl<T, F, B> Detector<T> for Threshold<F, B>
where
    F: Fn(&T) -> f64 + 'static,
    B: Bounds<T>,
{
    /// The reading's value and its bounds, `(x, min, max)`.
    type Value = (f64, f64, f64);
    type State = Seen;
    type Out = f64;

    fn name(&self) -> &'static str {
        "threshold"
    }

    fn validate(&self) -> Result<()> {
        self.bounds.validate()?;
        check_threshold("threshold", self.threshold)
    }

    fn value(&self, record: &T) -> (f64, f64, f64) {
        let (min, max) = self.bounds.of(record);
        ((self.field)(record), min, max)
    }

    fn valid(&self, &(x, min, max): &(f64, f64, f64)) -> bool {
        x.is_finite() && min <= max && !(min.is_infinite() && max.is_infinite())
    }

    fn out(&self, value: &(f64, f64, f64)) -> f64 {
        value.0
    }

    fn update(&self, s: &mut Seen, _: EventTime, &(x, min, max): &(f64, f64, f64)) -> Verdict {
        s.n += 1;
        if s.n <= self.min_samples {
            return Verdict::NONE;
        }
        let d = if x < min {
            min - x
        } else if x > max {
            x - max
        } else {
            return Verdict::NONE;
        };
        let score = 0.5 + 0.5 * d / (d + scale(min, max));
        Verdict::new(score, self.threshold, Why::Bounds { low: min, high: max })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reading with its own bounds.
    struct R {
        x: f64,
        lo: f64,
        hi: f64,
    }

    fn verdicts<B: Bounds<R>>(d: &Threshold<fn(&R) -> f64, B>, rs: &[R]) -> Vec<(bool, f64, f64)> {
        let mut s = Seen::default();
        rs.iter()
            .map(|r| {
                let v = d.value(r);
                if !d.valid(&v) {
                    return (false, 0.0, f64::NAN);
                }
                let verdict = d.update(&mut s, 0, &v);
                (verdict.alert, verdict.score, d.out(&v))
            })
            .collect()
    }

    #[test]
    fn bounds_from_the_record_score_as_the_same_static_bounds_do() {
        let x: fn(&R) -> f64 = |r| r.x;
        let rs: Vec<R> = [-30.0, -20.0, 0.0, 30.0, 31.0, 100.0].iter().map(|&x| R { x, lo: -20.0, hi: 30.0 }).collect();
        let fixed = Threshold::new(x).min(-20.0).max(30.0);
        let per_record = Threshold::new(x).bounds(|r: &R| (r.lo, r.hi));
        assert!(Detector::<R>::validate(&per_record).is_ok());
        assert_eq!(verdicts(&fixed, &rs), verdicts(&per_record, &rs));
        let alerts: Vec<bool> = verdicts(&per_record, &rs).iter().map(|v| v.0).collect();
        assert_eq!(alerts, [true, false, false, false, true, true]);
    }

    #[test]
    fn each_reading_is_judged_by_its_own_bounds_and_bad_bounds_score_zero() {
        let x: fn(&R) -> f64 = |r| r.x;
        let d = Threshold::new(x).bounds(|r: &R| (r.lo, r.hi));
        let rs = [
            R { x: 25.0, lo: 0.0, hi: 20.0 },
            R { x: 25.0, lo: 0.0, hi: 30.0 },
            R { x: 25.0, lo: 30.0, hi: 0.0 },
            R { x: 25.0, lo: f64::NAN, hi: 30.0 },
            R { x: 25.0, lo: f64::NEG_INFINITY, hi: f64::INFINITY },
        ];
        let got: Vec<(bool, f64)> = verdicts(&d, &rs).iter().map(|v| (v.0, v.1)).collect();
        assert_eq!(got[0], (true, 0.5 + 0.5 * 5.0 / 25.0));
        assert_eq!(&got[1..], &[(false, 0.0); 4]);
    }

    #[test]
    fn static_bounds_are_checked_when_built() {
        let x: fn(&R) -> f64 = |r| r.x;
        let err = Detector::<R>::validate(&Threshold::new(x).min(2.0).max(1.0)).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("threshold.min")));
        assert!(Detector::<R>::validate(&Threshold::new(x)).is_err(), "no bounds at all");
    }
}
