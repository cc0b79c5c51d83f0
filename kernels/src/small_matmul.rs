//! Matrix times a few vectors, `x (m, k) · w (n, k)ᵀ` for `m` up to [`MAX_ROWS`]: the dense
//! projections of a decode step of a few sequences on a GPU (`cuda/small_matmul.cu`). There
//! reading the weight is the whole cost, and cuBLAS's general kernels read it at well under the
//! memory's rate at these shapes (on an H200, 2026-11-27: a 7B decode step's matmuls ran at
//! ~50-80% of the copy bandwidth, the small ones lowest). The CPU loop here (in f64) is the
//! reference.
//!
//! Off unless `QWEN_SERVE_CUDA_SMALL_MATMUL` says otherwise: its test passes on an H200 in
//! every dtype, but it did not pay there (2026-11-27, one stream: 511 against cuBLAS's 555
//! tok/s for the 0.5B shape, 176 against 178 for the 7B; on the 7B's gate/up it reads at ~4.2
//! TB/s, 88% of the memory's rate, on the small matrices it is slower). On an H100 cuBLAS reads
//! the 7B's gate/up at 2.7 TB/s, 81% (2026-11-27), so `=large` (only weights of at least
//! [`LARGE_WEIGHT_BYTES`]: a 7B's gate/up and down, no 0.5B matrix) is there to be measured
//! against it; `=1` takes every dense projection.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use crate::elem::Elem;

/// The most rows of `x` [`small_matmul`] takes.
pub const MAX_ROWS: usize = 8;

/// With `QWEN_SERVE_CUDA_SMALL_MATMUL=large`, the smallest weight [`small_matmul`] takes.
pub const LARGE_WEIGHT_BYTES: usize = 64 << 20;

/// Whether [`small_matmul`] runs `x · wᵀ` on the GPU: a CUDA build, `x` `(m, k)` with
/// `1 <= m <= MAX_ROWS` and `w` `(n, k)` on one CUDA device, of one dtype (f32, bf16, f16), both
/// contiguous, rows a whole number of 16-byte vectors; and `QWEN_SERVE_CUDA_SMALL_MATMUL=1`,
/// or `=large` and `w` at least [`LARGE_WEIGHT_BYTES`]. Otherwise the caller's general matmul
/// is the one to use.
pub fn small_matmul_applies(x: &Tensor, w: &Tensor) -> bool {
    let (Ok((m, k)), Ok((_, k2))) = (x.dims2(), w.dims2()) else { return false };
    let vector = 16 / x.dtype().size_in_bytes().max(1);
    let wanted = match policy() {
        Policy::Off => false,
        Policy::All => true,
        Policy::Large => w.elem_count() * w.dtype().size_in_bytes() >= LARGE_WEIGHT_BYTES,
    };
    wanted
        && x.device().is_cuda()
        && x.device().same_device(w.device())
        && x.dtype() == w.dtype()
        && matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16)
        && (1..=MAX_ROWS).contains(&m)
        && k == k2
        && k % vector == 0
        && x.is_contiguous()
        && w.is_contiguous()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Policy {
    Off,
    All,
    Large,
}

/// `QWEN_SERVE_CUDA_SMALL_MATMUL`: `1` every dense projection, `large` the large weights,
/// anything else (or unset, or a CPU-only build) none.
fn policy() -> Policy {
    static POLICY: std::sync::OnceLock<Policy> = std::sync::OnceLock::new();
    *POLICY.get_or_init(|| match std::env::var("QWEN_SERVE_CUDA_SMALL_MATMUL").as_deref() {
        Ok("1") if cfg!(feature = "cuda") => Policy::All,
        Ok("large") if cfg!(feature = "cuda") => Policy::Large,
        _ => Policy::Off,
    })
}

/// `x (m, k) · w (n, k)ᵀ` -> `(m, n)` in their dtype, for `m <= MAX_ROWS`: on a GPU accumulated
/// in f32, each output's sum in the same order whatever `m` is; on the CPU in f64.
pub fn small_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let ((m, k), (_, k2)) = (x.dims2()?, w.dims2()?);
    if k != k2 || x.dtype() != w.dtype() || !(1..=MAX_ROWS).contains(&m) {
        candle_core::bail!("small_matmul: x {:?} {:?}, w {:?} {:?}: want (m <= {MAX_ROWS}, k) and (n, k) of one dtype", x.dims(), x.dtype(), w.dims(), w.dtype());
    }
    x.apply_op2_no_bwd(w, &SmallMatmul)
}

struct SmallMatmul;

