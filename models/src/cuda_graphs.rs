//! Decode steps replayed as CUDA graphs (batches of up to `QWEN_SERVE_CUDA_GRAPHS=N` sequences,
//! default [`DEFAULT_GRAPH_BATCH`]; 0 turns them off).
//!
//! At one token per sequence a step's kernels are small, and issuing them from the host takes
//! longer than running them. A CUDA graph records a step's launches once and replays them in
//! one call. It replays the same kernels with the same arguments at the same addresses, so:
//!
//! - each batch size of up to N decoding sequences gets its own graph, and its inputs (token
//!   ids and the packed attention metadata) live in device buffers that stay put while each
//!   step's values are copied in ([`DeviceMetadata::for_graph`]);
//! - the launch shapes come from a template: block tables as wide as [`MAX_SEQ_LEN`] tokens
//!   need, and attention's key-range split sized for that length (the attention kernel then
//!   splits each sequence's keys exactly as the step's own launch would, so a graph gives the
//!   eager step's bits). Longer sequences, prefills and steps that want prompt logprobs run
//!   eagerly, as do all steps of a model not on a GPU;
//! - the first step of a batch size runs eagerly on those buffers (it loads the kernels and
//!   fills candle's cache of layout uploads, which a capture cannot make), the second is
//!   captured and replayed, later ones only replayed. The step's checks run every time.
//!
//! A capture that fails is logged and that batch size stays eager. On an H200 (2026-11-27,
//! `scripts/gpu-check.sh`) greedy tokens with graphs equalled the eager run's for random
//! Qwen2.5-0.5B and -7B shapes, and graphs of up to 256 sequences were faster than eager steps
//! at 1, 16, 64 and 256 streams (0.5B one stream: 559 against 339 tok/s; 7B: 176 against 172).
//! The default stops at 64: every batch size gets a graph of its own, and bigger ones gain
//! least. Above 64 ([`graph_rows`]) sizes share graphs: a step runs on the graph of its size
//! rounded up, its extra rows padding that writes only the cache's scratch block.

use crate::{CausalLm, ForwardBatch, KvCache, ModelError};

/// The longest sequence a graph serves; its block tables are this wide (in blocks) and its
/// attention splits the key range for this length.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
const MAX_SEQ_LEN: usize = 8192;

/// The largest decode batch captured when `QWEN_SERVE_CUDA_GRAPHS` is unset.
pub const DEFAULT_GRAPH_BATCH: usize = 64;

/// The largest batch to capture, from `QWEN_SERVE_CUDA_GRAPHS` (0: no graphs; unset:
/// [`DEFAULT_GRAPH_BATCH`]); the error names the variable.
pub fn max_graph_batch() -> Result<usize, String> {
    match std::env::var("QWEN_SERVE_CUDA_GRAPHS") {
        Err(_) => Ok(DEFAULT_GRAPH_BATCH),
        Ok(v) => v.parse().map_err(|_| format!("QWEN_SERVE_CUDA_GRAPHS={v:?}: expected a batch size (0 for none)")),
    }
}

/// `model`, replaying its decode steps of up to `max_batch` sequences as CUDA graphs when it
/// runs on a GPU of a CUDA build and `max_batch > 0`; otherwise `model` itself.
pub fn with_cuda_graphs(model: Box<dyn CausalLm>, max_batch: usize) -> Result<Box<dyn CausalLm>, ModelError> {
    #[cfg(feature = "cuda")]
    if let (true, candle_core::Device::Cuda(dev)) = (max_batch > 0, model.device()) {
        // cudarc's event tracking records and waits on events around every launch, which a
        // capture cannot take (src/device/cuda.rs turns it off unless told not to).
        if model.config().architecture().is_moe() {
            // The router's choices come back to the host every layer, which a graph cannot hold.
            tracing::info!("CUDA graphs are off for MoE models (routing is decided on the host); running eagerly");
            return Ok(model);
        }
        if crate::phase_times::enabled() {
            tracing::info!("CUDA graphs are off while QWEN_SERVE_PHASE_TIMES times each phase");
            return Ok(model);
        }
        if dev.is_event_tracking() {
            tracing::warn!("CUDA graphs need event tracking off (QWEN_SERVE_CUDA_TUNING unset); running eagerly");
            return Ok(model);
        }
        return Ok(Box::new(cuda::Graphed::new(model, max_batch)?));
    }
    let _ = max_batch;
    Ok(model)
}

