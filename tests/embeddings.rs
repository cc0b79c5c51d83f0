//! `POST /v1/embeddings` end to end. On the tiny Qwen3 fixture, saved the way Qwen3-Embedding
//! checkpoints are (the bare model: `layers.0...`, no head, tied embeddings), the returned
//! state times the embedding matrix must give transformers' logits for the same tokens; on the
//! real model, the request options and every refusal.

mod common;

use std::collections::HashMap;
use std::path::Path;

use base64::Engine as _;
use common::server::{start, ServerConfig, TestServer};
use common::{fixture, read_json, tiny_model_folder};
use safetensors::SafeTensors;
use serde_json::{json, Value};

/// The tiny Qwen3 fixture as an embedding checkpoint: every `model.` name bare, the head gone.
fn bare_model_folder(dir: &Path) -> Vec<Vec<f32>> {
    tiny_model_folder("tiny-qwen3", dir);
    let bytes = std::fs::read(fixture("tiny-qwen3").join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        if name == "lm_head.weight" {
            continue;
        }
        tensors.insert(name.strip_prefix("model.").unwrap_or(&name).to_string(), view);
    }
    assert!(tensors.contains_key("layers.0.self_attn.q_proj.weight") && tensors.contains_key("embed_tokens.weight"));
    safetensors::serialize_to_file(&tensors, None, &dir.join("model.safetensors")).unwrap();
    let embed = &tensors["embed_tokens.weight"];
    assert_eq!(embed.dtype(), safetensors::Dtype::F32);
    let values: Vec<f32> = embed.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    values.chunks(embed.shape()[1]).map(<[f32]>::to_vec).collect()
}

