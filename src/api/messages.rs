//! `POST /v1/messages` and `POST /v1/messages/count_tokens`: Anthropic's Messages API, as
//! llama.cpp and vLLM serve it, for clients written against it. A request becomes the chat
//! request it stands for (`system` as the system message, `tool_use` / `tool_result` blocks as
//! tool calls and tool messages, `input_schema` tools) and runs through `super::chat`; the
//! output comes back as `thinking`, `text` and `tool_use` blocks, whole or as Anthropic's
//! stream events (`stream.rs`).

use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::chat::{function_tool, message, prepare, submit, Submitted};
use super::generation::{collect, item_id, Timing};
use super::sse::sse_response;
use super::state::{ApiJson, AppState};
use super::tool_parser::ToolCall;
use super::types::{ChatCompletionRequest, ChatMessage, MessageContent, SamplingFields, StringOrList, StructuredOutputFields};
use super::validate::has_type;
use crate::engine::{FinishReason, StopReason};
use crate::error::ApiError;

mod stream;

#[derive(Debug, Clone, Deserialize)]
pub struct MessagesRequest {
    pub messages: Vec<Value>,
    /// A string, or text blocks.
    pub system: Option<Value>,
    pub stop_sequences: Option<Vec<String>>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    /// `{"type": "enabled", "budget_tokens": N}` (or `adaptive`, `between_tools`) turns a Qwen3
    /// template's thinking on (the budget is not enforced), `{"type": "disabled"}` off.
    pub thinking: Option<Value>,
    /// `{"format": {"type": "json_schema", "schema": {...}}}` holds the reply to the schema;
    /// `effort` is taken and changes nothing.
    pub output_config: Option<Value>,
    /// The structured-output beta's older name for `output_config.format`.
    pub output_format: Option<Value>,
    pub chat_template_kwargs: Option<Map<String, Value>>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

pub async fn create(State(state): State<AppState>, ApiJson(req): ApiJson<MessagesRequest>) -> Result<Response, ApiError> {
    let started = Instant::now();
    let Submitted { stream, ctx, num_prompt_tokens, .. } = submit(&state, &to_chat(&req, &state)?).map_err(|e| renamed(e, &req))?;
    let id = item_id("msg");
    let mut timing = Timing::new(started);
    if req.sampling.stream {
        let metrics = state.metrics.clone();
        let model = ctx.model.clone();
        return Ok(sse_response(move |tx| async move {
            stream::run(&id, &model, &ctx, stream, num_prompt_tokens, &mut timing, &tx).await;
            timing.record(&metrics);
        }));
    }
    let collected = collect(stream, 1, &mut timing).await?;
    timing.record(&state.metrics);
    let c = &collected.choices[0];
    let (reasoning, text, calls) = ctx.parse(&c.text);
    let mut content = vec![];
    if let Some(thinking) = reasoning {
        content.push(json!({"type": "thinking", "thinking": thinking, "signature": ""}));
    }
    if let Some(text) = text.filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": text}));
    }
    content.extend(calls.iter().map(tool_use));
    let (stop_reason, stop_sequence) = stop_reason(c.finish_reason, c.stop_reason.as_ref(), !calls.is_empty());
    Ok(Json(json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": ctx.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage(num_prompt_tokens, c.usage),
    }))
    .into_response())
}

/// The prompt's tokens as the template renders them (what `input_tokens` will be).
pub async fn count_tokens(State(state): State<AppState>, ApiJson(req): ApiJson<MessagesRequest>) -> Result<Json<Value>, ApiError> {
    let (request, _) = prepare(&state, &to_chat(&req, &state)?).map_err(|e| renamed(e, &req))?;
    Ok(Json(json!({"input_tokens": request.prompt.len()})))
}

/// Anthropic's usage: `input_tokens` are those not read from the cache (prefix-cache hits
/// are `cache_read_input_tokens`; the three add up to the prompt).
fn usage(num_prompt_tokens: usize, u: crate::engine::Usage) -> Value {
    json!({"input_tokens": num_prompt_tokens - u.num_cached_tokens.min(num_prompt_tokens), "output_tokens": u.num_output_tokens,
        "cache_read_input_tokens": u.num_cached_tokens, "cache_creation_input_tokens": 0})
}

