//! Output held to a format over HTTP with the real test model: `response_format` (a JSON
//! object, a schema), vLLM's `structured_outputs` / `guided_*` (a choice, a regex, a grammar)
//! and llama.cpp's `grammar`. Greedy,
//! streamed and hot-sampled outputs are checked by hand or by other parsers than the ones
//! that held them.

mod common;

use std::sync::OnceLock;

use common::server::{start, ServerConfig, TestServer};
use serde_json::{json, Value};

fn server() -> &'static TestServer {
    static S: OnceLock<TestServer> = OnceLock::new();
    S.get_or_init(|| start(ServerConfig::default()))
}

/// The content of a streamed chat response's chunks (`data` ends in `[DONE]`), joined.
fn streamed_content(data: &[String]) -> String {
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect()
}

/// `response_format: json_object`: greedy, streamed and sampled hot (where the model left alone
/// rarely writes JSON) outputs are each one JSON object, or, cut by `max_tokens`, the start of
/// one; what JSON mode cannot do is refused naming the field.
#[test]
fn json_object_mode_holds_the_output_to_one_object() {
    let s = server();
    let body = |extra: Value| {
        let mut b = json!({"messages": [{"role": "user", "content": "Describe a cat named Tom, aged 3, as JSON."}],
            "response_format": {"type": "json_object"}, "temperature": 0, "max_tokens": 150});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b.to_string()
    };
    let whole = s.post("/v1/chat/completions", &body(json!({}))).json();
    let choice = &whole["choices"][0];
    let content = choice["message"]["content"].as_str().unwrap();
    assert_eq!(choice["finish_reason"], "stop", "{whole}");
    let object: serde_json::Map<String, Value> = serde_json::from_str(content).unwrap_or_else(|e| panic!("{e}: {content}"));
    assert!(!object.is_empty(), "{content}");

    let data = s.post("/v1/chat/completions", &body(json!({"stream": true}))).sse_data();
    assert_eq!(streamed_content(&data), content);

    let hot = s.post("/v1/chat/completions", &body(json!({"temperature": 1.8, "top_p": 1, "seed": 11, "n": 4, "max_tokens": 60}))).json();
    for choice in hot["choices"].as_array().unwrap() {
        let content = choice["message"]["content"].as_str().unwrap();
        match (choice["finish_reason"].as_str().unwrap(), serde_json::from_str::<serde_json::Map<String, Value>>(content)) {
            ("stop", Ok(_)) => {}
            ("length", Err(e)) if e.is_eof() => {}
            (reason, parsed) => panic!("{reason}: {parsed:?}: {content:?}"),
        }
    }

    // /v1/completions takes it too (as vLLM does).
    let completion = s.post("/v1/completions", &json!({"prompt": "A cat as a JSON object:", "response_format": {"type": "json_object"},
        "max_tokens": 80, "temperature": 0}).to_string()).json();
    let text = completion["choices"][0]["text"].as_str().unwrap();
    match (completion["choices"][0]["finish_reason"].as_str().unwrap(), serde_json::from_str::<serde_json::Map<String, Value>>(text)) {
        ("stop", Ok(_)) => {}
        ("length", Err(e)) if e.is_eof() => {}
        (reason, parsed) => panic!("{reason}: {parsed:?}: {text:?}"),
    }
    let e = s.post("/v1/completions", &json!({"prompt": "x", "response_format": {"type": "json_object"}, "ignore_eos": true}).to_string()).error(400);
    assert_eq!(e["param"], "ignore_eos");

    let unsupported = json!({"type": "object", "properties": {"a": {"type": "object", "minProperties": 1}}});
    let e = s.post("/v1/chat/completions", &body(json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": unsupported}}}))).error(400);
    assert_eq!(e["param"], "response_format");
    assert!(e["message"].as_str().unwrap().contains("`minProperties` at `/properties/a`"), "{e}");
    let e = s.post("/v1/chat/completions", &body(json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}))).error(400);
    assert_eq!(e["param"], "response_format");
    let e = s.post("/v1/chat/completions", &body(json!({"response_format": {"type": 5}}))).error(400);
    assert_eq!(e["param"], "response_format");
    let e = s.post("/v1/chat/completions", &body(json!({"ignore_eos": true}))).error(400);
    assert_eq!(e["param"], "ignore_eos");
    // Beside a forced tool call it is refused (beside `"auto"` it is the calls or the object,
    // `tools_beside_a_schema_give_calls_or_the_answer`).
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    let e = s.post("/v1/chat/completions", &body(json!({"tools": tools, "tool_choice": "required"}))).error(400);
    assert_eq!(e["param"], "tool_choice");
}

