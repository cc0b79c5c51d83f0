//! AVX2 K-quant panel kernels, bitwise equal to [`super::scalar`]: the AVX-512 scheme on half
//! a panel (eight weight rows) per 256-bit vector.
//!
//! AVX2 has no `vpdpbusd`, so a value vector times four broadcast activation bytes is a
//! `maddubs` (pairs of unsigned-value times signed-activation products, summed to i16), and
//! the i16 pairs become i32 through a `madd`. The `madd` is the costly half, so several
//! `maddubs` results are first summed in i16 ([`KKind::i16_vectors`]: as many as cannot
//! overflow) and one `madd` with the group's scale (each weight row's scale in both i16 halves
//! of its lane) turns their sum into the scaled i32 group sum. No step saturates: a pair is at
//! most `2 * max_value * 127`, and the vectors summed keep the total within i16.
//!
//! Q6_K's zero point (32) is taken off after the groups: `32 * sum_g sc_g * sum_{e in g} a_e`
//! through `madd`s of scale pairs with pairs of activation group sums, as the minimums are.
//! The integer sum is the scalar reference's exactly; the float steps are its own.
//!
//! Safety (every fn): the caller has checked AVX2, FMA and F16C, and the activations were
//! quantized for this matrix.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{sum_pair, KKind, KPanels, Out, PANEL, Q_LINES};
use crate::quant::activations::{ActRow, QuantizedRows};
use crate::quant::format::QK_K;
use crate::quant::simd::prefetch;

impl KKind {
    /// Value vectors whose `maddubs` results can be summed in i16: a pair of products is at
    /// most `2 * max_value * 127` (Q4_K 3,810, Q5_K 7,874, Q6_K 16,002) and i16 holds 32,767.
    /// Divides the vectors per group (eight, or Q6_K's four).
    const fn i16_vectors(self) -> usize {
        match self {
            KKind::Q4K => 8,
            KKind::Q5K => 4,
            KKind::Q6K => 2,
        }
    }
}

/// The weight kinds as constants for [`rows_of`], so that each kind's kernel is its own code.
const Q4K: u8 = 0;
const Q5K: u8 = 1;
const Q6K: u8 = 2;

const fn kind_of(k: u8) -> KKind {
    match k {
        Q4K => KKind::Q4K,
        Q5K => KKind::Q5K,
        _ => KKind::Q6K,
    }
}

/// Value vector `i` of tile `t` for the panel's rows `8h .. 8h + 8`, unsigned.
#[inline(always)]
unsafe fn values(w: &KPanels, kind: KKind, t: usize, i: usize, h: usize) -> __m256i {
    let line = w.qs.as_ptr().add(t * Q_LINES + i / 2).cast::<u8>();
    let c = _mm256_loadu_si256(line.add(32 * h).cast());
    let c = if i % 2 == 0 { c } else { _mm256_srli_epi16::<4>(c) };
    let v = _mm256_and_si256(c, _mm256_set1_epi8(0xF));
    let high = w.bits.as_ptr().add(t * kind.high_lines());
    match kind {
        KKind::Q4K => v,
        KKind::Q5K => {
            // Bit i % 8 of each byte of line i / 8 is vector i's fifth bit: shifted to bit 0,
            // then to bit 4 (the 16-bit shifts' spill into the neighbouring byte lands outside
            // bit 4).
            let line = _mm256_loadu_si256(high.add(i / 8).cast::<u8>().add(32 * h).cast());
            let fifth = _mm256_slli_epi16::<4>(_mm256_srl_epi16(line, _mm_cvtsi32_si128((i % 8) as i32)));
            _mm256_or_si256(v, _mm256_and_si256(fifth, _mm256_set1_epi8(0x10)))
        }
        KKind::Q6K => {
            let line = _mm256_loadu_si256(high.add(i / 4).cast::<u8>().add(32 * h).cast());
            let crumb = _mm256_and_si256(_mm256_srl_epi16(line, _mm_cvtsi32_si128(2 * (i % 4) as i32)), _mm256_set1_epi8(3));
            _mm256_or_si256(v, _mm256_slli_epi16::<4>(crumb))
        }
    }
}

