//! Activations quantized to 8 bits, the integer partner of every weight type's dot product.
//!
//! Each row is cut into blocks of the weight type's block length (32 or 256); a block keeps one
//! f32 scale `d = amax / 127` and values `round(x / d)` in [-127, 127], so a weight-activation
//! product of a block is an exact integer sum times two scales. The partial sums of the values
//! (per 32 or 16 elements) let kernels apply a weight type's zero point (`-8`, `-16`, `-32`) or
//! K-quant minimum once per group instead of per element.
//!
//! For the 32-element types the values are stored in the weights' interleaved order
//! ([`super::format::interleaved_index`]), so a vector of activations lines up with a vector of
//! weights, and each group of blocks also gets its sixteen *lane* sums and scales (see
//! [`ActRow`]); K-quant rows stay in element order.
//!
//! Quantization runs once per row per call and only in this portable code, so every kernel
//! (scalar, AVX2, AVX-512) sees the same integers, and a row's integers depend on nothing but
//! the row.

use rayon::prelude::*;

use super::format::interleaved_index;

/// `m` quantized rows of `k` elements.
pub(crate) struct QuantizedRows {
    k: usize,
    block_len: usize,
    sum_len: usize,
    /// `(m, k / block_len)`.
    scales: Vec<f32>,
    /// K-quants: `(m, k / sum_len)`, the sum of each `sum_len` consecutive values.
    sums: Vec<i32>,
    /// `m` rows of `row_words` words: the row's `k` values as bytes, then (32-element types) its
    /// lane initial values and lane scales (see [`ActRow`]).
    data: Vec<i32>,
    row_words: usize,
}

/// The i32 lanes of a 512-bit vector: the 32-element types' kernels keep one accumulator per
/// lane of each group of blocks.
pub(crate) const LANES: usize = 16;

/// Lane `l` of a group of `c` 32-element blocks: the row value at local offset `o` (from the
/// group's first value) is added into lane `(o / 4) % LANES`, which belongs to block `l % c`.
#[inline(always)]
pub(crate) fn lane_of(o: usize) -> usize {
    (o / 4) % LANES
}

/// One quantized row: `scales[b]` covers block `b`, `sums[g]` (K-quants) is the sum of the
/// values of elements `g * sum_len ..(g + 1) * sum_len`; `qs` holds the values (element order,
/// or interleaved).
///
/// For the 32-element types, group `g` of eight (last: four) blocks has sixteen lanes
/// ([`lane_of`]): `lane_scales[g * LANES + l]` is the scale of lane `l`'s block and
/// `lane_init[g * LANES + l]` is minus the weights' zero point times the sum of the values
/// added into lane `l`, the value a lane's integer sum starts from. In memory `lane_init`
/// directly follows `qs`, and `lane_scales` follows `lane_init` (kernels address all three from
/// `qs`'s pointer, one register per row); both are empty for K-quant rows.
#[derive(Clone, Copy)]
pub(crate) struct ActRow<'a> {
    pub scales: &'a [f32],
    pub sums: &'a [i32],
    pub qs: &'a [i8],
    pub lane_init: &'a [i32],
    pub lane_scales: &'a [f32],
}

/// Adding then subtracting 1.5 * 2^23 rounds an f32 of magnitude below 2^22 to the nearest
/// integer, ties to even, in plain SSE2 arithmetic (`f32::round` is a libm call there).
const ROUNDER: f32 = 12_582_912.0;

impl QuantizedRows {
    /// `x` is `(m, k)` row-major; `k` must be a multiple of `block_len`, which must be a
    /// multiple of `sum_len`. `zero_point: Some(z)` (32-element blocks only) stores each row's
    /// values in interleaved order with lane values for weights whose zero point is `z`.
    pub fn quantize(x: &[f32], k: usize, block_len: usize, sum_len: usize, zero_point: Option<i32>) -> Self {
        debug_assert!(k.is_multiple_of(block_len) && block_len.is_multiple_of(sum_len) && x.len().is_multiple_of(k));
        debug_assert!(k.is_multiple_of(4) && (zero_point.is_none() || block_len == 32));
        let m = x.len() / k;
        let nb = k / block_len;
        let groups = if zero_point.is_some() { nb.div_ceil(8) } else { 0 };
        let row_words = k / 4 + 2 * groups * LANES;
        let mut out = Self {
            k,
            block_len,
            sum_len,
            scales: vec![0.0; m * nb],
            sums: if zero_point.is_some() { Vec::new() } else { vec![0; m * k / sum_len] },
            data: vec![0; m * row_words],
            row_words,
        };
        // Rows are independent: split them over the thread pool when there are enough.
        let rows = x.chunks_exact(k).zip(out.data.chunks_exact_mut(row_words)).zip(out.scales.chunks_exact_mut(nb));
        let sums_per_row = if zero_point.is_some() { 0 } else { k / sum_len };
        // K-quant rows only (the 32-element types keep no sums: the iterator is empty).
        let mut sums = out.sums.chunks_mut(sums_per_row.max(1));
        let rows: Vec<_> = rows.map(|r| (r, sums.next())).collect();
        let quantize = |(((x, row), scales), sums): (((&[f32], &mut [i32]), &mut [f32]), Option<&mut [i32]>)| {
            quantize_row(x, row, scales, sums, (block_len, sum_len, zero_point));
        };
        if m * k >= PARALLEL_ELEMENTS {
            rows.into_par_iter().for_each(quantize);
        } else {
            rows.into_iter().for_each(quantize);
        }
        out
    }

