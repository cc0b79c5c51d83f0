//! The Qwen decoder-only transformer: Qwen2, Qwen2.5, Qwen3 and their MoE variants share this
//! body (the MoE ones replace some layers' feed-forward by [`SparseMoe`]).

use candle_core::{DType, Device, Tensor};
use qwen_serve_kernels::{param_cache, small_matmul_fused, small_matmul_weight_fits, DeviceMetadata, MatmulFusion};

use crate::layers::attention::Attention;
use crate::layers::linear::Linear;
use crate::layers::mlp::Mlp;
use crate::layers::moe::SparseMoe;
use crate::layers::rms_norm::RmsNorm;
use crate::layers::rotary::Rotary;
use crate::layers::Embedding;
use crate::phase_times::{self, Phase};
use crate::{CausalLm, ForwardBatch, KvCache, ModelConfig, ModelError, Weights};

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: FeedForward,
}

enum FeedForward {
    Dense(Mlp),
    Sparse(SparseMoe),
}

impl FeedForward {
    fn new(cfg: &ModelConfig, i: usize, weights: &Weights) -> Result<Self, ModelError> {
        Ok(if cfg.sparse_layer(i) {
            Self::Sparse(SparseMoe::new(cfg, weights)?)
        } else {
            Self::Dense(Mlp::new(weights, cfg.hidden_size, cfg.intermediate_size)?)
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Dense(mlp) => mlp.forward(x),
            Self::Sparse(moe) => moe.forward(x),
        }
    }
}

impl DecoderLayer {
    /// Whether [`Self::forward_fused`] runs here.
    fn fuses(&self, dtype: DType) -> bool {
        matches!(&self.mlp, FeedForward::Dense(mlp) if mlp.fuses(dtype)) && self.self_attn.fuses(dtype)
    }

