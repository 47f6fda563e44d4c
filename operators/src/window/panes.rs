//! Tumbling and sliding windows as panes, kept by time.
//!
//! A record updates the pane of `gcd(size, slide)` that holds it. The state
//! is window-major: one hash map (key -> accumulator) per open pane, in start
//! order, so the records of one stretch of time touch one small, hot map
//! whatever the number of keys and open windows (a key-major layout, each
//! key with its list of panes, costs a cache miss per record once many
//! windows are open, e.g. while one partition holds the watermark back).
//! When the watermark reaches a window's end its panes are merged per key
//! into the window's results; the panes no later window holds are dropped
//! and their maps reused. A tumbling window is the case `slide == size`: one
//! pane per window, whose map is moved into the results.
//!
//! The step runs on the kit's lower level ([`StepLogic`]): it checkpoints
//! its panes grouped by the key group of each key, so any worker count can
//! restore them.

use std::collections::BTreeMap;
use std::hash::Hash;
use std::marker::PhantomData;
use std::ops::Range;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use weir_core::Result;
use weir_core::checkpoint::state::{GLOBAL_GROUP, StateReader, StateWriter};
use weir_core::checkpoint::{CheckpointStore, FileEntry};
use weir_core::keygroup::KeyGroups;
use weir_core::record::{EventTime, Meta, Rec};
use weir_core::state::{Emit, StepLogic, WatermarkSnapshot};
use weir_core::time::Epoch;

use super::pane_map::{AHEAD, PaneMap};
use super::{Partial, WindowResult, WindowSpec};
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

/// The largest multiple of `m` at or below `t`, if it is an `i64` (the
/// common case, without `i128` division).
fn floor64(t: i64, m: i64) -> Option<i64> {
    t.checked_sub(t.rem_euclid(m))
}

/// The start of the first window (a multiple of `slide`) that ends after `t`.
fn first_start_ending_after(size: i64, slide: i64, t: EventTime) -> EventTime {
    let fast = t.checked_sub(size).and_then(|t| floor64(t, slide)).and_then(|s| s.checked_add(slide));
    fast.unwrap_or_else(|| clamp(floor_to(i128::from(t) - i128::from(size), slide) + i128::from(slide)))
}

/// The end of the window starting at `start` (`size > 0`: it can only run
/// past the end of time, where it is cut off).
fn end_of(size: i64, start: EventTime) -> EventTime {
    start.saturating_add(size)
}

/// The end of the last window that holds the pane starting at `pane`.
pub(super) fn last_end(spec: &WindowSpec, pane: EventTime) -> EventTime {
    let Some((size, slide, _)) = spec.panes() else { return EventTime::MAX };
    let start = floor64(pane, slide).unwrap_or_else(|| clamp(floor_to(i128::from(pane), slide)));
    end_of(size, start)
}

/// One key group's share of the panes in a checkpoint: (pane start, key, accumulator).
type GroupPanes<K, Acc> = Vec<(EventTime, K, Acc)>;

/// The window stage of tumbling and sliding windows: the open panes of the
/// keys this worker owns.
pub(super) struct PaneStore<K, T, A: Aggregator<T>> {
    agg: Rc<A>,
    size: i64,
    slide: i64,
    groups: KeyGroups,
    /// The open panes in start order, each with its keys' accumulators.
    panes: Vec<(EventTime, PaneMap<K, A::Acc>)>,
    /// The index in `panes` of the pane the last record went to: records
    /// come in runs of one pane.
    last: usize,
    /// The start of the first window that has not fired.
    next: EventTime,
    /// Emptied maps, kept with their capacity for the next panes.
    spare: Spare<K, A::Acc>,
    /// Sliding windows' merged panes (derived from `panes`, not checkpointed).
    stacks: Stacks<K, A::Acc>,
    /// Early firings: how often, and when next (processing time).
    early: Option<(Duration, Instant)>,
    /// Allowed lateness (ms): fired windows keep their panes this much longer.
    lateness: i64,
    _records: PhantomData<fn(&T)>,
}

