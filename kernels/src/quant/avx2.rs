//! AVX2 dot products, bitwise equal to [`super::scalar`].
//!
//! Integer sums use `maddubs` (unsigned weight byte times signed activation byte, pairs added to
//! i16) and `madd` (pairs of i16 to i32). No i16 can saturate: activations are within
//! [-127, 127] and the unsigned operand is at most 63 (K-quants, Q4_0/Q5_0 before their zero
//! point) or `|w| <= 128` (Q8_0 via the sign trick), so a pair is at most 2 * 128 * 127 < 2^15.
//!
//! Safety (every fn): the caller has checked that the CPU has AVX2 and F16C, and the rows are
//! consistent (`a.qs.len()` = 32 or 256 times the block count, as built by `QuantMatrix`).

use std::arch::x86_64::*;

use super::activations::ActRow;
use super::format::{Q4KBlock, Q5KBlock, Q6KBlock};
use super::scalar::Row32;

/// `h.to_f32()` (exact either way) without `half`'s run-time feature check.
#[inline]
#[target_feature(enable = "f16c")]
pub(crate) unsafe fn f16_to_f32(h: half::f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
}

/// [`super::scalar::fold_lanes`] on a vector.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn fold_lanes(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// The shared driver of the 32-element types, over the row's groups of `c` = 8 (or, last, 4)
/// blocks in interleaved order (see `format::interleaved_index`). `products(v, x)` gives, for
/// the 32 values from row value index `v` (a multiple of 32) and the activations `x` there,
/// eight i32 sums of four neighbouring products (unsigned weight values for Q4_0/Q5_0, whose
/// zero point `offset` comes off through the activation sums). Summed over a group, lane `l`
/// is block `l`'s sum (for `c` = 4, lanes `l` and `l + 4` both belong to block `l`). Then
/// `lanes += (dw * da) * isum` exactly as the scalar code does per lane.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn sum_blocks32(w: Row32, a: ActRow, offset: i32, products: impl Fn(usize, *const i8) -> __m256i) -> f32 {
    let nb = w.d.len();
    let mut lanes = _mm256_setzero_ps();
    for g0 in (0..nb).step_by(8) {
        let c = (nb - g0).min(8);
        let mut acc = [_mm256_setzero_si256(); 2];
        for p in 0..c {
            let v = g0 * 32 + 32 * p;
            acc[p % 2] = _mm256_add_epi32(acc[p % 2], products(v, a.qs.as_ptr().add(v)));
        }
        let sums = _mm256_add_epi32(acc[0], acc[1]);
        let (dw, da, asum) = (w.d.as_ptr().add(g0), a.scales.as_ptr().add(g0), a.sums.as_ptr().add(g0));
        // A last group of four fills lanes 0..4; lanes 4..8 get d = 0 and isum = 0, adding
        // +0.0 (a no-op: a lane never holds -0.0, as it starts at +0.0 and x + y = -0.0 needs
        // both -0.0).
        let (isum, dw, da, asum) = if c == 8 {
            (sums, _mm_loadu_si128(dw.cast()), _mm256_loadu_ps(da), _mm256_loadu_si256(asum.cast()))
        } else {
            let half = _mm_add_epi32(_mm256_castsi256_si128(sums), _mm256_extracti128_si256(sums, 1));
            (
                _mm256_zextsi128_si256(half),
                _mm_loadl_epi64(dw.cast()),
                _mm256_zextps128_ps256(_mm_loadu_ps(da)),
                _mm256_zextsi128_si256(_mm_loadu_si128(asum.cast())),
            )
        };
        let isum = _mm256_sub_epi32(isum, _mm256_mullo_epi32(_mm256_set1_epi32(offset), asum));
        let d = _mm256_mul_ps(_mm256_cvtph_ps(dw), da);
        lanes = _mm256_add_ps(lanes, _mm256_mul_ps(d, _mm256_cvtepi32_ps(isum)));
    }
    fold_lanes(lanes)
}

/// The 32 unsigned nibble values from row value index `v` of a Q4_0/Q5_0 row: value `i` of a
/// 128-value chunk is the low nibble of byte `i` (i < 64) or the high nibble of byte `i - 64`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn nibbles32(qs: *const u8, v: usize) -> __m256i {
    let i = v % 128;
    let q = _mm256_loadu_si256(qs.add(v / 128 * 64 + i % 64).cast());
    let q = if i < 64 { q } else { _mm256_srli_epi16(q, 4) };
    _mm256_and_si256(q, _mm256_set1_epi8(0xF))
}

/// `0x10` in byte `i` where bit `i` of `bits` is set.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn bits_to_0x10(bits: u32) -> __m256i {
    // Byte i takes byte i / 8 of `bits`, then tests its bit i % 8.
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0),
    );
    let select = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn madd_u8_i8(w: __m256i, a: *const i8) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(w, _mm256_loadu_si256(a.cast())), _mm256_set1_epi16(1))
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn dot_q4_0(w: Row32, a: ActRow) -> f32 {
    let qs = w.qs.as_ptr();
    sum_blocks32(w, a, 8, |v, x| madd_u8_i8(nibbles32(qs, v), x))
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn dot_q5_0(w: Row32, a: ActRow) -> f32 {
    let qs = w.qs.as_ptr();
    sum_blocks32(w, a, 16, |v, x| madd_u8_i8(_mm256_or_si256(nibbles32(qs, v), bits_to_0x10(w.qh[v / 32])), x))
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn dot_q8_0(w: Row32, a: ActRow) -> f32 {
    let qs = w.qs.as_ptr();
    sum_blocks32(w, a, 0, |v, x| {
        // |w| times a with w's sign: the same products, with an unsigned first operand.
        let q = _mm256_loadu_si256(qs.add(v).cast());
        let p = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(_mm256_loadu_si256(x.cast()), q));
        _mm256_madd_epi16(p, _mm256_set1_epi16(1))
    })
}

/// The four 32-value pieces of a [`pack_nibbles`](super::format::pack_nibbles) chunk as
/// unsigned bytes, in value order.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn nibble_half(qs: *const u8) -> [__m256i; 4] {
    [0, 32, 64, 96].map(|v| nibbles32(qs, v))
}

