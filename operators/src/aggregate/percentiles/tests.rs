use super::*;
use crate::testing::Rng;
use proptest::prelude::*;

const QS: [f64; 13] = [0.0, 0.001, 0.01, 0.1, 0.25, 0.3333, 0.5, 0.75, 0.9, 0.99, 0.999, 0.9999, 1.0];

fn sketch(xs: &[f64]) -> DDSketch {
    let mut s = DDSketch::new();
    for &x in xs {
        s.add(x);
    }
    s
}

/// The exact quantile: the value of rank floor(q · (n - 1)).
fn exact(sorted: &[f64], q: f64) -> f64 {
    sorted[((q * (sorted.len() - 1) as f64) as usize).min(sorted.len() - 1)]
}

/// Every quantile of `QS` within 1 % of the exact one; the first failure.
fn check(xs: &[f64]) -> std::result::Result<(), String> {
    let s = sketch(xs);
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    for q in QS {
        let want = exact(&sorted, q);
        let got = s.quantile(q).unwrap_or(f64::NAN);
        let within = (got - want).abs() <= ACCURACY * want.abs();
        if !within {
            return Err(format!("q={q}: got {got}, exact {want} (n={})", xs.len()));
        }
    }
    Ok(())
}

#[test]
fn multiplier_is_the_bound_for_one_percent() {
    let gamma: f64 = (1.0 + ACCURACY) / (1.0 - ACCURACY);
    let needed = 7.0 / (10.0 * gamma.ln());
    assert!(MULTIPLIER >= needed * (1.0 + 1e-7), "{MULTIPLIER} < {needed}");
    assert!(MULTIPLIER <= needed * (1.0 + 1e-5));
}

/// Every bucket from the smallest subnormal to the largest finite value
/// spans at most a factor γ, and contains the values mapped to it.
#[test]
fn buckets_span_at_most_gamma() {
    let gamma = (1.0 + ACCURACY) / (1.0 - ACCURACY);
    // Below 1e-300 the bounds round as subnormals do: check the normal range.
    for i in index(f64::MIN_POSITIVE / 2.0)..=index(f64::MAX) {
        let (lo, hi, e) = bounds(i);
        assert!(hi / lo <= gamma * (1.0 + 1e-12), "bucket {i}: {lo}..{hi} · 2^{e}");
        assert!(hi > lo);
    }
    let mut rng = Rng::new(7);
    for _ in 0..200_000 {
        let v = f64::from_bits(rng.next() >> 1); // any positive finite or not
        if !v.is_finite() || v == 0.0 {
            continue;
        }
        let i = index(v);
        let r = representative(i).min(f64::MAX);
        if v >= 1e-300 {
            assert!((r - v).abs() <= ACCURACY * v, "{v}: bucket {i} represented by {r}");
        }
        // Monotone: a value's successor never maps lower.
        let next = f64::from_bits(v.to_bits() + 1);
        if next.is_finite() {
            assert!(index(next) >= i, "index not monotone at {v}");
        }
    }
}

/// The table of representatives covers every index a finite value maps to
/// and holds exactly what computing them gives.
#[test]
fn representative_table_equals_computing() {
    assert!(index(f64::MAX) <= MAX_INDEX, "{} > {MAX_INDEX}", index(f64::MAX));
    assert!(index(f64::from_bits(1)) >= 0);
    for i in 0..=MAX_INDEX + 3 {
        assert_eq!(representative(i).to_bits(), compute_representative(i).to_bits(), "bucket {i}");
    }
}

#[test]
fn empty_nan_infinities_and_bad_quantiles() {
    let mut s = DDSketch::new();
    assert_eq!(s.quantile(0.5), None);
    s.add(f64::NAN);
    s.add(f64::INFINITY);
    s.add(f64::NEG_INFINITY);
    assert_eq!(s.count(), 0);
    assert_eq!(s.min(), None);
    s.add(3.0);
    assert_eq!(s.quantile(0.5), Some(3.0));
    assert_eq!(s.quantile(1.5), None);
    assert_eq!(s.quantile(f64::NAN), None);
    let p = Percentiles::new(|x: &f64| *x, &[0.9, 0.1]);
    assert!(p.finish(&p.init()).iter().all(|v| v.is_nan()));
    assert!(Percentiles::try_new(|x: &f64| *x, &[0.5, 1.01]).is_err());
    assert!(Percentiles::try_new(|x: &f64| *x, &[f64::NAN]).is_err());
}

#[test]
fn results_in_the_order_given() {
    let p = Percentiles::new(|x: &f64| *x, &[0.99, 0.0, 0.5]);
    let mut acc = p.init();
    for x in 0..=1000 {
        p.add(&mut acc, &(x as f64));
    }
    let out = p.finish(&acc);
    assert_eq!(out.len(), 3);
    assert!((out[0] - 990.0).abs() <= 9.9 && out[1] == 0.0 && (out[2] - 500.0).abs() <= 5.0, "{out:?}");
}

