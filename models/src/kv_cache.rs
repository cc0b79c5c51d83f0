//! The paged KV cache: per layer, one key and one value tensor of
//! `(num_blocks + 1, block_size, num_kv_heads, head_dim)`. Sequences own blocks through their
//! block tables (see `AttentionMetadata`); the cache itself knows nothing of sequences. The
//! extra block is [`KvCache::scratch_block`], one block beyond the size asked for.

use candle_core::{DType, Device, Tensor};

use crate::{ModelConfig, ModelError};

pub struct KvCache {
    /// `num_blocks + 1` blocks: the last is [`Self::scratch_block`].
    layers: Vec<(Tensor, Tensor)>,
    num_blocks: usize,
    block_size: usize,
}

impl KvCache {
    pub fn new(cfg: &ModelConfig, num_blocks: usize, block_size: usize, dtype: DType, device: &Device) -> Result<Self, ModelError> {
        if num_blocks == 0 || block_size == 0 {
            return Err(ModelError::Input("the KV cache needs at least one block of at least one token".into()));
        }
        let shape = (num_blocks + 1, block_size, cfg.num_key_value_heads, cfg.head_dim());
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| Ok((Tensor::zeros(shape, dtype, device)?, Tensor::zeros(shape, dtype, device)?)))
            .collect::<Result<_, candle_core::Error>>()?;
        Ok(Self { layers, num_blocks, block_size })
    }

    /// Bytes one block takes across all layers, keys and values.
    pub fn bytes_per_block(cfg: &ModelConfig, block_size: usize, dtype: DType) -> usize {
        2 * cfg.num_hidden_layers * block_size * cfg.num_key_value_heads * cfg.head_dim() * dtype.size_in_bytes()
    }

    /// Blocks sequences may use (block ids `0..num_blocks`).
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// One block past the usable ones, in no sequence's block table: the padding rows of a
    /// replayed CUDA graph write their keys and values there (`pad_decode_batch`). The kernels'
    /// own bounds checks go by the tensors and accept it; what keeps sequences off it is the
    /// model's `check` of each step's metadata against [`Self::num_blocks`].
    pub fn scratch_block(&self) -> u32 {
        self.num_blocks as u32
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn dtype(&self) -> DType {
        self.layers[0].0.dtype()
    }

    /// `(keys, values)` of layer `i`.
    pub fn layer(&self, i: usize) -> (&Tensor, &Tensor) {
        let (k, v) = &self.layers[i];
        (k, v)
    }
}