    /// The layer over the residual stream `x` of a decode step of a few rows, in the few-rows
    /// kernels with norms, SiLU and residual adds fused in: the new residual stream.
    fn forward_fused(&self, x: &Tensor, rotary: &Rotary, cache: (&Tensor, &Tensor), meta: &DeviceMetadata) -> candle_core::Result<Tensor> {
        let FeedForward::Dense(mlp) = &self.mlp else { candle_core::bail!("fused decode: a sparse feed-forward") };
        let x = self.self_attn.forward_fused(x, &self.input_layernorm, rotary, cache, meta)?;
        mlp.forward_fused(&x, &self.post_attention_layernorm)
    }
}

/// The most tokens a step may have to take the fused path. Each warp there normalises and
/// converts x for every weight row it reads, so its instructions per weight element grow with
/// the rows: by the issue rate an H100 needs at its memory's rate (~17 per bf16 element per
/// SM), one or two rows fit and four or eight do not (a reading of the SASS; not measured).
/// Larger steps take the unfused layers.
pub const FUSED_DECODE_MAX_ROWS: usize = 2;

/// `QWEN_SERVE_CUDA_FUSED_DECODE`: whether decode steps of up to [`FUSED_DECODE_MAX_ROWS`]
/// sequences run the few-rows kernels with the ops around each projection fused in
/// (kernels/src/small_matmul.rs). `Some` where the variable says `1` or `0`; `None` takes the
/// default, on where the model fuses: on an H200 (2026-11-27) one stream of the 0.5B shape went
/// from 822 to 1,049 tok/s and of the 7B from 213 to 224, as close to transformers as the
/// unfused path (the 0.5B's 16 greedy tokens the same; the 7B's part at a 0.125 logprob gap).
fn fused_decode_setting() -> Option<bool> {
    match std::env::var("QWEN_SERVE_CUDA_FUSED_DECODE").as_deref() {
        Ok("1") => Some(true),
        Ok("0") => Some(false),
        _ => None,
    }
}

pub struct QwenForCausalLm {
    config: ModelConfig,
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: Rotary,
    dtype: DType,
    device: Device,
    /// Steps of up to [`FUSED_DECODE_MAX_ROWS`] tokens take [`DecoderLayer::forward_fused`].
    fused_decode: bool,
}

impl QwenForCausalLm {
    pub fn new(cfg: &ModelConfig, weights: &Weights) -> Result<Self, ModelError> {
        cfg.validate()?;
        let qk_norm = cfg.architecture().qk_norm();
        // Embedding checkpoints (Qwen3-Embedding) are saved from the bare model: `layers.0...`
        // where a causal LM has `model.layers.0...`, and no head (their embeddings are tied).
        let bare = !weights.contains("model.embed_tokens.weight") && weights.contains("embed_tokens.weight");
        let model = if bare { weights.clone() } else { weights.pp("model") };
        let embed_tokens = model.embedding("embed_tokens", cfg.vocab_size, cfg.hidden_size)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let w = model.pp("layers").pp(i);
                Ok(DecoderLayer {
                    input_layernorm: RmsNorm::new(&w.pp("input_layernorm"), cfg.hidden_size, cfg.rms_norm_eps)?,
                    self_attn: Attention::new(cfg, &w.pp("self_attn"), qk_norm)?,
                    post_attention_layernorm: RmsNorm::new(&w.pp("post_attention_layernorm"), cfg.hidden_size, cfg.rms_norm_eps)?,
                    mlp: FeedForward::new(cfg, i, &w.pp("mlp"))?,
                })
            })
            .collect::<Result<_, ModelError>>()?;
        let norm = RmsNorm::new(&model.pp("norm"), cfg.hidden_size, cfg.rms_norm_eps)?;
        // Some tied checkpoints still ship lm_head (GGUF often does); use it when present.
        let lm_head = if weights.contains("lm_head.weight") {
            weights.linear("lm_head", cfg.hidden_size, cfg.vocab_size, false)?
        } else if weights.contains("score.weight") {
            // A sequence-classification conversion (vLLM's `*-seq-cls` rerankers; a llama.cpp
            // reranker GGUF's `cls.output`): its head scores, it does not predict tokens; tied
            // embeddings in its place would serve wrong scores and text without a warning.
            return Err(ModelError::Config(
                "this is a sequence-classification checkpoint (`score.weight` or GGUF `cls.output.weight`, no `lm_head`): serve the causal-LM original (Qwen3-Reranker), which /v1/rerank scores by its yes/no logits".into(),
            ));
        } else if cfg.tie_word_embeddings {
            embed_tokens.as_linear()?
        } else if bare {
            // Qwen3-Embedding-8B keeps its base model's untied config but ships no head: its
            // hidden states are the product; tokens generated through the embeddings are noise.
            tracing::warn!("no lm_head in this embedding checkpoint: generation reads the input embeddings as its head");
            embed_tokens.as_linear()?
        } else {
            return Err(ModelError::MissingTensor("lm_head.weight".into()));
        };
        let rotary = Rotary::new(cfg.head_dim(), cfg.context_length(), cfg.rope_theta, cfg.rope()?, weights.dtype(), weights.device())?;
        let this = Self {
            config: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary,
            dtype: weights.dtype(),
            device: weights.device().clone(),
            fused_decode: false,
        }
        .with_fused_decode(weights.device().is_cuda() && fused_decode_setting().unwrap_or(true));
        if this.fused_decode {
            tracing::info!("fused decode: steps of up to {FUSED_DECODE_MAX_ROWS} sequences run the few-rows kernels");
        } else if fused_decode_setting() == Some(true) {
            tracing::warn!("fused decode: not for this model (a sparse layer, quantized or unfit weights, or no GPU)");
        }
        Ok(this)
    }

    /// Turns the fused decode path on or off; on only where every layer fuses (dense weights
    /// of the activations' dtype, no sparse layers) and a CUDA build, or for tests, the CPU
    /// (where the few-rows ops run their f64 reference loops).
    pub fn with_fused_decode(mut self, on: bool) -> Self {
        self.fused_decode = on && self.layers.iter().all(|l| l.fuses(self.dtype));
        self
    }

    /// Whether decode steps of a few sequences take the fused path.
    pub fn fused_decode(&self) -> bool {
        self.fused_decode
    }

    /// The layers, the final norm and the head over `ids` already on the device: only device
    /// work (no copy between host and device, no synchronisation), so a CUDA graph can capture
    /// it. `rows`: the rows whose logits are wanted, all when `None`; `hidden`: the positions
    /// among those rows whose final hidden states are returned too (in f32).
    fn run(&self, ids: &Tensor, meta: &DeviceMetadata, rows: Option<&Tensor>, hidden: Option<&Tensor>, cache: &mut KvCache) -> Result<(Tensor, Option<Tensor>), ModelError> {
        // (tokens, hidden). Each layer's residual add is fused into the norm after it: `x` is
        // the last sublayer's output, `residual` the stream it has not been added to yet.
        let dev = &self.device;
        let mut x = self.embed_tokens.forward(ids, self.dtype)?;
        phase_times::mark(dev, Phase::Embed)?;
        let mut residual = None;
        // Not for MoE: its layers upload per-step routing (new values every step), which the
        // cache would keep forever.
        let param_cache = if self.config.architecture().is_moe() { None } else { param_cache(&self.device) };
        // Select the rows whose logits are wanted.
        let select = |t: Tensor| match rows {
            Some(rows) => t.index_select(rows, 0),
            None => Ok(t),
        };
        if self.fused_decode && ids.dim(0)? <= FUSED_DECODE_MAX_ROWS {
            for (i, layer) in self.layers.iter().enumerate() {
                x = layer.forward_fused(&x, &self.rotary, cache.layer(i), meta)?;
            }
            drop(param_cache);
            let x = select(x)?;
            if let Some(hidden) = hidden {
                let x = self.norm.forward(&x)?;
                return Ok((self.lm_head.forward(&x)?, Some(hidden_states(&x, hidden)?)));
            }
            let (weight, eps) = self.norm.parts();
            let logits = match self.lm_head.dense_weight() {
                Some(w) if small_matmul_weight_fits(w, x.dtype()) => small_matmul_fused(&x, w, MatmulFusion::NormF32 { weight, eps })?,
                _ => self.lm_head.forward(&self.norm.forward(&x)?)?,
            };
            phase_times::mark(dev, Phase::Head)?;
            return Ok((logits, None));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let (h, r) = match residual.take() {
                None => (layer.input_layernorm.forward(&x)?, x),
                Some(r) => layer.input_layernorm.forward_residual(&x, &r)?,
            };
            phase_times::mark(dev, Phase::Norm)?;
            let h = layer.self_attn.forward(&h, &self.rotary, cache.layer(i), meta)?;
            let (h, r) = layer.post_attention_layernorm.forward_residual(&h, &r)?;
            phase_times::mark(dev, Phase::Norm)?;
            x = layer.mlp.forward(&h)?;
            residual = Some(r);
        }
        drop(param_cache);
        // Only the rows whose logits are wanted go through the last add and norm.
        let x = match residual {
            Some(r) => self.norm.forward_residual(&select(x)?, &select(r)?)?.0,
            None => self.norm.forward(&select(x)?)?,
        };
        // In the head's dtype: a GPU's bf16 rows are half the bytes to reduce or copy, and their
        // conversion to f32 (exact) is left to whoever reads them on the host.
        let logits = self.lm_head.forward(&x)?;
        phase_times::mark(dev, Phase::Head)?;
        Ok((logits, hidden.map(|h| hidden_states(&x, h)).transpose()?))
    }
}

