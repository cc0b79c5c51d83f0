//! Parse once: wire types become engine requests here, every field checked once, every error
//! naming the field and the allowed range.

use std::sync::Arc;

use serde_json::{json, Value};

use super::types::{ChatCompletionRequest, ChatMessage, MessageContent, SamplingFields, StringOrList};
use crate::engine::constraint::{FormatCache, OutputFormat};
use crate::engine::sampler::MAX_LOGPROBS;
use crate::engine::sampling_defaults::SamplingDefaults;
use crate::engine::json_schema::Schema;
use crate::engine::tool_calls::{any_object, Answer, ToolCallFormat};
use crate::engine::{SamplingParams, SubmitError};
use crate::error::ApiError;

/// Largest `n` accepted: each choice is a sequence holding KV blocks.
pub const MAX_N: usize = 16;

fn range_f32(name: &str, v: Option<f32>, default: f32, lo: f32, hi: f32, lo_open: bool) -> Result<f32, ApiError> {
    let Some(x) = v else { return Ok(default) };
    let ok = x.is_finite() && (if lo_open { x > lo } else { x >= lo }) && x <= hi;
    if !ok {
        let open = if lo_open { '(' } else { '[' };
        return Err(ApiError::invalid(name, format!("`{name}` must be in {open}{lo}, {hi}], got {x}")));
    }
    Ok(x)
}

/// The sampling fields common to chat and completions. `default_max_tokens` applies when the
/// request leaves `max_tokens` out (capped by the model's own default, if it has one); the other
/// fields it leaves out come from `defaults`; `logprobs` is the number of alternatives
/// (endpoint-specific).
pub fn sampling_params(
    f: &SamplingFields,
    vocab_size: usize,
    default_max_tokens: usize,
    logprobs: Option<usize>,
    defaults: &SamplingDefaults,
) -> Result<SamplingParams, ApiError> {
    let max_tokens = match f.output_limit() {
        (_, None) => default_max_tokens.min(defaults.max_tokens.unwrap_or(usize::MAX)).max(1),
        (_, Some(m)) if m >= 1 => m as usize,
        (field, Some(m)) => return Err(ApiError::invalid(field, format!("`{field}` must be at least 1, got {m}"))),
    };
    let n = match f.n {
        None => 1,
        Some(n) if (1..=MAX_N as i64).contains(&n) => n as usize,
        Some(n) => return Err(ApiError::invalid("n", format!("`n` must be in [1, {MAX_N}], got {n}"))),
    };
    let top_k = match f.top_k {
        None => defaults.top_k,
        Some(-1) | Some(0) => 0,
        Some(k) if k >= 1 => k as usize,
        Some(k) => return Err(ApiError::invalid("top_k", format!("`top_k` must be -1 (off) or at least 1, got {k}"))),
    };
    let min_tokens = match f.min_tokens {
        None => 0,
        Some(m) if m >= 0 && m as usize <= max_tokens => m as usize,
        Some(m) => return Err(ApiError::invalid("min_tokens", format!("`min_tokens` must be in [0, max_tokens = {max_tokens}], got {m}"))),
    };
    let check_id = |param: &str, id: u32| {
        if id as usize >= vocab_size {
            Err(ApiError::invalid(param, format!("token id {id} in `{param}` is outside the vocabulary [0, {vocab_size})")))
        } else {
            Ok(id)
        }
    };
    let mut logit_bias = vec![];
    for (key, &bias) in f.logit_bias.iter().flatten() {
        let id: u32 = key.parse().map_err(|_| ApiError::invalid("logit_bias", format!("`logit_bias` keys must be token ids, got {key:?}")))?;
        check_id("logit_bias", id)?;
        if !(-100.0..=100.0).contains(&bias) {
            return Err(ApiError::invalid("logit_bias", format!("`logit_bias` values must be in [-100, 100], got {bias} for token {id}")));
        }
        logit_bias.push((id, bias));
    }
    logit_bias.sort_by_key(|b| b.0);
    let stop: Vec<String> = f.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > 16 {
        return Err(ApiError::invalid("stop", format!("`stop` takes at most 16 strings, got {}", stop.len())));
    }
    if f.prompt_logprobs.as_ref().is_some_and(|p| !p.is_null()) {
        return Err(ApiError::invalid("prompt_logprobs", "`prompt_logprobs` is not served; /v1/completions with `echo: true` and `logprobs` returns the prompt's logprobs"));
    }
    let stop_token_ids = f.stop_token_ids.clone().unwrap_or_default().into_iter().map(|id| check_id("stop_token_ids", id)).collect::<Result<_, _>>()?;
    Ok(SamplingParams {
        n,
        temperature: range_f32("temperature", f.temperature, defaults.temperature, 0.0, 2.0, false)?,
        top_p: range_f32("top_p", f.top_p, defaults.top_p, 0.0, 1.0, true)?,
        top_k,
        min_p: range_f32("min_p", f.min_p, defaults.min_p, 0.0, 1.0, false)?,
        repetition_penalty: range_f32("repetition_penalty", f.repetition_penalty, defaults.repetition_penalty, 0.0, 2.0, true)?,
        presence_penalty: range_f32("presence_penalty", f.presence_penalty, 0.0, -2.0, 2.0, false)?,
        frequency_penalty: range_f32("frequency_penalty", f.frequency_penalty, 0.0, -2.0, 2.0, false)?,
        logit_bias,
        penalty_last_n: None,
        truncate_first: false,
        // Any JSON integer is a seed; negative ones map onto the upper half of u64.
        seed: f.seed.map(|s| s as u64),
        max_tokens,
        min_tokens,
        ignore_eos: f.ignore_eos.unwrap_or(false),
        stop,
        include_stop_str: f.include_stop_str_in_output.unwrap_or(false),
        skip_special_tokens: f.skip_special_tokens.unwrap_or(true),
        stop_token_ids,
        logprobs,
        prompt_logprobs: None,
        format: OutputFormat::Text,
        think_first: false,
        embed: false,
        score_tokens: Vec::new(),
    })
}

