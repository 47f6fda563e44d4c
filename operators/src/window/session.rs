//! Session windows on the keyed-operator kit.
//!
//! A key's state is its sessions (first and last event time, accumulator,
//! whether it fired) in start order, disjoint and at least `gap` apart. An
//! open session has a timer at its end, `last + gap`. A record merges with
//! every session it is less than `gap` from (so an out-of-order record can
//! bridge two), and a session fires when the watermark reaches its end: no
//! record that could extend it is still expected (the combiner makes records
//! behind the watermark late).
//!
//! With allowed lateness `L` the combiner accepts records up to `L` behind
//! the watermark, and a fired session stays in the state (its timer moved to
//! `end + L`) so that such a record can still update it: every fired session
//! the record merges is retracted (its row again with diff -1), and the merged
//! session is emitted at once (+1) if its end is at or behind the watermark,
//! else it is open again and fires when the watermark reaches its end. A fired
//! session is dropped at `end + L`: no record it could merge with is accepted
//! after that (a record at `t >= watermark - L` is at least `gap` after the
//! session's last event).

use std::marker::PhantomData;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use weir_core::record::EventTime;
use weir_core::state::{KeyCx, KeyedLogic};

use super::{Partial, WindowResult};
use crate::aggregate::Aggregator;

/// One session of a key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Open<Acc> {
    first: EventTime,
    last: EventTime,
    acc: Acc,
    /// Whether its row was emitted (a fired session is kept only with allowed
    /// lateness; its accumulator is then exactly the emitted row's).
    fired: bool,
}

impl<Acc> Open<Acc> {
    /// The session's end (exclusive): a gap after its last event.
    fn end(&self, gap: i64) -> EventTime {
        self.last.saturating_add(gap)
    }

    /// When its timer is due: at its end while open, `lateness` later once fired (then it is dropped).
    fn deadline(&self, gap: i64, lateness: i64) -> EventTime {
        if self.fired { self.end(gap).saturating_add(lateness) } else { self.end(gap) }
    }
}

/// The window stage of session windows.
pub(super) struct SessionLogic<T, A> {
    pub agg: Rc<A>,
    pub gap: i64,
    /// Allowed lateness in ms (0: off, fired sessions are dropped).
    pub lateness: i64,
    pub _records: PhantomData<fn(&T)>,
}

impl<T, A: Aggregator<T>> SessionLogic<T, A> {
    /// The row of session `s` of `key`, with `diff`.
    fn row<K>(&self, key: K, s: &Open<A::Acc>, diff: i64) -> WindowResult<K, A::Out> {
        let end = s.end(self.gap);
        WindowResult { key, start: s.first, end, value: self.agg.finish(&s.acc), partial: false, diff }
    }
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
        let (gap, lateness) = (self.gap, self.lateness);
        let mut sessions = std::mem::take(cx.state());
        let mut merged = Open { first: p.start, last: p.start, acc: p.acc, fired: false };
        // Sessions are disjoint and sorted, so one pass finds every one the record
        // bridges; they are merged in place, with no allocation per record.
        sessions.retain(|s| {
            let apart = s.first.max(merged.first).saturating_sub(s.last.min(merged.last));
            if apart >= gap {
                return true;
            }
            cx.delete_timer(s.deadline(gap, lateness));
            if s.fired {
                // A late record (within the allowed lateness) changes a fired session: retract its row.
                let row = self.row(cx.key().clone(), s, -1);
                cx.emit(s.end(gap).saturating_sub(1), row);
            }
            merged.first = merged.first.min(s.first);
            merged.last = merged.last.max(s.last);
            self.agg.merge(&mut merged.acc, &s.acc);
            false
        });
        let end = merged.end(gap);
        if end <= cx.watermark() {
            // Only with allowed lateness: the merged session closed already, so
            // its row goes out now (the combiner accepts a record at most
            // `lateness` behind the watermark, so `end + lateness` is ahead of it).
            merged.fired = true;
            let row = self.row(cx.key().clone(), &merged, 1);
            cx.emit(end.saturating_sub(1), row);
        }
        cx.set_timer(merged.deadline(gap, lateness));
        let at = sessions.partition_point(|s| s.first < merged.first);
        sessions.insert(at, merged);
        if lateness > 0 {
            // An open session's end can be a fired one's deadline: the timer
            // deleted for a merged session may be another's too.
            for s in &sessions {
                cx.set_timer(s.deadline(gap, lateness));
            }
        }
        *cx.state() = sessions;
    }

    fn on_timer(&mut self, cx: &mut KeyCx<'_, '_, K, Self::State, Self::Out>, time: EventTime) {
        let (gap, lateness) = (self.gap, self.lateness);
        let mut sessions = std::mem::take(cx.state());
        let mut i = 0;
        while i < sessions.len() {
            let s = &mut sessions[i];
            let end = s.end(gap);
            if !s.fired && end <= time {
                let row = self.row(cx.key().clone(), s, 1);
                cx.emit(end.saturating_sub(1), row);
                if lateness > 0 {
                    // Kept for late records until the allowed lateness passes.
                    s.fired = true;
                    cx.set_timer(s.deadline(gap, lateness));
                    i += 1;
                } else {
                    sessions.remove(i);
                }
            } else if s.fired && s.deadline(gap, lateness) <= time {
                sessions.remove(i);
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