fn embeddings(server: &TestServer, body: Value) -> Value {
    let reply = server.post("/v1/embeddings", &body.to_string());
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

fn vectors(reply: &Value) -> Vec<Vec<f32>> {
    reply["data"].as_array().unwrap().iter().map(|d| d["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()).collect()
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt()
}

#[test]
fn embeddings_of_a_bare_qwen3_checkpoint_give_transformers_logits() {
    let dir = tempfile::tempdir().unwrap();
    let embed = bare_model_folder(dir.path());
    let server = start(ServerConfig { model: Some(dir.path().to_path_buf()), ..Default::default() });
    let reference = read_json("tiny-qwen3/reference.json");
    let ids: Vec<u32> = common::ids(&reference["input_ids"]);
    let logits: Vec<Vec<f64>> = reference["logits"].as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect();
    let lens = [1, 5, 13, ids.len()];
    let inputs: Vec<&[u32]> = lens.iter().map(|&n| &ids[..n]).collect();
    let raw = embeddings(&server, json!({"input": inputs, "normalize": false}));
    assert_eq!(raw["object"], "list");
    assert_eq!(raw["usage"]["prompt_tokens"], lens.iter().sum::<usize>());
    assert_eq!(raw["usage"]["total_tokens"], lens.iter().sum::<usize>());
    for (i, (state, &n)) in vectors(&raw).iter().zip(&lens).enumerate() {
        assert_eq!(raw["data"][i]["index"], i);
        assert_eq!(raw["data"][i]["object"], "embedding");
        assert_eq!(state.len(), 64);
        // Tied: logits are the state against each token's embedding.
        for (token, row) in embed.iter().enumerate() {
            let got: f64 = state.iter().zip(row).map(|(&h, &e)| f64::from(h) * f64::from(e)).sum();
            let want = logits[n - 1][token];
            assert!((got - want).abs() < 1e-3, "{n} tokens, token {token}: {got} vs transformers' {want}");
        }
    }
    // Normalised by default; the same direction.
    let unit = vectors(&embeddings(&server, json!({"input": inputs})));
    for (u, r) in unit.iter().zip(vectors(&raw)) {
        assert!((norm(u) - 1.0).abs() < 1e-5);
        let scale = norm(&r);
        assert!(u.iter().zip(&r).all(|(a, b)| (f64::from(*a) - f64::from(*b) / scale).abs() < 1e-5));
    }
    // Text through the tokenizer is its tokens.
    let text: Vec<String> = ids[..5].iter().map(|i| format!("t{i}")).collect();
    let from_text = vectors(&embeddings(&server, json!({"input": text.join(" ")})));
    assert!(from_text[0].iter().zip(&unit[1]).all(|(a, b)| (a - b).abs() < 1e-5));
    // Matryoshka: the first values, renormalised; base64: the same floats as bytes.
    let short = embeddings(&server, json!({"input": [inputs[2]], "dimensions": 16, "encoding_format": "base64"}));
    let bytes = base64::engine::general_purpose::STANDARD.decode(short["data"][0]["embedding"].as_str().unwrap()).unwrap();
    let short: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(short.len(), 16);
    assert!((norm(&short) - 1.0).abs() < 1e-5);
    let head = norm(&unit[2][..16]);
    assert!(short.iter().zip(&unit[2]).all(|(a, b)| (f64::from(*a) - f64::from(*b) / head).abs() < 1e-5));
    // The last k tokens.
    let truncated = embeddings(&server, json!({"input": [ids], "truncate_prompt_tokens": 7}));
    assert_eq!(truncated["usage"]["prompt_tokens"], 7);
    let last7 = vectors(&embeddings(&server, json!({"input": [&ids[ids.len() - 7..]]})));
    assert_eq!(vectors(&truncated), last7);
}

#[test]
fn bad_embedding_requests_name_their_field() {
    let dir = tempfile::tempdir().unwrap();
    bare_model_folder(dir.path());
    let server = start(ServerConfig { model: Some(dir.path().to_path_buf()), ..Default::default() });
    let too_long: Vec<u32> = (0..600).map(|i| i % 500).collect();
    for (body, param) in [
        (json!({"input": []}), Some("input")),
        (json!({"input": ""}), Some("input")),
        (json!({"input": ["t1", ""]}), Some("input")),
        (json!({"input": [[1, 2], [3, 600]]}), Some("input")),
        (json!({"input": too_long}), Some("input")),
        (json!({"input": "t1", "encoding_format": "int8"}), Some("encoding_format")),
        (json!({"input": "t1", "dimensions": 0}), Some("dimensions")),
        (json!({"input": "t1", "dimensions": 65}), Some("dimensions")),
        (json!({"input": "t1", "truncate_prompt_tokens": 0}), Some("truncate_prompt_tokens")),
        (json!({"input": vec!["t1"; 2049]}), Some("input")),
    ] {
        let reply = server.post("/v1/embeddings", &body.to_string());
        let e = reply.error(400);
        assert_eq!(e["param"].as_str(), param, "{body}: {}", reply.body);
    }
    // Neither `input` nor `messages`, or both.
    for body in [json!({}), json!({"input": "t1", "messages": [{"role": "user", "content": "t1"}]})] {
        let e = server.post("/v1/embeddings", &body.to_string()).error(400);
        assert!(e["param"] == "input" && e["message"].as_str().unwrap().contains("`messages`"), "{e}");
    }
    // A body of the wrong shape: 422, as every endpoint's, naming the field.
    let e = server.post("/v1/embeddings", &json!({"input": {"text": "t1"}}).to_string()).error(422);
    assert!(e["message"].as_str().unwrap().contains("input"), "{e}");
    let e = server.post("/v1/embeddings", &json!({"input": [[1, 2], [3, 600]]}).to_string()).error(400);
    assert!(e["message"].as_str().unwrap().starts_with("input 1: token id 600"), "{e}");
    let e = server.post("/v1/embeddings", &json!({"input": [[1, 2], too_long]}).to_string()).error(400);
    assert_eq!(e["code"], "context_length_exceeded");
    assert!(e["message"].as_str().unwrap().starts_with("input 1: "), "{e}");
    let e = server.post("/v1/embeddings", &json!({"input": "t1", "model": "gpt-4"}).to_string()).error(404);
    assert_eq!(e["param"], "model");
    // The server goes on serving.
    assert_eq!(embeddings(&server, json!({"input": "t1 t2"}))["data"].as_array().unwrap().len(), 1);
}

/// Qwen3-Embedding-8B keeps its base model's untied config yet ships no head: it loads, and
/// embeds as the tied checkpoint does (the head never touches a hidden state).
#[test]
fn a_bare_untied_checkpoint_without_a_head_still_embeds() {
    let tied = tempfile::tempdir().unwrap();
    bare_model_folder(tied.path());
    let untied = tempfile::tempdir().unwrap();
    bare_model_folder(untied.path());
    let config_path = untied.path().join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["tie_word_embeddings"] = json!(false);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let body = json!({"input": [[1, 2, 3, 4], [9, 8, 7]]});
    let want = vectors(&embeddings(&start(ServerConfig { model: Some(tied.path().to_path_buf()), ..Default::default() }), body.clone()));
    let got = vectors(&embeddings(&start(ServerConfig { model: Some(untied.path().to_path_buf()), ..Default::default() }), body));
    // The same values, up to how the two inputs happened to batch.
    for (g, w) in got.iter().zip(&want) {
        assert!(g.iter().zip(w).all(|(a, b)| (a - b).abs() < 1e-5), "{g:?} vs {w:?}");
    }
}

/// A sequence-classification conversion (a `score` head instead of `lm_head`) is refused at
/// load, not served through tied embeddings.
#[test]
fn a_sequence_classification_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model_folder("tiny-qwen3", dir.path());
    let bytes = std::fs::read(fixture("tiny-qwen3").join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: HashMap<String, safetensors::tensor::TensorView> = st.tensors().into_iter().filter(|(n, _)| n != "lm_head.weight").collect();
    let score = vec![0u8; 64 * 4];
    tensors.insert("score.weight".into(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, 64], &score).unwrap());
    safetensors::serialize_to_file(&tensors, None, &dir.path().join("model.safetensors")).unwrap();
    let err = qwen_serve::loader::load(dir.path().to_str().unwrap(), &Default::default()).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("score.weight"), "{err}");
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum()
}

/// The real model's embeddings (Q4_K_M, our kernels) against transformers' on the same file
/// dequantized to f32: the same tokens, each vector pointing the same way, and the same
/// similarities between texts (measured: cosines 0.9997-0.9998, similarities within 0.004).
#[test]
fn gguf_embeddings_match_transformers() {
    let reference = read_json("gguf_embeddings.json");
    let inputs = reference["inputs"].as_array().unwrap();
    let texts: Vec<&str> = inputs.iter().map(|i| i["text"].as_str().unwrap()).collect();
    let want: Vec<Vec<f32>> = inputs.iter().map(|i| i["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()).collect();
    let server = start(ServerConfig::default());
    let reply = embeddings(&server, json!({"input": texts}));
    let num_tokens: usize = inputs.iter().map(|i| i["input_ids"].as_array().unwrap().len()).sum();
    assert_eq!(reply["usage"]["prompt_tokens"], num_tokens, "the reference's tokens");
    let got = vectors(&reply);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.len(), 896);
        let cosine = dot(g, w);
        assert!(cosine > 0.999, "input {i}: cosine {cosine} with transformers' embedding");
    }
    let sims = reference["cosine"].as_array().unwrap();
    for i in 0..got.len() {
        for j in 0..got.len() {
            let want = sims[i][j].as_f64().unwrap();
            let ours = dot(&got[i], &got[j]);
            assert!((ours - want).abs() < 0.01, "similarity of {i} and {j}: {ours} vs transformers' {want}");
        }
    }
    // The query is nearer the passage that answers it than an unrelated one.
    assert!(dot(&got[0], &got[1]) > dot(&got[0], &got[2]) + 0.5);
}

/// vLLM's chat-style embeddings: `messages` are rendered with the chat template (no generation
/// prompt unless asked, no added special tokens) and embedded as those tokens would be.
#[test]
fn a_conversation_embeds_as_its_rendered_tokens() {
    let server = start(ServerConfig::default());
    let messages = json!([{"role": "system", "content": "Represent the query."}, {"role": "user", "content": "What is the capital of China?"}]);
    let chat = embeddings(&server, json!({"messages": messages}));
    let rendered = server.post("/tokenize", &json!({"messages": messages, "add_generation_prompt": false}).to_string()).json();
    assert_eq!(chat["usage"]["prompt_tokens"], rendered["count"], "{chat}");
    let by_ids = embeddings(&server, json!({"input": rendered["tokens"]}));
    let (a, b) = (&vectors(&chat)[0], &vectors(&by_ids)[0]);
    assert!(dot(a, b) > 0.99999, "{}", dot(a, b));
    let prompted = embeddings(&server, json!({"messages": messages, "add_generation_prompt": true}));
    assert!(prompted["usage"]["prompt_tokens"].as_u64() > chat["usage"]["prompt_tokens"].as_u64(), "{prompted}");
    let e = server.post("/v1/embeddings", &json!({"messages": []}).to_string()).error(400);
    assert_eq!(e["param"], "messages");
}
