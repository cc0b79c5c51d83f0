//! llama.cpp's own HTTP API, as clients written for llama-server call it: `POST /completion`
//! (also routed as `/completions`, as llama-server does) here, and `/infill` (`infill.rs`) on
//! the same conventions: llama.cpp's sampling fields (`llama_sampling.rs`), its response
//! (`content`, `stop`, `stop_type`, `tokens_predicted`, `timings`, ...), its SSE chunks
//! (`{"content": ..., "stop": false}`), `n_probs` as `completion_probabilities`, and `grammar`
//! / `json_schema` holding the output.

use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::generation::{collect, Timing, ABORTED};
use super::output_format;
use super::sse::sse_response;
use super::state::{ApiJson, AppState, LlamaJson};
use super::llama_sampling::LlamaSampling;
use super::types::StructuredOutputFields;
use super::validate;
use crate::engine::sampler::{Logprobs, SamplingParams};
use crate::engine::{EngineRequest, Event, FinishReason, StopReason, Usage};
use crate::error::ApiError;
use crate::tokenizer::Tokenizer;

/// `POST /completion`: llama.cpp's plain completion.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// A string, token ids, or (llama.cpp's mixed form) strings and token ids in one list.
    pub prompt: Value,
    #[serde(flatten)]
    pub sampling: LlamaSampling,
    /// `grammar` and `json_schema` (and vLLM's fields, as on `/v1/completions`).
    #[serde(flatten)]
    pub structured: StructuredOutputFields,
}

pub async fn completion(State(state): State<AppState>, ApiJson(req): LlamaJson<CompletionRequest>) -> Result<Response, ApiError> {
    let started = Instant::now();
    let prompt = prompt_tokens(state.engine.tokenizer(), &req.prompt)?;
    let (format, field) = output_format::requested(None, &req.structured, &state.formats)?;
    let (mut params, fields) = req.sampling.params(&state.engine, prompt.len())?;
    if !params.embed {
        // (With `n_predict` 0 there is no output to hold to a format.)
        validate::held_output_compatible(&fields, &format, &field, false, false)?;
        params.format = format;
    }
    respond(&state, started, prompt, params, &req.sampling, "prompt").await
}

/// llama.cpp's `prompt`: text, token ids, or a list mixing both (read in order as one prompt).
fn prompt_tokens(tokenizer: &Tokenizer, prompt: &Value) -> Result<Vec<u32>, ApiError> {
    const FORMS: &str = "a string, a list of token ids, or a list of strings and token ids";
    let parts: Vec<&Value> = match prompt {
        Value::String(_) => vec![prompt],
        Value::Array(items) => items.iter().collect(),
        _ => return Err(ApiError::invalid("prompt", format!("`prompt` must be {FORMS}"))),
    };
    if parts.iter().filter(|p| p.is_string()).count() > 1 && parts.iter().all(|p| p.is_string()) {
        return Err(ApiError::invalid("prompt", "`prompt` as several strings (several prompts) is not supported on /completion: send one request each, or use /v1/completions"));
    }
    let mut ids = Vec::new();
    for part in parts {
        match part {
            Value::String(text) => ids.extend(tokenizer.encode(text)?),
            Value::Number(n) => match n.as_u64().filter(|&id| id < tokenizer.vocab_size() as u64) {
                Some(id) => ids.push(id as u32),
                None => return Err(ApiError::invalid("prompt", format!("`prompt` token id {n} is outside the vocabulary [0, {})", tokenizer.vocab_size()))),
            },
            _ => return Err(ApiError::invalid("prompt", format!("`prompt` must be {FORMS}"))),
        }
    }
    if ids.is_empty() {
        return Err(ApiError::invalid("prompt", "`prompt` is empty"));
    }
    Ok(ids)
}