/// Sliding windows' merged panes, so that a window's result costs about one
/// merge per key instead of one per pane (the "two stacks" of sliding-window
/// aggregation): `front` holds, for each pane from the oldest window's start
/// up to `boundary`, the merge of the panes from it to `boundary`; `back` the
/// merge of the panes from `boundary` to `back_end`. The window
/// `[s, s + size)` is the first `front` entry at or after `s` merged with
/// `back`. When the windows pass `boundary`, `front` is built anew from the
/// panes of the window firing, and `back` starts empty; so every
/// `size / slide` windows each pane is merged once into the new `front`, and
/// once into `back` when it completes.
struct Stacks<K, Acc> {
    /// (pane start, merge of the panes from it to `boundary`), by start descending.
    front: Vec<(EventTime, PaneMap<K, Acc>)>,
    boundary: EventTime,
    back: PaneMap<K, Acc>,
    back_end: EventTime,
}

impl<K, Acc> Default for Stacks<K, Acc> {
    fn default() -> Self {
        Stacks { front: Vec::new(), boundary: EventTime::MIN, back: PaneMap::default(), back_end: EventTime::MIN }
    }
}

impl<K, T, A: Aggregator<T>> PaneStore<K, T, A> {
    pub(super) fn new(
        agg: Rc<A>,
        size: i64,
        slide: i64,
        groups: KeyGroups,
        early: Option<Duration>,
        lateness: i64,
    ) -> Self {
        PaneStore {
            agg,
            size,
            slide,
            groups,
            panes: Vec::new(),
            last: 0,
            next: EventTime::MIN,
            spare: Spare::default(),
            stacks: Stacks::default(),
            early: early.map(|every| (every, Instant::now() + every)),
            lateness,
            _records: PhantomData,
        }
    }
}

impl<K: Hash + Eq + Clone, T, A: Aggregator<T>> PaneStore<K, T, A> {
    /// Drops the first `n` panes, keeping their maps for reuse.
    fn recycle(&mut self, n: usize) {
        for (_, map) in self.panes.drain(..n) {
            self.spare.give(map);
        }
    }

    /// The map of the pane starting at `start`, opened if need be.
    fn pane(&mut self, start: EventTime) -> &mut PaneMap<K, A::Acc> {
        pane_at(&mut self.panes, &mut self.last, &mut self.spare, start)
    }