fn reference<T: Elem>(x: &[T], x_l: &Layout, w: &[T], w_l: &Layout) -> Result<Vec<T>> {
    let (Some((x0, x1)), Some((w0, w1))) = (x_l.contiguous_offsets(), w_l.contiguous_offsets()) else {
        candle_core::bail!("small_matmul: x and w must be contiguous");
    };
    let ((m, k), (n, _)) = (x_l.shape().dims2()?, w_l.shape().dims2()?);
    let (x, w) = (&x[x0..x1], &w[w0..w1]);
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let dot = x[i * k..][..k].iter().zip(&w[j * k..][..k]).map(|(a, b)| a.to_f32() as f64 * b.to_f32() as f64).sum::<f64>();
            out.push(T::from_f32(dot as f32));
        }
    }
    Ok(out)
}

impl CustomOp2 for SmallMatmul {
    fn name(&self) -> &'static str {
        "small-matmul"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_l: &Layout, w: &CpuStorage, w_l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match (x, w) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => CpuStorage::F32(reference(x, x_l, w, w_l)?),
            (CpuStorage::BF16(x), CpuStorage::BF16(w)) => CpuStorage::BF16(reference(x, x_l, w, w_l)?),
            (CpuStorage::F16(x), CpuStorage::F16(w)) => CpuStorage::F16(reference(x, x_l, w, w_l)?),
            _ => candle_core::bail!("small_matmul: unsupported dtypes {:?}, {:?} (f32, bf16, f16, alike)", x.dtype(), w.dtype()),
        };
        Ok((out, (x_l.dims()[0], w_l.dims()[0]).into()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, x: &candle_core::CudaStorage, x_l: &Layout, w: &candle_core::CudaStorage, w_l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        use half::{bf16, f16};
        let storage = match x.dtype() {
            DType::F32 => cuda::launch::<f32>(x, x_l, w, w_l)?,
            DType::BF16 => cuda::launch::<bf16>(x, x_l, w, w_l)?,
            DType::F16 => cuda::launch::<f16>(x, x_l, w, w_l)?,
            dtype => candle_core::bail!("small_matmul: unsupported dtype {dtype:?} (f32, bf16, f16)"),
        };
        Ok((storage, (x_l.dims()[0], w_l.dims()[0]).into()))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, Layout, Result};

    use crate::cuda::{self, kernel_name, load, CudaElem};

    /// Warps per block and rows of `w` per warp (`WARPS`, `R` in the .cu).
    const SMALL_MATMUL_WARPS: usize = 4;
    const ROWS_PER_WARP: usize = 2;

    pub(super) fn launch<T: CudaElem>(x: &CudaStorage, x_l: &Layout, w: &CudaStorage, w_l: &Layout) -> Result<CudaStorage> {
        let ((m, k), (n, _)) = (x_l.shape().dims2()?, w_l.shape().dims2()?);
        if k * std::mem::size_of::<T>() % 16 != 0 {
            candle_core::bail!("small_matmul: rows of {k} elements are not whole 16-byte vectors");
        }
        let dev = x.device();
        let xs = cuda::aligned_input::<T>(x, x_l, "small_matmul: x")?;
        let ws = cuda::aligned_input::<T>(w, w_l, "small_matmul: w")?;
        let mut out = cuda::output::<T>(dev, m * n)?;
        if n == 0 {
            return Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()));
        }
        let func = load!(dev, cuda::SMALL_MATMUL, kernel_name::<T>(&format!("small_matmul_m{m}")))?;
        let (n_arg, k_arg) = (n as i32, k as i32);
        let mut b = func.builder();
        b.arg(&xs).arg(&ws).arg(&mut out).arg(&n_arg).arg(&k_arg);
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(SMALL_MATMUL_WARPS * ROWS_PER_WARP) as u32, 1, 1),
            block_dim: (32 * SMALL_MATMUL_WARPS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match `small_matmul_m*_*`; x holds m * k and w n * k elements, both
        // contiguous and 16-byte aligned, k a whole number of vectors (checked above).
        unsafe { b.launch(cfg) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_reference_matches_candles_matmul() {
        let x = Tensor::randn(0f32, 1., (3, 40), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1., (17, 40), &Device::Cpu).unwrap();
        let want = x.matmul(&w.t().unwrap()).unwrap();
        let got = small_matmul(&x, &w).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "{diff}");
        assert!(!small_matmul_applies(&x, &w), "a CPU tensor goes to the general matmul");
        assert!(small_matmul(&Tensor::zeros((9, 40), DType::F32, &Device::Cpu).unwrap(), &w).is_err());
    }
}
