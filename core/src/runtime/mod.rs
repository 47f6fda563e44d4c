//! The runtime: runs a pipeline on `workers` timely worker threads.
//!
//! [`Pipeline::run`] recovers from the newest committed checkpoint (publishing
//! its output again, discarding later uncommitted state), builds the user's
//! dataflow on every worker, adds the commit operator, and steps the workers
//! until a bounded run completes or any worker fails. An error or panic in one
//! worker sets a shared abort flag that every worker's step loop checks, so
//! the process never waits forever and the run returns the first error.

mod commit;
pub mod ctx;
pub mod epochs;
mod plan;
mod source_op;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use ctx::{CommitStats, Ctx, Failure};

use crate::checkpoint::identity::check_restore;
use crate::checkpoint::manifest::InputBound;
use crate::checkpoint::protocol::publish;
use crate::checkpoint::{CheckpointStore, LocalStore};
use crate::error::{Error, Result};
use crate::flow::Dataflow;
use crate::keygroup::KeyGroups;
use crate::partition::Assignor;
use crate::storage::Storage;
use crate::time::{CheckpointSchedule, Epoch, EpochPolicy};
use ctx::{Shared, build_dataflow, panic_message};

/// The longest a worker sleeps with nothing to do before it checks the abort flag.
const PARK: Duration = Duration::from_millis(20);

/// How a pipeline runs. Build it with [`Pipeline`]'s methods; validated once in [`Pipeline::run`].
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Pipeline (consumer group) name; names its checkpoints.
    pub name: String,
    /// Worker threads.
    pub workers: usize,
    /// Checkpoint directory; `None` runs without checkpoints (output published at the end).
    pub state_dir: Option<PathBuf>,
    /// Time between checkpoints (a whole number of epochs); `None`: only the final one.
    pub checkpoint_interval: Option<Duration>,
    /// When sources close epochs.
    pub epoch: EpochPolicy,
    /// Epochs per checkpoint when `epoch` counts records (deterministic tests).
    pub checkpoint_epochs: Option<u64>,
    /// Stop at the end offsets seen at start, flush everything, take a final checkpoint.
    pub bounded: bool,
    /// How partitions are spread over workers.
    pub assignor: Assignor,
    /// Key groups keyed state is split into.
    pub key_groups: KeyGroups,
    /// Committed checkpoints kept.
    pub retain: usize,
    /// Bytes a source reads from one partition per read.
    pub read_batch_bytes: usize,
    /// Bytes a source hands downstream per activation before it yields, so
    /// that the operators after it take each batch while it is still in the
    /// core's cache. At least one read happens per activation.
    pub activation_bytes: usize,
    /// Epochs a source may run ahead of the commit operator's input (flow control).
    pub epochs_in_flight: u64,
    /// In an unbounded run, a partition without data for this long stops holding
    /// the window watermark back until it has data again (`None`: never).
    /// Bounded runs never release a partition that still has unread data.
    pub idle_timeout: Option<Duration>,
    /// In an unbounded run, how often sources whose partitions can grow (Kafka)
    /// look for new partitions ([`crate::source::Source::discover`]); `None`: never.
    pub partition_discovery: Option<Duration>,
    /// Where checkpoints, staged and published output are written (the local
    /// file system by default; tests inject faults here).
    pub storage: Arc<dyn Storage>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            name: "weir".into(),
            workers: 1,
            state_dir: None,
            checkpoint_interval: Some(Duration::from_secs(1)),
            epoch: EpochPolicy::default(),
            checkpoint_epochs: None,
            bounded: true,
            assignor: Assignor::Range,
            key_groups: KeyGroups::default(),
            retain: 3,
            read_batch_bytes: 64 * 1024,
            activation_bytes: 256 * 1024,
            epochs_in_flight: 4,
            idle_timeout: Some(Duration::from_secs(10)),
            partition_discovery: Some(Duration::from_secs(30)),
            storage: crate::storage::local(),
        }
    }
}

impl PipelineConfig {
    /// Which epochs end with a checkpoint.
    pub fn schedule(&self) -> CheckpointSchedule {
        if self.state_dir.is_none() {
            return CheckpointSchedule { every: None };
        }
        let every = match (self.epoch, self.checkpoint_epochs, self.checkpoint_interval) {
            (_, Some(k), _) => Some(k.max(1)),
            (EpochPolicy::Time(e), None, Some(c)) => {
                Some(((c.as_secs_f64() / e.as_secs_f64().max(1e-6)).round() as u64).max(1))
            }
            _ => None,
        };
        CheckpointSchedule { every }
    }

    /// How far sources may run ahead of the commit operator, in epochs.
    ///
    /// The commit operator's input frontier moves every epoch (every operator
    /// emits or downgrades its part stream each epoch), so this bounds the
    /// data in flight to a few epochs whatever the checkpoint interval, and so
    /// also keeps the uncommitted checkpoint intervals bounded.
    pub fn max_epochs_in_flight(&self) -> u64 {
        self.epochs_in_flight
    }

