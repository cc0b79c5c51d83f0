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

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps)
    }
}
