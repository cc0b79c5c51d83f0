use candle_core::Tensor;
type Result<T, E = candle_core::Error> = std::result::Result<T, E>;

use crate::{ModelError, Weights};

/// RMSNorm over the last dimension: `x / sqrt(mean(x^2) + eps) * weight`.
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn new(weights: &Weights, dim: usize, eps: f64) -> Result<Self, ModelError> {
        Ok(Self { weight: weights.tensor("weight", &[dim])?, eps: eps as f32 })
    }

    /// The weight, `(dim,)`, and epsilon, for an op that fuses the norm.
    pub fn parts(&self) -> (&Tensor, f32) {
        (&self.weight, self.eps)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        qwen_serve_kernels::rms_norm(x, &self.weight, self.eps)
    }

    /// `(norm(x + residual), x + residual)` in one pass: a pre-norm block's residual add and the
    /// norm after it. The sum is rounded to the dtype first, as `x + residual` would be.
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<(Tensor, Tensor)> {
        qwen_serve_kernels::add_rms_norm(x, residual, &self.weight, self.eps)
    }
}
