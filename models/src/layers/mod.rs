//! Building blocks shared by the Qwen models.

pub mod attention;
mod embedding;
pub mod linear;
pub mod mlp;
pub mod moe;
pub mod rms_norm;
pub mod rotary;

pub use embedding::Embedding;
