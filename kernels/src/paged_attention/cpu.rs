//! The CPU body of paged attention: one task's query heads (those sharing a KV head) over the
//! key and value rows of its sequence.
//!
//! The arithmetic, which every instruction set reproduces bit for bit (the generic body below
//! is the reference; [`super::tile`], on [`super::avx512`]'s or [`super::avx2`]'s pieces, is the
//! hand-written fast path):
//! - score of key `j` for head `g`: `s = 0; for d in order: s = fma(q[g][d], k[j][d], s)`,
//!   then `s * scale`;
//! - softmax per head: the maximum, `e = exp(s - max)` ([`crate::fused::exp::exp`]), their
//!   sum in sixteen lanes (key `j` into lane `j % 16`, in order) added by [`sum16`], then
//!   `e * (1 / sum)`;
//! - output: `acc[d] = 0; for j in order: acc[d] = fma(p[g][j], v[j][d], acc[d])`.
//!
//! Keys go sixteen at a time so the reference's inner loop has sixteen independent lanes,
//! which the vectorised builds and the AVX-512 kernel (16 x 16 transposes of key blocks, then
//! one FMA per dimension) rely on. Only the order in which (query, key) pairs are visited may
//! differ between the kernels, never the operations on one pair or their order.

use crate::elem::Elem;
use crate::fused::exp::exp;
use crate::fused::simd::{multiversion, sum16, Simd};

/// Keys per block and lanes of every sum.
pub(super) const LANES: usize = 16;

/// Query rows (tokens times the group's heads) a tile kernel's task aims for: 64 beat 32 and 16
/// on the EPYC (a 512-token chunk at 4096 keys: 21.9 against 25.3 and 26.9 ms a layer).
const TILE_ROWS: usize = 64;

/// Head dimensions the tile kernels take.
fn tiled(head_dim: usize) -> bool {
    head_dim == 64 || head_dim == 128
}

/// Consecutive new tokens of one sequence a task takes together: enough for the tile kernels'
/// rows where they apply, else one (the generic body goes token by token).
pub(super) fn tile_tokens(simd: Simd, group: usize, head_dim: usize) -> usize {
    match simd {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 | Simd::Avx2 if tiled(head_dim) => (TILE_ROWS / group).max(1),
        _ => 1,
    }
}

/// A tile's attention: consecutive new tokens of one sequence (query heads `q_groups[i]` of one
/// KV head for token `i`), token `i` over the first `first_n + i` keys of `rows`, into `outs[i]`.
/// The same bits as the generic body token by token.
#[allow(clippy::too_many_arguments)]
pub(super) fn attend_tile<T: Elem>(simd: Simd, q_groups: &[&[T]], k: &[T], v: &[T], rows: &[usize], first_n: usize, head_dim: usize, scale: f32, outs: &mut [&mut [T]]) {
    debug_assert!(first_n >= 1 && rows.len() == first_n + q_groups.len() - 1 && outs.len() == q_groups.len());
    // Safety: `Simd::Avx512` exists only where the CPU has AVX-512 F/BW/VL, FMA and F16C,
    // `Simd::Avx2` where it has AVX2, FMA and F16C; every row plus `head_dim` lies inside the
    // caches (the caller validated the metadata).
    #[cfg(target_arch = "x86_64")]
    if simd == Simd::Avx512 && tiled(head_dim) {
        return unsafe { super::tile::attend_tile::<super::avx512::Avx512, T>(q_groups, k, v, rows, first_n, head_dim, scale, outs) };
    }
    #[cfg(target_arch = "x86_64")]
    if simd == Simd::Avx2 && tiled(head_dim) {
        return unsafe { super::tile::attend_tile::<super::avx2::Avx2, T>(q_groups, k, v, rows, first_n, head_dim, scale, outs) };
    }
    for (i, (q_group, out)) in q_groups.iter().zip(outs.iter_mut()).enumerate() {
        attend_any(simd, q_group, k, v, &rows[..first_n + i], head_dim, scale, out);
    }
}

multiversion! {
    /// One token's attention for any head dimension and instruction set: the `out.len() /
    /// head_dim` query heads of `q_group` over the keys and values whose rows start at `rows`
    /// (at least one).
    fn attend_any<T: Elem>(q_group: &[T], k: &[T], v: &[T], rows: &[usize], head_dim: usize, scale: f32, out: &mut [T]) => attend_body;
}

#[inline(always)]
fn attend_body<T: Elem>(q_group: &[T], k: &[T], v: &[T], rows: &[usize], head_dim: usize, scale: f32, out: &mut [T]) {
    let group = out.len() / head_dim;
    let n = rows.len();
    let stride = n.next_multiple_of(LANES);
    let q: Vec<f32> = q_group.iter().map(|x| x.to_f32()).collect();
    let mut scores = vec![0f32; group * stride];
    // The key block transposed: `kt[d]` holds dimension `d` of its sixteen keys.
    let mut kt = vec![[0f32; LANES]; head_dim];
    for j0 in (0..n).step_by(LANES) {
        for jj in 0..LANES {
            // A short last block repeats the last key; its extra scores are not kept.
            for (kt, x) in kt.iter_mut().zip(&k[rows[(j0 + jj).min(n - 1)]..][..head_dim]) {
                kt[jj] = x.to_f32();
            }
        }
        for g in 0..group {
            let mut acc = [0f32; LANES];
            for (qd, kt) in q[g * head_dim..][..head_dim].iter().zip(&kt) {
                for (a, x) in acc.iter_mut().zip(kt) {
                    *a = qd.mul_add(*x, *a);
                }
            }
            for (s, a) in scores[g * stride + j0..][..(n - j0).min(LANES)].iter_mut().zip(acc) {
                *s = a * scale;
            }
        }
    }
    let mut acc = vec![0f32; head_dim];
    for g in 0..group {
        let p = &mut scores[g * stride..][..n];
        softmax(p);
        acc.fill(0.0);
        for (&w, &row) in p.iter().zip(rows) {
            for (a, x) in acc.iter_mut().zip(&v[row..][..head_dim]) {
                *a = w.mul_add(x.to_f32(), *a);
            }
        }
        for (o, a) in out[g * head_dim..][..head_dim].iter_mut().zip(&acc) {
            *o = T::from_f32(*a);
        }
    }
}


/// Scores to probabilities in place.
#[inline(always)]
pub(super) fn softmax(s: &mut [f32]) {
    let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = [0f32; LANES];
    for (j, x) in s.iter_mut().enumerate() {
        *x = exp(*x - max);
        sum[j % LANES] += *x;
    }
    let inv = 1.0 / sum16(&sum);
    s.iter_mut().for_each(|x| *x *= inv);
}
