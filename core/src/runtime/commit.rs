//! The commit operator: all part descriptors go to worker 0, which writes the
//! manifest when its input frontier passes a checkpoint epoch, then publishes
//! the staged output with the same function recovery uses, then applies
//! retention. In a run without checkpoints it only publishes, at the end.

use std::sync::Arc;
use std::time::Instant;

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::{Concatenate, Probe};

use crate::checkpoint::protocol::{next_manifest, publish};
use crate::checkpoint::{Manifest, Part};
use crate::ctx::{Ctx, Shared};
use crate::error::Result;
use crate::sink::AfterCommit;
use crate::source::Source;
use crate::time::Epoch;

struct Committer {
    shared: Arc<Shared>,
    last: Option<Manifest>,
    template: Manifest,
    /// Sources told about each commit ([`crate::source::Source::on_committed`]).
    sources: Vec<(String, Arc<dyn Source>)>,
    /// Sinks that deliver their committed output elsewhere ([`crate::sink::AfterCommit`]).
    after_commit: Vec<(String, Box<dyn AfterCommit>)>,
}

impl Committer {
    fn commit(&mut self, parts: Vec<Part>, epoch: Epoch, complete: bool) -> Result<()> {
        let started = Instant::now();
        if let Ok(inputs) = self.shared.inputs.lock() {
            self.template.inputs = inputs.clone();
        }
        if let Ok(assignments) = self.shared.assignments.lock() {
            self.template.assignments = assignments.clone();
        }
        let m = next_manifest(self.last.as_ref(), &self.template, parts, epoch, complete);
        if let Some(store) = &self.shared.store {
            store.commit(&m)?;
        }
        publish(&*self.shared.cfg.storage, &m.outputs)?;
        if let Some(store) = &self.shared.store {
            store.retain(self.shared.cfg.retain)?;
            // Committed: sources may now tell the outside world (never before the manifest).
            for (name, source) in &self.sources {
                let Some(offsets) = m.offsets.get(name) else { continue };
                if let Err(e) = source.on_committed(offsets, complete) {
                    tracing::warn!(source = %name, epoch, error = %e, "after-commit action failed; the next commit retries");
                }
            }
        }
        self.deliver()?;
        if let Ok(mut stats) = self.shared.stats.lock() {
            let took = started.elapsed();
            stats.count += 1;
            stats.total += took;
            stats.max = stats.max.max(took);
            stats.last_epoch = Some(epoch);
        }
        tracing::debug!(epoch, complete, outputs = m.outputs.len(), "checkpoint committed");
        self.last = Some(m);
        Ok(())
    }

    /// Tells the delivering sinks that their published files may go out.
    fn deliver(&mut self) -> Result<()> {
        for (_, handler) in &mut self.after_commit {
            handler.committed()?;
        }
        Ok(())
    }

    /// The run's last commit happened: waits until the delivering sinks have
    /// delivered everything committed.
    fn finish(&mut self) -> Result<()> {
        for (operator, handler) in &mut self.after_commit {
            handler.finish()?;
            tracing::debug!(%operator, "committed output delivered");
        }
        Ok(())
    }
}

/// Adds the commit operator over every part stream registered with `ctx`
/// (the runtime calls it after the user's build function, on the context
/// [`Dataflow::finish`](crate::flow::Dataflow::finish) hands back).
pub(super) fn build(ctx: Ctx<'_>) -> Result<()> {
    if ctx.planning() {
        return Ok(());
    }
    let shared = ctx.shared().clone();
    let scope = ctx.scope();
    let parts: Vec<_> = ctx.0.parts.borrow_mut().drain(..).collect();
    let parts = scope.concatenate(parts).probe_with(ctx.probe());
    let schedule = ctx.schedule();
    let cfg = &shared.cfg;
    let template = Manifest {
        pipeline: cfg.name.clone(),
        workers: cfg.workers,
        key_groups: cfg.key_groups.count(),
        steps: shared.plan.lock().map(|p| p.steps.clone()).unwrap_or_default(),
        ..Default::default()
    };
    let restored_complete = shared.restored.as_ref().is_some_and(|m| m.complete);
    let sources = std::mem::take(&mut *ctx.0.sources.borrow_mut());
    let after_commit = std::mem::take(&mut *ctx.0.after_commit.borrow_mut());
    let mut committer =
        Committer { shared: shared.clone(), last: shared.restored.clone(), template, sources, after_commit };
    let bounded = cfg.bounded;
    let is_leader = ctx.worker() == 0;
    let mut pending: Vec<Part> = Vec::new();
    let mut done = ctx.start_epoch();
    let mut max_seen: Epoch = 0;
    parts.unary_frontier::<timely::container::CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Exchange::new(|_: &Part| 0u64),
        "Commit",
        move |_cap, _| {
            move |(input, frontier), _output| {
                input.for_each(|_, data: &mut Vec<Part>| {
                    for p in data.drain(..) {
                        max_seen = max_seen.max(p.epoch);
                        pending.push(p);
                    }
                });
                if shared.aborted() || !is_leader {
                    return;
                }
                let f = frontier.frontier().iter().min().copied();
                let result = match f {
                    Some(f) if f > done => {
                        let newest = schedule.between(done, f).last();
                        done = f;
                        match newest {
                            Some(c) => {
                                let (now, later): (Vec<_>, Vec<_>) = pending.drain(..).partition(|p| p.epoch <= c);
                                pending = later;
                                committer.commit(now, c, false)
                            }
                            None => Ok(()),
                        }
                    }
                    None if done != Epoch::MAX => {
                        done = Epoch::MAX;
                        let committed = if restored_complete {
                            // Only what a crash left undelivered goes out.
                            committer.deliver()
                        } else {
                            let prev = committer.last.as_ref().map_or(0, |m| m.epoch + 1);
                            let epoch = max_seen.max(prev);
                            let now = std::mem::take(&mut pending);
                            committer.commit(now, epoch, bounded)
                        };
                        committed.and_then(|()| committer.finish())
                    }
                    _ => Ok(()),
                };
                if let Err(e) = result {
                    shared.fail(e);
                }
            }
        },
    );
    Ok(())
}
