//! The small endpoints: models, health, metrics, tokenize / detokenize, OpenAPI spec.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::state::{ApiJson, AppState};
use super::types::{DetokenizeRequest, TokenizeRequest};
use super::validate;
use crate::error::ApiError;

pub async fn models(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.model_name,
            "object": "model",
            "created": super::generation::unix_time(),
            "owned_by": "qwen-serve",
            "max_model_len": state.engine.max_context(),
        }]
    }))
}

pub async fn health(State(state): State<AppState>) -> Response {
    let stats = state.engine.stats();
    (StatusCode::OK, Json(json!({"status": "ok", "running": stats.num_running, "waiting": stats.num_waiting}))).into_response()
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.metrics.render(&state.engine.stats());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// `{"prompt": "..."}` or `{"messages": [...]}` (rendered with the chat template).
pub async fn tokenize(State(state): State<AppState>, ApiJson(req): ApiJson<TokenizeRequest>) -> Result<Json<Value>, ApiError> {
    validate::check_model(req.model.as_deref(), &state.model_name)?;
    let engine = &state.engine;
    let text = match (&req.prompt, &req.messages) {
        (Some(p), None) => p.clone(),
        (None, Some(messages)) => {
            let template = engine.chat_template().ok_or_else(|| ApiError::invalid("messages", "this model has no chat template"))?;
            let mut kwargs = serde_json::Map::new();
            kwargs.insert("enable_thinking".into(), Value::Bool(state.default_enable_thinking));
            template.render(&validate::template_messages(messages)?, None, req.add_generation_prompt, &kwargs)?
        }
        _ => return Err(ApiError::bad_request("give exactly one of `prompt` or `messages`")),
    };
    let tokens = engine.tokenizer().encode(&text)?;
    Ok(Json(json!({"tokens": tokens, "count": tokens.len(), "max_model_len": engine.max_context()})))
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