/// `scale * (sum of q times a)` as eight i32 partial sums, for 32 unsigned weight bytes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn scaled_dot32(q: __m256i, a: *const i8, scale: i16) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(q, _mm256_loadu_si256(a.cast())), _mm256_set1_epi16(scale))
}

/// The K-quant float step on vectors: `acc += (d * da) * s - (dmin * da) * s_min`
/// ([`super::scalar::k_lanes`]; Q6_K passes `s_min = None`, as `x - 0.0 = x`).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn k_lanes(acc: __m256, d: f32, dmin: f32, da: f32, s: __m256i, s_min: Option<__m256i>) -> __m256 {
    let t = _mm256_mul_ps(_mm256_set1_ps(d * da), _mm256_cvtepi32_ps(s));
    let t = match s_min {
        Some(m) => _mm256_sub_ps(t, _mm256_mul_ps(_mm256_set1_ps(dmin * da), _mm256_cvtepi32_ps(m))),
        None => t,
    };
    _mm256_add_ps(acc, t)
}

/// `mins[l] * sums[l]` per lane.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn min_lanes(mins: &[u8; 8], sums: *const i32) -> __m256i {
    _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(mins.as_ptr().cast())), _mm256_loadu_si256(sums.cast()))
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn dot_q4k(w: &[Q4KBlock], a: ActRow) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (b, blk) in w.iter().enumerate() {
        let aq = a.qs.as_ptr().add(b * 256);
        let mut s = _mm256_setzero_si256();
        for h in 0..2 {
            for (i, q) in nibble_half(blk.qs.as_ptr().add(64 * h)).into_iter().enumerate() {
                let sub = 4 * h + i;
                s = _mm256_add_epi32(s, scaled_dot32(q, aq.add(32 * sub), blk.scales[sub] as i16));
            }
        }
        let s_min = min_lanes(&blk.mins, a.sums.as_ptr().add(b * 8));
        acc = k_lanes(acc, f16_to_f32(blk.d), f16_to_f32(blk.dmin), a.scales[b], s, Some(s_min));
    }
    fold_lanes(acc)
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn dot_q5k(w: &[Q5KBlock], a: ActRow) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (b, blk) in w.iter().enumerate() {
        let aq = a.qs.as_ptr().add(b * 256);
        let mut s = _mm256_setzero_si256();
        for h in 0..2 {
            for (i, q) in nibble_half(blk.qs.as_ptr().add(64 * h)).into_iter().enumerate() {
                let sub = 4 * h + i;
                let bits = u32::from_le_bytes(blk.qh[4 * sub..4 * sub + 4].try_into().unwrap());
                let q = _mm256_or_si256(q, bits_to_0x10(bits));
                s = _mm256_add_epi32(s, scaled_dot32(q, aq.add(32 * sub), blk.scales[sub] as i16));
            }
        }
        let s_min = min_lanes(&blk.mins, a.sums.as_ptr().add(b * 8));
        acc = k_lanes(acc, f16_to_f32(blk.d), f16_to_f32(blk.dmin), a.scales[b], s, Some(s_min));
    }
    fold_lanes(acc)
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn dot_q6k(w: &[Q6KBlock], a: ActRow) -> f32 {
    let m2 = _mm256_set1_epi8(3);
    let mut acc = _mm256_setzero_ps();
    for (b, blk) in w.iter().enumerate() {
        let aq = a.qs.as_ptr().add(b * 256);
        let mut s = _mm256_setzero_si256();
        for h in 0..2 {
            let qh = _mm256_loadu_si256(blk.qh.as_ptr().add(32 * h).cast());
            for (t, q) in nibble_half(blk.ql.as_ptr().add(64 * h)).into_iter().enumerate() {
                // Group t (elements 128h + 32t ..+32): bits 2t..2t+2 of qh above the nibble.
                let high = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * t as i32)), m2);
                let q = _mm256_or_si256(q, _mm256_slli_epi16(high, 4));
                // Elements 0..16 of the group use scale g, 16..32 scale g + 1: the low and high
                // 128-bit halves of the i16 products.
                let g = 8 * h + 2 * t;
                let scale = _mm256_set_m128i(_mm_set1_epi16(blk.scales[g + 1] as i16), _mm_set1_epi16(blk.scales[g] as i16));
                let p = _mm256_maddubs_epi16(q, _mm256_loadu_si256(aq.add(128 * h + 32 * t).cast()));
                s = _mm256_add_epi32(s, _mm256_madd_epi16(p, scale));
            }
        }
        // The zero point: lane l takes 32 * scales[g] * sums[g] for g = l, l + 8.
        let sums = a.sums.as_ptr().add(b * 16);
        let scales = _mm_loadu_si128(blk.scales.as_ptr().cast());
        let offset = _mm256_add_epi32(
            _mm256_mullo_epi32(_mm256_cvtepi8_epi32(scales), _mm256_loadu_si256(sums.cast())),
            _mm256_mullo_epi32(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(scales)), _mm256_loadu_si256(sums.add(8).cast())),
        );
        let s = _mm256_sub_epi32(s, _mm256_slli_epi32::<5>(offset));
        acc = k_lanes(acc, f16_to_f32(blk.d), 0.0, a.scales[b], s, None);
    }
    fold_lanes(acc)
}
