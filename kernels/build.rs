//! Compiles the CUDA kernels to PTX, only when the `cuda` feature is on (a CPU build needs no
//! nvcc). The PTX is embedded by `src/cuda.rs` and JIT-compiled by the driver when first loaded.
//!
//! `-arch=compute_XX` with XX from `CUDA_COMPUTE_CAP` (the variable candle's own kernels are
//! built by; default 90, Hopper: H100/H200, the GPUs the CUDA build was run on). The PTX also
//! JITs on later architectures; that of a given nvcc only on a driver at least as new, hence
//! nvcc 13.0.x for a 13.0 driver.

use std::path::PathBuf;
use std::process::Command;

/// Every kernel source; each becomes `$OUT_DIR/<name>.ptx`.
const KERNELS: &[&str] = &["paged_attention", "paged_attention_mma", "write_kv", "rms_norm", "rope", "silu_mul", "qkv", "small_matmul", "qkv_matmul", "argmax", "top_k", "sample"];
/// Headers the kernels include.
const HEADERS: &[&str] = &["cuda/common.cuh", "cuda/attention_tile.cuh", "cuda/small_matmul.cuh"];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for header in HEADERS {
        println!("cargo::rerun-if-changed={header}");
    }
    println!("cargo::rerun-if-env-changed=CUDA_HOME");
    println!("cargo::rerun-if-env-changed=NVCC");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    assert!(
        !cap.is_empty() && cap.bytes().all(|b| b.is_ascii_digit()),
        "CUDA_COMPUTE_CAP must be a compute capability like 90 or 80, got {cap:?}"
    );
    let arch = format!("-arch=compute_{cap}");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let nvcc = std::env::var("NVCC").map(PathBuf::from).unwrap_or_else(|_| match std::env::var_os("CUDA_HOME") {
        Some(home) => PathBuf::from(home).join("bin/nvcc"),
        None => PathBuf::from("nvcc"),
    });
    for name in KERNELS {
        let src = format!("cuda/{name}.cu");
        println!("cargo::rerun-if-changed={src}");
        let ptx = out_dir.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", &arch, "-O3", "-std=c++17", "--expt-relaxed-constexpr", "-Icuda"])
            .arg("-o")
            .arg(&ptx)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("could not run {} (set CUDA_HOME or NVCC; see scripts/build-cuda.sh): {e}", nvcc.display()));
        assert!(status.success(), "nvcc failed on {src}");
    }
}
