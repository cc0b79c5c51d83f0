//! Activations quantized to 8 bits, the integer partner of every weight type's dot product.
//!
//! Each row is cut into blocks of the weight type's block length (32 or 256); a block keeps one
//! f32 scale `d = amax / 127` and values `round(x / d)` in [-127, 127], so a weight-activation
//! product of a block is an exact integer sum times two scales. For the K-quants the partial
//! sums of the values (per 32 or 16 elements) let kernels apply a K-quant minimum or zero point
//! once per group instead of per element; the 32-element types keep their own rows
//! ([`super::panel::Acts`]) built from the same [`quantize_block`].
//!
//! Quantization runs once per row per call and only in this portable code, so every kernel
//! (scalar, AVX2, AVX-512) sees the same integers, and a row's integers depend on nothing but
//! the row.

use rayon::prelude::*;

/// `m` quantized K-quant rows of `k` elements.
pub(crate) struct QuantizedRows {
    k: usize,
    block_len: usize,
    sum_len: usize,
    /// `(m, k / block_len)`.
    scales: Vec<f32>,
    /// `(m, k / sum_len)`, the sum of each `sum_len` consecutive values.
    sums: Vec<i32>,
    /// `(m, k)`.
    qs: Vec<i8>,
}

/// One quantized row: `scales[b]` covers block `b`, `sums[g]` is the sum of the values of
/// elements `g * sum_len ..(g + 1) * sum_len`; `qs` holds the values in element order.
#[derive(Clone, Copy)]
pub(crate) struct ActRow<'a> {
    pub scales: &'a [f32],
    pub sums: &'a [i32],
    pub qs: &'a [i8],
}

/// Adding then subtracting 1.5 * 2^23 rounds an f32 of magnitude below 2^22 to the nearest
/// integer, ties to even, in plain SSE2 arithmetic (`f32::round` is a libm call there).
const ROUNDER: f32 = 12_582_912.0;

impl QuantizedRows {
    /// `x` is `(m, k)` row-major; `k` must be a multiple of `block_len`, which must be a
    /// multiple of `sum_len`.
    pub fn quantize(x: &[f32], k: usize, block_len: usize, sum_len: usize) -> Self {
        debug_assert!(k.is_multiple_of(block_len) && block_len.is_multiple_of(sum_len) && x.len().is_multiple_of(k));
        let m = x.len() / k;
        let nb = k / block_len;
        let ns = k / sum_len;
        let mut out = Self { k, block_len, sum_len, scales: vec![0.0; m * nb], sums: vec![0; m * ns], qs: vec![0; m * k] };
        // Rows are independent: split them over the thread pool when there are enough.
        let rows = x.chunks_exact(k).zip(out.qs.chunks_exact_mut(k)).zip(out.scales.chunks_exact_mut(nb).zip(out.sums.chunks_exact_mut(ns)));
        let quantize = |((x, qs), (scales, sums)): ((&[f32], &mut [i8]), (&mut [f32], &mut [i32]))| {
            quantize_row(x, qs, scales, sums, (block_len, sum_len));
        };
        if m * k >= PARALLEL_ELEMENTS {
            rows.collect::<Vec<_>>().into_par_iter().for_each(quantize);
        } else {
            rows.for_each(quantize);
        }
        out
    }

    pub fn row(&self, r: usize) -> ActRow<'_> {
        let (nb, ns) = (self.k / self.block_len, self.k / self.sum_len);
        ActRow { scales: &self.scales[r * nb..(r + 1) * nb], sums: &self.sums[r * ns..(r + 1) * ns], qs: &self.qs[r * self.k..(r + 1) * self.k] }
    }
}

/// Below this many elements quantizing on one thread is cheaper than waking others.
const PARALLEL_ELEMENTS: usize = 64 * 1024;

