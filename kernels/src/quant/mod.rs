//! Quantized matrix multiplication `y = x W^T` with GGUF weights, batch invariant.
//!
//! Invariant: `y[r][j]` is a function of activation row `r` and weight row `j` alone, computed
//! by the same sequence of operations whatever the number of rows `m`, the row's position in
//! the batch, the rayon thread count or the work split, and whichever kernel (scalar, AVX2,
//! AVX-512) runs it. A sequence therefore gets bit-identical logits alone or batched.
//!
//! How (as llama.cpp does it): each activation row is quantized once per call to 8-bit blocks
//! ([`activations`]); `y[r][j]` is then a block-by-block dot product in which every block's
//! weight-times-activation sum is an exact integer and the float operations on those integers
//! and the scales follow one fixed order ([`scalar`] documents it, and is the reference the
//! SIMD kernels are tested against bit for bit). Nothing in that arithmetic looks at other rows,
//! so batching, chunking and threads change only which core computes a value and when.
//!
//! The price is the activation quantization: each activation is off by at most half its
//! block's scale (1/254 of the block's largest magnitude) from f32, as in llama.cpp.
//!
//! Speed: weights are repacked at load ([`format`]; the 32-element types in sixteen-row panels,
//! [`panel`]), kernels are chosen at run time ([`Isa`]: AMX tile multiplies for batches of the
//! 32-element types where the CPU has them), the SIMD kernels decode each weight block once for
//! up to eight activation rows, and rayon tasks take cache-sized ranges of weight rows for a
//! tile of activation rows.
//!
//! Supported weight types: Q4_0, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K; [`QuantMatrix::from_qtensor`]
//! returns `None` for the others, which callers dequantize to a dense matrix instead.

mod activations;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod format;
mod isa;
mod panel;
mod scalar;
#[cfg(test)]
mod tests;

use std::ops::Range;

use candle_core::quantized::QTensor;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use activations::{ActRow, QuantizedRows};
use format::Weights;
pub use isa::Isa;

/// A quantized `(out_features, in_features)` weight matrix in the layout our kernels read.
pub struct QuantMatrix {
    /// `out_features`.
    n: usize,
    /// `in_features`, a multiple of the type's block length.
    k: usize,
    weights: Weights,
}

/// Weight bytes one rayon task streams (per activation row tile): small enough that a task's
/// weights stay in L1/L2 while every row of the tile passes over them, large enough that task
/// overhead stays small.
const TASK_BYTES: usize = 32 * 1024;
/// Activation rows visiting a task's weights together; bounds the activation working set
/// (`ROW_TILE * in_features` bytes) for long prefills.
const ROW_TILE: usize = 32;
/// Below this much work (weight bytes times rows) waking the thread pool costs more than it
/// saves (the K and V projections of a small model at decode).
const SEQUENTIAL_BYTES: usize = 128 * 1024;

impl QuantMatrix {
    /// Repacks a 2-D quantized tensor `(out_features, in_features)`; `None` when its type has no
    /// kernel here (the caller falls back to a dense f32 matrix).
    pub fn from_qtensor(q: &QTensor) -> Result<Option<Self>> {
        let (n, k) = q.shape().dims2()?;
        let data = q.data()?;
        Ok(Weights::from_gguf(q.dtype(), &data, n, k)?.map(|weights| Self { n, k, weights }))
    }

    pub fn out_features(&self) -> usize {
        self.n
    }

    pub fn in_features(&self) -> usize {
        self.k
    }

    /// Whether [`Self::concat`] can stack `self` and `other` (same weight type and width).
    pub fn stacks_with(&self, other: &QuantMatrix) -> bool {
        self.k == other.k && self.weights.dtype() == other.weights.dtype()
    }

