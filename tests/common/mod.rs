//! Shared helpers for the integration tests.
#![allow(dead_code)]

pub mod server;

use std::path::PathBuf;
use std::sync::OnceLock;

use qwen_serve::loader::{self, LoadOptions, LoadedModel};

/// The cache `scripts/fetch-test-data.sh` fills. Tests that need it fail (never skip) when it
/// is missing.
pub fn test_data_dir() -> PathBuf {
    let dir = std::env::var_os("QWEN_SERVE_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/qwen-serve/test-data"));
    assert!(dir.is_dir(), "test data missing at {}: run scripts/fetch-test-data.sh", dir.display());
    dir
}

pub fn test_gguf() -> PathBuf {
    let p = test_data_dir().join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    assert!(p.is_file(), "{} missing: run scripts/fetch-test-data.sh", p.display());
    p
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A model folder for a tiny fixture checkpoint: its config and weights, and a word-level
/// tokenizer over its 512 ids whose token `tN` is id N.
pub fn tiny_model_folder(name: &str, dir: &std::path::Path) {
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(name).join(file), dir.join(file)).unwrap();
    }
    let vocab: std::collections::HashMap<String, u32> = (0..512u32).map(|i| (format!("t{i}"), i)).collect();
    let model = WordLevel::builder().vocab(vocab.into_iter().collect()).unk_token("t0".into()).build().unwrap();
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(Whitespace {}));
    tokenizer.save(dir.join("tokenizer.json"), false).unwrap();
}

pub fn read_json(name: &str) -> serde_json::Value {
    let path = fixture(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The quantized test model, loaded once per test binary.
pub fn quantized_model() -> &'static LoadedModel {
    static MODEL: OnceLock<LoadedModel> = OnceLock::new();
    MODEL.get_or_init(|| loader::load(test_gguf().to_str().unwrap(), &LoadOptions::default()).expect("load test GGUF"))
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

/// Indices of the `k` largest values, largest first.
pub fn top_k(row: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    idx.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
    idx.truncate(k);
    idx
}
