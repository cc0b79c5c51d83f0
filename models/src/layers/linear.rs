use candle_core::quantized::QMatMul;
use candle_core::{DType, Module, Result, Tensor};

/// `y = x W^T + b` with `W` `(out, in)`, dense or quantized.
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

enum Weight {
    Dense(Tensor),
    Quantized(QMatMul),
}

impl Linear {
    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight: Weight::Dense(weight), bias }
    }

    pub fn quantized(weight: QMatMul, bias: Option<Tensor>) -> Self {
        Self { weight: Weight::Quantized(weight), bias }
    }

    /// `x` `(tokens, in)` -> `(tokens, out)` in x's dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::Dense(w) => x.matmul(&w.t()?)?,
            // Quantized kernels take f32 activations.
            Weight::Quantized(q) if x.dtype() != DType::F32 => q.forward(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?,
            Weight::Quantized(q) => q.forward(x)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}
