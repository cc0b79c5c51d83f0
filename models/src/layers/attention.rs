use candle_core::Tensor;
type Result<T, E = candle_core::Error> = std::result::Result<T, E>;
use qwen_serve_kernels::{paged_attention_step, qkv_step, DeviceMetadata, Qkv};

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
        let tokens = x.dim(0)?;
        // Biases, q/k norms, rotation and the cache write happen in one op (one kernel on a GPU).
        let [q, k, v]: [Tensor; 3] = self.qkv_proj.forward_unbiased(x)?.try_into().expect("three projections");
        mark(x.device(), Phase::QkvProj)?;
        let [bq, bk, bv] = self.qkv_proj.biases() else { unreachable!("three projections") };
        let head_norm = self.qk_norm.as_ref().map(|(qn, kn)| {
            let ((wq, eps), (wk, _)) = (qn.parts(), kn.parts());
            (wq, wk, eps)
        });
        let qkv = Qkv { q: &q, k: &k, v: &v, bias: [bq.as_ref(), bk.as_ref(), bv.as_ref()], head_norm };
        let (cos, sin) = rotary.tables();
        let q = qkv_step(&qkv, cos, sin, cache.0, cache.1, meta)?;
        mark(x.device(), Phase::QkvStep)?;
        let scale = 1.0 / (self.head_dim as f32).sqrt();
        // A cache in another dtype (`--kv-cache-dtype`): q meets it in its dtype, as llama.cpp
        // does with an f16 cache; the output comes back in the activations'.
        let out = if q.dtype() == cache.0.dtype() {
            paged_attention_step(&q, cache.0, cache.1, meta, scale)?
        } else {
            paged_attention_step(&q.to_dtype(cache.0.dtype())?, cache.0, cache.1, meta, scale)?.to_dtype(q.dtype())?
        };
        mark(x.device(), Phase::Attention)?;
        let out = self.o_proj.forward(&out.reshape((tokens, self.num_heads * self.head_dim))?)?;
        mark(x.device(), Phase::OProj)?;
        Ok(out)
    }
}
