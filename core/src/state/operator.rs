//! The one keyed stateful operator every stateful step is built on.
//!
//! An operator author writes a [`KeyedLogic`]: what to do with one record of
//! a key, and with one of its event-time timers when the watermark reaches it.
//! [`keyed_step`] does the rest: the exchange by key group, applying input in
//! epoch order (an epoch's records, then its watermarks, then the timers they
//! make due), following the frontier, the watermark table, restoring the
//! worker's key groups, and writing one snapshot part per worker at every
//! checkpoint epoch (see [`KeyedState`]).

use std::hash::Hash;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use serde::de::DeserializeOwned;
use timely::ExchangeData;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::progress::frontier::MutableAntichain;

use crate::checkpoint::{Part, PartBody};
use crate::error::Result;
use crate::flow::{VecOutput, WatermarkUpdate};
use crate::record::{EventTime, Meta, Rec};
use crate::runtime::Ctx;
use crate::runtime::epochs::{EpochDriver, follow_frontier};
use crate::state::keyed::{KeyView, KeyedState};
use crate::state::watermarks::{WatermarkSnapshot, WatermarkTable};
use crate::time::Epoch;

/// What a keyed stateful step does with each record and each timer of a key.
///
/// Records of one epoch reach `on_record` in no particular order (they come
/// from every worker), so the state after an epoch must not depend on their
/// order (merge commutatively, or keep them and sort, e.g. by event time,
/// when a timer fires). Timers fire in time order after the epoch's records.
pub trait KeyedLogic<K, D>: 'static {
    /// A key's state (checkpointed); a key seen for the first time starts at `Default`.
    type State: Serialize + DeserializeOwned + Default + 'static;
    /// What the step emits.
    type Out: 'static;
    /// One record of `cx.key()`.
    fn on_record(&mut self, cx: &mut KeyCx<'_, '_, K, Self::State, Self::Out>, record: D);
    /// `cx.key()`'s timer at `time` came due: the watermark reached it.
    fn on_timer(&mut self, cx: &mut KeyCx<'_, '_, K, Self::State, Self::Out>, time: EventTime);
}

/// One key's state, timers and the step's output, during a [`KeyedLogic`] callback.
pub struct KeyCx<'c, 'v, K, V, O> {
    view: &'c mut KeyView<'v, K, V>,
    out: &'c mut Vec<Rec<O>>,
    watermark: EventTime,
}

impl<K: Clone, V, O> KeyCx<'_, '_, K, V, O> {
    /// The key.
    pub fn key(&self) -> &K {
        self.view.key()
    }

    /// The key's state.
    pub fn state(&mut self) -> &mut V {
        self.view.value()
    }

    /// Sets an event-time timer at `time`: `on_timer` runs once the watermark
    /// reaches it (at once after this epoch when it already has). A second
    /// timer at the same time is the same timer.
    pub fn set_timer(&mut self, time: EventTime) {
        self.view.set_timer(time)
    }

    /// Deletes the key's timer at `time`, if set.
    pub fn delete_timer(&mut self, time: EventTime) {
        self.view.delete_timer(time)
    }

    /// The key's pending timers, in no particular order.
    pub fn timers(&self) -> &[EventTime] {
        self.view.timers()
    }

    /// Drops the key's state and timers when the callback returns (a later
    /// record of the key starts from `Default` again).
    pub fn remove(&mut self) {
        self.view.remove()
    }

    /// The step's watermark: no record at or below it is expected any more.
    pub fn watermark(&self) -> EventTime {
        self.watermark
    }

    /// Emits `value` with event time `time`.
    pub fn emit(&mut self, time: EventTime, value: O) {
        self.out.push(Rec { meta: Meta::derived(time), value });
    }
}

/// The input of a [`keyed_step`].
pub struct StepInput<'s, D> {
    /// The records (exchanged by the key's group).
    pub records: StreamVec<'s, Epoch, D>,
    /// The source's per-partition watermarks (none: timers fire at the end of input only).
    pub watermarks: Option<StreamVec<'s, Epoch, WatermarkUpdate>>,
    /// How many partitions the source has (the watermark is their minimum).
    pub partitions: u32,
}

