//! `POST /v1/embeddings`: each input's final hidden state at its last token (last-token
//! pooling over causal attention, as Qwen3-Embedding is trained for), L2-normalised, optionally
//! cut to its first `dimensions` values (Matryoshka) and renormalised; floats or base64. The
//! input is text or token ids, or (vLLM's extension) a conversation in `messages`, rendered
//! with the chat template.

use std::time::Instant;

use axum::extract::State;
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::generation::{random_id, unix_time};
use super::state::{ApiJson, AppState};
use super::types::{ChatMessage, Prompt};
use super::validate;
use super::pooling::{item_error, pool_all};
use crate::engine::SamplingParams;
use crate::error::ApiError;

/// OpenAI's limit on inputs in one request.
const MAX_INPUTS: usize = 2048;

#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingRequest {
    pub input: Option<Prompt>,
    /// vLLM's extension: one conversation to embed, rendered with the chat template (without
    /// the assistant turn's opening unless `add_generation_prompt`; special tokens are the
    /// template's, so `add_special_tokens` defaults to false).
    pub messages: Option<Vec<ChatMessage>>,
    pub add_generation_prompt: Option<bool>,
    pub chat_template_kwargs: Option<Map<String, Value>>,
    pub model: Option<String>,
    /// `float` (the default) or `base64`: little-endian f32 bytes, as OpenAI's SDKs decode them.
    pub encoding_format: Option<String>,
    /// Keep the first `dimensions` values (then renormalise).
    pub dimensions: Option<i64>,
    /// vLLM's extensions: embed only each input's last `k` tokens; whether the tokenizer adds
    /// its special tokens (Qwen3-Embedding's appends `<|endoftext|>`); whether to normalise.
    pub truncate_prompt_tokens: Option<i64>,
    pub add_special_tokens: Option<bool>,
    pub normalize: Option<bool>,
}

pub async fn embeddings(State(state): State<AppState>, ApiJson(req): ApiJson<EmbeddingRequest>) -> Result<Json<Value>, ApiError> {
    let started = Instant::now();
    validate::check_model(req.model.as_deref(), &state.model_name)?;
    let engine = &state.engine;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => return Err(ApiError::invalid("encoding_format", format!("`encoding_format` must be `float` or `base64`, got `{other}`"))),
    };
    let hidden_size = engine.hidden_size();
    let dimensions = match req.dimensions {
        None => None,
        Some(d) if d >= 1 && d as usize <= hidden_size => Some(d as usize),
        Some(d) => return Err(ApiError::invalid("dimensions", format!("`dimensions` must be in [1, {hidden_size}] (the model's hidden size), got {d}"))),
    };
    let truncate = match req.truncate_prompt_tokens {
        None | Some(-1) => None,
        Some(k) if k >= 1 => Some(k as usize),
        Some(k) => return Err(ApiError::invalid("truncate_prompt_tokens", format!("`truncate_prompt_tokens` must be at least 1 (or -1: the context), got {k}"))),
    };
    let (input, special) = match (&req.input, &req.messages) {
        (Some(input), None) => (input.clone(), req.add_special_tokens.unwrap_or(true)),
        (None, Some(messages)) => (Prompt::Text(render(&state, messages, &req)?), req.add_special_tokens.unwrap_or(false)),
        _ => return Err(ApiError::invalid("input", "give exactly one of `input` or `messages`")),
    };
    let prompts = tokenize(&state, &input, special, truncate)?;
    let normalize = req.normalize.unwrap_or(true);
    let params = SamplingParams { embed: true, max_tokens: 0, ..Default::default() };
    let num_tokens: usize = prompts.iter().map(Vec::len).sum();
    let mut data = Vec::with_capacity(prompts.len());
    for (index, mut values) in pool_all(engine, &prompts, &params, "input").await?.into_iter().enumerate() {
        if let Some(d) = dimensions {
            values.truncate(d);
        }
        if normalize {
            l2_normalize(&mut values);
        }
        let embedding = if base64 { json!(encode_base64(&values)) } else { json!(values) };
        data.push(json!({"object": "embedding", "index": index, "embedding": embedding}));
    }
    state.metrics.observe_generation(None, None, started.elapsed());
    Ok(Json(json!({
        "id": random_id("embd"),
        "object": "list",
        "created": unix_time(),
        "model": state.model_name,
        "data": data,
        "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens},
    })))
}

