//! Sample variance and standard deviation of `f(item)`: Welford's online
//! update per item, Chan et al.'s parallel formula to merge partial states.
//! Both stay accurate where the textbook `sum(x²) - sum(x)²/n` cancels
//! catastrophically (values around 1e9 with a spread of 1, say).

use serde::{Deserialize, Serialize};

use super::Aggregator;

/// The running moments of a sample: count, mean and the sum of squared
/// deviations from the mean (`m2`). The accumulator of [`Variance`] and
/// [`StdDev`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    /// Number of values.
    pub count: u64,
    /// Their mean (0 when `count` is 0).
    pub mean: f64,
    /// Sum of squared deviations from `mean`.
    pub m2: f64,
}

impl Moments {
    /// Adds one value (Welford, 1962).
    #[inline]
    pub fn add(&mut self, x: f64) {
        self.count += 1;
        let delta = x - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (x - self.mean);
    }

    /// Merges another sample's moments (Chan, Golub and LeVeque, 1979):
    /// `m2 = m2_a + m2_b + delta² · n_a · n_b / n`.
    pub fn merge(&mut self, other: &Moments) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        let (na, nb) = (self.count as f64, other.count as f64);
        let n = na + nb;
        let delta = other.mean - self.mean;
        self.mean += delta * (nb / n);
        self.m2 += other.m2 + delta * delta * (na * nb / n);
        self.count += other.count;
    }

    /// The sample variance `m2 / (n - 1)` (SQL's `var_samp`), `None` with fewer
    /// than two values.
    pub fn sample_variance(&self) -> Option<f64> {
        (self.count >= 2).then(|| self.m2.max(0.0) / (self.count - 1) as f64)
    }
}

/// Sample variance of `f(item)` (divides by `n - 1`, like SQL's `var_samp`).
/// The result is `None` for a window with fewer than two items, where the
/// sample variance is undefined (SQL returns `NULL` there too).
///
/// ```
/// use weir_operators::aggregate::{Aggregator, Variance};
/// let var = Variance(|x: &f64| *x);
/// let mut acc = var.init();
/// for x in [1.0, 2.0, 3.0, 4.0] {
///     var.add(&mut acc, &x);
/// }
/// assert!((var.finish(&acc).unwrap() - 5.0 / 3.0).abs() < 1e-12);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Variance<F>(pub F);

impl<T, F: Fn(&T) -> f64 + 'static> Aggregator<T> for Variance<F> {
    type Acc = Moments;
    type Out = Option<f64>;
    fn init(&self) -> Moments {
        Moments::default()
    }
    fn add(&self, acc: &mut Moments, item: &T) {
        acc.add((self.0)(item));
    }
    fn merge(&self, acc: &mut Moments, other: &Moments) {
        acc.merge(other);
    }
    fn finish(&self, acc: &Moments) -> Option<f64> {
        acc.sample_variance()
    }
}

/// Sample standard deviation of `f(item)`: the square root of [`Variance`]
/// (SQL's `stddev_samp`); `None` for fewer than two items.
#[derive(Clone, Copy, Debug)]
pub struct StdDev<F>(pub F);

