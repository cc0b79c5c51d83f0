//! AVX-512 pieces of paged attention, bitwise equal to the generic body in [`super::cpu`] (whose
//! docs give the arithmetic): row loads as f32, the 16 x 16 transpose of a key block, the
//! softmax and its `exp`, and the tile kernel's ([`super::tile`]) micro-kernels built from them.
//!
//! Safety (every fn): the CPU has AVX-512 F/BW/VL, FMA and F16C; pointers cover what they read.

use std::arch::x86_64::*;

use crate::elem::{Elem, ElemKind};
use crate::fused::exp::{EXP_LN2, EXP_POLY, EXP_RANGE, EXP_ROUND};

use super::cpu::LANES;
use super::tile::Isa;

/// Sixteen elements from `p` as f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn load<T: Elem>(p: *const T) -> __m512 {
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
unsafe fn transpose(r: [__m512; 16]) -> [__m512; 16] {
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
unsafe fn softmax(p: *mut f32, n: usize) {
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

/// The tile kernel's ([`super::tile`]) AVX-512 pieces: blocks of 32 keys, twelve rows a score
/// pass (2 x 12 accumulators), six rows by 64 dimensions a value pass (6 x 4).
pub(super) struct Avx512;

const SCORE_ROWS: usize = 12;

impl Isa for Avx512 {
    const BLOCK_KEYS: usize = 2 * LANES;
    const VALUE_ROWS: usize = 6;
    const VALUE_DIMS: usize = 4 * LANES;

    unsafe fn transpose_keys<T: Elem>(k: &[T], rows: &[usize], j0: usize, d: usize, kt: &mut [f32]) {
        transpose_keys(k, rows, j0, d, kt)
    }

    unsafe fn scores(n: usize, q: *const f32, kt: &[f32], d: usize, scale: f32, s: *mut f32, stride: usize) {
        scores(n, q, kt, d, scale, s, stride)
    }

    unsafe fn softmax(p: *mut f32, n: usize) {
        softmax(p, n)
    }

    unsafe fn value_sums<T: Elem>(n: usize, p: *const f32, stride: usize, v: *const T, rows: &[usize], acc: *mut f32, d: usize) {
        match n {
            1 => value_sums::<T, 1>(p, stride, v, rows, acc, d),
            2 => value_sums::<T, 2>(p, stride, v, rows, acc, d),
            3 => value_sums::<T, 3>(p, stride, v, rows, acc, d),
            4 => value_sums::<T, 4>(p, stride, v, rows, acc, d),
            5 => value_sums::<T, 5>(p, stride, v, rows, acc, d),
            _ => value_sums::<T, 6>(p, stride, v, rows, acc, d),
        }
    }
}

/// [`Isa::transpose_keys`] in 16 x 16 transposes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn transpose_keys<T: Elem>(k: &[T], rows: &[usize], j0: usize, d: usize, kt: &mut [f32]) {
    let block = <Avx512 as Isa>::BLOCK_KEYS;
    for half in 0..2 {
        let mut keys = [k.as_ptr(); LANES];
        for (jj, key) in keys.iter_mut().enumerate() {
            *key = k.as_ptr().add(rows[(j0 + half * LANES + jj).min(rows.len() - 1)]);
        }
        for c in 0..d / LANES {
            let mut r = [_mm512_setzero_ps(); LANES];
            for (r, key) in r.iter_mut().zip(&keys) {
                *r = load(key.add(c * LANES));
            }
            for (dd, t) in transpose(r).iter().enumerate() {
                _mm512_storeu_ps(kt.as_mut_ptr().add((c * LANES + dd) * block + half * LANES), *t);
            }
        }
    }
}

/// [`Isa::scores`], twelve rows at a time.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn scores(n: usize, q: *const f32, kt: &[f32], d: usize, scale: f32, s: *mut f32, stride: usize) {
    for r0 in (0..n).step_by(SCORE_ROWS) {
        let (q, s) = (q.add(r0 * d), s.add(r0 * stride));
        match (n - r0).min(SCORE_ROWS) {
            1 => score_rows::<1>(q, kt, d, scale, s, stride),
            2 => score_rows::<2>(q, kt, d, scale, s, stride),
            3 => score_rows::<3>(q, kt, d, scale, s, stride),
            4 => score_rows::<4>(q, kt, d, scale, s, stride),
            5 => score_rows::<5>(q, kt, d, scale, s, stride),
            6 => score_rows::<6>(q, kt, d, scale, s, stride),
            7 => score_rows::<7>(q, kt, d, scale, s, stride),
            8 => score_rows::<8>(q, kt, d, scale, s, stride),
            9 => score_rows::<9>(q, kt, d, scale, s, stride),
            10 => score_rows::<10>(q, kt, d, scale, s, stride),
            11 => score_rows::<11>(q, kt, d, scale, s, stride),
            _ => score_rows::<12>(q, kt, d, scale, s, stride),
        }
    }
}

/// [`Isa::scores`] of `MR` rows: two FMAs (32 keys) per broadcast query element.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn score_rows<const MR: usize>(q: *const f32, kt: &[f32], d: usize, scale: f32, s: *mut f32, stride: usize) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for dim in 0..d {
        let k0 = _mm512_loadu_ps(kt.as_ptr().add(dim * 2 * LANES));
        let k1 = _mm512_loadu_ps(kt.as_ptr().add(dim * 2 * LANES + LANES));
        for (r, a) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_ps(*q.add(r * d + dim));
            a[0] = _mm512_fmadd_ps(x, k0, a[0]);
            a[1] = _mm512_fmadd_ps(x, k1, a[1]);
        }
    }
    let scale = _mm512_set1_ps(scale);
    for (r, a) in acc.iter().enumerate() {
        _mm512_storeu_ps(s.add(r * stride), _mm512_mul_ps(a[0], scale));
        _mm512_storeu_ps(s.add(r * stride + LANES), _mm512_mul_ps(a[1], scale));
    }
}

/// [`Isa::value_sums`] of `MR` rows: 4 x MR accumulators, one value vector feeding all rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn value_sums<T: Elem, const MR: usize>(p: *const f32, stride: usize, v: *const T, rows: &[usize], acc: *mut f32, d: usize) {
    const C: usize = <Avx512 as Isa>::VALUE_DIMS / LANES;
    let mut a = [[_mm512_setzero_ps(); C]; MR];
    for (r, a) in a.iter_mut().enumerate() {
        for (c, a) in a.iter_mut().enumerate() {
            *a = _mm512_loadu_ps(acc.add(r * d + c * LANES));
        }
    }
    for (j, &row) in rows.iter().enumerate() {
        let mut w = [_mm512_setzero_ps(); MR];
        for (r, w) in w.iter_mut().enumerate() {
            *w = _mm512_set1_ps(*p.add(r * stride + j));
        }
        let value = v.add(row);
        for c in 0..C {
            let x = load(value.add(c * LANES));
            for (a, w) in a.iter_mut().zip(&w) {
                a[c] = _mm512_fmadd_ps(*w, x, a[c]);
            }
        }
    }
    for (r, a) in a.iter().enumerate() {
        for (c, a) in a.iter().enumerate() {
            _mm512_storeu_ps(acc.add(r * d + c * LANES), *a);
        }
    }
}
