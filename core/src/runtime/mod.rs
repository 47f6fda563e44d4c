//! The runtime: runs a pipeline on `workers` timely worker threads.
//!
//! [`Pipeline::run`] recovers from the newest committed checkpoint (publishing
//! its output again, discarding later uncommitted state), builds the user's
//! dataflow on every worker, adds the commit operator, and steps the workers
//! until a bounded run completes or any worker fails. An error or panic in one
//! worker sets a shared abort flag that every worker's step loop checks, so
//! the process never waits forever and the run returns the first error.
//!
//! The runtime sits on top of core: it depends on the build API
//! ([`Dataflow`]) and on what lies below both ([`crate::ctx`],
//! [`crate::config`]); the build API does not import it. It re-exports
//! `Ctx`, `PipelineConfig` and `epochs` under their old paths, for code that
//! still names them here (the stateful kit).

mod commit;
mod plan;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use timely::dataflow::{ProbeHandle, Scope};

pub use crate::config::PipelineConfig;
pub use crate::ctx::{CommitStats, Ctx, Failure};
/// Applying input in epoch order (moved to [`crate::epochs`]; this path is kept for its users).
pub use crate::epochs;

use crate::checkpoint::identity::check_restore;
use crate::checkpoint::manifest::InputBound;
use crate::checkpoint::protocol::publish;
use crate::checkpoint::{CheckpointStore, LocalStore};
use crate::ctx::Shared;
use crate::error::{Error, Result};
use crate::flow::Dataflow;
use crate::partition::Assignor;
use crate::storage::Storage;
use crate::time::{Epoch, EpochPolicy};

/// The longest a worker sleeps with nothing to do before it checks the abort flag.
const PARK: Duration = Duration::from_millis(20);

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
    /// ([`Ctx::planning`]) on a dataflow that never runs: it must
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

/// Builds the user's pipeline on `scope`, then the commit operator: the one way
/// a worker's dataflow is made, in the planning pass and in the real run.
fn build_dataflow<'s, F>(
    scope: Scope<'s, Epoch>,
    shared: Arc<Shared>,
    probe: ProbeHandle<Epoch>,
    build: &F,
) -> Result<()>
where
    F: Fn(&mut Dataflow<'_>) -> Result<()>,
{
    let mut df = Dataflow::new(Ctx::new(scope, shared, probe));
    build(&mut df)?;
    commit::build(df.finish()?)
}

/// The message of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
