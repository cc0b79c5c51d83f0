//! Tests of `validate.rs`.

use super::*;

fn limit(body: Value) -> Result<usize, ApiError> {
    let fields: SamplingFields = serde_json::from_value(body).unwrap();
    sampling_params(&fields, 100, 50, None, &SamplingDefaults::default()).map(|p| p.max_tokens)
}

#[test]
fn template_messages_give_calls_objects_and_join_parts_by_lines() {
    let messages: Vec<ChatMessage> = serde_json::from_value(json!([
        {"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": "world"}]},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{\"city\": \"Paris\"}"}},
            {"id": "b", "type": "function", "function": {"name": "g", "arguments": ""}},
            {"id": "c", "type": "function", "function": {"name": "h", "arguments": "not json"}},
            {"id": "d", "type": "function", "function": {"name": "k", "arguments": {"n": 1}}}
        ]}
    ]))
    .unwrap();
    let rendered = template_messages(&messages).unwrap();
    assert_eq!(rendered[0]["content"], "hello\nworld");
    let arguments: Vec<&Value> = rendered[1]["tool_calls"].as_array().unwrap().iter().map(|c| &c["function"]["arguments"]).collect();
    assert_eq!(arguments, [&json!({"city": "Paris"}), &json!({}), &json!("not json"), &json!({"n": 1})]);
    assert_eq!(rendered[1]["tool_calls"][0]["id"], "a");
}

#[test]
fn max_completion_tokens_wins_over_max_tokens() {
    assert_eq!(limit(json!({"max_tokens": 4, "max_completion_tokens": 7})).unwrap(), 7);
    assert_eq!(limit(json!({"max_tokens": 4})).unwrap(), 4);
    assert_eq!(limit(json!({"max_completion_tokens": 7})).unwrap(), 7);
    assert_eq!(limit(json!({})).unwrap(), 50);
    let e = limit(json!({"max_tokens": 4, "max_completion_tokens": 0})).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("max_completion_tokens"), "{}", e.message);
    assert!(e.message.starts_with("`max_completion_tokens` must be at least 1"), "{}", e.message);
    assert_eq!(limit(json!({"max_tokens": 0})).unwrap_err().param.as_deref(), Some("max_tokens"));
}

#[test]
fn vllm_output_fields_reach_the_engine_or_are_refused() {
    let params = |body: Value| {
        let fields: SamplingFields = serde_json::from_value(body).unwrap();
        sampling_params(&fields, 100, 50, None, &SamplingDefaults::default())
    };
    let p = params(json!({})).unwrap();
    assert!(!p.include_stop_str && p.skip_special_tokens);
    let p = params(json!({"include_stop_str_in_output": true, "skip_special_tokens": false, "prompt_logprobs": null})).unwrap();
    assert!(p.include_stop_str && !p.skip_special_tokens);
    assert_eq!(params(json!({"prompt_logprobs": 1})).unwrap_err().param.as_deref(), Some("prompt_logprobs"));
    let cut = |k: Value| {
        let fields: SamplingFields = serde_json::from_value(json!({"truncate_prompt_tokens": k})).unwrap();
        let mut prompt = vec![1, 2, 3, 4, 5];
        truncate_prompt(&fields, &mut prompt, 4).map(|()| prompt)
    };
    assert_eq!(cut(json!(2)).unwrap(), [4, 5]);
    assert_eq!(cut(json!(9)).unwrap(), [1, 2, 3, 4, 5]);
    assert_eq!(cut(json!(-1)).unwrap(), [2, 3, 4, 5], "-1: the context's worth");
    assert_eq!(cut(json!(null)).unwrap(), [1, 2, 3, 4, 5]);
    for k in [0, -2] {
        assert_eq!(cut(json!(k)).unwrap_err().param.as_deref(), Some("truncate_prompt_tokens"));
    }
}

#[test]
fn a_tool_name_holding_the_closing_tag_is_refused_whatever_the_choice() {
    let formats = FormatCache::with_capacity(2);
    for choice in [json!("auto"), json!("required")] {
        let req: ChatCompletionRequest = serde_json::from_value(json!({
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "ok"}}, {"type": "function", "function": {"name": "x</tool_call>y"}}],
            "tool_choice": choice,
        }))
        .unwrap();
        let e = tools(&req, &OutputFormat::Text, "response_format", &formats).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools[1].function.name"), "{}", e.message);
    }
}