    /// Emits the window `[start, end)`: its panes merged per key.
    fn fire(&mut self, start: EventTime, end: EventTime, out: &mut Emit<'_, WindowResult<K, A::Out>>) {
        let time = end.saturating_sub(1);
        let agg = self.agg.clone();
        let mut emit = |key: K, acc: &A::Acc| {
            let value = WindowResult { key, start, end, value: agg.finish(acc), partial: false, diff: 1 };
            out.push(Rec { meta: Meta::derived(time), value });
        };
        if self.slide == self.size {
            // Tumbling: the window's one pane is its result.
            let i = self.panes.partition_point(|p| p.0 < start);
            if let Some((s, pane)) = self.panes.get_mut(i)
                && *s == start
            {
                if self.lateness == 0 {
                    for (key, acc) in pane.drain() {
                        emit(key, &acc);
                    }
                } else {
                    // Kept for late updates until the allowed lateness passes.
                    for (key, acc) in pane.iter() {
                        emit(key.clone(), acc);
                    }
                }
            }
            return;
        }
        let next = clamp(i128::from(start) + i128::from(self.slide));
        let st = &mut self.stacks;
        while st.front.last().is_some_and(|f| f.0 < start) {
            if let Some((_, map)) = st.front.pop() {
                self.spare.give(map);
            }
        }
        let lo = self.panes.partition_point(|p| p.0 < start);
        let hi = self.panes.partition_point(|p| p.0 < end);
        if st.boundary <= start {
            // The windows passed `boundary`: merge this window's panes anew, newest first.
            st.back.clear();
            st.boundary = end;
            st.back_end = end;
            for (_, map) in st.front.drain(..) {
                self.spare.give(map);
            }
            for (pane_start, pane) in self.panes[lo..hi].iter().rev() {
                let mut merged = match st.front.last() {
                    Some((_, later)) => self.spare.copy_of(later),
                    None => self.spare.take(),
                };
                merge_into(&*agg, &mut merged, pane);
                st.front.push((*pane_start, merged));
            }
        } else {
            // Panes that completed since the last window go to `back`.
            let from = self.panes.partition_point(|p| p.0 < st.back_end);
            for (_, pane) in &self.panes[from.max(lo)..hi] {
                merge_into(&*agg, &mut st.back, pane);
            }
            st.back_end = end;
        }
        // The window: its first `front` entry (taken if no later window needs it) and `back`.
        let take = st.front.last().is_some_and(|f| f.0 < next && f.0 < st.boundary);
        if take && let Some((_, mut front)) = st.front.pop() {
            // No `reserve` (as `merge_into` does): `front` holds most of `back`'s keys already.
            let mut ahead = st.back.iter().skip(AHEAD);
            for (key, acc) in st.back.iter() {
                if let Some((k, _)) = ahead.next() {
                    front.prefetch(k);
                }
                merge_one(&*agg, &mut front, key, acc);
            }
            for (key, acc) in front.drain() {
                emit(key, &acc);
            }
            self.spare.give(front);
            return;
        }
        let front = st.front.last().filter(|f| f.0 < st.boundary).map(|f| &f.1);
        if let Some(front) = front {
            let mut ahead = front.iter().skip(AHEAD);
            for (key, acc) in front.iter() {
                if let Some((k, _)) = ahead.next() {
                    st.back.prefetch(k);
                }
                match st.back.get(key) {
                    Some(b) => {
                        let mut acc = acc.clone();
                        agg.merge(&mut acc, b);
                        emit(key.clone(), &acc);
                    }
                    None => emit(key.clone(), acc),
                }
            }
        }
        let mut ahead = st.back.iter().skip(AHEAD);
        for (key, acc) in st.back.iter() {
            if let (Some(f), Some((k, _))) = (front, ahead.next()) {
                f.prefetch(k);
            }
            if front.is_none_or(|f| !f.contains_key(key)) {
                emit(key.clone(), acc);
            }
        }
    }

    /// A record for windows that already fired (within the allowed lateness):
    /// each such window of `key` still within it emits its old row with diff
    /// -1 (if it had one) and its new row with +1.
    fn update_fired(
        &mut self,
        p: &Partial<K, A::Acc>,
        watermark: EventTime,
        out: &mut Emit<'_, WindowResult<K, A::Out>>,
    ) {
        let (size, slide) = (self.size, self.slide);
        let agg = &*self.agg;
        let mut start = first_start_ending_after(size, slide, p.start);
        while start < self.next && start <= p.start {
            let end = end_of(size, start);
            if end.saturating_add(self.lateness) > watermark {
                let lo = self.panes.partition_point(|q| q.0 < start);
                let hi = self.panes.partition_point(|q| q.0 < end);
                let mut old: Option<A::Acc> = None;
                for (_, pane) in &self.panes[lo..hi] {
                    if let Some(acc) = pane.get(&p.key) {
                        match old.as_mut() {
                            Some(o) => agg.merge(o, acc),
                            None => old = Some(acc.clone()),
                        }
                    }
                }
                let time = end.saturating_sub(1);
                let new = match old {
                    Some(old) => {
                        let value = WindowResult {
                            key: p.key.clone(),
                            start,
                            end,
                            value: agg.finish(&old),
                            partial: false,
                            diff: -1,
                        };
                        out.push(Rec { meta: Meta::derived(time), value });
                        let mut new = old;
                        agg.merge(&mut new, &p.acc);
                        new
                    }
                    None => p.acc.clone(),
                };
                let value =
                    WindowResult { key: p.key.clone(), start, end, value: agg.finish(&new), partial: false, diff: 1 };
                out.push(Rec { meta: Meta::derived(time), value });
            }
            let next = clamp(i128::from(start) + i128::from(slide));
            if next == start {
                break;
            }
            start = next;
        }
    }

