use candle_core::{DType, Result, Tensor};
use qwen_serve_kernels::QuantMatrix;

/// `y = x W^T + b` with `W` `(out, in)`, dense or quantized.
///
/// Both variants compute each output row from its input row alone (the quantized kernels
/// guarantee it bit for bit), so a sequence's results do not depend on what it is batched with.
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

enum Weight {
    Dense(Tensor),
    Quantized(QuantMatrix),
}

impl Linear {
    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight: Weight::Dense(weight), bias }
    }

    pub fn quantized(weight: QuantMatrix, bias: Option<Tensor>) -> Self {
        Self { weight: Weight::Quantized(weight), bias }
    }

    /// `x` `(tokens, in)` -> `(tokens, out)` in x's dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::Dense(w) => x.matmul(&w.t()?)?,
            // Quantized kernels take f32 activations.
            Weight::Quantized(q) if x.dtype() != DType::F32 => q.matmul(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?,
            Weight::Quantized(q) => q.matmul(x)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}
