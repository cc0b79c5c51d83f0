//! The best candidates of each row of logits: every value at least as large as the row's k-th
//! largest (all the ties at it too), so that a sampler needing only a row's top k gets those from
//! a GPU instead of a vocabulary-sized row. `cuda/top_k.cu` on a GPU; the CPU loop here is its
//! reference (the same set; the GPU lists it in no particular order).

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use crate::elem::Elem;

/// `(rows, vocab)` f32, bf16 or f16 logits and `(rows,)` u32 `ks` -> `(rows, 1 + 2 * cap)` u32:
/// per row the number of candidates, then up to `cap` of them as (id, f32 bits of the value).
/// The candidates are the values whose rank is at most the row's k (NaN and -inf never count),
/// with every value tied with the k-th; a row with fewer finite values gives them all, and a row
/// with k = 0 none. A count above `cap` means that only `cap` were listed: read the row whole.
pub fn top_k_candidates(logits: &Tensor, ks: &Tensor, cap: usize) -> Result<Tensor> {
    let (rows, vocab) = logits.dims2()?;
    // (The kernel's int indices step past the row's end by up to a block's loads.)
    if !matches!(logits.dtype(), DType::F32 | DType::BF16 | DType::F16) || vocab == 0 || vocab > i32::MAX as usize / 2 {
        candle_core::bail!("top_k_candidates: want (rows, 1..2^30) f32, bf16 or f16 logits, got {:?} {:?}", logits.dims(), logits.dtype());
    }
    if ks.dims() != [rows] || ks.dtype() != DType::U32 {
        candle_core::bail!("top_k_candidates: want one u32 k per row ({rows}), got {:?} {:?}", ks.dims(), ks.dtype());
    }
    if cap == 0 || cap > i32::MAX as usize / 2 {
        candle_core::bail!("top_k_candidates: cap {cap} out of range");
    }
    logits.contiguous()?.apply_op2_no_bwd(&ks.contiguous()?, &TopK { cap })
}

/// One row of [`top_k_candidates`]' output: its candidates sorted by id, or `None` where there
/// were more than the output could hold.
pub fn unpack_candidates(row: &[u32]) -> Option<Vec<(u32, f32)>> {
    let count = *row.first()? as usize;
    let pairs = row.get(1..1 + 2 * count)?;
    let mut out: Vec<(u32, f32)> = pairs.chunks_exact(2).map(|p| (p[0], f32::from_bits(p[1]))).collect();
    out.sort_unstable_by_key(|c| c.0);
    Some(out)
}

struct TopK {
    cap: usize,
}

/// Larger values give larger keys; -0.0 and +0.0 the same one (tied either way: greedy's
/// comparison makes them equal, the sampler's total order puts -0.0 first, and a tie keeps both).
fn key(v: f32) -> u32 {
    let u = (v + 0.0).to_bits();
    if u & 0x8000_0000 != 0 {
        !u
    } else {
        u | 0x8000_0000
    }
}

fn is_candidate(v: f32) -> bool {
    !v.is_nan() && v > f32::NEG_INFINITY
}

fn reference<T: Elem>(row: &[T], k: usize, out: &mut [u32]) {
    out.fill(0);
    if k == 0 {
        return;
    }
    let values: Vec<f32> = row.iter().map(|v| v.to_f32()).collect();
    let mut keys: Vec<u32> = values.iter().copied().filter(|&v| is_candidate(v)).map(key).collect();
    let threshold = if keys.len() < k {
        0
    } else {
        *keys.select_nth_unstable_by(k - 1, |a, b| b.cmp(a)).1
    };
    let cap = (out.len() - 1) / 2;
    let mut count = 0;
    for (i, &v) in values.iter().enumerate() {
        if is_candidate(v) && key(v) >= threshold {
            if count < cap {
                out[1 + 2 * count] = i as u32;
                out[2 + 2 * count] = v.to_bits();
            }
            count += 1;
        }
    }
    out[0] = count as u32;
}

