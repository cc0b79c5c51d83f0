//! `POST /v1/responses` (OpenAI's Responses API, as vLLM serves it), `GET` and `DELETE
//! /v1/responses/{id}`, `GET /v1/responses/{id}/input_items` (`input_items.rs`). A request
//! becomes a chat request (`input` items as messages, `instructions` as the system message,
//! flat function tools, `text.format` as `response_format`) and runs through `super::chat`;
//! its output comes back as items (`reasoning`, `message`, `function_call`), whole or as
//! typed SSE events (`stream.rs`).
//! Stored responses (`store`, the default) keep their conversation for `previous_response_id`.

use std::time::Instant;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::chat::{function_tool, message, submit, ChatContext, Submitted};
use super::generation::{collect, item_id, Timing};
use super::sse::sse_response;
use super::state::{ApiJson, AppState};
use super::tool_parser::ToolCall;
use super::types::{ChatCompletionRequest, ChatMessage, ChatTokenLogprob, SamplingFields, StructuredOutputFields};
use super::validate::has_type;
use crate::engine::sampler::MAX_LOGPROBS;
use crate::engine::{FinishReason, Usage};
use crate::error::ApiError;

mod input_items;
mod logprobs;
mod store;
mod stream;

pub use input_items::list as list_input_items;
pub use store::ResponseStore;

/// The Responses API's request; the sampling extensions chat takes (`top_k`, `seed`, `stop`,
/// ..., `structured_outputs`) are taken too.
#[derive(Debug, Clone, Deserialize)]
pub struct ResponsesRequest {
    pub input: Input,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<i64>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    /// `{"format": {"type": "text" | "json_object" | "json_schema", ...}}`.
    pub text: Option<Value>,
    /// `{"effort": ...}`: `"none"` turns thinking off on a template that renders it, any other
    /// effort on.
    pub reasoning: Option<Value>,
    pub store: Option<bool>,
    pub previous_response_id: Option<String>,
    pub metadata: Option<Value>,
    /// The alternatives listed with each token's logprob (with `include`'s
    /// `message.output_text.logprobs`).
    pub top_logprobs: Option<i64>,
    /// Extra output: `message.output_text.logprobs` (the message's tokens' logprobs); the others
    /// OpenAI lists name outputs this server never makes (tool results, images, encrypted
    /// reasoning) and change nothing.
    pub include: Option<Vec<String>>,
    pub background: Option<bool>,
    pub truncation: Option<String>,
    pub chat_template_kwargs: Option<Map<String, Value>>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    #[serde(flatten)]
    pub structured: StructuredOutputFields,
}

/// `input`: a user message's text, or a list of items.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Input {
    Text(String),
    Items(Vec<Value>),
}

pub async fn create(State(state): State<AppState>, ApiJson(req): ApiJson<ResponsesRequest>) -> Result<Response, ApiError> {
    let started = Instant::now();
    let previous = match &req.previous_response_id {
        Some(id) => state.responses.conversation(id).ok_or_else(|| ApiError::invalid("previous_response_id", format!("no stored response has id {id:?}")))?,
        None => vec![],
    };
    let (chat, conversation) = to_chat(&req, previous, &state)?;
    let Submitted { stream, ctx, num_prompt_tokens, .. } = submit(&state, &chat).map_err(|e| renamed(e, &req))?;
    let echo = Echo::new(&req, &ctx);
    let store = req.store != Some(false);
    // Normalised now, once, so that the ids made for items sent without one stay put.
    let input_items = if store { input_items::normalise(&req.input) } else { Vec::new() };
    let logprobs = chat.logprobs;
    let mut timing = Timing::new(started);
    if req.sampling.stream {
        let (responses, metrics) = (state.responses.clone(), state.metrics.clone());
        return Ok(sse_response(move |tx| async move {
            let finished = stream::run(&echo, &ctx, stream, num_prompt_tokens, logprobs, &mut timing, &tx).await;
            if let (Some((response, message)), true) = (finished, store) {
                responses.insert(&echo.id, with_output(conversation, message), input_items, response);
            }
            timing.record(&metrics);
        }));
    }
    let collected = collect(stream, 1, &mut timing).await?;
    timing.record(&state.metrics);
    let c = &collected.choices[0];
    let (reasoning, content, calls) = ctx.parse(&c.text);
    let message = assistant_message(&content, &reasoning, &calls);
    let status = status(c.finish_reason);
    let token_logprobs = if logprobs { logprobs::whole(&ctx, c) } else { Vec::new() };
    let output = output_items(reasoning, content, calls, status, token_logprobs);
    let response = echo.response(status, &output, Some(usage(&ctx, num_prompt_tokens, c.usage, &output)));
    if store {
        state.responses.insert(&echo.id, with_output(conversation, message), input_items, response.clone());
    }
    Ok(Json(response).into_response())
}

