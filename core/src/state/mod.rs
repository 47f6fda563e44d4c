//! The kit for stateful operators.
//!
//! - [`keyed`]: [`KeyedState`], a step's per-key values, event-time and
//!   processing-time timers on one worker, restored by key group and checkpointed one part
//!   per worker (only changed key groups where that is cheaper).
//! - [`operator`]: [`keyed_step`], the generic keyed operator (exchange by
//!   key group, epoch order, frontier following, snapshots) that runs a
//!   [`KeyedLogic`]: the per-record and per-timer code of an operator.
//! - [`watermarks`]: [`WatermarkTable`], the one place a keyed stage's
//!   watermark is computed from its input partitions'.

pub mod dead_letter_output;
pub mod keyed;
pub mod operator;
pub mod watermarks;

pub use dead_letter_output::DeadLetterOutput;
pub use keyed::{KeyView, KeyedState, ProcessingTime, processing_now};
pub use operator::{
    Emit, Input, KeyCx, KeyedLogic, PREFETCH_AHEAD, StepInput, StepLogic, data_then_watermarks, frontier_min,
    keyed_step, local_step, restored_watermarks, step,
};
pub use watermarks::{WatermarkSnapshot, WatermarkTable};
