//! The fused GPU path of [`super::qkv_step`]: `cuda/qkv.cu`.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchArgs, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Device, Result, Storage, Tensor};
use half::{bf16, f16};

use super::Qkv;
use crate::cuda::{self, kernel_name, load, CudaElem, Locked};
use crate::device_metadata::DeviceMetadata;

/// `QKV_THREADS` and the largest head dim (`2 * 32 * PAIRS`) in the .cu.
const THREADS: u32 = 256;
const MAX_HEAD_DIM: usize = 256;

/// The fused kernel's queries, or `None` where it does not apply and the caller composes the
/// separate ops: not on a GPU, a head dim or dtype it is not built for, an input not laid out
/// for it, or `QWEN_SERVE_CUDA_FUSED_QKV=0` (an escape hatch and an A/B switch).
pub(super) fn fused(qkv: &Qkv, cos: &Tensor, sin: &Tensor, key_cache: &Tensor, value_cache: &Tensor, metadata: &DeviceMetadata) -> Result<Option<Tensor>> {
    let Device::Cuda(dev) = qkv.q.device() else { return Ok(None) };
    if !enabled() {
        return Ok(None);
    }
    let dtype = qkv.q.dtype();
    let num_tokens = qkv.q.dim(0)?;
    let Some(targets) = Targets::new(cos, sin, key_cache, value_cache, metadata, qkv.q, "qkv_step")? else { return Ok(None) };
    let (_, _, num_kv_heads, head_dim) = key_cache.dims4()?;
    let bias = qkv.bias.iter().flatten().copied();
    let norm = qkv.head_norm.iter().flat_map(|&(q, k, _)| [q, k]);
    let rows_contiguous = |t: &Tensor| t.dim(1).is_ok_and(|w| w <= 1) || t.stride()[1] == 1;
    let fits = head_dim <= MAX_HEAD_DIM
        && bias.chain(norm).all(|t| t.dtype() == dtype && t.is_contiguous() && t.device().same_device(qkv.q.device()))
        && [qkv.q, qkv.k, qkv.v].iter().all(|t| t.dtype() == dtype && rows_contiguous(t) && t.device().same_device(qkv.q.device()));
    if !fits {
        return Ok(None);
    }
    let launch = Launch { qkv, targets };
    let storage = match dtype {
        DType::F32 => launch.run::<f32>(dev, num_kv_heads, head_dim)?,
        DType::BF16 => launch.run::<bf16>(dev, num_kv_heads, head_dim)?,
        DType::F16 => launch.run::<f16>(dev, num_kv_heads, head_dim)?,
        _ => return Ok(None),
    };
    let num_heads = qkv.q.dim(1)? / head_dim;
    Ok(Some(Tensor::from_storage(Storage::Cuda(storage), (num_tokens, num_heads, head_dim), BackpropOp::none(), false)))
}

/// What both q/k/v kernels (`qkv.cu`, `qkv_matmul.cu`) rotate by and write to: the rotation
/// tables, the caches, and the step's positions and slots.
pub(super) struct Targets<'a> {
    cos: &'a Tensor,
    sin: &'a Tensor,
    key_cache: &'a Tensor,
    value_cache: &'a Tensor,
    /// The step's packed metadata and the range of its slot mapping.
    slots: (&'a Tensor, std::ops::Range<usize>),
    positions: &'a Tensor,
}

impl<'a> Targets<'a> {
    /// `None` where a kernel does not take them: metadata not on the GPU, caches of another
    /// shape, dtype or device than `like` (the step's activations), an odd head dim, tables
    /// that do not match it. An error when the step's positions and slots are not one per
    /// token of `like`, each slot inside the caches (as write_kv checks: the kernels write
    /// wherever the slots say).
    pub(super) fn new(
        cos: &'a Tensor,
        sin: &'a Tensor,
        key_cache: &'a Tensor,
        value_cache: &'a Tensor,
        metadata: &'a DeviceMetadata,
        like: &Tensor,
        what: &str,
    ) -> Result<Option<Self>> {
        let Some(packed) = metadata.cuda() else { return Ok(None) };
        let (num_blocks, block_size, _, head_dim) = key_cache.dims4()?;
        let fits = head_dim % 2 == 0
            && value_cache.dims() == key_cache.dims()
            && cos.dims2().is_ok_and(|(_, half)| 2 * half == head_dim)
            && sin.dims() == cos.dims()
            && [key_cache, value_cache, cos, sin].iter().all(|t| t.dtype() == like.dtype() && t.is_contiguous() && t.device().same_device(like.device()));
        if !fits {
            return Ok(None);
        }
        if metadata.positions().dim(0)? != like.dim(0)? {
            candle_core::bail!("{what}: {} tokens but {} positions", like.dim(0)?, metadata.positions().dim(0)?);
        }
        let slots = &metadata.host().slot_mapping;
        if slots.len() != like.dim(0)? {
            candle_core::bail!("{what}: {} tokens but {} slots", like.dim(0)?, slots.len());
        }
        if let Some(s) = slots.iter().find(|&&s| s as usize >= num_blocks * block_size) {
            candle_core::bail!("{what}: slot {s} is outside the cache");
        }
        Ok(Some(Self { cos, sin, key_cache, value_cache, slots: (&packed.data, packed.slot_mapping.clone()), positions: metadata.positions() }))
    }