pub async fn retrieve(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    state.responses.response(&id).map(Json).ok_or_else(|| not_found(&id))
}

pub async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    if !state.responses.remove(&id) {
        return Err(not_found(&id));
    }
    Ok(Json(json!({"id": id, "object": "response", "deleted": true})))
}

/// An error from the chat path with its fields as this API names them.
fn renamed(mut e: ApiError, req: &ResponsesRequest) -> ApiError {
    e.message = e.message.replace("`response_format`", "`text.format`");
    let renamed = match e.param.as_deref() {
        Some("max_tokens") if req.max_output_tokens.is_some() => "max_output_tokens",
        Some("response_format") => "text.format",
        // The conversation as rendered (instructions, earlier turns, calls joined into turns).
        Some(p) if p.starts_with("messages") => "input",
        _ => return e,
    };
    e.with_param(renamed)
}

fn not_found(id: &str) -> ApiError {
    ApiError::with_status(axum::http::StatusCode::NOT_FOUND, format!("no stored response has id {id:?}"))
}

/// The chat request `req` stands for, and the conversation it continues (the previous one's
/// plus this input; `instructions` are not kept, as OpenAI keeps them per response).
fn to_chat(req: &ResponsesRequest, previous: Vec<ChatMessage>, state: &AppState) -> Result<(ChatCompletionRequest, Vec<ChatMessage>), ApiError> {
    if req.background == Some(true) {
        return Err(ApiError::invalid("background", "`background: true` is not supported: the response is made while the request is open"));
    }
    if req.sampling.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("n", "/v1/responses makes one output; `n` must be 1"));
    }
    let mut conversation = previous;
    match &req.input {
        Input::Text(text) => conversation.push(message("user", Some(text.clone()))),
        Input::Items(items) => {
            let mut reasoning = None;
            for (i, item) in items.iter().enumerate() {
                push_item(&mut conversation, item, i, &mut reasoning)?;
            }
        }
    }
    let mut messages = Vec::with_capacity(conversation.len() + 1);
    if let Some(instructions) = &req.instructions {
        messages.push(message("system", Some(instructions.clone())));
    }
    messages.extend(conversation.iter().cloned());
    let mut sampling = req.sampling.clone();
    if req.max_output_tokens.is_some() {
        sampling.max_tokens = req.max_output_tokens;
        sampling.max_completion_tokens = None;
    }
    let mut kwargs = req.chat_template_kwargs.clone();
    if let Some(effort) = effort(req)? {
        if state.reasoning {
            kwargs.get_or_insert_with(Map::new).entry("enable_thinking").or_insert(Value::Bool(effort != "none"));
        }
    }
    let top_logprobs = output_logprobs(req)?;
    let chat = ChatCompletionRequest {
        messages,
        sampling,
        logprobs: top_logprobs.is_some(),
        top_logprobs,
        return_tokens_as_token_ids: false,
        tools: req.tools.as_ref().map(|t| tools(t)).transpose()?,
        tool_choice: req.tool_choice.as_ref().map(tool_choice).transpose()?,
        parallel_tool_calls: req.parallel_tool_calls,
        chat_template_kwargs: kwargs,
        response_format: text_format(req.text.as_ref(), state)?,
        structured: req.structured.clone(),
        continue_final_message: false,
        add_generation_prompt: None,
        chat_template: None,
        functions: None,
        function_call: None,
    };
    Ok((chat, conversation))
}

