//! Approximate distinct counts with HyperLogLog (Flajolet et al., 2007) at
//! precision 14: 16,384 one-byte registers, standard error
//! `1.04 / sqrt(16384) ≈ 0.81 %`. Small sets are kept exactly (a sorted list
//! of key hashes) until they would take half the registers' memory.
//!
//! Accumulators are checkpointed and merged across workers and restarts, so
//! the key hash must not change between processes or toolchains:
//! [`StableHasher`] is this crate's own, fixed function (not `RandomState`,
//! nor `DefaultHasher`, whose algorithm is unspecified), pinned by golden
//! values in the tests.

use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use super::Aggregator;

/// Index bits: 2^14 registers.
const P: u32 = 14;
const REGISTERS: usize = 1 << P;
/// Largest register value: `64 - P` hash bits below the index, plus one.
const MAX_RHO: usize = 64 - P as usize + 1;
/// Exact (sparse) while at most this many distinct hashes: 8 KiB, half the
/// registers.
const SPARSE_MAX: usize = REGISTERS / 16;

/// A fixed, portable 64-bit hash for keys that are checkpointed: each integer
/// write is one little-endian 64-bit word, bytes go in 8-byte words, and each
/// word is absorbed with a multiply and rotate (bijective in the word, as in
/// FxHash); `finish` applies MurmurHash3's 64-bit finalizer (`fmix64`) so that
/// every output bit depends on every input bit, which HyperLogLog's register
/// index (the top 14 bits) and rank (the leading zeros of the rest) need.
///
/// The hash of a key also depends on what its `Hash` impl writes. The
/// standard library's impls for integers, `str`/`String`, tuples and slices
/// have written the same data for years but do not promise to; the golden
/// values in this module's tests would catch a change on a toolchain upgrade.
#[derive(Clone, Copy, Debug)]
pub struct StableHasher {
    h: u64,
    len: u64,
}

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher::new()
    }
}

const SEED: u64 = 0x243f_6a88_85a3_08d3; // digits of pi
const K: u64 = 0x9e37_79b9_7f4a_7c15; // 2^64 / golden ratio, odd

impl StableHasher {
    /// A hasher in its initial state.
    pub const fn new() -> Self {
        StableHasher { h: SEED, len: 0 }
    }

    /// The hash of one key.
    pub fn hash_one<K: Hash + ?Sized>(key: &K) -> u64 {
        let mut h = StableHasher::new();
        key.hash(&mut h);
        h.finish()
    }

    #[inline(always)]
    fn absorb(&mut self, word: u64, bytes: u64) {
        self.h = (self.h ^ word).wrapping_mul(K).rotate_left(29);
        self.len = self.len.wrapping_add(bytes);
    }
}

/// Up to 7 bytes as a little-endian integer, with overlapping fixed-size
/// reads instead of a variable-length copy (the same value either way).
#[inline(always)]
fn read_tail(t: &[u8]) -> u64 {
    let n = t.len();
    if n >= 4 {
        let lo = u32::from_le_bytes([t[0], t[1], t[2], t[3]]) as u64;
        let hi = u32::from_le_bytes([t[n - 4], t[n - 3], t[n - 2], t[n - 1]]) as u64;
        // Bytes read twice are equal, so or-ing the overlap is harmless.
        lo | (hi << ((n - 4) * 8))
    } else if n > 0 {
        t[0] as u64 | (t[n / 2] as u64) << (8 * (n / 2)) | (t[n - 1] as u64) << (8 * (n - 1))
    } else {
        0
    }
}

/// MurmurHash3's 64-bit finalizer.
#[inline(always)]
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

impl Hasher for StableHasher {
    #[inline]
    fn finish(&self) -> u64 {
        fmix64(self.h ^ self.len.rotate_left(32))
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.absorb(u64::from_le_bytes(w), 8);
        }
        let tail = chunks.remainder();
        // The tail's length in the top byte (a tail has at most 7 bytes).
        self.absorb(read_tail(tail) | ((tail.len() as u64) << 56), tail.len() as u64);
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.absorb(i as u64, 1);
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.absorb(i as u64, 2);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.absorb(i as u64, 4);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.absorb(i, 8);
    }
    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.absorb(i as u64, 8);
        self.absorb((i >> 64) as u64, 8);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        // As 64 bits on every platform.
        self.absorb(i as u64, 8);
    }
    #[inline]
    fn write_i8(&mut self, i: i8) {
        self.write_u8(i as u8);
    }
    #[inline]
    fn write_i16(&mut self, i: i16) {
        self.write_u16(i as u16);
    }
    #[inline]
    fn write_i32(&mut self, i: i32) {
        self.write_u32(i as u32);
    }
    #[inline]
    fn write_i64(&mut self, i: i64) {
        self.write_u64(i as u64);
    }
    #[inline]
    fn write_i128(&mut self, i: i128) {
        self.write_u128(i as u128);
    }
    #[inline]
    fn write_isize(&mut self, i: isize) {
        self.write_usize(i as usize);
    }
}

