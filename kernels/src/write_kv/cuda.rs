//! The CUDA forward of [`WriteSlots`]: `cuda/write_kv.cu`.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, DType, Layout, Result};
use half::{bf16, f16};

use super::WriteSlots;
use crate::cuda::{self, kernel_name, load, CudaElem, Locked};

const THREADS: usize = 256;

impl WriteSlots<'_> {
    pub(super) fn cuda(&self, dst: &mut CudaStorage, dst_l: &Layout, src: &CudaStorage, src_l: &Layout) -> Result<()> {
        match (dst.dtype(), src.dtype()) {
            (DType::F32, DType::F32) => self.cuda_typed::<f32>(dst, dst_l, src, src_l),
            (DType::BF16, DType::BF16) => self.cuda_typed::<bf16>(dst, dst_l, src, src_l),
            (DType::F16, DType::F16) => self.cuda_typed::<f16>(dst, dst_l, src, src_l),
            (d, s) => candle_core::bail!("write_kv: cache {d:?} and source {s:?} dtypes differ or are unsupported"),
        }
    }

    fn cuda_typed<T: CudaElem>(&self, dst: &mut CudaStorage, dst_l: &Layout, src: &CudaStorage, src_l: &Layout) -> Result<()> {
        let dev = dst.device().clone();
        let num_tokens = self.slot_mapping.len();
        let src = cuda::input::<T>(src, src_l, "write_kv: source")?;
        let Some((d0, d1)) = dst_l.contiguous_offsets() else {
            candle_core::bail!("write_kv: cache must be contiguous");
        };
        let mut cache = dst.as_cuda_slice_mut::<T>()?.slice_mut(d0..d1);
        // The step's copy of the slots if there is one, else a copy made now.
        let guard = self.metadata.and_then(|m| m.cuda()).map(|p| (Locked::new(&p.data), p.slot_mapping.clone()));
        let uploaded;
        let slots = match &guard {
            Some((data, range)) => data.view::<u32>(range.clone(), "slot_mapping")?,
            None => {
                uploaded = dev.clone_htod(self.slot_mapping)?;
                uploaded.slice(..)
            }
        };
        let func = load!(dev, cuda::WRITE_KV, kernel_name::<T>("write_kv"))?;
        let row = self.row as i32;
        let mut b = func.builder();
        b.arg(&mut cache).arg(&src).arg(&slots).arg(&row);
        let cfg = LaunchConfig {
            grid_dim: (num_tokens as u32, self.row.div_ceil(THREADS) as u32, 1),
            block_dim: (THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match `write_kv_*`; every slot was checked against the cache size.
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }
}