/// `reasoning.effort`, if given, checked as `truncation` is.
fn effort(req: &ResponsesRequest) -> Result<Option<&str>, ApiError> {
    // "auto" would cut an input over the context to fit; here such an input is a 400 either way.
    if let Some(t) = req.truncation.as_deref().filter(|t| !matches!(*t, "auto" | "disabled")) {
        return Err(ApiError::invalid("truncation", format!("`truncation` must be \"auto\" or \"disabled\", got {t:?}")));
    }
    const EFFORTS: [&str; 6] = ["none", "minimal", "low", "medium", "high", "xhigh"];
    match req.reasoning.as_ref().and_then(|r| r.get("effort")).filter(|e| !e.is_null()) {
        None => Ok(None),
        Some(Value::String(e)) if EFFORTS.contains(&e.as_str()) => Ok(Some(e)),
        Some(other) => Err(ApiError::invalid("reasoning.effort", format!("`reasoning.effort` must be one of {EFFORTS:?}, got {other}"))),
    }
}

/// `include` and `top_logprobs`: how many alternatives to list with each of the message's
/// tokens, if its logprobs are asked for (`message.output_text.logprobs`, or `top_logprobs`
/// above 0 alone).
fn output_logprobs(req: &ResponsesRequest) -> Result<Option<i64>, ApiError> {
    const KNOWN: [&str; 7] = ["message.output_text.logprobs", "reasoning.encrypted_content", "web_search_call.action.sources", "code_interpreter_call.outputs", "computer_call_output.output.image_url", "file_search_call.results", "message.input_image.image_url"];
    let include = req.include.as_deref().unwrap_or_default();
    if let Some((i, other)) = include.iter().enumerate().find(|(_, v)| !KNOWN.contains(&v.as_str())) {
        return Err(ApiError::invalid(format!("include[{i}]"), format!("`include[{i}]` {other:?} is not one of {}", KNOWN.join(", "))));
    }
    let k = req.top_logprobs.unwrap_or(0);
    if !(0..=MAX_LOGPROBS as i64).contains(&k) {
        return Err(ApiError::invalid("top_logprobs", format!("`top_logprobs` must be in [0, {MAX_LOGPROBS}], got {k}")));
    }
    Ok((k > 0 || include.iter().any(|v| v == KNOWN[0])).then_some(k))
}

/// One `input` item as messages: a message (`role` + `content`), a `function_call` (joined to
/// the assistant message before it) or its `function_call_output` (a tool message). A
/// `reasoning` item's text waits in `reasoning` for the assistant turn that follows it, as a
/// stored response keeps it (Qwen3's template renders the thinking of a turn still calling
/// tools).
fn push_item(conversation: &mut Vec<ChatMessage>, item: &Value, i: usize, reasoning: &mut Option<String>) -> Result<(), ApiError> {
    let field = format!("input[{i}]");
    let str_of = |key: &str| item.get(key).and_then(Value::as_str).ok_or_else(|| ApiError::invalid(format!("{field}.{key}"), format!("`{field}.{key}` must be a string")));
    let kind = item.get("type").and_then(Value::as_str).unwrap_or("message");
    match kind {
        "message" => {
            let role = str_of("role")?;
            if !matches!(role, "user" | "system" | "developer" | "assistant") {
                return Err(ApiError::invalid(format!("{field}.role"), format!("`{field}.role` must be user, system, developer or assistant; got {role:?}")));
            }
            let content = text_of(item.get("content"), &format!("{field}.content"))?;
            let mut m = message(role, Some(content));
            if role == "assistant" {
                m.reasoning_content = reasoning.take();
            }
            conversation.push(m);
        }
        "function_call" => {
            let call = json!({"id": str_of("call_id")?, "type": "function", "function": {"name": str_of("name")?, "arguments": str_of("arguments")?}});
            match conversation.last_mut() {
                Some(last) if last.role == "assistant" => last.tool_calls.get_or_insert_with(Vec::new).push(call),
                _ => {
                    let mut m = message("assistant", None);
                    m.tool_calls = Some(vec![call]);
                    m.reasoning_content = reasoning.take();
                    conversation.push(m);
                }
            }
        }
        "function_call_output" => {
            let mut m = message("tool", Some(text_of(item.get("output"), &format!("{field}.output"))?));
            m.tool_call_id = Some(str_of("call_id")?.to_string());
            conversation.push(m);
        }
        "reasoning" => {
            // Its text: `content`'s reasoning_text parts, else its summary.
            let texts = |key: &str| -> String { item.get(key).and_then(Value::as_array).into_iter().flatten().filter_map(|p| p.get("text").and_then(Value::as_str)).collect() };
            let text = Some(texts("content")).filter(|t| !t.is_empty()).unwrap_or_else(|| texts("summary"));
            *reasoning = Some(text).filter(|t| !t.is_empty());
        }
        other => return Err(ApiError::invalid(format!("{field}.type"), format!("`{field}.type` {other:?} is not supported (message, function_call, function_call_output, reasoning)"))),
    }
    Ok(())
}

