//! Dense matrix products with bf16 or f16 weights (or f32, where rows must not depend on the
//! batch) on the CPU: `y = x W^T`.
//!
//! candle's CPU matmul in half precision is generic code, about ten times slower than in f32
//! (a 0.5B model: 675 ms per token in bf16 against 59 in f32 on the EPYC). This one reads each
//! weight once per block of activation rows, widens it to f32 (exactly) and does the arithmetic
//! in f32 fused multiply-adds.
//!
//! Arithmetic, which every instruction set gives bit for bit (one generic body compiled per
//! level): output `(r, j)` keeps [`LANES`] partial sums, lane `l` over the elements
//! `e = l (mod LANES)` in increasing order, `acc[l] = fma(w[j][e], x[r][e], acc[l])` from 0;
//! the lanes are then added in a fixed tree ([`sum16`]) and the sum rounded to the output type
//! once. A row's result depends on that row alone, not on the rest of the batch.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use crate::elem::Elem;
use crate::fused::simd::{sum16, Simd};

/// Partial sums per output (the reference's lanes).
const LANES: usize = 16;
/// Activation rows one pass over a weight row serves.
const ROWS: usize = 8;
/// Weight bytes a task keeps hot (in L2) while all activation rows pass over them.
const BLOCK_BYTES: usize = 256 * 1024;

/// `x` `(m, k)` times `w` `(n, k)` transposed, on the CPU: `w` bf16 or f16, `x` of the same
/// type (the result too) or f32 (weights stored in half precision, f32 activations; the
/// result f32). `w` and `x` both f32 work too, for a product whose rows do not depend on the
/// batch, which candle's f32 matmul does not promise (it picks its kernel by batch size).
pub fn half_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let ((m, k), (n, k2)) = (x.dims2()?, w.dims2()?);
    let types_fit = matches!(w.dtype(), DType::BF16 | DType::F16 | DType::F32) && (x.dtype() == w.dtype() || x.dtype() == DType::F32);
    if k != k2 || !types_fit {
        candle_core::bail!(
            "half_matmul: x {:?} {:?} and w {:?} {:?} must be (m, k) and (n, k), w bf16, f16 or f32, x of its type or f32",
            x.dims(),
            x.dtype(),
            w.dims(),
            w.dtype()
        );
    }
    if !x.device().is_cpu() || !w.device().is_cpu() {
        candle_core::bail!("half_matmul: CPU tensors only");
    }
    let x = x.contiguous()?;
    let w = w.contiguous()?;
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (candle_core::Storage::Cpu(xs), candle_core::Storage::Cpu(ws)) = (&*xs, &*ws) else {
        candle_core::bail!("half_matmul: CPU tensors only");
    };
    let simd = Simd::detected();
    let storage = match (xs, ws) {
        (CpuStorage::BF16(x), CpuStorage::BF16(w)) => CpuStorage::BF16(run(simd, &widen(slice(x, xl), k), slice(w, wl), m, n, k)),
        (CpuStorage::F16(x), CpuStorage::F16(w)) => CpuStorage::F16(run(simd, &widen(slice(x, xl), k), slice(w, wl), m, n, k)),
        (CpuStorage::F32(x), CpuStorage::BF16(w)) => CpuStorage::F32(run(simd, slice(x, xl), slice(w, wl), m, n, k)),
        (CpuStorage::F32(x), CpuStorage::F16(w)) => CpuStorage::F32(run(simd, slice(x, xl), slice(w, wl), m, n, k)),
        (CpuStorage::F32(x), CpuStorage::F32(w)) => CpuStorage::F32(run(simd, slice(x, xl), slice(w, wl), m, n, k)),
        _ => candle_core::bail!("half_matmul: unsupported types"),
    };
    Ok(Tensor::from_storage(candle_core::Storage::Cpu(storage), Shape::from((m, n)), candle_core::op::BackpropOp::none(), false))
}