/// The state of a [`DistinctCount`]: the exact set of key hashes while small,
/// HyperLogLog registers past 1,024 hashes. Which one a state is
/// depends only on the set of hashes it has seen, so merges in any order end
/// in the state a single pass would.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DistinctState {
    /// Distinct key hashes, sorted.
    Sparse(Vec<u64>),
    /// One register per index: the largest rank seen (leading zeros + 1).
    Dense(Vec<u8>),
}

impl Default for DistinctState {
    fn default() -> Self {
        DistinctState::Sparse(Vec::new())
    }
}

#[inline(always)]
fn register_update(registers: &mut [u8], hash: u64) {
    let index = (hash >> (64 - P)) as usize;
    // A guard bit below the remaining 50 bits caps the rank at 51.
    let rank = ((hash << P) | (1 << (P - 1))).leading_zeros() as u8 + 1;
    if let Some(r) = registers.get_mut(index) {
        *r = (*r).max(rank);
    }
}

fn densify(hashes: &[u64]) -> Vec<u8> {
    let mut registers = vec![0u8; REGISTERS];
    for &h in hashes {
        register_update(&mut registers, h);
    }
    registers
}

impl DistinctState {
    /// Adds a key's [`StableHasher`] hash.
    #[inline]
    pub fn add_hash(&mut self, hash: u64) {
        match self {
            DistinctState::Dense(registers) => register_update(registers, hash),
            DistinctState::Sparse(hashes) => {
                if let Err(at) = hashes.binary_search(&hash) {
                    hashes.insert(at, hash);
                    if hashes.len() > SPARSE_MAX {
                        *self = DistinctState::Dense(densify(hashes));
                    }
                }
            }
        }
    }

    /// Adds the keys of `other`: register-wise maximum, or the union of the
    /// exact sets.
    pub fn merge(&mut self, other: &DistinctState) {
        match (&mut *self, other) {
            (DistinctState::Dense(mine), DistinctState::Dense(theirs)) => {
                for (m, t) in mine.iter_mut().zip(theirs) {
                    *m = (*m).max(*t);
                }
            }
            (DistinctState::Dense(mine), DistinctState::Sparse(theirs)) => {
                for &h in theirs {
                    register_update(mine, h);
                }
            }
            (DistinctState::Sparse(mine), DistinctState::Dense(theirs)) => {
                let mut registers = theirs.clone();
                for &h in mine.iter() {
                    register_update(&mut registers, h);
                }
                *self = DistinctState::Dense(registers);
            }
            (DistinctState::Sparse(mine), DistinctState::Sparse(theirs)) => {
                let union = sorted_union(mine, theirs);
                *self = if union.len() > SPARSE_MAX {
                    DistinctState::Dense(densify(&union))
                } else {
                    DistinctState::Sparse(union)
                };
            }
        }
    }

    /// The estimated number of distinct keys: exact while sparse (up to
    /// 64-bit hash collisions), else Ertl's improved HyperLogLog estimator.
    pub fn estimate(&self) -> f64 {
        match self {
            DistinctState::Sparse(hashes) => hashes.len() as f64,
            DistinctState::Dense(registers) => ertl_estimate(registers),
        }
    }
}

fn sorted_union(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
        out.push(x.min(y));
        i += usize::from(x <= y);
        j += usize::from(y <= x);
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// Otmar Ertl's improved raw estimator ("New cardinality estimation
/// algorithms for HyperLogLog sketches", 2017, algorithm 6): from the
/// histogram of register values, without empirical bias tables. Its `σ` term
/// is linear counting's small-range correction made continuous (it takes over
/// while many registers are zero) and its `τ` term the large-range one, so it
/// has no bias jump where classic HyperLogLog switches to linear counting
/// (at 2.5 · m).
fn ertl_estimate(registers: &[u8]) -> f64 {
    let m = registers.len() as f64;
    if registers.is_empty() {
        return 0.0;
    }
    let mut histogram = [0u32; MAX_RHO + 1];
    for &r in registers {
        histogram[(r as usize).min(MAX_RHO)] += 1;
    }
    let q = MAX_RHO - 1;
    let mut z = m * tau(1.0 - histogram[q + 1] as f64 / m);
    for k in (1..=q).rev() {
        z = 0.5 * (z + histogram[k] as f64);
    }
    z += m * sigma(histogram[0] as f64 / m);
    let alpha_inf = 1.0 / (2.0 * std::f64::consts::LN_2);
    alpha_inf * m * m / z
}

/// `σ(x) = x + Σ_{k≥1} x^(2^k) · 2^(k-1)`.
fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let (mut y, mut z) = (1.0, x);
    loop {
        x *= x;
        let previous = z;
        z += x * y;
        y += y;
        if z == previous {
            return z;
        }
    }
}

