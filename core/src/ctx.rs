//! The build context shared by every operator of one worker's dataflow
//! ([`Ctx`]), and the state shared by all workers of a run (abort flag,
//! counters, restored manifest, checkpoint store, the plan).
//!
//! It sits below both the build API (`flow`) and the runtime: the runtime
//! makes a `Ctx` for each worker's dataflow, operators register their part
//! and dead-letter streams with it, and the runtime's commit operator takes
//! them at the end. It knows neither of them.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use timely::dataflow::{ProbeHandle, Scope, StreamVec};

use crate::checkpoint::identity::Plan;
use crate::checkpoint::manifest::InputBound;
use crate::checkpoint::{CheckpointStore, FileEntry, Manifest, Part};
use crate::config::PipelineConfig;
use crate::error::Error;
use crate::keygroup::KeyGroups;
use crate::record::DeadLetter;
use crate::sink::SinkContext;
use crate::storage::{DirLocks, Storage};
use crate::time::{CheckpointSchedule, Epoch};

/// Checkpoint timings of a run.
#[derive(Clone, Debug, Default)]
pub struct CommitStats {
    /// Checkpoints committed (including the final one).
    pub count: u64,
    /// Total time spent writing manifests and publishing.
    pub total: Duration,
    /// Longest single commit.
    pub max: Duration,
    /// Epoch of the last committed checkpoint.
    pub last_epoch: Option<Epoch>,
}

/// State shared by all workers of one run.
pub(crate) struct Shared {
    pub cfg: PipelineConfig,
    pub store: Option<Arc<dyn CheckpointStore>>,
    pub restored: Option<Manifest>,
    pub run_id: String,
    pub abort: AtomicBool,
    pub error: Mutex<Option<Error>>,
    pub counters: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    pub inputs: Mutex<BTreeMap<String, InputBound>>,
    pub assignments: Mutex<BTreeMap<String, Vec<Vec<crate::record::PartitionId>>>>,
    pub stats: Mutex<CommitStats>,
    /// Locks on the output directories this run owns, held until it ends.
    pub dir_locks: DirLocks,
    /// When the run started: time-based epochs are numbered from it, the same on every worker.
    pub started: std::time::Instant,
    /// Whether this is the planning pass: the build function runs once on a
    /// dataflow that never runs, recording sources and steps into `plan`.
    pub planning: bool,
    /// The pipeline's sources and stateful steps (filled by the planning pass,
    /// read by the real run: every worker uses the same partition specs).
    pub plan: Mutex<Plan>,
}

impl Shared {
    pub fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }

    /// Records the first error and stops every worker.
    pub fn fail(&self, e: Error) {
        if let Ok(mut slot) = self.error.lock()
            && slot.is_none()
        {
            tracing::error!("{e}");
            *slot = Some(e);
        }
        self.abort.store(true, Ordering::SeqCst);
    }

    pub fn counter(&self, name: &str) -> Arc<AtomicU64> {
        match self.counters.lock() {
            Ok(mut map) => map.entry(name.to_string()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }
}

/// A handle operators use to report a failure: it stops every worker, and the
/// run returns the first error reported.
#[derive(Clone)]
pub struct Failure(pub(crate) Arc<Shared>);

impl Failure {
    /// Reports `e` and stops the pipeline.
    pub fn fail(&self, e: Error) {
        self.0.fail(e)
    }

    /// Whether the pipeline is stopping.
    pub fn aborted(&self) -> bool {
        self.0.aborted()
    }
}

pub(crate) struct CtxInner<'s> {
    pub scope: Scope<'s, Epoch>,
    pub shared: Arc<Shared>,
    pub parts: RefCell<Vec<StreamVec<'s, Epoch, Part>>>,
    pub dead: RefCell<Vec<StreamVec<'s, Epoch, DeadLetter>>>,
    pub dead_taken: Cell<bool>,
    /// The ids of the stateful steps built so far.
    pub steps: RefCell<std::collections::BTreeSet<String>>,
    pub probe: ProbeHandle<Epoch>,
    /// This worker's sources by name, told about every commit (worker 0's commit operator).
    pub sources: RefCell<Vec<(String, Arc<dyn crate::source::Source>)>>,
    /// Worker 0's handlers of sinks that deliver committed output elsewhere.
    pub after_commit: RefCell<Vec<(String, Box<dyn crate::sink::AfterCommit>)>>,
}

/// One worker's build context: registers snapshot and dead-letter streams, hands
/// out stable operator ids, and gives operators the restored checkpoint.
#[derive(Clone)]
pub struct Ctx<'s>(pub(crate) Rc<CtxInner<'s>>);

impl<'s> Ctx<'s> {
    /// A fresh build context for one worker's dataflow on `scope`.
    pub(crate) fn new(scope: Scope<'s, Epoch>, shared: Arc<Shared>, probe: ProbeHandle<Epoch>) -> Self {
        Ctx(Rc::new(CtxInner {
            scope,
            shared,
            parts: Default::default(),
            dead: Default::default(),
            dead_taken: Default::default(),
            steps: Default::default(),
            probe,
            sources: Default::default(),
            after_commit: Default::default(),
        }))
    }