/// What a stage that follows watermarks stashes per epoch (in an [`EpochDriver`]).
pub enum Input<D> {
    /// A batch of records.
    Data(Vec<D>),
    /// A batch of watermark updates.
    Watermarks(Vec<WatermarkUpdate>),
}

/// An epoch's inputs in the order they must be applied: every record of the
/// epoch first, then its watermarks (which already account for those records).
pub fn data_then_watermarks<D>(inputs: Vec<Input<D>>) -> impl Iterator<Item = Input<D>> {
    let (data, wms): (Vec<_>, Vec<_>) = inputs.into_iter().partition(|i| matches!(i, Input::Data(_)));
    data.into_iter().chain(wms)
}

/// The least time of the input frontiers (`None`: every input is finished).
pub fn frontier_min(frontiers: &[MutableAntichain<Epoch>]) -> Option<Epoch> {
    frontiers.iter().filter_map(|f| f.frontier().iter().min().copied()).min()
}

/// The watermark table step `id` restores (the one its checkpoint files
/// hold): for a stage before the keyed step (a pre-aggregation on the reading
/// worker) that must judge lateness exactly as the step does.
pub fn restored_watermarks(ctx: &Ctx<'_>, id: &str, partitions: u32) -> Result<WatermarkTable> {
    let mut table = WatermarkTable::new(partitions);
    let files = ctx.restored_state(id);
    if let (false, Some(store)) = (files.is_empty(), ctx.store()) {
        for file in files {
            let bytes = store.read_part(file)?;
            let reader = crate::checkpoint::state::StateReader::new(&bytes, &file.path)?;
            if let Some(g) = reader.read::<WatermarkSnapshot>(crate::checkpoint::state::GLOBAL_GROUP)? {
                table.merge(&g);
            }
        }
    }
    Ok(table)
}

