//! Storing a step's new keys and values into their cache slots.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Tensor};

use crate::device_metadata::DeviceMetadata;

#[cfg(feature = "cuda")]
mod cuda;

/// Copies row `i` of `key`/`value` (`(num_tokens, num_kv_heads, head_dim)`) into slot
/// `slot_mapping[i]` of the caches (`(num_blocks, block_size, num_kv_heads, head_dim)`), in place.
///
/// On a GPU this copies `slot_mapping` to the device on every call; [`write_kv_step`] uses the
/// copy a [`DeviceMetadata`] already holds.
pub fn write_kv(
    key_cache: &Tensor,
    value_cache: &Tensor,
    key: &Tensor,
    value: &Tensor,
    slot_mapping: &[u32],
) -> Result<()> {
    write(key_cache, value_cache, key, value, slot_mapping, None)
}

/// [`write_kv`] to the slots of `metadata`'s new tokens.
pub fn write_kv_step(
    key_cache: &Tensor,
    value_cache: &Tensor,
    key: &Tensor,
    value: &Tensor,
    metadata: &DeviceMetadata,
) -> Result<()> {
    write(key_cache, value_cache, key, value, &metadata.host().slot_mapping, Some(metadata))
}

fn write(
    key_cache: &Tensor,
    value_cache: &Tensor,
    key: &Tensor,
    value: &Tensor,
    slot_mapping: &[u32],
    #[allow(unused_variables)] metadata: Option<&DeviceMetadata>,
) -> Result<()> {
    let (num_blocks, block_size, num_kv_heads, head_dim) = key_cache.dims4()?;
    let (num_tokens, kv_heads, dim) = key.dims3()?;
    if (kv_heads, dim) != (num_kv_heads, head_dim) || value.dims() != key.dims() {
        candle_core::bail!("write_kv: k/v {:?} do not fit cache {:?}", key.dims(), key_cache.dims());
    }
    if num_tokens != slot_mapping.len() {
        candle_core::bail!("write_kv: {num_tokens} tokens but {} slots", slot_mapping.len());
    }
    if let Some(s) = slot_mapping.iter().find(|&&s| s as usize >= num_blocks * block_size) {
        candle_core::bail!("write_kv: slot {s} is outside the cache");
    }
    if num_tokens == 0 {
        return Ok(());
    }
    let op = WriteSlots {
        slot_mapping,
        row: num_kv_heads * head_dim,
        #[cfg(feature = "cuda")]
        metadata,
    };
    key_cache.inplace_op2(&key.contiguous()?, &op)?;
    value_cache.inplace_op2(&value.contiguous()?, &op)
}

struct WriteSlots<'a> {
    slot_mapping: &'a [u32],
    /// Elements per slot: `num_kv_heads * head_dim`.
    row: usize,
    /// Where the GPU finds `slot_mapping` already on the device, if anywhere.
    #[cfg(feature = "cuda")]
    metadata: Option<&'a DeviceMetadata>,
}

impl WriteSlots<'_> {
    fn copy<T: Copy>(&self, dst: &mut [T], dst_l: &Layout, src: &[T], src_l: &Layout) -> Result<()> {
        let (Some((d0, d1)), Some((s0, s1))) = (dst_l.contiguous_offsets(), src_l.contiguous_offsets()) else {
            candle_core::bail!("write_kv: cache and source must be contiguous");
        };
        let (dst, src) = (&mut dst[d0..d1], &src[s0..s1]);
        for (i, &slot) in self.slot_mapping.iter().enumerate() {
            let slot = slot as usize;
            dst[slot * self.row..(slot + 1) * self.row].copy_from_slice(&src[i * self.row..(i + 1) * self.row]);
        }
        Ok(())
    }
}

impl InplaceOp2 for WriteSlots<'_> {
    fn name(&self) -> &'static str {
        "write-kv"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout, src: &CpuStorage, src_l: &Layout) -> Result<()> {
        match (dst, src) {
            (CpuStorage::F32(d), CpuStorage::F32(s)) => self.copy(d, dst_l, s, src_l),
            (CpuStorage::BF16(d), CpuStorage::BF16(s)) => self.copy(d, dst_l, s, src_l),
            (CpuStorage::F16(d), CpuStorage::F16(s)) => self.copy(d, dst_l, s, src_l),
            (d, s) => candle_core::bail!("write_kv: cache {:?} and source {:?} dtypes differ or are unsupported", d.dtype(), s.dtype()),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dst_l: &Layout,
        src: &candle_core::CudaStorage,
        src_l: &Layout,
    ) -> Result<()> {
        self.cuda(dst, dst_l, src, src_l)
    }
}
