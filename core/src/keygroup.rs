//! Key groups: the fixed number of slices (default 256) keyed state is split into.
//!
//! A key's group comes from a stable hash of the key ([`stable_hash`],
//! [`key_hash`]). Stateful operators checkpoint their state per group, and each
//! worker owns a contiguous range of groups ([`KeyGroups::groups_of`]), so a
//! restart with another worker count reads only the groups it now owns. The
//! hash and the key-to-group mapping are part of the checkpoint format: if they
//! changed, keys restored from an older checkpoint would land in the wrong
//! group. They must never change; the tests pin them.

use std::hash::{Hash, Hasher};
use std::ops::Range;

use crate::error::{Error, Result};

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The 64-bit FNV-1a hash of `bytes`.
///
/// Stable forever: checkpoints store keyed state by the group this hash puts
/// the key in, so it gives the same value on every platform, Rust version and
/// Weir version.
///
/// ```
/// use weir_core::keygroup::stable_hash;
///
/// assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
/// ```
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hasher = StableHasher::new();
    hasher.write(bytes);
    hasher.finish()
}

/// A [`Hasher`] computing 64-bit FNV-1a, so that any `K: Hash` hashes stably
/// (see [`key_hash`]); `BuildHasherDefault<StableHasher>` makes it a map hasher.
///
/// Integers are fed as little-endian bytes, and `usize`/`isize` (slice length
/// prefixes, enum discriminants) as 64-bit, so the value is the same on every
/// platform. Beyond that it relies on the standard library's `Hash` impls
/// writing the same bytes in future Rust versions, which std does not promise:
/// a `str` writes its bytes then `0xff`, a slice its length then its elements,
/// a tuple or derived struct its fields in order. The tests pin these, so a
/// Rust release that changed them fails the build instead of silently moving
/// keys. Where that is not enough, hash the key's own encoding with
/// [`stable_hash`].
#[derive(Clone, Copy, Debug)]
pub struct StableHasher {
    state: u64,
}

impl StableHasher {
    /// A hasher in the FNV-1a initial state.
    pub const fn new() -> Self {
        StableHasher { state: FNV_OFFSET_BASIS }
    }
}

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher::new()
    }
}

impl Hasher for StableHasher {
    fn finish(&self) -> u64 {
        self.state
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.state ^= u64::from(byte);
            self.state = self.state.wrapping_mul(FNV_PRIME);
        }
    }

    // The defaults write native-endian bytes; these fix the byte order.
    fn write_u8(&mut self, i: u8) {
        self.write(&[i]);
    }

    fn write_u16(&mut self, i: u16) {
        self.write(&i.to_le_bytes());
    }

    fn write_u32(&mut self, i: u32) {
        self.write(&i.to_le_bytes());
    }

    fn write_u64(&mut self, i: u64) {
        self.write(&i.to_le_bytes());
    }

    fn write_u128(&mut self, i: u128) {
        self.write(&i.to_le_bytes());
    }

    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }

    fn write_i8(&mut self, i: i8) {
        self.write(&i.to_le_bytes());
    }

    fn write_i16(&mut self, i: i16) {
        self.write(&i.to_le_bytes());
    }

    fn write_i32(&mut self, i: i32) {
        self.write(&i.to_le_bytes());
    }

    fn write_i64(&mut self, i: i64) {
        self.write(&i.to_le_bytes());
    }

    fn write_i128(&mut self, i: i128) {
        self.write(&i.to_le_bytes());
    }

    fn write_isize(&mut self, i: isize) {
        self.write_i64(i as i64);
    }
}

/// The stable hash of any `K: Hash`, through [`StableHasher`] (read its caveat).
///
/// ```
/// use weir_core::keygroup::{key_hash, stable_hash};
///
/// // A str hashes as its bytes followed by 0xff.
/// assert_eq!(key_hash("dev-00042"), stable_hash(b"dev-00042\xff"));
/// ```
pub fn key_hash<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut hasher = StableHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

