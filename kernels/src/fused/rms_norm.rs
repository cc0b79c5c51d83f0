//! RMSNorm, alone or after the residual add that precedes it in a pre-norm block.

use std::mem::MaybeUninit;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::simd::{multiversion, rows_per_task, Simd};
use super::{contiguous, filled};
use crate::elem::Elem;

/// `x / sqrt(mean(x^2) + eps) * weight` over the last dimension. `x`: `(..., hidden)`,
/// `weight`: `(hidden,)`, of x's dtype.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    check(x, weight, "rms_norm")?;
    x.contiguous()?.apply_op2_no_bwd(&weight.contiguous()?, &RmsNorm { eps })
}

/// `(rms_norm(x + residual), x + residual)` in one pass: a pre-norm block's residual-stream
/// update and the next norm. The sum is rounded to the dtype before it is normalised, exactly
/// as the unfused `rms_norm(&(x + residual)?, ..)` would.
pub fn add_rms_norm(x: &Tensor, residual: &Tensor, weight: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    check(x, weight, "add_rms_norm")?;
    if residual.shape() != x.shape() || residual.dtype() != x.dtype() {
        candle_core::bail!("add_rms_norm: residual {:?} {:?} differs from x {:?} {:?}", residual.shape(), residual.dtype(), x.shape(), x.dtype());
    }
    // (2, ..): the normed rows, then the sums; both halves are contiguous views.
    let both = x.contiguous()?.apply_op3_no_bwd(&residual.contiguous()?, &weight.contiguous()?, &AddRmsNorm { eps })?;
    Ok((both.get(0)?, both.get(1)?))
}

fn check(x: &Tensor, weight: &Tensor, op: &str) -> Result<()> {
    let hidden = x.dims().last().copied().unwrap_or(0);
    if weight.dims() != [hidden] || weight.dtype() != x.dtype() {
        candle_core::bail!("{op}: weight {:?} {:?} does not fit x {:?} {:?}", weight.dims(), weight.dtype(), x.dims(), x.dtype());
    }
    Ok(())
}

struct RmsNorm {
    eps: f32,
}

struct AddRmsNorm {
    eps: f32,
}

/// Lanes of the sum-of-squares accumulator: one AVX-512 register, two AVX2 ones. Every
/// instruction set adds the same numbers in the same order.
const LANES: usize = 16;

/// `rms_norm` (`residual: None`) or `add_rms_norm` (normed rows, then the sums) of contiguous
/// `(num_rows, hidden)` data, with `simd`'s instructions.
fn norm_cpu<T: Elem>(simd: Simd, x: &[T], residual: Option<&[T]>, weight: &[T], eps: f32) -> Vec<T> {
    let n = x.len();
    let hidden = weight.len();
    let Some(rows) = rows_per_task(n / hidden.max(1), hidden) else {
        // SAFETY: the blocks write every normed row and every sum.
        return unsafe {
            filled(if residual.is_some() { 2 * n } else { n }, |out| match residual {
                None => norm_block(simd, x, weight, eps, out),
                Some(r) => {
                    let (out, sums) = out.split_at_mut(n);
                    add_norm_block(simd, x, r, weight, eps, out, sums)
                }
            })
        };
    };
    let chunk = rows * hidden;
    // SAFETY: the chunks cover the outputs, and the blocks write every element of theirs.
    unsafe {
        filled(if residual.is_some() { 2 * n } else { n }, |out| match residual {
            None => out.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(out, x)| norm_block(simd, x, weight, eps, out)),
            Some(r) => {
                let (out, sums) = out.split_at_mut(n);
                (out.par_chunks_mut(chunk), sums.par_chunks_mut(chunk), x.par_chunks(chunk), r.par_chunks(chunk))
                    .into_par_iter()
                    .for_each(|(out, sums, x, r)| add_norm_block(simd, x, r, weight, eps, out, sums));
            }
        })
    }
}

multiversion! {
    /// Writes `out` = the normed rows of `x`.
    fn norm_block<T: Elem>(x: &[T], weight: &[T], eps: f32, out: &mut [MaybeUninit<T>]) => norm_block_body;
}

multiversion! {
    /// Writes `sums` = `x + residual` (rounded to T) and `out` = the normed sums.
    fn add_norm_block<T: Elem>(
        x: &[T],
        residual: &[T],
        weight: &[T],
        eps: f32,
        out: &mut [MaybeUninit<T>],
        sums: &mut [MaybeUninit<T>],
    ) => add_norm_block_body;
}

