//! [`Ewma`]: an EWMA control chart of individual readings. A key keeps an
//! exponentially weighted mean and variance (West's update, weight `alpha`
//! for the newest reading); a reading is scored by how many weighted standard
//! deviations it lies from the weighted mean before it ([`score::normal`]).
//! Unlike a window it follows slow drifts and forgets old levels smoothly.

use serde::{Deserialize, Serialize};
use weir_core::Result;
use weir_core::record::EventTime;

use super::zscore::deviation;
use super::{Detector, Verdict, check, check_threshold};

/// EWMA control chart.
///
/// Parameters (defaults): `alpha` (0.05, in `(0, 1]`: the newest reading's
/// weight; about `2 / alpha` readings of memory), `min_samples` (30,
/// at least 2), `threshold` (0.99999: about 4.4 standard deviations).
#[derive(Clone, Debug)]
pub struct Ewma<F> {
    field: F,
    alpha: f64,
    min_samples: u64,
    threshold: f64,
}

impl<F> Ewma<F> {
    /// An EWMA chart of the value `field` gives, with the default parameters.
    pub fn new(field: F) -> Self {
        Ewma { field, alpha: 0.05, min_samples: 30, threshold: 0.99999 }
    }

    /// The newest reading's weight, in `(0, 1]`.
    pub fn alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }

    gate_setters!(u64, "Readings before it scores.", "The score at which it alerts, in `(0, 1]`.");
}

/// A key's weighted mean and variance.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Weighted {
    n: u64,
    mean: f64,
    var: f64,
}

impl<T, F> Detector<T> for Ewma<F>
where
    F: Fn(&T) -> f64 + 'static,
{
    type State = Weighted;

    one_field!();

    fn name(&self) -> &'static str {
        "ewma"
    }

    fn validate(&self) -> Result<()> {
        check("ewma.alpha", self.alpha, self.alpha > 0.0 && self.alpha <= 1.0, "in (0, 1]")?;
        check_threshold("ewma", self.threshold)
    }

    fn update(&self, s: &mut Weighted, _: EventTime, &x: &f64) -> Verdict {
        let verdict = if s.n >= self.min_samples.max(2) {
            deviation(x, s.mean, s.var.sqrt(), s.n, self.threshold)
        } else {
            Verdict::NONE
        };
        if s.n == 0 {
            (s.mean, s.var) = (x, 0.0);
        } else {
            let diff = x - s.mean;
            let incr = self.alpha * diff;
            s.mean += incr;
            s.var = ((1.0 - self.alpha) * (s.var + diff * incr)).max(0.0);
        }
        s.n += 1;
        verdict
    }
}
