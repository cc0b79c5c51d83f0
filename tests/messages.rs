//! `/v1/messages` (Anthropic's Messages API) over HTTP with the real test model: each output
//! checked against what `/v1/chat/completions` writes for the same conversation, greedy.

mod common;

use std::sync::OnceLock;

use common::server::{start, Reply, ServerConfig, TestServer};
use qwen_serve::engine::EngineConfig;
use serde_json::{json, Value};

fn server() -> &'static TestServer {
    static S: OnceLock<TestServer> = OnceLock::new();
    S.get_or_init(|| start(ServerConfig::default()))
}

const FIB: &str = "Write a Python function that returns the n-th Fibonacci number.";

fn message(body: Value) -> Value {
    server().post("/v1/messages", &body.to_string()).json()
}

/// What chat writes, greedy: the whole response.
fn chat(body: Value) -> Value {
    let mut b = json!({"temperature": 0});
    b.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
    server().post("/v1/chat/completions", &b.to_string()).json()
}

/// Asserts Anthropic's error body, `{"type": "error", "error": {"type", "message", ...}}`, with
/// this status and type; returns the error object.
fn anthropic_error(reply: &Reply, status: u16, kind: &str) -> Value {
    assert_eq!(reply.status, status, "body: {}", reply.body);
    let v = reply.json();
    assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], kind, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    v["error"].clone()
}

fn count_tokens(body: Value) -> u64 {
    server().post("/v1/messages/count_tokens", &body.to_string()).json()["input_tokens"].as_u64().unwrap()
}

fn text_of(m: &Value) -> String {
    m["content"].as_array().unwrap().iter().filter(|b| b["type"] == "text").map(|b| b["text"].as_str().unwrap()).collect()
}

#[test]
fn a_message_is_the_chat_completion_of_its_conversation() {
    let m = message(json!({"model": "qwen-test", "max_tokens": 12, "temperature": 0, "messages": [{"role": "user", "content": FIB}]}));
    let c = chat(json!({"messages": [{"role": "user", "content": FIB}], "max_tokens": 12}));
    assert_eq!(m["type"], "message");
    assert_eq!(m["role"], "assistant");
    assert!(m["id"].as_str().unwrap().starts_with("msg_"), "{m}");
    assert_eq!(text_of(&m), c["choices"][0]["message"]["content"].as_str().unwrap());
    assert_eq!(m["stop_reason"], "max_tokens");
    assert!(m["stop_sequence"].is_null());
    // Input, cache reads and cache writes add up to the prompt (the second time, its blocks
    // come from the prefix cache).
    let prompt_tokens = c["usage"]["prompt_tokens"].as_u64().unwrap();
    let again = message(json!({"max_tokens": 1, "messages": [{"role": "user", "content": FIB}]}));
    for m in [&m, &again] {
        assert_eq!(m["usage"]["input_tokens"].as_u64().unwrap() + m["usage"]["cache_read_input_tokens"].as_u64().unwrap(), prompt_tokens, "{m}");
    }
    assert!(again["usage"]["cache_read_input_tokens"].as_u64().unwrap() > 0, "{again}");
    assert_eq!(m["usage"]["output_tokens"], 12);
    let counted = server().post("/v1/messages/count_tokens", &json!({"messages": [{"role": "user", "content": FIB}]}).to_string()).json();
    assert_eq!(counted["input_tokens"], c["usage"]["prompt_tokens"]);

    // `system` as a string or as blocks, content as blocks; a whole answer ends its turn.
    let c = chat(json!({"messages": [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "What color is the sky?"}], "max_tokens": 40}));
    for system in [json!("Answer in one word."), json!([{"type": "text", "text": "Answer in one word."}])] {
        let m = message(json!({"max_tokens": 40, "temperature": 0, "system": system,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "What color is the sky?"}]}]}));
        assert_eq!(text_of(&m), c["choices"][0]["message"]["content"].as_str().unwrap());
        assert_eq!(m["stop_reason"], "end_turn");
    }
}

#[test]
fn stop_sequences_end_the_turn_and_are_named() {
    let c = chat(json!({"messages": [{"role": "user", "content": FIB}], "max_tokens": 40}));
    let full = c["choices"][0]["message"]["content"].as_str().unwrap();
    let word = full.split_whitespace().nth(6).unwrap().to_string();
    let m = message(json!({"max_tokens": 40, "temperature": 0, "stop_sequences": [word], "messages": [{"role": "user", "content": FIB}]}));
    assert_eq!(m["stop_reason"], "stop_sequence", "{m}");
    assert_eq!(m["stop_sequence"], word.as_str());
    assert_eq!(text_of(&m), &full[..full.find(&word).unwrap()]);
}

