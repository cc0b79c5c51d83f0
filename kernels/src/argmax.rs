//! The argmax of each row of the logits: the greedy token of each sequence, taken where the
//! logits are so that one id per row comes back from a GPU instead of a vocabulary-sized row.
//! `cuda/argmax.cu` on a GPU; the CPU loop here is its reference.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use crate::elem::Elem;

/// `(rows, vocab)` f32, bf16 or f16 -> `(rows,)` u32: each row's first index of its largest
/// value. NaN never wins, and a row whose first value is NaN gives 0 (what a scan from index 0
/// that keeps strictly larger values gives). Half-precision logits give their f32 copy's ids, so
/// a GPU's bf16 head output needs no cast first.
pub fn argmax_rows(logits: &Tensor) -> Result<Tensor> {
    let (_, vocab) = logits.dims2()?;
    // (The kernel's int indices step past the row's end by up to a block's width.)
    if !matches!(logits.dtype(), DType::F32 | DType::BF16 | DType::F16) || vocab == 0 || vocab > i32::MAX as usize / 2 {
        candle_core::bail!("argmax_rows: want (rows, 1..2^30) f32, bf16 or f16 logits, got {:?} {:?}", logits.dims(), logits.dtype());
    }
    logits.apply_op1_no_bwd(&ArgmaxRows)
}

struct ArgmaxRows;

pub(crate) fn reference<T: Elem>(row: &[T]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x.to_f32() > row[best].to_f32() {
            best = i;
        }
    }
    best as u32
}

impl CustomOp1 for ArgmaxRows {
    fn name(&self) -> &'static str {
        "argmax-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, vocab) = l.shape().dims2()?;
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("argmax_rows: the logits must be contiguous");
        };
        fn ids<T: Elem>(x: &[T], vocab: usize) -> Vec<u32> {
            x.chunks(vocab).map(reference).collect()
        }
        let ids = match s {
            CpuStorage::F32(x) => ids(&x[start..end], vocab),
            CpuStorage::BF16(x) => ids(&x[start..end], vocab),
            CpuStorage::F16(x) => ids(&x[start..end], vocab),
            _ => candle_core::bail!("argmax_rows: want f32, bf16 or f16 logits"),
        };
        Ok((CpuStorage::U32(ids), Shape::from(rows)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((cuda::launch(s, l)?, Shape::from(l.dims()[0])))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, DType, Layout, Result};
    use half::{bf16, f16};

    use crate::cuda::{self, kernel_name, load, CudaElem};

    /// Threads per block of `argmax_partial_*` (`THREADS` in the .cu).
    const ARGMAX_THREADS: u32 = 256;
    /// A row is cut into at most this many slices of at least `MIN_CHUNK` values, one block each.
    const MAX_PARTS: usize = 32;
    const MIN_CHUNK: usize = 4096;

    pub(super) fn launch(s: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
        match s.dtype() {
            DType::F32 => typed::<f32>(s, l),
            DType::BF16 => typed::<bf16>(s, l),
            DType::F16 => typed::<f16>(s, l),
            dtype => candle_core::bail!("argmax_rows: unsupported dtype {dtype:?} (f32, bf16, f16)"),
        }
    }

    fn typed<T: CudaElem>(s: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
        let (rows, vocab) = l.shape().dims2()?;
        let dev = s.device();
        let x = cuda::input::<T>(s, l, "argmax_rows: logits")?;
        let mut out = cuda::output::<u32>(dev, rows)?;
        if rows == 0 {
            return Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()));
        }
        let parts = vocab.div_ceil(MIN_CHUNK).clamp(1, MAX_PARTS);
        let chunk = vocab.div_ceil(parts);
        let mut part_v = cuda::output::<f32>(dev, rows * parts)?;
        let mut part_i = cuda::output::<i32>(dev, rows * parts)?;
        let (vocab_arg, chunk_arg, parts_arg) = (vocab as i32, chunk as i32, parts as i32);

        let func = load!(dev, cuda::ARGMAX, kernel_name::<T>("argmax_partial"))?;
        let mut b = func.builder();
        b.arg(&x).arg(&mut part_v).arg(&mut part_i).arg(&vocab_arg).arg(&chunk_arg);
        let cfg = LaunchConfig { grid_dim: (rows as u32, parts as u32, 1), block_dim: (ARGMAX_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: arguments match `argmax_partial_*`; x holds rows * vocab values, and the
        // partials rows * parts, each written by its block.
        unsafe { b.launch(cfg) }.w()?;

        let func = load!(dev, cuda::ARGMAX, kernel_name::<T>("argmax_final"))?;
        let mut b = func.builder();
        b.arg(&x).arg(&part_v).arg(&part_i).arg(&mut out).arg(&vocab_arg).arg(&parts_arg);
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: arguments match `argmax_final_*`; one id per row.
        unsafe { b.launch(cfg) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn first_index_of_the_largest_value() {
        let nan = f32::NAN;
        let rows = [
            vec![1., 3., 2., 3.],
            vec![nan, 5., 6., 1.],
            vec![0., nan, 6., 6.],
            vec![f32::NEG_INFINITY, f32::NEG_INFINITY, nan, f32::NEG_INFINITY],
            vec![-2., -1., f32::INFINITY, nan],
        ];
        let want = [1u32, 0, 2, 0, 2];
        let t = Tensor::new(rows.iter().flatten().copied().collect::<Vec<f32>>(), &Device::Cpu).unwrap().reshape((5, 4)).unwrap();
        assert_eq!(argmax_rows(&t).unwrap().to_vec1::<u32>().unwrap(), want);
        for dtype in [DType::BF16, DType::F16] {
            assert_eq!(argmax_rows(&t.to_dtype(dtype).unwrap()).unwrap().to_vec1::<u32>().unwrap(), want, "{dtype:?}");
        }
        assert!(argmax_rows(&t.to_dtype(DType::U32).unwrap()).is_err(), "float logits only");
    }
}
