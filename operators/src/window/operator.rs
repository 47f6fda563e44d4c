//! The window operator, in two stages:
//!
//! 1. **combine** (on the worker that read the records, no shuffle): records
//!    of each complete epoch are checked for lateness and pre-aggregated per
//!    key and window into partial accumulators. Only partials cross workers,
//!    which cuts the shuffle by the number of records per key and window and
//!    epoch (Flink's local-global aggregation).
//! 2. **window** (after the shuffle by key group): partials are merged into
//!    the window state, windows fire when the watermark passes their end, and
//!    the state is checkpointed per key group. Tumbling and sliding windows
//!    keep panes by time ([`PaneStore`], on the kit's [`step`]); sessions
//!    keep each key's sessions ([`SessionLogic`], on [`keyed_step`]).
//!
//! Both stages track the same watermark table from the same broadcast stream
//! and apply epoch `e`'s records before epoch `e`'s watermarks, so lateness is
//! decided identically and exactly once, in the combiner.

use std::collections::BTreeMap;
use std::hash::Hash;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustc_hash::FxHashMap;
use serde::Serialize;
use serde::de::DeserializeOwned;
use timely::ExchangeData;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use weir_core::ctx::Ctx;
use weir_core::epochs::{EpochDriver, follow_frontier};
use weir_core::flow::{DeadLetterOutput, InputInfo, VecOutput, WatermarkUpdate};
use weir_core::record::{EventTime, Meta, Offset, PartitionId, Rec};
use weir_core::state::{
    Input, StepInput, WatermarkTable, data_then_watermarks, frontier_min, keyed_step, restored_watermarks, step,
};
use weir_core::time::{CheckpointSchedule, Epoch};
use weir_core::{Error, Flow, Result};

use super::count::CountLogic;
use super::panes::PaneStore;
use super::session::SessionLogic;
use super::{Combine, Partial, WindowResult, WindowSpec};
use crate::aggregate::Aggregator;

/// A keyed flow with a window spec; `aggregate` builds the operator.
pub struct Windowed<'s, T, F> {
    pub(super) flow: Flow<'s, T>,
    pub(super) key: F,
    pub(super) spec: WindowSpec,
    pub(super) combine: Combine,
    pub(super) early: Option<Duration>,
    pub(super) lateness: i64,
}

impl<'s, T, F> Windowed<'s, T, F> {
    /// Sets whether records are pre-aggregated before the shuffle (default
    /// [`Combine::Adaptive`]). The results are the same either way.
    pub fn combine(mut self, mode: Combine) -> Self {
        self.combine = mode;
        self
    }

    /// Early firings (off by default): every `every` of processing time, each
    /// open tumbling or sliding window emits its result so far, marked
    /// [`partial`](WindowResult::partial); its final row follows when it
    /// closes. For long windows watched live. Partial rows depend on timing,
    /// so unlike final rows they are not reproduced exactly by a restarted
    /// run. Session and count windows refuse it (a config error when built).
    pub fn early_firings(mut self, every: Duration) -> Self {
        self.early = Some(every);
        self
    }

    /// Allowed lateness (default 0: off). A record behind the watermark whose
    /// window closed at most `lateness` before the watermark still updates it:
    /// the window's old row is emitted again with [`diff`](WindowResult::diff)
    /// -1, then its new row with +1 (the workload's change-log convention), so
    /// a sink that applies diffs holds the corrected rows. Windows keep their
    /// state that much longer. A record later than that is a dead letter with
    /// reason `late` (its message names the watermark).
    ///
    /// Which records count, by kind:
    /// - tumbling and sliding: a record is accepted while some window holding
    ///   it has `end + lateness > watermark`; each fired one among them is
    ///   corrected.
    /// - sessions: a record at `t` is accepted iff `t + lateness >= watermark`
    ///   (with 0, the rule without lateness). Its session, and any it merges
    ///   with, then ends after `watermark - lateness + gap`, so is within the
    ///   lateness by Flink's rule (merged end + lateness > watermark); Weir is
    ///   stricter than Flink in that a record further behind is late even if
    ///   it would fall into a session still kept. Every fired session the
    ///   record merges (one it extends, two it bridges) is retracted (-1 each);
    ///   the merged session is emitted at once (+1) if its end is at or behind
    ///   the watermark, else it is open again and fires when the watermark
    ///   reaches its end. A fired session is kept until `end + lateness <=
    ///   watermark`, then dropped: no record accepted after that can reach it.
    ///
    /// Count windows refuse it (a config error when built).
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.lateness = i64::try_from(lateness.as_millis()).unwrap_or(i64::MAX);
        self
    }
}

