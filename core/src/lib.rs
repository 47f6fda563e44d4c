//! weir-core: epochs and event time, records, partitions and their assignment
//! to workers, keyed state, the checkpoint store and protocol, recovery, and
//! the runtime that runs a pipeline on timely dataflow.
//!
//! core knows no connector and no operator: connectors implement
//! [`source::Source`] and [`sink::Sink`], operators build on [`flow::Flow`].

pub mod checkpoint;
pub mod error;
pub mod flow;
#[doc(hidden)]
pub mod fuzzing;
pub mod keygroup;
pub mod partition;
pub mod record;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod state;
pub mod storage;
pub mod time;

pub use error::{Error, Result};
pub use flow::{Dataflow, Flow, Raw};
pub use runtime::{Pipeline, PipelineConfig, RunSummary};
