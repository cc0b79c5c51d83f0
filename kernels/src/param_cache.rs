//! Keeping candle's CUDA ops from copying their layout parameters to the GPU on every call.
//!
//! A candle CUDA op on a non-contiguous tensor (a broadcast bias add, the copy of a column
//! view) first uploads that tensor's dims and strides: a small host-to-device copy per op, a
//! few per layer and step. candle can cache such uploads by content (its
//! `enable_cuda_graph_htod_cache`, made for CUDA graph capture): while the guard lives, every
//! small upload (up to 4 KB) of its thread is looked up by its bytes and reused. Layout
//! parameters repeat (one set per shape); per-step data (token ids, attention metadata, work
//! tiles) does not, and each distinct content would stay cached for good, so all of that must
//! be on the device before the guard is taken (see the model's forward).
//!
//! Off unless `QWEN_SERVE_CUDA_PARAM_CACHE=1`: written without a GPU at hand, it waits for a
//! measurement (`scripts/gpu-check.sh` times the single stream both ways) before it becomes
//! the default.

use candle_core::Device;

/// Caching on while this lives (drop it on the thread that took it).
pub struct ParamCache {
    _guard: Box<dyn std::any::Any>,
}

/// The cache for `device`'s current thread, when it is a GPU and the cache is switched on.
pub fn param_cache(device: &Device) -> Option<ParamCache> {
    #[cfg(feature = "cuda")]
    if let (Device::Cuda(d), true) = (device, enabled()) {
        return Some(ParamCache { _guard: Box::new(d.enable_cuda_graph_htod_cache()) });
    }
    let _ = device;
    None
}

/// The cache whatever `QWEN_SERVE_CUDA_PARAM_CACHE` says, on a GPU: CUDA graph capture needs
/// it (an upload cannot be captured), and the warm-up run before a capture fills it.
pub fn param_cache_for_capture(device: &Device) -> Option<ParamCache> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        return Some(ParamCache { _guard: Box::new(d.enable_cuda_graph_htod_cache()) });
    }
    let _ = device;
    None
}

#[cfg(feature = "cuda")]
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("QWEN_SERVE_CUDA_PARAM_CACHE").is_ok_and(|v| v == "1"))
}
