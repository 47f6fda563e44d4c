//! [`aggregates!`](crate::aggregates): a struct of aggregators whose results
//! are read by name (`w.value.mean`) instead of by tuple position
//! (`w.value.3`), declared with `macro_rules!` (no proc-macro crate).

/// Declares a struct of aggregators and the struct of their results, with the
/// same field names.
///
/// `aggregates! { pub struct Stats => StatsOut { count, min, max } }` declares
///
/// - `pub struct Stats<count, min, max> { pub count: count, pub min: min, pub max: max }`,
///   an [`Aggregator<T>`](crate::aggregate::Aggregator) whenever every field is
///   one (each field has a type parameter of its own, so closures' types are
///   inferred where the struct is built);
/// - `pub struct StatsOut<count, min, max> { pub count: count, ... }`, its
///   `Out`, holding each field's result (`Clone`, `Debug`, `PartialEq` and
///   `Serialize` when the results are).
///
/// Attributes before `struct` (doc comments, derives) go on the aggregator
/// struct. Field names are free; the type parameters carry the same names,
/// so the macro silences `non_camel_case_types` on both structs.
///
/// ```
/// use weir_operators::aggregates;
/// use weir_operators::prelude::*;
///
/// struct Reading { temp: f64 }
///
/// aggregates! {
///     /// Per-window temperature statistics.
///     pub struct TempStats => TempStatsOut { count, min, mean, p99 }
/// }
///
/// let stats = TempStats {
///     count: Count,
///     min: Min(|r: &Reading| r.temp),
///     mean: Mean(|r: &Reading| r.temp),
///     p99: Percentiles::new(|r: &Reading| r.temp, &[0.99]),
/// };
/// let mut acc = stats.init();
/// for temp in [21.5, 19.0, 23.0] {
///     stats.add(&mut acc, &Reading { temp });
/// }
/// let out = stats.finish(&acc);
/// assert_eq!((out.count, out.min, out.mean), (3, 19.0, 21.166666666666668));
/// // The value of rank floor(0.99 · (3 - 1)) = 1, 21.5, within 1 %:
/// assert!((out.p99[0] - 21.5).abs() <= 0.215);
/// ```
///
/// In a pipeline: `.aggregate(TempStats { .. })?.map(|w| w.value.mean)`.
#[macro_export]
macro_rules! aggregates {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident => $out:ident { $($field:ident),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, Default)]
        $vis struct $name<$($field),+> {
            $(
                #[doc = concat!("The `", stringify!($field), "` aggregator.")]
                pub $field: $field,
            )+
        }

        #[doc = concat!("The results of [`", stringify!($name), "`], by field name.")]
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, Default, PartialEq)]
        $vis struct $out<$($field),+> {
            $(
                #[doc = concat!("The result of the `", stringify!($field), "` aggregator.")]
                pub $field: $field,
            )+
        }

        // The accumulator is the aggregator struct over the fields'
        // accumulators, (de)serialized as a tuple of them: the same bytes as
        // the tuple aggregator's state.
        #[allow(non_camel_case_types)]
        impl<$($field: $crate::__serde::Serialize),+> $crate::__serde::Serialize for $name<$($field),+> {
            fn serialize<S: $crate::__serde::Serializer>(&self, s: S) -> ::core::result::Result<S::Ok, S::Error> {
                $crate::__serde::Serialize::serialize(&($(&self.$field,)+), s)
            }
        }

        #[allow(non_camel_case_types)]
        impl<'de, $($field: $crate::__serde::Deserialize<'de>),+> $crate::__serde::Deserialize<'de> for $name<$($field),+> {
            fn deserialize<D: $crate::__serde::Deserializer<'de>>(d: D) -> ::core::result::Result<Self, D::Error> {
                let ($($field,)+) = <($($field,)+) as $crate::__serde::Deserialize<'de>>::deserialize(d)?;
                ::core::result::Result::Ok($name { $($field),+ })
            }
        }

        #[allow(non_camel_case_types)]
        impl<$($field: $crate::__serde::Serialize),+> $crate::__serde::Serialize for $out<$($field),+> {
            fn serialize<S: $crate::__serde::Serializer>(&self, s: S) -> ::core::result::Result<S::Ok, S::Error> {
                use $crate::__serde::ser::SerializeStruct as _;
                let fields = [$(stringify!($field)),+].len();
                let mut st = s.serialize_struct(stringify!($out), fields)?;
                $(st.serialize_field(stringify!($field), &self.$field)?;)+
                st.end()
            }
        }

        #[allow(non_camel_case_types)]
        impl<__T, $($field: $crate::aggregate::Aggregator<__T>),+> $crate::aggregate::Aggregator<__T> for $name<$($field),+> {
            type Acc = $name<$(<$field as $crate::aggregate::Aggregator<__T>>::Acc),+>;
            type Out = $out<$(<$field as $crate::aggregate::Aggregator<__T>>::Out),+>;
            fn init(&self) -> Self::Acc {
                $name { $($field: self.$field.init()),+ }
            }
            #[inline]
            fn add(&self, acc: &mut Self::Acc, item: &__T) {
                $(self.$field.add(&mut acc.$field, item);)+
            }
            #[inline]
            fn add_at(&self, acc: &mut Self::Acc, item: &__T, time: $crate::__EventTime) {
                $(self.$field.add_at(&mut acc.$field, item, time);)+
            }
            fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc) {
                $(self.$field.merge(&mut acc.$field, &other.$field);)+
            }
            fn finish(&self, acc: &Self::Acc) -> Self::Out {
                $out { $($field: self.$field.finish(&acc.$field)),+ }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use crate::aggregate::{Aggregator, Count, First, Max, Mean, Min, Variance};
    use proptest::prelude::*;

    aggregates! {
        /// Test statistics.
        pub(crate) struct Stats => StatsOut { count, min, max, mean, first, var }
    }

    #[allow(clippy::type_complexity)]
    fn stats() -> Stats<
        Count,
        Min<impl Fn(&f64) -> f64>,
        Max<impl Fn(&f64) -> f64>,
        Mean<impl Fn(&f64) -> f64>,
        First<impl Fn(&f64) -> f64>,
        Variance<impl Fn(&f64) -> f64>,
    > {
        Stats {
            count: Count,
            min: Min(|x: &f64| *x),
            max: Max(|x: &f64| *x),
            mean: Mean(|x: &f64| *x),
            first: First(|x: &f64| *x),
            var: Variance(|x: &f64| *x),
        }
    }

    proptest! {
        /// Field by field the same as the tuple of the same aggregators, in
        /// results, merges and checkpoint bytes.
        #[test]
        fn same_as_the_tuple(xs in proptest::collection::vec((-1e3f64..1e3, 0i64..50), 1..100), cut in 0usize..100) {
            let named = stats();
            let s = stats();
            let tuple = (s.count, s.min, s.max, s.mean, s.first, s.var);
            let cut = cut.min(xs.len());
            let (mut n1, mut n2, mut t1, mut t2) = (named.init(), named.init(), tuple.init(), tuple.init());
            for (i, (x, t)) in xs.iter().enumerate() {
                let (n, tu) = if i < cut { (&mut n1, &mut t1) } else { (&mut n2, &mut t2) };
                named.add_at(n, x, *t);
                tuple.add_at(tu, x, *t);
            }
            prop_assert_eq!(bincode::serialize(&n1).unwrap(), bincode::serialize(&t1).unwrap());
            let back: <Stats<Count, Count, Count, Count, Count, Count> as Aggregator<f64>>::Acc =
                bincode::deserialize(&bincode::serialize(&(1u64, 2u64, 3u64, 4u64, 5u64, 6u64)).unwrap()).unwrap();
            prop_assert_eq!((back.count, back.var), (1, 6));
            named.merge(&mut n1, &n2);
            tuple.merge(&mut t1, &t2);
            let (o, t) = (named.finish(&n1), tuple.finish(&t1));
            prop_assert_eq!(o, StatsOut { count: t.0, min: t.1, max: t.2, mean: t.3, first: t.4, var: t.5 });
            prop_assert_eq!(o.count, xs.len() as u64);
        }
    }

    #[test]
    fn output_serializes_with_field_names() {
        let out = StatsOut { count: 2u64, min: 1.0, max: 3.0, mean: 2.0, first: 1.0, var: Some(2.0) };
        let json = serde_json::to_string(&out).unwrap();
        assert_eq!(json, r#"{"count":2,"min":1.0,"max":3.0,"mean":2.0,"first":1.0,"var":2.0}"#);
    }
}
