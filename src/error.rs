//! The one place errors become HTTP: an [`ApiError`] is an OpenAI-style error body
//! `{"error": {"message", "type", "param", "code"}}` with its status, or, on Anthropic's
//! routes, Anthropic's `{"type": "error", "error": {"type", "message"}}` ([`ApiError::anthropic_body`]).

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

    /// Anthropic's error types, by status as its API documents them (other 4xx are
    /// `invalid_request_error`, other 5xx `api_error`).
    fn anthropic_kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            s if s == StatusCode::SERVICE_UNAVAILABLE || s.as_u16() == 529 => "overloaded_error",
            s if s.is_server_error() => "api_error",
            _ => "invalid_request_error",
        }
    }

    /// The body Anthropic's SDKs parse: `{"type": "error", "error": {"type", "message"}}`, with
    /// OpenAI's `param` and `code` kept in `error` where set (the field at fault).
    pub fn anthropic_body(&self) -> serde_json::Value {
        let mut error = json!({"type": self.anthropic_kind(), "message": self.message});
        if let Some(param) = &self.param {
            error["param"] = param.as_str().into();
        }
        if let Some(code) = self.code {
            error["code"] = code.into();
        }
        json!({"type": "error", "error": error})
    }

    /// The response in Anthropic's envelope.
    pub fn into_anthropic_response(self) -> Response {
        status_headers((self.status, Json(self.anthropic_body())).into_response())
    }
}

impl IntoResponse for ApiError {
    /// The OpenAI body; the error itself rides along in the response's extensions, so that a
    /// route serving another API can answer it in that API's envelope
    /// (`server::anthropic_errors`).
    fn into_response(self) -> Response {
        let mut response = status_headers((self.status, Json(self.body())).into_response());
        response.extensions_mut().insert(self);
        response
    }
}

/// A full queue (429) or a server stopping (503) says when to try again, for clients that
/// honour `Retry-After` (the `openai` and `anthropic` SDKs retry both). A body too large (413)
/// is left unread, so the server closes the connection after answering: it says so
/// (`Connection: close`), and a keep-alive client does not send its next request into it.
fn status_headers(mut response: Response) -> Response {
    use axum::http::{header, HeaderValue};
    match response.status() {
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        StatusCode::PAYLOAD_TOO_LARGE => {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        _ => {}
    }
    response
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_errors_are_typed_by_status_and_keep_the_field() {
        let kind = |status: u16| ApiError::with_status(StatusCode::from_u16(status).unwrap(), "m").anthropic_body()["error"]["type"].clone();
        let expected = [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (405, "invalid_request_error"),
            (413, "request_too_large"),
            (415, "invalid_request_error"),
            (422, "invalid_request_error"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (503, "overloaded_error"),
            (529, "overloaded_error"),
        ];
        for (status, name) in expected {
            assert_eq!(kind(status), name, "{status}");
        }
        let body = ApiError::invalid("temperature", "`temperature` must be in [0, 1], got 2").anthropic_body();
        assert_eq!(body, json!({"type": "error", "error": {"type": "invalid_request_error", "message": "`temperature` must be in [0, 1], got 2", "param": "temperature"}}));
        assert_eq!(ApiError::model_not_found("m").anthropic_body()["error"]["code"], "model_not_found");
    }
}