/// A conversation as the chat template renders it.
fn render(state: &AppState, messages: &[ChatMessage], req: &EmbeddingRequest) -> Result<String, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` must not be empty"));
    }
    let template = state.engine.chat_template().ok_or_else(|| ApiError::invalid("messages", "this model has no chat template: embed `input` text instead"))?;
    let mut kwargs = req.chat_template_kwargs.clone().unwrap_or_default();
    kwargs.entry("enable_thinking").or_insert(Value::Bool(state.default_enable_thinking));
    Ok(template.render(&validate::template_messages(messages)?, None, req.add_generation_prompt.unwrap_or(false), &kwargs)?)
}

/// Token ids of every input, each checked against the context; `truncate` keeps the last k.
fn tokenize(state: &AppState, input: &Prompt, special: bool, truncate: Option<usize>) -> Result<Vec<Vec<u32>>, ApiError> {
    let count = match input {
        Prompt::Text(_) | Prompt::Tokens(_) => 1,
        Prompt::Texts(ts) => ts.len(),
        Prompt::TokenLists(lists) => lists.len(),
    };
    if count == 0 {
        return Err(ApiError::invalid("input", "`input` must not be an empty list"));
    }
    if count > MAX_INPUTS {
        return Err(ApiError::invalid("input", format!("`input` holds {count} inputs, more than {MAX_INPUTS}")));
    }
    let tokenizer = state.engine.tokenizer();
    let encode = |t: &String| if special { tokenizer.encode_with_special_tokens(t) } else { tokenizer.encode(t) };
    let mut prompts: Vec<Vec<u32>> = match input {
        Prompt::Text(t) => vec![encode(t)?],
        Prompt::Texts(ts) => ts.iter().map(encode).collect::<Result<_, _>>()?,
        Prompt::Tokens(ids) => vec![ids.clone()],
        Prompt::TokenLists(lists) => lists.clone(),
    };
    let max = state.engine.max_sequence_tokens();
    let vocab = state.engine.vocab_size();
    for (i, prompt) in prompts.iter_mut().enumerate() {
        if let Some(k) = truncate {
            let cut = prompt.len().saturating_sub(k);
            prompt.drain(..cut);
        }
        if prompt.is_empty() {
            return Err(item_error(ApiError::invalid("input", "the input is empty"), "input", i));
        }
        if let Some(id) = prompt.iter().find(|&&id| id as usize >= vocab) {
            return Err(item_error(ApiError::invalid("input", format!("token id {id} is outside the vocabulary (0..{vocab})")), "input", i));
        }
        if prompt.len() > max {
            let message = format!("the input has {} tokens, more than the {max} this server can take (`truncate_prompt_tokens` keeps the last k)", prompt.len());
            let mut e = ApiError::invalid("input", message);
            e.code = Some("context_length_exceeded");
            return Err(item_error(e, "input", i));
        }
    }
    Ok(prompts)
}

fn l2_normalize(values: &mut [f32]) {
    let norm = values.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt();
    // As torch's F.normalize: a zero vector stays zero.
    let scale = 1.0 / norm.max(1e-12);
    for v in values {
        *v = (f64::from(*v) * scale) as f32;
    }
}

/// Little-endian f32 bytes in standard base64 (what OpenAI's SDKs decode).
fn encode_base64(values: &[f32]) -> String {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    #[test]
    fn base64_holds_little_endian_f32() {
        let values = [1.0f32, -0.5, 3.25e-3, f32::MIN_POSITIVE];
        let bytes = base64::engine::general_purpose::STANDARD.decode(super::encode_base64(&values)).unwrap();
        let back: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(back, values);
        // Known bytes: 1.0 is 00 00 80 3f.
        assert_eq!(super::encode_base64(&[1.0]), "AACAPw==");
    }

    #[test]
    fn normalising_gives_unit_length_and_keeps_zero() {
        let mut v = vec![3.0f32, 4.0];
        super::l2_normalize(&mut v);
        assert_eq!(v, [0.6, 0.8]);
        let mut zero = vec![0.0f32; 3];
        super::l2_normalize(&mut zero);
        assert_eq!(zero, [0.0; 3]);
    }
}
