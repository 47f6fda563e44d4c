//! [`KeyedState`]: one stateful step's per-key values, event-time timers and
//! processing-time timers on one worker, checkpointed by key group.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hash};
use std::ops::Range;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use rustc_hash::FxBuildHasher;
use serde::Serialize;
use serde::de::DeserializeOwned;
use smallvec::SmallVec;

use crate::checkpoint::CheckpointStore;
use crate::checkpoint::FileEntry;
use crate::checkpoint::state::{GLOBAL_GROUP, StateReader, StateWriter};
use crate::error::Result;
use crate::keygroup::KeyGroups;
use crate::record::EventTime;
use crate::time::Epoch;

/// Processing time: wall-clock milliseconds since the Unix epoch (so a
/// checkpointed processing-time timer means the same moment after a restart).
pub type ProcessingTime = i64;

/// The wall clock now, as [`ProcessingTime`].
pub fn processing_now() -> ProcessingTime {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// One key's value and its pending timers.
#[derive(Debug)]
struct Slot<V> {
    group: u32,
    value: V,
    timers: Timers,
    proc_timers: Timers,
}

/// A key's pending timers of one kind: the first inline in the key's entry
/// (most keys have at most one), so reading them costs no second cache miss.
/// They serialize as a list, as a `Vec` does.
type Timers = SmallVec<[i64; 1]>;

/// Timers by time, one index per kind: an entry whose key no longer has
/// that timer (it was deleted, or the key removed) is skipped when it comes due.
struct Index<K> {
    event: BTreeMap<EventTime, Vec<K>>,
    processing: BTreeMap<ProcessingTime, Vec<K>>,
}

/// One key's state while a callback works on it: its value and timers.
pub struct KeyView<'a, K, V> {
    key: &'a K,
    slot: &'a mut Slot<V>,
    index: &'a mut Index<K>,
    remove: bool,
}

impl<K: Clone, V> KeyView<'_, K, V> {
    /// The key.
    pub fn key(&self) -> &K {
        self.key
    }

    /// The key's value.
    pub fn value(&mut self) -> &mut V {
        &mut self.slot.value
    }

    /// The key and its value at once.
    pub fn key_value(&mut self) -> (&K, &mut V) {
        (self.key, &mut self.slot.value)
    }

    /// Sets an event-time timer at `time` (a second one at the same time is the same timer).
    pub fn set_timer(&mut self, time: EventTime) {
        if !self.slot.timers.contains(&time) {
            self.slot.timers.push(time);
            self.index.event.entry(time).or_default().push(self.key.clone());
        }
    }

    /// Deletes the timer at `time`, if set.
    pub fn delete_timer(&mut self, time: EventTime) {
        if let Some(i) = self.slot.timers.iter().position(|&t| t == time) {
            self.slot.timers.swap_remove(i);
        }
    }

    /// The key's pending timers, in no particular order.
    pub fn timers(&self) -> &[EventTime] {
        &self.slot.timers
    }

    /// Sets a processing-time timer at `at` (a second one at the same time is the same timer).
    pub fn set_processing_timer(&mut self, at: ProcessingTime) {
        if !self.slot.proc_timers.contains(&at) {
            self.slot.proc_timers.push(at);
            self.index.processing.entry(at).or_default().push(self.key.clone());
        }
    }

    /// Deletes the processing-time timer at `at`, if set.
    pub fn delete_processing_timer(&mut self, at: ProcessingTime) {
        if let Some(i) = self.slot.proc_timers.iter().position(|&t| t == at) {
            self.slot.proc_timers.swap_remove(i);
        }
    }

    /// The key's pending processing-time timers, in no particular order.
    pub fn processing_timers(&self) -> &[ProcessingTime] {
        &self.slot.proc_timers
    }

    /// Removes the key, its value and its timers when the callback returns.
    pub fn remove(&mut self) {
        self.remove = true;
    }
}