/// The eight scales of group `g` of tile `t` for rows `8h .. 8h + 8` as i16 pairs
/// `(sc[g], sc[g2])`, one pair a row (`g2 == g`: the scale in both halves of the lane).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn scale_pairs(w: &KPanels, t: usize, (g, g2): (usize, usize), h: usize) -> __m256i {
    let at = |g: usize| _mm_loadl_epi64(w.sc.as_ptr().add((t * w.kind.groups() + g) * PANEL + 8 * h).cast());
    _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(at(g), at(g2)))
}

/// Activation rows `r0..r0 + R` against panels `ps`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn rows<const R: usize>(w: &KPanels, a: &QuantizedRows, r0: usize, ps: Range<usize>, out: Out) {
    // The group's and the sums' lengths as constants, so that the group's loops unroll.
    match w.kind {
        KKind::Q4K => rows_of::<R, Q4K, { 64 / KKind::Q4K.groups() }, { KKind::Q4K.i16_vectors() }>(w, a, r0, ps, out),
        KKind::Q5K => rows_of::<R, Q5K, { 64 / KKind::Q5K.groups() }, { KKind::Q5K.i16_vectors() }>(w, a, r0, ps, out),
        KKind::Q6K => rows_of::<R, Q6K, { 64 / KKind::Q6K.groups() }, { KKind::Q6K.i16_vectors() }>(w, a, r0, ps, out),
    }
}

/// [`rows`] for `PER_GROUP` value vectors a group (`64 / groups`), summing `CHUNK`
/// (`i16_vectors`) in i16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_of<const R: usize, const KIND: u8, const PER_GROUP: usize, const CHUNK: usize>(
    w: &KPanels,
    a: &QuantizedRows,
    r0: usize,
    ps: Range<usize>,
    out: Out,
) {
    let (nb, groups, kind) = (w.nb, 64 / PER_GROUP, kind_of(KIND));
    let high_lines = kind.high_lines();
    let rows: [ActRow; R] = std::array::from_fn(|r| a.row(r0 + r));
    let zero = _mm256_setzero_si256();
    for p in ps {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for b in 0..nb {
            let t = p * nb + b;
            prefetch(w.qs.as_ptr().add(t * Q_LINES).cast(), Q_LINES * 64);
            prefetch(w.bits.as_ptr().add(t * high_lines).cast(), high_lines * 64);
            for h in 0..2 {
                let mut s = [zero; R];
                for g in 0..groups {
                    let sc = scale_pairs(w, t, (g, g), h);
                    add_group::<R, KIND, PER_GROUP, CHUNK>(w, t, g, h, &rows, b, sc, &mut s);
                }
                if kind.zero_point() != 0 {
                    let pairs: [__m256i; 8] = std::array::from_fn(|i| scale_pairs(w, t, (2 * i, 2 * i + 1), h));
                    let z = _mm256_set1_epi32(kind.zero_point());
                    for (row, s) in rows.iter().zip(s.iter_mut()) {
                        let sums = &row.sums[b * groups..(b + 1) * groups];
                        let mut zs = zero;
                        for (i, pair) in pairs.iter().enumerate() {
                            zs = _mm256_add_epi32(zs, _mm256_madd_epi16(*pair, _mm256_set1_epi32(sum_pair(sums, 2 * i))));
                        }
                        *s = _mm256_sub_epi32(*s, _mm256_mullo_epi32(zs, z));
                    }
                }
                let dd = _mm256_cvtph_ps(_mm_loadu_si128(w.d.as_ptr().add(t * PANEL + 8 * h).cast()));
                let dm = _mm256_cvtph_ps(_mm_loadu_si128(w.dmin.as_ptr().add(t * PANEL + 8 * h).cast()));
                for ((row, s), acc) in rows.iter().zip(s).zip(acc.iter_mut()) {
                    let da = _mm256_set1_ps(*row.scales.get_unchecked(b));
                    acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dd, da), acc[h]);
                    if kind.has_mins() {
                        let sums = &row.sums[b * 8..b * 8 + 8];
                        let mut mn = zero;
                        for i in 0..4 {
                            let mins = _mm256_loadu_si256(w.mins.as_ptr().add(((t * 4 + i) * PANEL + 8 * h) * 2).cast());
                            mn = _mm256_add_epi32(mn, _mm256_madd_epi16(mins, _mm256_set1_epi32(sum_pair(sums, 2 * i))));
                        }
                        acc[h] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(mn), _mm256_mul_ps(dm, da), acc[h]);
                    }
                }
            }
        }
        for (r, [lo, hi]) in acc.iter().enumerate() {
            let mut y = [0f32; PANEL];
            _mm256_storeu_ps(y.as_mut_ptr(), *lo);
            _mm256_storeu_ps(y.as_mut_ptr().add(8), *hi);
            out.write(r0 + r, p, &y);
        }
    }
}

