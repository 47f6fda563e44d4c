//! The detect step's logic: readings wait until the watermark passes them,
//! then go to the [`Detector`] in order of event time, partition and offset
//! (as count windows do), so its scores do not depend on how records were
//! batched or which worker read them.
//!
//! The waiting readings of every key are one list; at each watermark
//! advance the ones it passed are taken out (the others keep their place)
//! and sorted, so a reading is sorted once and costs one look-up of its
//! key's state (no timer per reading). At a checkpoint the waiting
//! readings are written into their keys' states ([`KeyState::waiting`]), by
//! key group like the rest, and taken out again; a restore takes them out
//! too. The only timers are a detector's due alerts (silence), at
//! [`Detector::next_due`].

use std::marker::PhantomData;
use std::ops::Range;
use std::rc::Rc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::hash::Hash;
use weir_core::Result;
use weir_core::checkpoint::{CheckpointStore, FileEntry};
use weir_core::keygroup::KeyGroups;
use weir_core::record::{EventTime, Meta, Offset, PartitionId, Rec};
use weir_core::state::{Emit, KeyView, KeyedState, PREFETCH_AHEAD, StepLogic, WatermarkSnapshot};
use weir_core::time::Epoch;

use super::{Alert, Detector, Scored, Verdict};

/// A reading as the detect step gets it: key, event time, position and value.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Sample<K, V> {
    pub key: K,
    pub time: EventTime,
    pub pos: (PartitionId, Offset),
    pub value: V,
}

/// A key's state: its readings the watermark has not passed (only while a
/// checkpoint is written, and as restored), and the detector's state.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct KeyState<V, S> {
    waiting: Vec<(EventTime, PartitionId, Offset, V)>,
    detector: S,
}

impl<V, S: Default> Default for KeyState<V, S> {
    fn default() -> Self {
        KeyState { waiting: Vec::new(), detector: S::default() }
    }
}

/// How many readings ahead the detect step looks up a key's state and
/// prefetches the detector's ([`Detector::prefetch`]); the table entry is
/// prefetched twice as far ahead.
const AHEAD: usize = PREFETCH_AHEAD;

/// Runs a [`Detector`] over records `T` per key, its verdicts turned into rows by `R`.
/// The step's input records become [`Sample`]s by `S`: the identity when
/// samples were made before an exchange, or the making itself when the
/// records are already on their key's worker (one operator fewer).
pub(crate) struct DetectLogic<K, T, D: Detector<T>, R, S> {
    detector: Rc<D>,
    sample: S,
    state: KeyedState<K, KeyState<D::Value, D::State>>,
    /// Every key's readings the watermark has not passed, in arrival order.
    waiting: Vec<Sample<K, D::Value>>,
    /// The readings a watermark advance passed, while they are scored (empty between calls).
    ready: Vec<Sample<K, D::Value>>,
    _records: PhantomData<fn(&T, R)>,
}

impl<K, T, D, R, S> DetectLogic<K, T, D, R, S>
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned + 'static,
    D: Detector<T>,
{
    pub fn new(detector: Rc<D>, groups: KeyGroups, sample: S) -> Self {
        DetectLogic {
            detector,
            sample,
            state: KeyedState::new(groups),
            waiting: Vec::new(),
            ready: Vec::new(),
            _records: PhantomData,
        }
    }

    /// Moves `key`'s readings from its state to the waiting list.
    fn take_waiting(&mut self, key: K) {
        let waiting = self.state.with_key(key.clone(), |view| std::mem::take(&mut view.value().waiting));
        self.waiting.extend(waiting.into_iter().map(|(time, p, o, value)| Sample {
            key: key.clone(),
            time,
            pos: (p, o),
            value,
        }));
    }
}