/// What the combiner collected for one epoch.
struct Combined<K, T, Acc, P> {
    /// Pre-aggregated per key and window (combining epochs).
    partials: FxHashMap<(K, EventTime), Acc>,
    /// One partial per record (pass-through epochs, see [`Adaptive`]).
    direct: Vec<Partial<K, Acc, P>>,
    /// Whether this epoch passes records through instead of combining them.
    pass_through: bool,
    /// Records added (not late).
    records: usize,
    lates: Vec<Rec<T>>,
}

/// Adaptive pre-aggregation ([`Combine::Adaptive`]). Combining costs a
/// hash-map update per record and pays off only when keys repeat within an
/// epoch; when most records of an epoch have a key and window of their own
/// (10,000 sensors, a reading every few seconds each), the combiner's map
/// does the window stage's work twice. So each combining epoch measures its
/// reduction (partials per record) and, when it is poor, the next
/// [`Adaptive::PASS_EPOCHS`] epochs send one partial per record without the
/// map; then an epoch combines again to measure anew (Trino's adaptive
/// partial aggregation works the same way).
///
/// Measured on the sensor workload, 2M readings, 20 ms epochs: at 0.07
/// partials per record combining took 0.77x the time of passing through; at
/// 0.21 the two were even; at 0.45 (10,000 devices) passing through took 0.74x.
#[derive(Clone, Copy, Debug)]
struct Adaptive {
    mode: Combine,
    /// Pass-through epochs left before the next measuring epoch.
    pass_left: u32,
}

impl Adaptive {
    /// Pass-through epochs after a poor measurement.
    const PASS_EPOCHS: u32 = 31;
    /// Partials per record above which combining is not worth its map.
    const MAX_RATIO: f64 = 0.2;
    /// Fewer records than this say little about the key distribution.
    const MIN_RECORDS: usize = 1024;

    fn new(mode: Combine) -> Self {
        Adaptive { mode, pass_left: 0 }
    }

    /// Whether the next epoch passes records through.
    fn next_epoch(&mut self) -> bool {
        match self.mode {
            Combine::Always => false,
            Combine::Never => true,
            Combine::Adaptive if self.pass_left > 0 => {
                self.pass_left -= 1;
                true
            }
            Combine::Adaptive => false,
        }
    }

    /// Learns from a combining epoch's reduction.
    fn measured(&mut self, records: usize, partials: usize) {
        if records >= Self::MIN_RECORDS {
            let ratio = partials as f64 / records as f64;
            self.pass_left = if ratio > Self::MAX_RATIO { Self::PASS_EPOCHS } else { 0 };
        }
    }
}

/// Flushed [`Combined`]s kept for reuse.
type Spare<K, T, Acc, P> = std::rc::Rc<std::cell::RefCell<Vec<Combined<K, T, Acc, P>>>>;

impl<K, T, Acc, P> Default for Combined<K, T, Acc, P> {
    fn default() -> Self {
        Combined {
            partials: FxHashMap::default(),
            direct: Vec::new(),
            pass_through: false,
            records: 0,
            lates: Vec::new(),
        }
    }
}

