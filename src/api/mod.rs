//! The OpenAI-compatible HTTP API over the engine handle. Handlers never see tensors; wire
//! types are validated into engine requests in `validate.rs`; errors become HTTP only in
//! `crate::error`.

mod chat;
mod completions;
mod embeddings;
mod fim;
mod generation;
mod infill;
mod llama;
mod llama_sampling;
mod messages;
pub mod metrics;
mod misc;
mod openapi;
mod output_format;
mod pooling;
pub mod reasoning;
pub mod rerank;
mod responses;
pub mod server;
mod sse;
pub mod state;
pub mod tool_parser;
pub mod types;
pub mod validate;