impl CustomOp2 for TopK {
    fn name(&self) -> &'static str {
        "top-k-candidates"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout, ks: &CpuStorage, ks_l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, vocab) = l.shape().dims2()?;
        let (Some((start, end)), CpuStorage::U32(ks), Some((k0, _))) = (l.contiguous_offsets(), ks, ks_l.contiguous_offsets()) else {
            candle_core::bail!("top_k_candidates: contiguous logits and u32 ks");
        };
        let width = 1 + 2 * self.cap;
        let mut out = vec![0u32; rows * width];
        fn fill<T: Elem>(x: &[T], vocab: usize, ks: &[u32], out: &mut [u32], width: usize) {
            for ((row, &k), o) in x.chunks(vocab).zip(ks).zip(out.chunks_mut(width)) {
                reference(row, k as usize, o);
            }
        }
        let ks = &ks[k0..k0 + rows];
        match s {
            CpuStorage::F32(x) => fill(&x[start..end], vocab, ks, &mut out, width),
            CpuStorage::BF16(x) => fill(&x[start..end], vocab, ks, &mut out, width),
            CpuStorage::F16(x) => fill(&x[start..end], vocab, ks, &mut out, width),
            _ => candle_core::bail!("top_k_candidates: want f32, bf16 or f16 logits"),
        }
        Ok((CpuStorage::U32(out), Shape::from((rows, width))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout, ks: &candle_core::CudaStorage, ks_l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let rows = l.dims()[0];
        Ok((cuda::launch(s, l, ks, ks_l, self.cap)?, Shape::from((rows, 1 + 2 * self.cap))))
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

    /// Threads per block of `top_k_candidates_*` (`THREADS` in the .cu).
    const TOP_K_THREADS: u32 = 512;

    pub(super) fn launch(s: &CudaStorage, l: &Layout, ks: &CudaStorage, ks_l: &Layout, cap: usize) -> Result<CudaStorage> {
        match s.dtype() {
            DType::F32 => typed::<f32>(s, l, ks, ks_l, cap),
            DType::BF16 => typed::<bf16>(s, l, ks, ks_l, cap),
            DType::F16 => typed::<f16>(s, l, ks, ks_l, cap),
            dtype => candle_core::bail!("top_k_candidates: unsupported dtype {dtype:?} (f32, bf16, f16)"),
        }
    }

    fn typed<T: CudaElem>(s: &CudaStorage, l: &Layout, ks: &CudaStorage, ks_l: &Layout, cap: usize) -> Result<CudaStorage> {
        let (rows, vocab) = l.shape().dims2()?;
        let dev = s.device();
        let x = cuda::input::<T>(s, l, "top_k_candidates: logits")?;
        let ks = cuda::input::<u32>(ks, ks_l, "top_k_candidates: ks")?;
        // Zeroed: a row writes its count and only as many pairs as it found.
        let mut out = dev.alloc_zeros::<u32>((rows * (1 + 2 * cap)).max(1))?;
        if rows == 0 {
            return Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()));
        }
        let (vocab_arg, cap_arg) = (vocab as i32, cap as i32);
        let func = load!(dev, cuda::TOP_K, kernel_name::<T>("top_k_candidates"))?;
        let mut b = func.builder();
        b.arg(&x).arg(&ks).arg(&mut out).arg(&vocab_arg).arg(&cap_arg);
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (TOP_K_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: arguments match `top_k_candidates_*`; x holds rows * vocab values, ks one per
        // row, and out rows * (1 + 2 * cap), each row written only inside its own span.
        unsafe { b.launch(cfg) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn run(rows: &[Vec<f32>], ks: &[u32], cap: usize, dtype: DType) -> Vec<Option<Vec<(u32, f32)>>> {
        let vocab = rows[0].len();
        let t = Tensor::new(rows.iter().flatten().copied().collect::<Vec<f32>>(), &Device::Cpu).unwrap().reshape((rows.len(), vocab)).unwrap();
        let ks = Tensor::new(ks, &Device::Cpu).unwrap();
        let out = top_k_candidates(&t.to_dtype(dtype).unwrap(), &ks, cap).unwrap().to_vec2::<u32>().unwrap();
        out.iter().map(|r| unpack_candidates(r)).collect()
    }

    #[test]
    fn the_best_k_with_their_ties() {
        let nan = f32::NAN;
        let inf = f32::INFINITY;
        let rows = vec![
            vec![1., 5., 3., 5., 2., 4., -0., 0.],
            vec![nan, 1., f32::NEG_INFINITY, 2., inf, 3., nan, -7.],
            vec![nan, f32::NEG_INFINITY, 1., nan, nan, nan, nan, nan],
            vec![-1., -2., -3., -4., -5., -6., -7., -8.],
        ];
        let got = run(&rows, &[3, 2, 4, 0], 8, DType::F32);
        // 5, 5 (tied), then 4: exactly 3; ties at the k-th all come.
        assert_eq!(got[0], Some(vec![(1, 5.), (3, 5.), (5, 4.)]));
        assert_eq!(got[1], Some(vec![(4, inf), (5, 3.)]), "NaN never, +inf first");
        assert_eq!(got[2], Some(vec![(2, 1.)]), "fewer finite values than k: all of them");
        assert_eq!(got[3], Some(vec![]), "k = 0");
        assert_eq!(run(&rows, &[2, 2, 2, 2], 8, DType::F32)[0], Some(vec![(1, 5.), (3, 5.)]));
        // k = 7 on the first row reaches +0.0, tied with -0.0: both come.
        let all = run(&rows, &[7, 1, 1, 1], 8, DType::F32);
        assert_eq!(all[0].as_ref().unwrap().len(), 8, "-0.0 ties with +0.0");
        // More candidates than the output holds.
        assert_eq!(run(&rows, &[5, 1, 1, 1], 4, DType::F32)[0], None);
        // Half-precision rows: the same sets, on their rounded values.
        for dtype in [DType::BF16, DType::F16] {
            assert_eq!(run(&rows, &[3, 2, 4, 0], 8, dtype), got, "{dtype:?}");
        }
        let ks = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
        assert!(top_k_candidates(&Tensor::zeros((3, 4), DType::F32, &Device::Cpu).unwrap(), &ks, 4).is_err(), "one k per row");
    }
}
