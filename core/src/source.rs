//! The source interface: a source is a stable list of partitions, each read
//! sequentially from an offset by a [`PartitionReader`].
//!
//! The source operator (`Dataflow::source`, `core/src/flow/source.rs`) owns
//! the group logic: which worker reads which partition (an [`crate::partition::Assignor`]),
//! epochs, the offsets that go into every checkpoint, and the bounded-run end.
//! A connector only says what partitions exist and how to read one.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

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

/// Wakes a source operator from any thread: a client that receives data on
/// threads of its own (librdkafka's fetchers, an async task) calls
/// [`Waker::wake`] when records arrive, so the operator reads them at once and
/// does not poll while there are none. It wraps timely's `SyncActivator`.
#[derive(Clone)]
pub struct Waker(Arc<dyn Fn() + Send + Sync>);

impl Waker {
    /// A waker that runs `wake`.
    pub fn new(wake: impl Fn() + Send + Sync + 'static) -> Self {
        Waker(Arc::new(wake))
    }

    /// Schedules the source operator (cheap, callable from any thread, any number of times).
    pub fn wake(&self) {
        (self.0)()
    }
}

impl fmt::Debug for Waker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Waker")
    }
}

/// Reads one partition sequentially.
pub trait PartitionReader: Send {
    /// Appends up to about `max_bytes` of whole records to `out` (whose
    /// `partition`, `first`, `kind` and `sep` the reader sets when `out` is
    /// empty) and sets `out.next` to the offset after the last record read.
    fn read(&mut self, max_bytes: usize, out: &mut Chunk) -> Result<ReadStatus>;

    /// Called once, before the first read. A reader that returns `true` calls
    /// `waker.wake()` whenever records arrive after a read that found none, so
    /// the source operator sleeps while all its readers are idle instead of
    /// polling them (files and the embedded log are polled: `false`).
    fn set_waker(&mut self, waker: Waker) -> bool {
        let _ = waker;
        false
    }
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

    /// Partitions added since the run started (unbounded runs, every
    /// `partition_discovery` interval, on a thread of its own): the partitions
    /// the source has now that are not in `known`, each with the offset to
    /// start it from (its earliest). Sources whose partitions never change
    /// return none (the default).
    fn discover(&self, known: &[PartitionId]) -> Result<Vec<PartitionSpec>> {
        let _ = known;
        Ok(Vec::new())
    }

    /// Whether partitions can be added while a run goes on ([`Source::discover`] is
    /// called only then).
    fn discovers_partitions(&self) -> bool {
        false
    }

    /// Whether the source gives each record a time of its own
    /// ([`crate::record::Chunk::times`]: Kafka's message timestamps). A step
    /// that takes event times from the source refuses a source that gives none.
    fn gives_times(&self) -> bool {
        false
    }

    /// Called after a checkpoint that holds `offsets` (the next offset of every
    /// partition of this source) has committed, that is after the manifest's
    /// directory fsync returned; never before, and only on the worker that
    /// commits (worker 0), in commit order. `last` is the final commit of a
    /// bounded run: the process exits after it, so a source that tells an
    /// external system (Kafka's consumer group offsets) should do so
    /// synchronously then. Errors are logged, never fatal: the next commit
    /// carries newer offsets and retries. Runs without a state directory never
    /// call it.
    fn on_committed(&self, offsets: &BTreeMap<PartitionId, Offset>, last: bool) -> Result<()> {
        let _ = (offsets, last);
        Ok(())
    }
}
