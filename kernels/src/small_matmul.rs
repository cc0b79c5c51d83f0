//! Matrix times a few vectors, `x (m, k) · w (n, k)ᵀ` for `m` up to [`MAX_ROWS`]: the dense
//! projections of a decode step of a few sequences on a GPU (`cuda/small_matmul.cu`), alone
//! or with the ops around them fused in ([`MatmulFusion`]: the norm before a projection,
//! SiLU-and-mul after gate/up, the residual add after o and down), so that a decoder layer of
//! a few rows is five launches instead of ten (with `qkv/matmul.rs`). Reading the weight is
//! the whole cost. The CPU loop here (in f64) is the reference; the model only takes these
//! ops on a GPU.
//!
//! The fused ones serve the model's fused decode path (models/src/decoder.rs, on by default on
//! a GPU, `QWEN_SERVE_CUDA_FUSED_DECODE=0` turns it off); the plain projections take cuBLAS
//! unless `QWEN_SERVE_CUDA_SMALL_MATMUL` says otherwise (`1` every one, `large` only weights of
//! at least [`LARGE_WEIGHT_BYTES`]). History: the first kernel (a warp per two rows, one load in
//! flight per lane) passed its test on an H200 but lost to cuBLAS there (2026-11-27, one
//! stream: 511 against 555 tok/s for the 0.5B shape, 176 against 178 for the 7B); cuBLAS itself
//! reads the 7B's gate/up at 2.7 TB/s on an H100, 81%. This kernel keeps eight loads in flight
//! per lane and adds the fusions; with them a decode step of one stream went from 822 to 1,049
//! tok/s (0.5B shape) and 213 to 224 (7B) on an H200 (2026-11-27).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

use crate::elem::Elem;

/// The most rows of `x` [`small_matmul`] takes.
pub const MAX_ROWS: usize = 8;

/// With `QWEN_SERVE_CUDA_SMALL_MATMUL=large`, the smallest weight [`small_matmul`] takes.
pub const LARGE_WEIGHT_BYTES: usize = 64 << 20;

