//! The SwiGLU activation: `silu(gate) * up`.

use std::mem::MaybeUninit;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::exp::exp;
use super::filled;
use super::simd::{multiversion, rows_per_task, Simd};
use crate::elem::Elem;

/// `silu(gate) * up` with `silu(g) = g / (1 + e^-g)`; `gate`, `up`: `(num_rows, width)` of one
/// dtype. Each row must be contiguous, but rows may be any distance apart, so the two halves of
/// a fused gate-up projection (`narrow` of the last dimension) go in without a copy.
/// Returns a contiguous `(num_rows, width)`.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dims() != up.dims() || gate.dtype() != up.dtype() {
        candle_core::bail!("silu_mul: gate {:?} {:?} and up {:?} {:?} differ", gate.dims(), gate.dtype(), up.dims(), up.dtype());
    }
    gate.dims2()?;
    gate.apply_op2_no_bwd(up, &SiluMul)
}

struct SiluMul;

/// Offset of the first element and distance between rows of a `(rows, width)` layout whose rows
/// are contiguous.
fn rows(l: &Layout, what: &str) -> Result<(usize, usize)> {
    let (num_rows, width) = l.shape().dims2()?;
    let stride = l.stride();
    if width > 1 && stride[1] != 1 {
        candle_core::bail!("silu_mul: the rows of {what} must be contiguous");
    }
    Ok((l.start_offset(), if num_rows > 1 { stride[0] } else { width }))
}

fn run<T: Elem>(simd: Simd, gate: &[T], g_l: &Layout, up: &[T], u_l: &Layout) -> Result<Vec<T>> {
    let (num_rows, width) = g_l.shape().dims2()?;
    let ((g0, g_stride), (u0, u_stride)) = (rows(g_l, "gate")?, rows(u_l, "up")?);
    if num_rows * width == 0 {
        return Ok(Vec::new());
    }
    let block = |r0: usize, out: &mut [MaybeUninit<T>]| {
        let (gate, up) = (&gate[g0 + r0 * g_stride..], &up[u0 + r0 * u_stride..]);
        silu_mul_block(simd, gate, g_stride, up, u_stride, width, out);
    };
    // SAFETY: the blocks write every row they get, and the chunks cover `out`.
    Ok(unsafe {
        filled(num_rows * width, |out| match rows_per_task(num_rows, width) {
            None => block(0, out),
            Some(rows) => out.par_chunks_mut(rows * width).enumerate().for_each(|(i, out)| block(i * rows, out)),
        })
    })
}

multiversion! {
    /// Writes `out` `(rows, width)`; row `r` of gate (up) starts at `r * g_stride` (`u_stride`).
    fn silu_mul_block<T: Elem>(
        gate: &[T],
        g_stride: usize,
        up: &[T],
        u_stride: usize,
        width: usize,
        out: &mut [MaybeUninit<T>],
    ) => silu_mul_block_body;
}

