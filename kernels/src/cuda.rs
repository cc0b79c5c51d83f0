//! The CUDA kernels' PTX (compiled by build.rs from `cuda/*.cu`) and the helpers the ops' `cuda_fwd`
//! share to load and feed them.
//!
//! Every kernel is instantiated per dtype as `<kernel>_<f32|bf16|f16>`; a module is JIT-compiled
//! by the driver and cached by candle's device the first time one of its kernels is used.

use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaSlice, CudaView, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, CudaDevice};
use candle_core::{CudaStorage, Layout, Result, Storage, Tensor, WithDType};

pub(crate) struct Module {
    pub name: &'static str,
    pub ptx: &'static str,
}

macro_rules! module {
    ($const:ident, $file:literal) => {
        pub(crate) const $const: Module = Module {
            name: concat!("qwen_serve_", $file),
            ptx: include_str!(concat!(env!("OUT_DIR"), "/", $file, ".ptx")),
        };
    };
}

module!(PAGED_ATTENTION, "paged_attention");
module!(PAGED_ATTENTION_MMA, "paged_attention_mma");
module!(WRITE_KV, "write_kv");
module!(RMS_NORM, "rms_norm");
module!(ROPE, "rope");
module!(SILU_MUL, "silu_mul");
module!(QKV, "qkv");
module!(SMALL_MATMUL, "small_matmul");
module!(QKV_MATMUL, "qkv_matmul");
module!(ARGMAX, "argmax");
module!(TOP_K, "top_k");
module!(SAMPLE, "sample");

/// `<kernel>_<dtype of T>`: the name of one instantiation of a kernel template.
pub(crate) fn kernel_name<T: WithDType>(kernel: &str) -> String {
    format!("{kernel}_{}", T::DTYPE.as_str())
}

/// `load!(dev, MODULE, name)`: the kernel `name` of `MODULE`, loaded (once) on `dev`. A macro
/// because candle does not export the type of the loaded function.
macro_rules! load {
    ($dev:expr, $module:expr, $name:expr) => {
        $dev.get_or_load_custom_func(&$name, $module.name, $module.ptx)
    };
}
pub(crate) use load;

/// Element types the CUDA kernels are instantiated for.
pub(crate) trait CudaElem: CudaDType + DeviceRepr + WithDType {}
impl<T: CudaDType + DeviceRepr + WithDType> CudaElem for T {}

/// The elements of a contiguous input, from its first one.
pub(crate) fn input<'a, T: CudaElem>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(s.as_cuda_slice::<T>()?.slice(start..end)),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// Like [`input`], also requiring the first element to start a 16-byte vector (the kernels load
/// rows with 16-byte accesses; device allocations themselves are 256-byte aligned).
pub(crate) fn aligned_input<'a, T: CudaElem>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    if !(l.start_offset() * std::mem::size_of::<T>()).is_multiple_of(16) {
        candle_core::bail!("{what} must start on a 16-byte boundary (offset {})", l.start_offset());
    }
    input(s, l, what)
}

/// A driver question whose answer never changes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Query {
    /// SMs of the device with this ordinal.
    Sms(usize),
    /// Compute capability (major * 10 + minor) of the device with this ordinal.
    Capability(usize),
    /// Resident blocks per SM of a function (its handle: a loaded function stays loaded, candle
    /// keeps its modules for the device's life) at this many threads a block.
    Occupancy(usize, u32),
}

/// `ask`'s answer to `query`, asked once: a few-rows launch per projection would otherwise query
/// the driver twice on every eager step.
fn memo(query: Query, ask: impl FnOnce() -> Result<usize>) -> Result<usize> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static ANSWERS: OnceLock<Mutex<HashMap<Query, usize>>> = OnceLock::new();
    let answers = ANSWERS.get_or_init(Default::default);
    if let Some(&v) = answers.lock().unwrap_or_else(|e| e.into_inner()).get(&query) {
        return Ok(v);
    }
    let v = ask()?;
    answers.lock().unwrap_or_else(|e| e.into_inner()).insert(query, v);
    Ok(v)
}