/// The rows `positions` of the final-normed states `x`, in f32.
fn hidden_states(x: &Tensor, positions: &Tensor) -> candle_core::Result<Tensor> {
    x.index_select(positions, 0)?.to_dtype(DType::F32)
}

impl CausalLm for QwenForCausalLm {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn forward_with_hidden(&self, batch: &ForwardBatch, cache: &mut KvCache) -> Result<(Tensor, Option<Tensor>), ModelError> {
        self.check(batch, cache)?;
        phase_times::start(&self.device)?;
        let meta = &batch.attention;
        let n = batch.input_ids.len();
        let ids = Tensor::from_slice(&batch.input_ids, n, &self.device)?;
        // One copy of the step's metadata to the device, shared by every layer; with the rows
        // whose logits are wanted, everything step-specific is uploaded before the layers run.
        let meta = DeviceMetadata::new(meta.clone(), &self.device)?;
        meta.prepare_attention(self.config.num_attention_heads / self.config.num_key_value_heads)?;
        let all_rows = batch.logits_indices.len() == n && batch.logits_indices.iter().enumerate().all(|(i, &r)| r as usize == i);
        let rows = if all_rows { None } else { Some(Tensor::from_slice(&batch.logits_indices, batch.logits_indices.len(), &self.device)?) };
        let hidden = if batch.hidden_rows.is_empty() { None } else { Some(Tensor::from_slice(&batch.hidden_rows, batch.hidden_rows.len(), &self.device)?) };
        self.run(&ids, &meta, rows.as_ref(), hidden.as_ref(), cache)
    }

    fn forward_on_device(&self, ids: &Tensor, meta: &DeviceMetadata, cache: &mut KvCache) -> Result<Tensor, ModelError> {
        Ok(self.run(ids, meta, None, None, cache)?.0)
    }

    fn check(&self, batch: &ForwardBatch, cache: &KvCache) -> Result<(), ModelError> {
        let meta = &batch.attention;
        meta.validate(cache.num_blocks(), cache.block_size()).map_err(|e| ModelError::Input(e.to_string()))?;
        if batch.input_ids.len() != meta.num_tokens() {
            return Err(ModelError::Input(format!("{} ids for {} tokens", batch.input_ids.len(), meta.num_tokens())));
        }
        if let Some(id) = batch.input_ids.iter().find(|&&id| id as usize >= self.config.vocab_size) {
            return Err(ModelError::Input(format!("token id {id} is outside the vocabulary ({})", self.config.vocab_size)));
        }
        if let Some(&len) = meta.seq_lens.iter().max() {
            if len as usize > self.rotary.max_positions() {
                return Err(ModelError::Input(format!(
                    "sequence of {len} tokens exceeds the context length {}",
                    self.rotary.max_positions()
                )));
            }
        }
        if let Some(i) = batch.logits_indices.iter().find(|&&i| i as usize >= meta.num_tokens()) {
            return Err(ModelError::Input(format!("logits index {i} is outside the batch")));
        }
        if let Some(i) = batch.hidden_rows.iter().find(|&&i| i as usize >= batch.logits_indices.len()) {
            return Err(ModelError::Input(format!("hidden row {i} is outside the logits rows")));
        }
        if !matches!(cache.dtype(), DType::F32 | DType::BF16 | DType::F16) {
            return Err(ModelError::Input(format!("cache dtype {:?} is not f32, bf16 or f16", cache.dtype())));
        }
        Ok(())
    }
}