/// An error from the chat path with its fields as this API names them: `stop` is
/// `stop_sequences`, `response_format` is `output_config.format` (or `output_format`, as `req`
/// sent it), and messages are numbered as rendered (the system message first, tool results
/// apart), so a message's field is named as `messages`.
fn renamed(e: ApiError, req: &MessagesRequest) -> ApiError {
    let renamed = match e.param.as_deref() {
        Some("stop") => "stop_sequences",
        Some("response_format") => output_format(req).map_or("output_config.format", |(field, _)| field),
        Some(p) if p.starts_with("messages[") || p == "continue_final_message" => "messages",
        _ => return e,
    };
    e.with_param(renamed)
}

/// Anthropic's reasons: `max_tokens`, `stop_sequence` (with the string), `tool_use`, or
/// `end_turn`.
fn stop_reason(finish: Option<FinishReason>, stop: Option<&StopReason>, called: bool) -> (&'static str, Option<String>) {
    match (finish, stop) {
        (Some(FinishReason::Length), _) => ("max_tokens", None),
        (_, Some(StopReason::String(s))) => ("stop_sequence", Some(s.clone())),
        _ if called => ("tool_use", None),
        _ => ("end_turn", None),
    }
}

fn tool_use(call: &ToolCall) -> Value {
    let input: Value = serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!({}));
    json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input})
}

/// The chat request `req` stands for.
fn to_chat(req: &MessagesRequest, state: &AppState) -> Result<ChatCompletionRequest, ApiError> {
    if req.sampling.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("n", "/v1/messages makes one output; `n` must be 1"));
    }
    // Anthropic's range, narrower than chat's [0, 2].
    if let Some(t) = req.sampling.temperature.filter(|t| !(0.0..=1.0).contains(t)) {
        return Err(ApiError::invalid("temperature", format!("`temperature` must be in [0, 1], got {t}")));
    }
    let mut messages = vec![];
    if let Some(system) = req.system.as_ref().filter(|s| !s.is_null()) {
        messages.push(message("system", Some(text_blocks(system, "system")?)));
    }
    for (i, m) in req.messages.iter().enumerate() {
        push_message(&mut messages, m, i)?;
    }
    let mut sampling = req.sampling.clone();
    if let Some(stops) = &req.stop_sequences {
        sampling.stop = Some(StringOrList::Many(stops.clone()));
    }
    let mut kwargs = req.chat_template_kwargs.clone();
    if let Some(thinking) = req.thinking.as_ref().filter(|t| !t.is_null()) {
        let kind = thinking.get("type").and_then(Value::as_str);
        let on = match kind {
            Some("enabled" | "adaptive" | "between_tools") => true,
            Some("disabled") => false,
            _ => return Err(ApiError::invalid("thinking.type", format!("`thinking.type` must be \"enabled\", \"adaptive\", \"between_tools\" or \"disabled\"; got {thinking}"))),
        };
        if state.reasoning {
            kwargs.get_or_insert_with(Map::new).entry("enable_thinking").or_insert(Value::Bool(on));
        }
    }
    let response_format = response_format(req)?;
    // A last assistant turn of text is a prefill: the reply goes on from it.
    let continue_final_message = req.messages.last().and_then(|m| m.get("role")) == Some(&json!("assistant"))
        && messages.last().is_some_and(|m| m.tool_calls.is_none() && matches!(&m.content, Some(MessageContent::Text(t)) if !t.is_empty()));
    let (tool_choice, parallel) = match req.tool_choice.as_ref().filter(|c| !c.is_null()) {
        None => (None, None),
        Some(choice) => {
            let parallel = choice.get("disable_parallel_tool_use").and_then(Value::as_bool).map(|d| !d);
            let chat_choice = match (choice.get("type").and_then(Value::as_str), choice.get("name").and_then(Value::as_str)) {
                (Some("auto"), _) => json!("auto"),
                (Some("any"), _) => json!("required"),
                (Some("none"), _) => json!("none"),
                (Some("tool"), Some(name)) => json!({"type": "function", "function": {"name": name}}),
                _ => return Err(ApiError::invalid("tool_choice", format!("`tool_choice` must be {{\"type\": \"auto\" | \"any\" | \"none\"}} or {{\"type\": \"tool\", \"name\": ...}}; got {choice}"))),
            };
            (Some(chat_choice), parallel)
        }
    };
    Ok(ChatCompletionRequest {
        messages,
        sampling,
        logprobs: false,
        top_logprobs: None,
        return_tokens_as_token_ids: false,
        tools: req.tools.as_ref().map(|t| tools(t)).transpose()?,
        tool_choice,
        parallel_tool_calls: parallel,
        chat_template_kwargs: kwargs,
        response_format,
        structured: StructuredOutputFields::default(),
        continue_final_message,
        add_generation_prompt: None,
        chat_template: None,
        functions: None,
        function_call: None,
    })
}

