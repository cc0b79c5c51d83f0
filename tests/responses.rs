//! `/v1/responses` (OpenAI's Responses API) over HTTP with the real test model: each output
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

fn respond(body: Value) -> Value {
    server().post("/v1/responses", &body.to_string()).json()
}

/// What chat writes for `messages`, greedy, at most `max_tokens`: (content, finish reason,
/// prompt tokens).
fn chat(messages: Value, max_tokens: u32) -> (String, String, u64) {
    let r = server().post("/v1/chat/completions", &json!({"messages": messages, "max_tokens": max_tokens, "temperature": 0}).to_string()).json();
    (r["choices"][0]["message"]["content"].as_str().unwrap().into(), r["choices"][0]["finish_reason"].as_str().unwrap().into(), r["usage"]["prompt_tokens"].as_u64().unwrap())
}

/// The text of a response's message item(s).
fn output_text(response: &Value) -> String {
    response["output"].as_array().unwrap().iter().filter(|i| i["type"] == "message").flat_map(|i| i["content"].as_array().unwrap()).map(|p| p["text"].as_str().unwrap()).collect()
}

#[test]
fn a_response_is_the_chat_completion_of_its_input() {
    let r = respond(json!({"input": FIB, "max_output_tokens": 12, "temperature": 0}));
    let (text, finish, prompt_tokens) = chat(json!([{"role": "user", "content": FIB}]), 12);
    assert_eq!(finish, "length");
    assert_eq!(r["object"], "response");
    assert!(r["id"].as_str().unwrap().starts_with("resp_"), "{r}");
    assert_eq!(r["status"], "incomplete", "{r}");
    assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(output_text(&r), text);
    assert_eq!(r["output"][0]["role"], "assistant");
    assert_eq!(r["output"][0]["status"], "incomplete", "cut as the response is");
    assert_eq!(r["usage"]["input_tokens"].as_u64(), Some(prompt_tokens));
    assert_eq!(r["usage"]["output_tokens"], 12);
    assert_eq!(r["usage"]["total_tokens"].as_u64(), Some(prompt_tokens + 12));
    assert_eq!(r["max_output_tokens"], 12);
    assert_eq!(r["model"], "qwen-test");

    // Instructions are the system message; items as parts; a whole answer is `completed`.
    let r = respond(json!({"instructions": "Answer in one word.", "input": [{"role": "user", "content": [{"type": "input_text", "text": "What color is the sky?"}]}],
        "max_output_tokens": 40, "temperature": 0}));
    let (text, finish, _) = chat(json!([{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "What color is the sky?"}]), 40);
    assert_eq!(finish, "stop");
    assert_eq!(r["status"], "completed", "{r}");
    assert!(r["incomplete_details"].is_null());
    assert_eq!(output_text(&r), text);
}

