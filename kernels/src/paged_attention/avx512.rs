//! AVX-512 pieces of paged attention, bitwise equal to the generic body in [`super::cpu`] (whose
//! docs give the arithmetic): row loads as f32, the 16 x 16 transpose of a key block, the
//! softmax and its `exp`. [`super::avx512_tile`] is the kernel built from them.
//!
//! Safety (every fn): the CPU has AVX-512 F/BW/VL, FMA and F16C; pointers cover what they read.

use std::arch::x86_64::*;

use crate::elem::{Elem, ElemKind};
use crate::fused::exp::{EXP_LN2, EXP_POLY, EXP_RANGE, EXP_ROUND};

use super::cpu::LANES;

/// Sixteen elements from `p` as f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn load<T: Elem>(p: *const T) -> __m512 {
    match T::KIND {
        ElemKind::F32 => _mm512_loadu_ps(p.cast()),
        // bf16 is the top half of an f32.
        ElemKind::Bf16 => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast())))),
        ElemKind::F16 => _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())),
    }
}

/// Rows to columns: lane `j` of output `i` is lane `i` of input `j`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn transpose(r: [__m512; 16]) -> [__m512; 16] {
    // Pairs of rows interleaved: per 128-bit lane, elements 4k, 4k+1 (lo) or 4k+2, 4k+3 (hi).
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4b + c], 128-bit lane k: rows 4b .. 4b + 4 of column 4k + c.
    let mut u = [_mm512_setzero_ps(); 16];
    for b in 0..4 {
        let (t0, t1) = (_mm512_castps_pd(t[4 * b]), _mm512_castps_pd(t[4 * b + 1]));
        let (t2, t3) = (_mm512_castps_pd(t[4 * b + 2]), _mm512_castps_pd(t[4 * b + 3]));
        u[4 * b] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
        u[4 * b + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
        u[4 * b + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
        u[4 * b + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
    }
    // Gather the four 128-bit pieces of each column.
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        let a = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
        let b = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
        let a2 = _mm512_shuffle_f32x4::<0xdd>(u[c], u[4 + c]);
        let b2 = _mm512_shuffle_f32x4::<0xdd>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_f32x4::<0x88>(a, b);
        out[8 + c] = _mm512_shuffle_f32x4::<0xdd>(a, b);
        out[4 + c] = _mm512_shuffle_f32x4::<0x88>(a2, b2);
        out[12 + c] = _mm512_shuffle_f32x4::<0xdd>(a2, b2);
    }
    out
}

/// The reference softmax on `p[..n]` (`p` holds `n` rounded up to sixteen floats).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn softmax(p: *mut f32, n: usize) {
    let (full, rest) = (n / LANES, n % LANES);
    let tail: __mmask16 = ((1u32 << rest) - 1) as u16;
    let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
    for i in 0..full {
        max = _mm512_max_ps(max, _mm512_loadu_ps(p.add(i * LANES)));
    }
    if rest > 0 {
        max = _mm512_mask_max_ps(max, tail, max, _mm512_loadu_ps(p.add(full * LANES)));
    }
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
    let mut sum = _mm512_setzero_ps();
    for i in 0..full {
        let e = exp(_mm512_sub_ps(_mm512_loadu_ps(p.add(i * LANES)), max));
        _mm512_storeu_ps(p.add(i * LANES), e);
        sum = _mm512_add_ps(sum, e);
    }
    if rest > 0 {
        let e = _mm512_maskz_mov_ps(tail, exp(_mm512_sub_ps(_mm512_loadu_ps(p.add(full * LANES)), max)));
        _mm512_storeu_ps(p.add(full * LANES), e);
        sum = _mm512_add_ps(sum, e);
    }
    // The reference's tree: halves, quarters, eighths, the last pair.
    let s8 = _mm256_add_ps(_mm512_castps512_ps256(sum), _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(sum))));
    let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
    let inv = _mm512_set1_ps(1.0 / _mm_cvtss_f32(s1));
    for i in 0..n.div_ceil(LANES) {
        _mm512_storeu_ps(p.add(i * LANES), _mm512_mul_ps(_mm512_loadu_ps(p.add(i * LANES)), inv));
    }
}

/// [`crate::fused::exp::exp`] on sixteen lanes, operation for operation (for inputs that are
/// not NaN; the scores here are finite).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn exp(x: __m512) -> __m512 {
    let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(EXP_RANGE.0)), _mm512_set1_ps(EXP_RANGE.1));
    let round = _mm512_set1_ps(EXP_ROUND);
    let t = _mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)), round);
    let n = _mm512_sub_ps(t, round);
    let r = _mm512_sub_ps(_mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(EXP_LN2.0))), _mm512_mul_ps(n, _mm512_set1_ps(EXP_LN2.1)));
    let mut p = _mm512_set1_ps(EXP_POLY[0]);
    for c in &EXP_POLY[1..] {
        p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(*c));
    }
    let e_r = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(p, _mm512_mul_ps(r, r)), r), _mm512_set1_ps(1.0));
    let bits = _mm512_add_epi32(_mm512_sub_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(EXP_ROUND.to_bits() as i32)), _mm512_set1_epi32(127));
    _mm512_mul_ps(e_r, _mm512_castsi512_ps(_mm512_slli_epi32::<23>(bits)))
}
