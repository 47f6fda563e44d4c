//! The source interface: a source is a stable list of partitions, each read
//! sequentially from an offset by a [`PartitionReader`].
//!
//! The runtime's source operator (see [`crate::runtime`]) owns the group
//! logic: which worker reads which partition (an [`crate::partition::Assignor`]),
//! epochs, the offsets that go into every checkpoint, and the bounded-run end.
//! A connector only says what partitions exist and how to read one.

use crate::error::Result;
use crate::record::{Chunk, Offset, PartitionId};

/// One partition of a source, as the source describes it when the pipeline starts.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionSpec {
    /// Partition index, `0..n`, stable for the life of the source.
    pub id: PartitionId,
    /// Offset a fresh consumer starts from (the split start for files, 0 for logs).
    pub start: Offset,
    /// End offset seen at start (exclusive): where a bounded run stops.
    pub end: Offset,
}

/// What a read returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// Records were appended to the chunk (possibly more follow).
    Data,
    /// Nothing new right now; try again later.
    Idle,
    /// The partition has no more records up to its bound: it is finished.
    End,
}

/// In what order a source worker reads the partitions it owns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadOrder {
    /// Round-robin over all owned partitions (log partitions fill concurrently).
    #[default]
    Interleaved,
    /// One small chunk of every owned partition first (so each reports the
    /// event time it starts from), then each partition to its end in order
    /// (splits of one time-ordered file).
    Sequential,
}

/// Reads one partition sequentially.
pub trait PartitionReader: Send {
    /// Appends up to about `max_bytes` of whole records to `out` (whose
    /// `partition`, `first`, `kind` and `sep` the reader sets when `out` is
    /// empty) and sets `out.next` to the offset after the last record read.
    fn read(&mut self, max_bytes: usize, out: &mut Chunk) -> Result<ReadStatus>;
}

/// A partitioned input: a topic of the embedded log, a file split into byte ranges, ...
pub trait Source: Send + Sync + 'static {
    /// Name recorded in dead letters (`source`) and checkpoints: topic name or input path.
    fn name(&self) -> &str;

    /// The partitions, with the end offsets they have now.
    fn partitions(&self) -> Result<Vec<PartitionSpec>>;

    /// Opens a reader for `partition` at `from`, stopping at `until` when given (bounded runs).
    fn open(&self, partition: PartitionId, from: Offset, until: Option<Offset>) -> Result<Box<dyn PartitionReader>>;

    /// A description of the input's identity (path, size, modification time, split
    /// boundaries; or topic and partition count). A bounded run records it in its first
    /// checkpoint and refuses to resume on a different input.
    fn fingerprint(&self) -> Result<serde_json::Value>;

    /// The original bytes of the record at `offset` of `partition` (a file line without its `\n`,
    /// a log record's payload), for dead letters of later stages; `None` when the source cannot re-read.
    fn record_at(&self, partition: PartitionId, offset: Offset) -> Result<Option<Vec<u8>>> {
        let _ = (partition, offset);
        Ok(None)
    }

    /// How a worker should schedule reads over the partitions it owns.
    fn read_order(&self) -> ReadOrder {
        ReadOrder::Interleaved
    }
}
