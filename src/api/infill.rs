//! `POST /infill`: llama.cpp's code-completion endpoint, as editor plugins written for
//! llama-server (llama.vscode, llama.vim) call it: `input_prefix`, `input_suffix`, other files
//! of the repository in `input_extra`, the cursor line's start in `prompt`; llama.cpp's
//! sampling names and defaults, and its response shape (`content`, `stop`, `timings`, ...).

use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::fim::Fim;
use super::generation::{collect, Timing};
use super::sse::sse_response;
use super::state::{ApiJson, AppState};
use super::types::{SamplingFields, StringOrList};
use super::validate;
use crate::engine::{EngineRequest, Event, FinishReason, StopReason, Usage};
use crate::error::ApiError;

#[derive(Debug, Deserialize)]
pub struct InfillRequest {
    pub input_prefix: String,
    pub input_suffix: String,
    #[serde(default)]
    pub input_extra: Vec<ExtraFile>,
    /// Text after the prefix (llama.vscode sends the cursor line's start here).
    #[serde(default)]
    pub prompt: String,
    /// Tokens to write; -1 (llama.cpp's default): until EOS or the context's end.
    pub n_predict: Option<i64>,
    pub temperature: Option<f32>,
    pub top_k: Option<i64>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Vec<String>>,
    pub ignore_eos: Option<bool>,
    #[serde(default)]
    pub stream: bool,
}

#[derive(Debug, Deserialize)]
pub struct ExtraFile {
    #[serde(default = "default_filename")]
    pub filename: String,
    pub text: String,
}

fn default_filename() -> String {
    "tmp".into()
}

pub async fn infill(State(state): State<AppState>, ApiJson(req): ApiJson<InfillRequest>) -> Result<Response, ApiError> {
    let started = Instant::now();
    let engine = &state.engine;
    let tokenizer = engine.tokenizer();
    let fim = Fim::of(tokenizer, "input_prefix")?;
    let files: Vec<(&str, &str)> = req.input_extra.iter().map(|f| (f.filename.as_str(), f.text.as_str())).collect();
    let context = fim.repository(tokenizer, &files)?;
    let mut prefix = tokenizer.encode(&req.input_prefix)?;
    prefix.extend(tokenizer.encode(&req.prompt)?);
    let prompt = fim.wrap(&context, &prefix, &tokenizer.encode(&req.input_suffix)?);
    // llama.cpp's defaults where the request is silent.
    let max_tokens = match req.n_predict {
        None | Some(-1) => None,
        Some(n) if n >= 0 => Some(n.max(1)),
        Some(n) => return Err(ApiError::invalid("n_predict", format!("`n_predict` must be -1 (no limit) or at least 0, got {n}"))),
    };
    let fields = SamplingFields {
        max_tokens,
        seed: req.seed,
        stop: req.stop.clone().map(StringOrList::Many),
        temperature: Some(req.temperature.unwrap_or(0.8)),
        top_k: Some(match req.top_k.unwrap_or(40) {
            k if k <= 0 => -1,
            k => k,
        }),
        top_p: Some(req.top_p.unwrap_or(0.95)),
        min_p: Some(req.min_p.unwrap_or(0.05)),
        repetition_penalty: req.repeat_penalty,
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
        ignore_eos: req.ignore_eos,
        ..Default::default()
    };
    // llama.cpp's defaults above, not the model's generation config.
    let mut params = validate::sampling_params(&fields, tokenizer.vocab_size(), engine.default_max_tokens(prompt.len()), None, &Default::default())?;
    if !params.ignore_eos {
        params.stop_token_ids.extend(&fim.ends);
    }
    let stream = engine.submit(EngineRequest { prompt, params })?;
    let model = state.model_name.clone();
    let mut timing = Timing::new(started);
    if req.stream {
        let metrics = state.metrics.clone();
        return Ok(sse_response(move |tx| async move {
            let mut stream = stream;
            while let Some(event) = stream.recv().await {
                match event {
                    Event::PromptLogprobs(_) | Event::Pooled { .. } => {}
                    Event::Token { text, .. } => {
                        timing.token();
                        if !text.is_empty() && !tx.json(&json!({"content": text, "stop": false})).await {
                            return;
                        }
                    }
                    Event::Finished { reason: FinishReason::Abort, .. } => break,
                    Event::Finished { reason, stop_reason, text, usage, .. } => {
                        tx.json(&reply(&model, text, reason, stop_reason.as_ref(), usage, &timing)).await;
                        timing.record(&metrics);
                        return;
                    }
                }
            }
            tx.json(&json!({"error": {"message": "the engine stopped before the request finished", "type": "server_error"}})).await;
        }));
    }
    let collected = collect(stream, 1, &mut timing).await?;
    let c = collected.choices.into_iter().next().expect("one choice");
    if c.finish_reason == Some(FinishReason::Abort) {
        return Err(ApiError::internal("generation was aborted by the engine"));
    }
    timing.record(&state.metrics);
    Ok(Json(reply(&model, c.text, c.finish_reason.unwrap_or(FinishReason::Stop), c.stop_reason.as_ref(), c.usage, &timing)).into_response())
}

/// llama.cpp's final response: the text, why it stopped, token counts and timings.
fn reply(model: &str, content: String, reason: FinishReason, stop_reason: Option<&StopReason>, usage: Usage, timing: &Timing) -> Value {
    let (stop_type, word) = match (reason, stop_reason) {
        (FinishReason::Length, _) => ("limit", String::new()),
        (_, Some(StopReason::String(s))) => ("word", s.clone()),
        _ => ("eos", String::new()),
    };
    let (ttft, _, e2e) = timing.summary();
    let prompt_ms = ttft.unwrap_or(e2e).as_secs_f64() * 1e3;
    let predicted_ms = (e2e.as_secs_f64() * 1e3 - prompt_ms).max(0.0);
    let evaluated = usage.num_prompt_tokens - usage.num_cached_tokens;
    let per_second = |n: usize, ms: f64| if ms > 0.0 { n as f64 * 1e3 / ms } else { 0.0 };
    json!({
        "content": content,
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
