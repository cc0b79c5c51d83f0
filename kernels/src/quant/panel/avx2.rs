//! AVX2 panel kernels, bitwise equal to [`super::scalar`]: the AVX-512 kernels' scheme on
//! half a panel (eight weight rows) per 256-bit vector.
//!
//! Integer sums use `maddubs` (unsigned weight byte times signed activation byte, pairs to
//! i16) and `madd` (pairs to i32). No pair saturates: the unsigned operand is at most 31
//! (Q4_0/Q5_0 as stored) or `|w| <= 128` (Q8_0 via the sign trick), so a pair is at most
//! 2 * 128 * 127 < 2^15. The `madd` is the costly half, so Q4_0 and Q5_0 first sum as many
//! `maddubs` results in i16 as cannot overflow ([`Kind::i16_vectors`]).
//!
//! Safety (every fn): the caller has checked AVX2, FMA and F16C, and the activations were
//! quantized with `Kind::kernel_zero_point(Isa::Avx2)`.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{Acts, Kind, Out, Panels, PANEL, QK};
use crate::quant::simd::prefetch;

impl Kind {
    /// Value vectors whose `maddubs` results can be summed in i16: a pair of products is at
    /// most `2 * max_value * 127` (Q4_0 3,810, Q5_0 7,874; Q8_0's 32,512 leaves no room) and
    /// i16 holds 32,767. Divides the eight vectors of a block.
    fn i16_vectors(self) -> usize {
        match self {
            Kind::Q4_0 => 8,
            Kind::Q5_0 => 4,
            Kind::Q8_0 => 1,
        }
    }
}

/// The weight kinds as constants for [`rows_of`], so that each kind's kernel is its own code.
const Q4_0: u8 = 0;
const Q5_0: u8 = 1;
const Q8_0: u8 = 2;

const fn kind_of(k: u8) -> Kind {
    match k {
        Q4_0 => Kind::Q4_0,
        Q5_0 => Kind::Q5_0,
        _ => Kind::Q8_0,
    }
}

/// Value vector `I` of tile `t` for the panel's rows `8h .. 8h + 8`: Q8_0 signed, the others
/// unsigned as stored.
#[inline(always)]
unsafe fn values<const KIND: u8, const I: usize>(w: &Panels, t: usize, h: usize) -> __m256i {
    let kind = kind_of(KIND);
    let line = w.qs.as_ptr().add(t * kind.lines()).cast::<u8>();
    if kind == Kind::Q8_0 {
        return _mm256_loadu_si256(line.add(64 * I + 32 * h).cast());
    }
    let c = _mm256_loadu_si256(line.add(64 * (I / 2) + 32 * h).cast());
    let c = if I % 2 == 0 { c } else { _mm256_srli_epi16::<4>(c) };
    let low = _mm256_and_si256(c, _mm256_set1_epi8(0xF));
    if kind == Kind::Q4_0 {
        return low;
    }
    // Bit I of each byte of the high-bit line is vector I's fifth bit: moved to bit 4 (the
    // 16-bit shifts' spill into the neighbouring byte lands outside bit 4).
    let high = _mm256_loadu_si256(w.qh.as_ptr().add(t).cast::<u8>().add(32 * h).cast());
    let high = match I {
        0 => _mm256_slli_epi16::<4>(high),
        1 => _mm256_slli_epi16::<3>(high),
        2 => _mm256_slli_epi16::<2>(high),
        3 => _mm256_slli_epi16::<1>(high),
        4 => high,
        5 => _mm256_srli_epi16::<1>(high),
        6 => _mm256_srli_epi16::<2>(high),
        _ => _mm256_srli_epi16::<3>(high),
    };
    _mm256_or_si256(low, _mm256_and_si256(high, _mm256_set1_epi8(0x10)))
}

/// Activation rows `r0..r0 + R` against panels `ps`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn rows<const R: usize>(w: &Panels, a: &Acts, r0: usize, ps: Range<usize>, out: Out) {
    match w.kind {
        Kind::Q4_0 => rows_of::<R, Q4_0>(w, a, r0, ps, out),
        Kind::Q5_0 => rows_of::<R, Q5_0>(w, a, r0, ps, out),
        Kind::Q8_0 => rows_of::<R, Q8_0>(w, a, r0, ps, out),
    }
}

/// [`rows`] for weights of kind `KIND`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_of<const R: usize, const KIND: u8>(w: &Panels, a: &Acts, r0: usize, ps: Range<usize>, out: Out) {
    let kind = kind_of(KIND);
    let chunk = kind.i16_vectors();
    let nb = w.nb;
    let signed = kind == Kind::Q8_0;
    let ones = _mm256_set1_epi16(1);
    let x: [*const u8; R] = std::array::from_fn(|r| a.qs.as_ptr().add((r0 + r) * a.k).cast());
    let at = |r: usize| (r0 + r) * nb;
    let lines = kind.lines();
    for p in ps {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for b in 0..nb {
            let t = p * nb + b;
            prefetch(w.qs.as_ptr().add(t * lines).cast(), lines * 64);
            if kind == Kind::Q5_0 {
                prefetch(w.qh.as_ptr().add(t).cast(), 64);
            }
            let d = _mm256_loadu_si256(w.d.as_ptr().add(t * PANEL).cast());
            let dw = [_mm256_cvtph_ps(_mm256_castsi256_si128(d)), _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(d))];
            for h in 0..2 {
                // The half tile's eight vectors decoded once for all rows.
                let v = [
                    values::<KIND, 0>(w, t, h),
                    values::<KIND, 1>(w, t, h),
                    values::<KIND, 2>(w, t, h),
                    values::<KIND, 3>(w, t, h),
                    values::<KIND, 4>(w, t, h),
                    values::<KIND, 5>(w, t, h),
                    values::<KIND, 6>(w, t, h),
                    values::<KIND, 7>(w, t, h),
                ];
                // Q8_0: |w| times a with w's sign, the same products with an unsigned operand.
                let u = v.map(|v| if signed { _mm256_sign_epi8(v, v) } else { v });
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xb = x[r].add(b * QK).cast::<i32>();
                    let mut s = _mm256_set1_epi32(*a.init.get_unchecked(at(r) + b));
                    // `chunk` vectors' products summed in i16, then widened by one `madd`.
                    for c in (0..8).step_by(chunk) {
                        let mut sum16 = _mm256_setzero_si256();
                        for i in c..c + chunk {
                            let xi = _mm256_set1_epi32(xb.add(i).read_unaligned());
                            let xi = if signed { _mm256_sign_epi8(xi, v[i]) } else { xi };
                            sum16 = _mm256_add_epi16(sum16, _mm256_maddubs_epi16(u[i], xi));
                        }
                        s = _mm256_add_epi32(s, _mm256_madd_epi16(sum16, ones));
                    }
                    let d = _mm256_mul_ps(dw[h], _mm256_set1_ps(*a.scales.get_unchecked(at(r) + b)));
                    acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, acc[h]);
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