    pub fn row(&self, r: usize) -> ActRow<'_> {
        let nb = self.k / self.block_len;
        let row = &self.data[r * self.row_words..(r + 1) * self.row_words];
        let (qs, lanes) = row.split_at(self.k / 4);
        let (lane_init, lane_scales) = lanes.split_at(lanes.len() / 2);
        let ns = if self.sums.is_empty() { 0 } else { self.k / self.sum_len };
        ActRow {
            scales: &self.scales[r * nb..(r + 1) * nb],
            sums: &self.sums[r * ns..(r + 1) * ns],
            qs: bytemuck::cast_slice(qs),
            lane_init,
            lane_scales: bytemuck::cast_slice(lane_scales),
        }
    }
}

/// Below this many elements quantizing on one thread is cheaper than waking others.
const PARALLEL_ELEMENTS: usize = 64 * 1024;

/// One row: `row` gets the values (and lane data, see [`ActRow`]), `scales` one per block,
/// `sums` (K-quants) one per `sum_len` values. Compiled for AVX-512 too (the same operations
/// elementwise, so the same results) when the CPU has it.
fn quantize_row(x: &[f32], row: &mut [i32], scales: &mut [f32], sums: Option<&mut [i32]>, params: (usize, usize, Option<i32>)) {
    #[cfg(target_arch = "x86_64")]
    if super::Isa::detected() == super::Isa::Avx512 {
        // Safety: the CPU has AVX-512 F and BW.
        return unsafe { quantize_row_avx512(x, row, scales, sums, params) };
    }
    quantize_row_impl(x, row, scales, sums, params)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2")]
unsafe fn quantize_row_avx512(x: &[f32], row: &mut [i32], scales: &mut [f32], sums: Option<&mut [i32]>, params: (usize, usize, Option<i32>)) {
    quantize_row_impl(x, row, scales, sums, params)
}

#[inline(always)]
fn quantize_row_impl(x: &[f32], row: &mut [i32], scales: &mut [f32], sums: Option<&mut [i32]>, (block_len, sum_len, zero_point): (usize, usize, Option<i32>)) {
    let k = x.len();
    let nb = k / block_len;
    let (qs, lanes) = row.split_at_mut(k / 4);
    let qs: &mut [i8] = bytemuck::cast_slice_mut(qs);
    let mut q = [0i8; 256];
    let q = &mut q[..block_len];
    let mut sums = sums;
    for (b, x) in x.chunks_exact(block_len).enumerate() {
        scales[b] = quantize_block(x, q);
        match (&mut sums, zero_point) {
            (_, Some(_)) => {
                // Slice by slice: four neighbouring values stay together (format docs).
                for (t, slice) in q.chunks_exact(4).enumerate() {
                    let v = interleaved_index(nb, b, 4 * t);
                    qs[v..v + 4].copy_from_slice(slice);
                }
            }
            (Some(sums), None) => {
                let per_block = block_len / sum_len;
                for (s, q) in sums[b * per_block..(b + 1) * per_block].iter_mut().zip(q.chunks_exact(sum_len)) {
                    *s = q.iter().map(|&q| q as i32).sum();
                }
                qs[b * block_len..(b + 1) * block_len].copy_from_slice(q);
            }
            (None, None) => unreachable!("K-quant rows have sums"),
        }
    }
    let Some(zero_point) = zero_point else { return };
    let groups = nb.div_ceil(8);
    let (init, lane_scales) = lanes.split_at_mut(groups * LANES);
    for g in 0..groups {
        let g0 = 8 * g;
        let c = (nb - g0).min(8);
        let init = &mut init[g * LANES..(g + 1) * LANES];
        for (o, chunk) in qs[g0 * 32..][..c * 32].chunks_exact(4).enumerate() {
            init[lane_of(4 * o)] -= zero_point * chunk.iter().map(|&q| q as i32).sum::<i32>();
        }
        for (l, s) in lane_scales[g * LANES..(g + 1) * LANES].iter_mut().enumerate() {
            *s = scales[g0 + l % c].to_bits() as i32;
        }
    }
}

/// Quantizes one block into `qs`, returning its scale. An all-zero block gets scale 0.
#[inline(always)]
fn quantize_block(x: &[f32], qs: &mut [i8]) -> f32 {
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
        let q = QuantizedRows::quantize(&x, 32, 32, 16, None);
        let row = q.row(1);
        // Block 1 holds 2.875 .. 10.625: its largest magnitude maps to 127.
        assert_eq!(row.scales[0], 10.625 / 127.0);
        assert_eq!(row.qs[31], 127);
        for (i, &v) in x[32..].iter().enumerate() {
            assert!((row.qs[i] as f32 * row.scales[0] - v).abs() <= row.scales[0] / 2.0 + 1e-6);
        }
        assert_eq!(row.sums[1], row.qs[16..].iter().map(|&q| q as i32).sum::<i32>());
        let zeros = QuantizedRows::quantize(&[0.0; 32], 32, 32, 32, None);
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