#[test]
fn streamed_events_build_the_same_response() {
    let s = server();
    let body = json!({"input": FIB, "max_output_tokens": 16, "temperature": 0});
    let whole = respond(body.clone());
    let mut streamed = body;
    streamed["stream"] = true.into();
    let events = s.post("/v1/responses", &streamed.to_string()).sse_events();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(&data["type"], name.as_str());
        assert_eq!(data["sequence_number"], i, "{name}");
    }
    assert_eq!(names[..5], ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added", "response.output_text.delta"]);
    assert_eq!(names[names.len() - 4..], ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.incomplete"]);
    let deltas: String = events.iter().filter(|(n, _)| n == "response.output_text.delta").map(|(_, d)| d["delta"].as_str().unwrap()).collect();
    assert_eq!(deltas, output_text(&whole));
    let last = &events.last().unwrap().1["response"];
    assert_eq!(output_text(last), deltas);
    assert_eq!(last["usage"]["output_tokens"], 16);
    let item_id = &events[2].1["item"]["id"];
    assert!(events.iter().filter(|(n, _)| n.starts_with("response.output_text")).all(|(_, d)| &d["item_id"] == item_id));
    // Stored as streamed.
    let stored = s.get(&format!("/v1/responses/{}", last["id"].as_str().unwrap())).json();
    assert_eq!(output_text(&stored), deltas);
}

/// `include: ["message.output_text.logprobs"]` with `top_logprobs`: the message's tokens'
/// logprobs, as chat lists them for the same conversation, whole and streamed alike.
#[test]
fn output_text_logprobs_are_chats() {
    let s = server();
    let body = json!({"input": FIB, "max_output_tokens": 12, "temperature": 0, "include": ["message.output_text.logprobs"], "top_logprobs": 2});
    let whole = respond(body.clone());
    let logprobs = &whole["output"][0]["content"][0]["logprobs"];
    let c = s.post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": FIB}], "max_tokens": 12, "temperature": 0, "logprobs": true, "top_logprobs": 2}).to_string()).json();
    assert_eq!(logprobs, &c["choices"][0]["logprobs"]["content"], "{whole}");
    assert_eq!(logprobs.as_array().unwrap().len(), 12);
    assert_eq!(whole["top_logprobs"], 2, "echoed as OpenAI's response object does");
    assert!(logprobs.as_array().unwrap().iter().all(|l| l["top_logprobs"].as_array().unwrap().len() == 2));

    let mut streamed = body.clone();
    streamed["stream"] = true.into();
    let events = s.post("/v1/responses", &streamed.to_string()).sse_events();
    let deltas: Vec<Value> = events.iter().filter(|(n, _)| n == "response.output_text.delta").flat_map(|(_, d)| d["logprobs"].as_array().unwrap().clone()).collect();
    assert_eq!(&Value::from(deltas), logprobs);
    let done = events.iter().find(|(n, _)| n == "response.output_text.done").unwrap();
    assert_eq!(&done.1["logprobs"], logprobs);
    assert_eq!(&events.last().unwrap().1["response"]["output"][0]["content"][0]["logprobs"], logprobs);

    // At a stop string, the token that held it back wrote none of the message: its tokens spell
    // the message, whole and streamed alike.
    let mut stopped = body.clone();
    stopped["stop"] = json!([" "]);
    let whole = respond(stopped.clone());
    let text = output_text(&whole);
    let logprobs = &whole["output"][0]["content"][0]["logprobs"];
    let spelled: String = logprobs.as_array().unwrap().iter().map(|l| l["token"].as_str().unwrap()).collect();
    assert!(!text.is_empty() && whole["usage"]["output_tokens"].as_u64() < Some(12), "{whole}");
    assert_eq!(spelled, text, "{whole}");
    stopped["stream"] = true.into();
    let events = s.post("/v1/responses", &stopped.to_string()).sse_events();
    let deltas: Vec<Value> = events.iter().filter(|(n, _)| n == "response.output_text.delta").flat_map(|(_, d)| d["logprobs"].as_array().unwrap().clone()).collect();
    assert_eq!(&Value::from(deltas), logprobs);

    // Not asked for: none; other `include` values name outputs never made here.
    let plain = respond(json!({"input": FIB, "max_output_tokens": 4, "include": ["reasoning.encrypted_content"]}));
    assert_eq!(plain["output"][0]["content"][0]["logprobs"], json!([]), "{plain}");
    for (extra, param) in [(json!({"include": ["message.output_text.logprob"]}), "include[0]"), (json!({"top_logprobs": 21}), "top_logprobs")] {
        let mut b = json!({"input": "x"});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let e = s.post("/v1/responses", &b.to_string()).error(400);
        assert_eq!(e["param"], param, "{e}");
    }
}

#[test]
fn previous_response_id_continues_the_conversation() {
    let s = server();
    let first = respond(json!({"input": "My name is Ada. Say hello.", "max_output_tokens": 30, "temperature": 0}));
    let id = first["id"].as_str().unwrap();
    let reply = output_text(&first);
    let second = respond(json!({"input": "What is my name?", "previous_response_id": id, "max_output_tokens": 20, "temperature": 0}));
    let (text, _, _) = chat(json!([{"role": "user", "content": "My name is Ada. Say hello."}, {"role": "assistant", "content": reply}, {"role": "user", "content": "What is my name?"}]), 20);
    assert_eq!(output_text(&second), text);
    assert!(text.contains("Ada"), "{text}");
    assert_eq!(second["previous_response_id"], id);

    assert_eq!(s.get(&format!("/v1/responses/{id}")).json(), first);
    let deleted = s.delete(&format!("/v1/responses/{id}")).json();
    assert_eq!(deleted["deleted"], true);
    s.get(&format!("/v1/responses/{id}")).error(404);
    let e = s.post("/v1/responses", &json!({"input": "x", "previous_response_id": id}).to_string()).error(400);
    assert_eq!(e["param"], "previous_response_id");
    // `store: false` keeps nothing.
    let unstored = respond(json!({"input": "hi", "max_output_tokens": 2, "store": false}));
    s.get(&format!("/v1/responses/{}", unstored["id"].as_str().unwrap())).error(404);
}

#[test]
fn function_tools_calls_and_their_outputs() {
    let tools = json!([{"type": "function", "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
    let r = respond(json!({"input": "What is the weather in Oslo?", "tools": tools, "tool_choice": {"type": "function", "name": "get_weather"},
        "max_output_tokens": 60, "temperature": 0}));
    assert_eq!(r["status"], "completed", "{r}");
    let call = r["output"].as_array().unwrap().iter().find(|i| i["type"] == "function_call").unwrap_or_else(|| panic!("no call: {r}"));
    assert_eq!(call["name"], "get_weather");
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string(), "{args}");
    assert!(call["call_id"].as_str().unwrap().starts_with("call_"));

    // The call and its output sent back as items: the model answers from them, as chat does.
    let input = json!([{"role": "user", "content": "What is the weather in Oslo?"}, call.clone(),
        {"type": "function_call_output", "call_id": call["call_id"], "output": "{\"temperature_c\": -3, \"sky\": \"snow\"}"}]);
    let answer = respond(json!({"input": input, "tools": tools, "max_output_tokens": 40, "temperature": 0}));
    let chat_tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": tools[0]["parameters"]}}]);
    let messages = json!([{"role": "user", "content": "What is the weather in Oslo?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": call["call_id"], "type": "function", "function": {"name": "get_weather", "arguments": call["arguments"]}}]},
        {"role": "tool", "tool_call_id": call["call_id"], "content": "{\"temperature_c\": -3, \"sky\": \"snow\"}"}]);
    let c = server().post("/v1/chat/completions", &json!({"messages": messages, "tools": chat_tools, "max_tokens": 40, "temperature": 0}).to_string()).json();
    assert_eq!(output_text(&answer), c["choices"][0]["message"]["content"].as_str().unwrap());
    // The earlier call is written back as the object the model wrote, not as a quoted JSON
    // string, which the model would then copy.
    let ids = server().post("/tokenize", &json!({"messages": messages, "tools": chat_tools}).to_string()).json()["tokens"].clone();
    let prompt = server().post("/detokenize", &json!({"tokens": ids}).to_string()).json()["prompt"].as_str().unwrap().to_string();
    assert!(prompt.contains("\"arguments\": {\"city\": ") && !prompt.contains("\"arguments\": \""), "{prompt}");
    assert_eq!(answer["usage"]["input_tokens"].as_u64().unwrap(), ids.as_array().unwrap().len() as u64);

    // Streamed, the call comes as one item with its arguments.
    let events = server().post("/v1/responses", &json!({"input": "What is the weather in Oslo?", "tools": tools, "tool_choice": "required",
        "max_output_tokens": 60, "temperature": 0, "stream": true}).to_string()).sse_events();
    let done = events.iter().find(|(n, _)| n == "response.function_call_arguments.done").unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(done.1["name"], "get_weather");
    assert!(serde_json::from_str::<Value>(done.1["arguments"].as_str().unwrap()).unwrap()["city"].is_string());
}

#[test]
fn text_format_holds_the_output_to_a_schema() {
    let schema = json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"]});
    let r = respond(json!({"input": "Describe a cat named Tom, aged 3, as JSON.", "max_output_tokens": 60, "temperature": 0,
        "text": {"format": {"type": "json_schema", "name": "cat", "schema": schema, "strict": true}}}));
    let v: Value = serde_json::from_str(&output_text(&r)).unwrap_or_else(|e| panic!("{e}: {r}"));
    assert!(v["name"].is_string() && v["age"].is_i64(), "{v}");
    assert_eq!(r["text"]["format"]["name"], "cat");
}

#[test]
fn bad_requests_name_their_field() {
    let s = server();
    let cases = [
        (json!({"input": [{"type": "web_search_call"}]}), "input[0].type"),
        (json!({"input": [{"role": "critic", "content": "x"}]}), "input[0].role"),
        (json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}), "input[0].content[0]"),
        (json!({"input": [{"type": "function_call_output", "output": "x"}]}), "input[0].call_id"),
        (json!({"input": "x", "tools": [{"type": "web_search"}]}), "tools[0]"),
        (json!({"input": "x", "tool_choice": {"type": "file_search"}}), "tool_choice"),
        (json!({"input": "x", "background": true}), "background"),
        (json!({"input": "x", "text": {"format": {"type": "json_schema", "schema": {"type": "object", "minProperties": 1}}}}), "text.format.schema"),
        (json!({"input": "x", "temperature": 7}), "temperature"),
        (json!({"input": "x", "max_output_tokens": 0}), "max_output_tokens"),
        (json!({"input": []}), "input"),
        // Tools beside a format are taken under "auto" (a call or the answer); a forced call is not.
        (json!({"input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": "required", "text": {"format": {"type": "json_object"}}}), "tool_choice"),
    ];
    for (body, param) in cases {
        let e = s.post("/v1/responses", &body.to_string()).error(400);
        assert_eq!(e["param"], param, "{body}: {e}");
    }
    s.post("/v1/responses", &json!({"instructions": "x"}).to_string()).error(422);
}