/// What a small matmul does around `y = x · wᵀ`. `eps` and `weight` are an RMSNorm's, `weight`
/// `(k)` in x's dtype.
#[derive(Clone, Copy, Debug)]
pub enum MatmulFusion<'a> {
    /// `y`.
    None,
    /// `rms_norm(x) · wᵀ`.
    Norm { weight: &'a Tensor, eps: f32 },
    /// [`MatmulFusion::Norm`] returned in f32 (logits).
    NormF32 { weight: &'a Tensor, eps: f32 },
    /// `w` `(2n, k)` is gate over up: `silu(g) * u` `(m, n)` with `g`, `u` the norm's rows times
    /// rows `j` and `n + j`, each rounded to the dtype first.
    GateUp { weight: &'a Tensor, eps: f32 },
    /// `residual + y`, `residual` `(m, n)`, `y` rounded to the dtype before the add.
    Residual(&'a Tensor),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Plain,
    Norm,
    NormF32,
    GateUp,
    Residual,
}

impl Mode {
    /// The kernel's name for it (`small_matmul_<mode>_m<M>_<dtype>`), also in errors.
    fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Norm => "norm",
            Self::NormF32 => "norm_f32",
            Self::GateUp => "gate_up",
            Self::Residual => "residual",
        }
    }

    fn normed(self) -> bool {
        matches!(self, Self::Norm | Self::NormF32 | Self::GateUp)
    }
}

/// Whether [`small_matmul`] runs `x · wᵀ` on the GPU: [`small_matmul_fits`], and
/// `QWEN_SERVE_CUDA_SMALL_MATMUL=1`, or `=large` and `w` at least [`LARGE_WEIGHT_BYTES`].
/// Otherwise the caller's general matmul is the one to use.
pub fn small_matmul_applies(x: &Tensor, w: &Tensor) -> bool {
    let wanted = match policy() {
        Policy::Off => false,
        Policy::All => true,
        Policy::Large => w.elem_count() * w.dtype().size_in_bytes() >= LARGE_WEIGHT_BYTES,
    };
    wanted && x.device().is_cuda() && small_matmul_fits(x, w)
}

/// Whether the kernels take these operands: `x` `(m, k)` with `1 <= m <= MAX_ROWS`, contiguous,
/// on `w`'s device, and `w` as [`small_matmul_weight_fits`] says for x's dtype.
pub fn small_matmul_fits(x: &Tensor, w: &Tensor) -> bool {
    let (Ok((m, k)), Ok((_, k2))) = (x.dims2(), w.dims2()) else { return false };
    small_matmul_weight_fits(w, x.dtype()) && x.device().same_device(w.device()) && (1..=MAX_ROWS).contains(&m) && k == k2 && x.is_contiguous()
}

/// Whether the kernels take `w` `(n, k)` as a weight for inputs of `dtype`: of that dtype (f32,
/// bf16, f16), contiguous, rows a whole number of 16-byte vectors.
pub fn small_matmul_weight_fits(w: &Tensor, dtype: DType) -> bool {
    let Ok((_, k)) = w.dims2() else { return false };
    w.dtype() == dtype && matches!(dtype, DType::F32 | DType::BF16 | DType::F16) && k % (16 / dtype.size_in_bytes()) == 0 && w.is_contiguous()
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
    small_matmul_fused(x, w, MatmulFusion::None)
}

/// [`small_matmul`] with `fusion` around it.
pub fn small_matmul_fused(x: &Tensor, w: &Tensor, fusion: MatmulFusion) -> Result<Tensor> {
    let ((m, k), (n, k2)) = (x.dims2()?, w.dims2()?);
    if k != k2 || x.dtype() != w.dtype() || !(1..=MAX_ROWS).contains(&m) {
        candle_core::bail!("small_matmul: x {:?} {:?}, w {:?} {:?}: want (m <= {MAX_ROWS}, k) and (n, k) of one dtype", x.dims(), x.dtype(), w.dims(), w.dtype());
    }
    // The kernels read rows of x contiguously; a no-op when they already are.
    let x = &x.contiguous()?;
    let (mode, eps, aux) = match fusion {
        MatmulFusion::None => return x.apply_op2_no_bwd(w, &SmallMatmul { mode: Mode::Plain, eps: 0.0 }),
        MatmulFusion::Norm { weight, eps } => (Mode::Norm, eps, weight),
        MatmulFusion::NormF32 { weight, eps } => (Mode::NormF32, eps, weight),
        MatmulFusion::GateUp { weight, eps } => (Mode::GateUp, eps, weight),
        MatmulFusion::Residual(residual) => (Mode::Residual, 0.0, residual),
    };
    let want: &[usize] = match mode {
        Mode::Residual => &[m, n],
        _ => &[k],
    };
    if aux.dims() != want || aux.dtype() != x.dtype() {
        candle_core::bail!("small_matmul {}: {:?} {:?}, want {want:?} {:?}", mode.name(), aux.dims(), aux.dtype(), x.dtype());
    }
    if mode == Mode::GateUp && n % 2 != 0 {
        candle_core::bail!("small_matmul gate_up: w has {n} rows, not gate over up");
    }
    // The op's third operand is contiguous for the kernel; a no-op when it already is.
    x.apply_op3_no_bwd(w, &aux.contiguous()?, &SmallMatmul { mode, eps })
}

struct SmallMatmul {
    mode: Mode,
    eps: f32,
}

impl SmallMatmul {
    /// Output `(m, n)` for `w` `(rows, k)`, and its dtype for inputs of `dtype`.
    fn output(&self, x_l: &Layout, w_l: &Layout, dtype: DType) -> ((usize, usize), DType) {
        let rows = w_l.dims()[0];
        let n = if self.mode == Mode::GateUp { rows / 2 } else { rows };
        let dtype = if self.mode == Mode::NormF32 { DType::F32 } else { dtype };
        ((x_l.dims()[0], n), dtype)
    }

    fn cpu(&self, x: &CpuStorage, x_l: &Layout, w: &CpuStorage, w_l: &Layout, aux: Option<(&CpuStorage, &Layout)>) -> Result<(CpuStorage, Shape)> {
        let (shape, out_dtype) = self.output(x_l, w_l, x.dtype());
        macro_rules! run {
            ($variant:ident, $x:expr) => {{
                let CpuStorage::$variant(w) = w else { candle_core::bail!("small_matmul: x and w differ in dtype") };
                let aux = match aux {
                    Some((CpuStorage::$variant(a), l)) => Some(contiguous(a, l)?),
                    Some(_) => candle_core::bail!("small_matmul: the third operand's dtype differs"),
                    None => None,
                };
                let out = self.reference(contiguous($x, x_l)?, shape, contiguous(w, w_l)?, aux);
                if out_dtype == DType::F32 {
                    CpuStorage::F32(out.into_iter().map(|v| v as f32).collect())
                } else {
                    CpuStorage::$variant(out.into_iter().map(|v| Elem::from_f32(v as f32)).collect())
                }
            }};
        }
        let out = match x {
            CpuStorage::F32(x) => run!(F32, x),
            CpuStorage::BF16(x) => run!(BF16, x),
            CpuStorage::F16(x) => run!(F16, x),
            _ => candle_core::bail!("small_matmul: unsupported dtype {:?} (f32, bf16, f16)", x.dtype()),
        };
        Ok((out, shape.into()))
    }

    /// The loop in f64, rounding to `T` where the kernel does.
    fn reference<T: Elem>(&self, x: &[T], (m, n): (usize, usize), w: &[T], aux: Option<&[T]>) -> Vec<f64> {
        let k = x.len() / m;
        let f = |v: &T| v.to_f32() as f64;
        let round = |v: f64| T::from_f32(v as f32).to_f32() as f64;
        let mut out = Vec::with_capacity(m * n);
        for i in 0..m {
            let xi = &x[i * k..][..k];
            let (inv_rms, g) = match (self.mode.normed(), aux) {
                (true, Some(g)) => (1.0 / (xi.iter().map(|v| f(v) * f(v)).sum::<f64>() / k as f64 + self.eps as f64).sqrt(), Some(g)),
                _ => (1.0, None),
            };
            let dot = |row: usize| {
                let wr = &w[row * k..][..k];
                let sum: f64 = match g {
                    Some(g) => xi.iter().zip(g).zip(wr).map(|((a, b), c)| f(a) * f(b) * f(c)).sum(),
                    None => xi.iter().zip(wr).map(|(a, c)| f(a) * f(c)).sum(),
                };
                sum * inv_rms
            };
            for j in 0..n {
                out.push(match self.mode {
                    Mode::GateUp => {
                        let (gate, up) = (round(dot(j)), round(dot(n + j)));
                        gate / (1.0 + (-gate).exp()) * up
                    }
                    Mode::Residual => round(dot(j)) + aux.map_or(0.0, |r| f(&r[i * n + j])),
                    _ => dot(j),
                });
            }
        }
        out
    }
}

fn contiguous<'a, T>(s: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&s[start..end]),
        None => candle_core::bail!("small_matmul: operands must be contiguous"),
    }
}

