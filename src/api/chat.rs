//! `POST /v1/chat/completions`: chat template -> engine -> message (reasoning, content, tool
//! calls), whole or as SSE chunks.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::generation::{collect, random_id, unix_time, usage, StreamUsage, Timing, ABORTED};
use super::output_format;
use super::reasoning::{split_reasoning, ReasoningStreamParser};
use super::sse::{sse_response, SseSender};
use super::state::{ApiJson, AppState};
use super::tool_parser::{parse_tool_calls_checked, BareCheck, ToolCall, ToolCallStreamParser, ToolStreamEvent};
use super::types::*;
use super::validate;
use crate::engine::constraint::OutputFormat;
use crate::engine::sampler::Logprobs;
use crate::engine::{EngineRequest, Event, FinishReason, RequestStream};
use crate::error::ApiError;
use crate::tokenizer::Tokenizer;

pub async fn chat_completions(State(state): State<AppState>, ApiJson(req): ApiJson<ChatCompletionRequest>) -> Result<Response, ApiError> {
    let started = Instant::now();
    let stream_usage = StreamUsage::requested(&req.sampling)?;
    let Submitted { stream, ctx, n, num_prompt_tokens } = submit(&state, &req)?;
    let mut timing = Timing::new(started);
    if req.sampling.stream {
        let metrics = state.metrics.clone();
        return Ok(sse_response(move |tx| async move {
            stream_chat(ctx, stream, n, num_prompt_tokens, stream_usage, &mut timing, &tx).await;
            timing.record(&metrics);
        }));
    }
    let collected = collect(stream, n, &mut timing).await?;
    timing.record(&state.metrics);
    let choices = collected
        .choices
        .iter()
        .enumerate()
        .map(|(index, c)| {
            let (reasoning_content, content, calls) = ctx.parse(&c.text);
            let reason = c.finish_reason.unwrap_or(FinishReason::Stop);
            ChatChoice {
                index,
                finish_reason: if !calls.is_empty() && reason == FinishReason::Stop { "tool_calls" } else { reason.as_str() },
                message: AssistantMessage { role: "assistant", content, reasoning_content, tool_calls: calls.into_iter().map(|c| tool_call_out(None, c)).collect() },
                logprobs: ctx.want_logprobs.then(|| ChatLogprobs { content: c.tokens.iter().zip(&c.logprobs).map(|(&t, l)| token_logprob(&ctx.tokenizer, t, l, ctx.token_ids)).collect() }),
                stop_reason: MatchedStop::of(c.stop_reason.as_ref()),
            }
        })
        .collect();
    let body = ChatCompletion {
        id: ctx.id,
        object: "chat.completion",
        created: ctx.created,
        model: ctx.model,
        choices,
        usage: usage(num_prompt_tokens, collected.choices.iter().map(|c| c.usage)),
    };
    Ok(Json(body).into_response())
}

/// A message of plain text (or none), as the Responses and Messages APIs build conversations.
pub(super) fn message(role: &str, content: Option<String>) -> ChatMessage {
    ChatMessage { role: role.into(), content: content.map(MessageContent::Text), name: None, tool_calls: None, tool_call_id: None, reasoning_content: None }
}

/// A function tool in chat's shape (`{"type": "function", "function": {...}}`), from the flat
/// shapes of the Responses and Messages APIs (`tool`, its schema under `schema_key`); a null
/// description or schema is left out, and `strict` kept.
pub(super) fn function_tool(name: &str, tool: &Value, schema_key: &str) -> Value {
    let mut function = json!({"name": name});
    for (key, value) in [("description", tool.get("description")), ("parameters", tool.get(schema_key)), ("strict", tool.get("strict"))] {
        if let Some(v) = value.filter(|v| !v.is_null()) {
            function[key] = v.clone();
        }
    }
    json!({"type": "function", "function": function})
}

/// A chat request checked, rendered and handed to the engine.
pub(super) struct Submitted {
    pub stream: RequestStream,
    pub ctx: ChatContext,
    pub n: usize,
    pub num_prompt_tokens: usize,
}

/// Checks `req`, renders its messages with the chat template and submits it (also the way in
/// of the Responses and Messages APIs, `super::responses`, `super::messages`).
pub(super) fn submit(state: &AppState, req: &ChatCompletionRequest) -> Result<Submitted, ApiError> {
    let (request, ctx) = prepare(state, req)?;
    let n = request.params.n;
    let limit = req.sampling.output_limit().0;
    let stream = state.engine.submit(request).map_err(|e| validate::length_error(e, state.engine.max_sequence_tokens(), "messages", limit))?;
    let num_prompt_tokens = stream.num_prompt_tokens;
    Ok(Submitted { stream, ctx, n, num_prompt_tokens })
}

