//! Small x86 helpers the panel kernels share.

use std::arch::x86_64::*;

/// How far ahead of the weights being read the kernels ask for cache lines. At decode the
/// kernels stream the whole model from memory; with the hardware prefetcher alone the test
/// model decoded ~15% slower (1 to 8 KiB tried: 2 to 4 KiB best).
const PREFETCH_BYTES: usize = 4096;

/// Asks for the cache lines of the `bytes` bytes at `p + PREFETCH_BYTES` (past the end of an
/// allocation is harmless: a prefetch never faults).
#[inline(always)]
pub(crate) fn prefetch(p: *const u8, bytes: usize) {
    let p = p.wrapping_add(PREFETCH_BYTES);
    for offset in (0..bytes).step_by(64) {
        // Safety: a prefetch is a hint; it reads nothing architecturally.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(offset).cast()) };
    }
}
