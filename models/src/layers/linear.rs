use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Result, Tensor};
use qwen_serve_kernels::QuantMatrix;

/// `y = x W^T + b` with `W` `(out, in)`, dense or quantized.
///
/// On the CPU both variants compute each output row from its input row alone (the quantized
/// kernels guarantee it bit for bit), so a sequence's results do not depend on what it is
/// batched with. On a GPU that is not guaranteed: cuBLAS and candle's quantized kernels pick
/// their algorithm by batch size (for quantized matrices, a matrix-vector kernel up to 8 rows,
/// a tiled one beyond).
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

enum Weight {
    Dense(Tensor),
    /// Our CPU kernels (f32 activations); shared with the embedding when tied.
    Quantized(Arc<QuantMatrix>),
    /// candle's quantized matmul on a GPU, over the GGUF blocks as loaded onto the device.
    Device(QMatMul),
}

/// GGUF block types candle's CUDA backend multiplies (and looks embedding rows up in) without
/// dequantizing: its MMVQ / MMQ kernels and `get_rows` cover exactly these.
pub fn device_quantized(dtype: GgmlDType) -> bool {
    use GgmlDType::*;
    matches!(dtype, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2K | Q3K | Q4K | Q5K | Q6K)
}

impl Linear {
    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight: Weight::Dense(weight), bias }
    }

    pub fn quantized(weight: Arc<QuantMatrix>, bias: Option<Tensor>) -> Self {
        Self { weight: Weight::Quantized(weight), bias }
    }

    /// A quantized `(out, in)` matrix on a GPU, multiplied by candle's kernels; its blocks stay
    /// as they are, so the matrix keeps its GGUF size. Only [`device_quantized`] types: for
    /// those (whole blocks per row, as GGUF guarantees) candle's MMVQ / MMQ kernels take f32,
    /// f16 or bf16 activations and return the same dtype; its other paths need f32 and are
    /// not used here.
    pub fn device_quantized(weight: Arc<QTensor>, bias: Option<Tensor>) -> Result<Self> {
        if !device_quantized(weight.dtype()) || weight.device().is_cpu() {
            candle_core::bail!("no GPU quantized matmul for {:?} on {:?}", weight.dtype(), weight.device().location());
        }
        Ok(Self { weight: Weight::Device(QMatMul::QTensor(weight)), bias })
    }

    /// `x` `(tokens, in)` -> `(tokens, out)` in x's dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::Dense(w) => x.matmul(&w.t()?)?,
            // Quantized kernels take f32 activations.
            Weight::Quantized(q) if x.dtype() != DType::F32 => q.matmul(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?,
            Weight::Quantized(q) => q.matmul(x)?,
            Weight::Device(q) => q.forward(&x.contiguous()?)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}