impl CustomOp2 for SmallMatmul {
    fn name(&self) -> &'static str {
        "small-matmul"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_l: &Layout, w: &CpuStorage, w_l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.cpu(x, x_l, w, w_l, None)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, x: &candle_core::CudaStorage, x_l: &Layout, w: &candle_core::CudaStorage, w_l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward(self, x, x_l, w, w_l, None)
    }
}

impl CustomOp3 for SmallMatmul {
    fn name(&self) -> &'static str {
        "small-matmul-fused"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_l: &Layout, w: &CpuStorage, w_l: &Layout, a: &CpuStorage, a_l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.cpu(x, x_l, w, w_l, Some((a, a_l)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_l: &Layout,
        w: &candle_core::CudaStorage,
        w_l: &Layout,
        a: &candle_core::CudaStorage,
        a_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward(self, x, x_l, w, w_l, Some((a, a_l)))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, DType, Layout, Result, Shape};

    use super::SmallMatmul;
    use crate::cuda::{self, kernel_name, load, CudaElem};

    /// Warps per block (`WARPS` in the .cu); a warp computes one output at a time, and warps
    /// stride over the outputs past what the resident blocks cover.
    const SMALL_MATMUL_WARPS: usize = 4;

    /// The op's operands: x, w and the fusion's third one.
    struct Operands<'a> {
        x: &'a CudaStorage,
        x_l: &'a Layout,
        w: &'a CudaStorage,
        w_l: &'a Layout,
        aux: Option<(&'a CudaStorage, &'a Layout)>,
    }

