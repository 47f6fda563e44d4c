//! The sink interface: transactional sinks stage files and publish them only
//! after the checkpoint that lists them commits (two-phase commit).
//!
//! The sink operator of the build API (`Flow::sink`, `core/src/flow/sink.rs`) stashes
//! input by epoch, hands each complete epoch to a [`SinkWriter`] in epoch
//! order, and at every checkpoint epoch asks it to [`SinkWriter::stage`] what
//! it wrote; the commit operator publishes those files with
//! [`crate::checkpoint::protocol::publish`].
//!
//! A sink that delivers to a server (a Kafka topic, an MQTT broker) has the
//! same shape: its published files are an outbox, and worker 0's
//! [`AfterCommit`] handler delivers them after each commit and removes them
//! (at-least-once: a crash between delivery and removal delivers again).

use std::sync::Arc;

use crate::checkpoint::Publish;
use crate::error::Result;
use crate::record::Rec;
use crate::storage::{DirLocks, Storage};
use crate::time::Epoch;

/// What a sink instance knows about where it runs.
#[derive(Clone, Debug)]
pub struct SinkContext {
    /// This worker's index.
    pub worker: usize,
    /// Number of workers.
    pub peers: usize,
    /// Unique id of this process's run: staged file names carry it, so files
    /// of an earlier (crashed) run are recognised and discarded.
    pub run_id: String,
    /// Whether the pipeline keeps checkpoints (`--state`).
    pub checkpointed: bool,
    /// Whether the run resumes from a committed checkpoint. A run that does
    /// not (no `--state`, or a new or wiped state directory) refuses to mix
    /// its output with committed files already in its output directory.
    pub restored: bool,
    /// The sink's operator id (`parquet-1`): staged and published file names
    /// carry it, so two sinks in one directory never collide.
    pub operator: String,
    /// The storage the sink writes through.
    pub storage: Arc<dyn Storage>,
    /// The run's output-directory locks (one lock per directory per run).
    pub dir_locks: DirLocks,
    /// The pipeline's state directory (`--state`), if it keeps checkpoints.
    pub state_dir: Option<std::path::PathBuf>,
}

/// A row a sink could not encode (a value that does not fit its schema, a row
/// too large): the sink operator turns it into a dead letter with stage `sink`
/// and the reason, so a bad row never stops the pipeline on every restart.
#[derive(Debug)]
pub struct Rejected<T> {
    /// The row.
    pub row: T,
    /// Why it was rejected.
    pub reason: String,
}

/// A sink type: opens one writer per worker.
pub trait Sink<T>: Send + 'static {
    /// Short kind name used in operator ids (`parquet`, `dead-letters`).
    fn kind(&self) -> &str;
    /// Whether the writer may reject rows ([`Rejected`]): the sink then produces
    /// dead letters, which the pipeline must send somewhere. The dead-letter sink
    /// itself rejects nothing (a dead letter it cannot write is a failure).
    fn rejects_rows(&self) -> bool {
        true
    }
    /// Opens this worker's writer. Worker 0 also discards staged files of
    /// earlier runs (the committed ones were published during recovery).
    fn open(&self, ctx: &SinkContext) -> Result<Box<dyn SinkWriter<T>>>;
    /// Whether the sink delivers its published files elsewhere
    /// ([`Sink::after_commit`]). Such a pipeline is built even when its
    /// checkpoint is complete, so that what a crash left undelivered goes out.
    fn delivers(&self) -> bool {
        false
    }
    /// Worker 0's handler of committed output, opened after the writer (only
    /// when [`Sink::delivers`]): a connection failure or a bad setting is an
    /// error at startup.
    fn after_commit(&self, _ctx: &SinkContext) -> Result<Option<Box<dyn AfterCommit>>> {
        Ok(None)
    }
}

/// Delivers a sink's committed output after each checkpoint commits (on
/// worker 0's commit operator, after the manifest is durable and the files
/// are published).
pub trait AfterCommit {
    /// A checkpoint committed and published this sink's files. It may block
    /// while too much committed output is undelivered (backpressure); an error
    /// (delivery failed for good) stops the pipeline, and the next run
    /// delivers again what was not.
    fn committed(&mut self) -> Result<()>;
    /// The run's last commit happened: returns once everything committed has
    /// been delivered.
    fn finish(&mut self) -> Result<()>;
}

/// One worker's writer of a sink.
pub trait SinkWriter<T> {
    /// Writes (drains) the rows of one complete epoch; epochs come in order.
    /// Rows it cannot encode go to `rejected` (they become dead letters); an
    /// error is for what stops the pipeline (I/O).
    fn write(&mut self, rows: &mut Vec<T>, rejected: &mut Vec<Rejected<T>>) -> Result<()>;
    /// Writes (drains) the rows of one complete epoch's records as
    /// [`write`](Self::write) does: what the sink step calls. By default each
    /// row is moved out of its record into a vector for `write`; a writer
    /// that reads rows in place overrides it and saves that copy.
    fn write_records(&mut self, records: &mut Vec<Rec<T>>, rejected: &mut Vec<Rejected<T>>) -> Result<()> {
        let mut rows: Vec<T> = records.drain(..).map(|r| r.value).collect();
        self.write(&mut rows, rejected)
    }
    /// Closes the files written since the last call, makes them durable in the
    /// staging area, and returns them (possibly none).
    fn stage(&mut self, epoch: Epoch) -> Result<Vec<Publish>>;
}
