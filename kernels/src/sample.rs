//! A draw from a whole row of logits (temperature, min-p; no top-k or top-p): the sampler's own
//! arithmetic ([`draw_whole`]), and [`sample_whole_rows`], which makes those draws where the
//! logits are, so that a GPU sends back one id per row instead of the row. `cuda/sample.cu`
//! on a GPU repeats the arithmetic (its `expf` may differ from the host's by an ulp or two);
//! on the CPU the op calls [`draw_whole`] itself.

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use crate::elem::Elem;

/// Logits per chunk of the walk (`SAMPLE_CHUNK` in the .cu).
pub const WALK_CHUNK: usize = 64;

/// The largest vocabulary [`sample_whole_rows`] takes: its chunk sums live in 48,000 bytes of a
/// block's shared memory on a GPU (`SAMPLE_MAX_CHUNKS` in the .cu).
pub const MAX_VOCAB: usize = 6000 * WALK_CHUNK;

/// The largest value of `xs`, NaN ignored (-inf if there is none): 16 lanes, so that it
/// vectorises (the same value as a fold, max being order-free).
pub fn max_value(xs: &[f32]) -> f32 {
    let larger = |m: f32, x: f32| if x > m { x } else { m };
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = xs.chunks_exact(16);
    let rest = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &x| larger(m, x));
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = larger(*m, x);
        }
    }
    lanes.into_iter().fold(rest, larger)
}

/// The sum of `f(x)` over `xs` in f64, over 8 independent lanes (a sequential sum waits on each
/// add): lane j takes elements j, j + 8, ...; the lanes are added in order, then the remainder.
pub fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut lanes = [0f64; 8];
    let chunks = xs.chunks_exact(8);
    let rest: f64 = chunks.remainder().iter().map(|&x| f(x)).sum();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += f(x);
        }
    }
    lanes.iter().sum::<f64>() + rest
}