/// Half-precision activation rows of `k` as f32 (exactly).
fn widen<T: Half>(x: &[T], k: usize) -> Vec<f32> {
    let mut xf = vec![0f32; x.len()];
    xf.par_chunks_mut(k.max(1)).zip(x.par_chunks(k.max(1))).for_each(|(d, s)| T::widen_slice(s, d));
    xf
}

fn slice<'a, T>(data: &'a [T], layout: &Layout) -> &'a [T] {
    let (start, end) = layout.contiguous_offsets().expect("made contiguous");
    &data[start..end]
}

/// Half-precision types the kernel widens to f32 (exactly), [`LANES`] values at a time.
pub(crate) trait Half: Elem {
    /// `src[..LANES]` widened; `F16C`: the caller runs with F16C enabled (AVX2 and AVX-512
    /// levels), so f16 may use its conversion instruction.
    fn widen<const F16C: bool>(src: &[Self]) -> [f32; LANES];
    /// All of `src` into `dst`, in bulk.
    fn widen_slice(src: &[Self], dst: &mut [f32]);
}

impl Half for bf16 {
    #[inline(always)]
    fn widen<const F16C: bool>(src: &[Self]) -> [f32; LANES] {
        let src: &[Self; LANES] = src[..LANES].try_into().expect("a full chunk");
        std::array::from_fn(|l| f32::from_bits((src[l].to_bits() as u32) << 16))
    }

    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
}

/// f32 "widens" to itself: the same arithmetic over f32 weights.
impl Half for f32 {
    #[inline(always)]
    fn widen<const F16C: bool>(src: &[Self]) -> [f32; LANES] {
        src[..LANES].try_into().expect("a full chunk")
    }

    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl Half for f16 {
    #[inline(always)]
    fn widen<const F16C: bool>(src: &[Self]) -> [f32; LANES] {
        let src: &[Self; LANES] = src[..LANES].try_into().expect("a full chunk");
        #[cfg(target_arch = "x86_64")]
        if F16C {
            use std::arch::x86_64::*;
            let mut out = [0f32; LANES];
            for c in 0..LANES / 8 {
                // SAFETY: F16C is enabled where F16C is true; eight f16 are read and eight
                // f32 written, inside both arrays.
                unsafe {
                    let h = _mm_loadu_si128(src.as_ptr().add(8 * c).cast());
                    _mm256_storeu_ps(out.as_mut_ptr().add(8 * c), _mm256_cvtph_ps(h));
                }
            }
            return out;
        }
        std::array::from_fn(|l| src[l].to_f32())
    }

    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
}

/// Raw output shared by the tasks, which write disjoint elements.
#[derive(Clone, Copy)]
struct Out<T>(*mut MaybeUninit<T>);
// SAFETY: each task writes only its own columns (weight rows) of the output.
unsafe impl<T> Send for Out<T> {}
unsafe impl<T> Sync for Out<T> {}

impl<T> Out<T> {
    /// Writes element `i`.
    ///
    /// # Safety
    /// `i` is inside the output and no other thread writes it.
    unsafe fn write(self, i: usize, v: T) {
        unsafe { (*self.0.add(i)).write(v) };
    }
}

/// The product with `simd`'s instructions: tasks take ranges of weight rows; within a task,
/// blocks of weight rows that fit [`BLOCK_BYTES`] meet every block of [`ROWS`] activation rows.
/// `xf`: the activations as f32; the output in `O`.
pub(crate) fn run<T: Half, O: Elem>(simd: Simd, xf: &[f32], w: &[T], m: usize, n: usize, k: usize) -> Vec<O> {
    let mut y: Vec<O> = Vec::with_capacity(m * n);
    let out = Out(y.spare_capacity_mut().as_mut_ptr());
    let threads = rayon::current_num_threads();
    let per_task = n.div_ceil(4 * threads).max(8);
    let block = (BLOCK_BYTES / (2 * k.max(1))).clamp(1, per_task);
    (0..n.div_ceil(per_task)).into_par_iter().for_each(|task| {
        let (j0, j1) = (task * per_task, ((task + 1) * per_task).min(n));
        for b0 in (j0..j1).step_by(block) {
            for r0 in (0..m).step_by(ROWS) {
                let rows = (m - r0).min(ROWS);
                for j in b0..(b0 + block).min(j1) {
                    let mut y = [0f32; ROWS];
                    dots(simd, &w[j * k..(j + 1) * k], &xf[r0 * k..(r0 + rows) * k], k, &mut y[..rows]);
                    for (i, &v) in y[..rows].iter().enumerate() {
                        // SAFETY: (r0 + i, j) is inside the m x n output and only this task
                        // writes column j.
                        unsafe { out.write((r0 + i) * n + j, O::from_f32(v)) };
                    }
                }
            }
        }
    });
    // SAFETY: the tasks cover every column j of every row.
    unsafe { y.set_len(m * n) };
    y
}

/// `y[i]` = weight row `w` times activation row `i` of `x` (`y.len()` rows of `k`).
fn dots<T: Half>(simd: Simd, w: &[T], x: &[f32], k: usize, y: &mut [f32]) {
    match y.len() {
        8 => dispatch::<T, 8>(simd, w, x, k, y),
        4..=7 => {
            let (a, b) = y.split_at_mut(4);
            dispatch::<T, 4>(simd, w, &x[..4 * k], k, a);
            dots(simd, w, &x[4 * k..], k, b);
        }
        2 | 3 => {
            let (a, b) = y.split_at_mut(2);
            dispatch::<T, 2>(simd, w, &x[..2 * k], k, a);
            dots(simd, w, &x[2 * k..], k, b);
        }
        1 => dispatch::<T, 1>(simd, w, x, k, y),
        _ => {}
    }
}

fn dispatch<T: Half, const R: usize>(simd: Simd, w: &[T], x: &[f32], k: usize, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma,f16c")]
        fn avx2<T: Half, const R: usize>(w: &[T], x: &[f32], k: usize, y: &mut [f32]) {
            dot_body::<T, R, true>(w, x, k, y)
        }
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
        fn avx512<T: Half, const R: usize>(w: &[T], x: &[f32], k: usize, y: &mut [f32]) {
            dot_body::<T, R, true>(w, x, k, y)
        }
        // SAFETY: `Simd` levels exist only where the CPU has those features.
        match simd {
            Simd::Avx2 => return unsafe { avx2::<T, R>(w, x, k, y) },
            Simd::Avx512 => return unsafe { avx512::<T, R>(w, x, k, y) },
            Simd::Scalar => {}
        }
    }
    dot_body::<T, R, false>(w, x, k, y)
}

