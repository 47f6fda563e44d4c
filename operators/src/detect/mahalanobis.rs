//! [`Mahalanobis`]: several fields of one reading at once. A key keeps the
//! running mean and covariance of its readings (Welford's update for
//! vectors, `d + d²` numbers); a reading is scored by its squared
//! Mahalanobis distance from the mean before it (Hotelling's T² of one
//! reading), as [`score::chi_squared`] in `d` dimensions. It sees readings
//! whose fields are each normal but whose combination is not (a temperature
//! that is fine, with a humidity that is fine, that never occur together).

use serde::{Deserialize, Serialize};
use timely::ExchangeData;
use weir_core::Result;
use weir_core::record::EventTime;

use super::{Detector, Verdict, Why, check_threshold, score};

/// Squared Mahalanobis distance on a running covariance.
///
/// Parameters (defaults): `min_samples` (50, at least the dimensions + 1),
/// `threshold` (0.99999: about 4.4 standard deviations). A reading whose field count differs from the
/// key's first one is skipped (score 0). A ridge of 1e-9 of the mean
/// variance keeps a singular covariance (fields that move together
/// exactly) invertible.
#[derive(Clone, Debug)]
pub struct Mahalanobis<F> {
    fields: F,
    min_samples: u64,
    threshold: f64,
}

impl<F> Mahalanobis<F> {
    /// A detector over the values `fields` gives (an array or a `Vec` of `f64`).
    pub fn new(fields: F) -> Self {
        Mahalanobis { fields, min_samples: 50, threshold: 0.99999 }
    }

    gate_setters!(u64, "Readings before it scores.", "The score at which it alerts, in `(0, 1]`.");
}

/// A key's count, mean vector and co-moment matrix (row-major).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Moments {
    n: u64,
    mean: Vec<f64>,
    comoment: Vec<f64>,
}

/// The squared Mahalanobis distance of `x` from `mean` under covariance
/// `cov` (row-major, `d × d`), with the ridge added; `None` when it is not
/// positive definite even so.
pub(super) fn distance2(x: &[f64], mean: &[f64], cov: &[f64]) -> Option<f64> {
    let d = x.len();
    let ridge = 1e-9 * ((0..d).map(|i| cov[i * d + i]).sum::<f64>() / d as f64).max(1e-300);
    // Cholesky: cov + ridge·I = L Lᵀ.
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let mut sum = cov[i * d + j] + if i == j { ridge } else { 0.0 };
            for k in 0..j {
                sum -= l[i * d + k] * l[j * d + k];
            }
            if i == j {
                if sum <= 0.0 {
                    return None;
                }
                l[i * d + i] = sum.sqrt();
            } else {
                l[i * d + j] = sum / l[j * d + j];
            }
        }
    }
    // Solve L y = x - mean; the distance is |y|².
    let mut y = vec![0.0; d];
    for i in 0..d {
        let mut sum = x[i] - mean[i];
        for k in 0..i {
            sum -= l[i * d + k] * y[k];
        }
        y[i] = sum / l[i * d + i];
    }
    Some(y.iter().map(|v| v * v).sum())
}

impl<T, F, V> Detector<T> for Mahalanobis<F>
where
    F: Fn(&T) -> V + 'static,
    V: AsRef<[f64]> + ExchangeData + Clone,
{
    type Value = V;
    type State = Moments;
    type Out = V;

    fn name(&self) -> &'static str {
        "mahalanobis"
    }

    fn validate(&self) -> Result<()> {
        check_threshold("mahalanobis", self.threshold)
    }

    fn value(&self, record: &T) -> V {
        (self.fields)(record)
    }

    fn valid(&self, value: &V) -> bool {
        let v = value.as_ref();
        !v.is_empty() && v.iter().all(|x| x.is_finite())
    }

    fn out(&self, value: &V) -> V {
        value.clone()
    }

    fn update(&self, s: &mut Moments, _: EventTime, value: &V) -> Verdict {
        let x = value.as_ref();
        let d = x.len();
        if s.n == 0 {
            s.mean = vec![0.0; d];
            s.comoment = vec![0.0; d * d];
        } else if s.mean.len() != d {
            return Verdict::NONE;
        }
        let mut verdict = Verdict::NONE;
        if s.n >= self.min_samples.max(d as u64 + 1) {
            let cov: Vec<f64> = s.comoment.iter().map(|c| c / (s.n - 1) as f64).collect();
            if let Some(d2) = distance2(x, &s.mean, &cov) {
                verdict = Verdict::new(
                    score::chi_squared(d2, d),
                    self.threshold,
                    Why::Distance { d2, dims: d, samples: s.n },
                );
            }
        }
        // Welford for vectors: C += (x - mean_old)(x - mean_new)ᵀ.
        s.n += 1;
        let n = s.n as f64;
        let before: Vec<f64> = x.iter().zip(&s.mean).map(|(x, m)| x - m).collect();
        for (m, dx) in s.mean.iter_mut().zip(&before) {
            *m += dx / n;
        }
        for (row, bi) in s.comoment.chunks_exact_mut(d).zip(&before) {
            for ((c, xj), mj) in row.iter_mut().zip(x).zip(&s.mean) {
                *c += bi * (xj - mj);
            }
        }
        verdict
    }
}
