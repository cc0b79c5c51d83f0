//! qwen-serve: an OpenAI-compatible inference server for Qwen models.
//!
//! Dependency direction: this crate -> `qwen_serve_models` -> `qwen_serve_kernels`.

pub mod api;
pub mod bench;
pub mod cli;
pub mod device;
pub mod engine;
pub mod error;
pub mod generate;
pub mod loader;
pub mod tokenizer;
