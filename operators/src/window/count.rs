//! Count windows on the keyed-operator kit.
//!
//! A key's state is its records not yet counted (time, partition, offset,
//! accumulator) and its open window (how many records, first and last time,
//! accumulator). Records wait until the watermark passes their time (no
//! record before them is still expected), then are counted in order of time,
//! partition and offset, so the windows do not depend on how records were
//! batched or which worker read them. The key has one timer, just after its
//! earliest waiting record.

use std::marker::PhantomData;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use weir_core::record::{EventTime, Offset, PartitionId};
use weir_core::state::{KeyCx, KeyedLogic};

use super::{Partial, WindowResult};
use crate::aggregate::Aggregator;

/// A record waiting to be counted: time, partition, offset, accumulator.
type Waiting<Acc> = (EventTime, PartitionId, Offset, Acc);

/// A key's open count window.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Open<Acc> {
    records: u64,
    first: EventTime,
    last: EventTime,
    acc: Acc,
}

/// A key's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Counted<Acc> {
    waiting: Vec<Waiting<Acc>>,
    open: Option<Open<Acc>>,
}

impl<Acc> Default for Counted<Acc> {
    fn default() -> Self {
        Counted { waiting: Vec::new(), open: None }
    }
}

/// The window stage of count windows.
pub(super) struct CountLogic<T, A> {
    pub agg: Rc<A>,
    pub size: u64,
    pub _records: PhantomData<fn(&T)>,
}

/// The time of the timer for a record at `t`: once the watermark passes `t`.
fn due(t: EventTime) -> EventTime {
    t.saturating_add(1)
}

impl<K, T, A> KeyedLogic<K, Partial<K, A::Acc, (PartitionId, Offset)>> for CountLogic<T, A>
where
    K: Clone + 'static,
    T: 'static,
    A: Aggregator<T>,
{
    type State = Counted<A::Acc>;
    type Out = WindowResult<K, A::Out>;

    fn on_record(
        &mut self,
        cx: &mut KeyCx<'_, '_, K, Self::State, Self::Out>,
        p: Partial<K, A::Acc, (PartitionId, Offset)>,
    ) {
        let t = p.start;
        let earliest = cx.state().waiting.iter().map(|w| w.0).min();
        cx.state().waiting.push((t, p.pos.0, p.pos.1, p.acc));
        match earliest {
            Some(e) if e <= t => {}
            Some(e) => {
                cx.delete_timer(due(e));
                cx.set_timer(due(t));
            }
            None => cx.set_timer(due(t)),
        }
    }

    fn on_timer(&mut self, cx: &mut KeyCx<'_, '_, K, Self::State, Self::Out>, _: EventTime) {
        let wm = cx.watermark();
        let mut state = std::mem::take(cx.state());
        // The records the watermark passed, in order (all of them at the end of input).
        let (mut ready, waiting): (Vec<_>, Vec<_>) =
            state.waiting.into_iter().partition(|w| w.0 < wm || wm == EventTime::MAX);
        state.waiting = waiting;
        ready.sort_unstable_by_key(|w| (w.0, w.1, w.2));
        for (t, _, _, acc) in ready {
            let open = match state.open.as_mut() {
                Some(open) => {
                    self.agg.merge(&mut open.acc, &acc);
                    open.records += 1;
                    open.last = t;
                    open
                }
                None => state.open.insert(Open { records: 1, first: t, last: t, acc }),
            };
            if open.records >= self.size {
                let (start, end) = (open.first, open.last.saturating_add(1));
                let value = WindowResult {
                    key: cx.key().clone(),
                    start,
                    end,
                    value: self.agg.finish(&open.acc),
                    partial: false,
                    diff: 1,
                };
                cx.emit(open.last, value);
                state.open = None;
            }
        }
        if let Some(e) = state.waiting.iter().map(|w| w.0).min() {
            cx.set_timer(due(e));
        }
        if state.waiting.is_empty() && state.open.is_none() {
            cx.remove();
        } else {
            *cx.state() = state;
        }
    }
}
