//! The source operator: one instance per worker reads the partitions the
//! assignor gives it, closes epochs, and reports the offsets every checkpoint
//! commits.
//!
//! Flow control: a source does not start a new epoch while the commit
//! operator's input is more than `max_epochs_in_flight` epochs behind, so a
//! slow sink cannot make memory grow without bound.
//!
//! Time-based epochs are numbered by the time since the run started: an epoch
//! that ran long (a busy worker, flow control) is followed by the number the
//! clock has reached, so epoch numbers, and with them the checkpoint schedule
//! (every k-th epoch), follow wall-clock time on every worker alike. A source
//! never skips a checkpoint epoch: every source reports its offsets at each.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::operator::empty;

use super::{ChunkPool, InputInfo, Origin, Raw};
use crate::checkpoint::identity::SourcePlan;
use crate::checkpoint::{Part, PartBody};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::record::{Chunk, Offset, PartitionId};
use crate::source::{PartitionReader, ReadOrder, ReadStatus, Source, Waker};
use crate::stream::{PartitionEvent, VecOutput};
use crate::time::{Epoch, EpochPolicy};

struct Owned {
    id: PartitionId,
    reader: Box<dyn PartitionReader>,
    next: Offset,
    finished: bool,
    /// When the partition last had data (idle detection, unbounded runs).
    last_data: Instant,
    /// Whether it was reported idle.
    idle: bool,
}

/// With record-counted epochs, a source worker whose partitions have had no
/// data for this long closes its epoch anyway, so checkpoints go on.
const IDLE_EPOCH: Duration = Duration::from_millis(10);