/// Every choice of a chat response is an instance (`instance` says) if it stopped, or the start of
/// one if `max_tokens` cut it.
fn choices_are_instances(response: &Value, instance: &dyn Fn(&serde_json::Map<String, Value>) -> bool) {
    for choice in response["choices"].as_array().unwrap() {
        let content = choice["message"]["content"].as_str().unwrap();
        match (choice["finish_reason"].as_str().unwrap(), serde_json::from_str::<serde_json::Map<String, Value>>(content)) {
            ("stop", Ok(v)) => assert!(instance(&v), "{content}"),
            ("length", Err(e)) if e.is_eof() => {}
            (reason, parsed) => panic!("{reason}: {parsed:?}: {content:?}"),
        }
    }
}

/// The keywords beyond plain types, on the real model: a `format`, a `pattern` under a
/// `maxLength`, integer and number bounds, and a map. Greedy and hot-sampled outputs are
/// checked here by hand (not by the parser that made them).
#[test]
fn json_schema_formats_patterns_bounds_and_maps_hold() {
    let s = server();
    let schema = json!({"type": "object", "additionalProperties": false, "required": ["name", "born", "code", "age", "weight", "toys"],
        "properties": {"name": {"type": "string"}, "born": {"type": "string", "format": "date"},
            "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$", "maxLength": 6},
            "age": {"type": "integer", "minimum": 1, "maximum": 20}, "weight": {"type": "number", "exclusiveMinimum": 0, "maximum": 12.5},
            "toys": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 9}}}});
    let body = |extra: Value| {
        let mut b = json!({"messages": [{"role": "user", "content": "Describe a cat named Tom as JSON: born 2021-04-01, license code TOM-07, aged 3, weighing 4.2 kg, with ball: 2 and mouse: 1 toys."}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "cat", "strict": true, "schema": schema}}, "temperature": 0, "max_tokens": 150});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b.to_string()
    };
    let date = |d: &str| {
        let p: Vec<&str> = d.split('-').collect();
        let num = |x: &str, len: usize, lo: u32, hi: u32| x.len() == len && x.bytes().all(|b| b.is_ascii_digit()) && (lo..=hi).contains(&x.parse::<u32>().unwrap());
        p.len() == 3 && num(p[0], 4, 0, 9999) && num(p[1], 2, 1, 12) && num(p[2], 2, 1, 31)
    };
    let code = |c: &str| {
        let b = c.as_bytes();
        b.len() == 6 && b[..3].iter().all(u8::is_ascii_uppercase) && b[3] == b'-' && b[4..].iter().all(u8::is_ascii_digit)
    };
    let instance = |v: &serde_json::Map<String, Value>| {
        v.len() == 6
            && v["name"].is_string()
            && v["born"].as_str().is_some_and(date)
            && v["code"].as_str().is_some_and(code)
            && v["age"].as_i64().is_some_and(|a| (1..=20).contains(&a))
            && v["weight"].as_f64().is_some_and(|w| w > 0.0 && w <= 12.5)
            && v["toys"].as_object().is_some_and(|t| t.values().all(|n| n.as_i64().is_some_and(|n| (0..=9).contains(&n))))
    };
    let whole = s.post("/v1/chat/completions", &body(json!({}))).json();
    assert_eq!(whole["choices"][0]["finish_reason"], "stop", "{whole}");
    choices_are_instances(&whole, &instance);
    choices_are_instances(&s.post("/v1/chat/completions", &body(json!({"temperature": 1.5, "seed": 11, "n": 4, "max_tokens": 120}))).json(), &instance);
    // A pattern Rust's regex syntax has no counterpart for is refused, naming it.
    let lookahead = json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "(?=x)"}}});
    let e = s.post("/v1/chat/completions", &body(json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": lookahead}}}))).error(400);
    assert_eq!(e["param"], "response_format");
    assert!(e["message"].as_str().unwrap().contains("`pattern` \"(?=x)\" at `/properties/a`"), "{e}");
}

/// `response_format: json_schema`: greedy and hot-sampled outputs are instances of the schema
/// (keys, types, the enum, required keys), or, cut by `max_tokens`, the start of one.
#[test]
fn json_schema_mode_holds_the_output_to_the_schema() {
    let s = server();
    let schema = json!({"type": "object", "additionalProperties": false, "required": ["name", "age", "kind", "toys"],
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "kind": {"enum": ["cat", "dog"]},
            "toys": {"type": "array", "items": {"type": "string"}}, "vet": {"anyOf": [{"type": "string"}, {"type": "null"}]}}});
    let body = |extra: Value| {
        let mut b = json!({"messages": [{"role": "user", "content": "Describe a cat named Tom, aged 3, as JSON."}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "pet", "strict": true, "schema": schema}}, "temperature": 0, "max_tokens": 120});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b.to_string()
    };
    let instance = |v: &serde_json::Map<String, Value>| {
        let keys_ok = v.keys().all(|k| ["name", "age", "kind", "toys", "vet"].contains(&k.as_str()));
        keys_ok
            && v["name"].is_string()
            && (v["age"].is_i64() || v["age"].is_u64())
            && (v["kind"] == "cat" || v["kind"] == "dog")
            && v["toys"].as_array().is_some_and(|t| t.iter().all(Value::is_string))
            && v.get("vet").is_none_or(|x| x.is_string() || x.is_null())
    };
    let whole = s.post("/v1/chat/completions", &body(json!({}))).json();
    let choice = &whole["choices"][0];
    let content = choice["message"]["content"].as_str().unwrap();
    assert_eq!(choice["finish_reason"], "stop", "{whole}");
    let v: serde_json::Map<String, Value> = serde_json::from_str(content).unwrap_or_else(|e| panic!("{e}: {content}"));
    assert!(instance(&v), "{content}");
    assert_eq!(v["name"], "Tom", "{content}");

    // A schema no output can finish within the parser's 12 levels is refused up front.
    let endless = json!({"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]});
    let e = s.post("/v1/chat/completions", &body(json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": endless}}}))).error(400);
    assert_eq!(e["param"], "response_format");
    assert!(e["message"].as_str().unwrap().contains("nests less than 12"), "{e}");

    choices_are_instances(&s.post("/v1/chat/completions", &body(json!({"temperature": 1.8, "seed": 5, "n": 4, "max_tokens": 60}))).json(), &instance);
}

/// vLLM's `structured_outputs` (`choice`, `regex`, `json`) and its older `guided_*` fields, on
/// the real model: greedy, streamed and hot-sampled outputs are each one of the choices or a
/// whole match of the regex (checked by the `regex` crate, not by the DFA that made them).
#[test]
fn structured_outputs_hold_the_output_to_a_choice_or_a_regex() {
    let s = server();
    let choices = ["positive", "negative", "neutral"];
    let sentiment = |extra: Value| {
        let mut b = json!({"messages": [{"role": "user", "content": "Classify this sentiment: qwen-serve is wonderful!"}], "temperature": 0, "max_tokens": 10});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b.to_string()
    };
    let whole = s.post("/v1/chat/completions", &sentiment(json!({"structured_outputs": {"choice": choices}}))).json();
    let content = whole["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert_eq!(whole["choices"][0]["finish_reason"], "stop", "{whole}");
    assert_eq!(content, "positive", "{whole}");
    let legacy = s.post("/v1/chat/completions", &sentiment(json!({"guided_choice": choices, "guided_decoding_backend": "xgrammar"}))).json();
    assert_eq!(legacy["choices"][0]["message"]["content"], content.as_str());
    let hot = s.post("/v1/chat/completions", &sentiment(json!({"structured_outputs": {"choice": choices}, "temperature": 1.8, "seed": 3, "n": 8}))).json();
    for choice in hot["choices"].as_array().unwrap() {
        assert!(choices.contains(&choice["message"]["content"].as_str().unwrap()), "{choice}");
        assert_eq!(choice["finish_reason"], "stop", "{choice}");
    }

    let email = regex::Regex::new(r"^[0-9A-Za-z_]+@[0-9A-Za-z_]+\.com\n$").unwrap();
    let body = |extra: Value| {
        let mut b = json!({"messages": [{"role": "user", "content": "Generate an email address for Alan Turing, who works in Enigma. End in .com and new line. Example result: alan.turing@enigma.com"}],
            "structured_outputs": {"regex": r"\w+@\w+\.com\n"}, "temperature": 0, "max_tokens": 30});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b.to_string()
    };
    let whole = s.post("/v1/chat/completions", &body(json!({}))).json();
    let content = whole["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(whole["choices"][0]["finish_reason"], "stop", "{whole}");
    assert!(email.is_match(content), "{content:?}");
    let data = s.post("/v1/chat/completions", &body(json!({"stream": true}))).sse_data();
    assert_eq!(streamed_content(&data), content);
    let hot = s.post("/v1/chat/completions", &body(json!({"temperature": 1.5, "seed": 9, "n": 4}))).json();
    let email_start = regex::Regex::new(r"^[0-9A-Za-z_]*(@[0-9A-Za-z_]*(\.(c(o(m)?)?)?)?)?$").unwrap();
    for choice in hot["choices"].as_array().unwrap() {
        let content = choice["message"]["content"].as_str().unwrap();
        match choice["finish_reason"].as_str().unwrap() {
            "stop" => assert!(email.is_match(content), "{content:?}"),
            // Cut at `max_tokens`: the start of a match.
            _ => assert!(email_start.is_match(content), "{content:?}"),
        }
    }

    // Completions too, the regex as `guided_regex`; a schema as `structured_outputs.json`.
    let completion = s.post("/v1/completions", &json!({"prompt": "The support line's phone number is", "guided_regex": r" \d{3}-\d{4}",
        "max_tokens": 12, "temperature": 0}).to_string()).json();
    let text = completion["choices"][0]["text"].as_str().unwrap();
    assert!(regex::Regex::new(r"^ [0-9]{3}-[0-9]{4}$").unwrap().is_match(text), "{completion}");
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    let schema = json!({"type": "object", "required": ["name", "age"], "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}});
    let pet = s.post("/v1/completions", &json!({"prompt": "Tom the cat, aged 3, as JSON:", "structured_outputs": {"json": schema.to_string()},
        "max_tokens": 40, "temperature": 0}).to_string()).json();
    let v: Value = serde_json::from_str(pet["choices"][0]["text"].as_str().unwrap()).unwrap_or_else(|e| panic!("{e}: {pet}"));
    assert!(v["name"].is_string() && v["age"].is_i64(), "{v}");
    // llama.cpp's `json_schema` field: the same schema, the same output.
    let llama = s.post("/v1/completions", &json!({"prompt": "Tom the cat, aged 3, as JSON:", "json_schema": schema, "max_tokens": 40, "temperature": 0}).to_string()).json();
    assert_eq!(llama["choices"][0]["text"], pet["choices"][0]["text"], "{llama}");

    // Each problem names its field.
    let bad = [
        (json!({"structured_outputs": {"regex": "(a"}}), "structured_outputs.regex"),
        (json!({"structured_outputs": {"regex": 5}}), "structured_outputs.regex"),
        (json!({"structured_outputs": {"choice": "positive"}}), "structured_outputs.choice"),
        (json!({"structured_outputs": {"choice": []}}), "structured_outputs.choice"),
        (json!({"structured_outputs": {"choice": ["a"], "regex": "a"}}), "structured_outputs.regex"),
        (json!({"structured_outputs": {"structural_tag": "{}"}}), "structured_outputs.structural_tag"),
        (json!({"structured_outputs": {"choise": ["a"]}}), "structured_outputs.choise"),
        (json!({"structured_outputs": {"json": "{not json"}}), "structured_outputs.json"),
        (json!({"structured_outputs": ["a"]}), "structured_outputs"),
        (json!({"response_format": {"type": "json_object"}, "guided_choice": ["a"]}), "guided_choice"),
        (json!({"guided_grammar": "root ::= \"a\"", "guided_regex": "a"}), "guided_grammar"),
        (json!({"guided_choice": ["a"], "ignore_eos": true}), "ignore_eos"),
        (json!({"json_schema": {"type": "nonsense"}}), "json_schema"),
        (json!({"guided_regex": "a+", "tools": [{"type": "function", "function": {"name": "f"}}]}), "guided_regex"),
        (json!({"guided_choice": ["a"], "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"}), "tool_choice"),
    ];
    for (extra, param) in bad {
        let e = s.post("/v1/chat/completions", &sentiment(extra.clone())).error(400);
        assert_eq!(e["param"], param, "{extra}: {e}");
        assert!(e["message"].as_str().unwrap().contains(&format!("`{param}")) || param == "tool_choice", "{extra}: {e}");
    }
}

/// A GBNF grammar (`structured_outputs.grammar`, `guided_grammar`, llama.cpp's `grammar`) on the
/// real model: greedy, streamed and hot-sampled outputs are sentences of it, checked by the
/// `regex` crate (a regular grammar) and serde (llama.cpp's JSON grammar), not by the parser that
/// held them; a bad grammar is a 400 saying where it is wrong.
#[test]
fn a_gbnf_grammar_holds_the_output() {
    let s = server();
    let list = "root ::= item{3}\nitem ::= \"- \" [A-Za-z ]+ \"\\n\"";
    let body = |extra: Value| {
        let mut b = json!({"messages": [{"role": "user", "content": "Name three fruits as a dash list, one per line."}], "temperature": 0, "max_tokens": 40});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b.to_string()
    };
    let whole = s.post("/v1/chat/completions", &body(json!({"structured_outputs": {"grammar": list}}))).json();
    let content = whole["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(whole["choices"][0]["finish_reason"], "stop", "{whole}");
    let three = regex::Regex::new(r"^(- [A-Za-z ]+\n){3}$").unwrap();
    assert!(three.is_match(content), "{content:?}");
    let data = s.post("/v1/chat/completions", &body(json!({"guided_grammar": list, "stream": true}))).sse_data();
    assert_eq!(streamed_content(&data), content);
    // SGLang's names for a grammar and a regex.
    let sglang = s.post("/v1/chat/completions", &body(json!({"ebnf": list}))).json();
    assert_eq!(sglang["choices"][0]["message"]["content"], content);
    let sglang = s.post("/v1/chat/completions", &body(json!({"regex": r"(- [A-Za-z ]+\n){3}"}))).json();
    assert_eq!(sglang["choices"][0]["message"]["content"], content);
    let start = regex::Regex::new(r"^(- [A-Za-z ]+\n){0,2}(-( [A-Za-z ]*)?)?$").unwrap();
    let hot = s.post("/v1/chat/completions", &body(json!({"grammar": list, "temperature": 1.5, "seed": 4, "n": 4}))).json();
    for choice in hot["choices"].as_array().unwrap() {
        let content = choice["message"]["content"].as_str().unwrap();
        match choice["finish_reason"].as_str().unwrap() {
            "stop" => assert!(three.is_match(content), "{content:?}"),
            _ => assert!(start.is_match(content), "{content:?}"),
        }
    }

    // llama.cpp's JSON grammar on a completion: the output is an object serde reads.
    let json_gbnf = r#"root ::= object
value ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws
ws ::= | " " | "\n" [ \t]{0,20}"#;
    let pet = s.post("/v1/completions", &json!({"prompt": "Tom the cat, aged 3, as JSON:", "grammar": json_gbnf, "max_tokens": 60, "temperature": 0}).to_string()).json();
    assert_eq!(pet["choices"][0]["finish_reason"], "stop", "{pet}");
    let v: Value = serde_json::from_str(pet["choices"][0]["text"].as_str().unwrap()).unwrap_or_else(|e| panic!("{e}: {pet}"));
    assert!(v.is_object(), "{v}");

    for (extra, param, says) in [
        (json!({"structured_outputs": {"grammar": "root ::= e\ne ::= e \"+\" [0-9] | [0-9]"}}), "structured_outputs.grammar", "rule `e` is left-recursive"),
        (json!({"guided_grammar": "root ::= \"a"}), "guided_grammar", "line 1 column 12"),
        (json!({"grammar": 5}), "grammar", "must be a string"),
        (json!({"grammar": "root ::= x"}), "grammar", "rule `x` is used but not defined"),
        (json!({"grammar": "root ::= \"a\"", "guided_choice": ["a"]}), "grammar", "cannot be combined"),
    ] {
        let e = s.post("/v1/chat/completions", &body(extra.clone())).error(400);
        assert_eq!(e["param"], param, "{extra}: {e}");
        assert!(e["message"].as_str().unwrap().contains(says), "{extra}: {e}");
    }
}

/// `tools` beside a `json_schema` under `tool_choice: "auto"` (what agent frameworks send each
/// turn): each output is calls whose arguments fit the tool's parameters, or the answer in the
/// schema, never both. The test model left alone writes a call as a fenced or bare JSON block,
/// never `<tool_call>`, so greedy it always answers; sampled hot, some outputs call (two of
/// these sixteen, by their seeds), and each is checked here by hand.
#[test]
fn tools_beside_a_schema_give_calls_or_the_answer() {
    let s = server();
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city",
        "parameters": {"type": "object", "additionalProperties": false, "required": ["city"],
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}}}}}]);
    let schema = json!({"type": "object", "additionalProperties": false, "required": ["answer"], "properties": {"answer": {"type": "string"}}});
    let body = |messages: Value, extra: Value| {
        let mut b = json!({"messages": messages, "tools": tools, "tool_choice": "auto",
            "response_format": {"type": "json_schema", "json_schema": {"name": "reply", "strict": true, "schema": schema}}, "temperature": 0, "max_tokens": 80});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b.to_string()
    };
    let answer = |content: &str| serde_json::from_str::<serde_json::Map<String, Value>>(content).is_ok_and(|v| v.len() == 1 && v["answer"].is_string());
    let fits = |arguments: &str| {
        let v: serde_json::Map<String, Value> = serde_json::from_str(arguments).unwrap_or_else(|e| panic!("{e}: {arguments}"));
        v["city"].is_string() && v.get("unit").is_none_or(|u| u == "celsius" || u == "fahrenheit") && v.keys().all(|k| k == "city" || k == "unit")
    };

    // (b) A question it answers: content in the schema, no calls; streamed alike.
    let sum = json!([{"role": "user", "content": "What is 2 + 2?"}]);
    let whole = s.post("/v1/chat/completions", &body(sum.clone(), json!({}))).json();
    let choice = &whole["choices"][0];
    let content = choice["message"]["content"].as_str().unwrap_or_else(|| panic!("{whole}"));
    assert_eq!(choice["finish_reason"], "stop", "{whole}");
    assert!(answer(content) && choice["message"].get("tool_calls").is_none_or(Value::is_null), "{whole}");
    let data = s.post("/v1/chat/completions", &body(sum.clone(), json!({"stream": true}))).sse_data();
    assert_eq!(streamed_content(&data), content);
    // `tool_choice` left out is `"auto"` too, and `json_object` holds the answer to an object.
    let mut object = serde_json::from_str::<Value>(&body(sum, json!({"response_format": {"type": "json_object"}}))).unwrap();
    object.as_object_mut().unwrap().remove("tool_choice");
    // (Here the model writes its call as a bare `{"name": ..., "arguments": ...}` object, which
    // the tool parser reads back as a call, as it does without a format: its arguments are
    // held only to be an object.)
    let whole = s.post("/v1/chat/completions", &object.to_string()).json();
    let message = &whole["choices"][0]["message"];
    match message["content"].as_str() {
        Some(content) => assert!(serde_json::from_str::<serde_json::Map<String, Value>>(content).is_ok(), "{whole}"),
        None => assert_eq!(message["tool_calls"][0]["function"]["name"], "get_weather", "{whole}"),
    }

    // (a) Told to call the tool: calls (sampled) that fit, or an answer.
    let weather = json!([{"role": "system", "content": "You are a weather assistant. Always call get_weather before answering a question about weather."},
        {"role": "user", "content": "What's the weather in Paris?"}]);
    let hot = s.post("/v1/chat/completions", &body(weather, json!({"temperature": 1.5, "top_p": 1, "seed": 1, "n": 16}))).json();
    let mut calls = 0;
    for choice in hot["choices"].as_array().unwrap() {
        let message = &choice["message"];
        match (choice["finish_reason"].as_str().unwrap(), message["content"].as_str()) {
            ("tool_calls", None) => {
                for call in message["tool_calls"].as_array().unwrap() {
                    assert_eq!(call["function"]["name"], "get_weather", "{choice}");
                    assert!(fits(call["function"]["arguments"].as_str().unwrap()), "{choice}");
                    calls += 1;
                }
            }
            ("stop", Some(content)) => assert!(answer(content) && message.get("tool_calls").is_none_or(Value::is_null), "{choice}"),
            // Cut at `max_tokens`: the start of calls (the model went on to another) or of the answer.
            ("length", Some(content)) => assert!(content.starts_with("<tool_call>\n{") || content.starts_with('{'), "{choice}"),
            _ => panic!("{choice}"),
        }
    }
    assert!(calls > 0, "no call among {hot}");

    // A forced choice beside the schema is still refused: the output is held to the calls.
    let e = s.post("/v1/chat/completions", &body(json!([{"role": "user", "content": "hi"}]), json!({"tool_choice": "required"}))).error(400);
    assert_eq!(e["param"], "tool_choice");
}

/// A `strict` function under `tool_choice: "auto"`: the output is free text, but a call, tagged
/// or (as this model writes them) bare, is held to the function's parameters, in chat (whole,
/// streamed, sampled) and in the Responses API.
#[test]
fn a_strict_function_holds_its_calls_under_auto() {
    let s = server();
    let parameters = json!({"type": "object", "additionalProperties": false, "required": ["station", "unit"],
        "properties": {"station": {"type": "string", "pattern": "^[A-Z]{4}$"}, "unit": {"enum": ["kelvin"]}}});
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather at a weather station", "strict": true, "parameters": parameters}}]);
    let fits = |arguments: &str| {
        let v: serde_json::Map<String, Value> = serde_json::from_str(arguments).unwrap_or_else(|e| panic!("{e}: {arguments}"));
        let station = v.get("station").and_then(Value::as_str).unwrap_or_default();
        v.len() == 2 && v["unit"] == "kelvin" && station.len() == 4 && station.bytes().all(|b| b.is_ascii_uppercase())
    };
    // One earlier call and its answer; left alone, the model's next call names the station
    // "BER", which the pattern does not allow.
    let arguments = r#"{"station": "LFPG", "unit": "kelvin"}"#;
    let messages = json!([{"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "280 K"},
        {"role": "assistant", "content": "It is 280 K at Paris (LFPG)."},
        {"role": "user", "content": "Call get_weather for Berlin."}]);
    let body = |extra: Value| {
        let mut b = json!({"messages": messages, "tools": tools, "temperature": 0, "max_tokens": 60});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b.to_string()
    };
    let whole = s.post("/v1/chat/completions", &body(json!({}))).json();
    let choice = &whole["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{whole}");
    let call = &choice["message"]["tool_calls"][0]["function"];
    assert_eq!(call["name"], "get_weather");
    assert!(fits(call["arguments"].as_str().unwrap()), "{whole}");
    let data = s.post("/v1/chat/completions", &body(json!({"stream": true}))).sse_data();
    let streamed: String = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str().map(str::to_string))
        .collect();
    assert_eq!(streamed, call["arguments"].as_str().unwrap(), "streamed alike");

    // Sampled: text, or calls that fit.
    let hot = s.post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "What's 2+2?"}], "tools": tools, "temperature": 1.0, "seed": 7, "n": 8, "max_tokens": 60}).to_string()).json();
    for choice in hot["choices"].as_array().unwrap() {
        for call in choice["message"]["tool_calls"].as_array().into_iter().flatten() {
            assert!(fits(call["function"]["arguments"].as_str().unwrap()), "{choice}");
        }
    }

    // JSON that names no tool stays text (the model echoes an object shaped like a call).
    let echo = json!([{"role": "system", "content": "You output raw JSON data objects (never code fences). Tools are only for weather questions."},
        {"role": "user", "content": "{\"task\": \"echo\", \"payload\": {\"a\": 1}} -- echo the payload object exactly."}]);
    let whole = s.post("/v1/chat/completions", &json!({"messages": echo, "tools": tools, "temperature": 0, "max_tokens": 40}).to_string()).json();
    let message = &whole["choices"][0]["message"];
    assert!(message["tool_calls"].is_null() && message["content"].as_str().unwrap().starts_with('{'), "{whole}");
    // Beside a JSON format the answer is held, not the call: a call-shaped answer is a call
    // only if it fits.
    let paris = json!([{"role": "user", "content": "What's the weather in Paris?"}]);
    for format in [json!({"type": "json_object"}), json!({"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object", "required": ["name", "arguments"], "properties": {"name": {"type": "string"}, "arguments": {"type": "object", "properties": {"station": {"type": "string"}}}}}}})] {
        let whole = s.post("/v1/chat/completions", &json!({"messages": paris, "tools": tools, "response_format": format, "temperature": 0, "max_tokens": 60}).to_string()).json();
        for call in whole["choices"][0]["message"]["tool_calls"].as_array().into_iter().flatten() {
            assert!(fits(call["function"]["arguments"].as_str().unwrap()), "{whole}");
        }
    }

    // The Responses API passes `strict` on.
    let input = json!([{"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": arguments},
        {"type": "function_call_output", "call_id": "call_1", "output": "280 K"},
        {"role": "assistant", "content": "It is 280 K at Paris (LFPG)."},
        {"role": "user", "content": "Call get_weather for Berlin."}]);
    let flat = json!([{"type": "function", "name": "get_weather", "description": "Get the current weather at a weather station", "strict": true, "parameters": parameters}]);
    let response = s.post("/v1/responses", &json!({"input": input, "tools": flat, "temperature": 0, "max_output_tokens": 60, "store": false}).to_string()).json();
    let call = response["output"].as_array().unwrap().iter().find(|o| o["type"] == "function_call").unwrap_or_else(|| panic!("{response}"));
    assert!(fits(call["arguments"].as_str().unwrap()), "{response}");
}
