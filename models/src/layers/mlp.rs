use candle_core::{DType, Tensor};
use qwen_serve_kernels::{silu_mul, small_matmul_fused, small_matmul_weight_fits, MatmulFusion};
type Result<T, E = candle_core::Error> = std::result::Result<T, E>;

use super::linear::{Linear, Projections};
use super::rms_norm::RmsNorm;
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

    /// Gate over up in one dense matrix and down dense, each fit for the few-rows kernels with
    /// activations of `dtype`.
    fn fused_weights(&self, dtype: DType) -> Option<(&Tensor, &Tensor)> {
        let (Some((gate_up, _, widths)), Some(down)) = (self.gate_up_proj.stacked_dense(), self.down_proj.dense_weight()) else { return None };
        let fits = widths.len() == 2 && widths[0] == widths[1] && small_matmul_weight_fits(gate_up, dtype) && small_matmul_weight_fits(down, dtype);
        fits.then_some((gate_up, down))
    }

    /// Whether [`Self::forward_fused`] runs here.
    pub fn fuses(&self, dtype: DType) -> bool {
        self.fused_weights(dtype).is_some()
    }

    /// `x + self.forward(norm(x))` for a decode step of a few rows, in two launches (see
    /// kernels/src/small_matmul.rs): the norm and SiLU-and-mul fused into the gate/up projection,
    /// the residual add into down's. Only where [`Self::fuses`].
    pub fn forward_fused(&self, x: &Tensor, norm: &RmsNorm) -> Result<Tensor> {
        let Some((gate_up, down)) = self.fused_weights(x.dtype()) else {
            candle_core::bail!("fused feed-forward: gate/up and down are not dense matrices the few-rows kernels take");
        };
        let (weight, eps) = norm.parts();
        let act = small_matmul_fused(x, gate_up, MatmulFusion::GateUp { weight, eps })?;
        mark(x.device(), Phase::SiluMul)?;
        let out = small_matmul_fused(&act, down, MatmulFusion::Residual(x))?;
        mark(x.device(), Phase::Down)?;
        Ok(out)
    }
}
