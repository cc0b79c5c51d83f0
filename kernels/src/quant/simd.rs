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

/// `0x10` in byte `i` where bit `i` of `bits` is set.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn bits_to_0x10(bits: u32) -> __m256i {
    // Byte i takes byte i / 8 of `bits`, then tests its bit i % 8.
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0),
    );
    let select = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}
