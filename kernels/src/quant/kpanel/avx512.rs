//! AVX-512 (F, BW, VL, VNNI) K-quant panel kernels, bitwise equal to [`super::scalar`].
//!
//! Per group a tile's value vectors are decoded once and multiplied with each of `R`
//! activation rows by `vpdpbusd` (four broadcast activation bytes against four elements of
//! each of the sixteen weight rows), the group sum scaled by `vpmulld`; the minimums' share
//! is four `vpdpwssd` (pairs of group minimums against broadcast pairs of activation sums).
//!
//! Safety (every fn): the caller has checked the CPU features (see `Isa::Avx512`) and the
//! activations were quantized for this matrix (256-element blocks, group sums).

use std::arch::x86_64::*;
use std::ops::Range;

use super::{sum_pair, KKind, KPanels, Out, PANEL, Q_LINES};
use crate::quant::activations::{ActRow, QuantizedRows};
use crate::quant::simd::prefetch;
use crate::quant::format::QK_K;

/// Value vector `i` (elements `4i .. 4i + 4` of the sixteen rows) of tile `t`, unsigned.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn values(w: &KPanels, t: usize, i: usize) -> __m512i {
    let line = _mm512_load_si512(w.qs.as_ptr().add(t * Q_LINES + i / 2).cast());
    let m = _mm512_set1_epi8(0xF);
    let v = if i % 2 == 0 { _mm512_and_si512(line, m) } else { _mm512_and_si512(_mm512_srli_epi16::<4>(line), m) };
    let high = w.bits.as_ptr().add(t * w.kind.high_lines());
    match w.kind {
        KKind::Q4K => v,
        KKind::Q5K => {
            // Bit i % 8 of each byte of line i / 8 is vector i's fifth bit.
            let fifth = _mm512_test_epi8_mask(_mm512_load_si512(high.add(i / 8).cast()), _mm512_set1_epi8((1u8 << (i % 8)) as i8));
            _mm512_mask_add_epi8(v, fifth, v, _mm512_set1_epi8(16))
        }
        KKind::Q6K => {
            let line = _mm512_load_si512(high.add(i / 4).cast());
            let crumb = _mm512_and_si512(_mm512_srl_epi16(line, _mm_cvtsi32_si128(2 * (i % 4) as i32)), _mm512_set1_epi8(3));
            _mm512_or_si512(v, _mm512_slli_epi16::<4>(crumb))
        }
    }
}

/// Activation rows `r0..r0 + R` against panels `ps`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn rows<const R: usize>(w: &KPanels, a: &QuantizedRows, r0: usize, ps: Range<usize>, out: Out) {
    let (nb, groups, z) = (w.nb, w.kind.groups(), w.kind.zero_point());
    let per_group = 64 / groups;
    let high_lines = w.kind.high_lines();
    let rows: [ActRow; R] = std::array::from_fn(|r| a.row(r0 + r));
    let zero = _mm512_setzero_si512();
    for p in ps {
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..nb {
            let t = p * nb + b;
            prefetch(w.qs.as_ptr().add(t * Q_LINES).cast(), Q_LINES * 64);
            prefetch(w.bits.as_ptr().add(t * high_lines).cast(), high_lines * 64);
            let mut s = [zero; R];
            for g in 0..groups {
                let sc = _mm512_cvtepi8_epi32(_mm_loadu_si128(w.sc.as_ptr().add((t * groups + g) * PANEL).cast()));
                let v: [__m512i; 8] = std::array::from_fn(|i| if i < per_group { values(w, t, g * per_group + i) } else { zero });
                for (row, s) in rows.iter().zip(s.iter_mut()) {
                    let x = row.qs.as_ptr().add(b * QK_K + g * 4 * per_group).cast::<i32>();
                    let dot = |acc, i: usize| _mm512_dpbusd_epi32(acc, v[i], _mm512_set1_epi32(x.add(i).read_unaligned()));
                    let init = if z != 0 { _mm512_set1_epi32(-z * *row.sums.get_unchecked(b * groups + g)) } else { zero };
                    let sum = if per_group == 8 {
                        _mm512_add_epi32(dot(dot(dot(dot(init, 0), 2), 4), 6), dot(dot(dot(dot(zero, 1), 3), 5), 7))
                    } else {
                        _mm512_add_epi32(dot(dot(init, 0), 2), dot(dot(zero, 1), 3))
                    };
                    *s = _mm512_add_epi32(*s, _mm512_mullo_epi32(sum, sc));
                }
            }
            let dd = _mm512_cvtph_ps(_mm256_loadu_si256(w.d.as_ptr().add(t * PANEL).cast()));
            if w.kind.has_mins() {
                let dm = _mm512_cvtph_ps(_mm256_loadu_si256(w.dmin.as_ptr().add(t * PANEL).cast()));
                let mins: [__m512i; 4] = std::array::from_fn(|i| _mm512_loadu_si512(w.mins.as_ptr().add((t * 4 + i) * PANEL * 2).cast()));
                for ((row, s), acc) in rows.iter().zip(s).zip(acc.iter_mut()) {
                    let da = _mm512_set1_ps(*row.scales.get_unchecked(b));
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dd, da), *acc);
                    let sums = &row.sums[b * 8..b * 8 + 8];
                    let mut mn = zero;
                    for (i, mins) in mins.iter().enumerate() {
                        mn = _mm512_dpwssd_epi32(mn, *mins, _mm512_set1_epi32(sum_pair(sums, 2 * i)));
                    }
                    *acc = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(mn), _mm512_mul_ps(dm, da), *acc);
                }
            } else {
                for ((row, s), acc) in rows.iter().zip(s).zip(acc.iter_mut()) {
                    let da = _mm512_set1_ps(*row.scales.get_unchecked(b));
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dd, da), *acc);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let mut y = [0f32; PANEL];
            _mm512_storeu_ps(y.as_mut_ptr(), *acc);
            out.write(r0 + r, p, &y);
        }
    }
}