/// A message's `content` (or a call's `output`): a string, or text parts joined by line breaks
/// (as chat's are).
fn text_of(content: Option<&Value>, field: &str) -> Result<String, ApiError> {
    match content {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                    (Some("input_text" | "output_text" | "text"), Some(t)) => {
                        if j > 0 {
                            text.push('\n');
                        }
                        text.push_str(t);
                    }
                    (Some("input_text" | "output_text" | "text"), None) => return Err(ApiError::invalid(format!("{field}[{j}].text"), format!("`{field}[{j}].text` must be a string"))),
                    _ => return Err(ApiError::invalid(format!("{field}[{j}]"), format!("only text parts are supported (`input_text`, `output_text`); `{field}[{j}]` {}", has_type(part)))),
                }
            }
            Ok(text)
        }
        _ => Err(ApiError::invalid(field, format!("`{field}` must be a string or a list of text parts"))),
    }
}

/// Flat function tools (`{"type": "function", "name", "description", "parameters"}`) in chat's
/// shape.
fn tools(tools: &[Value]) -> Result<Vec<Value>, ApiError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| match (t.get("type").and_then(Value::as_str), t.get("name").and_then(Value::as_str)) {
            (Some("function"), Some(name)) => Ok(function_tool(name, t, "parameters")),
            (Some("function"), None) => Err(ApiError::invalid(format!("tools[{i}].name"), format!("`tools[{i}].name` must be a string"))),
            _ => Err(ApiError::invalid(format!("tools[{i}]"), format!("only function tools are supported; `tools[{i}]` {}", has_type(t)))),
        })
        .collect()
}

/// `tool_choice` in chat's shape; refused here in this API's own terms (chat's error would give
/// chat's shape of a named function).
fn tool_choice(choice: &Value) -> Result<Value, ApiError> {
    match (choice, choice.get("type").and_then(Value::as_str), choice.get("name").and_then(Value::as_str)) {
        (Value::String(s), _, _) if matches!(s.as_str(), "auto" | "none" | "required") => Ok(choice.clone()),
        (Value::Object(_), Some("function"), Some(name)) => Ok(json!({"type": "function", "function": {"name": name}})),
        _ => Err(ApiError::invalid("tool_choice", format!("`tool_choice` must be \"auto\", \"none\", \"required\" or {{\"type\": \"function\", \"name\": ...}}; got {choice}"))),
    }
}

/// `text.format` as chat's `response_format`, its schema checked here so that errors name
/// `text.format`.
fn text_format(text: Option<&Value>, state: &AppState) -> Result<Option<Value>, ApiError> {
    let Some(format) = text.and_then(|t| t.get("format")).filter(|f| !f.is_null()) else { return Ok(None) };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let schema = format.get("schema").ok_or_else(|| ApiError::invalid("text.format.schema", "`text.format.schema` is missing"))?;
            state.formats.schema(schema).map_err(|e| ApiError::invalid("text.format.schema", format!("`text.format.schema`: {e}")))?;
            Ok(Some(json!({"type": "json_schema", "json_schema": {"name": format.get("name"), "schema": schema}})))
        }
        _ => Err(ApiError::invalid("text.format", "`text.format.type` must be \"text\", \"json_object\" or \"json_schema\"")),
    }
}

fn status(reason: Option<FinishReason>) -> &'static str {
    if reason == Some(FinishReason::Length) { "incomplete" } else { "completed" }
}

