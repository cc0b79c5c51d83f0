//! How many bytes the paged KV cache gets: a fixed size on the CPU (or when given), a share of
//! the GPU's memory otherwise.

use candle_core::Device;

use super::{EngineConfig, EngineError};
use crate::device::{gib, host_memory_available, memory_info};

/// The KV cache's bytes for a model already loaded on `device`, and a line saying where the
/// number comes from (for the log).
pub(super) fn kv_cache_bytes(config: &EngineConfig, device: &Device, block_bytes: usize) -> Result<(usize, String), EngineError> {
    let explicit = || -> Result<(usize, String), EngineError> {
        let bytes = config.kv_cache_bytes;
        let room = match memory_info(device).map_err(EngineError::Device)? {
            Some((free, _)) => Some(free),
            None if device.is_cpu() => host_memory_available(),
            None => None,
        };
        fits(bytes, room)?;
        Ok((bytes, format!("{:.2} GiB as configured", gib(bytes))))
    };
    let Some(util) = config.gpu_memory_utilization else { return explicit() };
    match memory_info(device).map_err(EngineError::Device)? {
        None => explicit(),
        Some((free, total)) => {
            let bytes = gpu_kv_cache_bytes(util, free, total, block_bytes)?;
            let why = format!(
                "{:.2} GiB = {util} (--gpu-memory-utilization) x {:.2} GiB total - {:.2} GiB in use after loading the weights (--kv-cache-memory sets it directly)",
                gib(bytes),
                gib(total),
                gib(total - free),
            );
            Ok((bytes, why))
        }
    }
}

/// A cache of `bytes` must fit in the memory the device has left (`room`, where known): else
/// the allocation fails (an abort) or, overcommitted, grows until the OOM killer comes.
fn fits(bytes: usize, room: Option<usize>) -> Result<(), EngineError> {
    match room {
        Some(room) if bytes > room => Err(EngineError::KvCacheTooLarge { gib: gib(bytes), room_gib: gib(room) }),
        _ => Ok(()),
    }
}

/// What vLLM does: the process may use `util` of the whole GPU, so the cache gets that share of
/// `total` minus what is already in use (`total - free`: the weights, the CUDA context, other
/// processes). The headroom left by `util < 1` holds activations; nothing is profiled.
pub fn gpu_kv_cache_bytes(util: f64, free: usize, total: usize, block_bytes: usize) -> Result<usize, EngineError> {
    let used = total.saturating_sub(free);
    let allowed = (total as f64 * util) as usize;
    let bytes = allowed.saturating_sub(used);
    if bytes < block_bytes {
        return Err(EngineError::NoRoomForKvCache { util, allowed_gib: gib(allowed), total_gib: gib(total), used_gib: gib(used) });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: usize = 1 << 30;

    #[test]
    fn the_cache_gets_the_allowed_share_minus_what_is_in_use() {
        // 80 GiB GPU, 10 GiB in use (weights + context): 0.75 x 80 - 10 = 50 GiB.
        assert_eq!(gpu_kv_cache_bytes(0.75, 70 * GIB, 80 * GIB, 1 << 20).unwrap(), 50 * GIB);
        assert_eq!(gpu_kv_cache_bytes(1.0, 70 * GIB, 80 * GIB, 1 << 20).unwrap(), 70 * GIB);
    }

    #[test]
    fn no_room_names_the_flags() {
        // Another process already holds most of the GPU.
        let e = gpu_kv_cache_bytes(0.5, 30 * GIB, 80 * GIB, 1 << 20).unwrap_err().to_string();
        assert!(e.contains("--gpu-memory-utilization 0.5") && e.contains("50.00 GiB in use") && e.contains("--kv-cache-memory"), "{e}");
        // Room for less than one block is no room either.
        assert!(gpu_kv_cache_bytes(0.9, 8 * GIB + 100, 80 * GIB, 1 << 20).is_err());
    }

    #[test]
    fn a_cache_larger_than_the_memory_left_is_refused_naming_the_flag() {
        assert!(fits(3 * GIB, Some(4 * GIB)).is_ok() && fits(3 * GIB, None).is_ok());
        let e = fits(5 * GIB, Some(4 * GIB)).unwrap_err().to_string();
        assert!(e.contains("--kv-cache-memory 5.00 GiB") && e.contains("4.00 GiB"), "{e}");
    }

    #[test]
    fn an_explicit_size_or_the_cpu_ignores_the_gpu_share() {
        let config = EngineConfig { kv_cache_bytes: 3 * GIB, gpu_memory_utilization: Some(0.9), ..Default::default() };
        assert_eq!(kv_cache_bytes(&config, &Device::Cpu, 1 << 20).unwrap().0, 3 * GIB);
        let config = EngineConfig { gpu_memory_utilization: None, ..config };
        assert_eq!(kv_cache_bytes(&config, &Device::Cpu, 1 << 20).unwrap().0, 3 * GIB);
    }
}
