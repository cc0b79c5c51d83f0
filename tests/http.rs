//! The HTTP API against a real server on a loopback port with the real test model.

mod common;

use std::sync::OnceLock;

use common::server::{start, ServerConfig, TestServer};
use qwen_serve::engine::EngineConfig;
use serde_json::{json, Value};

fn server() -> &'static TestServer {
    static S: OnceLock<TestServer> = OnceLock::new();
    S.get_or_init(|| start(ServerConfig::default()))
}

const FIB: &str = "Write a Python function that returns the n-th Fibonacci number.";

fn chat_body(extra: Value) -> String {
    let mut body = json!({"model": "qwen-test", "messages": [{"role": "user", "content": FIB}], "max_tokens": 12, "temperature": 0});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body.to_string()
}

#[test]
fn models_health_and_openapi() {
    let s = server();
    let models = s.get("/v1/models").json();
    assert_eq!(models["data"][0]["id"], "qwen-test");
    let one = s.get("/v1/models/qwen-test").json();
    assert_eq!((&one["id"], &one["object"], &one["max_model_len"]), (&models["data"][0]["id"], &json!("model"), &models["data"][0]["max_model_len"]));
    for missing in ["gpt-4", "Qwen/qwen-test", "Qwen%2Fqwen-test"] {
        s.get(&format!("/v1/models/{missing}")).error(404);
    }
    let e = s.get("/v1/models/gpt-4").error(404);
    assert_eq!((e["code"].as_str(), e["param"].as_str()), (Some("model_not_found"), Some("model")));
    assert_eq!(s.get("/health").status, 200);
    let spec = s.get("/openapi.json").json();
    for path in ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank", "/v1/score", "/v1/responses", "/v1/responses/{id}", "/v1/messages", "/v1/messages/count_tokens", "/infill", "/completion", "/v1/models", "/v1/models/{model}", "/tokenize", "/detokenize", "/health", "/metrics"] {
        assert!(spec["paths"][path].is_object(), "openapi lacks {path}");
    }
}

#[test]
fn chat_completion_whole_and_streamed_agree() {
    let s = server();
    let whole = s.post("/v1/chat/completions", &chat_body(json!({})));
    assert_eq!(whole.status, 200, "{}", whole.body);
    let v = whole.json();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert!(content.starts_with("Here's a Python function"), "{content}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["object"], "chat.completion");
    let usage = &v["usage"];
    assert_eq!(usage["completion_tokens"], 12);
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), usage["prompt_tokens"].as_u64().unwrap() + 12);

    let streamed = s.post("/v1/chat/completions", &chat_body(json!({"stream": true, "stream_options": {"include_usage": true}})));
    assert_eq!(streamed.status, 200);
    let data = streamed.sse_data();
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, content);
    let finish: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["finish_reason"]).filter(|f| !f.is_null()).collect();
    assert_eq!(finish, vec![&json!("length")]);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 12);
}