/// Runs one llama.cpp-style request: the final reply as JSON, or (`stream`) SSE chunks of text
/// and the reply last. `prompt_field` names the prompt where it is too long.
pub async fn respond(state: &AppState, started: Instant, prompt: Vec<u32>, params: SamplingParams, sampling: &LlamaSampling, prompt_field: &str) -> Result<Response, ApiError> {
    let engine = &state.engine;
    let probs = params.logprobs.is_some();
    let evaluated = prompt.len();
    // `n_predict` 0: the limit is what stopped it, as llama-server says.
    let prompt_only = params.embed;
    let reason_of = move |reason: FinishReason| if prompt_only && reason == FinishReason::Stop { FinishReason::Length } else { reason };
    let events = engine.submit(EngineRequest { prompt, params }).map_err(|e| validate::length_error(e, engine.max_sequence_tokens(), prompt_field, "n_predict"))?;
    let model = state.model_name.clone();
    let tokenizer = engine.tokenizer().clone();
    let mut timing = Timing::new(started);
    if sampling.stream {
        let metrics = state.metrics.clone();
        return Ok(sse_response(move |tx| async move {
            let mut events = events;
            let mut predicted = 0;
            while let Some(event) = events.recv().await {
                match event {
                    Event::PromptLogprobs(_) | Event::Pooled { .. } => {}
                    Event::Token { text, token, logprobs, .. } => {
                        timing.token();
                        predicted += 1;
                        let mut chunk = json!({"index": 0, "content": text, "tokens": [token], "stop": false, "tokens_predicted": predicted, "tokens_evaluated": evaluated});
                        if let (true, Some(l)) = (probs, &logprobs) {
                            chunk["completion_probabilities"] = json!([probabilities(&tokenizer, token, l)]);
                        } else if text.is_empty() {
                            continue;
                        }
                        if !tx.json(&chunk).await {
                            return;
                        }
                    }
                    Event::Finished { reason: FinishReason::Abort, .. } => break,
                    Event::Finished { reason, stop_reason, text, usage, .. } => {
                        tx.json(&reply(&model, text, &[], reason_of(reason), stop_reason.as_ref(), usage, &timing)).await;
                        timing.record(&metrics);
                        return;
                    }
                }
            }
            tx.json(&json!({"error": {"message": "the engine stopped before the request finished", "type": "server_error"}})).await;
        }));
    }
    let collected = collect(events, 1, &mut timing).await?;
    let c = collected.choices.into_iter().next().expect("one choice");
    if c.finish_reason == Some(FinishReason::Abort) {
        return Err(ApiError::internal(ABORTED));
    }
    timing.record(&state.metrics);
    let tokens = if sampling.return_tokens { c.tokens.as_slice() } else { &[] };
    let mut body = reply(&model, c.text, tokens, reason_of(c.finish_reason.unwrap_or(FinishReason::Stop)), c.stop_reason.as_ref(), c.usage, &timing);
    if probs {
        body["completion_probabilities"] = c.tokens.iter().zip(&c.logprobs).map(|(&t, l)| probabilities(&tokenizer, t, l)).collect();
    }
    Ok(Json(body).into_response())
}

/// One step of `completion_probabilities`: the token drawn and the most likely ones, each
/// with its id, text, bytes and logprob.
fn probabilities(tokenizer: &Tokenizer, token: u32, l: &Logprobs) -> Value {
    let entry = |id: u32, logprob: f32| {
        let text = tokenizer.decode(&[id], false).unwrap_or_default();
        json!({"id": id, "token": text, "bytes": tokenizer.piece_bytes(id), "logprob": logprob})
    };
    let mut step = entry(token, l.token_logprob);
    step["top_logprobs"] = l.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
    step
}

/// llama.cpp's final response: the text (`tokens`: its ids, if asked for), why it stopped,
/// token counts and timings.
fn reply(model: &str, content: String, tokens: &[u32], reason: FinishReason, stop_reason: Option<&StopReason>, usage: Usage, timing: &Timing) -> Value {
    let (stop_type, word) = match (reason, stop_reason) {
        (FinishReason::Length, _) => ("limit", String::new()),
        (_, Some(StopReason::String(s))) => ("word", s.clone()),
        _ => ("eos", String::new()),
    };
    let (ttft, _, e2e) = timing.summary();
    let prompt_ms = ttft.unwrap_or(e2e).as_secs_f64() * 1e3;
    let predicted_ms = (e2e.as_secs_f64() * 1e3 - prompt_ms).max(0.0);
    let evaluated = usage.num_prompt_tokens.saturating_sub(usage.num_cached_tokens);
    let per_second = |n: usize, ms: f64| if ms > 0.0 { n as f64 * 1e3 / ms } else { 0.0 };
    json!({
        "index": 0,
        "content": content,
        "tokens": tokens,
        "stop": true,
        "model": model,
        "tokens_predicted": usage.num_output_tokens,
        "tokens_evaluated": usage.num_prompt_tokens,
        "tokens_cached": usage.num_cached_tokens,
        "truncated": false,
        "stop_type": stop_type,
        "stopping_word": word,
        "timings": {
            "prompt_n": evaluated,
            "prompt_ms": prompt_ms,
            "prompt_per_second": per_second(evaluated, prompt_ms),
            "predicted_n": usage.num_output_tokens,
            "predicted_ms": predicted_ms,
            "predicted_per_second": per_second(usage.num_output_tokens, predicted_ms),
        },
    })
}
