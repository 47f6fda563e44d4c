//! Session windows on the keyed-operator kit.
//!
//! A key's state is its open sessions (first and last event time,
//! accumulator) in start order, disjoint and at least `gap` apart; each has a
//! timer at `last + gap`. A record merges with every session it is less than
//! `gap` from (so an out-of-order record can bridge two), and a session fires
//! when the watermark reaches `last + gap`: no record that could extend it is
//! still expected (the combiner makes records behind the watermark late).

use std::marker::PhantomData;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use weir_core::record::EventTime;
use weir_core::state::{KeyCx, KeyedLogic};

use super::{Partial, WindowResult};
use crate::aggregate::Aggregator;

/// One open session of a key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Open<Acc> {
    first: EventTime,
    last: EventTime,
    acc: Acc,
}

/// The window stage of session windows.
pub(super) struct SessionLogic<T, A> {
    pub agg: Rc<A>,
    pub gap: i64,
    pub _records: PhantomData<fn(&T)>,
}

impl<K, T, A> KeyedLogic<K, Partial<K, A::Acc>> for SessionLogic<T, A>
where
    K: Clone + 'static,
    T: 'static,
    A: Aggregator<T>,
{
    type State = Vec<Open<A::Acc>>;
    type Out = WindowResult<K, A::Out>;

    fn on_record(&mut self, cx: &mut KeyCx<'_, '_, K, Self::State, Self::Out>, p: Partial<K, A::Acc>) {
        let gap = self.gap;
        let mut sessions = std::mem::take(cx.state());
        let mut merged = Open { first: p.start, last: p.start, acc: p.acc };
        // Sessions are disjoint and sorted, so one pass finds every one the record
        // bridges; they are merged in place, with no allocation per record.
        sessions.retain(|s| {
            let apart = s.first.max(merged.first).saturating_sub(s.last.min(merged.last));
            if apart >= gap {
                return true;
            }
            cx.delete_timer(s.last.saturating_add(gap));
            merged.first = merged.first.min(s.first);
            merged.last = merged.last.max(s.last);
            self.agg.merge(&mut merged.acc, &s.acc);
            false
        });
        cx.set_timer(merged.last.saturating_add(gap));
        let at = sessions.partition_point(|s| s.first < merged.first);
        sessions.insert(at, merged);
        *cx.state() = sessions;
    }

    fn on_timer(&mut self, cx: &mut KeyCx<'_, '_, K, Self::State, Self::Out>, time: EventTime) {
        let gap = self.gap;
        let mut sessions = std::mem::take(cx.state());
        let mut i = 0;
        while i < sessions.len() {
            let end = sessions[i].last.saturating_add(gap);
            if end <= time {
                let s = sessions.remove(i);
                let value = WindowResult {
                    key: cx.key().clone(),
                    start: s.first,
                    end,
                    value: self.agg.finish(&s.acc),
                    partial: false,
                    diff: 1,
                };
                cx.emit(end.saturating_sub(1), value);
            } else {
                i += 1;
            }
        }
        if sessions.is_empty() {
            cx.remove();
        } else {
            *cx.state() = sessions;
        }
    }
}