/// Builds the source operator for `src` on this worker (see
/// [`Dataflow::source`](super::Dataflow::source)).
pub(super) fn build<'s, S: Source>(ctx: &Ctx<'s>, src: S) -> Result<Raw<'s>> {
    let ctx = ctx.clone();
    let shared = ctx.shared().clone();
    let cfg = shared.cfg.clone();
    let name = src.name().to_string();
    let sequential = src.read_order() == ReadOrder::Sequential;
    let src: Arc<dyn Source> = Arc::new(src);
    let scope = ctx.scope();
    if ctx.planning() {
        let specs = src.partitions()?;
        let fingerprint = src.fingerprint()?;
        let partitions = specs.len() as u32;
        let mut plan = shared.plan.lock().map_err(|_| Error::Pipeline("plan lock poisoned".into()))?;
        if plan.sources.contains_key(&name) {
            return Err(Error::config("source", format!("two sources are named `{name}`: read each input once")));
        }
        plan.sources.insert(name.clone(), SourcePlan { specs, fingerprint });
        drop(plan);
        return Ok(Raw {
            stream: empty(scope),
            ctx: ctx.clone(),
            input: InputInfo {
                origin: Origin { name: name.clone(), source: src },
                source: name,
                partitions,
                events: empty(scope),
            },
            pool: Default::default(),
        });
    }
    let specs = match shared.plan.lock().ok().and_then(|p| p.sources.get(&name).map(|s| s.specs.clone())) {
        Some(specs) => specs,
        None => {
            return Err(Error::config(
                "source",
                format!(
                    "source `{name}` was not built when the pipeline was planned: the build function must \
                         build the same pipeline every time it is called"
                ),
            ));
        }
    };
    let restored = ctx.restored();
    let committed = restored.and_then(|m| m.offsets.get(&name)).cloned().unwrap_or_default();
    // Bounded runs stop at the ends recorded when the run first started.
    let ends: BTreeMap<PartitionId, Offset> = shared
        .inputs
        .lock()
        .ok()
        .and_then(|i| i.get(&name).map(|b| b.ends.clone()))
        .unwrap_or_else(|| specs.iter().map(|s| (s.id, s.end)).collect());

    let ids: Vec<PartitionId> = specs.iter().map(|s| s.id).collect();
    // The previous run's assignment, so `sticky` moves as few partitions as possible.
    let previous = restored
        .and_then(|m| m.assignments.get(&name))
        .and_then(|a| crate::partition::Assignment::from_workers(a.clone()).ok());
    let assignment = cfg.assignor.assign(&ids, ctx.peers(), previous.as_ref())?;
    if let Ok(mut all) = shared.assignments.lock() {
        all.insert(name.clone(), assignment.clone().into());
    }
    ctx.0.sources.borrow_mut().push((name.clone(), src.clone()));
    let mut builder = OperatorBuilder::new(format!("Source({name})"), scope);
    let info = builder.operator_info();
    let sync_activator = scope.worker().sync_activator_for(info.address.to_vec());
    let waker = Waker::new(move || {
        // Fails only once the worker is gone, when there is nobody left to wake.
        let _ = sync_activator.activate();
    });
    let mut owned = Vec::new();
    // Every partition id of the source this run knows of (discovery adds to it).
    let mut known: Vec<PartitionId> = ids.clone();
    let discovery_every = if cfg.bounded || !src.discovers_partitions() { None } else { cfg.partition_discovery };
    let mut discovery = Discovery { every: discovery_every, last: Instant::now(), pending: None };
    let peers = ctx.peers();
    let discover_src = src.clone();
    // Whether every reader wakes the operator when data arrives (then it sleeps when idle).
    let mut all_wake = true;
    for &id in assignment.partitions_of(ctx.worker()) {
        let Some(spec) = specs.iter().find(|s| s.id == id) else { continue };
        let from = committed.get(&id).copied().unwrap_or(spec.start);
        let until = if cfg.bounded { ends.get(&id).copied() } else { None };
        let mut reader = src.open(id, from, until)?;
        all_wake &= reader.set_waker(waker.clone());
        owned.push(Owned { id, reader, next: from, finished: false, last_data: Instant::now(), idle: false });
    }
    let (data_out, data) = builder.new_output::<Vec<Chunk>>();
    let (event_out, events) = builder.new_output::<Vec<PartitionEvent>>();
    let (part_out, parts) = builder.new_output::<Vec<Part>>();
    let mut data_out: VecOutput<Chunk> = OutputBuilder::from(data_out);
    let mut event_out: VecOutput<PartitionEvent> = OutputBuilder::from(event_out);
    let mut part_out: VecOutput<Part> = OutputBuilder::from(part_out);
    let activator = scope.activator_for(info.address.clone());
    let probe = ctx.probe().clone();
    let failure = ctx.failure();
    let worker = ctx.worker();
    let schedule = cfg.schedule();
    let policy = cfg.epoch;
    let max_in_flight = cfg.max_epochs_in_flight();
    let batch_bytes = cfg.read_batch_bytes;
    let activation_bytes = cfg.activation_bytes;
    let idle_timeout = if cfg.bounded { None } else { cfg.idle_timeout };
    let records_in = ctx.counter("records_in");
    let bytes_in = ctx.counter("bytes_in");
    let mut epoch: Epoch = ctx.start_epoch();
    let first_epoch = epoch;
    let started = shared.started;
    let pool = ChunkPool::default();
    let source_pool = pool.clone();
    let source_name = name.clone();

    builder.build(move |caps| {
            let mut caps: Option<Vec<_>> = Some(
                caps.into_iter()
                    .map(|mut c| {
                        c.downgrade(&epoch);
                        c
                    })
                    .collect(),
            );
            let mut epoch_started = Instant::now();
            let mut epoch_records = 0u64;
            let mut turn = 0usize;
            // The epochs opened most recently (at most `max_in_flight`): flow control
            // waits for the oldest, however epoch numbers advanced.
            let mut opened: std::collections::VecDeque<Epoch> = std::collections::VecDeque::from([epoch]);
            // Sequential sources first read one small chunk of every partition.
            let mut priming = if sequential { owned.len() } else { 0 };
            move |_frontiers| {
                let Some(held) = caps.as_mut() else { return };
                if failure.aborted() {
                    caps = None;
                    return;
                }
                // Partitions added to the source: worker `id % peers` reads each from its start.
                match discovery.poll(&discover_src, &known) {
                    Ok(found) => {
                        for spec in found {
                            if known.contains(&spec.id) {
                                continue;
                            }
                            known.push(spec.id);
                            if spec.id as usize % peers != worker {
                                continue;
                            }
                            tracing::info!(source = %source_name, partition = spec.id, from = spec.start, worker, "new partition");
                            let mut reader = match discover_src.open(spec.id, spec.start, None) {
                                Ok(r) => r,
                                Err(e) => {
                                    failure.fail(e);
                                    return;
                                }
                            };
                            all_wake &= reader.set_waker(waker.clone());
                            owned.push(Owned {
                                id: spec.id,
                                reader,
                                next: spec.start,
                                finished: false,
                                last_data: Instant::now(),
                                idle: false,
                            });
                        }
                    }
                    Err(e) => tracing::warn!(source = %source_name, error = %e, "partition discovery failed; retrying"),
                }
                let mut data_h = data_out.activate();
                let mut event_h = event_out.activate();
                let mut part_h = part_out.activate();
                let offsets_part = |owned: &[Owned], epoch: Epoch| Part {
                    epoch,
                    worker,
                    body: PartBody::Offsets {
                        source: source_name.clone(),
                        offsets: owned.iter().map(|o| (o.id, o.next)).collect(),
                    },
                };

                // Flow control: wait while the pipeline is too far behind.
                let gated = opened.len() as u64 >= max_in_flight
                    && opened.front().is_some_and(|oldest| probe.less_than(oldest));
                let mut progressed = false;
                let mut got_data = false;
                if !gated {
                    let deadline = Instant::now() + Duration::from_millis(5);
                    let n = owned.len();
                    let mut idle_rounds = 0;
                    // Bytes handed downstream in this activation: reading on while
                    // earlier chunks wait in the queue would let them fall out of the
                    // cache before decode reaches them, and keep megabytes in flight
                    // (measured: a 5 ms read loop made the 2-worker sensor run about
                    // 1.3x slower, much of it the kernel clearing fresh pages).
                    let mut emitted = 0usize;
                    while Instant::now() < deadline && idle_rounds < n && n > 0 && emitted < activation_bytes {
                        let (index, limit) = if priming > 0 {
                            priming -= 1;
                            (turn % n, 1024)
                        } else if sequential {
                            (owned.iter().position(|o| !o.finished).unwrap_or(0), batch_bytes)
                        } else {
                            (turn % n, batch_bytes)
                        };
                        turn = turn.wrapping_add(1);
                        let o = &mut owned[index];
                        if o.finished {
                            idle_rounds += 1;
                            continue;
                        }
                        let mut chunk = source_pool.get();
                        let status = match o.reader.read(limit, &mut chunk) {
                            Ok(s) => s,
                            Err(e) => {
                                failure.fail(e);
                                return;
                            }
                        };
                        if !chunk.is_empty() {
                            o.last_data = Instant::now();
                            got_data = true;
                            if o.idle {
                                o.idle = false;
                                event_h.session(&held[1]).give(PartitionEvent::Active(o.id));
                            }
                            o.next = chunk.next;
                            epoch_records += chunk.len() as u64;
                            records_in.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                            bytes_in.fetch_add(chunk.data.len() as u64, Ordering::Relaxed);
                            emitted += chunk.data.len();
                            data_h.session(&held[0]).give(chunk);
                            progressed = true;
                            idle_rounds = 0;
                        } else {
                            source_pool.put(chunk);
                            idle_rounds += 1;
                            if let Some(timeout) = idle_timeout
                                && !o.idle
                                && o.last_data.elapsed() >= timeout
                            {
                                o.idle = true;
                                event_h.session(&held[1]).give(PartitionEvent::Idle(o.id));
                                progressed = true;
                            }
                        }
                        match status {
                            ReadStatus::End => {
                                o.finished = true;
                                event_h.session(&held[1]).give(PartitionEvent::Finished(o.id));
                                progressed = true;
                            }
                            ReadStatus::Idle | ReadStatus::Data => {}
                        }
                        let epoch_over = match policy {
                            EpochPolicy::Records(n) => epoch_records >= n,
                            EpochPolicy::Time(d) => epoch_started.elapsed() >= d,
                        };
                        if epoch_over {
                            break;
                        }
                    }
                }

                // (A partition ends in an unbounded run only when it can have no more data:
                // a source whose partitions all ended is done, discovery included.)
                // A worker that owns nothing yet stays alive while discovery may give it a partition.
                let all_finished =
                    owned.iter().all(|o| o.finished) && !(owned.is_empty() && discovery.every.is_some());
                if all_finished {
                    part_h.session(&held[2]).give(offsets_part(&owned, epoch));
                    drop((data_h, event_h, part_h));
                    caps = None;
                    return;
                }

                let epoch_over = match policy {
                    EpochPolicy::Records(n) => {
                        // Idle: this activation read nothing and none of the partitions
                        // had data for a while (a slow worker still finds data when it reads).
                        epoch_records >= n
                            || !gated
                                && !got_data
                                && epoch_started.elapsed() >= IDLE_EPOCH
                                && owned.iter().filter(|o| !o.finished).all(|o| o.last_data.elapsed() >= IDLE_EPOCH)
                    }
                    EpochPolicy::Time(d) => epoch_started.elapsed() >= d,
                };
                if epoch_over && !gated {
                    if schedule.is_checkpoint(epoch) {
                        part_h.session(&held[2]).give(offsets_part(&owned, epoch));
                    }
                    tracing::trace!(worker, epoch, records = epoch_records, "epoch closed");
                    epoch = next_epoch(epoch, policy, schedule, first_epoch, started.elapsed());
                    opened.push_back(epoch);
                    while opened.len() as u64 > max_in_flight.max(1) {
                        opened.pop_front();
                    }
                    for c in held.iter_mut() {
                        c.downgrade(&epoch);
                    }
                    epoch_started = Instant::now();
                    epoch_records = 0;
                    progressed = true;
                }
                if progressed {
                    activator.activate();
                } else if all_wake && !gated {
                    // Readers wake the operator when data arrives: sleep until the
                    // epoch must close or a partition's idle timeout passes.
                    let until_epoch = match policy {
                        EpochPolicy::Records(_) => IDLE_EPOCH,
                        EpochPolicy::Time(d) => d.saturating_sub(epoch_started.elapsed()),
                    };
                    let until_idle = idle_timeout.and_then(|t| {
                        owned
                            .iter()
                            .filter(|o| !o.finished && !o.idle)
                            .map(|o| t.saturating_sub(o.last_data.elapsed()))
                            .min()
                    });
                    let mut wait = until_idle.map_or(until_epoch, |i| i.min(until_epoch));
                    if let Some(d) = discovery.due_in() {
                        wait = wait.min(d);
                    }
                    activator.activate_after(wait.max(Duration::from_micros(100)));
                } else {
                    activator.activate_after(Duration::from_millis(1));
                }
            }
        });

    Ok(Raw {
        stream: data,
        ctx: ctx.clone(),
        input: InputInfo {
            origin: Origin { name: name.clone(), source: src },
            source: name,
            partitions: specs.len() as u32,
            events,
        },
        pool,
    })
    .inspect(|_| ctx.register_parts(parts))
}

