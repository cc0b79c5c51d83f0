//! AVX2 paged attention for head dimensions 64 and 128, bitwise equal to the generic body in
//! [`super::cpu`] (whose docs give the arithmetic), one token at a time. A block of sixteen
//! keys is two halves of eight, each loaded eight dimensions at a time and transposed in
//! registers; one FMA with a broadcast query element then advances
//! eight scores of one head, for up to four heads at once (sixteen registers). The softmax is
//! the reference's own code.
//!
//! Safety (every fn): the CPU has AVX2, FMA and F16C; `rows` are non-empty and every row plus
//! the head dimension lies inside `k` and `v`.

use std::arch::x86_64::*;

use super::cpu::{softmax, LANES};
use crate::elem::{Elem, ElemKind};

/// Query heads whose scores one pass over a key block computes.
const HEAD_BLOCK: usize = 4;
/// Output elements one pass over the values accumulates (eight registers).
const DIM_BLOCK: usize = 64;

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn attend<T: Elem>(q_group: &[T], k: &[T], v: &[T], rows: &[usize], head_dim: usize, scale: f32, out: &mut [T]) {
    match head_dim {
        64 => attend_chunks::<T, 8>(q_group, k, v, rows, scale, out),
        128 => attend_chunks::<T, 16>(q_group, k, v, rows, scale, out),
        _ => unreachable!("the dispatcher sends head dims 64 and 128 only"),
    }
}

/// Eight elements from `p` as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load<T: Elem>(p: *const T) -> __m256 {
    match T::KIND {
        ElemKind::F32 => _mm256_loadu_ps(p.cast()),
        // bf16 is the top half of an f32.
        ElemKind::Bf16 => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())))),
        ElemKind::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
    }
}

/// `attend` with `CH` eight-element chunks per head.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_chunks<T: Elem, const CH: usize>(q_group: &[T], k: &[T], v: &[T], rows: &[usize], scale: f32, out: &mut [T]) {
    let head_dim = CH * 8;
    let group = out.len() / head_dim;
    let n = rows.len();
    let stride = n.next_multiple_of(LANES);
    let q: Vec<f32> = q_group.iter().map(|x| x.to_f32()).collect();
    let mut scores = vec![0f32; group * stride];
    for j0 in (0..n).step_by(LANES) {
        for half in 0..2 {
            let mut keys = [k.as_ptr(); 8];
            for (jj, key) in keys.iter_mut().enumerate() {
                // A short last block repeats the last key; its extra scores are not kept.
                *key = k.as_ptr().add(rows[(j0 + 8 * half + jj).min(n - 1)]);
            }
            let mut g0 = 0;
            while g0 < group {
                let heads = (group - g0).min(HEAD_BLOCK);
                let (q, s) = (q.as_ptr().add(g0 * head_dim), scores.as_mut_ptr().add(g0 * stride + j0 + 8 * half));
                match heads {
                    1 => score_block::<T, CH, 1>(&keys, q, scale, s, stride),
                    2 => score_block::<T, CH, 2>(&keys, q, scale, s, stride),
                    3 => score_block::<T, CH, 3>(&keys, q, scale, s, stride),
                    _ => score_block::<T, CH, 4>(&keys, q, scale, s, stride),
                }
                g0 += heads;
            }
        }
    }
    for g in 0..group {
        let p = &mut scores[g * stride..][..n];
        softmax(p);
        for d0 in (0..head_dim).step_by(DIM_BLOCK) {
            let mut acc = [_mm256_setzero_ps(); DIM_BLOCK / 8];
            for (&w, &row) in p.iter().zip(rows) {
                let (w, value) = (_mm256_set1_ps(w), v.as_ptr().add(row + d0));
                for (c, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(w, load(value.add(8 * c)), *a);
                }
            }
            let o = &mut out[g * head_dim + d0..][..DIM_BLOCK];
            for (c, a) in acc.iter().enumerate() {
                let mut y = [0f32; 8];
                _mm256_storeu_ps(y.as_mut_ptr(), *a);
                for (o, y) in o[8 * c..][..8].iter_mut().zip(y) {
                    *o = T::from_f32(y);
                }
            }
        }
    }
}

/// Scores of eight keys for `H` heads: `s[g * stride + jj]` for query rows `q + g * head_dim`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn score_block<T: Elem, const CH: usize, const H: usize>(keys: &[*const T; 8], q: *const f32, scale: f32, s: *mut f32, stride: usize) {
    let mut acc = [_mm256_setzero_ps(); H];
    for c in 0..CH {
        let mut r = [_mm256_setzero_ps(); 8];
        for (r, key) in r.iter_mut().zip(keys) {
            *r = load(key.add(8 * c));
        }
        let kt = transpose(r);
        for (dd, kt) in kt.iter().enumerate() {
            for (g, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(_mm256_broadcast_ss(&*q.add(g * CH * 8 + 8 * c + dd)), *kt, *a);
            }
        }
    }
    let scale = _mm256_set1_ps(scale);
    for (g, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(s.add(g * stride), _mm256_mul_ps(*a, scale));
    }
}

/// Rows to columns: lane `j` of output `i` is lane `i` of input `j`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn transpose(r: [__m256; 8]) -> [__m256; 8] {
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
