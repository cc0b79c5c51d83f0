//! Causal attention of a flattened batch of new tokens over a paged KV cache.
//!
//! One op covers prefill, chunked prefill after a cached prefix, and decode: every new token
//! attends to all cached positions of its sequence up to and including its own (whose K/V
//! [`crate::write_kv`] has already stored). Grouped-query attention maps query head `h` to KV
//! head `h / (num_heads / num_kv_heads)`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::device_metadata::DeviceMetadata;
use crate::elem::Elem;
use crate::fused::simd::Simd;
use crate::metadata::AttentionMetadata;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod cpu;
#[cfg(target_arch = "x86_64")]
mod tile;
#[cfg(feature = "cuda")]
mod cuda;

/// The attention blocks a launch on `device` (a GPU) aims to have resident at once; a launch
/// of fewer splits its key ranges and needs as many split counters.
#[cfg(feature = "cuda")]
pub(crate) fn split_target(device: &candle_core::Device) -> Result<usize> {
    cuda::split_target(device.as_cuda_device()?)
}

/// `q`: `(num_tokens, num_heads, head_dim)`; caches: `(num_blocks, block_size, num_kv_heads,
/// head_dim)`, of q's dtype. Returns `(num_tokens, num_heads, head_dim)` in q's dtype.
///
/// On a GPU this copies `metadata` to the device on every call; a model calls
/// [`paged_attention_step`] with one [`DeviceMetadata`] per forward instead.
pub fn paged_attention(
    q: &Tensor,
    key_cache: &Tensor,
    value_cache: &Tensor,
    metadata: &AttentionMetadata,
    scale: f32,
) -> Result<Tensor> {
    let metadata = DeviceMetadata::new(metadata.clone(), q.device())?;
    paged_attention_step(q, key_cache, value_cache, &metadata, scale)
}

/// [`paged_attention`] with the step's metadata already on q's device.
///
/// The CUDA implementation (f32/bf16/f16, head_dim 64 or 128) needs q and the caches to start
/// on 16-byte boundaries, which fresh and `contiguous()` tensors do.
pub fn paged_attention_step(
    q: &Tensor,
    key_cache: &Tensor,
    value_cache: &Tensor,
    metadata: &DeviceMetadata,
    scale: f32,
) -> Result<Tensor> {
    let (num_tokens, num_heads, head_dim) = q.dims3()?;
    let (num_blocks, block_size, num_kv_heads, cache_head_dim) = key_cache.dims4()?;
    if value_cache.dims() != key_cache.dims() {
        candle_core::bail!("paged_attention: key and value caches differ in shape");
    }
    if cache_head_dim != head_dim || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
        candle_core::bail!(
            "paged_attention: q {:?} does not fit cache {:?}",
            q.dims(),
            key_cache.dims()
        );
    }
    if q.dtype() != key_cache.dtype() || q.dtype() != value_cache.dtype() {
        candle_core::bail!("paged_attention: q and caches must share a dtype");
    }
    let host = metadata.host();
    if host.num_tokens() != num_tokens {
        candle_core::bail!(
            "paged_attention: {num_tokens} query tokens, metadata describes {}",
            host.num_tokens()
        );
    }
    host.validate(num_blocks, block_size).map_err(candle_core::Error::wrap)?;
    if num_tokens == 0 {
        return q.zeros_like();
    }
    let op = PagedAttention {
        metadata,
        dims: Dims { num_heads, num_kv_heads, head_dim, block_size },
        scale,
        simd: Simd::detected(),
    };
    q.contiguous()?.apply_op3_no_bwd(key_cache, value_cache, &op)
}

#[derive(Debug, Clone, Copy)]
struct Dims {
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    block_size: usize,
}

struct PagedAttention<'a> {
    metadata: &'a DeviceMetadata,
    dims: Dims,
    scale: f32,
    /// The CPU kernel's instruction set.
    simd: Simd,
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("paged_attention: {what} must be contiguous"),
    }
}