/// vLLM's `truncate_prompt_tokens`: the prompt's last k tokens (-1: the context's worth).
pub fn truncate_prompt(f: &SamplingFields, prompt: &mut Vec<u32>, context: usize) -> Result<(), ApiError> {
    let keep = match f.truncate_prompt_tokens {
        None => return Ok(()),
        Some(-1) => context,
        Some(k) if k >= 1 => k as usize,
        Some(k) => return Err(ApiError::invalid("truncate_prompt_tokens", format!("`truncate_prompt_tokens` must be at least 1 (or -1: the context), got {k}"))),
    };
    prompt.drain(..prompt.len().saturating_sub(keep));
    Ok(())
}

/// The engine's refusal of a request as too long for the context or the KV cache, naming the
/// field to change: the prompt's (`prompt_field`) where it alone leaves no room for a token of
/// output (`max_sequence`: the longest sequence the engine takes), else the output limit's
/// (`limit_field`, as the endpoint calls it). Other refusals pass through.
pub fn length_error(e: SubmitError, max_sequence: usize, prompt_field: &str, limit_field: &str) -> ApiError {
    let (prompt, context) = match &e {
        SubmitError::TooLong { prompt, context, .. } => (*prompt, Some(*context)),
        SubmitError::CannotFit { prompt, .. } => (*prompt, None),
        _ => return e.into(),
    };
    let mut error = ApiError::from(e);
    if prompt >= max_sequence {
        error.message = match context {
            Some(context) if context == max_sequence => {
                format!("This model's maximum context length is {context} tokens. However, the prompt (`{prompt_field}`) has {prompt} tokens, which leaves no room for output.")
            }
            _ => format!("the prompt (`{prompt_field}`, {prompt} tokens) leaves no room for output within the {max_sequence} tokens the KV cache holds (raise --kv-cache-memory, or --gpu-memory-utilization on a GPU)"),
        };
        error.param = Some(prompt_field.into());
    } else {
        error.message = error.message.replace("max_tokens", &format!("`{limit_field}`"));
        error.param = Some(limit_field.into());
    }
    error
}

/// How an error names what a content part or a tool is: "has type `input_image`", or "has no
/// `type`".
pub fn has_type(item: &Value) -> String {
    match item.get("type") {
        None | Some(Value::Null) => "has no `type`".into(),
        Some(Value::String(t)) => format!("has type `{t}`"),
        Some(other) => format!("has `type` {other}, not a string"),
    }
}

