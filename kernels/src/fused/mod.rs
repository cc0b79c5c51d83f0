//! Fused normalisation and elementwise ops: each replaces a chain of candle ops, and the
//! intermediate tensors between them, with one pass over memory (one kernel on a GPU).
//!
//! Every op takes f32, bf16 or f16 and computes in f32, rounding once on output.

mod rms_norm;
mod rope;
mod silu_mul;

pub use rms_norm::{add_rms_norm, rms_norm};
pub use rope::rotary_embedding;
pub use silu_mul::silu_mul;

use candle_core::{Layout, Result};

/// The contiguous elements of an input, from its first one.
fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}
