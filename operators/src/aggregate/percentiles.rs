//! Percentiles with a mergeable relative-error sketch, [`DDSketch`] (Masson,
//! Rim and Lee, VLDB 2019): for a quantile `q` of `n` values the answer is
//! within 1 % (relative) of the exact quantile, the value of rank
//! `floor(q · (n - 1))` in sorted order, whatever the distribution.
//!
//! Values are counted in logarithmically sized buckets, one store for the
//! positive values, one for the negative values (by magnitude), and a count of
//! zeros. Merging adds the bucket counts: exact, associative and commutative,
//! so a merged sketch answers exactly like one built in a single pass.

use serde::{Deserialize, Serialize};
use weir_core::{Error, Result};

use super::Aggregator;

/// The relative accuracy of [`DDSketch`]: 1 %.
const ACCURACY: f64 = 0.01;
/// Buckets per store at most (see [`DDSketch`] on collapsing).
const MAX_BUCKETS: usize = 2048;

// The index of a value `v = 2^e · (1 + s)` (`0 <= s < 1`) is
// `floor(MULTIPLIER · (e + c(s)))`, where the cubic `c(s) = ((A·s + B)·s + C)·s`
// approximates `log2(1 + s)` (the interpolation of DataDog's
// `CubicallyInterpolatedMapping`): a few multiplications instead of a `ln` call.
// `e + c(s)` grows at least `10/7` per unit of `ln v` (at `s = 0` and `s = 2/3`;
// `log2` grows `1/ln 2 ≈ 1.4427`), so with `MULTIPLIER = 7 / (10 · ln γ)` every
// bucket spans at most a factor `γ = (1 + α) / (1 - α)` of values, and a
// bucket's representative is within `α` of each of its values. `MULTIPLIER` is
// widened by 1e-6 so that rounding never pushes a bucket past `γ`; it costs
// about 1 % more buckets than an exact logarithm.
const A: f64 = 6.0 / 35.0;
const B: f64 = -3.0 / 5.0;
const C: f64 = 10.0 / 7.0;
/// Added to `e + c(s)` (at least -1087 after the subnormal scaling) so that
/// truncation is `floor` (a float `floor` is a library call on baseline x86-64).
const BIAS: f64 = 1088.0;

/// `7 / (10 · ln γ) · (1 + 1e-6)` for `α = 0.01` (`ln` is not `const`; a test
/// checks the value).
const MULTIPLIER: f64 = 34.998868301054;

const MANTISSA: u64 = (1 << 52) - 1;
const ONE_BITS: u64 = 0x3ff0_0000_0000_0000;

/// `e + c(s)` for a positive finite `v`, plus [`BIAS`].
#[inline(always)]
fn log2_approx(v: f64) -> f64 {
    let mut bits = v.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    if e == -1023 {
        // Subnormal: scale into the normal range first.
        bits = (v * f64::from_bits((1023 + 64) << 52)).to_bits();
        e = ((bits >> 52) & 0x7ff) as i64 - 1023 - 64;
    }
    let s = f64::from_bits((bits & MANTISSA) | ONE_BITS) - 1.0;
    ((A * s + B) * s + C) * s + (e as f64 + BIAS)
}

/// The bucket index of a positive finite value (0 up to about 74,000).
#[inline(always)]
fn index(v: f64) -> i32 {
    (log2_approx(v) * MULTIPLIER) as i32
}

/// `2^e` for any `e` from -1100 to 1100 (0 or infinity beyond the range of f64).
fn pow2(e: i64) -> f64 {
    if e > 1023 {
        f64::INFINITY
    } else if e >= -1022 {
        f64::from_bits(((e + 1023) as u64) << 52)
    } else {
        pow2(e + 64) * f64::from_bits((1023 - 64) << 52)
    }
}

/// The smallest value whose `log2_approx` is `t` (the inverse of `e + c(s)`),
/// as `(1 + s, e)`.
fn log2_inverse(t: f64) -> (f64, i64) {
    let t = t - BIAS;
    let e = t.floor();
    let f = t - e;
    // c is increasing on [0, 1] (c' >= 0.74 there) and close to the
    // identity: Newton's method from s = f converges quadratically, and 8
    // steps reach full precision (a bisection needed 60 per bound).
    let mut s = f;
    for _ in 0..8 {
        let c = ((A * s + B) * s + C) * s - f;
        let dc = (3.0 * A * s + 2.0 * B) * s + C;
        s = (s - c / dc).clamp(0.0, 1.0);
    }
    (1.0 + s, e as i64)
}