/// `model`, when given, must be the served one.
pub fn check_model(requested: Option<&str>, served: &str) -> Result<(), ApiError> {
    match requested {
        Some(m) if m != served => Err(ApiError::model_not_found(m)),
        _ => Ok(()),
    }
}

/// Chat messages as the template expects them: content parts joined into text, absent
/// fields left out (transformers drops `None` keys before rendering; Qwen3's template fails
/// on a null content).
pub fn template_messages(messages: &[ChatMessage]) -> Result<Vec<Value>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` must contain at least one message"));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "user" | "assistant" | "tool" => m.role.as_str(),
                "developer" => "system",
                other => {
                    return Err(ApiError::invalid(
                        format!("messages[{i}].role"),
                        format!("`messages[{i}].role` must be one of system, developer, user, assistant, tool; got {other:?}"),
                    ))
                }
            };
            let mut v = json!({"role": role});
            let content = match &m.content {
                None => None,
                Some(MessageContent::Text(t)) => Some(t.clone()),
                Some(MessageContent::Parts(parts)) => {
                    // Parts are joined by line breaks, as vLLM joins them: words at their
                    // edges stay apart.
                    let mut text = String::new();
                    for (j, p) in parts.iter().enumerate() {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => {
                                if j > 0 {
                                    text.push('\n');
                                }
                                text.push_str(t);
                            }
                            (kind, _) => {
                                return Err(ApiError::invalid(
                                    format!("messages[{i}].content[{j}]"),
                                    format!("only text content parts are supported (type \"text\" with a `text` field); got type {kind:?}"),
                                ))
                            }
                        }
                    }
                    Some(text)
                }
            };
            match (content, role) {
                (Some(c), _) => v["content"] = json!(c),
                (None, "assistant") if m.tool_calls.is_some() => v["content"] = json!(""),
                (None, _) => {
                    return Err(ApiError::invalid(format!("messages[{i}].content"), format!("`messages[{i}].content` is required for role {role}")))
                }
            }
            if let Some(calls) = &m.tool_calls {
                v["tool_calls"] = Value::Array(calls.iter().map(arguments_as_object).collect());
            }
            if let Some(name) = &m.name {
                v["name"] = json!(name);
            }
            if let Some(id) = &m.tool_call_id {
                v["tool_call_id"] = json!(id);
            }
            if let Some(r) = &m.reasoning_content {
                v["reasoning_content"] = json!(r);
            }
            Ok(v)
        })
        .collect()
}

/// A call as the template writes it back: OpenAI sends `function.arguments` as a JSON string,
/// and Qwen2.5's template writes `arguments | tojson`, which would quote that string, so the
/// model would read (and then write) its own calls escaped. A string that parses is the
/// object it holds (empty means `{}`), as vLLM does; one that does not parse stays a string.
fn arguments_as_object(call: &Value) -> Value {
    let mut call = call.clone();
    if let Some(arguments) = call.get_mut("function").and_then(|f| f.get_mut("arguments")) {
        match arguments {
            Value::String(s) if s.trim().is_empty() => *arguments = json!({}),
            Value::String(s) => {
                if let Ok(parsed) = serde_json::from_str::<Value>(s) {
                    *arguments = parsed;
                }
            }
            _ => {}
        }
    }
    call
}

/// The tools a request offers: those to hand to the template (None: no tools, or
/// `tool_choice: "none"`), and the format the output is held to where the tools change it
/// (None: `response_format`, `field`'s, alone). When `tool_choice` is `"required"` or names a
/// function, the calls (one call if a function is named or `parallel_tool_calls` is false);
/// under `"auto"` beside a JSON `response_format`, the calls or else the answer in that format,
/// as OpenAI takes them (agents' structured output); under `"auto"` with a function marked
/// `strict`, free text in which a call, once begun, is held (OpenAI's strict function calling:
/// every call then fits, as under `"required"`). Made once per set of tools and answer format,
/// `formats` keeps them.
pub fn tools(req: &ChatCompletionRequest, response_format: &OutputFormat, field: &str, formats: &FormatCache) -> Result<(Option<Vec<Value>>, Option<OutputFormat>), ApiError> {
    let Some(tools) = &req.tools else {
        return match &req.tool_choice {
            None => Ok((None, None)),
            Some(Value::String(s)) if s == "none" || s == "auto" => Ok((None, None)),
            Some(_) => Err(ApiError::invalid("tool_choice", "`tool_choice` asks for a tool call, but the request has no `tools`")),
        };
    };
    let mut functions = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        let name = t.get("function").and_then(|f| f.get("name")).and_then(Value::as_str);
        match name {
            // Calls are read back by their closing tag, so a name holding it could never be called.
            Some(name) if name.contains("</tool_call>") => {
                return Err(ApiError::invalid(format!("tools[{i}].function.name"), format!("`tools[{i}].function.name` may not contain `</tool_call>`, which ends a call, got {name:?}")));
            }
            Some(name) if t.get("type").and_then(Value::as_str) == Some("function") && !name.is_empty() => {
                // No parameters, or `{}`: the arguments are `{}`.
                let parameters = t["function"].get("parameters").filter(|p| !p.is_null() && p.as_object().is_none_or(|o| !o.is_empty()));
                functions.push((name, parameters, t["function"].get("strict") == Some(&Value::Bool(true))));
            }
            _ => return Err(ApiError::invalid(format!("tools[{i}]"), format!("`tools[{i}]` must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"))),
        }
    }
    let auto = match &req.tool_choice {
        None => true,
        Some(Value::String(s)) => s == "auto",
        Some(_) => false,
    };
    let strict = functions.iter().any(|f| f.2);
    let answer = match response_format {
        OutputFormat::JsonObject => Some(Answer::Object),
        OutputFormat::JsonSchema(schema) => Some(Answer::Schema(schema.clone())),
        OutputFormat::Text if auto && strict => Some(Answer::Text),
        _ => None,
    };
    let (chosen, single) = match req.tool_choice.as_ref().filter(|_| !auto) {
        // `"auto"`: free text, or (a regex, a grammar, a choice) held where no call could be
        // written, which `held_output_compatible` refuses.
        None if answer.is_none() || functions.is_empty() => return Ok((Some(tools.clone()), None)),
        None => (functions, req.parallel_tool_calls == Some(false)),
        Some(Value::String(s)) if s == "none" => return Ok((None, None)),
        Some(Value::String(s)) if s == "required" && functions.is_empty() => {
            return Err(ApiError::invalid("tool_choice", "`tool_choice: \"required\"` needs at least one tool in `tools`"));
        }
        Some(Value::String(s)) if s == "required" => (functions, req.parallel_tool_calls == Some(false)),
        Some(choice) => {
            let named = choice.get("function").and_then(|f| f.get("name")).and_then(Value::as_str).filter(|_| choice.get("type").and_then(Value::as_str) == Some("function"));
            let Some(named) = named else {
                return Err(ApiError::invalid("tool_choice", format!("`tool_choice` must be \"auto\", \"none\", \"required\" or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}; got {choice}")));
            };
            let function = functions.into_iter().find(|(name, _, _)| *name == named).ok_or_else(|| ApiError::invalid("tool_choice", format!("`tool_choice` names function {named:?}, which is not among `tools`")))?;
            (vec![function], true)
        }
    };
    if !auto && *response_format != OutputFormat::Text {
        return Err(ApiError::invalid("tool_choice", format!("a forced `tool_choice` cannot be combined with `{field}`: the output is held to the tool calls")));
    }
    let no_parameters = json!({"type": "object", "properties": {}});
    // Under `"auto"`, a function not marked `strict` is held to its parameters where they can
    // be, else only to an object: its calls are the model's best effort, as at OpenAI, and a
    // schema the server cannot hold is no reason to refuse the request.
    let chosen: Vec<(&str, &Value, bool)> = chosen.iter().map(|&(name, p, strict)| (name, p.unwrap_or(&no_parameters), strict || !auto)).collect();
    // The answer's schema by its address: the entry holds it (an `Arc`), so no other schema
    // can take that address while the key is there, and the same schema text, found in
    // `formats`, is the same `Arc` each turn.
    let answer_key = match &answer {
        None => String::new(),
        Some(Answer::Object) => "object".into(),
        Some(Answer::Schema(schema)) => format!("schema@{:p}", Arc::as_ptr(schema)),
        Some(Answer::Text) => "text".into(),
    };
    let key = format!("tools {single} {answer_key} {}", json!(chosen));
    let held = match &answer {
        Some(Answer::Text) => "a `strict` function".to_string(),
        _ if auto => format!("`tools` beside `{field}`"),
        _ => "a forced `tool_choice`".to_string(),
    };
    let format = formats
        .get(key, || {
            let any = any_object();
            let chosen: Vec<(&str, &Value)> = chosen.iter().map(|&(name, p, held)| (name, if held || Schema::compile(p).is_ok() { p } else { &any })).collect();
            let calls = ToolCallFormat::new(&chosen, single)?;
            Ok(OutputFormat::ToolCalls(Arc::new(match answer {
                Some(answer) => calls.with_answer(answer),
                None => calls,
            })))
        })
        .map_err(|e| ApiError::invalid("tools", format!("{held} holds each call's arguments to the function's `parameters`: {e}")))?;
    Ok((Some(tools.clone()), Some(format)))
}

