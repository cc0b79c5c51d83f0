//! The AVX-512 paged attention kernel for head dimensions 64 and 128: a tile of a few
//! consecutive new tokens of one sequence (a prefill chunk's; one token for a decode), all the
//! query heads of one KV head, over the keys they see. Bitwise equal, token by token, to the
//! generic body in [`super::cpu`] (whose docs give the arithmetic): only the order in which the
//! same operations run changes.
//!
//! Token by token, every query token of a long prompt would stream all of its sequence's K and
//! V rows from memory again (a 512-token chunk at 4096 keys: ~2 GB a layer with the f32 cache).
//! A tile of `tokens x group` query rows loads each key and value row once:
//! - scores: each block of 32 keys is transposed once into a buffer (`kt[dim][key]`); then
//!   twelve rows at a time, one FMA with a broadcast query element advances 32 scores of a row
//!   (24 accumulators: two FMAs per broadcast);
//! - the softmax of each row over its own keys (token `i` of the tile sees `first_n + i`);
//! - values: over chunks of 128 keys (in L1/L2 while they are used), a few rows at a time
//!   accumulate `p * v` for the keys every row of the tile sees, one value vector feeding all
//!   of them; then each row's own last keys. A decode's group of query heads shares its value
//!   rows the same way.
//!
//! Safety (every fn): the CPU has AVX-512 F/BW/VL, FMA and F16C; `rows` holds
//! `first_n + tokens - 1` key rows (`first_n >= 1`), each plus the head dimension inside `k`
//! and `v`.

use std::arch::x86_64::*;

use super::avx512::{load, softmax, transpose};
use super::cpu::LANES;
use crate::elem::Elem;

/// Keys per block of the score pass: two vectors.
const BLOCK_KEYS: usize = 2 * LANES;
/// Query rows per pass of the score kernel over a block (2 x 12 accumulators).
const SCORE_ROWS: usize = 12;
/// Keys per chunk of the value pass: their rows stay in the cache while each row block uses them.
const VALUE_KEYS: usize = 128;

/// The tile's attention: token `i` (query heads `q_groups[i]`, `group x head_dim`) over the
/// first `first_n + i` keys of `rows`, into `outs[i]`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn attend_tile<T: Elem>(q_groups: &[&[T]], k: &[T], v: &[T], rows: &[usize], first_n: usize, head_dim: usize, scale: f32, outs: &mut [&mut [T]]) {
    match head_dim {
        64 => tile::<T, 4>(q_groups, k, v, rows, first_n, scale, outs),
        128 => tile::<T, 8>(q_groups, k, v, rows, first_n, scale, outs),
        _ => unreachable!("the dispatcher sends head dims 64 and 128 only"),
    }
}