/// The per-key values of one stateful step on one worker, with event-time
/// and processing-time timers, written to checkpoints one part per worker,
/// indexed by key group.
///
/// - **Restore** ([`restore`](Self::restore)) reads the groups this worker
///   owns now from every file the checkpoint lists for the step, whatever
///   worker count wrote them.
/// - **Snapshots** ([`checkpoint`](Self::checkpoint)) hold exactly the values
///   and timers at the moment they are taken; the operator takes one after
///   applying an epoch, so a snapshot for epoch `e` holds exactly the effect
///   of inputs at epochs `<= e`.
/// - **Dirty tracking**: every callback on a key ([`with_key`](Self::with_key),
///   [`fire_due`](Self::fire_due)) marks its key group changed. A checkpoint
///   with no changed group writes nothing new (it lists the previous files
///   again); one where at most half of the groups holding entries changed
///   writes a *delta* file of just those groups (a group that became empty is
///   written empty), on top of the last full file and the deltas since;
///   otherwise, or after [`MAX_DELTAS`](Self::MAX_DELTAS) deltas, a full
///   file. Restore applies the files in the order they were written (their
///   paths sort by checkpoint epoch), so a group's newest block wins. The
///   checkpoint store's retention keeps every file a retained manifest lists.
/// - **Timers** fire in time order: event-time ones as the watermark passes
///   them ([`fire_due`](Self::fire_due)), processing-time ones as the wall
///   clock does ([`fire_due_processing`](Self::fire_due_processing)). Both
///   kinds are checkpointed; a processing-time timer whose moment passed
///   while the pipeline was down fires as soon as it runs again.
pub struct KeyedState<K, V> {
    groups: KeyGroups,
    table: HashTable<(K, Slot<V>)>,
    index: Index<K>,
    dirty: Vec<bool>,
    dirty_groups: usize,
    /// Entries per key group.
    group_len: Vec<u32>,
    /// This worker's files that make up the last snapshot: a full one, then deltas.
    chain: Vec<FileEntry>,
}

/// Which timers.
#[derive(Clone, Copy)]
enum Kind {
    Event,
    Processing,
}

/// The entries of one key group in a state file: key, value, event-time
/// timers, processing-time timers.
type GroupEntries<K, V> = Vec<(K, V, Vec<EventTime>, Vec<ProcessingTime>)>;

/// The entries of one key group, borrowed for writing.
type GroupRefs<'a, K, V> = Vec<(&'a K, &'a V, &'a [EventTime], &'a [ProcessingTime])>;

fn hash_of<K: Hash>(key: &K) -> u64 {
    FxBuildHasher.hash_one(key)
}