    /// The matrices stacked along `out_features` (`[a; b; ..]`), so that projections of the same
    /// input (q/k/v, gate/up) run as one matmul: one activation quantization and one parallel
    /// section instead of one each. `None` unless all have the same weight type and
    /// `in_features`. Each output column is computed exactly as by its own matrix.
    pub fn concat(parts: &[&QuantMatrix]) -> Option<QuantMatrix> {
        let first = parts.first()?;
        if parts.iter().any(|p| p.k != first.k) {
            return None;
        }
        let weights = Weights::concat(&parts.iter().map(|p| &p.weights).collect::<Vec<_>>())?;
        Some(QuantMatrix { n: parts.iter().map(|p| p.n).sum(), k: first.k, weights })
    }

    /// Rows `ids` of the matrix as an f32 `(ids.len(), in_features)` tensor on the CPU (an
    /// embedding lookup in a table that is also the output projection), each exactly as
    /// candle dequantizes the original GGUF row.
    pub fn lookup_rows(&self, ids: &[u32]) -> Result<Tensor> {
        let nb = self.k / self.weights.block_len();
        let mut out = vec![0f32; ids.len() * self.k];
        // (Rows of a panel matrix's padding are not rows.)
        for (&id, out) in ids.iter().zip(out.chunks_exact_mut(self.k)) {
            if id as usize >= self.n {
                candle_core::bail!("row {id} of a matrix with {} rows", self.n);
            }
            self.weights.dequantize_row(id as usize, nb, out);
        }
        Tensor::from_vec(out, (ids.len(), self.k), &candle_core::Device::Cpu)
    }

