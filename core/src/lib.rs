//! weir-core: epochs and event time, records, partitions and their assignment
//! to workers, keyed state, the checkpoint store and protocol, recovery, and
//! the runtime that runs a pipeline on timely dataflow.
//!
//! core knows no connector and no operator: connectors implement
//! [`source::Source`] and [`sink::Sink`], operators build on [`flow::Flow`].
//!
//! Inside core, dependencies point one way (see ARCHITECTURE.md): the ground
//! modules (records, time, storage, checkpoints, the source and sink traits),
//! then [`config`], [`ctx`] (the build context), [`epochs`] and [`stream`],
//! then the stateful kit ([`state`]), then the build API ([`flow`]), and the
//! [`runtime`] on top.

pub mod checkpoint;
pub mod config;
pub mod ctx;
pub mod epochs;
pub mod error;
pub mod flow;
#[doc(hidden)]
pub mod fuzzing;
pub mod hint;
pub mod keygroup;
pub mod partition;
pub mod record;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod state;
pub mod storage;
pub mod stream;
pub mod time;

pub use config::PipelineConfig;
pub use error::{Error, Result};
pub use flow::{Dataflow, Flow, Raw};
pub use runtime::{Pipeline, RunSummary};
