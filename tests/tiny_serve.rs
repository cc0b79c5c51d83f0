//! The tiny MoE checkpoints served over HTTP end to end (loader, engine, sampler, API) with a
//! word-level tokenizer whose token `tN` is id N: prompt logprobs against transformers' logits,
//! and concurrent requests through the continuous-batching engine.

mod common;

use common::server::{start, ServerConfig};
use common::{read_json, tiny_model_folder as model_folder};

fn log_softmax(row: &[f64]) -> Vec<f64> {
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
    row.iter().map(|x| x - lse).collect()
}

#[test]
fn moe_models_serve_transformers_logprobs_and_concurrent_requests() {
    for name in ["tiny-qwen3-moe", "tiny-qwen2-moe"] {
        let dir = tempfile::tempdir().unwrap();
        model_folder(name, dir.path());
        let server = start(ServerConfig { model: Some(dir.path().to_path_buf()), ..Default::default() });
        let reference = read_json(&format!("{name}/reference.json"));
        let ids: Vec<u64> = reference["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        let logits: Vec<Vec<f64>> =
            reference["logits"].as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect();

        // Prompt logprobs (echo) and one greedy token.
        let body = serde_json::json!({"prompt": ids, "max_tokens": 1, "temperature": 0, "echo": true, "logprobs": 1, "ignore_eos": true});
        let reply = server.post("/v1/completions", &body.to_string());
        assert_eq!(reply.status, 200, "{name}: {}", reply.body);
        let lp = &reply.json()["choices"][0]["logprobs"];
        let tokens: Vec<u64> = lp["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()[1..].parse().unwrap()).collect();
        assert_eq!(tokens[..ids.len()], ids[..], "{name}: echoed prompt");
        let got: Vec<Option<f64>> = lp["token_logprobs"].as_array().unwrap().iter().map(|v| v.as_f64()).collect();
        assert_eq!(got.len(), ids.len() + 1);
        assert!(got[0].is_none(), "{name}: the first prompt token has no logprob");
        for pos in 1..=ids.len() {
            let want = log_softmax(&logits[pos - 1])[tokens[pos] as usize];
            let got = got[pos].unwrap();
            assert!((got - want).abs() < 1e-3, "{name}: logprob of token {pos}: {got} vs transformers' {want}");
        }
        let last = &logits[ids.len() - 1];
        let argmax = (0..last.len()).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap() as u64;
        assert_eq!(tokens[ids.len()], argmax, "{name}: the greedy token is transformers' argmax");

        // No fill-in-the-middle tokens in this vocabulary: a suffix is a 400 that says so.
        let e = server.post("/v1/completions", &serde_json::json!({"prompt": "t1 t2", "suffix": "t3"}).to_string()).error(400);
        assert_eq!(e["param"], "suffix", "{name}: {e}");
        assert!(e["message"].as_str().unwrap().contains("<|fim_prefix|>"), "{name}: {e}");

        // Eight concurrent requests, each to its full length.
        let handles: Vec<_> = (0..8u64)
            .map(|i| {
                let base = server.base.clone();
                std::thread::spawn(move || {
                    let prompt: Vec<u64> = (0..5 + i).map(|t| (t * 37 + i * 11) % 512).collect();
                    let body = serde_json::json!({"prompt": prompt, "max_tokens": 12, "temperature": 0.8, "seed": i, "ignore_eos": true});
                    let reply = ureq::post(&format!("{base}/v1/completions")).set("Content-Type", "application/json").send_string(&body.to_string()).unwrap();
                    serde_json::from_str::<serde_json::Value>(&reply.into_string().unwrap()).unwrap()
                })
            })
            .collect();
        for h in handles {
            let reply = h.join().unwrap();
            assert_eq!(reply["usage"]["completion_tokens"], 12, "{name}: {reply}");
            assert_eq!(reply["choices"][0]["finish_reason"], "length", "{name}: {reply}");
        }
    }
}

/// A model folder's generation_config.json gives the requests' unset sampling fields, as vLLM's
/// `--generation-config auto` does: top_k 1 makes a request with no sampling fields greedy, and
/// max_new_tokens caps its length; a request's own fields win. `--generation-config vllm` (and a
/// GGUF file) keep OpenAI's defaults.
#[test]
fn generation_config_sets_the_sampling_defaults() {
    let dir = tempfile::tempdir().unwrap();
    model_folder("tiny-qwen3-moe", dir.path());
    let config = serde_json::json!({"eos_token_id": 1, "temperature": 0.9, "top_k": 1, "max_new_tokens": 5, "top_p": 7});
    std::fs::write(dir.path().join("generation_config.json"), config.to_string()).unwrap();
    let path = dir.path().to_str().unwrap();
    let defaults = |generation_config| qwen_serve::loader::load(path, &qwen_serve::loader::LoadOptions { generation_config, ..Default::default() }).unwrap().sampling_defaults;
    let from_config = defaults(true);
    assert_eq!((from_config.temperature, from_config.top_k, from_config.max_tokens, from_config.top_p), (0.9, 1, Some(5), 1.0), "top_p 7 is no top_p");
    assert_eq!(defaults(false), Default::default());
    assert_eq!(qwen_serve::loader::load(common::test_gguf().to_str().unwrap(), &Default::default()).unwrap().sampling_defaults, Default::default());

    let server = start(ServerConfig { model: Some(dir.path().to_path_buf()), ..Default::default() });
    let complete = |body: serde_json::Value| {
        let reply = server.post("/v1/completions", &body.to_string());
        assert_eq!(reply.status, 200, "{}", reply.body);
        let json = reply.json();
        (json["choices"][0]["text"].as_str().unwrap().to_string(), json["usage"]["completion_tokens"].as_u64().unwrap())
    };
    let prompt = "t5 t9 t200 t17";
    let greedy = complete(serde_json::json!({"prompt": prompt, "max_tokens": 5, "temperature": 0, "ignore_eos": true}));
    assert_eq!(greedy.1, 5);
    for seed in 0..3 {
        // No max_tokens: min(16, 5); no temperature or top_k: 0.9 over the top 1, the argmax.
        assert_eq!(complete(serde_json::json!({"prompt": prompt, "seed": seed, "ignore_eos": true})), greedy, "seed {seed}");
    }
    let longer = complete(serde_json::json!({"prompt": prompt, "max_tokens": 9, "ignore_eos": true}));
    assert_eq!(longer.1, 9, "the request's max_tokens wins");
    assert!(longer.0.starts_with(&greedy.0), "still top_k 1: {longer:?} vs {greedy:?}");
    // top_k -1 turns the model's top_k off: over 30 seeded draws of 5 tokens the texts vary.
    let texts: std::collections::HashSet<String> =
        (0..30).map(|seed| complete(serde_json::json!({"prompt": prompt, "top_k": -1, "temperature": 1.5, "seed": seed, "ignore_eos": true})).0).collect();
    assert!(texts.len() > 1, "{texts:?}");
}
