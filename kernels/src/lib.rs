//! Attention, fused ops and quantized matmul for qwen-serve.
//!
//! Every op has a CPU implementation that doubles as the reference the accelerated
//! implementations are tested against. Kernels know nothing about models or scheduling: they
//! see tensors, block ids and slot numbers.
//!
//! The KV cache layout shared by all ops is one pair of tensors per layer,
//! `(num_blocks, block_size, num_kv_heads, head_dim)`, addressed by *slots*
//! (`block_id * block_size + offset`).
//!
//! With the `cuda` feature the attention, cache and fused ops also run on a CUDA device
//! (`cuda/*.cu`, built by build.rs). A step's [`AttentionMetadata`] then crosses to the GPU once,
//! as a [`DeviceMetadata`] that the `*_step` ops and [`rotary_embedding`] (through its positions)
//! share across layers.

mod argmax;
mod sample;
mod top_k;
#[cfg(feature = "cuda")]
mod cuda;
mod device_metadata;
mod elem;
mod fused;
mod half_matmul;
mod host_copy;
mod metadata;
mod paged_attention;
mod param_cache;
mod qkv;
mod quant;
mod small_matmul;
mod write_kv;

pub use argmax::argmax_rows;
pub use sample::{draw_whole, lane_sum, max_value, sample_whole_rows, MAX_VOCAB as SAMPLE_WHOLE_MAX_VOCAB, WALK_CHUNK};
pub use top_k::{top_k_candidates, unpack_candidates};
pub use device_metadata::DeviceMetadata;
pub use fused::{add_rms_norm, rms_norm, rotary_embedding, silu_mul};
pub use half_matmul::half_matmul;
pub use host_copy::overwrite_u32;
pub use metadata::{AttentionMetadata, MetadataError};
pub use paged_attention::{paged_attention, paged_attention_step};
pub use param_cache::{param_cache, param_cache_for_capture, ParamCache};
#[cfg(feature = "cuda")]
pub use qkv::{qkv_matmul_step_fused, qkv_step_fused};
pub use qkv::{qkv_matmul_step, qkv_step, Qkv, QkvMatmul};
pub use quant::{Isa, QuantMatrix};
pub use small_matmul::{small_matmul, small_matmul_applies, small_matmul_fits, small_matmul_fused, small_matmul_weight_fits, MatmulFusion, MAX_ROWS as SMALL_MATMUL_MAX_ROWS};
pub use write_kv::{write_kv, write_kv_step};