/// The output format asked for, and the field that asked: `output_config.format`, or the
/// beta's `output_format`.
fn output_format(req: &MessagesRequest) -> Option<(&'static str, &Value)> {
    let current = req.output_config.as_ref().and_then(|c| c.get("format")).filter(|f| !f.is_null());
    let legacy = req.output_format.as_ref().filter(|f| !f.is_null());
    current.map(|f| ("output_config.format", f)).or(legacy.map(|f| ("output_format", f)))
}

/// Chat's `response_format` for the output format asked for. `output_format` may repeat
/// `output_config.format` but not contradict it.
fn response_format(req: &MessagesRequest) -> Result<Option<Value>, ApiError> {
    let Some((field, format)) = output_format(req) else { return Ok(None) };
    if req.output_format.as_ref().is_some_and(|legacy| !legacy.is_null() && legacy != format) {
        return Err(ApiError::invalid("output_format", "`output_format` is the older name of `output_config.format`; give one, or the same format in both"));
    }
    match (format.get("type").and_then(Value::as_str), format.get("schema")) {
        (Some("json_schema"), Some(schema)) => Ok(Some(json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}))),
        _ => Err(ApiError::invalid(field, format!("`{field}` must be {{\"type\": \"json_schema\", \"schema\": {{...}}}}"))),
    }
}

/// One Anthropic message as chat messages: a user turn's `tool_result` blocks become tool
/// messages (before its text), an assistant turn's `thinking` its reasoning and `tool_use`
/// blocks its tool calls.
fn push_message(messages: &mut Vec<ChatMessage>, m: &Value, i: usize) -> Result<(), ApiError> {
    let field = format!("messages[{i}]");
    let role = m.get("role").and_then(Value::as_str).unwrap_or("");
    if !matches!(role, "user" | "assistant" | "system") {
        return Err(ApiError::invalid(format!("{field}.role"), format!("`{field}.role` must be \"user\", \"assistant\" or \"system\"; got {role:?}")));
    }
    if role == "system" {
        let text = text_blocks(m.get("content").unwrap_or(&Value::Null), &format!("{field}.content"))?;
        messages.push(message("system", Some(text)));
        return Ok(());
    }
    let blocks = match m.get("content") {
        Some(Value::String(text)) => {
            messages.push(message(role, Some(text.clone())));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => return Err(ApiError::invalid(format!("{field}.content"), format!("`{field}.content` must be a string or a list of content blocks"))),
    };
    let mut text = String::new();
    let mut tool_results = 0;
    let mut reasoning = String::new();
    let mut calls = vec![];
    for (j, block) in blocks.iter().enumerate() {
        let at = format!("{field}.content[{j}]");
        let str_of = |key: &str| block.get(key).and_then(Value::as_str).ok_or_else(|| ApiError::invalid(format!("{at}.{key}"), format!("`{at}.{key}` must be a string")));
        match (role, block.get("type").and_then(Value::as_str).unwrap_or("")) {
            (_, "text") => join_text(&mut text, str_of("text")?),
            ("assistant", "thinking") => reasoning.push_str(str_of("thinking")?),
            ("assistant", "redacted_thinking") => {}
            ("assistant", "tool_use") => {
                let input = block.get("input").filter(|v| v.is_object()).ok_or_else(|| ApiError::invalid(format!("{at}.input"), format!("`{at}.input` must be an object")))?;
                calls.push(json!({"id": str_of("id")?, "type": "function", "function": {"name": str_of("name")?, "arguments": input.to_string()}}));
            }
            ("user", "tool_result") => {
                let mut content = match block.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(c) => text_blocks(c, &format!("{at}.content"))?,
                };
                // The model is told that the tool failed.
                if block.get("is_error") == Some(&Value::Bool(true)) {
                    content.insert_str(0, "Error: ");
                }
                let mut tool = message("tool", Some(content));
                tool.tool_call_id = Some(str_of("tool_use_id")?.to_string());
                messages.push(tool);
                tool_results += 1;
            }
            _ => return Err(ApiError::invalid(format!("{at}.type"), format!("`{at}` {}, which is not supported in a {role} message (text, thinking, tool_use, tool_result)", has_type(block)))),
        }
    }
    if role == "assistant" {
        // A turn of thinking alone (or nothing) still needs content.
        let mut m = message("assistant", Some(text).filter(|t| !t.is_empty() || calls.is_empty()));
        m.reasoning_content = Some(reasoning).filter(|r| !r.is_empty());
        m.tool_calls = Some(calls).filter(|c| !c.is_empty());
        messages.push(m);
    } else if !text.is_empty() || tool_results == 0 {
        // A turn of tool results is its tool messages (and its text, if any); any other turn is
        // kept, empty too, as `content: ""` is.
        messages.push(message("user", Some(text)));
    }
    Ok(())
}

