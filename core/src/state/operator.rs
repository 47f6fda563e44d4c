//! The one stateful operator every stateful step is built on, at two levels.
//!
//! - **Per key** (most operators): an operator author writes a
//!   [`KeyedLogic`], what to do with one record of a key and with one of its
//!   event-time timers when the watermark reaches it, and calls
//!   [`keyed_step`]; the state is a [`KeyedState`].
//! - **Whole state** (an operator whose state is better laid out otherwise,
//!   e.g. windows by time): a [`StepLogic`] gets an epoch's records as a
//!   batch and each watermark advance, and checkpoints and restores its
//!   state by key group itself; [`step`] runs it.
//!
//! [`step`] does the rest at both levels: the exchange by key group, applying
//! input in epoch order (an epoch's records, then its watermarks, then what
//! they make due), following the frontier, the watermark table, restoring the
//! worker's key groups, and writing one snapshot part per worker at every
//! checkpoint epoch.

use std::hash::Hash;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;
use serde::de::DeserializeOwned;
use timely::ExchangeData;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, ParallelizationContract, Pipeline};
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::progress::frontier::MutableAntichain;

use crate::checkpoint::{CheckpointStore, FileEntry, Part, PartBody};
use crate::ctx::Ctx;
use crate::epochs::{EpochDriver, follow_frontier};
use crate::error::Error;
use crate::error::Result;
use crate::keygroup::KeyGroups;
use crate::record::{DeadLetter, EventTime, Meta, Rec};
use crate::state::DeadLetterOutput;
use crate::state::keyed::{KeyView, KeyedState, ProcessingTime, processing_now};
use crate::state::watermarks::{WatermarkSnapshot, WatermarkTable};
use crate::stream::{VecOutput, WatermarkUpdate};
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
    /// `cx.key()`'s processing-time timer at `at` came due: the wall clock
    /// reached it (see [`KeyCx::set_processing_timer`]). Ignored by default.
    fn on_processing_timer(&mut self, _cx: &mut KeyCx<'_, '_, K, Self::State, Self::Out>, _at: ProcessingTime) {}
    /// The stage whose dead letters it sends ([`KeyCx::dead_letter`]), as
    /// [`StepLogic::dead_letter_stage`]. None by default.
    fn dead_letter_stage(&self) -> Option<&'static str> {
        None
    }
}

/// Where a step's logic puts its rows. They are handed downstream in
/// batches of [`Emit::BATCH`] as they are pushed, so a call that emits
/// millions of rows (every window closing at the end of the input) neither
/// holds them all in one buffer nor writes them through memory twice.
pub struct Emit<'a, O> {
    buf: &'a mut Vec<Rec<O>>,
    dead: &'a mut Vec<DeadLetter>,
    give: &'a mut dyn FnMut(&mut Vec<Rec<O>>),
}

impl<'a, O> Emit<'a, O> {
    /// Rows gathered before they are handed on: few enough that the buffer
    /// stays in the cache, enough to fill several of timely's containers.
    pub const BATCH: usize = 1024;

    /// Rows gathered in `buf` (kept between calls for its capacity) and
    /// handed to `give` in batches; [`finish`](Self::finish) hands on the
    /// rest. Dead letters gather in `dead`.
    pub fn new(
        buf: &'a mut Vec<Rec<O>>,
        dead: &'a mut Vec<DeadLetter>,
        give: &'a mut dyn FnMut(&mut Vec<Rec<O>>),
    ) -> Self {
        Emit { buf, dead, give }
    }

    /// Sends a dead letter instead of a row: a record the step cannot
    /// process. The step's logic must name its stage
    /// ([`StepLogic::dead_letter_stage`]); a step that sends one without
    /// fails the pipeline with an error naming the step rather than lose it.
    pub fn dead_letter(&mut self, letter: DeadLetter) {
        self.dead.push(letter);
    }

