//! Performance hints.

/// Asks the CPU to bring the cache line holding `p` close (all cache
/// levels) without waiting for it. A hint: it never faults, whatever `p`
/// points to (dangling or null included), and it is a no-op where the
/// architecture has no such instruction.
///
/// For loops that know a few iterations ahead which scattered memory they
/// will touch (a key's state in a table larger than the caches): a miss
/// then overlaps with the work on earlier records instead of stalling it.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` is a hint that reads nothing architecturally and
    // never faults (on an invalid address it does nothing), and SSE, which it
    // needs, is part of the x86-64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