    /// Read locks on every tensor, for [`TargetViews::new`].
    pub(super) fn locks(&self) -> [Locked<'a>; 6] {
        [self.cos, self.sin, self.positions, self.slots.0, self.key_cache, self.value_cache].map(Locked::new)
    }
}

/// The device views of [`Targets`], in the kernels' argument order.
pub(super) struct TargetViews<'l, T: CudaElem> {
    cos: CudaView<'l, T>,
    sin: CudaView<'l, T>,
    positions: CudaView<'l, u32>,
    max_positions: i32,
    slot_mapping: CudaView<'l, u32>,
    key_cache: CudaView<'l, T>,
    value_cache: CudaView<'l, T>,
}

impl<'l, T: CudaElem> TargetViews<'l, T> {
    pub(super) fn new(targets: &Targets, locks: &'l [Locked<'_>; 6]) -> Result<Self> {
        let [cos, sin, positions, slots, key_cache, value_cache] = locks;
        Ok(Self {
            cos: cos.all::<T>("cos")?,
            sin: sin.all::<T>("sin")?,
            positions: positions.all::<u32>("positions")?,
            max_positions: targets.cos.dim(0)? as i32,
            slot_mapping: slots.view::<u32>(targets.slots.1.clone(), "slot_mapping")?,
            // The caches are written through views of read locks: the kernel writes only the
            // step's slots, which no other work of this stream touches before it.
            key_cache: key_cache.all::<T>("key cache")?,
            value_cache: value_cache.all::<T>("value cache")?,
        })
    }

    /// `cos, sin, positions, max_positions, slot_mapping`.
    pub(super) fn push_rotation<'b>(&'b self, b: &mut LaunchArgs<'b>) {
        b.arg(&self.cos).arg(&self.sin).arg(&self.positions).arg(&self.max_positions).arg(&self.slot_mapping);
    }

    /// `q_out, key_cache, value_cache`.
    pub(super) fn push_outputs<'b>(&'b self, b: &mut LaunchArgs<'b>, q_out: &'b mut CudaSlice<T>) {
        b.arg(q_out).arg(&self.key_cache).arg(&self.value_cache);
    }
}

pub(super) fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("QWEN_SERVE_CUDA_FUSED_QKV").map_or(true, |v| v != "0"))
}

struct Launch<'a> {
    qkv: &'a Qkv<'a>,
    targets: Targets<'a>,
}

impl Launch<'_> {
    fn run<T: CudaElem>(&self, dev: &candle_core::CudaDevice, num_kv_heads: usize, head_dim: usize) -> Result<CudaStorage> {
        let qkv = self.qkv;
        let num_tokens = qkv.q.dim(0)?;
        let num_heads = qkv.q.dim(1)? / head_dim;
        let mut out = cuda::output::<T>(dev, num_tokens * num_heads * head_dim)?;
        if num_tokens == 0 {
            return Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()));
        }
        let lock = Locked::new;
        let (lq, lk, lv) = (lock(qkv.q), lock(qkv.k), lock(qkv.v));
        let ((q, q_stride), (k, k_stride), (v, v_stride)) =
            (lq.rows::<T>("qkv_step: q")?, lk.rows::<T>("qkv_step: k")?, lv.rows::<T>("qkv_step: v")?);
        let bias_locks = qkv.bias.map(|b| b.map(lock));
        let mut bias = Vec::with_capacity(3);
        for b in &bias_locks {
            bias.push(b.as_ref().map(|b| b.all::<T>("bias")).transpose()?);
        }
        let norm_locks = qkv.head_norm.map(|(wq, wk, eps)| (lock(wq), lock(wk), eps));
        let norm = match &norm_locks {
            Some((wq, wk, eps)) => Some((wq.all::<T>("q norm")?, wk.all::<T>("k norm")?, *eps)),
            None => None,
        };
        let locks = self.targets.locks();
        let targets = TargetViews::<T>::new(&self.targets, &locks)?;

        let func = load!(dev, cuda::QKV, kernel_name::<T>("qkv"))?;
        let strides = [q_stride, k_stride, v_stride].map(|s| s as i32);
        let dims = [num_heads, num_kv_heads, head_dim].map(|d| d as i32);
        let null = 0u64;
        let eps = norm.as_ref().map_or(0f32, |n| n.2);
        let mut b = func.builder();
        b.arg(&q).arg(&k).arg(&v);
        push_all(&mut b, &strides);
        for part in &bias {
            match part {
                Some(view) => b.arg(view),
                None => b.arg(&null),
            };
        }
        match &norm {
            Some((wq, wk, _)) => b.arg(wq).arg(wk),
            None => b.arg(&null).arg(&null),
        };
        b.arg(&eps);
        targets.push_rotation(&mut b);
        targets.push_outputs(&mut b, &mut out);
        push_all(&mut b, &dims);
        // One warp per head: a decode step's few tokens still spread over several SMs.
        let head_blocks = (num_heads + 2 * num_kv_heads).div_ceil(THREADS as usize / 32) as u32;
        let cfg = LaunchConfig { grid_dim: (num_tokens as u32, head_blocks, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: arguments match `qkv_*` in the .cu; shapes, dtypes and layouts were checked by
        // `fused`, and every slot lies inside the caches.
        unsafe { b.launch(cfg) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

fn push_all<'a>(b: &mut LaunchArgs<'a>, ints: &'a [i32]) {
    for v in ints {
        b.arg(v);
    }
}
