//! [`super::qkv_step`] with the projection and the norm before it: a decode step's residual
//! stream of a few rows to attention's inputs. On a GPU, for models without a per-head q/k norm,
//! one launch (`cuda/qkv_matmul.cu`) in place of the norm-fused few-rows matmul and the q/k/v
//! kernel; elsewhere that composition, which is the reference.

use candle_core::{Result, Tensor};

use super::{qkv_step, Qkv};
use crate::device_metadata::DeviceMetadata;
use crate::small_matmul::{small_matmul_fused, MatmulFusion};

/// A layer's stacked q/k/v projection and the RMSNorm before it.
pub struct QkvMatmul<'a> {
    /// `(num_tokens, hidden)`: the residual stream; the GPU kernel takes up to
    /// `SMALL_MATMUL_MAX_ROWS` rows.
    pub x: &'a Tensor,
    /// `((num_heads + 2 num_kv_heads) * head_dim, hidden)`: q's rows, then k's, then v's.
    pub weight: &'a Tensor,
    /// The stacked biases, `(rows,)`, where the model has them.
    pub bias: Option<&'a Tensor>,
    /// The input norm's weight `(hidden,)` and epsilon.
    pub norm: (&'a Tensor, f32),
    pub num_heads: usize,
    /// Each q and k head's RMSNorm (Qwen3), as in [`Qkv`].
    pub head_norm: Option<(&'a Tensor, &'a Tensor, f32)>,
}

/// The rotated queries `(num_tokens, num_heads, head_dim)` of `norm(x) · wᵀ + bias`; the step's
/// keys and values go to the caches' slots, as [`qkv_step`] does.
pub fn qkv_matmul_step(p: &QkvMatmul, cos: &Tensor, sin: &Tensor, key_cache: &Tensor, value_cache: &Tensor, metadata: &DeviceMetadata) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Some(q) = cuda::fused(p, cos, sin, key_cache, value_cache, metadata)? {
        return Ok(q);
    }
    let (_, _, num_kv_heads, head_dim) = key_cache.dims4()?;
    if p.x.dim(0)? == 0 {
        return Tensor::zeros((0, p.num_heads, head_dim), p.x.dtype(), p.x.device());
    }
    let (q_w, kv_w) = (p.num_heads * head_dim, num_kv_heads * head_dim);
    let (weight, eps) = p.norm;
    let y = small_matmul_fused(p.x, p.weight, MatmulFusion::Norm { weight, eps })?;
    if y.dim(1)? != q_w + 2 * kv_w {
        candle_core::bail!("qkv_matmul_step: {} projection rows for {} heads and {num_kv_heads} KV heads of {head_dim}", y.dim(1)?, p.num_heads);
    }
    // q's, k's and v's parts of a stacked tensor along `dim`.
    let parts = |t: &Tensor, dim: usize| -> Result<[Tensor; 3]> { Ok([t.narrow(dim, 0, q_w)?, t.narrow(dim, q_w, kv_w)?, t.narrow(dim, q_w + kv_w, kv_w)?]) };
    let [q, k, v] = parts(&y, 1)?;
    let bias = p.bias.map(|b| parts(b, 0)).transpose()?;
    let bias = match &bias {
        Some([bq, bk, bv]) => [Some(bq), Some(bk), Some(bv)],
        None => [None; 3],
    };
    let qkv = Qkv { q: &q, k: &k, v: &v, bias, head_norm: p.head_norm };
    qkv_step(&qkv, cos, sin, key_cache, value_cache, metadata)
}