#[inline(always)]
fn silu_mul_block_body<T: Elem>(gate: &[T], g_stride: usize, up: &[T], u_stride: usize, width: usize, out: &mut [MaybeUninit<T>]) {
    for (r, out) in out.chunks_exact_mut(width).enumerate() {
        let (g, u) = (&gate[r * g_stride..][..width], &up[r * u_stride..][..width]);
        for ((o, g), u) in out.iter_mut().zip(g).zip(u) {
            let g = g.to_f32();
            o.write(T::from_f32(g / (1.0 + exp(-g)) * u.to_f32()));
        }
    }
}

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(&self, g: &CpuStorage, g_l: &Layout, u: &CpuStorage, u_l: &Layout) -> Result<(CpuStorage, Shape)> {
        let simd = Simd::detected();
        let out = match (g, u) {
            (CpuStorage::F32(g), CpuStorage::F32(u)) => CpuStorage::F32(run(simd, g, g_l, u, u_l)?),
            (CpuStorage::BF16(g), CpuStorage::BF16(u)) => CpuStorage::BF16(run(simd, g, g_l, u, u_l)?),
            (CpuStorage::F16(g), CpuStorage::F16(u)) => CpuStorage::F16(run(simd, g, g_l, u, u_l)?),
            _ => candle_core::bail!("silu_mul: unsupported dtype {:?} (f32, bf16, f16)", g.dtype()),
        };
        Ok((out, g_l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, g: &candle_core::CudaStorage, g_l: &Layout, u: &candle_core::CudaStorage, u_l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((cuda::launch(g, g_l, u, u_l)?, g_l.shape().clone()))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, DType, Layout, Result};
    use half::{bf16, f16};

    use super::rows;
    use crate::cuda::{self, kernel_name, load, CudaElem};

    const THREADS: usize = 256;

    pub(super) fn launch(g: &CudaStorage, g_l: &Layout, u: &CudaStorage, u_l: &Layout) -> Result<CudaStorage> {
        match g.dtype() {
            DType::F32 => typed::<f32>(g, g_l, u, u_l),
            DType::BF16 => typed::<bf16>(g, g_l, u, u_l),
            DType::F16 => typed::<f16>(g, g_l, u, u_l),
            dtype => candle_core::bail!("silu_mul: unsupported dtype {dtype:?} (f32, bf16, f16)"),
        }
    }

    fn typed<T: CudaElem>(g: &CudaStorage, g_l: &Layout, u: &CudaStorage, u_l: &Layout) -> Result<CudaStorage> {
        let dev = g.device();
        let (num_rows, width) = g_l.shape().dims2()?;
        let mut out = cuda::output::<T>(dev, num_rows * width)?;
        if num_rows * width == 0 {
            return Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()));
        }
        let ((g0, g_stride), (u0, u_stride)) = (rows(g_l, "gate")?, rows(u_l, "up")?);
        let gate = g.as_cuda_slice::<T>()?.slice(g0..);
        let up = u.as_cuda_slice::<T>()?.slice(u0..);
        let func = load!(dev, cuda::SILU_MUL, kernel_name::<T>("silu_mul"))?;
        let ints = [width, g_stride, u_stride].map(|v| v as i32);
        let mut b = func.builder();
        b.arg(&gate).arg(&up).arg(&mut out);
        for v in &ints {
            b.arg(v);
        }
        let cfg = LaunchConfig {
            grid_dim: (num_rows as u32, width.div_ceil(THREADS) as u32, 1),
            block_dim: (THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match `silu_mul_*`; the layouts' rows lie inside their storages.
        unsafe { b.launch(cfg) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, WithDType};
    use half::{bf16, f16};

    use super::{run, silu_mul, Simd};
    use crate::elem::Elem;
    use crate::fused::test_data::{bits, randn};

    /// Largest `|a - b| / max(|b|, 1)`: products reach ~100, where a bf16 ulp is 0.5.
    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let (a, b) = (a.to_dtype(DType::F32).unwrap(), b.to_dtype(DType::F32).unwrap());
        let scale = b.abs().unwrap().maximum(1f32).unwrap();
        let d = ((a - &b).unwrap().abs().unwrap() / scale).unwrap();
        d.flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn matches_the_unfused_ops_on_separate_and_fused_projections() {
        let dev = Device::Cpu;
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 8e-3), (DType::F16, 1e-3)] {
            let gate_up = (Tensor::randn(0f32, 1., (6, 2 * 300), &dev).unwrap() * 3.0).unwrap().to_dtype(dtype).unwrap();
            let (gate, up) = (gate_up.narrow(1, 0, 300).unwrap(), gate_up.narrow(1, 300, 300).unwrap());
            let g = gate.to_dtype(DType::F32).unwrap();
            let expect = ((&g / (g.neg().unwrap().exp().unwrap() + 1.0).unwrap()).unwrap() * up.to_dtype(DType::F32).unwrap()).unwrap();
            // Halves of one fused projection (strided rows), then separate contiguous tensors.
            for (gate, up) in [(gate.clone(), up.clone()), (gate.contiguous().unwrap(), up.contiguous().unwrap())] {
                let got = silu_mul(&gate, &up).unwrap();
                assert!(got.is_contiguous());
                assert_eq!((got.dims(), got.dtype()), (&[6, 300][..], dtype));
                let err = max_rel_diff(&got, &expect);
                assert!(err < tol, "{dtype:?}: error {err}");
            }
        }
    }

    /// Every instruction set gives the scalar build's bits, for every dtype, strided rows, a
    /// width with a tail and a batch big enough to be split across threads; and a row's
    /// result is the same alone.
    #[test]
    fn every_instruction_set_and_batch_size_gives_the_same_bits() {
        fn check<T: Elem + WithDType>() {
            let (num_rows, width) = (100, 4867);
            let gate_up = Tensor::from_vec(randn::<T>(num_rows * 2 * width, 4.0), (num_rows, 2 * width), &Device::Cpu).unwrap();
            let (gate, up) = (gate_up.narrow(1, 0, width).unwrap(), gate_up.narrow(1, width, width).unwrap());
            let data = gate_up.flatten_all().unwrap().to_vec1::<T>().unwrap();
            let (g_l, u_l) = (gate.layout(), up.layout());
            let reference = bits(&run(Simd::Scalar, &data, g_l, &data, u_l).unwrap());
            for simd in Simd::available() {
                let got = bits(&run(simd, &data, g_l, &data, u_l).unwrap());
                assert!(got == reference, "{:?} {simd:?}", T::DTYPE);
            }
            let (g, u) = (gate.narrow(0, 77, 1).unwrap(), up.narrow(0, 77, 1).unwrap());
            let alone = bits(&run(Simd::detected(), &data, g.layout(), &data, u.layout()).unwrap());
            assert_eq!(alone, &reference[77 * width..78 * width], "{:?} row alone", T::DTYPE);
        }
        check::<f32>();
        check::<bf16>();
        check::<f16>();
    }

    #[test]
    fn rejects_mismatched_inputs() {
        let a = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap();
        assert!(silu_mul(&a, &b).is_err());
        // A row that is not contiguous.
        assert!(silu_mul(&a.t().unwrap(), &a.t().unwrap()).is_err());
    }
}