/// The token at `u` (in [0, 1)) of the distribution with weights `e^((l - max) / temperature)`,
/// a weight below `min_p` (or 0) counting as 0; `max` is the row's largest logit, finite. `None`
/// if no weight is left. Each weight is computed once into this thread's scratch, the weights are
/// summed by chunks of [`WALK_CHUNK`] (8 lanes each, then the chunks in order), and the walk
/// finds the chunk, then the token; past the end by rounding it is the last token kept.
pub fn draw_whole(logits: &[f32], max: f32, temperature: f32, min_p: f32, u: f64) -> Option<u32> {
    thread_local! {
        static SCRATCH: RefCell<(Vec<f32>, Vec<f64>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    }
    SCRATCH.with_borrow_mut(|(weights, sums)| {
        weights.clear();
        weights.extend(logits.iter().map(|&l| ((l - max) / temperature).exp()).map(|w| if w > 0.0 && w >= min_p { w } else { 0.0 }));
        sums.clear();
        sums.extend(weights.chunks(WALK_CHUNK).map(|c| lane_sum(c, f64::from)));
        let mut r = u * sums.iter().sum::<f64>();
        let mut chunk = 0;
        while chunk + 1 < sums.len() && r >= sums[chunk] {
            r -= sums[chunk];
            chunk += 1;
        }
        for (i, &w) in weights.iter().enumerate().skip(chunk * WALK_CHUNK) {
            if w > 0.0 {
                if r < f64::from(w) {
                    return Some(i as u32);
                }
                r -= f64::from(w);
            }
        }
        weights.iter().rposition(|&w| w > 0.0).map(|i| i as u32)
    })
}

/// `(rows, vocab)` f32, bf16 or f16 logits, `(rows, 2)` f32 (temperature, min-p) and `(rows,)`
/// f64 draws in [0, 1) -> `(rows,)` u32: each row's [`draw_whole`] (on its logits as f32), or its
/// argmax when its largest logit is not finite (then `u` goes unused). A row with temperature
/// <= 0 is left out (0).
pub fn sample_whole_rows(logits: &Tensor, params: &Tensor, us: &Tensor) -> Result<Tensor> {
    let (rows, vocab) = logits.dims2()?;
    if !matches!(logits.dtype(), DType::F32 | DType::BF16 | DType::F16) || vocab == 0 || vocab > MAX_VOCAB {
        candle_core::bail!("sample_whole_rows: want (rows, 1..={MAX_VOCAB}) f32, bf16 or f16 logits, got {:?} {:?}", logits.dims(), logits.dtype());
    }
    if params.dims() != [rows, 2] || params.dtype() != DType::F32 || us.dims() != [rows] || us.dtype() != DType::F64 {
        candle_core::bail!(
            "sample_whole_rows: want (rows, 2) f32 params and (rows,) f64 draws for {rows} rows, got {:?} {:?} and {:?} {:?}",
            params.dims(),
            params.dtype(),
            us.dims(),
            us.dtype()
        );
    }
    logits.contiguous()?.apply_op3_no_bwd(&params.contiguous()?, &us.contiguous()?, &SampleWhole)
}

struct SampleWhole;

fn draw_row<T: Elem>(row: &[T], temperature: f32, min_p: f32, u: f64) -> u32 {
    if temperature <= 0.0 {
        return 0;
    }
    let row: Vec<f32> = row.iter().map(|v| v.to_f32()).collect();
    let max = max_value(&row);
    let argmax = || crate::argmax::reference(&row);
    if !max.is_finite() {
        return argmax();
    }
    draw_whole(&row, max, temperature, min_p, u).unwrap_or_else(argmax)
}

impl CustomOp3 for SampleWhole {
    fn name(&self) -> &'static str {
        "sample-whole-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout, p: &CpuStorage, p_l: &Layout, u: &CpuStorage, u_l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, vocab) = l.shape().dims2()?;
        let (Some((start, end)), CpuStorage::F32(p), Some((p0, _)), CpuStorage::F64(u), Some((u0, _))) =
            (l.contiguous_offsets(), p, p_l.contiguous_offsets(), u, u_l.contiguous_offsets())
        else {
            candle_core::bail!("sample_whole_rows: contiguous inputs");
        };
        let (p, u) = (&p[p0..p0 + 2 * rows], &u[u0..u0 + rows]);
        fn draw<T: Elem>(x: &[T], vocab: usize, p: &[f32], u: &[f64]) -> Vec<u32> {
            x.chunks(vocab).zip(p.chunks(2)).zip(u).map(|((row, p), &u)| draw_row(row, p[0], p[1], u)).collect()
        }
        let ids = match s {
            CpuStorage::F32(x) => draw(&x[start..end], vocab, p, u),
            CpuStorage::BF16(x) => draw(&x[start..end], vocab, p, u),
            CpuStorage::F16(x) => draw(&x[start..end], vocab, p, u),
            _ => candle_core::bail!("sample_whole_rows: want f32, bf16 or f16 logits"),
        };
        Ok((CpuStorage::U32(ids), Shape::from(rows)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
        p: &candle_core::CudaStorage,
        p_l: &Layout,
        u: &candle_core::CudaStorage,
        u_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((cuda::launch(s, l, p, p_l, u, u_l)?, Shape::from(l.dims()[0])))
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

    /// Threads per block of `sample_whole_*` (`THREADS` in the .cu).
    const THREADS: u32 = 1024;

    pub(super) fn launch(s: &CudaStorage, l: &Layout, p: &CudaStorage, p_l: &Layout, u: &CudaStorage, u_l: &Layout) -> Result<CudaStorage> {
        match s.dtype() {
            DType::F32 => typed::<f32>(s, l, p, p_l, u, u_l),
            DType::BF16 => typed::<bf16>(s, l, p, p_l, u, u_l),
            DType::F16 => typed::<f16>(s, l, p, p_l, u, u_l),
            dtype => candle_core::bail!("sample_whole_rows: unsupported dtype {dtype:?} (f32, bf16, f16)"),
        }
    }

    fn typed<T: CudaElem>(s: &CudaStorage, l: &Layout, p: &CudaStorage, p_l: &Layout, u: &CudaStorage, u_l: &Layout) -> Result<CudaStorage> {
        let (rows, vocab) = l.shape().dims2()?;
        let dev = s.device();
        let x = cuda::input::<T>(s, l, "sample_whole_rows: logits")?;
        let p = cuda::input::<f32>(p, p_l, "sample_whole_rows: params")?;
        let u = cuda::input::<f64>(u, u_l, "sample_whole_rows: draws")?;
        let mut out = cuda::output::<u32>(dev, rows)?;
        if rows == 0 {
            return Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()));
        }
        let vocab_arg = vocab as i32;
        let func = load!(dev, cuda::SAMPLE, kernel_name::<T>("sample_whole"))?;
        let mut b = func.builder();
        b.arg(&x).arg(&p).arg(&u).arg(&mut out).arg(&vocab_arg);
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: arguments match `sample_whole_*`; x holds rows * vocab values (vocab at most
        // MAX_VOCAB, checked by the caller: the chunk sums fit the kernel's shared array), p two
        // per row, u one, out one per row.
        unsafe { b.launch(cfg) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The op gives each row the draw of its f32 logits, the argmax where nothing finite is left,
    /// and 0 for rows left out; draws at u across [0, 1) cover the likely tokens in order of id
    /// mass.
    #[test]
    fn rows_draw_what_the_sampler_draws() {
        let vocab = 1000;
        let mut rows: Vec<Vec<f32>> = (0..4).map(|r| (0..vocab).map(|i| ((i * 7 + r * 13) % 97) as f32 / 20.0).collect()).collect();
        rows[2] = vec![f32::NEG_INFINITY; vocab];
        rows[2][5] = f32::INFINITY;
        let t = Tensor::new(rows.iter().flatten().copied().collect::<Vec<f32>>(), &Device::Cpu).unwrap().reshape((4, vocab)).unwrap();
        let params = Tensor::new(&[[0.8f32, 0.0], [1.5, 0.1], [1.0, 0.0], [0.0, 0.0]], &Device::Cpu).unwrap();
        for u in [0.0, 0.3, 0.999_999] {
            let us = Tensor::new(&[u, u, u, u], &Device::Cpu).unwrap();
            let got = sample_whole_rows(&t, &params, &us).unwrap().to_vec1::<u32>().unwrap();
            for (r, (temperature, min_p)) in [(0.8, 0.0), (1.5, 0.1)].into_iter().enumerate() {
                let max = max_value(&rows[r]);
                assert_eq!(Some(got[r]), draw_whole(&rows[r], max, temperature, min_p, u), "row {r} u {u}");
            }
            assert_eq!((got[2], got[3]), (5, 0), "+inf: the argmax; temperature 0: left out");
        }
        // u = 0 gives the first kept token, u near 1 the last.
        let first = draw_whole(&rows[1], max_value(&rows[1]), 1.5, 0.1, 0.0).unwrap();
        let last = draw_whole(&rows[1], max_value(&rows[1]), 1.5, 0.1, 0.999_999_9).unwrap();
        let max = max_value(&rows[1]);
        let kept = |i: usize| ((rows[1][i] - max) / 1.5).exp() >= 0.1;
        assert_eq!(first as usize, (0..vocab).find(|&i| kept(i)).unwrap());
        assert_eq!(last as usize, (0..vocab).rev().find(|&i| kept(i)).unwrap());
    }
}
