//! Activation rows quantized for the panel kernels: per 32-element block one f32 scale and
//! values in [-127, 127] (as for every weight type, [`super::super::activations`]), stored in
//! element order with a row stride of `k` bytes (an AMX A operand), the rows padded with
//! zero rows to a multiple of 16; and per block `-z * (sum of the block's values)`, where a
//! kernel that multiplies unsigned weights with zero point `z` starts its integer sum.

use rayon::prelude::*;

use super::{PANEL, QK};
use crate::quant::activations::quantize_block;

pub(crate) struct Acts {
    pub k: usize,
    pub nb: usize,
    /// `(rows, k)`: `m` rows, rounded up to a multiple of 16 when padded.
    pub qs: Vec<i8>,
    /// `(rows, nb)`.
    pub scales: Vec<f32>,
    /// `(rows, nb)`.
    pub init: Vec<i32>,
}

/// Below this many elements one thread quantizes everything.
const PARALLEL_ELEMENTS: usize = 64 * 1024;

impl Acts {
    /// `x` is `(m, k)` row-major, `k` a multiple of 32; `zero_point` is the `z` of `init`;
    /// `pad` rounds the rows up to a multiple of 16.
    pub fn quantize(x: &[f32], k: usize, zero_point: i32, pad: bool) -> Self {
        let nb = k / QK;
        let m = x.len() / k;
        let rows = if pad { m.next_multiple_of(PANEL) } else { m };
        let mut out = Self { k, nb, qs: vec![0; rows * k], scales: vec![0.0; rows * nb], init: vec![0; rows * nb] };
        let work = x.chunks_exact(k).zip(out.qs.chunks_exact_mut(k)).zip(out.scales.chunks_exact_mut(nb).zip(out.init.chunks_exact_mut(nb)));
        let row = |((x, qs), (scales, init)): ((&[f32], &mut [i8]), (&mut [f32], &mut [i32]))| {
            quantize_row(x, qs, scales, init, zero_point)
        };
        if x.len() >= PARALLEL_ELEMENTS {
            work.collect::<Vec<_>>().into_par_iter().for_each(row);
        } else {
            work.for_each(row);
        }
        out
    }
}

/// One row, compiled for AVX-512 too (the same operations elementwise, so the same results)
/// when the CPU has it.
fn quantize_row(x: &[f32], qs: &mut [i8], scales: &mut [f32], init: &mut [i32], zero_point: i32) {
    #[cfg(target_arch = "x86_64")]
    if matches!(crate::quant::Isa::detected(), crate::quant::Isa::Avx512 | crate::quant::Isa::Amx) {
        // Safety: the CPU has AVX-512 F and BW.
        return unsafe { quantize_row_avx512(x, qs, scales, init, zero_point) };
    }
    quantize_row_impl(x, qs, scales, init, zero_point)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2")]
unsafe fn quantize_row_avx512(x: &[f32], qs: &mut [i8], scales: &mut [f32], init: &mut [i32], zero_point: i32) {
    quantize_row_impl(x, qs, scales, init, zero_point)
}

#[inline(always)]
fn quantize_row_impl(x: &[f32], qs: &mut [i8], scales: &mut [f32], init: &mut [i32], zero_point: i32) {
    for (b, (x, q)) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).enumerate() {
        scales[b] = quantize_block(x, q);
        init[b] = -zero_point * q.iter().map(|&q| q as i32).sum::<i32>();
    }
}