impl<'s, T, F> Windowed<'s, T, F>
where
    T: 'static + Serialize,
{
    /// Aggregates every window with `agg`; emits one [`WindowResult`] per key and
    /// window when the watermark passes the window's end.
    pub fn aggregate<K, A: Aggregator<T>>(self, agg: A) -> Result<Flow<'s, WindowResult<K, A::Out>>>
    where
        K: ExchangeData + Hash + Eq + Clone + Serialize + DeserializeOwned,
        F: Fn(&T) -> K + 'static,
        A::Out: 'static,
    {
        let Windowed { flow, key: key_of, spec, combine, early, lateness } = self;
        let ctx = flow.ctx.clone();
        let (Some(info), Some(wm_stream)) = (flow.input.clone(), flow.watermarks.clone()) else {
            return Err(Error::config(
                "window",
                "needs event times: call .event_time(...) on the flow before .window(...)",
            ));
        };
        spec.validate()?;
        match (early, spec) {
            (Some(every), _) if every.is_zero() => {
                return Err(Error::config("early_firings", "the interval must be longer than zero"));
            }
            (Some(_), WindowSpec::Session(_) | WindowSpec::Count(_)) => {
                return Err(Error::config("early_firings", "only tumbling and sliding windows fire early"));
            }
            _ => {}
        }
        if lateness > 0 && matches!(spec, WindowSpec::Count(_)) {
            return Err(Error::config("allowed_lateness", "count windows do not have it (only time windows do)"));
        }
        let op = ctx.step_id(spec.kind(), flow.name.as_deref())?;
        let agg = Rc::new(agg);
        // The combiner judges lateness by the watermark the window stage restores.
        let watermarks = restored_watermarks(&ctx, &op, info.partitions)?;

        let input = CombinerInput { stream: flow.stream, watermarks: wm_stream.clone(), info: &info, op: &op };
        let results = match spec {
            WindowSpec::Count(c) => {
                // No combining: the window stage orders every record by time and position.
                let partials =
                    combiner(&ctx, input, watermarks, key_of, (spec, 0), Combine::Never, agg.clone(), |m: &Meta| {
                        (m.partition, m.offset)
                    });
                let input = StepInput { records: partials, watermarks: Some(wm_stream), partitions: info.partitions };
                let key = |p: &Partial<K, A::Acc, (PartitionId, Offset)>| p.key.clone();
                keyed_step(&ctx, &op, input, key, CountLogic { agg, size: c.size, _records: PhantomData })?
            }
            _ => {
                let partials =
                    combiner(&ctx, input, watermarks, key_of, (spec, lateness), combine, agg.clone(), |_| ());
                let input = StepInput { records: partials, watermarks: Some(wm_stream), partitions: info.partitions };
                match (spec.panes(), spec.gap()) {
                    (Some((size, slide, _)), _) => {
                        let groups = ctx.key_groups();
                        let store = PaneStore::new(agg, size, slide, groups, early, lateness);
                        step(&ctx, &op, input, move |p: &Partial<K, A::Acc>| groups.group_of(&p.key), store)?
                    }
                    (None, gap) => {
                        let gap = gap.unwrap_or(1);
                        let key = |p: &Partial<K, A::Acc>| p.key.clone();
                        let logic = SessionLogic { agg, gap, lateness, _records: PhantomData };
                        keyed_step(&ctx, &op, input, key, logic)?
                    }
                }
            }
        };
        Ok(Flow::derived(ctx, results))
    }
}

/// The combiner's partials.
type Partials<'s, K, Acc, P> = StreamVec<'s, Epoch, Partial<K, Acc, P>>;

/// What the combiner reads: the flow's records and watermarks, its source, and the step's id.
struct CombinerInput<'a, 's, T> {
    stream: StreamVec<'s, Epoch, Rec<T>>,
    watermarks: StreamVec<'s, Epoch, WatermarkUpdate>,
    info: &'a InputInfo<'s>,
    op: &'a str,
}