    /// Emits every open window as it is so far, marked partial.
    fn fire_early(&mut self, out: &mut Emit<'_, WindowResult<K, A::Out>>) {
        let (size, slide) = (self.size, self.slide);
        let (Some(&(first, _)), Some(&(last, _))) = (self.panes.first(), self.panes.last()) else { return };
        let agg = &*self.agg;
        let mut merged = self.spare.take();
        let mut start = first_start_ending_after(size, slide, first).max(self.next);
        while start <= last {
            let end = end_of(size, start);
            let lo = self.panes.partition_point(|p| p.0 < start);
            let hi = self.panes.partition_point(|p| p.0 < end);
            let time = end.saturating_sub(1);
            for (_, pane) in &self.panes[lo..hi] {
                merge_into(agg, &mut merged, pane);
            }
            for (key, acc) in merged.drain() {
                let value = WindowResult { key, start, end, value: agg.finish(&acc), partial: true, diff: 1 };
                out.push(Rec { meta: Meta::derived(time), value });
            }
            let next = clamp(i128::from(start) + i128::from(slide));
            if next == start {
                break;
            }
            start = next;
        }
        self.spare.give(merged);
    }

    /// A partial for a pane that `stacks` already merged (a record behind the
    /// watermark whose later windows have not fired): merged there too.
    fn update_stacks(&mut self, start: EventTime, key: &K, acc: &A::Acc) {
        let st = &mut self.stacks;
        if start >= st.back_end {
            return;
        }
        if start >= st.boundary {
            merge_one(&*self.agg, &mut st.back, key, acc);
            return;
        }
        for (s, front) in st.front.iter_mut() {
            if *s <= start {
                merge_one(&*self.agg, front, key, acc);
            }
        }
        // A pane that did not exist when `front` was built gets its entry: the
        // next later entry's panes and this one.
        let i = st.front.partition_point(|f| f.0 > start);
        if st.front.get(i).is_none_or(|f| f.0 != start) {
            let mut merged = match i.checked_sub(1).and_then(|later| st.front.get(later)) {
                Some((_, later)) => self.spare.copy_of(later),
                None => self.spare.take(),
            };
            merge_one(&*self.agg, &mut merged, key, acc);
            st.front.insert(i, (start, merged));
        }
    }
}

/// Emptied maps kept with their capacity, so panes and merged panes reuse
/// memory instead of allocating (and the kernel zeroing) fresh maps. At most
/// [`Spare::MAX`] are kept: the rest are freed.
struct Spare<K, Acc>(Vec<PaneMap<K, Acc>>);

impl<K, Acc> Default for Spare<K, Acc> {
    fn default() -> Self {
        Spare(Vec::new())
    }
}

impl<K, Acc> Spare<K, Acc> {
    /// Maps kept at most: about as many as a sliding window's merged panes
    /// and the panes that open while they fire.
    const MAX: usize = 16;

    /// An empty map, reused if one is kept.
    fn take(&mut self) -> PaneMap<K, Acc> {
        self.0.pop().unwrap_or_default()
    }
}

impl<K: Hash + Eq + Clone, Acc: Clone> Spare<K, Acc> {
    /// A copy of `map` in a reused map.
    fn copy_of(&mut self, map: &PaneMap<K, Acc>) -> PaneMap<K, Acc> {
        let mut copy = self.take();
        copy.clone_from(map);
        copy
    }

    /// Keeps `map`, emptied, for reuse (or frees it if enough are kept).
    fn give(&mut self, mut map: PaneMap<K, Acc>) {
        if self.0.len() < Self::MAX {
            map.clear();
            self.0.push(map);
        }
    }
}