/// Tools beside a JSON `response_format`: under `"auto"` (or none given) the calls or the
/// answer, made once per tools and schema; `"none"` leaves the format alone; a forced choice,
/// or tools beside a regex, is a 400 naming the field.
#[test]
fn tools_beside_a_json_format_are_calls_or_the_answer() {
    let formats = FormatCache::with_capacity(8);
    let schema = formats.schema(&json!({"type": "object", "required": ["a"], "properties": {"a": {"type": "string"}}})).unwrap();
    let weather = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let req = |choice: Value| -> ChatCompletionRequest {
        let mut body = json!({"messages": [{"role": "user", "content": "hi"}], "tools": weather});
        if !choice.is_null() {
            body["tool_choice"] = choice;
        }
        serde_json::from_value(body).unwrap()
    };
    let answers = |format: &Option<OutputFormat>| matches!(format, Some(OutputFormat::ToolCalls(c)) if c.answers());
    let sampling: SamplingFields = serde_json::from_value(json!({})).unwrap();
    for choice in [Value::Null, json!("auto")] {
        let (given, held) = tools(&req(choice.clone()), &schema, "response_format", &formats).unwrap();
        assert!(given.is_some() && answers(&held), "{choice}");
        assert_eq!(held, tools_of(&req(choice.clone()), &schema, &formats), "{choice}: made once");
        held_output_compatible(&sampling, held.as_ref().unwrap(), "response_format", true, false).unwrap();
        let (_, object) = tools(&req(choice), &OutputFormat::JsonObject, "response_format", &formats).unwrap();
        assert!(answers(&object) && object != held, "json_object: its own format");
    }
    // Without a format, or under `"required"`, no answer.
    assert_eq!(tools(&req(json!("auto")), &OutputFormat::Text, "response_format", &formats).unwrap().1, None);
    let (_, required) = tools(&req(json!("required")), &OutputFormat::Text, "response_format", &formats).unwrap();
    assert!(matches!(&required, Some(OutputFormat::ToolCalls(c)) if !c.answers()));
    // `"none"`: the format alone, the tools not rendered.
    assert_eq!(tools(&req(json!("none")), &schema, "response_format", &formats).unwrap(), (None, None));
    for choice in [json!("required"), json!({"type": "function", "function": {"name": "get_weather"}})] {
        let e = tools(&req(choice.clone()), &schema, "response_format", &formats).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tool_choice"), "{choice}: {}", e.message);
    }
    // A regex beside tools: no call could be written.
    let regex = formats.regex("a+").unwrap();
    let (tools_given, held) = tools(&req(json!("auto")), &regex, "structured_outputs.regex", &formats).unwrap();
    assert_eq!(held, None);
    let e = held_output_compatible(&sampling, &regex, "structured_outputs.regex", tools_given.is_some(), false).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("structured_outputs.regex"), "{}", e.message);
    // What cannot go with a held output names the pair.
    let (_, held) = tools(&req(Value::Null), &schema, "response_format", &formats).unwrap();
    let eos: SamplingFields = serde_json::from_value(json!({"ignore_eos": true})).unwrap();
    let e = held_output_compatible(&eos, held.as_ref().unwrap(), "response_format", true, false).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("ignore_eos"));
    assert!(e.message.contains("`tools` beside `response_format`"), "{}", e.message);
}

