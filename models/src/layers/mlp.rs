use candle_core::Tensor;
use qwen_serve_kernels::silu_mul;
type Result<T, E = candle_core::Error> = std::result::Result<T, E>;

use super::linear::{Linear, Projections};
use crate::phase_times::{mark, Phase};
use crate::{ModelError, Weights};

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
pub struct Mlp {
    /// gate and up, stacked where their weights allow.
    gate_up_proj: Projections,
    down_proj: Linear,
}

impl Mlp {
    /// `hidden -> intermediate -> hidden`.
    pub fn new(weights: &Weights, h: usize, i: usize) -> Result<Self, ModelError> {
        Ok(Self {
            gate_up_proj: Projections::new(vec![weights.linear("gate_proj", h, i, false)?, weights.linear("up_proj", h, i, false)?])?,
            down_proj: weights.linear("down_proj", i, h, false)?,
        })
    }

    /// `x` `(tokens, hidden)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // (tokens, intermediate)
        let [gate, up]: [Tensor; 2] = self.gate_up_proj.forward(x)?.try_into().expect("two projections");
        mark(x.device(), Phase::GateUp)?;
        let act = silu_mul(&gate, &up)?;
        mark(x.device(), Phase::SiluMul)?;
        let out = self.down_proj.forward(&act)?;
        mark(x.device(), Phase::Down)?;
        Ok(out)
    }
}