/// The bounds of bucket `i` as `(lo, hi, e)`: the bucket holds the values
/// from `lo · 2^e` up to (not including) `hi · 2^e`, with `lo` in `[1, 2)`.
/// (Scaled, so the top bucket's upper bound does not overflow.)
fn bounds(i: i32) -> (f64, f64, i64) {
    let (lo, e) = log2_inverse(i as f64 / MULTIPLIER);
    let (hi, e_hi) = log2_inverse((i as f64 + 1.0) / MULTIPLIER);
    (lo, hi * pow2(e_hi - e), e)
}

/// The value that represents bucket `i`: `2·lo·hi / (lo + hi)` for the
/// bucket's bounds, which is within `(γ - 1) / (γ + 1) = α` of any value in
/// it (infinite if that is beyond the largest f64; answers are clamped to the
/// maximum).
fn representative(i: i32) -> f64 {
    let table = REPRESENTATIVES.get_or_init(|| (0..=MAX_INDEX).map(compute_representative).collect());
    match usize::try_from(i).ok().and_then(|i| table.get(i)) {
        Some(&r) => r,
        None => compute_representative(i),
    }
}

/// The largest bucket index of a finite value: `log2_approx` is below
/// `1024 + BIAS` (the largest exponent is 1023, `c(s) < 1`).
const MAX_INDEX: i32 = ((1024.0 + BIAS) * MULTIPLIER) as i32 + 1;

/// [`representative`] of every bucket index (about 74,000: 590 KB), computed
/// once: a quantile then costs a look-up instead of two Newton solves.
static REPRESENTATIVES: std::sync::OnceLock<Box<[f64]>> = std::sync::OnceLock::new();

/// [`representative`], computed.
fn compute_representative(i: i32) -> f64 {
    let (lo, hi, e) = bounds(i);
    let r = 2.0 * lo * hi / (lo + hi);
    // In two steps: 2^e alone may be subnormal or overflow where r · 2^e does not.
    let half = e / 2;
    r * pow2(half) * pow2(e - half)
}

/// Bucket counts for one sign: `counts[k]` counts the values of index
/// `offset + k`. The vector grows (with some slack on the side it grew) as new
/// indices arrive; no allocation once the range of the data is covered.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Store {
    offset: i32,
    counts: Vec<u64>,
    total: u64,
}

impl Store {
    #[inline(always)]
    fn add(&mut self, idx: i32) {
        // Below `offset` wraps to a huge position: not in the vector.
        let pos = idx.wrapping_sub(self.offset) as u32 as usize;
        match self.counts.get_mut(pos) {
            Some(c) => *c += 1,
            None => self.add_outside(idx),
        }
        self.total += 1;
    }

    #[cold]
    fn add_outside(&mut self, idx: i32) {
        self.make_room(idx, idx);
        let pos = (idx as i64 - self.offset as i64).max(0) as usize;
        if let Some(c) = self.counts.get_mut(pos) {
            *c += 1;
        }
    }

    /// The lowest and highest index with a count.
    fn occupied(&self) -> Option<(i64, i64)> {
        let first = self.counts.iter().position(|&c| c != 0)?;
        let last = self.counts.iter().rposition(|&c| c != 0)?;
        Some((self.offset as i64 + first as i64, self.offset as i64 + last as i64))
    }

