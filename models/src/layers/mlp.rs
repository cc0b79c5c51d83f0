use candle_core::Tensor;
use qwen_serve_kernels::silu_mul;
type Result<T, E = candle_core::Error> = std::result::Result<T, E>;

use super::linear::Linear;
use crate::{ModelConfig, ModelError, Weights};

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
pub struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    pub fn new(cfg: &ModelConfig, weights: &Weights) -> Result<Self, ModelError> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: weights.linear("gate_proj", h, i, false)?,
            up_proj: weights.linear("up_proj", h, i, false)?,
            down_proj: weights.linear("down_proj", i, h, false)?,
        })
    }

    /// `x` `(tokens, hidden)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // (tokens, intermediate)
        let act = silu_mul(&self.gate_proj.forward(x)?, &self.up_proj.forward(x)?)?;
        self.down_proj.forward(&act)
    }
}