/// How the detect step turns a key's verdicts into rows: one [`Scored`] row
/// per reading ([`ScoredRows`], [`Keyed::detect`](crate::window::Keyed::detect))
/// or only the alerts, each member's of a [`Panel`](super::Panel)
/// ([`AlertRows`], [`Keyed::detect_alerts`](crate::window::Keyed::detect_alerts)).
pub(crate) trait Rows<K, T, D: Detector<T>>: 'static {
    /// The rows.
    type Row: 'static;
    /// The row of a reading that is not scored (a bad value, or behind the watermark).
    fn skipped(d: &D, key: &K, time: EventTime, value: &D::Value, out: &mut Emit<'_, Self::Row>);
    /// Scores `key`'s reading at `time`.
    fn update(d: &D, key: &K, state: &mut D::State, time: EventTime, value: &D::Value, out: &mut Emit<'_, Self::Row>);
    /// `key`'s due alerts at or before `upto`.
    fn due(d: &D, key: &K, state: &mut D::State, upto: EventTime, out: &mut Emit<'_, Self::Row>);
}

/// One [`Scored`] row per reading.
pub(crate) struct ScoredRows;

/// Only the alerts.
pub(crate) struct AlertRows;

/// The alert of a verdict.
fn alert<K: Clone, V>(key: &K, time: EventTime, value: V, v: &Verdict, name: &str) -> Alert<K, V> {
    Alert { key: key.clone(), event_time: time, value, score: v.score, detector: name.to_string(), reason: v.reason() }
}

/// The row of a verdict.
fn scored<K: Clone, V: Clone>(key: &K, time: EventTime, value: V, v: &Verdict, name: &str) -> Rec<Scored<K, V>> {
    let alert = v.alert.then(|| Box::new(alert(key, time, value.clone(), v, name)));
    Rec {
        meta: Meta::derived(time),
        value: Scored { key: key.clone(), event_time: time, value, score: v.score, alert },
    }
}

impl<K: Clone + 'static, T, D: Detector<T>> Rows<K, T, D> for ScoredRows {
    type Row = Scored<K, D::Out>;

    fn skipped(d: &D, key: &K, time: EventTime, value: &D::Value, out: &mut Emit<'_, Self::Row>) {
        out.push(scored(key, time, d.out(value), &Verdict::NONE, d.name()));
    }

    fn update(d: &D, key: &K, state: &mut D::State, time: EventTime, value: &D::Value, out: &mut Emit<'_, Self::Row>) {
        let v = d.update(state, time, value);
        out.push(scored(key, time, d.out(value), &v, d.name()));
    }

    fn due(d: &D, key: &K, state: &mut D::State, upto: EventTime, out: &mut Emit<'_, Self::Row>) {
        if let Some((at, v, shown)) = d.due(state, upto) {
            out.push(scored(key, at, shown, &v, d.name()));
        }
    }
}

impl<K: Clone + 'static, T, D: Detector<T>> Rows<K, T, D> for AlertRows {
    type Row = Alert<K, D::Out>;

    fn skipped(_: &D, _: &K, _: EventTime, _: &D::Value, _: &mut Emit<'_, Self::Row>) {}

    fn update(d: &D, key: &K, state: &mut D::State, time: EventTime, value: &D::Value, out: &mut Emit<'_, Self::Row>) {
        d.update_each(state, time, value, &mut |name, v| {
            if v.alert {
                out.push(Rec { meta: Meta::derived(time), value: alert(key, time, d.out(value), &v, name) });
            }
        });
    }

    fn due(d: &D, key: &K, state: &mut D::State, upto: EventTime, out: &mut Emit<'_, Self::Row>) {
        d.due_each(state, upto, &mut |name, at, v, shown| {
            if v.alert {
                out.push(Rec { meta: Meta::derived(at), value: alert(key, at, shown, &v, name) });
            }
        });
    }
}

/// Moves a key's due-alert timer to `next` (the detector's [`Detector::next_due`]).
fn retime<K: Clone, V>(view: &mut KeyView<'_, K, V>, next: Option<EventTime>) {
    if view.timers().first().copied() == next && view.timers().len() <= 1 {
        return;
    }
    while let Some(&t) = view.timers().first() {
        view.delete_timer(t);
    }
    if let Some(t) = next {
        view.set_timer(t);
    }
}

impl<K, T, D, R, I, S> StepLogic<I> for DetectLogic<K, T, D, R, S>
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned + 'static,
    T: 'static,
    D: Detector<T>,
    R: Rows<K, T, D>,
    S: Fn(I) -> Sample<K, D::Value> + 'static,
{
    type Out = R::Row;

    fn on_records(&mut self, records: Vec<I>, wm: EventTime, out: &mut Emit<'_, Self::Out>) {
        let d = &*self.detector;
        self.waiting.reserve(records.len());
        for s in records.into_iter().map(&self.sample) {
            if !d.valid(&s.value) || (wm != EventTime::MIN && s.time < wm) {
                // Skipped (a bad value) or behind the watermark: score 0, the state as it was.
                R::skipped(d, &s.key, s.time, &s.value, out);
            } else {
                self.waiting.push(s);
            }
        }
    }

    fn on_watermark(&mut self, wm: EventTime, out: &mut Emit<'_, Self::Out>) {
        let d = &*self.detector;
        // The end of a bounded input: every waiting reading is scored, no silence fires.
        let end = wm == EventTime::MAX;
        // The readings the watermark passed, taken out in arrival order (the rest stay, in
        // theirs), then sorted: only they are, once each. Arrivals are runs already in order
        // (a partition's, a worker's batch), which the stable sort merges.
        if end {
            self.ready.append(&mut self.waiting);
        } else {
            self.ready.extend(self.waiting.extract_if(.., |s| s.time < wm));
        }
        self.ready.sort_by_key(|s| (s.time, s.pos.0, s.pos.1));
        let mut ready = self.ready.drain(..);
        while let Some(s) = ready.next() {
            // Prefetched ahead: the table entry of the reading `2 * AHEAD` on, then (the
            // entry cached by now) what the detector reads of the one `AHEAD` on.
            let rest = ready.as_slice();
            if let Some(far) = rest.get(2 * AHEAD - 1) {
                self.state.prefetch(&far.key);
            }
            if let Some(ahead) = rest.get(AHEAD - 1)
                && let Some(state) = self.state.get(&ahead.key)
            {
                d.prefetch(&state.detector);
            }
            let Sample { key, time: t, value, .. } = s;
            self.state.with_key(key, |view| {
                let (key, state) = view.key_value();
                let detector = &mut state.detector;
                R::due(d, key, detector, t, out);
                R::update(d, key, detector, t, &value, out);
                let next = if end { None } else { d.next_due(detector) };
                // A due alert only moves later as readings come (a silence), so a timer already
                // set at or before `next` stays: when it fires, `due` finds nothing yet and it is
                // set again at the then next due time. One timer per key per quiet stretch,
                // not one per reading.
                if let Some(n) = next
                    && view.timers().iter().all(|&t| t > n)
                {
                    retime(view, next);
                }
            });
        }
        if !end {
            self.state.fire_due(wm, |_, view| {
                let (key, state) = view.key_value();
                R::due(d, key, &mut state.detector, wm, out);
                let next = d.next_due(&state.detector);
                retime(view, next);
            });
        }
    }

    fn checkpoint(
        &mut self,
        store: &dyn CheckpointStore,
        epoch: Epoch,
        name: &str,
        global: (&[EventTime], EventTime),
    ) -> Result<Vec<FileEntry>> {
        // The waiting readings go into their keys' states for the snapshot, then back out.
        let waiting = std::mem::take(&mut self.waiting);
        let mut keys = Vec::with_capacity(waiting.len());
        for s in waiting {
            keys.push(s.key.clone());
            self.state.with_key(s.key, |view| view.value().waiting.push((s.time, s.pos.0, s.pos.1, s.value)));
        }
        let files = self.state.checkpoint(store, epoch, name, &global);
        for key in keys {
            self.take_waiting(key);
        }
        files
    }

    fn restore(
        &mut self,
        store: &dyn CheckpointStore,
        files: &[FileEntry],
        mine: Range<u32>,
    ) -> Result<Vec<WatermarkSnapshot>> {
        let globals = self.state.restore(store, files, mine)?;
        let keys: Vec<K> = self.state.iter().filter(|(_, s)| !s.waiting.is_empty()).map(|(k, _)| k.clone()).collect();
        for key in keys {
            // A checkpoint may hold timers of readings (at `time + 1`, as an earlier
            // version kept them): the due-alert timer, if any, is set again from the detector.
            let d = &*self.detector;
            self.state.with_key(key.clone(), |view| {
                let next = d.next_due(&view.value().detector);
                retime(view, next);
            });
            self.take_waiting(key);
        }
        Ok(globals)
    }
}
