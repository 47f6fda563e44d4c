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

/// The error function: its Taylor series near 0 (where `1 - erfc` would
/// lose the digits), else from the complementary one.
pub fn erf(x: f64) -> f64 {
    if x.abs() >= 0.5 {
        return 1.0 - erfc(x);
    }
    // erf(x) = 2/√π Σ (-1)^n x^(2n+1) / (n! (2n+1)), by Horner in x²; for
    // |x| < 0.5 the terms after these are below 1e-21.
    let x2 = x * x;
    let sum = ERF_SERIES.iter().rev().fold(0.0, |acc, &c| acc * x2 + c);
    x * sum * 2.0 / std::f64::consts::PI.sqrt()
}

/// The coefficients of erf's Taylor series: `(-1)^n / (n! (2n + 1))`.
const ERF_SERIES: [f64; 14] = {
    let mut c = [0.0; 14];
    let (mut n, mut factorial) = (0, 1.0);
    while n < c.len() {
        if n > 0 {
            factorial *= n as f64;
        }
        let sign = if n % 2 == 0 { 1.0 } else { -1.0 };
        c[n] = sign / (factorial * (2 * n + 1) as f64);
        n += 1;
    }
    c
};

/// The complementary error function (Chebyshev fit of Numerical Recipes,
/// 3rd ed. §6.2.2: relative error below 1.2e-7 everywhere, ~1e-16 for large x).
pub fn erfc(x: f64) -> f64 {
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    let t = 2.0 / (2.0 + x);
    let ty = 4.0 * t - 2.0;
    // The published coefficients, digits as printed.
    #[allow(clippy::excessive_precision)]
    const COF: [f64; 28] = [
        -1.3026537197817094,
        6.419_697_923_564_902e-1,
        1.9476473204185836e-2,
        -9.561514786808631e-3,
        -9.46595344482036e-4,
        3.66839497852761e-4,
        4.2523324806907e-5,
        -2.0278578112534e-5,
        -1.624290004647e-6,
        1.303655835580e-6,
        1.5626441722e-8,
        -8.5238095915e-8,
        6.529054439e-9,
        5.059343495e-9,
        -9.91364156e-10,
        -2.27365122e-10,
        9.6467911e-11,
        2.394038e-12,
        -6.886027e-12,
        8.94487e-13,
        3.13092e-13,
        -1.12708e-13,
        3.81e-16,
        7.106e-15,
        -1.523e-15,
        -9.4e-17,
        1.21e-16,
        -2.8e-17,
    ];
    let (mut d, mut dd) = (0.0f64, 0.0f64);
    for &c in COF[1..].iter().rev() {
        let tmp = d;
        d = ty * d - dd + c;
        dd = tmp;
    }
    t * (-x * x + 0.5 * (COF[0] + ty * d) - dd).exp()
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

    /// The series (Horner, below 0.5) agrees with the term-by-term sum and
    /// meets the complementary branch at 0.5.
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
        let below = erf(0.5 - 1e-12);
        assert!((below - erf(0.5)).abs() < 1e-7, "{below} vs {}", erf(0.5));
        assert!((erf(0.1) - 0.112_462_916_018_284_9).abs() < 1e-15);
    }
}
