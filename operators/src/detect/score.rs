//! From a statistic to an anomaly score in `[0, 1]`: the share of a normal
//! (or chi-squared) distribution that lies closer to the center than the
//! statistic, so a score means the same thing whichever detector gave it.

/// The two-sided normal score of a deviation of `z` standard deviations:
/// `P(|N(0, 1)| < |z|) = erf(|z| / √2)`. 0 at `z = 0`; 0.6827 at 1, 0.9973
/// at 3, 0.99994 at 4. An infinite `z` scores 1, a NaN 0.
pub fn normal(z: f64) -> f64 {
    if z.is_nan() {
        return 0.0;
    }
    erf(z.abs() / std::f64::consts::SQRT_2)
}

/// The chi-squared score of a squared distance `d2` in `dims` dimensions:
/// `P(χ²(dims) < d2)`. For one dimension it is [`normal`] of `√d2`.
pub fn chi_squared(d2: f64, dims: usize) -> f64 {
    if d2.is_nan() || d2 <= 0.0 || dims == 0 {
        return 0.0;
    }
    if d2.is_infinite() {
        return 1.0;
    }
    let half = d2 / 2.0;
    // P(k/2, x/2) by the recurrence on k: P(a + 1, x) = P(a, x) - x^a e^-x / Γ(a + 1).
    let (mut p, mut term, mut a) = if dims.is_multiple_of(2) {
        // a = 1: P = 1 - e^-x; term = x^1 e^-x / Γ(2).
        (1.0 - (-half).exp(), half * (-half).exp(), 1.0)
    } else {
        // a = 1/2: P = erf(√x); term = x^(1/2) e^-x / Γ(3/2).
        let t = half.sqrt() * (-half).exp() / (std::f64::consts::PI.sqrt() / 2.0);
        (erf(half.sqrt()), t, 0.5)
    };
    let mut k = if dims.is_multiple_of(2) { 2 } else { 1 };
    while k < dims {
        p -= term;
        a += 1.0;
        term *= half / a;
        k += 2;
    }
    p.clamp(0.0, 1.0)
}

/// The error function (musl's, by the `libm` crate: under 1 ulp).
pub fn erf(x: f64) -> f64 {
    libm::erf(x)
}

/// The complementary error function, `1 - erf(x)` without losing the
/// digits of a small result (musl's, by the `libm` crate: under 1 ulp).
pub fn erfc(x: f64) -> f64 {
    libm::erfc(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert!((normal(1.0) - 0.682_689_492_137).abs() < 1e-9);
        assert!((normal(3.0) - 0.997_300_203_937).abs() < 1e-9);
        assert!((1.0 - normal(6.0) - 1.973_175_5e-9).abs() < 1e-14);
        assert_eq!(normal(0.0), 0.0);
        assert_eq!(normal(f64::INFINITY), 1.0);
        assert_eq!(normal(f64::NAN), 0.0);
        for z in [0.3, 1.0, 2.5, 4.0] {
            assert!((chi_squared(z * z, 1) - normal(z)).abs() < 1e-12);
        }
        // chi2(2) CDF is 1 - e^(-x/2); chi2(3) at 7.814728 is 0.95.
        assert!((chi_squared(3.0, 2) - (1.0 - (-1.5f64).exp())).abs() < 1e-12);
        assert!((chi_squared(7.814_727_903, 3) - 0.95).abs() < 1e-8);
        assert!((chi_squared(9.487_729_037, 4) - 0.95).abs() < 1e-8);
    }

    /// Near 0 erf agrees with its Taylor series summed term by term; erfc
    /// keeps its digits far out; known values.
    #[test]
    fn erf_near_zero_is_its_series() {
        for i in 0..500 {
            let x = -0.5 + i as f64 / 500.0;
            let (x2, mut term, mut sum) = (x * x, x, x);
            for n in 1..40 {
                term *= -x2 / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            let want = sum * 2.0 / std::f64::consts::PI.sqrt();
            assert!((erf(x) - want).abs() <= 4.0 * f64::EPSILON * want.abs(), "erf({x}) = {} want {want}", erf(x));
        }
        assert!((erf(0.1) - 0.112_462_916_018_284_9).abs() < 1e-15);
        assert!((erf(1.0) - 0.842_700_792_949_714_9).abs() < 1e-15);
        assert!((erfc(3.0) - 2.209_049_699_858_544e-5).abs() < 1e-19);
        assert!((erfc(6.0) / 2.151_973_671_249_891_3e-17 - 1.0).abs() < 1e-12);
    }
}
