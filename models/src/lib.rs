//! Stateless Qwen model definitions over candle tensors.
//!
//! A model owns only weights. The paged KV cache is owned by the caller and passed to every
//! forward together with the step's [`AttentionMetadata`], so a single-sequence loop and the
//! continuous-batching engine drive the same model code. Module paths mirror the Hugging Face
//! checkpoint tensor names (`model.layers.N.self_attn.q_proj`); [`Weights`] maps them onto
//! GGUF names when the weights come from a `.gguf` file.

mod config;
mod cuda_graphs;
mod decoder;
mod error;
mod kv_cache;
pub mod layers;
pub mod phase_times;
mod weights;

pub use config::{Architecture, ModelConfig, RopeScaling, Yarn};
pub use cuda_graphs::{graph_rows, max_graph_batch, pad_decode_batch, with_cuda_graphs, DEFAULT_GRAPH_BATCH, EXACT_GRAPH_BATCH};
pub use decoder::QwenForCausalLm;
pub use error::ModelError;
pub use kv_cache::KvCache;
// The engine takes greedy tokens where the logits are, through the same kernel crate.
pub use qwen_serve_kernels::{argmax_rows, draw_whole, lane_sum, max_value, sample_whole_rows, top_k_candidates, SAMPLE_WHOLE_MAX_VOCAB, unpack_candidates, AttentionMetadata, DeviceMetadata};
pub use weights::{gguf_expert_name, gguf_tensor_name, GgufReader, Weights};

use candle_core::{DType, Device, Tensor};

/// One forward step: the new tokens of every scheduled sequence, flattened in sequence order.
#[derive(Debug, Clone, Default)]
pub struct ForwardBatch {
    /// `(num_tokens,)` token ids.
    pub input_ids: Vec<u32>,
    pub attention: AttentionMetadata,
    /// Rows (indices into `input_ids`) whose logits are wanted: usually each sequence's last
    /// token, every token when prompt logprobs are asked for.
    pub logits_indices: Vec<u32>,
    /// Positions in `logits_indices` whose final hidden states (after the last norm, before the
    /// head) are wanted too: the last token's state is a sequence's embedding.
    pub hidden_rows: Vec<u32>,
}

/// A decoder-only language model.
pub trait CausalLm: Send + Sync {
    fn config(&self) -> &ModelConfig;
    /// The dtype of activations, and of the KV cache unless it is given another (f32, bf16 or
    /// f16: keys and values are rounded to it as they are written, and queries meet them in
    /// it).
    fn dtype(&self) -> DType;
    fn device(&self) -> &Device;
    /// Writes the new tokens' K/V into `cache` and returns the logits
    /// `(logits_indices.len(), vocab_size)` as the head computed them: f32, or the activations'
    /// dtype (bf16 / f16) where the head's matmul gives that. A reader wanting f32 converts (exact).
    fn forward(&self, batch: &ForwardBatch, cache: &mut KvCache) -> Result<Tensor, ModelError> {
        Ok(self.forward_with_hidden(batch, cache)?.0)
    }
    /// `forward`, and with `batch.hidden_rows` not empty, those rows' final hidden states
    /// `(hidden_rows.len(), hidden_size)` in f32.
    fn forward_with_hidden(&self, batch: &ForwardBatch, cache: &mut KvCache) -> Result<(Tensor, Option<Tensor>), ModelError>;
    /// The checks `forward` makes before any kernel runs: a bad batch is an error, never an
    /// out-of-bounds access.
    fn check(&self, batch: &ForwardBatch, cache: &KvCache) -> Result<(), ModelError>;
    /// `forward` for a batch already on the device (`ids` `(num_tokens,)` u32 and the step's
    /// metadata), returning every row's logits, after the checks: only device work, no copy
    /// between host and device and no synchronisation, so a CUDA graph can capture it (except
    /// for MoE models, whose routing is decided on the host; they are never captured).
    fn forward_on_device(&self, ids: &Tensor, meta: &DeviceMetadata, cache: &mut KvCache) -> Result<Tensor, ModelError>;
}

/// Builds the model named by `config.architecture`.
pub fn load_model(config: &ModelConfig, weights: &Weights) -> Result<Box<dyn CausalLm>, ModelError> {
    let model = QwenForCausalLm::new(config, weights)?;
    weights.check_all_experts_used()?;
    Ok(Box::new(model))
}
