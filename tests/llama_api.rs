//! llama.cpp's own HTTP API (`/completion`, `/infill`) against a real server on a loopback
//! port with the real test model.

mod common;

use std::sync::OnceLock;

use common::server::{start, ServerConfig, TestServer};
use qwen_serve::engine::EngineConfig;
use serde_json::{json, Value};

fn server() -> &'static TestServer {
    static S: OnceLock<TestServer> = OnceLock::new();
    S.get_or_init(|| start(ServerConfig::default()))
}

/// llama.cpp's `/infill`, as llama.vscode calls it: the repository's other files before the
/// prefix in llama.cpp's layout (llama-server 0.3.36 on the same file and request, greedy,
/// wrote the same 16 tokens and counted the same prompt tokens, with and without the extra
/// file), its response shape, its SSE chunks, and its prompt-only warm-up (`n_predict` 0).
#[test]
fn llama_cpp_infill() {
    let s = server();
    let body = |extra: Value| {
        let mut b = json!({"input_prefix": "def greet(name):\n", "prompt": "    ", "input_suffix": "\n    return message\n", "n_predict": 6, "top_k": 1});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b.to_string()
    };
    let r = s.post("/infill", &body(json!({}))).json();
    assert!(r["content"].as_str().unwrap().starts_with("return f\"Hello, {"), "{r}");
    assert_eq!((r["stop"].as_bool(), r["stop_type"].as_str(), r["tokens_predicted"].as_u64()), (Some(true), Some("limit"), Some(6)), "{r}");
    assert!(r["timings"]["predicted_n"] == 6 && r["timings"]["predicted_per_second"].is_number(), "{r}");
    // <|repo_name|>myproject\n<|file_sep|>filename\n<|fim_prefix|>...: the extra file adds its
    // separator, name and text.
    let count = |t: &str| s.post("/tokenize", &json!({"prompt": t}).to_string()).json()["count"].as_u64().unwrap();
    let base = r["tokens_evaluated"].as_u64().unwrap();
    assert_eq!(base, count("myproject\n") + count("filename\n") + count("def greet(name):\n") + count("    ") + count("\n    return message\n") + 5);
    let extra = json!({"input_extra": [{"filename": "util.py", "text": "message = 'hi'\n"}]});
    let with_extra = s.post("/infill", &body(extra.clone())).json();
    assert_eq!(with_extra["tokens_evaluated"].as_u64().unwrap(), base + 1 + count("util.py\n") + count("message = 'hi'\n"));
    // The other file's quotes carry over.
    assert!(with_extra["content"].as_str().unwrap().starts_with("return f'Hello, {"), "{with_extra}");
    let streamed = s.post("/infill", &body(json!({"stream": true}))).sse_data();
    let chunks: Vec<Value> = streamed.iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let last = chunks.last().unwrap();
    assert!(last["stop"].as_bool().unwrap() && chunks[..chunks.len() - 1].iter().all(|c| c["stop"] == false));
    let joined: String = chunks.iter().map(|c| c["content"].as_str().unwrap_or("")).collect();
    assert_eq!(joined, r["content"].as_str().unwrap());
    let e = s.post("/infill", &json!({"input_prefix": "x"}).to_string()).error(422);
    assert!(e["message"].as_str().unwrap().contains("input_suffix"), "{e}");
    let e = s.post("/infill", &body(json!({"n_predict": -2}))).error(400);
    assert_eq!(e["param"], "n_predict");

    // llama.vscode's warm-up request: `n_predict` 0 computes the prompt and writes nothing; the
    // request that follows with the same context finds it in the prompt cache.
    let file = json!([{"filename": "warm.py", "text": "def warm_up(cache):\n    cache.fill('the ring buffer of recently seen chunks')\n    return cache\n"}]);
    let warm = s.post("/infill", &body(json!({"n_predict": 0, "input_extra": file}))).json();
    assert_eq!((warm["content"].as_str(), warm["tokens_predicted"].as_u64(), warm["stop_type"].as_str()), (Some(""), Some(0), Some("limit")), "{warm}");
    let after = s.post("/infill", &body(json!({"input_extra": file}))).json();
    assert_eq!(after["tokens_evaluated"], warm["tokens_evaluated"], "{after}");
    assert!(after["tokens_cached"].as_u64().unwrap() >= 32 && after["tokens_predicted"] == 6, "{warm} then {after}");
}

