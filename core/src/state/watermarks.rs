//! The window watermark of a keyed stage: the minimum of its input
//! partitions' watermarks.

use crate::record::EventTime;
use crate::stream::WatermarkUpdate;

/// The latest watermark of every input partition; the stage's watermark is
/// their minimum over the partitions that are not idle.
///
/// Every stage that follows watermarks applies an epoch's updates together
/// ([`apply`](Self::apply) once per epoch): a partition discovered while
/// running joins the table with its first update, so the minimum can drop
/// when it does, and applying one batch at a time would let the watermark
/// (which never moves back) depend on the order batches arrived in, which
/// differs per worker. It never moves back (an idle partition that has data
/// again may send late records), and it is checkpointed with the table
/// ([`snapshot`](Self::snapshot), [`merge`](Self::merge)), so a restore does
/// not move it back either.
#[derive(Clone, Debug)]
pub struct WatermarkTable {
    table: Vec<EventTime>,
    idle: Vec<bool>,
    current: EventTime,
}

/// A checkpointed [`WatermarkTable`]: the partitions' watermarks and the stage's.
pub type WatermarkSnapshot = (Vec<EventTime>, EventTime);

impl WatermarkTable {
    /// Partitions a discovered partition's id may exceed the table by (a
    /// forged id must not allocate without bound).
    const MAX_GROWTH: usize = 4096;

    /// A table of `partitions` partitions, all at `EventTime::MIN` (none: the
    /// watermark is `EventTime::MAX` from the start).
    pub fn new(partitions: u32) -> Self {
        let table = vec![EventTime::MIN; partitions as usize];
        let current = if table.is_empty() { EventTime::MAX } else { EventTime::MIN };
        WatermarkTable { idle: vec![false; table.len()], table, current }
    }

    /// The stage's watermark: no event time at or below it is expected any more.
    pub fn current(&self) -> EventTime {
        self.current
    }

    /// Applies one epoch's updates; returns the new watermark if it advanced.
    pub fn apply(&mut self, updates: &[WatermarkUpdate]) -> Option<EventTime> {
        for u in updates {
            let at = u.partition as usize;
            if at >= self.table.len() && at < self.table.len() + Self::MAX_GROWTH {
                self.table.resize(at + 1, EventTime::MIN);
                self.idle.resize(at + 1, false);
            }
            if let (Some(slot), Some(idle)) = (self.table.get_mut(at), self.idle.get_mut(at)) {
                *slot = (*slot).max(u.watermark);
                *idle = u.idle;
            }
        }
        let active = self.table.iter().zip(&self.idle).filter(|(_, idle)| !**idle).map(|(w, _)| *w);
        let wm = match active.min() {
            Some(wm) => wm,
            // Every partition idle: nothing moves the watermark (but a finished table is done).
            None if self.table.iter().all(|&w| w == EventTime::MAX) => EventTime::MAX,
            None => self.current,
        };
        (wm > self.current).then(|| {
            self.current = wm;
            wm
        })
    }

    /// Moves the watermark to the end of time (the input is finished).
    pub fn finish(&mut self) {
        self.current = EventTime::MAX;
    }

    /// What a checkpoint keeps.
    pub fn snapshot(&self) -> (&[EventTime], EventTime) {
        (&self.table, self.current)
    }

    /// Folds in a checkpointed table (of any worker: they are all the same).
    pub fn merge(&mut self, (other, current): &WatermarkSnapshot) {
        for (mine, theirs) in self.table.iter_mut().zip(other) {
            *mine = (*mine).max(*theirs);
        }
        let least = self.table.iter().copied().min().unwrap_or(EventTime::MAX);
        self.current = self.current.max(least).max(*current);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(partition: u32, watermark: EventTime, idle: bool) -> WatermarkUpdate {
        WatermarkUpdate { partition, watermark, idle }
    }

    #[test]
    fn the_minimum_of_active_partitions_never_moving_back() {
        let mut t = WatermarkTable::new(2);
        assert_eq!(t.apply(&[up(0, 10, false)]), None);
        assert_eq!(t.apply(&[up(1, 5, false)]), Some(5));
        // Partition 1 idle: partition 0 alone decides.
        assert_eq!(t.apply(&[up(1, 5, true)]), Some(10));
        // Active again behind the watermark: it does not move back.
        assert_eq!(t.apply(&[up(1, 6, false)]), None);
        assert_eq!(t.current(), 10);
        // A discovered partition joins with its first update.
        assert_eq!(t.apply(&[up(0, 20, false), up(1, 20, false), up(2, 15, false)]), Some(15));
        // Finished partitions end at MAX.
        assert_eq!(
            t.apply(&[up(0, EventTime::MAX, false), up(1, EventTime::MAX, false), up(2, EventTime::MAX, false)]),
            Some(EventTime::MAX)
        );
    }

    #[test]
    fn a_restored_table_does_not_move_back() {
        let mut t = WatermarkTable::new(2);
        t.apply(&[up(0, 10, false), up(1, 30, true)]);
        let (table, current) = t.snapshot();
        let saved = (table.to_vec(), current);
        let mut r = WatermarkTable::new(2);
        r.merge(&saved);
        assert_eq!(r.current(), 10);
        assert_eq!(r.apply(&[up(0, 8, false)]), None);
        assert!(WatermarkTable::new(0).current() == EventTime::MAX);
    }
}
