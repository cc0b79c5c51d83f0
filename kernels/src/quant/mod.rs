//! Quantized matrix multiplication `y = x W^T` with GGUF weights, batch invariant.
//!
//! Invariant: `y[r][j]` is a function of activation row `r` and weight row `j` alone, computed
//! by the same sequence of operations whatever the number of rows `m`, the row's position in
//! the batch, the rayon thread count or the work split, and whichever kernel (scalar, AVX2,
//! AVX-512, AMX) runs it. A sequence therefore gets bit-identical logits alone or batched.
//!
//! How (as llama.cpp does it): each activation row is quantized once per call to 8-bit blocks
//! ([`activations`]); `y[r][j]` is then a block-by-block dot product in which every block's
//! weight-times-activation sum is an exact integer and the float operations on those integers
//! and the scales follow one fixed order (each family's `scalar` module documents it, and is
//! the reference the SIMD kernels are tested against bit for bit). Nothing in that arithmetic looks at other rows,
//! so batching, chunking and threads change only which core computes a value and when.
//!
//! The price is the activation quantization: each activation is off by at most half its
//! block's scale (1/254 of the block's largest magnitude) from f32, as in llama.cpp.
//!
//! Speed: weights are repacked at load into sixteen-row panels ([`panel`] for Q4_0/Q5_0/Q8_0,
//! [`kpanel`] for the K-quants), so that one `vpdpbusd` advances sixteen weight rows against
//! four broadcast activation bytes; kernels are chosen at run time ([`Isa`]: AMX tile
//! multiplies for batches of the 32-element types where the CPU has them); the SIMD kernels
//! decode each weight block once for up to eight activation rows, and rayon tasks take
//! cache-sized ranges of panels for a tile of activation rows.
//!
//! Supported weight types: Q4_0, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K; [`QuantMatrix::from_qtensor`]
//! returns `None` for the others, which callers dequantize to a dense matrix instead.

mod activations;
mod format;
mod isa;
mod kpanel;
mod panel;
#[cfg(target_arch = "x86_64")]
mod simd;
#[cfg(test)]
mod tests;

use candle_core::quantized::QTensor;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use format::Weights;
pub(crate) use isa::requested_level;
pub use isa::Isa;

/// A quantized `(out_features, in_features)` weight matrix in the layout our kernels read.
pub struct QuantMatrix {
    /// `out_features`.
    n: usize,
    /// `in_features`, a multiple of the type's block length.
    k: usize,
    weights: Weights,
}

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
        let mut out = vec![0f32; ids.len() * self.k];
        // (Rows of a panel's padding are not rows.)
        for (&id, out) in ids.iter().zip(out.chunks_exact_mut(self.k)) {
            if id as usize >= self.n {
                candle_core::bail!("row {id} of a matrix with {} rows", self.n);
            }
            self.weights.dequantize_row(id as usize, out);
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

    /// `x` `(m, k)` row-major -> `(m, n)` row-major.
    fn run(&self, x: &[f32], isa: Isa) -> Vec<f32> {
        match &self.weights {
            Weights::Panels(w) => panel::matmul(w, x, isa),
            Weights::KPanels(w) => kpanel::matmul(w, x, isa),
        }
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
