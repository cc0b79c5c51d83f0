//! The one place errors become HTTP: an [`ApiError`] is an OpenAI-style error body
//! `{"error": {"message", "type", "param", "code"}}` with its status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::engine::SubmitError;
use crate::tokenizer::TokenizerError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400 for a field the client got wrong; `param` names it.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into(), param: Some(param.into()), code: None }
    }

    /// The same error, its `param` called `param` (as another API names the field), the message
    /// too where it quotes the old name.
    pub fn with_param(mut self, param: &str) -> Self {
        if let Some(old) = self.param.replace(param.into()) {
            self.message = self.message.replace(&format!("`{old}`"), &format!("`{param}`"));
        }
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into(), param: None, code: None }
    }

    pub fn with_status(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), param: None, code: None }
    }

    pub fn model_not_found(model: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{model}` does not exist."),
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    pub fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: "Incorrect API key provided. Pass it as `Authorization: Bearer <key>` (or `x-api-key: <key>`).".into(),
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::with_status(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::SERVICE_UNAVAILABLE => "service_unavailable_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind(), "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match &e {
            SubmitError::Invalid(m) => {
                // Engine validation messages start with the field name in backticks.
                let param = m.strip_prefix('`').and_then(|r| r.split('`').next()).map(str::to_string);
                Self { status: StatusCode::BAD_REQUEST, message: m.clone(), param, code: None }
            }
            SubmitError::TooLong { .. } | SubmitError::CannotFit { .. } => Self {
                status: StatusCode::BAD_REQUEST,
                message: e.to_string(),
                param: Some("max_tokens".into()),
                code: Some("context_length_exceeded"),
            },
            SubmitError::QueueFull(_) => Self::with_status(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
            SubmitError::ShuttingDown => Self::with_status(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
}

impl From<TokenizerError> for ApiError {
    fn from(e: TokenizerError) -> Self {
        match e {
            // The template refused the conversation (e.g. a misplaced system message).
            TokenizerError::TemplateRaised(m) => Self::invalid("messages", m),
            TokenizerError::TemplateRender(m) => Self::invalid("messages", format!("the chat template could not render these messages: {m}")),
            TokenizerError::Encode(m) => Self::bad_request(format!("the prompt could not be tokenized: {m}")),
            TokenizerError::Decode(m) => Self::invalid("tokens", format!("the tokens could not be decoded: {m}")),
            other => Self::internal(other.to_string()),
        }
    }
}