    /// Makes the vector cover indices `lo..=hi` besides those it holds. Past
    /// [`MAX_BUCKETS`] the lowest ones collapse into the bucket `top - 2047`:
    /// a function of the highest index seen alone, so the state does not
    /// depend on the order of adds and merges.
    fn make_room(&mut self, lo: i32, hi: i32) {
        let (lo, hi) = (lo as i64, hi as i64);
        let (off, len) = (self.offset as i64, self.counts.len() as i64);
        // Already covered (the vector never exceeds MAX_BUCKETS, so nothing
        // collapses): the common case of a merge, without scanning the counts.
        if lo >= off && hi < off + len {
            return;
        }
        let (bottom, top) = match self.occupied() {
            Some((a, b)) => (a.min(lo), b.max(hi)),
            None => (lo, hi),
        };
        let cap = MAX_BUCKETS as i64;
        let collapse = top - bottom + 1 > cap;
        let new_lo = if collapse { top - cap + 1 } else { bottom };
        if new_lo >= off && top < off + len {
            return;
        }
        let (start, new_len) = if collapse {
            (new_lo, cap)
        } else {
            let need = top - new_lo + 1;
            let slack = (need / 2).max(8).min(cap - need);
            // Slack on the side(s) that grew: both for a first allocation.
            let (down, up) = (len == 0 || new_lo < off, len == 0 || top >= off + len);
            let below = match (down, up) {
                (true, true) => slack / 2,
                (true, false) => slack,
                _ => 0,
            };
            (new_lo - below, need + slack)
        };
        let mut counts = vec![0u64; new_len as usize];
        for (k, &c) in self.counts.iter().enumerate() {
            if c != 0 {
                let pos = (off + k as i64 - start).max(0) as usize;
                if let Some(slot) = counts.get_mut(pos) {
                    *slot += c;
                }
            }
        }
        self.offset = start as i32;
        self.counts = counts;
    }

    fn merge(&mut self, other: &Store) {
        let Some((lo, hi)) = other.occupied() else { return };
        self.make_room(lo as i32, hi as i32);
        for (k, &c) in other.counts.iter().enumerate() {
            if c != 0 {
                let pos = (other.offset as i64 + k as i64 - self.offset as i64).max(0) as usize;
                if let Some(slot) = self.counts.get_mut(pos) {
                    *slot += c;
                }
            }
        }
        self.total += other.total;
    }

    /// The index of the value of rank `rank` (from 0, ascending index).
    fn index_at(&self, rank: u64) -> Option<i32> {
        let mut seen = 0u64;
        for (k, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen > rank {
                return Some((self.offset as i64 + k as i64) as i32);
            }
        }
        None
    }
}

/// A DDSketch with relative accuracy 1 %: a mergeable summary of a set of
/// numbers that answers quantiles within 1 % of the exact value.
///
/// - Zeros are counted exactly; negative values go to a store of their own
///   (by magnitude), so any mix of signs keeps the guarantee. `NaN` and
///   infinities are ignored (not counted).
/// - The exact minimum and maximum are kept: quantile 0 and 1 are exact, and
///   every answer is clamped to `[min, max]`.
/// - Each store holds at most 2048 buckets, which covers a ratio of about
///   4·10¹⁷ between the smallest and largest magnitude of one sign. Beyond
///   that the lowest buckets are collapsed into one: the quantiles that fall
///   in it (the smallest magnitudes) lose the guarantee, the others keep it.
/// - Memory: 8 bytes a bucket; values between 1 and 1000 take about 350
///   buckets (each decade about 116), plus up to half that as room to grow.
///
/// ```
/// use weir_operators::aggregate::DDSketch;
/// let mut s = DDSketch::new();
/// for x in 1..=1000 {
///     s.add(x as f64);
/// }
/// let p99 = s.quantile(0.99).unwrap_or(f64::NAN);
/// assert!((p99 - 990.0).abs() <= 0.01 * 990.0);
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DDSketch {
    positive: Store,
    negative: Store,
    zeros: u64,
    min: f64,
    max: f64,
}

impl Default for DDSketch {
    fn default() -> Self {
        DDSketch::new()
    }
}

impl DDSketch {
    /// The relative accuracy of every answer.
    pub const RELATIVE_ACCURACY: f64 = ACCURACY;

