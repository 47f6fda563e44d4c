//! The value at the earliest ([`First`]) or latest ([`Last`]) event time in a
//! window. They use [`Aggregator::add_at`], which the window operator calls
//! with each record's event time.
//!
//! Workers merge partial states in any order, so a tie in time must not be
//! decided by arrival: both order items by `(time, value)`, the value compared
//! with [`f64::total_cmp`]. [`First`] keeps the smallest pair (at the earliest
//! time, the smallest value) and [`Last`] the largest (at the latest time, the
//! largest value).

use std::cmp::Ordering;

use weir_core::record::{EventTime, Meta};

use super::Aggregator;

/// `(time, value)` in the order that decides [`First`] and [`Last`].
fn order(a: &(EventTime, f64), b: &(EventTime, f64)) -> Ordering {
    a.0.cmp(&b.0).then(a.1.total_cmp(&b.1))
}

/// Keeps `candidate` in `acc` if it is `wanted` relative to the current one.
#[inline]
fn keep(acc: &mut Option<(EventTime, f64)>, candidate: (EventTime, f64), wanted: Ordering) {
    match acc {
        Some(current) if order(&candidate, current) != wanted => {}
        _ => *acc = Some(candidate),
    }
}

/// The value of `f(item)` with the smallest event time; among items of that
/// time, the smallest value by [`f64::total_cmp`]. `NaN` for an empty window.
///
/// Items added with [`Aggregator::add`] (no time) count as at
/// [`Meta::NO_TIME`], the earliest time there is.
///
/// ```
/// use weir_operators::aggregate::{Aggregator, First, Last};
/// let (first, last) = (First(|x: &f64| *x), Last(|x: &f64| *x));
/// let (mut a, mut b) = (first.init(), last.init());
/// for (x, t) in [(3.0, 20), (1.0, 10), (2.0, 30)] {
///     first.add_at(&mut a, &x, t);
///     last.add_at(&mut b, &x, t);
/// }
/// assert_eq!((first.finish(&a), last.finish(&b)), (1.0, 2.0));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct First<F>(pub F);

impl<T, F: Fn(&T) -> f64 + 'static> Aggregator<T> for First<F> {
    type Acc = Option<(EventTime, f64)>;
    type Out = f64;
    fn init(&self) -> Self::Acc {
        None
    }
    fn add(&self, acc: &mut Self::Acc, item: &T) {
        self.add_at(acc, item, Meta::NO_TIME);
    }
    #[inline]
    fn add_at(&self, acc: &mut Self::Acc, item: &T, time: EventTime) {
        keep(acc, (time, (self.0)(item)), Ordering::Less);
    }
    fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc) {
        if let Some(o) = *other {
            keep(acc, o, Ordering::Less);
        }
    }
    fn finish(&self, acc: &Self::Acc) -> f64 {
        acc.map_or(f64::NAN, |(_, v)| v)
    }
}

/// The value of `f(item)` with the largest event time; among items of that
/// time, the largest value by [`f64::total_cmp`]. `NaN` for an empty window.
///
/// Items added with [`Aggregator::add`] (no time) count as at
/// [`Meta::NO_TIME`], so any timed item is later.
#[derive(Clone, Copy, Debug)]
pub struct Last<F>(pub F);

impl<T, F: Fn(&T) -> f64 + 'static> Aggregator<T> for Last<F> {
    type Acc = Option<(EventTime, f64)>;
    type Out = f64;
    fn init(&self) -> Self::Acc {
        None
    }
    fn add(&self, acc: &mut Self::Acc, item: &T) {
        self.add_at(acc, item, Meta::NO_TIME);
    }
    #[inline]
    fn add_at(&self, acc: &mut Self::Acc, item: &T, time: EventTime) {
        keep(acc, (time, (self.0)(item)), Ordering::Greater);
    }
    fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc) {
        if let Some(o) = *other {
            keep(acc, o, Ordering::Greater);
        }
    }
    fn finish(&self, acc: &Self::Acc) -> f64 {
        acc.map_or(f64::NAN, |(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run<A: Aggregator<f64>>(a: &A, items: &[(f64, EventTime)]) -> A::Acc {
        let mut acc = a.init();
        for (x, t) in items {
            a.add_at(&mut acc, x, *t);
        }
        acc
    }

    /// Reference: sort by (time, value) and take the ends.
    fn reference(items: &[(f64, EventTime)]) -> (f64, f64) {
        let mut sorted: Vec<(EventTime, f64)> = items.iter().map(|&(x, t)| (t, x)).collect();
        sorted.sort_by(order);
        (sorted[0].1, sorted[sorted.len() - 1].1)
    }

    #[test]
    fn ties_in_time_go_to_the_smallest_or_largest_value() {
        let items = [(5.0, 7), (-1.0, 7), (9.0, 7), (0.0, 8), (4.0, 8)];
        assert_eq!(First(|x: &f64| *x).finish(&run(&First(|x: &f64| *x), &items)), -1.0);
        assert_eq!(Last(|x: &f64| *x).finish(&run(&Last(|x: &f64| *x), &items)), 4.0);
    }

    #[test]
    fn empty_is_nan_and_untimed_items_are_earliest() {
        let first = First(|x: &f64| *x);
        let last = Last(|x: &f64| *x);
        assert!(first.finish(&first.init()).is_nan());
        let mut acc = last.init();
        last.add_at(&mut acc, &1.0, -5);
        last.add(&mut acc, &2.0);
        assert_eq!(last.finish(&acc), 1.0);
    }

    proptest! {
        /// Any split, merged in either order, gives the reference's answer;
        /// times come from a small range so ties are common.
        #[test]
        fn merge_in_any_order_matches_reference(
            items in proptest::collection::vec((-100i32..100, -5i64..5), 1..100),
            cut in 0usize..100,
        ) {
            let items: Vec<(f64, EventTime)> = items.into_iter().map(|(x, t)| (x as f64 / 4.0, t)).collect();
            let cut = cut.min(items.len());
            let (want_first, want_last) = reference(&items);
            let (first, last) = (First(|x: &f64| *x), Last(|x: &f64| *x));
            let agg = (first, last);
            let whole = agg.finish(&run(&agg, &items));
            let (l, r) = (run(&agg, &items[..cut]), run(&agg, &items[cut..]));
            let mut lr = l;
            agg.merge(&mut lr, &r);
            let mut rl = r;
            agg.merge(&mut rl, &l);
            prop_assert_eq!(whole, (want_first, want_last));
            prop_assert_eq!(agg.finish(&lr), (want_first, want_last));
            prop_assert_eq!(agg.finish(&rl), (want_first, want_last));
        }
    }
}