#[test]
fn streamed_events_build_the_same_message() {
    let body = json!({"max_tokens": 16, "temperature": 0, "messages": [{"role": "user", "content": FIB}]});
    let whole = message(body.clone());
    let mut streamed = body;
    streamed["stream"] = true.into();
    let events = server().post("/v1/messages", &streamed.to_string()).sse_events();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    for (name, data) in &events {
        assert_eq!(&data["type"], name.as_str());
    }
    assert_eq!(names[..3], ["message_start", "content_block_start", "content_block_delta"]);
    assert_eq!(names[names.len() - 3..], ["content_block_stop", "message_delta", "message_stop"]);
    let prompt_tokens = |u: &Value| u["input_tokens"].as_u64().unwrap() + u["cache_read_input_tokens"].as_u64().unwrap_or(0);
    // `message_start` comes once the request is admitted: its usage already splits the prompt
    // into the prefix-cache hits (the same prompt was just served) and the rest, as
    // `message_delta`'s does.
    let start = &events[0].1["message"]["usage"];
    assert_eq!(prompt_tokens(start), prompt_tokens(&whole["usage"]));
    let delta = &events[events.len() - 2].1["usage"];
    assert!(start["cache_read_input_tokens"].as_u64().unwrap() > 0, "{start}");
    for key in ["input_tokens", "cache_read_input_tokens"] {
        assert_eq!(start[key], delta[key], "{key}: {start} vs {delta}");
    }
    let text: String = events.iter().filter(|(n, _)| n == "content_block_delta").map(|(_, d)| d["delta"]["text"].as_str().unwrap()).collect();
    assert_eq!(text, text_of(&whole));
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
    assert_eq!(delta["usage"]["output_tokens"], 16);
    assert_eq!(prompt_tokens(&delta["usage"]), prompt_tokens(&whole["usage"]));
}

#[test]
fn tool_use_and_tool_results() {
    let tools = json!([{"name": "get_weather", "description": "Current weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
    let ask = json!([{"role": "user", "content": "What is the weather in Oslo?"}]);
    let m = message(json!({"max_tokens": 60, "temperature": 0, "tools": tools, "tool_choice": {"type": "tool", "name": "get_weather"}, "messages": ask}));
    assert_eq!(m["stop_reason"], "tool_use", "{m}");
    let call = m["content"].as_array().unwrap().iter().find(|b| b["type"] == "tool_use").unwrap_or_else(|| panic!("{m}")).clone();
    assert_eq!(call["name"], "get_weather");
    assert!(call["input"]["city"].is_string(), "{call}");

    // The call and its result sent back: the answer is chat's for the same turns.
    let turns = json!([{"role": "user", "content": "What is the weather in Oslo?"},
        {"role": "assistant", "content": [call.clone()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "-3 C, snow"}]}]);
    let answer = message(json!({"max_tokens": 40, "temperature": 0, "tools": tools, "messages": turns}));
    let chat_tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": tools[0]["input_schema"]}}]);
    let c = chat(json!({"max_tokens": 40, "tools": chat_tools, "messages": [{"role": "user", "content": "What is the weather in Oslo?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": call["id"], "type": "function", "function": {"name": "get_weather", "arguments": call["input"].to_string()}}]},
        {"role": "tool", "tool_call_id": call["id"], "content": "-3 C, snow"}]}));
    assert_eq!(text_of(&answer), c["choices"][0]["message"]["content"].as_str().unwrap_or(""));

    // Streamed, the call is one block whose input comes as JSON.
    let events = server().post("/v1/messages", &json!({"max_tokens": 60, "temperature": 0, "tools": tools, "tool_choice": {"type": "any"}, "messages": ask, "stream": true}).to_string()).sse_events();
    let start = events.iter().find(|(n, d)| n == "content_block_start" && d["content_block"]["type"] == "tool_use").unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(start.1["content_block"]["name"], "get_weather");
    let json_delta: String = events.iter().filter(|(_, d)| d["delta"]["type"] == "input_json_delta").map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap()).collect();
    assert!(serde_json::from_str::<Value>(&json_delta).unwrap()["city"].is_string(), "{json_delta}");
    assert_eq!(events[events.len() - 2].1["delta"]["stop_reason"], "tool_use");
}