/// [`submit`] up to the engine: the request it would submit, and how to read its output.
pub(super) fn prepare(state: &AppState, req: &ChatCompletionRequest) -> Result<(EngineRequest, ChatContext), ApiError> {
    validate::check_model(req.sampling.model.as_deref(), &state.model_name)?;
    for (field, value, instead) in [("functions", &req.functions, "tools"), ("function_call", &req.function_call, "tool_choice")] {
        if value.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ApiError::invalid(field, format!("`{field}` (OpenAI's deprecated function calling) is not supported; send the functions as `tools` and the choice as `{instead}`")));
        }
    }
    if req.chat_template.as_ref().is_some_and(|t| !t.is_null()) {
        return Err(ApiError::invalid("chat_template", "a request's `chat_template` is not taken (the template is code the server runs); start the server with `--chat-template FILE`"));
    }
    let (response_format, field) = output_format::requested(req.response_format.as_ref(), &req.structured, &state.formats)?;
    let messages = validate::template_messages(&req.messages)?;
    // Forced calls (a 400 beside `response_format`), or calls or a JSON answer (`"auto"`).
    let (tools, calls) = validate::tools(req, &response_format, &field, &state.formats)?;
    let format = calls.unwrap_or(response_format);
    // Free text whose calls are held (a `strict` function) reads and thinks as plain text.
    let free_text = matches!(&format, OutputFormat::ToolCalls(c) if c.answers_text());
    let json = format != OutputFormat::Text && !free_text;
    // A held output (JSON, or tool calls) has no reasoning part, unless thinking is asked
    // for on a template that renders it: then the output is held once the thinking ends.
    // Free text thinks as the template would (held calls may follow the thinking).
    let thinking = req.chat_template_kwargs.as_ref().and_then(|k| k.get("enable_thinking")).and_then(Value::as_bool);
    let thinking_asked = thinking == Some(true);
    let think_first = state.reasoning && (json && thinking_asked || free_text && thinking.unwrap_or(state.default_enable_thinking));
    validate::held_output_compatible(&req.sampling, &format, &field, tools.is_some(), thinking_asked && !think_first)?;
    let logprobs = validate::chat_logprobs(req)?;
    let engine = &state.engine;
    let template = engine
        .chat_template()
        .ok_or_else(|| ApiError::bad_request("this model has no chat template; use /v1/completions"))?;
    let mut kwargs = req.chat_template_kwargs.clone().unwrap_or_default();
    // JSON mode holds the whole output to the object, so a thinking model answers without thinking.
    kwargs.entry("enable_thinking").or_insert(Value::Bool(state.default_enable_thinking && !json));
    let prompt_text = match final_message_prefix(req)? {
        None => template.render(&messages, tools.as_deref(), req.add_generation_prompt != Some(false), &kwargs)?,
        // vLLM's `continue_final_message`: the turn left open, cut right after its text.
        Some(prefix) => {
            let rendered = template.render(&messages, tools.as_deref(), false, &kwargs)?;
            let end = rendered.rfind(prefix).ok_or_else(|| ApiError::invalid("continue_final_message", "the chat template does not render the final message's text as sent, so it cannot be continued"))?;
            rendered[..end + prefix.len()].to_string()
        }
    };
    let mut prompt = engine.tokenizer().encode(&prompt_text)?;
    validate::truncate_prompt(&req.sampling, &mut prompt, engine.max_sequence_tokens())?;
    let mut params = validate::sampling_params(&req.sampling, engine.tokenizer().vocab_size(), engine.default_max_tokens(prompt.len()), logprobs, engine.sampling_defaults())?;
    params.format = format;
    params.think_first = think_first;
    let bare_check: Option<BareCheck> = match &params.format {
        // Under `"auto"` (free text, or a JSON answer) a bare call was not held as a call: it
        // counts only if it fits, so a call that comes back always does.
        OutputFormat::ToolCalls(calls) if calls.answers() => {
            let calls = calls.clone();
            Some(Arc::new(move |body: &str| calls.fits(body)))
        }
        _ => None,
    };
    let ctx = ChatContext {
        id: random_id("chatcmpl"),
        created: unix_time(),
        model: state.model_name.clone(),
        tokenizer: engine.tokenizer().clone(),
        tools,
        bare_check,
        // JSON output has no reasoning part (a `<think>` written inside one of its strings stays
        // there) unless it comes after the thinking.
        reasoning: state.reasoning && (!json || think_first),
        // Held output after thinking: the output begins in the thinking, with or without `<think>`.
        prompt_ends_in_think: prompt_text.trim_end().ends_with("<think>") || think_first,
        think_first,
        want_logprobs: logprobs.is_some(),
        token_ids: req.return_tokens_as_token_ids,
    };
    Ok((EngineRequest { prompt, params }, ctx))
}

