//! Keyed event-time windows: tumbling, sliding and session.
//!
//! ```text
//! flow.key_by(|r| r.device.clone())
//!     .window(Tumbling::minutes(1))          // or Sliding::new(1 min, 10 s), Session::new(30 s)
//!     .aggregate((Count, Min(|r| r.temp), Max(|r| r.temp), Mean(|r| r.temp)))?
//! ```
//!
//! Records are shuffled by key group (so keyed state can be restored with any
//! worker count) and a window fires once the watermark (the minimum over all
//! input partitions) reaches its end; every window with at least one record
//! gives one [`WindowResult`] with its start and end.
//!
//! - [`Tumbling`]: `[start, start + size)` with `start = t - t.rem_euclid(size)`
//!   (aligned to the Unix epoch). A record whose window already fired is late:
//!   a dead letter.
//! - [`Sliding`]: windows of `size` starting at every multiple of `slide`
//!   (aligned to the Unix epoch), so each record is in `size / slide` of
//!   them. Pane-based: a record updates one pane of `gcd(size, slide)` and a
//!   window merges its panes when it fires, so a 60 s / 10 s window costs one
//!   accumulator update per record like a tumbling one. A record is late when
//!   every window holding it fired; one whose earlier windows fired counts in
//!   the later ones.
//! - [`CountWindow`]: per key, every `size` records, counted in event-time
//!   order (ties by partition, then offset, so the rows do not depend on
//!   timing): `start` = the first record's time, `end` = the last's + 1. A
//!   record behind the watermark is late. The last, incomplete window of a
//!   key is not emitted (it waits for more records, across restarts).
//! - [`Session`]: per key, a session ends when the key's next record is at
//!   least `gap` after its last; `start` = its first event time, `end` = its
//!   last + `gap`. Records that arrive out of order (within the watermark's
//!   bound) merge sessions they bridge. A record behind the watermark is late
//!   (with allowed lateness: more than the lateness behind it; it then
//!   retracts the fired sessions it merges, see [`Windowed::allowed_lateness`]).

mod count;
mod operator;
mod pane_map;
mod panes;
mod session;
#[cfg(test)]
mod tests;

use std::hash::Hash;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_core::Flow;
use weir_core::record::EventTime;

use crate::transform::Transform;

pub use operator::Windowed;

/// Tumbling (fixed, non-overlapping) windows of `size` milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tumbling {
    /// Window length in ms.
    pub size: i64,
}

impl Tumbling {
    /// Windows of `d` (at least 1 ms).
    pub fn new(d: Duration) -> Self {
        Tumbling { size: (d.as_millis() as i64).max(1) }
    }

    /// Windows of `n` minutes.
    pub fn minutes(n: u64) -> Self {
        Self::new(Duration::from_secs(60 * n))
    }

    /// Windows of `n` seconds.
    pub fn seconds(n: u64) -> Self {
        Self::new(Duration::from_secs(n))
    }

    /// Start of the window holding event time `t`.
    pub fn start_of(&self, t: EventTime) -> EventTime {
        // Saturates instead of overflowing for times within a window of `i64::MIN`.
        t.saturating_sub(t.rem_euclid(self.size))
    }

    /// End (exclusive) of the window starting at `start`, saturating at `i64::MAX`.
    pub fn end_of(&self, start: EventTime) -> EventTime {
        start.saturating_add(self.size)
    }
}

/// Sliding windows of `size` ms starting at every multiple of `slide` ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sliding {
    /// Window length in ms.
    pub size: i64,
    /// Distance between window starts in ms (at most `size`).
    pub slide: i64,
}

impl Sliding {
    /// Windows of `size`, one starting every `slide` (each at least 1 ms;
    /// `slide <= size` is checked when the window is built).
    pub fn new(size: Duration, slide: Duration) -> Self {
        Sliding { size: (size.as_millis() as i64).max(1), slide: (slide.as_millis() as i64).max(1) }
    }

    /// The pane length: the largest length that divides both size and slide.
    pub fn pane(&self) -> i64 {
        gcd(self.size, self.slide)
    }
}

/// Session windows: a key's session ends when its next record is at least `gap` ms after its last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    /// The inactivity gap in ms.
    pub gap: i64,
}

impl Session {
    /// Sessions separated by `gap` of inactivity (at least 1 ms).
    pub fn new(gap: Duration) -> Self {
        Session { gap: (gap.as_millis() as i64).max(1) }
    }
}

/// Count windows: every `size` records of a key, in event-time order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CountWindow {
    /// Records per window (at least 1).
    pub size: u64,
}

impl CountWindow {
    /// Windows of `size` records (at least 1).
    pub fn new(size: u64) -> Self {
        CountWindow { size: size.max(1) }
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    let (mut a, mut b) = (a.unsigned_abs(), b.unsigned_abs());
    while b != 0 {
        (a, b) = (b, a % b);
    }
    (a as i64).max(1)
}

/// Which windows a keyed flow is grouped into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowSpec {
    /// Fixed, non-overlapping windows.
    Tumbling(Tumbling),
    /// Overlapping windows at a fixed slide.
    Sliding(Sliding),
    /// Per-key sessions of activity.
    Session(Session),
    /// Every N records of a key.
    Count(CountWindow),
}

