//! Fused normalisation and elementwise ops: each replaces a chain of candle ops, and the
//! intermediate tensors between them, with one pass over memory (one kernel on a GPU).
//!
//! Every op takes f32, bf16 or f16 and computes in f32, rounding once on output. On the CPU a
//! row's result never depends on the other rows of the batch or on the instruction set used
//! ([`simd`]), and each output is written once, into memory that is not zeroed first.

pub(crate) mod exp;
mod rms_norm;
mod rope;
mod silu_mul;
pub(crate) mod simd;

pub use rms_norm::{add_rms_norm, rms_norm};
pub use rope::rotary_embedding;
pub use silu_mul::silu_mul;

use std::mem::MaybeUninit;

use candle_core::{Layout, Result};

/// The contiguous elements of an input, from its first one.
fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// A vector of `len` elements written by `fill`, without zeroing it first.
///
/// # Safety
/// `fill` must write every element of the slice it gets.
unsafe fn filled<T>(len: usize, fill: impl FnOnce(&mut [MaybeUninit<T>])) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: the caller guarantees `fill` initialised the first `len` elements.
    unsafe { v.set_len(len) };
    v
}

/// Inputs and comparisons shared by the ops' tests.
#[cfg(test)]
mod test_data {
    use candle_core::{Device, Tensor, WithDType};

    use crate::elem::Elem;

    /// `n` normal samples times `scale`, rounded to T.
    pub(crate) fn randn<T: WithDType>(n: usize, scale: f32) -> Vec<T> {
        let x = (Tensor::randn(0f32, 1., n, &Device::Cpu).unwrap() * scale as f64).unwrap();
        x.to_dtype(T::DTYPE).unwrap().to_vec1::<T>().unwrap()
    }

    /// Exact bit patterns (widening bf16 and f16 to f32 is exact), to compare results exactly.
    pub(crate) fn bits<T: Elem>(v: &[T]) -> Vec<u32> {
        v.iter().map(|v| v.to_f32().to_bits()).collect()
    }
}
