//! AVX2 pieces of paged attention, bitwise equal to the generic body in [`super::cpu`] (whose
//! docs give the arithmetic): row loads as f32, the 8 x 8 transpose of a key block, the softmax
//! and its `exp`, and the tile kernel's ([`super::tile`]) micro-kernels built from them.
//!
//! Safety (every fn): the CPU has AVX2, FMA and F16C; pointers cover what they read.

use std::arch::x86_64::*;

use super::tile::Isa;
use crate::elem::{Elem, ElemKind};

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

/// The reference softmax ([`super::cpu::softmax`]) on eight lanes, bit for bit: the same
/// maximum, `exp` operation for operation, each key's term added to lane `j % 16` of the sum in
/// order (even eight-key vectors in lanes 0-7, odd ones in 8-15), the same final tree.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn softmax(p: &mut [f32]) {
    let full = p.len() / 8;
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
    let inv = 1.0 / crate::fused::simd::sum16(&sum);
    let invv = _mm256_set1_ps(inv);
    for i in 0..full {
        _mm256_storeu_ps(ptr.add(8 * i), _mm256_mul_ps(_mm256_loadu_ps(ptr.add(8 * i)), invv));
    }
    p[8 * full..].iter_mut().for_each(|x| *x *= inv);
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

/// The tile kernel's ([`super::tile`]) AVX2 pieces: blocks of 16 keys, six rows a score pass
/// (2 x 6 accumulators), three rows by 32 dimensions a value pass (3 x 4): sixteen registers.
pub(super) struct Avx2;

const SCORE_ROWS: usize = 6;

impl Isa for Avx2 {
    const BLOCK_KEYS: usize = 16;
    const VALUE_ROWS: usize = 3;
    const VALUE_DIMS: usize = 32;

    unsafe fn transpose_keys<T: Elem>(k: &[T], rows: &[usize], j0: usize, d: usize, kt: &mut [f32]) {
        transpose_keys(k, rows, j0, d, kt)
    }

    unsafe fn scores(n: usize, q: *const f32, kt: &[f32], d: usize, scale: f32, s: *mut f32, stride: usize) {
        scores(n, q, kt, d, scale, s, stride)
    }

    unsafe fn softmax(p: *mut f32, n: usize) {
        softmax(std::slice::from_raw_parts_mut(p, n))
    }

    unsafe fn value_sums<T: Elem>(n: usize, p: *const f32, stride: usize, v: *const T, rows: &[usize], acc: *mut f32, d: usize) {
        match n {
            1 => value_sums::<T, 1>(p, stride, v, rows, acc, d),
            2 => value_sums::<T, 2>(p, stride, v, rows, acc, d),
            _ => value_sums::<T, 3>(p, stride, v, rows, acc, d),
        }
    }
}

/// [`Isa::transpose_keys`] in 8 x 8 transposes.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn transpose_keys<T: Elem>(k: &[T], rows: &[usize], j0: usize, d: usize, kt: &mut [f32]) {
    let block = <Avx2 as Isa>::BLOCK_KEYS;
    for half in 0..2 {
        let mut keys = [k.as_ptr(); 8];
        for (jj, key) in keys.iter_mut().enumerate() {
            *key = k.as_ptr().add(rows[(j0 + half * 8 + jj).min(rows.len() - 1)]);
        }
        for c in 0..d / 8 {
            let mut r = [_mm256_setzero_ps(); 8];
            for (r, key) in r.iter_mut().zip(&keys) {
                *r = load(key.add(c * 8));
            }
            for (dd, t) in transpose(r).iter().enumerate() {
                _mm256_storeu_ps(kt.as_mut_ptr().add((c * 8 + dd) * block + half * 8), *t);
            }
        }
    }
}

/// [`Isa::scores`], six rows at a time.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores(n: usize, q: *const f32, kt: &[f32], d: usize, scale: f32, s: *mut f32, stride: usize) {
    for r0 in (0..n).step_by(SCORE_ROWS) {
        let (q, s) = (q.add(r0 * d), s.add(r0 * stride));
        match (n - r0).min(SCORE_ROWS) {
            1 => score_rows::<1>(q, kt, d, scale, s, stride),
            2 => score_rows::<2>(q, kt, d, scale, s, stride),
            3 => score_rows::<3>(q, kt, d, scale, s, stride),
            4 => score_rows::<4>(q, kt, d, scale, s, stride),
            5 => score_rows::<5>(q, kt, d, scale, s, stride),
            _ => score_rows::<6>(q, kt, d, scale, s, stride),
        }
    }
}

/// [`Isa::scores`] of `MR` rows: two FMAs (16 keys) per broadcast query element.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn score_rows<const MR: usize>(q: *const f32, kt: &[f32], d: usize, scale: f32, s: *mut f32, stride: usize) {
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    for dim in 0..d {
        let k0 = _mm256_loadu_ps(kt.as_ptr().add(dim * 16));
        let k1 = _mm256_loadu_ps(kt.as_ptr().add(dim * 16 + 8));
        for (r, a) in acc.iter_mut().enumerate() {
            let x = _mm256_broadcast_ss(&*q.add(r * d + dim));
            a[0] = _mm256_fmadd_ps(x, k0, a[0]);
            a[1] = _mm256_fmadd_ps(x, k1, a[1]);
        }
    }
    let scale = _mm256_set1_ps(scale);
    for (r, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(s.add(r * stride), _mm256_mul_ps(a[0], scale));
        _mm256_storeu_ps(s.add(r * stride + 8), _mm256_mul_ps(a[1], scale));
    }
}

/// [`Isa::value_sums`] of `MR` rows: 4 x MR accumulators, one value vector feeding all rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn value_sums<T: Elem, const MR: usize>(p: *const f32, stride: usize, v: *const T, rows: &[usize], acc: *mut f32, d: usize) {
    const C: usize = <Avx2 as Isa>::VALUE_DIMS / 8;
    let mut a = [[_mm256_setzero_ps(); C]; MR];
    for (r, a) in a.iter_mut().enumerate() {
        for (c, a) in a.iter_mut().enumerate() {
            *a = _mm256_loadu_ps(acc.add(r * d + c * 8));
        }
    }
    for (j, &row) in rows.iter().enumerate() {
        let mut w = [_mm256_setzero_ps(); MR];
        for (r, w) in w.iter_mut().enumerate() {
            *w = _mm256_broadcast_ss(&*p.add(r * stride + j));
        }
        let value = v.add(row);
        for c in 0..C {
            let x = load(value.add(c * 8));
            for (a, w) in a.iter_mut().zip(&w) {
                a[c] = _mm256_fmadd_ps(*w, x, a[c]);
            }
        }
    }
    for (r, a) in a.iter().enumerate() {
        for (c, a) in a.iter().enumerate() {
            _mm256_storeu_ps(acc.add(r * d + c * 8), *a);
        }
    }
}
