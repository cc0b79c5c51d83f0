//! The CUDA forward of [`PagedAttention`]: `cuda/paged_attention.cu`, which documents the
//! kernel's layout and its split of long key ranges across thread blocks.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Result, Shape};
use half::{bf16, f16};

use super::{Dims, PagedAttention};
use crate::cuda::{self, kernel_name, load, CudaElem, Locked};

/// Threads per attention block and keys per shared-memory chunk (`THREADS`, `KEYS` in the .cu).
const THREADS: u32 = 128;
const KEYS_PER_CHUNK: usize = 32;
/// Resident attention blocks per SM to aim for (~41 KB of shared memory each at head_dim 128).
const BLOCKS_PER_SM: usize = 4;
/// Keys a split covers at least. A block works through its keys one chunk at a time (load,
/// barrier, score, accumulate), so a decode of a few sequences is latency-bound: 512 keys in
/// one block took ~40 us per layer on an H200 (2026-11-27). One chunk per split: since the
/// last split to finish merges the partials (no separate merge launch), that beat two chunks
/// on an H100 (2026-11-27, one stream: 0.5B 780 against 715 tok/s, 7B 162 against 159; 64
/// streams even). A decode step replayed as a CUDA graph (its launch sized for 8192 keys)
/// splits each sequence's keys exactly as the eager step does: see the kernel's header.
/// `QWEN_SERVE_CUDA_ATTENTION_SPLIT_KEYS` overrides it (a multiple of 32), for measurements.
const MIN_KEYS_PER_SPLIT: usize = KEYS_PER_CHUNK;

/// The most splits of one tile's key range. The last split to finish merges them all, a warp
/// each row of the tile one after another, reading the splits a few at a time: with a split
/// per 32 keys an 8192-key decode would merge 256. Past 64 x 32 = 2048 keys the splits get
/// longer instead (the cap applies to a CUDA graph's launch as to the eager one, so graphs
/// keep the eager bits). Chosen, not measured: ~10 L2 round trips of merge against ~70 at 8192
/// keys. `QWEN_SERVE_CUDA_ATTENTION_MAX_SPLITS` overrides it, for measurements.
const MAX_SPLITS: usize = 64;

/// `var` as a positive number that `valid` accepts, else `default`; read once per `cell`.
fn setting(cell: &'static std::sync::OnceLock<usize>, var: &str, valid: fn(usize) -> bool, default: usize) -> usize {
    *cell.get_or_init(|| std::env::var(var).ok().and_then(|v| v.parse::<usize>().ok()).filter(|&k| k > 0 && valid(k)).unwrap_or(default))
}

fn min_keys_per_split() -> usize {
    static KEYS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    setting(&KEYS, "QWEN_SERVE_CUDA_ATTENTION_SPLIT_KEYS", |k| k % KEYS_PER_CHUNK == 0, MIN_KEYS_PER_SPLIT)
}

/// Whether bf16/f16 attention runs on the tensor cores (`cuda/paged_attention_mma.cu`; the same
/// grid, tiles, splits and ending; sm_80 and later): on unless `QWEN_SERVE_CUDA_MMA_ATTENTION=0`.
/// On an H200 (2026-11-27) it passed the attention tests and matched transformers as closely
/// as the f32-arithmetic kernel, and decoded 6-16% more tokens a second at 1 to 256 streams.
fn mma_attention() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("QWEN_SERVE_CUDA_MMA_ATTENTION").map_or(true, |v| v != "0"))
}

fn max_splits() -> usize {
    static SPLITS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    setting(&SPLITS, "QWEN_SERVE_CUDA_ATTENTION_MAX_SPLITS", |_| true, MAX_SPLITS)
}

