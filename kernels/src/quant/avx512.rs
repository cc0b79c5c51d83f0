//! AVX-512 (F, BW, VL, VNNI) dot products, bitwise equal to [`super::scalar`].
//!
//! Each kernel runs a range of weight rows against `R` activation rows: a group of weight
//! blocks is decoded into registers once and multiplied with every activation row, which is
//! what makes a batch cheaper per row than a single sequence. Every activation row still goes
//! through exactly the scalar code's operations, so its results do not depend on `R` or on
//! which rows share the call.
//!
//! 32-element types use `vpdpbusd` (unsigned weight byte times signed activation byte, four
//! products added into an i32 lane, no saturation) on the interleaved layout; Q8_0's signed
//! weights are made unsigned by flipping their sign bit (adding 128), removed again with the
//! activation sums like the other types' zero points. K-quants use `maddubs`/`madd` as the
//! AVX2 kernels do, where the i16 multiply applies the sub-block scales (pairs stay below
//! 2 * 63 * 127 < 2^15).
//!
//! Safety (every fn): the caller has checked the CPU features (see `Isa::Avx512`) and the
//! rows are consistent (as built by `QuantMatrix`).

use std::arch::x86_64::*;

use std::ops::Range;

use super::activations::{ActRow, LANES};
use super::avx2::{f16_to_f32, fold_lanes, k_lanes, prefetch, KBlock};
use super::format::{Blocks32, Q4KBlock, Q5KBlock, Q6KBlock};

/// A group of `c` = 8 (or, last in a row, 4) blocks' weight values as unsigned bytes, 64 per
/// vector in interleaved order (`format::interleaved_index`): `c / 2` vectors.
type Group = [__m512i; 4];

/// The shared driver of the 32-element types: for weight rows `cols`, `emit(j, y)` with `y`
/// the dot products of row `j` with the `R` activation rows. `decode(j, g0, c)` gives the
/// values of row `j`'s group of `c` blocks from block `g0` (`qs_len` bytes per block from `qs`,
/// prefetched ahead); the activations were quantized for the zero point of these values.
///
/// Per row and group, `vpdpbusd` over the group's vectors, starting from the row's lane
/// initial values, leaves in lane `l` exactly the scalar code's lane sum
/// (`activations::lane_of`), and one fused multiply-add per lane accumulates it: a group costs
/// an activation row four dot products and four other vector operations, with no horizontal
/// reduction until the row's end.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn sum_blocks32<const R: usize>(
    (d, qs, qs_len): (&[half::f16], *const u8, usize),
    nb: usize,
    cols: Range<usize>,
    a: [ActRow; R],
    decode: impl Fn(usize, usize, usize) -> Group,
    emit: &mut impl FnMut(usize, [f32; R]),
) {
    // One pointer per row: its values, then lane initial values and lane scales (`ActRow`).
    let rows = a.map(|a| a.qs.as_ptr().cast::<u8>());
    let init_at = nb * 32;
    let scales_at = init_at + nb.div_ceil(8) * LANES * 4;
    debug_assert!(a.iter().all(|a| a.lane_init.as_ptr().cast() == a.qs.as_ptr().wrapping_add(init_at)
        && a.lane_scales.as_ptr().cast() == a.qs.as_ptr().wrapping_add(scales_at)));
    let (full, tail) = (nb / 8, nb % 8 == 4);
    for j in cols {
        let mut acc = [_mm512_setzero_ps(); R];
        let mut group = |g: usize, c: usize| {
            let g0 = 8 * g;
            prefetch(qs.add((j * nb + g0) * qs_len), c * qs_len);
            let wq = decode(j, g0, c);
            // Lane l takes block l % c's scale.
            let dw = d.as_ptr().add(j * nb + g0);
            let dw = if c == 8 {
                let h = _mm256_castps_pd(_mm256_cvtph_ps(_mm_loadu_si128(dw.cast())));
                _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castpd256_pd512(h), h))
            } else {
                _mm512_broadcast_f32x4(_mm_cvtph_ps(_mm_loadl_epi64(dw.cast())))
            };
            for (row, acc) in rows.iter().zip(acc.iter_mut()) {
                let x = row.add(g0 * 32);
                let dot = |i: usize, acc| _mm512_dpbusd_epi32(acc, wq[i], _mm512_loadu_si512(x.add(64 * i).cast()));
                let init = _mm512_loadu_si512(row.add(init_at + 64 * g).cast());
                let s = if c == 8 {
                    _mm512_add_epi32(dot(2, dot(0, init)), dot(3, dot(1, _mm512_setzero_si512())))
                } else {
                    dot(1, dot(0, init))
                };
                let d = _mm512_mul_ps(dw, _mm512_loadu_ps(row.add(scales_at + 64 * g).cast()));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), d, *acc);
            }
        };
        for g in 0..full {
            group(g, 8);
        }
        if tail {
            group(full, 4);
        }
        if R == 8 {
            let y = fold16_x8(std::array::from_fn(|r| acc[r]));
            emit(j, std::array::from_fn(|r| y[r]));
        } else {
            emit(j, acc.map(|acc| fold16_ps(acc)));
        }
    }
}

