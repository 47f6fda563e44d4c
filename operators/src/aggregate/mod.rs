//! Mergeable, serializable aggregators: the simple ones here ([`Count`], [`Sum`],
//! [`Min`], [`Max`], [`Mean`]), the statistics and sketches in their own modules
//! ([`Variance`], [`StdDev`], [`First`], [`Last`], [`Percentiles`],
//! [`DistinctCount`], [`TopK`], [`FrequentItems`]), and two ways to combine them: tuples
//! (`(Count, Min(f), Max(f))`, results by position) and structs declared with
//! [`aggregates!`](crate::aggregates) (results by name).
//!
//! An aggregator keeps an accumulator per window and key. Accumulators are
//! `Serialize` (they are checkpointed with bincode) and mergeable (partial
//! aggregates are combined across workers, in any order), so `merge` is exact
//! and associative where the math allows. User-defined aggregators implement
//! the same trait.

use serde::Serialize;
use serde::de::DeserializeOwned;
use weir_core::record::EventTime;

mod by_time;
mod distinct;
mod frequent;
mod named;
mod percentiles;
mod top;
mod variance;

pub use by_time::{First, Last};
pub use distinct::{Borrowed, DistinctCount, DistinctState, Owned, StableHasher};
pub use frequent::FrequentItems;
pub use percentiles::{DDSketch, Percentiles};
pub use top::TopK;
pub use variance::{Moments, StdDev, Variance};

/// An aggregation over items of type `T`.
pub trait Aggregator<T>: 'static {
    /// The running state (checkpointed).
    type Acc: Clone + Serialize + DeserializeOwned + Send + 'static;
    /// The result.
    type Out: 'static;
    /// The state of an empty aggregation.
    fn init(&self) -> Self::Acc;
    /// Adds one item.
    fn add(&self, acc: &mut Self::Acc, item: &T);
    /// Adds one item with its event time. The window operator calls this; the
    /// default ignores the time and calls [`add`](Aggregator::add). Aggregators
    /// whose result depends on time ([`First`], [`Last`]) override it, and
    /// combinations (tuples, [`aggregates!`](crate::aggregates) structs) forward it
    /// to each part.
    fn add_at(&self, acc: &mut Self::Acc, item: &T, time: EventTime) {
        let _ = time;
        self.add(acc, item)
    }
    /// Merges another partial state into `acc`.
    fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc);
    /// The result of a (non-empty) aggregation.
    fn finish(&self, acc: &Self::Acc) -> Self::Out;
}

/// Number of items.
#[derive(Clone, Copy, Debug, Default)]
pub struct Count;

impl<T> Aggregator<T> for Count {
    type Acc = u64;
    type Out = u64;
    fn init(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _: &T) {
        *acc += 1;
    }
    fn merge(&self, acc: &mut u64, other: &u64) {
        *acc += other;
    }
    fn finish(&self, acc: &u64) -> u64 {
        *acc
    }
}

/// Sum of `f(item)`.
#[derive(Clone, Copy, Debug)]
pub struct Sum<F>(pub F);

impl<T, F: Fn(&T) -> f64 + 'static> Aggregator<T> for Sum<F> {
    type Acc = f64;
    type Out = f64;
    fn init(&self) -> f64 {
        0.0
    }
    fn add(&self, acc: &mut f64, item: &T) {
        *acc += (self.0)(item);
    }
    fn merge(&self, acc: &mut f64, other: &f64) {
        *acc += other;
    }
    fn finish(&self, acc: &f64) -> f64 {
        *acc
    }
}

/// Smallest `f(item)` (exact: no rounding).
#[derive(Clone, Copy, Debug)]
pub struct Min<F>(pub F);

impl<T, F: Fn(&T) -> f64 + 'static> Aggregator<T> for Min<F> {
    type Acc = f64;
    type Out = f64;
    fn init(&self) -> f64 {
        f64::INFINITY
    }
    fn add(&self, acc: &mut f64, item: &T) {
        let v = (self.0)(item);
        if v < *acc {
            *acc = v;
        }
    }
    fn merge(&self, acc: &mut f64, other: &f64) {
        if *other < *acc {
            *acc = *other;
        }
    }
    fn finish(&self, acc: &f64) -> f64 {
        *acc
    }
}

/// Largest `f(item)` (exact: no rounding).
#[derive(Clone, Copy, Debug)]
pub struct Max<F>(pub F);

