//! AVX-512 (F, BW, VL, VNNI) K-quant dot products, bitwise equal to [`super::scalar`] (the
//! 32-element types are [`super::panel`]'s).
//!
//! Each kernel runs a range of weight rows against `R` activation rows: a super-block is
//! decoded into registers once and multiplied with every activation row, which is
//! what makes a batch cheaper per row than a single sequence. Every activation row still goes
//! through exactly the scalar code's operations, so its results do not depend on `R` or on
//! which rows share the call.
//!
//! They use `maddubs`/`madd` as the AVX2 kernels do, where the i16 multiply applies the sub-block scales (pairs stay below
//! 2 * 63 * 127 < 2^15).
//!
//! Safety (every fn): the caller has checked the CPU features (see `Isa::Avx512`) and the
//! rows are consistent (as built by `QuantMatrix`).

use std::arch::x86_64::*;

use std::ops::Range;

use super::activations::ActRow;
use super::avx2::{f16_to_f32, fold_lanes, k_lanes, prefetch, KBlock};
use super::format::{Q4KBlock, Q5KBlock, Q6KBlock};

/// `sum_i q_i a_i * scale(i)` over one K-quant super-block as sixteen i32 partial sums: `q[t]`
/// holds elements `64t ..64t + 64` as unsigned bytes, `scales[t]` the i16 scale of each pair.
/// (`vpdpwssd` in place of `madd` + add measured ~10% slower at 16-64 rows here.)
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn scaled_dot256(q: &[__m512i; 4], scales: &[__m512i; 4], x: *const i8) -> __m512i {
    let p = |t: usize| _mm512_madd_epi16(_mm512_maddubs_epi16(q[t], _mm512_loadu_si512(x.add(64 * t).cast())), scales[t]);
    _mm512_add_epi32(_mm512_add_epi32(p(0), p(1)), _mm512_add_epi32(p(2), p(3)))
}

/// The i16 scales of Q4_K/Q5_K sub-blocks, spread to `scaled_dot256`'s layout: in vector `t`,
/// i16 lanes 0..16 (elements `64t ..64t + 32`) take sub-block `2t`, lanes 16..32 `2t + 1`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn k_scales(scales: &[u8; 8]) -> [__m512i; 4] {
    let s = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_loadl_epi64(scales.as_ptr().cast())));
    std::array::from_fn(|t| {
        let (lo, hi) = (2 * t as i16, 2 * t as i16 + 1);
        _mm512_permutexvar_epi16(_mm512_set_epi16(
            hi, hi, hi, hi, hi, hi, hi, hi, hi, hi, hi, hi, hi, hi, hi, hi, //
            lo, lo, lo, lo, lo, lo, lo, lo, lo, lo, lo, lo, lo, lo, lo, lo,
        ), s)
    })
}

/// The 256 nibbles of a K-quant block's two `pack_nibbles` halves, in element order.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn k_nibbles(qs: *const u8) -> [__m512i; 4] {
    let m = _mm512_set1_epi8(0xF);
    let (v0, v1) = (_mm512_loadu_si512(qs.cast()), _mm512_loadu_si512(qs.add(64).cast()));
    let hi = |v| _mm512_and_si512(_mm512_srli_epi16::<4>(v), m);
    [_mm512_and_si512(v0, m), hi(v0), _mm512_and_si512(v1, m), hi(v1)]
}

/// Lane `l` of the eight-lane result is lanes `l` and `l + 8` of `s` added.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn fold16(s: __m512i) -> __m256i {
    _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64::<1>(s))
}