/// The items of a whole output, in order: its reasoning, its message (`status` as the
/// response's: cut at `max_output_tokens`, it is incomplete too), its calls.
fn output_items(reasoning: Option<String>, content: Option<String>, calls: Vec<ToolCall>, status: &str, logprobs: Vec<ChatTokenLogprob>) -> Vec<Value> {
    let mut items = vec![];
    if let Some(text) = reasoning {
        items.push(reasoning_item(&item_id("rs"), &text));
    }
    if let Some(text) = content.filter(|c| !c.is_empty()) {
        items.push(message_item(&item_id("msg"), &text, status, logprobs));
    }
    items.extend(calls.iter().map(|c| call_item(&item_id("fc"), c, "completed")));
    items
}

fn reasoning_item(id: &str, text: &str) -> Value {
    json!({"type": "reasoning", "id": id, "summary": [], "content": [{"type": "reasoning_text", "text": text}]})
}

fn message_item(id: &str, text: &str, status: &str, logprobs: Vec<ChatTokenLogprob>) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": [output_text(text, logprobs)]})
}

/// The message's text part; `logprobs` its tokens' (empty unless asked for).
fn output_text(text: &str, logprobs: Vec<ChatTokenLogprob>) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs})
}

fn call_item(id: &str, call: &ToolCall, status: &str) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call.id, "name": call.name, "arguments": call.arguments, "status": status})
}

/// The output as the assistant turn a later `previous_response_id` continues from (with no
/// text and no calls, an empty text: a turn needs one or the other).
fn assistant_message(content: &Option<String>, reasoning: &Option<String>, calls: &[ToolCall]) -> ChatMessage {
    let text = content.clone().or_else(|| calls.is_empty().then(String::new));
    let mut m = message("assistant", text);
    m.reasoning_content = reasoning.clone();
    if !calls.is_empty() {
        m.tool_calls = Some(calls.iter().map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}})).collect());
    }
    m
}

fn with_output(mut conversation: Vec<ChatMessage>, message: ChatMessage) -> Vec<ChatMessage> {
    conversation.push(message);
    conversation
}

/// The Responses API's usage; reasoning tokens are the reasoning text's tokens re-encoded.
fn usage(ctx: &ChatContext, num_prompt_tokens: usize, u: Usage, output: &[Value]) -> Value {
    let reasoning: usize = output
        .iter()
        .filter(|item| item["type"] == "reasoning")
        .filter_map(|item| item["content"][0]["text"].as_str())
        .map(|t| ctx.tokenizer.encode(t).map_or(0, |ids| ids.len()))
        .sum();
    json!({
        "input_tokens": num_prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.num_cached_tokens},
        "output_tokens": u.num_output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning.min(u.num_output_tokens)},
        "total_tokens": num_prompt_tokens + u.num_output_tokens,
    })
}

/// What a response object repeats of its request.
pub(super) struct Echo {
    id: String,
    created_at: u64,
    fields: Map<String, Value>,
}

impl Echo {
    fn new(req: &ResponsesRequest, ctx: &ChatContext) -> Self {
        let fields = json!({
            "model": ctx.model,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "temperature": req.sampling.temperature,
            "top_p": req.sampling.top_p,
            "top_logprobs": req.top_logprobs,
            "tools": req.tools.clone().unwrap_or_default(),
            "tool_choice": req.tool_choice.clone().unwrap_or_else(|| "auto".into()),
            "parallel_tool_calls": req.parallel_tool_calls.unwrap_or(true),
            "previous_response_id": req.previous_response_id,
            "reasoning": req.reasoning.clone().unwrap_or_else(|| json!({"effort": null, "summary": null})),
            "store": req.store != Some(false),
            "text": req.text.clone().unwrap_or_else(|| json!({"format": {"type": "text"}})),
            "truncation": req.truncation.clone().unwrap_or_else(|| "disabled".into()),
            "metadata": req.metadata.clone().unwrap_or_else(|| json!({})),
            "user": req.sampling.user,
            "background": false,
            "error": null,
        });
        Self { id: item_id("resp"), created_at: ctx.created, fields: fields.as_object().expect("an object").clone() }
    }