/// The reference arithmetic (module docs) for `R` activation rows.
#[inline(always)]
fn dot_body<T: Half, const R: usize, const F16C: bool>(w: &[T], x: &[f32], k: usize, y: &mut [f32]) {
    let mut acc = [[0f32; LANES]; R];
    let full = k / LANES * LANES;
    for e0 in (0..full).step_by(LANES) {
        let wv = T::widen::<F16C>(&w[e0..e0 + LANES]);
        for (i, acc) in acc.iter_mut().enumerate() {
            let xv: &[f32; LANES] = x[i * k + e0..i * k + e0 + LANES].try_into().expect("a full chunk");
            for l in 0..LANES {
                acc[l] = wv[l].mul_add(xv[l], acc[l]);
            }
        }
    }
    for e in full..k {
        let we = w[e].to_f32();
        for (i, acc) in acc.iter_mut().enumerate() {
            acc[e - full] = we.mul_add(x[i * k + e], acc[e - full]);
        }
    }
    for (y, acc) in y.iter_mut().zip(&acc) {
        *y = sum16(acc);
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, WithDType};
    use half::{bf16, f16};

    use super::{half_matmul, run, Half, Simd};

    fn values(shape: (usize, usize), seed: f64) -> Tensor {
        let n = shape.0 * shape.1;
        let x = Tensor::arange(0u32, n as u32, &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
        x.affine(0.37 * seed, seed).unwrap().sin().unwrap().reshape(shape).unwrap()
    }

    /// Against candle's f32 product of the same (widened) values, for both types, batch sizes
    /// that use every row block, and widths with and without a tail.
    #[test]
    fn matches_the_f32_product() {
        for dtype in [DType::BF16, DType::F16] {
            for (m, n, k) in [(1, 37, 64), (3, 40, 100), (13, 9, 896), (8, 16, 33)] {
                let x = values((m, k), 1.0).to_dtype(dtype).unwrap();
                let w = values((n, k), 2.0).to_dtype(dtype).unwrap();
                let got = half_matmul(&x, &w).unwrap();
                assert_eq!((got.dims(), got.dtype()), (&[m, n][..], dtype));
                let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
                let want = f(&x).matmul(&f(&w).t().unwrap()).unwrap();
                let err = (f(&got) - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0);
                // One rounding of the output to 8 (bf16) or 11 (f16) significant bits.
                let tol = if dtype == DType::BF16 { 8e-3 } else { 1e-3 };
                assert!(err / scale < tol, "{dtype:?} {m}x{n}x{k}: error {err} of {scale}");
            }
        }
    }

    /// Every instruction set gives the scalar build's bits, and a row's result is the same
    /// alone as in a batch.
    #[test]
    fn every_level_and_batch_size_gives_the_same_bits() {
        fn check<T: Half + WithDType>() {
            let (m, n, k) = (11, 50, 300);
            let to = |t: Tensor| t.to_dtype(T::DTYPE).unwrap().flatten_all().unwrap().to_vec1::<T>().unwrap();
            let (x, w) = (to(values((m, k), 3.0)), to(values((n, k), 4.0)));
            let bits = |v: Vec<T>| v.iter().map(|b| b.to_f32().to_bits()).collect::<Vec<_>>();
            let xf = super::widen(&x, k);
            let reference = bits(run::<T, T>(Simd::Scalar, &xf, &w, m, n, k));
            for simd in Simd::available() {
                assert_eq!(bits(run::<T, T>(simd, &xf, &w, m, n, k)), reference, "{:?} {simd:?}", T::DTYPE);
            }
            let alone = bits(run::<T, T>(Simd::detected(), &xf[5 * k..6 * k], &w, 1, n, k));
            assert_eq!(alone, reference[5 * n..6 * n], "{:?} row 5 alone", T::DTYPE);
        }
        check::<bf16>();
        check::<f16>();
        check::<f32>();
    }

    /// f32 activations against half-precision weights: the f32 product of the same values.
    #[test]
    fn f32_activations_match_the_f32_product() {
        for dtype in [DType::BF16, DType::F16] {
            let (m, n, k) = (5, 24, 200);
            let x = values((m, k), 5.0);
            let w = values((n, k), 6.0).to_dtype(dtype).unwrap();
            let got = half_matmul(&x, &w).unwrap();
            assert_eq!(got.dtype(), DType::F32);
            let want = x.matmul(&w.to_dtype(DType::F32).unwrap().t().unwrap()).unwrap();
            let err = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(err < 1e-4, "{dtype:?}: error {err}");
        }
    }

    #[test]
    fn mismatched_inputs_are_errors() {
        let x = values((2, 8), 1.0).to_dtype(DType::BF16).unwrap();
        assert!(half_matmul(&x, &values((3, 9), 1.0).to_dtype(DType::BF16).unwrap()).is_err());
        assert!(half_matmul(&x, &values((3, 8), 1.0).to_dtype(DType::F16).unwrap()).is_err());
        assert!(half_matmul(&x, &values((3, 8), 1.0)).is_err(), "bf16 activations, f32 weights");
    }

    /// f32 weights: candle's f32 product up to the summation order.
    #[test]
    fn f32_weights_match_candles_product() {
        let (x, w) = (values((6, 130), 7.0), values((20, 130), 8.0));
        let want = x.matmul(&w.t().unwrap()).unwrap();
        let err = (half_matmul(&x, &w).unwrap() - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(err < 1e-4, "error {err}");
    }
}