    pub(super) fn forward(
        op: &SmallMatmul,
        x: &CudaStorage,
        x_l: &Layout,
        w: &CudaStorage,
        w_l: &Layout,
        aux: Option<(&CudaStorage, &Layout)>,
    ) -> Result<(CudaStorage, Shape)> {
        use half::{bf16, f16};
        let (shape, out_dtype) = op.output(x_l, w_l, x.dtype());
        let ops = Operands { x, x_l, w, w_l, aux };
        let storage = match (x.dtype(), out_dtype) {
            (DType::F32, _) => launch::<f32, f32>(op, &ops)?,
            (DType::BF16, DType::F32) => launch::<bf16, f32>(op, &ops)?,
            (DType::BF16, _) => launch::<bf16, bf16>(op, &ops)?,
            (DType::F16, DType::F32) => launch::<f16, f32>(op, &ops)?,
            (DType::F16, _) => launch::<f16, f16>(op, &ops)?,
            (dtype, _) => candle_core::bail!("small_matmul: unsupported dtype {dtype:?} (f32, bf16, f16)"),
        };
        Ok((storage, shape.into()))
    }

    fn launch<T: CudaElem, O: CudaElem>(op: &SmallMatmul, ops: &Operands) -> Result<CudaStorage> {
        let Operands { x, x_l, w, w_l, aux } = *ops;
        let ((m, k), (_, n)) = (x_l.shape().dims2()?, op.output(x_l, w_l, x.dtype()).0);
        if k * std::mem::size_of::<T>() % 16 != 0 {
            candle_core::bail!("small_matmul: rows of {k} elements are not whole 16-byte vectors");
        }
        let dev = x.device();
        let xs = cuda::aligned_input::<T>(x, x_l, "small_matmul: x")?;
        let ws = cuda::aligned_input::<T>(w, w_l, "small_matmul: w")?;
        // The norm's weight is read 16 bytes at a time, the residual one element at a time.
        let aux = match aux {
            Some((a, a_l)) if op.mode.normed() => Some(cuda::aligned_input::<T>(a, a_l, "small_matmul: the norm's weight")?),
            Some((a, a_l)) => Some(cuda::input::<T>(a, a_l, "small_matmul: the residual")?),
            None => None,
        };
        let mut out = cuda::output::<O>(dev, m * n)?;
        if n == 0 {
            return Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()));
        }
        let padded = m.next_power_of_two();
        let func = load!(dev, cuda::SMALL_MATMUL, kernel_name::<T>(&format!("small_matmul_{}_m{padded}", op.mode.name())))?;
        let (m_arg, n_arg, k_arg) = (m as i32, n as i32, k as i32);
        let mut b = func.builder();
        // The plain kernel does not read its third operand: x stands in.
        b.arg(&xs).arg(&ws).arg(aux.as_ref().unwrap_or(&xs)).arg(&mut out).arg(&m_arg).arg(&n_arg).arg(&k_arg).arg(&op.eps);
        let threads = 32 * SMALL_MATMUL_WARPS as u32;
        let blocks = cuda::resident_blocks(dev, &func, threads, n.div_ceil(SMALL_MATMUL_WARPS))?;
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: arguments match `small_matmul_<mode>_m<M>_<dtype>` (M = m rounded up to a power
        // of two, at most 8: checked by the caller); x holds m * k and w n * k elements (2n * k
        // for gate_up), both contiguous and 16-byte aligned, k a whole number of vectors;
        // the third operand (k) or (m, n) elements as the mode reads it (checked by the caller).
        unsafe { b.launch(cfg) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn the_reference_matches_candles_matmul() {
        let x = Tensor::randn(0f32, 1., (3, 40), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1., (17, 40), &Device::Cpu).unwrap();
        let want = x.matmul(&w.t().unwrap()).unwrap();
        let got = small_matmul(&x, &w).unwrap();
        assert!(max_diff(&got, &want) < 1e-4);
        assert!(!small_matmul_applies(&x, &w), "a CPU tensor goes to the general matmul");
        assert!(small_matmul(&Tensor::zeros((9, 40), DType::F32, &Device::Cpu).unwrap(), &w).is_err());
    }

    /// Each fusion is the unfused ops it replaces (candle's and ours), in f32.
    #[test]
    fn each_fusion_matches_the_ops_it_replaces() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (3, 40), &dev).unwrap();
        let w = Tensor::randn(0f32, 1., (18, 40), &dev).unwrap();
        let g = Tensor::randn(1f32, 0.2, 40, &dev).unwrap();
        let r = Tensor::randn(0f32, 1., (3, 18), &dev).unwrap();
        let normed = crate::rms_norm(&x, &g, 1e-6).unwrap();
        let y = normed.matmul(&w.t().unwrap()).unwrap();
        let norm = small_matmul_fused(&x, &w, MatmulFusion::Norm { weight: &g, eps: 1e-6 }).unwrap();
        assert!(max_diff(&norm, &y) < 1e-4);
        let gate_up = small_matmul_fused(&x, &w, MatmulFusion::GateUp { weight: &g, eps: 1e-6 }).unwrap();
        let want = crate::silu_mul(&y.narrow(1, 0, 9).unwrap(), &y.narrow(1, 9, 9).unwrap()).unwrap();
        assert_eq!(gate_up.dims(), &[3, 9]);
        assert!(max_diff(&gate_up, &want) < 1e-4);
        let residual = small_matmul_fused(&x, &w, MatmulFusion::Residual(&r)).unwrap();
        assert!(max_diff(&residual, &(x.matmul(&w.t().unwrap()).unwrap() + &r).unwrap()) < 1e-4);
        // bf16 inputs, f32 logits.
        let (xb, wb, gb) = (x.to_dtype(DType::BF16).unwrap(), w.to_dtype(DType::BF16).unwrap(), g.to_dtype(DType::BF16).unwrap());
        let logits = small_matmul_fused(&xb, &wb, MatmulFusion::NormF32 { weight: &gb, eps: 1e-6 }).unwrap();
        assert_eq!(logits.dtype(), DType::F32);
        assert!(max_diff(&logits, &y) < 0.1);
        // Bad operands are errors naming the fusion.
        let err = small_matmul_fused(&x, &w, MatmulFusion::Residual(&g)).unwrap_err().to_string();
        assert!(err.contains("residual"), "{err}");
        let odd = Tensor::randn(0f32, 1., (17, 40), &dev).unwrap();
        assert!(small_matmul_fused(&x, &odd, MatmulFusion::GateUp { weight: &g, eps: 1e-6 }).is_err());
    }
}