impl CustomOp3 for PagedAttention<'_> {
    fn name(&self) -> &'static str {
        "paged-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_l: &Layout,
        k: &CpuStorage,
        k_l: &Layout,
        v: &CpuStorage,
        v_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let shape = q_l.shape().clone();
        let storage = match (q, k, v) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => CpuStorage::F32(self.run(
                contiguous(q, q_l, "q")?,
                contiguous(k, k_l, "key cache")?,
                contiguous(v, v_l, "value cache")?,
            )),
            (CpuStorage::BF16(q), CpuStorage::BF16(k), CpuStorage::BF16(v)) => CpuStorage::BF16(self.run(
                contiguous(q, q_l, "q")?,
                contiguous(k, k_l, "key cache")?,
                contiguous(v, v_l, "value cache")?,
            )),
            (CpuStorage::F16(q), CpuStorage::F16(k), CpuStorage::F16(v)) => CpuStorage::F16(self.run(
                contiguous(q, q_l, "q")?,
                contiguous(k, k_l, "key cache")?,
                contiguous(v, v_l, "value cache")?,
            )),
            _ => candle_core::bail!(
                "paged_attention: unsupported dtype {:?} (f32, bf16, f16)",
                q.dtype()
            ),
        };
        Ok((storage, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        q_l: &Layout,
        k: &candle_core::CudaStorage,
        k_l: &Layout,
        v: &candle_core::CudaStorage,
        v_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.cuda(q, q_l, k, k_l, v, v_l)
    }
}

impl PagedAttention<'_> {
    /// One task per (tile, KV head): a tile is up to [`cpu::tile_tokens`] consecutive new tokens
    /// of one sequence (one token where only token-by-token kernels apply, and for a decode), and
    /// the task's query heads share every K/V row it loads.
    fn run<T: Elem>(&self, q: &[T], k: &[T], v: &[T]) -> Vec<T> {
        self.run_with(self.simd, q, k, v)
    }

    /// [`Self::run`] with `simd`'s instructions (every level gives the same bits).
    fn run_with<T: Elem>(&self, simd: Simd, q: &[T], k: &[T], v: &[T]) -> Vec<T> {
        let Dims { num_heads, num_kv_heads, head_dim, block_size } = self.dims;
        let group = num_heads / num_kv_heads;
        let m = self.metadata.host();
        let tile_tokens = cpu::tile_tokens(simd, group, head_dim);
        let mut out = vec![T::from_f32(0.0); q.len()];
        // Token t's outputs for KV head h: chunk t * num_kv_heads + h.
        let mut chunks: Vec<Option<&mut [T]>> = out.chunks_mut(group * head_dim).map(Some).collect();
        let mut tasks = Vec::new();
        for s in 0..m.num_seqs() {
            let (start, end) = (m.query_start_loc[s] as usize, m.query_start_loc[s + 1] as usize);
            // Keys the sequence's first new token sees (its own included).
            let first_n = m.seq_lens[s] as usize - (end - start) + 1;
            for t0 in (start..end).step_by(tile_tokens) {
                let tokens = t0..(t0 + tile_tokens).min(end);
                for kvh in 0..num_kv_heads {
                    let outs: Vec<&mut [T]> = tokens.clone().map(|t| chunks[t * num_kv_heads + kvh].take().expect("one task per chunk")).collect();
                    tasks.push(Task { seq: s, tokens: tokens.clone(), first_n: first_n + (t0 - start), kvh, outs });
                }
            }
        }
        tasks.into_par_iter().for_each(|mut task| {
            let table = m.block_table(task.seq);
            let q_groups: Vec<&[T]> =
                task.tokens.clone().map(|t| &q[(t * num_heads + task.kvh * group) * head_dim..][..group * head_dim]).collect();
            // Where each key (and value) the tile's last token sees starts in the caches.
            let rows: Vec<usize> = (0..task.first_n + task.tokens.len() - 1)
                .map(|j| {
                    let slot = table[j / block_size] as usize * block_size + j % block_size;
                    (slot * num_kv_heads + task.kvh) * head_dim
                })
                .collect();
            cpu::attend_tile(simd, &q_groups, k, v, &rows, task.first_n, head_dim, self.scale, &mut task.outs);
        });
        out
    }
}

/// One (tile, KV head) of [`PagedAttention::run_with`].
struct Task<'a, T> {
    seq: usize,
    /// The tile's new tokens (rows of q).
    tokens: std::ops::Range<usize>,
    /// Keys the tile's first token sees.
    first_n: usize,
    kvh: usize,
    outs: Vec<&'a mut [T]>,
}

#[cfg(test)]
mod tests;