impl From<CountWindow> for WindowSpec {
    fn from(c: CountWindow) -> Self {
        WindowSpec::Count(c)
    }
}

impl From<Tumbling> for WindowSpec {
    fn from(t: Tumbling) -> Self {
        WindowSpec::Tumbling(t)
    }
}

impl From<Sliding> for WindowSpec {
    fn from(s: Sliding) -> Self {
        WindowSpec::Sliding(s)
    }
}

impl From<Session> for WindowSpec {
    fn from(s: Session) -> Self {
        WindowSpec::Session(s)
    }
}

impl WindowSpec {
    /// Tumbling and sliding windows as panes: (size, slide, pane length).
    pub(super) fn panes(&self) -> Option<(i64, i64, i64)> {
        match *self {
            WindowSpec::Tumbling(t) => Some((t.size, t.size, t.size)),
            WindowSpec::Sliding(s) => Some((s.size, s.slide, s.pane())),
            WindowSpec::Session(_) | WindowSpec::Count(_) => None,
        }
    }

    /// A session window's gap.
    fn gap(&self) -> Option<i64> {
        match *self {
            WindowSpec::Session(s) => Some(s.gap),
            _ => None,
        }
    }

    /// The step kind checkpoints record (another kind under the same name is refused).
    fn kind(&self) -> &'static str {
        match self {
            WindowSpec::Tumbling(_) => "window",
            WindowSpec::Sliding(_) => "sliding-window",
            WindowSpec::Session(_) => "session-window",
            WindowSpec::Count(_) => "count-window",
        }
    }

    /// Checks the spec: a sliding window's slide must not exceed its size,
    /// nor make more than [`MAX_PANES`](Self::MAX_PANES) panes per window (a
    /// slide that does not divide the size makes panes of their greatest
    /// common divisor: 1 min / 7 ms would be 60,000 panes of 1 ms). The
    /// window operator calls it when it is built.
    pub fn validate(&self) -> weir_core::Result<()> {
        if let WindowSpec::Sliding(s) = self {
            if s.slide > s.size {
                return Err(weir_core::Error::config(
                    "window",
                    format!("a sliding window's slide ({} ms) must not exceed the size ({} ms)", s.slide, s.size),
                ));
            }
            let panes = s.size / s.pane();
            if panes > Self::MAX_PANES {
                return Err(weir_core::Error::config(
                    "window",
                    format!(
                        "a sliding window of {} ms every {} ms has {panes} panes of {} ms (at most {}): \
                         make the slide divide the size",
                        s.size,
                        s.slide,
                        s.pane(),
                        Self::MAX_PANES
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The most panes a sliding window may have ([`validate`](Self::validate)).
    pub const MAX_PANES: i64 = 10_000;

    /// What a record at `t` updates: its pane's start (tumbling, sliding) or `t` (sessions).
    fn part_start(&self, t: EventTime) -> EventTime {
        match self.panes() {
            Some((_, _, pane)) => t.saturating_sub(t.rem_euclid(pane)),
            None => t,
        }
    }

    /// Whether a part starting at `start` comes too late at watermark `wm`
    /// (without allowed lateness).
    #[cfg(test)]
    fn is_late(&self, start: EventTime, wm: EventTime) -> bool {
        self.is_late_by(start, wm, 0)
    }

    /// Whether a part starting at `start` comes too late at watermark `wm`
    /// with `lateness` ms of allowed lateness: tumbling and sliding, every
    /// window that holds it closed at least `lateness` before the watermark;
    /// sessions (and counts, which have no lateness), the record is more
    /// than `lateness` behind the watermark (see [`Windowed::allowed_lateness`]).
    fn is_late_by(&self, start: EventTime, wm: EventTime, lateness: i64) -> bool {
        match *self {
            WindowSpec::Session(_) | WindowSpec::Count(_) => start.saturating_add(lateness) < wm,
            _ => panes::last_end(self, start).saturating_add(lateness) <= wm,
        }
    }
}

/// A partial aggregate of one key and window, from one worker and epoch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Partial<K, Acc, P = ()> {
    pub key: K,
    /// The pane's start (tumbling, sliding) or the record's time (sessions, counts).
    pub start: EventTime,
    pub acc: Acc,
    /// The record's position (count windows: its partition and offset; `()` otherwise).
    pub pos: P,
}

/// Whether the window operator pre-aggregates records on the worker that
/// read them, before the shuffle by key (see [`Windowed::combine`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Combine {
    /// Combine while it pays: each combining epoch measures how many partial
    /// aggregates it makes per record, and when keys seldom repeat within an
    /// epoch the next epochs send records on without combining, then measure
    /// again.
    #[default]
    Adaptive,
    /// Always combine (best when a few keys have many records per epoch).
    Always,
    /// Never combine: one partial aggregate per record.
    Never,
}

/// One window's result for one key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowResult<K, V> {
    /// The key.
    pub key: K,
    /// Window start (inclusive), ms.
    pub start: EventTime,
    /// Window end (exclusive), ms.
    pub end: EventTime,
    /// The aggregate.
    pub value: V,
    /// An early firing's row ([`Windowed::early_firings`]): the window so far,
    /// before it closes. `false` for the one final row of every window.
    pub partial: bool,
    /// +1, or -1 for a row that a late record's update retracts (with
    /// [`Windowed::allowed_lateness`]: the old row with -1, then the new one
    /// with +1). Always +1 without allowed lateness.
    pub diff: i64,
}

/// Adds `key_by` to flows.
pub trait KeyBy<'s, T: 'static> {
    /// Keys every record with `key` for the keyed stage that follows (`window`).
    /// The key is computed where that stage needs it, so keying costs no extra
    /// pass over the records; [`Keyed::into_flow`] materializes `(key, record)` pairs.
    fn key_by<K, F>(self, key: F) -> Keyed<'s, T, F>
    where
        K: Hash + Eq + 'static,
        F: Fn(&T) -> K + 'static;
}

impl<'s, T: 'static> KeyBy<'s, T> for Flow<'s, T> {
    fn key_by<K, F>(self, key: F) -> Keyed<'s, T, F>
    where
        K: Hash + Eq + 'static,
        F: Fn(&T) -> K + 'static,
    {
        Keyed { flow: self, key, local: false }
    }
}

/// A flow with a key function.
pub struct Keyed<'s, T, F> {
    flow: Flow<'s, T>,
    key: F,
    /// Whether every record is already on the worker that owns its key's
    /// group (the flow of `JoinTable::join_table_keyed`): a detect step then
    /// takes them where they are.
    local: bool,
}

impl<'s, T: 'static, F> Keyed<'s, T, F> {
    /// Groups the keyed records into windows ([`Tumbling`], [`Sliding`], [`Session`], [`CountWindow`]).
    pub fn window(self, spec: impl Into<WindowSpec>) -> Windowed<'s, T, F> {
        Windowed {
            flow: self.flow,
            key: self.key,
            spec: spec.into(),
            combine: Combine::default(),
            early: None,
            lateness: 0,
        }
    }

    /// The flow and its key function.
    pub(crate) fn into_parts(self) -> (Flow<'s, T>, F) {
        (self.flow, self.key)
    }

    /// `flow` keyed by `key`, its records already on the workers that own
    /// their keys' groups (only a step that routed them by `key` knows that).
    pub(crate) fn local(flow: Flow<'s, T>, key: F) -> Self {
        Keyed { flow, key, local: true }
    }

    /// Whether the records are already on the workers that own their keys' groups.
    pub(crate) fn is_local(&self) -> bool {
        self.local
    }

    /// The `(key, record)` pairs as a flow.
    pub fn into_flow<K: 'static>(self) -> Flow<'s, (K, T)>
    where
        F: Fn(&T) -> K + 'static,
    {
        let key = self.key;
        self.flow.map(move |v| (key(&v), v))
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn window_starts_align_to_the_epoch() {
        let w = Tumbling::minutes(1);
        assert_eq!(w.start_of(1_700_000_000_123), 1_699_999_980_000);
        assert_eq!(w.start_of(60_000), 60_000);
        assert_eq!(w.start_of(59_999), 0);
        assert_eq!(w.start_of(-1), -60_000);
        // Extreme times from the data never overflow.
        assert_eq!(w.start_of(i64::MIN), i64::MIN);
        assert_eq!(w.end_of(w.start_of(i64::MAX)), i64::MAX);
    }

    #[test]
    fn panes_and_lateness() {
        let s = WindowSpec::from(Sliding::new(Duration::from_secs(60), Duration::from_secs(40)));
        assert_eq!(s.panes(), Some((60_000, 40_000, 20_000)));
        assert_eq!(s.part_start(65_000), 60_000);
        // The pane [60 s, 80 s) lies in the window [40 s, 100 s) only.
        assert!(!s.is_late(60_000, 99_999));
        assert!(s.is_late(60_000, 100_000));
        assert!(WindowSpec::from(Sliding::new(Duration::from_secs(1), Duration::from_secs(2))).validate().is_err());
        let fine = Sliding::new(Duration::from_secs(60), Duration::from_millis(6));
        assert!(WindowSpec::from(fine).validate().is_ok(), "10,000 panes of 6 ms");
        let ragged = WindowSpec::from(Sliding::new(Duration::from_secs(60), Duration::from_millis(7)));
        assert!(ragged.validate().is_err_and(|e| e.to_string().contains("60000 panes")));
        let session = WindowSpec::from(Session::new(Duration::from_secs(30)));
        assert_eq!(session.part_start(1234), 1234);
        assert!(session.is_late(99, 100) && !session.is_late(100, 100));
        // With 400 ms of lateness: at most 400 behind the watermark.
        assert!(session.is_late_by(599, 1000, 400) && !session.is_late_by(600, 1000, 400));
    }
}