/// Stage 1: checks lateness and combines records on the reading worker;
/// returns the partials for the window stage (late records become dead
/// letters with reason `late`, registered with the dataflow). `pos` gives each partial of a record its position (count windows).
#[allow(clippy::too_many_arguments)]
fn combiner<'s, T, K, A, P>(
    ctx: &Ctx<'s>,
    input: CombinerInput<'_, 's, T>,
    watermarks: WatermarkTable,
    key_of: impl Fn(&T) -> K + 'static,
    (spec, lateness): (WindowSpec, i64),
    combine: Combine,
    agg: Rc<A>,
    pos: impl Fn(&Meta) -> P + 'static,
) -> Partials<'s, K, A::Acc, P>
where
    T: 'static + Serialize,
    K: ExchangeData + Hash + Eq + Clone,
    A: Aggregator<T>,
    P: ExchangeData + Default,
{
    let CombinerInput { stream, watermarks: wm_stream, info, op } = input;
    let mut builder = OperatorBuilder::new(format!("Combine({op})"), ctx.scope());
    let mut records = builder.new_input(stream, Pipeline);
    let mut wms = builder.new_input(wm_stream.clone(), Pipeline);
    let (partial_out, partials) = builder.new_output::<Vec<Partial<K, A::Acc, P>>>();
    let mut late_out = DeadLetterOutput::new(&mut builder, ctx, "late");
    let mut partial_out: VecOutput<Partial<K, A::Acc, P>> = OutputBuilder::from(partial_out);
    let mut driver: EpochDriver<Input<Rec<T>>> = EpochDriver::new(ctx.start_epoch(), CheckpointSchedule::default());
    let mut watermarks = watermarks;
    let agg = agg.clone();
    let origin = info.origin.clone();
    // Records sent on without combining (see `Adaptive`).
    let passed = ctx.counter(&format!("{op}.passed_through"));
    builder.build(move |caps| {
        let mut caps = Some(caps);
        // Per open epoch: partial aggregates and late records. Records of the
        // first open epoch are classified on arrival (the watermark after the
        // epochs before it is known); later epochs' records wait in `driver`.
        let mut open: BTreeMap<Epoch, Combined<K, T, A::Acc, P>> = BTreeMap::new();
        // Flushed epochs' maps, kept with their capacity: a new epoch's map
        // does not grow (and rehash) from empty again.
        let spare: Spare<K, T, A::Acc, P> = Default::default();
        let adaptive = std::rc::Rc::new(std::cell::Cell::new(Adaptive::new(combine)));
        let fresh = {
            let spare = spare.clone();
            let adaptive = adaptive.clone();
            move || {
                let mut c: Combined<K, T, A::Acc, P> = spare.borrow_mut().pop().unwrap_or_default();
                let mut a = adaptive.get();
                c.pass_through = a.next_epoch();
                adaptive.set(a);
                c
            }
        };
        let pane = spec.panes().map(|(_, _, len)| len);
        let classify = move |c: &mut Combined<K, T, A::Acc, P>, recs: Vec<Rec<T>>, wm: EventTime| {
            // Room for every record at once: one allocation instead of a chain of
            // doublings (each a fresh table the kernel must zero, plus a rehash).
            if c.pass_through {
                c.direct.reserve(recs.len());
            } else {
                c.partials.reserve(recs.len());
            }
            // Records come in runs of one pane: its start and lateness are worked
            // out once per run (a division each, and the window arithmetic).
            let mut run: Option<(EventTime, EventTime, bool)> = None;
            for r in recs {
                let t = r.meta.event_time;
                let (start, late) = match run {
                    Some((start, end, late)) if t >= start && t < end => (start, late),
                    _ => {
                        let start = spec.part_start(t);
                        let late = spec.is_late_by(start, wm, lateness);
                        run = pane.map(|len| (start, start.saturating_add(len), late));
                        (start, late)
                    }
                };
                if late {
                    c.lates.push(r);
                    continue;
                }
                c.records += 1;
                if c.pass_through {
                    let mut acc = agg.init();
                    agg.add_at(&mut acc, &r.value, r.meta.event_time);
                    c.direct.push(Partial { key: key_of(&r.value), start, acc, pos: pos(&r.meta) });
                } else {
                    let acc = c.partials.entry((key_of(&r.value), start)).or_insert_with(|| agg.init());
                    agg.add_at(acc, &r.value, r.meta.event_time);
                }
            }
        };
        move |frontiers| {
            let now = driver.done();
            records.for_each(|cap, data: &mut Vec<Rec<T>>| {
                let Some(&t) = cap.least() else { return };
                if t == now {
                    classify(open.entry(t).or_insert_with(&fresh), std::mem::take(data), watermarks.current());
                } else {
                    driver.push(t, Input::Data(std::mem::take(data)));
                }
            });
            wms.for_each(|cap, data: &mut Vec<WatermarkUpdate>| {
                if let Some(&t) = cap.least() {
                    driver.push(t, Input::Watermarks(std::mem::take(data)));
                }
            });
            let Some(held) = caps.as_mut() else { return };
            let f = frontier_min(frontiers);
            let mut partial_h = partial_out.activate();
            let mut flush = |epoch: Epoch, mut c: Combined<K, T, A::Acc, P>, wm: EventTime| {
                if c.pass_through {
                    passed.fetch_add(c.records as u64, Ordering::Relaxed);
                } else {
                    let mut a = adaptive.get();
                    a.measured(c.records, c.partials.len());
                    adaptive.set(a);
                }
                c.records = 0;
                if !c.partials.is_empty() {
                    let cap = held[0].delayed(&epoch);
                    partial_h.session(&cap).give_iterator(c.partials.drain().map(|((key, start), acc)| Partial {
                        key,
                        start,
                        acc,
                        pos: P::default(),
                    }));
                }
                if !c.direct.is_empty() {
                    let cap = held[0].delayed(&epoch);
                    partial_h.session(&cap).give_iterator(c.direct.drain(..));
                }
                if !c.lates.is_empty() {
                    late_out.give(
                        &held[1].delayed(&epoch),
                        c.lates.drain(..).map(|r| {
                            let error = format!("late event: time {} is behind the watermark {wm}", r.meta.event_time);
                            origin.dead_letter(&r.meta, "late", error, &r.value)
                        }),
                    );
                }
                spare.borrow_mut().push(c);
            };
            for step in driver.advance(f) {
                let wm = watermarks.current();
                // Epochs before this one are complete: flush them.
                let later = open.split_off(&step.epoch);
                for (e, c) in std::mem::replace(&mut open, later) {
                    flush(e, c, wm);
                }
                let mut c = open.remove(&step.epoch).unwrap_or_else(&fresh);
                let mut updates = Vec::new();
                for input in data_then_watermarks(step.data) {
                    match input {
                        Input::Data(recs) => classify(&mut c, recs, wm),
                        Input::Watermarks(u) => updates.extend(u),
                    }
                }
                // All of an epoch's updates at once: the watermark after an epoch
                // must not depend on how its updates were batched (see `WatermarkTable`).
                watermarks.apply(&updates);
                flush(step.epoch, c, wm);
            }
            let later = match f {
                Some(f) => open.split_off(&f),
                None => BTreeMap::new(),
            };
            let wm = watermarks.current();
            for (e, c) in std::mem::replace(&mut open, later) {
                flush(e, c, wm);
            }
            drop(partial_h);
            follow_frontier(&mut caps, f);
        }
    });
    partials
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_modes_ignore_measurements() {
        let mut always = Adaptive::new(Combine::Always);
        let mut never = Adaptive::new(Combine::Never);
        for _ in 0..3 {
            always.measured(10_000, 10_000);
            never.measured(10_000, 1);
            assert!(!always.next_epoch());
            assert!(never.next_epoch());
        }
    }

    #[test]
    fn adaptive_passes_through_after_a_poor_reduction_then_measures_again() {
        let mut a = Adaptive::new(Combine::Adaptive);
        assert!(!a.next_epoch(), "the first epoch combines, to measure");
        a.measured(4096, 4000);
        let passed = (0..Adaptive::PASS_EPOCHS).filter(|_| a.next_epoch()).count();
        assert_eq!(passed as u32, Adaptive::PASS_EPOCHS);
        assert!(!a.next_epoch(), "then one epoch combines again");
        // A good reduction keeps combining.
        a.measured(4096, 100);
        assert!(!a.next_epoch());
        assert!(!a.next_epoch());
        // Too few records to judge: no change.
        a.measured(Adaptive::MIN_RECORDS - 1, Adaptive::MIN_RECORDS - 1);
        assert!(!a.next_epoch());
        // At the threshold combining goes on; just above it, it stops.
        a.measured(5000, 1000);
        assert!(!a.next_epoch());
        a.measured(5000, 1001);
        assert!(a.next_epoch());
    }
}
