//! `/v1/messages` (Anthropic's Messages API) over HTTP with the real test model: each output
//! checked against what `/v1/chat/completions` writes for the same conversation, greedy.

mod common;

use std::sync::OnceLock;

use common::server::{start, ServerConfig, TestServer};
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
    // `message_start` cannot know the cache hits yet: its input is the whole prompt.
    assert_eq!(prompt_tokens(&events[0].1["message"]["usage"]), prompt_tokens(&whole["usage"]));
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

    let schema = json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"]});
    let m = message(json!({"max_tokens": 60, "temperature": 0, "messages": [{"role": "user", "content": "Describe a cat named Tom, aged 3, as JSON."}],
        "output_config": {"format": {"type": "json_schema", "schema": schema}}}));
    let v: Value = serde_json::from_str(&text_of(&m)).unwrap_or_else(|e| panic!("{e}: {m}"));
    assert!(v["name"].is_string() && v["age"].is_i64(), "{v}");
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
    ];
    for (body, param) in cases {
        let e = s.post("/v1/messages", &body.to_string()).error(400);
        assert_eq!(e["param"], param, "{body}: {e}");
    }
}