/// The MurmurHash3 64-bit finalizer. FNV-1a's high bits are poorly mixed for
/// keys that differ only in their last bytes ("dev-00000".."dev-09999" land in
/// 256 groups with a chi-squared of about 2500 from the raw high bits, 250
/// after this), so every input bit is spread over all 64 before the group is
/// taken from the high bits.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The number of key groups of a pipeline, and the mapping of keys to groups
/// and of groups to workers.
///
/// Groups are assigned to workers in contiguous ranges, like
/// [`crate::partition::Assignor::Range`]: worker `w` of `n` owns
/// [`groups_of(w, n)`](KeyGroups::groups_of).
///
/// ```
/// use weir_core::keygroup::KeyGroups;
///
/// let groups = KeyGroups::default();
/// let group = groups.group_of("dev-00042");
/// let owner = groups.owner(group, 3);
/// assert!(groups.groups_of(owner, 3).contains(&group));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct KeyGroups {
    count: u32,
}

impl KeyGroups {
    /// The default number of key groups.
    pub const DEFAULT_COUNT: u32 = 256;

    /// The largest number of key groups.
    pub const MAX_COUNT: u32 = 65_536;

    /// `count` key groups; fails unless `1 <= count <= 65536`.
    pub fn new(count: u32) -> Result<Self> {
        if (1..=Self::MAX_COUNT).contains(&count) {
            Ok(KeyGroups { count })
        } else {
            Err(Error::config("key_groups", format!("must be between 1 and {}, got {count}", Self::MAX_COUNT)))
        }
    }

    /// The number of key groups.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The group, in `0..count`, of a key whose [`key_hash`] or
    /// [`stable_hash`] is `hash`. Stable forever, like the hash.
    pub fn group_of_hash(&self, hash: u64) -> u32 {
        // Multiply-shift takes the high bits: an even split of the 64-bit range.
        ((u128::from(mix(hash)) * u128::from(self.count)) >> 64) as u32
    }

    /// The group of `key`: [`group_of_hash`](Self::group_of_hash) of its [`key_hash`].
    pub fn group_of<K: Hash + ?Sized>(&self, key: &K) -> u32 {
        self.group_of_hash(key_hash(key))
    }

    /// The worker, in `0..workers`, that owns `group`: `group * workers / count`.
    ///
    /// A `group` at or above `count` counts as the last group and `workers`
    /// of 0 as 1, so the result is always a valid worker index.
    pub fn owner(&self, group: u32, workers: usize) -> usize {
        let group = u128::from(group.min(self.count - 1));
        let workers = workers.max(1) as u128;
        (group * workers / u128::from(self.count)) as usize
    }

    /// The groups worker `worker` of `workers` owns, agreeing with
    /// [`owner`](Self::owner): the `g` with `g * workers / count == worker`.
    /// Empty when there are more workers than groups and this one gets none, or
    /// when `worker >= workers`; `workers` of 0 counts as 1.
    pub fn groups_of(&self, worker: usize, workers: usize) -> Range<u32> {
        let workers = workers.max(1);
        if worker >= workers {
            return self.count..self.count;
        }
        // The first group of worker `w` is the least `g` with `g * workers >= w * count`.
        let first = |w: usize| ((w as u128 * u128::from(self.count)).div_ceil(workers as u128)) as u32;
        first(worker)..first(worker + 1)
    }
}

impl Default for KeyGroups {
    /// [`KeyGroups::DEFAULT_COUNT`] groups.
    fn default() -> Self {
        KeyGroups { count: Self::DEFAULT_COUNT }
    }
}

impl TryFrom<u32> for KeyGroups {
    type Error = Error;

    fn try_from(count: u32) -> Result<Self> {
        KeyGroups::new(count)
    }
}

impl From<KeyGroups> for u32 {
    fn from(groups: KeyGroups) -> Self {
        groups.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_hash_is_pinned() {
        // FNV-1a 64 reference values.
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stable_hash(b"foobar"), 0x8594_4171_f739_67e8);
        // Computed once; checkpoints depend on them never changing.
        assert_eq!(stable_hash(b"dev-00042"), 0x5714_d663_2a45_1237);
        assert_eq!(key_hash("dev-00042"), 0x3d7b_1280_d35e_e9d8);
        assert_eq!(KeyGroups::default().group_of("dev-00042"), 132);
    }

