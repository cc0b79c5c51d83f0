//! Rotary position embedding in the rotate-half (GPT-NeoX) layout Qwen uses, each token rotated
//! by its own position (a batch mixes sequences at different positions).

use std::mem::MaybeUninit;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::simd::{multiversion, rows_per_task, Simd};
use super::{contiguous, filled};
use crate::elem::Elem;

/// `x`: `(num_tokens, num_heads, head_dim)`; `cos`, `sin`: `(max_positions, head_dim / 2)` of
/// x's dtype; `positions`: `(num_tokens,)` u32 (e.g. [`crate::DeviceMetadata::positions`]).
/// Dimension `i < head_dim / 2` pairs with `i + head_dim / 2`:
/// `out[i] = x[i] cos - x[i + half] sin`, `out[i + half] = x[i + half] cos + x[i] sin`.
///
/// A position at or past `max_positions` is an error on the CPU; the CUDA kernel, which cannot
/// report one, writes NaN for that token.
pub fn rotary_embedding(x: &Tensor, cos: &Tensor, sin: &Tensor, positions: &Tensor) -> Result<Tensor> {
    let (num_tokens, _, head_dim) = x.dims3()?;
    let (_, half) = cos.dims2()?;
    if head_dim != 2 * half || sin.dims() != cos.dims() || cos.dtype() != x.dtype() || sin.dtype() != x.dtype() {
        candle_core::bail!("rotary_embedding: cos/sin {:?} {:?} do not fit x {:?} {:?}", cos.dims(), cos.dtype(), x.dims(), x.dtype());
    }
    if positions.dims() != [num_tokens] || positions.dtype() != DType::U32 {
        candle_core::bail!("rotary_embedding: positions must be ({num_tokens},) u32, not {:?} {:?}", positions.dims(), positions.dtype());
    }
    if !positions.device().same_device(x.device()) {
        candle_core::bail!("rotary_embedding: positions are on another device than x");
    }
    let positions = positions.contiguous()?;
    x.contiguous()?.apply_op3_no_bwd(&cos.contiguous()?, &sin.contiguous()?, &Rope { positions: &positions })
}

struct Rope<'a> {
    positions: &'a Tensor,
}

/// Rotates contiguous `x` `(num_tokens, num_heads, 2 * half)` with `simd`'s instructions.
fn rotate<T: Elem>(simd: Simd, x: &[T], cos: &[T], sin: &[T], positions: &[u32], half: usize) -> Result<Vec<T>> {
    let max_positions = cos.len() / half.max(1);
    if let Some(p) = positions.iter().find(|&&p| p as usize >= max_positions) {
        candle_core::bail!("rotary_embedding: position {p} is past the {max_positions} the tables hold");
    }
    let per_token = x.len() / positions.len().max(1);
    if per_token == 0 || half == 0 {
        return Ok(x.to_vec());
    }
    // SAFETY: the blocks write every token's heads, and the chunks cover `out`.
    Ok(unsafe {
        filled(x.len(), |out| match rows_per_task(positions.len(), per_token) {
            None => rotate_block(simd, x, cos, sin, positions, half, out),
            Some(rows) => (out.par_chunks_mut(rows * per_token), x.par_chunks(rows * per_token), positions.par_chunks(rows))
                .into_par_iter()
                .for_each(|(out, x, positions)| rotate_block(simd, x, cos, sin, positions, half, out)),
        })
    })
}

multiversion! {
    /// Writes `out` = `x`'s tokens rotated by their `positions` (all inside the tables).
    fn rotate_block<T: Elem>(
        x: &[T],
        cos: &[T],
        sin: &[T],
        positions: &[u32],
        half: usize,
        out: &mut [MaybeUninit<T>],
    ) => rotate_block_body;
}

#[inline(always)]
fn rotate_block_body<T: Elem>(x: &[T], cos: &[T], sin: &[T], positions: &[u32], half: usize, out: &mut [MaybeUninit<T>]) {
    let per_token = x.len() / positions.len();
    for ((x, out), &p) in x.chunks_exact(per_token).zip(out.chunks_exact_mut(per_token)).zip(positions) {
        let p = p as usize;
        let (cos, sin) = (&cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half]);
        for (x, out) in x.chunks_exact(2 * half).zip(out.chunks_exact_mut(2 * half)) {
            let ((x1, x2), (o1, o2)) = (x.split_at(half), out.split_at_mut(half));
            for (((((o1, o2), x1), x2), c), s) in o1.iter_mut().zip(o2).zip(x1).zip(x2).zip(cos).zip(sin) {
                let (c, s, x1, x2) = (c.to_f32(), s.to_f32(), x1.to_f32(), x2.to_f32());
                o1.write(T::from_f32(x1 * c - x2 * s));
                o2.write(T::from_f32(x2 * c + x1 * s));
            }
        }
    }
}

