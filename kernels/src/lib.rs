//! Attention and fused ops for qwen-serve.
//!
//! Every op has a CPU implementation that doubles as the reference the accelerated
//! implementations are tested against. Kernels know nothing about models or scheduling: they
//! see tensors, block ids and slot numbers.
//!
//! The KV cache layout shared by all ops is one pair of tensors per layer,
//! `(num_blocks, block_size, num_kv_heads, head_dim)`, addressed by *slots*
//! (`block_id * block_size + offset`).

mod elem;
mod metadata;
mod paged_attention;
mod write_kv;

pub use metadata::{AttentionMetadata, MetadataError};
pub use paged_attention::paged_attention;
pub use write_kv::write_kv;