/// The final message's text when the request continues it (`continue_final_message`, an
/// assistant turn the output goes on from); `None` when a new turn is to be generated.
fn final_message_prefix(req: &ChatCompletionRequest) -> Result<Option<&str>, ApiError> {
    if !req.continue_final_message {
        return Ok(None);
    }
    if req.add_generation_prompt == Some(true) {
        return Err(ApiError::invalid("continue_final_message", "`continue_final_message` cannot be combined with `add_generation_prompt: true`"));
    }
    let last = req.messages.last().filter(|m| m.role == "assistant" && m.tool_calls.as_ref().is_none_or(Vec::is_empty));
    match last.and_then(|m| m.content.as_ref()) {
        Some(MessageContent::Text(text)) if !text.is_empty() => Ok(Some(text)),
        _ => Err(ApiError::invalid("continue_final_message", "`continue_final_message` needs a last message from the assistant with text content (and no tool calls)")),
    }
}

pub(super) struct ChatContext {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub tokenizer: Tokenizer,
    tools: Option<Vec<Value>>,
    /// Under `"auto"` with held calls, whether a bare call fits (`tool_parser::BareCheck`).
    bare_check: Option<BareCheck>,
    reasoning: bool,
    prompt_ends_in_think: bool,
    /// Held output after thinking (`enable_thinking: true` with JSON or forced calls).
    think_first: bool,
    want_logprobs: bool,
    /// `return_tokens_as_token_ids`.
    token_ids: bool,
}

impl ChatContext {
    /// A whole output as (reasoning, content, tool calls).
    pub fn parse(&self, text: &str) -> (Option<String>, Option<String>, Vec<ToolCall>) {
        let (reasoning, content) = if self.reasoning { split_reasoning(text, self.think_first) } else { (None, Some(text.to_string())) };
        let (content, calls) = match (&self.tools, content) {
            (Some(tools), Some(content)) => parse_tool_calls_checked(&content, Some(tools), self.bare_check.as_ref()),
            (_, content) => (content, vec![]),
        };
        (reasoning, content, calls)
    }

    /// The incremental form of [`Self::parse`], for one streamed choice.
    pub fn choice_stream(&self) -> ChoiceStream {
        ChoiceStream {
            reasoning: self.reasoning.then(|| ReasoningStreamParser::new(self.prompt_ends_in_think)),
            tools: self.tools.clone().map(|t| ToolCallStreamParser::new(Some(t)).with_bare_check(self.bare_check.clone())),
            num_tool_calls: 0,
        }
    }
}

pub(super) fn tool_call_out(index: Option<usize>, c: ToolCall) -> ToolCallOut {
    ToolCallOut { index, id: c.id, kind: "function", function: FunctionCallOut { name: c.name, arguments: c.arguments } }
}

fn token_text(tokenizer: &Tokenizer, id: u32) -> String {
    tokenizer.decode(&[id], false).unwrap_or_default()
}

/// A token's logprob entry: named by its text, or by `token_id:{id}` under
/// `return_tokens_as_token_ids` (`bytes` are the token's raw bytes either way).
pub(super) fn token_logprob(tokenizer: &Tokenizer, token: u32, l: &Logprobs, token_ids: bool) -> ChatTokenLogprob {
    let entry = |id: u32| {
        let name = if token_ids { format!("token_id:{id}") } else { token_text(tokenizer, id) };
        (name, tokenizer.piece_bytes(id))
    };
    let (token, bytes) = entry(token);
    ChatTokenLogprob {
        bytes,
        token,
        logprob: l.token_logprob,
        top_logprobs: l
            .top
            .iter()
            .map(|&(id, lp)| {
                let (token, bytes) = entry(id);
                TopLogprob { bytes, token, logprob: lp }
            })
            .collect(),
    }
}

/// One choice's incremental parsing state.
pub(super) struct ChoiceStream {
    reasoning: Option<ReasoningStreamParser>,
    tools: Option<ToolCallStreamParser>,
    num_tool_calls: usize,
}