/// [`qkv_matmul_step`]'s one-launch GPU kernel alone (for tests): `None` where it does not apply,
/// without falling back to the composition.
#[cfg(feature = "cuda")]
pub fn qkv_matmul_step_fused(p: &QkvMatmul, cos: &Tensor, sin: &Tensor, key_cache: &Tensor, value_cache: &Tensor, metadata: &DeviceMetadata) -> Result<Option<Tensor>> {
    cuda::fused(p, cos, sin, key_cache, value_cache, metadata)
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::op::BackpropOp;
    use candle_core::{CudaStorage, DType, Device, Result, Storage, Tensor};
    use half::{bf16, f16};

    use super::QkvMatmul;
    use crate::cuda::{self, kernel_name, load, CudaElem, Locked};
    use crate::device_metadata::DeviceMetadata;
    use crate::qkv::cuda::{enabled, TargetViews, Targets};
    use crate::small_matmul::small_matmul_fits;

    /// As in the .cu: a warp computes one pair of rows at a time, and warps stride over the
    /// pairs past what the resident blocks cover.
    const QKV_MATMUL_WARPS: usize = 4;

    /// The kernel's queries, or `None` where it does not apply: not on a GPU, a per-head norm,
    /// operands of another dtype or layout, or `QWEN_SERVE_CUDA_FUSED_QKV=0`.
    pub(super) fn fused(p: &QkvMatmul, cos: &Tensor, sin: &Tensor, key_cache: &Tensor, value_cache: &Tensor, metadata: &DeviceMetadata) -> Result<Option<Tensor>> {
        let Device::Cuda(dev) = p.x.device() else { return Ok(None) };
        if p.head_norm.is_some() || !enabled() {
            return Ok(None);
        }
        let Some(targets) = Targets::new(cos, sin, key_cache, value_cache, metadata, p.x, "qkv_matmul_step")? else { return Ok(None) };
        let (_, _, num_kv_heads, head_dim) = key_cache.dims4()?;
        let dtype = p.x.dtype();
        let (m, rows) = (p.x.dim(0)?, p.weight.dim(0)?);
        let fits = small_matmul_fits(p.x, p.weight)
            && rows == (p.num_heads + 2 * num_kv_heads) * head_dim
            && p.norm.0.dims() == [p.x.dim(1)?]
            && p.bias.is_none_or(|b| b.dims() == [rows])
            && [p.norm.0].into_iter().chain(p.bias).all(|t| t.dtype() == dtype && t.is_contiguous() && t.device().same_device(p.x.device()))
            // x, w and the norm's weight are read 16 bytes at a time.
            && [p.x, p.weight, p.norm.0].iter().all(|t| (t.layout().start_offset() * dtype.size_in_bytes()) % 16 == 0);
        if !fits {
            return Ok(None);
        }
        let launch = Launch { p, targets };
        let storage = match dtype {
            DType::F32 => launch.run::<f32>(dev, num_kv_heads, head_dim)?,
            DType::BF16 => launch.run::<bf16>(dev, num_kv_heads, head_dim)?,
            DType::F16 => launch.run::<f16>(dev, num_kv_heads, head_dim)?,
            _ => return Ok(None),
        };
        Ok(Some(Tensor::from_storage(Storage::Cuda(storage), (m, p.num_heads, head_dim), BackpropOp::none(), false)))
    }

    struct Launch<'a> {
        p: &'a QkvMatmul<'a>,
        targets: Targets<'a>,
    }

    impl Launch<'_> {
        fn run<T: CudaElem>(&self, dev: &candle_core::CudaDevice, num_kv_heads: usize, head_dim: usize) -> Result<CudaStorage> {
            let p = self.p;
            let ((m, k), num_heads) = (p.x.dims2()?, p.num_heads);
            let mut out = cuda::output::<T>(dev, m * num_heads * head_dim)?;
            if m == 0 {
                return Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()));
            }
            let lock = Locked::new;
            let (lx, lw, lnorm) = (lock(p.x), lock(p.weight), lock(p.norm.0));
            let (x, w, norm) = (lx.all::<T>("x")?, lw.all::<T>("q/k/v weight")?, lnorm.all::<T>("norm weight")?);
            let lbias = p.bias.map(lock);
            let bias = lbias.as_ref().map(|b| b.all::<T>("q/k/v bias")).transpose()?;
            let locks = self.targets.locks();
            let targets = TargetViews::<T>::new(&self.targets, &locks)?;

            let func = load!(dev, cuda::QKV_MATMUL, kernel_name::<T>(&format!("qkv_matmul_m{}", m.next_power_of_two())))?;
            let ints = [m, k, num_heads, num_kv_heads, head_dim].map(|d| d as i32);
            let null = 0u64;
            let mut b = func.builder();
            b.arg(&x).arg(&w).arg(&norm).arg(&p.norm.1);
            match &bias {
                Some(view) => b.arg(view),
                None => b.arg(&null),
            };
            targets.push_rotation(&mut b);
            targets.push_outputs(&mut b, &mut out);
            for v in &ints {
                b.arg(v);
            }
            let pairs = (num_heads + 2 * num_kv_heads) * head_dim / 2;
            let threads = 32 * QKV_MATMUL_WARPS as u32;
            let blocks = cuda::resident_blocks(dev, &func, threads, pairs.div_ceil(QKV_MATMUL_WARPS))?;
            let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: arguments match `qkv_matmul_m<M>_<dtype>` (M = m rounded up to a power of two,
            // m <= 8); shapes, dtypes and layouts were checked by `fused`, and every slot lies
            // inside the caches.
            unsafe { b.launch(cfg) }.w()?;
            Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::{qkv_matmul_step, QkvMatmul};
    use crate::small_matmul::{small_matmul_fused, MatmulFusion};
    use crate::{qkv_step, AttentionMetadata, DeviceMetadata, Qkv};

    /// On the CPU: the norm-fused projection split into q, k, v (each with its part of the
    /// stacked bias) and the q/k/v step, bit for bit; a wrong number of rows is an error.
    #[test]
    fn is_the_projection_then_the_qkv_step() {
        let dev = Device::Cpu;
        let (heads, kv_heads, d, hidden, tokens) = (4, 2, 16, 40, 3);
        let rows = (heads + 2 * kv_heads) * d;
        let x = Tensor::randn(0f32, 1., (tokens, hidden), &dev).unwrap();
        let w = Tensor::randn(0f32, 1., (rows, hidden), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1., rows, &dev).unwrap();
        let g = Tensor::randn(1f32, 0.2, hidden, &dev).unwrap();
        let angles = Tensor::arange(0f32, (16 * d / 2) as f32, &dev).unwrap().affine(0.01, 0.).unwrap().reshape((16, d / 2)).unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let meta = DeviceMetadata::new(AttentionMetadata::single(&[2, 0], 4, 8, 3), &dev).unwrap();
        let cache = || Tensor::zeros((3, 4, kv_heads, d), DType::F32, &dev).unwrap();
        let p = QkvMatmul { x: &x, weight: &w, bias: Some(&bias), norm: (&g, 1e-6), num_heads: heads, head_norm: None };
        let (kc, vc) = (cache(), cache());
        let got = qkv_matmul_step(&p, &cos, &sin, &kc, &vc, &meta).unwrap();
        let y = small_matmul_fused(&x, &w, MatmulFusion::Norm { weight: &g, eps: 1e-6 }).unwrap();
        let (q_w, kv_w) = (heads * d, kv_heads * d);
        let (q, k, v) = (y.narrow(1, 0, q_w).unwrap(), y.narrow(1, q_w, kv_w).unwrap(), y.narrow(1, q_w + kv_w, kv_w).unwrap());
        let b = [bias.narrow(0, 0, q_w).unwrap(), bias.narrow(0, q_w, kv_w).unwrap(), bias.narrow(0, q_w + kv_w, kv_w).unwrap()];
        let (kw, vw) = (cache(), cache());
        let want = qkv_step(&Qkv { q: &q, k: &k, v: &v, bias: [Some(&b[0]), Some(&b[1]), Some(&b[2])], head_norm: None }, &cos, &sin, &kw, &vw, &meta).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&got), flat(&want));
        assert_eq!((flat(&kc), flat(&vc)), (flat(&kw), flat(&vw)));
        let short = w.narrow(0, 0, rows - d).unwrap();
        let p = QkvMatmul { weight: &short, bias: None, ..p };
        assert!(qkv_matmul_step(&p, &cos, &sin, &kc, &vc, &meta).is_err());
    }
}
