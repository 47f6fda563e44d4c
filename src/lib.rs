//! # Weir
//!
//! Stream analytics over partitioned feeds, on timely dataflow, with
//! checkpoints that commit consumed offsets atomically with operator state and
//! sink output: a crash loses nothing and duplicates nothing.
//!
//! This facade re-exports the three crates and offers [`prelude`]:
//!
//! ```no_run
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//! use weir::prelude::*;
//!
//! #[derive(Serialize, Deserialize)]
//! struct Reading { device: String, ts: i64, temp: f64 }
//!
//! #[derive(Serialize, Deserialize)]
//! struct Row { device: String, window_start: i64, count: i64, min: f64, max: f64, mean: f64 }
//!
//! // A struct of aggregators whose results are read by name: `w.value.mean`.
//! aggregates! { struct TempStats => TempStatsOut { count, min, max, mean } }
//!
//! let summary = Pipeline::new("sensor-aggregation")
//!     .workers(2)
//!     .state("weir-data/state")
//!     .checkpoint_every(Duration::from_secs(1))
//!     .run(|p| {
//!         p.source(LinesFile::open("readings.jsonl")?)?
//!             .decode::<Reading>(Json) // malformed input -> dead letters
//!             .filter(|r| (-50.0..=150.0).contains(&r.temp))
//!             .event_time(|r| r.ts, Duration::from_secs(2))?
//!             .key_by(|r| r.device.clone())
//!             .window(Tumbling::minutes(1))
//!             .aggregate(TempStats {
//!                 count: Count,
//!                 min: Min(|r: &Reading| r.temp),
//!                 max: Max(|r: &Reading| r.temp),
//!                 mean: Mean(|r: &Reading| r.temp),
//!             })?
//!             .map(|w| Row {
//!                 device: w.key, window_start: w.start, count: w.value.count as i64,
//!                 min: w.value.min, max: w.value.max, mean: w.value.mean,
//!             })
//!             .sink(Parquet::dir("out"))?;
//!         p.dead_letters().sink(DeadLetters::dir("dead-letters"))
//!     })?;
//! println!("{} events in", summary.counter("records_in"));
//! # Ok::<(), weir::Error>(())
//! ```

pub use weir_connectors as connectors;
pub use weir_core as core;
pub use weir_operators as operators;

pub use weir_core::{Error, Result};

/// Sends the framework's logs (`tracing`) to stderr, filtered by `RUST_LOG`
/// (default `warn`): what the `weir` binary and the examples call first. A
/// second call, or one after another subscriber was set, does nothing.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// The README's examples, compiled as doc-tests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// ARCHITECTURE.md's examples (the operator how-to), compiled and run as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../ARCHITECTURE.md")]
pub struct ArchitectureDoctests;

/// Everything a pipeline author needs.
pub mod prelude {
    pub use weir_connectors::kafka::{KafkaConfig, KafkaSource, KafkaTopic};
    pub use weir_connectors::log::LogSource;
    pub use weir_connectors::{DeadLetters, LinesFile, Parquet};
    pub use weir_core::partition::Assignor;
    pub use weir_core::record::{DeadLetter, EventTime};
    pub use weir_core::{Dataflow, Flow, Pipeline, Raw, RunSummary};
    pub use weir_operators::prelude::*;
}