/// Q4_K/Q5_K over weight rows `cols`: `decode(blk)` gives a block's 256 unsigned values. The
/// madd lanes of `scaled_dot256`, folded to eight, are the canonical lane sums.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
unsafe fn k_rows<B: KBlock, const R: usize>(
    w: &[B],
    nb: usize,
    cols: Range<usize>,
    a: [ActRow; R],
    decode: impl Fn(&B) -> [__m512i; 4],
    emit: &mut impl FnMut(usize, [f32; R]),
) {
    for j in cols {
        let mut acc = [_mm256_setzero_ps(); R];
        for (b, blk) in w[j * nb..(j + 1) * nb].iter().enumerate() {
            prefetch((blk as *const B).cast(), std::mem::size_of::<B>());
            let q = decode(blk);
            let scales = k_scales(blk.scales());
            let mins = _mm256_cvtepu8_epi32(_mm_loadl_epi64(blk.mins().as_ptr().cast()));
            let (d, dmin) = blk.d_dmin();
            let (d, dmin) = (f16_to_f32(d), f16_to_f32(dmin));
            for (a, acc) in a.iter().zip(acc.iter_mut()) {
                let s = fold16(scaled_dot256(&q, &scales, a.qs.as_ptr().add(b * 256)));
                // mins[l] * sums[l] in one i16 multiply: both fit an i16 (|sums| <= 32 * 127) and
                // the high i16 of each mins lane is zero.
                let s_min = _mm256_madd_epi16(mins, _mm256_loadu_si256(a.sums.as_ptr().add(b * 8).cast()));
                *acc = k_lanes(*acc, d, dmin, *a.scales.get_unchecked(b), s, Some(s_min));
            }
        }
        emit(j, acc.map(|acc| fold_lanes(acc)));
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn q4k<const R: usize>(
    w: &[Q4KBlock],
    nb: usize,
    cols: Range<usize>,
    a: [ActRow; R],
    emit: &mut impl FnMut(usize, [f32; R]),
) {
    k_rows(w, nb, cols, a, |blk| k_nibbles(blk.qs.as_ptr()), emit)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn q5k<const R: usize>(
    w: &[Q5KBlock],
    nb: usize,
    cols: Range<usize>,
    a: [ActRow; R],
    emit: &mut impl FnMut(usize, [f32; R]),
) {
    let sixteen = _mm512_set1_epi8(16);
    k_rows(
        w,
        nb,
        cols,
        a,
        |blk| {
            let mut q = k_nibbles(blk.qs.as_ptr());
            for (t, q) in q.iter_mut().enumerate() {
                let bits = u64::from_le_bytes(blk.qh[8 * t..8 * t + 8].try_into().unwrap());
                *q = _mm512_mask_add_epi8(*q, bits, *q, sixteen);
            }
            q
        },
        emit,
    )
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn q6k<const R: usize>(
    w: &[Q6KBlock],
    nb: usize,
    cols: Range<usize>,
    a: [ActRow; R],
    emit: &mut impl FnMut(usize, [f32; R]),
) {
    let m2 = _mm512_set1_epi8(3);
    // Bits 4..5 of elements 128h + 32u + l sit at bits 2u of qh[32h + l]: with qh's 32 bytes
    // in both 256-bit halves, shift the halves by (0, 2) for elements 0..64, (4, 6) for 64..128.
    let (shift_lo, shift_hi) = (
        _mm512_inserti64x4::<1>(_mm512_set1_epi16(0), _mm256_set1_epi16(2)),
        _mm512_inserti64x4::<1>(_mm512_set1_epi16(4), _mm256_set1_epi16(6)),
    );
    for j in cols {
        let mut acc = [_mm256_setzero_ps(); R];
        for (b, blk) in w[j * nb..(j + 1) * nb].iter().enumerate() {
            prefetch((blk as *const Q6KBlock).cast(), std::mem::size_of::<Q6KBlock>());
            let mut q = k_nibbles(blk.ql.as_ptr());
            for h in 0..2 {
                let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(blk.qh.as_ptr().add(32 * h).cast()));
                for (t, shift) in [(2 * h, shift_lo), (2 * h + 1, shift_hi)] {
                    let high = _mm512_and_si512(_mm512_srlv_epi16(qh, shift), m2);
                    q[t] = _mm512_or_si512(q[t], _mm512_slli_epi16::<4>(high));
                }
            }
            // Vector t covers 16-element groups 4t..4t+4, eight i16 pairs each.
            let s16 = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(_mm_loadu_si128(blk.scales.as_ptr().cast())));
            let scales: [__m512i; 4] = std::array::from_fn(|t| {
                let g = |j: i16| 4 * t as i16 + j;
                _mm512_permutexvar_epi16(
                    _mm512_set_epi16(
                        g(3), g(3), g(3), g(3), g(3), g(3), g(3), g(3), g(2), g(2), g(2), g(2), g(2), g(2), g(2), g(2), //
                        g(1), g(1), g(1), g(1), g(1), g(1), g(1), g(1), g(0), g(0), g(0), g(0), g(0), g(0), g(0), g(0),
                    ),
                    s16,
                )
            });
            // The scales as i16 in the low half of each i32 lane (high half zero), so that one
            // `madd` with the sums (|sums| <= 16 * 127) multiplies them exactly.
            let scales32 = _mm512_and_si512(_mm512_cvtepi8_epi32(_mm_loadu_si128(blk.scales.as_ptr().cast())), _mm512_set1_epi32(0xFFFF));
            let d = f16_to_f32(blk.d);
            for (a, acc) in a.iter().zip(acc.iter_mut()) {
                let s = scaled_dot256(&q, &scales, a.qs.as_ptr().add(b * 256));
                // The zero point: lane l takes 32 * scales[g] * sums[g] for g = l, l + 8.
                let offset = _mm512_madd_epi16(scales32, _mm512_loadu_si512(a.sums.as_ptr().add(b * 16).cast()));
                let s = fold16(_mm512_sub_epi32(s, _mm512_slli_epi32::<5>(offset)));
                *acc = k_lanes(*acc, d, 0.0, *a.scales.get_unchecked(b), s, None);
            }
        }
        emit(j, acc.map(|acc| fold_lanes(acc)));
    }
}
