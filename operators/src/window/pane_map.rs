//! A pane's map from key to accumulator: a hash table (Fx hashing, as
//! `FxHashMap`) that can also prefetch a key's entry, so that the loops over
//! a batch of records or a pane's keys ask for the entry of the key a few
//! places ahead while they work on this one (a window of 100,000 keys is
//! larger than the caches: each look-up was a miss that stalled the loop).

use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;
use weir_core::hint::prefetch;

/// How many keys ahead the loops over a pane prefetch.
pub(super) const AHEAD: usize = weir_core::state::PREFETCH_AHEAD;

fn hash<K: Hash>(key: &K) -> u64 {
    FxBuildHasher.hash_one(key)
}

/// Keys with their accumulators.
pub(super) struct PaneMap<K, V> {
    table: HashTable<(K, V)>,
}

impl<K: Clone, V: Clone> Clone for PaneMap<K, V> {
    fn clone(&self) -> Self {
        PaneMap { table: self.table.clone() }
    }

    /// Reuses this map's memory.
    fn clone_from(&mut self, source: &Self) {
        self.table.clone_from(&source.table);
    }
}

impl<K, V> Default for PaneMap<K, V> {
    fn default() -> Self {
        PaneMap { table: HashTable::new() }
    }
}

impl<K, V> PaneMap<K, V> {
    /// Keys held.
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    /// Empties it, keeping its memory.
    pub(super) fn clear(&mut self) {
        self.table.clear();
    }

    /// Every key with its value, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&K, &V)> + Clone {
        self.table.iter().map(|(k, v)| (k, v))
    }

    /// Takes every key and value out, keeping the memory.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = (K, V)> + '_ {
        self.table.drain()
    }
}

impl<K: Hash + Eq, V> PaneMap<K, V> {
    /// `key`'s value.
    pub(super) fn get(&self, key: &K) -> Option<&V> {
        self.table.find(hash(key), |e| e.0 == *key).map(|e| &e.1)
    }

    /// `key`'s value, to change.
    pub(super) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.table.find_mut(hash(key), |e| e.0 == *key).map(|e| &mut e.1)
    }

    /// Whether `key` has a value.
    pub(super) fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key`'s value (replacing one it had).
    pub(super) fn insert(&mut self, key: K, value: V) {
        self.upsert(key, value, |old, new| *old = new);
    }

    /// Sets `key`'s value to `value`, or, if it has one, `merge`s `value` into it.
    #[inline]
    pub(super) fn upsert(&mut self, key: K, value: V, merge: impl FnOnce(&mut V, V)) {
        match self.table.entry(hash(&key), |e| e.0 == key, |e| hash(&e.0)) {
            hashbrown::hash_table::Entry::Occupied(mut o) => merge(&mut o.get_mut().1, value),
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert((key, value));
            }
        }
    }

    /// Room for `more` keys besides those held.
    pub(super) fn reserve(&mut self, more: usize) {
        self.table.reserve(more, |e| hash(&e.0));
    }

    /// A hint that `key` is looked up soon: prefetches its entry (found from
    /// the table's control bytes alone; a tag collision prefetches another
    /// key's, which is harmless), as `KeyedState::prefetch` does.
    #[inline]
    pub(super) fn prefetch(&self, key: &K) {
        if let Some(e) = self.table.find_bucket_index(hash(key), |_| true).and_then(|i| self.table.get_bucket(i)) {
            let p: *const u8 = (e as *const (K, V)).cast();
            for offset in (0..std::mem::size_of::<(K, V)>()).step_by(64) {
                prefetch(p.wrapping_add(offset));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Against `HashMap` on random operations, many keys colliding in few buckets' tags.
    #[test]
    fn behaves_as_a_hash_map() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            state >> 33
        };
        let mut m: PaneMap<u64, u64> = PaneMap::default();
        let mut r: HashMap<u64, u64> = HashMap::new();
        for _ in 0..50_000 {
            let (op, key, value) = (next() % 5, next() % 3000, next() % 100);
            m.prefetch(&key);
            match op {
                0 => {
                    m.insert(key, value);
                    r.insert(key, value);
                }
                1 | 2 => {
                    m.upsert(key, value, |a, b| *a += b);
                    *r.entry(key).or_insert(0) += value;
                }
                3 => {
                    if let Some(v) = m.get_mut(&key) {
                        *v += 1;
                    }
                    if let Some(v) = r.get_mut(&key) {
                        *v += 1;
                    }
                }
                _ => assert_eq!(m.get(&key), r.get(&key)),
            }
            assert_eq!(m.contains_key(&key), r.contains_key(&key));
        }
        assert_eq!(m.len(), r.len());
        let mut copy = PaneMap::default();
        copy.clone_from(&m);
        let mut a: Vec<_> = copy.iter().map(|(k, v)| (*k, *v)).collect();
        let mut b: Vec<_> = r.iter().map(|(k, v)| (*k, *v)).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
        let mut drained: Vec<_> = m.drain().collect();
        drained.sort();
        assert_eq!(drained, b);
        assert_eq!(m.len(), 0);
        m.reserve(10);
        m.clear();
        assert!(m.get(&1).is_none());
    }
}