impl<T, F: Fn(&T) -> f64 + 'static> Aggregator<T> for Max<F> {
    type Acc = f64;
    type Out = f64;
    fn init(&self) -> f64 {
        f64::NEG_INFINITY
    }
    fn add(&self, acc: &mut f64, item: &T) {
        let v = (self.0)(item);
        if v > *acc {
            *acc = v;
        }
    }
    fn merge(&self, acc: &mut f64, other: &f64) {
        if *other > *acc {
            *acc = *other;
        }
    }
    fn finish(&self, acc: &f64) -> f64 {
        *acc
    }
}

/// Arithmetic mean of `f(item)`: `sum / count`.
#[derive(Clone, Copy, Debug)]
pub struct Mean<F>(pub F);

impl<T, F: Fn(&T) -> f64 + 'static> Aggregator<T> for Mean<F> {
    type Acc = (f64, u64);
    type Out = f64;
    fn init(&self) -> (f64, u64) {
        (0.0, 0)
    }
    fn add(&self, acc: &mut (f64, u64), item: &T) {
        acc.0 += (self.0)(item);
        acc.1 += 1;
    }
    fn merge(&self, acc: &mut (f64, u64), other: &(f64, u64)) {
        acc.0 += other.0;
        acc.1 += other.1;
    }
    fn finish(&self, acc: &(f64, u64)) -> f64 {
        acc.0 / acc.1 as f64
    }
}

macro_rules! tuple_aggregator {
    ($($A:ident $i:tt),+) => {
        impl<T, $($A: Aggregator<T>),+> Aggregator<T> for ($($A,)+) {
            type Acc = ($($A::Acc,)+);
            type Out = ($($A::Out,)+);
            fn init(&self) -> Self::Acc {
                ($(self.$i.init(),)+)
            }
            fn add(&self, acc: &mut Self::Acc, item: &T) {
                $(self.$i.add(&mut acc.$i, item);)+
            }
            fn add_at(&self, acc: &mut Self::Acc, item: &T, time: EventTime) {
                $(self.$i.add_at(&mut acc.$i, item, time);)+
            }
            fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc) {
                $(self.$i.merge(&mut acc.$i, &other.$i);)+
            }
            fn finish(&self, acc: &Self::Acc) -> Self::Out {
                ($(self.$i.finish(&acc.$i),)+)
            }
        }
    };
}

