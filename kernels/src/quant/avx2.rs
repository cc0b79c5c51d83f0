//! AVX2 dot products, bitwise equal to [`super::scalar`].
//!
//! The K-quant kernels (the 32-element types are [`super::panel`]'s). Like the AVX-512 ones,
//! each runs a range of weight rows against `R` activation rows, decoding every super-block
//! once for all of them.
//!
//! Integer sums use `maddubs` (unsigned weight byte times signed activation byte, pairs added to
//! i16) and `madd` (pairs of i16 to i32). No i16 can saturate: activations are within
//! [-127, 127] and the unsigned operand is at most 63, so a pair is at most 2 * 63 * 127 < 2^15.
//!
//! Safety (every fn): the caller has checked that the CPU has AVX2, FMA and F16C, and the rows are
//! consistent (`a.qs.len()` = 256 times the block count, as built by `QuantMatrix`).

use std::arch::x86_64::*;

use std::ops::Range;

use super::activations::ActRow;
use super::format::{Q4KBlock, Q5KBlock, Q6KBlock};

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

/// `h.to_f32()` (exact either way) without `half`'s run-time feature check.
#[inline]
#[target_feature(enable = "f16c")]
pub(crate) unsafe fn f16_to_f32(h: half::f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
}

/// [`super::scalar::fold_lanes`] on a vector.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn fold_lanes(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// The 32 unsigned nibble values from value index `v` of a `pack_nibbles` stream: value `i` of
/// a 128-value chunk is the low nibble of byte `i` (i < 64) or the high nibble of byte `i - 64`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn nibbles32(qs: *const u8, v: usize) -> __m256i {
    let i = v % 128;
    let q = _mm256_loadu_si256(qs.add(v / 128 * 64 + i % 64).cast());
    let q = if i < 64 { q } else { _mm256_srli_epi16::<4>(q) };
    _mm256_and_si256(q, _mm256_set1_epi8(0xF))
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

/// The K-quant float step on vectors: `acc += (d * da) * s - (dmin * da) * s_min`
/// ([`super::scalar::k_lanes`]; Q6_K passes `s_min = None`, as `x - 0.0 = x`).
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn k_lanes(acc: __m256, d: f32, dmin: f32, da: f32, s: __m256i, s_min: Option<__m256i>) -> __m256 {
    let t = _mm256_mul_ps(_mm256_set1_ps(d * da), _mm256_cvtepi32_ps(s));
    let t = match s_min {
        Some(m) => _mm256_sub_ps(t, _mm256_mul_ps(_mm256_set1_ps(dmin * da), _mm256_cvtepi32_ps(m))),
        None => t,
    };
    _mm256_add_ps(acc, t)
}

/// What the Q4_K/Q5_K kernels read of a block besides its values.
pub(crate) trait KBlock {
    fn d_dmin(&self) -> (half::f16, half::f16);
    fn scales(&self) -> &[u8; 8];
    fn mins(&self) -> &[u8; 8];
}

macro_rules! k_block {
    ($t:ty) => {
        impl KBlock for $t {
            #[inline(always)]
            fn d_dmin(&self) -> (half::f16, half::f16) {
                (self.d, self.dmin)
            }
            #[inline(always)]
            fn scales(&self) -> &[u8; 8] {
                &self.scales
            }
            #[inline(always)]
            fn mins(&self) -> &[u8; 8] {
                &self.mins
            }
        }
    };
}
k_block!(Q4KBlock);
k_block!(Q5KBlock);

