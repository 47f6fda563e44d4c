//! Keyed tumbling event-time windows.
//!
//! ```text
//! flow.key_by(|r| r.device.clone())
//!     .window(Tumbling::minutes(1))
//!     .aggregate((Count, Min(|r| r.temp), Max(|r| r.temp), Mean(|r| r.temp)))?
//! ```
//!
//! Records are shuffled by key group (so keyed state can be restored with any
//! worker count), added to the window `[start, start + size)` with
//! `start = t - t.rem_euclid(size)` (aligned to the Unix epoch), and a window
//! fires once the watermark (the minimum over all input partitions) reaches
//! its end. A record whose window already fired is late: a dead letter.

mod operator;

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
        Keyed { flow: self, key }
    }
}

/// A flow with a key function.
pub struct Keyed<'s, T, F> {
    flow: Flow<'s, T>,
    key: F,
}

impl<'s, T: 'static, F> Keyed<'s, T, F> {
    /// Groups the keyed records into tumbling event-time windows.
    pub fn window(self, spec: Tumbling) -> Windowed<'s, T, F> {
        Windowed { flow: self.flow, key: self.key, spec, combine: Combine::default() }
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
mod tests {
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
}