    #[test]
    fn std_hash_impls_write_the_pinned_bytes() {
        assert_eq!(key_hash("dev-00042"), stable_hash(b"dev-00042\xff"));
        assert_eq!(key_hash(&String::from("dev-00042")), key_hash("dev-00042"));
        assert_eq!(key_hash(&0x0102_0304u32), stable_hash(&[4, 3, 2, 1]));
        assert_eq!(key_hash(&-2i64), stable_hash(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]));
        assert_eq!(key_hash(&7usize), stable_hash(&[7, 0, 0, 0, 0, 0, 0, 0]));
        // Slices: length as u64, then the elements.
        assert_eq!(key_hash(&[1u8, 2][..]), stable_hash(&[2, 0, 0, 0, 0, 0, 0, 0, 1, 2]));
        assert_eq!(key_hash(&vec![1u8, 2]), key_hash(&[1u8, 2][..]));
        // Tuples: fields in order.
        assert_eq!(key_hash(&("a", 1u16)), stable_hash(b"a\xff\x01\x00"));
        assert_eq!(key_hash(&true), stable_hash(&[1]));
    }

    #[test]
    fn new_validates_the_count() {
        assert!(KeyGroups::new(1).is_ok());
        assert!(KeyGroups::new(65_536).is_ok());
        for count in [0, 65_537, u32::MAX] {
            let err = KeyGroups::new(count).unwrap_err();
            assert!(matches!(&err, Error::Config { field, .. } if field == "key_groups"), "{err}");
        }
        assert_eq!(KeyGroups::default().count(), 256);
        assert_eq!(serde_json::to_string(&KeyGroups::default()).unwrap(), "256");
        assert_eq!(serde_json::from_str::<KeyGroups>("16").unwrap().count(), 16);
        assert!(serde_json::from_str::<KeyGroups>("0").is_err());
    }

    #[test]
    fn owner_and_groups_of_agree() {
        for count in (1..=70).chain([255, 256, 257, 1000, 65_536]) {
            let groups = KeyGroups::new(count).unwrap();
            for workers in 1..=40 {
                let mut next = 0;
                for worker in 0..workers {
                    let range = groups.groups_of(worker, workers);
                    // Contiguous, in worker order, covering every group once.
                    assert_eq!(range.start, next, "count {count} workers {workers}");
                    next = range.end;
                    for group in range {
                        assert_eq!(groups.owner(group, workers), worker);
                    }
                }
                assert_eq!(next, count);
                // Balanced like a range assignment.
                let sizes: Vec<u32> = (0..workers).map(|w| groups.groups_of(w, workers).len() as u32).collect();
                let (min, max) = (sizes.iter().min(), sizes.iter().max());
                assert!(max.zip(min).is_some_and(|(max, min)| max - min <= 1), "{sizes:?}");
                assert!(groups.groups_of(workers, workers).is_empty());
            }
        }
    }

    #[test]
    fn owner_is_always_a_valid_worker() {
        let groups = KeyGroups::new(10).unwrap();
        assert_eq!(groups.owner(10, 3), 2);
        assert_eq!(groups.owner(u32::MAX, 3), 2);
        assert_eq!(groups.owner(5, 0), 0);
        assert_eq!(groups.groups_of(0, 0), 0..10);
        let max = KeyGroups::new(KeyGroups::MAX_COUNT).unwrap();
        let owner = max.owner(65_535, usize::MAX);
        assert!(owner < usize::MAX);
        assert!(max.groups_of(owner, usize::MAX).contains(&65_535));
    }

    #[test]
    fn groups_are_in_range() {
        for count in [1, 2, 3, 7, 256, 65_536] {
            let groups = KeyGroups::new(count).unwrap();
            for hash in [0, 1, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
                assert!(groups.group_of_hash(hash) < count);
            }
        }
    }

    #[test]
    fn device_names_spread_evenly() {
        let groups = KeyGroups::default();
        let mut counts = vec![0u32; 256];
        for i in 0..10_000 {
            counts[groups.group_of(format!("dev-{i:05}").as_str()) as usize] += 1;
        }
        let expected = 10_000.0 / 256.0;
        let chi2: f64 = counts.iter().map(|&c| (f64::from(c) - expected).powi(2) / expected).sum();
        // 255 degrees of freedom: the 99.9 % quantile is about 330.
        assert!(chi2 < 330.0, "chi-squared {chi2}, counts {counts:?}");
        assert!(counts.iter().all(|&c| (15..=70).contains(&c)), "{counts:?}");
    }
}