/// `logprobs: true` + `top_logprobs` -> number of alternatives.
pub fn chat_logprobs(req: &ChatCompletionRequest) -> Result<Option<usize>, ApiError> {
    match (req.logprobs, req.top_logprobs) {
        (false, None) => Ok(None),
        (false, Some(_)) => Err(ApiError::invalid("top_logprobs", "`top_logprobs` requires `logprobs: true`")),
        (true, None) => Ok(Some(0)),
        (true, Some(k)) if (0..=MAX_LOGPROBS as i64).contains(&k) => Ok(Some(k as usize)),
        (true, Some(k)) => Err(ApiError::invalid("top_logprobs", format!("`top_logprobs` must be in [0, {MAX_LOGPROBS}], got {k}"))),
    }
}

/// What a held output (`field`: a JSON `response_format`, `structured_outputs`, tool calls
/// a `tool_choice` forces, or calls or a JSON answer) cannot go with: tools beside a regex, a
/// grammar or a choice (no call could be written; tools beside JSON are calls or the answer,
/// [`tools`]), `ignore_eos` (only EOS may follow the end), thinking asked for on a template
/// that does not render it (the whole output is held).
pub fn held_output_compatible(sampling: &SamplingFields, format: &OutputFormat, field: &str, has_tools: bool, thinking_asked: bool) -> Result<(), ApiError> {
    let what = match format {
        OutputFormat::Text => return Ok(()),
        // Free text, held once a call begins: a stop string ends the text (a call it cuts comes
        // back as text, as without `strict`), but only EOS may follow the calls.
        OutputFormat::ToolCalls(calls) if calls.answers_text() => {
            return match sampling.ignore_eos {
                Some(true) => Err(ApiError::invalid("ignore_eos", "`ignore_eos` cannot be combined with a `strict` function under `tool_choice: \"auto\"`: only EOS may follow the calls")),
                _ => Ok(()),
            };
        }
        OutputFormat::ToolCalls(calls) if calls.answers() => format!("`tools` beside `{field}`"),
        OutputFormat::ToolCalls(_) => "a forced `tool_choice`".to_string(),
        _ => format!("`{field}`"),
    };
    if has_tools && matches!(format, OutputFormat::Regex(_)) {
        return Err(ApiError::invalid(field, format!("{what} cannot be combined with `tools`: the output is held to it, so no tool call could be written")));
    }
    if sampling.ignore_eos == Some(true) {
        return Err(ApiError::invalid("ignore_eos", format!("`ignore_eos` cannot be combined with {what}: only EOS may follow the end of the held output")));
    }
    // A stop string could cut a call before its closing tag, and the call would be lost.
    if matches!(format, OutputFormat::ToolCalls(_)) {
        let stops = sampling.stop.as_ref().is_some_and(|s| !matches!(s, StringOrList::Many(v) if v.is_empty()));
        if stops || sampling.stop_token_ids.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::invalid(if stops { "stop" } else { "stop_token_ids" }, format!("`stop` / `stop_token_ids` cannot be combined with {what}: they could cut a call short")));
        }
    }
    if thinking_asked {
        return Err(ApiError::invalid("chat_template_kwargs", format!("`enable_thinking: true` cannot be combined with {what} on this model: its chat template renders no thinking, so the whole output is held")));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
