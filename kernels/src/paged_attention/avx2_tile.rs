//! The AVX2 paged attention kernel for head dimensions 64 and 128: [`super::avx512_tile`]'s
//! tiles (whose docs give the scheme) on eight-lane vectors and sixteen registers. Bitwise
//! equal, token by token, to the generic body in [`super::cpu`].
//!
//! - scores: blocks of 16 keys (two transposes of eight), six rows at a time, two FMAs per
//!   broadcast query element (12 accumulators);
//! - the softmax of each row over its own keys, on eight lanes;
//! - values: over chunks of 128 keys, 32 output dimensions of three rows at a time (12
//!   accumulators), one value vector feeding all three.
//!
//! Safety (every fn): the CPU has AVX2, FMA and F16C; `rows` holds `first_n + tokens - 1` key
//! rows (`first_n >= 1`), each plus the head dimension inside `k` and `v`.

use std::arch::x86_64::*;

use super::avx2::{load, softmax, transpose};
use crate::elem::Elem;

/// Keys per block of the score pass: two vectors.
const BLOCK_KEYS: usize = 16;
/// Query rows per pass of the score kernel over a block (2 x 6 accumulators).
const SCORE_ROWS: usize = 6;
/// Keys per chunk of the value pass.
const VALUE_KEYS: usize = 128;
/// Rows and output dimensions per pass of the value kernel (3 x 4 accumulators).
const VALUE_ROWS: usize = 3;
const VALUE_DIMS: usize = 32;

/// The tile's attention: token `i` (query heads `q_groups[i]`, `group x head_dim`) over the
/// first `first_n + i` keys of `rows`, into `outs[i]`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn attend_tile<T: Elem>(q_groups: &[&[T]], k: &[T], v: &[T], rows: &[usize], first_n: usize, head_dim: usize, scale: f32, outs: &mut [&mut [T]]) {
    match head_dim {
        64 => tile::<T, 8>(q_groups, k, v, rows, first_n, scale, outs),
        128 => tile::<T, 16>(q_groups, k, v, rows, first_n, scale, outs),
        _ => unreachable!("the dispatcher sends head dims 64 and 128 only"),
    }
}

/// `attend_tile` with `CH` eight-element chunks per head.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<T: Elem, const CH: usize>(q_groups: &[&[T]], k: &[T], v: &[T], rows: &[usize], first_n: usize, scale: f32, outs: &mut [&mut [T]]) {
    let d = CH * 8;
    let group = outs[0].len() / d;
    let num_rows = q_groups.len() * group;
    let n_max = rows.len();
    let keys_of = |r: usize| first_n + r / group;
    let stride = n_max.next_multiple_of(BLOCK_KEYS);
    let q: Vec<f32> = q_groups.iter().flat_map(|g| g.iter().map(|x| x.to_f32())).collect();
    let mut scores = vec![0f32; num_rows * stride];
    let mut kt = vec![0f32; d * BLOCK_KEYS];
    for j0 in (0..n_max).step_by(BLOCK_KEYS) {
        for half in 0..2 {
            let mut keys = [k.as_ptr(); 8];
            for (jj, key) in keys.iter_mut().enumerate() {
                // A short last block repeats the last key; no row keeps those scores.
                *key = k.as_ptr().add(rows[(j0 + half * 8 + jj).min(n_max - 1)]);
            }
            for c in 0..CH {
                let mut r = [_mm256_setzero_ps(); 8];
                for (r, key) in r.iter_mut().zip(&keys) {
                    *r = load(key.add(c * 8));
                }
                for (dd, t) in transpose(r).iter().enumerate() {
                    _mm256_storeu_ps(kt.as_mut_ptr().add((c * 8 + dd) * BLOCK_KEYS + half * 8), *t);
                }
            }
        }
        let mut r0 = 0;
        while r0 < num_rows {
            let n = (num_rows - r0).min(SCORE_ROWS);
            let (q, s) = (q.as_ptr().add(r0 * d), scores.as_mut_ptr().add(r0 * stride + j0));
            match n {
                1 => score_rows::<1>(q, &kt, d, scale, s, stride),
                2 => score_rows::<2>(q, &kt, d, scale, s, stride),
                3 => score_rows::<3>(q, &kt, d, scale, s, stride),
                4 => score_rows::<4>(q, &kt, d, scale, s, stride),
                5 => score_rows::<5>(q, &kt, d, scale, s, stride),
                _ => score_rows::<6>(q, &kt, d, scale, s, stride),
            }
            r0 += n;
        }
    }
    for r in 0..num_rows {
        softmax(&mut scores[r * stride..][..keys_of(r)]);
    }
    // Values: the keys every row sees (the first token's), then each row's own last ones.
    let mut acc = vec![0f32; num_rows * d];
    for j0 in (0..first_n).step_by(VALUE_KEYS) {
        let keys = j0..(j0 + VALUE_KEYS).min(first_n);
        let mut r0 = 0;
        while r0 < num_rows {
            let n = (num_rows - r0).min(VALUE_ROWS);
            for d0 in (0..d).step_by(VALUE_DIMS) {
                let (p, a) = (scores.as_ptr().add(r0 * stride + keys.start), acc.as_mut_ptr().add(r0 * d + d0));
                let (rows, v) = (&rows[keys.clone()], v.as_ptr().add(d0));
                match n {
                    1 => value_sums::<T, 1>(p, stride, v, rows, a, d),
                    2 => value_sums::<T, 2>(p, stride, v, rows, a, d),
                    _ => value_sums::<T, 3>(p, stride, v, rows, a, d),
                }
            }
            r0 += n;
        }
    }
    for r in 0..num_rows {
        let keys = first_n..keys_of(r);
        for d0 in (0..d).step_by(VALUE_DIMS) {
            let p = scores.as_ptr().add(r * stride + keys.start);
            value_sums::<T, 1>(p, stride, v.as_ptr().add(d0), &rows[keys.clone()], acc.as_mut_ptr().add(r * d + d0), d);
        }
    }
    for (i, out) in outs.iter_mut().enumerate() {
        for (o, a) in out.iter_mut().zip(&acc[i * group * d..][..group * d]) {
            *o = T::from_f32(*a);
        }
    }
}

/// Scores of `MR` query rows (`q`, `d` apart) against a transposed block of 16 keys:
/// `s[r * stride + jj]`, each `fma(q[dim], k[dim], s)` over the dimensions in order, times `scale`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn score_rows<const MR: usize>(q: *const f32, kt: &[f32], d: usize, scale: f32, s: *mut f32, stride: usize) {
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    for dim in 0..d {
        let k0 = _mm256_loadu_ps(kt.as_ptr().add(dim * BLOCK_KEYS));
        let k1 = _mm256_loadu_ps(kt.as_ptr().add(dim * BLOCK_KEYS + 8));
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

/// `acc[r][..32] = fma(p[r][j], v[j][..32], acc[r][..32])` for `MR` rows (probabilities
/// `stride` apart, accumulators `d` apart) over the keys `rows` (value rows, `v` offset to the
/// first of the 32 dimensions) in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn value_sums<T: Elem, const MR: usize>(p: *const f32, stride: usize, v: *const T, rows: &[usize], acc: *mut f32, d: usize) {
    const C: usize = VALUE_DIMS / 8;
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