/// [`super::scalar::fold16`] of eight rows' accumulators at once: a transposing reduction
/// that adds exactly the scalar code's pairs (lane `l` + `l + 8`, then `l` + `l + 4`, then
/// `(0 + 2) + (1 + 3)`), two or four rows per instruction instead of one.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn fold16_x8(acc: [__m512; 8]) -> [f32; 8] {
    // Halves: [t_a | t_b] for rows (a, b) = (0, 1), (2, 3), ..; t = low 256 bits + high.
    let halves = |a: __m512, b: __m512| {
        _mm512_add_ps(_mm512_shuffle_f32x4::<0b01_00_01_00>(a, b), _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b))
    };
    let c: [__m512; 4] = std::array::from_fn(|p| halves(acc[2 * p], acc[2 * p + 1]));
    // Quarters: [m_0 | m_1 | m_2 | m_3] (four lanes each) for rows 0..4 and 4..8; m = t[..4] + t[4..].
    let quarters = |a: __m512, b: __m512| {
        _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(a, b), _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b))
    };
    let (d0, d1) = (quarters(c[0], c[1]), quarters(c[2], c[3]));
    // Per 128-bit chunk c (row c of d0, row 4 + c of d1): [n0, n1] of each, n0 = m0 + m2, n1 = m1 + m3.
    let e = _mm512_add_ps(_mm512_shuffle_ps::<0x44>(d0, d1), _mm512_shuffle_ps::<0xEE>(d0, d1));
    // y = n0 + n1: chunk c holds [y_c, y_{4+c}, ..].
    let f = _mm512_add_ps(_mm512_shuffle_ps::<0x88>(e, e), _mm512_shuffle_ps::<0xDD>(e, e));
    let mut out = [0f32; 16];
    _mm512_storeu_ps(out.as_mut_ptr(), f);
    std::array::from_fn(|r| if r < 4 { out[4 * r] } else { out[4 * (r - 4) + 1] })
}

/// [`super::scalar::fold16`] on a vector of lane accumulators.
#[inline]
#[target_feature(enable = "avx512f,avx2")]
unsafe fn fold16_ps(v: __m512) -> f32 {
    fold_lanes(_mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))))
}

/// The nibble values of a Q4_0/Q5_0 group: each 64-byte chunk holds 128 values, the first 64
/// in its low nibbles.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn nibble_group(qs: *const u8, c: usize) -> Group {
    let m = _mm512_set1_epi8(0xF);
    let v0 = _mm512_loadu_si512(qs.cast());
    let v1 = if c == 8 { _mm512_loadu_si512(qs.add(64).cast()) } else { _mm512_setzero_si512() };
    let hi = |v| _mm512_and_si512(_mm512_srli_epi16::<4>(v), m);
    [_mm512_and_si512(v0, m), hi(v0), _mm512_and_si512(v1, m), hi(v1)]
}

/// `y[j] = [dot(W_j, a_r) for r]` for `j` in `cols`, `emit`ted one row at a time.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn q4_0<const R: usize>(
    w: &Blocks32,
    nb: usize,
    cols: Range<usize>,
    a: [ActRow; R],
    emit: &mut impl FnMut(usize, [f32; R]),
) {
    let qs = w.qs.as_ptr();
    sum_blocks32((&w.d, qs, 16), nb, cols, a, |j, g0, c| nibble_group(qs.add((j * nb + g0) * 16), c), emit)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn q5_0<const R: usize>(
    w: &Blocks32,
    nb: usize,
    cols: Range<usize>,
    a: [ActRow; R],
    emit: &mut impl FnMut(usize, [f32; R]),
) {
    let (qs, qh) = (w.qs.as_ptr(), w.qh.as_ptr());
    let sixteen = _mm512_set1_epi8(16);
    sum_blocks32(
        (&w.d, qs, 16),
        nb,
        cols,
        a,
        |j, g0, c| {
            let mut z = nibble_group(qs.add((j * nb + g0) * 16), c);
            // The fifth bits of values 64i.. are the 64-bit word at u32 index 2i.
            let bits = qh.add(j * nb + g0) as *const u64;
            for (i, z) in z.iter_mut().enumerate().take(c / 2) {
                *z = _mm512_mask_add_epi8(*z, bits.add(i).read_unaligned(), *z, sixteen);
            }
            z
        },
        emit,
    )
}

/// Q8_0's signed weights become unsigned by flipping the sign bit (adding 128).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn q8_0<const R: usize>(
    w: &Blocks32,
    nb: usize,
    cols: Range<usize>,
    a: [ActRow; R],
    emit: &mut impl FnMut(usize, [f32; R]),
) {
    let qs = w.qs.as_ptr();
    let flip = _mm512_set1_epi8(-128);
    sum_blocks32(
        (&w.d, qs, 32),
        nb,
        cols,
        a,
        |j, g0, c| {
            let q = qs.add((j * nb + g0) * 32);
            std::array::from_fn(|i| {
                if i < c / 2 { _mm512_xor_si512(_mm512_loadu_si512(q.add(64 * i).cast()), flip) } else { _mm512_setzero_si512() }
            })
        },
        emit,
    )
}

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