    /// Emits `rec`.
    #[inline]
    pub fn push(&mut self, rec: Rec<O>) {
        self.buf.push(rec);
        if self.buf.len() >= Self::BATCH {
            (self.give)(self.buf);
        }
    }

    /// Emits every row of `recs`.
    pub fn extend(&mut self, recs: impl IntoIterator<Item = Rec<O>>) {
        for rec in recs {
            self.push(rec);
        }
    }

    /// The same output, borrowed for a shorter while (what a [`KeyCx`] holds).
    pub fn reborrow(&mut self) -> Emit<'_, O> {
        Emit { buf: &mut *self.buf, dead: &mut *self.dead, give: &mut *self.give }
    }

    /// Hands on the rows not handed on yet.
    pub fn finish(self) {
        if !self.buf.is_empty() {
            (self.give)(self.buf);
        }
    }
}

/// Runs `f` with an [`Emit`] over `buf` whose batches, counted in `count`,
/// go to `send` (a timely session's `give_iterator`), and hands on the rest
/// when `f` returns.
fn emitting<O>(
    buf: &mut Vec<Rec<O>>,
    dead: &mut Vec<DeadLetter>,
    count: &AtomicU64,
    mut send: impl FnMut(std::vec::Drain<'_, Rec<O>>),
    f: impl FnOnce(&mut Emit<'_, O>),
) {
    let mut give = |rows: &mut Vec<Rec<O>>| {
        count.fetch_add(rows.len() as u64, Ordering::Relaxed);
        send(rows.drain(..));
    };
    let mut emit = Emit::new(buf, dead, &mut give);
    f(&mut emit);
    emit.finish();
}

/// The output port of a step's dead letters (after its rows and its parts),
/// when its logic names a stage.
const DEAD_LETTER_PORT: usize = 2;

/// Sends the dead letters a call of a step's logic made, at the capability
/// `cap` makes (of the step's dead-letter output; made only when there are
/// letters); a step without that output that made some fails with an error
/// naming it, rather than lose them.
fn send_dead_letters(
    id: &str,
    dead: &mut Vec<DeadLetter>,
    out: Option<&mut DeadLetterOutput>,
    cap: impl FnOnce() -> Option<Capability<Epoch>>,
) -> Result<()> {
    if dead.is_empty() {
        return Ok(());
    }
    match (out, cap()) {
        (Some(out), Some(cap)) => {
            out.give(&cap, dead.drain(..));
            Ok(())
        }
        _ => Err(Error::config(
            id,
            format!("the step sent {} dead letters, but its logic names no dead_letter_stage", dead.len()),
        )),
    }
}

/// One key's state, timers and the step's output, during a [`KeyedLogic`] callback.
pub struct KeyCx<'c, 'v, K, V, O> {
    view: &'c mut KeyView<'v, K, V>,
    out: Emit<'c, O>,
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

    /// Sets a processing-time timer at `at` (wall-clock ms since the Unix
    /// epoch; [`processing_time`](Self::processing_time) is now):
    /// `on_processing_timer` runs once the clock reaches it, between epochs,
    /// with output at the epoch then open. Such timers are checkpointed; one
    /// whose moment passed while the pipeline was down fires as soon as it
    /// runs again; one still pending when a bounded input ends does not
    /// fire. What they emit depends on timing, so unlike event-time timers a
    /// restarted run need not reproduce it exactly.
    pub fn set_processing_timer(&mut self, at: ProcessingTime) {
        self.view.set_processing_timer(at)
    }

    /// Deletes the key's processing-time timer at `at`, if set.
    pub fn delete_processing_timer(&mut self, at: ProcessingTime) {
        self.view.delete_processing_timer(at)
    }

    /// The key's pending processing-time timers, in no particular order.
    pub fn processing_timers(&self) -> &[ProcessingTime] {
        self.view.processing_timers()
    }

    /// The wall clock now, as [`ProcessingTime`].
    pub fn processing_time(&self) -> ProcessingTime {
        processing_now()
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

    /// Emits `rec` as it is, with its own metadata (a record the step passes
    /// on, enriched, rather than a row it derives).
    pub fn emit_rec(&mut self, rec: Rec<O>) {
        self.out.push(rec);
    }

    /// Sends a dead letter instead of a row ([`Emit::dead_letter`]; the
    /// logic names its stage: [`KeyedLogic::dead_letter_stage`]).
    pub fn dead_letter(&mut self, letter: DeadLetter) {
        self.out.dead_letter(letter);
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

/// A stateful step's whole state on one worker, driven by [`step`]: the
/// lower level of the kit, for operators whose state is not best kept per
/// key (a window operator keeps its panes by time, so that records of one
/// window touch one hash map). [`keyed_step`] runs a [`KeyedLogic`] through
/// this trait with a [`KeyedState`].
///
/// The contract, which [`step`] relies on for exactly-once results:
/// - The records of an epoch reach [`on_records`](Self::on_records) in
///   batches in no particular order, before that epoch's watermark advance
///   reaches [`on_watermark`](Self::on_watermark); the state after an epoch
///   must not depend on the records' order.
/// - [`checkpoint`](Self::checkpoint) runs after the epoch's watermark and
///   writes the state, grouped by the key groups the records were routed by,
///   so that [`restore`](Self::restore) can load any worker's share of it.
pub trait StepLogic<D>: 'static {
    /// What the step emits.
    type Out: 'static;
    /// A batch of records of the current epoch. `watermark` is the step's
    /// watermark before this epoch's advance.
    fn on_records(&mut self, records: Vec<D>, watermark: EventTime, out: &mut Emit<'_, Self::Out>);
    /// The watermark advanced to `watermark` ([`EventTime::MAX`] once the
    /// input is finished): emit what is now complete.
    fn on_watermark(&mut self, watermark: EventTime, out: &mut Emit<'_, Self::Out>);
    /// Writes this worker's state at `epoch` as part `name`, with `global`
    /// (the watermark table's snapshot, restored as a [`WatermarkSnapshot`])
    /// in [`GLOBAL_GROUP`](crate::checkpoint::state::GLOBAL_GROUP), and
    /// returns the files that together hold it.
    fn checkpoint(
        &mut self,
        store: &dyn CheckpointStore,
        epoch: Epoch,
        name: &str,
        global: (&[EventTime], EventTime),
    ) -> Result<Vec<FileEntry>>;
    /// Loads the key groups in `mine` from the step's files of the checkpoint
    /// the run starts from (any worker count wrote them) and returns each
    /// file's global state.
    fn restore(
        &mut self,
        store: &dyn CheckpointStore,
        files: &[FileEntry],
        mine: Range<u32>,
    ) -> Result<Vec<WatermarkSnapshot>>;
    /// After [`restore`](Self::restore): the restored watermark, up to which
    /// the checkpointed state has already emitted.
    fn restored(&mut self, _watermark: EventTime) {}
    /// When (processing time) the step wants
    /// [`on_processing_time`](Self::on_processing_time) to run next, if ever.
    /// [`step`] asks after every activation and schedules itself then.
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
    /// Processing time reached [`next_deadline`](Self::next_deadline): `now`.
    /// What it emits is not exactly-once (a restarted run's processing times
    /// differ): for previews, such as a window's early firings.
    fn on_processing_time(&mut self, _now: Instant, _watermark: EventTime, _out: &mut Emit<'_, Self::Out>) {}
    /// The stage whose dead letters the logic sends ([`Emit::dead_letter`]),
    /// if it sends any: the step then has an output of dead letters,
    /// registered with the pipeline's and counted as `dead_letters.{stage}`
    /// (the letters carry their own stage and reason). None by default: no
    /// such output.
    fn dead_letter_stage(&self) -> Option<&'static str> {
        None
    }
}

/// A [`KeyedLogic`] with its [`KeyedState`], as a [`StepLogic`].
struct PerKey<K, D, L: KeyedLogic<K, D>, F> {
    state: KeyedState<K, L::State>,
    logic: L,
    key: F,
    /// A batch's keys, each computed once (kept for its capacity).
    keys: Vec<K>,
    _records: PhantomData<fn(D)>,
}

/// How many records ahead a keyed step prefetches a key's table entry
/// ([`KeyedState::prefetch`]): enough for a miss to memory to complete while
/// the records before it are handled.
pub const PREFETCH_AHEAD: usize = 8;

impl<K, D, L, F> StepLogic<D> for PerKey<K, D, L, F>
where
    D: 'static,
    K: Hash + Eq + Clone + Serialize + DeserializeOwned + 'static,
    L: KeyedLogic<K, D>,
    F: Fn(&D) -> K + 'static,
{
    type Out = L::Out;

    fn on_records(&mut self, records: Vec<D>, watermark: EventTime, out: &mut Emit<'_, L::Out>) {
        let PerKey { state, logic, key, keys, .. } = self;
        keys.extend(records.iter().map(&*key));
        let mut keys = keys.drain(..);
        for r in records {
            let Some(k) = keys.next() else { break };
            // The table entry of the record `PREFETCH_AHEAD` on, so its miss overlaps with these.
            if let Some(ahead) = keys.as_slice().get(PREFETCH_AHEAD - 1) {
                state.prefetch(ahead);
            }
            state.with_key(k, |view| logic.on_record(&mut KeyCx { view, out: out.reborrow(), watermark }, r));
        }
    }

    fn on_watermark(&mut self, watermark: EventTime, out: &mut Emit<'_, L::Out>) {
        let PerKey { state, logic, .. } = self;
        state.fire_due(watermark, |time, view| {
            logic.on_timer(&mut KeyCx { view, out: out.reborrow(), watermark }, time)
        });
    }

    fn next_deadline(&self) -> Option<Instant> {
        let at = self.state.next_processing_timer()?;
        let wait = u64::try_from(at.saturating_sub(processing_now())).unwrap_or(0);
        Some(Instant::now() + std::time::Duration::from_millis(wait))
    }

    fn dead_letter_stage(&self) -> Option<&'static str> {
        self.logic.dead_letter_stage()
    }

    fn on_processing_time(&mut self, _now: Instant, watermark: EventTime, out: &mut Emit<'_, L::Out>) {
        let PerKey { state, logic, .. } = self;
        state.fire_due_processing(processing_now(), |at, view| {
            logic.on_processing_timer(&mut KeyCx { view, out: out.reborrow(), watermark }, at)
        });
    }

    fn checkpoint(
        &mut self,
        store: &dyn CheckpointStore,
        epoch: Epoch,
        name: &str,
        global: (&[EventTime], EventTime),
    ) -> Result<Vec<FileEntry>> {
        self.state.checkpoint(store, epoch, name, &global)
    }

    fn restore(
        &mut self,
        store: &dyn CheckpointStore,
        files: &[FileEntry],
        mine: Range<u32>,
    ) -> Result<Vec<WatermarkSnapshot>> {
        self.state.restore(store, files, mine)
    }
}

/// Builds the keyed stateful step `id` (from [`Ctx::step_id`]): `input`'s
/// records go to the worker that owns their key's group and, there, to
/// `logic` with the key's state (a [`KeyedState`]). Everything else is as
/// in [`step`].
pub fn keyed_step<'s, D, K, L>(
    ctx: &Ctx<'s>,
    id: &str,
    input: StepInput<'s, D>,
    key: impl Fn(&D) -> K + 'static,
    logic: L,
) -> Result<StreamVec<'s, Epoch, Rec<L::Out>>>
where
    D: ExchangeData,
    K: Hash + Eq + Clone + Serialize + DeserializeOwned + 'static,
    L: KeyedLogic<K, D>,
{
    let groups = ctx.key_groups();
    // One key function for the route (on the sending worker) and the lookup.
    let key = std::rc::Rc::new(key);
    let route_key = key.clone();
    let logic = PerKey {
        state: KeyedState::new(groups),
        logic,
        key: move |d: &D| key(d),
        keys: Vec::new(),
        _records: PhantomData,
    };
    step(ctx, id, input, move |d: &D| groups.group_of(&route_key(d)), logic)
}

/// Builds the stateful step `id` (from [`Ctx::step_id`]): each of `input`'s
/// records goes to the worker that owns its key group (`group`, from the
/// step's [`KeyGroups`]) and, there, to `logic`. Its state is restored from
/// the checkpoint the run starts from (the groups this worker owns, whatever
/// worker count wrote them) and written at every checkpoint epoch; its output
/// rows are counted as `{id}.emitted`.
pub fn step<'s, D, L>(
    ctx: &Ctx<'s>,
    id: &str,
    input: StepInput<'s, D>,
    group: impl Fn(&D) -> u32 + 'static,
    logic: L,
) -> Result<StreamVec<'s, Epoch, Rec<L::Out>>>
where
    D: ExchangeData,
    L: StepLogic<D>,
{
    let (groups, peers) = (ctx.key_groups(), ctx.peers());
    let route = move |d: &D| groups.owner(group(d), peers) as u64;
    step_with(ctx, id, input, Exchange::new(route), logic)
}

/// [`step`] for records that are already on the worker that owns their key
/// group: the output of a step keyed by the same key (a table join's, say),
/// so they are not exchanged again. Records elsewhere would be state on a
/// worker that does not own its group: only a caller that knows how its
/// input was routed uses this (`Keyed::detect` after
/// `JoinTable::join_table_keyed`). Nothing crosses workers, so the records
/// need not be `ExchangeData`.
pub fn local_step<'s, D, L>(
    ctx: &Ctx<'s>,
    id: &str,
    input: StepInput<'s, D>,
    logic: L,
) -> Result<StreamVec<'s, Epoch, Rec<L::Out>>>
where
    D: 'static,
    L: StepLogic<D>,
{
    step_with(ctx, id, input, Pipeline, logic)
}

/// The step, its records brought to it by `pact`.
fn step_with<'s, D, L, P>(
    ctx: &Ctx<'s>,
    id: &str,
    input: StepInput<'s, D>,
    pact: P,
    mut logic: L,
) -> Result<StreamVec<'s, Epoch, Rec<L::Out>>>
where
    D: 'static,
    L: StepLogic<D>,
    P: ParallelizationContract<Epoch, Vec<D>>,
{
    let worker = ctx.worker();
    let peers = ctx.peers();
    let groups: KeyGroups = ctx.key_groups();
    let store = ctx.store();
    let failure = ctx.failure();
    let emitted_count = ctx.counter(&format!("{id}.emitted"));
    let id = id.to_string();
    let part_name = format!("{id}.w{worker}.part");

    // Without watermarks nothing moves the table (one partition that never
    // reports) until the input finishes.
    let mut watermarks = WatermarkTable::new(if input.watermarks.is_some() { input.partitions } else { 1 });
    let files = ctx.restored_state(&id);
    if let (false, Some(store)) = (files.is_empty(), store.as_ref()) {
        let globals = logic.restore(store.as_ref(), files, groups.groups_of(worker, peers))?;
        for g in &globals {
            watermarks.merge(g);
        }
        logic.restored(watermarks.current());
    }

    let mut builder = OperatorBuilder::new(format!("Keyed({id})"), ctx.scope());
    let mut records = builder.new_input(input.records, pact);
    let mut wms = input.watermarks.map(|w| builder.new_input(w, Pipeline));
    let (out, results) = builder.new_output::<Vec<Rec<L::Out>>>();
    let (part_out, parts) = builder.new_output::<Vec<Part>>();
    let mut out: VecOutput<Rec<L::Out>> = OutputBuilder::from(out);
    let mut part_out: VecOutput<Part> = OutputBuilder::from(part_out);
    // Output `DEAD_LETTER_PORT`, when the logic sends dead letters.
    let mut dead_out = logic.dead_letter_stage().map(|stage| DeadLetterOutput::new(&mut builder, ctx, stage));
    let mut driver: EpochDriver<Input<D>> = EpochDriver::new(ctx.start_epoch(), ctx.schedule());
    let activator = ctx.scope().activator_for(builder.operator_info().address);

    builder.build(move |caps| {
        let mut caps = Some(caps);
        let mut emitted: Vec<Rec<L::Out>> = Vec::new();
        let mut dead: Vec<DeadLetter> = Vec::new();
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
            let mut run = || -> Result<()> {
                for step in driver.advance(f) {
                    let epoch = step.epoch;
                    {
                        let cap = held[0].delayed(&epoch);
                        let mut session = out_h.session(&cap);
                        emitting(
                            &mut emitted,
                            &mut dead,
                            &emitted_count,
                            |rows| session.give_iterator(rows),
                            |emit| {
                                let mut updates = Vec::new();
                                for input in data_then_watermarks(step.data) {
                                    match input {
                                        Input::Data(recs) => logic.on_records(recs, watermarks.current(), emit),
                                        Input::Watermarks(u) => updates.extend(u),
                                    }
                                }
                                // All of an epoch's updates at once (see `WatermarkTable`).
                                if let Some(wm) = watermarks.apply(&updates) {
                                    logic.on_watermark(wm, emit);
                                }
                            },
                        );
                    }
                    let cap = || held.get(DEAD_LETTER_PORT).map(|c| c.delayed(&epoch));
                    send_dead_letters(&id, &mut dead, dead_out.as_mut(), cap)?;
                    if step.checkpoint
                        && let Some(store) = &store
                    {
                        let files = logic.checkpoint(store.as_ref(), epoch, &part_name, watermarks.snapshot())?;
                        let cap = held[1].delayed(&epoch);
                        part_h.session(&cap).give_iterator(files.into_iter().map(|file| Part {
                            epoch,
                            worker,
                            body: PartBody::State { operator: id.clone(), file },
                        }));
                    }
                }
                if f.is_some()
                    && let Some(deadline) = logic.next_deadline()
                {
                    let now = Instant::now();
                    if deadline <= now {
                        let mut session = out_h.session(&held[0]);
                        emitting(
                            &mut emitted,
                            &mut dead,
                            &emitted_count,
                            |rows| session.give_iterator(rows),
                            |emit| logic.on_processing_time(now, watermarks.current(), emit),
                        );
                        send_dead_letters(&id, &mut dead, dead_out.as_mut(), || held.get(DEAD_LETTER_PORT).cloned())?;
                    }
                    if let Some(next) = logic.next_deadline() {
                        activator.activate_after(next.saturating_duration_since(Instant::now()));
                    }
                }
                if f.is_none() {
                    // Input finished: everything fires, then the final snapshot.
                    let at = *held[0].time();
                    watermarks.finish();
                    {
                        let mut session = out_h.session(&held[0]);
                        emitting(
                            &mut emitted,
                            &mut dead,
                            &emitted_count,
                            |rows| session.give_iterator(rows),
                            |emit| logic.on_watermark(EventTime::MAX, emit),
                        );
                    }
                    send_dead_letters(&id, &mut dead, dead_out.as_mut(), || held.get(DEAD_LETTER_PORT).cloned())?;
                    if let Some(store) = &store {
                        let name = format!("{part_name}.final");
                        let files = logic.checkpoint(store.as_ref(), at, &name, watermarks.snapshot())?;
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
