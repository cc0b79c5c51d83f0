//! How a GPU is set up before the model loads onto it. candle's CUDA device is built for work
//! spread over several streams; qwen-serve issues everything on one (see `open_cuda`), and two
//! of that design's costs are paid on every step for nothing:
//!
//! - **Event tracking.** With a stream of its own the device is in cudarc's multi-stream mode:
//!   every buffer gets two CUDA events when it is allocated (and destroys them when freed), and
//!   every launch waits on and records them for each argument, a dozen or so driver calls per
//!   kernel beside the launch itself. On one stream, stream order already covers all of it
//!   (frees are stream-ordered too), so tracking is switched off before anything is allocated.
//! - **The memory pool's release threshold.** Buffers come from the device's stream-ordered
//!   pool (`cuMemAllocAsync`), whose default threshold of 0 hands all unused memory back to
//!   the driver at every synchronisation. The engine synchronises once a step (it reads the
//!   sampled tokens), so each step's activations were mapped afresh. The pool now keeps what it
//!   has; [`trim`] gives it back where the free memory is measured (for the KV cache's size).
//!
//! `QWEN_SERVE_CUDA_TUNING=off` leaves candle's defaults, for A/B measurements
//! (`scripts/gpu-check.sh` runs one).

use candle_core::cuda_backend::cudarc::driver::sys;
use candle_core::cuda_backend::CudaDevice;

/// Whether [`tune`] changes anything (unless `QWEN_SERVE_CUDA_TUNING=off`).
pub(super) fn enabled() -> bool {
    std::env::var("QWEN_SERVE_CUDA_TUNING").map_or(true, |v| v != "off")
}

/// Sets up a freshly opened device that has one stream of its own, before anything is
/// allocated on it. Returns a line for the log.
pub(super) fn tune(device: &CudaDevice) -> Result<&'static str, String> {
    if !enabled() {
        return Ok("QWEN_SERVE_CUDA_TUNING=off: candle's event tracking and pool defaults");
    }
    // SAFETY: every buffer of this device is used on its one stream (cuBLAS and our kernels
    // included), which orders each use, and each free, after the writes before it.
    unsafe { device.disable_event_tracking() };
    let mut threshold = u64::MAX;
    // SAFETY: the attribute takes a u64 (cuMemPoolSetAttribute's documentation).
    let set = unsafe {
        sys::cuMemPoolSetAttribute(
            pool(device)?,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
    };
    check(set, "setting the memory pool's release threshold")?;
    Ok("one stream without event tracking; the memory pool keeps freed memory")
}

/// Hands the pool's unused memory back to the driver (after the work queued so far), so the
/// driver's free memory counts it as free.
pub(super) fn trim(device: &CudaDevice) -> Result<(), String> {
    device.cuda_stream().synchronize().map_err(|e| format!("synchronizing the GPU: {e}"))?;
    // SAFETY: a valid pool; trimming never touches memory in use.
    check(unsafe { sys::cuMemPoolTrimTo(pool(device)?, 0) }, "trimming the memory pool")
}

/// The device's default stream-ordered memory pool, which `cuMemAllocAsync` draws from.
fn pool(device: &CudaDevice) -> Result<sys::CUmemoryPool, String> {
    let context = device.cuda_stream().context().clone();
    context.bind_to_thread().map_err(|e| format!("binding the CUDA context: {e}"))?;
    let mut pool = std::ptr::null_mut();
    // SAFETY: `pool` is a valid out-pointer; the device handle comes from the live context.
    check(unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, context.cu_device()) }, "finding the memory pool")?;
    Ok(pool)
}

fn check(result: sys::CUresult, what: &str) -> Result<(), String> {
    match result {
        sys::CUresult::CUDA_SUCCESS => Ok(()),
        e => Err(format!("{what}: {e:?}")),
    }
}