/// `τ(x) = (1 - x - Σ_{k≥1} (1 - x^(2^-k))² · 2^-k) / 3`.
fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let (mut y, mut z) = (1.0, 1.0 - x);
    loop {
        x = x.sqrt();
        let previous = z;
        y *= 0.5;
        z -= (1.0 - x) * (1.0 - x) * y;
        if z == previous {
            return z / 3.0;
        }
    }
}

/// Marks a [`DistinctCount`] whose key function returns an owned key.
#[derive(Clone, Copy, Debug)]
pub struct Owned;

/// Marks a [`DistinctCount`] whose key function returns a reference into the
/// item (no clone per item).
#[derive(Clone, Copy, Debug)]
pub struct Borrowed;

/// The approximate number of distinct keys `f(item)` (HyperLogLog, standard
/// error `1.04 / sqrt(2^14) ≈ 0.81 %`, so 99.7 % of estimates are within
/// 2.4 %); exact up to 1,024 distinct keys. The result is rounded to a whole
/// number.
///
/// Memory per window and key: 8 bytes a distinct key while exact, then
/// 16 KiB. Merging is exact: split inputs give the answer of one pass.
///
/// [`DistinctCount::new`] takes a key function returning an owned key
/// (`|r| r.user_id`); [`DistinctCount::by_ref`] one returning a reference into
/// the item (`|r| r.device.as_str()`), which saves cloning strings.
///
/// ```
/// use weir_operators::aggregate::{Aggregator, DistinctCount};
/// struct Visit { user: String, page: u32 }
/// let users = DistinctCount::by_ref(|v: &Visit| v.user.as_str());
/// let pages = DistinctCount::new(|v: &Visit| v.page);
/// let (mut u, mut p) = (users.init(), pages.init());
/// for (user, page) in [("ann", 1), ("bob", 1), ("ann", 2)] {
///     let v = Visit { user: user.to_string(), page };
///     users.add(&mut u, &v);
///     pages.add(&mut p, &v);
/// }
/// assert_eq!((users.finish(&u), pages.finish(&p)), (2, 2));
/// ```
pub struct DistinctCount<F, M = Owned> {
    f: F,
    mode: PhantomData<fn() -> M>,
}

impl<F: Clone, M> Clone for DistinctCount<F, M> {
    fn clone(&self) -> Self {
        DistinctCount { f: self.f.clone(), mode: PhantomData }
    }
}

impl<F, M> std::fmt::Debug for DistinctCount<F, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DistinctCount")
    }
}

impl<F> DistinctCount<F, Owned> {
    /// Counts the distinct keys `f(item)`.
    pub fn new<T, K: Hash>(f: F) -> Self
    where
        F: Fn(&T) -> K,
    {
        DistinctCount { f, mode: PhantomData }
    }
}

impl<F> DistinctCount<F, Borrowed> {
    /// Counts the distinct keys `*f(item)`, borrowed from the item.
    pub fn by_ref<T, K: Hash + ?Sized>(f: F) -> Self
    where
        F: for<'a> Fn(&'a T) -> &'a K,
    {
        DistinctCount { f, mode: PhantomData }
    }
}

impl<T, K: Hash, F: Fn(&T) -> K + 'static> Aggregator<T> for DistinctCount<F, Owned> {
    type Acc = DistinctState;
    type Out = u64;
    fn init(&self) -> DistinctState {
        DistinctState::default()
    }
    #[inline]
    fn add(&self, acc: &mut DistinctState, item: &T) {
        acc.add_hash(StableHasher::hash_one(&(self.f)(item)));
    }
    fn merge(&self, acc: &mut DistinctState, other: &DistinctState) {
        acc.merge(other);
    }
    fn finish(&self, acc: &DistinctState) -> u64 {
        acc.estimate().round() as u64
    }
}

impl<T, K: Hash + ?Sized, F> Aggregator<T> for DistinctCount<F, Borrowed>
where
    F: for<'a> Fn(&'a T) -> &'a K + 'static,
{
    type Acc = DistinctState;
    type Out = u64;
    fn init(&self) -> DistinctState {
        DistinctState::default()
    }
    #[inline]
    fn add(&self, acc: &mut DistinctState, item: &T) {
        acc.add_hash(StableHasher::hash_one((self.f)(item)));
    }
    fn merge(&self, acc: &mut DistinctState, other: &DistinctState) {
        acc.merge(other);
    }
    fn finish(&self, acc: &DistinctState) -> u64 {
        acc.estimate().round() as u64
    }
}

#[cfg(test)]
mod tests;
