//! Tumbling and sliding windows on the keyed-operator kit, as panes.
//!
//! A record updates the pane of `gcd(size, slide)` that holds it; a key's
//! state is its panes (start, accumulator) in start order, and it has a timer
//! at the end of the next window to fire. When it fires, the window's panes
//! are merged into its result, the panes no later window holds are dropped,
//! and the timer moves to the next window that holds a pane. A tumbling window
//! is the case `slide == size`: one pane per window, moved into its result.

use std::marker::PhantomData;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use weir_core::record::EventTime;
use weir_core::state::{KeyCx, KeyedLogic};

use super::operator::Partial;
use super::{WindowResult, WindowSpec};
use crate::aggregate::Aggregator;

/// Window arithmetic in i128, clamped to the event-time range: windows at
/// the ends of time are cut off there, never wrapped.
fn clamp(t: i128) -> EventTime {
    t.clamp(i128::from(EventTime::MIN), i128::from(EventTime::MAX)) as EventTime
}

/// The largest multiple of `m` at or below `t`.
fn floor_to(t: i128, m: i64) -> i128 {
    t - t.rem_euclid(i128::from(m))
}

/// The start of the first window (a multiple of `slide`) that ends after `t`.
fn first_start_ending_after(size: i64, slide: i64, t: EventTime) -> EventTime {
    clamp(floor_to(i128::from(t) - i128::from(size), slide) + i128::from(slide))
}

/// The end of the window starting at `start`.
fn end_of(size: i64, start: EventTime) -> EventTime {
    clamp(i128::from(start) + i128::from(size))
}

/// The end of the last window that holds the pane starting at `pane`.
pub(super) fn last_end(spec: &WindowSpec, pane: EventTime) -> EventTime {
    let Some((size, slide, _)) = spec.panes() else { return EventTime::MAX };
    end_of(size, clamp(floor_to(i128::from(pane), slide)))
}

/// A key's panes (start, accumulator) in start order, and the start of its
/// first window that has not fired.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Panes<Acc> {
    next: EventTime,
    panes: Vec<(EventTime, Acc)>,
}

impl<Acc> Default for Panes<Acc> {
    fn default() -> Self {
        Panes { next: EventTime::MIN, panes: Vec::new() }
    }
}

/// The window stage of tumbling and sliding windows.
pub(super) struct PaneLogic<T, A> {
    pub agg: Rc<A>,
    pub size: i64,
    pub slide: i64,
    pub _records: PhantomData<fn(&T)>,
}

impl<K, T, A> KeyedLogic<K, Partial<K, A::Acc>> for PaneLogic<T, A>
where
    K: Clone + 'static,
    T: 'static,
    A: Aggregator<T>,
{
    type State = Panes<A::Acc>;
    type Out = WindowResult<K, A::Out>;

    fn on_record(&mut self, cx: &mut KeyCx<'_, '_, K, Self::State, Self::Out>, p: Partial<K, A::Acc>) {
        let (size, slide) = (self.size, self.slide);
        let wm = cx.watermark();
        let state = cx.state();
        match state.panes.binary_search_by_key(&p.start, |w| w.0) {
            Ok(i) => self.agg.merge(&mut state.panes[i].1, &p.acc),
            Err(i) => {
                state.panes.insert(i, (p.start, p.acc));
                // Its first window that has not fired: one that ends after the pane
                // and after the watermark (the combiner let the pane through, so its
                // last window has not fired), and not before the key's next window.
                let start = first_start_ending_after(size, slide, p.start.max(wm)).max(state.next);
                cx.set_timer(end_of(size, start));
            }
        }
    }

    fn on_timer(&mut self, cx: &mut KeyCx<'_, '_, K, Self::State, Self::Out>, time: EventTime) {
        let (size, slide) = (self.size, self.slide);
        let mut state = std::mem::take(cx.state());
        // Every window up to `time` that holds a pane, in start order.
        while let Some(&(first, _)) = state.panes.first() {
            let start = first_start_ending_after(size, slide, first).max(state.next);
            let end = end_of(size, start);
            if end > time {
                cx.set_timer(end);
                break;
            }
            // Panes no later window holds are moved into the result; the others are merged by reference.
            let next = clamp(i128::from(start) + i128::from(slide));
            let done = state.panes.partition_point(|w| w.0 < next);
            let mut acc: Option<A::Acc> = None;
            for (s, a) in state.panes.drain(..done) {
                if s < start {
                    continue;
                }
                match acc.as_mut() {
                    None => acc = Some(a),
                    Some(x) => self.agg.merge(x, &a),
                }
            }
            for (_, a) in state.panes.iter().take_while(|w| w.0 < end) {
                match acc.as_mut() {
                    None => acc = Some(a.clone()),
                    Some(x) => self.agg.merge(x, a),
                }
            }
            if let Some(acc) = acc {
                let value = WindowResult { key: cx.key().clone(), start, end, value: self.agg.finish(&acc) };
                cx.emit(end.saturating_sub(1), value);
            }
            if next == start {
                // The end of time: nothing can follow.
                state.panes.clear();
            }
            state.next = next;
        }
        if state.panes.is_empty() {
            cx.remove();
        } else {
            *cx.state() = state;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_ends_of_a_pane() {
        // 60 s windows every 20 s: the pane [100 s, 120 s) is in [60, 120), [80, 140), [100, 160).
        assert_eq!(first_start_ending_after(60_000, 20_000, 100_000), 60_000);
        let spec = WindowSpec::Sliding(super::super::Sliding { size: 60_000, slide: 20_000 });
        assert_eq!(last_end(&spec, 100_000), 160_000);
        // Tumbling: one window.
        assert_eq!(first_start_ending_after(60_000, 60_000, 120_000), 120_000);
        // Negative times align too.
        assert_eq!(first_start_ending_after(60_000, 20_000, -20_000), -60_000);
        // The ends of time clamp.
        assert_eq!(first_start_ending_after(60_000, 60_000, EventTime::MIN), EventTime::MIN);
        assert_eq!(end_of(60_000, EventTime::MAX - 5), EventTime::MAX);
    }
}
