//! llama.cpp's own HTTP API, as clients written for llama-server call it: `POST /completion`
//! (also routed as `/completions`, as llama-server does) here, and `/infill` (`infill.rs`) on
//! the same conventions: llama.cpp's sampling names and defaults (`n_predict`,
//! `repeat_penalty`; temperature 0.8, top-k 40, top-p 0.95, min-p 0.05 where the request is
//! silent, not the model's generation config), its response (`content`, `stop`, `stop_type`,
//! `tokens_predicted`, `timings`, ...), its SSE chunks (`{"content": ..., "stop": false}`),
//! `n_probs` as `completion_probabilities`, and `grammar` / `json_schema` holding the output.

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
use super::types::{SamplingFields, StringOrList, StructuredOutputFields};
use super::validate;
use crate::engine::sampler::{Logprobs, SamplingParams, MAX_LOGPROBS};
use crate::engine::{EngineHandle, EngineRequest, Event, FinishReason, StopReason, Usage};
use crate::error::ApiError;
use crate::tokenizer::Tokenizer;

/// llama.cpp's sampling fields (those it has that qwen-serve does too).
#[derive(Debug, Default, Deserialize)]
pub struct LlamaSampling {
    /// Tokens to write; -1 (llama.cpp's default): until EOS or the context's end.
    pub n_predict: Option<i64>,
    pub temperature: Option<f32>,
    pub top_k: Option<i64>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// -1 (llama.cpp's default), or any negative: a random seed.
    pub seed: Option<i64>,
    pub stop: Option<Vec<String>>,
    pub ignore_eos: Option<bool>,
    /// The most likely tokens to list at each step (`completion_probabilities`); 0: none.
    pub n_probs: Option<i64>,
    /// The reply's `tokens`: the ids written (SSE chunks carry theirs anyway).
    #[serde(default)]
    pub return_tokens: bool,
    #[serde(default)]
    pub stream: bool,
    /// llama.cpp's samplers this server does not have: refused unless set to their "off"
    /// value, rather than silently sampling otherwise than asked.
    pub mirostat: Option<f64>,
    pub typical_p: Option<f64>,
    pub dynatemp_range: Option<f64>,
    pub xtc_probability: Option<f64>,
    pub dry_multiplier: Option<f64>,
    pub top_n_sigma: Option<f64>,
    /// `true` asks for probabilities after llama.cpp's whole sampler chain (`prob`,
    /// `top_probs`); only `false` (the default: `logprob`, `top_logprobs`) is taken.
    pub post_sampling_probs: Option<bool>,
}

impl LlamaSampling {
    /// The samplers asked for that this server does not have.
    fn refuse_missing_samplers(&self) -> Result<(), ApiError> {
        let off = [("mirostat", self.mirostat, 0.0), ("typical_p", self.typical_p, 1.0), ("dynatemp_range", self.dynatemp_range, 0.0),
            ("xtc_probability", self.xtc_probability, 0.0), ("dry_multiplier", self.dry_multiplier, 0.0)];
        for (field, value, off) in off {
            if value.is_some_and(|v| v != off) {
                return Err(ApiError::invalid(field, format!("`{field}` is not supported here: only {off} (off) is taken; use temperature, top_k, top_p, min_p and the penalties")));
            }
        }
        if self.top_n_sigma.is_some_and(|v| v > 0.0) {
            return Err(ApiError::invalid("top_n_sigma", "`top_n_sigma` is not supported here: only -1 (off) is taken"));
        }
        if self.post_sampling_probs == Some(true) {
            return Err(ApiError::invalid(
                "post_sampling_probs",
                "`post_sampling_probs: true` is not supported here: `n_probs` reports the model's log-probabilities before sampling (`logprob`, `top_logprobs`), as `false` does",
            ));
        }
        Ok(())
    }

    /// The engine's parameters for a prompt of `prompt_len` tokens, and the same request as
    /// OpenAI's fields (to check a held output against).
    pub fn params(&self, engine: &EngineHandle, prompt_len: usize) -> Result<(SamplingParams, SamplingFields), ApiError> {
        self.refuse_missing_samplers()?;
        let max_tokens = match self.n_predict {
            None | Some(-1) => None,
            Some(n) if n >= 0 => Some(n),
            Some(n) => return Err(ApiError::invalid("n_predict", format!("`n_predict` must be -1 (no limit) or at least 0, got {n}"))),
        };
        let n_probs = match self.n_probs {
            None | Some(0) => None,
            Some(k) if (1..=MAX_LOGPROBS as i64).contains(&k) => Some(k as usize),
            Some(k) => return Err(ApiError::invalid("n_probs", format!("`n_probs` must be in [0, {MAX_LOGPROBS}], got {k}"))),
        };
        if max_tokens == Some(0) {
            // llama.cpp's "evaluate the prompt only" (editor plugins send it to warm the prompt
            // cache): the prompt is computed (and its blocks cached), nothing is sampled. The
            // engine's prompt-only request is the pooling one; its result is not read.
            let params = SamplingParams { embed: true, max_tokens: 0, ..Default::default() };
            return Ok((params, SamplingFields { max_tokens: Some(0), ..Default::default() }));
        }
        let fields = SamplingFields {
            max_tokens,
            seed: self.seed.filter(|&s| s >= 0),
            stop: self.stop.clone().map(StringOrList::Many),
            temperature: Some(self.temperature.unwrap_or(0.8)),
            top_k: Some(match self.top_k.unwrap_or(40) {
                k if k <= 0 => -1,
                k => k,
            }),
            top_p: Some(self.top_p.unwrap_or(0.95)),
            min_p: Some(self.min_p.unwrap_or(0.05)),
            repetition_penalty: self.repeat_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            ignore_eos: self.ignore_eos,
            ..Default::default()
        };
        let params = validate::sampling_params(&fields, engine.tokenizer().vocab_size(), engine.default_max_tokens(prompt_len), n_probs, &Default::default())
            .map_err(|e| match e.param.as_deref() {
                Some("repetition_penalty") => e.with_param("repeat_penalty"),
                Some("max_tokens") => e.with_param("n_predict"),
                _ => e,
            })?;
        Ok((params, fields))
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samplers_and_modes_this_server_lacks_are_refused_by_name() {
        let refused = |body: Value| {
            let sampling: LlamaSampling = serde_json::from_value(body).unwrap();
            sampling.refuse_missing_samplers().err().and_then(|e| e.param)
        };
        assert_eq!(refused(json!({"post_sampling_probs": true})).as_deref(), Some("post_sampling_probs"));
        assert_eq!(refused(json!({"mirostat": 2})).as_deref(), Some("mirostat"));
        assert_eq!(refused(json!({"top_n_sigma": 1.5})).as_deref(), Some("top_n_sigma"));
        // Their off values, as llama.cpp's web UI sends them, are taken.
        assert_eq!(refused(json!({"post_sampling_probs": false, "mirostat": 0, "typical_p": 1.0, "top_n_sigma": -1.0})), None);
    }
}
