//! The detect step's keyed logic: a key's readings wait until the watermark
//! passes them, then go to the [`Detector`] in order of event time,
//! partition and offset (as count windows do), so its scores do not depend
//! on how records were batched or which worker read them. A key has at most
//! two timers: just after its earliest waiting reading, and the detector's
//! next due alert (a silence).

use std::marker::PhantomData;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use weir_core::record::{EventTime, Offset, PartitionId};
use weir_core::state::{KeyCx, KeyedLogic};

use super::{Alert, Detector, Scored, Verdict};

/// A reading as the detect step gets it: key, event time, position and value.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Sample<K, V> {
    pub key: K,
    pub time: EventTime,
    pub pos: (PartitionId, Offset),
    pub value: V,
}

/// A key's state: its readings the watermark has not passed, and the detector's state.
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
pub(crate) struct DetectLogic<T, D> {
    detector: Rc<D>,
    _records: PhantomData<fn(&T)>,
}

impl<T, D> DetectLogic<T, D> {
    pub fn new(detector: Rc<D>) -> Self {
        DetectLogic { detector, _records: PhantomData }
    }
}

/// The time of the timer for a reading at `t`: once the watermark passes `t`.
fn due(t: EventTime) -> EventTime {
    t.saturating_add(1)
}

type Cx<'c, 'v, K, T, D> = KeyCx<
    'c,
    'v,
    K,
    KeyState<<D as Detector<T>>::Value, <D as Detector<T>>::State>,
    Scored<K, <D as Detector<T>>::Out>,
>;

/// The row of a verdict.
fn row<K: Clone, V: Clone>(key: &K, time: EventTime, value: V, v: &Verdict, name: &str) -> Scored<K, V> {
    let alert = v.alert.then(|| Alert {
        key: key.clone(),
        event_time: time,
        value: value.clone(),
        score: v.score,
        detector: name.to_string(),
        reason: v.reason(),
    });
    Scored { key: key.clone(), event_time: time, value, score: v.score, alert }
}

impl<K, T, D> KeyedLogic<K, Sample<K, D::Value>> for DetectLogic<T, D>
where
    K: Clone + 'static,
    T: 'static,
    D: Detector<T>,
{
    type State = KeyState<D::Value, D::State>;
    type Out = Scored<K, D::Out>;

    fn on_record(&mut self, cx: &mut Cx<'_, '_, K, T, D>, s: Sample<K, D::Value>) {
        let d = &*self.detector;
        let wm = cx.watermark();
        if !d.valid(&s.value) || (wm != EventTime::MIN && s.time < wm) {
            // Skipped (a bad value) or behind the watermark: score 0, the state as it was.
            let r = row(cx.key(), s.time, d.out(&s.value), &Verdict::NONE, d.name());
            cx.emit(s.time, r);
            return;
        }
        let earliest = cx.state().waiting.iter().map(|w| w.0).min();
        cx.state().waiting.push((s.time, s.pos.0, s.pos.1, s.value));
        match earliest {
            Some(e) if e <= s.time => {}
            Some(e) => {
                cx.delete_timer(due(e));
                cx.set_timer(due(s.time));
            }
            None => cx.set_timer(due(s.time)),
        }
    }

    fn on_timer(&mut self, cx: &mut Cx<'_, '_, K, T, D>, _: EventTime) {
        let d = &*self.detector;
        let wm = cx.watermark();
        // The end of a bounded input: every waiting reading is scored, no silence fires.
        let end = wm == EventTime::MAX;
        let mut state = std::mem::take(cx.state());
        let KeyState { waiting, detector } = &mut state;
        // The readings the watermark passed, in order, off the front.
        waiting.sort_unstable_by_key(|w| (w.0, w.1, w.2));
        let ready = if end { waiting.len() } else { waiting.partition_point(|w| w.0 < wm) };
        for (t, _, _, value) in waiting.drain(..ready) {
            if let Some((at, v, out)) = d.due(detector, t) {
                let r = row(cx.key(), at, out, &v, d.name());
                cx.emit(at, r);
            }
            let v = d.update(detector, t, &value);
            let r = row(cx.key(), t, d.out(&value), &v, d.name());
            cx.emit(t, r);
        }
        if !end && let Some((at, v, out)) = d.due(detector, wm) {
            let r = row(cx.key(), at, out, &v, d.name());
            cx.emit(at, r);
        }
        while let Some(&t) = cx.timers().first() {
            cx.delete_timer(t);
        }
        if let Some(&(e, ..)) = waiting.first() {
            cx.set_timer(due(e));
        }
        if !end && let Some(at) = d.next_due(&state.detector) {
            cx.set_timer(at);
        }
        *cx.state() = state;
    }
}