impl<K, V> KeyedState<K, V>
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned + Default,
{
    /// Deltas written on top of a full file before the next full one.
    pub const MAX_DELTAS: usize = 8;

    /// Empty state split into `groups`.
    pub fn new(groups: KeyGroups) -> Self {
        let n = groups.count() as usize;
        KeyedState {
            groups,
            table: HashTable::new(),
            index: Index { event: BTreeMap::new(), processing: BTreeMap::new() },
            dirty: vec![false; n],
            dirty_groups: 0,
            group_len: vec![0; n],
            chain: Vec::new(),
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no key has state.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The value of `key`, if it has one.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.table.find(hash_of(key), |e| e.0 == *key).map(|e| &e.1.value)
    }

    /// A hint that `key`'s state is used soon: prefetches its table entry
    /// (see [`crate::hint::prefetch`]) without waiting for it. Only the
    /// table's control bytes are read (small, so usually cached), not the
    /// entry: the first entry in `key`'s probe sequence whose tag matches is
    /// prefetched, which is `key`'s own unless a tag collides (then a wasted
    /// hint, no harm). A loop over records that calls it some records ahead
    /// of [`with_key`](Self::with_key) hides most of the cache misses of a
    /// table larger than the caches.
    #[inline]
    pub fn prefetch(&self, key: &K) {
        if let Some(entry) = self.table.find_bucket_index(hash_of(key), |_| true).and_then(|i| self.table.get_bucket(i))
        {
            // Every cache line of the entry.
            let p: *const u8 = (entry as *const (K, Slot<V>)).cast();
            for offset in (0..std::mem::size_of::<(K, Slot<V>)>()).step_by(64) {
                crate::hint::prefetch(p.wrapping_add(offset));
            }
        }
    }

    /// Every key with its value (in no particular order).
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.table.iter().map(|(k, s)| (k, &s.value))
    }

    /// Reserves room for `more` keys.
    pub fn reserve(&mut self, more: usize) {
        self.table.reserve(more, |e| hash_of(&e.0));
    }

    fn mark(&mut self, group: u32) {
        if let Some(d) = self.dirty.get_mut(group as usize)
            && !*d
        {
            *d = true;
            self.dirty_groups += 1;
        }
    }

    fn removed(&mut self, group: u32) {
        if let Some(n) = self.group_len.get_mut(group as usize) {
            *n = n.saturating_sub(1);
        }
    }

    /// Runs `f` on `key`'s state (`Default` when the key has none),
    /// and marks its group changed.
    pub fn with_key<R>(&mut self, key: K, f: impl FnOnce(&mut KeyView<'_, K, V>) -> R) -> R {
        let hash = hash_of(&key);
        let (groups, group_len) = (self.groups, &mut self.group_len);
        let mut entry = match self.table.entry(hash, |e| e.0 == key, |e| hash_of(&e.0)) {
            Entry::Occupied(o) => o,
            Entry::Vacant(v) => {
                let group = groups.group_of(&key);
                if let Some(n) = group_len.get_mut(group as usize) {
                    *n += 1;
                }
                v.insert((key, Slot { group, value: V::default(), timers: Timers::new(), proc_timers: Timers::new() }))
            }
        };
        let (key, slot) = entry.get_mut();
        let group = slot.group;
        let mut view = KeyView { key, slot, index: &mut self.index, remove: false };
        let r = f(&mut view);
        if view.remove {
            entry.remove();
            self.removed(group);
        }
        self.mark(group);
        r
    }

    /// Fires every event-time timer at or below `watermark`, earliest first:
    /// runs `f` on each key whose timer it is, with the timer's time (the
    /// timer is gone by then), and marks the key's group changed.
    pub fn fire_due(&mut self, watermark: EventTime, f: impl FnMut(EventTime, &mut KeyView<'_, K, V>)) {
        self.fire(Kind::Event, watermark, f)
    }

    /// Fires every processing-time timer at or before `now`, earliest first,
    /// as [`fire_due`](Self::fire_due) does event-time ones.
    pub fn fire_due_processing(&mut self, now: ProcessingTime, f: impl FnMut(ProcessingTime, &mut KeyView<'_, K, V>)) {
        self.fire(Kind::Processing, now, f)
    }

    fn fire(&mut self, kind: Kind, upto: i64, mut f: impl FnMut(i64, &mut KeyView<'_, K, V>)) {
        loop {
            let index = match kind {
                Kind::Event => &mut self.index.event,
                Kind::Processing => &mut self.index.processing,
            };
            let Some(entry) = index.first_entry() else { break };
            if *entry.key() > upto {
                break;
            }
            let (time, keys) = entry.remove_entry();
            for key in keys {
                let hash = hash_of(&key);
                let Ok(mut entry) = self.table.find_entry(hash, |e| e.0 == key) else { continue };
                let (key, slot) = entry.get_mut();
                let timers = match kind {
                    Kind::Event => &mut slot.timers,
                    Kind::Processing => &mut slot.proc_timers,
                };
                let Some(i) = timers.iter().position(|&t| t == time) else { continue };
                timers.swap_remove(i);
                let group = slot.group;
                let mut view = KeyView { key, slot, index: &mut self.index, remove: false };
                f(time, &mut view);
                if view.remove {
                    entry.remove();
                    self.removed(group);
                }
                self.mark(group);
            }
        }
    }

    /// The earliest pending processing-time timer, if any (possibly of a deleted timer).
    pub fn next_processing_timer(&self) -> Option<ProcessingTime> {
        self.index.processing.first_key_value().map(|(&t, _)| t)
    }

    /// The earliest pending timer time, if any (possibly of a deleted timer).
    pub fn next_timer(&self) -> Option<EventTime> {
        self.index.event.first_key_value().map(|(&t, _)| t)
    }

    /// Writes this worker's part for checkpoint `epoch` (as `name` in the
    /// checkpoint's directory) with `global` (operator-wide state every
    /// worker restores) and returns the files that together hold the
    /// snapshot: the last full one and the deltas after it (see the type's docs).
    pub fn checkpoint<G: Serialize + ?Sized>(
        &mut self,
        store: &dyn CheckpointStore,
        epoch: Epoch,
        name: &str,
        global: &G,
    ) -> Result<Vec<FileEntry>> {
        if self.dirty_groups == 0 && !self.chain.is_empty() {
            return Ok(self.chain.clone());
        }
        let live = self.group_len.iter().filter(|&&n| n > 0).count();
        let delta = !self.chain.is_empty() && self.chain.len() <= Self::MAX_DELTAS && self.dirty_groups * 2 <= live;
        let mut by_group: BTreeMap<u32, GroupRefs<'_, K, V>> = BTreeMap::new();
        if delta {
            for (g, _) in self.dirty.iter().enumerate().filter(|(_, d)| **d) {
                by_group.insert(g as u32, Vec::new());
            }
        }
        for (k, s) in self.table.iter() {
            if !delta || self.dirty.get(s.group as usize).copied().unwrap_or(true) {
                by_group.entry(s.group).or_default().push((k, &s.value, &s.timers, &s.proc_timers));
            }
        }
        let mut w = StateWriter::default();
        w.group(GLOBAL_GROUP, global)?;
        for (g, entries) in by_group {
            w.group(g, &entries)?;
        }
        let file = store.write_part(epoch, name, &w.finish()?)?;
        if !delta {
            self.chain.clear();
        }
        self.chain.push(file);
        self.dirty.iter_mut().for_each(|d| *d = false);
        self.dirty_groups = 0;
        Ok(self.chain.clone())
    }

    /// Loads the groups in `mine` from a checkpoint's files for this step (any
    /// worker count wrote them) and returns every file's global state, in the
    /// order the files were written.
    pub fn restore<G: DeserializeOwned>(
        &mut self,
        store: &dyn CheckpointStore,
        files: &[FileEntry],
        mine: Range<u32>,
    ) -> Result<Vec<G>> {
        let mut files: Vec<&FileEntry> = files.iter().collect();
        // Paths start with `chk-<epoch, zero-padded>/`: the order they were written in.
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let mut globals = Vec::new();
        let mut latest: BTreeMap<u32, GroupEntries<K, V>> = BTreeMap::new();
        for file in files {
            let bytes = store.read_part(file)?;
            let reader = StateReader::new(&bytes, &file.path)?;
            if let Some(g) = reader.read::<G>(GLOBAL_GROUP)? {
                globals.push(g);
            }
            for g in reader.groups().filter(|g| mine.contains(g)).collect::<Vec<_>>() {
                latest.insert(g, reader.read(g)?.unwrap_or_default());
            }
        }
        for (_, entries) in latest {
            for (key, value, timers, proc_timers) in entries {
                let group = self.groups.group_of(&key);
                if let Some(n) = self.group_len.get_mut(group as usize) {
                    *n += 1;
                }
                for &t in &timers {
                    self.index.event.entry(t).or_default().push(key.clone());
                }
                for &t in &proc_timers {
                    self.index.processing.entry(t).or_default().push(key.clone());
                }
                let hash = hash_of(&key);
                let slot =
                    Slot { group, value, timers: Timers::from_vec(timers), proc_timers: Timers::from_vec(proc_timers) };
                self.table.insert_unique(hash, (key, slot), |e| hash_of(&e.0));
            }
        }
        // The first checkpoint after a restore is a full one of this worker's own.
        self.chain.clear();
        Ok(globals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::LocalStore;

    fn set(s: &mut KeyedState<u32, u64>, k: u32, v: u64, timer: Option<EventTime>) {
        s.with_key(k, |view| {
            *view.value() = v;
            if let Some(t) = timer {
                view.set_timer(t);
            }
        });
    }

    #[test]
    fn deltas_then_full_and_restore_with_another_worker_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let groups = KeyGroups::new(16).unwrap();
        let mut s: KeyedState<u32, u64> = KeyedState::new(groups);
        for k in 0..100u32 {
            set(&mut s, k, u64::from(k), Some(i64::from(k) * 10));
        }
        let full = s.checkpoint(&store, 1, "op.w0.part", &7u8).unwrap();
        assert_eq!(full.len(), 1);
        // Nothing changed: the same files.
        assert_eq!(s.checkpoint(&store, 2, "op.w0.part", &7u8).unwrap(), full);
        // One key changed, one removed: a delta.
        set(&mut s, 3, 333, None);
        s.with_key(4, |view| view.remove());
        let delta = s.checkpoint(&store, 3, "op.w0.part", &8u8).unwrap();
        assert_eq!(delta.len(), 2);
        assert!(delta[1].size < delta[0].size);
        // Restore in halves, as two workers.
        let mut all = BTreeMap::new();
        for (w, mine) in [groups.groups_of(0, 2), groups.groups_of(1, 2)].into_iter().enumerate() {
            let mut r: KeyedState<u32, u64> = KeyedState::new(groups);
            let globals: Vec<u8> = r.restore(&store, &delta, mine).unwrap();
            assert_eq!(globals, vec![7, 8], "worker {w}");
            let mut fired = Vec::new();
            r.fire_due(EventTime::MAX, |t, view| fired.push((*view.key(), t)));
            for (k, v) in r.iter() {
                all.insert(*k, *v);
            }
            for (k, t) in fired {
                assert_eq!(t, i64::from(k) * 10);
            }
        }
        assert_eq!(all.len(), 99);
        assert_eq!(all[&3], 333);
        assert!(!all.contains_key(&4));
        assert_eq!(all[&5], 5);
        // Every key changed: a full file again.
        for k in 0..100u32 {
            set(&mut s, k, 1, None);
        }
        let again = s.checkpoint(&store, 4, "op.w0.part", &9u8).unwrap();
        assert_eq!(again.len(), 1);
    }

    #[test]
    fn processing_timers_fire_in_order_and_survive_a_restore() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let groups = KeyGroups::new(8).unwrap();
        let mut s: KeyedState<u32, u8> = KeyedState::new(groups);
        for (k, at) in [(1u32, 300), (2, 100), (3, 200), (4, 100)] {
            s.with_key(k, |view| {
                view.set_processing_timer(at);
                view.set_timer(at + 1);
            });
        }
        s.with_key(3, |view| view.delete_processing_timer(200));
        assert_eq!(s.next_processing_timer(), Some(100));
        let files = s.checkpoint(&store, 1, "op.w0.part", &0u8).unwrap();
        // Restored (as one worker of two, then the other), the timers are pending again.
        let mut fired = Vec::new();
        for mine in [groups.groups_of(0, 2), groups.groups_of(1, 2)] {
            let mut r: KeyedState<u32, u8> = KeyedState::new(groups);
            let _: Vec<u8> = r.restore(&store, &files, mine).unwrap();
            r.fire_due_processing(250, |at, view| fired.push((at, *view.key())));
            // Event-time timers are their own: none fired.
            assert!(r.next_timer().is_some_and(|t| t >= 101));
        }
        fired.sort_unstable();
        assert_eq!(fired, vec![(100, 2), (100, 4)]);
        // In one state: earliest first; a deleted timer never fires.
        let mut order = Vec::new();
        s.fire_due_processing(i64::MAX, |at, view| order.push((at, *view.key())));
        assert_eq!(order.len(), 3);
        assert_eq!(order.last(), Some(&(300, 1)));
        assert!(order.iter().all(|&(_, k)| k != 3));
        assert_eq!(s.next_processing_timer(), None);
    }

    #[test]
    fn timers_come_due_in_time_order_and_deleted_ones_never() {
        let mut s: KeyedState<String, u8> = KeyedState::new(KeyGroups::default());
        for (k, t) in [("a", 30), ("b", 10), ("c", 20), ("d", 10)] {
            s.with_key(k.to_string(), |view| {
                view.set_timer(t);
                view.set_timer(t);
            });
        }
        s.with_key("c".to_string(), |view| view.delete_timer(20));
        s.with_key("d".to_string(), |view| view.remove());
        let mut fired = Vec::new();
        s.fire_due(25, |t, view| fired.push((view.key().clone(), t)));
        assert_eq!(fired, vec![("b".to_string(), 10)]);
        // A timer set while firing, at or below the watermark, fires in the same call.
        s.fire_due(30, |t, view| {
            fired.push((view.key().clone(), t));
            if t == 30 {
                view.set_timer(29);
                view.set_timer(31);
            }
        });
        assert_eq!(fired, vec![("b".into(), 10), ("a".into(), 30), ("a".into(), 29)]);
        assert_eq!(s.next_timer(), Some(31));
        assert_eq!(s.len(), 3);
    }
}