/// One row: `qs` gets the values, `scales` one per block, `sums` one per `sum_len` values.
/// Compiled for AVX-512 too (the same operations elementwise, so the same results) when the
/// CPU has it.
fn quantize_row(x: &[f32], qs: &mut [i8], scales: &mut [f32], sums: &mut [i32], params: (usize, usize)) {
    #[cfg(target_arch = "x86_64")]
    if matches!(super::Isa::detected(), super::Isa::Avx512 | super::Isa::Amx) {
        // Safety: the CPU has AVX-512 F and BW.
        return unsafe { quantize_row_avx512(x, qs, scales, sums, params) };
    }
    quantize_row_impl(x, qs, scales, sums, params)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2")]
unsafe fn quantize_row_avx512(x: &[f32], qs: &mut [i8], scales: &mut [f32], sums: &mut [i32], params: (usize, usize)) {
    quantize_row_impl(x, qs, scales, sums, params)
}

#[inline(always)]
fn quantize_row_impl(x: &[f32], qs: &mut [i8], scales: &mut [f32], sums: &mut [i32], (block_len, sum_len): (usize, usize)) {
    for (b, (x, q)) in x.chunks_exact(block_len).zip(qs.chunks_exact_mut(block_len)).enumerate() {
        scales[b] = quantize_block(x, q);
        let per_block = block_len / sum_len;
        for (s, q) in sums[b * per_block..(b + 1) * per_block].iter_mut().zip(q.chunks_exact(sum_len)) {
            *s = q.iter().map(|&q| q as i32).sum();
        }
    }
}

/// Quantizes one block into `qs`, returning its scale. An all-zero block gets scale 0.
#[inline(always)]
pub(crate) fn quantize_block(x: &[f32], qs: &mut [i8]) -> f32 {
    // Max is exact and order-free: sixteen lanes, then across them.
    let mut lanes = [0f32; 16];
    for chunk in x.chunks_exact(16) {
        for (m, v) in lanes.iter_mut().zip(chunk) {
            *m = m.max(v.abs());
        }
    }
    let amax = lanes.iter().fold(0f32, |m, &v| m.max(v));
    let d = amax / 127.0;
    let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    // `c + ROUNDER` lies in [2^23, 2^24), where the floats are the integers: its bits minus
    // ROUNDER's are `c` rounded half to even, as `(c + ROUNDER) - ROUNDER` would give it, but
    // in integer operations the compiler vectorises (a float-to-i8 cast goes element by element).
    let base = ROUNDER.to_bits() as i32;
    for (q, &v) in qs.iter_mut().zip(x) {
        // |v * inv| <= 127 up to rounding; a NaN survives the clamp and becomes 0.
        let c = (v * inv).clamp(-127.0, 127.0);
        let r = if c.is_nan() { 0 } else { (c + ROUNDER).to_bits() as i32 - base };
        *q = r as i8;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantizes_to_symmetric_bytes_with_sums() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 20.5) * 0.25).collect();
        let q = QuantizedRows::quantize(&x, 32, 32, 16);
        let row = q.row(1);
        // Block 1 holds 2.875 .. 10.625: its largest magnitude maps to 127.
        assert_eq!(row.scales[0], 10.625 / 127.0);
        assert_eq!(row.qs[31], 127);
        for (i, &v) in x[32..].iter().enumerate() {
            assert!((row.qs[i] as f32 * row.scales[0] - v).abs() <= row.scales[0] / 2.0 + 1e-6);
        }
        assert_eq!(row.sums[1], row.qs[16..].iter().map(|&q| q as i32).sum::<i32>());
        let zeros = QuantizedRows::quantize(&[0.0; 32], 32, 32, 32);
        assert_eq!((zeros.row(0).scales[0], zeros.row(0).qs.iter().all(|&q| q == 0)), (0.0, true));
    }

    /// The integer-bits rounding is the float one for every value the clamp lets through.
    #[test]
    fn bits_rounding_matches_float_rounding() {
        let base = ROUNDER.to_bits() as i32;
        let mut v = -127.0f32;
        while v <= 127.0 {
            for c in [v, v.next_up(), v.next_down()].map(|c| c.clamp(-127.0, 127.0)) {
                assert_eq!((c + ROUNDER).to_bits() as i32 - base, ((c + ROUNDER) - ROUNDER) as i32, "{c}");
            }
            v += 1.0 / 64.0;
        }
        let mut q = [1i8; 32];
        let mut x = [0.5f32; 32];
        x[3] = f32::NAN;
        quantize_block(&x, &mut q);
        assert_eq!(q[3], 0, "NaN becomes 0");
    }

    #[test]
    fn rounds_ties_to_even() {
        for (v, r) in [(0.5f32, 0.0f32), (1.5, 2.0), (-2.5, -2.0), (126.49, 126.0), (-126.51, -127.0)] {
            assert_eq!((v + ROUNDER) - ROUNDER, r, "{v}");
        }
    }
}
