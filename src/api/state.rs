//! What every handler can reach, and the JSON body extractor whose rejections are OpenAI
//! errors.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_path_to_error::{Path, Segment};

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
        parse(&bytes).map(Self)
    }
}

/// `bytes` as a `T`, or the error: 400 for malformed JSON, 422 naming the field for JSON of
/// the wrong shape.
pub(super) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match axum::Json::<T>::from_bytes(bytes) {
        Ok(axum::Json(v)) => Ok(v),
        Err(JsonRejection::JsonDataError(_)) => Err(wrong_shape::<T>(bytes)),
        Err(rejection) => Err(json_rejection(rejection)),
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

/// The 422 for a body of valid JSON that `T` does not take: "`field`: what is wrong", with
/// `param` naming the field. serde's path stops at a `#[serde(flatten)]` (the flattened fields
/// are buffered and read apart, so their errors carry no path); there the field is found among
/// the top-level keys by leaving each out in turn ([`culprit`]).
fn wrong_shape<T: DeserializeOwned>(bytes: &[u8]) -> ApiError {
    let status = StatusCode::UNPROCESSABLE_ENTITY;
    let (path, error) = match serde_path_to_error::deserialize::<_, T>(&mut serde_json::Deserializer::from_slice(bytes)) {
        Ok(_) => return ApiError::with_status(status, "the request body does not have the shape this endpoint takes"),
        Err(e) => (e.path().clone(), without_position(e.inner())),
    };
    let mut body: Value = serde_json::from_slice(bytes).unwrap_or_default();
    let mut field = path_name(&path);
    let mut value = value_at(&body, &path).cloned();
    if field.is_none() {
        if let Some(key) = culprit::<T>(&mut body, bytes.len()) {
            value = body.get(&key).cloned();
            field = Some(key);
        }
    }
    // serde quotes the field it misses (or finds twice) in backticks.
    let quoted = |prefix: &str| error.strip_prefix(prefix).and_then(|r| r.strip_suffix('`')).map(|name| match &field {
        Some(f) => format!("{f}.{name}"),
        None => name.to_string(),
    });
    let (param, message) = if let Some(name) = quoted("missing field `") {
        (Some(name.clone()), format!("`{name}` is required"))
    } else if let Some(name) = quoted("duplicate field `") {
        (Some(name.clone()), format!("`{name}` is given twice"))
    } else if let Some(f) = field {
        // An untagged enum's message names the Rust type; say what the value was instead.
        let what = match error.starts_with("data did not match any variant of untagged enum") {
            true => format!("{} is not one of the forms it takes", value.as_ref().map_or("the value", kind_of)),
            false => error,
        };
        (Some(f.clone()), format!("`{f}`: {what}"))
    } else {
        (None, format!("the request body does not have the shape this endpoint takes: {error}"))
    };
    let e = ApiError::with_status(status, message);
    match param {
        Some(p) => ApiError { param: Some(p), ..e },
        None => e,
    }
}

/// serde_json's message without " at line L column C" (a body is one line, usually).
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    text.strip_suffix(&suffix).map_or_else(|| text.clone(), str::to_string)
}

/// `messages[0].content` for a path into the body; None for the body itself.
fn path_name(path: &Path) -> Option<String> {
    path.iter().next().is_some().then(|| path.to_string())
}

