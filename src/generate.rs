//! One prompt through the engine, streamed as text (the `generate` command); and teacher-forced
//! scoring of a token sequence (parity tests, prompt logprobs references).

use std::time::{Duration, Instant};

use candle_core::Tensor;
use qwen_serve_models::{AttentionMetadata, CausalLm, ForwardBatch, KvCache, ModelError};
use thiserror::Error;

use crate::engine::{EngineHandle, EngineRequest, Event, FinishReason, SamplingParams, SubmitError};

/// Prompt tokens per forward when scoring: bounds activation memory for long inputs.
const SCORE_CHUNK: usize = 512;
const SCORE_BLOCK_SIZE: usize = 16;

#[derive(Debug, Error)]
pub enum GenerateError {
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error("the engine stopped before the request finished")]
    EngineStopped,
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

#[derive(Debug, Clone)]
pub struct GenerateOutput {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    /// Submit to first token (prompt processing).
    pub time_to_first_token: Duration,
    /// First token to the end.
    pub decode_time: Duration,
}

/// Generates after `prompt`, passing each completed piece of text to `on_text` as soon as it
/// is known.
pub fn generate(
    engine: &EngineHandle,
    prompt: Vec<u32>,
    params: SamplingParams,
    mut on_text: impl FnMut(&str) -> std::io::Result<()>,
) -> Result<GenerateOutput, GenerateError> {
    let started = Instant::now();
    let mut stream = engine.submit(EngineRequest { prompt, params })?;
    let (mut tokens, mut text, mut first) = (vec![], String::new(), None);
    while let Some(event) = stream.blocking_recv() {
        match event {
            Event::Token { token, text: delta, .. } => {
                first.get_or_insert_with(Instant::now);
                tokens.push(token);
                if !delta.is_empty() {
                    on_text(&delta)?;
                    text.push_str(&delta);
                }
            }
            Event::Finished { reason, text: rest, .. } => {
                if !rest.is_empty() {
                    on_text(&rest)?;
                    text.push_str(&rest);
                }
                let first = first.unwrap_or_else(Instant::now);
                return Ok(GenerateOutput {
                    tokens,
                    text,
                    finish_reason: reason,
                    time_to_first_token: first - started,
                    decode_time: first.elapsed(),
                });
            }
            Event::PromptLogprobs(_) | Event::Pooled { .. } => {}
        }
    }
    Err(GenerateError::EngineStopped)
}

/// f32 logits `(ids.len(), vocab)` for every position of `ids` (row `i` predicts token `i + 1`),
/// computed directly on the model with a private cache.
pub fn score(model: &dyn CausalLm, ids: &[u32]) -> Result<Tensor, ModelError> {
    score_with_cache(model, ids, model.dtype())
}

/// [`score`] over a KV cache of `cache_dtype` (`--kv-cache-dtype`).
pub fn score_with_cache(model: &dyn CausalLm, ids: &[u32], cache_dtype: candle_core::DType) -> Result<Tensor, ModelError> {
    let num_blocks = ids.len().div_ceil(SCORE_BLOCK_SIZE).max(1);
    let mut cache = KvCache::new(model.config(), num_blocks, SCORE_BLOCK_SIZE, cache_dtype, model.device())?;
    let table: Vec<u32> = (0..num_blocks as u32).collect();
    let mut rows = vec![];
    for start in (0..ids.len()).step_by(SCORE_CHUNK) {
        let end = (start + SCORE_CHUNK).min(ids.len());
        let batch = ForwardBatch {
            input_ids: ids[start..end].to_vec(),
            attention: AttentionMetadata::single(&table, SCORE_BLOCK_SIZE, end, end - start),
            logits_indices: (0..(end - start) as u32).collect(),
            hidden_rows: vec![],
        };
        rows.push(model.forward(&batch, &mut cache)?.to_dtype(candle_core::DType::F32)?);
    }
    Ok(Tensor::cat(&rows, 0)?)
}
