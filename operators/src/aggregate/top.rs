//! The `k` largest values of `f(item)`, exactly: each partial state keeps its
//! own `k` largest, and merging two keeps the `k` largest of both, so the
//! result is the same whatever the split and the order of merges.

use std::cmp::Ordering;

use super::Aggregator;

/// The `k` largest values of `f(item)`, largest first (fewer if the window
/// has fewer items). Values are ordered by [`f64::total_cmp`]; `NaN`s are
/// ignored. Costs `O(k)` memory per window and key.
///
/// ```
/// use weir_operators::aggregate::{Aggregator, TopK};
/// let top = TopK::new(|x: &f64| *x, 3);
/// let mut acc = top.init();
/// for x in [5.0, 1.0, 9.0, 7.0, 3.0] {
///     top.add(&mut acc, &x);
/// }
/// assert_eq!(top.finish(&acc), vec![9.0, 7.0, 5.0]);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct TopK<F> {
    f: F,
    k: usize,
}

impl<F> TopK<F> {
    /// The `k` largest values of `f(item)`.
    pub fn new(f: F, k: usize) -> Self {
        TopK { f, k }
    }
}

/// Descending, by `total_cmp`.
fn descending(a: &f64, b: &f64) -> Ordering {
    b.total_cmp(a)
}

impl<T, F: Fn(&T) -> f64 + 'static> Aggregator<T> for TopK<F> {
    /// The values kept, largest first.
    type Acc = Vec<f64>;
    type Out = Vec<f64>;
    fn init(&self) -> Vec<f64> {
        Vec::new()
    }
    #[inline]
    fn add(&self, acc: &mut Vec<f64>, item: &T) {
        let v = (self.f)(item);
        if v.is_nan() || self.k == 0 {
            return;
        }
        if acc.len() == self.k {
            // Full: only a value above the smallest kept one gets in.
            match acc.last() {
                Some(last) if v.total_cmp(last) == Ordering::Greater => {
                    acc.pop();
                }
                _ => return,
            }
        }
        let at = acc.partition_point(|x| descending(x, &v) != Ordering::Greater);
        acc.insert(at, v);
    }
    fn merge(&self, acc: &mut Vec<f64>, other: &Vec<f64>) {
        let mut merged = Vec::with_capacity(self.k.min(acc.len() + other.len()));
        let (mut a, mut b) = (acc.iter().peekable(), other.iter().peekable());
        while merged.len() < self.k {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if descending(x, y) != Ordering::Greater => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => None,
            };
            match next {
                Some(&v) => merged.push(v),
                None => break,
            }
        }
        *acc = merged;
    }
    fn finish(&self, acc: &Vec<f64>) -> Vec<f64> {
        acc.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run<A: Aggregator<f64>>(a: &A, xs: &[f64]) -> A::Acc {
        let mut acc = a.init();
        for x in xs {
            a.add(&mut acc, x);
        }
        acc
    }

    proptest! {
        /// Against sorting everything, over any split merged either way;
        /// small value range so duplicates are common.
        #[test]
        fn k_largest_like_a_full_sort(
            xs in proptest::collection::vec(prop_oneof![(-20i32..20).prop_map(|x| x as f64), Just(f64::NAN), Just(-0.0)], 0..200),
            k in 0usize..12,
            cut in 0usize..200,
        ) {
            let top = TopK::new(|x: &f64| *x, k);
            let mut want: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
            want.sort_by(descending);
            want.truncate(k);
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&top.finish(&run(&top, &xs))), bits(&want));
            let cut = cut.min(xs.len());
            let (l, r) = (run(&top, &xs[..cut]), run(&top, &xs[cut..]));
            let mut lr = l.clone();
            top.merge(&mut lr, &r);
            let mut rl = r;
            top.merge(&mut rl, &l);
            prop_assert_eq!(bits(&top.finish(&lr)), bits(&want));
            prop_assert_eq!(bits(&top.finish(&rl)), bits(&want));
        }
    }
}