/// Looks for new partitions every `every`, on a thread of its own (a
/// source's metadata call may wait for a server).
struct Discovery {
    every: Option<Duration>,
    last: Instant,
    pending: Option<std::sync::mpsc::Receiver<Result<Vec<crate::source::PartitionSpec>>>>,
}

impl Discovery {
    /// Partitions found by a finished call; starts the next call when one is due.
    fn poll(&mut self, src: &Arc<dyn Source>, known: &[PartitionId]) -> Result<Vec<crate::source::PartitionSpec>> {
        let Some(every) = self.every else { return Ok(Vec::new()) };
        if let Some(rx) = &self.pending {
            match rx.try_recv() {
                Ok(found) => {
                    self.pending = None;
                    return found;
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(Vec::new()),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => self.pending = None,
            }
        }
        if self.last.elapsed() >= every {
            self.last = Instant::now();
            let (tx, rx) = std::sync::mpsc::channel();
            let (src, known) = (src.clone(), known.to_vec());
            let spawned = std::thread::Builder::new().name("weir-discovery".into()).spawn(move || {
                let _ = tx.send(src.discover(&known));
            });
            if spawned.is_ok() {
                self.pending = Some(rx);
            }
        }
        Ok(Vec::new())
    }

    /// How long until the next call is due.
    fn due_in(&self) -> Option<Duration> {
        self.every.map(|e| {
            if self.pending.is_some() { Duration::from_millis(5) } else { e.saturating_sub(self.last.elapsed()) }
        })
    }
}

/// The epoch after `epoch`: the next number for record-counted epochs; for
/// time-based ones, the number the clock has reached since the run started
/// (`first` at `elapsed = 0`), but never past the next checkpoint epoch.
fn next_epoch(
    epoch: Epoch,
    policy: EpochPolicy,
    schedule: crate::time::CheckpointSchedule,
    first: Epoch,
    elapsed: Duration,
) -> Epoch {
    let next = epoch + 1;
    let EpochPolicy::Time(d) = policy else { return next };
    let ticks = elapsed.as_nanos() / d.as_nanos().max(1);
    let by_clock = first.saturating_add(u64::try_from(ticks).unwrap_or(u64::MAX));
    let mut to = by_clock.max(next);
    if let Some(k) = schedule.every.filter(|&k| k > 0) {
        // The first checkpoint epoch after `epoch`.
        to = to.min((epoch / k + 1).saturating_mul(k));
    }
    to
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::CheckpointSchedule;

    #[test]
    fn time_epochs_follow_the_clock_and_stop_at_checkpoints() {
        let ms = Duration::from_millis;
        let time = EpochPolicy::Time(ms(20));
        let every5 = CheckpointSchedule { every: Some(5) };
        let none = CheckpointSchedule { every: None };
        // On time: the next number.
        assert_eq!(next_epoch(0, time, every5, 0, ms(25)), 1);
        // Behind the clock: jump to where the clock is...
        assert_eq!(next_epoch(1, time, none, 0, ms(80)), 4);
        // ...but stop at the next checkpoint epoch, never past it.
        assert_eq!(next_epoch(1, time, every5, 0, ms(200)), 5);
        assert_eq!(next_epoch(5, time, every5, 0, ms(200)), 10);
        assert_eq!(next_epoch(7, time, every5, 0, ms(300)), 10);
        // Ahead of the clock: still the next number.
        assert_eq!(next_epoch(9, time, every5, 0, ms(10)), 10);
        // A restored run counts from its first epoch.
        assert_eq!(next_epoch(100, time, none, 100, ms(61)), 103);
        // Record-counted epochs are consecutive.
        assert_eq!(next_epoch(3, EpochPolicy::Records(10), every5, 0, ms(10_000)), 4);
    }
}
