use std::collections::HashSet;

use super::*;
use proptest::prelude::*;

/// Standard error of the dense estimate.
fn standard_error() -> f64 {
    1.04 / (REGISTERS as f64).sqrt()
}

fn state_of<K: Hash>(keys: impl IntoIterator<Item = K>) -> DistinctState {
    let mut s = DistinctState::default();
    for k in keys {
        s.add_hash(StableHasher::hash_one(&k));
    }
    s
}

/// The hash is this crate's function: these values must never change (a
/// change would break the merge of checkpointed states).
#[test]
fn hash_golden_values() {
    let got = [
        StableHasher::hash_one(&42u64),
        StableHasher::hash_one(&-1i32),
        StableHasher::hash_one("device-17"),
        StableHasher::hash_one(&String::from("device-17")),
        StableHasher::hash_one(&(7u32, "a")),
        StableHasher::hash_one(&[1u8, 2, 3, 4, 5, 6, 7, 8, 9][..]),
        StableHasher::hash_one(&Some(3u16)),
        StableHasher::hash_one(""),
    ];
    assert_eq!(got, GOLDEN, "{got:#x?}");
    assert_eq!(got[2], got[3], "str and String hash alike");
}

const GOLDEN: [u64; 8] = [
    0x06ff_db24_49af_5dc5,
    0xddfa_21cc_a0a7_aa77,
    0x79fc_2abf_3bb5_1904,
    0x79fc_2abf_3bb5_1904,
    0xd798_75e5_30b7_3c38,
    0x4b48_9404_bd14_cd00,
    0xa863_8114_650c_e97f,
    0x2258_63c1_ee79_5019,
];

#[test]
fn tail_read_is_little_endian_packing() {
    let bytes = [0x11u8, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77];
    for n in 0..=7 {
        let mut w = [0u8; 8];
        w[..n].copy_from_slice(&bytes[..n]);
        assert_eq!(read_tail(&bytes[..n]), u64::from_le_bytes(w), "{n} bytes");
    }
}

/// Relative errors at `n` distinct keys over `seeds` key sets.
fn relative_errors(n: u64, seeds: u64, dense: bool) -> Vec<f64> {
    (0..seeds)
        .map(|seed| {
            let mut s = state_of((0..n).map(|i| (seed, i)));
            if let (true, DistinctState::Sparse(h)) = (dense, &s) {
                s = DistinctState::Dense(densify(h));
            }
            s.estimate() / n as f64 - 1.0
        })
        .collect()
}

fn assert_accurate(n: u64, seeds: u64, dense: bool) {
    let errors = relative_errors(n, seeds, dense);
    let se = standard_error();
    let mean = errors.iter().sum::<f64>() / errors.len() as f64;
    let worst = errors.iter().fold(0f64, |w, e| w.max(e.abs()));
    assert!(worst <= 3.0 * se, "n={n} dense={dense}: worst error {worst:.4} > 3 SE ({:.4}); {errors:?}", 3.0 * se);
    // The mean of `seeds` estimates: its own standard error is se / sqrt(seeds).
    let mean_bound = 3.0 * se / (seeds as f64).sqrt() + 0.001;
    assert!(mean.abs() <= mean_bound, "n={n} dense={dense}: mean error {mean:.5} > {mean_bound:.5}");
}

#[test]
fn exact_while_small() {
    for n in [0, 1, 10, 1000, SPARSE_MAX as u64] {
        for seed in 0..5u64 {
            let s = state_of((0..n).map(|i| (seed, i)));
            assert!(matches!(s, DistinctState::Sparse(_)));
            assert_eq!(s.estimate(), n as f64);
        }
    }
    assert!(matches!(state_of(0..SPARSE_MAX as u64 + 1), DistinctState::Dense(_)));
}

#[test]
fn accurate_at_large_cardinalities() {
    assert_accurate(100_000, 30, false);
    assert_accurate(1_000_000, 10, false);
}

/// The registers alone, at cardinalities where classic HyperLogLog switches
/// from linear counting to the raw estimate (2.5 · m ≈ 41,000).
#[test]
fn dense_estimate_accurate_across_the_small_range() {
    for n in [10, 100, 1000, 5000, 20_000, 41_000, 60_000, 80_000] {
        assert_accurate(n, 30, true);
    }
}

#[test]
fn bincode_round_trip() {
    for n in [5u64, 50_000] {
        let s = state_of(0..n);
        let back: DistinctState = bincode::deserialize(&bincode::serialize(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}

#[test]
fn owned_and_borrowed_keys_agree() {
    let owned = DistinctCount::new(|s: &String| s.clone());
    let borrowed = DistinctCount::by_ref(|s: &String| s.as_str());
    let (mut a, mut b) = (owned.init(), borrowed.init());
    for i in 0..3000 {
        let s = format!("key-{}", i % 2000);
        owned.add(&mut a, &s);
        borrowed.add(&mut b, &s);
    }
    assert_eq!(a, b);
    let est = owned.finish(&a) as f64;
    assert!((est / 2000.0 - 1.0).abs() <= 3.0 * standard_error(), "{est}");
}

proptest! {
    /// Exact against a `HashSet` while small.
    #[test]
    fn counts_like_a_set(keys in proptest::collection::vec(0u32..3000, 0..1000)) {
        let agg = DistinctCount::new(|k: &u32| *k);
        let mut acc = agg.init();
        for k in &keys {
            agg.add(&mut acc, k);
        }
        prop_assert_eq!(agg.finish(&acc), keys.iter().collect::<HashSet<_>>().len() as u64);
    }

    /// Pieces merged in any order give the state of one pass, sparse or
    /// dense (up to 5000 distinct keys: either side of the switch).
    #[test]
    fn merge_equals_one_pass(
        n in 0u64..5000,
        spread in 1u64..4,
        cuts in proptest::collection::vec(0u64..5000, 0..4),
    ) {
        let keys: Vec<u64> = (0..n).map(|i| (i * 7919) % (n * spread / 2 + 1)).collect();
        let whole = state_of(keys.iter());
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| (c as usize).min(keys.len())).collect();
        cuts.extend([0, keys.len()]);
        cuts.sort_unstable();
        let pieces: Vec<DistinctState> = cuts.windows(2).map(|w| state_of(keys[w[0]..w[1]].iter())).collect();
        let mut ltr = DistinctState::default();
        for p in &pieces {
            ltr.merge(p);
        }
        let mut rtl = DistinctState::default();
        for p in pieces.iter().rev() {
            let mut p = p.clone();
            p.merge(&rtl);
            rtl = p;
        }
        prop_assert_eq!(&ltr, &whole);
        prop_assert_eq!(&rtl, &whole);
    }
}
