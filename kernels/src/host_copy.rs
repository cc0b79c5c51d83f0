//! Overwriting a tensor's elements with host values in place, without a new allocation: how a
//! CUDA graph's inputs, which live at fixed device addresses, get each step's values.

use candle_core::{CpuStorage, InplaceOp1, Layout, Result, Tensor};

/// Copies `values` over the elements of `t`, a contiguous u32 tensor of as many elements (on a
/// GPU a copy ordered on the device's stream).
pub fn overwrite_u32(t: &Tensor, values: &[u32]) -> Result<()> {
    if values.len() != t.elem_count() {
        candle_core::bail!("overwrite_u32: {} values for a tensor of {}", values.len(), t.elem_count());
    }
    t.inplace_op1(&HostCopy(values))
}

struct HostCopy<'a>(&'a [u32]);

impl HostCopy<'_> {
    fn range(layout: &Layout) -> Result<std::ops::Range<usize>> {
        match layout.contiguous_offsets() {
            Some((start, end)) => Ok(start..end),
            None => candle_core::bail!("overwrite_u32: the tensor must be contiguous"),
        }
    }
}

impl InplaceOp1 for HostCopy<'_> {
    fn name(&self) -> &'static str {
        "overwrite-u32"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let CpuStorage::U32(data) = storage else {
            candle_core::bail!("overwrite_u32: the tensor must be u32");
        };
        data[Self::range(layout)?].copy_from_slice(self.0);
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &mut candle_core::CudaStorage, layout: &Layout) -> Result<()> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::WrapErr;
        // The stream's own copy, not the device's: candle's upload cache (on while a graph is
        // warmed up or captured) would keep every step's values for good.
        let stream = storage.device().cuda_stream();
        let mut dst = storage.as_cuda_slice_mut::<u32>()?.slice_mut(Self::range(layout)?);
        stream.memcpy_htod(self.0, &mut dst).w()
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::overwrite_u32;

    #[test]
    fn overwrites_in_place() {
        let t = Tensor::new(&[1u32, 2, 3, 4, 5], &Device::Cpu).unwrap();
        let view = t.narrow(0, 1, 3).unwrap();
        overwrite_u32(&view, &[7, 8, 9]).unwrap();
        assert_eq!(t.to_vec1::<u32>().unwrap(), [1, 7, 8, 9, 5]);
        assert!(overwrite_u32(&view, &[1]).is_err());
    }
}
