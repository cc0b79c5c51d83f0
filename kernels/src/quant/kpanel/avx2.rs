//! AVX2 K-quant panel kernels, bitwise equal to [`super::scalar`]: the AVX-512 scheme on half
//! a panel (eight weight rows) per 256-bit vector, `maddubs` + `madd` for `vpdpbusd` (no pair
//! saturates: values are at most 63, activations within [-127, 127]) and `madd` for
//! `vpdpwssd`.
//!
//! Safety (every fn): the caller has checked AVX2, FMA and F16C, and the activations were
//! quantized for this matrix.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{sum_pair, KKind, KPanels, Out, PANEL, Q_LINES};
use crate::quant::activations::{ActRow, QuantizedRows};
use crate::quant::simd::{bits_to_0x10, prefetch};
use crate::quant::format::QK_K;

/// Value vector `i` of tile `t` for the panel's rows `8h .. 8h + 8`, unsigned.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn values(w: &KPanels, t: usize, i: usize, h: usize) -> __m256i {
    let line = w.qs.as_ptr().add(t * Q_LINES + i / 2).cast::<u8>();
    let c = _mm256_loadu_si256(line.add(32 * h).cast());
    let c = if i % 2 == 0 { c } else { _mm256_srli_epi16::<4>(c) };
    let v = _mm256_and_si256(c, _mm256_set1_epi8(0xF));
    let high = w.bits.as_ptr().add(t * w.kind.high_lines());
    match w.kind {
        KKind::Q4K => v,
        KKind::Q5K => {
            let word = high.cast::<u64>().add(i).read();
            _mm256_or_si256(v, bits_to_0x10((word >> (32 * h)) as u32))
        }
        KKind::Q6K => {
            let line = _mm256_loadu_si256(high.add(i / 4).cast::<u8>().add(32 * h).cast());
            let crumb = _mm256_and_si256(_mm256_srl_epi16(line, _mm_cvtsi32_si128(2 * (i % 4) as i32)), _mm256_set1_epi8(3));
            _mm256_or_si256(v, _mm256_slli_epi16::<4>(crumb))
        }
    }
}

/// Activation rows `r0..r0 + R` against panels `ps`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn rows<const R: usize>(w: &KPanels, a: &QuantizedRows, r0: usize, ps: Range<usize>, out: Out) {
    let (nb, groups, z) = (w.nb, w.kind.groups(), w.kind.zero_point());
    let per_group = 64 / groups;
    let rows: [ActRow; R] = std::array::from_fn(|r| a.row(r0 + r));
    let ones = _mm256_set1_epi16(1);
    let zero = _mm256_setzero_si256();
    for p in ps {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for b in 0..nb {
            let t = p * nb + b;
            prefetch(w.qs.as_ptr().add(t * Q_LINES).cast(), Q_LINES * 64);
            for h in 0..2 {
                let mut s = [zero; R];
                for g in 0..groups {
                    let sc = _mm256_cvtepi8_epi32(_mm_loadl_epi64(w.sc.as_ptr().add((t * groups + g) * PANEL + 8 * h).cast()));
                    let mut sums: [__m256i; R] = std::array::from_fn(|r| {
                        if z != 0 { _mm256_set1_epi32(-z * *rows[r].sums.get_unchecked(b * groups + g)) } else { zero }
                    });
                    for i in 0..per_group {
                        let v = values(w, t, g * per_group + i, h);
                        for (row, sum) in rows.iter().zip(sums.iter_mut()) {
                            let x = row.qs.as_ptr().add(b * QK_K + 4 * (g * per_group + i)).cast::<i32>().read_unaligned();
                            *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(_mm256_maddubs_epi16(v, _mm256_set1_epi32(x)), ones));
                        }
                    }
                    for (s, sum) in s.iter_mut().zip(sums) {
                        *s = _mm256_add_epi32(*s, _mm256_mullo_epi32(sum, sc));
                    }
                }
                let dd = _mm256_cvtph_ps(_mm_loadu_si128(w.d.as_ptr().add(t * PANEL + 8 * h).cast()));
                let dm = _mm256_cvtph_ps(_mm_loadu_si128(w.dmin.as_ptr().add(t * PANEL + 8 * h).cast()));
                for ((row, s), acc) in rows.iter().zip(s).zip(acc.iter_mut()) {
                    let da = _mm256_set1_ps(*row.scales.get_unchecked(b));
                    acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dd, da), acc[h]);
                    if w.kind.has_mins() {
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