/// `/infill` cuts a prompt that does not fit instead of refusing it, as llama-server does (the
/// prefix keeps its end, the suffix its start, the other files what is left), and leaves room
/// for `n_predict` tokens, or a quarter of the context where it is not set.
#[test]
fn infill_cuts_what_does_not_fit() {
    let short = start(ServerConfig { engine: EngineConfig { max_model_len: Some(256), ..Default::default() }, ..Default::default() });
    let filler = "# a line of the file that says little\n".repeat(60);
    let body = |n_predict: Value| {
        json!({"input_prefix": format!("{filler}def greet(name):\n"), "prompt": "    ", "input_suffix": format!("\n    return message\n{filler}"),
               "input_extra": [{"filename": "util.py", "text": filler}], "n_predict": n_predict, "top_k": 1})
        .to_string()
    };
    let r = short.post("/infill", &body(json!(6))).json();
    assert_eq!((r["tokens_evaluated"].as_u64(), r["tokens_predicted"].as_u64()), (Some(250), Some(6)), "{r}");
    // The cursor's surroundings survive the cut: the middle still greets.
    assert!(r["content"].as_str().unwrap().starts_with("return \"Hello, "), "{r}");
    let r = short.post("/infill", &body(Value::Null)).json();
    assert_eq!(r["tokens_evaluated"].as_u64(), Some(192), "{r}");
    let e = short.post("/infill", &body(json!(256))).error(400);
    assert_eq!(e["param"], "n_predict");
}