/// The rows of the graph that runs a decode step of `n` sequences: `n` itself up to
/// [`EXACT_GRAPH_BATCH`], above it `n` rounded up to a multiple of 32 (of 64 past 128), at most
/// `max_batch`. Above 64 sequences a few graphs then serve every batch size, the extra rows
/// being padding ([`pad_decode_batch`]).
pub fn graph_rows(n: usize, max_batch: usize) -> usize {
    let rows = if n <= EXACT_GRAPH_BATCH {
        n
    } else if n <= 128 {
        n.next_multiple_of(32)
    } else {
        n.next_multiple_of(64)
    };
    rows.min(max_batch).max(n)
}

/// Batch sizes up to this many sequences get a graph of their own.
pub const EXACT_GRAPH_BATCH: usize = 64;

/// `batch`, a decode step of one token per sequence, grown to `rows` sequences: each padding
/// sequence is one token (id 0) at position 0 of `cache`'s scratch block, so it writes its key
/// and value only there and attends only to them; its logits are the rows past the batch's.
/// A sequence's results do not depend on the padding where the model's rows are independent
/// (on the CPU, bit for bit; on a GPU cuBLAS and the attention's split both go by the row
/// count, so a padded step matches the same padded step run eagerly). `rows` at least the
/// batch's sequences; `batch` a checked decode step.
pub fn pad_decode_batch(batch: &ForwardBatch, rows: usize, cache: &KvCache) -> ForwardBatch {
    let mut padded = batch.clone();
    let n = batch.input_ids.len();
    let m = &mut padded.attention;
    let width = m.max_blocks_per_seq.max(1);
    m.max_blocks_per_seq = width;
    m.block_tables.resize(n * width, 0);
    let scratch = cache.scratch_block();
    for i in n..rows {
        padded.input_ids.push(0);
        m.query_start_loc.push(i as u32 + 1);
        m.seq_lens.push(1);
        m.block_tables.push(scratch);
        m.block_tables.extend(std::iter::repeat_n(0, width - 1));
        m.slot_mapping.push(scratch * cache.block_size() as u32);
        padded.logits_indices.push(i as u32);
    }
    padded
}

