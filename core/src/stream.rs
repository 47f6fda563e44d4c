//! What travels on a Weir dataflow's streams beside the records: the
//! per-partition watermark updates that `event_time` broadcasts, the source
//! partition events behind them, and the output type every operator builds
//! (batches of `Vec`s at epochs). The build API, the stateful kit and the
//! operators all use these; they depend only on records and epochs.

use serde::{Deserialize, Serialize};

use crate::record::{EventTime, PartitionId};
use crate::time::Epoch;

/// An operator output of `Vec<D>` batches at epochs (what every Weir operator builds).
pub type VecOutput<D> =
    timely::dataflow::operators::generic::OutputBuilder<Epoch, timely::container::CapacityContainerBuilder<Vec<D>>>;

/// A source partition event, sent at the epoch it happened in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartitionEvent {
    /// The partition has no more input (bounded runs): it stops holding the watermark back.
    Finished(PartitionId),
    /// The partition had no data for the pipeline's `idle_timeout` (unbounded
    /// runs): it stops holding the watermark back until it has data again.
    Idle(PartitionId),
    /// An idle partition has data again (sent before that data, in the same epoch).
    Active(PartitionId),
}

/// A partition's watermark, broadcast to every worker once per epoch it changed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkUpdate {
    /// The source partition.
    pub partition: PartitionId,
    /// No event time at or below this is expected from the partition any more
    /// (`EventTime::MAX` once it finished).
    pub watermark: EventTime,
    /// The partition is idle: the window watermark is the minimum over the
    /// partitions that are not (records it sends later may then be late).
    pub idle: bool,
}