/// Fixed seeds, adversarial distributions.
#[test]
fn one_percent_on_adversarial_distributions() {
    for seed in 1..=5u64 {
        let mut rng = Rng::new(seed);
        let n = 20_000;
        let cases: Vec<(&str, Vec<f64>)> = vec![
            ("pareto 1.1", (0..n).map(|_| rng.pareto(1.0, 1.1)).collect()),
            ("pareto 0.5", (0..n).map(|_| rng.pareto(1e-3, 0.5)).collect()),
            ("lognormal s=3", (0..n).map(|_| rng.lognormal(0.0, 3.0)).collect()),
            ("negative lognormal", (0..n).map(|_| -rng.lognormal(5.0, 2.0)).collect()),
            (
                "mix -/0/+",
                (0..n)
                    .map(|_| match rng.below(3) {
                        0 => -rng.lognormal(0.0, 2.0),
                        1 => 0.0,
                        _ => rng.lognormal(0.0, 2.0),
                    })
                    .collect(),
            ),
            ("duplicates", (0..n).map(|_| [-7.5, 0.0, 1.0, 1.0, 1e6][rng.below(5) as usize]).collect()),
            ("one value", vec![42.125; 1000]),
            ("tiny", (0..n).map(|_| rng.lognormal(-680.0, 3.0)).collect()),
            ("huge", (0..n).map(|_| rng.lognormal(680.0, 3.0)).collect()),
            ("tiny negative", (0..n).map(|_| -1e-300 * (1.0 + rng.unit() * 1e6)).collect()),
            ("uniform around 1e9", (0..n).map(|_| 1e9 + rng.unit()).collect()),
            ("sensor temps", (0..n).map(|_| -50.0 + 200.0 * rng.unit()).collect()),
        ];
        for (name, xs) in cases {
            if let Err(e) = check(&xs) {
                panic!("{name}, seed {seed}: {e}");
            }
        }
    }
}

/// Values of one sign within 15 decades of each other (collapse-free), of
/// either sign, zeros, and repeats.
fn values() -> impl Strategy<Value = Vec<f64>> {
    (-290i32..275).prop_flat_map(|decade| {
        let value = prop_oneof![
            4 => (0.0f64..15.0, any::<bool>()).prop_map(move |(e, neg)| {
                let v = 10f64.powf(decade as f64 + e);
                if neg { -v } else { v }
            }),
            1 => Just(0.0),
            1 => Just(10f64.powi(decade + 3)),
            1 => Just(-2.5 * 10f64.powi(decade + 7)),
        ];
        proptest::collection::vec(value, 1..400)
    })
}

proptest! {
    #[test]
    fn one_percent_on_any_values(xs in values()) {
        prop_assert!(check(&xs).is_ok(), "{:?}", check(&xs));
    }

    /// Pieces merged in any grouping answer exactly like one pass (the
    /// values may span enough decades to collapse buckets).
    #[test]
    fn merge_equals_one_pass(
        xs in proptest::collection::vec((-25.0f64..25.0, 0u8..3), 1..500),
        cuts in proptest::collection::vec(0usize..500, 0..5),
    ) {
        let xs: Vec<f64> = xs.into_iter().map(|(e, sign)| match sign {
            0 => -(10f64.powf(e)),
            1 => 0.0,
            _ => 10f64.powf(e),
        }).collect();
        let whole = sketch(&xs);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(xs.len())).collect();
        cuts.extend([0, xs.len()]);
        cuts.sort_unstable();
        let pieces: Vec<DDSketch> = cuts.windows(2).map(|w| sketch(&xs[w[0]..w[1]])).collect();
        // Left to right, and right to left.
        let mut ltr = DDSketch::new();
        for p in &pieces {
            ltr.merge(p);
        }
        let mut rtl = DDSketch::new();
        for p in pieces.iter().rev() {
            let mut p = p.clone();
            p.merge(&rtl);
            rtl = p;
        }
        for merged in [&ltr, &rtl] {
            prop_assert_eq!(merged.count(), whole.count());
            for q in QS.iter().chain(&[0.05, 0.2, 0.4, 0.6, 0.8, 0.95]) {
                prop_assert_eq!(merged.quantile(*q).map(f64::to_bits), whole.quantile(*q).map(f64::to_bits), "q={}", q);
            }
        }
    }
}

#[test]
fn collapse_keeps_the_upper_quantiles() {
    let mut rng = Rng::new(3);
    // 40 decades: more than 2048 buckets cover.
    let xs: Vec<f64> = (0..50_000).map(|_| 10f64.powf(-20.0 + 40.0 * rng.unit())).collect();
    let s = sketch(&xs);
    assert!(s.positive.counts.len() <= MAX_BUCKETS);
    let mut sorted = xs.clone();
    sorted.sort_by(f64::total_cmp);
    for q in [0.6, 0.75, 0.9, 0.99, 0.999] {
        let (got, want) = (s.quantile(q).unwrap_or(f64::NAN), exact(&sorted, q));
        assert!((got - want).abs() <= ACCURACY * want, "q={q}: {got} vs {want}");
    }
    // The lowest quantiles land in the collapsed bucket: too high, still a
    // value inside [min, max].
    let low = s.quantile(0.01).unwrap_or(f64::NAN);
    assert!(low > exact(&sorted, 0.01) && low >= s.min);
}

#[test]
fn bincode_round_trip() {
    let mut rng = Rng::new(11);
    let xs: Vec<f64> =
        (0..5000).map(|_| rng.lognormal(0.0, 4.0) * if rng.below(2) == 0 { -1.0 } else { 1.0 }).collect();
    let s = sketch(&xs);
    let bytes = bincode::serialize(&s).unwrap();
    let back: DDSketch = bincode::deserialize(&bytes).unwrap();
    for q in QS {
        assert_eq!(back.quantile(q).map(f64::to_bits), s.quantile(q).map(f64::to_bits));
    }
    let mut twice = back.clone();
    twice.merge(&back);
    assert_eq!(twice.count(), 2 * s.count());
    // No adds outside the covered range: the vectors do not grow.
    let buckets = s.buckets();
    let mut grown = s.clone();
    for &x in &xs {
        grown.add(x);
    }
    assert_eq!(grown.buckets(), buckets);
}