/// Whether `batch` is a step a graph of `max_batch` can run: one new token per sequence, every
/// row's logits in order, no sequence past `max_seq_len`.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn graph_step(batch: &ForwardBatch, max_batch: usize, max_seq_len: usize) -> bool {
    let m = &batch.attention;
    let n = m.num_seqs();
    n > 0
        && n <= max_batch
        && batch.input_ids.len() == n
        && m.query_start_loc.iter().enumerate().all(|(i, &q)| q as usize == i)
        && batch.logits_indices.iter().enumerate().all(|(i, &r)| r as usize == i)
        && batch.logits_indices.len() == n
        && m.seq_lens.iter().all(|&l| l as usize <= max_seq_len)
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::collections::hash_map::Entry;
    use std::collections::HashMap;
    use std::sync::Mutex;

    use candle_core::cuda_backend::cudarc::cublas::sys as cublas;
    use candle_core::cuda_backend::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    use candle_core::cuda_backend::cudarc::driver::{CudaGraph, CudaSlice, DevicePtr};
    use candle_core::{DType, Device, Tensor, TensorId};
    use qwen_serve_kernels::{overwrite_u32, param_cache_for_capture};

    use super::{graph_rows, graph_step, pad_decode_batch, MAX_SEQ_LEN};
    use crate::{CausalLm, DeviceMetadata, ForwardBatch, KvCache, ModelConfig, ModelError};

    /// cuBLAS's workspace, given explicitly: without one it may allocate inside a capture.
    const CUBLAS_WORKSPACE_BYTES: usize = 32 << 20;

    pub(super) struct Graphed {
        inner: Box<dyn CausalLm>,
        max_batch: usize,
        sizes: Mutex<HashMap<usize, Size>>,
        /// `(max_batch, vocab)`, one per logits dtype (made when a graph first needs it: steps of
        /// one or two rows may give f32 logits, larger ones the model's dtype): every graph
        /// copies its logits into its dtype's buffer (the first rows), so no graph keeps an
        /// allocation of its own past its end and the graphs' memory can be shared.
        outs: Mutex<HashMap<DType, Tensor>>,
        _workspace: CudaSlice<u8>,
    }

    /// A step's inputs at fixed device addresses, for [`CausalLm::forward_on_device`].
    struct Inputs {
        ids: Tensor,
        meta: DeviceMetadata,
    }

    impl Inputs {
        fn fill(&self, batch: &ForwardBatch, block_size: usize) -> Result<(), ModelError> {
            self.meta.refill(&batch.attention, block_size)?;
            Ok(overwrite_u32(&self.ids, &batch.input_ids)?)
        }
    }

    struct Size {
        inputs: Inputs,
        /// The cache the graph was warmed up or captured with (its first key tensor).
        cache: TensorId,
        /// The dtype of the logits its warm-up step gave.
        logits: DType,
        phase: Phase,
    }

    enum Phase {
        /// Ran once eagerly on its buffers: the next step is captured.
        Warm,
        Captured(Captured),
        /// The capture failed: eager for good.
        Eager,
    }

    /// A captured step; it leaves its logits in the first rows of `out` (one of [`Graphed::outs`]).
    struct Captured {
        graph: CudaGraph,
        out: Tensor,
    }

    // SAFETY: the graph's handles are used only under the mutex, one thread at a time, with
    // the device's context bound by cudarc before each call.
    unsafe impl Send for Captured {}

    impl Graphed {
        pub(super) fn new(inner: Box<dyn CausalLm>, max_batch: usize) -> Result<Self, ModelError> {
            let Device::Cuda(dev) = inner.device() else {
                return Err(ModelError::Config("CUDA graphs need a model on a GPU".into()));
            };
            let workspace = dev.alloc_zeros::<u8>(CUBLAS_WORKSPACE_BYTES)?;
            let blas = dev.cublas_handle();
            let stream = dev.cuda_stream();
            let (ptr, record) = workspace.device_ptr(&stream);
            // SAFETY: a live handle, and a device buffer that lives as long as this wrapper
            // (the model, whose matmuls use the handle, is dropped with it).
            let status = unsafe { cublas::cublasSetWorkspace_v2(*blas.handle(), ptr as *mut std::ffi::c_void, CUBLAS_WORKSPACE_BYTES) };
            if status != cublas::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return Err(ModelError::Config(format!("setting cuBLAS's workspace for CUDA graphs: {status:?}")));
            }
            drop(record);
            tracing::info!("CUDA graphs: decode steps of up to {max_batch} sequences of up to {MAX_SEQ_LEN} tokens");
            Ok(Self { inner, max_batch, sizes: Mutex::new(HashMap::new()), outs: Mutex::new(HashMap::new()), _workspace: workspace })
        }

        fn inputs(&self, n: usize, cache: &KvCache) -> Result<Inputs, ModelError> {
            let cfg = self.inner.config();
            let device = self.inner.device();
            let group = cfg.num_attention_heads / cfg.num_key_value_heads;
            let max_blocks = MAX_SEQ_LEN.div_ceil(cache.block_size());
            Ok(Inputs {
                ids: Tensor::zeros(n, DType::U32, device)?,
                meta: DeviceMetadata::for_graph(n, max_blocks, cache.block_size(), group, device)?,
            })
        }

        /// Captures one step of `size`'s buffers (already holding this step's values), then
        /// replays it once.
        fn capture(&self, size: &Size, cache: &mut KvCache) -> Result<Captured, String> {
            let Device::Cuda(dev) = self.inner.device() else { unreachable!("checked at construction") };
            let out = self.out(size.logits).map_err(|e| e.to_string())?;
            let stream = dev.cuda_stream();
            let _uploads = param_cache_for_capture(self.inner.device());
            stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).map_err(|e| e.to_string())?;
            // The logits are copied out and freed inside the capture.
            let copied = self
                .inner
                .forward_on_device(&size.inputs.ids, &size.inputs.meta, cache)
                .and_then(|logits| Ok(out.slice_set(&logits, 0, 0)?));
            // Always ended, so the stream leaves capture mode whatever happened inside.
            let graph = stream.end_capture(CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH);
            copied.map_err(|e| e.to_string())?;
            let graph = graph.map_err(|e| e.to_string())?.ok_or("the capture recorded nothing")?;
            graph.launch().map_err(|e| e.to_string())?;
            Ok(Captured { graph, out })
        }

        /// The shared output buffer for logits of `dtype`, made on first use (outside any capture).
        fn out(&self, dtype: DType) -> candle_core::Result<Tensor> {
            let mut outs = self.outs.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(out) = outs.get(&dtype) {
                return Ok(out.clone());
            }
            let out = Tensor::zeros((self.max_batch, self.inner.config().vocab_size), dtype, self.inner.device())?;
            outs.insert(dtype, out.clone());
            Ok(out)
        }
    }

    impl CausalLm for Graphed {
        fn config(&self) -> &ModelConfig {
            self.inner.config()
        }

        fn dtype(&self) -> DType {
            self.inner.dtype()
        }

        fn device(&self) -> &Device {
            self.inner.device()
        }

        fn check(&self, batch: &ForwardBatch, cache: &KvCache) -> Result<(), ModelError> {
            self.inner.check(batch, cache)
        }

        fn forward_on_device(&self, ids: &Tensor, meta: &DeviceMetadata, cache: &mut KvCache) -> Result<Tensor, ModelError> {
            self.inner.forward_on_device(ids, meta, cache)
        }

        fn forward_with_hidden(&self, batch: &ForwardBatch, cache: &mut KvCache) -> Result<(Tensor, Option<Tensor>), ModelError> {
            if batch.hidden_rows.is_empty() {
                Ok((self.forward(batch, cache)?, None))
            } else {
                self.inner.forward_with_hidden(batch, cache)
            }
        }

        fn forward(&self, batch: &ForwardBatch, cache: &mut KvCache) -> Result<Tensor, ModelError> {
            if !graph_step(batch, self.max_batch, MAX_SEQ_LEN) {
                return self.inner.forward(batch, cache);
            }
            self.inner.check(batch, cache)?;
            let n = batch.input_ids.len();
            // Above 64 sequences a graph of a few more rows runs the step, padded.
            let rows = graph_rows(n, self.max_batch);
            let padded;
            let batch = if rows > n {
                padded = pad_decode_batch(batch, rows, cache);
                &padded
            } else {
                batch
            };
            let cache_id = cache.layer(0).0.id();
            let mut sizes = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
            let size = match sizes.entry(rows) {
                Entry::Vacant(slot) => {
                    // The first step of this size: eager on the graph's buffers (the warm-up).
                    let inputs = self.inputs(rows, cache)?;
                    inputs.fill(batch, cache.block_size())?;
                    let _uploads = param_cache_for_capture(self.inner.device());
                    let logits = self.inner.forward_on_device(&inputs.ids, &inputs.meta, cache)?;
                    slot.insert(Size { inputs, cache: cache_id, logits: logits.dtype(), phase: Phase::Warm });
                    return Ok(logits.narrow(0, 0, n)?);
                }
                Entry::Occupied(size) => size.into_mut(),
            };
            if size.cache != cache_id || matches!(size.phase, Phase::Eager) {
                return Ok(self.eager(batch, n, cache)?);
            }
            if let Phase::Captured(c) = &size.phase {
                let timer = super::replay_times::Timer::start(self.inner.device())?;
                size.inputs.fill(batch, cache.block_size())?;
                let timer = timer.map(|t| t.filled()).transpose()?;
                c.graph.launch().map_err(|e| candle_core::Error::Msg(format!("replaying the CUDA graph of {rows} sequences: {e}")))?;
                if let Some(t) = timer {
                    t.launched(rows)?;
                }
                return Ok(c.out.narrow(0, 0, n)?);
            }
            size.inputs.fill(batch, cache.block_size())?;
            let start = std::time::Instant::now();
            match self.capture(size, cache) {
                Ok(c) => {
                    tracing::info!("captured the CUDA graph of {rows} decoding sequences in {:.1} ms", start.elapsed().as_secs_f64() * 1e3);
                    let logits = c.out.narrow(0, 0, n)?;
                    size.phase = Phase::Captured(c);
                    Ok(logits)
                }
                Err(e) => {
                    tracing::warn!("CUDA graph capture of {rows} sequences failed ({e}); that batch size runs eagerly");
                    // Frees of buffers a failed capture made are reported to cudarc's error
                    // state, which the next call would return: those are this failure's.
                    if let Device::Cuda(dev) = self.inner.device() {
                        let _ = dev.cuda_stream().context().check_err();
                    }
                    size.phase = Phase::Eager;
                    Ok(self.eager(batch, n, cache)?)
                }
            }
        }
    }

    impl Graphed {
        /// A (possibly padded) graph step run eagerly: the first `n` rows' logits. A padded
        /// step runs on the device as the graph would (the checks were made on the batch itself;
        /// its padding writes only the scratch block, which `check` would refuse).
        fn eager(&self, batch: &ForwardBatch, n: usize, cache: &mut KvCache) -> Result<Tensor, ModelError> {
            if batch.input_ids.len() == n {
                return self.inner.forward(batch, cache);
            }
            let device = self.inner.device();
            let ids = Tensor::from_slice(&batch.input_ids, batch.input_ids.len(), device)?;
            let meta = DeviceMetadata::new(batch.attention.clone(), device)?;
            let cfg = self.inner.config();
            meta.prepare_attention(cfg.num_attention_heads / cfg.num_key_value_heads)?;
            Ok(self.inner.forward_on_device(&ids, &meta, cache)?.narrow(0, 0, n)?)
        }
    }
}

