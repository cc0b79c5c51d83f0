//! AVX-512 paged attention for head dimensions 64 and 128, bitwise equal to the generic body
//! in [`super::cpu`] (whose docs give the arithmetic).
//!
//! Scores: a block of sixteen key rows is loaded sixteen dimensions at a time and transposed in
//! registers, so lane `jj` of vector `dd` is dimension `dd` of key `jj`; then one FMA with a
//! broadcast query element advances sixteen scores of one head, for up to eight heads at once.
//! The softmax and the weighted values are the reference's loops on sixteen lanes.
//!
//! Safety (every fn): the CPU has AVX-512 F/BW/VL, FMA and F16C; `rows` are non-empty and every
//! row plus the head dimension lies inside `k` and `v`.

use std::arch::x86_64::*;

use super::cpu::LANES;
use crate::fused::exp::{EXP_LN2, EXP_POLY, EXP_RANGE, EXP_ROUND};
use crate::elem::{Elem, ElemKind};

/// Query heads whose scores one pass over a key block computes.
const HEAD_BLOCK: usize = 8;

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn attend<T: Elem>(q_group: &[T], k: &[T], v: &[T], rows: &[usize], head_dim: usize, scale: f32, out: &mut [T]) {
    match head_dim {
        64 => attend_chunks::<T, 4>(q_group, k, v, rows, scale, out),
        128 => attend_chunks::<T, 8>(q_group, k, v, rows, scale, out),
        _ => unreachable!("the dispatcher sends head dims 64 and 128 only"),
    }
}

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

/// `attend` with `CH` sixteen-element chunks per head.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn attend_chunks<T: Elem, const CH: usize>(q_group: &[T], k: &[T], v: &[T], rows: &[usize], scale: f32, out: &mut [T]) {
    let head_dim = CH * LANES;
    let group = out.len() / head_dim;
    let n = rows.len();
    let stride = n.next_multiple_of(LANES);
    let q: Vec<f32> = q_group.iter().map(|x| x.to_f32()).collect();
    let mut scores = vec![0f32; group * stride];
    for j0 in (0..n).step_by(LANES) {
        let mut keys = [k.as_ptr(); LANES];
        for (jj, key) in keys.iter_mut().enumerate() {
            *key = k.as_ptr().add(rows[(j0 + jj).min(n - 1)]);
        }
        let mut g0 = 0;
        while g0 < group {
            let heads = (group - g0).min(HEAD_BLOCK);
            let (q, s) = (q.as_ptr().add(g0 * head_dim), scores.as_mut_ptr().add(g0 * stride + j0));
            match heads {
                1 => score_block::<T, CH, 1>(&keys, q, scale, s, stride),
                2 => score_block::<T, CH, 2>(&keys, q, scale, s, stride),
                3 => score_block::<T, CH, 3>(&keys, q, scale, s, stride),
                4 => score_block::<T, CH, 4>(&keys, q, scale, s, stride),
                5 => score_block::<T, CH, 5>(&keys, q, scale, s, stride),
                6 => score_block::<T, CH, 6>(&keys, q, scale, s, stride),
                7 => score_block::<T, CH, 7>(&keys, q, scale, s, stride),
                _ => score_block::<T, CH, 8>(&keys, q, scale, s, stride),
            }
            g0 += heads;
        }
    }
    for g in 0..group {
        let p = scores.as_mut_ptr().add(g * stride);
        softmax(p, n);
        let mut acc = [_mm512_setzero_ps(); CH];
        for (j, &row) in rows.iter().enumerate() {
            let w = _mm512_set1_ps(*p.add(j));
            let value = v.as_ptr().add(row);
            for (c, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(w, load(value.add(c * LANES)), *a);
            }
        }
        let o = &mut out[g * head_dim..][..head_dim];
        for (c, a) in acc.iter().enumerate() {
            let mut y = [0f32; LANES];
            _mm512_storeu_ps(y.as_mut_ptr(), *a);
            for (o, y) in o[c * LANES..][..LANES].iter_mut().zip(y) {
                *o = T::from_f32(y);
            }
        }
    }
}

/// Scores of sixteen keys for `H` heads: `s[g * stride + jj]` for query rows `q + g * head_dim`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn score_block<T: Elem, const CH: usize, const H: usize>(keys: &[*const T; LANES], q: *const f32, scale: f32, s: *mut f32, stride: usize) {
    let mut acc = [_mm512_setzero_ps(); H];
    for c in 0..CH {
        let mut r = [_mm512_setzero_ps(); LANES];
        for (r, key) in r.iter_mut().zip(keys) {
            *r = load(key.add(c * LANES));
        }
        let kt = transpose(r);
        for (dd, kt) in kt.iter().enumerate() {
            for (g, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_set1_ps(*q.add(g * CH * LANES + c * LANES + dd)), *kt, *a);
            }
        }
    }
    let scale = _mm512_set1_ps(scale);
    for (g, a) in acc.iter().enumerate() {
        _mm512_storeu_ps(s.add(g * stride), _mm512_mul_ps(*a, scale));
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
