//! Heavy hitters: the keys that occur most often, with the Misra-Gries
//! summary (1982) and its mergeable form (Agarwal et al., "Mergeable
//! summaries", 2012). With `k` counters over `n` items every count is an
//! under-estimate by at most `n / (k + 1)`, so every key more frequent than
//! that is reported, whatever the split of the input and the order of merges.

use std::hash::Hash;

use rustc_hash::FxHashMap;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Aggregator;

/// The most frequent keys `f(item)` with `k` counters: up to `k` pairs
/// `(key, count)`, most frequent first (ties by key, ascending). A count is at
/// most the true one and at least the true one minus `n / (k + 1)` for a
/// window of `n` items; any key occurring more than `n / (k + 1)` times is in
/// the result. Exact while a window has at most `k` distinct keys.
///
/// ```
/// use weir_operators::aggregate::{Aggregator, FrequentItems};
/// let hot = FrequentItems::new(|page: &u32| *page, 2);
/// let mut acc = hot.init();
/// for page in [1, 7, 1, 3, 1, 7, 1] {
///     hot.add(&mut acc, &page);
/// }
/// // Page 1 occurs 4 times; the count is at most 7 / (2 + 1) = 2 below.
/// let (page, count) = hot.finish(&acc)[0];
/// assert_eq!(page, 1);
/// assert!((2..=4).contains(&count));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct FrequentItems<F> {
    f: F,
    k: usize,
}

impl<F> FrequentItems<F> {
    /// The most frequent keys `f(item)`, tracked with `k` counters (memory
    /// and the error bound `n / (k + 1)` both follow from `k`).
    pub fn new(f: F, k: usize) -> Self {
        FrequentItems { f, k }
    }
}

/// Drops counters until at most `k` remain: subtracts the `(k+1)`-th largest
/// count from all and keeps the positive ones (what Misra-Gries does one
/// decrement at a time).
fn shrink<K: Eq + Hash>(counters: &mut FxHashMap<K, u64>, k: usize) {
    if counters.len() <= k {
        return;
    }
    let mut counts: Vec<u64> = counters.values().copied().collect();
    let (_, &mut cut, _) = counts.select_nth_unstable_by(k, |a, b| b.cmp(a));
    counters.retain(|_, c| {
        *c = c.saturating_sub(cut);
        *c > 0
    });
}

impl<T, K, F> Aggregator<T> for FrequentItems<F>
where
    K: Clone + Eq + Hash + Ord + Serialize + DeserializeOwned + Send + 'static,
    F: Fn(&T) -> K + 'static,
{
    type Acc = FxHashMap<K, u64>;
    type Out = Vec<(K, u64)>;
    fn init(&self) -> Self::Acc {
        FxHashMap::default()
    }
    fn add(&self, acc: &mut Self::Acc, item: &T) {
        let key = (self.f)(item);
        if let Some(c) = acc.get_mut(&key) {
            *c += 1;
        } else if acc.len() < self.k {
            acc.insert(key, 1);
        } else {
            // Full: the new key and every counter lose one.
            acc.retain(|_, c| {
                *c -= 1;
                *c > 0
            });
        }
    }
    fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc) {
        for (key, &c) in other {
            *acc.entry(key.clone()).or_insert(0) += c;
        }
        shrink(acc, self.k);
    }
    fn finish(&self, acc: &Self::Acc) -> Self::Out {
        let mut out: Vec<(K, u64)> = acc.iter().map(|(k, &c)| (k.clone(), c)).collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use proptest::prelude::*;

    fn run<A: Aggregator<u32>>(a: &A, xs: &[u32]) -> A::Acc {
        let mut acc = a.init();
        for x in xs {
            a.add(&mut acc, x);
        }
        acc
    }

    /// Every key within `n / (k + 1)` of its true count, never above it, and
    /// every key above `n / (k + 1)` present.
    fn check(out: &[(u32, u64)], xs: &[u32], k: usize) -> Result<(), String> {
        let mut exact: BTreeMap<u32, u64> = BTreeMap::new();
        for &x in xs {
            *exact.entry(x).or_default() += 1;
        }
        let bound = xs.len() as u64 / (k as u64 + 1);
        if out.len() > k {
            return Err(format!("{} keys for k={k}", out.len()));
        }
        if out.windows(2).any(|w| (w[1].1, std::cmp::Reverse(w[1].0)) > (w[0].1, std::cmp::Reverse(w[0].0))) {
            return Err(format!("not sorted: {out:?}"));
        }
        let reported: BTreeMap<u32, u64> = out.iter().copied().collect();
        for (key, &true_count) in &exact {
            let got = reported.get(key).copied().unwrap_or(0);
            if got > true_count || got + bound < true_count {
                return Err(format!("key {key}: {got}, true {true_count}, bound {bound}"));
            }
        }
        Ok(())
    }

    proptest! {
        /// Skewed keys (squares of uniforms: small keys are frequent), split
        /// and merged in both orders.
        #[test]
        fn within_the_misra_gries_bound(
            xs in proptest::collection::vec(0u32..1000, 0..400),
            k in 1usize..10,
            cut in 0usize..400,
        ) {
            let xs: Vec<u32> = xs.into_iter().map(|x| x * x / 10_000).collect();
            let agg = FrequentItems::new(|x: &u32| *x, k);
            prop_assert_eq!(check(&agg.finish(&run(&agg, &xs)), &xs, k), Ok(()));
            let cut = cut.min(xs.len());
            let (l, r) = (run(&agg, &xs[..cut]), run(&agg, &xs[cut..]));
            let mut lr = l.clone();
            agg.merge(&mut lr, &r);
            let mut rl = r;
            agg.merge(&mut rl, &l);
            prop_assert_eq!(check(&agg.finish(&lr), &xs, k), Ok(()));
            prop_assert_eq!(check(&agg.finish(&rl), &xs, k), Ok(()));
        }

        /// Exact while there are at most `k` distinct keys.
        #[test]
        fn exact_with_few_keys(xs in proptest::collection::vec(0u32..5, 0..200)) {
            let agg = FrequentItems::new(|x: &u32| *x, 5);
            let mut exact: BTreeMap<u32, u64> = BTreeMap::new();
            for &x in &xs {
                *exact.entry(x).or_default() += 1;
            }
            let got: BTreeMap<u32, u64> = agg.finish(&run(&agg, &xs)).into_iter().collect();
            prop_assert_eq!(got, exact);
        }
    }

    #[test]
    fn bincode_round_trip() {
        let agg = FrequentItems::new(|x: &u32| *x, 3);
        let acc = run(&agg, &[1, 2, 2, 3, 3, 3]);
        let back: FxHashMap<u32, u64> = bincode::deserialize(&bincode::serialize(&acc).unwrap()).unwrap();
        assert_eq!(agg.finish(&back), vec![(3, 3), (2, 2), (1, 1)]);
    }
}
