//! The planning pass: before any worker starts, the user's build function runs
//! once on a dataflow that is never stepped. Sources only describe themselves
//! (partitions with their end offsets, identity), sinks open nothing, state is
//! not read; stateful steps record their ids. The runtime checks the newest
//! checkpoint against this [`Plan`] before anything is read or written, ends a
//! rerun of a complete run without building the real dataflow, and hands every
//! worker the same partition specs (so all workers of a run agree on the ends).

use std::sync::{Arc, Mutex};

use super::{build_dataflow, panic_message};
use crate::checkpoint::Manifest;
use crate::checkpoint::identity::Plan;
use crate::config::PipelineConfig;
use crate::ctx::Shared;
use crate::error::{Error, Result};
use crate::flow::Dataflow;
use crate::time::Epoch;

/// Runs `build` once in planning mode and returns what it declared.
pub(crate) fn plan<F>(cfg: &PipelineConfig, restored: Option<Manifest>, build: Arc<F>) -> Result<Plan>
where
    F: Fn(&mut Dataflow<'_>) -> Result<()> + Send + Sync + 'static,
{
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        store: None,
        restored,
        run_id: "plan".into(),
        abort: Default::default(),
        error: Mutex::new(None),
        counters: Default::default(),
        inputs: Default::default(),
        assignments: Default::default(),
        stats: Default::default(),
        dir_locks: Default::default(),
        started: std::time::Instant::now(),
        planning: true,
        plan: Mutex::new(Plan::default()),
    });
    let sh = shared.clone();
    let outcome = timely::execute_directly(move |worker| {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            worker.dataflow::<Epoch, _, _>(|scope| {
                build_dataflow(scope, sh.clone(), timely::dataflow::ProbeHandle::new(), &*build)
            })
        }));
        // The plan's dataflow never runs.
        for id in worker.installed_dataflows() {
            worker.drop_dataflow(id);
        }
        match result {
            Ok(r) => r,
            Err(panic) => Err(Error::Pipeline(format!("building the pipeline panicked: {}", panic_message(&*panic)))),
        }
    });
    outcome?;
    let plan = shared.plan.lock().map_err(|_| Error::Pipeline("plan lock poisoned".into()))?.clone();
    Ok(plan)
}
