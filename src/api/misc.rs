//! The small endpoints: models, health, metrics, tokenize / detokenize, OpenAPI spec.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::chat;
use super::state::{self, ApiJson, AppState};
use super::types::{ChatCompletionRequest, DetokenizeRequest, TokenizeRequest};
use super::validate;
use crate::error::ApiError;

fn model_object(state: &AppState) -> Value {
    json!({
        "id": state.model_name,
        "object": "model",
        "created": super::generation::unix_time(),
        "owned_by": "qwen-serve",
        "max_model_len": state.engine.max_context(),
    })
}

pub async fn models(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_object(&state)]}))
}

/// `GET /v1/models/{model}` (the OpenAI SDK's `models.retrieve`): the served model, or a 404.
/// The name may hold slashes (`Qwen/Qwen2.5-0.5B-Instruct`), raw or percent-encoded.
pub async fn model(State(state): State<AppState>, Path(model): Path<String>) -> Result<Json<Value>, ApiError> {
    validate::check_model(Some(&model), &state.model_name)?;
    Ok(Json(model_object(&state)))
}

pub async fn health(State(state): State<AppState>) -> Response {
    let stats = state.engine.stats();
    (StatusCode::OK, Json(json!({"status": "ok", "running": stats.num_running, "waiting": stats.num_waiting}))).into_response()
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.metrics.render(&state.engine.stats());
    // What the encoder writes: OpenMetrics (counters typed without `_total`, `# EOF`).
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}

/// `{"prompt": "..."}`, or `{"messages": [...]}` with chat's other rendering fields (`tools`,
/// `add_generation_prompt`, `continue_final_message`, `chat_template_kwargs`, ...): rendered and
/// tokenized by chat's own [`chat::prepare`], so the count is chat's `prompt_tokens`.
pub async fn tokenize(State(state): State<AppState>, ApiJson(body): ApiJson<Value>) -> Result<Json<Value>, ApiError> {
    let has = |key: &str| body.get(key).is_some_and(|v| !v.is_null());
    let tokens = match (has("prompt"), has("messages")) {
        (true, false) => {
            let req: TokenizeRequest = reparse(&body)?;
            validate::check_model(req.model.as_deref(), &state.model_name)?;
            state.engine.tokenizer().encode(req.prompt.as_deref().unwrap_or_default())?
        }
        (false, true) => {
            let req: ChatCompletionRequest = reparse(&body)?;
            chat::prepare(&state, &req)?.0.prompt
        }
        _ => return Err(ApiError::bad_request("give exactly one of `prompt` or `messages`")),
    };
    Ok(Json(json!({"tokens": tokens, "count": tokens.len(), "max_model_len": state.engine.max_context()})))
}

/// `body` (JSON already) read as a `T` as [`ApiJson`] reads a body, so a body of the wrong
/// shape gets the same 422 naming the field as anywhere else; which `T` depends on its keys.
fn reparse<T: DeserializeOwned>(body: &Value) -> Result<T, ApiError> {
    state::parse(body.to_string().as_bytes())
}

pub async fn detokenize(State(state): State<AppState>, ApiJson(req): ApiJson<DetokenizeRequest>) -> Result<Json<Value>, ApiError> {
    validate::check_model(req.model.as_deref(), &state.model_name)?;
    let tokenizer = state.engine.tokenizer();
    if let Some(id) = req.tokens.iter().find(|&&id| id as usize >= tokenizer.vocab_size()) {
        return Err(ApiError::invalid("tokens", format!("token id {id} is outside the vocabulary [0, {})", tokenizer.vocab_size())));
    }
    Ok(Json(json!({"prompt": tokenizer.decode(&req.tokens, false)?})))
}

pub async fn openapi() -> Json<Value> {
    Json(super::openapi::spec())
}