/// Adds group `g` of tile `t` (rows `8h .. 8h + 8`) to the rows' sums `s`. Q4_K, and every
/// kind below four rows: each value vector decoded, then met by every row. Q5_K and Q6_K
/// batches: the group's vectors decoded first, the rows outside, faster for them
/// (`qmatmul_bench`, one thread: Q6_K ffn_down 4864->896 at 16 and 32 rows 1.28 -> 1.15 and
/// 2.75 -> 2.34 ms, Q5_K `l2` at 32 rows 0.79 -> 0.74) and slower for the others.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn add_group<const R: usize, const KIND: u8, const PER_GROUP: usize, const CHUNK: usize>(
    w: &KPanels,
    t: usize,
    g: usize,
    h: usize,
    rows: &[ActRow; R],
    b: usize,
    sc: __m256i,
    s: &mut [__m256i; R],
) {
    if KIND == Q4K || R < 4 {
        for c in 0..PER_GROUP / CHUNK {
            let mut sum16 = [_mm256_setzero_si256(); R];
            for i in g * PER_GROUP + c * CHUNK..g * PER_GROUP + (c + 1) * CHUNK {
                // The kind as read at run time, not `KIND`: with it constant the loop unrolled
                // and Q4_K at 16 and 32 rows took ~10% longer (`qmatmul_bench`, ffn_down shape).
                let v = values(w, w.kind, t, i, h);
                for (row, sum16) in rows.iter().zip(sum16.iter_mut()) {
                    let x = row.qs.as_ptr().add(b * QK_K + 4 * i).cast::<i32>().read_unaligned();
                    *sum16 = _mm256_add_epi16(*sum16, _mm256_maddubs_epi16(v, _mm256_set1_epi32(x)));
                }
            }
            for (s, sum16) in s.iter_mut().zip(sum16) {
                *s = _mm256_add_epi32(*s, _mm256_madd_epi16(sum16, sc));
            }
        }
        return;
    }
    let v: [__m256i; PER_GROUP] = std::array::from_fn(|j| values(w, kind_of(KIND), t, PER_GROUP * g + j, h));
    for (row, s) in rows.iter().zip(s.iter_mut()) {
        let x = row.qs.as_ptr().add(b * QK_K + 4 * PER_GROUP * g).cast::<i32>();
        for c in 0..PER_GROUP / CHUNK {
            let mut sum16 = _mm256_setzero_si256();
            for (j, v) in v.iter().enumerate().skip(c * CHUNK).take(CHUNK) {
                sum16 = _mm256_add_epi16(sum16, _mm256_maddubs_epi16(*v, _mm256_set1_epi32(x.add(j).read_unaligned())));
            }
            *s = _mm256_add_epi32(*s, _mm256_madd_epi16(sum16, sc));
        }
    }
}
