//! weir-operators: the stages of a Weir pipeline, as extension traits on
//! [`weir_core::Raw`] and [`weir_core::Flow`] so user code reads top to bottom:
//! `source → decode → filter → event_time → key_by → window → aggregate → sink`.
//!
//! - [`decode`]: raw records to a serde type; malformed input becomes dead letters.
//! - [`transform`]: `filter` (counted, not dead-lettered), `map`, `try_map`.
//! - [`event_time`]: assigns event times (from a field, or the time the source
//!   gave: `source_time`) and tracks per-partition watermarks.
//! - [`window`]: keyed event-time windows (tumbling, sliding, session) with
//!   mergeable [`aggregate::Aggregator`]s, built on core's stateful-operator kit.
//! - [`detect`]: streaming anomaly detectors on keyed flows (`.detect(ZScore::new(...))`),
//!   one score in `[0, 1]` per reading and alerts, built on the same kit.
//! - [`table`]: reference data that changes, as differential-dataflow tables that
//!   flows join against as of their event time (`.join_table(&table, key)`), and
//!   per-key counts maintained as a collection (`.count_by(key)`).
//! - [`aggregate`]: the aggregators (count, sum, min, max, mean, variance,
//!   first/last by event time, percentiles, distinct count, top-k, heavy hitters), combined in
//!   tuples or in named structs declared with [`aggregates!`].

pub mod aggregate;
pub mod decode;
pub mod detect;
pub mod event_time;
#[doc(hidden)]
pub mod fuzzing;
#[cfg(test)]
mod kit_tests;
pub mod table;
#[cfg(test)]
mod testing;
pub mod transform;
pub mod window;

// For `aggregates!`'s expansion in user crates.
#[doc(hidden)]
pub use serde as __serde;
#[doc(hidden)]
pub use weir_core::record::EventTime as __EventTime;

/// The traits that add Weir's operators to flows.
pub mod prelude {
    pub use crate::aggregate::{
        Aggregator, Count, DDSketch, DistinctCount, First, FrequentItems, Last, Max, Mean, Min, Percentiles, StdDev,
        Sum, TopK, Variance,
    };
    pub use crate::aggregates;
    pub use crate::decode::{Decode, Format, Json, MqttPayload};
    pub use crate::detect::{
        Alert, Alerts, Carry, Detector, Ensemble, Ewma, FlatLine, Knn, Mad, Mahalanobis, Panel, RateOfChange, Scored,
        Silence, Threshold, ZScore,
    };
    pub use crate::event_time::EventTimeExt;
    pub use crate::table::{CountBy, CountChange, JoinTable, Joined, Op, Table, TableUpdate};
    pub use crate::transform::Transform;
    pub use crate::window::{Combine, CountWindow, KeyBy, Keyed, Session, Sliding, Tumbling, WindowResult, WindowSpec};
}