/// A `strict` function under `"auto"`: free text with held calls, where stop strings may
/// end the text; without `strict`, or beside a JSON format, as before.
#[test]
fn a_strict_function_holds_calls_in_free_text() {
    let formats = FormatCache::with_capacity(8);
    let req = |strict: bool, extra: Value| -> ChatCompletionRequest {
        let tool = json!({"type": "function", "function": {"name": "f", "strict": strict, "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}}});
        let mut body = json!({"messages": [{"role": "user", "content": "hi"}], "tools": [tool, {"type": "function", "function": {"name": "g"}}]});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(body).unwrap()
    };
    let text = |format: &Option<OutputFormat>| matches!(format, Some(OutputFormat::ToolCalls(c)) if c.answers_text());
    let held = tools_of(&req(true, json!({})), &OutputFormat::Text, &formats);
    assert!(text(&held) && text(&tools_of(&req(true, json!({"tool_choice": "auto"})), &OutputFormat::Text, &formats)));
    assert_eq!(tools_of(&req(false, json!({})), &OutputFormat::Text, &formats), None, "not strict: free text");
    assert_eq!(tools_of(&req(true, json!({"tool_choice": "none"})), &OutputFormat::Text, &formats), None);
    let required = tools_of(&req(true, json!({"tool_choice": "required"})), &OutputFormat::Text, &formats);
    assert!(matches!(&required, Some(OutputFormat::ToolCalls(c)) if !c.answers()), "forced: calls only");
    let schema = formats.schema(&json!({"type": "object", "required": ["a"], "properties": {"a": {"type": "string"}}})).unwrap();
    let beside = tools_of(&req(true, json!({})), &schema, &formats);
    assert!(matches!(&beside, Some(OutputFormat::ToolCalls(c)) if c.answers() && !c.answers_text()), "beside a schema: calls or the answer");
    let held = held.unwrap();
    let stop: SamplingFields = serde_json::from_value(json!({"stop": ["\n\n"]})).unwrap();
    held_output_compatible(&stop, &held, "response_format", true, true).unwrap();
    let eos: SamplingFields = serde_json::from_value(json!({"ignore_eos": true})).unwrap();
    assert_eq!(held_output_compatible(&eos, &held, "response_format", true, false).unwrap_err().param.as_deref(), Some("ignore_eos"));
    // A function whose parameters cannot be held names the tools.
    let mut bad = req(true, json!({}));
    bad.tools.as_mut().unwrap()[0]["function"]["parameters"] = json!({"type": "object", "properties": {"a": {"type": "string", "not": {}}}});
    assert_eq!(tools(&bad, &OutputFormat::Text, "response_format", &formats).unwrap_err().param.as_deref(), Some("tools"));
    // One not marked strict is held only as it can be: its calls are still made.
    let mut loose = req(true, json!({}));
    loose.tools.as_mut().unwrap()[1]["function"]["parameters"] = json!({"type": "object", "properties": {"q": {"type": "string", "not": {}}}});
    let Some(OutputFormat::ToolCalls(calls)) = tools_of(&loose, &OutputFormat::Text, &formats) else { panic!("held") };
    assert!(calls.fits(r#"{"name": "g", "arguments": {"q": "anything", "n": [1]}}"#) && !calls.fits(r#"{"name": "f", "arguments": {"a": 1}}"#));
    // Forced, every function's parameters are held: one that cannot be is a 400.
    assert!(tools(&req_forced(&loose), &OutputFormat::Text, "response_format", &formats).is_err());
}

fn req_forced(req: &ChatCompletionRequest) -> ChatCompletionRequest {
    let mut forced = req.clone();
    forced.tool_choice = Some(json!("required"));
    forced
}

fn tools_of(req: &ChatCompletionRequest, format: &OutputFormat, formats: &FormatCache) -> Option<OutputFormat> {
    tools(req, format, "response_format", formats).unwrap().1
}

#[test]
fn length_errors_name_the_prompt_or_the_limit_as_the_endpoint_calls_them() {
    // The prompt alone fills the context: its field, whatever the limit.
    let e = length_error(SubmitError::TooLong { prompt: 40030, max_tokens: 1, context: 32768 }, 32768, "messages", "max_tokens");
    assert_eq!((e.status.as_u16(), e.param.as_deref(), e.code), (400, Some("messages"), Some("context_length_exceeded")));
    assert!(!e.message.contains("max_tokens") && e.message.contains("`messages`") && e.message.contains("40030") && e.message.contains("32768"), "{}", e.message);
    // Room for the prompt but not the limit asked for: the limit's own name.
    let e = length_error(SubmitError::TooLong { prompt: 10, max_tokens: 40000, context: 32768 }, 32768, "prompt", "n_predict");
    assert_eq!(e.param.as_deref(), Some("n_predict"));
    assert_eq!(
        e.message,
        "This model's maximum context length is 32768 tokens. However, you requested 40010 tokens (10 in the prompt, 40000 for `n_predict`). Please reduce the length of the prompt or `n_predict`."
    );
    let e = length_error(SubmitError::CannotFit { prompt: 10, max_tokens: 900, blocks_needed: 58, num_blocks: 32 }, 512, "prompt", "n_predict");
    assert_eq!(e.param.as_deref(), Some("n_predict"));
    assert!(e.message.starts_with("prompt (10 tokens) + `n_predict` (900) needs 58 KV blocks"), "{}", e.message);
    let e = length_error(SubmitError::CannotFit { prompt: 600, max_tokens: 1, blocks_needed: 38, num_blocks: 32 }, 512, "input_prefix", "n_predict");
    assert_eq!(e.param.as_deref(), Some("input_prefix"));
    assert!(e.message.contains("KV cache holds") && !e.message.contains("n_predict"), "{}", e.message);
    // Other refusals pass through.
    assert_eq!(length_error(SubmitError::QueueFull(8), 512, "prompt", "n_predict").status.as_u16(), 429);
}

#[test]
fn types_are_named_plainly() {
    assert_eq!(has_type(&json!({"type": "input_image"})), "has type `input_image`");
    assert_eq!(has_type(&json!({"text": "x"})), "has no `type`");
    assert_eq!(has_type(&json!({"type": 5})), "has `type` 5, not a string");
}