/// A last assistant turn is a prefill (the reply goes on from it, as chat's
/// `continue_final_message`); system turns among the messages, tool errors and JSON output
/// (`output_config.format`) are taken.
#[test]
fn prefill_system_turns_tool_errors_and_json_output() {
    let prefill = json!([{"role": "user", "content": FIB}, {"role": "assistant", "content": "def fibonacci(n):"}]);
    let m = message(json!({"max_tokens": 16, "temperature": 0, "messages": prefill}));
    let c = chat(json!({"messages": prefill, "continue_final_message": true, "max_tokens": 16}));
    assert_eq!(text_of(&m), c["choices"][0]["message"]["content"].as_str().unwrap());

    let m = message(json!({"max_tokens": 12, "temperature": 0, "messages": [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "What color is the sky?"}]}));
    let c = chat(json!({"messages": [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "What color is the sky?"}], "max_tokens": 12}));
    assert_eq!(text_of(&m), c["choices"][0]["message"]["content"].as_str().unwrap());

    let counted = |result: Value| {
        let turns = json!([{"role": "user", "content": "Call f."}, {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
            {"role": "user", "content": [result]}]);
        server().post("/v1/messages/count_tokens", &json!({"messages": turns}).to_string()).json()["input_tokens"].as_u64().unwrap()
    };
    let ok = counted(json!({"type": "tool_result", "tool_use_id": "t1", "content": "no such file"}));
    let failed = counted(json!({"type": "tool_result", "tool_use_id": "t1", "content": "no such file", "is_error": true}));
    assert!(failed > ok, "the model is told the tool failed");

    // JSON output by either name (`output_format` is the beta's); held to the schema, the
    // reply differs from the free one.
    let schema = json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"]});
    let format = json!({"type": "json_schema", "schema": schema});
    let ask = json!([{"role": "user", "content": "Describe a cat named Tom, aged 3, as JSON."}]);
    let free = text_of(&message(json!({"max_tokens": 60, "temperature": 0, "messages": ask})));
    let by_config = text_of(&message(json!({"max_tokens": 60, "temperature": 0, "messages": ask, "output_config": {"format": format}})));
    let by_beta_name = text_of(&message(json!({"max_tokens": 60, "temperature": 0, "messages": ask, "output_format": format})));
    let v: Value = serde_json::from_str(&by_config).unwrap_or_else(|e| panic!("{e}: {by_config}"));
    assert!(v["name"].is_string() && v["age"].is_i64(), "{v}");
    assert_eq!(by_beta_name, by_config);
    assert_ne!(free, by_config);
}