/// The map of the pane starting at `start` in `panes` (by start; `last` the
/// index of the pane used last, as records come in runs of one pane), opened
/// with a map from `spare` if need be.
fn pane_at<'p, K, Acc>(
    panes: &'p mut Vec<(EventTime, PaneMap<K, Acc>)>,
    last: &mut usize,
    spare: &mut Spare<K, Acc>,
    start: EventTime,
) -> &'p mut PaneMap<K, Acc> {
    let i = match panes.get(*last) {
        Some((s, _)) if *s == start => *last,
        _ => match panes.binary_search_by_key(&start, |p| p.0) {
            Ok(i) => i,
            Err(i) => {
                panes.insert(i, (start, spare.take()));
                i
            }
        },
    };
    *last = i;
    &mut panes[i].1
}

/// Merges `acc` into `key`'s entry of `into`.
fn merge_one<K: Hash + Eq + Clone, T, A: Aggregator<T>>(agg: &A, into: &mut PaneMap<K, A::Acc>, key: &K, acc: &A::Acc) {
    match into.get_mut(key) {
        Some(a) => agg.merge(a, acc),
        None => {
            into.insert(key.clone(), acc.clone());
        }
    }
}

/// Merges every key of `pane` into `into`.
fn merge_into<K: Hash + Eq + Clone, T, A: Aggregator<T>>(
    agg: &A,
    into: &mut PaneMap<K, A::Acc>,
    pane: &PaneMap<K, A::Acc>,
) {
    into.reserve(pane.len());
    let mut ahead = pane.iter().skip(AHEAD);
    for (key, acc) in pane.iter() {
        if let Some((k, _)) = ahead.next() {
            into.prefetch(k);
        }
        merge_one(agg, into, key, acc);
    }
}