/// A string, or `text` blocks joined ([`join_text`]).
fn text_blocks(value: &Value, field: &str) -> Result<String, ApiError> {
    let blocks = match value {
        Value::String(s) => return Ok(s.clone()),
        Value::Array(blocks) => blocks,
        _ => return Err(ApiError::invalid(field, format!("`{field}` must be a string or a list of text blocks"))),
    };
    let mut text = String::new();
    for (j, b) in blocks.iter().enumerate() {
        match (b.get("type").and_then(Value::as_str), b.get("text").and_then(Value::as_str)) {
            (Some("text"), Some(t)) => join_text(&mut text, t),
            (Some("text"), None) => return Err(ApiError::invalid(format!("{field}[{j}].text"), format!("`{field}[{j}].text` must be a string"))),
            _ => return Err(ApiError::invalid(format!("{field}[{j}]"), format!("only text blocks are supported here; `{field}[{j}]` {}", has_type(b)))),
        }
    }
    Ok(text)
}

/// Appends a text block to a turn's text: blocks are separate paragraphs, so they are joined
/// with "\n" (as vLLM joins a message's text parts), and an empty block adds nothing.
fn join_text(text: &mut String, block: &str) {
    if !text.is_empty() && !block.is_empty() {
        text.push('\n');
    }
    text.push_str(block);
}