    fn validate(&self) -> Result<()> {
        if self.workers == 0 {
            return Err(Error::config("workers", "must be at least 1"));
        }
        if self.name.is_empty() {
            return Err(Error::config("name", "must not be empty"));
        }
        if let EpochPolicy::Time(d) = self.epoch
            && d.is_zero()
        {
            return Err(Error::config("epoch_interval", "must be positive"));
        }
        if let EpochPolicy::Records(0) = self.epoch {
            return Err(Error::config("epoch_records", "must be positive"));
        }
        if let Some(c) = self.checkpoint_interval
            && c.is_zero()
        {
            return Err(Error::config("checkpoint_interval", "must be positive"));
        }
        if self.retain == 0 {
            return Err(Error::config("retain", "keep at least one checkpoint"));
        }
        if self.epochs_in_flight < 2 {
            return Err(Error::config("epochs_in_flight", "must be at least 2"));
        }
        if self.read_batch_bytes < 1024 {
            return Err(Error::config("read_batch_bytes", "must be at least 1024"));
        }
        if self.idle_timeout.is_some_and(|d| d.is_zero()) {
            return Err(Error::config("idle_timeout", "must be positive (or none)"));
        }
        if self.partition_discovery.is_some_and(|d| d.is_zero()) {
            return Err(Error::config("partition_discovery", "must be positive (or none)"));
        }
        if self.activation_bytes == 0 {
            return Err(Error::config("activation_bytes", "must be positive"));
        }
        Ok(())
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// Counters summed over workers (`records_in`, `dead_letters`, `<sink>.rows`, ...).
    pub counters: BTreeMap<String, u64>,
    /// Checkpoint commits.
    pub commits: CommitStats,
    /// The checkpoint epoch the run resumed from.
    pub restored_from: Option<Epoch>,
    /// The state was already complete: nothing was read or written.
    pub already_complete: bool,
}

impl RunSummary {
    /// A counter's value (0 if absent).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
}

/// A pipeline: configuration plus [`Pipeline::run`].
///
/// ```no_run
/// # use weir_core::runtime::Pipeline;
/// # use std::time::Duration;
/// let summary = Pipeline::new("sensor-aggregation")
///     .workers(2)
///     .state("weir-data/state")
///     .checkpoint_every(Duration::from_secs(1))
///     .run(|p| {
///         // p.source(...)?.decode::<Reading>(Json)...sink(...)?;
///         Ok(())
///     })?;
/// # Ok::<(), weir_core::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Pipeline {
    /// The configuration.
    pub config: PipelineConfig,
}

impl Pipeline {
    /// A pipeline named `name` with default settings.
    pub fn new(name: impl Into<String>) -> Self {
        Pipeline { config: PipelineConfig { name: name.into(), ..Default::default() } }
    }

    /// Number of worker threads.
    pub fn workers(mut self, n: usize) -> Self {
        self.config.workers = n;
        self
    }

    /// Keep checkpoints in `dir` (and restore from it).
    pub fn state(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.state_dir = Some(dir.into());
        self
    }

    /// Checkpoint interval (rounded to whole epochs).
    pub fn checkpoint_every(mut self, interval: Duration) -> Self {
        self.config.checkpoint_interval = Some(interval);
        self
    }

    /// Close an epoch every `interval` of processing time.
    pub fn epoch_every(mut self, interval: Duration) -> Self {
        self.config.epoch = EpochPolicy::Time(interval);
        self
    }

    /// Deterministic epochs: every `records` records per source worker, a checkpoint every `epochs` epochs.
    pub fn epoch_records(mut self, records: u64, checkpoint_epochs: u64) -> Self {
        self.config.epoch = EpochPolicy::Records(records);
        self.config.checkpoint_epochs = Some(checkpoint_epochs);
        self
    }

    /// Bounded (stop at the end offsets seen at start) or not.
    pub fn bounded(mut self, bounded: bool) -> Self {
        self.config.bounded = bounded;
        self
    }

    /// How many epochs sources may run ahead of the commit operator (flow control; at least 2).
    pub fn epochs_in_flight(mut self, epochs: u64) -> Self {
        self.config.epochs_in_flight = epochs;
        self
    }

    /// In an unbounded run, how long a partition may have no data before it
    /// stops holding the window watermark back (`None`: it always holds it).
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// In an unbounded run, how often to look for partitions added to a source
    /// (Kafka; default 30 s; `None`: never). A new partition is read from its
    /// earliest offset by worker `id % workers` and enters the next checkpoint.
    pub fn partition_discovery(mut self, every: Option<Duration>) -> Self {
        self.config.partition_discovery = every;
        self
    }

