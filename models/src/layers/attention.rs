use candle_core::{DType, Tensor};
type Result<T, E = candle_core::Error> = std::result::Result<T, E>;
use qwen_serve_kernels::{
    paged_attention_step, qkv_matmul_step, qkv_step, small_matmul_fused, small_matmul_weight_fits, DeviceMetadata, MatmulFusion, Qkv, QkvMatmul,
};

use super::linear::{Linear, Projections};
use super::rms_norm::RmsNorm;
use super::rotary::Rotary;
use crate::phase_times::{mark, Phase};
use crate::{ModelConfig, ModelError, Weights};

/// Grouped-query self-attention over the paged KV cache. Qwen2 has q/k/v biases; Qwen3 has
/// none but normalises each head's q and k before the rotation.
pub struct Attention {
    /// q, k and v, stacked where their weights allow.
    qkv_proj: Projections,
    o_proj: Linear,
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    num_heads: usize,
    head_dim: usize,
}

impl Attention {
    pub fn new(cfg: &ModelConfig, weights: &Weights, qk_norm: bool) -> Result<Self, ModelError> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim());
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let bias = cfg.attention_bias();
        let qk_norm = if qk_norm {
            Some((
                RmsNorm::new(&weights.pp("q_norm"), d, cfg.rms_norm_eps)?,
                RmsNorm::new(&weights.pp("k_norm"), d, cfg.rms_norm_eps)?,
            ))
        } else {
            None
        };
        Ok(Self {
            qkv_proj: Projections::new(vec![
                weights.linear("q_proj", h, nh * d, bias)?,
                weights.linear("k_proj", h, nkv * d, bias)?,
                weights.linear("v_proj", h, nkv * d, bias)?,
            ])?,
            o_proj: weights.linear("o_proj", nh * d, h, false)?,
            qk_norm,
            num_heads: nh,
            head_dim: d,
        })
    }

    /// `x` `(tokens, hidden)`; caches `(num_blocks, block_size, num_kv_heads, head_dim)`; `meta`
    /// the step's metadata, already on the model's device.
    pub fn forward(&self, x: &Tensor, rotary: &Rotary, cache: (&Tensor, &Tensor), meta: &DeviceMetadata) -> Result<Tensor> {
        let [q, k, v]: [Tensor; 3] = self.qkv_proj.forward_unbiased(x)?.try_into().expect("three projections");
        mark(x.device(), Phase::QkvProj)?;
        let out = self.attend([q, k, v], rotary, cache, meta)?;
        let out = self.o_proj.forward(&out)?;
        mark(x.device(), Phase::OProj)?;
        Ok(out)
    }

    /// q/k/v stacked in one dense matrix (and its stacked bias) and o dense, each fit for the
    /// few-rows kernels with activations of `dtype`.
    fn fused_weights(&self, dtype: DType) -> Option<(&Tensor, Option<&Tensor>, &Tensor)> {
        let (Some((qkv, bias, _)), Some(o)) = (self.qkv_proj.stacked_dense(), self.o_proj.dense_weight()) else { return None };
        (small_matmul_weight_fits(qkv, dtype) && small_matmul_weight_fits(o, dtype)).then_some((qkv, bias, o))
    }

    /// Whether [`Self::forward_fused`] runs here.
    pub fn fuses(&self, dtype: DType) -> bool {
        self.fused_weights(dtype).is_some()
    }

    /// `x + self.forward(norm(x))` for a decode step of a few rows, in three launches (see
    /// kernels/src/small_matmul.rs and qkv/matmul.rs): the norm, the q/k/v projection, its
    /// biases, the rotation and the cache write in one (for Qwen3's per-head norms, two); the
    /// attention; o's projection with the residual add. Only where [`Self::fuses`].
    pub fn forward_fused(&self, x: &Tensor, norm: &RmsNorm, rotary: &Rotary, cache: (&Tensor, &Tensor), meta: &DeviceMetadata) -> Result<Tensor> {
        let Some((w_qkv, bias, w_o)) = self.fused_weights(x.dtype()) else {
            candle_core::bail!("fused attention: q/k/v and o are not dense matrices the few-rows kernels take");
        };
        let (cos, sin) = rotary.tables();
        let p = QkvMatmul { x, weight: w_qkv, bias, norm: norm.parts(), num_heads: self.num_heads, head_norm: self.head_norm() };
        let q = qkv_matmul_step(&p, cos, sin, cache.0, cache.1, meta)?;
        mark(x.device(), Phase::QkvStep)?;
        let out = self.attention(&q, cache, meta)?;
        let out = small_matmul_fused(&out, w_o, MatmulFusion::Residual(x))?;
        mark(x.device(), Phase::OProj)?;
        Ok(out)
    }

    /// Each q and k head's norm weights and epsilon (Qwen3).
    fn head_norm(&self) -> Option<(&Tensor, &Tensor, f32)> {
        self.qk_norm.as_ref().map(|(qn, kn)| {
            let ((wq, eps), (wk, _)) = (qn.parts(), kn.parts());
            (wq, wk, eps)
        })
    }

    /// Attention over the unbiased projections: `(tokens, heads * head_dim)`.
    fn attend(&self, [q, k, v]: [Tensor; 3], rotary: &Rotary, cache: (&Tensor, &Tensor), meta: &DeviceMetadata) -> Result<Tensor> {
        // Biases, q/k norms, rotation and the cache write happen in one op (one kernel on a GPU).
        let [bq, bk, bv] = self.qkv_proj.biases() else { unreachable!("three projections") };
        let qkv = Qkv { q: &q, k: &k, v: &v, bias: [bq.as_ref(), bk.as_ref(), bv.as_ref()], head_norm: self.head_norm() };
        let (cos, sin) = rotary.tables();
        let q = qkv_step(&qkv, cos, sin, cache.0, cache.1, meta)?;
        mark(q.device(), Phase::QkvStep)?;
        self.attention(&q, cache, meta)
    }

    /// Paged attention of the rotated queries `(tokens, heads, head_dim)` over the caches:
    /// `(tokens, heads * head_dim)`.
    fn attention(&self, q: &Tensor, cache: (&Tensor, &Tensor), meta: &DeviceMetadata) -> Result<Tensor> {
        let tokens = q.dim(0)?;
        let scale = 1.0 / (self.head_dim as f32).sqrt();
        // A cache in another dtype (`--kv-cache-dtype`): q meets it in its dtype, as llama.cpp
        // does with an f16 cache; the output comes back in the activations'.
        let out = if q.dtype() == cache.0.dtype() {
            paged_attention_step(q, cache.0, cache.1, meta, scale)?
        } else {
            paged_attention_step(&q.to_dtype(cache.0.dtype())?, cache.0, cache.1, meta, scale)?.to_dtype(q.dtype())?
        };
        mark(q.device(), Phase::Attention)?;
        out.reshape((tokens, self.num_heads * self.head_dim))
    }
}
