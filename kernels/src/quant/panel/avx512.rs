//! AVX-512 (F, BW, VL, VNNI) panel kernels, bitwise equal to [`super::scalar`].
//!
//! A tile's eight 64-byte vectors are decoded once to unsigned bytes and multiplied with each
//! of `R` activation rows: vector `i` holds elements `4i .. 4i + 4` of the panel's sixteen
//! rows, so one `vpdpbusd` with the row's four activation bytes at `4i` broadcast adds four
//! products into each weight row's lane, and eight of them (from the block's `init`, which
//! takes off the zero point) leave `S_b` of all sixteen weight rows in one vector. Then one
//! conversion, one multiply of the scales and one fused multiply-add per row and block.
//!
//! Safety (every fn): the caller has checked the CPU features (see `Isa::Avx512`) and the
//! activations were quantized for this matrix with `Kind::kernel_zero_point(Isa::Avx512)`.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{Acts, Kind, Out, Panels, PANEL, QK};
use crate::quant::simd::prefetch;

/// The eight value vectors of tile `t` as unsigned bytes (Q8_0 with its sign bit flipped,
/// i.e. plus 128; Q4_0/Q5_0 as stored).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn unsigned_values(w: &Panels, t: usize) -> [__m512i; 8] {
    let lines = w.qs.as_ptr().add(t * w.kind.lines()).cast::<__m512i>();
    match w.kind {
        Kind::Q8_0 => {
            let flip = _mm512_set1_epi8(-128);
            std::array::from_fn(|i| _mm512_xor_si512(_mm512_load_si512(lines.add(i)), flip))
        }
        Kind::Q4_0 | Kind::Q5_0 => {
            let m = _mm512_set1_epi8(0xF);
            let mut v: [__m512i; 8] = std::array::from_fn(|i| {
                let c = _mm512_load_si512(lines.add(i / 2));
                if i % 2 == 0 { _mm512_and_si512(c, m) } else { _mm512_and_si512(_mm512_srli_epi16::<4>(c), m) }
            });
            if w.kind == Kind::Q5_0 {
                // Bit i of each byte of the high-bit line is vector i's fifth bit.
                let (qh, sixteen) = (_mm512_load_si512(w.qh.as_ptr().add(t).cast()), _mm512_set1_epi8(16));
                for (i, v) in v.iter_mut().enumerate() {
                    *v = _mm512_mask_add_epi8(*v, _mm512_test_epi8_mask(qh, _mm512_set1_epi8(1 << i)), *v, sixteen);
                }
            }
            v
        }
    }
}

/// Activation rows `r0..r0 + R` against panels `ps`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn rows<const R: usize>(w: &Panels, a: &Acts, r0: usize, ps: Range<usize>, out: Out) {
    let nb = w.nb;
    let x: [*const u8; R] = std::array::from_fn(|r| a.qs.as_ptr().add((r0 + r) * a.k).cast());
    let at = |r: usize| (r0 + r) * nb;
    let lines = w.kind.lines();
    for p in ps {
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..nb {
            let t = p * nb + b;
            prefetch(w.qs.as_ptr().add(t * lines).cast(), lines * 64);
            if w.kind == Kind::Q5_0 {
                prefetch(w.qh.as_ptr().add(t).cast(), 64);
            }
            let v = unsigned_values(w, t);
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(w.d.as_ptr().add(t * PANEL).cast()));
            for (r, acc) in acc.iter_mut().enumerate() {
                let xb = x[r].add(b * QK).cast::<i32>();
                let dot = |s, i: usize| _mm512_dpbusd_epi32(s, v[i], _mm512_set1_epi32(xb.add(i).read_unaligned()));
                // Two chains of four: the integer sum is exact in any order.
                let even = dot(dot(dot(dot(_mm512_set1_epi32(*a.init.get_unchecked(at(r) + b)), 0), 2), 4), 6);
                let odd = dot(dot(dot(dot(_mm512_setzero_si512(), 1), 3), 5), 7);
                let d = _mm512_mul_ps(dw, _mm512_set1_ps(*a.scales.get_unchecked(at(r) + b)));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(even, odd)), d, *acc);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let mut y = [0f32; PANEL];
            _mm512_storeu_ps(y.as_mut_ptr(), *acc);
            out.write(r0 + r, p, &y);
        }
    }
}