fn value_at<'a>(mut v: &'a Value, path: &Path) -> Option<&'a Value> {
    for segment in path.iter() {
        v = match segment {
            Segment::Seq { index } => v.get(*index)?,
            Segment::Map { key } => v.get(key.as_str())?,
            _ => return None,
        };
    }
    Some(v)
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The top-level key of `body` (an object, `len` bytes as sent) that `T` fails on: the one
/// without which `T` takes the body, else (several fields are wrong) the first without which
/// the error changes, other than to that key missing. Each key left out is one more
/// deserialization of the body, so past 64 MiB of them in all none is tried (a 1 MiB body has
/// room for 64 keys, more than any request has).
fn culprit<T: DeserializeOwned>(body: &mut Value, len: usize) -> Option<String> {
    const MOST_BYTES: usize = 64 << 20;
    let error_of = |body: &Value| T::deserialize(body).err().map(|e| e.to_string());
    let keys: Vec<String> = body.as_object().filter(|o| o.len().saturating_mul(len) <= MOST_BYTES)?.keys().cloned().collect();
    let first = error_of(body)?;
    let mut changed = None;
    for (i, key) in keys.into_iter().enumerate() {
        let object = body.as_object_mut()?;
        let v = object.shift_remove(&key)?;
        let error = error_of(body);
        body.as_object_mut()?.shift_insert(i, key.clone(), v);
        match error {
            None => return Some(key),
            Some(e) if changed.is_none() && e != first && e != format!("missing field `{key}`") => changed = Some(key),
            Some(_) => {}
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::api::types::StringOrList;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Message {
        role: String,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Sampling {
        max_tokens: Option<i64>,
        stop: Option<StringOrList>,
        stream_options: Option<Options>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Options {
        include_usage: bool,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Body {
        messages: Vec<Message>,
        #[serde(flatten)]
        sampling: Sampling,
    }

    fn error(body: &str) -> (u16, Option<String>, String) {
        let e = parse::<Body>(body.as_bytes()).unwrap_err();
        (e.status.as_u16(), e.param, e.message)
    }

    #[test]
    fn wrong_shapes_name_the_field_also_below_a_flatten() {
        let m = r#""messages": [{"role": "user"}]"#;
        assert!(parse::<Body>(format!(r#"{{{m}, "max_tokens": 4, "stop": "x"}}"#).as_bytes()).is_ok());
        let (status, param, message) = error(&format!(r#"{{{m}, "max_tokens": "4"}}"#));
        assert_eq!((status, param.as_deref(), message.as_str()), (422, Some("max_tokens"), "`max_tokens`: invalid type: string \"4\", expected i64"));
        // The flattened part's nested errors are named by their top-level key.
        let (_, param, message) = error(&format!(r#"{{{m}, "stream_options": {{"include_usage": 1}}}}"#));
        assert_eq!(param.as_deref(), Some("stream_options"), "{message}");
        // An untagged enum's message says what the value was, not the Rust type.
        let (_, param, message) = error(&format!(r#"{{{m}, "stop": 5}}"#));
        assert_eq!((param.as_deref(), message.as_str()), (Some("stop"), "`stop`: a number is not one of the forms it takes"));
        // Two wrong: the first the deserializer meets is named.
        let (_, param, _) = error(&format!(r#"{{"max_tokens": 1.5, {m}, "stop": 5}}"#));
        assert_eq!(param.as_deref(), Some("max_tokens"));
        let (_, param, _) = error(&format!(r#"{{"stop": 5, {m}, "max_tokens": 1.5}}"#));
        assert_eq!(param.as_deref(), Some("stop"));
        // Outside the flattened part serde's path is kept; a missing field is named in full.
        let (status, param, message) = error(r#"{"messages": [{"content": "hi"}]}"#);
        assert_eq!((status, param.as_deref(), message.as_str()), (422, Some("messages[0].role"), "`messages[0].role` is required"));
        let (_, param, message) = error(r#"{"messages": [{"role": 1}]}"#);
        assert_eq!((param.as_deref(), message.as_str()), (Some("messages[0].role"), "`messages[0].role`: invalid type: integer `1`, expected a string"));
        let (_, param, message) = error(r#"{"max_tokens": "4"}"#);
        assert_eq!((param.as_deref(), message.as_str()), (Some("messages"), "`messages` is required"));
        let (status, param, _) = error(r#"[1]"#);
        assert_eq!((status, param), (422, None));
        // Malformed JSON stays a 400.
        let (status, param, _) = error(r#"{"messages": "#);
        assert_eq!((status, param), (400, None));
    }
}