impl<K, T, A> StepLogic<Partial<K, A::Acc>> for PaneStore<K, T, A>
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned + 'static,
    T: 'static,
    A: Aggregator<T>,
{
    type Out = WindowResult<K, A::Out>;

    fn on_records(&mut self, records: Vec<Partial<K, A::Acc>>, watermark: EventTime, out: &mut Emit<'_, Self::Out>) {
        let mut records = records.into_iter();
        while let Some(p) = records.next() {
            // Windows of the pane that fired already (it can be in unfired ones too).
            if self.lateness > 0 && first_start_ending_after(self.size, self.slide, p.start) < self.next {
                self.update_fired(&p, watermark, out);
            }
            if p.start < self.stacks.back_end {
                self.update_stacks(p.start, &p.key, &p.acc);
            }
            let agg = &*self.agg;
            let pane = pane_at(&mut self.panes, &mut self.last, &mut self.spare, p.start);
            // The entry of the record `AHEAD` on, if it is in this pane (records come in runs of one).
            if let Some(ahead) = records.as_slice().get(AHEAD - 1)
                && ahead.start == p.start
            {
                pane.prefetch(&ahead.key);
            }
            pane.upsert(p.key, p.acc, |acc, new| agg.merge(acc, &new));
        }
    }

    fn on_watermark(&mut self, watermark: EventTime, out: &mut Emit<'_, Self::Out>) {
        let (size, slide) = (self.size, self.slide);
        // Every window up to the watermark that holds a pane, in start order
        // (an unfired window holds only panes at or after `next`).
        loop {
            let i = self.panes.partition_point(|p| p.0 < self.next);
            let Some(&(first, _)) = self.panes.get(i) else { break };
            let start = first_start_ending_after(size, slide, first).max(self.next);
            let end = end_of(size, start);
            if end > watermark {
                break;
            }
            self.fire(start, end, out);
            let next = clamp(i128::from(start) + i128::from(slide));
            if next == start {
                // The end of time: nothing can follow.
                self.stacks = Stacks::default();
                self.recycle(self.panes.len());
                break;
            }
            self.next = next;
            if self.lateness == 0 {
                let done = self.panes.partition_point(|p| p.0 < next);
                self.recycle(done);
            }
        }
        if self.lateness > 0 {
            // Panes whose last window closed more than the allowed lateness ago.
            let (spec, lateness) = (WindowSpec::Sliding(super::Sliding { size, slide }), self.lateness);
            let done = self.panes.partition_point(|p| last_end(&spec, p.0).saturating_add(lateness) <= watermark);
            self.recycle(done);
        }
        self.last = 0;
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.early.map(|(_, next)| next)
    }

    fn on_processing_time(&mut self, now: Instant, _: EventTime, out: &mut Emit<'_, Self::Out>) {
        if let Some((every, _)) = self.early {
            self.fire_early(out);
            self.early = Some((every, now + every));
        }
    }

    fn checkpoint(
        &mut self,
        store: &dyn CheckpointStore,
        epoch: Epoch,
        name: &str,
        global: (&[EventTime], EventTime),
    ) -> Result<Vec<FileEntry>> {
        let mut by_group: BTreeMap<u32, GroupPanes<&K, &A::Acc>> = BTreeMap::new();
        for (start, pane) in &self.panes {
            for (key, acc) in pane.iter() {
                by_group.entry(self.groups.group_of(key)).or_default().push((*start, key, acc));
            }
        }
        let mut w = StateWriter::default();
        w.group(GLOBAL_GROUP, &global)?;
        for (g, entries) in by_group {
            w.group(g, &entries)?;
        }
        Ok(vec![store.write_part(epoch, name, &w.finish()?)?])
    }

    fn restore(
        &mut self,
        store: &dyn CheckpointStore,
        files: &[FileEntry],
        mine: Range<u32>,
    ) -> Result<Vec<WatermarkSnapshot>> {
        let mut globals = Vec::new();
        for file in files {
            let bytes = store.read_part(file)?;
            let reader = StateReader::new(&bytes, &file.path)?;
            if let Some(g) = reader.read::<WatermarkSnapshot>(GLOBAL_GROUP)? {
                globals.push(g);
            }
            for g in reader.groups().filter(|g| mine.contains(g)).collect::<Vec<_>>() {
                let entries: GroupPanes<K, A::Acc> = reader.read(g)?.unwrap_or_default();
                for (start, key, acc) in entries {
                    self.pane(start).insert(key, acc);
                }
            }
        }
        Ok(globals)
    }

    fn restored(&mut self, watermark: EventTime) {
        // Every window that ended by the checkpoint's watermark fired before it was taken.
        self.next = first_start_ending_after(self.size, self.slide, watermark);
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

    #[test]
    fn window_arithmetic_agrees_with_i128_at_the_ends_of_time() {
        let slow_first = |size: i64, slide: i64, t: i64| {
            clamp(floor_to(i128::from(t) - i128::from(size), slide) + i128::from(slide))
        };
        let slow_last = |size: i64, slide: i64, pane: i64| {
            clamp(i128::from(clamp(floor_to(i128::from(pane), slide))) + i128::from(size))
        };
        let times =
            [EventTime::MIN, EventTime::MIN + 1, EventTime::MIN + 7, -60_001, -1, 0, 1, 59_999, 1_700_000_000_123]
                .into_iter()
                .chain([EventTime::MAX - 7, EventTime::MAX - 1, EventTime::MAX]);
        for t in times {
            for (size, slide) in
                [(1, 1), (3, 3), (60_000, 10_000), (60_000, 60_000), (7, 3), (i64::MAX, 1), (i64::MAX, i64::MAX)]
            {
                assert_eq!(first_start_ending_after(size, slide, t), slow_first(size, slide, t), "{t} {size} {slide}");
                let spec = WindowSpec::Sliding(super::super::Sliding { size, slide });
                assert_eq!(last_end(&spec, t), slow_last(size, slide, t), "{t} {size} {slide}");
            }
        }
    }
}
