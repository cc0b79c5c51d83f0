//! What every handler can reach, and the JSON body extractor whose rejections are OpenAI
//! errors.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::metrics::Metrics;
use super::responses::ResponseStore;
use crate::engine::constraint::FormatCache;
use crate::engine::EngineHandle;
use crate::error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub engine: EngineHandle,
    /// The model id clients send and `/v1/models` lists.
    pub model_name: String,
    pub api_key: Option<Arc<str>>,
    pub metrics: Arc<Metrics>,
    /// `enable_thinking` when a request does not say (Qwen3 templates).
    pub default_enable_thinking: bool,
    /// The chat template renders `<think>` (Qwen3): split reasoning from content.
    pub reasoning: bool,
    /// `response_format` schemas and forced tool calls compiled for earlier requests (with the
    /// masks found for them).
    pub formats: Arc<FormatCache>,
    /// `/v1/responses` kept for `previous_response_id` and `GET /v1/responses/{id}` (the last
    /// 1,024, 256 MiB at most).
    pub responses: Arc<ResponseStore>,
}

impl AppState {
    pub fn new(engine: EngineHandle, model_name: Option<String>, api_key: Option<String>, default_enable_thinking: bool) -> Self {
        let model_name = model_name.unwrap_or_else(|| engine.model_name().to_string());
        // Templates that render an (empty) think block when thinking is off are Qwen3-style.
        let reasoning = engine.chat_template().is_some_and(|t| {
            let probe = [serde_json::json!({"role": "user", "content": "hi"})];
            let mut kwargs = serde_json::Map::new();
            kwargs.insert("enable_thinking".into(), false.into());
            t.render(&probe, None, true, &kwargs).is_ok_and(|p| p.contains("<think>"))
        });
        Self {
            engine,
            model_name,
            api_key: api_key.filter(|k| !k.is_empty()).map(Arc::from),
            metrics: Arc::new(Metrics::default()),
            default_enable_thinking,
            reasoning,
            formats: Arc::new(FormatCache::with_capacity(16)),
            responses: Arc::new(ResponseStore::new(1024, 256 << 20)),
        }
    }
}

/// `Json<T>` whose rejections are OpenAI error bodies: 400 for malformed JSON, 422 for a
/// well-formed body of the wrong shape (the message names the field), 413 for a body over the
/// limit, 415 for a Content-Type other than JSON's (none is read as JSON). A form's type is
/// refused so that a web page cannot post to a server on the user's machine without the
/// browser asking the server first (a JSON type needs a CORS preflight; a form's does not).
/// With `ANY_TYPE` ([`LlamaJson`]) the body is read as JSON whatever its type says.
pub struct ApiJson<T, const ANY_TYPE: bool = false>(pub T);

/// llama.cpp's routes read their body as JSON whatever its Content-Type says, as llama-server
/// does: `curl -d` sends a form's type, and scripts written for llama.cpp often rely on that.
pub type LlamaJson<T> = ApiJson<T, true>;

impl<S: Send + Sync, T: DeserializeOwned, const ANY_TYPE: bool> FromRequest<S> for ApiJson<T, ANY_TYPE> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !ANY_TYPE {
            if let Some(kind) = req.headers().get(CONTENT_TYPE) {
                let essence = kind.to_str().unwrap_or_default().split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
                if essence != "application/json" && !(essence.starts_with("application/") && essence.ends_with("+json")) {
                    let message = format!("the Content-Type header must be application/json, got {essence:?}");
                    return Err(ApiError::with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE, message).with_param("Content-Type"));
                }
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|r| match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::with_status(r.status(), TOO_LARGE),
            status => ApiError::with_status(status, r.body_text()),
        })?;
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

const TOO_LARGE: &str = "the request body is larger than the server accepts (--max-body-bytes)";

fn json_rejection(r: JsonRejection) -> ApiError {
    let status = r.status();
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => TOO_LARGE.to_string(),
        _ => r.body_text(),
    };
    ApiError::with_status(status, message)
}