/// Under a Qwen3 template the thinking comes back as a `reasoning` item, whole and streamed
/// alike, counted in `reasoning_tokens`; `reasoning.effort: "none"` turns it off. The test
/// model is Qwen2.5 and starts no thinking of its own: asked for JSON with an effort, the
/// output begins inside the thinking (as chat's `enable_thinking: true` with a JSON format
/// does), which this model does not close within the tokens allowed.
#[test]
fn reasoning_comes_back_as_its_own_item() {
    let s = start(ServerConfig { chat_template: Some(common::fixture("templates/qwen3.jinja")), ..Default::default() });
    let body = json!({"input": FIB, "max_output_tokens": 24, "temperature": 0, "reasoning": {"effort": "high"}, "text": {"format": {"type": "json_object"}}});
    let whole = s.post("/v1/responses", &body.to_string()).json();
    let c = s.post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": FIB}], "max_tokens": 24, "temperature": 0,
        "chat_template_kwargs": {"enable_thinking": true}, "response_format": {"type": "json_object"}}).to_string()).json();
    let reasoning = c["choices"][0]["message"]["reasoning_content"].as_str().unwrap_or_else(|| panic!("{c}"));
    let item = &whole["output"][0];
    assert_eq!(item["type"], "reasoning", "{whole}");
    assert_eq!(item["content"][0]["text"], reasoning);
    assert_eq!(output_text(&whole), c["choices"][0]["message"]["content"].as_str().unwrap_or(""));
    let reasoning_tokens = whole["usage"]["output_tokens_details"]["reasoning_tokens"].as_u64().unwrap();
    assert!(reasoning_tokens > 0 && reasoning_tokens <= 24, "{}", whole["usage"]);

    let mut streamed = body.clone();
    streamed["stream"] = true.into();
    let events = s.post("/v1/responses", &streamed.to_string()).sse_events();
    assert_eq!(events[2].1["item"]["type"], "reasoning");
    let deltas: String = events.iter().filter(|(n, _)| n == "response.reasoning_text.delta").map(|(_, d)| d["delta"].as_str().unwrap()).collect();
    assert_eq!(deltas, reasoning);
    assert_eq!(events.last().unwrap().1["response"]["output"][0]["content"][0]["text"], reasoning);

    let mut off = body;
    off["reasoning"] = json!({"effort": "none"});
    let plain = s.post("/v1/responses", &off.to_string()).json();
    assert!(plain["output"].as_array().unwrap().iter().all(|i| i["type"] == "message"), "{plain}");
    assert!(output_text(&plain).trim_start().starts_with('{'), "{plain}");
    assert_eq!(plain["usage"]["output_tokens_details"]["reasoning_tokens"], 0);

    // An output of thinking alone (no text, no call) can still be continued.
    let follow = s.post("/v1/responses", &json!({"input": "Go on.", "previous_response_id": whole["id"], "max_output_tokens": 4}).to_string());
    assert_eq!(follow.status, 200, "{}", follow.body);

    // A reasoning item sent back goes with the turn after it, as chat's `reasoning_content`
    // (this template renders the thinking of a turn still calling tools).
    let tools = json!([{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}]);
    let items = json!([{"role": "user", "content": "Call f."}, {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "I should call f."}]},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"}, {"type": "function_call_output", "call_id": "call_1", "output": "done"}]);
    let r = s.post("/v1/responses", &json!({"input": items, "tools": tools, "max_output_tokens": 8, "temperature": 0, "reasoning": {"effort": "none"}}).to_string()).json();
    let messages = json!([{"role": "user", "content": "Call f."},
        {"role": "assistant", "content": null, "reasoning_content": "I should call f.", "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "done"}]);
    let chat_tools = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]);
    let c = s.post("/v1/chat/completions", &json!({"messages": messages, "tools": chat_tools, "max_tokens": 8, "temperature": 0, "chat_template_kwargs": {"enable_thinking": false}}).to_string()).json();
    assert_eq!(r["usage"]["input_tokens"], c["usage"]["prompt_tokens"]);
    let without = s.post("/v1/chat/completions", &json!({"messages": [messages[0], {"role": "assistant", "content": null, "tool_calls": messages[1]["tool_calls"]}, messages[2]],
        "tools": chat_tools, "max_tokens": 1, "chat_template_kwargs": {"enable_thinking": false}}).to_string()).json();
    assert_ne!(without["usage"]["prompt_tokens"], c["usage"]["prompt_tokens"], "the template renders that thinking");
}

