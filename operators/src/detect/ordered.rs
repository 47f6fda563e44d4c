//! The detect step's logic: readings wait until the watermark passes them,
//! then go to the [`Detector`] in order of event time, partition and offset
//! (as count windows do), so its scores do not depend on how records were
//! batched or which worker read them.
//!
//! The waiting readings of every key are one list, sorted once per
//! watermark advance, so a reading costs one sort step and one look-up of
//! its key's state (no timer per reading). At a checkpoint the waiting
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
use weir_core::state::{KeyView, KeyedState, StepLogic, WatermarkSnapshot};
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

/// Runs a [`Detector`] over records `T` per key.
pub(crate) struct DetectLogic<K, T, D: Detector<T>> {
    detector: Rc<D>,
    state: KeyedState<K, KeyState<D::Value, D::State>>,
    /// Every key's readings the watermark has not passed, in arrival order.
    waiting: Vec<Sample<K, D::Value>>,
    _records: PhantomData<fn(&T)>,
}

impl<K, T, D> DetectLogic<K, T, D>
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned + 'static,
    D: Detector<T>,
{
    pub fn new(detector: Rc<D>, groups: KeyGroups) -> Self {
        DetectLogic { detector, state: KeyedState::new(groups), waiting: Vec::new(), _records: PhantomData }
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

/// The row of a verdict.
fn row<K: Clone, V: Clone>(key: &K, time: EventTime, value: V, v: &Verdict, name: &str) -> Rec<Scored<K, V>> {
    let alert = v.alert.then(|| {
        Box::new(Alert {
            key: key.clone(),
            event_time: time,
            value: value.clone(),
            score: v.score,
            detector: name.to_string(),
            reason: v.reason(),
        })
    });
    Rec {
        meta: Meta::derived(time),
        value: Scored { key: key.clone(), event_time: time, value, score: v.score, alert },
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

impl<K, T, D> StepLogic<Sample<K, D::Value>> for DetectLogic<K, T, D>
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned + 'static,
    T: 'static,
    D: Detector<T>,
{
    type Out = Scored<K, D::Out>;

    fn on_records(&mut self, records: Vec<Sample<K, D::Value>>, wm: EventTime, out: &mut Vec<Rec<Self::Out>>) {
        let d = &*self.detector;
        self.waiting.reserve(records.len());
        for s in records {
            if !d.valid(&s.value) || (wm != EventTime::MIN && s.time < wm) {
                // Skipped (a bad value) or behind the watermark: score 0, the state as it was.
                out.push(row(&s.key, s.time, d.out(&s.value), &Verdict::NONE, d.name()));
            } else {
                self.waiting.push(s);
            }
        }
    }

    fn on_watermark(&mut self, wm: EventTime, out: &mut Vec<Rec<Self::Out>>) {
        let d = &*self.detector;
        // The end of a bounded input: every waiting reading is scored, no silence fires.
        let end = wm == EventTime::MAX;
        // The readings the watermark passed, in order, off the front. Arrivals are runs
        // already in order (a partition's, a worker's batch), which the stable sort merges.
        self.waiting.sort_by_key(|s| (s.time, s.pos.0, s.pos.1));
        let ready = if end { self.waiting.len() } else { self.waiting.partition_point(|s| s.time < wm) };
        for s in self.waiting.drain(..ready) {
            let Sample { key, time: t, value, .. } = s;
            self.state.with_key(key, |view| {
                let (key, state) = view.key_value();
                let detector = &mut state.detector;
                if let Some((at, v, shown)) = d.due(detector, t) {
                    out.push(row(key, at, shown, &v, d.name()));
                }
                let v = d.update(detector, t, &value);
                let next = if end { None } else { d.next_due(detector) };
                out.push(row(key, t, d.out(&value), &v, d.name()));
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
                let due = d.due(&mut state.detector, wm);
                let next = d.next_due(&state.detector);
                if let Some((at, v, shown)) = due {
                    out.push(row(key, at, shown, &v, d.name()));
                }
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