/// A turn's text blocks are its lines, as chat joins its text parts: the prompt is the one of
/// the text joined with "\n".
#[test]
fn text_blocks_are_joined_with_newlines() {
    let blocks = json!([{"type": "text", "text": "hello"}, {"type": "text", "text": "world"}]);
    let joined = count_tokens(json!({"messages": [{"role": "user", "content": "hello\nworld"}]}));
    assert_eq!(count_tokens(json!({"messages": [{"role": "user", "content": blocks}]})), joined);
    assert_ne!(count_tokens(json!({"messages": [{"role": "user", "content": "helloworld"}]})), joined);
    let system = count_tokens(json!({"system": "hello\nworld", "messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(count_tokens(json!({"system": blocks, "messages": [{"role": "user", "content": "hi"}]})), system);
}

#[test]
fn bad_requests_name_their_field() {
    let s = server();
    let user = json!([{"role": "user", "content": "x"}]);
    let cases = [
        (json!({"messages": [{"role": "tool", "content": "x"}]}), "messages[0].role"),
        (json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}), "messages[0].content[0].type"),
        (json!({"messages": [{"role": "user", "content": 5}]}), "messages[0].content"),
        (json!({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": "x"}]}]}), "messages[0].content[0].input"),
        (json!({"messages": user, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}), "tools[0]"),
        (json!({"messages": user, "tool_choice": {"type": "sometimes"}}), "tool_choice"),
        (json!({"messages": user, "thinking": {"type": "maybe"}}), "thinking.type"),
        (json!({"messages": user, "system": [{"type": "image"}]}), "system[0]"),
        (json!({"messages": user, "max_tokens": 0}), "max_tokens"),
        (json!({"messages": user, "thinking": "on"}), "thinking.type"),
        (json!({"messages": user, "output_config": {"format": {"type": "regex"}}}), "output_config.format"),
        (json!({"messages": user, "stop_sequences": ["x"], "tools": [{"name": "f"}], "tool_choice": {"type": "any"}}), "stop_sequences"),
        (json!({"messages": user, "temperature": 1.5}), "temperature"),
        (json!({"messages": user, "temperature": -0.5}), "temperature"),
        (json!({"messages": user, "output_format": {"type": "regex"}}), "output_format"),
        (json!({"messages": user, "output_format": {"type": "json_schema", "schema": {"type": "array"}}, "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}), "output_format"),
    ];
    for (body, param) in cases {
        let e = anthropic_error(&s.post("/v1/messages", &body.to_string()), 400, "invalid_request_error");
        assert_eq!(e["param"], param, "{body}: {e}");
    }
    // Anthropic's temperature range is [0, 1]; its ends are taken.
    let e = anthropic_error(&s.post("/v1/messages", &json!({"messages": user, "temperature": 1.5}).to_string()), 400, "invalid_request_error");
    assert!(e["message"].as_str().unwrap().contains("[0, 1]"), "{e}");
    for t in [0.0, 1.0] {
        assert_eq!(message(json!({"max_tokens": 1, "temperature": t, "messages": user}))["type"], "message");
    }
}

/// Both routes answer every error in Anthropic's envelope (the SDK's typed exceptions read
/// `error.type`); the OpenAI routes keep theirs.
#[test]
fn errors_come_in_anthropics_envelope() {
    let s = server();
    let user = json!([{"role": "user", "content": "x"}]);
    for path in ["/v1/messages", "/v1/messages/count_tokens"] {
        let e = anthropic_error(&s.post(path, &json!({"messages": [{"role": "tool", "content": "x"}]}).to_string()), 400, "invalid_request_error");
        assert_eq!(e["param"], "messages[0].role");
        let e = anthropic_error(&s.post(path, &json!({"messages": "x"}).to_string()), 422, "invalid_request_error");
        assert_eq!(e["param"], "messages", "{e}");
        anthropic_error(&s.post(path, "{not json"), 400, "invalid_request_error");
        let e = anthropic_error(&s.post(path, &json!({"model": "claude-x", "messages": user}).to_string()), 404, "not_found_error");
        assert_eq!(e["code"], "model_not_found");
        anthropic_error(&s.post_with(path, &json!({"messages": user}).to_string(), &[("Content-Type", "text/plain")]), 415, "invalid_request_error");
        anthropic_error(&s.get(path), 405, "invalid_request_error");
        let (status, response) = s.raw_post_declaring_length(path, 2 << 20);
        let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_string();
        anthropic_error(&Reply { status, body, headers: vec![] }, 413, "request_too_large");
    }
    let openai = s.post("/v1/chat/completions", &json!({"messages": user, "temperature": 3}).to_string());
    let v = openai.json();
    assert!(v.get("type").is_none() && v["error"]["type"] == "invalid_request_error" && v["error"]["param"] == "temperature", "{v}");
}

/// The key check and a full queue answer in Anthropic's envelope too.
#[test]
fn refused_keys_and_a_full_queue_in_anthropics_envelope() {
    let s = start(ServerConfig { api_key: Some("sekret".into()), engine: EngineConfig { max_num_seqs: 1, max_waiting: 1, ..Default::default() }, ..Default::default() });
    let body = json!({"max_tokens": 200, "ignore_eos": true, "messages": [{"role": "user", "content": "hello"}]}).to_string();
    for path in ["/v1/messages", "/v1/messages/count_tokens"] {
        anthropic_error(&s.post(path, &body), 401, "authentication_error");
        anthropic_error(&s.post_with(path, &body, &[("x-api-key", "wrong")]), 401, "authentication_error");
    }
    assert_eq!(s.get("/v1/models").error(401)["code"], "invalid_api_key");
    let replies: Vec<Reply> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6).map(|_| scope.spawn(|| s.post_with("/v1/messages", &body, &[("x-api-key", "sekret")]))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(replies.iter().any(|r| r.status == 200), "{:?}", replies.iter().map(|r| r.status).collect::<Vec<_>>());
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.status != 200).collect();
    assert!(!refused.is_empty());
    for r in refused {
        anthropic_error(r, 429, "rate_limit_error");
    }
}
