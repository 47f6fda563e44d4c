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

use rustc_hash::FxHashMap;
use serde::Serialize;
use serde::de::DeserializeOwned;
use weir_core::Result;
use weir_core::checkpoint::state::{GLOBAL_GROUP, StateReader, StateWriter};
use weir_core::checkpoint::{CheckpointStore, FileEntry};
use weir_core::keygroup::KeyGroups;
use weir_core::record::{EventTime, Meta, Rec};
use weir_core::state::{StepLogic, WatermarkSnapshot};
use weir_core::time::Epoch;

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
    panes: Vec<(EventTime, FxHashMap<K, A::Acc>)>,
    /// The index in `panes` of the pane the last record went to: records
    /// come in runs of one pane.
    last: usize,
    /// The start of the first window that has not fired.
    next: EventTime,
    /// Emptied maps, kept with their capacity for the next panes.
    spare: Vec<FxHashMap<K, A::Acc>>,
    _records: PhantomData<fn(&T)>,
}

impl<K, T, A: Aggregator<T>> PaneStore<K, T, A> {
    pub(super) fn new(agg: Rc<A>, size: i64, slide: i64, groups: KeyGroups) -> Self {
        PaneStore {
            agg,
            size,
            slide,
            groups,
            panes: Vec::new(),
            last: 0,
            next: EventTime::MIN,
            spare: Vec::new(),
            _records: PhantomData,
        }
    }
}

impl<K: Hash + Eq + Clone, T, A: Aggregator<T>> PaneStore<K, T, A> {
    /// The map of the pane starting at `start`, opened if need be.
    fn pane(&mut self, start: EventTime) -> &mut FxHashMap<K, A::Acc> {
        let i = match self.panes.get(self.last) {
            Some((s, _)) if *s == start => self.last,
            _ => match self.panes.binary_search_by_key(&start, |p| p.0) {
                Ok(i) => i,
                Err(i) => {
                    let map = self.spare.pop().unwrap_or_default();
                    self.panes.insert(i, (start, map));
                    i
                }
            },
        };
        self.last = i;
        &mut self.panes[i].1
    }

    /// Emits the window `[start, end)`: its panes merged per key. Panes that
    /// no later window holds (those before `start + slide`) are merged by
    /// move, the others by reference.
    fn fire(&mut self, start: EventTime, end: EventTime, out: &mut Vec<Rec<WindowResult<K, A::Out>>>) {
        let lo = self.panes.partition_point(|p| p.0 < start);
        let hi = self.panes.partition_point(|p| p.0 < end);
        let next = clamp(i128::from(start) + i128::from(self.slide));
        let dropped = self.panes.partition_point(|p| p.0 < next).min(hi);
        let time = end.saturating_sub(1);
        let agg = &self.agg;
        let mut emit = |key: K, acc: &A::Acc| {
            let value = WindowResult { key, start, end, value: agg.finish(acc) };
            out.push(Rec { meta: Meta::derived(time), value });
        };
        if hi == lo + 1 && dropped == hi {
            // One pane that no later window holds (tumbling): its map is the result.
            for (key, acc) in self.panes[lo].1.drain() {
                emit(key, &acc);
            }
            return;
        }
        let mut result: FxHashMap<K, A::Acc> = self.spare.pop().unwrap_or_default();
        for (i, (_, pane)) in self.panes[lo..hi].iter_mut().enumerate() {
            if lo + i < dropped {
                for (key, acc) in pane.drain() {
                    match result.get_mut(&key) {
                        Some(r) => agg.merge(r, &acc),
                        None => {
                            result.insert(key, acc);
                        }
                    }
                }
            } else {
                for (key, acc) in pane.iter() {
                    match result.get_mut(key) {
                        Some(r) => agg.merge(r, acc),
                        None => {
                            result.insert(key.clone(), acc.clone());
                        }
                    }
                }
            }
        }
        for (key, acc) in result.drain() {
            emit(key, &acc);
        }
        self.spare.push(result);
    }
}

impl<K, T, A> StepLogic<Partial<K, A::Acc>> for PaneStore<K, T, A>
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned + 'static,
    T: 'static,
    A: Aggregator<T>,
{
    type Out = WindowResult<K, A::Out>;

    fn on_records(&mut self, records: Vec<Partial<K, A::Acc>>, _: EventTime, _: &mut Vec<Rec<Self::Out>>) {
        for p in records {
            let agg = self.agg.clone();
            match self.pane(p.start).entry(p.key) {
                std::collections::hash_map::Entry::Occupied(mut o) => agg.merge(o.get_mut(), &p.acc),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(p.acc);
                }
            }
        }
    }

    fn on_watermark(&mut self, watermark: EventTime, out: &mut Vec<Rec<Self::Out>>) {
        let (size, slide) = (self.size, self.slide);
        // Every window up to the watermark that holds a pane, in start order.
        while let Some(&(first, _)) = self.panes.first() {
            let start = first_start_ending_after(size, slide, first).max(self.next);
            let end = end_of(size, start);
            if end > watermark {
                break;
            }
            self.fire(start, end, out);
            let next = clamp(i128::from(start) + i128::from(slide));
            let done = if next == start {
                // The end of time: nothing can follow.
                self.panes.len()
            } else {
                self.panes.partition_point(|p| p.0 < next)
            };
            for (_, mut map) in self.panes.drain(..done) {
                map.clear();
                self.spare.push(map);
            }
            self.next = next;
        }
        self.last = 0;
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
            for (key, acc) in pane {
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
}
