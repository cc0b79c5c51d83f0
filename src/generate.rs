//! Single-sequence generation over the paged cache: prefill the prompt, then decode.

use std::time::{Duration, Instant};

use candle_core::Tensor;
use qwen_serve_models::{AttentionMetadata, CausalLm, ForwardBatch, KvCache, ModelError};
use thiserror::Error;

use crate::engine::sampler::{Sampler, SamplingParams};
use crate::loader::LoadedModel;
use crate::tokenizer::{IncrementalDecoder, TokenizerError};

const BLOCK_SIZE: usize = 16;
/// Prompt tokens per forward: bounds activation memory for long prompts.
const PREFILL_CHUNK: usize = 512;

#[derive(Debug, Error)]
pub enum GenerateError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("prompt ({prompt} tokens) + max_tokens ({max_tokens}) exceeds the model's context length ({context})")]
    TooLong { prompt: usize, max_tokens: usize, context: usize },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token was produced (it is not part of the text).
    Stop,
    /// `max_tokens` were generated.
    Length,
}

#[derive(Debug, Clone)]
pub struct GenerateOutput {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

/// A cache with exactly the blocks `num_tokens` need, and its block table.
fn cache_for(model: &dyn CausalLm, num_tokens: usize) -> Result<(KvCache, Vec<u32>), ModelError> {
    let num_blocks = num_tokens.div_ceil(BLOCK_SIZE).max(1);
    let cache = KvCache::new(model.config(), num_blocks, BLOCK_SIZE, model.dtype(), model.device())?;
    Ok((cache, (0..num_blocks as u32).collect()))
}

/// Runs `ids[start..end]` after `ids[..start]` are cached; logits for `logits_rows` (relative).
fn step(model: &dyn CausalLm, cache: &mut KvCache, table: &[u32], ids: &[u32], start: usize, end: usize, logits_rows: Vec<u32>) -> Result<Tensor, ModelError> {
    let batch = ForwardBatch {
        input_ids: ids[start..end].to_vec(),
        attention: AttentionMetadata::single(table, BLOCK_SIZE, end, end - start),
        logits_indices: logits_rows,
    };
    model.forward(&batch, cache)
}

/// Logits `(ids.len(), vocab)` for every position of `ids` (row `i` predicts token `i + 1`):
/// teacher forcing, prompt logprobs and parity tests.
pub fn score(model: &dyn CausalLm, ids: &[u32]) -> Result<Tensor, ModelError> {
    let (mut cache, table) = cache_for(model, ids.len())?;
    let mut rows = vec![];
    for start in (0..ids.len()).step_by(PREFILL_CHUNK) {
        let end = (start + PREFILL_CHUNK).min(ids.len());
        rows.push(step(model, &mut cache, &table, ids, start, end, (0..(end - start) as u32).collect())?);
    }
    Ok(Tensor::cat(&rows, 0)?)
}

/// Generates up to `max_tokens` after `prompt`, passing each completed piece of text to
/// `on_text` as soon as it is known.
pub fn generate(
    loaded: &LoadedModel,
    prompt: &[u32],
    max_tokens: usize,
    sampling: &SamplingParams,
    mut on_text: impl FnMut(&str) -> std::io::Result<()>,
) -> Result<GenerateOutput, GenerateError> {
    let model = loaded.model.as_ref();
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    let context = model.config().max_position_embeddings;
    if prompt.len() + max_tokens > context {
        return Err(GenerateError::TooLong { prompt: prompt.len(), max_tokens, context });
    }
    let (mut cache, table) = cache_for(model, prompt.len() + max_tokens)?;
    let mut sampler = Sampler::new(sampling.seed);
    let mut decoder = IncrementalDecoder::new(true);
    let mut ids = prompt.to_vec();
    let mut text = String::new();
    let started = Instant::now();
    let mut logits = None;
    for start in (0..prompt.len()).step_by(PREFILL_CHUNK) {
        let end = (start + PREFILL_CHUNK).min(prompt.len());
        logits = Some(step(model, &mut cache, &table, &ids, start, end, vec![(end - start - 1) as u32])?);
    }
    let prefill_time = started.elapsed();
    let mut logits = logits.expect("non-empty prompt");
    let mut finish_reason = FinishReason::Length;
    while ids.len() < prompt.len() + max_tokens {
        let row: Vec<f32> = logits.squeeze(0).and_then(|l| l.to_vec1()).map_err(ModelError::from)?;
        let next = sampler.sample(&row, sampling);
        if loaded.eos_token_ids.contains(&next) {
            finish_reason = FinishReason::Stop;
            break;
        }
        ids.push(next);
        let delta = decoder.push(&loaded.tokenizer, next)?;
        if !delta.is_empty() {
            on_text(&delta)?;
            text.push_str(&delta);
        }
        if ids.len() == prompt.len() + max_tokens {
            break;
        }
        logits = step(model, &mut cache, &table, &ids, ids.len() - 1, ids.len(), vec![0])?;
    }
    let rest = decoder.finish(&loaded.tokenizer)?;
    if !rest.is_empty() {
        on_text(&rest)?;
        text.push_str(&rest);
    }
    Ok(GenerateOutput {
        tokens: ids[prompt.len()..].to_vec(),
        text,
        finish_reason,
        prefill_time,
        decode_time: started.elapsed() - prefill_time,
    })
}
