//! Where the model runs: the `--device` flag, its default, and a GPU's memory.
//!
//! A binary built with the `cuda` feature (`scripts/build-cuda.sh`) runs on CUDA device 0 when
//! one opens and on the CPU otherwise; a CPU-only binary refuses `--device cuda` up front.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

#[cfg(feature = "cuda")]
mod cuda;

/// A parsed `--device` value: `cpu`, `cuda` (device 0) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceArg {
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let expected = "expected `cpu`, `cuda` or `cuda:N` (N a GPU number)";
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(expected.into()),
            },
        }
    }
}

impl fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Whether this binary was built with CUDA support.
pub const CUDA_BUILD: bool = cfg!(feature = "cuda");

/// Opens the device `--device` names; unset, CUDA device 0 when this binary has CUDA support
/// and the device opens, else the CPU. Errors name the flag.
pub fn select(arg: Option<DeviceArg>) -> Result<Device, String> {
    match arg {
        Some(DeviceArg::Cpu) => Ok(Device::Cpu),
        Some(DeviceArg::Cuda(n)) if !CUDA_BUILD => Err(format!(
            "--device cuda:{n}: this binary was built without CUDA support; build one with \
             `bash scripts/build-cuda.sh` (cargo's `--features cuda`), or use --device cpu"
        )),
        Some(DeviceArg::Cuda(n)) => open_cuda(n).map_err(|e| format!("--device cuda:{n}: cannot open the GPU: {e}")),
        None if !CUDA_BUILD => Ok(Device::Cpu),
        None => match open_cuda(0) {
            Ok(device) => Ok(device),
            Err(e) => {
                tracing::warn!("no usable CUDA device ({e}); running on the CPU");
                Ok(Device::Cpu)
            }
        },
    }
}

/// The model is loaded on the main thread and run on the engine thread: one explicit stream
/// orders both, where candle's default (the per-thread default stream) would not. The error is
/// one line (candle appends a backtrace when RUST_BACKTRACE is set).
fn open_cuda(ordinal: usize) -> Result<Device, String> {
    let device = Device::new_cuda_with_stream(ordinal).map_err(|e| e.to_string().lines().next().unwrap_or_default().to_string())?;
    #[cfg(feature = "cuda")]
    let tuning = cuda::tune(device.as_cuda_device().map_err(|e| e.to_string())?)?;
    #[cfg(not(feature = "cuda"))]
    let tuning = "";
    tracing::info!("device: cuda:{ordinal} ({}; {tuning})", describe(&device));
    Ok(device)
}

/// The GPU's name and memory, for logs; the CPU as such.
pub fn describe(device: &Device) -> String {
    #[cfg(feature = "cuda")]
    if let Ok(d) = device.as_cuda_device() {
        let context = d.cuda_stream().context().clone();
        let name = context.name().unwrap_or_else(|_| "unknown GPU".into());
        return match memory_info(device) {
            Ok(Some((free, total))) => format!("{name}, {:.1} GiB free of {:.1} GiB", gib(free), gib(total)),
            _ => name,
        };
    }
    match device {
        Device::Cpu => "cpu".into(),
        other => format!("{:?}", other.location()),
    }
}

/// `(free, total)` bytes of a GPU's memory, as the driver reports them once the work queued
/// so far is done and our memory pool has handed back what it holds unused; `None` on the CPU.
pub fn memory_info(device: &Device) -> Result<Option<(usize, usize)>, String> {
    #[cfg(feature = "cuda")]
    if let Ok(d) = device.as_cuda_device() {
        cuda::trim(d)?;
        return d.cuda_stream().context().mem_get_info().map(Some).map_err(|e| format!("querying GPU memory: {e}"));
    }
    let _ = device;
    Ok(None)
}

/// The host memory a new allocation can take without swapping, as Linux reports it
/// (`MemAvailable` in /proc/meminfo); `None` elsewhere or where it cannot be read.
pub fn host_memory_available() -> Option<usize> {
    mem_available(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// `MemAvailable` of /proc/meminfo's text, in bytes.
fn mem_available(meminfo: &str) -> Option<usize> {
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let kib: usize = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

pub fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_available_memory_from_meminfo() {
        let text = "MemTotal:       24575912 kB\nMemFree:         1234567 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(mem_available(text), Some(20_000_000 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        assert!(host_memory_available().is_none_or(|b| b > 0));
    }

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse(), Ok(DeviceArg::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceArg::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceArg::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CUDA", "cuda0", ""] {
            assert!(bad.parse::<DeviceArg>().is_err(), "{bad:?}");
        }
        assert_eq!(DeviceArg::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn cpu_is_always_available() {
        assert!(select(Some(DeviceArg::Cpu)).unwrap().is_cpu());
        assert_eq!(memory_info(&Device::Cpu), Ok(None));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cpu_build_refuses_cuda_and_says_how_to_build_it() {
        let e = select(Some(DeviceArg::Cuda(0))).unwrap_err();
        assert!(e.starts_with("--device cuda:0") && e.contains("without CUDA support") && e.contains("scripts/build-cuda.sh"), "{e}");
        assert!(select(None).unwrap().is_cpu());
    }
}