/// Q4_K/Q5_K over weight rows `cols`: `piece(blk, sub)` gives sub-block `sub`'s 32 unsigned
/// values. Each sub-block's `madd` lanes, scaled, add up to the canonical lane sums.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn k_rows<B: KBlock, const R: usize>(
    w: &[B],
    nb: usize,
    cols: Range<usize>,
    a: [ActRow; R],
    piece: impl Fn(&B, usize) -> __m256i,
    emit: &mut impl FnMut(usize, [f32; R]),
) {
    for j in cols {
        let mut acc = [_mm256_setzero_ps(); R];
        for (b, blk) in w[j * nb..(j + 1) * nb].iter().enumerate() {
            prefetch((blk as *const B).cast(), std::mem::size_of::<B>());
            let mut s = [_mm256_setzero_si256(); R];
            for sub in 0..8 {
                let (q, scale) = (piece(blk, sub), _mm256_set1_epi16(blk.scales()[sub] as i16));
                for (a, s) in a.iter().zip(s.iter_mut()) {
                    let x = _mm256_loadu_si256(a.qs.as_ptr().add(b * 256 + 32 * sub).cast());
                    *s = _mm256_add_epi32(*s, _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), scale));
                }
            }
            let mins = _mm256_cvtepu8_epi32(_mm_loadl_epi64(blk.mins().as_ptr().cast()));
            let (d, dmin) = blk.d_dmin();
            let (d, dmin) = (f16_to_f32(d), f16_to_f32(dmin));
            for ((a, s), acc) in a.iter().zip(s).zip(acc.iter_mut()) {
                let s_min = _mm256_mullo_epi32(mins, _mm256_loadu_si256(a.sums.as_ptr().add(b * 8).cast()));
                *acc = k_lanes(*acc, d, dmin, *a.scales.get_unchecked(b), s, Some(s_min));
            }
        }
        emit(j, acc.map(|acc| fold_lanes(acc)));
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q4k<const R: usize>(w: &[Q4KBlock], nb: usize, cols: Range<usize>, a: [ActRow; R], emit: &mut impl FnMut(usize, [f32; R])) {
    k_rows(w, nb, cols, a, |blk, sub| nibbles32(blk.qs.as_ptr(), 32 * sub), emit)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q5k<const R: usize>(w: &[Q5KBlock], nb: usize, cols: Range<usize>, a: [ActRow; R], emit: &mut impl FnMut(usize, [f32; R])) {
    let piece = |blk: &Q5KBlock, sub: usize| {
        let bits = u32::from_le_bytes(blk.qh[4 * sub..4 * sub + 4].try_into().unwrap());
        _mm256_or_si256(nibbles32(blk.qs.as_ptr(), 32 * sub), bits_to_0x10(bits))
    };
    k_rows(w, nb, cols, a, piece, emit)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q6k<const R: usize>(w: &[Q6KBlock], nb: usize, cols: Range<usize>, a: [ActRow; R], emit: &mut impl FnMut(usize, [f32; R])) {
    let m2 = _mm256_set1_epi8(3);
    for j in cols {
        let mut acc = [_mm256_setzero_ps(); R];
        for (b, blk) in w[j * nb..(j + 1) * nb].iter().enumerate() {
            prefetch((blk as *const Q6KBlock).cast(), std::mem::size_of::<Q6KBlock>());
            let mut s = [_mm256_setzero_si256(); R];
            for h in 0..2 {
                let qh = _mm256_loadu_si256(blk.qh.as_ptr().add(32 * h).cast());
                for t in 0..4 {
                    // Group t (elements 128h + 32t ..+32): bits 2t..2t+2 of qh above the nibble.
                    let high = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * t as i32)), m2);
                    let q = _mm256_or_si256(nibbles32(blk.ql.as_ptr(), 128 * h + 32 * t), _mm256_slli_epi16::<4>(high));
                    // Elements 0..16 of the group use scale g, 16..32 scale g + 1: the low and
                    // high 128-bit halves of the i16 products.
                    let g = 8 * h + 2 * t;
                    let scale = _mm256_set_m128i(_mm_set1_epi16(blk.scales[g + 1] as i16), _mm_set1_epi16(blk.scales[g] as i16));
                    for (a, s) in a.iter().zip(s.iter_mut()) {
                        let x = _mm256_loadu_si256(a.qs.as_ptr().add(b * 256 + 128 * h + 32 * t).cast());
                        *s = _mm256_add_epi32(*s, _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), scale));
                    }
                }
            }
            // The zero point: lane l takes 32 * scales[g] * sums[g] for g = l, l + 8.
            let scales = _mm_loadu_si128(blk.scales.as_ptr().cast());
            let (lo, hi) = (_mm256_cvtepi8_epi32(scales), _mm256_cvtepi8_epi32(_mm_srli_si128::<8>(scales)));
            let d = f16_to_f32(blk.d);
            for ((a, s), acc) in a.iter().zip(s).zip(acc.iter_mut()) {
                let sums = a.sums.as_ptr().add(b * 16);
                let offset = _mm256_add_epi32(
                    _mm256_mullo_epi32(lo, _mm256_loadu_si256(sums.cast())),
                    _mm256_mullo_epi32(hi, _mm256_loadu_si256(sums.add(8).cast())),
                );
                let s = _mm256_sub_epi32(s, _mm256_slli_epi32::<5>(offset));
                *acc = k_lanes(*acc, d, 0.0, *a.scales.get_unchecked(b), s, None);
            }
        }
        emit(j, acc.map(|acc| fold_lanes(acc)));
    }
}