    /// The response object at `status` with `output` so far.
    fn response(&self, status: &str, output: &[Value], usage: Option<Value>) -> Value {
        let mut r = json!({"id": self.id, "object": "response", "created_at": self.created_at, "status": status, "output": output, "usage": usage,
            "incomplete_details": (status == "incomplete").then(|| json!({"reason": "max_output_tokens"}))});
        r.as_object_mut().expect("an object").extend(self.fields.clone());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(e: ApiError) -> String {
        assert!(!e.message.contains("Some(") && !e.message.contains("None"), "{}", e.message);
        e.message
    }

    #[test]
    fn refused_parts_and_tools_say_their_type_plainly() {
        let image = json!([{"type": "input_image", "image_url": "http://x"}]);
        let e = text_of(Some(&image), "input[0].content").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[0].content[0]"));
        assert!(message(e).ends_with("`input[0].content[0]` has type `input_image`"));
        assert!(message(text_of(Some(&json!([{"text": "hi"}])), "input[0].content").unwrap_err()).ends_with("has no `type`"));
        let e = text_of(Some(&json!([{"type": "input_text"}])), "input[0].content").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[0].content[0].text"));
        assert!(message(tools(&[json!({"type": "web_search"})]).unwrap_err()).ends_with("`tools[0]` has type `web_search`"));
    }

    #[test]
    fn text_parts_are_joined_by_lines() {
        let parts = json!([{"type": "input_text", "text": "hello"}, {"type": "input_text", "text": "world"}]);
        assert_eq!(text_of(Some(&parts), "input[0].content").unwrap(), "hello\nworld");
        assert_eq!(text_of(Some(&json!("one")), "input[0].content").unwrap(), "one");
    }

    #[test]
    fn effort_and_truncation_take_openais_values_only() {
        let req = |body: Value| -> ResponsesRequest { serde_json::from_value(body).unwrap() };
        assert_eq!(effort(&req(json!({"input": "x", "reasoning": {"effort": "none"}, "truncation": "auto"}))).unwrap(), Some("none"));
        assert_eq!(effort(&req(json!({"input": "x", "reasoning": {"effort": null}}))).unwrap(), None);
        for (body, param) in [(json!({"reasoning": {"effort": "extreme"}}), "reasoning.effort"), (json!({"reasoning": {"effort": 3}}), "reasoning.effort"), (json!({"truncation": "bogus"}), "truncation")] {
            let mut body = body;
            body["input"] = json!("x");
            assert_eq!(effort(&req(body)).unwrap_err().param.as_deref(), Some(param));
        }
    }

    #[test]
    fn length_errors_name_input_or_max_output_tokens() {
        use crate::api::validate::length_error;
        use crate::engine::SubmitError;
        let req = |body: Value| -> ResponsesRequest { serde_json::from_value(body).unwrap() };
        let too_long = |prompt, max_tokens| length_error(SubmitError::TooLong { prompt, max_tokens, context: 32768 }, 32768, "messages", "max_tokens");
        let e = renamed(too_long(40030, 1), &req(json!({"input": "x"})));
        assert_eq!(e.param.as_deref(), Some("input"));
        assert!(e.message.contains("`input`") && !e.message.contains("max_tokens"), "{}", e.message);
        let e = renamed(too_long(40030, 5), &req(json!({"input": "x", "max_output_tokens": 5})));
        assert_eq!(e.param.as_deref(), Some("input"));
        let e = renamed(too_long(10, 40000), &req(json!({"input": "x", "max_output_tokens": 40000})));
        assert_eq!(e.param.as_deref(), Some("max_output_tokens"));
        assert!(e.message.contains("40000 for `max_output_tokens`") && !e.message.contains("max_tokens"), "{}", e.message);
    }

    #[test]
    fn tool_choice_is_refused_with_this_apis_shape() {
        assert_eq!(tool_choice(&json!("required")).unwrap(), json!("required"));
        assert_eq!(tool_choice(&json!({"type": "function", "name": "f"})).unwrap(), json!({"type": "function", "function": {"name": "f"}}));
        for bad in [json!("bogus"), json!({"type": "function", "function": {"name": "f"}}), json!(3)] {
            let e = tool_choice(&bad).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("tool_choice"));
            assert!(e.message.contains(r#"{"type": "function", "name": ...}"#) && !e.message.contains(r#""function": {"#), "{}", e.message);
        }
    }
}
