//! Small random-weight Qwen3 and Qwen2 checkpoints with the real models' shape ratios
//! (tests/fixtures/tiny-*, written with logits by transformers in `scripts/make_reference.py`).
//! The weights are large (N(0, 0.2)) so a wrong rope layout, bias, q/k norm or GQA mapping moves
//! the logits far beyond the tolerance.

mod common;

use candle_core::{DType, Device};
use common::{fixture, read_json};
use qwen_serve::generate::score;
use qwen_serve_models::{load_model, AttentionMetadata, CausalLm, ForwardBatch, KvCache, ModelConfig, Weights};

const TOLERANCE: f32 = 1e-4;

fn load(name: &str) -> Box<dyn CausalLm> {
    let dir = fixture(name);
    let cfg = ModelConfig::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let weights = Weights::from_safetensors(&[dir.join("model.safetensors")], DType::F32, &Device::Cpu).unwrap();
    load_model(&cfg, &weights).unwrap()
}

fn rows(v: &serde_json::Value) -> Vec<Vec<f32>> {
    v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()).collect()
}

fn assert_close(ours: &[Vec<f32>], reference: &[Vec<f32>], what: &str) {
    assert_eq!(ours.len(), reference.len(), "{what}: rows");
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(d < TOLERANCE, "{what}: position {i} differs by {d}");
    }
}

/// One full pass, and a prefill of `prefill_len` tokens followed by single-token decodes.
fn check(name: &str) {
    let reference = read_json(&format!("{name}/reference.json"));
    let model = load(name);
    let ids = common::ids(&reference["input_ids"]);
    let full = score(model.as_ref(), &ids).unwrap().to_vec2::<f32>().unwrap();
    assert_close(&full, &rows(&reference["logits"]), &format!("{name} full pass"));

    let prefill = reference["prefill_len"].as_u64().unwrap() as usize;
    let block_size = 4;
    let num_blocks = ids.len().div_ceil(block_size);
    let mut cache = KvCache::new(model.config(), num_blocks, block_size, DType::F32, &Device::Cpu).unwrap();
    let table: Vec<u32> = (0..num_blocks as u32).rev().collect();
    let mut incremental = vec![];
    let mut start = 0;
    for end in std::iter::once(prefill).chain(prefill + 1..=ids.len()) {
        let batch = ForwardBatch {
            input_ids: ids[start..end].to_vec(),
            attention: AttentionMetadata::single(&table, block_size, end, end - start),
            logits_indices: (0..(end - start) as u32).collect(),
        };
        incremental.extend(model.forward(&batch, &mut cache).unwrap().to_vec2::<f32>().unwrap());
        start = end;
    }
    assert_close(&incremental, &rows(&reference["logits_incremental"]), &format!("{name} prefill + decode"));
}

#[test]
fn tiny_qwen3_matches_transformers() {
    check("tiny-qwen3");
}

#[test]
fn tiny_qwen2_with_bias_and_tied_embeddings_matches_transformers() {
    check("tiny-qwen2");
}