/// `GET /v1/responses/{id}/input_items`: a stored response's own input (not the earlier turns
/// its `previous_response_id` continues) as items with ids, newest first unless `order=asc`,
/// paged by `limit` and `after`; the same ids on every listing.
#[test]
fn input_items_list_a_responses_own_input() {
    let s = server();
    let items = |id: &Value, query: &str| s.get(&format!("/v1/responses/{}/input_items{query}", id.as_str().unwrap()));
    let ids = |page: &Value| -> Vec<String> { page["data"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect() };
    let first = respond(json!({"input": "My name is Ada.", "max_output_tokens": 2}));
    let only = items(&first["id"], "").json();
    assert_eq!(only["data"].as_array().unwrap().len(), 1, "{only}");
    assert_eq!((&only["data"][0]["type"], &only["data"][0]["role"], &only["data"][0]["status"]), (&json!("message"), &json!("user"), &json!("completed")));
    assert_eq!(only["data"][0]["content"], json!([{"type": "input_text", "text": "My name is Ada."}]));

    let parts = json!([{"type": "input_text", "text": "What is my name?"}]);
    let input = json!([{"role": "user", "content": "Hello."}, {"type": "message", "id": "msg_mine", "role": "assistant", "content": "Hi!"}, {"role": "user", "content": parts}]);
    let r = respond(json!({"input": input, "previous_response_id": first["id"], "max_output_tokens": 2}));
    let all = items(&r["id"], "").json();
    let data = all["data"].as_array().unwrap();
    assert_eq!((&all["object"], data.len(), &all["has_more"]), (&json!("list"), 3, &json!(false)), "this input alone: {all}");
    assert_eq!(data[0]["content"], parts, "the last item first");
    assert_eq!(data[1], json!({"type": "message", "id": "msg_mine", "role": "assistant", "status": "completed", "content": [{"type": "output_text", "text": "Hi!", "annotations": []}]}));
    assert_eq!(data[2]["content"], json!([{"type": "input_text", "text": "Hello."}]));
    let desc = ids(&all);
    assert!(desc[0].starts_with("msg_") && desc[2].starts_with("msg_") && desc[0] != desc[2], "{desc:?}");
    assert_eq!((&all["first_id"], &all["last_id"]), (&json!(desc[0]), &json!(desc[2])));
    assert_eq!(items(&r["id"], "").json(), all, "ids are made once");

    let asc = items(&r["id"], "?order=asc&limit=2").json();
    assert_eq!(ids(&asc), [desc[2].as_str(), desc[1].as_str()]);
    assert_eq!(asc["has_more"], true);
    let rest = items(&r["id"], &format!("?order=asc&limit=2&after={}", asc["last_id"].as_str().unwrap())).json();
    assert_eq!((ids(&rest), &rest["has_more"]), (vec![desc[0].clone()], &json!(false)));
    let after_first = items(&r["id"], &format!("?after={}&include[]=message.input_image.image_url", desc[0])).json();
    assert_eq!(ids(&after_first), desc[1..]);

    for (query, param) in [("?limit=0", "limit"), ("?limit=101", "limit"), ("?limit=ten", "limit"), ("?order=newest", "order"), ("?after=msg_unknown", "after")] {
        let e = items(&r["id"], query).error(400);
        assert_eq!(e["param"], param, "{query}: {e}");
    }
    items(&json!("resp_unknown"), "").error(404);
    let unstored = respond(json!({"input": "hi", "max_output_tokens": 2, "store": false}));
    items(&unstored["id"], "").error(404);
    s.delete(&format!("/v1/responses/{}", first["id"].as_str().unwrap())).json();
    items(&first["id"], "").error(404);

    // A streamed response keeps its input items too.
    let events = s.post("/v1/responses", &json!({"input": "Hi.", "max_output_tokens": 2, "stream": true}).to_string()).sse_events();
    let streamed = items(&events.last().unwrap().1["response"]["id"], "").json();
    assert_eq!(streamed["data"][0]["content"][0]["text"], "Hi.", "{streamed}");
}