    /// An empty sketch (no allocation until the first value).
    pub fn new() -> Self {
        DDSketch {
            positive: Store::default(),
            negative: Store::default(),
            zeros: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    /// Adds one value (`NaN` and infinities are ignored).
    #[inline]
    pub fn add(&mut self, v: f64) {
        if v > 0.0 {
            if v == f64::INFINITY {
                return;
            }
            self.positive.add(index(v));
        } else if v < 0.0 {
            if v == f64::NEG_INFINITY {
                return;
            }
            self.negative.add(index(-v));
        } else if v == 0.0 {
            self.zeros += 1;
        } else {
            return; // NaN
        }
        if v < self.min {
            self.min = v;
        }
        if v > self.max {
            self.max = v;
        }
    }

    /// Adds the values of `other`: afterwards `self` answers as if it had seen
    /// both inputs in one pass. Costs time in proportion to the buckets of both.
    pub fn merge(&mut self, other: &DDSketch) {
        self.positive.merge(&other.positive);
        self.negative.merge(&other.negative);
        self.zeros += other.zeros;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Number of values added.
    pub fn count(&self) -> u64 {
        self.negative.total + self.zeros + self.positive.total
    }

    /// The smallest value added, if any.
    pub fn min(&self) -> Option<f64> {
        (self.count() > 0).then_some(self.min)
    }

    /// The largest value added, if any.
    pub fn max(&self) -> Option<f64> {
        (self.count() > 0).then_some(self.max)
    }

    /// The `q`-quantile: within 1 % of the value of rank `floor(q · (n - 1))`
    /// of the sorted values. `None` if the sketch is empty or `q` is not in
    /// `[0, 1]`.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = ((q * (n - 1) as f64) as u64).min(n - 1);
        if rank == 0 {
            return Some(self.min);
        }
        if rank == n - 1 {
            return Some(self.max);
        }
        let negatives = self.negative.total;
        let estimate = if rank < negatives {
            // The most negative value (largest magnitude) comes first.
            -representative(self.negative.index_at(negatives - 1 - rank)?)
        } else if rank < negatives + self.zeros {
            0.0
        } else {
            representative(self.positive.index_at(rank - negatives - self.zeros)?)
        };
        Some(estimate.clamp(self.min, self.max))
    }

    /// Buckets in use (for both signs); memory is about 8 bytes each.
    pub fn buckets(&self) -> usize {
        self.positive.counts.len() + self.negative.counts.len()
    }
}

/// Quantiles of `f(item)` from a [`DDSketch`] (within 1 %, relative): the
/// result holds one value per requested quantile, in the order given (`NaN`s
/// for an empty window).
///
/// ```
/// use weir_operators::aggregate::{Aggregator, Percentiles};
/// struct Reading { temp: f64 }
/// let p = Percentiles::new(|r: &Reading| r.temp, &[0.5, 0.99]);
/// let mut acc = p.init();
/// for t in 0..=100 {
///     p.add(&mut acc, &Reading { temp: t as f64 });
/// }
/// let [p50, p99] = p.finish(&acc)[..] else { unreachable!() };
/// assert!((p50 - 50.0).abs() <= 0.5 && (p99 - 99.0).abs() <= 0.99);
/// ```
#[derive(Clone, Debug)]
pub struct Percentiles<F> {
    f: F,
    quantiles: Vec<f64>,
}

impl<F> Percentiles<F> {
    /// The quantiles `qs` (each in `[0, 1]`: 0.5 is the median, 0.99 the
    /// 99th percentile) of `f(item)`.
    ///
    /// # Panics
    ///
    /// If a quantile is outside `[0, 1]` or `NaN`; [`Percentiles::try_new`]
    /// returns an error instead.
    pub fn new(f: F, qs: &[f64]) -> Self {
        match Self::try_new(f, qs) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`Percentiles::new`], with an [`Error::Config`] for a quantile
    /// outside `[0, 1]`.
    pub fn try_new(f: F, qs: &[f64]) -> Result<Self> {
        if let Some(q) = qs.iter().find(|q| !(0.0..=1.0).contains(*q)) {
            return Err(Error::config("percentiles", format!("quantile {q} is not in [0, 1]")));
        }
        Ok(Percentiles { f, quantiles: qs.to_vec() })
    }
}

impl<T, F: Fn(&T) -> f64 + 'static> Aggregator<T> for Percentiles<F> {
    type Acc = DDSketch;
    type Out = Vec<f64>;
    fn init(&self) -> DDSketch {
        DDSketch::new()
    }
    #[inline]
    fn add(&self, acc: &mut DDSketch, item: &T) {
        acc.add((self.f)(item));
    }
    fn merge(&self, acc: &mut DDSketch, other: &DDSketch) {
        acc.merge(other);
    }
    fn finish(&self, acc: &DDSketch) -> Vec<f64> {
        self.quantiles.iter().map(|&q| acc.quantile(q).unwrap_or(f64::NAN)).collect()
    }
}

#[cfg(test)]
mod tests;