/// Where a replayed step's time goes (`QWEN_SERVE_CUDA_GRAPH_TIMES=1`, off by default): the
/// host's time to copy the step's inputs in and to launch the graph, and the GPU's time for the
/// copies and the graph, from CUDA events. Each replay then waits for the GPU, so the host no
/// longer overlaps it; the means over every 128 replays are logged.
#[cfg(feature = "cuda")]
mod replay_times {
    use std::sync::Mutex;
    use std::time::Instant;

    use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
    use candle_core::cuda_backend::cudarc::driver::{CudaEvent, CudaStream};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{Device, Result};

    const EVERY: u32 = 128;

    /// Totals since the last log line: replays, then seconds of host fill, host launch, GPU
    /// copies and GPU graph.
    static TOTALS: Mutex<(u32, [f64; 4])> = Mutex::new((0, [0.0; 4]));

    fn enabled() -> bool {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| std::env::var("QWEN_SERVE_CUDA_GRAPH_TIMES").is_ok_and(|v| v == "1"))
    }

    pub(super) struct Timer {
        stream: std::sync::Arc<CudaStream>,
        host: Instant,
        start: CudaEvent,
    }

    pub(super) struct Filled {
        timer: Timer,
        fill_s: f64,
        host: Instant,
        filled: CudaEvent,
    }

    fn record(stream: &CudaStream) -> Result<CudaEvent> {
        stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).w()
    }

    impl Timer {
        /// A timer when they are switched on and `device` is a GPU.
        pub(super) fn start(device: &Device) -> Result<Option<Self>> {
            let (true, Device::Cuda(dev)) = (enabled(), device) else { return Ok(None) };
            let stream = dev.cuda_stream();
            let start = record(&stream)?;
            Ok(Some(Self { stream, host: Instant::now(), start }))
        }

        pub(super) fn filled(self) -> Result<Filled> {
            let fill_s = self.host.elapsed().as_secs_f64();
            let filled = record(&self.stream)?;
            Ok(Filled { timer: self, fill_s, host: Instant::now(), filled })
        }
    }

    impl Filled {
        pub(super) fn launched(self, num_seqs: usize) -> Result<()> {
            let launch_s = self.host.elapsed().as_secs_f64();
            let done = record(&self.timer.stream)?;
            let copy_ms = self.timer.start.elapsed_ms(&self.filled).w()? as f64;
            let graph_ms = self.filled.elapsed_ms(&done).w()? as f64;
            let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
            totals.0 += 1;
            for (t, x) in totals.1.iter_mut().zip([self.fill_s, launch_s, copy_ms / 1e3, graph_ms / 1e3]) {
                *t += x;
            }
            if totals.0 == EVERY {
                let us = totals.1.map(|t| t * 1e6 / EVERY as f64);
                tracing::info!(
                    "CUDA graph replay times (mean of {EVERY}, last with {num_seqs} sequences): host fill {:.1} us, host launch {:.1} us; GPU copies {:.1} us, graph {:.1} us",
                    us[0], us[1], us[2], us[3]
                );
                *totals = (0, [0.0; 4]);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::graph_step;
    use crate::{AttentionMetadata, ForwardBatch};

    fn decode(seq_lens: &[u32]) -> ForwardBatch {
        let n = seq_lens.len();
        ForwardBatch {
            input_ids: vec![1; n],
            attention: AttentionMetadata {
                query_start_loc: (0..=n as u32).collect(),
                seq_lens: seq_lens.to_vec(),
                block_tables: vec![0; n],
                max_blocks_per_seq: 1,
                slot_mapping: vec![0; n],
            },
            logits_indices: (0..n as u32).collect(),
            hidden_rows: vec![],
        }
    }

    #[test]
    fn only_decode_steps_within_the_limits_are_graph_steps() {
        assert!(graph_step(&decode(&[5, 9, 1]), 4, 16));
        assert!(!graph_step(&decode(&[5, 9, 1]), 2, 16), "more sequences than captured");
        assert!(!graph_step(&decode(&[5, 17]), 4, 16), "a sequence past the graph's tables");
        assert!(!graph_step(&decode(&[]), 4, 16));
        let mut prefill = decode(&[5, 9]);
        prefill.attention.query_start_loc = vec![0, 2, 3];
        prefill.input_ids.push(1);
        assert!(!graph_step(&prefill, 4, 16), "a sequence with two new tokens");
        let mut some_rows = decode(&[5, 9]);
        some_rows.logits_indices = vec![1];
        assert!(!graph_step(&some_rows, 4, 16), "not every row's logits");
    }
}