/// `stream_options`: vLLM's `continuous_usage_stats` puts the usage so far on every chunk of
/// both endpoints; without `stream: true` the field is a 400, as is completions' `best_of < n`.
#[test]
fn stream_options_and_best_of() {
    let s = server();
    let options = json!({"stream": true, "stream_options": {"include_usage": true, "continuous_usage_stats": true}, "max_tokens": 3});
    let completion = |extra: &Value| {
        let mut b = json!({"prompt": "def quicksort(arr):", "temperature": 0});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b.to_string()
    };
    for (path, body) in [("/v1/chat/completions", chat_body(options.clone())), ("/v1/completions", completion(&options))] {
        let data = s.post(path, &body).sse_data();
        let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
        // (prompt, completion, total) of every chunk: the completion grows to 3, the rest agrees.
        let usages: Vec<[u64; 3]> = chunks.iter().map(|c| ["prompt_tokens", "completion_tokens", "total_tokens"].map(|k| c["usage"][k].as_u64().unwrap_or_else(|| panic!("{path}: no usage on {c}")))).collect();
        assert!(usages.windows(2).all(|w| w[0][1] <= w[1][1] && w[0][0] == w[1][0]) && usages.last().unwrap()[1] == 3, "{path}: {usages:?}");
        assert!(usages.iter().all(|[p, c, t]| p + c == *t && *p > 0), "{path}: {usages:?}");
        assert_eq!(chunks.last().unwrap()["choices"], json!([]), "{path}: the last usage chunk");
        let e = s.post(path, &body.replace(r#""stream":true"#, r#""stream":false"#)).error(400);
        assert_eq!(e["param"], "stream_options", "{path}");
    }
    assert_eq!(s.post("/v1/completions", &completion(&json!({"stream_options": null, "max_tokens": 1}))).status, 200);
    let e = s.post("/v1/completions", &completion(&json!({"best_of": 1, "n": 2, "max_tokens": 1}))).error(400);
    assert_eq!(e["param"], "best_of");
}

#[test]
fn chat_logprobs_n_and_seed() {
    let s = server();
    let v = s.post("/v1/chat/completions", &chat_body(json!({"logprobs": true, "top_logprobs": 2, "max_tokens": 3}))).json();
    let lp = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(lp.len(), 3);
    assert_eq!(lp[0]["top_logprobs"].as_array().unwrap().len(), 2);
    assert_eq!(lp[0]["token"], "Here");
    // vLLM's return_tokens_as_token_ids: the same entries named by id, bytes still the text's.
    let ids = s.post("/v1/chat/completions", &chat_body(json!({"logprobs": true, "top_logprobs": 2, "max_tokens": 3, "return_tokens_as_token_ids": true}))).json();
    let by_id = ids["choices"][0]["logprobs"]["content"].as_array().unwrap();
    let here = s.post("/tokenize", &json!({"prompt": "Here"}).to_string()).json()["tokens"][0].clone();
    assert_eq!(by_id[0]["token"], format!("token_id:{here}"));
    assert_eq!((&by_id[0]["bytes"], &by_id[0]["logprob"]), (&lp[0]["bytes"], &lp[0]["logprob"]));
    assert!(by_id[0]["top_logprobs"].as_array().unwrap().iter().all(|t| t["token"].as_str().unwrap().starts_with("token_id:")));
    let body = chat_body(json!({"n": 2, "temperature": 1.0, "seed": 7, "max_tokens": 6}));
    let a = s.post("/v1/chat/completions", &body).json();
    let b = s.post("/v1/chat/completions", &body).json();
    assert_eq!(a["choices"].as_array().unwrap().len(), 2);
    assert_eq!(a["choices"], b["choices"], "same seed, same choices");
}

#[test]
fn completions_prompt_forms_echo_and_logprobs() {
    let s = server();
    let one = s.post("/v1/completions", &json!({"prompt": "def quicksort(arr):", "max_tokens": 8, "temperature": 0}).to_string()).json();
    let text = one["choices"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("\n    if len(arr) <="), "{text:?}");
    assert_eq!(one["object"], "text_completion");

    let ids = s.post("/tokenize", &json!({"prompt": "def quicksort(arr):"}).to_string()).json()["tokens"].clone();
    let by_ids = s.post("/v1/completions", &json!({"prompt": ids, "max_tokens": 8, "temperature": 0}).to_string()).json();
    assert_eq!(by_ids["choices"][0]["text"], one["choices"][0]["text"]);

    let many = s.post("/v1/completions", &json!({"prompt": ["def quicksort(arr):", "The capital of France is"], "max_tokens": 4, "temperature": 0, "n": 2}).to_string()).json();
    let choices = many["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    assert_eq!(choices.iter().map(|c| c["index"].as_u64().unwrap()).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    assert!(choices[2]["text"].as_str().unwrap().contains("Paris"), "{}", choices[2]["text"]);

    let echo = s.post("/v1/completions", &json!({"prompt": "def quicksort(arr):", "max_tokens": 3, "temperature": 0, "echo": true, "logprobs": 2}).to_string()).json();
    let c = &echo["choices"][0];
    assert!(c["text"].as_str().unwrap().starts_with("def quicksort(arr):\n"));
    let n_prompt = ids.as_array().unwrap().len();
    let lp = &c["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), n_prompt + 3);
    assert!(lp["token_logprobs"][0].is_null() && lp["top_logprobs"][0].is_null(), "first prompt token has no logprob");
    assert!(lp["token_logprobs"][1].as_f64().unwrap() <= 0.0);
    assert_eq!(lp["top_logprobs"][1].as_object().unwrap().len(), 2);
    // Tokens by id (vLLM's return_tokens_as_token_ids): the prompt's ids, then the output's;
    // offsets still count the text.
    let by_id = s.post("/v1/completions", &json!({"prompt": "def quicksort(arr):", "max_tokens": 3, "temperature": 0, "echo": true, "logprobs": 2, "return_tokens_as_token_ids": true}).to_string()).json();
    let lp_ids = &by_id["choices"][0]["logprobs"];
    let named: Vec<String> = ids.as_array().unwrap().iter().map(|t| format!("token_id:{t}")).collect();
    assert_eq!(lp_ids["tokens"].as_array().unwrap()[..n_prompt], named.iter().map(|s| json!(s)).collect::<Vec<_>>()[..]);
    assert_eq!((&lp_ids["text_offset"], &lp_ids["token_logprobs"]), (&lp["text_offset"], &lp["token_logprobs"]));
    assert!(lp_ids["top_logprobs"][1].as_object().unwrap().keys().all(|k| k.starts_with("token_id:")));

    let streamed = s.post("/v1/completions", &json!({"prompt": "def quicksort(arr):", "max_tokens": 8, "temperature": 0, "stream": true}).to_string());
    let data = streamed.sse_data();
    assert_eq!(data.last().unwrap(), "[DONE]");
    let joined: String = data[..data.len() - 1].iter().map(|d| serde_json::from_str::<Value>(d).unwrap()["choices"][0]["text"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(joined, text);
}

/// vLLM's output fields: `include_stop_str_in_output`, `truncate_prompt_tokens`,
/// `skip_special_tokens`; the ones not served are 400s naming them.
#[test]
fn vllm_output_fields_take_effect() {
    let s = server();
    let complete = |extra: Value| {
        let mut body = json!({"prompt": "def quicksort(arr):", "max_tokens": 8, "temperature": 0});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        s.post("/v1/completions", &body.to_string()).json()
    };
    // The greedy text is "\n    if len(arr) <= ...": cut before "(", or with it.
    let cut = complete(json!({"stop": ["("]}));
    let kept = complete(json!({"stop": ["("], "include_stop_str_in_output": true}));
    // vLLM's `stop_reason` names what ended the choice: the stop string, a stop token's id,
    // null for a length cut (and for EOS), whole and streamed (on the last chunk only).
    assert_eq!((&cut["choices"][0]["finish_reason"], &cut["choices"][0]["stop_reason"]), (&json!("stop"), &json!("(")));
    let by_id = complete(json!({"logit_bias": {"151659": 100}, "stop_token_ids": [151659]}));
    assert_eq!((&by_id["choices"][0]["finish_reason"], &by_id["choices"][0]["stop_reason"]), (&json!("stop"), &json!(151659)));
    let long = complete(json!({}));
    assert_eq!((&long["choices"][0]["finish_reason"], &long["choices"][0]["stop_reason"]), (&json!("length"), &Value::Null));
    let chunks = s.post("/v1/chat/completions", &chat_body(json!({"stream": true, "stop": [" "], "max_tokens": 20}))).sse_data();
    let chunks: Vec<Value> = chunks[..chunks.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let (last, before) = chunks.split_last().unwrap();
    assert_eq!(last["choices"][0]["stop_reason"], " ", "{last}");
    assert!(before.iter().all(|c| c["choices"][0]["stop_reason"].is_null()), "{before:?}");
    let cut = cut["choices"][0]["text"].as_str().unwrap();
    assert!(cut.ends_with("len") && !cut.contains('('), "{cut:?}");
    assert_eq!(kept["choices"][0]["text"].as_str().unwrap(), format!("{cut}("));
    assert_eq!(kept["choices"][0]["finish_reason"], "stop");

    // The prompt's last 3 tokens only: what is echoed, and what usage counts.
    let ids = s.post("/tokenize", &json!({"prompt": "def quicksort(arr):"}).to_string()).json()["tokens"].clone();
    let last3: Vec<Value> = ids.as_array().unwrap().iter().rev().take(3).rev().cloned().collect();
    let tail = s.post("/detokenize", &json!({"tokens": last3}).to_string()).json()["prompt"].as_str().unwrap().to_string();
    let short = complete(json!({"truncate_prompt_tokens": 3, "echo": true, "max_tokens": 1}));
    assert_eq!(short["usage"]["prompt_tokens"], 3);
    assert!(short["choices"][0]["text"].as_str().unwrap().starts_with(&tail), "{short}");

    // A special token forced by logit_bias (<|fim_prefix|>): left out of the text unless asked for.
    let special = |extra: Value| {
        let mut extra = extra;
        extra["logit_bias"] = json!({"151659": 100});
        extra["max_tokens"] = json!(2);
        complete(extra)["choices"][0]["text"].as_str().unwrap().to_string()
    };
    assert_eq!(special(json!({})), "");
    assert_eq!(special(json!({"skip_special_tokens": false})), "<|fim_prefix|><|fim_prefix|>");

    for (body, param) in [
        (json!({"prompt": "x", "prompt_logprobs": 1}), "prompt_logprobs"),
        (json!({"prompt": "x", "truncate_prompt_tokens": 0}), "truncate_prompt_tokens"),
    ] {
        let r = s.post("/v1/completions", &body.to_string());
        assert_eq!((r.status, r.json()["error"]["param"].as_str().map(str::to_string)), (400, Some(param.to_string())));
    }
    for (extra, param) in [
        (json!({"chat_template": "{{ messages }}"}), "chat_template"),
        (json!({"functions": [{"name": "f", "parameters": {}}]}), "functions"),
        (json!({"function_call": "auto"}), "function_call"),
    ] {
        let r = s.post("/v1/chat/completions", &chat_body(extra));
        assert_eq!((r.status, r.json()["error"]["param"].as_str().map(str::to_string)), (400, Some(param.to_string())));
    }
}

/// `suffix`: the middle between prompt and suffix, in Qwen2.5-Coder's FIM format. The test
/// model writes the variable the suffix returns; without the suffix it returns at once.
#[test]
fn completions_fill_in_the_middle() {
    let s = server();
    let prefix = "def greet(name):\n    ";
    let suffix = "\n    return message\n";
    let fim = s.post("/v1/completions", &json!({"prompt": prefix, "suffix": suffix, "max_tokens": 6, "temperature": 0}).to_string()).json();
    let text = fim["choices"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("message = "), "{text:?}");
    let count = |t: &str| s.post("/tokenize", &json!({"prompt": t}).to_string()).json()["count"].as_u64().unwrap();
    assert_eq!(fim["usage"]["prompt_tokens"].as_u64().unwrap(), count(prefix) + count(suffix) + 3, "prefix, suffix and three FIM tokens");
    let plain = s.post("/v1/completions", &json!({"prompt": prefix, "max_tokens": 6, "temperature": 0}).to_string()).json();
    let text = plain["choices"][0]["text"].as_str().unwrap();
    assert!(text.trim_start().starts_with("return"), "{text:?}");
    // Token-id prompts take a suffix too; an empty suffix is no suffix (OpenAI's default).
    let ids = s.post("/tokenize", &json!({"prompt": prefix}).to_string()).json()["tokens"].clone();
    let by_ids = s.post("/v1/completions", &json!({"prompt": ids, "suffix": suffix, "max_tokens": 6, "temperature": 0}).to_string()).json();
    assert_eq!(by_ids["choices"][0]["text"], fim["choices"][0]["text"]);
    let empty = s.post("/v1/completions", &json!({"prompt": prefix, "suffix": "", "max_tokens": 6, "temperature": 0}).to_string()).json();
    assert_eq!(empty["choices"][0]["text"], plain["choices"][0]["text"]);
    let e = s.post("/v1/completions", &json!({"prompt": prefix, "suffix": suffix, "echo": true}).to_string()).error(400);
    assert_eq!(e["param"], "echo");
}

#[test]
fn tokenize_and_detokenize_round_trip() {
    let s = server();
    let t = s.post("/tokenize", &json!({"prompt": "<|im_start|>user\nhi"}).to_string()).json();
    assert_eq!(t["tokens"][0], 151644);
    let d = s.post("/detokenize", &json!({"tokens": t["tokens"]}).to_string()).json();
    assert_eq!(d["prompt"], "<|im_start|>user\nhi");
    let chat = s.post("/tokenize", &json!({"messages": [{"role": "user", "content": "hi"}]}).to_string()).json();
    assert!(chat["count"].as_u64().unwrap() > 10, "the template (system prompt) was applied");
    s.post("/detokenize", &json!({"tokens": [999999]}).to_string()).error(400);
    // Messages render as chat renders them: tools, a continued final message.
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let prefill = json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hel"}]);
    for body in [
        json!({"messages": [{"role": "user", "content": "hi"}], "tools": tools}),
        json!({"messages": prefill, "continue_final_message": true, "add_generation_prompt": false}),
        json!({"messages": prefill, "add_generation_prompt": false}),
    ] {
        let count = s.post("/tokenize", &body.to_string()).json()["count"].clone();
        let mut chat_body = body.clone();
        chat_body["max_tokens"] = json!(1);
        assert_eq!(count, s.post("/v1/chat/completions", &chat_body.to_string()).json()["usage"]["prompt_tokens"], "{body}");
    }
    assert!(s.post("/tokenize", &json!({"messages": [{"role": "user", "content": "hi"}], "tools": tools}).to_string()).json()["count"].as_u64() > chat["count"].as_u64());
    let e = s.post("/tokenize", &json!({"messages": [{"role": "user", "content": "hi"}], "tools": "none"}).to_string()).error(422);
    assert_eq!(e["param"], "tools", "{e}");
    s.post("/tokenize", &json!({"messages": [{"role": "user", "content": "hi"}], "prompt": "hi"}).to_string()).error(400);
}

#[test]
fn every_error_status_has_an_openai_body() {
    let s = server();
    let e = s.post("/v1/chat/completions", &chat_body(json!({"temperature": 3.5}))).error(400);
    assert_eq!(e["param"], "temperature");
    assert!(e["message"].as_str().unwrap().contains("[0, 2]"));
    let e = s.post("/v1/chat/completions", &chat_body(json!({"top_p": 0}))).error(400);
    assert_eq!(e["param"], "top_p");
    let e = s.post("/v1/chat/completions", &chat_body(json!({"max_tokens": 40000}))).error(400);
    let m = e["message"].as_str().unwrap();
    assert!(m.contains("40000") && m.contains("32768"), "{m}");
    let e = s.post("/v1/chat/completions", &chat_body(json!({"model": "gpt-4"}))).error(404);
    assert_eq!(e["code"], "model_not_found");
    s.get("/v1/nope").error(404);
    s.post("/v1/chat/completions", "{not json").error(400);
    let e = s.post("/v1/chat/completions", r#"{"messages": [{"content": "hi"}]}"#).error(422);
    assert!(e["message"].as_str().unwrap().contains("role"), "{e}");
    // A form's or text's type (what a web page may post without a CORS preflight) is refused
    // on the OpenAI routes; JSON's with parameters is taken.
    let e = s.post_with("/v1/chat/completions", &chat_body(json!({})), &[("Content-Type", "text/plain")]).error(415);
    assert_eq!(e["param"], "Content-Type", "{e}");
    s.post_with("/v1/chat/completions", &chat_body(json!({"max_tokens": 1})), &[("Content-Type", "application/json; charset=utf-8")]).json();
    let e = s.post("/v1/chat/completions", &json!({"messages": []}).to_string()).error(400);
    assert_eq!(e["param"], "messages");
    let (status, body) = s.raw_post_declaring_length("/v1/completions", 2 << 20);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("\"error\"") && body.contains("larger than the server accepts"), "{body}");
    // The body is left unread, so the connection closes after the answer, which says so.
    assert!(body.to_lowercase().contains("\r\nconnection: close\r\n"), "{body}");
    let e = s.post("/v1/completions", &json!({"prompt": "hi", "logit_bias": {"abc": 1}}).to_string()).error(400);
    assert_eq!(e["param"], "logit_bias");
    let e = s.post("/v1/chat/completions", &chat_body(json!({"tool_choice": {"type": "function", "function": {"name": "g"}}, "tools": [{"type": "function", "function": {"name": "f"}}]}))).error(400);
    assert_eq!(e["param"], "tool_choice");
    assert!(e["message"].as_str().unwrap().contains("\"g\""), "{e}");
    let e = s.post("/v1/chat/completions", &chat_body(json!({"tool_choice": "required"}))).error(400);
    assert_eq!(e["param"], "tool_choice");
    let e = s.post("/v1/chat/completions", &chat_body(json!({"tool_choice": "sometimes", "tools": [{"type": "function", "function": {"name": "f"}}]}))).error(400);
    assert_eq!(e["param"], "tool_choice");
}

#[test]
fn api_key_guards_the_api_but_not_health_or_metrics() {
    let s = start(ServerConfig { api_key: Some("sekret".into()), cors: true, ..Default::default() });
    // A browser's preflight for a request with the key: `Authorization` must be named (the
    // Fetch standard's `*` does not cover it).
    let preflight = s.options_with(
        "/v1/chat/completions",
        &[("Origin", "http://example.com"), ("Access-Control-Request-Method", "POST"), ("Access-Control-Request-Headers", "authorization, content-type")],
    );
    assert_eq!(preflight.status, 200, "{}", preflight.body);
    let allowed = preflight.header("access-control-allow-headers").unwrap_or_default().to_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"), "{allowed:?}");
    assert_eq!(preflight.header("access-control-allow-origin"), Some("*"));
    let e = s.get("/v1/models").error(401);
    assert_eq!(e["type"], "authentication_error");
    s.get_with("/v1/models", &[("Authorization", "Bearer wrong")]).error(401);
    assert_eq!(s.get_with("/v1/models", &[("Authorization", "Bearer sekret")]).status, 200);
    // Anthropic's clients send the key as `x-api-key`.
    assert_eq!(s.get_with("/v1/models", &[("x-api-key", "sekret")]).status, 200);
    s.get_with("/v1/models", &[("x-api-key", "wrong")]).error(401);
    assert_eq!(s.get("/health").status, 200);
    assert_eq!(s.get("/metrics").status, 200);
}

#[test]
fn a_full_queue_answers_429() {
    let s = start(ServerConfig { engine: EngineConfig { max_num_seqs: 1, max_waiting: 1, ..Default::default() }, ..Default::default() });
    let body = json!({"prompt": "hello", "max_tokens": 200, "ignore_eos": true}).to_string();
    let replies: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6).map(|_| scope.spawn(|| s.post("/v1/completions", &body))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    // A client may retry a full queue: after how long.
    assert!(replies.iter().filter(|r| r.status == 429).all(|r| r.header("retry-after") == Some("1")));
    assert!(statuses.contains(&200), "{statuses:?}");
    let e = s.post("/v1/completions", &body);
    assert!(e.status == 200 || e.status == 429);
}

#[test]
fn a_client_that_disconnects_mid_stream_frees_its_blocks() {
    let s = start(ServerConfig::default());
    let body = json!({"prompt": "Count from one to a thousand:", "max_tokens": 2000, "ignore_eos": true, "stream": true}).to_string();
    s.read_some_then_disconnect("/v1/completions", &body, 600);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let running = s.metric("qwen_serve_num_requests_running");
        let free = s.metric("qwen_serve_kv_cache_free_blocks");
        let total = s.state.engine.stats().num_blocks as f64;
        if running == 0.0 && free == total {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "sequence not aborted: running {running}, free {free}/{total}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Streamed requests whose clients leave before their first token (here: still queued behind a
/// long one) are dropped then, not once they have a token to send.
#[test]
fn a_stream_abandoned_before_its_first_token_leaves_the_queue() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let s = start(ServerConfig { engine: EngineConfig { max_num_seqs: 1, ..Default::default() }, ..Default::default() });
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let long_done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let long = json!({"prompt": "Count from one to a thousand:", "max_tokens": 500, "ignore_eos": true}).to_string();
            assert_eq!(s.post("/v1/completions", &long).status, 200);
            long_done.store(true, Ordering::Release);
        });
        wait_for("the long request runs", &|| s.metric("qwen_serve_num_requests_running") == 1.0);
        let open = |path: &str, body: String| ureq::post(&format!("{}{path}", s.base)).set("Content-Type", "application/json").send_string(&body).unwrap();
        let streams = [
            open("/v1/completions", json!({"prompt": "hello", "max_tokens": 4, "stream": true}).to_string()),
            open("/v1/chat/completions", chat_body(json!({"stream": true}))),
        ];
        wait_for("the streams are queued", &|| s.metric("qwen_serve_num_requests_waiting") == 2.0);
        drop(streams);
        wait_for("the abandoned streams leave the queue", &|| s.metric("qwen_serve_num_requests_waiting") == 0.0);
        assert!(!long_done.load(Ordering::Acquire), "the abandoned stream left only when the long request ended");
    });
}

#[test]
fn metrics_count_requests_and_latencies() {
    let s = server();
    s.post("/v1/completions", &json!({"prompt": "hi", "max_tokens": 2}).to_string());
    let reply = s.get("/metrics");
    // Labelled as the format it is (typed families without `_total`, a closing `# EOF`).
    assert_eq!(reply.header("content-type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    assert!(reply.body.trim_end().ends_with("# EOF") && reply.body.contains("# TYPE qwen_serve_requests counter"));
    let text = reply.body;
    assert!(text.contains(r#"qwen_serve_requests_total{endpoint="/v1/completions",status="200"}"#), "{text}");
    for name in ["qwen_serve_time_to_first_token_seconds_count", "qwen_serve_e2e_request_latency_seconds_count", "qwen_serve_kv_cache_usage_ratio", "qwen_serve_num_requests_waiting"] {
        assert!(text.contains(name), "{name} missing");
    }
    // Totals since start are counters, as Prometheus' rate() expects, named as vLLM's.
    for name in ["num_preemptions", "prefix_cache_hits", "prompt_tokens", "generation_tokens", "spec_decode_num_draft_tokens"] {
        assert!(text.contains(&format!("# TYPE qwen_serve_{name} counter\nqwen_serve_{name}_total ")), "{name} is no counter:\n{text}");
    }
    assert!(s.metric("qwen_serve_time_to_first_token_seconds_count") >= 1.0);
    let generated = s.metric("qwen_serve_generation_tokens_total");
    s.post("/v1/completions", &json!({"prompt": "hi", "max_tokens": 2, "ignore_eos": true}).to_string());
    assert!(s.metric("qwen_serve_generation_tokens_total") >= generated + 2.0);
}

#[test]
fn shutting_down_answers_503() {
    let s = start(ServerConfig::default());
    s.state.engine.begin_shutdown();
    let r = s.post("/v1/completions", &json!({"prompt": "hi", "max_tokens": 2}).to_string());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.error(503)["type"], "service_unavailable_error");
}

/// Whole and streamed responses split the same way (reasoning, content), and no think tag
/// leaks into either. The test model is Qwen2.5, so the Qwen3 template is supplied with
/// `--chat-template`; what the model writes is its own business, the split is ours.
#[test]
fn qwen3_template_reasoning_whole_and_streamed_agree() {
    let s = start(ServerConfig { chat_template: Some(common::fixture("templates/qwen3.jinja")), ..Default::default() });
    assert!(s.state.reasoning, "a Qwen3 template turns reasoning parsing on");
    for thinking in [true, false] {
        let extra = json!({"chat_template_kwargs": {"enable_thinking": thinking}, "max_tokens": 24});
        let prompt = s.post("/tokenize", &json!({"messages": [{"role": "user", "content": FIB}]}).to_string()).json();
        assert!(prompt["count"].as_u64().unwrap() > 5);
        let whole = s.post("/v1/chat/completions", &chat_body(extra.clone())).json();
        let msg = &whole["choices"][0]["message"];
        let mut extra_stream = extra.clone();
        extra_stream["stream"] = json!(true);
        let data = s.post("/v1/chat/completions", &chat_body(extra_stream)).sse_data();
        let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
        let join = |field: &str| -> String { chunks.iter().filter_map(|c| c["choices"][0]["delta"][field].as_str()).collect() };
        let (reasoning, content) = (join("reasoning_content"), join("content"));
        assert_eq!(reasoning, msg["reasoning_content"].as_str().unwrap_or(""), "thinking={thinking}");
        assert_eq!(content.trim(), msg["content"].as_str().unwrap_or("").trim(), "thinking={thinking}");
        for text in [&reasoning, &content] {
            assert!(!text.contains("<think>") && !text.contains("</think>"), "tag leaked: {text:?}");
        }
        if !thinking {
            // The template closed an empty think block in the prompt: all output is content.
            assert!(msg["reasoning_content"].is_null(), "{msg}");
        }
    }
}

/// The real model asked about the weather with a weather tool calls it; whole and streamed
/// responses carry the same call and finish with `tool_calls`; `tool_choice: "none"` turns it off.
#[test]
fn tool_calls_end_to_end() {
    let s = server();
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let body = |extra: Value| {
        let mut b = json!({"messages": [{"role": "user", "content": "What is the weather like in Paris today?"}], "tools": tools, "temperature": 0, "max_tokens": 40});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b.to_string()
    };
    let whole = s.post("/v1/chat/completions", &body(json!({}))).json();
    let choice = &whole["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{whole}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args["city"], "Paris");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));

    let data = s.post("/v1/chat/completions", &body(json!({"stream": true}))).sse_data();
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let calls: Vec<&Value> = chunks.iter().flat_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array().into_iter().flatten()).collect();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(calls[0]["function"]["arguments"], call["function"]["arguments"]);
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
    // A turn of calls only has no content streamed either (OpenAI: null), not even `""`.
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().all(|c| c["choices"][0]["delta"]["content"].is_null()), "{data:?}");

    // A call cut short is content: the output as the model wrote it (here an untagged body).
    let cut = s.post("/v1/chat/completions", &body(json!({"max_tokens": 8, "logprobs": true}))).json();
    let raw: String = cut["choices"][0]["logprobs"]["content"].as_array().unwrap().iter().map(|t| t["token"].as_str().unwrap()).collect();
    assert_eq!((&cut["choices"][0]["message"]["content"], &cut["choices"][0]["finish_reason"]), (&json!(raw.trim()), &json!("length")), "{cut}");
    let data = s.post("/v1/chat/completions", &body(json!({"max_tokens": 8, "stream": true}))).sse_data();
    let streamed: String = data[..data.len() - 1].iter().filter_map(|d| serde_json::from_str::<Value>(d).unwrap()["choices"][0]["delta"]["content"].as_str().map(str::to_string)).collect();
    assert_eq!(streamed, raw.trim());

    let none = s.post("/v1/chat/completions", &body(json!({"tool_choice": "none"}))).json();
    assert!(none["choices"][0]["message"]["tool_calls"].is_null(), "{none}");
}

/// `tool_choice` forcing calls: a named function is called even where the prompt asks for none,
/// `"required"` calls one of the tools, with arguments that fit its parameters, whole,
/// streamed and sampled hot.
#[test]
fn forced_tool_calls_end_to_end() {
    let s = server();
    let weather = json!({"type": "function", "function": {"name": "get_weather", "description": "Get the current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}});
    let time = json!({"type": "function", "function": {"name": "get_time", "description": "Get the local time in a time zone",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 40}}, "required": ["zone"]}}});
    let body = |prompt: &str, extra: Value| {
        let mut b = json!({"messages": [{"role": "user", "content": prompt}], "tools": [weather, time], "temperature": 0, "max_tokens": 60});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b.to_string()
    };
    // Each call names a tool and carries arguments that fit it.
    let fits = |call: &Value| {
        let args: serde_json::Map<String, Value> = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        match call["function"]["name"].as_str().unwrap() {
            "get_weather" => args["city"].is_string() && args.keys().all(|k| k == "city" || k == "unit") && args.get("unit").is_none_or(|u| u == "celsius" || u == "fahrenheit"),
            "get_time" => args["zone"].as_str().is_some_and(|z| z.chars().count() <= 40) && args.len() == 1,
            other => panic!("called {other}"),
        }
    };
    let named = json!({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}});
    let whole = s.post("/v1/chat/completions", &body("Tell me a joke about cats.", named.clone())).json();
    let choice = &whole["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{whole}");
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{whole}");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert!(fits(&calls[0]), "{whole}");

    let required = s.post("/v1/chat/completions", &body("What time is it in Tokyo?", json!({"tool_choice": "required"}))).json();
    let choice = &required["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{required}");
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert!(!calls.is_empty() && calls.iter().all(fits), "{required}");

    let mut streamed = named.clone();
    streamed["stream"] = json!(true);
    let data = s.post("/v1/chat/completions", &body("Tell me a joke about cats.", streamed)).sse_data();
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let deltas: Vec<&Value> = chunks.iter().flat_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array().into_iter().flatten()).collect();
    assert_eq!(deltas.len(), 1);
    assert_eq!(deltas[0]["function"]["arguments"], whole["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]);
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));

    let hot = s.post("/v1/chat/completions", &body("Weather or time, your pick.", json!({"tool_choice": "required", "temperature": 1.5, "seed": 3, "n": 4}))).json();
    for choice in hot["choices"].as_array().unwrap() {
        match choice["finish_reason"].as_str().unwrap() {
            "tool_calls" => assert!(choice["message"]["tool_calls"].as_array().unwrap().iter().all(fits), "{choice}"),
            "length" => {}
            other => panic!("{other}: {choice}"),
        }
    }
    let e = s.post("/v1/chat/completions", &body("hi", json!({"tool_choice": "required", "response_format": {"type": "json_object"}}))).error(400);
    assert_eq!(e["param"], "tool_choice");
    let e = s.post("/v1/chat/completions", &body("hi", json!({"tool_choice": "required", "ignore_eos": true}))).error(400);
    assert_eq!(e["param"], "ignore_eos");
    let e = s.post("/v1/chat/completions", &body("hi", json!({"tool_choice": "required", "stop": ["</tool_call>"]}))).error(400);
    assert_eq!(e["param"], "stop");
    // A function without parameters (`{}` too) is called with `{}`.
    let ping = json!([{"type": "function", "function": {"name": "ping", "parameters": {}}}]);
    let pinged = s.post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "hello"}], "tools": ping, "tool_choice": "required", "max_tokens": 30, "temperature": 0}).to_string()).json();
    assert_eq!(pinged["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{}", "{pinged}");
}

