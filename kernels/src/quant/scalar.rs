//! Portable dot products of one weight row with one quantized activation row: the reference
//! every SIMD kernel must match bit for bit.
//!
//! The arithmetic is fixed in two parts (see the module docs of [`super`]):
//! - exact `i32` sums of weight-value times activation-value products, with K-quant sub-scales
//!   and minimums applied in integers: eight *lane sums* per K-quant super-block (lane `l`
//!   takes the elements `e` with `(e % 32) / 4 == l`, the lanes a 4-product-per-i32 SIMD dot
//!   product produces);
//! - a fixed sequence of f32 operations on those integers and the f16/f32 scales: [`k_lanes`]
//!   into eight lanes per super-block, then [`fold_lanes`].
//!
//! A SIMD kernel may find the integers any way it likes (they are exact) but must then do
//! exactly these float operations in this order (fused where these are, and nowhere else).
//! (The 32-element types have their own reference, [`super::panel`]'s.)

use half::f16;

use super::activations::ActRow;
use super::format::{nibble, Q4KBlock, Q5KBlock, Q6KBlock};

/// The row total from eight lane accumulators, in the order a 256-bit horizontal sum gives:
/// halves first (`l + l4`), then pairs.
#[inline(always)]
pub(crate) fn fold_lanes(l: [f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

/// One K-quant super-block's float contribution to the lanes: `acc[l] += (d * da) * s[l] -
/// (dmin * da) * s_min[l]` (Q6_K: `dmin = 0`, and the subtraction is kept: `x - 0.0 = x`).
#[inline(always)]
pub(crate) fn k_lanes(acc: &mut [f32; 8], d: f32, dmin: f32, da: f32, s: [i32; 8], s_min: [i32; 8]) {
    let (dd, dm) = (d * da, dmin * da);
    for l in 0..8 {
        acc[l] += dd * s[l] as f32 - dm * s_min[l] as f32;
    }
}

/// Lane sums of a K-quant super-block: `s[l] = sum_e scale(e) * q(e) * a(e)` over the
/// elements of lane `l`, `q` the unsigned value and `scale` its sub-block scale.
#[inline(always)]
fn k_lane_sums(aq: &[i8], scale: impl Fn(usize) -> i32, q: impl Fn(usize) -> i32) -> [i32; 8] {
    let mut s = [0i32; 8];
    for e in 0..256 {
        s[(e % 32) / 4] += scale(e) * q(e) * aq[e] as i32;
    }
    s
}

/// Q4_K/Q5_K: lane sums, and `s_min[l] = mins[l] * (sum of sub-block l's activations)`.
fn dot_k(blocks: impl Iterator<Item = (f16, f16, [u8; 8], [i32; 8])>, a: ActRow) -> f32 {
    let mut acc = [0f32; 8];
    for (b, (d, dmin, mins, s)) in blocks.enumerate() {
        let s_min = std::array::from_fn(|l| mins[l] as i32 * a.sums[b * 8 + l]);
        k_lanes(&mut acc, d.to_f32(), dmin.to_f32(), a.scales[b], s, s_min);
    }
    fold_lanes(acc)
}

pub(crate) fn dot_q4k(w: &[Q4KBlock], a: ActRow) -> f32 {
    let blocks = w.iter().enumerate().map(|(b, blk)| {
        let q = |e: usize| nibble(&blk.qs[(e / 128) * 64..], e % 128) as i32;
        let s = k_lane_sums(&a.qs[b * 256..][..256], |e| blk.scales[e / 32] as i32, q);
        (blk.d, blk.dmin, blk.mins, s)
    });
    dot_k(blocks, a)
}

pub(crate) fn dot_q5k(w: &[Q5KBlock], a: ActRow) -> f32 {
    let blocks = w.iter().enumerate().map(|(b, blk)| {
        let q = |e: usize| (nibble(&blk.qs[(e / 128) * 64..], e % 128) | (((blk.qh[e / 8] >> (e % 8)) & 1) << 4)) as i32;
        let s = k_lane_sums(&a.qs[b * 256..][..256], |e| blk.scales[e / 32] as i32, q);
        (blk.d, blk.dmin, blk.mins, s)
    });
    dot_k(blocks, a)
}

/// Q6_K's values are `q - 32`: lane `l` also takes `-32 * scales[g] * sums[g]` for the
/// 16-element groups `g = l, l + 8`.
pub(crate) fn dot_q6k(w: &[Q6KBlock], a: ActRow) -> f32 {
    let mut acc = [0f32; 8];
    for (b, blk) in w.iter().enumerate() {
        let sums = &a.sums[b * 16..][..16];
        let s = k_lane_sums(&a.qs[b * 256..][..256], |e| blk.scales[e / 16] as i32, |e| q6k_value(blk, e));
        let offset = |l: usize| blk.scales[l] as i32 * sums[l] + blk.scales[l + 8] as i32 * sums[l + 8];
        let s = std::array::from_fn(|l| s[l] - 32 * offset(l));
        k_lanes(&mut acc, blk.d.to_f32(), 0.0, a.scales[b], s, [0; 8]);
    }
    fold_lanes(acc)
}

/// Element `e`'s unsigned 6-bit value (see [`Q6KBlock`]).
#[inline(always)]
fn q6k_value(blk: &Q6KBlock, e: usize) -> i32 {
    let (h, i) = (e / 128, e % 128);
    let high = (blk.qh[32 * h + i % 32] >> (2 * (i / 32))) & 3;
    (nibble(&blk.ql[64 * h..], i) | (high << 4)) as i32
}