/// Client tools (`name`, `description`, `input_schema`) in chat's shape; Anthropic's server
/// tools (web search, code execution, ...) are refused.
fn tools(tools: &[Value]) -> Result<Vec<Value>, ApiError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let custom = t.get("type").and_then(Value::as_str).is_none_or(|k| k == "custom");
            match (custom, t.get("name").and_then(Value::as_str)) {
                (true, Some(name)) => Ok(function_tool(name, t, "input_schema")),
                (true, None) => Err(ApiError::invalid(format!("tools[{i}].name"), format!("`tools[{i}].name` must be a string"))),
                (false, _) => Err(ApiError::invalid(format!("tools[{i}]"), format!("only client tools (`name`, `input_schema`) are supported; `tools[{i}]` {}", has_type(t)))),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(messages: &[Value]) -> Result<Vec<ChatMessage>, ApiError> {
        let mut out = vec![];
        for (i, m) in messages.iter().enumerate() {
            push_message(&mut out, m, i)?;
        }
        Ok(out)
    }

    fn text(m: &ChatMessage) -> &str {
        match &m.content {
            Some(MessageContent::Text(t)) => t,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_turn_of_empty_text_blocks_is_kept_as_empty_content_is() {
        for content in [json!(""), json!([]), json!([{"type": "text", "text": ""}]), json!([{"type": "text", "text": ""}, {"type": "text", "text": ""}])] {
            let out = rendered(&[json!({"role": "user", "content": content.clone()})]).unwrap();
            assert_eq!((out.len(), out[0].role.as_str(), text(&out[0])), (1, "user", ""), "{content}");
            let turns = [json!({"role": "user", "content": "a"}), json!({"role": "assistant", "content": "b"}), json!({"role": "user", "content": content.clone()})];
            assert_eq!(rendered(&turns).unwrap().len(), 3, "{content}");
        }
        // A turn of tool results is its tool messages, with its text if it has any.
        let result = json!({"type": "tool_result", "tool_use_id": "t", "content": "42"});
        let out = rendered(&[json!({"role": "user", "content": [result.clone(), {"type": "text", "text": ""}]})]).unwrap();
        assert_eq!(out.iter().map(|m| m.role.as_str()).collect::<Vec<_>>(), ["tool"]);
        let out = rendered(&[json!({"role": "user", "content": [result, {"type": "text", "text": "and?"}]})]).unwrap();
        assert_eq!(out.iter().map(|m| m.role.as_str()).collect::<Vec<_>>(), ["tool", "user"]);
    }

    #[test]
    fn text_blocks_are_joined_as_lines() {
        let blocks = json!([{"type": "text", "text": "hello"}, {"type": "text", "text": ""}, {"type": "text", "text": "world"}]);
        let out = rendered(&[json!({"role": "user", "content": blocks.clone()})]).unwrap();
        assert_eq!(text(&out[0]), "hello\nworld");
        let out = rendered(&[json!({"role": "assistant", "content": blocks.clone()})]).unwrap();
        assert_eq!(text(&out[0]), "hello\nworld");
        assert_eq!(text_blocks(&blocks, "system").unwrap(), "hello\nworld");
        // A tool result's blocks too; the turn's text apart from it.
        let result = json!({"type": "tool_result", "tool_use_id": "t", "content": blocks});
        let out = rendered(&[json!({"role": "user", "content": [{"type": "text", "text": "a"}, result, {"type": "text", "text": "b"}]})]).unwrap();
        assert_eq!(out.iter().map(text).collect::<Vec<_>>(), ["hello\nworld", "a\nb"]);
    }

    fn request(body: Value) -> MessagesRequest {
        let mut body = body;
        body["messages"] = json!([]);
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn output_format_is_output_config_format_by_its_older_name() {
        let format = json!({"type": "json_schema", "schema": {"type": "object"}});
        let expected = Some(json!({"type": "json_schema", "json_schema": {"name": "output", "schema": {"type": "object"}}}));
        for body in [json!({"output_format": format}), json!({"output_config": {"format": format}}), json!({"output_format": format, "output_config": {"format": format}})] {
            assert_eq!(response_format(&request(body.clone())).unwrap(), expected, "{body}");
        }
        assert_eq!(response_format(&request(json!({"output_format": null}))).unwrap(), None);
        let other = json!({"type": "json_schema", "schema": {"type": "array"}});
        let e = response_format(&request(json!({"output_format": other, "output_config": {"format": format}}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("output_format"));
        let e = response_format(&request(json!({"output_format": {"type": "regex"}}))).unwrap_err();
        assert_eq!((e.param.as_deref(), e.message.starts_with("`output_format` must be")), (Some("output_format"), true), "{}", e.message);
        // The chat path's errors about the format name the field the request used.
        let chat_error = ApiError::invalid("response_format", "`response_format` has a bad schema");
        assert_eq!(renamed(chat_error.clone(), &request(json!({"output_format": format}))).message, "`output_format` has a bad schema");
        assert_eq!(renamed(chat_error, &request(json!({"output_config": {"format": format}}))).message, "`output_config.format` has a bad schema");
    }

    #[test]
    fn refused_blocks_say_their_type_plainly() {
        let e = rendered(&[json!({"role": "user", "content": [{"type": "image", "source": {}}]})]).unwrap_err();
        assert!(e.message.starts_with("`messages[0].content[0]` has type `image`, which is not supported"), "{}", e.message);
        let e = text_blocks(&json!([{"text": "x"}]), "system").unwrap_err();
        assert_eq!(e.message, "only text blocks are supported here; `system[0]` has no `type`");
        let e = tools(&[json!({"type": "web_search_20250305", "name": "web_search"})]).unwrap_err();
        assert!(e.message.ends_with("`tools[0]` has type `web_search_20250305`"), "{}", e.message);
    }
}