impl CustomOp3 for Rope<'_> {
    fn name(&self) -> &'static str {
        "rotary-embedding"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_l: &Layout, c: &CpuStorage, c_l: &Layout, s: &CpuStorage, s_l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (guard, p_l) = self.positions.storage_and_layout();
        let Storage::Cpu(CpuStorage::U32(p)) = &*guard else {
            candle_core::bail!("rotary_embedding: positions must be u32 on the CPU");
        };
        let p = contiguous(p, p_l, "rotary_embedding: positions")?;
        let half = c_l.dims()[1];
        let simd = Simd::detected();
        let out = match (x, c, s) {
            (CpuStorage::F32(x), CpuStorage::F32(c), CpuStorage::F32(s)) => CpuStorage::F32(rotate(
                simd,
                contiguous(x, x_l, "x")?,
                contiguous(c, c_l, "cos")?,
                contiguous(s, s_l, "sin")?,
                p,
                half,
            )?),
            (CpuStorage::BF16(x), CpuStorage::BF16(c), CpuStorage::BF16(s)) => CpuStorage::BF16(rotate(
                simd,
                contiguous(x, x_l, "x")?,
                contiguous(c, c_l, "cos")?,
                contiguous(s, s_l, "sin")?,
                p,
                half,
            )?),
            (CpuStorage::F16(x), CpuStorage::F16(c), CpuStorage::F16(s)) => CpuStorage::F16(rotate(
                simd,
                contiguous(x, x_l, "x")?,
                contiguous(c, c_l, "cos")?,
                contiguous(s, s_l, "sin")?,
                p,
                half,
            )?),
            _ => candle_core::bail!("rotary_embedding: unsupported dtype {:?} (f32, bf16, f16)", x.dtype()),
        };
        Ok((out, x_l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_l: &Layout,
        c: &candle_core::CudaStorage,
        c_l: &Layout,
        s: &candle_core::CudaStorage,
        s_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((cuda::launch(x, x_l, c, c_l, s, s_l, self.positions)?, x_l.shape().clone()))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, DType, Layout, Result, Tensor};
    use half::{bf16, f16};

    use crate::cuda::{self, kernel_name, load, CudaElem, Locked};

    pub(super) fn launch(x: &CudaStorage, x_l: &Layout, c: &CudaStorage, c_l: &Layout, s: &CudaStorage, s_l: &Layout, positions: &Tensor) -> Result<CudaStorage> {
        match x.dtype() {
            DType::F32 => typed::<f32>(x, x_l, c, c_l, s, s_l, positions),
            DType::BF16 => typed::<bf16>(x, x_l, c, c_l, s, s_l, positions),
            DType::F16 => typed::<f16>(x, x_l, c, c_l, s, s_l, positions),
            dtype => candle_core::bail!("rotary_embedding: unsupported dtype {dtype:?} (f32, bf16, f16)"),
        }
    }

    fn typed<T: CudaElem>(x: &CudaStorage, x_l: &Layout, c: &CudaStorage, c_l: &Layout, s: &CudaStorage, s_l: &Layout, positions: &Tensor) -> Result<CudaStorage> {
        let dev = x.device();
        let (num_tokens, num_heads, head_dim) = x_l.shape().dims3()?;
        let (max_positions, half) = c_l.shape().dims2()?;
        let mut out = cuda::output::<T>(dev, x_l.shape().elem_count())?;
        if num_tokens == 0 || num_heads * half == 0 {
            return Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()));
        }
        let x = cuda::input::<T>(x, x_l, "rotary_embedding: x")?;
        let c = cuda::input::<T>(c, c_l, "rotary_embedding: cos")?;
        let s = cuda::input::<T>(s, s_l, "rotary_embedding: sin")?;
        let p = Locked::new(positions);
        let p = p.all::<u32>("rotary_embedding: positions")?;
        let func = load!(dev, cuda::ROPE, kernel_name::<T>("rope"))?;
        let ints = [num_heads, head_dim / 2, max_positions].map(|v| v as i32);
        let mut b = func.builder();
        b.arg(&x).arg(&c).arg(&s).arg(&p).arg(&mut out);
        for v in &ints {
            b.arg(v);
        }
        let threads = (num_heads * half).next_multiple_of(32).min(512) as u32;
        let cfg = LaunchConfig { grid_dim: (num_tokens as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: arguments match `rope_*`; positions past the tables are not read (NaN out).
        unsafe { b.launch(cfg) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, WithDType};
    use half::{bf16, f16};

    use super::{rotary_embedding, rotate, Simd};
    use crate::elem::Elem;
    use crate::fused::test_data::{bits, randn};

    /// Tables as the model builds them: `(max_positions, half)` angles `p * theta^(-2i / d)`.
    pub(crate) fn tables(max_positions: usize, head_dim: usize, dtype: DType, dev: &Device) -> (Tensor, Tensor) {
        let half = head_dim / 2;
        let angles: Vec<f32> = (0..max_positions * half)
            .map(|k| (k / half) as f32 / 1e6f32.powf(2.0 * (k % half) as f32 / head_dim as f32))
            .collect();
        let angles = Tensor::from_vec(angles, (max_positions, half), dev).unwrap();
        (angles.cos().unwrap().to_dtype(dtype).unwrap(), angles.sin().unwrap().to_dtype(dtype).unwrap())
    }

    /// The unfused composition in f32: gather the rows, rotate the halves, concatenate.
    fn naive(x: &Tensor, cos: &Tensor, sin: &Tensor, positions: &Tensor) -> Tensor {
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let (x, half) = (f(x), cos.dim(1).unwrap());
        let c = f(&cos.index_select(positions, 0).unwrap()).unsqueeze(1).unwrap();
        let s = f(&sin.index_select(positions, 0).unwrap()).unsqueeze(1).unwrap();
        let (x1, x2) = (x.narrow(2, 0, half).unwrap(), x.narrow(2, half, half).unwrap());
        let a = (x1.broadcast_mul(&c).unwrap() - x2.broadcast_mul(&s).unwrap()).unwrap();
        let b = (x2.broadcast_mul(&c).unwrap() + x1.broadcast_mul(&s).unwrap()).unwrap();
        Tensor::cat(&[a, b], 2).unwrap()
    }

    #[test]
    fn matches_the_unfused_ops() {
        let dev = Device::Cpu;
        let positions = Tensor::new(&[0u32, 1, 2, 7, 300, 4095, 5], &dev).unwrap();
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 3e-2), (DType::F16, 4e-3)] {
            for head_dim in [64, 128] {
                let (cos, sin) = tables(4096, head_dim, dtype, &dev);
                let x = Tensor::randn(0f32, 1., (7, 3, head_dim), &dev).unwrap().to_dtype(dtype).unwrap();
                let got = rotary_embedding(&x, &cos, &sin, &positions).unwrap();
                assert_eq!((got.dims(), got.dtype()), (x.dims(), dtype));
                let diff = (got.to_dtype(DType::F32).unwrap() - naive(&x, &cos, &sin, &positions)).unwrap();
                let err = diff.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
                assert!(err < tol, "{dtype:?} head_dim {head_dim}: error {err}");
            }
        }
    }

    /// Every instruction set gives the scalar build's bits, for every dtype and for a batch big
    /// enough to be split across threads; and a token's result is the same alone.
    #[test]
    fn every_instruction_set_and_batch_size_gives_the_same_bits() {
        fn check<T: Elem + WithDType>() {
            let (num_tokens, heads, head_dim) = (500, 14, 64);
            let dev = Device::Cpu;
            let (cos, sin) = tables(4096, head_dim, T::DTYPE, &dev);
            let (cos, sin) = (cos.flatten_all().unwrap().to_vec1::<T>().unwrap(), sin.flatten_all().unwrap().to_vec1::<T>().unwrap());
            let x = randn::<T>(num_tokens * heads * head_dim, 1.0);
            let positions: Vec<u32> = (0..num_tokens as u32).map(|t| t * 7 % 4096).collect();
            let reference = bits(&rotate(Simd::Scalar, &x, &cos, &sin, &positions, head_dim / 2).unwrap());
            for simd in Simd::available() {
                let got = bits(&rotate(simd, &x, &cos, &sin, &positions, head_dim / 2).unwrap());
                assert!(got == reference, "{:?} {simd:?}", T::DTYPE);
            }
            let token = 321 * heads * head_dim..322 * heads * head_dim;
            let alone = rotate(Simd::detected(), &x[token.clone()], &cos, &sin, &positions[321..322], head_dim / 2).unwrap();
            assert_eq!(bits(&alone), &reference[token], "{:?} token alone", T::DTYPE);
        }
        check::<f32>();
        check::<bf16>();
        check::<f16>();
    }

    #[test]
    fn position_zero_is_the_identity_and_out_of_range_is_an_error() {
        let dev = Device::Cpu;
        let (cos, sin) = tables(16, 8, DType::F32, &dev);
        let x = Tensor::randn(0f32, 1., (1, 2, 8), &dev).unwrap();
        let got = rotary_embedding(&x, &cos, &sin, &Tensor::new(&[0u32], &dev).unwrap()).unwrap();
        assert_eq!(got.flatten_all().unwrap().to_vec1::<f32>().unwrap(), x.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert!(rotary_embedding(&x, &cos, &sin, &Tensor::new(&[16u32], &dev).unwrap()).is_err());
    }
}