impl ChoiceStream {
    /// Turns newly generated text into a delta (reasoning, content, completed tool calls).
    pub fn delta(&mut self, text: &str, end: bool) -> Delta {
        let (reasoning, content) = match &mut self.reasoning {
            Some(p) => {
                let mut d = p.push(text);
                if end {
                    let f = p.finish();
                    d.reasoning.push_str(&f.reasoning);
                    d.content.push_str(&f.content);
                }
                (d.reasoning, d.content)
            }
            None => (String::new(), text.to_string()),
        };
        let mut delta = Delta::default();
        if !reasoning.is_empty() {
            delta.reasoning_content = Some(reasoning);
        }
        let events = match &mut self.tools {
            Some(p) => {
                let mut e = p.push(&content);
                if end {
                    e.extend(p.finish());
                }
                e
            }
            None if content.is_empty() => vec![],
            None => vec![ToolStreamEvent::Content(content)],
        };
        let mut text = String::new();
        for e in events {
            match e {
                ToolStreamEvent::Content(c) => text.push_str(&c),
                ToolStreamEvent::ToolCall { call, .. } => {
                    delta.tool_calls.push(tool_call_out(Some(self.num_tool_calls), call));
                    self.num_tool_calls += 1;
                }
            }
        }
        if !text.is_empty() {
            delta.content = Some(text);
        }
        delta
    }
}

fn is_empty(d: &Delta) -> bool {
    d.role.is_none() && d.content.is_none() && d.reasoning_content.is_none() && d.tool_calls.is_empty()
}

/// Streams the choices as chunks. Without tools each choice opens with a role chunk holding
/// `content: ""`, as OpenAI's text answers do. With tools the role rides on the choice's first
/// chunk instead: a turn of tool calls only then has no content at all (SDKs that accumulate
/// the deltas would make `''` of an empty string), as its whole response has `content: null`.
async fn stream_chat(ctx: ChatContext, mut stream: RequestStream, n: usize, num_prompt_tokens: usize, stream_usage: StreamUsage, timing: &mut Timing, tx: &SseSender) {
    let chunk = |choices: Vec<ChunkChoice>, usage: Option<Usage>| ChatChunk {
        id: ctx.id.clone(),
        object: "chat.completion.chunk",
        created: ctx.created,
        model: ctx.model.clone(),
        choices,
        usage,
    };
    let mut states: Vec<ChoiceStream> = (0..n).map(|_| ctx.choice_stream()).collect();
    let mut num_output_tokens = vec![0usize; n];
    let role_opens = ctx.tools.is_none();
    let mut role_pending = vec![!role_opens; n];
    for index in (0..n).filter(|_| role_opens) {
        let delta = Delta { role: Some("assistant"), content: Some(String::new()), ..Default::default() };
        if !tx.json(&chunk(vec![ChunkChoice { index, delta, logprobs: None, finish_reason: None, stop_reason: None }], stream_usage.so_far(num_prompt_tokens, 0))).await {
            return;
        }
    }
    let mut usages = vec![];
    while usages.len() < n {
        let Some(event) = stream.recv().await else {
            tx.fail("the engine stopped before the request finished").await;
            return;
        };
        let (index, mut delta, logprobs, finish_reason, stop_reason) = match event {
            Event::PromptLogprobs(_) | Event::Pooled { .. } => continue,
            Event::Token { index, token, text, logprobs } => {
                timing.token();
                num_output_tokens[index] += 1;
                let delta = states[index].delta(&text, false);
                let logprobs = logprobs.filter(|_| ctx.want_logprobs).map(|l| ChatLogprobs { content: vec![token_logprob(&ctx.tokenizer, token, &l, ctx.token_ids)] });
                (index, delta, logprobs, None, None)
            }
            Event::Finished { index, reason, stop_reason, text, usage } => {
                if reason == FinishReason::Abort {
                    tx.fail(ABORTED).await;
                    return;
                }
                usages.push(usage);
                num_output_tokens[index] = usage.num_output_tokens;
                let delta = states[index].delta(&text, true);
                let finish = if states[index].num_tool_calls > 0 && reason == FinishReason::Stop { "tool_calls" } else { reason.as_str() };
                (index, delta, None, Some(finish), MatchedStop::of(stop_reason.as_ref()))
            }
        };
        if is_empty(&delta) && logprobs.is_none() && finish_reason.is_none() {
            continue;
        }
        if std::mem::take(&mut role_pending[index]) {
            delta.role = Some("assistant");
        }
        let usage = stream_usage.so_far(num_prompt_tokens, num_output_tokens[index]);
        if !tx.json(&chunk(vec![ChunkChoice { index, delta, logprobs, finish_reason, stop_reason }], usage)).await {
            return;
        }
    }
    if stream_usage.last_chunk {
        tx.json(&chunk(vec![], Some(usage(num_prompt_tokens, usages)))).await;
    }
    tx.done().await;
}