impl PagedAttention<'_> {
    pub(super) fn cuda(
        &self,
        q: &CudaStorage,
        q_l: &Layout,
        k: &CudaStorage,
        k_l: &Layout,
        v: &CudaStorage,
        v_l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let storage = match q.dtype() {
            DType::F32 => self.cuda_typed::<f32>(q, q_l, k, k_l, v, v_l),
            DType::BF16 => self.cuda_typed::<bf16>(q, q_l, k, k_l, v, v_l),
            DType::F16 => self.cuda_typed::<f16>(q, q_l, k, k_l, v, v_l),
            dtype => candle_core::bail!("paged_attention: unsupported dtype {dtype:?} (f32, bf16, f16)"),
        }?;
        Ok((storage, q_l.shape().clone()))
    }

    fn cuda_typed<T: CudaElem>(
        &self,
        q: &CudaStorage,
        q_l: &Layout,
        k: &CudaStorage,
        k_l: &Layout,
        v: &CudaStorage,
        v_l: &Layout,
    ) -> Result<CudaStorage> {
        let Dims { num_heads, num_kv_heads, head_dim, block_size } = self.dims;
        if head_dim != 64 && head_dim != 128 {
            candle_core::bail!("paged_attention: the CUDA kernel has head_dim 64 and 128, not {head_dim}");
        }
        let dev = q.device();
        let host = self.metadata.host();
        let Some(packed) = self.metadata.cuda() else {
            candle_core::bail!("paged_attention: the step metadata was made for another device than q's");
        };
        let num_tokens = host.num_tokens();
        let tile_tensor = packed.tiles(host, num_heads / num_kv_heads)?;
        let num_tiles = tile_tensor.dim(0)?;
        let max_seq_len = host.seq_lens.iter().copied().max().unwrap_or(0) as usize;
        let target = split_target(dev)?;
        let num_splits = splits(target, num_tiles * num_kv_heads, max_seq_len);
        // One per (tile, KV head) of a split launch, which has fewer than `target` blocks
        // without its splits; the kernel leaves them zero.
        let counter_tensor = packed.split_counters(target)?;

        let q = cuda::aligned_input::<T>(q, q_l, "paged_attention: q")?;
        let k = cuda::aligned_input::<T>(k, k_l, "paged_attention: key cache")?;
        let v = cuda::aligned_input::<T>(v, v_l, "paged_attention: value cache")?;
        let data = Locked::new(&packed.data);
        let query_start_loc = data.view::<u32>(packed.query_start_loc.clone(), "query_start_loc")?;
        let seq_lens = data.view::<u32>(packed.seq_lens.clone(), "seq_lens")?;
        let block_tables = data.view::<u32>(packed.block_tables.clone(), "block_tables")?;
        let tile_guard = Locked::new(&tile_tensor);
        let tiles = tile_guard.all::<u32>("attention tiles")?;
        // The kernel's atomics write these through a read view: they are only ever used by this
        // kernel, on the device's one stream, so no other access needs ordering against them.
        let counter_guard = Locked::new(&counter_tensor);
        let counters = counter_guard.all::<u32>("attention split counters")?;

        let num_rows = num_tokens * num_heads;
        let mut out = cuda::output::<T>(dev, num_rows * head_dim)?;
        // Partial results exist only for a split launch; otherwise one-element placeholders.
        let partial = if num_splits > 1 { num_splits * num_rows } else { 1 };
        let mut part_o = cuda::output::<f32>(dev, partial * head_dim)?;
        let mut part_ml = cuda::output::<f32>(dev, partial * 2)?;

        let func = if mma_attention() && matches!(T::DTYPE, DType::BF16 | DType::F16) && cuda::compute_capability(dev)? >= 80 {
            load!(dev, cuda::PAGED_ATTENTION_MMA, kernel_name::<T>(&format!("paged_attention_mma_d{head_dim}")))?
        } else {
            load!(dev, cuda::PAGED_ATTENTION, kernel_name::<T>(&format!("paged_attention_d{head_dim}")))?
        };
        let ints = [num_tokens, num_heads, num_kv_heads, block_size, host.max_blocks_per_seq, min_keys_per_split()]
            .map(|x| x as i32);
        let mut b = func.builder();
        b.arg(&q).arg(&k).arg(&v).arg(&mut out).arg(&mut part_o).arg(&mut part_ml).arg(&counters);
        b.arg(&query_start_loc).arg(&seq_lens).arg(&block_tables).arg(&tiles);
        for x in &ints {
            b.arg(x);
        }
        b.arg(&self.scale);
        let cfg = LaunchConfig {
            grid_dim: (num_tiles as u32, num_kv_heads as u32, num_splits as u32),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: argument order and types match `paged_attention_d*` in the .cu; every index the
        // kernel follows was checked by `AttentionMetadata::validate` and the shape checks.
        unsafe { b.launch(cfg) }.w()?;

        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

/// The attention blocks a launch aims to have resident at once: a launch of fewer (tiles times
/// KV heads) splits its key ranges.
pub(crate) fn split_target(dev: &CudaDevice) -> Result<usize> {
    Ok(crate::cuda::sm_count(dev)? * BLOCKS_PER_SM)
}

/// How many blocks share each tile's key range (the kernel divides each sequence's keys among
/// them, at least `min_keys_per_split()` each; at most `max_splits()`), for a launch of
/// `num_blocks` without splits on a device that aims at `target` ([`split_target`]). Splitting
/// pays when the tiles alone leave SMs idle: decode of a few sequences.
fn splits(target: usize, num_blocks: usize, max_seq_len: usize) -> usize {
    let max_seq_len = max_seq_len.max(1);
    let wanted = if num_blocks >= target { 1 } else { target.div_ceil(num_blocks.max(1)).min(max_splits()) };
    wanted.min(max_seq_len.div_ceil(min_keys_per_split())).max(1)
}