#[inline(always)]
fn norm_block_body<T: Elem>(x: &[T], weight: &[T], eps: f32, out: &mut [MaybeUninit<T>]) {
    let hidden = weight.len();
    for (x, out) in x.chunks_exact(hidden).zip(out.chunks_exact_mut(hidden)) {
        let (chunks, tail) = x.as_chunks::<LANES>();
        let mut acc = [0f32; LANES];
        for c in chunks {
            for k in 0..LANES {
                acc[k] += c[k].to_f32() * c[k].to_f32();
            }
        }
        for (a, v) in acc.iter_mut().zip(tail) {
            *a += v.to_f32() * v.to_f32();
        }
        let inv_rms = inv_rms(acc, hidden, eps);
        for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
            o.write(T::from_f32(v.to_f32() * inv_rms * w.to_f32()));
        }
    }
}

#[inline(always)]
fn add_norm_block_body<T: Elem>(x: &[T], residual: &[T], weight: &[T], eps: f32, out: &mut [MaybeUninit<T>], sums: &mut [MaybeUninit<T>]) {
    let hidden = weight.len();
    let rows = x.chunks_exact(hidden).zip(residual.chunks_exact(hidden));
    for ((x, r), (out, sums)) in rows.zip(out.chunks_exact_mut(hidden).zip(sums.chunks_exact_mut(hidden))) {
        let sum = |a: &T, b: &T| T::from_f32(a.to_f32() + b.to_f32());
        let ((xc, xt), (rc, rt)) = (x.as_chunks::<LANES>(), r.as_chunks::<LANES>());
        let (sc, st) = sums.as_chunks_mut::<LANES>();
        let mut acc = [0f32; LANES];
        for ((x, r), s) in xc.iter().zip(rc).zip(sc) {
            for k in 0..LANES {
                let v = sum(&x[k], &r[k]);
                s[k].write(v);
                acc[k] += v.to_f32() * v.to_f32();
            }
        }
        for (((a, x), r), s) in acc.iter_mut().zip(xt).zip(rt).zip(st) {
            let v = sum(x, r);
            s.write(v);
            *a += v.to_f32() * v.to_f32();
        }
        let inv_rms = inv_rms(acc, hidden, eps);
        // The sums again from x and residual (still in L1), not read back from `sums`.
        for (((o, x), r), w) in out.iter_mut().zip(x).zip(r).zip(weight) {
            o.write(T::from_f32(sum(x, r).to_f32() * inv_rms * w.to_f32()));
        }
    }
}

/// `1 / sqrt(mean + eps)` from the lanes' partial sums of squares, added pairwise.
#[inline(always)]
fn inv_rms(mut acc: [f32; LANES], hidden: usize, eps: f32) -> f32 {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for k in 0..width {
            acc[k] += acc[k + width];
        }
    }
    1.0 / (acc[0] / hidden as f32 + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_l: &Layout, w: &CpuStorage, w_l: &Layout) -> Result<(CpuStorage, Shape)> {
        fn run<T: Elem>(x: &[T], x_l: &Layout, w: &[T], w_l: &Layout, eps: f32) -> Result<Vec<T>> {
            let (x, w) = (contiguous(x, x_l, "rms_norm: x")?, contiguous(w, w_l, "rms_norm: weight")?);
            Ok(norm_cpu(Simd::detected(), x, None, w, eps))
        }
        let out = match (x, w) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => CpuStorage::F32(run(x, x_l, w, w_l, self.eps)?),
            (CpuStorage::BF16(x), CpuStorage::BF16(w)) => CpuStorage::BF16(run(x, x_l, w, w_l, self.eps)?),
            (CpuStorage::F16(x), CpuStorage::F16(w)) => CpuStorage::F16(run(x, x_l, w, w_l, self.eps)?),
            _ => candle_core::bail!("rms_norm: unsupported dtype {:?} (f32, bf16, f16)", x.dtype()),
        };
        Ok((out, x_l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, x: &candle_core::CudaStorage, x_l: &Layout, w: &candle_core::CudaStorage, w_l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((cuda::launch(x, x_l, None, w, w_l, self.eps)?, x_l.shape().clone()))
    }
}

