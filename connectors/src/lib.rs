//! weir-connectors: sources and sinks of Weir pipelines.
//!
//! - [`log`]: the embedded partitioned log (the default source, no server).
//! - [`file`]: a JSON-lines file split into byte ranges read in parallel.
//! - [`generate`]: a source that makes its records (throughput measurements, tests).
//! - [`parquet`]: the Parquet sink; [`dead_letter`]: the dead-letter sink.
//!   Both stage files and publish them after the checkpoint commits ([`staging`]).
//! - [`kafka`]: Kafka topics as consumer-group sources and as sinks (rdkafka).
//! - [`outbox`]: sinks that deliver each checkpoint's rows to a server after it commits.
//! - [`mqtt`]: the MQTT gateway, MQTT 5 subscriptions appended durably to a log topic.
//! - [`json_key`]: record keys from a top-level field of a JSON object.
//! - [`runtime`]: the process's one tokio runtime for connectors' async work.
//! - [`record_limit`]: `max_record_bytes`, the longest record a source reads whole.

pub mod columns;
pub mod dead_letter;
pub mod file;
#[doc(hidden)]
pub mod fuzzing;
pub mod generate;
pub mod json_key;
pub mod kafka;
pub mod log;
pub mod mqtt;
pub mod outbox;
pub mod parquet;
pub mod record_limit;
pub mod runtime;
pub mod staging;

pub use dead_letter::DeadLetters;
pub use file::LinesFile;
pub use parquet::Parquet;
