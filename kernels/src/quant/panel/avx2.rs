//! AVX2 panel kernels, bitwise equal to [`super::scalar`]: the AVX-512 kernels' scheme on
//! half a panel (eight weight rows) per 256-bit vector.
//!
//! Integer sums use `maddubs` (unsigned weight byte times signed activation byte, pairs to
//! i16) and `madd` (pairs to i32); no pair saturates: the unsigned operand is at most 31
//! (Q4_0/Q5_0 as stored) or `|w| <= 128` (Q8_0 via the sign trick), so a pair is at most
//! 2 * 128 * 127 < 2^15.
//!
//! Safety (every fn): the caller has checked AVX2, FMA and F16C, and the activations were
//! quantized with `Kind::kernel_zero_point(Isa::Avx2)`.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{Acts, Kind, Out, Panels, PANEL, QK};
use crate::quant::simd::{bits_to_0x10, prefetch};

/// Value vector `i` of tile `t` for the panel's rows `8h .. 8h + 8`: Q8_0 signed, the others
/// unsigned as stored.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn values(w: &Panels, t: usize, h: usize, i: usize) -> __m256i {
    let line = w.qs.as_ptr().add(t * w.kind.lines()).cast::<u8>();
    match w.kind {
        Kind::Q8_0 => _mm256_loadu_si256(line.add(64 * i + 32 * h).cast()),
        Kind::Q4_0 | Kind::Q5_0 => {
            let c = _mm256_loadu_si256(line.add(64 * (i / 2) + 32 * h).cast());
            let c = if i % 2 == 0 { c } else { _mm256_srli_epi16::<4>(c) };
            let low = _mm256_and_si256(c, _mm256_set1_epi8(0xF));
            if w.kind == Kind::Q5_0 {
                let word = w.qh.as_ptr().add(t).cast::<u64>().add(i).read();
                _mm256_or_si256(low, bits_to_0x10((word >> (32 * h)) as u32))
            } else {
                low
            }
        }
    }
}

/// Activation rows `r0..r0 + R` against panels `ps`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn rows<const R: usize>(w: &Panels, a: &Acts, r0: usize, ps: Range<usize>, out: Out) {
    let nb = w.nb;
    let signed = w.kind == Kind::Q8_0;
    let ones = _mm256_set1_epi16(1);
    let x: [*const u8; R] = std::array::from_fn(|r| a.qs.as_ptr().add((r0 + r) * a.k).cast());
    let at = |r: usize| (r0 + r) * nb;
    let lines = w.kind.lines();
    for p in ps {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for b in 0..nb {
            let t = p * nb + b;
            prefetch(w.qs.as_ptr().add(t * lines).cast(), lines * 64);
            let d = _mm256_loadu_si256(w.d.as_ptr().add(t * PANEL).cast());
            let dw = [_mm256_cvtph_ps(_mm256_castsi256_si128(d)), _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(d))];
            for h in 0..2 {
                let mut s: [__m256i; R] = std::array::from_fn(|r| _mm256_set1_epi32(*a.init.get_unchecked(at(r) + b)));
                for i in 0..8 {
                    let v = values(w, t, h, i);
                    // Q8_0: |w| times a with w's sign, the same products with an unsigned operand.
                    let u = if signed { _mm256_sign_epi8(v, v) } else { v };
                    for (r, s) in s.iter_mut().enumerate() {
                        let xi = _mm256_set1_epi32(x[r].add(b * QK + 4 * i).cast::<i32>().read_unaligned());
                        let xi = if signed { _mm256_sign_epi8(xi, v) } else { xi };
                        *s = _mm256_add_epi32(*s, _mm256_madd_epi16(_mm256_maddubs_epi16(u, xi), ones));
                    }
                }
                for (r, (s, acc)) in s.into_iter().zip(acc.iter_mut()).enumerate() {
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