/// Builds the keyed stateful step `id` (from [`Ctx::step_id`]): `input`'s
/// records go to the worker that owns their key's group and, there, to
/// `logic` with the key's state. Its state is restored from the checkpoint
/// the run starts from (the groups this worker owns, whatever worker count
/// wrote them) and written at every checkpoint epoch; its output rows are
/// counted as `{id}.emitted`.
pub fn keyed_step<'s, D, K, L>(
    ctx: &Ctx<'s>,
    id: &str,
    input: StepInput<'s, D>,
    key: impl Fn(&D) -> K + 'static,
    mut logic: L,
) -> Result<StreamVec<'s, Epoch, Rec<L::Out>>>
where
    D: ExchangeData,
    K: Hash + Eq + Clone + Serialize + DeserializeOwned + 'static,
    L: KeyedLogic<K, D>,
{
    let worker = ctx.worker();
    let peers = ctx.peers();
    let groups = ctx.key_groups();
    let store = ctx.store();
    let failure = ctx.failure();
    let emitted_count = ctx.counter(&format!("{id}.emitted"));
    let id = id.to_string();
    let part_name = format!("{id}.w{worker}.part");

    let mut state: KeyedState<K, L::State> = KeyedState::new(groups);
    // Without watermarks nothing moves the table (one partition that never
    // reports) until the input finishes.
    let mut watermarks = WatermarkTable::new(if input.watermarks.is_some() { input.partitions } else { 1 });
    let files = ctx.restored_state(&id);
    if let (false, Some(store)) = (files.is_empty(), store.as_ref()) {
        let globals: Vec<WatermarkSnapshot> = state.restore(store.as_ref(), files, groups.groups_of(worker, peers))?;
        for g in &globals {
            watermarks.merge(g);
        }
    }

    let key = Rc::new(key);
    let route = {
        let key = key.clone();
        move |d: &D| groups.owner(groups.group_of(&key(d)), peers) as u64
    };
    let mut builder = OperatorBuilder::new(format!("Keyed({id})"), ctx.scope());
    let mut records = builder.new_input(input.records, Exchange::new(route));
    let mut wms = input.watermarks.map(|w| builder.new_input(w, Pipeline));
    let (out, results) = builder.new_output::<Vec<Rec<L::Out>>>();
    let (part_out, parts) = builder.new_output::<Vec<Part>>();
    let mut out: VecOutput<Rec<L::Out>> = OutputBuilder::from(out);
    let mut part_out: VecOutput<Part> = OutputBuilder::from(part_out);
    let mut driver: EpochDriver<Input<D>> = EpochDriver::new(ctx.start_epoch(), ctx.schedule());

    builder.build(move |caps| {
        let mut caps = Some(caps);
        let mut emitted: Vec<Rec<L::Out>> = Vec::new();
        move |frontiers| {
            records.for_each(|cap, data: &mut Vec<D>| {
                if let Some(&t) = cap.least() {
                    driver.push(t, Input::Data(std::mem::take(data)));
                }
            });
            if let Some(wms) = wms.as_mut() {
                wms.for_each(|cap, data: &mut Vec<WatermarkUpdate>| {
                    if let Some(&t) = cap.least() {
                        driver.push(t, Input::Watermarks(std::mem::take(data)));
                    }
                });
            }
            let Some(held) = caps.as_mut() else { return };
            if failure.aborted() {
                return;
            }
            let f = frontier_min(frontiers);
            let mut out_h = out.activate();
            let mut part_h = part_out.activate();
            let fire = |state: &mut KeyedState<K, L::State>, logic: &mut L, wm: EventTime, emitted: &mut Vec<_>| {
                state.fire_due(wm, |time, view| {
                    logic.on_timer(&mut KeyCx { view, out: emitted, watermark: wm }, time);
                });
            };
            let mut run = || -> Result<()> {
                for step in driver.advance(f) {
                    let epoch = step.epoch;
                    let mut updates = Vec::new();
                    for input in data_then_watermarks(step.data) {
                        match input {
                            Input::Data(recs) => {
                                let wm = watermarks.current();
                                for r in recs {
                                    state.with_key(key(&r), |view| {
                                        logic.on_record(&mut KeyCx { view, out: &mut emitted, watermark: wm }, r);
                                    });
                                }
                            }
                            Input::Watermarks(u) => updates.extend(u),
                        }
                    }
                    // All of an epoch's updates at once (see `WatermarkTable`).
                    if let Some(wm) = watermarks.apply(&updates) {
                        fire(&mut state, &mut logic, wm, &mut emitted);
                    }
                    if !emitted.is_empty() {
                        emitted_count.fetch_add(emitted.len() as u64, Ordering::Relaxed);
                        out_h.session(&held[0].delayed(&epoch)).give_iterator(emitted.drain(..));
                    }
                    if step.checkpoint
                        && let Some(store) = &store
                    {
                        let files = state.checkpoint(store.as_ref(), epoch, &part_name, &watermarks.snapshot())?;
                        let cap = held[1].delayed(&epoch);
                        part_h.session(&cap).give_iterator(files.into_iter().map(|file| Part {
                            epoch,
                            worker,
                            body: PartBody::State { operator: id.clone(), file },
                        }));
                    }
                }
                if f.is_none() {
                    // Input finished: every timer fires, then the final snapshot.
                    let at = *held[0].time();
                    watermarks.finish();
                    fire(&mut state, &mut logic, EventTime::MAX, &mut emitted);
                    if !emitted.is_empty() {
                        emitted_count.fetch_add(emitted.len() as u64, Ordering::Relaxed);
                        out_h.session(&held[0]).give_iterator(emitted.drain(..));
                    }
                    if let Some(store) = &store {
                        let name = format!("{part_name}.final");
                        let files = state.checkpoint(store.as_ref(), at, &name, &watermarks.snapshot())?;
                        part_h.session(&held[1]).give_iterator(files.into_iter().map(|file| Part {
                            epoch: at,
                            worker,
                            body: PartBody::State { operator: id.clone(), file },
                        }));
                    }
                }
                Ok(())
            };
            if let Err(e) = run() {
                failure.fail(e);
                return;
            }
            drop((out_h, part_h));
            follow_frontier(&mut caps, f);
        }
    });
    ctx.register_parts(parts);
    Ok(results)
}