    /// The timely scope.
    pub fn scope(&self) -> Scope<'s, Epoch> {
        self.0.scope
    }

    /// This worker's index.
    pub fn worker(&self) -> usize {
        self.0.scope.index()
    }

    /// Number of workers.
    pub fn peers(&self) -> usize {
        self.0.scope.peers()
    }

    /// The id of a stateful step of `kind` (`window`, `parquet`, ...): `name`
    /// when given, else the kind for the first such step and `kind-2`,
    /// `kind-3`, ... for later ones. Its state, counters and staged files
    /// are kept under it, so adding a step of another kind renames nothing.
    /// The step is recorded in the pipeline's plan; a checkpoint that has a
    /// step the pipeline lacks, or of another kind, is refused at start, and
    /// a step the checkpoint lacks starts empty. A name must be unique in the
    /// pipeline and made of ASCII letters, digits, `_` and `-`.
    pub fn step_id(&self, kind: &str, name: Option<&str>) -> crate::error::Result<String> {
        let mut taken = self.0.steps.borrow_mut();
        let id = match name {
            Some(name) => {
                let ok = !name.is_empty()
                    && name.len() <= 64
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if !ok {
                    return Err(Error::config(
                        "step name",
                        format!("`{name}`: use 1 to 64 ASCII letters, digits, `_` or `-`"),
                    ));
                }
                if taken.contains(name) {
                    return Err(Error::config("step name", format!("`{name}` names two steps of the pipeline")));
                }
                name.to_string()
            }
            None => (1..)
                .map(|n| if n == 1 { kind.to_string() } else { format!("{kind}-{n}") })
                .find(|id| !taken.contains(id))
                .unwrap_or_else(|| kind.to_string()),
        };
        taken.insert(id.clone());
        if self.planning()
            && let Ok(mut plan) = self.0.shared.plan.lock()
        {
            plan.steps.insert(id.clone(), kind.to_string());
        }
        Ok(id)
    }

    /// Whether this is the planning pass: the build function runs once, before
    /// any worker starts, on a dataflow that never runs. Sources only describe
    /// themselves, sinks open nothing, state is not read; nothing is written.
    pub fn planning(&self) -> bool {
        self.0.shared.planning
    }

    /// The state files the restored checkpoint holds for step `id` (none in the
    /// planning pass, or for a step the checkpoint does not have: it starts empty).
    pub fn restored_state(&self, id: &str) -> &[FileEntry] {
        match self.restored() {
            Some(m) if !self.planning() => m.state.get(id).map_or(&[], Vec::as_slice),
            _ => &[],
        }
    }

    /// Which epochs end with a checkpoint.
    pub fn schedule(&self) -> CheckpointSchedule {
        self.0.shared.cfg.schedule()
    }

    /// The checkpoint store, when the pipeline keeps checkpoints.
    pub fn store(&self) -> Option<Arc<dyn CheckpointStore>> {
        self.0.shared.store.clone()
    }

    /// The storage everything the pipeline writes goes through.
    pub fn storage(&self) -> Arc<dyn Storage> {
        self.0.shared.cfg.storage.clone()
    }

    /// What the sink with operator id `operator` on this worker is told about its run.
    pub fn sink_context(&self, operator: &str) -> SinkContext {
        SinkContext {
            worker: self.worker(),
            peers: self.peers(),
            run_id: self.run_id().to_string(),
            checkpointed: self.store().is_some(),
            restored: self.restored().is_some(),
            operator: operator.to_string(),
            storage: self.storage(),
            dir_locks: self.0.shared.dir_locks.clone(),
            state_dir: self.0.shared.cfg.state_dir.clone(),
        }
    }

    /// The manifest the run restores from, if any.
    pub fn restored(&self) -> Option<&Manifest> {
        self.0.shared.restored.as_ref()
    }

    /// The first epoch of this run (0, or the restored epoch + 1).
    pub fn start_epoch(&self) -> Epoch {
        self.restored().map_or(0, |m| m.epoch + 1)
    }

    /// The key groups keyed state is split into.
    pub fn key_groups(&self) -> KeyGroups {
        self.0.shared.cfg.key_groups
    }

    /// Whether the run is bounded.
    pub fn bounded(&self) -> bool {
        self.0.shared.cfg.bounded
    }

    /// The id of this run (staged file names carry it).
    pub fn run_id(&self) -> &str {
        &self.0.shared.run_id
    }

    /// A named counter, summed over workers and reported in the run summary.
    pub fn counter(&self, name: &str) -> Arc<AtomicU64> {
        self.0.shared.counter(name)
    }

    /// The failure handle operators report errors to.
    pub fn failure(&self) -> Failure {
        Failure(self.0.shared.clone())
    }

    /// Registers a stream of part descriptors with the commit operator.
    pub fn register_parts(&self, parts: StreamVec<'s, Epoch, Part>) {
        self.0.parts.borrow_mut().push(parts);
    }

    /// Registers a stream of dead letters; `Dataflow::dead_letters` collects them all.
    pub fn register_dead_letters(&self, dead: StreamVec<'s, Epoch, DeadLetter>) {
        self.0.dead.borrow_mut().push(dead);
        self.0.dead_taken.set(false);
    }

    /// The progress probe at the commit operator's input (end-to-end completion).
    pub fn probe(&self) -> &ProbeHandle<Epoch> {
        &self.0.probe
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.0.shared
    }
}