/// llama.cpp's `/completion`: its prompt forms (text, token ids, both mixed), response shape,
/// `n_probs` as `completion_probabilities`, SSE chunks, `grammar`, `n_predict` 0, and errors
/// naming the field.
#[test]
fn llama_cpp_completion() {
    let s = server();
    let text = "The capital of France is";
    let body = |extra: Value| {
        let mut b = json!({"prompt": text, "n_predict": 8, "top_k": 1});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b.to_string()
    };
    let r = s.post("/completion", &body(json!({}))).json();
    // Samplers this server lacks, at their "off" values (as llama.cpp's web UI sends them).
    let off = s.post("/completion", &body(json!({"mirostat": 0, "typical_p": 1.0, "dynatemp_range": 0, "xtc_probability": 0, "dry_multiplier": 0, "top_n_sigma": -1}))).json();
    assert_eq!(off["content"], r["content"]);
    // As `curl -d` sends it (a form's content type): read as JSON, as llama-server reads it.
    let form = s.post_with("/completion", &body(json!({})), &[("Content-Type", "application/x-www-form-urlencoded")]).json();
    assert_eq!(form["content"], r["content"]);
    let openai = s.post("/v1/completions", &json!({"prompt": text, "max_tokens": 8, "temperature": 0}).to_string()).json();
    assert_eq!(r["content"], openai["choices"][0]["text"], "top-k 1 is greedy: {r}");
    assert_eq!((r["stop"].as_bool(), r["stop_type"].as_str(), r["tokens_predicted"].as_u64()), (Some(true), Some("limit"), Some(8)), "{r}");
    let ids = s.post("/tokenize", &json!({"prompt": text}).to_string()).json()["tokens"].clone();
    assert_eq!(r["tokens_evaluated"], ids.as_array().unwrap().len(), "{r}");
    let by_ids = s.post("/completion", &body(json!({"prompt": ids, "return_tokens": true}))).json();
    assert_eq!(by_ids["content"], r["content"]);
    let written = s.post("/detokenize", &json!({"tokens": by_ids["tokens"]}).to_string()).json();
    assert_eq!(written["prompt"], r["content"], "{by_ids}");
    // Mixed: the text, then token ids, in order.
    let tail = s.post("/tokenize", &json!({"prompt": " Paris"}).to_string()).json()["tokens"].clone();
    let mut mixed = vec![json!(text)];
    mixed.extend(tail.as_array().unwrap().iter().cloned());
    let m = s.post("/completion", &body(json!({"prompt": mixed}))).json();
    assert_eq!(m["tokens_evaluated"].as_u64().unwrap(), ids.as_array().unwrap().len() as u64 + tail.as_array().unwrap().len() as u64, "{m}");

    // n_probs: each step's token and the 3 likeliest, the drawn one first under top-k 1.
    let p = s.post("/completion", &body(json!({"n_probs": 3}))).json();
    assert_eq!(p["content"], r["content"]);
    let steps = p["completion_probabilities"].as_array().unwrap();
    assert_eq!(steps.len(), 8, "{p}");
    let joined: String = steps.iter().map(|st| st["token"].as_str().unwrap()).collect();
    assert_eq!(joined, r["content"].as_str().unwrap());
    let bytes: Vec<u8> = steps.iter().flat_map(|st| st["bytes"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8)).collect();
    assert_eq!(bytes, r["content"].as_str().unwrap().as_bytes());
    for st in steps {
        let top = st["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3, "{st}");
        assert_eq!(top[0]["id"], st["id"], "{st}");
        assert!(st["logprob"].as_f64().unwrap() <= 0.0 && top[1]["logprob"].as_f64() <= top[0]["logprob"].as_f64(), "{st}");
    }
    let streamed = s.post("/completion", &body(json!({"stream": true, "n_probs": 2}))).sse_data();
    let chunks: Vec<Value> = streamed.iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let (last, steps) = chunks.split_last().unwrap();
    assert!(last["stop"].as_bool().unwrap() && steps.iter().all(|c| c["stop"] == false && c["completion_probabilities"].as_array().unwrap().len() == 1));
    assert!(steps.iter().enumerate().all(|(i, c)| c["tokens"].as_array().unwrap().len() == 1 && c["tokens_predicted"] == i + 1), "{chunks:?}");
    let joined: String = chunks.iter().map(|c| c["content"].as_str().unwrap_or("")).collect();
    assert_eq!(joined, r["content"].as_str().unwrap());

    // `/completions` is the same route, as on llama-server.
    assert_eq!(s.post("/completions", &body(json!({}))).json()["content"], r["content"]);
    // Seed -1 (llama.cpp's default) draws a fresh seed each time; a seed of 0 or more repeats.
    let draw = |seed: i64| s.post("/completion", &body(json!({"seed": seed, "top_k": 0, "temperature": 1.5, "n_predict": 16}))).json()["content"].clone();
    let random: Vec<Value> = (0..3).map(|_| draw(-1)).collect();
    assert!(random.iter().any(|c| *c != random[0]), "{random:?}");
    assert_eq!(draw(7), draw(7));
    // `n_predict` 0 evaluates the prompt and writes nothing (whatever else is asked), whole or
    // streamed (one chunk, the reply).
    for extra in [json!({"n_predict": 0}), json!({"n_predict": 0, "n_probs": 2, "grammar": "root ::= \"x\""})] {
        let z = s.post("/completion", &body(extra.clone())).json();
        assert_eq!((z["content"].as_str(), z["tokens_predicted"].as_u64(), z["stop_type"].as_str()), (Some(""), Some(0), Some("limit")), "{extra}: {z}");
        assert_eq!(z["tokens_evaluated"], r["tokens_evaluated"], "{z}");
    }
    let chunks = s.post("/completion", &body(json!({"n_predict": 0, "stream": true}))).sse_data();
    let last: Value = serde_json::from_str(chunks.last().unwrap()).unwrap();
    assert_eq!((chunks.len(), last["stop"].as_bool(), last["content"].as_str()), (1, Some(true), Some("")), "{chunks:?}");
    let g = s.post("/completion", &json!({"prompt": "Is Paris in France? Answer:", "grammar": "root ::= \" yes\" | \" no\"", "temperature": 1.5, "seed": 1}).to_string()).json();
    assert!([" yes", " no"].contains(&g["content"].as_str().unwrap()) && g["stop_type"] == "eos", "{g}");

    for (extra, param) in [
        (json!({"prompt": 5}), "prompt"),
        (json!({"prompt": ["a", "b"]}), "prompt"),
        (json!({"prompt": [1, 999999]}), "prompt"),
        (json!({"prompt": ""}), "prompt"),
        (json!({"n_probs": 50}), "n_probs"),
        (json!({"repeat_penalty": 5}), "repeat_penalty"),
        (json!({"mirostat": 2}), "mirostat"),
        (json!({"typical_p": 0.5}), "typical_p"),
        (json!({"grammar": "root ::= x"}), "grammar"),
        (json!({"grammar": "root ::= \"a\"", "ignore_eos": true}), "ignore_eos"),
        (json!({"n_predict": -2}), "n_predict"),
    ] {
        let e = s.post("/completion", &body(extra.clone())).error(400);
        assert_eq!(e["param"], param, "{extra}: {e}");
        assert!(e["message"].as_str().unwrap().contains(&format!("`{param}")), "{extra}: {e}");
    }
}

/// llama.cpp's sampling as llama-server applies it: `logit_bias` in its forms (ids, texts,
/// `false` to ban), the penalties over the last `repeat_last_n` tokens of prompt and output,
/// and `samplers` turning steps off.
#[test]
fn llama_cpp_sampling_fields() {
    let s = server();
    let first = |prompt: &str, extra: Value| {
        let mut b = json!({"prompt": prompt, "n_predict": 1, "temperature": 0, "return_tokens": true});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let r = s.post("/completion", &b.to_string()).json();
        (r["tokens"][0].as_u64().unwrap(), r["content"].as_str().unwrap().to_string())
    };
    let color = "My favorite color is";
    let (top, text) = first(color, json!({}));
    // Banned by id (pair or object) or by its text: the greedy token changes; +100 forces one.
    let (other, _) = first(color, json!({"logit_bias": [[top, false]]}));
    assert_ne!(other, top);
    assert_eq!(first(color, json!({"logit_bias": {top.to_string(): false}})).0, other);
    assert_eq!(first(color, json!({"logit_bias": [[text, false]]})).0, other, "{text:?}");
    assert_eq!(first(color, json!({"logit_bias": [[other, 100]]})).0, other);
    let drawn: Vec<u64> = (0..12).map(|seed| first(color, json!({"logit_bias": [[top, false]], "temperature": 1.0, "top_k": 0, "seed": seed})).0).collect();
    assert!(!drawn.contains(&top), "{drawn:?}");

    // The penalty counts the prompt's last tokens: over the whole prompt it turns the greedy
    // token away from the one the prompt just said; a window of 0 (or one too short to hold
    // that token) leaves the answer unpenalised.
    let said = format!("I said{text}. {color}");
    let (plain, _) = first(&said, json!({}));
    assert_eq!(plain, top, "the test prompt repeats the greedy token");
    let penalised = |extra: Value| {
        let mut e = json!({"repeat_penalty": 1.5});
        e.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        first(&said, e).0
    };
    assert_ne!(penalised(json!({})), plain, "the default window of 64 holds the whole prompt");
    assert_eq!(penalised(json!({"repeat_last_n": -1})), penalised(json!({})));
    assert_eq!(penalised(json!({"repeat_last_n": 0})), plain);
    assert_eq!(penalised(json!({"repeat_last_n": 3})), plain);
    // Without `penalties` in the chain there is no penalty; without `top_k`, top-k 1 is off.
    assert_eq!(penalised(json!({"samplers": ["top_k", "temperature"]})), plain);
    let spread = |samplers: Value| {
        (0..16).map(|seed| first(color, json!({"temperature": 1.0, "top_k": 1, "samplers": samplers, "seed": seed})).0).collect::<std::collections::HashSet<_>>().len()
    };
    assert_eq!(spread(json!(["top_k", "temperature"])), 1);
    assert!(spread(json!(["temperature"])) > 1);

    for (extra, param) in [
        (json!({"logit_bias": [[999999, 1]]}), "logit_bias"),
        (json!({"logit_bias": [[1, true]]}), "logit_bias"),
        (json!({"repeat_last_n": -2}), "repeat_last_n"),
        (json!({"samplers": ["top_k", "temperature", "top_p"]}), "samplers"),
        (json!({"samplers": ["mirostat"]}), "samplers"),
    ] {
        let mut b = json!({"prompt": color, "n_predict": 1});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let e = s.post("/completion", &b.to_string()).error(400);
        assert_eq!(e["param"], param, "{extra}: {e}");
    }
}