    /// The storage everything the pipeline writes goes through (default: the local file system).
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.config.storage = storage;
        self
    }

    /// Partition assignor.
    pub fn assignor(mut self, assignor: Assignor) -> Self {
        self.config.assignor = assignor;
        self
    }

    /// Runs the pipeline built by `build` on every worker; returns when a bounded run
    /// completes, or with the first error of any worker.
    ///
    /// `build` is also called once before the workers start, in a planning pass
    /// ([`crate::runtime::ctx::Ctx::planning`]) on a dataflow that never runs: it must
    /// build the same pipeline every time, and should have no side effects of its own.
    pub fn run<F>(self, build: F) -> Result<RunSummary>
    where
        F: Fn(&mut Dataflow<'_>) -> Result<()> + Send + Sync + 'static,
    {
        let cfg = self.config;
        cfg.validate()?;
        let started = Instant::now();
        let (store, restored) = match &cfg.state_dir {
            Some(dir) => {
                let store = LocalStore::open_in(cfg.storage.clone(), dir)?;
                let latest = store.latest()?;
                if let Some(m) = &latest
                    && m.key_groups != cfg.key_groups.count()
                {
                    return Err(Error::Checkpoint {
                        path: dir.clone(),
                        message: format!(
                            "checkpoint has {} key groups, the pipeline {}",
                            m.key_groups,
                            cfg.key_groups.count()
                        ),
                    });
                }
                (Some(store), latest)
            }
            None => (None, None),
        };
        let build = Arc::new(build);
        // Every check happens before anything is read or written.
        let plan = plan::plan(&cfg, restored.clone(), build.clone())?;
        if let (Some(m), Some(dir)) = (&restored, &cfg.state_dir) {
            check_restore(m, &plan, &cfg.name, cfg.bounded, dir)?;
            if let Some(store) = &store {
                store.ensure_durable(m.epoch)?;
            }
            // Replay the publish step of the newest commit (idempotent: a no-op
            // unless the last run crashed between its commit and its publish).
            publish(&*cfg.storage, &m.outputs)?;
            tracing::info!(epoch = m.epoch, complete = m.complete, "restoring from checkpoint");
        }
        let already_complete = restored.as_ref().is_some_and(|m| m.complete);
        let restored_from = restored.as_ref().map(|m| m.epoch);
        if already_complete && plan.delivering.is_empty() {
            // Nothing to read and nothing to write: the dataflow is not built
            // (unless a sink may have committed output a crash left undelivered).
            return Ok(RunSummary {
                elapsed: started.elapsed(),
                restored_from,
                already_complete,
                ..Default::default()
            });
        }
        if let Some(store) = &store {
            store.discard_after(restored.as_ref().map(|m| m.epoch))?;
        }
        let store = store.map(|s| Arc::new(s) as Arc<dyn CheckpointStore>);
        // What every source reads, recorded in every checkpoint: a bounded run
        // keeps the end offsets recorded when it first started.
        let inputs: BTreeMap<String, InputBound> = plan
            .sources
            .iter()
            .map(|(name, p)| {
                let recorded = restored.as_ref().and_then(|m| m.inputs.get(name)).filter(|_| cfg.bounded);
                let ends = recorded.map_or_else(|| p.specs.iter().map(|s| (s.id, s.end)).collect(), |r| r.ends.clone());
                (name.clone(), InputBound { fingerprint: p.fingerprint.clone(), bounded: cfg.bounded, ends })
            })
            .collect();
        let run_id = format!(
            "{:x}{:05x}",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0),
            std::process::id() & 0xfffff
        );
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            store,
            restored,
            run_id,
            abort: Default::default(),
            error: Mutex::new(None),
            counters: Default::default(),
            inputs: Mutex::new(inputs),
            assignments: Default::default(),
            stats: Default::default(),
            dir_locks: Default::default(),
            started: std::time::Instant::now(),
            planning: false,
            plan: Mutex::new(plan),
        });
        let sh = shared.clone();
        let guards = timely::execute(timely::Config::process(cfg.workers), move |worker| {
            let sh = sh.clone();
            let build = build.clone();
            let index = worker.index();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<()> {
                let probe = timely::dataflow::ProbeHandle::new();
                worker.dataflow::<Epoch, _, _>(|scope| build_dataflow(scope, sh.clone(), probe, &*build))?;
                // Parks until an operator is scheduled (timely bounds the park by
                // delayed activations; other workers' messages and sources'
                // wakers unpark it), at most PARK so the abort flag is seen.
                while !sh.aborted() && worker.step_or_park(Some(PARK)) {}
                Ok(())
            }));
            // Stop every worker first, then drop this worker's dataflows: the others
            // check the flag in their step loops and end within one park interval.
            let failed = !matches!(outcome, Ok(Ok(())));
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => sh.fail(e),
                Err(panic) => {
                    let msg = panic_message(&*panic);
                    sh.fail(Error::Pipeline(format!("worker {index} panicked: {msg}")));
                }
            }
            if sh.aborted() || failed {
                // timely keeps stepping installed dataflows after this closure
                // returns: drop them so a failed run ends instead of waiting forever.
                for id in worker.installed_dataflows() {
                    worker.drop_dataflow(id);
                }
            }
        })
        .map_err(Error::Pipeline)?;
        drop(guards);
        if let Some(e) = shared.error.lock().ok().and_then(|mut e| e.take()) {
            return Err(e);
        }
        let counters = shared
            .counters
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed))).collect())
            .unwrap_or_default();
        let commits = shared.stats.lock().map(|s| s.clone()).unwrap_or_default();
        Ok(RunSummary { elapsed: started.elapsed(), counters, commits, restored_from, already_complete })
    }
}
