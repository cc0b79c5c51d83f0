//! AVX2 pieces of paged attention, bitwise equal to the generic body in [`super::cpu`] (whose
//! docs give the arithmetic): row loads as f32, the 8 x 8 transpose of a key block, the softmax
//! and its `exp`. [`super::avx2_tile`] is the kernel built from them.
//!
//! Safety (every fn): the CPU has AVX2, FMA and F16C; pointers cover what they read.

use std::arch::x86_64::*;

use crate::elem::{Elem, ElemKind};

/// Eight elements from `p` as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load<T: Elem>(p: *const T) -> __m256 {
    match T::KIND {
        ElemKind::F32 => _mm256_loadu_ps(p.cast()),
        // bf16 is the top half of an f32.
        ElemKind::Bf16 => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())))),
        ElemKind::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
    }
}

/// Rows to columns: lane `j` of output `i` is lane `i` of input `j`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn transpose(r: [__m256; 8]) -> [__m256; 8] {
    // Per 128-bit lane k: elements 4k, 4k+1 (lo) or 4k+2, 4k+3 (hi) of a pair of rows.
    let mut t = [_mm256_setzero_ps(); 8];
    for i in 0..4 {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // s[4b + c], 128-bit lane k: rows 4b .. 4b + 4 of column 4k + c.
    let mut s = [_mm256_setzero_ps(); 8];
    for b in 0..2 {
        s[4 * b] = _mm256_shuffle_ps::<0x44>(t[4 * b], t[4 * b + 2]);
        s[4 * b + 1] = _mm256_shuffle_ps::<0xEE>(t[4 * b], t[4 * b + 2]);
        s[4 * b + 2] = _mm256_shuffle_ps::<0x44>(t[4 * b + 1], t[4 * b + 3]);
        s[4 * b + 3] = _mm256_shuffle_ps::<0xEE>(t[4 * b + 1], t[4 * b + 3]);
    }
    let mut out = [_mm256_setzero_ps(); 8];
    for c in 0..4 {
        out[c] = _mm256_permute2f128_ps::<0x20>(s[c], s[4 + c]);
        out[4 + c] = _mm256_permute2f128_ps::<0x31>(s[c], s[4 + c]);
    }
    out
}

/// The reference softmax ([`super::cpu::softmax`]) on eight lanes, bit for bit: the same
/// maximum, `exp` operation for operation, each key's term added to lane `j % 16` of the sum in
/// order (even eight-key vectors in lanes 0-7, odd ones in 8-15), the same final tree.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn softmax(p: &mut [f32]) {
    let (n, full) = (p.len(), p.len() / 8);
    let ptr = p.as_mut_ptr();
    let mut max = _mm256_set1_ps(f32::NEG_INFINITY);
    for i in 0..full {
        max = _mm256_max_ps(max, _mm256_loadu_ps(ptr.add(8 * i)));
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), max);
    let max = p[8 * full..].iter().chain(&lanes).copied().fold(f32::NEG_INFINITY, f32::max);
    let (maxv, mut sums) = (_mm256_set1_ps(max), [_mm256_setzero_ps(); 2]);
    for i in 0..full {
        let e = exp(_mm256_sub_ps(_mm256_loadu_ps(ptr.add(8 * i)), maxv));
        _mm256_storeu_ps(ptr.add(8 * i), e);
        sums[i % 2] = _mm256_add_ps(sums[i % 2], e);
    }
    let mut sum = [0f32; 16];
    _mm256_storeu_ps(sum.as_mut_ptr(), sums[0]);
    _mm256_storeu_ps(sum.as_mut_ptr().add(8), sums[1]);
    for (j, x) in p.iter_mut().enumerate().skip(8 * full) {
        *x = crate::fused::exp::exp(*x - max);
        sum[j % 16] += *x;
    }
    let inv = _mm256_set1_ps(1.0 / crate::fused::simd::sum16(&sum));
    for i in 0..full {
        _mm256_storeu_ps(ptr.add(8 * i), _mm256_mul_ps(_mm256_loadu_ps(ptr.add(8 * i)), inv));
    }
    let inv = 1.0 / crate::fused::simd::sum16(&sum);
    p[8 * full..n].iter_mut().for_each(|x| *x *= inv);
}

/// [`crate::fused::exp::exp`] on eight lanes, operation for operation (for inputs that are not
/// NaN; the scores here are finite).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn exp(x: __m256) -> __m256 {
    use crate::fused::exp::{EXP_LN2, EXP_POLY, EXP_RANGE, EXP_ROUND};
    let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(EXP_RANGE.0)), _mm256_set1_ps(EXP_RANGE.1));
    let round = _mm256_set1_ps(EXP_ROUND);
    let t = _mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)), round);
    let n = _mm256_sub_ps(t, round);
    let r = _mm256_sub_ps(_mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(EXP_LN2.0))), _mm256_mul_ps(n, _mm256_set1_ps(EXP_LN2.1)));
    let mut p = _mm256_set1_ps(EXP_POLY[0]);
    for c in &EXP_POLY[1..] {
        p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(*c));
    }
    let e_r = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(r, r)), r), _mm256_set1_ps(1.0));
    let bits = _mm256_add_epi32(_mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(EXP_ROUND.to_bits() as i32)), _mm256_set1_epi32(127));
    _mm256_mul_ps(e_r, _mm256_castsi256_ps(_mm256_slli_epi32::<23>(bits)))
}