/// vLLM's `continue_final_message`: the reply goes on from a last assistant message, as a
/// completion of the rendered conversation cut after that message's text does.
#[test]
fn continue_final_message_goes_on_from_a_prefill() {
    let s = server();
    let prefix = "def fibonacci(n):";
    let turns = json!([{"role": "user", "content": FIB}, {"role": "assistant", "content": prefix}]);
    let c = s.post("/v1/chat/completions", &json!({"messages": turns, "continue_final_message": true, "add_generation_prompt": false, "max_tokens": 16, "temperature": 0}).to_string()).json();
    let tokens = s.post("/tokenize", &json!({"messages": [{"role": "user", "content": FIB}], "add_generation_prompt": true}).to_string()).json()["tokens"].clone();
    let opened = s.post("/detokenize", &json!({"tokens": tokens}).to_string()).json()["prompt"].as_str().unwrap().to_string();
    let completion = s.post("/v1/completions", &json!({"prompt": format!("{opened}{prefix}"), "max_tokens": 16, "temperature": 0}).to_string()).json();
    let text = c["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(text, completion["choices"][0]["text"].as_str().unwrap());
    assert!(!text.starts_with("def fibonacci"), "{text}");
    assert_eq!(c["usage"]["prompt_tokens"], completion["usage"]["prompt_tokens"]);

    let e = s.post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": FIB}], "continue_final_message": true}).to_string()).error(400);
    assert_eq!(e["param"], "continue_final_message");
    let e = s.post("/v1/chat/completions", &json!({"messages": turns, "continue_final_message": true, "add_generation_prompt": true}).to_string()).error(400);
    assert_eq!(e["param"], "continue_final_message");
}