impl<T, F: Fn(&T) -> f64 + 'static> Aggregator<T> for StdDev<F> {
    type Acc = Moments;
    type Out = Option<f64>;
    fn init(&self) -> Moments {
        Moments::default()
    }
    fn add(&self, acc: &mut Moments, item: &T) {
        acc.add((self.0)(item));
    }
    fn merge(&self, acc: &mut Moments, other: &Moments) {
        acc.merge(other);
    }
    fn finish(&self, acc: &Moments) -> Option<f64> {
        acc.sample_variance().map(f64::sqrt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Two passes: the mean first, then the squared deviations from it, on
    /// the values shifted by the first one (exact for values close together,
    /// by Sterbenz's lemma), so the reference keeps its accuracy at any offset.
    fn two_pass(xs: &[f64]) -> Option<f64> {
        if xs.len() < 2 {
            return None;
        }
        let shifted: Vec<f64> = xs.iter().map(|x| x - xs[0]).collect();
        let n = xs.len() as f64;
        let mean = shifted.iter().sum::<f64>() / n;
        Some(shifted.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0))
    }

    fn moments(xs: &[f64]) -> Moments {
        let mut m = Moments::default();
        for &x in xs {
            m.add(x);
        }
        m
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-6 * b.abs().max(1e-12)
    }

    #[test]
    fn fewer_than_two_values_is_none() {
        let v = Variance(|x: &f64| *x);
        let s = StdDev(|x: &f64| *x);
        let mut acc = v.init();
        assert_eq!(v.finish(&acc), None);
        v.add(&mut acc, &5.0);
        assert_eq!(v.finish(&acc), None);
        assert_eq!(s.finish(&acc), None);
        v.add(&mut acc, &7.0);
        assert_eq!(v.finish(&acc), Some(2.0));
        assert_eq!(s.finish(&acc), Some(2f64.sqrt()));
    }

    #[test]
    fn large_offset_defeats_the_naive_formula_not_welford() {
        // 1e9 + {0, 1, 2, 3}: variance 5/3. The sum of squares is ~4e18, where
        // an f64 step is 512: the naive formula's answer is noise.
        let xs: Vec<f64> = (0..1000).map(|i| 1e9 + (i % 4) as f64).collect();
        let exact = two_pass(&xs).unwrap_or(f64::NAN);
        let (s, s2) = xs.iter().fold((0.0, 0.0), |(s, s2), x| (s + x, s2 + x * x));
        let n = xs.len() as f64;
        let naive = (s2 - s * s / n) / (n - 1.0);
        assert!((naive - exact).abs() > 0.1 * exact, "naive {naive} happened to be right");
        let welford = moments(&xs).sample_variance().unwrap_or(f64::NAN);
        assert!(close(welford, exact), "welford {welford} vs {exact}");
    }

    proptest! {
        /// Welford and Chan's merge, over any split, against the two-pass
        /// reference, on values with a large offset and a small spread.
        #[test]
        fn matches_two_pass(
            offset in prop_oneof![Just(0.0), Just(1e9), Just(-3e9), -1e6f64..1e6],
            spread in prop_oneof![Just(1e-3), Just(1.0), Just(1e4)],
            unit in proptest::collection::vec(-1.0f64..1.0, 0..300),
            cuts in proptest::collection::vec(0usize..300, 0..4),
        ) {
            let xs: Vec<f64> = unit.iter().map(|u| offset + spread * u).collect();
            let reference = two_pass(&xs);
            let whole = moments(&xs);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(xs.len())).collect();
            cuts.push(0);
            cuts.push(xs.len());
            cuts.sort_unstable();
            let mut merged = Moments::default();
            // Merge the pieces right to left, to exercise another order.
            for w in cuts.windows(2).rev() {
                let mut piece = moments(&xs[w[0]..w[1]]);
                piece.merge(&merged);
                merged = piece;
            }
            prop_assert_eq!(merged.count, xs.len() as u64);
            match reference {
                None => {
                    prop_assert_eq!(whole.sample_variance(), None);
                    prop_assert_eq!(merged.sample_variance(), None);
                }
                Some(r) => {
                    // Each deviation `x - mean` is off by about an ulp of the
                    // offset: a relative error of eps · offset / sd, sd the
                    // values' own standard deviation (it can be far below
                    // `spread`: two values close together). (The naive
                    // formula's is eps · (offset / sd)², 1e2 here.)
                    let kappa = offset.abs() / r.sqrt().max(f64::MIN_POSITIVE);
                    let tol = r * (1e-10 + 10.0 * kappa * f64::EPSILON) + 1e-30;
                    let w = whole.sample_variance().unwrap_or(f64::NAN);
                    let m = merged.sample_variance().unwrap_or(f64::NAN);
                    prop_assert!((w - r).abs() <= tol, "welford {} vs two-pass {}", w, r);
                    prop_assert!((m - r).abs() <= tol, "merged {} vs two-pass {}", m, r);
                }
            }
        }
    }
}