/// `attend_tile` with `CH` sixteen-element chunks per head.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn tile<T: Elem, const CH: usize>(q_groups: &[&[T]], k: &[T], v: &[T], rows: &[usize], first_n: usize, scale: f32, outs: &mut [&mut [T]]) {
    let d = CH * LANES;
    let group = outs[0].len() / d;
    let num_rows = q_groups.len() * group;
    let n_max = rows.len();
    debug_assert_eq!(n_max, first_n + q_groups.len() - 1);
    // Row r is head r % group of token r / group, which sees this many keys.
    let keys_of = |r: usize| first_n + r / group;
    let stride = n_max.next_multiple_of(BLOCK_KEYS);
    let q: Vec<f32> = q_groups.iter().flat_map(|g| g.iter().map(|x| x.to_f32())).collect();
    let mut scores = vec![0f32; num_rows * stride];
    let mut kt = vec![0f32; d * BLOCK_KEYS];
    for j0 in (0..n_max).step_by(BLOCK_KEYS) {
        for half in 0..2 {
            let mut keys = [k.as_ptr(); LANES];
            for (jj, key) in keys.iter_mut().enumerate() {
                // A short last block repeats the last key; no row keeps those scores.
                *key = k.as_ptr().add(rows[(j0 + half * LANES + jj).min(n_max - 1)]);
            }
            for c in 0..CH {
                let mut r = [_mm512_setzero_ps(); LANES];
                for (r, key) in r.iter_mut().zip(&keys) {
                    *r = load(key.add(c * LANES));
                }
                for (dd, t) in transpose(r).iter().enumerate() {
                    _mm512_storeu_ps(kt.as_mut_ptr().add((c * LANES + dd) * BLOCK_KEYS + half * LANES), *t);
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
                6 => score_rows::<6>(q, &kt, d, scale, s, stride),
                7 => score_rows::<7>(q, &kt, d, scale, s, stride),
                8 => score_rows::<8>(q, &kt, d, scale, s, stride),
                9 => score_rows::<9>(q, &kt, d, scale, s, stride),
                10 => score_rows::<10>(q, &kt, d, scale, s, stride),
                11 => score_rows::<11>(q, &kt, d, scale, s, stride),
                _ => score_rows::<12>(q, &kt, d, scale, s, stride),
            }
            r0 += n;
        }
    }
    for r in 0..num_rows {
        softmax(scores.as_mut_ptr().add(r * stride), keys_of(r));
    }
    // Values: the keys every row sees (the first token's), then each row's own last ones.
    let mut acc = vec![0f32; num_rows * d];
    let value_rows = 24 / CH;
    for j0 in (0..first_n).step_by(VALUE_KEYS) {
        let keys = j0..(j0 + VALUE_KEYS).min(first_n);
        let mut r0 = 0;
        while r0 < num_rows {
            let n = (num_rows - r0).min(value_rows);
            let (p, a) = (scores.as_ptr().add(r0 * stride), acc.as_mut_ptr().add(r0 * d));
            let rows = &rows[keys.clone()];
            let p = p.add(keys.start);
            match n {
                1 => value_sums::<T, CH, 1>(p, stride, v, rows, a),
                2 => value_sums::<T, CH, 2>(p, stride, v, rows, a),
                3 => value_sums::<T, CH, 3>(p, stride, v, rows, a),
                4 => value_sums::<T, CH, 4>(p, stride, v, rows, a),
                5 => value_sums::<T, CH, 5>(p, stride, v, rows, a),
                _ => value_sums::<T, CH, 6>(p, stride, v, rows, a),
            }
            r0 += n;
        }
    }
    for r in 0..num_rows {
        let keys = first_n..keys_of(r);
        value_sums::<T, CH, 1>(scores.as_ptr().add(r * stride + keys.start), stride, v, &rows[keys], acc.as_mut_ptr().add(r * d));
    }
    for (i, out) in outs.iter_mut().enumerate() {
        for (o, a) in out.iter_mut().zip(&acc[i * group * d..][..group * d]) {
            *o = T::from_f32(*a);
        }
    }
}

/// Scores of `MR` query rows (`q`, `d` apart) against a transposed block of 32 keys:
/// `s[r * stride + jj]`, each `fma(q[dim], k[dim], s)` over the dimensions in order, times `scale`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn score_rows<const MR: usize>(q: *const f32, kt: &[f32], d: usize, scale: f32, s: *mut f32, stride: usize) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for dim in 0..d {
        let k0 = _mm512_loadu_ps(kt.as_ptr().add(dim * BLOCK_KEYS));
        let k1 = _mm512_loadu_ps(kt.as_ptr().add(dim * BLOCK_KEYS + LANES));
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

/// `acc[r][..] = fma(p[r][j], v[j][..], acc[r][..])` for `MR` rows (probabilities `stride`
/// apart, accumulators `CH x 16` apart) over the keys `rows` (value rows) in order.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn value_sums<T: Elem, const CH: usize, const MR: usize>(p: *const f32, stride: usize, v: &[T], rows: &[usize], acc: *mut f32) {
    let mut a = [[_mm512_setzero_ps(); CH]; MR];
    for (r, a) in a.iter_mut().enumerate() {
        for (c, a) in a.iter_mut().enumerate() {
            *a = _mm512_loadu_ps(acc.add((r * CH + c) * LANES));
        }
    }
    for (j, &row) in rows.iter().enumerate() {
        let mut w = [_mm512_setzero_ps(); MR];
        for (r, w) in w.iter_mut().enumerate() {
            *w = _mm512_set1_ps(*p.add(r * stride + j));
        }
        let value = v.as_ptr().add(row);
        for c in 0..CH {
            let x = load(value.add(c * LANES));
            for (a, w) in a.iter_mut().zip(&w) {
                a[c] = _mm512_fmadd_ps(*w, x, a[c]);
            }
        }
    }
    for (r, a) in a.iter().enumerate() {
        for (c, a) in a.iter().enumerate() {
            _mm512_storeu_ps(acc.add((r * CH + c) * LANES), *a);
        }
    }
}