impl CustomOp3 for AddRmsNorm {
    fn name(&self) -> &'static str {
        "add-rms-norm"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_l: &Layout, r: &CpuStorage, r_l: &Layout, w: &CpuStorage, w_l: &Layout) -> Result<(CpuStorage, Shape)> {
        fn run<T: Elem>(x: &[T], x_l: &Layout, r: &[T], r_l: &Layout, w: &[T], w_l: &Layout, eps: f32) -> Result<Vec<T>> {
            let x = contiguous(x, x_l, "add_rms_norm: x")?;
            let r = contiguous(r, r_l, "add_rms_norm: residual")?;
            let w = contiguous(w, w_l, "add_rms_norm: weight")?;
            Ok(norm_cpu(Simd::detected(), x, Some(r), w, eps))
        }
        let out = match (x, r, w) {
            (CpuStorage::F32(x), CpuStorage::F32(r), CpuStorage::F32(w)) => CpuStorage::F32(run(x, x_l, r, r_l, w, w_l, self.eps)?),
            (CpuStorage::BF16(x), CpuStorage::BF16(r), CpuStorage::BF16(w)) => CpuStorage::BF16(run(x, x_l, r, r_l, w, w_l, self.eps)?),
            (CpuStorage::F16(x), CpuStorage::F16(r), CpuStorage::F16(w)) => CpuStorage::F16(run(x, x_l, r, r_l, w, w_l, self.eps)?),
            _ => candle_core::bail!("add_rms_norm: unsupported dtype {:?} (f32, bf16, f16)", x.dtype()),
        };
        Ok((out, both_shape(x_l)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_l: &Layout,
        r: &candle_core::CudaStorage,
        r_l: &Layout,
        w: &candle_core::CudaStorage,
        w_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((cuda::launch(x, x_l, Some((r, r_l)), w, w_l, self.eps)?, both_shape(x_l)))
    }
}

/// `(2, ..x's dims)`.
fn both_shape(x_l: &Layout) -> Shape {
    let mut dims = vec![2];
    dims.extend_from_slice(x_l.dims());
    Shape::from(dims)
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, DType, Layout, Result};
    use half::{bf16, f16};

    use crate::cuda::{self, kernel_name, load, CudaElem};

    /// Normed rows, followed by the sums when there is a residual.
    pub(super) fn launch(x: &CudaStorage, x_l: &Layout, residual: Option<(&CudaStorage, &Layout)>, w: &CudaStorage, w_l: &Layout, eps: f32) -> Result<CudaStorage> {
        match x.dtype() {
            DType::F32 => typed::<f32>(x, x_l, residual, w, w_l, eps),
            DType::BF16 => typed::<bf16>(x, x_l, residual, w, w_l, eps),
            DType::F16 => typed::<f16>(x, x_l, residual, w, w_l, eps),
            dtype => candle_core::bail!("rms_norm: unsupported dtype {dtype:?} (f32, bf16, f16)"),
        }
    }

    fn typed<T: CudaElem>(x: &CudaStorage, x_l: &Layout, residual: Option<(&CudaStorage, &Layout)>, w: &CudaStorage, w_l: &Layout, eps: f32) -> Result<CudaStorage> {
        let dev = x.device();
        let n = x_l.shape().elem_count();
        let hidden = w_l.shape().elem_count();
        let num_rows = n / hidden.max(1);
        let x = cuda::input::<T>(x, x_l, "rms_norm: x")?;
        let w = cuda::input::<T>(w, w_l, "rms_norm: weight")?;
        let mut out = cuda::output::<T>(dev, if residual.is_some() { 2 * n } else { n })?;
        if num_rows == 0 {
            return Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()));
        }
        let func = load!(dev, cuda::RMS_NORM, kernel_name::<T>("rms_norm"))?;
        let (hidden_arg, null) = (hidden as i32, 0u64);
        // Up to 1024 threads, a multiple of 32, about four elements each.
        let threads = (hidden.div_ceil(4).next_multiple_of(32)).clamp(32, 1024) as u32;
        let cfg = LaunchConfig { grid_dim: (num_rows as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        match residual {
            None => {
                let mut b = func.builder();
                b.arg(&x).arg(&null).arg(&w).arg(&mut out).arg(&null).arg(&hidden_arg).arg(&eps);
                // SAFETY: arguments match `rms_norm_*` (null residual and sum_out).
                unsafe { b.launch(cfg) }.w()?;
            }
            Some((r, r_l)) => {
                let r = cuda::input::<T>(r, r_l, "add_rms_norm: residual")?;
                let (mut normed, mut sums) = out.split_at_mut(n);
                let mut b = func.builder();
                b.arg(&x).arg(&r).arg(&w).arg(&mut normed).arg(&mut sums).arg(&hidden_arg).arg(&eps);
                // SAFETY: arguments match `rms_norm_*`; both outputs hold n elements.
                unsafe { b.launch(cfg) }.w()?;
            }
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, WithDType, D};
    use half::{bf16, f16};

    use super::{add_rms_norm, norm_cpu, rms_norm, Simd};
    use crate::elem::Elem;
    use crate::fused::test_data::{bits, randn};

    /// The unfused composition in f32.
    fn naive(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
        let x = x.to_dtype(DType::F32).unwrap();
        let rms = (x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + eps).unwrap().sqrt().unwrap();
        x.broadcast_div(&rms).unwrap().broadcast_mul(&w.to_dtype(DType::F32).unwrap()).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap();
        d.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn matches_the_unfused_ops() {
        let dev = Device::Cpu;
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 3e-2), (DType::F16, 4e-3)] {
            let x = (Tensor::randn(0f32, 1., (5, 3, 896), &dev).unwrap() * 3.0).unwrap().to_dtype(dtype).unwrap();
            let r = Tensor::randn(0f32, 1., (5, 3, 896), &dev).unwrap().to_dtype(dtype).unwrap();
            let w = Tensor::randn(1f32, 0.2, 896, &dev).unwrap().to_dtype(dtype).unwrap();
            let got = rms_norm(&x, &w, 1e-6).unwrap();
            assert_eq!((got.dims(), got.dtype()), (x.dims(), dtype));
            let err = max_diff(&got, &naive(&x, &w, 1e-6));
            assert!(err < tol, "{dtype:?} rms_norm error {err}");

            let (normed, sum) = add_rms_norm(&x, &r, &w, 1e-6).unwrap();
            let expect_sum = (&x + &r).unwrap(); // rounded to dtype, like the fused op
            assert_eq!(max_diff(&sum, &expect_sum), 0.0, "{dtype:?} residual sum");
            let err = max_diff(&normed, &naive(&expect_sum, &w, 1e-6));
            assert!(err < tol, "{dtype:?} add_rms_norm error {err}");
        }
    }

    /// Every instruction set gives the scalar build's bits, for every dtype, a width with a
    /// tail (903 = 56 * 16 + 7) and a batch big enough to be split across threads; and a row's
    /// result is the same when it is normalised alone (batch invariance).
    #[test]
    fn every_instruction_set_and_batch_size_gives_the_same_bits() {
        fn check<T: Elem + WithDType>() {
            let (num_rows, hidden) = (300, 903);
            let x = randn::<T>(num_rows * hidden, 3.0);
            let r = randn::<T>(num_rows * hidden, 1.0);
            let w: Vec<T> = randn::<f32>(hidden, 0.2).into_iter().map(|v| T::from_f32(v + 1.0)).collect();
            let n = num_rows * hidden;
            for residual in [None, Some(&r[..])] {
                let reference = bits(&norm_cpu(Simd::Scalar, &x, residual, &w, 1e-6));
                for simd in Simd::available() {
                    let got = bits(&norm_cpu(simd, &x, residual, &w, 1e-6));
                    assert!(got == reference, "{:?} {simd:?} residual {}", T::DTYPE, residual.is_some());
                }
                let row = 123 * hidden..124 * hidden;
                let alone = bits(&norm_cpu(Simd::detected(), &x[row.clone()], residual.map(|r| &r[row.clone()]), &w, 1e-6));
                let (normed, sums) = alone.split_at(hidden);
                assert_eq!(normed, &reference[row.clone()], "{:?} normed row alone", T::DTYPE);
                if residual.is_some() {
                    assert_eq!(sums, &reference[n + row.start..n + row.end], "{:?} sum row alone", T::DTYPE);
                }
            }
        }
        check::<f32>();
        check::<bf16>();
        check::<f16>();
    }

    #[test]
    fn rejects_a_weight_of_the_wrong_size() {
        let x = Tensor::zeros((2, 8), DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        assert!(rms_norm(&x, &w, 1e-6).is_err());
    }
}