    /// `y = x W^T`: `x` `(m, in_features)` f32 on the CPU -> `(m, out_features)` f32, with the
    /// best kernels this CPU has.
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        self.matmul_with(x, Isa::detected())
    }

    /// [`Self::matmul`] with the kernels of `isa` (bit-identical results; for tests and
    /// benchmarks). Fails if this CPU lacks `isa`.
    pub fn matmul_with(&self, x: &Tensor, isa: Isa) -> Result<Tensor> {
        if !isa.is_available() {
            candle_core::bail!("quantized matmul: this CPU does not support {isa:?}");
        }
        let (_, k) = x.dims2()?;
        if k != self.k || x.dtype() != DType::F32 {
            candle_core::bail!(
                "quantized matmul: x {:?} {:?} does not fit an f32 (m, {}) input",
                x.dims(),
                x.dtype(),
                self.k
            );
        }
        x.contiguous()?.apply_op1_no_bwd(&MatMul { w: self, isa })
    }

    /// `emit(j, y)` for each weight row `j` in `cols`, `y[r]` its dot product with `a[r]`.
    fn rows<const R: usize>(&self, isa: Isa, cols: Range<usize>, a: [ActRow; R], emit: &mut impl FnMut(usize, [f32; R])) {
        let nb = self.k / self.weights.block_len();
        // Scalar kernels take one weight row and one activation row at a time; SIMD ones a
        // range of weight rows against all `R` activation rows.
        macro_rules! dispatch {
            ($dot:ident, $rows:ident, $w:expr, $row:expr) => {
                match isa {
                    Isa::Scalar => cols.for_each(|j| emit(j, a.map(|a| scalar::$dot($row(j), a)))),
                    // Safety: `matmul_with` checked that the CPU has the ISA's features; the
                    // activation rows were quantized for this matrix's `k` and type.
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 => unsafe { avx2::$rows($w, nb, cols, a, emit) },
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 | Isa::Amx => unsafe { avx512::$rows($w, nb, cols, a, emit) },
                    #[cfg(not(target_arch = "x86_64"))]
                    _ => unreachable!("no x86 kernels off x86_64"),
                }
            };
        }
        match &self.weights {
            Weights::Panels(_) => unreachable!("panel matrices run in `panel::matmul`"),
            Weights::Q4K(w) => dispatch!(dot_q4k, q4k, w, |j: usize| &w[j * nb..(j + 1) * nb]),
            Weights::Q5K(w) => dispatch!(dot_q5k, q5k, w, |j: usize| &w[j * nb..(j + 1) * nb]),
            Weights::Q6K(w) => dispatch!(dot_q6k, q6k, w, |j: usize| &w[j * nb..(j + 1) * nb]),
        }
    }

    /// Writes `y[r][j]` for the `R` activation rows from `r0` and the weight rows `cols`.
    ///
    /// # Safety
    /// No other thread accesses those elements of `out` meanwhile.
    unsafe fn write_rows<const R: usize>(&self, isa: Isa, cols: Range<usize>, acts: &QuantizedRows, r0: usize, out: OutPtr) {
        let a = std::array::from_fn::<_, R, _>(|i| acts.row(r0 + i));
        self.rows(isa, cols, a, &mut |j, y: [f32; R]| {
            for (i, v) in y.into_iter().enumerate() {
                out.write((r0 + i) * self.n + j, v);
            }
        });
    }

    /// `x` `(m, k)` row-major -> `(m, n)` row-major.
    fn run(&self, x: &[f32], isa: Isa) -> Vec<f32> {
        if let Weights::Panels(w) = &self.weights {
            return panel::matmul(w, x, isa);
        }
        let (n, k) = (self.n, self.k);
        let m = x.len() / k;
        let acts = QuantizedRows::quantize(x, k, self.weights.block_len(), self.weights.sum_len());
        // Every element is written by exactly one task below (no zero fill needed).
        let mut y = Vec::<f32>::with_capacity(m * n);
        let out = OutPtr(y.as_mut_ptr());
        let cols = (TASK_BYTES / self.weights.row_bytes(k)).clamp(8, 1024);
        let col_tasks = n.div_ceil(cols);
        let num_tasks = col_tasks * m.div_ceil(ROW_TILE);
        let task = |t: usize| {
            let (r0, j0) = (t / col_tasks * ROW_TILE, t % col_tasks * cols);
            let (r1, cols) = ((r0 + ROW_TILE).min(m), j0..(j0 + cols).min(n));
            // Activation rows in eights (then four, two, one) share each decoded weight block
            // (see the SIMD kernels); the task's weight rows stay in cache for every tile.
            let mut r = r0;
            // Safety: tasks cover disjoint (row tile, column range) rectangles of `y`, which
            // outlives the parallel loop.
            unsafe {
                while r + 8 <= r1 {
                    self.write_rows::<8>(isa, cols.clone(), &acts, r, out);
                    r += 8;
                }
                if r + 4 <= r1 {
                    self.write_rows::<4>(isa, cols.clone(), &acts, r, out);
                    r += 4;
                }
                if r + 2 <= r1 {
                    self.write_rows::<2>(isa, cols.clone(), &acts, r, out);
                    r += 2;
                }
                if r < r1 {
                    self.write_rows::<1>(isa, cols, &acts, r, out);
                }
            }
        };
        if n * self.weights.row_bytes(k) * m < SEQUENTIAL_BYTES {
            (0..num_tasks).for_each(task);
        } else {
            (0..num_tasks).into_par_iter().for_each(task);
        }
        // Safety: the tasks' rectangles tile the whole `(m, n)` output, each element written.
        unsafe { y.set_len(m * n) };
        y
    }
}

/// The output pointer shared by the tasks, each writing its own elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// Safety: see `QuantMatrix::run`: writes through it are to disjoint elements.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// # Safety
    /// `i` is in bounds and no other thread accesses element `i` meanwhile.
    unsafe fn write(self, i: usize, v: f32) {
        *self.0.add(i) = v;
    }
}

struct MatMul<'a> {
    w: &'a QuantMatrix,
    isa: Isa,
}

impl CustomOp1 for MatMul<'_> {
    fn name(&self) -> &'static str {
        "quantized-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, _) = layout.shape().dims2()?;
        let (CpuStorage::F32(x), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
            candle_core::bail!("quantized matmul: x must be contiguous f32");
        };
        Ok((CpuStorage::F32(self.w.run(&x[start..end], self.isa)), Shape::from((m, self.w.n))))
    }
}