/// The device's number of SMs.
pub(crate) fn sm_count(dev: &CudaDevice) -> Result<usize> {
    use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute;
    use candle_core::cuda_backend::WrapErr;
    let ctx = dev.cuda_stream().context().clone();
    memo(Query::Sms(ctx.ordinal()), || Ok(ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).w()? as usize))
}

/// The device's compute capability as major * 10 + minor (90 for an H100).
pub(crate) fn compute_capability(dev: &CudaDevice) -> Result<usize> {
    use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute;
    use candle_core::cuda_backend::WrapErr;
    let ctx = dev.cuda_stream().context().clone();
    memo(Query::Capability(ctx.ordinal()), || {
        let major = ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR).w()? as usize;
        let minor = ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR).w()? as usize;
        Ok(major * 10 + minor)
    })
}

/// Blocks of `threads` for a grid-stride launch of `func` that wants `wanted`: at most as many as
/// can be resident at once (occupancy times SMs), so that no second wave of a few blocks each
/// owning a share of the work trails the first.
pub(crate) fn resident_blocks(dev: &CudaDevice, func: &CudaFunction, threads: u32, wanted: usize) -> Result<u32> {
    use candle_core::cuda_backend::WrapErr;
    let per_sm = memo(Query::Occupancy(func.cu_function() as usize, threads), || {
        Ok(func.occupancy_max_active_blocks_per_multiprocessor(threads, 0, None).w()?.max(1) as usize)
    })?;
    Ok(wanted.clamp(1, sm_count(dev)? * per_sm) as u32)
}

/// An uninitialised output of `len` elements (the kernel writes every one).
pub(crate) fn output<T: CudaElem>(dev: &CudaDevice, len: usize) -> Result<CudaSlice<T>> {
    // SAFETY: every caller launches a kernel that writes all `len` elements before any read.
    unsafe { dev.alloc::<T>(len.max(1)) }
}

/// Read access to a tensor on the GPU for the duration of a launch.
pub(crate) struct Locked<'a> {
    guard: candle_core::StorageRef<'a>,
    layout: &'a Layout,
}

impl<'a> Locked<'a> {
    pub(crate) fn new(t: &'a Tensor) -> Self {
        let (guard, layout) = t.storage_and_layout();
        Self { guard, layout }
    }

    fn slice<T: CudaElem>(&self, what: &str) -> Result<&CudaSlice<T>> {
        let Storage::Cuda(s) = &*self.guard else {
            candle_core::bail!("{what} must be on the GPU");
        };
        s.as_cuda_slice::<T>()
    }

    /// Elements `range` of the (contiguous) tensor.
    pub(crate) fn view<T: CudaElem>(&self, range: std::ops::Range<usize>, what: &str) -> Result<CudaView<'_, T>> {
        let Some((start, end)) = self.layout.contiguous_offsets() else {
            candle_core::bail!("{what} must be contiguous");
        };
        if range.end > end - start {
            candle_core::bail!("{what}: range {range:?} outside a tensor of {}", end - start);
        }
        Ok(self.slice::<T>(what)?.slice(start + range.start..start + range.end))
    }

    pub(crate) fn all<T: CudaElem>(&self, what: &str) -> Result<CudaView<'_, T>> {
        self.view(0..self.layout.shape().elem_count(), what)
    }

    /// A `(rows, width)` tensor whose rows are each contiguous but may lie any distance apart:
    /// the storage from its first element on, and that distance in elements.
    pub(crate) fn rows<T: CudaElem>(&self, what: &str) -> Result<(CudaView<'_, T>, usize)> {
        let (num_rows, width) = self.layout.shape().dims2()?;
        let stride = self.layout.stride();
        if width > 1 && stride[1] != 1 {
            candle_core::bail!("the rows of {what} must be contiguous");
        }
        let row_stride = if num_rows > 1 { stride[0] } else { width };
        Ok((self.slice::<T>(what)?.slice(self.layout.start_offset()..), row_stride))
    }
}