tuple_aggregator!(A 0);
tuple_aggregator!(A 0, B 1);
tuple_aggregator!(A 0, B 1, C 2);
tuple_aggregator!(A 0, B 1, C 2, D 3);
tuple_aggregator!(A 0, B 1, C 2, D 3, E 4);
tuple_aggregator!(A 0, B 1, C 2, D 3, E 4, G 5);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    mod pipeline {
        use std::collections::BTreeMap;
        use std::sync::{Arc, Mutex};
        use std::time::Duration;

        use serde::{Deserialize, Serialize};
        use weir_core::Pipeline;
        use weir_core::record::DeadLetter;

        use crate::aggregate::*;
        use crate::prelude::*;
        use crate::testing::{Collect, Memory, Record, Rng};

        #[derive(Clone, Debug, Serialize, Deserialize)]
        struct Ev {
            k: String,
            v: f64,
        }

        crate::aggregates! {
            struct Stats => StatsOut { count, first, last, p50, users, top2, sd }
        }

        /// `(key, window start)` → `(count, first, last, exact median, distinct, top 2)`.
        type Windows = BTreeMap<(String, EventTime), (u64, f64, f64, f64, u64, Vec<f64>)>;

        /// Every new aggregator in a checkpointed two-worker window pipeline,
        /// against the windows computed directly: the operator hands each
        /// record's event time to `add_at` (First/Last), and the accumulators
        /// go through checkpoints.
        #[test]
        fn in_a_window_pipeline() -> anyhow::Result<()> {
            let mut rng = Rng::new(5);
            // Three partitions in time order (ties across and within them).
            let parts: Vec<Vec<Record>> = (0..3)
                .map(|_| {
                    let mut t = 1_700_000_000_000i64;
                    (0..300)
                        .map(|_| {
                            t += rng.below(3) as i64 * 20;
                            let (k, v) = (["a", "b"][rng.below(2) as usize], rng.below(50) as f64 - 10.0);
                            (Some(t), format!(r#"{{"k":"{k}","v":{v:?}}}"#).into_bytes())
                        })
                        .collect()
                })
                .collect();
            let mut want = Windows::new();
            let mut values: BTreeMap<(String, EventTime), Vec<(EventTime, f64)>> = BTreeMap::new();
            for (time, payload) in parts.iter().flatten() {
                let (Some(t), e) = (*time, serde_json::from_slice::<Ev>(payload)?) else { continue };
                values.entry((e.k, t - t.rem_euclid(1000))).or_default().push((t, e.v));
            }
            for (key, mut vs) in values {
                vs.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
                let mut sorted: Vec<f64> = vs.iter().map(|v| v.1).collect();
                sorted.sort_by(f64::total_cmp);
                let median = sorted[(0.5 * (sorted.len() - 1) as f64) as usize];
                let distinct = sorted.iter().map(|v| v.to_bits()).collect::<std::collections::BTreeSet<_>>().len();
                let top2 = sorted.iter().rev().take(2).copied().collect();
                want.insert(key, (vs.len() as u64, vs[0].1, vs[vs.len() - 1].1, median, distinct as u64, top2));
            }

            let dir = tempfile::tempdir()?;
            let rows = Arc::new(Mutex::new(Vec::new()));
            let dead: Arc<Mutex<Vec<DeadLetter>>> = Arc::default();
            let source = Memory::new(parts, 7);
            let (r, d) = (rows.clone(), dead.clone());
            Pipeline::new("aggregators").workers(2).bounded(true).epoch_records(25, 2).state(dir.path()).run(
                move |p| {
                    p.source(source.clone())?
                        .decode::<Ev>(Json)
                        .source_time(Duration::from_millis(0))?
                        .key_by(|e| e.k.clone())
                        .window(Tumbling::seconds(1))
                        .aggregate(Stats {
                            count: Count,
                            first: First(|e: &Ev| e.v),
                            last: Last(|e: &Ev| e.v),
                            p50: Percentiles::new(|e: &Ev| e.v, &[0.5]),
                            users: DistinctCount::new(|e: &Ev| e.v.to_bits()),
                            top2: TopK::new(|e: &Ev| e.v, 2),
                            sd: StdDev(|e: &Ev| e.v),
                        })?
                        .map(|w| (w.key, w.start, w.value))
                        .sink(Collect(r.clone()))?;
                    p.dead_letters().sink(Collect(d.clone()))
                },
            )?;
            let dead = dead.lock().expect("dead letters");
            anyhow::ensure!(dead.is_empty(), "dead letters: {:?}", &dead[..dead.len().min(3)]);
            let mut got = Windows::new();
            for (k, start, v) in rows.lock().expect("rows").drain(..) {
                let StatsOut { count, first, last, p50, users, top2, sd } = v;
                anyhow::ensure!(count < 2 || sd.is_some(), "stddev of {count} values");
                got.insert((k, start), (count, first, last, p50[0], users, top2));
            }
            anyhow::ensure!(got.len() == want.len(), "{} windows, want {}", got.len(), want.len());
            for (key, w) in &want {
                let g = got.get(key).ok_or_else(|| anyhow::anyhow!("window {key:?} missing"))?;
                let median_ok = (g.3 - w.3).abs() <= 0.01 * w.3.abs();
                anyhow::ensure!(
                    (g.0, g.1, g.2, g.4, &g.5) == (w.0, w.1, w.2, w.4, &w.5) && median_ok,
                    "window {key:?}: got {g:?}, want {w:?}"
                );
            }
            Ok(())
        }
    }

    fn run<A: Aggregator<f64>>(a: &A, items: &[f64]) -> A::Acc {
        let mut acc = a.init();
        for x in items {
            a.add(&mut acc, x);
        }
        acc
    }

    proptest! {
        /// Splitting the input anywhere and merging the halves gives the same
        /// result as one pass, and matches a plain reference.
        #[test]
        fn merge_equals_single_pass(items in proptest::collection::vec(-1e6f64..1e6, 1..200), cut in 0usize..200) {
            let agg = (Count, Min(|x: &f64| *x), Max(|x: &f64| *x), Mean(|x: &f64| *x), Sum(|x: &f64| *x));
            let cut = cut.min(items.len());
            let whole = agg.finish(&run(&agg, &items));
            let mut left = run(&agg, &items[..cut]);
            agg.merge(&mut left, &run(&agg, &items[cut..]));
            let merged = agg.finish(&left);
            prop_assert_eq!(whole.0, items.len() as u64);
            prop_assert_eq!(whole.1, items.iter().cloned().fold(f64::INFINITY, f64::min));
            prop_assert_eq!(whole.2, items.iter().cloned().fold(f64::NEG_INFINITY, f64::max));
            let sum: f64 = items.iter().sum();
            prop_assert!((whole.3 - sum / items.len() as f64).abs() <= 1e-6);
            prop_assert_eq!(merged.0, whole.0);
            prop_assert_eq!(merged.1, whole.1);
            prop_assert_eq!(merged.2, whole.2);
            prop_assert!((merged.3 - whole.3).abs() <= 1e-6 * whole.3.abs().max(1.0));
        }
    }
}
